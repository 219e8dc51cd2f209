//! A foreground supervisor for the anchor benchmark harness (`bench/anchors-driver.sh`):
//! starts N copies of one command as services `t0000`, `t0001`, … and keeps them running
//! until SIGTERM or SIGINT, then stops them all and exits.
//!
//! ```text
//! cargo build --release --example bench_driver
//! target/release/examples/bench_driver --services FILE --state DIR [--pid-file FILE]
//!     [--containment auto|cgroup|process-group]
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

use sheepdog::{
    Backoff, Containment, LogPolicy, RestartPolicy, ServiceSpec, Supervisor, TerminationSignals,
};
use std::path::{Path, PathBuf};
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

fn main() -> Result<(), Error> {
    let (mut services, mut state, mut pid_file, mut containment) = (None, None, None, None);
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let slot = match flag.to_str() {
            Some("--services") => &mut services,
            Some("--state") => &mut state,
            Some("--pid-file") => &mut pid_file,
            Some("--containment") => &mut containment,
            _ => return Err(format!("unknown argument {flag:?}").into()),
        };
        let value = it.next().ok_or(format!("{flag:?} needs a value"))?;
        *slot = Some(PathBuf::from(value));
    }
    let usage = "usage: bench_driver --services FILE --state DIR [--pid-file FILE] \
                 [--containment auto|cgroup|process-group]";
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
    let sup = Supervisor::builder()
        .state_dir(state.ok_or(usage)?)
        .containment(containment)
        .open()?;
    let t0 = Instant::now();
    // One request and one transaction for the whole fleet, as `apply` does.
    let specs = (0..fleet.n).map(|i| {
        ServiceSpec::new(format!("t{i:04}"), fleet.program.as_str())
            .args(&fleet.args)
            .restart(fleet.restart.clone())
            .log(LogPolicy::default().max_bytes(0))
    });
    for result in sup.start_many(specs)? {
        if let Err(e) = result {
            eprintln!("bench_driver: {e}");
            sup.shutdown()?;
            return Err(e.into());
        }
    }
    eprintln!(
        "bench_driver: started {} services in {:?}",
        fleet.n,
        t0.elapsed()
    );

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
