//! [`Signal`]: the signals a service can be stopped with, by name.

use serde::{Deserialize, Serialize};

/// A signal that a service can be stopped with.
///
/// In files and JSON a signal is written by its name without `SIG`: `"TERM"`, `"INT"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: the default stop signal.
    Term,
    /// `SIGINT`.
    Int,
    /// `SIGQUIT`.
    Quit,
    /// `SIGHUP`.
    Hup,
    /// `SIGKILL`: no grace.
    Kill,
    /// `SIGUSR1`.
    Usr1,
    /// `SIGUSR2`.
    Usr2,
}
