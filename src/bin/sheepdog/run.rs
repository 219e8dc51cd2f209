//! `sheepdog run FLEET`: a fleet in the foreground, as a terminal's job or a container's
//! entrypoint (PID 1), until a signal, `--for`, or a critical service's failure. Shared by
//! the `sheepdog` command and the `fleet` example, so it takes no command-line parser.
//!
//! Exit codes ([`CLEAN`], [`ERROR`], [`USAGE`], [`CRITICAL`], [`GRACE_EXCEEDED`],
//! [`KILLED`]) tell an orchestrator how it ended.

use crate::render::{self, Style};
use sheepdog::control::protocol;
use sheepdog::{
    Endpoints, Event, Fleet, Orphans, Prune, Status, Stream, Supervisor, TerminationSignals,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every service stopped within the grace period (after a signal or `--for`).
pub const CLEAN: u8 = 0;
/// The fleet could not be read or started, or the state directory opened.
pub const ERROR: u8 = 1;
/// The command line is wrong.
#[allow(dead_code)] // the example's parser uses it; clap exits with 2 by itself
pub const USAGE: u8 = 2;
/// A critical service failed: the fleet was stopped.
pub const CRITICAL: u8 = 4;
/// The grace period ran out: what was left was SIGKILLed.
pub const GRACE_EXCEEDED: u8 = 5;
/// A second signal came during the stop: the runner exited at once, and what was left died
/// with it (each service's main process by its parent-death signal, the rest by the
/// guardian within about a second, or by the kernel when the runner is PID 1).
pub const KILLED: u8 = 6;

/// What to run, and how.
#[derive(Debug, Default)]
pub struct Options {
    pub file: PathBuf,
    /// Start, print the table once, stop.
    pub once: bool,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    pub state: Option<PathBuf>,
    /// Follow this service's output (both streams, labelled) instead of the table.
    pub logs: Option<String>,
    /// The deadline for stopping the fleet (default: the fleet's).
    pub grace: Option<Duration>,
    /// The HTTP endpoints' address (default: the fleet's, else none).
    pub endpoints: Option<String>,
    /// Critical services, besides the fleet's.
    pub critical: Vec<String>,
    /// The services `/readyz` requires, besides the fleet's.
    pub ready: Vec<String>,
}

/// Reads a fleet file in the format its name says ([`sheepdog::Format::detect`]: a
/// Procfile, TOML, JSON, a PM2 ecosystem file or a supervisord configuration), and prints
/// what an importer could not carry over.
pub fn load(file: &Path) -> sheepdog::Result<Fleet> {
    let fleet = Fleet::load(file, None, None)?;
    for warning in fleet.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(fleet)
}

/// An error as one line: its message, then each cause after a colon.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// What the main loop hears.
enum Heard {
    Signal,
    Event(Event),
    Line(&'static str, String),
}

/// Why the fleet is stopping.
enum Ending {
    Asked,
    Critical(String),
}

/// Runs the fleet; returns the exit code. Errors are printed on stderr as `what: line`.
pub fn run(options: Options, what: &str) -> u8 {
    match run_fleet(options, what) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{what}: {}", describe_error(&e));
            ERROR
        }
    }
}

