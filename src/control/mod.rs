//! Operating a running host from outside its process: the control socket every
//! [`Supervisor`](crate::Supervisor) serves in its state directory, the hosts registered on
//! the machine ([`hosts`]), a [`Client`] for the socket, and a [`StateReader`] for a state
//! directory whose host does not run. The `sheepdog` command (the `cli` feature) is built on
//! these; [`protocol`] documents the exchange, for scripts that speak it directly.
//!
//! # Example
//!
//! ```
//! use sheepdog::control::{protocol::{Reply, Request}, Client};
//! use sheepdog::{ServiceSpec, Supervisor};
//! # fn main() -> sheepdog::Result<()> {
//! let sup = Supervisor::temporary()?;
//! sup.start(ServiceSpec::new("web", "sleep").arg("60"))?;
//! assert!(sup.control_socket().is_some());
//! let mut client = Client::connect(sup.state_dir())?;
//! let Reply::List(services) = client.call(&Request::List)? else { panic!("a list") };
//! assert_eq!(services[0].name, "web");
//! # sup.shutdown() }
//! ```

mod client;
mod offline;
pub mod protocol;
mod registry;
mod server;

pub use client::{CONNECT_TIMEOUT, Client};
pub use offline::StateReader;
pub use registry::{Host, hosts};
pub(crate) use server::{Context, Control};
