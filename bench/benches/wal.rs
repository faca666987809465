//! Criterion benchmarks of the write-ahead log's append path (`depot_wal::WalWriter`), on a
//! temporary directory of the real file system (`$TMPDIR`, else `/tmp`; put it on the disk the
//! server's `--data-dir` uses).
//!
//! - `wal/append`: one typical record (a W1 single-line reservation) encoded, checksummed and
//!   buffered; the buffer is written out every 1 MiB, so the `write` calls are included,
//!   amortised. No `fdatasync`.
//! - `wal/append_sync/N`: N such records and one `WalWriter::sync` (write + `fdatasync`), as the
//!   group commit does with N writes waiting: the cost per record falls as N grows.
//!
//! Each sample uses a fresh log directory, deleted after it, so disk use stays bounded.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use depot_bench::{rng, Workload, SKUS};
use depot_wal::{FsDir, LogEntry, WalOptions, WalWriter};
use std::time::{Duration, Instant};

/// Engine time of the records.
const NOW: u64 = 1_700_000_000_000;

/// `n` W1 records with consecutive sequence numbers from `first`.
fn records(w: &Workload, first: u64, n: usize, seed: u64) -> Vec<LogEntry> {
    let mut r = rng(seed, 0);
    (0..n as u64)
        .map(|i| LogEntry {
            seq: first + i,
            now: NOW + i,
            request: w.w1(&mut r),
        })
        .collect()
}

fn writer(dir: &std::path::Path) -> WalWriter {
    let fs = FsDir::open(dir).expect("open the log directory");
    WalWriter::open(Box::new(fs), WalOptions::default()).expect("open the log")
}

fn append(c: &mut Criterion) {
    let w = Workload::new(SKUS);
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    let mut round = 0;
    group.bench_function("append", |b| {
        b.iter_custom(|iters| {
            round += 1;
            let tmp = tempfile::tempdir().expect("temporary directory");
            let mut log = writer(tmp.path());
            let entries = records(&w, 1, iters as usize, round);
            let t = Instant::now();
            for e in &entries {
                log.append(e).expect("append");
            }
            let took = t.elapsed();
            drop(log);
            took
        })
    });
    group.finish();

    let mut group = c.benchmark_group("wal/append_sync");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for n in [1usize, 64, 1_024] {
        group.throughput(Throughput::Elements(n as u64));
        let mut round = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let tmp = tempfile::tempdir().expect("temporary directory");
                let mut log = writer(tmp.path());
                let groups: Vec<Vec<LogEntry>> = (0..iters)
                    .map(|i| records(&w, 1 + i * n as u64, n, round))
                    .collect();
                let t = Instant::now();
                for g in &groups {
                    for e in g {
                        log.append(e).expect("append");
                    }
                    log.sync().expect("sync");
                }
                t.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
