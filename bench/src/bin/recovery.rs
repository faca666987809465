//! Recovery rate: how fast a restart rebuilds the state from a snapshot plus the log after it.
//!
//! Setup (once per data directory): a state of 1,000,000 stock levels (250,000 SKUs x 4
//! locations, built on a `Machine`) written as a snapshot file, then 10,000,000 W1 reservations
//! (one line, SKU ~ Zipf(10,000, 1.1), qty 1) appended after it through the real log writer in
//! 64 MiB segments. Then `runs` times: `depot_wal::recover` (2 shards), timed, with its parts
//! measured separately: reading and validating the snapshot and loading it into a machine;
//! reading the log (checksums and decoding, no replay); and (first run) the replay alone
//! on entries decoded beforehand. Recovery overlaps the reading with the replay.
//!
//! The log was just written, so it is read from the page cache: the figures are for a warm
//! cache (a restart after a process crash), not a cold disk.
//!
//! Usage: `recovery [--dir /var/tmp/depot-recovery] [--records 10000000] [--skus 250000]
//! [--locations 4] [--runs 3] [--reuse]` (`--reuse`: keep a data directory from an earlier
//! run with the same figures instead of writing it again).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::idle;

use depot_bench::{rng, sku_name, Workload, SKUS};
use depot_engine::{
    ChannelKind, Command, Limits, LocationId, LocationKind, LogEntry, Machine, Request, Sku,
};
use depot_wal::{FsDir, WalOptions, WalReader, WalWriter};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug)]
struct Opts {
    dir: PathBuf,
    records: u64,
    skus: usize,
    locations: usize,
    runs: usize,
    reuse: bool,
}

const USAGE: &str =
    "recovery [--dir DIR] [--records N] [--skus N] [--locations N] [--runs 3] [--reuse]";

fn opts() -> Opts {
    let mut o = Opts {
        dir: PathBuf::from("/var/tmp/depot-recovery"),
        records: 10_000_000,
        skus: 250_000,
        locations: 4,
        runs: 3,
        reuse: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let num = |v: &str| -> u64 {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                depot_bench::cli::usage_error(&format!("{}: not a number: {v:?}", args[i]), USAGE)
            })
        };
        match args[i].as_str() {
            "--dir" => o.dir = PathBuf::from(&v),
            "--records" => o.records = num(&v),
            "--skus" => o.skus = num(&v) as usize,
            "--locations" => o.locations = num(&v) as usize,
            "--runs" => o.runs = num(&v) as usize,
            "--reuse" => {
                o.reuse = true;
                i += 1;
                continue;
            }
            other => depot_bench::cli::usage_error(&format!("unknown argument {other}"), USAGE),
        }
        i += 2;
    }
    o
}

const SHARDS: usize = 2;
const T0: u64 = 1_700_000_000_000;

fn limits() -> Limits {
    Limits::default()
}

fn location(l: usize) -> LocationId {
    LocationId::new(&format!("wh-{l}")).expect("valid id")
}

/// The state of `skus` x `locations` levels on a machine; SKU names are the workload's
/// (`sku-00001`..), so W1's 10,000 hot SKUs are among them.
fn build_state(w: &Workload, skus: usize, locations: usize) -> Machine {
    let mut m = Machine::new(limits(), SHARDS);
    let mut run = |command: Command| {
        let req = w.request(command);
        let (resp, _, _) = m.execute(&req, T0);
        assert!(resp.outcome.is_ok(), "setup refused: {:?}", resp.outcome);
    };
    run(Command::CreateTenant);
    for l in 0..locations {
        run(Command::PutLocation {
            location: location(l),
            kind: LocationKind::Warehouse,
            name: format!("Warehouse {l}"),
            region: None,
            wms: None,
        });
    }
    run(Command::PutChannel {
        channel: w.channel.clone(),
        kind: ChannelKind::Shopify,
        priority: 0,
    });
    for r in 1..=skus {
        let sku = Sku::new(&sku_name(r)).expect("valid id");
        for l in 0..locations {
            run(Command::Receive {
                sku: sku.clone(),
                location: location(l),
                quantity: 1_000_000,
                unit_cost: None,
                reason: "bench setup".into(),
            });
        }
    }
    m
}

fn setup(o: &Opts) -> (u64, u64) {
    let _ = std::fs::remove_dir_all(&o.dir);
    let dir = FsDir::open(&o.dir).expect("create the data directory");
    let w = Workload::new(SKUS);
    assert!(o.skus >= SKUS, "--skus must be at least {SKUS}");
    let t = Instant::now();
    let machine = build_state(&w, o.skus, o.locations);
    let image = machine.image();
    let levels: usize = image.skus.iter().map(|s| s.levels.len()).sum();
    drop(machine);
    let name = depot_wal::write_snapshot(&dir, &image).expect("write the snapshot");
    let snap_seq = image.seq;
    eprintln!(
        "setup: {levels} stock levels, snapshot {name} ({} MB) in {:.1?}",
        std::fs::metadata(o.dir.join(&name)).map_or(0, |m| m.len()) / 1_000_000,
        t.elapsed()
    );
    drop(image);

    // The log after the snapshot: W1 reservations through the real writer, synced every
    // 65,536 entries (durability per write is not what is measured here).
    let t = Instant::now();
    let mut writer =
        WalWriter::open(Box::new(dir), WalOptions::default()).expect("open the log writer");
    let mut rng = rng(7, 0);
    for i in 0..o.records {
        let request: Request = w.w1(&mut rng);
        let entry = LogEntry {
            seq: snap_seq + 1 + i,
            now: T0 + i / 100,
            request,
        };
        writer.append(&entry).expect("append");
        if i % 65_536 == 65_535 {
            writer.sync().expect("sync");
        }
        if i % 1_000_000 == 999_999 {
            eprintln!("  {} records written", i + 1);
        }
    }
    writer.sync().expect("sync");
    eprintln!(
        "setup: {} log records after seq {snap_seq} in {:.1?}",
        o.records,
        t.elapsed()
    );
    (levels as u64, snap_seq)
}

