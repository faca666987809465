//! Recovery alone (the newest snapshot, then the log) of a data directory written by the
//! `recovery` bench binary, for profiling:
//!
//! ```sh
//! cargo build --release -p depot-bench --bin recovery --example recover_only
//! target/release/recovery --dir /var/tmp/depot-recovery --runs 1   # writes the data once
//! perf record -g target/release/examples/recover_only /var/tmp/depot-recovery
//! ```

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use depot_wal::FsDir;
use std::time::Instant;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/var/tmp/depot-recovery".into());
    let dir = FsDir::open(std::path::Path::new(&dir)).expect("open the data directory");
    let t = Instant::now();
    let (machine, tail) =
        depot_wal::recover(&dir, depot_engine::Limits::default(), 2).expect("recover");
    println!(
        "recovered to seq {} in {:.2?} (tail {tail:?})",
        machine.front.seq,
        t.elapsed()
    );
    std::mem::forget(machine);
}
