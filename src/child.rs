//! One incarnation of a service: checks before spawning, the spawn itself, and what a spawn
//! failure means in words.

use crate::error::{Error, ErrorKind, Result};
use crate::spec::ServiceSpec;
use crate::sys;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Used when a spec clears the environment and sets no `PATH` of its own.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn spawn_error(name: &str, message: String) -> Error {
    Error::new(ErrorKind::Spawn, format!("cannot start: {message}")).with_service(name)
}

/// The `PATH` the program is looked up on: the spec's, else the host's (unless cleared).
fn search_path(spec: &ServiceSpec) -> OsString {
    if let Some((_, v)) = spec.get_envs().find(|(k, _)| *k == "PATH") {
        return v.into();
    }
    if spec.get_env_clear() || spec.get_env_removed().any(|k| k == "PATH") {
        return DEFAULT_PATH.into();
    }
    std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into())
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves the program to an absolute path before spawning: std would otherwise search
/// `PATH` in the child (and take its slow fork path when the spec sets `PATH`), and errors
/// could not tell a missing program from a missing working directory. `name` is the
/// service's (or instance's), for errors.
pub(crate) fn resolve_program(spec: &ServiceSpec, name: &str) -> Result<PathBuf> {
    let program = spec.program();
    if program.as_bytes().contains(&b'/') {
        let mut path = PathBuf::from(program);
        if path.is_relative() {
            let base = match spec.get_current_dir() {
                Some(dir) => dir.to_path_buf(),
                None => std::env::current_dir().map_err(|e| {
                    spawn_error(name, "cannot read the host's working directory".into())
                        .with_source(e)
                })?,
            };
            path = base.join(path);
        }
        let meta = std::fs::metadata(&path).map_err(|e| {
            spawn_error(name, format!("program '{}' not found", path.display())).with_source(e)
        })?;
        if meta.is_dir() {
            return Err(spawn_error(
                name,
                format!("program '{}' is a directory", path.display()),
            ));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(spawn_error(
                name,
                format!("program '{}' is not executable", path.display()),
            ));
        }
        return Ok(path);
    }
    let search = search_path(spec);
    if let Some(found) = search_on(program, &search) {
        return Ok(found);
    }
    Err(spawn_error(
        name,
        format!(
            "program '{}' not found on PATH '{}'",
            program.to_string_lossy(),
            search.to_string_lossy()
        ),
    ))
}

/// The first executable `program` in the directories of `search` (a `PATH`), made absolute.
fn search_on(program: &OsStr, search: &OsStr) -> Option<PathBuf> {
    for dir in std::env::split_paths(search) {
        let candidate = dir.join(program);
        if is_executable_file(&candidate) {
            return Some(if candidate.is_relative() {
                std::env::current_dir()
                    .map(|d| d.join(&candidate))
                    .unwrap_or(candidate)
            } else {
                candidate
            });
        }
    }
    None
}

/// Resolves a probe command's program as a shell would: a name with a `/` as it is, else on
/// the host's `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable_file(&path).then_some(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    search_on(OsStr::new(program), &search)
}

fn check_current_dir(spec: &ServiceSpec, name: &str) -> Result<()> {
    if let Some(dir) = spec.get_current_dir() {
        let shown = dir.display();
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(spawn_error(
                    name,
                    format!("working directory '{shown}' is not a directory"),
                ));
            }
            Err(e) => {
                return Err(spawn_error(
                    name,
                    format!("working directory '{shown}' is not accessible"),
                )
                .with_source(e));
            }
        }
    }
    Ok(())
}

/// The host's environment as exec takes it (`key=value` each), read once and shared by every
/// launch made from it.
pub(crate) fn host_env() -> Arc<[CString]> {
    std::env::vars_os()
        .filter_map(|(k, v)| pair(k.as_bytes(), v.as_bytes()).ok())
        .collect()
}

/// What a spec spawns, in the form exec takes: its argv and its environment (the host's,
/// as read when made, with the spec's changes), and who it runs as. Made when an operator
/// starts a service; restarts by the policy reuse it, so they run with the same environment
/// and identity and spend no time on them. The host's part is shared with the other
/// launches made from the same reading.
pub(crate) struct Launch {
    /// The service's name, or the instance's.
    name: String,
    argv: Vec<CString>,
    /// The host's environment (empty if the spec clears it).
    host: Arc<[CString]>,
    /// Keys of `host` the spec removes or sets.
    hidden: Vec<Vec<u8>>,
    /// The spec's own variables (its env file's, its user's, its instance's among them).
    own: Vec<CString>,
    /// What the child sets before exec.
    setup: sys::ChildSetup,
    /// The user it runs as, for errors: as given, and its uid.
    user: Option<(String, u32)>,
}

