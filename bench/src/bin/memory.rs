//! Heap bytes per stock level.
//!
//! Builds 1,000,000 stock levels in two shapes (250,000 SKUs x 4 locations, 1,000,000 SKUs x
//! 1 location; 3 channels each) on a single-threaded `Machine` (one shard) and on a threaded
//! `Engine` (one shard per core), and measures the heap they hold with a counting global
//! allocator (bytes requested from the allocator; malloc's own per-chunk overhead is not in
//! it, the RSS growth printed next to it includes it). Then it breaks the bytes down by
//! engine structure. Target: <= 200 bytes per level.
//!
//! Usage: `memory [--shape 250k4|1m1|all]`

// A `GlobalAlloc` implementation is `unsafe` by definition. This file is the only place in the
// bench crate that allows it; `bench/Cargo.toml` lowers the workspace's `forbid` to `deny` so
// that this crate-level `allow` is possible.
#![allow(unsafe_code)]

use depot_engine::ats::Level;
use depot_engine::shard::{ShardState, SkuKey, SkuState};
use depot_engine::{
    ChannelId, ChannelKind, Command, Engine, EngineConfig, Limits, LocationId, LocationKind,
    Machine, Request, Sku, TenantId,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// Counts live heap bytes and allocation calls, delegating to the system allocator.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

const CHANNELS: usize = 3;
const LEVELS: usize = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    skus: usize,
    locations: usize,
}

struct Ids {
    tenant: TenantId,
    locations: Vec<LocationId>,
    channels: Vec<ChannelId>,
}

fn ids(shape: Shape) -> Ids {
    Ids {
        tenant: TenantId::new("mem").expect("id"),
        locations: (0..shape.locations)
            .map(|i| LocationId::new(&format!("loc-{i}")).expect("id"))
            .collect(),
        channels: (0..CHANNELS)
            .map(|i| ChannelId::new(&format!("chan-{i}")).expect("id"))
            .collect(),
    }
}

fn req(ids: &Ids, command: Command) -> Request {
    Request {
        tenant: ids.tenant.clone(),
        key_id: Default::default(),
        idempotency_key: None,
        command,
    }
}

fn config(ids: &Ids) -> Vec<Request> {
    let mut v = vec![req(ids, Command::CreateTenant)];
    for l in &ids.locations {
        v.push(req(
            ids,
            Command::PutLocation {
                location: l.clone(),
                kind: LocationKind::Warehouse,
                name: l.to_string(),
                region: None,
                wms: None,
            },
        ));
    }
    for c in &ids.channels {
        v.push(req(
            ids,
            Command::PutChannel {
                channel: c.clone(),
                kind: ChannelKind::Other,
                priority: 0,
            },
        ));
    }
    v
}

/// The receive creating level (SKU rank r, location l). Names as the workloads use them.
fn receive(ids: &Ids, r: usize, l: usize) -> Request {
    req(
        ids,
        Command::Receive {
            sku: Sku::new(&format!("sku-{r:05}")).expect("id"),
            location: ids.locations[l].clone(),
            quantity: 1_000,
            unit_cost: None,
            reason: String::new(),
        },
    )
}

/// Where the bytes of the SKU tables of `shards` go, computed from the structures.
#[derive(Debug, Default)]
struct Breakdown {
    skus: usize,
    levels: usize,
    table_buckets: usize,
    table_bytes: usize,
    slab_capacity: usize,
    slab_bytes: usize,
    key_bytes: usize,
    level_vec_bytes: usize,
    level_vec_unused: usize,
    chans_bytes: usize,
    cost_bytes: usize,
}

fn breakdown<'a>(shards: impl Iterator<Item = &'a ShardState>) -> Breakdown {
    let mut b = Breakdown::default();
    for s in shards {
        let (buckets, slab) = s.skus.capacity();
        b.table_buckets += buckets;
        // A 4-byte slot number and a control byte per bucket.
        b.table_bytes += buckets * (size_of::<u32>() + 1) + 16;
        b.slab_capacity += slab;
        b.slab_bytes += slab * size_of::<(SkuKey, SkuState)>();
        for (k, st) in &s.skus {
            b.skus += 1;
            b.levels += st.levels.len();
            b.key_bytes += k.sku.len();
            b.level_vec_bytes += st.levels.capacity() * size_of::<Level>();
            b.level_vec_unused += (st.levels.capacity() - st.levels.len()) * size_of::<Level>();
            b.chans_bytes += st.chans.len() * size_of::<i64>();
            b.cost_bytes += st
                .cost
                .as_ref()
                .map_or(0, |_| size_of::<rust_decimal_size::Decimal>());
        }
    }
    b
}

