//! Model-based: random sequences of start (six behaviours, restart policies with small
//! backoffs and crash limits, three kinds of readiness), stop, restart, delete, reopen, an
//! outside SIGKILL and sleep over three services, each step checked against a reference
//! model and against the OS. After every step: the listed services and their ids match the
//! model (ids stable across reopen, never reused); a stopped or deleted service has no live
//! process, is never started again by itself (generation and `Started` events), and a
//! deleted one has no logs left; no service has two live process groups, and one that is
//! not running has no process; a service that runs forever is online with a live pid and
//! its restart count stands still; every status, and the exit behind it, is one the
//! service's policy and behaviour allow; a reopen resurrects exactly the services wanted up
//! and keeps everything else; no zombie child lingers; and the host's fds and threads come
//! back to where they were after each shutdown. In every tier.
//!
//! The sequences run in subprocesses of their own (four side by side, each with a quarter of
//! them), so the fd, thread and zombie counts are each one's alone. A failure prints the shrunk sequence. `SHEEPDOG_STRESS=1` runs more
//! and longer sequences; `SHEEPDOG_MODEL_CASES=n` sets the number of sequences.

use crate::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use sheepdog::{
    Backoff, Containment, ErrorKind, Event, Events, Ready, RestartPolicy, ServiceInfo, ServiceSpec,
    Status, Supervisor,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["a", "b", "c"];
/// Set in the subprocess that runs the sequences.
const INNER: &str = "SHEEPDOG_MODEL_INNER";
/// Each service's processes carry their service's name in this variable.
const SERVICE_VAR: &str = "SHEEPDOG_MODEL_SERVICE";
const STOP_TIMEOUT: Duration = Duration::from_millis(200);
const SECS_1: Duration = Duration::from_secs(1);
/// A single API call that takes longer than this is a hang.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// The sequences each tier runs.
const CASES: u32 = 40;
/// The processes that share a tier's sequences, side by side: a sequence spends most of its
/// time waiting for its children, so they run in about a quarter of the time, each with its
/// own fds, threads and children to count.
const SHARDS: u32 = 4;
/// Set, in each of those processes, to its number.
const SHARD: &str = "SHEEPDOG_MODEL_SHARD";

fn stress() -> bool {
    std::env::var_os("SHEEPDOG_STRESS").is_some_and(|v| v != "0")
}

// ---------------------------------------------------------------------------------------
// Operations

/// What a service's process does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Exits { code: i32, after_ms: u32 },
    Killed { after_ms: u32 },
    Forever,
    IgnoresTerm,
    Grandchild,
}

impl Behaviour {
    /// The script; with `ready`, it first prints the line its readiness waits for.
    fn script(self, ready: Readiness) -> String {
        let nap = |ms: u32| match ms {
            0 => String::new(),
            ms => format!("sleep {}.{:03}; ", ms / 1000, ms % 1000),
        };
        let say = if ready == Readiness::LogLine {
            "echo ready; "
        } else {
            ""
        };
        match self {
            Behaviour::Exits { code, after_ms } => format!("{say}{}exit {code}", nap(after_ms)),
            Behaviour::Killed { after_ms } => format!("{say}{}kill -KILL $$", nap(after_ms)),
            Behaviour::Forever => format!("{say}exec sleep 600"),
            // An ignored signal stays ignored across exec.
            Behaviour::IgnoresTerm => format!("trap '' TERM; {say}exec sleep 600"),
            Behaviour::Grandchild => format!("sleep 600 & {say}exec sleep 600"),
        }
    }

    fn runs_forever(self) -> bool {
        matches!(
            self,
            Behaviour::Forever | Behaviour::IgnoresTerm | Behaviour::Grandchild
        )
    }
}

impl fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Exits { code, after_ms } => write!(f, "exit {code} after {after_ms}ms"),
            Behaviour::Killed { after_ms } => write!(f, "SIGKILL after {after_ms}ms"),
            Behaviour::Forever => f.write_str("forever"),
            Behaviour::IgnoresTerm => f.write_str("forever ignoring SIGTERM"),
            Behaviour::Grandchild => f.write_str("forever with a grandchild"),
        }
    }
}

/// When a run counts as ready: at once, after a delay, or when it prints `ready`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Immediately,
    After(u64),
    LogLine,
}

