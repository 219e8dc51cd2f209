//! supervisord's configuration (`supervisord.conf`): an INI file in the dialect of Python's
//! `ConfigParser` as supervisord reads it (`;` and `#` comments, inline after whitespace,
//! `key = value` or `key: value`, indented continuation lines), `[include] files = …` globs,
//! and `%(name)s` expansions. Each `[program:x]` becomes one service, or `numprocs` of them.

use super::{Imported, invalid};
use crate::error::Result;
use crate::policy::{Backoff, RestartPolicy};
use crate::spec::{LogPolicy, ServiceSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `[section]` of a file, its keys in file order (lowercase), where it was read.
struct Section {
    name: String,
    keys: Vec<(String, String)>,
    origin: String,
    /// The directory of its file: `%(here)s`.
    here: PathBuf,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `path` and the files its `[include]` section names.
pub(crate) fn import(path: &Path) -> Result<Imported> {
    let mut warnings = Vec::new();
    let mut sections = read_file(path)?;
    let includes: Vec<String> = sections
        .iter()
        .filter(|s| s.name == "include")
        .filter_map(|s| s.get("files").map(|f| (s.here.clone(), f.to_string())))
        .flat_map(|(here, files)| {
            files
                .split_whitespace()
                .map(|f| here.join(f).display().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for pattern in includes {
        for file in glob(&pattern, &path.display().to_string())? {
            let included = read_file(&file)?;
            if included.iter().any(|s| s.name == "include") {
                warnings.push(format!(
                    "'{}': an [include] section in an included file is ignored, as supervisord does",
                    file.display()
                ));
            }
            sections.extend(included.into_iter().filter(|s| s.name != "include"));
        }
    }
    let host = hostname();
    let mut programs: Vec<(i64, ServiceSpec)> = Vec::new();
    for section in &sections {
        let kind = section.name.split(':').next().unwrap_or("");
        match kind {
            "program" => {
                let name = &section.name["program:".len()..];
                for (priority, spec) in program(section, name, &host, &mut warnings)? {
                    programs.push((priority, spec));
                }
            }
            "include" => {}
            "supervisord" | "supervisorctl" | "unix_http_server" | "inet_http_server"
            | "rpcinterface" => warnings.push(format!(
                "'{}': section [{}] is ignored: the host application is the supervisor",
                section.origin, section.name
            )),
            _ => warnings.push(format!(
                "'{}': section [{}] has no equivalent and is ignored",
                section.origin, section.name
            )),
        }
    }
    if programs.windows(2).any(|w| w[0].0 != w[1].0) {
        warnings.push(format!(
            "'{}': priority: kept as the order of the services (lower first); sheepdog starts \
             them together and stops them together unless a service sets 'after'",
            path.display()
        ));
    }
    // A stable sort: equal priorities keep the file's order.
    programs.sort_by_key(|(priority, _)| *priority);
    Ok(Imported {
        services: programs.into_iter().map(|(_, s)| s).collect(),
        warnings,
    })
}

/// The options of a `[program:x]` that map to a spec; any other is warned about.
const KNOWN: &[&str] = &[
    "command",
    "process_name",
    "numprocs",
    "numprocs_start",
    "directory",
    "environment",
    "autostart",
    "autorestart",
    "user",
    "umask",
    "startsecs",
    "startretries",
    "exitcodes",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "priority",
    "redirect_stderr",
    "stdout_logfile_maxbytes",
    "stdout_logfile_backups",
    "stderr_logfile_maxbytes",
    "stderr_logfile_backups",
];

/// The services of one `[program:name]`, each with its priority.
fn program(
    section: &Section,
    name: &str,
    host: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<(i64, ServiceSpec)>> {
    let origin = &section.origin;
    let at = |key: &str| format!("[program:{name}] {key}");
    let mut warn = |key: &str, why: &str| warnings.push(format!("'{origin}': {}: {why}", at(key)));
    let int = |key: &str, default: i64| -> Result<i64> {
        match section.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(origin, format!("{}: '{v}' is not a number", at(key)))),
        }
    };
    let boolean = |key: &str, default: bool| -> Result<bool> {
        match section.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["true", "yes", "on", "1"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "no", "off", "0"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(invalid(
                origin,
                format!("{}: '{v}' is not a boolean", at(key)),
            )),
        }
    };
    let numprocs = int("numprocs", 1)?;
    let numprocs_start = int("numprocs_start", 0)?;
    if !(1..=1000).contains(&numprocs) {
        return Err(invalid(
            origin,
            format!("{}: must be 1 to 1000", at("numprocs")),
        ));
    }
    let priority = int("priority", 999)?;
    let command = section
        .get("command")
        .ok_or_else(|| invalid(origin, format!("[program:{name}] has no command")))?;
    for (key, _) in &section.keys {
        if !KNOWN.contains(&key.as_str()) {
            let why = match key.as_str() {
                "stdout_logfile" | "stderr_logfile" => {
                    "no equivalent: logs are kept in the state directory (see Supervisor::logs)"
                }
                _ => "no equivalent; ignored",
            };
            warn(key, why);
        }
    }
    let autostart = boolean("autostart", true)?;
    let umask = match section.get("umask") {
        None => None,
        Some(v) => Some(u32::from_str_radix(v.trim(), 8).map_err(|_| {
            invalid(
                origin,
                format!("{}: '{v}' is not an octal mask", at("umask")),
            )
        })?),
    };
    for key in ["stopasgroup", "killasgroup"] {
        if section.get(key).is_some() && !boolean(key, false)? {
            warn(
                key,
                "sheepdog always signals the whole process group (and cgroup); 'false' is not kept",
            );
        }
    }
    let exitcodes: Vec<i32> = match section.get("exitcodes") {
        None => vec![0],
        Some(v) => v
            .split(',')
            .map(|c| c.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                invalid(
                    origin,
                    format!("{}: '{v}' is not a list of codes", at("exitcodes")),
                )
            })?,
    };
    let mut policy = match section
        .get("autorestart")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("unexpected") => RestartPolicy::on_failure(),
        Some("true") => RestartPolicy::always(),
        Some("false") => RestartPolicy::never(),
        Some(v) => {
            return Err(invalid(
                origin,
                format!(
                    "{}: '{v}' is not true, false or unexpected",
                    at("autorestart")
                ),
            ));
        }
    }
    .success_codes(exitcodes)
    // supervisord restarts at once, then waits 1 s more after each failed start.
    .backoff(Backoff::exponential(
        Duration::from_secs(1),
        Duration::from_secs(30),
    ));
    let startsecs = int("startsecs", 1)?;
    if startsecs < 0 {
        return Err(invalid(
            origin,
            format!("{}: must not be negative", at("startsecs")),
        ));
    }
    policy = policy.stable_after(Duration::from_secs(startsecs as u64));
    if section.get("startsecs").is_some() {
        warn(
            "startsecs",
            "mapped to the restart policy's stable_after: a run shorter than that counts as a crash \
             for the backoff and the restart limit, but the service is online at once \
             (set 'ready' to wait for it)",
        );
    }
    let startretries = int("startretries", 3)?;
    if startretries < 0 {
        return Err(invalid(
            origin,
            format!("{}: must not be negative", at("startretries")),
        ));
    }
    // supervisord gives up after `startretries` failed starts in a row; here the limit is a
    // count of restarts in a sliding window, chosen to cover that many quick failures.
    let window = Duration::from_secs((startsecs.max(1) as u64 + 30) * (startretries as u64 + 1));
    policy = policy.max_restarts(startretries as u32, window);
    warn(
        "startretries",
        &format!(
            "mapped to max_restarts({startretries}) within a sliding {}s window: supervisord \
             counts failed starts in a row (shorter than startsecs), sheepdog counts restarts \
             within the window, whatever their uptime",
            window.as_secs()
        ),
    );
    let stop_signal = match section.get("stopsignal") {
        None => crate::signal::Signal::Term,
        Some(v) => super::signal(v).ok_or_else(|| {
            invalid(
                origin,
                format!("{}: unknown signal '{v}'", at("stopsignal")),
            )
        })?,
    };
    let stop_timeout = Duration::from_secs(int("stopwaitsecs", 10)?.max(0) as u64);
    let redirect = boolean("redirect_stderr", false)?;
    let max_bytes = match section.get("stdout_logfile_maxbytes") {
        None => 50 << 20,
        Some(v) => super::bytes(v).ok_or_else(|| {
            invalid(
                origin,
                format!("{}: '{v}' is not a size", at("stdout_logfile_maxbytes")),
            )
        })?,
    };
    let keep = int("stdout_logfile_backups", 10)?.clamp(0, u32::MAX as i64) as u32;
    for key in ["stderr_logfile_maxbytes", "stderr_logfile_backups"] {
        if section.get(key).is_some() {
            warn(
                key,
                "no equivalent: stderr is rotated as stdout is (stdout_logfile_*)",
            );
        }
    }
    let log = LogPolicy::default()
        .max_bytes(max_bytes)
        .keep(keep)
        .merge_stderr(redirect);
    let process_name = section.get("process_name").unwrap_or(if numprocs > 1 {
        "%(program_name)s_%(process_num)02d"
    } else {
        "%(program_name)s"
    });
    let mut out = Vec::new();
    for num in numprocs_start..numprocs_start + numprocs {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("program_name", name.to_string());
        vars.insert("group_name", name.to_string());
        vars.insert("process_num", num.to_string());
        vars.insert("numprocs", numprocs.to_string());
        vars.insert("here", section.here.display().to_string());
        vars.insert("host_node_name", host.to_string());
        let expand = |key: &str, text: &str| {
            expand(text, &vars).map_err(|e| invalid(origin, format!("{}: {e}", at(key))))
        };
        let service = expand("process_name", process_name)?;
        let argv = shlex::split(&expand("command", command)?)
            .ok_or_else(|| invalid(origin, format!("{}: unbalanced quotes", at("command"))))?;
        let Some((program, args)) = argv.split_first() else {
            return Err(invalid(origin, format!("{}: empty", at("command"))));
        };
        let mut spec = ServiceSpec::new(service, program.clone())
            .args(args.iter().cloned())
            .restart(policy.clone())
            .stop_signal(stop_signal)
            .stop_timeout(stop_timeout)
            .log(log.clone());
        if let Some(dir) = section.get("directory") {
            spec = spec.current_dir(expand("directory", dir)?);
        }
        if let Some(user) = section.get("user") {
            spec = spec.user(expand("user", user)?.trim());
        }
        if let Some(mask) = umask {
            spec = spec.umask(mask);
        }
        // Defined, not started when the fleet is applied (`sheepdog start NAME` starts it).
        spec = spec.autostart(autostart);
        if let Some(env) = section.get("environment") {
            let env = expand("environment", env)?;
            spec = spec.envs(
                environment(&env)
                    .map_err(|e| invalid(origin, format!("{}: {e}", at("environment"))))?,
            );
        }
        out.push((priority, spec));
    }
    Ok(out)
}

/// `KEY="value",KEY2=value2`, as supervisord reads its `environment` option.
fn environment(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(vars);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().to_string();
        if key.is_empty() {
            return Err(format!("expected KEY=value in '{text}'"));
        }
        let mut value = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => value.push(c),
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == ',' => break,
                None => value.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return Err(format!("unbalanced quotes in '{text}'"));
        }
        vars.insert(key, value.trim().to_string());
    }
}

