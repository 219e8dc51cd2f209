/*!
An embeddable process supervisor: run a fleet of child processes and keep it alive,
in-process, behind a plain synchronous API.

A [`Supervisor`] owns a registry of services persisted in SQLite, one supervision thread
that reacts to every exit within about a millisecond (a pidfd per child in one epoll, no
polling tick), a restart policy with exponential backoff and crash-loop limits, and stop
semantics that end the whole process group. It never reaps the host's own children.

# Quick start

```
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Status, Supervisor};
use std::time::Duration;

# fn main() -> sheepdog::Result<()> {
let sup = Supervisor::temporary()?;
let flaky = ServiceSpec::new("flaky", "sh")
    .args(["-c", "sleep 0.05; exit 3"])
    .restart(RestartPolicy::on_failure().backoff(Backoff::none()));
sup.start(flaky)?;

let events = sup.subscribe();
while let Some(event) = events.recv_timeout(Duration::from_secs(5)) {
    if let sheepdog::Event::Started { .. } = event {
        break; // it crashed and was started again
    }
}
assert!(sup.describe("flaky")?.restarts() >= 1);
sup.shutdown()?;
# Ok(()) }
```

# Platform

Linux only for now (pidfd and epoll, kernel 5.3 or later; process-group signals through the
pidfd on 6.9 or later, with a `killpg` fallback). Other Unix systems fail to compile with a
message that says so.
*/
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod bell;
mod child;
mod containment;
pub mod control;
mod dotenv;
mod duration;
mod engine;
mod error;
mod events;
pub mod export;
mod fleet;
mod graph;
mod guardian;
mod history;
pub mod http;
mod import;
mod info;
mod logs;
mod notify;
mod orphans;
mod os_value;
pub mod policy;
mod probe;
mod readiness;
mod rlimit;
mod signal;
mod size;
mod snapshot;
mod spec;
mod state_dir;
mod stats;
mod store;
mod supervisor;
mod sys;
mod termination;
mod trigger;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use crate::containment::Containment;
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::events::{Event, Events};
pub use crate::fleet::{Applied, Fleet, Format, Prune, Settings};
pub use crate::history::{Cause, Explanation, Run, Usage};
pub use crate::http::Endpoints;
pub use crate::info::{Exit, ServiceInfo, Status};
pub use crate::logs::reader::{LogCursor, LogFollower};
pub use crate::orphans::Orphans;
pub use crate::policy::{Backoff, RestartPolicy};
pub use crate::readiness::{Check, Condition, Dependency, Health, Ready};
pub use crate::rlimit::{Resource, UNLIMITED};
pub use crate::signal::Signal;
pub use crate::spec::{LogPolicy, MAX_NAME_LEN, ServiceSpec};
pub use crate::stats::Stats;
pub use crate::supervisor::{Builder, STOP_OVERHEAD, Stream, Supervisor};
pub use crate::termination::TerminationSignals;
pub use crate::trigger::{Overlap, Schedule, Watch, Watchdog};
