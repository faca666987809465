//! W1 reservations on the single-threaded `Machine` (2 shards, driven one command at a time),
//! for counting instructions: the per-reservation cost of the engine without threads, queues
//! or a log. `run_all` is the measured part:
//!
//! ```sh
//! cargo build --release -p depot-bench --example w1_machine
//! valgrind --tool=callgrind --toggle-collect='*run_all*' \
//!     target/release/examples/w1_machine 100000          # reservations; add `w2` for W2
//! ```
//!
//! Instructions per reservation = the collected count / the number of reservations. Without
//! valgrind it prints reservations per second of one thread.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_bench::{Workload, W};
use depot_engine::{Limits, Machine, Request};

/// Every request in order, one millisecond apart; the answers are dropped.
#[inline(never)]
fn run_all(m: &mut Machine, reqs: Vec<Request>) {
    let mut now = 1_000_000u64;
    for r in reqs {
        now += 1;
        let out = m.execute(&r, now);
        std::hint::black_box(out);
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let w2 = std::env::args().nth(2).is_some_and(|a| a == "w2");
    let w = Workload::new(10_000);
    let mut m = Machine::new(Limits::default(), 2);
    w.setup_machine(&mut m, 1_000_000);
    let mut rng = depot_bench::rng(1, 1);
    let reqs: Vec<_> = (0..n)
        .map(|_| w.gen(if w2 { W::W2 } else { W::W1 }, &mut rng))
        .collect();
    let t = std::time::Instant::now();
    run_all(&mut m, reqs);
    println!("{:.0} /s", n as f64 / t.elapsed().as_secs_f64());
}
