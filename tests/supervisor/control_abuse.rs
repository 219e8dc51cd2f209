//! The control socket under abuse, against a host that keeps restarting a crasher: garbage,
//! a 10 MB line, half-open connections, a subscriber that never reads, and 200 well-behaved
//! clients at once. The host never hangs or panics, keeps restarting the crasher, serves
//! every well-behaved client, and closes the silent connections when their time is up.

use crate::prelude::{self, Harness, TestResult};
use sheepdog::control::protocol::HELLO_TIMEOUT;
use sheepdog::{Backoff, RestartPolicy};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sends `lines` and reads one answer per line.
fn exchange(socket: &Path, lines: &[&str]) -> std::io::Result<Vec<serde_json::Value>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut answers = Vec::new();
    for line in lines {
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\n")?;
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        answers.push(serde_json::from_str(&answer).map_err(std::io::Error::other)?);
    }
    Ok(answers)
}

/// Whether the host closed `stream` (a read returns end of file, or the connection reset).
fn closed_by_host(stream: &mut UnixStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn abuse_never_stops_supervision_or_service() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    sup.start(
        h.sh("crasher", "exit 1")
            .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(20)))),
    )
    .unwrap();
    let socket = sup
        .control_socket()
        .expect("a control socket")
        .to_path_buf();
    let opened = Instant::now();
    let restarts_before = sup.describe("crasher").unwrap().restarts();

    // Half-open: connected and silent, or half a line and silent.
    let mut silent: Vec<UnixStream> = (0..10)
        .map(|i| {
            let mut s = UnixStream::connect(&socket).unwrap();
            if i % 2 == 1 {
                s.write_all(br#"{"request":"hel"#).unwrap();
            }
            s
        })
        .collect();
    // A subscriber that never reads what it is sent.
    let mut stuck = UnixStream::connect(&socket).unwrap();
    stuck
        .write_all(b"{\"request\":\"hello\",\"version\":1}\n{\"request\":\"subscribe\"}\n")
        .unwrap();

    let attackers = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            // Garbage lines, bytes that are not UTF-8, JSON that is not a request.
            let mut garbage_answers = 0;
            for i in 0..100u32 {
                let Ok(mut s) = UnixStream::connect(&socket) else {
                    continue;
                };
                let junk: Vec<u8> = match i % 4 {
                    0 => b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                    1 => vec![0xff, 0xfe, 0x00, b'\n'],
                    2 => b"{\"request\":\"reboot\"}\n".to_vec(),
                    _ => (0..512).map(|j| (j * 7 + i) as u8).chain([b'\n']).collect(),
                };
                let _ = s.write_all(&junk);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut answer = String::new();
                if BufReader::new(&s).read_line(&mut answer).is_ok()
                    && answer.contains("\"protocol\"")
                {
                    garbage_answers += 1;
                }
            }
            // One 10 MB line, no newline: refused past 4 MiB, the connection closed.
            let mut big = UnixStream::connect(&socket).unwrap();
            big.set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            big.write_all(b"{\"request\":\"hello\",\"version\":1}\n")
                .unwrap();
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0;
            for _ in 0..10 {
                match big.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break, // the host closed it
                }
            }
            big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut text = String::new();
            let _ = BufReader::new(&big).read_to_string(&mut text);
            (garbage_answers, sent, text)
        })
    };

    // 200 well-behaved clients at once, each with a few requests.
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let name = if i % 2 == 0 { "crasher" } else { "1" };
                exchange(
                    &socket,
                    &[
                        r#"{"request":"hello","version":1}"#,
                        r#"{"request":"list"}"#,
                        &format!(r#"{{"request":"describe","target":"{name}"}}"#),
                        r#"{"request":"stats"}"#,
                    ],
                )
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let answers = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("client {i} was not served: {e}"));
        assert!(
            answers[0]["ok"]["hello"]["protocol"] == 1,
            "client {i}: {answers:?}"
        );
        assert_eq!(answers[1]["ok"]["list"][0]["name"], "crasher", "client {i}");
        assert_eq!(
            answers[2]["ok"]["describe"]["name"], "crasher",
            "client {i}"
        );
        assert_eq!(
            answers[3]["ok"]["stats"][0]["name"], "crasher",
            "client {i}"
        );
    }
    let (garbage_answers, sent, big_answer) = attackers.join().expect("attacker thread");
    assert_eq!(
        garbage_answers, 100,
        "every piece of garbage got a protocol error"
    );
    assert!(
        sent < 10 << 20 || big_answer.contains("longer than"),
        "the 10 MB line was refused"
    );
    assert!(
        big_answer.is_empty() || big_answer.contains("longer than"),
        "{big_answer}"
    );

    // Supervision went on meanwhile.
    let restarted = prelude::wait_until(prelude::SECS_10, || {
        (sup.describe("crasher").unwrap().restarts() >= restarts_before + 20).then_some(())
    });
    assert!(restarted.is_some(), "the crasher kept being restarted");

    // Silent connections are closed once they have had their time to say hello.
    let closed = prelude::wait_until(HELLO_TIMEOUT + Duration::from_secs(10), || {
        silent.iter_mut().all(closed_by_host).then_some(())
    });
    assert!(closed.is_some(), "half-open connections were closed");
    assert!(opened.elapsed() >= HELLO_TIMEOUT, "not before their time");

    // And a new client is served as the first was.
    let answers = exchange(
        &socket,
        &[
            r#"{"request":"hello","version":1}"#,
            r#"{"request":"list"}"#,
        ],
    )
    .unwrap();
    assert_eq!(answers[1]["ok"]["list"][0]["name"], "crasher");
    drop(stuck);
    h.finish()
}
