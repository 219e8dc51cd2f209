//! `sheepdog`: operate a running sheepdog host from a shell, through its control socket;
//! with no host running, read what its state directory recorded.
//!
//! Exit codes: 0 success, 1 an error (the host's, or reading the state), 2 a usage error,
//! 3 no host is running (for a command that changes something, or when none can be found).

mod render;
mod run;

use clap::{Parser, Subcommand, ValueEnum};
use render::Style;
use sheepdog::control::protocol::{self, LogLine, Reply, Request, Response, Streams};
use sheepdog::control::{Client, StateReader};
use sheepdog::{Error, ErrorKind, Fleet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Operate a running sheepdog host: list, inspect, start, stop and follow its services.
///
/// Without --state (or SHEEPDOG_STATE), the command talks to the only running host, if
/// there is one (see `sheepdog hosts`). With no host running, ls, describe, logs, history
/// and explain read the state directory as the last host left it; the commands that change
/// something fail with exit code 3.
///
/// Exit codes: 0 success, 1 error, 2 usage error, 3 no host running.
#[derive(Parser)]
#[command(name = "sheepdog", version, max_term_width = 100)]
struct Cli {
    /// The host's state directory.
    #[arg(long, global = true, env = "SHEEPDOG_STATE", value_name = "DIR")]
    state: Option<PathBuf>,
    /// Print JSON: one document, or one JSON object a line for logs and events.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the services: id, name, status, pid, uptime, restarts, CPU, memory, last exit.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one service in full.
    Describe {
        /// A name or an id.
        target: String,
    },
    /// Start services (with their stored definitions).
    Start {
        /// A name, an id, or "all".
        target: String,
    },
    /// Stop services (the stop signal, then SIGKILL after their stop timeout).
    Stop {
        /// A name, an id, or "all".
        target: String,
    },
    /// Restart services.
    Restart {
        /// A name, an id, or "all".
        target: String,
    },
    /// Stop and remove services, with their logs.
    Delete {
        /// A name, an id, or "all".
        target: String,
    },
    /// Show a service's logs, both streams labelled.
    Logs {
        /// A name or an id.
        target: String,
        /// How many of the last lines of each stream.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep following new lines (across rotations and restarts) until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// With -f, begin at this time instead: "10m" ago, or an RFC 3339 UTC time (logs with
        /// timestamps); or just after a cursor a line carried (--json), with one --stream.
        #[arg(long, value_name = "WHEN", requires = "follow")]
        since: Option<String>,
        /// Which streams.
        #[arg(long, value_enum, default_value_t = StreamArg::Both)]
        stream: StreamArg,
    },
    /// A service's recorded runs, newest first.
    History {
        /// A name or an id.
        target: String,
        /// How many runs.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Why a service is in its status.
    Explain {
        /// A name or an id.
        target: String,
    },
    /// CPU, memory, processes and threads of services.
    Stats {
        /// A name, an id, or "all".
        #[arg(default_value = "all")]
        target: String,
    },
    /// Print events as they happen, until interrupted.
    Events {
        /// Follow (the only mode; accepted for habit's sake).
        #[arg(short, long)]
        follow: bool,
    },
    /// Converge the host to a fleet file (TOML, JSON, a Procfile, or a PM2 or supervisord
    /// file, imported).
    Apply {
        /// The fleet file.
        file: PathBuf,
        /// Also stop and delete the services the file does not list.
        #[arg(long)]
        prune: bool,
        /// The file's format, when its name does not tell.
        #[arg(long, value_parser = ["toml", "json", "procfile", "pm2", "supervisord"])]
        format: Option<String>,
        /// A PM2 profile: each app's env_<PROFILE> over its env.
        #[arg(long)]
        profile: Option<String>,
    },
    /// List the hosts running on this machine (for this user).
    Hosts,
    /// Run a fleet file in the foreground: a host of its own, with a live table on a
    /// terminal; a container's entrypoint (as PID 1 it reaps every orphan).
    ///
    /// SIGTERM, SIGINT or SIGHUP stops the fleet, dependents first, within --grace, then
    /// SIGKILLs what is left; a second signal kills at once. Exit codes: 0 stopped cleanly,
    /// 1 error, 2 usage, 4 a critical service failed, 5 the grace period ran out, 6 killed
    /// at once by a second signal.
    Run {
        /// The fleet file: TOML, JSON, or a Procfile (Procfile, Procfile.dev, *.procfile).
        file: PathBuf,
        /// Start, print the table once, stop.
        #[arg(long)]
        once: bool,
        /// Stop after this long ("10s", "5m").
        #[arg(long = "for", value_name = "DURATION", value_parser = duration)]
        run_for: Option<Duration>,
        /// Follow this service's output (both streams, labelled) instead of the table.
        #[arg(long, value_name = "NAME")]
        logs: Option<String>,
        /// One deadline for stopping the whole fleet (default: the fleet's [supervisor]
        /// grace, else the longest stop timeout of each dependency wave, summed).
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        grace: Option<Duration>,
        /// Serve /livez, /readyz and /metrics over HTTP on this address ("127.0.0.1:9090").
        #[arg(long, value_name = "ADDRESS")]
        endpoints: Option<String>,
        /// A service whose failure stops the fleet with exit code 4 (repeatable).
        #[arg(long, value_name = "NAME")]
        critical: Vec<String>,
        /// A service /readyz requires (repeatable; default: every service).
        #[arg(long, value_name = "NAME")]
        ready: Vec<String>,
    },
    /// Write what runs a fleet file under an orchestrator, on stdout.
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
}

#[derive(Subcommand)]
enum ExportTarget {
    /// A Kubernetes manifest (JSON): a ConfigMap with the fleet and a Deployment running
    /// `sheepdog run` with probes on /livez and /readyz.
    Kubernetes {
        /// The fleet file.
        file: PathBuf,
        /// The container image (it must hold the sheepdog command and the programs).
        #[arg(long)]
        image: String,
        /// The Deployment's name (default: the fleet file's name).
        #[arg(long)]
        name: Option<String>,
        /// The HTTP endpoints' port.
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// One container per service instead of the runner.
        #[arg(long)]
        per_service: bool,
    },
    /// A systemd unit that runs `sheepdog run` at boot.
    Systemd {
        /// The fleet file.
        file: PathBuf,
        /// The unit's name (default: the fleet file's name).
        #[arg(long)]
        name: Option<String>,
        /// The sheepdog command's path.
        #[arg(long, default_value = "/usr/local/bin/sheepdog")]
        command: String,
        /// The user to run as.
        #[arg(long)]
        user: Option<String>,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (\"500ms\", \"10s\", \"5m\")"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{text}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A name for what a fleet file becomes: its file name without extension, or `sheepdog`.
fn fleet_name(file: &Path) -> String {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() || name == "procfile" {
        "sheepdog".into()
    } else {
        name
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StreamArg {
    Out,
    Err,
    Both,
}

impl StreamArg {
    fn streams(self) -> Streams {
        match self {
            StreamArg::Out => Streams::Stdout,
            StreamArg::Err => Streams::Stderr,
            StreamArg::Both => Streams::Both,
        }
    }
}

/// Prints a line on stdout; once stdout is gone (a closed pipe: `sheepdog logs -f | head`),
/// there is no one left to tell anything, and the command ends quietly.
macro_rules! say {
    ($($arg:tt)*) => { emit(&(format!($($arg)*) + "\n")) };
}

/// Prints on stdout, as [`say`] without the newline.
macro_rules! put {
    ($($arg:tt)*) => { emit(&format!($($arg)*)) };
}

fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Exit code 3: no host runs where one is needed.
const NOT_RUNNING: u8 = 3;

/// A failure to report: the error, and whether it is about a host not running.
struct Failure(Error);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure(e)
    }
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> Failure {
    Failure(error(kind, message.into()))
}

/// An error of the command itself, in the crate's type (its constructor is the crate's own).
fn error(kind: ErrorKind, message: String) -> Error {
    protocol::ErrorReply {
        kind: protocol::kind_name(kind).to_string(),
        service: None,
        message,
    }
    .to_error()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let style = Style::detect();
    let json = cli.json;
    if let Command::Run { .. } = cli.command {
        return ExitCode::from(foreground(cli));
    }
    if let Command::Export { target } = cli.command {
        return match export(target) {
            Ok(text) => {
                put!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sheepdog: {}", style_error(&e));
                ExitCode::FAILURE
            }
        };
    }
    match run(cli, &style) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(e)) => {
            if json {
                let reply = protocol::Response::Error(protocol::ErrorReply {
                    kind: protocol::kind_name(e.kind()).to_string(),
                    service: e.service().map(str::to_string),
                    message: e.to_string(),
                });
                say!("{}", serde_json::to_string(&reply).expect("serializes"));
            }
            eprintln!("sheepdog: {}", style_error(&e));
            if e.kind() == ErrorKind::NotRunning {
                ExitCode::from(NOT_RUNNING)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn style_error(e: &Error) -> String {
    run::describe_error(e)
}

/// `sheepdog run`.
fn foreground(cli: Cli) -> u8 {
    let Command::Run {
        file,
        once,
        run_for,
        logs,
        grace,
        endpoints,
        critical,
        ready,
    } = cli.command
    else {
        unreachable!("called for run only");
    };
    let options = run::Options {
        file,
        once,
        run_for,
        state: cli.state,
        logs,
        grace,
        endpoints,
        critical,
        ready,
    };
    run::run(options, "sheepdog")
}

/// `sheepdog export`: the text to print.
fn export(target: ExportTarget) -> Result<String, Error> {
    match target {
        ExportTarget::Kubernetes {
            file,
            image,
            name,
            port,
            per_service,
        } => {
            let fleet = run::load(&file)?;
            let options =
                sheepdog::export::Kubernetes::new(name.unwrap_or_else(|| fleet_name(&file)), image)
                    .port(port)
                    .per_service(per_service);
            fleet.to_kubernetes(&options)
        }
        ExportTarget::Systemd {
            file,
            name,
            command,
            user,
        } => {
            let fleet = run::load(&file)?;
            let path = std::fs::canonicalize(&file).unwrap_or(file.clone());
            let mut options = sheepdog::export::Systemd::new(
                name.unwrap_or_else(|| fleet_name(&file)),
                path.display().to_string(),
            )
            .command(command);
            if let Some(user) = user {
                options = options.user(user);
            }
            Ok(fleet.to_systemd(&options))
        }
    }
}

/// Where the command's answers come from.
enum Source {
    Host(Client),
    /// No host runs: the state directory, read-only.
    Offline(Box<StateReader>),
}

fn run(cli: Cli, style: &Style) -> Result<(), Failure> {
    if let Command::Hosts = cli.command {
        return hosts(cli.json, style);
    }
    let state = state_dir(cli.state)?;
    let reads = matches!(
        cli.command,
        Command::Ls
            | Command::Describe { .. }
            | Command::Logs { .. }
            | Command::History { .. }
            | Command::Explain { .. }
    );
    let source = match Client::connect(&state) {
        Ok(client) => Source::Host(client),
        Err(e) if e.kind() == ErrorKind::NotRunning && reads => {
            let reader = StateReader::open(&state)?;
            eprintln!(
                "sheepdog: no host is running for '{}': showing what it last recorded",
                state.display()
            );
            Source::Offline(Box::new(reader))
        }
        Err(e) if e.kind() == ErrorKind::NotRunning => {
            return Err(fail(
                ErrorKind::NotRunning,
                format!(
                    "no host is running for '{}': nothing can be changed (start the application that embeds it)",
                    state.display()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let json = cli.json;
    match (cli.command, source) {
        (Command::Ls, source) => ls(source, json, style),
        (Command::Describe { target }, source) => {
            let service = match source {
                Source::Host(mut c) => match c.call(&Request::Describe { target })? {
                    Reply::Describe(s) => *s,
                    other => return Err(unexpected(other)),
                },
                Source::Offline(r) => r.describe(&target)?,
            };
            if json {
                print_json(&service);
            } else {
                put!("{}", describe(&service, style));
            }
            Ok(())
        }
        (Command::History { target, limit }, source) => {
            let runs = match source {
                Source::Host(mut c) => match c.call(&Request::History { target, limit })? {
                    Reply::History(runs) => runs,
                    other => return Err(unexpected(other)),
                },
                Source::Offline(r) => r.history(&target, limit)?,
            };
            if json {
                print_json(&runs);
            } else {
                put!("{}", render::history(&runs, style));
            }
            Ok(())
        }
        (Command::Explain { target }, source) => {
            let explanation = match source {
                Source::Host(mut c) => match c.call(&Request::Explain { target })? {
                    Reply::Explain(e) => e,
                    other => return Err(unexpected(other)),
                },
                Source::Offline(r) => r.explain(&target)?,
            };
            if json {
                print_json(&explanation);
            } else {
                say!(
                    "{}: {}",
                    style.paint(&explanation.service, "1"),
                    explanation.text
                );
            }
            Ok(())
        }
        (
            Command::Logs {
                target,
                lines,
                follow,
                since,
                stream,
            },
            source,
        ) => logs(source, &target, lines, follow, since, stream, json, style),
        (command, Source::Host(mut client)) => change(&mut client, command, json, style),
        (_, Source::Offline(_)) => unreachable!("only reads are served offline"),
    }
}

/// The state directory: the one given, else the only running host's.
fn state_dir(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let live: Vec<_> = sheepdog::control::hosts()?
        .into_iter()
        .filter(|h| !h.is_stale())
        .collect();
    match live.as_slice() {
        [] => Err(fail(
            ErrorKind::NotRunning,
            "no host is running (give the state directory with --state DIR or SHEEPDOG_STATE)",
        )),
        [one] => Ok(one.state_dir().to_path_buf()),
        many => Err(fail(
            ErrorKind::InvalidSpec,
            format!(
                "{} hosts are running; say which with --state: {}",
                many.len(),
                many.iter()
                    .map(|h| h.state_dir().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn unexpected(reply: Reply) -> Failure {
    fail(
        ErrorKind::Protocol,
        format!("the host answered with {reply:?}"),
    )
}

fn print_json<T: serde::Serialize>(value: &T) {
    say!("{}", serde_json::to_string(value).expect("serializes"));
}

fn ls(source: Source, json: bool, style: &Style) -> Result<(), Failure> {
    let (running, services, stats) = match source {
        Source::Host(mut c) => {
            let services = match c.call(&Request::List)? {
                Reply::List(s) => s,
                other => return Err(unexpected(other)),
            };
            let stats = match c.call(&Request::Stats {
                target: "all".into(),
            })? {
                Reply::Stats(s) => s,
                other => return Err(unexpected(other)),
            };
            (true, services, stats)
        }
        Source::Offline(r) => (false, r.list()?, Vec::new()),
    };
    if json {
        #[derive(serde::Serialize)]
        struct Ls<'a> {
            running: bool,
            services: &'a [protocol::Service],
            stats: &'a [protocol::Stats],
        }
        print_json(&Ls {
            running,
            services: &services,
            stats: &stats,
        });
    } else if services.is_empty() {
        say!("no services");
    } else {
        put!("{}", render::services(&services, &stats, style));
    }
    Ok(())
}

fn describe(s: &protocol::Service, style: &Style) -> String {
    let spec = &s.spec;
    let mut out = String::new();
    let mut field = |k: &str, v: String| out += &format!("{:<13} {v}\n", style.paint(k, "2"));
    field("name", style.paint(&s.name, "1"));
    field("id", s.id.to_string());
    let mut status = style.status(s.status);
    if let Some(ms) = s.next_start_in_ms {
        status += &format!(
            " (next start in {})",
            render::span(Duration::from_millis(ms))
        );
    }
    field("status", status);
    if let Some(up) = s.desired_up {
        field("desired", if up { "up" } else { "down" }.to_string());
    }
    if let Some(pid) = s.pid {
        field("pid", pid.to_string());
    }
    if let Some(t) = s.started_at_ms {
        field(
            "uptime",
            format!(
                "{} (since {})",
                render::span(render::since(t)),
                render::timestamp(t)
            ),
        );
    }
    field("restarts", s.restarts.to_string());
    if let Some(e) = &s.last_exit {
        field("last exit", render::exit(e));
    }
    if let Some(text) = &s.status_text {
        field("status text", text.clone());
    }
    if s.log_dropped_bytes > 0 {
        field("log dropped", format!("{} bytes", s.log_dropped_bytes));
    }
    if s.notify_rejected > 0 {
        field("notify refused", s.notify_rejected.to_string());
    }
    let command = std::iter::once(spec.program())
        .chain(spec.get_args().iter().map(|a| a.as_os_str()))
        .map(|a| shell_word(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    field("command", command);
    // The rest of the definition, as a fleet file would hold it.
    let fleet = Fleet::new([spec.clone()]);
    match fleet.to_toml_string() {
        Ok(toml) => {
            out += &style.paint("definition", "2");
            out += "\n";
            for line in toml.lines().filter(|l| !l.trim().is_empty()) {
                out += "  ";
                out += line;
                out += "\n";
            }
        }
        Err(e) => out += &format!("definition: {e}\n"),
    }
    out
}

fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[allow(clippy::too_many_arguments)]
fn logs(
    source: Source,
    target: &str,
    lines: usize,
    follow: bool,
    since: Option<String>,
    stream: StreamArg,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    let streams = stream.streams();
    let print = |line: &LogLine| {
        if json {
            print_json(line);
        } else {
            let (label, code) = match line.stream {
                sheepdog::Stream::Stdout => ("out", "32"),
                sheepdog::Stream::Stderr => ("err", "31"),
            };
            say!(
                "{} {} {}",
                style.paint(&line.service, "1"),
                style.paint(&format!("{label} |"), code),
                line.text
            );
        }
    };
    match source {
        Source::Host(mut client) if follow => {
            let (cursor, since_ms) = match since.as_deref().map(parse_since).transpose()? {
                Some(Since::Cursor(c)) => (Some(c), None),
                Some(Since::Time(ms)) => (None, Some(ms)),
                None => (None, None),
            };
            let reply = client.call(&Request::Follow {
                target: target.to_string(),
                streams,
                lines: if cursor.is_some() || since_ms.is_some() {
                    0
                } else {
                    lines
                },
                cursor,
                since_ms,
            })?;
            if !matches!(reply, Reply::Follow(_)) {
                return Err(unexpected(reply));
            }
            loop {
                match client.next_message()? {
                    Some(Response::Log(line)) => {
                        print(&line);
                    }
                    Some(Response::End(end)) => {
                        eprintln!("sheepdog: {}", end.reason);
                        return Ok(());
                    }
                    Some(Response::Error(e)) => return Err(e.to_error().into()),
                    Some(_) => {}
                    None => {
                        eprintln!("sheepdog: the host closed the connection");
                        return Ok(());
                    }
                }
            }
        }
        Source::Host(mut client) => {
            match client.call(&Request::Tail {
                target: target.to_string(),
                streams,
                lines,
            })? {
                Reply::Tail(all) => all.iter().for_each(print),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Source::Offline(reader) => {
            if since.is_some() {
                return Err(fail(
                    ErrorKind::NotRunning,
                    "--since needs a running host (with none, logs -f follows from the end)",
                ));
            }
            reader.tail(target, streams, lines)?.iter().for_each(print);
            if !follow {
                return Ok(());
            }
            let mut followers = Vec::new();
            for s in streams.each() {
                followers.push((s, reader.follow(target, s)?));
            }
            let name = reader.describe(target)?.name;
            loop {
                for (s, f) in &mut followers {
                    let wait = Duration::from_millis(50);
                    while let Some(text) = f.recv_timeout(wait) {
                        print(&LogLine {
                            service: name.clone(),
                            stream: *s,
                            text,
                            cursor: Some(f.cursor().to_string()),
                        });
                    }
                }
            }
        }
    }
}

enum Since {
    Cursor(String),
    Time(u64),
}

fn parse_since(text: &str) -> Result<Since, Failure> {
    let is_cursor = text.split_once(':').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.to_string() + b).bytes().all(|c| c.is_ascii_digit())
    });
    if is_cursor {
        return Ok(Since::Cursor(text.to_string()));
    }
    if let Some(ms) = render::parse_timestamp(text) {
        return Ok(Since::Time(ms));
    }
    let ago = parse_duration(text).ok_or_else(|| {
        fail(
            ErrorKind::InvalidSpec,
            format!("--since '{text}' is not a duration (10m), an RFC 3339 UTC time (2026-01-31T12:00:00Z) or a cursor (inode:offset)"),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(Since::Time(now.saturating_sub(ago).as_millis() as u64))
}

/// `90s`, `10m`, `2h`, `1d`, `500ms`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The commands that go to a running host only.
fn change(client: &mut Client, command: Command, json: bool, style: &Style) -> Result<(), Failure> {
    let count = |verb: &str, n: usize| {
        if json {
            print_json(&serde_json::json!({ "count": n }));
        } else {
            say!("{verb} {n} service{}", if n == 1 { "" } else { "s" });
        }
    };
    match command {
        Command::Start { target } => match client.call(&Request::Start {
            target: Some(target),
            spec: None,
        })? {
            Reply::Start(services) => {
                if json {
                    print_json(&services);
                } else {
                    for s in &services {
                        say!("{} {}", style.paint(&s.name, "1"), style.status(s.status));
                    }
                }
            }
            other => return Err(unexpected(other)),
        },
        Command::Stop { target } => match client.call(&Request::Stop { target })? {
            Reply::Stop(n) => count("stopped", n),
            other => return Err(unexpected(other)),
        },
        Command::Restart { target } => match client.call(&Request::Restart { target })? {
            Reply::Restart(n) => count("restarted", n),
            other => return Err(unexpected(other)),
        },
        Command::Delete { target } => match client.call(&Request::Delete { target })? {
            Reply::Delete(n) => count("deleted", n),
            other => return Err(unexpected(other)),
        },
        Command::Stats { target } => match client.call(&Request::Stats { target })? {
            Reply::Stats(stats) => {
                if json {
                    print_json(&stats);
                } else {
                    put!("{}", render::stats(&stats, style));
                }
            }
            other => return Err(unexpected(other)),
        },
        Command::Apply {
            file,
            prune,
            format,
            profile,
        } => {
            let fleet = load_fleet(&file, format.as_deref(), profile.as_deref())?;
            match client.call(&Request::Apply { fleet, prune })? {
                Reply::Apply(applied) => {
                    if json {
                        print_json(&applied);
                    } else {
                        for (what, names) in [
                            ("started", &applied.started),
                            ("restarted", &applied.restarted),
                            ("scaled", &applied.scaled),
                            ("defined", &applied.defined),
                            ("unchanged", &applied.unchanged),
                            ("deleted", &applied.deleted),
                        ] {
                            if !names.is_empty() {
                                say!("{:<10} {}", style.paint(what, "2"), names.join(", "));
                            }
                        }
                        for f in &applied.failed {
                            say!(
                                "{:<10} {}: {}",
                                style.paint("failed", "31"),
                                f.name,
                                f.error
                            );
                        }
                    }
                    if !applied.failed.is_empty() {
                        return Err(fail(
                            ErrorKind::Spawn,
                            format!("{} service(s) could not be applied", applied.failed.len()),
                        ));
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        Command::Events { .. } => {
            match client.call(&Request::Subscribe)? {
                Reply::Subscribe(_) => {}
                other => return Err(unexpected(other)),
            }
            loop {
                match client.next_message()? {
                    Some(Response::Event(event)) => {
                        if json {
                            print_json(&event);
                        } else {
                            say!("{}", event_line(&event, style));
                        }
                    }
                    Some(Response::End(end)) => {
                        eprintln!("sheepdog: {}", end.reason);
                        return Ok(());
                    }
                    Some(_) => {}
                    None => {
                        eprintln!("sheepdog: the host closed the connection");
                        return Ok(());
                    }
                }
            }
        }
        Command::Ls
        | Command::Describe { .. }
        | Command::Logs { .. }
        | Command::History { .. }
        | Command::Explain { .. }
        | Command::Hosts
        | Command::Run { .. }
        | Command::Export { .. } => unreachable!("handled by run and main"),
    }
    Ok(())
}

fn load_fleet(file: &Path, format: Option<&str>, profile: Option<&str>) -> Result<Fleet, Failure> {
    // clap accepts only the names `Format::from_name` knows.
    let format = format.map(|name| sheepdog::Format::from_name(name).expect("a known format"));
    let fleet = Fleet::load(file, format, profile)?;
    for warning in fleet.warnings() {
        eprintln!("sheepdog: warning: {warning}");
    }
    Ok(fleet)
}

fn event_line(event: &protocol::Event, style: &Style) -> String {
    use protocol::Event as E;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let clock = render::timestamp(now.as_millis() as u64);
    let value = serde_json::to_value(event).expect("serializes");
    let kind = value["kind"].as_str().unwrap_or("event").to_string();
    let (code, detail) = match event {
        E::Started { pid, .. } => ("32", format!("pid {pid}")),
        E::Exited { pid, exit, .. } => ("33", format!("pid {pid}: {exit}")),
        E::Restarting {
            reason, delay_ms, ..
        } => ("33", format!("{reason}; in {delay_ms} ms")),
        E::Backoff { delay_ms, .. } => ("33", format!("next start in {delay_ms} ms")),
        E::Errored { reason, .. } | E::Unhealthy { reason, .. } => ("31", reason.clone()),
        E::LogError { error, .. } | E::StateDirLost { error } => ("31", error.clone()),
        E::Reclaimed { pids, .. } => ("33", format!("killed {pids:?}")),
        E::Lagged { missed } => ("31", format!("{missed} events missed")),
        _ => ("", String::new()),
    };
    format!(
        "{} {} {} {detail}",
        style.paint(&clock, "2"),
        style.paint(event.service().unwrap_or("-"), "1"),
        style.paint(&kind, code)
    )
    .trim_end()
    .to_string()
}

fn hosts(json: bool, style: &Style) -> Result<(), Failure> {
    let hosts = sheepdog::control::hosts()?;
    if json {
        let list: Vec<_> = hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "pid": h.pid(),
                    "state_dir": h.state_dir(),
                    "socket": h.socket(),
                    "version": h.version(),
                    "started_at_ms": h.started_at_ms(),
                    "stale": h.is_stale(),
                })
            })
            .collect();
        print_json(&list);
        return Ok(());
    }
    if hosts.is_empty() {
        say!("no hosts");
        return Ok(());
    }
    let mut t = render::Table::new(&[
        ("pid", true),
        ("status", false),
        ("uptime", true),
        ("version", false),
        ("state directory", false),
    ]);
    for h in &hosts {
        let (status, code) = if h.is_stale() {
            ("stale (host died)", "31")
        } else {
            ("running", "32")
        };
        t.row(vec![
            (h.pid().to_string(), ""),
            (status.to_string(), code),
            (render::span(render::since(h.started_at_ms())), ""),
            (h.version().to_string(), ""),
            (h.state_dir().display().to_string(), "1"),
        ]);
    }
    put!("{}", t.render(style));
    Ok(())
}
