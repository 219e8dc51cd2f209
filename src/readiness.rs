//! [`Ready`], [`Health`] and [`Condition`]: when a service counts as up, how it is checked
//! while it runs, and what its dependents wait for.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a started service counts as ready (`Online`). Until then its status is
/// [`Starting`](crate::Status::Starting); not ready within the ready timeout is a failed
/// start that counts as a crash.
///
/// In files: `"immediately"`, `{ after = "2s" }`, `{ log-line = "listening on" }`,
/// `{ tcp = 8080 }`, `{ command = ["pg_isready"] }`, `"notify"`.
///
/// # Example
///
/// ```
/// use sheepdog::{Ready, ServiceSpec};
/// use std::time::Duration;
///
/// let web = ServiceSpec::new("web", "python3")
///     .args(["-m", "http.server", "8080"])
///     .ready(Ready::Tcp(8080))
///     .ready_timeout(Duration::from_secs(10));
/// assert_eq!(web.get_ready(), &Ready::Tcp(8080));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Ready {
    /// Ready as soon as it is spawned.
    #[default]
    Immediately,
    /// Ready once it has stayed up this long.
    After(#[serde(with = "crate::duration::serde_str")] Duration),
    /// Ready when a line of its stdout or stderr matches this regular expression.
    LogLine(String),
    /// Ready when a TCP connection to 127.0.0.1 on this port succeeds.
    Tcp(u16),
    /// Ready when this command (program and arguments) exits with 0.
    Command(Vec<String>),
    /// Ready when the service sends `READY=1` to `$NOTIFY_SOCKET` (the `sd_notify` protocol;
    /// `STATUS=…`, `WATCHDOG=1` and `RESTART_RESET=1` are understood too).
    Notify,
}

/// What a liveness check probes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Check {
    /// A TCP connection to 127.0.0.1 on this port succeeds.
    Tcp(u16),
    /// This command exits with 0.
    Command(Vec<String>),
    /// A plain HTTP/1.1 GET of this loopback URL answers 2xx or 3xx.
    Http(String),
    /// The service sends `WATCHDOG=1` to `$NOTIFY_SOCKET` at least once per interval.
    Notify,
}

/// A liveness check: run every `interval`, each with a `timeout`; after `failures`
/// consecutive failures the service is unhealthy and is restarted through its restart policy
/// (the exit records `unhealthy: …`).
///
/// Defaults: interval 10 s, timeout 1 s, 3 failures, no initial delay.
///
/// # Example
///
/// ```
/// use sheepdog::{Health, ServiceSpec};
/// use std::time::Duration;
///
/// let api = ServiceSpec::new("api", "./api")
///     .health(Health::http("http://127.0.0.1:8080/healthz").interval(Duration::from_secs(5)).failures(2));
/// assert!(api.get_health().is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    check: Check,
    #[serde(default = "default_interval", with = "crate::duration::serde_str")]
    interval: Duration,
    #[serde(default = "default_timeout", with = "crate::duration::serde_str")]
    timeout: Duration,
    #[serde(default = "default_failures")]
    failures: u32,
    #[serde(default, with = "crate::duration::serde_str")]
    initial_delay: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_failures() -> u32 {
    3
}

impl Health {
    fn with(check: Check) -> Health {
        Health {
            check,
            interval: default_interval(),
            timeout: default_timeout(),
            failures: default_failures(),
            initial_delay: Duration::ZERO,
        }
    }

    /// Checks that 127.0.0.1:`port` accepts a connection.
    pub fn tcp(port: u16) -> Health {
        Health::with(Check::Tcp(port))
    }

    /// Checks that a command exits with 0.
    pub fn command<I, S>(argv: I) -> Health
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Health::with(Check::Command(argv.into_iter().map(Into::into).collect()))
    }

    /// Checks that a loopback URL (`http://127.0.0.1:…`, `http://localhost:…`) answers 2xx/3xx.
    pub fn http(url: impl Into<String>) -> Health {
        Health::with(Check::Http(url.into()))
    }

    /// Checks that the service sends `WATCHDOG=1` at least once per interval.
    pub fn notify() -> Health {
        Health::with(Check::Notify)
    }

    /// Time between checks. By default, 10 s.
    pub fn interval(mut self, d: Duration) -> Health {
        self.interval = d;
        self
    }

    /// How long one check may take. By default, 1 s.
    pub fn timeout(mut self, d: Duration) -> Health {
        self.timeout = d;
        self
    }

    /// Consecutive failures that make the service unhealthy. By default, 3.
    pub fn failures(mut self, n: u32) -> Health {
        self.failures = n;
        self
    }

    /// Time after the service is ready before the first check. By default, none.
    pub fn initial_delay(mut self, d: Duration) -> Health {
        self.initial_delay = d;
        self
    }

    /// What is checked.
    pub fn check(&self) -> &Check {
        &self.check
    }

    /// The interval.
    pub fn get_interval(&self) -> Duration {
        self.interval
    }

    /// The timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The failure threshold.
    pub fn get_failures(&self) -> u32 {
        self.failures
    }

    /// The initial delay.
    pub fn get_initial_delay(&self) -> Duration {
        self.initial_delay
    }
}

/// What a dependent waits for in a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// The dependency runs (spawned, ready or not).
    Started,
    /// The dependency is ready (`Online`).
    Ready,
    /// The dependency ran to completion with exit code 0: a one-shot setup task.
    #[serde(rename = "exited0")]
    Exited0,
}

/// A dependency of a service: the service starts only once `name` meets `condition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// The service depended on.
    pub name: String,
    /// What it must reach.
    pub condition: Condition,
}

/// `(host, port, path)` of a plain `http://` URL on a loopback address.
pub(crate) fn parse_loopback_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    let loopback = matches!(host, "localhost" | "[::1]") || host.starts_with("127.");
    if !loopback || path.contains(['\r', '\n', ' ']) {
        return None;
    }
    if host.starts_with("127.") && host.parse::<std::net::Ipv4Addr>().is_err() {
        return None;
    }
    Some((host.to_string(), port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls_are_accepted() {
        assert_eq!(
            parse_loopback_url("http://127.0.0.1:8080/healthz"),
            Some(("127.0.0.1".into(), 8080, "/healthz".into()))
        );
        assert_eq!(
            parse_loopback_url("http://localhost"),
            Some(("localhost".into(), 80, "/".into()))
        );
        assert!(parse_loopback_url("http://[::1]:9000/x").is_some());
        for bad in [
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://example.com/",
            "http://127.0.0.1:x/",
            "ftp://127.0.0.1",
        ] {
            assert!(parse_loopback_url(bad).is_none(), "{bad}");
        }
    }
}