/// Expands `%(name)s`, `%(name)d` and `%(name)02d`; `ENV_X` is the host's variable `X`;
/// `%%` is `%`.
fn expand(text: &str, vars: &HashMap<&str, String>) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            out.push('%');
            rest = r;
            continue;
        }
        let Some(r) = rest.strip_prefix('(') else {
            return Err(format!("a '%' that starts no expansion in '{text}'"));
        };
        let close = r
            .find(')')
            .ok_or_else(|| format!("unclosed '%(' in '{text}'"))?;
        let key = &r[..close];
        let r = &r[close + 1..];
        let conv = r
            .find(|c: char| c.is_ascii_alphabetic())
            .ok_or_else(|| format!("'%({key})' has no conversion in '{text}'"))?;
        let (width, kind) = (&r[..conv], &r[conv..conv + 1]);
        rest = &r[conv + 1..];
        let value = match key.strip_prefix("ENV_") {
            Some(var) => std::env::var(var)
                .map_err(|_| format!("'%({key})s': the variable {var} is not set"))?,
            None => vars
                .get(key)
                .cloned()
                .ok_or_else(|| format!("unknown expansion '%({key})s'"))?,
        };
        match (kind, width.parse::<usize>()) {
            ("d", Ok(w)) if width.starts_with('0') => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("'%({key})d' is not a number"))?;
                out.push_str(&format!("{n:0w$}"));
            }
            ("d" | "s", _) => out.push_str(&value),
            _ => return Err(format!("unsupported conversion '%({key}){width}{kind}'")),
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The files a glob names (wildcards in the last component only, as in
/// `conf.d/*.conf`), sorted; a path without wildcards is itself.
fn glob(pattern: &str, origin: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(['*', '?', '[']) {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let matcher = globset::Glob::new(name)
        .map_err(|e| invalid(origin, format!("[include] files: '{pattern}': {e}")))?
        .compile_matcher();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| matcher.is_match(e.file_name()))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> Result<Vec<Section>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::Error::new(
            crate::error::ErrorKind::Io,
            format!("cannot read supervisord file '{}'", path.display()),
        )
        .with_source(e)
    })?;
    let here = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&text, &path.display().to_string(), &here)
}