impl Launch {
    /// The launch of `spec`, as its instance `instance` if it has instances.
    pub(crate) fn new(
        spec: &ServiceSpec,
        instance: Option<u32>,
        host: &Arc<[CString]>,
    ) -> Result<Launch> {
        let name = spec.instance_name(instance);
        let nul = |what: &str| spawn_error(&name, format!("{what} contains a NUL byte"));
        let expand = |v: &OsStr| match instance {
            Some(k) => crate::spec::expand_instance(v, k),
            None => v.to_os_string(),
        };
        let (ids, user_vars) = resolve_identity(spec, &name)?;
        // Lowest first: the user's variables, the env file's, the spec's, the index.
        let mut vars: BTreeMap<OsString, OsString> = user_vars.into_iter().collect();
        if let Some(file) = spec.get_env_file() {
            vars.extend(read_env_file(spec, &name, file)?);
        }
        vars.extend(spec.get_envs().map(|(k, v)| (k.to_os_string(), expand(v))));
        if let Some(k) = instance {
            vars.insert(spec.get_instance_var().into(), k.to_string().into());
        }
        let own = vars
            .iter()
            .map(|(k, v)| pair(k.as_bytes(), v.as_bytes()).map_err(|_| nul("the environment")))
            .collect::<Result<_>>()?;
        let hidden = spec
            .get_env_removed()
            .map(|k| k.as_bytes().to_vec())
            .chain(vars.keys().map(|k| k.as_bytes().to_vec()))
            .collect();
        let argv = std::iter::once(spec.program().to_os_string())
            .chain(spec.get_args().iter().map(|a| expand(a)))
            .map(|a| CString::new(a.into_vec()).map_err(|_| nul("an argument")))
            .collect::<Result<_>>()?;
        let user = spec.get_user().map(|u| {
            (
                u.to_string(),
                ids.as_ref().map_or_else(sys::real_uid, |i| i.uid),
            )
        });
        Ok(Launch {
            argv,
            host: if spec.get_env_clear() {
                Arc::from([])
            } else {
                host.clone()
            },
            hidden,
            own,
            setup: sys::ChildSetup {
                umask: spec.get_umask(),
                limits: spec.get_limits().collect(),
                nice: spec.get_nice(),
                oom_score_adj: spec.get_oom_score_adj(),
                ids,
            },
            user,
            name,
        })
    }

    /// The uid its runs have, when it is not the host's.
    pub(crate) fn uid(&self) -> Option<u32> {
        self.setup.ids.as_ref().map(|i| i.uid)
    }
}

/// The variables of a spec's env file.
fn read_env_file(spec: &ServiceSpec, name: &str, file: &Path) -> Result<Vec<(OsString, OsString)>> {
    let path = match (file.is_relative(), spec.get_current_dir()) {
        (true, Some(dir)) => dir.join(file),
        _ => file.to_path_buf(),
    };
    let shown = path.display().to_string();
    let bytes = std::fs::read(&path)
        .map_err(|e| spawn_error(name, format!("cannot read env file '{shown}'")).with_source(e))?;
    let problem = |p: crate::dotenv::Problem| {
        spawn_error(
            name,
            format!(
                "env file '{shown}': line {}, column {}: {}",
                p.line, p.column, p.message
            ),
        )
    };
    let text = crate::dotenv::utf8_text(&bytes).map_err(problem)?;
    let vars = crate::dotenv::parse(&text).map_err(problem)?;
    Ok(vars
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect())
}