fn du(dir: &std::path::Path, prefix: &str) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir)
        .expect("read the data directory")
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            n += 1;
            bytes += e.metadata().map_or(0, |m| m.len());
        }
    }
    (n, bytes)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    let seq_file = o.dir.join("bench-setup.txt");
    let wanted = format!("{} {} {}", o.records, o.skus, o.locations);
    let reused = o.reuse
        && std::fs::read_to_string(&seq_file).is_ok_and(|s| s.starts_with(&format!("{wanted} ")));
    let snap_seq: u64 = if reused {
        let s = std::fs::read_to_string(&seq_file).expect("read the setup file");
        s.split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .expect("setup file")
    } else {
        let (_, snap_seq) = setup(&o);
        std::fs::write(&seq_file, format!("{wanted} {snap_seq}\n")).expect("write the setup file");
        snap_seq
    };
    let (segments, log_bytes) = du(&o.dir, "wal-");
    let (_, snap_bytes) = du(&o.dir, "snapshot-");
    println!(
        "data: {} log records in {segments} segments ({} MB), snapshot at seq {snap_seq} ({} MB), \
         {} stock levels; warm page cache",
        o.records,
        log_bytes / 1_000_000,
        snap_bytes / 1_000_000,
        o.skus * o.locations
    );
    let dir = FsDir::open(&o.dir).expect("open the data directory");
    let (mut totals, mut rates, mut snaps, mut reads) = (vec![], vec![], vec![], vec![]);
    for run in 1..=o.runs {
        idle::wait_idle(120.0);
        // The parts, measured on their own.
        let t = Instant::now();
        let (image, _) = depot_wal::load_newest_snapshot(&dir)
            .expect("read the snapshot")
            .expect("a snapshot");
        let machine = depot_engine::snapshot::load(&image, limits(), SHARDS).expect("load");
        let snap = t.elapsed();
        drop((image, machine));
        // Reading alone (checksums and decoding), and then, in the first run, the replay alone
        // on entries decoded beforehand.
        let t = Instant::now();
        let mut reader = WalReader::open(&dir, snap_seq + 1).expect("open the log");
        let mut n = 0u64;
        while let Some(e) = reader.next_entry().expect("read the log") {
            n += 1;
            std::hint::black_box(e);
        }
        let read = t.elapsed();
        assert_eq!(n, o.records);
        if run == 1 {
            let (kept, _) = depot_wal::read_log(&dir, snap_seq + 1).expect("read the log");
            let (image, _) = depot_wal::load_newest_snapshot(&dir)
                .expect("read the snapshot")
                .expect("a snapshot");
            let mut machine = depot_engine::snapshot::load(&image, limits(), SHARDS).expect("load");
            drop(image);
            let t = Instant::now();
            for e in &kept {
                machine.replay(e);
            }
            let replay = t.elapsed();
            println!(
                "breakdown: reading the log alone {:.2} s ({:.0} records/s), replaying decoded \
                 entries alone {:.2} s ({:.0} records/s)",
                read.as_secs_f64(),
                o.records as f64 / read.as_secs_f64(),
                replay.as_secs_f64(),
                o.records as f64 / replay.as_secs_f64(),
            );
            drop(machine);
            drop(kept);
        }

        // The whole recovery.
        let t = Instant::now();
        let (machine, tail) = depot_wal::recover(&dir, limits(), SHARDS).expect("recover");
        let total = t.elapsed();
        assert_eq!(
            machine.front.seq,
            snap_seq + o.records,
            "recovered to the end"
        );
        assert_eq!(tail, depot_wal::Tail::Clean);
        let t = Instant::now();
        drop(machine);
        let freed = t.elapsed();
        let rate = o.records as f64 / (total - snap).as_secs_f64();
        println!(
            "run {run}: recover {:.2} s = snapshot read+validate+load {:.2} s, then the log {:.2} s \
             ({:.0} records/s; reading overlapped with the replay); freeing the state {:.2} s",
            total.as_secs_f64(),
            snap.as_secs_f64(),
            (total - snap).as_secs_f64(),
            rate,
            freed.as_secs_f64(),
        );
        totals.push(total.as_secs_f64());
        rates.push(rate);
        snaps.push(snap.as_secs_f64());
        reads.push(read.as_secs_f64());
    }
    let total = median(&mut totals);
    let rate = median(&mut rates);
    println!(
        "median: recovery {total:.2} s (target < 10 s: {}), {rate:.0} log records/s replayed \
         (target >= 2,000,000: {}), snapshot {:.2} s, log read {:.2} s",
        if total < 10.0 { "met" } else { "MISSED" },
        if rate >= 2_000_000.0 { "met" } else { "MISSED" },
        median(&mut snaps),
        median(&mut reads),
    );
}