/// `rust_decimal::Decimal` is 16 bytes; the bench crate does not depend on rust_decimal.
mod rust_decimal_size {
    pub struct Decimal(#[allow(dead_code)] [u32; 4]);
}

fn report(label: &str, shape: Shape, measured: isize, rss: isize, b: &Breakdown) {
    let per = |x: usize| x as f64 / LEVELS as f64;
    let m = measured as f64 / LEVELS as f64;
    println!(
        "{label:<22} {:<9} heap {:>6.1} B/level ({:.1} MB) [{}]; RSS growth {:>6.1} B/level",
        shape.name,
        m,
        measured as f64 / 1e6,
        if m <= 200.0 {
            "<= 200: pass"
        } else {
            "> 200: OVER"
        },
        rss as f64 / LEVELS as f64
    );
    let accounted = b.table_bytes
        + b.slab_bytes
        + b.key_bytes
        + b.level_vec_bytes
        + b.chans_bytes
        + b.cost_bytes;
    println!(
        "    per level: SKU slot table {:.1} ({} buckets for {} SKUs, 4 B slot + 1 control byte each) | \
         SKU states {:.1} ({} slots of {} B) | \
         SKU key strings {:.1} | level Vecs {:.1} (of which unused capacity {:.1}) | channel ATS/held {:.1} | cost {:.1} | \
         accounted {:.1}, other {:.1}",
        per(b.table_bytes),
        b.table_buckets,
        b.skus,
        per(b.slab_bytes),
        b.slab_capacity,
        size_of::<(SkuKey, SkuState)>(),
        per(b.key_bytes),
        per(b.level_vec_bytes),
        per(b.level_vec_unused),
        per(b.chans_bytes),
        per(b.cost_bytes),
        per(accounted),
        m - per(accounted),
    );
    assert_eq!(b.levels, LEVELS, "every level was created");
}

fn on_machine(shape: Shape) {
    let ids = ids(shape);
    let mut m = Machine::new(Limits::default(), 1);
    for r in config(&ids) {
        assert!(m.execute(&r, 1).0.outcome.is_ok());
    }
    let (before, rss_before) = (live(), rss());
    for r in 1..=shape.skus {
        for l in 0..shape.locations {
            let (resp, _, _) = m.execute(&receive(&ids, r, l), 1);
            debug_assert!(resp.outcome.is_ok());
        }
    }
    let (measured, grown) = (live() - before, rss() - rss_before);
    report(
        "Machine (1 shard)",
        shape,
        measured,
        grown,
        &breakdown(m.shards.iter()),
    );
}

fn on_engine(shape: Shape) {
    let ids = ids(shape);
    let engine = Engine::start(EngineConfig::default());
    for r in config(&ids) {
        assert!(engine.execute_one(r, 1).0.outcome.is_ok());
    }
    let (before, rss_before) = (live(), rss());
    let pairs: Vec<(usize, usize)> = (1..=shape.skus)
        .flat_map(|r| (0..shape.locations).map(move |l| (r, l)))
        .collect();
    for chunk in pairs.chunks(4_096) {
        let batch = chunk.iter().map(|&(r, l)| receive(&ids, r, l)).collect();
        for (resp, _) in engine.execute(batch, 1) {
            debug_assert!(resp.outcome.is_ok());
        }
    }
    drop(pairs);
    let (measured, grown) = (live() - before, rss() - rss_before);
    let label = format!("Engine ({} shards)", engine.shards());
    let b = engine.inspect(|_, shards| breakdown(shards.iter().copied()));
    report(&label, shape, measured, grown, &b);
}

fn main() {
    let which = std::env::args()
        .skip_while(|a| a != "--shape")
        .nth(1)
        .unwrap_or_else(|| "all".into());
    let shapes = [
        Shape {
            name: "250k x 4",
            skus: 250_000,
            locations: 4,
        },
        Shape {
            name: "1M x 1",
            skus: 1_000_000,
            locations: 1,
        },
    ];
    println!(
        "sizes: Level {} B, SkuState {} B, SkuKey {} B, (SkuKey, SkuState) {} B, ShardState {} B; {} channels, {} levels per shape",
        size_of::<Level>(),
        size_of::<SkuState>(),
        size_of::<SkuKey>(),
        size_of::<(SkuKey, SkuState)>(),
        size_of::<ShardState>(),
        CHANNELS,
        LEVELS,
    );
    for s in shapes {
        let selected = match which.as_str() {
            "250k4" => s.locations == 4,
            "1m1" => s.locations == 1,
            _ => true,
        };
        if selected {
            on_machine(s);
            on_engine(s);
        }
    }
}
