//! Metrics: the text exposition format is well formed and the figures are what was observed.

use depot_api::metrics::{Metrics, CONTENT_TYPE, ROUTES_MAX};
use depot_wal::GroupCommitStats;
use std::collections::BTreeMap;

/// Checks every line of a Prometheus 0.0.4 text exposition and returns the samples by their
/// full name with labels (`name{a="b"}`). Panics, naming the line, on anything malformed.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (word, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad metric name in {line:?}");
            if word == "TYPE" {
                let kind = parts.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line:?}"
                );
                assert!(
                    typed.insert(name.into(), kind.into()).is_none(),
                    "twice: {line:?}"
                );
            } else {
                assert_eq!(word, "HELP", "{line:?}");
            }
            continue;
        }
        assert!(!line.is_empty(), "no blank lines");
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad sample name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                let inner = inner.unwrap_or_else(|| panic!("labels in {line:?}"));
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    assert!(valid_name(k), "bad label name in {line:?}");
                    let v = v
                        .strip_suffix('"')
                        .unwrap_or(v)
                        .replace("\\\\", "")
                        .replace("\\\"", "");
                    assert!(!v.contains('"') && !v.contains('\n'), "unescaped: {line:?}");
                }
            }
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| typed.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            typed.contains_key(base),
            "sample before its # TYPE: {line:?}"
        );
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.insert(series.to_string(), v);
    }
    samples
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[test]
fn the_text_format_is_well_formed_and_holds_what_was_observed() {
    let m = Metrics::new();
    m.observe_request("/v1/reservations/{id}", "GET", 200, 0.003);
    m.observe_request("/v1/reservations/{id}", "get", 200, 0.02);
    m.observe_request("/v1/reservations", "POST", 409, 0.0004);
    m.set_queue_depths(&[3, 0]);
    m.set_holds(10, 2, 7);
    m.set_ats_pushes_pending(5);
    m.set_snapshot(0.25, 1234);
    m.observe_sync(std::time::Duration::from_micros(800), 12);
    m.observe_sync(std::time::Duration::from_millis(3), 1);
    let text = m.render();
    assert!(
        text.contains("# TYPE depot_http_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE depot_http_request_duration_seconds histogram"));
    let s = parse(&text);
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("{k} missing in\n{text}"));
    assert_eq!(
        get(
            r#"depot_http_requests_total{method="GET",route="/v1/reservations/{id}",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        get(r#"depot_http_requests_total{method="POST",route="/v1/reservations",status="409"}"#),
        1.0
    );
    assert_eq!(
        get(
            r#"depot_http_request_duration_seconds_count{method="GET",route="/v1/reservations/{id}"}"#
        ),
        2.0
    );
    assert_eq!(
        get(
            r#"depot_http_request_duration_seconds_bucket{method="GET",route="/v1/reservations/{id}",le="0.005"}"#
        ),
        1.0
    );
    assert_eq!(get(r#"depot_engine_queue_depth{queue="0"}"#), 3.0);
    assert_eq!(get(r#"depot_holds{state="expired"}"#), 2.0);
    assert_eq!(get("depot_ats_pushes_pending"), 5.0);
    assert_eq!(get("depot_snapshot_last_pause_seconds"), 0.25);
    assert_eq!(get("depot_snapshot_last_seq"), 1234.0);
    assert_eq!(get("depot_wal_sync_duration_seconds_count"), 2.0);
    assert_eq!(
        get(r#"depot_wal_sync_duration_seconds_bucket{le="0.001"}"#),
        1.0
    );
    assert_eq!(get(r#"depot_wal_batch_entries_bucket{le="16"}"#), 2.0);
    assert_eq!(get(r#"depot_wal_batch_entries_bucket{le="8"}"#), 1.0);
    assert_eq!(get("depot_wal_batch_entries_sum"), 13.0);
    assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
}

#[test]
fn queue_depths_replace_the_previous_set() {
    let m = Metrics::new();
    m.set_queue_depths(&[1, 2, 3]);
    m.set_queue_depths(&[9]);
    let s = parse(&m.render());
    assert_eq!(s.get(r#"depot_engine_queue_depth{queue="0"}"#), Some(&9.0));
    assert_eq!(s.get(r#"depot_engine_queue_depth{queue="2"}"#), None);
}

#[test]
fn group_commit_counters_advance_by_differences() {
    let m = Metrics::new();
    // Every entry of these journals takes 100 bytes.
    let stats = |syncs, entries: u64, durable_seq| GroupCommitStats {
        syncs,
        entries,
        durable_seq,
        bytes: entries * 100,
    };
    m.observe_group_commit(&stats(10, 50, 50));
    m.observe_group_commit(&stats(15, 80, 80));
    m.observe_group_commit(&stats(15, 80, 80));
    let s = parse(&m.render());
    assert_eq!(s["depot_wal_syncs_total"], 15.0);
    assert_eq!(s["depot_wal_synced_entries_total"], 80.0);
    assert_eq!(s["depot_wal_synced_bytes_total"], 8_000.0);
    assert_eq!(s["depot_wal_durable_seq"], 80.0);
    // 30 entries over the last 5 syncs (the idle observation after it changes nothing).
    assert_eq!(s["depot_wal_entries_per_sync"], 6.0);
    // A new journal (figures going back) counts from zero instead of going negative.
    m.observe_group_commit(&stats(2, 4, 84));
    let s = parse(&m.render());
    assert_eq!(s["depot_wal_syncs_total"], 17.0);
    assert_eq!(s["depot_wal_synced_entries_total"], 84.0);
    assert_eq!(s["depot_wal_synced_bytes_total"], 8_400.0);
}

#[test]
fn label_values_stay_bounded_and_escaped() {
    let m = Metrics::new();
    m.observe_request("/v1/\"quoted\"\nroute", "GET", 200, f64::NAN);
    for i in 0..(ROUTES_MAX + 50) {
        m.observe_request(&format!("/v1/raw/{i}"), "BREW", 404, 0.001);
    }
    let text = m.render();
    let s = parse(&text);
    assert!(
        text.contains(r#"route="/v1/\"quoted\"\nroute""#),
        "escaped in the text format: {text}"
    );
    let routes: std::collections::BTreeSet<&str> = s
        .keys()
        .filter(|k| k.starts_with("depot_http_requests_total{"))
        .filter_map(|k| k.split("route=\"").nth(1)?.split("\",status").next())
        .collect();
    assert_eq!(routes.len(), ROUTES_MAX + 1, "the kept routes and `other`");
    assert!(routes.contains("other"));
    // The first ROUTES_MAX routes (the quoted one included) are kept; the last 51 are `other`.
    assert_eq!(
        s[r#"depot_http_requests_total{method="OTHER",route="other",status="404"}"#],
        51.0
    );
    // A NaN duration counts the request but observes no latency.
    assert_eq!(
        s.get(r#"depot_http_request_duration_seconds_count{method="GET",route="/v1/\"quoted\"\nroute"}"#),
        None
    );
}
