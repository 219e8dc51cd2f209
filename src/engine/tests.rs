//! The state machine without a process: the engine driven turn by turn with a fake clock, a
//! fake containment tier (whose "processes" exit when a test says so), a fake log pump and
//! probe pool that record what they are asked, and the in-memory store. Each test walks one
//! transition (or a race between two requests) and checks the state, the replies, the
//! events, the timers and what was asked of the processes.

use super::io::{Identity, Io, Outputs, Owner, Probes};
use super::lifecycle;
use super::service::State;
use super::triggers::Clock;
use super::{Engine, Inbox, Request};
use crate::containment::marker::Session;
use crate::containment::{Ended, Leftovers, Plan, Processes, RunKey, Spawned};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::history::Cause;
use crate::info::{ServiceInfo, Status};
use crate::logs::{self, LastOutput, RunOutput};
use crate::policy::{Backoff, RestartPolicy};
use crate::probe;
use crate::readiness::{Condition, Ready};
use crate::signal::Signal;
use crate::snapshot::Shared;
use crate::spec::ServiceSpec;
use crate::store::Store;
use crate::sys::Fired;
use crate::sys::{Credentials, Poller, RawExit, Reaped};
use crate::trigger::{Overlap, Schedule, Watch, Watchdog};
use crossbeam_channel::{Receiver, Sender};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the fake tier was asked, and what its processes do.
#[derive(Default)]
struct Procs {
    next_pid: u32,
    /// Spawned and not reaped, with their pids.
    live: BTreeMap<RunKey, u32>,
    /// Exited, waiting to be reaped.
    exited: HashMap<RunKey, RawExit>,
    /// Runs with something left after their main process exited.
    lingering: HashSet<RunKey>,
    /// What the next `kill_leftovers` finds.
    leftovers: Option<Leftovers>,
    /// Signals sent: (run, signal, to the group only).
    signals: Vec<(RunKey, Signal)>,
    killed: Vec<RunKey>,
    /// The next spawn fails with this.
    fail_spawn: Option<Error>,
    /// The spawns of these services fail.
    fail_spawn_of: HashSet<String>,
    /// The runs of each batch of spawns, in the order asked.
    batches: Vec<Vec<RunKey>>,
    /// The results of the open batch's spawns, until its finish.
    batch_results: Vec<Result<Spawned>>,
    /// Runs over: (run, kept its container for the next).
    ended: Vec<(RunKey, bool)>,
    /// Services with leftovers a sweep finds; a sweep is done once its service is removed.
    sweepable: HashSet<u64>,
    forgotten: Vec<u64>,
    /// The directories of runs ended without reuse, until the engine takes them.
    dirs: Vec<PathBuf>,
}

struct FakeProcs(Rc<RefCell<Procs>>);

impl Processes for FakeProcs {
    fn spawn(&mut self, plan: Plan) -> Result<Spawned> {
        let mut p = self.0.borrow_mut();
        if let Some(e) = p.fail_spawn.take() {
            return Err(e);
        }
        if p.fail_spawn_of.contains(plan.spec.name()) {
            return Err(
                Error::new(ErrorKind::Spawn, "cannot start: no such program")
                    .with_service(plan.spec.name()),
            );
        }
        p.next_pid += 1;
        let pid = 1000 + p.next_pid;
        p.live.insert(plan.run, pid);
        Ok(Spawned {
            pid,
            pidfd_ino: Some(u64::from(pid)),
            start_ticks: None,
            cgroup: None,
        })
    }
    fn begin_batch(&mut self, _: usize) {
        self.0.borrow_mut().batches.push(Vec::new());
    }
    fn push(&mut self, plan: Plan) {
        self.0
            .borrow_mut()
            .batches
            .last_mut()
            .expect("a batch is open")
            .push(plan.run);
        let spawned = self.spawn(plan);
        self.0.borrow_mut().batch_results.push(spawned);
    }
    fn finish_batch(&mut self) -> Vec<Result<Spawned>> {
        std::mem::take(&mut self.0.borrow_mut().batch_results)
    }
    fn signal_group(&mut self, run: RunKey, signal: Signal) -> bool {
        let mut p = self.0.borrow_mut();
        p.signals.push((run, signal));
        p.live.contains_key(&run)
    }
    fn stop(&mut self, run: RunKey, signal: Signal, group_signalled: bool) {
        if !group_signalled {
            self.0.borrow_mut().signals.push((run, signal));
        }
    }
    fn kill(&mut self, run: RunKey) {
        self.0.borrow_mut().killed.push(run);
    }
    fn reap(&mut self, run: RunKey) -> Option<Reaped> {
        let mut p = self.0.borrow_mut();
        let exit = p.exited.remove(&run)?;
        p.live.remove(&run);
        Some(Reaped { exit, usage: None })
    }
    fn kill_leftovers(&mut self, _: RunKey) -> Leftovers {
        self.0
            .borrow_mut()
            .leftovers
            .take()
            .unwrap_or(Leftovers::None)
    }
    fn is_empty(&mut self, run: RunKey, _: Signal) -> bool {
        !self.0.borrow().lingering.contains(&run)
    }
    fn end(&mut self, run: RunKey, reuse: bool) -> Ended {
        let mut p = self.0.borrow_mut();
        p.ended.push((run, reuse));
        if !reuse {
            p.dirs
                .push(PathBuf::from(format!("run-{}-{}", run.id, run.generation)));
        }
        Ended::default()
    }
    fn speaks_for(&mut self, _: RunKey, _: &Credentials) -> bool {
        false
    }
    fn memory(&mut self, runs: &[RunKey]) -> Vec<u64> {
        vec![0; runs.len()]
    }
    fn sweep(&mut self, run: RunKey, _: Signal) -> bool {
        self.0.borrow().sweepable.contains(&run.id)
    }
    fn sweep_done(&mut self, run: RunKey, _: Signal) -> bool {
        !self.0.borrow().sweepable.contains(&run.id)
    }
    fn on_ready(&mut self, _: u64) -> Option<RunKey> {
        None
    }
    fn forget(&mut self, id: u64) {
        self.0.borrow_mut().forgotten.push(id);
    }
    fn take_dirs(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0.borrow_mut().dirs)
    }
    fn end_turn(&mut self) {}
    fn reclaim(&mut self, _: &mut Store) -> Result<Vec<(u64, Vec<u32>)>> {
        Ok(Vec::new())
    }
    fn session_stored(&mut self, _: i64) {}
    fn finish(&mut self) {}
}

/// What the fake pump was asked.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Attach(u64, u64),
    Detach(u64, u64),
    Unhurried(u64, u64),
    Forget(u64),
    RemoveDirs(Vec<PathBuf>),
}

struct FakeOutputs(
    Rc<RefCell<Vec<Asked>>>,
    Rc<RefCell<Option<Arc<LastOutput>>>>,
);

impl Outputs for FakeOutputs {
    fn attach(&mut self, output: RunOutput) {
        self.0
            .borrow_mut()
            .push(Asked::Attach(output.id, output.generation));
        *self.1.borrow_mut() = output.last_output;
    }
    fn detach(&mut self, id: u64, generation: u64) {
        self.0.borrow_mut().push(Asked::Detach(id, generation));
    }
    fn unhurried(&mut self, id: u64, generation: u64) {
        self.0.borrow_mut().push(Asked::Unhurried(id, generation));
    }
    fn forget(&mut self, id: u64, _: Arc<str>) {
        self.0.borrow_mut().push(Asked::Forget(id));
    }
    fn remove_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.0.borrow_mut().push(Asked::RemoveDirs(dirs));
    }
    fn wake(&mut self) {}
    fn shutdown(&mut self) {}
}

struct FakeProbes(Rc<RefCell<Vec<probe::Job>>>);

impl Probes for FakeProbes {
    fn submit(&mut self, job: probe::Job) {
        self.0.borrow_mut().push(job);
    }
}

