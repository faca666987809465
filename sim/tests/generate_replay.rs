//! A short scenario generated into a real log, replayed in-process to the same digest, the
//! same demand under other rules (what-if), and the reports.

use depot_sim::generate::{generate, read_record, GenerateOptions};
use depot_sim::replay::{load_log, load_rules, replay_in_process, Speed};
use depot_sim::report::Report;
use depot_sim::scenario::Scenario;
use std::path::{Path, PathBuf};

fn scenario() -> (Scenario, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/marketplace-sync-lag.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    (Scenario::load(&path).unwrap(), text)
}

fn run(out: PathBuf, minutes: u64) -> depot_sim::generate::Generated {
    let (sc, text) = scenario();
    generate(
        &sc,
        &text,
        &GenerateOptions {
            out,
            minutes: Some(minutes),
            seed: None,
            progress: false,
        },
    )
    .unwrap()
}

#[test]
fn a_generated_log_replays_to_the_same_state_and_a_what_if_changes_the_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let g = run(tmp.path().join("gen"), 20);
    assert!(g.entries > 300, "{} entries", g.entries);
    assert_eq!(g.report.oversells, 0, "{:?}", g.report.violations);
    let orders: u64 = g.report.channels.iter().map(|c| c.orders).sum();
    let held: u64 = g.report.channels.iter().map(|c| c.orders_held).sum();
    assert!(orders > 100 && held > 0 && held <= orders);
    assert_eq!(g.report.channels.len(), 3);
    let record = read_record(&g.log_dir).expect("run.json");
    assert_eq!(record.digest, g.report.final_digest);
    assert_eq!(record.entries, g.entries);

    // Replayed in-process into a fresh engine (another shard count): the same state.
    let (entries, tail) = load_log(&g.log_dir).unwrap();
    assert_eq!(entries.len() as u64, g.entries);
    assert_eq!(tail, depot_wal::Tail::Clean);
    let (base, digest) =
        replay_in_process(&entries, None, Speed::Max, "recorded", 3, false).unwrap();
    assert_eq!(digest, g.digest);
    assert_eq!(base.oversells, 0);
    assert_eq!(base.commands, g.entries);
    // The replay sees the same orders and sales as the generation did.
    for (a, b) in base.channels.iter().zip(&g.report.channels) {
        assert_eq!(
            (a.orders, a.orders_held, a.units_committed),
            (b.orders, b.orders_held, b.units_committed)
        );
    }

    // What-if: hold back most of eBay's ATS. eBay sells less; the log's demand is the same.
    let rules = tmp.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules": [{"id": "ebay-half", "kind": "buffer", "channels": ["ebay:us"], "percent": 90}]}"#,
    )
    .unwrap();
    let doc = load_rules(&rules).unwrap();
    let (alt, alt_digest) =
        replay_in_process(&entries, Some(&doc), Speed::Max, "ebay held back", 2, false).unwrap();
    assert_ne!(alt_digest, digest);
    assert_eq!(alt.oversells, 0, "{:?}", alt.violations);
    let ebay = |r: &depot_sim::report::RunReport| {
        r.channels
            .iter()
            .find(|c| c.channel == "ebay:us")
            .unwrap()
            .clone()
    };
    assert_eq!(ebay(&alt).orders, ebay(&base).orders);
    assert!(
        ebay(&alt).units_held < ebay(&base).units_held,
        "{:?} vs {:?}",
        ebay(&alt),
        ebay(&base)
    );
    assert!(ebay(&alt).refused_no_stock > ebay(&base).refused_no_stock);
    assert_eq!(ebay(&alt).listing_sold_out, 0, "a replay knows no listings");

    // Both rule sets side by side in the report.
    let report = Report {
        title: "what-if".into(),
        runs: vec![base, alt],
        ..Report::default()
    };
    let dir = tmp.path().join("whatif");
    report.write(&dir).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("Side by side")
            && md.contains("ebay:us (ebay held back)")
            && md.contains("ebay:us (recorded)")
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("</html>") && !html.contains("<script"));
    assert!(dir.join("report.json").is_file());
}

#[test]
fn the_same_seed_writes_the_same_log_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run(tmp.path().join("a"), 4);
    let b = run(tmp.path().join("b"), 4);
    assert_eq!(a.digest, b.digest);
    let files = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(files(&a.log_dir), files(&b.log_dir));
    // Another seed, another log.
    let (sc, text) = scenario();
    let c = generate(
        &sc,
        &text,
        &GenerateOptions {
            out: tmp.path().join("c"),
            minutes: Some(4),
            seed: Some(99),
            progress: false,
        },
    )
    .unwrap();
    assert_ne!(c.digest, a.digest);
    // The output directory is not overwritten.
    let (sc, text) = scenario();
    let again = generate(
        &sc,
        &text,
        &GenerateOptions {
            out: tmp.path().join("a"),
            minutes: Some(4),
            seed: None,
            progress: false,
        },
    );
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("already holds a log"));
}

#[test]
fn a_what_if_document_the_engine_refuses_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let g = run(tmp.path().join("gen"), 2);
    let (entries, _) = load_log(&g.log_dir).unwrap();
    let rules = tmp.path().join("bad.json");
    std::fs::write(
        &rules,
        r#"{"rules": [{"kind": "eligibility", "locations": ["nowhere"]}]}"#,
    )
    .unwrap();
    let doc = load_rules(&rules).unwrap();
    let e = replay_in_process(&entries, Some(&doc), Speed::Max, "bad", 1, false).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    // A document that does not parse names the field.
    std::fs::write(&rules, r#"{"rules": [{"kind": "cap", "unitz": 3}]}"#).unwrap();
    let e = load_rules(&rules).unwrap_err().to_string();
    assert!(e.contains("unitz") && e.contains("bad.json"), "{e}");
}

#[test]
fn speeds_parse() {
    assert_eq!("max".parse::<Speed>().unwrap(), Speed::Max);
    assert_eq!("10x".parse::<Speed>().unwrap(), Speed::Factor(10.0));
    assert_eq!("0.5".parse::<Speed>().unwrap(), Speed::Factor(0.5));
    assert!("0x".parse::<Speed>().is_err());
    assert!("fast".parse::<Speed>().is_err());
}

#[test]
fn a_log_directory_that_is_missing_or_empty_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(load_log(&tmp.path().join("none")).is_err());
    let e = load_log(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("no log entries"), "{e}");
}
