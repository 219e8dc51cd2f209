//! Restart decisions: [`RestartPolicy`] and [`Backoff`], and the pure decision itself
//! ([`RestartPolicy::decide`] over a [`History`] and a [`RunEnd`]).
//!
//! The policy is a pure function of a service's restart history, the run that just ended
//! and a random sample for jitter. It reads no clock and does no I/O, so property tests
//! drive it without sleeping; the engine passes in the times it observed. A host can call
//! it the same way to see what a policy would do with a sequence of crashes.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a service that ended by itself is started again.
///
/// The default is [`RestartPolicy::always`] with the default [`Backoff`], a `stable_after`
/// of 10 s and no crash-loop limit.
///
/// # Example
///
/// ```
/// use sheepdog::{Backoff, RestartPolicy};
/// use std::time::Duration;
///
/// let policy = RestartPolicy::on_failure()
///     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)))
///     .stable_after(Duration::from_secs(10))
///     .max_restarts(5, Duration::from_secs(60))
///     .success_codes([0, 2]);
/// assert_ne!(policy, RestartPolicy::default());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    #[serde(rename = "policy")]
    mode: Mode,
    #[serde(default)]
    backoff: Backoff,
    #[serde(default = "default_stable_after", with = "crate::duration::serde_str")]
    stable_after: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_restarts: Option<CrashLimit>,
    #[serde(default = "default_success_codes")]
    success_codes: Vec<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrashLimit {
    count: u32,
    #[serde(with = "crate::duration::serde_str")]
    window: Duration,
}

fn default_stable_after() -> Duration {
    Duration::from_secs(10)
}

fn default_success_codes() -> Vec<i32> {
    vec![0]
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy::always()
    }
}

impl RestartPolicy {
    fn with_mode(mode: Mode) -> RestartPolicy {
        RestartPolicy {
            mode,
            backoff: Backoff::default(),
            stable_after: default_stable_after(),
            max_restarts: None,
            success_codes: default_success_codes(),
        }
    }

    /// Restart whenever the service ends by itself, whatever its exit status.
    pub fn always() -> RestartPolicy {
        RestartPolicy::with_mode(Mode::Always)
    }

    /// Restart when the service exits with a code not in
    /// [`success_codes`](RestartPolicy::success_codes) or is killed by a signal.
    pub fn on_failure() -> RestartPolicy {
        RestartPolicy::with_mode(Mode::OnFailure)
    }

    /// Never restart: a service that ends by itself becomes [`Exited`](crate::Status::Exited).
    pub fn never() -> RestartPolicy {
        RestartPolicy::with_mode(Mode::Never)
    }

    /// The delay before each automatic restart. By default, exponential from 100 ms to 30 s.
    pub fn backoff(mut self, backoff: Backoff) -> RestartPolicy {
        self.backoff = backoff;
        self
    }

    /// The uptime after which a run counts as stable: the backoff and the crash count reset.
    /// By default, 10 s.
    pub fn stable_after(mut self, uptime: Duration) -> RestartPolicy {
        self.stable_after = uptime;
        self
    }

    /// More than `count` restarts inside a sliding `window` make the service
    /// [`Errored`](crate::Status::Errored) instead of restarting it. By default, no limit.
    pub fn max_restarts(mut self, count: u32, window: Duration) -> RestartPolicy {
        self.max_restarts = Some(CrashLimit { count, window });
        self
    }

    /// The exit codes that [`on_failure`](RestartPolicy::on_failure) treats as success.
    /// By default, `[0]`.
    pub fn success_codes(mut self, codes: impl IntoIterator<Item = i32>) -> RestartPolicy {
        self.success_codes = codes.into_iter().collect();
        self.success_codes.sort_unstable();
        self.success_codes.dedup();
        self
    }

    /// The uptime after which a run counts as stable.
    pub fn get_stable_after(&self) -> Duration {
        self.stable_after
    }

    /// Whether exit code `code` counts as a success (see
    /// [`success_codes`](RestartPolicy::success_codes)).
    pub(crate) fn is_success(&self, code: i32) -> bool {
        self.success_codes.contains(&code)
    }

    /// The configured backoff.
    pub fn backoff_config(&self) -> &Backoff {
        &self.backoff
    }

