//! [`Orphans`]: which exited children, besides its services', the supervisor reaps.

/// Which of the host's exited children, besides the processes it spawned itself, the
/// supervisor reaps: what an init must do.
///
/// A process whose parent exits is re-parented to the nearest child subreaper, else to PID 1
/// of its pid namespace. In a container the host (or `sheepdog run`) is that PID 1, and every
/// orphan of the namespace comes to it: a service's daemonized grandchildren, what a
/// `kubectl exec` or an exec probe left behind. An init that does not reap them fills the
/// process table with zombies.
///
/// # How it leaves the host's own children alone
///
/// When SIGCHLD arrives, the supervision thread reaps every exited child of the host that
/// the crate holds no pidfd for:
/// - the processes the crate spawned (each service's main process, probes, the guardian, an
///   escapee it tracks) are held from before their `clone` until their own reap through their
///   pidfd, so their exit statuses still reach history, whatever the timing;
/// - with [`Orphans::Reap`], an exited child in the host's own process group is never reaped:
///   `std::process::Command` leaves the children a host spawns there, so their
///   `Child::wait` still gets their statuses. A host that puts a child of its own in another
///   process group (`CommandExt::process_group`, `setsid`) must reap it itself before SIGCHLD
///   reaches the supervisor, or use [`Orphans::Keep`]. Where the host's process group lies
///   outside its pid namespace (a host started by `unshare --pid --fork` from a shell), every
///   child whose group lies outside too is spared, since the kernel shows them all as group
///   0: an orphan that kept such a group is left a zombie (use [`Orphans::ReapAll`]);
/// - with [`Orphans::ReapAll`], every exited child not held is reaped: for a host that waits
///   for no child of its own, as `sheepdog run` does.
///
/// SIGCHLD is caught by a handler that wakes the supervision thread (a host's earlier
/// handler is still called after it); a host that ignores SIGCHLD has the kernel reap every
/// child, and nothing is left to do. The supervisor only ever reaps processes that already
/// exited, so nothing is signalled.
///
/// # Example
///
/// ```
/// use sheepdog::{Orphans, Supervisor};
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::builder().orphans(Orphans::Reap).open()?;
/// assert_eq!(sup.orphans(), Orphans::Reap);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Orphans {
    /// Reap none: the host is not an init. The default unless the host is PID 1.
    Keep,
    /// Reap every exited child the crate did not spawn, except those in the host's own
    /// process group (the host's `std::process::Child`ren). The host becomes a child
    /// subreaper if it is not PID 1. The default when the host is PID 1.
    Reap,
    /// Reap every exited child the crate did not spawn, the host's own included. The host
    /// becomes a child subreaper if it is not PID 1.
    ReapAll,
}
