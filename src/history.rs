//! [`Run`]: one incarnation of a service as recorded in the registry, and [`Explanation`]:
//! why a service is in its status, in words.

use std::fmt;
use std::time::{Duration, SystemTime};

/// One run of a service: when it started and ended, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub(crate) id: i64,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) started_at: SystemTime,
    pub(crate) ended_at: Option<SystemTime>,
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) reason: Option<String>,
}

impl Run {
    /// The run's id in the registry (increasing).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Which run of the service since the supervisor opened (restarts after `open` count from 1).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The pid of its main process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// When it ended; `None` while it runs (or if the host died during it).
    pub fn ended_at(&self) -> Option<SystemTime> {
        self.ended_at
    }

    /// How long it ran, if it ended.
    pub fn uptime(&self) -> Option<Duration> {
        self.ended_at?.duration_since(self.started_at).ok()
    }

    /// Its exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Why the supervisor ended it, when a check did (`unhealthy: …`, `not ready within …`).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

/// Why a service is in its status, from the supervisor's own state and policy.
///
/// `Display` gives one line, such as `backoff: 3rd restart in a row, next start in 0.8s
/// (exponential backoff, resets after 10s of uptime)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub(crate) status: crate::Status,
    pub(crate) text: String,
}

impl Explanation {
    /// The status explained.
    pub fn status(&self) -> crate::Status {
        self.status
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.text)
    }
}

/// "1st", "2nd", "3rd", "4th", …
pub(crate) fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(super::ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
