//! One incarnation of a service: checks before spawning, the spawn itself, and what a spawn
//! failure means in words.

use crate::error::{Error, ErrorKind, Result};
use crate::spec::ServiceSpec;
use crate::sys;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Used when a spec clears the environment and sets no `PATH` of its own.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn spawn_error(spec: &ServiceSpec, message: String) -> Error {
    Error::new(ErrorKind::Spawn, format!("cannot start: {message}")).with_service(spec.name())
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
/// could not tell a missing program from a missing working directory.
pub(crate) fn resolve_program(spec: &ServiceSpec) -> Result<PathBuf> {
    let program = spec.program();
    if program.contains('/') {
        let mut path = PathBuf::from(program);
        if path.is_relative() {
            let base = match spec.get_current_dir() {
                Some(dir) => PathBuf::from(dir),
                None => std::env::current_dir().map_err(|e| {
                    spawn_error(spec, "cannot read the host's working directory".into())
                        .with_source(e)
                })?,
            };
            path = base.join(path);
        }
        let meta = std::fs::metadata(&path).map_err(|e| {
            spawn_error(spec, format!("program '{}' not found", path.display())).with_source(e)
        })?;
        if meta.is_dir() {
            return Err(spawn_error(
                spec,
                format!("program '{}' is a directory", path.display()),
            ));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(spawn_error(
                spec,
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
        spec,
        format!(
            "program '{program}' not found on PATH '{}'",
            search.to_string_lossy()
        ),
    ))
}

/// The first executable `program` in the directories of `search` (a `PATH`), made absolute.
fn search_on(program: &str, search: &std::ffi::OsStr) -> Option<PathBuf> {
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
    search_on(program, &search)
}

fn check_current_dir(spec: &ServiceSpec) -> Result<()> {
    if let Some(dir) = spec.get_current_dir() {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(spawn_error(
                    spec,
                    format!("working directory '{dir}' is not a directory"),
                ))
            }
            Err(e) => {
                return Err(spawn_error(
                    spec,
                    format!("working directory '{dir}' is not accessible"),
                )
                .with_source(e))
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
/// as read when made, with the spec's changes). Made when an operator starts a service;
/// restarts by the policy reuse it, so they run with the same environment and spend no time
/// on it. The host's part is shared with the other launches made from the same reading.
pub(crate) struct Launch {
    argv: Vec<CString>,
    /// The host's environment (empty if the spec clears it).
    host: Arc<[CString]>,
    /// Keys of `host` the spec removes or sets.
    hidden: Vec<Vec<u8>>,
    /// The spec's own variables.
    own: Vec<CString>,
}

impl Launch {
    pub(crate) fn new(spec: &ServiceSpec, host: &Arc<[CString]>) -> Result<Launch> {
        let nul = |what: &str| spawn_error(spec, format!("{what} contains a NUL byte"));
        let own = spec
            .get_envs()
            .map(|(k, v)| pair(k.as_bytes(), v.as_bytes()).map_err(|_| nul("the environment")))
            .collect::<Result<_>>()?;
        let hidden = spec
            .get_env_removed()
            .chain(spec.get_envs().map(|(k, _)| k))
            .map(|k| k.as_bytes().to_vec())
            .collect();
        let argv = std::iter::once(spec.program())
            .chain(spec.get_args().iter().map(String::as_str))
            .map(|a| CString::new(a).map_err(|_| nul("an argument")))
            .collect::<Result<_>>()?;
        Ok(Launch {
            argv,
            host: if spec.get_env_clear() {
                Arc::from([])
            } else {
                host.clone()
            },
            hidden,
            own,
        })
    }
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

/// Spawns one run of `spec` with stdout and stderr on the given pipe write ends, in `cgroup`
/// if given. `extra_env` (the run's own variables) replaces any variable of the same name in
/// `launch`.
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
    check_current_dir(spec)?;
    let program = resolve_program(spec)?;
    let extra: Vec<CString> = extra_env
        .iter()
        .map(|(k, v)| pair(k.as_bytes(), v.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| spawn_error(spec, "the environment contains a NUL byte".into()))?;
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
        cwd: spec.get_current_dir().map(Path::new),
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
        cgroup: into,
        join,
        kind: sys::ChildKind::Service,
        keep: &[],
        setup: &sys::ChildSetup::NONE,
    };
    sys::spawn(&request).map_err(|e| explain_spawn_failure(spec, &program, e))
}

fn explain_spawn_failure(spec: &ServiceSpec, program: &Path, e: io::Error) -> Error {
    let shown = program.display();
    let message = match sys::exec_failure(&e) {
        // The program exists (checked above), so ENOENT from exec means its interpreter.
        sys::ExecFailure::NoInterpreter => {
            format!("the interpreter of '{shown}' was not found (check its #! line)")
        }
        sys::ExecFailure::NotExecutable => {
            format!("'{shown}' is not in an executable format (a script without #!?)")
        }
        sys::ExecFailure::PermissionDenied => format!("permission denied executing '{shown}'"),
        sys::ExecFailure::TooBig => "the argument list or environment is too long".to_string(),
        sys::ExecFailure::TooManyFiles => "too many open files".to_string(),
        sys::ExecFailure::ProcessLimit => "the process limit is reached".to_string(),
        sys::ExecFailure::OutOfMemory => "out of memory".to_string(),
        sys::ExecFailure::Other => format!("spawning '{shown}' failed"),
    };
    spawn_error(spec, message).with_source(e)
}
