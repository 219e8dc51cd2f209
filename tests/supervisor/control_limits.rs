//! Beyond `MAX_CLIENTS` connections a new one is refused in words, and served again once
//! others have gone.

use crate::prelude::{Harness, TestResult};
use sheepdog::control::protocol::MAX_CLIENTS;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn hello(socket: &std::path::Path) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"{\"request\":\"hello\",\"version\":1}\n");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn clients_beyond_the_cap_are_refused_clearly() -> TestResult {
    let h = Harness::new()?;
    let socket = h.sup().control_socket().unwrap().to_path_buf();
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"{\"request\":\"hello\",\"version\":1}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("\"hello\""), "{line}");
        held.push(s);
    }
    let refused = hello(&socket);
    assert_eq!(refused["error"]["kind"], "refused", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "too many clients: this host serves {MAX_CLIENTS} at once"
            )),
        "{refused}"
    );
    held.truncate(MAX_CLIENTS - 1);
    let served = crate::prelude::wait_until(Duration::from_secs(5), || {
        let answer = hello(&socket);
        answer["ok"]["hello"].is_object().then_some(())
    });
    assert!(served.is_some(), "a place freed is taken again");
    h.finish()
}
