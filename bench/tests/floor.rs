//! `http_load --floor` end to end: the load client drives the floor server over a real
//! socket, with its log synced on the real file system, and the read-back check passes.

use std::process::Command;

#[test]
fn the_floor_server_serves_the_load_client_and_passes_its_check() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_http_load"))
        .args([
            "--floor",
            "--conns",
            "2",
            "--batch-conns",
            "1",
            "--batch-size",
            "10",
            "--secs",
            "1.5",
            "--warmup",
            "0.5",
            "--runs",
            "1",
            "--wait-idle",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("the floor server (no engine) over HTTP/1.1"));
    for shape in ["2x1 run 1:", "1 conns x /v1/batch of 10 run 1:"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(shape))
            .unwrap_or_else(|| panic!("no {shape:?} in\n{stdout}"));
        assert!(line.contains("check pass"), "{line}");
        assert!(line.contains("failed 0;"), "{line}");
        assert!(!line.contains(" ok 0 "), "no reservation held: {line}");
    }
}