/// Who a spec runs as: the ids the child takes (`None`: the host's will do), and the
/// variables of the user's passwd entry (`HOME`, `USER`, `LOGNAME`, `SHELL`).
#[allow(clippy::type_complexity)]
fn resolve_identity(
    spec: &ServiceSpec,
    name: &str,
) -> Result<(Option<sys::Ids>, Vec<(OsString, OsString)>)> {
    let (user, group) = (spec.get_user(), spec.get_group());
    if user.is_none() && group.is_none() {
        return Ok((None, Vec::new()));
    }
    let lookup_failed = |what: String, e: io::Error| {
        spawn_error(name, format!("cannot look up {what}")).with_source(e)
    };
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match number(g) {
            Some(gid) => gid,
            None => sys::group_by_name(g)
                .map_err(|e| lookup_failed(format!("group '{g}'"), e))?
                .ok_or_else(|| {
                    spawn_error(name, format!("there is no group '{g}' on this host"))
                })?,
        }),
    };
    let me = sys::current_ids();
    let (ids, vars) = match user {
        None => (
            sys::Ids {
                uid: me.uid,
                gid: gid.expect("a group when there is no user"),
                groups: Vec::new(),
            },
            Vec::new(),
        ),
        Some(u) => {
            let passwd = match number(u) {
                Some(uid) => sys::passwd_by_uid(uid)
                    .map_err(|e| lookup_failed(format!("uid {uid}"), e))?
                    .ok_or(uid),
                None => match sys::passwd_by_name(u)
                    .map_err(|e| lookup_failed(format!("user '{u}'"), e))?
                {
                    Some(p) => Ok(p),
                    None => {
                        return Err(spawn_error(
                            name,
                            format!("there is no user '{u}' on this host"),
                        ));
                    }
                },
            };
            match passwd {
                Ok(p) => {
                    let gid = gid.unwrap_or(p.gid);
                    let groups = sys::group_list(&p.name, gid)
                        .map_err(|e| lookup_failed(format!("the groups of user '{u}'"), e))?;
                    let login: OsString = OsStr::from_bytes(p.name.as_bytes()).into();
                    let vars = vec![
                        ("HOME".into(), p.home),
                        ("USER".into(), login.clone()),
                        ("LOGNAME".into(), login),
                        ("SHELL".into(), p.shell),
                    ];
                    (
                        sys::Ids {
                            uid: p.uid,
                            gid,
                            groups,
                        },
                        vars,
                    )
                }
                Err(uid) => {
                    let Some(gid) = gid else {
                        return Err(spawn_error(
                            name,
                            format!(
                                "uid {uid} has no passwd entry to take its group from: set the group too"
                            ),
                        ));
                    };
                    (
                        sys::Ids {
                            uid,
                            gid,
                            groups: Vec::new(),
                        },
                        Vec::new(),
                    )
                }
            }
        }
    };
    // The same access: the primary group counts among the groups whether or not the list
    // repeats it (getgroups leaves it out where initgroups puts it in).
    let same = |a: &sys::Ids, b: &sys::Ids| {
        let set = |i: &sys::Ids| {
            let mut g = i.groups.clone();
            g.push(i.gid);
            g.sort_unstable();
            g.dedup();
            g
        };
        a.uid == b.uid && a.gid == b.gid && set(a) == set(b)
    };
    if same(&ids, &me) {
        return Ok((None, vars));
    }
    if !sys::can_switch_ids() {
        let whom = match (user, group) {
            (Some(u), _) => format!("user '{u}'"),
            (None, Some(g)) => format!("group '{g}'"),
            (None, None) => unreachable!("returned above"),
        };
        return Err(spawn_error(
            name,
            format!(
                "running as {whom} needs root, or CAP_SETUID and CAP_SETGID, which this supervisor (uid {}) does not have",
                me.uid
            ),
        ));
    }
    Ok((Some(ids), vars))
}

/// Whether `kv` (`key=value`) sets `key`.
fn sets(kv: &CStr, key: &[u8]) -> bool {
    kv.to_bytes()
        .strip_prefix(key)
        .is_some_and(|rest| rest.first() == Some(&b'='))
}

/// `key=value` as one C string.
fn pair(key: &[u8], value: &[u8]) -> std::result::Result<CString, std::ffi::NulError> {
    let mut kv = Vec::with_capacity(key.len() + value.len() + 1);
    kv.extend_from_slice(key);
    kv.push(b'=');
    kv.extend_from_slice(value);
    CString::new(kv)
}

/// Where a child starts: the directory of its cgroup v2 (open, for `CLONE_INTO_CGROUP`) and
/// its `cgroup.procs` (for kernels without it), and the `cgroup.procs` of v1 cgroups it joins
/// before exec.
pub(crate) struct Cgroup<'a> {
    pub(crate) dir: BorrowedFd<'a>,
    pub(crate) procs: &'a Path,
    pub(crate) join: Vec<BorrowedFd<'a>>,
}