fn run_fleet(options: Options, what: &str) -> sheepdog::Result<u8> {
    let fleet = load(&options.file)?;
    let settings = fleet.settings();
    let mut critical = settings.critical.clone();
    critical.extend(options.critical.iter().cloned());
    let mut ready = settings.ready.clone().unwrap_or_default();
    ready.extend(options.ready.iter().cloned());
    let names: Vec<&str> = fleet.services().iter().map(|s| s.name()).collect();
    if let Some(unknown) = critical
        .iter()
        .chain(&ready)
        .find(|n| !names.contains(&n.as_str()))
    {
        return Err(protocol::ErrorReply {
            kind: protocol::kind_name(sheepdog::ErrorKind::NotFound).into(),
            service: Some(unknown.clone()),
            message: format!("service '{unknown}' is not in {}", options.file.display()),
        }
        .to_error());
    }
    let grace = options.grace.unwrap_or_else(|| fleet.grace());
    let signals = TerminationSignals::install()?;
    let mut builder = Supervisor::builder();
    if let Some(dir) = options
        .state
        .clone()
        .or_else(|| settings.state_dir.clone().map(PathBuf::from))
    {
        builder = builder.state_dir(dir);
    }
    if std::process::id() == 1 {
        // An init: the runner waits for no child of its own.
        builder = builder.orphans(Orphans::ReapAll);
    }
    if let Some(address) = options.endpoints.clone().or(settings.endpoints.clone()) {
        let mut endpoints = Endpoints::new(address);
        if !ready.is_empty() {
            endpoints = endpoints.readiness(ready.clone());
        }
        builder = builder.endpoints(endpoints);
    }
    let sup = builder.open()?;
    let (tx, heard) = crossbeam_channel::unbounded();
    let events = sup.subscribe();
    {
        let signal_tx = tx.clone();
        std::thread::spawn(move || {
            loop {
                if signals.wait_timeout(Duration::from_secs(3600)).is_some()
                    && signal_tx.send(Heard::Signal).is_err()
                {
                    return;
                }
            }
        });
        let event_tx = tx.clone();
        std::thread::spawn(move || {
            for event in events {
                if event_tx.send(Heard::Event(event)).is_err() {
                    return;
                }
            }
        });
    }
    let applied = sup.apply(&fleet, Prune::Yes)?;
    let mut ending = None;
    for (name, error) in &applied.failed {
        eprintln!("{what}: {name}: {error}");
        if critical.contains(name) {
            ending = Some(Ending::Critical(format!("{name} could not start")));
        }
    }
    let style = Style::detect();
    let tty = style.width.is_some();
    let mut screen = Screen { tty, drawn: 0 };
    if let Some(address) = sup.endpoints_address() {
        eprintln!("{what}: HTTP endpoints on http://{address}/ (livez, readyz, metrics)");
    }
    if options.once && ending.is_none() {
        // Give the fleet a moment to leave `starting`, then show it once.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && sup.list()?.iter().any(|s| s.status() == Status::Starting)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        Screen {
            tty: false,
            drawn: 0,
        }
        .show(&sup, &style);
        ending = Some(Ending::Asked);
    }
    if let Some(name) = &options.logs {
        for (stream, label) in [(Stream::Stdout, "out"), (Stream::Stderr, "err")] {
            // From the start of the current file: what it wrote while the fleet started counts.
            let mut lines = sup.follow_from_start(name, stream)?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                loop {
                    if let Some(line) = lines.recv_timeout(Duration::from_secs(3600))
                        && tx.send(Heard::Line(label, line)).is_err()
                    {
                        return;
                    }
                }
            });
        }
    } else if ending.is_none() {
        println!(
            "{}: {} services, state in {} ({} stops the fleet within {})",
            options.file.display(),
            fleet.services().len(),
            sup.state_dir().display(),
            if tty { "Ctrl-C" } else { "SIGTERM" },
            render::span(grace),
        );
    }
    let until = options.run_for.map(|d| Instant::now() + d);
    let refresh = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let table = options.logs.is_none();
    let mut next_draw = Instant::now();
    while ending.is_none() {
        let now = Instant::now();
        if table && now >= next_draw {
            screen.show(&sup, &style);
            next_draw = now + refresh;
        }
        if until.is_some_and(|u| now >= u) {
            ending = Some(Ending::Asked);
            break;
        }
        let mut wait = if table { next_draw - now } else { refresh };
        if let Some(u) = until {
            wait = wait.min(u.saturating_duration_since(now));
        }
        match heard.recv_timeout(wait) {
            Ok(Heard::Signal) => ending = Some(Ending::Asked),
            Ok(Heard::Line(label, line)) => println!("{label} | {line}"),
            Ok(Heard::Event(event)) => {
                if let Some(why) = critical_failure(&sup, &critical, &event) {
                    ending = Some(Ending::Critical(why));
                } else if table && !tty {
                    // As plain lines, the events tell the story between tables.
                    if let Some(line) = event_line(&event) {
                        println!("{line}");
                    }
                }
            }
            Err(_) => {}
        }
    }
    let ending = ending.expect("the loop ends with an ending");
    screen.clear();
    match &ending {
        Ending::Critical(why) => {
            eprintln!("{what}: critical service failed: {why}: stopping the fleet")
        }
        Ending::Asked if options.once => {}
        Ending::Asked => println!(
            "{what}: stopping the fleet within {} (again to kill at once)",
            render::span(grace)
        ),
    }
    let begun = Instant::now();
    let stopped = std::thread::scope(|scope| {
        let sup = &sup;
        let stopper = scope.spawn(move || sup.shutdown_within(grace));
        while !stopper.is_finished() {
            if let Ok(Heard::Signal) = heard.recv_timeout(Duration::from_millis(50)) {
                eprintln!("{what}: killed at once");
                let _ = std::io::stdout().flush();
                std::process::exit(i32::from(KILLED));
            }
        }
        stopper.join().expect("shutdown does not panic")
    });
    let over = begun.elapsed() >= grace;
    if table && !options.once {
        screen.show(&sup, &style);
    }
    stopped?;
    Ok(match ending {
        Ending::Critical(_) => CRITICAL,
        Ending::Asked if over && grace > Duration::ZERO => {
            eprintln!(
                "{what}: the grace period ({}) ran out: what was left was killed",
                render::span(grace)
            );
            GRACE_EXCEEDED
        }
        Ending::Asked => CLEAN,
    })
}

