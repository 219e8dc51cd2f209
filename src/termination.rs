//! [`TerminationSignals`]: an opt-in way for a foreground host to learn of Ctrl-C and SIGTERM.
//!
//! The supervisor itself installs no signal handler; a host that runs in the foreground (like
//! the `fleet` example) asks for this one explicitly.

use crate::error::{Error, ErrorKind, Result};
use crate::signal::Signal;
use crate::sys;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Handlers for termination signals (`SIGINT`, `SIGTERM`, `SIGHUP`) that record them for the
/// host to read, instead of ending the process.
///
/// Installing replaces the process's handlers for those signals: do it once, in a host that
/// owns its signals (a foreground runner), never in a library.
///
/// # Example
///
/// ```no_run
/// use sheepdog::{Supervisor, TerminationSignals};
/// use std::time::Duration;
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// let signals = TerminationSignals::install()?;
/// while signals.wait_timeout(Duration::from_secs(1)).is_none() {
///     // refresh a status display
/// }
/// sup.shutdown()?;
/// # Ok(()) }
/// ```
pub struct TerminationSignals {
    pipe: OwnedFd,
}

impl TerminationSignals {
    /// Installs the handlers for `SIGINT`, `SIGTERM` and `SIGHUP`.
    ///
    /// # Errors
    ///
    /// `Io` if a handler cannot be installed.
    pub fn install() -> Result<TerminationSignals> {
        let signals = [Signal::Int, Signal::Term, Signal::Hup].map(sys::signal_number);
        let pipe = sys::install_termination_handlers(&signals).map_err(|e| {
            Error::new(ErrorKind::Io, "cannot install signal handlers").with_source(e)
        })?;
        Ok(TerminationSignals { pipe })
    }

    /// Waits up to `timeout` for a signal; returns the first one received, if any.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Signal> {
        sys::wait_termination(&self.pipe, Some(timeout))
            .ok()?
            .into_iter()
            .find_map(sys::signal_from_number)
    }
}