/// An engine with fakes around it, driven by hand.
struct Bench {
    engine: Engine,
    procs: Rc<RefCell<Procs>>,
    outputs: Rc<RefCell<Vec<Asked>>>,
    /// The watchdog clock of the last run attached to the pump.
    last_output: Rc<RefCell<Option<Arc<LastOutput>>>>,
    probes: Rc<RefCell<Vec<probe::Job>>>,
    requests: Sender<Request>,
    logs: Sender<logs::Report>,
    probe_reports: Sender<probe::Report>,
    events: crate::events::Events,
    now: Instant,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state_dir::StateDir::open(&dir.path().join("state"), false).unwrap();
        let poller = Poller::new(16).unwrap();
        let procs = Rc::new(RefCell::new(Procs::default()));
        let outputs = Rc::new(RefCell::new(Vec::new()));
        let last_output = Rc::new(RefCell::new(None));
        let probes = Rc::new(RefCell::new(Vec::new()));
        let identity = Identity {
            run_key: "key".into(),
            session: Session::begin(false).unwrap(),
            uid: 0,
            boot_id: "boot".into(),
        };
        let io = Io::new(
            Box::new(FakeProcs(procs.clone())),
            Box::new(FakeOutputs(outputs.clone(), last_output.clone())),
            Box::new(FakeProbes(probes.clone())),
            Store::open_in_memory().unwrap(),
            poller.registry(),
            identity,
            Duration::from_secs(1),
            7,
        );
        let (requests, requests_rx) = crossbeam_channel::unbounded();
        let (logs, logs_rx) = crossbeam_channel::unbounded();
        let (probe_reports, probes_rx) = crossbeam_channel::unbounded();
        let inbox = Inbox {
            requests: requests_rx,
            logs: logs_rx,
            probes: probes_rx,
        };
        let shared = Arc::new(Shared::default());
        let events = shared.hub.subscribe();
        let mut engine = Engine::assemble(io, poller, inbox, shared, state);
        engine.init().unwrap();
        Bench {
            engine,
            procs,
            outputs,
            last_output,
            probes,
            requests,
            logs,
            probe_reports,
            events,
            now: Instant::now(),
            _dir: dir,
        }
    }

    fn turn(&mut self) {
        self.engine.turn(&[], self.now);
    }

    /// Moves the clock on and runs a turn (the timers due by then fire).
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.turn();
    }

    fn id(&self, name: &str) -> u64 {
        self.engine
            .services
            .values()
            .find(|s| *s.name == *name)
            .unwrap_or_else(|| panic!("no service {name}"))
            .id
    }

    fn status(&self, name: &str) -> Status {
        self.engine.services[&self.id(name)].status()
    }

    fn generation(&self, name: &str) -> u64 {
        self.engine.services[&self.id(name)].generation
    }

    fn key(&self, name: &str) -> RunKey {
        self.engine.services[&self.id(name)].key()
    }

    fn start(&mut self, spec: ServiceSpec) -> Receiver<Result<ServiceInfo>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.requests
            .send(Request::Start {
                spec: Box::new(spec),
                reply,
            })
            .unwrap();
        self.turn();
        rx
    }

    fn call(
        &mut self,
        make: impl FnOnce(Sender<Result<usize>>) -> Request,
    ) -> Receiver<Result<usize>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.requests.send(make(reply)).unwrap();
        self.turn();
        rx
    }

    fn stop(&mut self, target: &str) -> Receiver<Result<usize>> {
        let target = target.to_string();
        self.call(|reply| Request::Stop { target, reply })
    }

    fn restart(&mut self, target: &str) -> Receiver<Result<usize>> {
        let target = target.to_string();
        self.call(|reply| Request::Restart { target, reply })
    }

    fn delete(&mut self, target: &str) -> Receiver<Result<usize>> {
        let target = target.to_string();
        self.call(|reply| Request::Delete { target, reply })
    }

    fn reload(&mut self, target: &str) -> Receiver<Result<usize>> {
        let target = target.to_string();
        self.call(|reply| Request::Reload { target, reply })
    }

    fn scale(&mut self, name: &str, instances: u32) -> Receiver<Result<usize>> {
        let name = name.to_string();
        self.call(|reply| Request::Scale {
            name,
            instances,
            reply,
        })
    }

    fn start_target(&mut self, target: &str) -> Receiver<Result<usize>> {
        let target = target.to_string();
        self.call(|reply| Request::StartTarget { target, reply })
    }

    fn start_many(&mut self, specs: Vec<ServiceSpec>) -> Vec<Receiver<Result<ServiceInfo>>> {
        let (items, replies) = specs
            .into_iter()
            .map(|spec| {
                let (reply, rx) = crossbeam_channel::bounded(1);
                ((spec, reply), rx)
            })
            .unzip();
        self.requests.send(Request::StartMany { items }).unwrap();
        self.turn();
        replies
    }

    fn define(&mut self, spec: ServiceSpec) -> Receiver<Result<ServiceInfo>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.requests
            .send(Request::Define {
                spec: Box::new(spec),
                reply,
            })
            .unwrap();
        self.turn();
        rx
    }

    /// The run of `name` says its readiness line.
    fn ready_line(&mut self, name: &str) {
        let id = self.id(name);
        let generation = self.generation(name);
        self.logs
            .send(logs::Report::ReadyLine { id, generation })
            .unwrap();
        self.turn();
    }

    /// The run of `name` exits with `exit` and its output is drained: it is over.
    fn ends(&mut self, name: &str, exit: RawExit) {
        let generation = self.generation(name);
        self.exit(name, exit);
        self.drained(name, generation);
    }

    /// The names of the services, in id order.
    fn names(&self) -> Vec<String> {
        self.engine
            .services
            .values()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// The specs as the registry holds them, by name.
    fn stored_specs(&mut self) -> BTreeMap<String, ServiceSpec> {
        self.engine.io.store.flush();
        self.engine
            .io
            .store
            .load_services()
            .unwrap()
            .into_iter()
            .map(|s| (s.spec.instance_name(s.instance), s.spec))
            .collect()
    }

    /// The run's main process exits with `exit`; its pidfd fires.
    fn exit(&mut self, name: &str, exit: RawExit) {
        let id = self.id(name);
        let key = self.key(name);
        self.procs.borrow_mut().exited.insert(key, exit);
        let token = self
            .engine
            .io
            .tokens
            .iter()
            .find(|(_, o)| **o == Owner::Leader(id))
            .map(|(t, _)| *t)
            .expect("a live run has its token");
        self.engine.turn(&[token], self.now);
    }

    /// The pump read the output of the run of `generation` to its end.
    fn drained(&mut self, name: &str, generation: u64) {
        let id = self.id(name);
        self.logs
            .send(logs::Report::Drained {
                id,
                generation,
                tail: Some(logs::RunTail {
                    stdout: b"last words\n".to_vec(),
                    stderr: Vec::new(),
                }),
            })
            .unwrap();
        self.turn();
    }

    /// Puts the schedules on a wall clock of the test's own, at `start`; the test moves it.
    fn fake_wall_clock(&mut self, start: SystemTime) -> Rc<Cell<SystemTime>> {
        let wall = Rc::new(Cell::new(start));
        self.engine.io.triggers.clock = Box::new(FakeClock(wall.clone()));
        wall
    }

    /// What `explain` says of `name`.
    fn explain(&mut self, name: &str) -> String {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.requests
            .send(Request::Explain {
                target: name.to_string(),
                reply,
            })
            .unwrap();
        self.turn();
        answered(&rx).expect("explained").text
    }

    /// The run of `name` is stopped by a signal it obeys, and its output is drained.
    fn obeys_stop(&mut self, name: &str) {
        let generation = self.generation(name);
        self.exit(name, RawExit::Signal(15));
        self.drained(name, generation);
    }

    fn events(&self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv()).collect()
    }

    /// How many times the run of `name`'s `generation` was ended in the tier.
    fn times_ended(&self, name: &str, generation: u64) -> usize {
        let run = RunKey {
            id: self.id(name),
            generation,
        };
        let procs = self.procs.borrow();
        procs.ended.iter().filter(|(r, _)| *r == run).count()
    }

    fn runs_recorded(&mut self, name: &str) -> Vec<crate::history::Run> {
        let id = self.id(name);
        self.engine.io.store.flush();
        self.engine.io.store.runs(id, 100).unwrap()
    }
}

/// A wall clock moved by hand; its alarm is not needed, as every turn fires the due ticks.
struct FakeClock(Rc<Cell<SystemTime>>);

impl Clock for FakeClock {
    fn wall(&self) -> SystemTime {
        self.0.get()
    }
    fn set_alarm(&mut self, _: Option<SystemTime>) {}
    fn on_alarm(&mut self) -> Fired {
        Fired::Expired
    }
}

/// 2024-01-01T00:00:00Z plus `secs`.
fn jan1(secs: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(1_704_067_200 + secs)
}

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/true")
}

fn crasher(name: &str, backoff: Backoff) -> ServiceSpec {
    spec(name).restart(RestartPolicy::always().backoff(backoff))
}

fn answered<T: std::fmt::Debug>(rx: &Receiver<Result<T>>) -> Result<T> {
    rx.try_recv().expect("the call was answered")
}

fn unanswered<T: std::fmt::Debug>(rx: &Receiver<Result<T>>, what: &str) {
    assert!(rx.try_recv().is_err(), "{what} was answered too early");
}

#[test]
fn a_start_spawns_and_a_ready_run_is_online() {
    let mut b = Bench::new();
    let reply = b.start(spec("web"));
    let info = answered(&reply).expect("started");
    assert_eq!(info.status(), Status::Online, "ready at once by default");
    assert_eq!(b.generation("web"), 1);
    assert!(
        matches!(&b.outputs.borrow()[..], [Asked::Attach(_, 1)]),
        "its output goes to the pump"
    );
    let events = b.events();
    assert!(matches!(events[0], Event::Started { .. }), "{events:?}");
    assert!(matches!(events[1], Event::Ready { .. }), "{events:?}");
    assert_eq!(
        b.runs_recorded("web").len(),
        1,
        "the run is recorded at once"
    );
}