    /// Decides what follows the end of a run that the operator did not ask for, and returns
    /// the history to pass to the next call. This is the function the supervisor calls.
    ///
    /// `jitter` is a sample in `[0, 1)`; only a backoff with jitter uses it.
    ///
    /// # Example
    ///
    /// Five crashes a second apart, under a limit of three restarts a minute:
    ///
    /// ```
    /// use sheepdog::policy::{Decision, History, Outcome, RunEnd};
    /// use sheepdog::{Backoff, RestartPolicy};
    /// use std::time::{Duration, Instant};
    ///
    /// let policy = RestartPolicy::always()
    ///     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)))
    ///     .max_restarts(3, Duration::from_secs(60));
    /// let t0 = Instant::now();
    /// let mut history = History::default();
    /// let mut decisions = Vec::new();
    /// for i in 0..5u64 {
    ///     let started = t0 + Duration::from_secs(i);
    ///     let end = RunEnd::new(started, started + Duration::from_millis(500), Outcome::Code(1));
    ///     let (decision, next) = policy.decide(&history, &end, 0.0);
    ///     decisions.push(decision);
    ///     history = next;
    /// }
    /// assert_eq!(decisions[0], Decision::Restart { delay: Duration::from_millis(100), attempt: 1 });
    /// assert_eq!(decisions[2], Decision::Restart { delay: Duration::from_millis(400), attempt: 3 });
    /// assert!(matches!(decisions[3], Decision::Errored { crashes: 4, .. }));
    /// ```
    pub fn decide(&self, history: &History, end: &RunEnd, jitter: f64) -> (Decision, History) {
        let mut next = history.clone();
        if end.ended.saturating_duration_since(end.started) >= self.stable_after {
            next = History::default();
        }
        let restart = match self.mode {
            Mode::Always => true,
            Mode::OnFailure => match end.outcome {
                Outcome::Code(code) => !self.success_codes.contains(&code),
                Outcome::Signal(_) | Outcome::Unknown => true,
            },
            Mode::Never => false,
        };
        if !restart {
            return (Decision::Exited, next);
        }
        next.recent.push_back(end.ended);
        if let Some(limit) = self.max_restarts {
            while let Some(&first) = next.recent.front() {
                if end.ended.saturating_duration_since(first) >= limit.window {
                    next.recent.pop_front();
                } else {
                    break;
                }
            }
            if next.recent.len() > limit.count as usize {
                let crashes = next.recent.len() as u32;
                return (
                    Decision::Errored {
                        crashes,
                        window: limit.window,
                    },
                    next,
                );
            }
        } else {
            // Without a limit only the count matters to `explain`; keep memory bounded.
            while next.recent.len() > 1 {
                next.recent.pop_front();
            }
        }
        let attempt = next.consecutive;
        next.consecutive = next.consecutive.saturating_add(1);
        let delay = self.backoff.delay_with_jitter(attempt, jitter);
        (
            Decision::Restart {
                delay,
                attempt: attempt + 1,
            },
            next,
        )
    }
}

/// The delay before an automatic restart.
///
/// # Example
///
/// ```
/// use sheepdog::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30));
/// assert_eq!(b.delay(0), Duration::from_millis(100));
/// assert_eq!(b.delay(3), Duration::from_millis(800));
/// assert_eq!(b.delay(100), Duration::from_secs(30));
/// assert_eq!(Backoff::none().delay(7), Duration::ZERO);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Backoff {
    /// Restart at once.
    None,
    /// The same delay before every restart.
    Fixed {
        /// The delay.
        #[serde(with = "crate::duration::serde_str")]
        delay: Duration,
    },
    /// `base * factor^n` before the `n`-th consecutive restart (from 0), capped at `max`,
    /// with an optional random spread of `±jitter` (a fraction).
    Exponential {
        /// The first delay.
        #[serde(with = "crate::duration::serde_str")]
        base: Duration,
        /// The largest delay.
        #[serde(with = "crate::duration::serde_str")]
        max: Duration,
        /// The growth factor, at least 1. By default, 2.
        #[serde(default = "default_factor")]
        factor: f64,
        /// The random spread as a fraction of the delay, in `[0, 1]`. By default, 0.
        #[serde(default)]
        jitter: f64,
    },
}

