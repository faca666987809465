//! The connection limits of `depot serve` on a real socket: `--header-timeout` disconnects a
//! client that sends its headers too slowly (slowloris) or idles on a keep-alive connection,
//! but never cuts an event stream; `--max-connections` keeps further connections waiting
//! until one closes.

mod server_support;

use server_support::Server;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MASTER: &str = "connections-master-key-0123456789";

fn connect(server: &Server) -> TcpStream {
    let addr = server.base.trim_start_matches("http://");
    let s = TcpStream::connect(addr).expect("the server accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends a request and reads its answer (status line to the end of the body).
fn request(s: &mut TcpStream, method: &str, path: &str, headers: &str, body: &str) -> String {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: depot\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    read_answer(s).expect("an answer")
}

/// Reads one answer with a `Content-Length` body; `Err` with the error kind when the read
/// fails or times out first.
fn read_answer(s: &mut TcpStream) -> Result<String, ErrorKind> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf[..end + 4 + len]).to_string());
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.kind()),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// True when the server closed the connection (end of file or reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
    }
}

fn wait_ready(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = connect(server);
        if request(&mut s, "GET", "/readyz", "", "").starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_dropped_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        MASTER,
        &["--header-timeout", "500ms"],
    );

    // Half a request line and one header, then nothing: cut after the timeout.
    let mut slow = connect(&server);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: depot\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut slow), "a slow client is disconnected");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "cut after about the timeout, not at once: {took:?}"
    );

    // A connection that never sends a byte is cut the same way.
    let mut silent = connect(&server);
    assert!(closed_by_server(&mut silent));

    // Keep-alive: answered, then idle past the timeout: cut.
    let mut idle = connect(&server);
    assert!(request(&mut idle, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut idle));

    // A client busy on its connection keeps it: requests 200 ms apart for 1.5 s, all on one
    // connection (the timeout counts from each request, not from the connection's start).
    let mut busy = connect(&server);
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        assert!(request(&mut busy, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));
        answered += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered >= 5, "{answered}");
}

#[test]
fn an_event_stream_outlives_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        MASTER,
        &["--header-timeout", "300ms"],
    );
    wait_ready(&server);
    let master = format!("Authorization: Bearer {MASTER}\r\nContent-Type: application/json\r\n");
    let mut admin = connect(&server);
    let answer = request(
        &mut admin,
        "POST",
        "/v1/tenants",
        &master,
        r#"{"id":"acme"}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let answer = request(
        &mut admin,
        "POST",
        "/v1/keys",
        &master,
        r#"{"tenant":"acme","role":"admin"}"#,
    );
    let key = answer
        .split("\"key\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a key in {answer}"))
        .to_string();
    let auth = format!("Authorization: Bearer {key}\r\nContent-Type: application/json\r\n");
    let answer = request(
        &mut admin,
        "PUT",
        "/v1/locations/wh-east",
        &auth,
        r#"{"kind":"warehouse","name":"East"}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");

    let mut stream = connect(&server);
    stream
        .write_all(
            format!(
                "GET /v1/events/stream?after=0 HTTP/1.1\r\nHost: depot\r\nAuthorization: Bearer {key}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    // Three times the header timeout with nothing to send, then a receipt.
    std::thread::sleep(Duration::from_millis(900));
    let mut writer = connect(&server);
    let answer = request(
        &mut writer,
        "POST",
        "/v1/stock/adjustments",
        &format!("{auth}Idempotency-Key: po-1\r\n"),
        r#"{"sku":"MUG-RED","location":"wh-east","kind":"receive","quantity":5,"reason":"PO 1"}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while find(&seen, b"MUG-RED").is_none() {
        assert!(Instant::now() < deadline, "no event in time");
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the stream was closed: {}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&seen)),
        }
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn connections_beyond_the_limit_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        MASTER,
        &["--max-connections", "2"],
    );
    let mut first = connect(&server);
    assert!(request(&mut first, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));
    let mut second = connect(&server);
    assert!(request(&mut second, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));

    // The third connects (the kernel's backlog) but is not served while two are open.
    let mut third = connect(&server);
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    third
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: depot\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let waited = read_answer(&mut third);
    assert!(
        matches!(waited, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "not served beyond the limit: {waited:?}"
    );

    // One closes: the third is served, and the server counts two connections open.
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = read_answer(&mut third).expect("served once a connection closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.lines().any(|l| l == "depot_http_connections 2"),
        "{answer}"
    );
    assert!(request(&mut second, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));
}

#[test]
fn bad_connection_flags_stop_the_start() {
    for (flag, value, says) in [
        ("--max-connections", "0", "--max-connections 0"),
        ("--header-timeout", "0s", "--header-timeout"),
        ("--header-timeout", "soon", "--header-timeout"),
        ("--header-timeout", "2h", "--header-timeout"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["serve", "--listen", "127.0.0.1:0", flag, value])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