#[test]
fn a_crash_backs_off_then_restarts_and_the_record_waits_for_the_drain() {
    let mut b = Bench::new();
    b.start(crasher("c", Backoff::fixed(Duration::from_secs(2))));
    b.exit("c", RawExit::Code(1));
    assert_eq!(
        b.status("c"),
        Status::Online,
        "until its output is drained, the run is not over"
    );
    assert!(b.outputs.borrow().contains(&Asked::Detach(b.id("c"), 1)));
    b.drained("c", 1);
    assert_eq!(b.status("c"), Status::Backoff, "then the policy's backoff");
    let runs = b.runs_recorded("c");
    assert_eq!(runs[0].code(), Some(1), "recorded with its exit");
    assert_eq!(runs[0].last_stdout(), "last words\n", "and its last output");
    b.advance(Duration::from_millis(1999));
    assert_eq!(b.status("c"), Status::Backoff, "not before the delay");
    b.advance(Duration::from_millis(1));
    assert_eq!(b.status("c"), Status::Online, "restarted when it is due");
    assert_eq!(b.generation("c"), 2);
    assert_eq!(b.engine.services[&b.id("c")].restarts, 1);
}

/// The leader tokens of the runs of `names`, after their main processes exited with `exit`.
fn exited_tokens(b: &mut Bench, names: &[&str], exit: RawExit) -> Vec<u64> {
    names
        .iter()
        .map(|name| {
            let id = b.id(name);
            b.procs.borrow_mut().exited.insert(b.key(name), exit);
            b.engine
                .io
                .tokens
                .iter()
                .find(|(_, o)| **o == Owner::Leader(id))
                .map(|(t, _)| *t)
                .expect("a live run has its token")
        })
        .collect()
}

#[test]
fn a_turn_reaps_every_exit_before_it_follows_any_and_the_rest_follow_at_the_next_turns() {
    let mut b = Bench::new();
    for name in ["a", "b", "c"] {
        b.start(crasher(name, Backoff::fixed(Duration::from_secs(5))));
    }
    // No budget: one follow-up per turn.
    b.engine.turn_budget = Duration::ZERO;
    let tokens = exited_tokens(&mut b, &["a", "b", "c"], RawExit::Code(1));
    b.engine.turn(&tokens, b.now);
    assert!(
        b.procs.borrow().live.is_empty(),
        "all three are reaped in the first turn"
    );
    assert_eq!(b.engine.exits.len(), 2, "two follow-ups wait");
    for name in ["a", "b", "c"] {
        b.drained(name, 1);
    }
    assert!(b.engine.exits.is_empty(), "the next turns follow them up");
    for name in ["a", "b", "c"] {
        assert_eq!(b.status(name), Status::Backoff, "{name} backs off");
        assert_eq!(b.runs_recorded(name)[0].code(), Some(1), "{name} recorded");
    }
}

#[test]
fn a_stop_between_the_reap_and_its_follow_up_wins_and_the_run_ends_once() {
    let mut b = Bench::new();
    b.start(crasher("a", Backoff::none()));
    b.start(crasher("b", Backoff::none()));
    b.engine.turn_budget = Duration::ZERO;
    // The stop of `b` is in the inbox when both exit; `a` is followed up first, so the stop
    // finds `b` reaped and not yet followed up.
    let (reply, stopped) = crossbeam_channel::bounded(1);
    b.requests
        .send(Request::Stop {
            target: "b".to_string(),
            reply,
        })
        .unwrap();
    let tokens = exited_tokens(&mut b, &["a", "b"], RawExit::Code(1));
    b.engine.turn(&tokens, b.now);
    assert_eq!(b.generation("a"), 2, "a, followed up, restarts at once");
    assert_eq!(
        b.engine.exits.len(),
        1,
        "b's follow-up waits, its stop came"
    );
    b.drained("b", 1);
    assert_eq!(answered(&stopped).expect("stopped"), 1);
    assert!(b.engine.exits.is_empty());
    assert_eq!(
        b.status("b"),
        Status::Stopped,
        "the stop wins over the restart"
    );
    let id = b.id("b");
    assert!(
        !b.procs.borrow().live.keys().any(|r| r.id == id),
        "b never restarts"
    );
    assert_eq!(b.times_ended("b", 1), 1, "its run ends once");
    assert_eq!(b.runs_recorded("b").len(), 1);
}

#[test]
fn a_stop_of_many_reaps_the_exits_that_come_while_it_goes_through_them() {
    let mut b = Bench::new();
    for name in ["a", "b", "c"] {
        b.start(crasher(name, Backoff::none()));
    }
    // `b` and `c` die of the stop signal before their stops are recorded: their pidfds are
    // ready (a readable pipe under each leader's token stands in for them) when the stop of
    // all goes through the services.
    let tokens = exited_tokens(&mut b, &["b", "c"], RawExit::Signal(15));
    let pipes: Vec<_> = tokens
        .iter()
        .map(|&token| {
            let (read, write) = rustix::pipe::pipe().unwrap();
            rustix::io::write(&write, b"x").unwrap();
            b.engine.poller.add(&read, token).unwrap();
            (read, write)
        })
        .collect();
    // A report or request woke the poller meanwhile: the stop's look for exits takes that
    // wake-up, which must not be lost.
    b.engine.poller.waker().unwrap().wake();
    let stopped = b.stop("all");
    assert_eq!(
        b.procs
            .borrow()
            .live
            .keys()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![b.id("a")],
        "b and c are reaped in the stop's own turn"
    );
    assert!(
        b.engine.woken,
        "the wake-up it took makes the next wait return at once"
    );
    drop(pipes);
    b.exit("a", RawExit::Signal(15));
    for name in ["a", "b", "c"] {
        b.drained(name, 1);
    }
    assert_eq!(answered(&stopped).expect("stopped"), 3);
    assert!(b.engine.exits.is_empty(), "every follow-up was done");
    for name in ["a", "b", "c"] {
        assert_eq!(b.status(name), Status::Stopped, "{name} is stopped");
        assert_eq!(b.generation(name), 2, "{name} did not restart");
        assert_eq!(b.times_ended(name, 1), 1, "{name}'s run ends once");
        let runs = b.runs_recorded(name);
        assert_eq!(runs.len(), 1, "{name} has one record");
        assert_eq!(
            runs[0].cause(),
            Some(Cause::Stopped),
            "{name} was stopped, not crashed"
        );
    }
}

#[test]
fn an_immediate_restart_does_not_wait_for_the_drain_and_records_the_run_after() {
    let mut b = Bench::new();
    b.start(crasher("c", Backoff::none()));
    b.exit("c", RawExit::Signal(9));
    assert_eq!(b.generation("c"), 2, "respawned in the same turn");
    assert_eq!(b.status("c"), Status::Online);
    let before = b.runs_recorded("c");
    assert!(
        before.iter().all(|r| r.ended_at().is_none()),
        "the old run's record waits for its last lines"
    );
    b.drained("c", 1);
    let runs = b.runs_recorded("c");
    let old = runs.iter().find(|r| r.generation() == 1).unwrap();
    assert_eq!(old.signal(), Some(9));
    assert_eq!(old.last_stdout(), "last words\n");
}

#[test]
fn an_immediate_restart_records_the_old_run_at_a_later_turn_without_waking_for_it() {
    let mut b = Bench::new();
    b.start(crasher("c", Backoff::none()));
    let id = b.id("c");
    b.exit("c", RawExit::Code(1));
    assert_eq!(b.generation("c"), 2, "respawned in the same turn");
    assert!(
        b.outputs.borrow().contains(&Asked::Unhurried(id, 1)),
        "the pump reports the old run's drain without a wake-up"
    );
    assert!(b.engine.io.deferred_timer, "a turn comes for it anyway");
    // The drain is in the inbox; no turn yet. The next crash's turn records it, in the
    // same transaction as its own writes.
    b.logs
        .send(logs::Report::Drained {
            id,
            generation: 1,
            tail: None,
        })
        .unwrap();
    b.exit("c", RawExit::Code(1));
    assert_eq!(b.generation("c"), 3);
    let runs = b.runs_recorded("c");
    let first = runs.iter().find(|r| r.generation() == 1).unwrap();
    assert_eq!(first.code(), Some(1), "the first run is recorded");
    // The second run's drain comes with no other turn: the timer's turn records it.
    b.logs
        .send(logs::Report::Drained {
            id,
            generation: 2,
            tail: None,
        })
        .unwrap();
    b.advance(lifecycle::RECORD_WITHIN);
    let runs = b.runs_recorded("c");
    let second = runs.iter().find(|r| r.generation() == 2).unwrap();
    assert_eq!(second.code(), Some(1), "the second run is recorded");
    assert!(b.engine.io.unrecorded.is_empty());
    b.advance(lifecycle::RECORD_WITHIN);
    assert!(
        !b.engine.io.deferred_timer,
        "no timer once nothing waits to be recorded"
    );
}