/// Spawns one run of `spec` (as `launch` made it) with stdout and stderr on the given pipe
/// write ends, in `cgroup` if given. `extra_env` (the run's own variables) replaces any
/// variable of the same name in `launch`.
///
/// Must be called on the supervision thread (PDEATHSIG follows the spawning thread).
pub(crate) fn spawn(
    spec: &ServiceSpec,
    launch: &Launch,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    extra_env: &[(String, String)],
    cgroup: Option<Cgroup<'_>>,
) -> Result<sys::PidFd> {
    let name = launch.name.as_str();
    check_current_dir(spec, name)?;
    let program = resolve_program(spec, name)?;
    let extra: Vec<CString> = extra_env
        .iter()
        .map(|(k, v)| pair(k.as_bytes(), v.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| spawn_error(name, "the environment contains a NUL byte".into()))?;
    let overridden = |kv: &CStr| extra_env.iter().any(|(k, _)| sets(kv, k.as_bytes()));
    let env: Vec<&CStr> = launch
        .host
        .iter()
        .map(CString::as_c_str)
        .filter(|kv| !launch.hidden.iter().any(|k| sets(kv, k)))
        .chain(launch.own.iter().map(CString::as_c_str))
        .filter(|kv| !overridden(kv))
        .chain(extra.iter().map(CString::as_c_str))
        .collect();
    let argv: Vec<&CStr> = launch.argv.iter().map(CString::as_c_str).collect();
    let (into, join) = match cgroup {
        Some(c) => (Some((c.dir, c.procs)), c.join),
        None => (None, Vec::new()),
    };
    let request = sys::SpawnRequest {
        program: &program,
        argv: &argv,
        env: &env,
        cwd: spec.get_current_dir(),
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
        cgroup: into,
        join,
        kind: sys::ChildKind::Service,
        keep: &[],
        setup: &launch.setup,
    };
    sys::spawn(&request).map_err(|e| explain_spawn_failure(spec, launch, &program, e))
}

fn explain_spawn_failure(
    spec: &ServiceSpec,
    launch: &Launch,
    program: &Path,
    e: io::Error,
) -> Error {
    let shown = program.display();
    if let Some(failed) = sys::failed_step(&e) {
        let source = io::Error::from_raw_os_error(failed.errno);
        let who = match &launch.user {
            Some((user, uid)) => format!(" as user '{user}' (uid {uid})"),
            None => String::new(),
        };
        let message = match failed.step {
            sys::ChildStep::Groups | sys::ChildStep::Gid | sys::ChildStep::Uid => {
                let whom = match (&launch.user, spec.get_group()) {
                    (Some((user, uid)), _) => format!("user '{user}' (uid {uid})"),
                    (None, Some(group)) => format!("group '{group}'"),
                    (None, None) => "another user".to_string(),
                };
                format!(
                    "cannot switch to {whom}: {} failed in the new process",
                    failed.step
                )
            }
            sys::ChildStep::Limit(resource) => {
                let (soft, hard) = spec.get_limit(resource).unwrap_or_default();
                let shown = |v: u64| match v {
                    crate::rlimit::UNLIMITED => "unlimited".to_string(),
                    v => v.to_string(),
                };
                format!(
                    "the kernel refused limit {resource} = {} (soft) / {} (hard): setrlimit failed in the new process",
                    shown(soft),
                    shown(hard)
                )
            }
            sys::ChildStep::Nice => format!(
                "cannot set nice {}: setpriority failed in the new process",
                spec.get_nice().unwrap_or_default()
            ),
            sys::ChildStep::OomScoreAdj => format!(
                "cannot set oom_score_adj {}: writing /proc/self/oom_score_adj failed in the new process",
                spec.get_oom_score_adj().unwrap_or_default()
            ),
            sys::ChildStep::Chdir => format!(
                "cannot enter working directory '{}'{who}: chdir failed in the new process",
                spec.get_current_dir().unwrap_or(Path::new("")).display()
            ),
            step => format!("{step} failed in the new process"),
        };
        return spawn_error(&launch.name, message).with_source(source);
    }
    let message = match sys::exec_failure(&e) {
        // The program exists (checked above), so ENOENT from exec means its interpreter.
        sys::ExecFailure::NoInterpreter => {
            format!("the interpreter of '{shown}' was not found (check its #! line)")
        }
        sys::ExecFailure::NotExecutable => {
            format!("'{shown}' is not in an executable format (a script without #!?)")
        }
        sys::ExecFailure::PermissionDenied => match &launch.user {
            Some((user, uid)) => {
                format!("permission denied executing '{shown}' as user '{user}' (uid {uid})")
            }
            None => format!("permission denied executing '{shown}'"),
        },
        sys::ExecFailure::TooBig => "the argument list or environment is too long".to_string(),
        sys::ExecFailure::TooManyFiles => "too many open files".to_string(),
        sys::ExecFailure::ProcessLimit => "the process limit is reached".to_string(),
        sys::ExecFailure::OutOfMemory => "out of memory".to_string(),
        sys::ExecFailure::Other => format!("spawning '{shown}' failed"),
    };
    spawn_error(&launch.name, message).with_source(e)
}
