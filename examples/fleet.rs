//! Runs a fleet from a file in the foreground, with a live status table.
//!
//! ```text
//! cargo run --release --example fleet                      # examples/demo.toml, until Ctrl-C
//! cargo run --release --example fleet -- FILE              # a TOML or JSON fleet file, or a Procfile
//! cargo run --release --example fleet -- --once            # start, print the table once, stop
//! cargo run --release --example fleet -- --for 10          # run for 10 seconds, then stop
//! cargo run --release --example fleet -- --state DIR       # keep state in DIR (default: temporary)
//! cargo run --release --example fleet -- --logs NAME       # follow NAME's stdout instead of the table
//! ```
//!
//! Ctrl-C or SIGTERM stops the fleet gracefully (the table shows the stop); a second one
//! kills what is left at once.

use sheepdog::{
    Event, Fleet, Prune, ServiceInfo, Stats, Status, Stream, Supervisor, TerminationSignals,
};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

struct Args {
    file: PathBuf,
    once: bool,
    run_for: Option<Duration>,
    state: Option<String>,
    logs: Option<String>,
}

const USAGE: &str = "usage: fleet [FILE] [--once] [--for SECONDS] [--state DIR] [--logs NAME]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        file: Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml"),
        once: false,
        run_for: None,
        state: None,
        logs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--once" => args.once = true,
            "--for" => {
                let v = it.next().ok_or("--for needs a number of seconds")?;
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--for: '{v}' is not a number of seconds"))?;
                args.run_for = Some(Duration::from_secs_f64(secs.max(0.0)));
            }
            "--state" => args.state = Some(it.next().ok_or("--state needs a directory")?),
            "--logs" => args.logs = Some(it.next().ok_or("--logs needs a service name")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if other.starts_with('-') => {
                return Err(format!("unknown option '{other}'\n{USAGE}"))
            }
            file => args.file = PathBuf::from(file),
        }
    }
    Ok(args)
}

fn load(file: &Path) -> sheepdog::Result<Fleet> {
    let fleet = Fleet::load(file, None, None)?;
    for warning in fleet.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(fleet)
}

fn ago(t: SystemTime) -> String {
    let secs = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn table(services: &[ServiceInfo], stats: &[Stats]) -> String {
    let mut out = format!(
        "{:<10} {:<9} {:>7} {:>7} {:>8} {:>6} {:>9}  {}\n",
        "name", "status", "pid", "uptime", "restarts", "cpu", "memory", "last exit"
    );
    for s in services {
        let st = stats.iter().find(|x| x.name() == s.name());
        let running = s.pid().is_some();
        out += &format!(
            "{:<10} {:<9} {:>7} {:>7} {:>8} {:>6} {:>9}  {}\n",
            s.name(),
            s.status(),
            s.pid().map_or("-".into(), |p| p.to_string()),
            s.started_at().map_or("-".into(), ago),
            s.restarts(),
            st.filter(|_| running)
                .map_or("-".into(), |x| format!("{:.1}%", x.cpu_percent())),
            st.filter(|_| running).map_or("-".into(), |x| format!(
                "{:.1}M",
                x.rss_bytes() as f64 / (1 << 20) as f64
            )),
            s.last_exit()
                .map_or("-".into(), |e| format!("{e} ({} ago)", ago(e.at())))
        );
    }
    out
}

fn show(sup: &Supervisor, tty: bool, drawn: &mut usize) {
    let (Ok(services), Ok(stats)) = (sup.list(), sup.stats("all")) else {
        return;
    };
    let text = table(&services, &stats);
    let mut stdout = std::io::stdout().lock();
    if tty {
        // Move up over the previous table and redraw it in place.
        if *drawn > 0 {
            let _ = write!(stdout, "\x1b[{}A", *drawn);
        }
        for line in text.lines() {
            let _ = writeln!(stdout, "\x1b[2K{line}");
        }
        *drawn = text.lines().count();
    } else {
        let _ = writeln!(stdout, "{text}");
    }
    let _ = stdout.flush();
}

fn kill_all(sup: &Supervisor) {
    for info in sup.list().unwrap_or_default() {
        if let Some(pid) = info.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let fleet = load(&args.file)?;
    let signals = TerminationSignals::install()?;
    let state = args
        .state
        .clone()
        .or_else(|| fleet.settings().state_dir.clone());
    let sup = match &state {
        Some(dir) => Supervisor::open(dir)?,
        None => Supervisor::temporary()?,
    };
    let events = sup.subscribe();
    let applied = sup.apply(&fleet, Prune::Yes)?;
    for (name, error) in &applied.failed {
        eprintln!("{name}: {error}");
    }
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0;
    if args.once {
        // Give the fleet a moment to leave `starting`, then show it once.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && sup.list()?.iter().any(|s| s.status() == Status::Starting)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        show(&sup, false, &mut drawn);
        sup.shutdown()?;
        return Ok(());
    }
    if let Some(name) = &args.logs {
        let mut lines = sup.follow(name, Stream::Stdout)?;
        loop {
            if let Some(line) = lines.recv_timeout(Duration::from_millis(200)) {
                println!("{line}");
            }
            if signals.wait_timeout(Duration::ZERO).is_some() {
                break;
            }
        }
    } else {
        println!(
            "{}: {} services, state in {} (Ctrl-C stops the fleet)",
            args.file.display(),
            fleet.services().len(),
            sup.state_dir().display()
        );
        let until = args.run_for.map(|d| Instant::now() + d);
        let refresh = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        };
        loop {
            show(&sup, tty, &mut drawn);
            if !tty {
                // As plain lines, the events tell the story between tables.
                while let Some(e) = events.try_recv() {
                    match e {
                        Event::Exited { name, exit, .. } => println!("{name}: {exit}"),
                        Event::Backoff { name, delay } => {
                            println!("{name}: restarting in {delay:?}")
                        }
                        Event::Errored { name, reason } => println!("{name}: errored: {reason}"),
                        Event::Unhealthy { name, reason } => {
                            println!("{name}: unhealthy: {reason}")
                        }
                        _ => {}
                    }
                }
            }
            if until.is_some_and(|u| Instant::now() >= u) || signals.wait_timeout(refresh).is_some()
            {
                break;
            }
        }
    }
    println!("stopping the fleet (again to kill at once)");
    std::thread::scope(|scope| {
        let sup = &sup;
        let stopper = scope.spawn(move || sup.shutdown());
        while !stopper.is_finished() {
            if signals.wait_timeout(Duration::from_millis(100)).is_some() {
                kill_all(sup);
            }
        }
    });
    show(&sup, tty, &mut drawn);
    Ok(())
}
