//! The one error type of the crate: a kind, the service it concerns, and a source.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The result type of every fallible operation in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for callers to match on.
///
/// New kinds may be added, so match with a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No service matches the target.
    NotFound,
    /// A service spec (name, program, arguments, environment, policy) breaks a rule.
    InvalidSpec,
    /// An argument that is not a spec is not acceptable: `"all"` where one service is meant,
    /// a malformed log cursor.
    InvalidInput,
    /// A service's process could not be started.
    Spawn,
    /// Another `Supervisor` (in this process or another) holds the state directory.
    StateDirLocked,
    /// The state directory or its database cannot be used: foreign, corrupt, too new,
    /// unreadable or unwritable, not private to this user (another user's, or writable by
    /// others), or deleted or replaced under the running supervisor.
    Store,
    /// A wait ran out of time.
    Timeout,
    /// A wait cannot succeed: the service settled in a status it leaves only when an operator
    /// acts (`Stopped`, `Exited` or `Errored`; see [`Status::is_settled`](crate::Status::is_settled)).
    Settled,
    /// The supervisor was shut down.
    ShutDown,
    /// Some other I/O failure, such as creating the state directory.
    Io,
    /// Another service needs this one: it names it in `after`, so deleting it would leave
    /// that service waiting forever. Delete or change the dependent first, or both at once.
    InUse,
    /// No host serves the state directory's control socket: none runs there, or it runs
    /// with its control socket turned off.
    NotRunning,
    /// The host refused the connection: it comes from another user, or too many clients
    /// are connected.
    Refused,
    /// A control-socket exchange broke the protocol: a line that is not a request or is too
    /// long, a request before `hello`, a protocol version the other side does not speak.
    Protocol,
    /// A new run did not become ready, and a rolling reload stopped there: the services it
    /// had not reached keep their runs (and their specs); the message names them.
    NotReady,
}

/// An error from a [`Supervisor`](crate::Supervisor) operation.
///
/// `Display` gives one lowercase phrase that names the service (when there is one) and the
/// cause; the underlying OS or SQLite error, if any, comes back from
/// [`source`](std::error::Error::source).
///
/// # Example
///
/// ```
/// use sheepdog::{ErrorKind, ServiceSpec, Supervisor};
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// let err = sup.start(ServiceSpec::new("bad name", "true")).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidSpec);
/// assert_eq!(err.service(), Some("bad name"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    service: Option<String>,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            service: None,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_service(mut self, service: impl Into<String>) -> Error {
        self.service = Some(service.into());
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Error {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// The OS error number behind this error, when its source is an OS error.
    pub(crate) fn os_error(&self) -> Option<i32> {
        self.source
            .as_deref()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error)
    }

    pub(crate) fn shut_down() -> Error {
        Error::new(ErrorKind::ShutDown, "the supervisor is shut down")
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The name of the service the error concerns, if it concerns one.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            Some(name) => write!(f, "service '{}': {}", name.escape_debug(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(service) = &self.service {
            d.field("service", service);
        }
        d.field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_service_and_cause_source_holds_os_error() {
        let err = Error::new(ErrorKind::Spawn, "program '/nope' not found")
            .with_service("web")
            .with_source(std::io::Error::from_raw_os_error(2));
        assert_eq!(err.to_string(), "service 'web': program '/nope' not found");
        assert_eq!(err.kind(), ErrorKind::Spawn);
        assert!(err.source().unwrap().to_string().contains("No such file"));
    }

    #[test]
    fn error_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