/// The ready timeout of every service with a readiness condition: far above what any of
/// them needs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    fn build(self) -> Ready {
        match self {
            Readiness::Immediately => Ready::Immediately,
            Readiness::After(ms) => Ready::After(Duration::from_millis(ms)),
            Readiness::LogLine => Ready::LogLine("^ready$".into()),
        }
    }

    /// At most how long a run that stays up takes to be ready.
    fn takes(self) -> Duration {
        match self {
            Readiness::After(ms) => Duration::from_millis(ms),
            _ => Duration::ZERO,
        }
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Immediately => f.write_str("ready at once"),
            Readiness::After(ms) => write!(f, "ready after {ms}ms"),
            Readiness::LogLine => f.write_str("ready on the line 'ready'"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delay {
    None,
    Fixed(u64),
    Exponential(u64, u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Policy {
    mode: Mode,
    delay: Delay,
    /// `max_restarts(n, 2s)`.
    limit: Option<u32>,
}

impl Policy {
    fn build(self) -> RestartPolicy {
        let base = match self.mode {
            Mode::Always => RestartPolicy::always(),
            Mode::OnFailure => RestartPolicy::on_failure(),
            Mode::Never => RestartPolicy::never(),
        };
        let base = base.backoff(match self.delay {
            Delay::None => Backoff::none(),
            Delay::Fixed(ms) => Backoff::fixed(Duration::from_millis(ms)),
            Delay::Exponential(base, max) => {
                Backoff::exponential(Duration::from_millis(base), Duration::from_millis(max))
            }
        });
        match self.limit {
            Some(n) => base.max_restarts(n, Duration::from_secs(2)),
            None => base,
        }
    }

    /// Whether the policy restarts a run of `b` that ended by itself.
    fn restarts(self, b: Behaviour) -> bool {
        match self.mode {
            Mode::Always => true,
            Mode::OnFailure => !matches!(b, Behaviour::Exits { code: 0, .. }),
            Mode::Never => false,
        }
    }

    /// The statuses a service with this policy and behaviour may show while it is wanted up.
    fn allows(self, b: Behaviour, status: Status) -> bool {
        let ends = !b.runs_forever();
        match status {
            Status::Online | Status::Starting => true,
            Status::Exited => ends && !self.restarts(b),
            Status::Errored => ends && self.restarts(b) && self.limit.is_some(),
            // `Backoff::none` restarts at once, so it never shows `Backoff`.
            Status::Backoff => ends && self.restarts(b) && self.delay != Delay::None,
            _ => false,
        }
    }
}

/// How a run of `b` that ended by itself shows in `last_exit`; `crashed` adds SIGKILL.
fn exit_matches(b: Behaviour, crashed: bool, exit: &sheepdog::Exit) -> bool {
    let natural = match b {
        Behaviour::Exits { code, .. } => exit.code() == Some(code) && exit.signal().is_none(),
        Behaviour::Killed { .. } => exit.signal() == Some(9) && exit.code().is_none(),
        _ => false,
    };
    natural || (crashed && exit.signal() == Some(9) && exit.code().is_none())
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.mode)?;
        match self.delay {
            Delay::None => f.write_str(", no backoff")?,
            Delay::Fixed(ms) => write!(f, ", fixed {ms}ms")?,
            Delay::Exponential(b, m) => write!(f, ", exponential {b}ms..{m}ms")?,
        }
        if let Some(n) = self.limit {
            write!(f, ", max {n} restarts in 2s")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    One(usize),
    All,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::One(i) => NAMES[i],
            Target::All => "all",
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Start(usize, Behaviour, Policy, Readiness),
    Stop(Target),
    Restart(Target),
    Delete(Target),
    Reopen,
    Sleep(u64),
    /// SIGKILL to the service's main process from outside: a crash.
    Kill(usize),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Start(i, b, p, r) => write!(f, "start {} ({b:?}; {p:?}; {r:?})", NAMES[*i]),
            Op::Stop(t) => write!(f, "stop {}", t.as_str()),
            Op::Restart(t) => write!(f, "restart {}", t.as_str()),
            Op::Delete(t) => write!(f, "delete {}", t.as_str()),
            Op::Reopen => f.write_str("reopen"),
            Op::Sleep(ms) => write!(f, "sleep {ms}ms"),
            Op::Kill(i) => write!(f, "kill -9 the main process of {}", NAMES[*i]),
        }
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    let after = || prop::sample::select(vec![0u32, 10, 50, 300]);
    prop_oneof![
        2 => (prop_oneof![Just(0), Just(1)], after())
            .prop_map(|(code, after_ms)| Behaviour::Exits { code, after_ms }),
        1 => after().prop_map(|after_ms| Behaviour::Killed { after_ms }),
        1 => Just(Behaviour::Forever),
        1 => Just(Behaviour::IgnoresTerm),
        1 => Just(Behaviour::Grandchild),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    let mode = prop_oneof![
        2 => Just(Mode::Always),
        1 => Just(Mode::OnFailure),
        1 => Just(Mode::Never),
    ];
    let delay = prop_oneof![
        Just(Delay::None),
        prop::sample::select(vec![3u64, 30]).prop_map(Delay::Fixed),
        Just(Delay::Exponential(2, 50)),
    ];
    let limit = prop_oneof![2 => Just(None), 1 => (1u32..4).prop_map(Some)];
    (mode, delay, limit).prop_map(|(mode, delay, limit)| Policy { mode, delay, limit })
}

fn readiness() -> impl Strategy<Value = Readiness> {
    prop_oneof![
        4 => Just(Readiness::Immediately),
        1 => prop::sample::select(vec![20u64, 100]).prop_map(Readiness::After),
        1 => Just(Readiness::LogLine),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![4 => (0..NAMES.len()).prop_map(Target::One), 1 => Just(Target::All)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NAMES.len(), behaviour(), policy(), readiness())
            .prop_map(|(i, b, p, r)| Op::Start(i, b, p, r)),
        2 => target().prop_map(Op::Stop),
        2 => target().prop_map(Op::Restart),
        1 => target().prop_map(Op::Delete),
        1 => Just(Op::Reopen),
        2 => prop::sample::select(vec![0u64, 5, 20, 100]).prop_map(Op::Sleep),
        1 => (0..NAMES.len()).prop_map(Op::Kill),
    ]
}

// ---------------------------------------------------------------------------------------
// The reference model

#[derive(Clone, Debug)]
struct Expected {
    id: u64,
    behaviour: Behaviour,
    policy: Policy,
    ready: Readiness,
    /// When its operator last started a fresh run.
    started_at: Instant,
    up: bool,
    /// For a service wanted down: its generation when it went down. It must not move.
    down_at_generation: Option<u64>,
    /// Its main process was killed from outside since its last start by the operator.
    crashed: bool,
    /// For a service that runs forever and did not crash: its restart count, which must not
    /// move (manual restarts do not count).
    restarts: Option<u64>,
}

impl Expected {
    fn allows(&self, status: Status) -> bool {
        // A run that ends before it is ready is a failed start: whatever its exit, the
        // policy treats it as a crash; so any settled status may follow.
        let unready_end = self.ready != Readiness::Immediately
            && !self.behaviour.runs_forever()
            && !matches!(status, Status::Stopped | Status::Stopping);
        unready_end
            || self.policy.allows(self.behaviour, status)
            || (self.crashed
                && self
                    .policy
                    .allows(Behaviour::Killed { after_ms: 0 }, status))
    }

    /// Its operator started a fresh run of the current spec.
    fn started(&mut self, info: &ServiceInfo) {
        self.started_at = Instant::now();
        self.up = true;
        self.down_at_generation = None;
        self.crashed = false;
        self.restarts = self.behaviour.runs_forever().then_some(info.restarts());
    }
}

#[derive(Default)]
struct Model {
    services: BTreeMap<&'static str, Expected>,
    /// The largest id ever handed out; a new service must get a larger one.
    max_id: u64,
}

impl Model {
    fn targets(&self, t: Target) -> Vec<&'static str> {
        match t {
            Target::One(i) => self
                .services
                .contains_key(NAMES[i])
                .then_some(NAMES[i])
                .into_iter()
                .collect(),
            Target::All => self.services.keys().copied().collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the OS says

/// The host's fds and threads with no supervisor open.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    fds: usize,
    threads: usize,
}

// ---------------------------------------------------------------------------------------
// Running a sequence

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

struct Case {
    /// The containment tier the supervisor runs in, opened anew at each reopen.
    containment: Containment,
    h: Harness,
    model: Model,
    baseline: Baseline,
    /// A subscription to the open supervisor's events.
    events: Events,
    /// Services wanted down whose `Stopped` event came: no `Started` may follow until the
    /// operator starts them again.
    stopped: HashSet<String>,
}

impl Case {
    fn sup(&self) -> &Supervisor {
        self.h.sup()
    }

    fn spec(&self, name: &str, b: Behaviour, p: Policy, r: Readiness) -> ServiceSpec {
        let spec = self
            .h
            .sh(name, &b.script(r))
            .env(SERVICE_VAR, name)
            .stop_timeout(STOP_TIMEOUT)
            .restart(p.build());
        match r {
            Readiness::Immediately => spec,
            r => spec.ready(r.build()).ready_timeout(READY_TIMEOUT),
        }
    }

    fn step(&mut self, op: Op) -> Check {
        match op {
            Op::Start(i, b, p, r) => self.start(NAMES[i], b, p, r),
            Op::Stop(t) => self.stop(t),
            Op::Restart(t) => self.restart(t),
            Op::Delete(t) => self.delete(t),
            Op::Reopen => self.reopen(),
            Op::Kill(i) => self.kill(NAMES[i]),
            Op::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
        }
    }

    fn start(&mut self, name: &'static str, b: Behaviour, p: Policy, r: Readiness) -> Check {
        let spec = self.spec(name, b, p, r);
        let before = self.sup().describe(name).ok();
        let info = self
            .sup()
            .start(spec.clone())
            .map_err(|e| format!("start {name} failed: {e}"))?;
        ensure!(info.name() == name, "start {name} returned {}", info.name());
        ensure!(info.spec() == &spec, "start {name} returned another spec");
        let spawned = match r {
            Readiness::Immediately => info.status() == Status::Online,
            _ => matches!(info.status(), Status::Starting | Status::Online),
        };
        ensure!(
            spawned && info.pid().is_some(),
            "start {name} returned status {} with pid {:?}: not a spawned process",
            info.status(),
            info.pid()
        );
        match self.model.services.get_mut(name) {
            Some(known) => {
                ensure!(
                    info.id() == known.id,
                    "start {name} changed its id from {} to {}",
                    known.id,
                    info.id()
                );
                let same = known.behaviour == b && known.policy == p && known.ready == r;
                if let Some(before) = before.filter(|i| {
                    same && b.runs_forever() && i.status() == Status::Online && i.pid().is_some()
                }) {
                    ensure!(
                        info.pid() == before.pid() && info.generation() == before.generation(),
                        "start {name} with the spec it runs replaced pid {:?} with {:?}",
                        before.pid(),
                        info.pid()
                    );
                }
                known.behaviour = b;
                known.policy = p;
                known.ready = r;
                known.started(&info);
                self.stopped.remove(name);
            }
            None => {
                ensure!(
                    info.id() > self.model.max_id,
                    "new service {name} got id {}, not above every earlier id ({})",
                    info.id(),
                    self.model.max_id
                );
                self.model.max_id = info.id();
                let mut known = Expected {
                    id: info.id(),
                    behaviour: b,
                    policy: p,
                    ready: r,
                    started_at: Instant::now(),
                    up: true,
                    down_at_generation: None,
                    crashed: false,
                    restarts: None,
                };
                known.started(&info);
                self.model.services.insert(name, known);
            }
        }
        Ok(())
    }

    /// Checks a result against the model's idea of whether the target exists.
    fn count(&self, op: &str, t: Target, got: sheepdog::Result<usize>) -> Result<bool, String> {
        let names = self.model.targets(t);
        match (t, got) {
            (Target::One(_), Err(e)) if names.is_empty() && e.kind() == ErrorKind::NotFound => {
                Ok(false)
            }
            (_, Ok(n)) if n == names.len() && !(names.is_empty() && t != Target::All) => Ok(true),
            (_, got) => Err(format!(
                "{op} {} returned {got:?}; the model has {names:?}",
                t.as_str()
            )),
        }
    }

    fn stop(&mut self, t: Target) -> Check {
        let got = self.sup().stop(t.as_str());
        if !self.count("stop", t, got)? {
            return Ok(());
        }
        let names = self.model.targets(t);
        let live = live_groups_by_service(&self.h.token, SERVICE_VAR);
        for name in names {
            ensure!(
                !live.contains_key(name),
                "stop returned while {name} has live process groups {:?}",
                live[name]
            );
            let info = self.describe(name)?;
            ensure!(
                info.pid().is_none(),
                "stopped {name} reports pid {:?}",
                info.pid()
            );
            let known = self.model.services.get_mut(name).expect("a target");
            known.up = false;
            known.down_at_generation = Some(info.generation());
        }
        Ok(())
    }

    fn restart(&mut self, t: Target) -> Check {
        let before: HashMap<String, u64> = self
            .sup()
            .list()
            .map_err(|e| format!("list: {e}"))?
            .iter()
            .map(|i| (i.name().to_string(), i.generation()))
            .collect();
        let got = self.sup().restart(t.as_str());
        if !self.count("restart", t, got)? {
            return Ok(());
        }
        for name in self.model.targets(t) {
            let info = self.describe(name)?;
            ensure!(
                info.generation() > before[name],
                "restart {name} returned without a new run (generation {} -> {})",
                before[name],
                info.generation()
            );
            self.model
                .services
                .get_mut(name)
                .expect("a target")
                .started(&info);
            self.stopped.remove(name);
        }
        Ok(())
    }

    fn kill(&mut self, name: &'static str) -> Check {
        let Ok(info) = self.sup().describe(name) else {
            return Ok(());
        };
        let Some(pid) = info.pid() else {
            return Ok(());
        };
        // Only a process of this test's, of this service.
        let tag = format!("{SERVICE_VAR}={name}");
        let ours = tagged_processes(&self.h.token).contains(&pid)
            && std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()));
        if !ours {
            return Ok(());
        }
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if killed {
            let known = self.model.services.get_mut(name).expect("described");
            known.crashed = true;
            known.restarts = None;
        }
        Ok(())
    }

    fn delete(&mut self, t: Target) -> Check {
        let got = self.sup().delete(t.as_str());
        if !self.count("delete", t, got)? {
            return Ok(());
        }
        let live = live_groups_by_service(&self.h.token, SERVICE_VAR);
        for name in self.model.targets(t) {
            ensure!(
                !live.contains_key(name),
                "delete returned while {name} has live process groups {:?}",
                live[name]
            );
            match self.sup().describe(name) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => return Err(format!("deleted {name} is still described: {other:?}")),
            }
            for stream in ["out", "err"] {
                let log = self.h.state_dir().join(format!("logs/{name}.{stream}.log"));
                ensure!(
                    !log.exists(),
                    "delete {name} returned, yet {} remains",
                    log.display()
                );
            }
            self.model.services.remove(name);
            self.stopped.remove(name);
        }
        Ok(())
    }

    fn reopen(&mut self) -> Check {
        self.drain_events()?;
        // What must survive: everything about a service wanted down (nothing changes it),
        // and no restart count goes back.
        let before: HashMap<String, ServiceInfo> = self
            .sup()
            .list()
            .map_err(|e| format!("list: {e}"))?
            .into_iter()
            .map(|i| (i.name().to_string(), i))
            .collect();
        let sup = self.h.sup.take().expect("open");
        sup.shutdown()
            .map_err(|e| format!("shutdown failed: {e}"))?;
        drop(sup);
        ensure!(
            tagged_processes(&self.h.token).is_empty(),
            "shutdown returned with live processes: {:?}",
            live_groups_by_service(&self.h.token, SERVICE_VAR)
        );
        self.check_host_is_back_to_baseline()?;
        let sup = Supervisor::builder()
            .containment(self.containment)
            .state_dir(self.h.state_dir())
            .open()
            .map_err(|e| format!("reopen: {e}"))?;
        self.events = sup.subscribe();
        self.stopped.clear();
        self.h.sup = Some(sup);
        for (name, known) in &mut self.model.services {
            let info = self
                .h
                .sup()
                .describe(name)
                .map_err(|e| format!("{name} (id {}) is gone after reopen: {e}", known.id))?;
            let was = &before[*name];
            ensure!(
                info.restarts() >= was.restarts(),
                "{name}'s restart count went back from {} to {} across reopen",
                was.restarts(),
                info.restarts()
            );
            if !known.up {
                let exit = |i: &ServiceInfo| i.last_exit().map(|e| (e.code(), e.signal()));
                ensure!(
                    (info.status(), info.restarts(), exit(&info))
                        == (was.status(), was.restarts(), exit(was)),
                    "{name} is wanted down, yet reopen changed it from {} ({} restarts, exit {:?}) to {} ({} restarts, exit {:?})",
                    was.status(),
                    was.restarts(),
                    exit(was),
                    info.status(),
                    info.restarts(),
                    exit(&info)
                );
            }
            if known.up {
                ensure!(
                    info.generation() >= 1,
                    "{name} is wanted up but was not resurrected (status {})",
                    info.status()
                );
                known.started(&info);
            } else {
                ensure!(
                    info.generation() == 0,
                    "{name} is wanted down but was started at reopen (status {})",
                    info.status()
                );
                known.down_at_generation = Some(0);
            }
        }
        Ok(())
    }

    /// Reads the events so far: once a service wanted down has reported `Stopped`, it must
    /// not report `Started` until the operator starts it.
    fn drain_events(&mut self) -> Check {
        while let Some(event) = self.events.try_recv() {
            match event {
                Event::Started { name, pid } => ensure!(
                    !self.stopped.contains(&name),
                    "{name} reported Started (pid {pid}) after its Stopped, while wanted down"
                ),
                Event::Stopped { name }
                    if self
                        .model
                        .services
                        .get(name.as_str())
                        .is_some_and(|k| !k.up) =>
                {
                    self.stopped.insert(name);
                }
                // Some events were lost: start afresh.
                Event::Lagged { .. } => self.stopped.clear(),
                _ => {}
            }
        }
        Ok(())
    }

    fn describe(&self, name: &str) -> Result<ServiceInfo, String> {
        self.sup()
            .describe(name)
            .map_err(|e| format!("describe {name}: {e}"))
    }

    /// The invariants that hold after every step.
    fn check(&self) -> Check {
        let listed = self.sup().list().map_err(|e| format!("list: {e}"))?;
        let got: BTreeMap<String, u64> = listed
            .iter()
            .map(|i| (i.name().to_string(), i.id()))
            .collect();
        let want: BTreeMap<String, u64> = self
            .model
            .services
            .iter()
            .map(|(n, e)| (n.to_string(), e.id))
            .collect();
        ensure!(
            got == want,
            "list gives {got:?} (name: id); the model has {want:?}"
        );
        let live = live_groups_by_service(&self.h.token, SERVICE_VAR);
        for info in &listed {
            let name = info.name();
            let known = &self.model.services[name];
            if let (Some(want), true) = (known.restarts, known.up) {
                ensure!(
                    info.restarts() == want,
                    "{name} runs forever, yet its restart count went from {want} to {}",
                    info.restarts()
                );
            }
            // Without a readiness condition, a settled run's exit is the behaviour's own (a
            // failed start may instead be ended by the supervisor).
            if known.ready == Readiness::Immediately
                && matches!(
                    info.status(),
                    Status::Backoff | Status::Exited | Status::Errored
                )
            {
                let exit = info.last_exit();
                ensure!(
                    exit.is_some_and(|e| exit_matches(known.behaviour, known.crashed, e)),
                    "{name} ({:?}) shows status {} with last exit {:?}",
                    known.behaviour,
                    info.status(),
                    exit.map(|e| e.to_string())
                );
            }
            if known.up {
                ensure!(
                    known.allows(info.status()),
                    "{name} ({:?}; {:?}) is wanted up and shows status {}",
                    known.behaviour,
                    known.policy,
                    info.status()
                );
                if known.behaviour.runs_forever() && !known.crashed {
                    let pid = info.pid();
                    // Ready at once, or within its condition's time (and a second more).
                    let late = known.started_at.elapsed() > known.ready.takes() + SECS_1;
                    let running = match info.status() {
                        Status::Online => true,
                        Status::Starting => known.ready != Readiness::Immediately && !late,
                        _ => false,
                    };
                    ensure!(
                        running && pid.is_some_and(is_alive),
                        "{name} runs forever and is wanted up, but shows status {} with pid {pid:?} {:?} after its start",
                        info.status(),
                        known.started_at.elapsed()
                    );
                    ensure!(
                        pid.and_then(pgid_of) == pid,
                        "{name}'s pid {pid:?} does not lead its process group"
                    );
                }
            } else {
                // A stop settles a running or backing-off service as `Stopped`, and leaves
                // one that had already exited or errored as it was.
                let allowed = match info.status() {
                    Status::Stopped => true,
                    s @ (Status::Exited | Status::Errored) => known.allows(s),
                    _ => false,
                };
                ensure!(
                    allowed,
                    "{name} is wanted down and shows status {}",
                    info.status()
                );
                ensure!(
                    Some(info.generation()) == known.down_at_generation,
                    "{name} is wanted down, yet started again (generation {} -> {})",
                    known.down_at_generation.unwrap_or(0),
                    info.generation()
                );
                ensure!(
                    !live.contains_key(name),
                    "{name} is wanted down and has live process groups {:?}",
                    live[name]
                );
            }
        }
        // A service that is not running has no process left (its group is killed when its
        // main process ends); allow a moment for a SIGKILL to land, and for a due restart.
        for info in &listed {
            let name = info.name();
            if info.status().is_running() || info.status() == Status::Online {
                continue;
            }
            if !live.contains_key(name) {
                continue;
            }
            let settled = wait_until(Duration::from_secs(1), || {
                let moved = self
                    .sup()
                    .describe(name)
                    .map_or(true, |now| now.generation() != info.generation());
                (moved || !live_groups_by_service(&self.h.token, SERVICE_VAR).contains_key(name))
                    .then_some(())
            });
            ensure!(
                settled.is_some(),
                "{name} shows status {} and still has live process groups {:?}",
                info.status(),
                live_groups_by_service(&self.h.token, SERVICE_VAR).get(name)
            );
        }
        for (name, groups) in &live {
            ensure!(
                self.model.services.contains_key(name.as_str()),
                "{name} is not a service, yet has live process groups {groups:?}"
            );
            // A scan of /proc is not atomic: count only groups still alive after it.
            let alive: Vec<u32> = groups
                .iter()
                .copied()
                .filter(|g| !group_members(*g).is_empty())
                .collect();
            ensure!(
                alive.len() <= 1,
                "{name} has {} live process groups at once: {alive:?}",
                alive.len()
            );
        }
        let zombies = zombie_children();
        if !zombies.is_empty() {
            let gone = wait_until(Duration::from_secs(2), || {
                let now = zombie_children();
                zombies.iter().all(|z| !now.contains(z)).then_some(())
            });
            ensure!(
                gone.is_some(),
                "zombie children {} were not reaped within 2s",
                describe_processes(&zombies)
            );
        }
        // Per service a pidfd, two pipes and two log files, plus the supervisor's own: a
        // leak per run would pass this within a few crash loops.
        let fds = fd_count();
        ensure!(
            fds <= self.baseline.fds + 64,
            "{fds} fds open with {} services (baseline {})",
            listed.len(),
            self.baseline.fds
        );
        let threads = thread_count();
        ensure!(
            threads <= self.baseline.threads + 5,
            "{threads} threads with the supervisor open (baseline {}): more than its five (supervision, spawner, store checkpoints, log pump, control socket)",
            self.baseline.threads
        );
        Ok(())
    }

    /// With no supervisor open: the host's fds and threads are what they were before.
    fn check_host_is_back_to_baseline(&self) -> Check {
        let settled = wait_until(Duration::from_secs(2), || {
            (fd_count() <= self.baseline.fds + 2 && thread_count() <= self.baseline.threads)
                .then_some(())
        });
        ensure!(
            settled.is_some(),
            "after shutdown: {} fds (baseline {}), {} threads (baseline {})",
            fd_count(),
            self.baseline.fds,
            thread_count(),
            self.baseline.threads
        );
        ensure!(
            wait_until(Duration::from_secs(2), || zombie_children()
                .is_empty()
                .then_some(()))
            .is_some(),
            "after shutdown: zombie children {:?}",
            zombie_children()
        );
        Ok(())
    }

    fn finish(mut self) -> Check {
        if let Some(sup) = self.h.sup.take() {
            sup.shutdown().map_err(|e| format!("final shutdown: {e}"))?;
        }
        ensure!(
            wait_until(SECS_5, || tagged_processes(&self.h.token)
                .is_empty()
                .then_some(()))
            .is_some(),
            "processes left after shutdown: {:?}",
            live_groups_by_service(&self.h.token, SERVICE_VAR)
        );
        self.check_host_is_back_to_baseline()
    }
}

/// What the inner process is doing, for its watchdog.
static PROGRESS: Mutex<Option<(Instant, String)>> = Mutex::new(None);

fn run_case(ops: &[Op], baseline: Baseline, containment: Containment) -> Result<(), TestCaseError> {
    let h = Harness::with(Supervisor::builder().containment(containment))
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let events = h.sup().subscribe();
    let mut case = Case {
        containment,
        h,
        model: Model::default(),
        baseline,
        events,
        stopped: HashSet::new(),
    };
    let mut outcome = Ok(());
    for (i, op) in ops.iter().enumerate() {
        *PROGRESS.lock().unwrap() = Some((Instant::now(), format!("step {i} ({op:?}) of {ops:?}")));
        outcome = case
            .step(*op)
            .and_then(|()| case.drain_events())
            .and_then(|()| case.check())
            .map_err(|e| format!("step {i} ({op:?}): {e}"));
        if outcome.is_err() {
            break;
        }
    }
    *PROGRESS.lock().unwrap() = Some((Instant::now(), format!("shutdown after {ops:?}")));
    let finished = case.finish().map_err(|e| format!("at the end: {e}"));
    *PROGRESS.lock().unwrap() = None;
    outcome.and(finished).map_err(TestCaseError::fail)
}

fn run_model(tier: &Tier) -> TestResult {
    let all: u32 = std::env::var("SHEEPDOG_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if stress() { 300 } else { CASES });
    let shard: u32 = std::env::var(SHARD)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // This shard's part of the cases, the remainder to the first ones.
    let cases = all / SHARDS + u32::from(shard < all % SHARDS);
    if cases == 0 {
        return Ok(());
    }
    let max_len = if stress() { 60 } else { 25 };
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if let Some((since, what)) = PROGRESS.lock().unwrap().clone()
                && since.elapsed() > STEP_DEADLINE
            {
                eprintln!("HUNG for {:?} at {what}", since.elapsed());
                std::process::abort();
            }
        }
    });
    // Warm up once, so that what is opened once per process does not count as a leak.
    {
        let h = tier.harness()?;
        h.sup().start(h.sh("warm", "exec sleep 600"))?;
        h.finish()?;
    }
    let baseline = Baseline {
        fds: fd_count(),
        threads: thread_count(),
    };
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: if stress() { 1000 } else { 200 },
        max_shrink_time: 240_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let containment = tier.containment();
    let result = runner.run(&prop::collection::vec(op(), 1..max_len), |ops| {
        run_case(&ops, baseline, containment)
    });
    match result {
        Ok(()) => {
            println!(
                "model: {cases} sequences of up to {} ops held in the {tier} in {:?} (shard {shard})",
                max_len - 1,
                started.elapsed()
            );
            Ok(())
        }
        Err(TestError::Fail(why, ops)) => {
            let steps: Vec<String> = ops
                .iter()
                .enumerate()
                .map(|(i, op)| format!("  {i}: {op:?}"))
                .collect();
            Err(Failure::new(format!(
                "{tier}: minimal failing sequence ({} ops):\n{}\n{why}",
                ops.len(),
                steps.join("\n")
            )))
        }
        Err(e) => Err(Failure::new(format!("{tier}: {e}"))),
    }
}

/// The sequences run in subprocesses of their own, so that the fd, thread and zombie counts
/// are each one's alone.
fn random_sequences_agree_with_the_model_and_the_os(tier: &Tier) -> TestResult {
    if running_alone(INNER, tier.test()) {
        return run_model(tier);
    }
    let deadline = Duration::from_secs(if stress() { 3600 } else { 600 });
    let shards: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let test = tier.test().to_string();
            std::thread::spawn(move || {
                let mut env = std::process::Command::new("env");
                env.env(SHARD, shard.to_string());
                run_alone_within(env, &test, INNER, deadline)
            })
        })
        .collect();
    for shard in shards {
        let text = shard.join().expect("a shard's runner does not panic")?;
        // The harness may print the test's name, without a line end, before it.
        if let Some(i) = text.find("model: ") {
            println!("{}", text[i..].lines().next().unwrap_or_default());
        }
    }
    Ok(())
}

in_tiers!(
    random_sequences_agree_with_the_model_and_the_os:
    cgroup,
    subreaper,
    process_group,
);
