//! A foreground supervisor for the anchor benchmark harness (`bench/anchors-driver.sh`):
//! starts N copies of one command as services `t0000`, `t0001`, … and keeps them running
//! until SIGTERM or SIGINT, then stops them all and exits.
//!
//! ```text
//! cargo build --release --example bench_driver
//! target/release/examples/bench_driver --services FILE --state DIR [--pid-file FILE]
//!     [--containment auto|cgroup|process-group] [--warm FIFO]
//! ```
//!
//! The services file is one line of tab-separated fields:
//!
//! ```text
//! N <TAB> restart|never <TAB> program <TAB> arg ...
//! ```
//!
//! `restart` restarts every exit at once (`RestartPolicy::always()` with `Backoff::none()`);
//! `never` does not restart (`RestartPolicy::never()`). Log rotation is off. State and logs
//! live in the state directory: the output of `t0000` goes to `DIR/logs/t0000.out.log`.
//!
//! With `--warm FIFO` (a named pipe that exists) the fleet is added to a supervisor that is
//! already running: the supervisor opens, `bench_driver: open` goes to stderr, and the fleet
//! starts once a writer has opened the FIFO and closed it (`printf go > FIFO`), as the
//! harness's warm drivers (`drivers/pm2-warm.sh`) measure an API call to a running daemon.

use sheepdog::{
    Backoff, Containment, LogPolicy, RestartPolicy, ServiceSpec, Supervisor, TerminationSignals,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

struct Fleet {
    n: usize,
    restart: RestartPolicy,
    program: String,
    args: Vec<String>,
}

fn read_fleet(path: &Path) -> Result<Fleet, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read services file '{}': {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    let mut fields = line.split('\t');
    let usage = "the services file must hold: N<TAB>restart|never<TAB>program<TAB>args...";
    let n = fields.next().and_then(|f| f.parse().ok()).ok_or(usage)?;
    let restart = match fields.next() {
        Some("restart") => RestartPolicy::always().backoff(Backoff::none()),
        Some("never") => RestartPolicy::never(),
        _ => return Err(usage.into()),
    };
    let program = fields.next().filter(|p| !p.is_empty()).ok_or(usage)?;
    Ok(Fleet {
        n,
        restart,
        program: program.to_string(),
        args: fields.map(str::to_string).collect(),
    })
}

/// Starts the fleet: one request and one transaction for all of it, as `apply` does.
/// Returns whether every service started.
fn start_fleet(sup: &Supervisor, fleet: &Fleet) -> Result<bool, Error> {
    let t0 = Instant::now();
    let specs = (0..fleet.n).map(|i| {
        ServiceSpec::new(format!("t{i:04}"), fleet.program.as_str())
            .args(&fleet.args)
            .restart(fleet.restart.clone())
            .log(LogPolicy::default().max_bytes(0))
    });
    let mut ok = true;
    for result in sup.start_many(specs)? {
        if let Err(e) = result {
            eprintln!("bench_driver: {e}");
            ok = false;
        }
    }
    eprintln!(
        "bench_driver: started {} services in {:?}",
        fleet.n,
        t0.elapsed()
    );
    Ok(ok)
}

fn main() -> Result<(), Error> {
    let (mut services, mut state, mut pid_file, mut containment) = (None, None, None, None);
    let mut warm = None;
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let slot = match flag.to_str() {
            Some("--services") => &mut services,
            Some("--state") => &mut state,
            Some("--pid-file") => &mut pid_file,
            Some("--containment") => &mut containment,
            Some("--warm") => &mut warm,
            _ => return Err(format!("unknown argument {flag:?}").into()),
        };
        let value = it.next().ok_or(format!("{flag:?} needs a value"))?;
        *slot = Some(PathBuf::from(value));
    }
    let usage = "usage: bench_driver --services FILE --state DIR [--pid-file FILE] \
                 [--containment auto|cgroup|process-group] [--warm FIFO]";
    let containment = match containment.as_deref().map(|c| c.to_str()) {
        None | Some(Some("auto")) => Containment::Auto,
        Some(Some("cgroup")) => Containment::Cgroup,
        Some(Some("process-group")) => Containment::ProcessGroup,
        Some(_) => return Err(usage.into()),
    };
    let fleet = read_fleet(&services.ok_or(usage)?)?;

    // Handlers first, so that a SIGTERM that comes early still stops the fleet cleanly.
    let signals = TerminationSignals::install()?;
    if let Some(path) = &pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
    }
    let sup = Arc::new(
        Supervisor::builder()
            .state_dir(state.ok_or(usage)?)
            .containment(containment)
            .open()?,
    );
    match warm {
        None => {
            if !start_fleet(&sup, &fleet)? {
                sup.shutdown()?;
                return Err("a service did not start".into());
            }
        }
        Some(fifo) => {
            eprintln!("bench_driver: open");
            let sup = sup.clone();
            // Blocks in the FIFO's open until the driver's `start` writes to it. Not joined:
            // a SIGTERM before that ends the process with this thread still waiting.
            std::thread::spawn(move || {
                let started = std::fs::read(&fifo)
                    .map_err(|e| format!("cannot read '{}': {e}", fifo.display()).into())
                    .and_then(|_| start_fleet(&sup, &fleet));
                if !matches!(started, Ok(true)) {
                    eprintln!("bench_driver: the fleet did not start: {started:?}");
                }
            });
        }
    }

    while signals.wait_timeout(Duration::from_secs(3600)).is_none() {}
    let t1 = Instant::now();
    let stopped = sup.stop("all")?;
    sup.shutdown()?;
    eprintln!(
        "bench_driver: stopped {stopped} services in {:?}",
        t1.elapsed()
    );
    Ok(())
}
