//! Probes for readiness and liveness, run off the supervision thread by a fixed pool of
//! worker threads, each bounded by its timeout: a probe that hangs delays only itself.
//!
//! A command probe is spawned as a service is (`sys::spawn`): only fds 0-2 (all
//! `/dev/null`), signal dispositions reset, a process group of its own, the parent-death
//! signal from its worker (a thread that lives as long as the supervisor), and under cgroup
//! containment a cgroup of its own. When its check is over (it exited, or timed out), and
//! when its run is stopped or ends, its whole group (or cgroup) is killed and waited for:
//! no probe process outlives its check.

use crate::containment::ProbeCgroups;
use crate::readiness::Check;
use crate::sys::{self, RawExit, Waker};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Worker threads: started on the first probe, constant whatever the fleet size.
const WORKERS: usize = 4;
/// How long a probe's killed processes may take to be gone before the worker gives up on
/// them (they were sent SIGKILL; only a process stuck in the kernel takes longer).
const KILL_PATIENCE: Duration = Duration::from_secs(1);

/// What a probe is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Ready,
    Health,
}

pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) purpose: Purpose,
    pub(crate) check: Check,
    pub(crate) timeout: Duration,
    /// The run's probe slot: its command probe is ended through it.
    pub(crate) slot: Arc<Slot>,
}

/// A run's hold on its command probe: the run's stop (or end) cancels it, which kills the
/// probe's group if one runs, and keeps a queued probe of the run from starting.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    cancelled: AtomicBool,
    /// The probe running now (its pid is its group's id), until its worker reaps it.
    running: Mutex<Option<Arc<sys::PidFd>>>,
}

impl Slot {
    /// The run is over or stopping: kills its probe's process group now, and no later probe
    /// of it starts.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(probe) = &*self.running.lock() {
            // Still unreaped (its worker clears this first), so the group is the probe's.
            let _ = probe.signal_group(crate::signal::Signal::Kill);
        }
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// A probe's outcome: `Ok` or why it failed, as a lowercase phrase.
pub(crate) type Outcome = Result<(), String>;

/// What a worker reports back to the supervision thread: the outcome of one probe.
pub(crate) struct Report {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) purpose: Purpose,
    pub(crate) outcome: Outcome,
}

pub(crate) struct Pool {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts the workers; `cgroups`, under cgroup containment, is where command probes run.
    pub(crate) fn start(
        reports: Sender<Report>,
        waker: Arc<Waker>,
        cgroups: Option<ProbeCgroups>,
    ) -> std::io::Result<Pool> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::unbounded();
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let (rx, reports, waker) = (rx.clone(), reports.clone(), waker.clone());
            let cgroups = cgroups.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("sheepdog-probe-{i}"))
                    .spawn(move || {
                        for job in rx {
                            if job.slot.cancelled() {
                                continue; // its run is over: nobody wants the outcome
                            }
                            let outcome = match &job.check {
                                Check::Command(argv) => {
                                    let cgroup =
                                        cgroups.as_ref().map(|c| (c, job.id, job.generation));
                                    command(argv, job.timeout, &job.slot, cgroup)
                                }
                                check => run(check, job.timeout),
                            };
                            let report = Report {
                                id: job.id,
                                generation: job.generation,
                                purpose: job.purpose,
                                outcome,
                            };
                            if reports.send(report).is_err() {
                                return;
                            }
                            waker.wake();
                        }
                    })?,
            );
        }
        Ok(Pool {
            tx: Some(tx),
            workers,
        })
    }

    pub(crate) fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            // Each job ends within its timeout plus twice KILL_PATIENCE (at shutdown every
            // run is stopped first, which kills its probe at once), so this is bounded.
            w.join().expect("probe workers do not panic");
        }
    }
}

/// Runs one check within `timeout` (a command outside any cgroup, with a slot of its own).
pub(crate) fn run(check: &Check, timeout: Duration) -> Outcome {
    match check {
        Check::Tcp(port) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}"))
        }
        Check::Http(url) => http_get(url, timeout),
        Check::Command(argv) => command(argv, timeout, &Slot::default(), None),
        Check::Notify => Ok(()),
    }
}

fn http_get(url: &str, timeout: Duration) -> Outcome {
    let deadline = crate::duration::deadline(Instant::now(), timeout);
    let (host, port, path) = crate::readiness::parse_loopback_url(url)
        .ok_or_else(|| format!("http {url}: not a loopback URL"))?;
    let ip: std::net::IpAddr = match host.as_str() {
        "localhost" => [127, 0, 0, 1].into(),
        "[::1]" => std::net::Ipv6Addr::LOCALHOST.into(),
        h => h.parse().map_err(|_| format!("http {url}: bad host"))?,
    };
    let fail = |what: String| format!("http {url}: {what}");
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)
        .map_err(|e| fail(e.to_string()))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: sheepdog\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| fail(e.to_string()))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("no HTTP status line".into()))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(fail(format!("status {status}")))
    }
}

