//! `throughput --batches N`: a fixed amount of work, every batch counted, for comparable
//! instruction counts. Two runs do exactly the same operations and pass the store's check.

use std::process::Command;

/// The counted reservations of one fixed-work W1 run: (granted, refused for stock).
fn fixed_run() -> (u64, u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_throughput"))
        .args([
            "--workload",
            "w1",
            "--runs",
            "1",
            "--batches",
            "3",
            "--batch",
            "256",
            "--clients",
            "4",
            "--wait-idle",
            "0",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("W1 run 1:"))
        .unwrap_or_else(|| panic!("a run line: {text}"));
    assert!(!line.contains("FAIL"), "{line}");
    assert_eq!(
        line.matches("[pass]").count(),
        4,
        "every check passes: {line}"
    );
    let number_after = |what: &str| -> u64 {
        let at = line.find(what).unwrap_or_else(|| panic!("{what}: {line}")) + what.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {line}"))
    };
    (number_after("counted ok "), number_after("insufficient "))
}

#[test]
fn a_fixed_run_counts_every_batch_and_does_the_same_work_twice() {
    // 4 clients x 3 batches x 256 reservations, all counted (no warm-up, no time limit), far
    // below the stock of the hottest SKU: every one is granted.
    let first = fixed_run();
    assert_eq!(first, (4 * 3 * 256, 0));
    assert_eq!(fixed_run(), first);
}