/// The sections of an INI text, as supervisord's `ConfigParser` reads them.
fn parse(text: &str, origin: &str, here: &Path) -> Result<Vec<Section>> {
    let mut sections: Vec<Section> = Vec::new();
    let mut last_key = false;
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            last_key = false;
            continue;
        }
        let at = |what: &str| invalid(origin, format!("line {}: {what}", i + 1));
        if raw.starts_with([' ', '\t']) && last_key {
            // A continuation of the value above.
            let (_, value) = sections
                .last_mut()
                .and_then(|s| s.keys.last_mut())
                .expect("a key was read above");
            value.push('\n');
            value.push_str(line.trim());
            continue;
        }
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| at("a section header without ']'"))?;
            sections.push(Section {
                name: name.trim().to_string(),
                keys: Vec::new(),
                origin: origin.to_string(),
                here: here.to_path_buf(),
            });
            last_key = false;
            continue;
        }
        let sep = trimmed
            .find(['=', ':'])
            .ok_or_else(|| at("expected 'key = value'"))?;
        let section = sections
            .last_mut()
            .ok_or_else(|| at("an option before any [section]"))?;
        section.keys.push((
            trimmed[..sep].trim().to_ascii_lowercase(),
            trimmed[sep + 1..].trim().to_string(),
        ));
        last_key = true;
    }
    Ok(sections)
}

