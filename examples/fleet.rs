//! Runs a fleet of services in the foreground with a live status table.
//!
//! ```text
//! cargo run --release --example fleet                 # the built-in demo fleet, until Ctrl-C
//! cargo run --release --example fleet -- --once       # start, print the table once, stop
//! cargo run --release --example fleet -- --for 10s    # run for 10 seconds, then stop
//! cargo run --release --example fleet -- --state DIR  # keep state in DIR (default: temporary)
//! ```
//!
//! Ctrl-C or SIGTERM stops the fleet gracefully (the table shows the stop); a second one
//! kills at once.

use sheepdog::{
    Backoff, Event, RestartPolicy, ServiceInfo, ServiceSpec, Supervisor, TerminationSignals,
};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

/// The demo: needs nothing but a POSIX shell.
fn demo_fleet() -> Vec<ServiceSpec> {
    let sh = |name: &str, script: &str| ServiceSpec::new(name, "sh").args(["-c", script]);
    vec![
        sh(
            "ticker",
            "i=0; while :; do i=$((i+1)); echo tick $i; sleep 1; done",
        ),
        sh("flaky", "echo up; sleep 3; echo 'crashing' >&2; exit 3").restart(
            RestartPolicy::on_failure()
                .backoff(Backoff::exponential(
                    Duration::from_millis(250),
                    Duration::from_secs(4),
                ))
                .stable_after(Duration::from_secs(10)),
        ),
        sh("setup", "echo preparing; sleep 0.5; echo ready").restart(RestartPolicy::never()),
        sh("chatty", "while :; do date; sleep 0.2; done"),
    ]
}

struct Args {
    once: bool,
    run_for: Option<Duration>,
    state: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        once: false,
        run_for: None,
        state: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--once" => args.once = true,
            "--for" => {
                let v = it.next().ok_or("--for needs a duration such as 10s")?;
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--for: '{v}' is not a number of seconds"))?;
                args.run_for = Some(Duration::from_secs_f64(secs));
            }
            "--state" => args.state = Some(it.next().ok_or("--state needs a directory")?),
            "-h" | "--help" => {
                println!("usage: fleet [--once] [--for SECONDS] [--state DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(args)
}

fn ago(t: SystemTime) -> String {
    let secs = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn table(services: &[ServiceInfo]) -> String {
    let mut out = format!(
        "{:<10} {:<9} {:>7} {:>7} {:>8}  {}\n",
        "name", "status", "pid", "uptime", "restarts", "last exit"
    );
    for s in services {
        let pid = s.pid().map_or("-".into(), |p| p.to_string());
        let uptime = s.started_at().map_or("-".into(), ago);
        let last = s
            .last_exit()
            .map_or("-".into(), |e| format!("{e} ({} ago)", ago(e.at())));
        out += &format!(
            "{:<10} {:<9} {:>7} {:>7} {:>8}  {}\n",
            s.name(),
            s.status(),
            pid,
            uptime,
            s.restarts(),
            last
        );
    }
    out
}

fn show(sup: &Supervisor, tty: bool, drawn: &mut usize) {
    let Ok(services) = sup.list() else { return };
    let text = table(&services);
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let signals = TerminationSignals::install()?;
    let sup = match &args.state {
        Some(dir) => Supervisor::open(dir)?,
        None => Supervisor::temporary()?,
    };
    let events = sup.subscribe();
    for spec in demo_fleet() {
        if let Err(e) = sup.start(spec) {
            eprintln!("{e}");
        }
    }
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0;
    if args.once {
        std::thread::sleep(Duration::from_millis(200));
        show(&sup, false, &mut drawn);
        sup.shutdown()?;
        return Ok(());
    }
    println!(
        "state in {} (Ctrl-C stops the fleet)",
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
                    Event::Backoff { name, delay } => println!("{name}: restarting in {delay:?}"),
                    Event::Errored { name, reason } => println!("{name}: errored: {reason}"),
                    _ => {}
                }
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        if signals.wait_timeout(refresh).is_some() {
            break;
        }
    }
    println!("stopping the fleet (again to kill at once)");
    // A second signal while stopping: kill what is left and leave.
    std::thread::scope(|scope| {
        let sup = &sup;
        let stopper = scope.spawn(move || sup.stop("all"));
        while !stopper.is_finished() {
            if signals.wait_timeout(Duration::from_millis(100)).is_some() {
                for info in sup.list().unwrap_or_default() {
                    if let Some(pid) = info.pid() {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &format!("-{pid}")])
                            .status();
                    }
                }
            }
        }
    });
    show(&sup, tty, &mut drawn);
    sup.shutdown()?;
    // Stopped services stay stopped on the next run with --state: start them again.
    Ok(())
}
