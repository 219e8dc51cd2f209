//! The control socket's contract: private, hello first, one answer per request in order,
//! a call that waits does not hold up other clients, and streams and calls end in words
//! when the host shuts down.

use crate::prelude::{self, Harness, TestResult};
use sheepdog::Supervisor;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

struct Conn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(socket: &std::path::Path) -> Conn {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

    fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    /// The next message; `Null` once the host closed the connection.
    fn next(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a message in time");
        if line.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&line).unwrap()
    }

    fn call(&mut self, line: &str) -> serde_json::Value {
        self.send(line);
        self.next()
    }
}

const HELLO: &str = r#"{"request":"hello","version":1}"#;

#[test]
fn the_socket_is_private_and_goes_with_the_host() -> TestResult {
    let h = Harness::new()?;
    let socket = h.sup().control_socket().unwrap().to_path_buf();
    assert_eq!(
        socket,
        h.state_dir().canonicalize().unwrap().join("control.sock")
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    h.sup().shutdown().unwrap();
    assert!(!socket.exists(), "removed at shutdown");
    assert!(h.sup().control_socket().is_none());
    h.finish()?;

    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .control_socket(false)
        .open()
        .unwrap();
    assert!(sup.control_socket().is_none());
    assert!(!dir.path().join("control.sock").exists());
    let err = sheepdog::control::Client::connect(dir.path())
        .err()
        .unwrap();
    assert_eq!(err.kind(), sheepdog::ErrorKind::NotRunning);
    sup.shutdown()?;
    Ok(())
}

#[test]
fn hello_comes_first_and_errors_are_typed() -> TestResult {
    let h = Harness::new()?;
    let socket = h.sup().control_socket().unwrap().to_path_buf();
    let mut c = Conn::open(&socket);
    let refused = c.call(r#"{"request":"list"}"#);
    assert_eq!(refused["error"]["kind"], "protocol");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
    assert!(c.next().is_null(), "closed after a request before hello");

    let mut c = Conn::open(&socket);
    let wrong = c.call(r#"{"request":"hello","version":99}"#);
    assert_eq!(wrong["error"]["kind"], "protocol");
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version 99")
    );

    let mut c = Conn::open(&socket);
    let hello = c.call(HELLO);
    assert_eq!(hello["ok"]["hello"]["protocol"], 1);
    assert_eq!(hello["ok"]["hello"]["pid"], std::process::id());
    let missing = c.call(r#"{"request":"describe","target":"ghost"}"#);
    assert_eq!(missing["error"]["kind"], "not_found");
    assert_eq!(missing["error"]["service"], "ghost");
    assert_eq!(
        missing["error"]["message"],
        "service 'ghost': no such service"
    );
    let bad = c.call(r#"{"request":"start","spec":{"name":"bad name","program":"true"}}"#);
    assert_eq!(bad["error"]["kind"], "invalid_spec");
    let garbage = c.call("not json");
    assert_eq!(garbage["error"]["kind"], "protocol");
    // Still served after garbage, answers in order.
    c.send(r#"{"request":"list"}"#);
    c.send(r#"{"request":"stats"}"#);
    assert!(c.next()["ok"]["list"].is_array());
    assert!(c.next()["ok"]["stats"].is_array());
    h.finish()
}

#[test]
fn a_call_that_waits_holds_up_no_other_client() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    // Ignores SIGTERM: its stop waits for the stop timeout, then SIGKILL.
    sup.start(
        h.sh(
            "stubborn",
            "trap '' TERM; echo trapped; while :; do sleep 0.1; done",
        )
        .stop_timeout(Duration::from_secs(3)),
    )
    .unwrap();
    // Only once the trap is set does the stop have to wait.
    let log = sup.log_path("stubborn", sheepdog::Stream::Stdout).unwrap();
    prelude::wait_lines(&log, 1, prelude::SECS_10)?;
    let socket = sup.control_socket().unwrap().to_path_buf();
    let mut slow = Conn::open(&socket);
    slow.call(HELLO);
    slow.send(r#"{"request":"stop","target":"stubborn"}"#);
    prelude::wait_until(prelude::SECS_5, || {
        (prelude::status(sup, "stubborn") == sheepdog::Status::Stopping).then_some(())
    })
    .expect("the stop began");
    let mut quick = Conn::open(&socket);
    quick.call(HELLO);
    let list = quick.call(r#"{"request":"list"}"#);
    assert_eq!(list["ok"]["list"][0]["status"], "stopping");
    // The slow client's answer has not come yet: the quick one did not wait for it.
    slow.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = std::io::Read::read(&mut slow.stream, &mut byte);
    assert!(
        pending.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the stop is still in progress"
    );
    slow.stream.set_nonblocking(false).unwrap();
    let stopped = slow.next();
    assert_eq!(stopped["ok"]["stop"], 1);
    assert_eq!(prelude::status(sup, "stubborn"), sheepdog::Status::Stopped);
    h.finish()
}

#[test]
fn shutdown_ends_streams_and_calls_in_words() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    sup.start(h.sh("chatty", "while :; do echo tick; sleep 0.05; done"))
        .unwrap();
    sup.start(
        h.sh(
            "stubborn",
            "trap '' TERM; echo trapped; while :; do sleep 0.1; done",
        )
        .stop_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let socket = sup.control_socket().unwrap().to_path_buf();
    let mut follower = Conn::open(&socket);
    follower.call(HELLO);
    let ok = follower.call(r#"{"request":"follow","target":"chatty","streams":"stdout"}"#);
    assert_eq!(ok["ok"]["follow"]["service"], "chatty");
    let line = follower.next();
    assert_eq!(line["log"]["text"], "tick");
    assert_eq!(line["log"]["stream"], "stdout");
    let mut subscriber = Conn::open(&socket);
    subscriber.call(HELLO);
    assert!(subscriber.call(r#"{"request":"subscribe"}"#)["ok"]["subscribe"].is_object());
    let log = sup.log_path("stubborn", sheepdog::Stream::Stdout).unwrap();
    prelude::wait_lines(&log, 1, prelude::SECS_10)?;
    let mut waiting = Conn::open(&socket);
    waiting.call(HELLO);
    waiting.send(r#"{"request":"stop","target":"stubborn"}"#);
    prelude::wait_until(prelude::SECS_5, || {
        (prelude::status(sup, "stubborn") == sheepdog::Status::Stopping).then_some(())
    })
    .expect("the stop began");

    h.sup().shutdown().unwrap();
    let end = |c: &mut Conn| loop {
        let m = c.next();
        if !m["log"].is_object() && !m["event"].is_object() {
            return m;
        }
    };
    assert_eq!(
        end(&mut follower)["end"]["reason"],
        "the host is shutting down"
    );
    assert_eq!(
        end(&mut subscriber)["end"]["reason"],
        "the host is shutting down"
    );
    assert_eq!(waiting.next()["error"]["kind"], "shut_down");
    assert!(follower.next().is_null() && subscriber.next().is_null());
    h.finish()
}