fn default_factor() -> f64 {
    2.0
}

impl Default for Backoff {
    /// Exponential from 100 ms to 30 s, factor 2, no jitter.
    fn default() -> Backoff {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Exponential backoff from `base` up to `max`, doubling each time.
    pub fn exponential(base: Duration, max: Duration) -> Backoff {
        Backoff::Exponential {
            base,
            max: max.max(base),
            factor: default_factor(),
            jitter: 0.0,
        }
    }

    /// The same delay before every restart.
    pub fn fixed(delay: Duration) -> Backoff {
        Backoff::Fixed { delay }
    }

    /// No delay: restart at once.
    pub fn none() -> Backoff {
        Backoff::None
    }

    /// Sets the growth factor of an exponential backoff (clamped to at least 1); no effect on
    /// the other kinds.
    pub fn factor(mut self, f: f64) -> Backoff {
        if let Backoff::Exponential { factor, .. } = &mut self {
            *factor = if f.is_finite() { f.max(1.0) } else { 2.0 };
        }
        self
    }

    /// Spreads each exponential delay randomly by up to `±fraction` of itself (clamped to
    /// `[0, 1]`), so that services that crash together do not restart together.
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        if let Backoff::Exponential { jitter, .. } = &mut self {
            *jitter = if fraction.is_finite() {
                fraction.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        self
    }

    /// The delay before the `attempt`-th consecutive restart (counting from 0), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with_jitter(attempt, 0.5)
    }

    /// The delay with a jitter sample `unit` in `[0, 1)`; 0.5 means no spread.
    pub(crate) fn delay_with_jitter(&self, attempt: u32, unit: f64) -> Duration {
        match *self {
            Backoff::None => Duration::ZERO,
            Backoff::Fixed { delay } => delay,
            Backoff::Exponential {
                base,
                max,
                factor,
                jitter,
            } => {
                let grown = base.as_secs_f64() * factor.max(1.0).powf(f64::from(attempt));
                let spread = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
                let secs = (grown * spread).min(max.as_secs_f64());
                if secs.is_finite() && secs > 0.0 {
                    Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
                } else if secs.is_finite() {
                    Duration::ZERO
                } else {
                    max
                }
            }
        }
    }

    /// Checks the numbers, for spec validation.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Backoff::Exponential { factor, jitter, .. } = *self {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(format!(
                    "backoff factor {factor} must be a finite number of at least 1"
                ));
            }
            if !(0.0..=1.0).contains(&jitter) {
                return Err(format!("backoff jitter {jitter} must be between 0 and 1"));
            }
        }
        Ok(())
    }
}

/// What the policy remembers between runs of one service: the consecutive restarts since
/// the last stable run, and the times of the restarts still inside the crash-loop window.
/// Start from `History::default()` and pass on what [`RestartPolicy::decide`] returns.
///
/// # Example
///
/// ```
/// use sheepdog::policy::History;
///
/// assert_eq!(History::default().consecutive(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub(crate) consecutive: u32,
    pub(crate) recent: VecDeque<Instant>,
}

impl History {
    /// Restarts in a row since the last run that was stable.
    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }
}

/// A run that ended without the operator asking for it: when it started and ended, and how.
///
/// # Example
///
/// ```
/// use sheepdog::policy::{Outcome, RunEnd};
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let end = RunEnd::new(t0, t0 + Duration::from_secs(2), Outcome::Signal(9));
/// assert_eq!(end.uptime(), Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunEnd {
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    pub(crate) outcome: Outcome,
}

impl RunEnd {
    /// A run that started at `started` and ended at `ended` with `outcome`.
    pub fn new(started: Instant, ended: Instant, outcome: Outcome) -> RunEnd {
        RunEnd {
            started,
            ended,
            outcome,
        }
    }

    /// How long it ran.
    pub fn uptime(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }
}

/// How a run ended.
///
/// # Example
///
/// ```
/// use sheepdog::policy::Outcome;
///
/// assert_ne!(Outcome::Code(0), Outcome::Signal(15));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
    /// The exit status could not be collected (another reaper took it, on a kernel without
    /// `PIDFD_GET_INFO`).
    Unknown,
}