/// Runs a command probe: spawned clean (see the module doc), given `timeout` to exit 0,
/// then its whole process group (or, with `cgroup`, its cgroup) killed and waited for,
/// whatever it did. Bounded by `timeout` plus [`KILL_PATIENCE`] twice.
fn command(
    argv: &[String],
    timeout: Duration,
    slot: &Slot,
    cgroup: Option<(&ProbeCgroups, u64, u64)>,
) -> Outcome {
    let shown = argv.join(" ");
    let fail = |what: String| Err(format!("command '{shown}': {what}"));
    let Some(program) = crate::child::find_program(&argv[0]) else {
        return fail("program not found".into());
    };
    let args: Vec<CString> = match argv.iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(args) => args,
        Err(_) => return fail("an argument contains a NUL byte".into()),
    };
    let args: Vec<&CStr> = args.iter().map(CString::as_c_str).collect();
    let host_env = crate::child::host_env();
    let env: Vec<&CStr> = host_env.iter().map(CString::as_c_str).collect();
    let cg = match cgroup
        .map(|(c, id, generation)| c.make(id, generation))
        .transpose()
    {
        Ok(cg) => cg,
        Err(e) => return fail(format!("cannot create its cgroup: {e}")),
    };
    let spawned = sys::devnull().and_then(|null| {
        sys::spawn(&sys::SpawnRequest {
            setup: &sys::ChildSetup::NONE,
            program: &program,
            argv: &args,
            env: &env,
            cwd: None,
            stdout: null,
            stderr: null,
            cgroup: cg.as_ref().map(|c| (c.dir.as_fd(), c.procs.as_path())),
            join: Vec::new(),
            kind: sys::ChildKind::Service,
            keep: &[],
        })
    });
    let probe = match spawned {
        Ok(probe) => Arc::new(probe),
        Err(e) => {
            if let (Some((c, ..)), Some(cg)) = (cgroup, cg) {
                c.finish(cg, KILL_PATIENCE);
            }
            return fail(e.to_string());
        }
    };
    *slot.running.lock() = Some(probe.clone());
    if slot.cancelled() {
        slot.cancel(); // cancelled while it was spawned: the cancel found nothing to kill
    }
    let exited = probe.wait_exit(timeout).unwrap_or(false);
    // From here the slot no longer signals it: only this worker does, before the reap.
    slot.running.lock().take();
    let _ = probe.signal_group(crate::signal::Signal::Kill);
    if !exited {
        let _ = probe.wait_exit(KILL_PATIENCE);
    }
    let status = probe.reap().map(|r| r.map(|r| r.exit));
    let pid = probe.pid();
    // What the group or cgroup held besides the leader (a shell's children) goes too.
    let gone = match (cgroup, cg) {
        (Some((c, ..)), Some(cg)) => c.finish(cg, KILL_PATIENCE),
        _ => group_gone(pid),
    };
    if !gone {
        log::error!("command probe '{shown}': processes of its group survived SIGKILL");
    }
    if slot.cancelled() {
        return fail("cancelled: its run is over".into());
    }
    match status {
        _ if !exited => fail(format!(
            "timed out after {}",
            crate::duration::format(timeout)
        )),
        Ok(Some(RawExit::Code(0))) => Ok(()),
        Ok(Some(RawExit::Code(code))) => fail(format!("exit status: {code}")),
        Ok(Some(RawExit::Signal(sig))) => fail(format!("killed by signal {sig}")),
        Ok(Some(RawExit::Unknown)) | Ok(None) => fail("its exit status is unknown".into()),
        Err(e) => fail(e.to_string()),
    }
}

/// Waits (up to [`KILL_PATIENCE`]) until no live process is left in the killed process group
/// `pgid`, reaping those a subreaper host inherited; returns whether it emptied.
fn group_gone(pgid: u32) -> bool {
    let deadline = Instant::now() + KILL_PATIENCE;
    let group = std::collections::HashSet::from([pgid]);
    loop {
        let gone = sys::live_groups(&group).is_empty();
        // After the look: a member is re-parented (to a subreaper host) before it shows as a
        // zombie, so once none lives, every one this process inherited can be reaped.
        sys::reap_group(pgid);
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_and_a_failing_command_fail_with_a_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(run(&Check::Tcp(port), Duration::from_secs(1)), Ok(()));
        drop(listener);
        assert!(
            run(&Check::Tcp(port), Duration::from_secs(1))
                .unwrap_err()
                .contains("tcp 127.0.0.1")
        );
        assert_eq!(
            run(&Check::Command(vec!["true".into()]), Duration::from_secs(5)),
            Ok(())
        );
        let err = run(
            &Check::Command(vec!["sleep".into(), "5".into()]),
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
