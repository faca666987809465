//! Criterion benchmarks of the engine.
//!
//! - `threaded/W1`, `threaded/W2`: W1 single-line and W2 three-line reservations on the
//!   threaded [`Engine`] with every shard busy: one shard per core, as many client threads as
//!   shards, each submitting batches of [`BATCH`] requests. Throughput is in reservations.
//! - `machine/*`: the hot paths on the single-threaded [`Machine`] (one shard): one reserve,
//!   one commit, one `GetStock` (the ATS read), and the ATS refresh of one SKU.
//!
//! Stock and state across iterations: rank 1 gets ≈ 15 % of W1's operations (and is in ≈ 40 %
//! of W2's carts), so 1,000,000 units would run out within a few million reservations, and
//! every reservation also stays in the engine as a held part. Each `iter_custom` call (one
//! criterion sample, or one warm-up round) therefore builds a fresh engine, which also keeps
//! memory bounded and every sample starting from the same state (WORKLOADS.md resets before
//! every run); and the setup receives [`BENCH_STOCK`] units per SKU instead of 1,000,000, so
//! even the longest warm-up round never sells a SKU out and every measured reservation
//! succeeds. Setup, request generation and teardown are outside the timed section.

// mimalloc, as in depot's own binaries: answers are freed by other threads than allocate them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use depot_bench::{rng, Workload, SKUS, W};
use depot_engine::{Command, Engine, EngineConfig, Limits, Machine, Request, ReservationId};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Requests per `Engine::execute` call.
const BATCH: usize = 1_024;
/// Units received per SKU: far more than any sample can reserve (a fresh engine per sample).
const BENCH_STOCK: i64 = 1_000_000_000;
/// Engine time of the measured requests.
const NOW: u64 = 1_700_000_000_000;

fn shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn threaded(c: &mut Criterion) {
    let workload = Workload::new(SKUS);
    let shards = shards();
    let clients = shards;
    let mut group = c.benchmark_group("threaded");
    group.throughput(Throughput::Elements((clients * BATCH) as u64));
    for w in [W::W1, W::W2] {
        let id = BenchmarkId::new(
            w.name(),
            format!("{shards}shards_{clients}clients_batch{BATCH}"),
        );
        let mut round = 0u64;
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                round += 1;
                let engine = Engine::start(EngineConfig {
                    shards,
                    limits: Limits::default(),
                });
                workload.setup_engine(&engine, BENCH_STOCK);
                // Every client's batches are generated before the clock starts.
                let batches: Vec<Vec<Vec<Request>>> = (0..clients)
                    .map(|client| {
                        let mut rng = rng(round, client as u64);
                        (0..iters)
                            .map(|_| workload.batch(w, BATCH, &mut rng))
                            .collect()
                    })
                    .collect();
                let barrier = Barrier::new(clients + 1);
                let elapsed = std::thread::scope(|s| {
                    for mine in batches {
                        let (engine, barrier) = (&engine, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            for batch in mine {
                                let answers = engine.execute(batch, NOW);
                                debug_assert!(answers.iter().all(|(r, _)| r.outcome.is_ok()));
                                black_box(answers);
                            }
                            barrier.wait();
                        });
                    }
                    barrier.wait();
                    let start = Instant::now();
                    barrier.wait();
                    start.elapsed()
                });
                elapsed
            })
        });
    }
    group.finish();
}

/// A machine with the W1/W2 data set and plenty of stock.
fn machine(workload: &Workload) -> Machine {
    let mut m = Machine::new(Limits::default(), 1);
    workload.setup_machine(&mut m, BENCH_STOCK);
    m
}

fn hot_paths(c: &mut Criterion) {
    let workload = Workload::new(SKUS);
    let mut group = c.benchmark_group("machine");
    group.throughput(Throughput::Elements(1));

    // One W1 reservation (admit, prepare, decide, apply, merge, respond).
    for w in [W::W1, W::W2] {
        let mut round = 0u64;
        group.bench_function(format!("reserve_{}", w.name()), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let mut m = machine(&workload);
                let mut rng = rng(round, 0);
                let reqs = workload.batch(w, iters as usize, &mut rng);
                let start = Instant::now();
                for r in &reqs {
                    black_box(m.execute(r, NOW));
                }
                start.elapsed()
            })
        });
    }

    // One W1 reservation with an idempotency key, as every HTTP write carries one: the key's
    // fingerprint, lookup and insertion into a store holding a million keys or more (filled
    // once: the store goes on growing across samples, as a server's does), and the response
    // stored under it.
    let mut m = machine(&workload);
    let keyed = |i: u64, r: Request| Request {
        idempotency_key: Some(format!("key-{i}")),
        ..r
    };
    for i in 0..1_000_000u64 {
        let id = ReservationId(u64::MAX - i);
        let r = workload.request(Command::Commit { id, lines: None });
        black_box(m.execute(&keyed(i, r), NOW));
    }
    assert_eq!(m.front.idempotency.len(), 1_000_000);
    let (mut next, mut w1_rng) = (1_000_000u64, rng(0, 1));
    group.bench_function("reserve_W1_keyed", |b| {
        b.iter_custom(|iters| {
            let reqs: Vec<Request> = (0..iters)
                .map(|i| keyed(next + i, workload.w1(&mut w1_rng)))
                .collect();
            next += iters;
            let start = Instant::now();
            for r in &reqs {
                black_box(m.execute(r, NOW));
            }
            start.elapsed()
        })
    });
    drop(m);

    // Commit of a held single-line reservation.
    let mut round = 0u64;
    group.bench_function("commit_W1", |b| {
        b.iter_custom(|iters| {
            round += 1;
            let mut m = machine(&workload);
            let mut rng = rng(round, 0);
            let ids: Vec<ReservationId> = (0..iters)
                .map(|_| {
                    let (resp, _, _) = m.execute(&workload.w1(&mut rng), NOW);
                    ReservationId(resp.seq.expect("reserve is sequenced"))
                })
                .collect();
            let reqs: Vec<Request> = ids
                .iter()
                .map(|&id| workload.request(Command::Commit { id, lines: None }))
                .collect();
            let start = Instant::now();
            for r in &reqs {
                let out = m.execute(r, NOW);
                debug_assert!(out.0.outcome.is_ok());
                black_box(out);
            }
            start.elapsed()
        })
    });

    // A stock read: the SKU's levels and its ATS per channel, Zipf-distributed SKUs.
    let mut m = machine(&workload);
    let mut rng = rng(0, 0);
    let reads: Vec<Request> = (0..4_096)
        .map(|_| workload.get_stock(workload.zipf.sample(&mut rng)))
        .collect();
    let mut i = 0;
    group.bench_function("get_stock", |b| {
        b.iter(|| {
            i = (i + 1) % reads.len();
            black_box(m.execute(&reads[i], NOW))
        })
    });

    // The ATS refresh of one SKU (no rules: the pool), as every stock change runs it.
    let cfg = m.shards[0].tenants[0].clone();
    let sku = workload.skus[0].clone();
    let st = m.shards[0].skus.iter().next().expect("a SKU").1.clone();
    let mut st = st;
    group.bench_function("ats_refresh", |b| {
        b.iter(|| {
            st.refresh(black_box(&cfg), black_box(&sku));
            black_box(st.ats(0))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = threaded, hot_paths
}
criterion_main!(benches);