/// What follows a run that ended by itself, as [`RestartPolicy::decide`] sees it.
///
/// # Example
///
/// ```
/// use sheepdog::policy::{Decision, History, Outcome, RunEnd};
/// use sheepdog::RestartPolicy;
/// use std::time::Instant;
///
/// let t = Instant::now();
/// let (decision, _) = RestartPolicy::never().decide(&History::default(), &RunEnd::new(t, t, Outcome::Code(1)), 0.0);
/// assert_eq!(decision, Decision::Exited);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Start again after `delay`; this is the `attempt`-th consecutive restart (from 1).
    Restart {
        /// The wait before the new start.
        delay: Duration,
        /// Which restart in a row this is, from 1.
        attempt: u32,
    },
    /// Leave it ended: the policy does not restart this exit.
    Exited,
    /// The crash-loop limit is hit: `crashes` restarts inside `window`.
    Errored {
        /// The restarts counted inside the window, this one included.
        crashes: u32,
        /// The crash-loop window.
        window: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn end(base: Instant, started_ms: u64, uptime_ms: u64, outcome: Outcome) -> RunEnd {
        RunEnd {
            started: base + Duration::from_millis(started_ms),
            ended: base + Duration::from_millis(started_ms + uptime_ms),
            outcome,
        }
    }

    #[test]
    fn on_failure_restarts_failures_and_signals_only() {
        let p = RestartPolicy::on_failure().success_codes([0, 3]);
        let base = Instant::now();
        let h = History::default();
        assert_eq!(
            p.decide(&h, &end(base, 0, 5, Outcome::Code(0)), 0.5).0,
            Decision::Exited
        );
        assert_eq!(
            p.decide(&h, &end(base, 0, 5, Outcome::Code(3)), 0.5).0,
            Decision::Exited
        );
        assert!(matches!(
            p.decide(&h, &end(base, 0, 5, Outcome::Code(1)), 0.5).0,
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            p.decide(&h, &end(base, 0, 5, Outcome::Signal(9)), 0.5).0,
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn never_never_restarts_and_always_always_does() {
        let base = Instant::now();
        let h = History::default();
        for outcome in [Outcome::Code(0), Outcome::Code(1), Outcome::Signal(15)] {
            let e = end(base, 0, 1, outcome);
            assert_eq!(
                RestartPolicy::never().decide(&h, &e, 0.5).0,
                Decision::Exited
            );
            assert!(matches!(
                RestartPolicy::always().decide(&h, &e, 0.5).0,
                Decision::Restart { .. }
            ));
        }
    }

    #[test]
    fn backoff_grows_then_resets_after_a_stable_run() {
        let p = RestartPolicy::always()
            .backoff(Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_secs(30),
            ))
            .stable_after(Duration::from_secs(10));
        let base = Instant::now();
        let mut h = History::default();
        let mut delays = vec![];
        for i in 0..4 {
            let (d, next) = p.decide(&h, &end(base, i * 1000, 10, Outcome::Code(1)), 0.5);
            h = next;
            match d {
                Decision::Restart { delay, .. } => delays.push(delay.as_millis()),
                other => panic!("expected a restart, got {other:?}"),
            }
        }
        assert_eq!(delays, [100, 200, 400, 800]);
        let (d, _) = p.decide(&h, &end(base, 10_000, 10_000, Outcome::Code(1)), 0.5);
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::from_millis(100),
                attempt: 1
            }
        );
    }

    #[test]
    fn more_than_n_crashes_in_the_window_is_errored() {
        let p = RestartPolicy::always()
            .backoff(Backoff::none())
            .max_restarts(3, Duration::from_secs(60));
        let base = Instant::now();
        let mut h = History::default();
        for i in 0..3 {
            let (d, next) = p.decide(&h, &end(base, i * 100, 1, Outcome::Code(1)), 0.5);
            assert!(matches!(d, Decision::Restart { .. }), "crash {i}: {d:?}");
            h = next;
        }
        let (d, _) = p.decide(&h, &end(base, 400, 1, Outcome::Code(1)), 0.5);
        assert_eq!(
            d,
            Decision::Errored {
                crashes: 4,
                window: Duration::from_secs(60)
            }
        );
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            (0i32..4).prop_map(Outcome::Code),
            (1i32..32).prop_map(Outcome::Signal),
            Just(Outcome::Unknown),
        ]
    }

    fn policy() -> impl Strategy<Value = RestartPolicy> {
        let backoff = prop_oneof![
            Just(Backoff::none()),
            (0u64..5000).prop_map(|ms| Backoff::fixed(Duration::from_millis(ms))),
            (0u64..1000, 0u64..60_000, 1.0f64..4.0, 0.0f64..1.0).prop_map(|(b, m, f, j)| {
                Backoff::exponential(Duration::from_millis(b), Duration::from_millis(m))
                    .factor(f)
                    .jitter(j)
            }),
        ];
        let mode = prop_oneof![
            Just(RestartPolicy::always()),
            Just(RestartPolicy::on_failure()),
            Just(RestartPolicy::never())
        ];
        (
            mode,
            backoff,
            0u64..20_000,
            proptest::option::of((0u32..10, 1u64..120_000)),
        )
            .prop_map(|(p, b, stable, limit)| {
                let p = p.backoff(b).stable_after(Duration::from_millis(stable));
                match limit {
                    Some((n, w)) => p.max_restarts(n, Duration::from_millis(w)),
                    None => p,
                }
            })
    }

    proptest! {
        #[test]
        fn backoff_is_capped(attempt in 0u32..10_000, unit in 0.0f64..1.0, jitter in 0.0f64..1.0) {
            let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)).jitter(jitter);
            prop_assert!(b.delay_with_jitter(attempt, unit) <= Duration::from_secs(30));
        }

        #[test]
        fn backoff_without_jitter_never_shrinks(attempt in 0u32..200, base in 0u64..10_000, factor in 1.0f64..8.0) {
            let b = Backoff::exponential(Duration::from_millis(base), Duration::from_secs(60)).factor(factor);
            prop_assert!(b.delay(attempt) <= b.delay(attempt + 1));
        }

        #[test]
        fn jitter_stays_within_its_fraction(attempt in 0u32..8, unit in 0.0f64..1.0, jitter in 0.0f64..1.0) {
            let plain = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(3600));
            let spread = plain.clone().jitter(jitter);
            let d = spread.delay_with_jitter(attempt, unit).as_secs_f64();
            let p = plain.delay(attempt).as_secs_f64();
            prop_assert!(d >= p * (1.0 - jitter) - 1e-9 && d <= p * (1.0 + jitter) + 1e-9);
        }

        /// Over any sequence of run ends, the policy's answer depends only on its inputs, a
        /// stable run always resets, the limit is never exceeded, and `never` never restarts.
        #[test]
        fn decisions_follow_the_rules(
            p in policy(),
            runs in proptest::collection::vec((0u64..30_000, 0u64..30_000, outcome(), 0.0f64..1.0), 1..40),
        ) {
            let base = Instant::now();
            let mut h = History::default();
            let mut clock = 0u64;
            for (gap, uptime, out, unit) in runs {
                let e = end(base, clock + gap, uptime, out);
                clock += gap + uptime;
                let (d, next) = p.decide(&h, &e, unit);
                prop_assert_eq!(p.decide(&h, &e, unit), (d, next.clone()), "pure: same inputs, same answer");
                let stable = Duration::from_millis(uptime) >= p.stable_after;
                match d {
                    Decision::Restart { attempt, delay } => {
                        prop_assert!(p.mode != Mode::Never);
                        if stable { prop_assert_eq!(attempt, 1); }
                        prop_assert_eq!(next.consecutive, attempt);
                        if let Backoff::Exponential { max, .. } = p.backoff { prop_assert!(delay <= max); }
                        if let Some(limit) = p.max_restarts {
                            prop_assert!(next.recent.len() <= limit.count as usize);
                        }
                    }
                    Decision::Exited => {
                        if p.mode == Mode::Always { prop_assert!(false, "always exited"); }
                    }
                    Decision::Errored { crashes, .. } => {
                        let limit = p.max_restarts.expect("errored only with a limit");
                        prop_assert_eq!(crashes, limit.count + 1);
                        // Errored is final for the run; start over as the engine does on restart.
                        h = History::default();
                        continue;
                    }
                }
                h = next;
            }
        }
    }
}