/// Whether `event` says a critical service failed: it errored, or ended and will not be
/// restarted, with a failure.
fn critical_failure(sup: &Supervisor, critical: &[String], event: &Event) -> Option<String> {
    match event {
        Event::Errored { name, reason } if critical.contains(name) => {
            Some(format!("{name} errored: {reason}"))
        }
        Event::Exited { name, exit, .. } if critical.contains(name) && !exit.success() => {
            // The event follows the published status: exited means no restart is coming.
            let info = sup.describe(name).ok()?;
            (info.status() == Status::Exited).then(|| format!("{name} exited: {exit}"))
        }
        _ => None,
    }
}

fn event_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Exited { name, exit, .. } => format!("{name}: {exit}"),
        Event::Backoff { name, delay } => format!("{name}: restarting in {delay:?}"),
        Event::Errored { name, reason } => format!("{name}: errored: {reason}"),
        Event::Unhealthy { name, reason } => format!("{name}: unhealthy: {reason}"),
        _ => return None,
    })
}

/// The status table: redrawn in place on a terminal, printed anew otherwise.
struct Screen {
    tty: bool,
    /// Lines of the table last drawn in place.
    drawn: usize,
}

impl Screen {
    fn show(&mut self, sup: &Supervisor, style: &Style) {
        let (Ok(services), Ok(stats)) = (sup.list(), sup.stats("all")) else {
            return;
        };
        let services: Vec<protocol::Service> = services.iter().map(Into::into).collect();
        let stats: Vec<protocol::Stats> = stats.iter().map(Into::into).collect();
        let text = render::services(&services, &stats, style);
        let mut stdout = std::io::stdout().lock();
        if self.tty {
            self.clear_on(&mut stdout);
            let _ = write!(stdout, "{text}");
            self.drawn = text.lines().count();
        } else {
            let _ = writeln!(stdout, "{text}");
        }
        let _ = stdout.flush();
    }

    /// Takes the table drawn in place off the screen (and what the terminal echoed below it,
    /// a `^C`), so that what follows is not printed under a stale copy.
    fn clear(&mut self) {
        self.clear_on(&mut std::io::stdout().lock());
    }

    fn clear_on(&mut self, out: &mut impl Write) {
        if self.tty && self.drawn > 0 {
            let _ = write!(out, "\r\x1b[{}A\x1b[J", self.drawn);
            let _ = out.flush();
        }
        self.drawn = 0;
    }
}
