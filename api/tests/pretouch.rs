//! `depot serve --pretouch-memory-mib N` on the real binary: it restarts itself once with the
//! allocator told to keep freed memory, writes N MiB, and serves; an operator's own setting of
//! that variable is kept (with a warning when it lets the memory go back).

mod server_support;

use server_support::Server;
use std::io::{Read, Write};
use std::net::TcpStream;

const MASTER: &str = "pretouch-master-key-0123456789abcdef";

/// The value of `var` in the environment of process `pid`.
fn env_of(pid: u32, var: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{var}=")).map(str::to_string))
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `GET /healthz` answers 200.
fn healthy(base: &str) -> bool {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn the_server_restarts_with_freed_memory_kept_and_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, MASTER, &["--pretouch-memory-mib", "96"]);
    let pid = server.pid();
    // The same process (exec keeps the pid), now with the allocator's option set.
    assert_eq!(env_of(pid, "MIMALLOC_PURGE_DELAY").as_deref(), Some("-1"));
    assert!(rss_kib(pid) >= 96 * 1024, "resident: {} KiB", rss_kib(pid));
    assert!(healthy(&server.base));
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains("restarting with MIMALLOC_PURGE_DELAY=-1"),
        "{log}"
    );
    assert!(log.contains("pretouched memory"), "{log}");
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn an_operators_allocator_setting_is_kept_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_env(
        &data,
        MASTER,
        &["--pretouch-memory-mib", "16"],
        &[("MIMALLOC_PURGE_DELAY", "10")],
    );
    assert_eq!(
        env_of(server.pid(), "MIMALLOC_PURGE_DELAY").as_deref(),
        Some("10")
    );
    assert!(healthy(&server.base));
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(!log.contains("restarting"), "{log}");
    assert!(log.contains("may give the pretouched memory back"), "{log}");
    assert!(log.contains("pretouched memory"), "{log}");
}

#[test]
fn without_the_flag_nothing_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, MASTER);
    assert_eq!(env_of(server.pid(), "MIMALLOC_PURGE_DELAY"), None);
    assert!(healthy(&server.base));
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(!log.contains("pretouch"), "{log}");
}

#[test]
fn a_pretouch_beyond_the_limit_or_not_a_number_stops_the_start() {
    for (value, code) in [("1048577", 2), ("lots", 2), ("1e9", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_depot"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--pretouch-memory-mib",
                value,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(code), "{value}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--pretouch-memory-mib"), "{value}: {err}");
    }
}
