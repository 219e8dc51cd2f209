//! Runs a fleet from a file in the foreground, with a live status table: `sheepdog run`
//! without the `cli` feature (the same code, `src/bin/sheepdog/run.rs`).
//!
//! ```text
//! cargo run --release --example fleet                      # examples/demo.toml, until Ctrl-C
//! cargo run --release --example fleet -- FILE              # a TOML or JSON fleet file, or a Procfile
//! cargo run --release --example fleet -- --once            # start, print the table once, stop
//! cargo run --release --example fleet -- --for 10          # run for 10 seconds, then stop
//! cargo run --release --example fleet -- --state DIR       # keep state in DIR (default: temporary)
//! cargo run --release --example fleet -- --logs NAME       # follow NAME's output instead of the table
//! cargo run --release --example fleet -- --grace 5         # stop the fleet within 5 seconds
//! cargo run --release --example fleet -- --endpoints 127.0.0.1:9090   # /livez, /readyz, /metrics
//! ```
//!
//! Ctrl-C or SIGTERM stops the fleet gracefully (the table shows the stop); a second one
//! kills what is left at once. The exit codes are `sheepdog run`'s.

#[path = "../src/bin/sheepdog/render.rs"]
#[allow(dead_code)] // the command's other tables
mod render;
#[path = "../src/bin/sheepdog/run.rs"]
mod run;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: fleet [FILE] [--once] [--for SECONDS] [--state DIR] [--logs NAME] \
                     [--grace SECONDS] [--endpoints ADDRESS] [--critical NAME] [--ready NAME]";

fn seconds(flag: &str, value: Option<String>) -> Result<Duration, String> {
    let v = value.ok_or(format!("{flag} needs a number of seconds"))?;
    let secs: f64 = v
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{flag}: '{v}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs.max(0.0)).map_err(|_| format!("{flag}: '{v}' is too long"))
}

fn parse_args() -> Result<run::Options, String> {
    let mut options = run::Options {
        file: Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml"),
        ..run::Options::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--once" => options.once = true,
            "--for" => options.run_for = Some(seconds("--for", it.next())?),
            "--grace" => options.grace = Some(seconds("--grace", it.next())?),
            "--state" => options.state = Some(it.next().ok_or("--state needs a directory")?.into()),
            "--logs" => options.logs = Some(it.next().ok_or("--logs needs a service name")?),
            "--endpoints" => {
                options.endpoints = Some(it.next().ok_or("--endpoints needs an address")?)
            }
            "--critical" => options
                .critical
                .push(it.next().ok_or("--critical needs a service name")?),
            "--ready" => options
                .ready
                .push(it.next().ok_or("--ready needs a service name")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if other.starts_with('-') => return Err(format!("unknown option '{other}'")),
            file => options.file = file.into(),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(options) => ExitCode::from(run::run(options, "fleet")),
        Err(e) => {
            eprintln!("fleet: {e}\n{USAGE}");
            ExitCode::from(run::USAGE)
        }
    }
}
