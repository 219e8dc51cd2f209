//! [`Client`]: a connection to a running host's control socket.

use super::protocol::{self, Hello, MAX_LINE, Reply, Request, Response, SOCKET_NAME};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long [`Client::connect`] waits for the host's `hello`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the control socket of the host that serves a state directory.
///
/// # Example
///
/// ```
/// use sheepdog::control::{protocol::{Reply, Request}, Client};
/// use sheepdog::{ServiceSpec, Supervisor};
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// sup.start(ServiceSpec::new("nap", "sleep").arg("60"))?;
/// let mut client = Client::connect(sup.state_dir())?;
/// assert_eq!(client.host().pid, std::process::id());
/// let Reply::Stop(n) = client.call(&Request::Stop { target: "nap".into() })? else { panic!() };
/// assert_eq!(n, 1);
/// let err = client.call(&Request::Describe { target: "nope".into() }).unwrap_err();
/// assert_eq!(err.kind(), sheepdog::ErrorKind::NotFound);
/// # sup.shutdown() }
/// ```
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    hello: Hello,
}

fn io_error(what: String, e: io::Error) -> Error {
    Error::new(ErrorKind::Io, what).with_source(e)
}

impl Client {
    /// Connects to the host serving `state_dir` and says `hello`.
    ///
    /// # Errors
    ///
    /// `NotRunning` if no host serves it (no socket, or one nobody listens on); `Refused` if
    /// the host or the state directory's permissions refuse this user, or the host serves
    /// too many clients; `Protocol` if the host speaks another protocol version; `Io` if the
    /// directory cannot be opened, or the host does not answer within [`CONNECT_TIMEOUT`].
    pub fn connect(state_dir: impl AsRef<Path>) -> Result<Client> {
        let state_dir = state_dir.as_ref();
        let shown = state_dir.display();
        let dir = sys::open_dir_path(state_dir).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => Error::new(
                ErrorKind::Refused,
                format!(
                    "cannot enter state directory '{shown}': permission denied (another user's?)"
                ),
            )
            .with_source(e),
            io::ErrorKind::NotFound => Error::new(
                ErrorKind::NotRunning,
                format!("no state directory at '{shown}'"),
            ),
            _ => io_error(format!("cannot open state directory '{shown}'"), e),
        })?;
        let stream = sys::connect_at(&dir, SOCKET_NAME).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::new(
                ErrorKind::NotRunning,
                format!("no host serves '{shown}' (it is not running, or runs without its control socket)"),
            ),
            io::ErrorKind::PermissionDenied => Error::new(
                ErrorKind::Refused,
                format!("cannot connect to the host of '{shown}': permission denied"),
            )
            .with_source(e),
            _ => io_error(format!("cannot connect to the host of '{shown}'"), e),
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| io_error("cannot use the control socket".into(), e))?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            hello: Hello {
                protocol: 0,
                version: String::new(),
                pid: 0,
                state_dir: String::new(),
            },
        };
        client.set_timeout(Some(CONNECT_TIMEOUT))?;
        match client.call(&Request::Hello {
            version: protocol::VERSION,
        })? {
            Reply::Hello(hello) => client.hello = hello,
            other => return Err(unexpected(&other)),
        }
        client.set_timeout(None)?;
        Ok(client)
    }

    /// What the host said in `hello`: its pid, version and state directory.
    pub fn host(&self) -> &Hello {
        &self.hello
    }

    /// How long a read from the host may block (`None`: as long as it takes). By default,
    /// no limit: a call returns within its own documented bound.
    ///
    /// # Errors
    ///
    /// `Io` if the socket refuses the option.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.writer
            .set_read_timeout(timeout.filter(|d| !d.is_zero()))
            .map_err(|e| io_error("cannot set a time-out on the control socket".into(), e))
    }

    /// Sends one request and reads its answer.
    ///
    /// # Errors
    ///
    /// The host's error for the request, typed as the supervisor's call would have returned
    /// it; `Io` if the connection fails or times out; `Protocol` if the host sends something
    /// that is not an answer.
    pub fn call(&mut self, request: &Request) -> Result<Reply> {
        if let Err(e) = self.send(request) {
            // A host that refused the connection may have closed it before the request
            // went out: its reason is waiting to be read.
            return match self.next_message() {
                Ok(Some(Response::Error(refusal))) => Err(refusal.to_error()),
                _ => Err(e),
            };
        }
        match self.next_message()? {
            Some(Response::Ok(reply)) => Ok(reply),
            Some(Response::Error(e)) => Err(e.to_error()),
            Some(other) => Err(Error::new(
                ErrorKind::Protocol,
                format!("the host sent {other:?} where an answer was due"),
            )),
            None => Err(Error::new(
                ErrorKind::Io,
                "the host closed the connection before it answered",
            )),
        }
    }

    /// Sends one request without reading its answer (read it with
    /// [`next_message`](Client::next_message)).
    ///
    /// # Errors
    ///
    /// `Io` if the connection fails.
    pub fn send(&mut self, request: &Request) -> Result<()> {
        let mut line = serde_json::to_vec(request).expect("requests always serialize");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| io_error("cannot send to the host".into(), e))
    }

    /// The next message from the host: after `follow` or `subscribe`, a `log` line or an
    /// `event`; `None` once the host closed the connection (an `end` comes first when it shuts
    /// down).
    ///
    /// # Errors
    ///
    /// `Io` if the connection fails or times out; `Protocol` if the host sends a line that is
    /// too long or not a message.
    pub fn next_message(&mut self) -> Result<Option<Response>> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| io_error("cannot read from the host".into(), e))?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            if line.len() >= MAX_LINE {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("the host sent a line longer than {MAX_LINE} bytes"),
                ));
            }
            // The host closed the connection in the middle of a line.
            return Ok(None);
        }
        serde_json::from_slice(&line).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the host sent something that is not a message: {e}"),
            )
        })
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("the host answered hello with {reply:?}"),
    )
}