#[test]
fn a_stop_signals_then_kills_at_the_deadline_and_settles_once_drained() {
    let mut b = Bench::new();
    b.start(spec("s").stop_timeout(Duration::from_secs(3)));
    let key = b.key("s");
    let reply = b.stop("s");
    assert_eq!(b.status("s"), Status::Stopping);
    assert_eq!(b.procs.borrow().signals, [(key, Signal::Term)]);
    unanswered(&reply, "the stop");
    b.advance(Duration::from_secs(3));
    assert_eq!(
        b.procs.borrow().killed,
        [key],
        "SIGKILL at the stop timeout"
    );
    b.exit("s", RawExit::Signal(9));
    unanswered(&reply, "the stop before the drain");
    b.drained("s", 1);
    assert_eq!(answered(&reply).unwrap(), 1);
    assert_eq!(b.status("s"), Status::Stopped);
    assert_eq!(b.procs.borrow().ended, [(key, false)], "its container goes");
    let runs = b.runs_recorded("s");
    assert_eq!(runs[0].cause(), Some(crate::history::Cause::Stopped));
    assert!(
        runs[0].decision().is_none(),
        "no policy decision for a stop"
    );
}

#[test]
fn the_containers_of_stopped_runs_go_once_no_exit_has_come_for_a_while() {
    let mut b = Bench::new();
    for name in ["a", "b", "c"] {
        b.start(spec(name));
    }
    let removed = |b: &Bench| -> Vec<PathBuf> {
        b.outputs
            .borrow()
            .iter()
            .filter_map(|a| match a {
                Asked::RemoveDirs(dirs) => Some(dirs.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let reply = b.stop("all");
    b.exit("a", RawExit::Signal(15));
    b.drained("a", 1);
    // A turn without an exit (a report of the pump, a request) is not enough: the other
    // runs' exits are still coming, and need the CPU.
    b.turn();
    assert!(
        removed(&b).is_empty(),
        "nothing removed while exits come in"
    );
    b.advance(Duration::from_millis(10));
    b.exit("b", RawExit::Signal(15));
    b.drained("b", 1);
    b.advance(Duration::from_millis(10));
    b.exit("c", RawExit::Signal(15));
    b.drained("c", 1);
    assert_eq!(answered(&reply).unwrap(), 3);
    assert!(
        removed(&b).is_empty(),
        "still nothing right after the last exit"
    );
    b.advance(lifecycle::RECORD_WITHIN);
    assert_eq!(
        removed(&b).len(),
        3,
        "all three removed once the exits stopped for {:?}",
        lifecycle::RECORD_WITHIN
    );
}

#[test]
fn a_stop_overtaken_by_a_start_returns_once_its_run_is_over() {
    let mut b = Bench::new();
    b.start(spec("r"));
    let stopping = b.stop("r");
    let starting = b.start(spec("r"));
    unanswered(&stopping, "the stop");
    unanswered(&starting, "the start");
    b.exit("r", RawExit::Code(0));
    b.drained("r", 1);
    assert_eq!(answered(&stopping).unwrap(), 1, "the stop returned");
    assert_eq!(answered(&starting).unwrap().status(), Status::Online);
    assert_eq!(b.generation("r"), 2, "the start's new run");
    let key = b.key("r");
    assert_eq!(
        b.procs.borrow().ended,
        [(
            RunKey {
                generation: 1,
                ..key
            },
            true
        )],
        "the old run's container is kept for the new one"
    );
}

#[test]
fn a_restart_overtaken_by_a_stop_ends_stopped() {
    let mut b = Bench::new();
    b.start(spec("r"));
    let restarting = b.restart("r");
    let stopping = b.stop("r");
    b.exit("r", RawExit::Code(0));
    b.drained("r", 1);
    assert_eq!(answered(&restarting).unwrap(), 1);
    assert_eq!(answered(&stopping).unwrap(), 1);
    assert_eq!(b.status("r"), Status::Stopped, "the later call won");
}

#[test]
fn a_start_with_a_changed_spec_overtaken_by_a_delete_gets_not_found() {
    let mut b = Bench::new();
    b.start(spec("r"));
    let starting = b.start(spec("r").arg("changed"));
    let deleting = b.delete("r");
    b.exit("r", RawExit::Code(0));
    b.drained("r", 1);
    assert_eq!(b.outputs.borrow().last(), Some(&Asked::Forget(1)));
    b.logs.send(logs::Report::Forgotten { id: 1 }).unwrap();
    b.turn();
    assert_eq!(answered(&deleting).unwrap(), 1);
    assert_eq!(answered(&starting).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(b.engine.services.is_empty());
}

#[test]
fn a_stop_during_a_backoff_settles_at_once_and_the_restart_never_comes() {
    let mut b = Bench::new();
    b.start(crasher("c", Backoff::fixed(Duration::from_secs(1))));
    b.exit("c", RawExit::Code(1));
    b.drained("c", 1);
    assert_eq!(b.status("c"), Status::Backoff);
    let reply = b.stop("c");
    assert_eq!(answered(&reply).unwrap(), 1);
    assert_eq!(b.status("c"), Status::Stopped);
    b.advance(Duration::from_secs(2));
    assert_eq!(
        b.status("c"),
        Status::Stopped,
        "the backoff's timer is stale"
    );
    assert!(b.procs.borrow().live.is_empty(), "nothing spawned again");
}

#[test]
fn a_crash_loop_over_its_limit_is_errored() {
    let mut b = Bench::new();
    b.start(
        spec("c").restart(
            RestartPolicy::always()
                .backoff(Backoff::none())
                .max_restarts(2, Duration::from_secs(60)),
        ),
    );
    for _ in 0..3 {
        b.exit("c", RawExit::Code(3));
    }
    b.drained("c", 3);
    assert_eq!(b.status("c"), Status::Errored);
    assert!(
        b.events()
            .iter()
            .any(|e| matches!(e, Event::Errored { reason, .. } if reason.contains("crash loop"))),
        "an Errored event says why"
    );
}

#[test]
fn not_ready_in_time_is_a_failed_start_the_policy_restarts() {
    let mut b = Bench::new();
    b.start(
        crasher("slow", Backoff::fixed(Duration::from_secs(5)))
            .ready(Ready::LogLine("up".into()))
            .ready_timeout(Duration::from_secs(2)),
    );
    assert_eq!(b.status("slow"), Status::Starting);
    b.advance(Duration::from_secs(2));
    assert_eq!(
        b.status("slow"),
        Status::Stopping,
        "the timeout ends the run"
    );
    b.exit("slow", RawExit::Signal(15));
    b.drained("slow", 1);
    assert_eq!(
        b.status("slow"),
        Status::Backoff,
        "and the policy restarts it"
    );
    let runs = b.runs_recorded("slow");
    assert_eq!(runs[0].cause(), Some(crate::history::Cause::NotReady));
    assert!(runs[0].reason().unwrap().contains("not ready within 2s"));
}

#[test]
fn a_readiness_line_makes_a_starting_run_online() {
    let mut b = Bench::new();
    b.start(spec("web").ready(Ready::LogLine("listening".into())));
    assert_eq!(b.status("web"), Status::Starting);
    let id = b.id("web");
    b.logs
        .send(logs::Report::ReadyLine { id, generation: 1 })
        .unwrap();
    b.turn();
    assert_eq!(b.status("web"), Status::Online);
    // A line reported for an older run changes nothing.
    b.logs
        .send(logs::Report::ReadyLine { id, generation: 0 })
        .unwrap();
    b.turn();
    assert_eq!(b.status("web"), Status::Online);
}

#[test]
fn failed_health_probes_restart_the_service_through_its_policy() {
    let mut b = Bench::new();
    b.start(
        crasher("h", Backoff::fixed(Duration::from_secs(9))).health(
            crate::readiness::Health::tcp(9)
                .interval(Duration::from_secs(1))
                .failures(2),
        ),
    );
    for n in 1..=2 {
        b.advance(Duration::from_secs(1));
        let job = b.probes.borrow_mut().pop().expect("a probe is due");
        b.probe_reports
            .send(probe::Report {
                id: job.id,
                generation: job.generation,
                purpose: job.purpose,
                outcome: Err(format!("refused {n}")),
            })
            .unwrap();
        b.turn();
    }
    assert_eq!(b.status("h"), Status::Stopping, "two failures end the run");
    assert!(
        b.events()
            .iter()
            .any(|e| matches!(e, Event::Unhealthy { .. }))
    );
    b.exit("h", RawExit::Signal(15));
    b.drained("h", 1);
    assert_eq!(b.status("h"), Status::Backoff);
}

#[test]
fn a_main_process_that_left_processes_lingers_until_they_are_gone() {
    let mut b = Bench::new();
    b.start(crasher("d", Backoff::fixed(Duration::from_secs(1))));
    let key = b.key("d");
    {
        let mut p = b.procs.borrow_mut();
        p.leftovers = Some(Leftovers::Lingering);
        p.lingering.insert(key);
    }
    b.exit("d", RawExit::Code(0));
    b.drained("d", 1);
    assert_eq!(
        b.status("d"),
        Status::Online,
        "not over while something of it lives"
    );
    b.advance(Duration::from_millis(10));
    assert_eq!(b.status("d"), Status::Online, "checked again, still there");
    b.procs.borrow_mut().lingering.clear();
    b.advance(Duration::from_millis(100));
    assert_eq!(b.status("d"), Status::Backoff, "over once it is gone");
    let runs = b.runs_recorded("d");
    assert!(runs[0].reason().unwrap().contains("left processes running"));
}

#[test]
fn a_manual_start_that_cannot_spawn_is_errored_with_its_error() {
    let mut b = Bench::new();
    b.procs.borrow_mut().fail_spawn =
        Some(Error::new(ErrorKind::Spawn, "cannot start: no such program").with_service("x"));
    let reply = b.start(spec("x"));
    let err = answered(&reply).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn);
    assert_eq!(b.status("x"), Status::Errored);
    let runs = b.runs_recorded("x");
    assert_eq!(runs[0].cause(), Some(crate::history::Cause::SpawnFailed));
}

#[test]
fn a_start_many_spawns_its_starts_as_one_batch_in_their_order() {
    let mut b = Bench::new();
    let replies = b.start_many(vec![spec("a"), spec("b"), spec("c")]);
    let batches = b.procs.borrow().batches.clone();
    assert_eq!(
        batches,
        vec![vec![b.key("a"), b.key("b"), b.key("c")]],
        "one batch, in the order of the request"
    );
    let mut pids = HashSet::new();
    for (name, reply) in ["a", "b", "c"].iter().zip(&replies) {
        let info = answered(reply).unwrap();
        assert_eq!(info.name(), *name);
        assert_eq!(b.status(name), Status::Online);
        pids.insert(info.pid().expect("a pid"));
    }
    assert_eq!(pids.len(), 3, "a run each");
    // A single start is a batch of one.
    b.start(spec("d"));
    assert_eq!(b.procs.borrow().batches.last(), Some(&vec![b.key("d")]));
    assert_eq!(b.status("d"), Status::Online);
}

#[test]
fn a_start_of_a_target_spawns_its_services_as_one_batch() {
    let mut b = Bench::new();
    answered(&b.define(spec("w").instances(3))).unwrap();
    let reply = b.start_target("w");
    assert_eq!(answered(&reply).unwrap(), 3);
    let batches = b.procs.borrow().batches.clone();
    assert_eq!(
        batches,
        vec![vec![b.key("w.0"), b.key("w.1"), b.key("w.2")]],
        "one batch, in the order of the instances"
    );
    for name in ["w.0", "w.1", "w.2"] {
        assert_eq!(b.status(name), Status::Online, "{name}");
    }
}

#[test]
fn a_spawn_that_fails_in_a_batch_errors_its_service_alone() {
    let mut b = Bench::new();
    b.procs.borrow_mut().fail_spawn_of.insert("b".into());
    let replies = b.start_many(vec![spec("a"), spec("b"), crasher("c", Backoff::none())]);
    let err = answered(&replies[1]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn);
    assert_eq!(err.service(), Some("b"));
    assert_eq!(b.status("b"), Status::Errored);
    assert_eq!(
        b.runs_recorded("b")[0].cause(),
        Some(crate::history::Cause::SpawnFailed)
    );
    for (name, reply) in [("a", &replies[0]), ("c", &replies[2])] {
        assert!(answered(reply).is_ok(), "{name} started");
        assert_eq!(b.status(name), Status::Online, "{name}");
    }
    // Its neighbours' runs are whole: a crash of one is restarted by its policy.
    let before = b.generation("c");
    b.exit("c", RawExit::Code(1));
    assert!(b.generation("c") > before, "c restarted");
    assert_eq!(b.status("a"), Status::Online);
}

#[test]
fn a_dependent_in_a_batch_is_judged_with_what_came_before_it_spawned() {
    let mut b = Bench::new();
    let replies = b.start_many(vec![
        spec("db"),
        spec("web").after("db", Condition::Started),
        spec("cache"),
    ]);
    // The batch is spawned before the dependent is judged: it starts in the same turn.
    let batches = b.procs.borrow().batches.clone();
    assert_eq!(
        batches,
        vec![vec![b.key("db")], vec![b.key("web"), b.key("cache")]]
    );
    for (name, reply) in ["db", "web", "cache"].iter().zip(&replies) {
        assert!(answered(reply).is_ok(), "{name} started");
        assert_eq!(b.status(name), Status::Online, "{name}");
    }
}

#[test]
fn a_restart_by_the_policy_that_cannot_spawn_is_retried_after_a_floor() {
    let mut b = Bench::new();
    b.start(crasher("x", Backoff::none()));
    b.procs.borrow_mut().fail_spawn = Some(Error::new(ErrorKind::Spawn, "gone"));
    b.exit("x", RawExit::Code(1));
    assert_eq!(b.status("x"), Status::Backoff, "no spin without backoff");
    b.advance(super::lifecycle::SPAWN_RETRY_MIN);
    assert_eq!(b.status("x"), Status::Online, "the retry spawned");
}

#[test]
fn a_start_waits_for_its_dependency_and_runs_once_it_is_met() {
    let mut b = Bench::new();
    b.start(spec("db").ready(Ready::LogLine("ready".into())));
    let web = b.start(spec("web").after("db", Condition::Ready));
    assert_eq!(b.status("web"), Status::Starting);
    assert!(
        matches!(b.engine.services[&b.id("web")].state, State::Waiting),
        "it waits"
    );
    assert_eq!(
        answered(&web).unwrap().status(),
        Status::Starting,
        "the start returns while it waits"
    );
    let id = b.id("db");
    b.logs
        .send(logs::Report::ReadyLine { id, generation: 1 })
        .unwrap();
    b.turn();
    assert_eq!(b.status("web"), Status::Online, "started once db is ready");
}

#[test]
fn a_stop_of_all_goes_in_waves_dependents_first() {
    let mut b = Bench::new();
    b.start(spec("db"));
    b.start(spec("web").after("db", Condition::Started));
    let (db, web) = (b.key("db"), b.key("web"));
    let reply = b.stop("all");
    assert_eq!(
        b.procs.borrow().signals,
        [(web, Signal::Term)],
        "only the dependent first"
    );
    b.exit("web", RawExit::Signal(15));
    b.drained("web", 1);
    assert_eq!(b.status("db"), Status::Stopping, "then its dependency");
    assert!(b.procs.borrow().signals.contains(&(db, Signal::Term)));
    unanswered(&reply, "the stop of all");
    b.exit("db", RawExit::Signal(15));
    b.drained("db", 1);
    assert_eq!(answered(&reply).unwrap(), 2);
}

#[test]
fn a_stop_without_a_run_sweeps_what_earlier_runs_left() {
    let mut b = Bench::new();
    b.start(spec("once").restart(RestartPolicy::never()));
    b.exit("once", RawExit::Code(0));
    b.drained("once", 1);
    assert_eq!(b.status("once"), Status::Exited);
    let id = b.id("once");
    b.procs.borrow_mut().sweepable.insert(id);
    let reply = b.stop("once");
    assert_eq!(b.status("once"), Status::Stopping, "sweeping");
    unanswered(&reply, "the stop while it sweeps");
    b.advance(Duration::from_secs(5));
    assert_eq!(
        b.procs.borrow().killed,
        [b.key("once")],
        "SIGKILL at the stop timeout"
    );
    b.procs.borrow_mut().sweepable.clear();
    b.advance(super::super::containment::KILL_GRACE);
    assert_eq!(answered(&reply).unwrap(), 1);
    assert_eq!(
        b.status("once"),
        Status::Exited,
        "a stop leaves an exited service exited"
    );
}

#[test]
fn a_shutdown_stops_everything_and_refuses_later_requests() {
    let mut b = Bench::new();
    b.start(spec("a"));
    let (reply, rx) = crossbeam_channel::bounded(1);
    b.requests
        .send(Request::Shutdown { reply, by: None })
        .unwrap();
    b.turn();
    assert_eq!(b.status("a"), Status::Stopping);
    let late = b.stop("a");
    assert_eq!(
        answered(&late).unwrap_err().kind(),
        ErrorKind::ShutDown,
        "a request after the shutdown began"
    );
    b.exit("a", RawExit::Signal(15));
    b.drained("a", 1);
    assert_eq!(b.status("a"), Status::Stopped);
    assert!(b.engine.pending.is_empty(), "the shutdown's waves are done");
    assert!(b.engine.shutdown.is_some() && rx.try_recv().is_err());
}

fn web(ready: Ready) -> ServiceSpec {
    crasher("w", Backoff::fixed(Duration::from_secs(1)))
        .ready(ready)
        .ready_timeout(Duration::from_secs(3))
        .instances(3)
}

#[test]
fn instances_are_services_of_their_own_with_their_own_policy() {
    let mut b = Bench::new();
    let info = answered(&b.start(web(Ready::Immediately))).unwrap();
    assert_eq!(
        (info.name(), info.instance()),
        ("w.0", Some(0)),
        "the first's info"
    );
    assert_eq!(b.names(), ["w.0", "w.1", "w.2"]);
    assert!(b.procs.borrow().live.len() == 3, "three runs");
    b.ends("w.1", RawExit::Code(1));
    assert_eq!(b.status("w.1"), Status::Backoff, "its own policy");
    assert_eq!(b.status("w.0"), Status::Online);
    assert_eq!(b.status("w.2"), Status::Online);
    b.advance(Duration::from_secs(1));
    assert_eq!(b.engine.services[&b.id("w.1")].restarts, 1);
    assert_eq!(b.engine.services[&b.id("w.0")].restarts, 0, "its own count");
    // A target names one instance, or all of them.
    let stopping = b.stop("w.2");
    b.ends("w.2", RawExit::Signal(15));
    assert_eq!(answered(&stopping).unwrap(), 1);
    assert_eq!(b.status("w.2"), Status::Stopped);
    assert_eq!(b.status("w.0"), Status::Online, "one instance alone");
    let stopping = b.stop("w");
    b.ends("w.0", RawExit::Signal(15));
    b.ends("w.1", RawExit::Signal(15));
    assert_eq!(
        answered(&stopping).unwrap(),
        3,
        "the name of the spec names all three"
    );
}

#[test]
fn a_crash_loop_limit_counts_the_crashes_of_one_instance() {
    let mut b = Bench::new();
    b.start(
        spec("w")
            .restart(
                RestartPolicy::always()
                    .backoff(Backoff::none())
                    .max_restarts(1, Duration::from_secs(60)),
            )
            .instances(2),
    );
    b.exit("w.0", RawExit::Code(1));
    b.exit("w.1", RawExit::Code(1));
    assert_eq!(b.status("w.0"), Status::Online, "one crash each: restarted");
    assert_eq!(b.status("w.1"), Status::Online);
    b.exit("w.0", RawExit::Code(1));
    b.drained("w.0", 2);
    assert_eq!(b.status("w.0"), Status::Errored, "its second crash");
    assert_eq!(
        b.status("w.1"),
        Status::Online,
        "the other's count is its own"
    );
}

#[test]
fn scale_adds_instances_and_removes_the_highest() {
    let mut b = Bench::new();
    b.start(web(Ready::Immediately));
    let up = b.scale("w", 5);
    assert_eq!(answered(&up).unwrap(), 2);
    assert_eq!(b.names(), ["w.0", "w.1", "w.2", "w.3", "w.4"]);
    assert_eq!(
        b.status("w.4"),
        Status::Online,
        "started: the service is up"
    );
    assert_eq!(b.stored_specs()["w.0"].get_instances(), Some(5), "stored");
    let gen0 = b.generation("w.0");
    let down = b.scale("w", 2);
    for gone in ["w.2", "w.3", "w.4"] {
        assert_eq!(b.status(gone), Status::Stopping, "{gone}");
    }
    for gone in ["w.2", "w.3", "w.4"] {
        let id = b.id(gone);
        b.ends(gone, RawExit::Signal(15));
        b.logs.send(logs::Report::Forgotten { id }).unwrap();
    }
    b.turn();
    assert_eq!(answered(&down).unwrap(), 3);
    assert_eq!(b.names(), ["w.0", "w.1"]);
    assert_eq!(
        b.generation("w.0"),
        gen0,
        "the instances that stay keep running"
    );
    assert_eq!(b.stored_specs().len(), 2);
    let err = answered(&b.scale("w.1", 3)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    b.start(spec("plain"));
    let err = answered(&b.scale("plain", 3)).unwrap_err();
    assert!(err.to_string().contains("no instances"), "{err}");
    let err = answered(&b.delete("w.1")).unwrap_err();
    assert!(err.to_string().contains("scale it down"), "{err}");
}

#[test]
fn a_reload_restarts_one_instance_at_a_time_each_once_ready() {
    let mut b = Bench::new();
    b.start(web(Ready::LogLine("up".into())));
    for n in ["w.0", "w.1", "w.2"] {
        b.ready_line(n);
    }
    let reply = b.reload("w");
    assert_eq!(b.status("w.0"), Status::Stopping, "the first");
    assert_eq!(b.status("w.1"), Status::Online, "the others wait");
    assert_eq!(b.status("w.2"), Status::Online);
    b.ends("w.0", RawExit::Signal(15));
    assert_eq!(b.status("w.0"), Status::Starting, "its new run");
    assert_eq!(
        b.status("w.1"),
        Status::Online,
        "not touched before w.0 is ready"
    );
    b.ready_line("w.0");
    assert_eq!(b.status("w.1"), Status::Stopping, "then the next");
    b.ends("w.1", RawExit::Signal(15));
    b.ready_line("w.1");
    b.ends("w.2", RawExit::Signal(15));
    unanswered(&reply, "the reload before the last is ready");
    b.ready_line("w.2");
    assert_eq!(answered(&reply).unwrap(), 3);
    for n in ["w.0", "w.1", "w.2"] {
        assert_eq!(b.generation(n), 2, "{n}");
        assert_eq!(b.engine.services[&b.id(n)].restarts, 0, "not a crash");
    }
}

#[test]
fn a_reload_stops_at_a_run_that_is_not_ready_and_leaves_the_rest_alone() {
    let mut b = Bench::new();
    b.start(web(Ready::LogLine("up".into())));
    for n in ["w.0", "w.1", "w.2"] {
        b.ready_line(n);
    }
    let reply = b.reload("w");
    b.ends("w.0", RawExit::Signal(15));
    b.advance(Duration::from_secs(3));
    assert_eq!(b.status("w.0"), Status::Stopping, "not ready in time");
    let err = answered(&reply).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReady);
    assert_eq!(err.service(), Some("w.0"));
    assert!(
        err.to_string().contains("left as they were: w.1, w.2"),
        "{err}"
    );
    assert!(
        b.events()
            .iter()
            .any(|e| matches!(e, Event::ReloadFailed { name, .. } if name == "w.0"))
    );
    assert_eq!(b.generation("w.1"), 1, "untouched");
    assert_eq!(b.generation("w.2"), 1);
    assert_eq!(b.status("w.1"), Status::Online);
}

#[test]
fn a_reload_will_not_restart_the_last_ready_instance() {
    let mut b = Bench::new();
    b.start(web(Ready::Immediately).instances(2));
    let stopping = b.stop("w.1");
    b.ends("w.1", RawExit::Signal(15));
    answered(&stopping).unwrap();
    let reply = b.reload("w.0");
    let err = answered(&reply).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReady);
    assert!(
        err.to_string()
            .contains("no other instance of 'w' is ready"),
        "{err}"
    );
    assert_eq!(b.status("w.0"), Status::Online, "left running");
    // Reloading both: the stopped one goes first, so the ready one is touched last.
    let reply = b.reload("w");
    assert_eq!(
        b.status("w.1"),
        Status::Online,
        "started first (ready at once)"
    );
    assert_eq!(b.status("w.0"), Status::Stopping, "then the other");
    b.ends("w.0", RawExit::Signal(15));
    assert_eq!(answered(&reply).unwrap(), 2);
}

#[test]
fn a_changed_spec_rolls_and_what_it_did_not_reach_keeps_the_old_spec_on_disk() {
    let mut b = Bench::new();
    let old = web(Ready::LogLine("up".into()));
    b.start(old.clone());
    for n in ["w.0", "w.1", "w.2"] {
        b.ready_line(n);
    }
    let new = old.clone().arg("--new");
    let reply = b.start(new.clone());
    assert_eq!(b.status("w.0"), Status::Stopping, "one at a time");
    assert_eq!(
        b.stored_specs()["w.0"],
        new,
        "the one being restarted has the new spec"
    );
    assert_eq!(
        b.stored_specs()["w.1"],
        old,
        "the others keep theirs until reached"
    );
    b.ends("w.0", RawExit::Signal(15));
    b.ready_line("w.0");
    b.ends("w.1", RawExit::Signal(15));
    // w.1's new run crashes before it is ready.
    b.ends("w.1", RawExit::Code(1));
    let err = answered(&reply).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReady);
    assert!(err.to_string().contains("left as they were: w.2"), "{err}");
    let stored = b.stored_specs();
    assert_eq!((&stored["w.0"], &stored["w.1"]), (&new, &new));
    assert_eq!(stored["w.2"], old, "w.2 stays on the old spec, on disk too");
    assert_eq!(b.status("w.1"), Status::Backoff, "its policy handles it");
    // Starting the new spec again finishes the job.
    let reply = b.start(new.clone());
    b.ends("w.2", RawExit::Signal(15));
    b.ready_line("w.2");
    assert_eq!(answered(&reply).unwrap().name(), "w.0");
    assert_eq!(b.stored_specs()["w.2"], new);
}

#[test]
fn a_changed_spec_of_a_service_without_instances_restarts_at_once() {
    let mut b = Bench::new();
    b.start(spec("p").ready(Ready::LogLine("up".into())));
    let reply = b.start(spec("p").ready(Ready::LogLine("up".into())).arg("x"));
    b.ends("p", RawExit::Signal(15));
    assert_eq!(
        answered(&reply).unwrap().status(),
        Status::Starting,
        "answered once spawned, as before"
    );
}

#[test]
fn a_defined_service_stays_down_until_started_by_name() {
    let mut b = Bench::new();
    let info = answered(&b.define(spec("d").instances(2))).unwrap();
    assert_eq!(info.status(), Status::Stopped);
    assert!(!info.desired_up());
    assert!(b.procs.borrow().live.is_empty(), "nothing spawned");
    assert!(b.stored_specs().contains_key("d.1"), "stored");
    let reply = b.start_target("d.1");
    assert_eq!(answered(&reply).unwrap(), 1);
    assert_eq!(b.status("d.1"), Status::Online);
    assert_eq!(b.status("d.0"), Status::Stopped);
    let reply = b.start_target("d");
    assert_eq!(
        answered(&reply).unwrap(),
        1,
        "the one that ran is left alone"
    );
    let generation = b.generation("d.1");
    assert_eq!(generation, 1);
    let err = answered(&b.define(spec("d").instances(2).arg("x"))).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "a running spec is not redefined"
    );
}

#[test]
fn a_one_shot_task_that_exits_0_is_done_and_its_dependents_start() {
    let mut b = Bench::new();
    b.start(crasher("setup", Backoff::fixed(Duration::from_secs(1))).oneshot(true));
    b.start(spec("app").after("setup", Condition::Exited0));
    assert_eq!(b.status("setup"), Status::Starting, "running: not done yet");
    assert!(matches!(
        b.engine.services[&b.id("app")].state,
        State::Waiting
    ));
    b.ends("setup", RawExit::Code(3));
    assert_eq!(
        b.status("setup"),
        Status::Backoff,
        "a failure: its policy restarts it"
    );
    b.advance(Duration::from_secs(1));
    b.ends("setup", RawExit::Code(0));
    assert_eq!(
        b.status("setup"),
        Status::Exited,
        "done, although its policy is always"
    );
    assert_eq!(b.status("app"), Status::Online, "its dependent starts");
    let runs = b.runs_recorded("setup");
    assert_eq!(
        runs[0].decision(),
        Some("done: the one-shot task succeeded")
    );
    b.advance(Duration::from_secs(10));
    assert_eq!(b.status("setup"), Status::Exited, "never restarted");
}

#[test]
fn a_reload_of_a_one_shot_task_waits_for_it_to_exit_0() {
    let mut b = Bench::new();
    b.start(spec("t").oneshot(true).restart(RestartPolicy::never()));
    b.ends("t", RawExit::Code(0));
    let reply = b.reload("t");
    assert_eq!(b.status("t"), Status::Starting, "run again");
    unanswered(&reply, "the reload while it runs");
    b.ends("t", RawExit::Code(0));
    assert_eq!(answered(&reply).unwrap(), 1);
    let reply = b.reload("t");
    b.ends("t", RawExit::Code(2));
    assert_eq!(answered(&reply).unwrap_err().kind(), ErrorKind::NotReady);
}

#[test]
fn a_shutdown_with_a_deadline_kills_at_it_whatever_the_stop_timeouts() {
    let mut b = Bench::new();
    let long = Duration::from_secs(60);
    b.start(spec("db").stop_timeout(long));
    b.start(
        spec("web")
            .after("db", Condition::Started)
            .stop_timeout(long),
    );
    let (db, web) = (b.key("db"), b.key("web"));
    let (reply, _rx) = crossbeam_channel::bounded(1);
    let by = b.now + Duration::from_secs(2);
    b.requests
        .send(Request::Shutdown {
            reply,
            by: Some(by),
        })
        .unwrap();
    b.turn();
    assert_eq!(
        b.procs.borrow().signals,
        [(web, Signal::Term)],
        "dependents first"
    );
    b.advance(Duration::from_secs(1));
    assert!(
        b.procs.borrow().killed.is_empty(),
        "not before the deadline"
    );
    b.advance(Duration::from_secs(1));
    assert_eq!(
        b.procs.borrow().killed,
        [web],
        "SIGKILL at the fleet's deadline, not at the 60 s stop timeout"
    );
    b.exit("web", RawExit::Signal(9));
    b.drained("web", 1);
    assert!(
        b.procs.borrow().signals.contains(&(db, Signal::Term)),
        "the next wave gets its stop signal"
    );
    b.advance(Duration::ZERO);
    assert_eq!(
        b.procs.borrow().killed,
        [web, db],
        "a wave that begins after the deadline is SIGKILLed at once"
    );
}

#[test]
fn a_ping_is_answered_at_the_next_turn_even_during_a_shutdown() {
    let mut b = Bench::new();
    let (reply, rx) = crossbeam_channel::bounded(1);
    b.requests.send(Request::Ping { reply }).unwrap();
    assert!(rx.try_recv().is_err(), "not before a turn");
    b.turn();
    assert!(rx.try_recv().unwrap().is_ok());
    // While a shutdown stops the fleet, the loop still turns: alive.
    b.start(spec("slow"));
    let (reply, _done) = crossbeam_channel::bounded(1);
    b.requests
        .send(Request::Shutdown { reply, by: None })
        .unwrap();
    b.turn();
    assert_eq!(b.status("slow"), Status::Stopping);
    let (reply, rx) = crossbeam_channel::bounded(1);
    b.requests.send(Request::Ping { reply }).unwrap();
    b.turn();
    assert!(
        rx.try_recv().unwrap().is_ok(),
        "answered during the shutdown"
    );
}

#[test]
fn a_restart_schedule_restarts_at_each_tick_and_shows_the_next() {
    let mut b = Bench::new();
    let wall = b.fake_wall_clock(jan1(5));
    let info = answered(
        &b.start(spec("web").schedule(Schedule::restart("*/10 * * * * *").time_zone("UTC"))),
    )
    .unwrap();
    assert_eq!(
        info.next_scheduled(),
        Some(jan1(10)),
        "describe shows the next tick"
    );
    assert!(
        b.explain("web")
            .contains("next scheduled restart at 2024-01-01 00:00:10 +00:00 (UTC)")
    );
    b.turn();
    assert_eq!(b.status("web"), Status::Online, "not before its tick");
    wall.set(jan1(10));
    b.turn();
    assert_eq!(b.status("web"), Status::Stopping, "the tick stops the run");
    b.obeys_stop("web");
    assert_eq!(b.status("web"), Status::Online);
    assert_eq!(b.generation("web"), 2, "and starts a new one");
    let runs = b.runs_recorded("web");
    assert_eq!(runs.last().unwrap().cause(), Some(Cause::Scheduled));
    assert_eq!(
        b.engine.services[&b.id("web")].info().next_scheduled(),
        Some(jan1(20))
    );
}

#[test]
fn ticks_passed_over_by_a_clock_jump_give_one_restart_and_are_counted() {
    let mut b = Bench::new();
    let wall = b.fake_wall_clock(jan1(5));
    b.start(spec("web").schedule(Schedule::restart("*/10 * * * * *").time_zone("UTC")));
    wall.set(jan1(65));
    b.turn();
    b.obeys_stop("web");
    b.turn();
    assert_eq!(b.generation("web"), 2, "one restart for the ticks 10 to 60");
    assert!(
        b.explain("web").contains("5 ticks missed"),
        "{}",
        b.explain("web")
    );
    assert_eq!(
        b.engine.services[&b.id("web")].info().next_scheduled(),
        Some(jan1(70))
    );
}

#[test]
fn a_stopped_service_is_not_started_by_its_schedule() {
    let mut b = Bench::new();
    let wall = b.fake_wall_clock(jan1(5));
    b.start(spec("web").schedule(Schedule::restart("*/10 * * * * *").time_zone("UTC")));
    b.stop("web");
    b.obeys_stop("web");
    assert_eq!(b.status("web"), Status::Stopped);
    assert_eq!(
        b.engine.services[&b.id("web")].info().next_scheduled(),
        None
    );
    wall.set(jan1(30));
    b.turn();
    assert_eq!(
        b.status("web"),
        Status::Stopped,
        "the schedule was disarmed"
    );
    assert!(b.procs.borrow().live.is_empty(), "nothing spawned");
}

#[test]
fn a_job_waits_for_its_tick_runs_and_waits_again_after_a_success() {
    let mut b = Bench::new();
    let wall = b.fake_wall_clock(jan1(5));
    let info =
        answered(&b.start(spec("job").schedule(Schedule::run("*/10 * * * * *").time_zone("UTC"))))
            .unwrap();
    assert_eq!(
        info.status(),
        Status::Scheduled,
        "the start answers at once"
    );
    assert!(
        b.procs.borrow().live.is_empty(),
        "nothing runs before the tick"
    );
    assert!(b.explain("job").contains("waiting for its first run"));
    wall.set(jan1(10));
    b.turn();
    assert_eq!(b.status("job"), Status::Online, "the tick runs it");
    b.exit("job", RawExit::Code(0));
    b.drained("job", 1);
    assert_eq!(
        b.status("job"),
        Status::Scheduled,
        "a success waits for the next tick"
    );
    assert_eq!(
        b.runs_recorded("job")[0].decision(),
        Some("a scheduled job: it waits for its next tick")
    );
    assert_eq!(b.generation("job"), 1);
    wall.set(jan1(20));
    b.turn();
    assert_eq!(b.generation("job"), 2, "the next tick runs it again");
    let r = b.restart("job");
    b.obeys_stop("job");
    answered(&r).unwrap();
    assert_eq!(b.generation("job"), 3, "a restart by hand runs it now");
}

#[test]
fn a_tick_skips_a_job_still_running_or_restarts_it_as_the_schedule_says() {
    let mut b = Bench::new();
    let wall = b.fake_wall_clock(jan1(5));
    let every_10s = |name: &str, overlap| {
        spec(name).schedule(
            Schedule::run("*/10 * * * * *")
                .time_zone("UTC")
                .run_on_start(true)
                .if_running(overlap),
        )
    };
    b.start(every_10s("skip", Overlap::Skip));
    b.start(every_10s("restart", Overlap::Restart));
    assert_eq!(b.status("skip"), Status::Online, "run_on_start");
    wall.set(jan1(10));
    b.turn();
    assert_eq!(b.status("skip"), Status::Online);
    assert_eq!(b.generation("skip"), 1, "the tick was skipped");
    assert!(b.explain("skip").contains("1 ticks skipped"));
    assert_eq!(b.status("restart"), Status::Stopping);
    b.obeys_stop("restart");
    assert_eq!(
        b.generation("restart"),
        2,
        "the old run stopped, a new one ran"
    );
    assert_eq!(
        b.runs_recorded("restart").last().unwrap().cause(),
        Some(Cause::Scheduled)
    );
}

#[test]
fn a_resurrected_job_with_catch_up_runs_once_for_the_ticks_it_missed() {
    let mut b = Bench::new();
    b.fake_wall_clock(jan1(3600));
    b.start(spec("late").schedule(Schedule::run("0 * * * *").time_zone("UTC").catch_up(true)));
    b.start(spec("waits").schedule(Schedule::run("0 * * * *").time_zone("UTC")));
    for name in ["late", "waits"] {
        let id = b.id(name);
        let svc = b.engine.services.get_mut(&id).unwrap();
        super::triggers::disarm(svc, &mut b.engine.io);
        // The previous host handled the tick of 22:00 the day before.
        super::triggers::arm(
            svc,
            &mut b.engine.io,
            Some(Some(jan1(0) - Duration::from_secs(7200))),
        );
        b.engine.start_service(id, b.now);
    }
    b.turn();
    assert_eq!(b.status("late"), Status::Online, "catch_up: one run now");
    assert_eq!(
        b.status("waits"),
        Status::Scheduled,
        "no catch_up: the next tick"
    );
    for name in ["late", "waits"] {
        assert!(
            b.explain(name).contains("3 ticks missed"),
            "{}",
            b.explain(name)
        );
    }
}

#[test]
fn a_burst_of_changes_gives_one_restart_once_quiet_and_none_once_stopped() {
    let mut b = Bench::new();
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir(tree.path().join("src")).unwrap();
    let watch = Watch::new([tree.path().to_str().unwrap()])
        .ignore("*.log")
        .debounce(Duration::from_secs(1));
    b.start(spec("dev").watch(watch));
    let changed = |b: &mut Bench, file: &str| {
        std::fs::write(tree.path().join(file), "x").unwrap();
        b.engine.turn(&[super::INOTIFY_TOKEN], b.now);
    };
    changed(&mut b, "debug.log");
    b.advance(Duration::from_secs(2));
    assert_eq!(
        b.status("dev"),
        Status::Online,
        "an ignored file changes nothing"
    );
    changed(&mut b, "src/a.js");
    b.advance(Duration::from_millis(600));
    changed(&mut b, "src/b.js");
    b.advance(Duration::from_millis(600));
    assert_eq!(
        b.status("dev"),
        Status::Online,
        "not while the changes go on"
    );
    assert!(
        b.explain("dev")
            .contains("files changed (src/a.js, src/b.js)")
    );
    b.advance(Duration::from_millis(400));
    assert_eq!(
        b.status("dev"),
        Status::Stopping,
        "quiet for the debounce: the restart"
    );
    b.obeys_stop("dev");
    assert_eq!(b.generation("dev"), 2, "one restart for the burst");
    let run = &b.runs_recorded("dev").last().unwrap().clone();
    assert_eq!(run.cause(), Some(Cause::FilesChanged));
    assert!(
        run.reason().unwrap().contains("src/a.js, src/b.js"),
        "{run:?}"
    );
    b.advance(Duration::from_secs(3));
    assert_eq!(b.generation("dev"), 2, "and no other");

    b.stop("dev");
    b.obeys_stop("dev");
    changed(&mut b, "src/c.js");
    b.advance(Duration::from_secs(3));
    assert_eq!(
        b.status("dev"),
        Status::Stopped,
        "a stopped service stays stopped"
    );
    assert!(
        b.engine.io.triggers.watched_dirs() == 0,
        "and its directories are no longer watched"
    );
}

#[test]
fn a_silent_run_is_ended_by_its_watchdog_and_output_puts_it_off() {
    let mut b = Bench::new();
    b.start(
        crasher("quiet", Backoff::fixed(Duration::from_secs(5)))
            .watchdog(Watchdog::new().silence(Duration::from_secs(2))),
    );
    b.advance(Duration::from_millis(1500));
    let last = b
        .last_output
        .borrow()
        .clone()
        .expect("the pump has the clock");
    last.set(b.now);
    b.advance(Duration::from_millis(1000));
    assert_eq!(b.status("quiet"), Status::Online, "it wrote 1 s ago");
    b.advance(Duration::from_millis(1000));
    assert_eq!(b.status("quiet"), Status::Stopping, "2 s without a byte");
    b.obeys_stop("quiet");
    assert_eq!(b.status("quiet"), Status::Backoff, "the policy decides");
    let run = &b.runs_recorded("quiet")[0];
    assert_eq!(run.cause(), Some(Cause::Silent));
    assert_eq!(run.reason(), Some("watchdog: no output for 2s"));
    assert!(b.explain("quiet").contains("ended by a trigger (silent)"));
}

#[test]
fn a_line_matching_the_watchdog_pattern_ends_the_run() {
    let mut b = Bench::new();
    b.start(
        crasher("db", Backoff::none()).watchdog(
            Watchdog::new()
                .pattern("nothing")
                .pattern("deadlock detected"),
        ),
    );
    let id = b.id("db");
    b.logs
        .send(logs::Report::OutputMatched {
            id,
            generation: 1,
            pattern: 1,
            line: "ERROR: deadlock detected in tx 7".into(),
        })
        .unwrap();
    b.turn();
    assert_eq!(b.status("db"), Status::Stopping);
    b.obeys_stop("db");
    assert_eq!(b.generation("db"), 2, "restarted by its policy");
    let run = b.runs_recorded("db").last().unwrap().clone();
    assert_eq!(run.cause(), Some(Cause::OutputMatched));
    assert_eq!(
        run.reason(),
        Some("watchdog: output matched 'deadlock detected': ERROR: deadlock detected in tx 7")
    );
    b.logs
        .send(logs::Report::OutputMatched {
            id,
            generation: 1,
            pattern: 1,
            line: "late".into(),
        })
        .unwrap();
    b.turn();
    assert_eq!(b.status("db"), Status::Online, "a stale report is dropped");
}

#[test]
fn a_tick_during_a_shutdown_starts_nothing() {
    let mut b = Bench::new();
    let wall = b.fake_wall_clock(jan1(5));
    b.start(
        crasher("db", Backoff::fixed(Duration::from_secs(60)))
            .schedule(Schedule::restart("*/10 * * * * *").time_zone("UTC")),
    );
    b.start(spec("web").after("db", Condition::Started));
    b.exit("db", RawExit::Code(1));
    b.drained("db", 1);
    assert_eq!(b.status("db"), Status::Backoff);
    let (reply, _rx) = crossbeam_channel::bounded(1);
    b.requests
        .send(Request::Shutdown { reply, by: None })
        .unwrap();
    b.turn();
    assert_eq!(b.status("web"), Status::Stopping, "the first wave");
    assert_eq!(b.status("db"), Status::Backoff, "waits for the second");
    wall.set(jan1(10));
    b.turn();
    assert_eq!(b.generation("db"), 1, "the tick started nothing");
    assert_eq!(b.engine.services[&b.id("db")].info().next_scheduled(), None);
    b.obeys_stop("web");
    assert_eq!(b.status("db"), Status::Stopped);
}

#[test]
fn the_poll_tokens_of_the_thread_own_sources_are_distinct_and_below_the_waker() {
    let tokens = [
        super::STATE_TOKEN,
        super::GUARDIAN_TOKEN,
        super::ALARM_TOKEN,
        super::INOTIFY_TOKEN,
        super::ORPHANS_TOKEN,
    ];
    let distinct: std::collections::HashSet<u64> = tokens.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "a token given twice: {tokens:?}"
    );
    // Above every run's and every containment token (which count up from 1, 2^61, 2^62).
    assert!(
        tokens
            .iter()
            .all(|&t| t < crate::sys::WAKER_TOKEN && t > (1 << 62) + (1 << 40))
    );
}
