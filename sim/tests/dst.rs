//! Deterministic simulation testing: a fixed set of seeds with every fault (and snapshots) passes,
//! the same seed gives the same run byte for byte, and a medium that lies about fsync is caught.

use depot_sim::dst::{run_seed, run_seed_with, DstOptions, Faults, Sabotage};
use std::collections::BTreeMap;

const STEPS: u64 = 250;

#[test]
fn thirty_seeds_with_every_fault_pass_and_exercise_every_fault() {
    let faults = Faults::default();
    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut recoveries, mut torn, mut flips, mut retries, mut kept) = (0, 0, 0, 0, 0);
    let (mut snapshots, mut snapshots_failed) = (0, 0);
    for seed in 1..=30 {
        let run = run_seed(seed, STEPS, &faults).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(run.steps, STEPS);
        assert!(
            run.writes > STEPS / 2,
            "seed {seed}: only {} writes",
            run.writes
        );
        for (k, v) in &run.injected {
            *injected.entry(k).or_default() += v;
        }
        recoveries += run.recoveries;
        torn += run.torn_tails;
        flips += run.flips_corrupt + run.flips_torn;
        retries += run.idempotent_retries;
        kept += run.unacked_kept;
        snapshots += run.snapshots;
        snapshots_failed += run.snapshots_failed;
    }
    for f in ["crash", "torn", "fsync", "full", "bitflip", "clock"] {
        assert!(
            injected.get(f).copied().unwrap_or(0) > 0,
            "{f} never injected: {injected:?}"
        );
    }
    assert!(recoveries > 30, "{recoveries} recoveries");
    assert!(torn > 0 && flips > 0 && retries > 0 && kept > 0);
    // Recoveries started from snapshots, and faults hit snapshots' own writes.
    assert!(
        snapshots > 30 && snapshots_failed > 0,
        "{snapshots} / {snapshots_failed}"
    );
}

#[test]
fn the_same_seed_gives_the_same_run_byte_for_byte() {
    let faults = Faults::default();
    let a = run_seed(7, STEPS, &faults).unwrap();
    let b = run_seed(7, STEPS, &faults).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.trace, b.trace);
    let c = run_seed(8, STEPS, &faults).unwrap();
    assert_ne!(a.trace, c.trace, "another seed, another run");
}

#[test]
fn a_medium_that_acknowledges_unsynced_writes_is_caught() {
    let crashes: Faults = "crash".parse().unwrap();
    let opts = DstOptions {
        seed: 1,
        seeds: 20,
        steps: STEPS,
        faults: crashes.clone(),
    };
    let failures: Vec<_> = (1..=20)
        .filter_map(|seed| run_seed_with(seed, STEPS, &crashes, Sabotage::LyingFsync).err())
        .collect();
    assert!(
        !failures.is_empty(),
        "a lying fsync went unnoticed over 20 seeds"
    );
    // Lost acknowledged writes, or a log recovery refuses (segments whose creation was never
    // made durable): either way the lie is detected.
    assert!(failures
        .iter()
        .any(|f| f.message.contains("acknowledged writes lost")));
    for f in &failures {
        assert!(
            f.message.contains("acknowledged writes lost") || f.message.contains("recovery after"),
            "{}",
            f.message
        );
        assert_eq!(f.repro, opts.repro(f.seed));
        assert!(f
            .to_string()
            .contains(&format!("depot sim dst --seed {} ", f.seed)));
    }
    // The same seeds pass on an honest medium.
    for f in &failures {
        run_seed(f.seed, STEPS, &crashes).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn fault_lists_parse_and_name_the_unknown_one() {
    let f: Faults = "crash, torn,bitflip".parse().unwrap();
    assert_eq!(f.to_string(), "crash,torn,bitflip");
    assert_eq!("all".parse::<Faults>().unwrap(), Faults::default());
    assert_eq!("none".parse::<Faults>().unwrap().to_string(), "none");
    let e = "crash,meteor".parse::<Faults>().unwrap_err();
    assert!(e.contains("\"meteor\""), "{e}");
}

#[test]
fn without_faults_a_seed_recovers_nothing_and_still_replays_to_its_digest() {
    let run = run_seed(3, STEPS, &"none".parse().unwrap()).unwrap();
    assert_eq!(run.recoveries, 0);
    assert!(run.injected.is_empty());
    assert_ne!(run.final_digest, [0u8; 32]);
}

#[test]
fn the_report_names_the_seeds_it_ran_first_and_last() {
    let opts = DstOptions {
        seed: 5,
        seeds: 2,
        steps: 20,
        faults: Faults::default(),
    };
    let runs: Vec<_> = (5..=6)
        .map(|seed| run_seed(seed, opts.steps, &opts.faults).unwrap())
        .collect();
    let report = depot_sim::dst::report(&opts, &runs, None);
    assert!(
        report.title.ends_with("seeds 5..=6"),
        "title: {}",
        report.title
    );
    let seeds: Vec<&str> = report
        .table
        .as_ref()
        .unwrap()
        .1
        .iter()
        .map(|r| r[0].as_str())
        .collect();
    assert_eq!(seeds, ["5", "6"]);
}