/// A line without its comment: a whole-line `;` or `#`, or one after whitespace.
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with([';', '#']) {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if (*b == b';' || *b == b'#') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansions_and_environment_read_as_supervisord_does() {
        let mut vars = HashMap::new();
        vars.insert("program_name", "worker".to_string());
        vars.insert("process_num", "3".to_string());
        assert_eq!(
            expand("%(program_name)s_%(process_num)02d 100%%", &vars).unwrap(),
            "worker_03 100%"
        );
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand("%(ENV_PATH)s", &vars).unwrap(), path);
        assert!(
            expand("%(nope)s", &vars)
                .unwrap_err()
                .contains("unknown expansion")
        );
        let env = environment("A=\"1,2\",B='x y', C=plain").unwrap();
        assert_eq!(env["A"], "1,2");
        assert_eq!(env["B"], "x y");
        assert_eq!(env["C"], "plain");
        assert!(environment("A=\"open").is_err());
    }

    #[test]
    fn ini_comments_and_continuations() {
        let text = "; top\n[program:a]\ncommand = run ; a comment\nenvironment = A=1,\n  B=2\nurl=http://x#y\n";
        let s = parse(text, "t", Path::new("/")).unwrap();
        assert_eq!(s[0].get("command"), Some("run"));
        assert_eq!(s[0].get("environment"), Some("A=1,\nB=2"));
        assert_eq!(
            s[0].get("url"),
            Some("http://x#y"),
            "no whitespace: not a comment"
        );
    }
}
