//! One shard's state: the stock of the SKUs it owns, their per-channel ATS, the reservation
//! parts for those SKUs and their timers. Owned by exactly one thread at a time; every method
//! is a pure function of the state and its arguments.

use crate::ats::{self, Level};
use crate::command::Bucket;
use crate::config::{ChanIdx, LocIdx, TenantConfig};
use crate::ids::{ReservationId, Sku, TimeMs};
use crate::job::{Granted, LineHeader, LineHeaders, PartPrep};
use crate::one::{Niche, OneOrMany};
use crate::timers::Timers;
use hashbrown::{Equivalent, HashMap};
use rust_decimal::Decimal;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Which shard owns (tenant, SKU): FNV-1a over the tenant index and the SKU bytes. Stable
/// across runs and platforms, so logs and snapshots do not depend on it.
pub fn shard_of(tenant: u32, sku: &str, shards: usize) -> usize {
    // Two plain loops rather than one over a chain: this runs several times per command.
    let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.to_le_bytes() {
        h = step(h, b);
    }
    for &b in sku.as_bytes() {
        h = step(h, b);
    }
    // Fold the high bits in: FNV's low bits are weak for short keys.
    ((h ^ (h >> 32)) % shards as u64) as usize
}

/// Map key: tenant index and SKU. The SKU is inline up to 24 bytes, so comparing a key during
/// a lookup reads no second cache line from elsewhere on the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuKey {
    pub tenant: u32,
    pub sku: compact_str::CompactString,
}

impl Hash for SkuKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant.hash(state);
        self.sku.hash(state);
    }
}

/// Borrowed form of [`SkuKey`] for lookups without allocating.
#[derive(Clone, Copy, Debug)]
pub struct SkuRef<'a> {
    pub tenant: u32,
    pub sku: &'a str,
}

impl Hash for SkuRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant.hash(state);
        self.sku.hash(state);
    }
}

impl From<&SkuRef<'_>> for SkuKey {
    fn from(r: &SkuRef<'_>) -> SkuKey {
        SkuKey {
            tenant: r.tenant,
            sku: r.sku.into(),
        }
    }
}

impl Equivalent<SkuKey> for SkuRef<'_> {
    fn equivalent(&self, key: &SkuKey) -> bool {
        self.tenant == key.tenant && *self.sku == *key.sku
    }
}

/// A SKU's stock on this shard.
#[derive(Clone, Debug, Default)]
pub struct SkuState {
    /// One level per location that has ever been touched, sorted by location index.
    pub levels: Vec<Level>,
    /// `[ats of channel 0.., held by channel 0..]`: ATS kept current on every change, and the
    /// units of this SKU reserved or committed per channel (for ring-fences). Empty while the
    /// tenant has no rules: then every channel's ATS is `pool` and nothing reads the held
    /// counts; installing rules rebuilds them from the reservation parts
    /// ([`ShardState::set_config`]).
    pub chans: Box<[i64]>,
    /// Every channel's ATS while `chans` is empty.
    pub pool: i64,
    /// Weighted average unit cost of receipts.
    pub cost: Option<Box<Decimal>>,
}

impl SkuState {
    pub fn channels(&self) -> usize {
        self.chans.len() / 2
    }
    pub fn ats(&self, c: ChanIdx) -> i64 {
        if self.chans.is_empty() {
            return self.pool;
        }
        self.chans.get(c as usize).copied().unwrap_or(0)
    }
    pub fn held(&self) -> &[i64] {
        &self.chans[self.channels()..]
    }
    /// The held count of channel `c`; only when the channel table exists.
    pub fn held_mut(&mut self, c: ChanIdx) -> &mut i64 {
        let n = self.channels();
        &mut self.chans[n + c as usize]
    }
    /// Adds to channel `c`'s held units, when they are kept (the tenant has rules).
    pub fn add_held(&mut self, c: ChanIdx, delta: i64) {
        if !self.chans.is_empty() {
            *self.held_mut(c) += delta;
        }
    }
    pub fn level(&self, loc: LocIdx) -> Option<&Level> {
        self.levels
            .binary_search_by_key(&loc, |l| l.loc)
            .ok()
            .map(|i| &self.levels[i])
    }
    /// The level at `loc`, created empty when missing.
    pub fn level_mut(&mut self, loc: LocIdx) -> &mut Level {
        let i = match self.levels.binary_search_by_key(&loc, |l| l.loc) {
            Ok(i) => i,
            Err(i) => {
                // Most SKUs live in one or a few locations: grow by one, never by doubling.
                self.levels.reserve_exact(1);
                self.levels.insert(i, Level::new(loc));
                i
            }
        };
        &mut self.levels[i]
    }
    /// Resizes the channel table to `n` channels, keeping held counts.
    pub fn resize(&mut self, n: usize) {
        if self.channels() == n {
            return;
        }
        let old = self.channels();
        let mut chans = vec![0; 2 * n].into_boxed_slice();
        for c in 0..old.min(n) {
            chans[n + c] = self.chans[old + c];
        }
        self.chans = chans;
    }
    /// Recomputes every channel's ATS from the levels and rules.
    pub fn refresh(&mut self, cfg: &TenantConfig, sku: &Sku) {
        let n = cfg.channels.len();
        if cfg.rules.is_empty() {
            // No rule distinguishes channels: ATS is the pool, or zero during an incident.
            if !self.chans.is_empty() {
                self.chans = Box::default();
            }
            let (mut pool, mut incident) = (0i64, false);
            for l in &self.levels {
                let a = l.available();
                incident |= a < 0;
                pool += a;
            }
            self.pool = if incident { 0 } else { pool.max(0) };
            return;
        }
        self.resize(n);
        for c in 0..n {
            let v = ats::ats(cfg, sku, &self.levels, &self.chans[n..], c as ChanIdx, None);
            self.chans[c] = v;
        }
    }
}

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Held,
    Committed,
    Released,
    Expired,
    Cancelled,
}

impl Lifecycle {
    pub fn ended(self) -> bool {
        matches!(
            self,
            Lifecycle::Released | Lifecycle::Expired | Lifecycle::Cancelled
        )
    }
    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Held => "held",
            Lifecycle::Committed => "committed",
            Lifecycle::Released => "released",
            Lifecycle::Expired => "expired",
            Lifecycle::Cancelled => "cancelled",
        }
    }
}

/// Units of an item at one location.
///
/// Shipped and returned units are behind a pointer that a held or committed allocation leaves
/// empty: they are counted only once the item ships, and every hold carries an allocation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Alloc {
    pub loc: LocIdx,
    /// A byte of the padding after `loc`, with one valid value: the list of an item's
    /// allocations keeps its `Many` variant in the others ([`OneOrMany`]).
    niche: Niche,
    /// Held or committed and not shipped.
    pub open: i64,
    /// `None` exactly when nothing was shipped or returned here.
    done: Option<Box<Done>>,
}

/// Units of an allocation shipped, and of those returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Done {
    shipped: i64,
    returned: i64,
}

impl Alloc {
    pub fn new(loc: LocIdx, open: i64, shipped: i64, returned: i64) -> Alloc {
        let mut a = Alloc {
            loc,
            niche: Niche::Only,
            open,
            done: None,
        };
        a.set_done(shipped, returned);
        a
    }
    pub fn shipped(&self) -> i64 {
        self.done.as_ref().map_or(0, |d| d.shipped)
    }
    pub fn returned(&self) -> i64 {
        self.done.as_ref().map_or(0, |d| d.returned)
    }
    /// Counts `units` more shipped.
    pub fn ship(&mut self, units: i64) {
        self.set_done(self.shipped() + units, self.returned());
    }
    /// Counts `units` more returned.
    pub fn take_back(&mut self, units: i64) {
        self.set_done(self.shipped(), self.returned() + units);
    }
    fn set_done(&mut self, shipped: i64, returned: i64) {
        let done = Done { shipped, returned };
        self.done = (done != Done::default()).then(|| Box::new(done));
    }
}

/// Printed as the struct of four fields it was (the state digest prints it).
impl std::fmt::Debug for Alloc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alloc")
            .field("loc", &self.loc)
            .field("open", &self.open)
            .field("shipped", &self.shipped())
            .field("returned", &self.returned())
            .finish()
    }
}

/// What a bundle component's item has of its own: its SKU and its units per unit of the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub sku: Sku,
    pub per_unit: i64,
}

/// What few items have: a bundle component's own SKU, units backordered. Absent (`None`, no
/// allocation) when the item has neither, as a held item of a plain line has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ItemRare {
    component: Option<Component>,
    backordered: i64,
}

/// An item of a reservation whose SKU this shard owns.
///
/// An item of a plain line is the line's SKU, one unit per unit of the line: it stores
/// neither (the line's header has them), so the usual hold carries its SKU's name once. A
/// bundle component's item names its own SKU, and an item with units backordered counts them,
/// both behind one pointer that the usual item leaves empty.
#[derive(Clone, PartialEq, Eq)]
pub struct PartItem {
    pub item: u16,
    pub line: u16,
    pub slot: u16,
    /// Units granted.
    pub quantity: i64,
    /// Most items are served from one location: kept inline.
    pub allocs: OneOrMany<Alloc>,
    /// `None` exactly when the item is of a plain line and has nothing backordered.
    rare: Option<Box<ItemRare>>,
}

/// Printed as the struct of seven fields it was (the state digest prints it).
impl std::fmt::Debug for PartItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartItem")
            .field("item", &self.item)
            .field("line", &self.line)
            .field("slot", &self.slot)
            .field("component", &self.component())
            .field("quantity", &self.quantity)
            .field("allocs", &self.allocs)
            .field("backordered", &self.backordered())
            .finish()
    }
}

/// What few parts have: an order reference, a grant short of what was asked, an end. Absent
/// (`None`, no allocation) for the usual hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PartRare {
    ended_at: TimeMs,
    order_ref: Option<String>,
    granted: Granted,
}

/// The part of a reservation on one shard. Every part of a reservation has the same header.
///
/// Every hold is a part in the slab, so its size is the memory each reservation takes (and on
/// a virtual machine, the fresh pages the kernel clears): what the usual hold does not need
/// (an order reference, a partial grant, an end time) is behind one pointer it leaves empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub tenant: u32,
    pub channel: ChanIdx,
    pub lifecycle: Lifecycle,
    pub created_at: TimeMs,
    pub expires_at: TimeMs,
    pub lines: LineHeaders,
    /// `None` exactly when the part has no order reference, every line is granted in full
    /// and it has not ended.
    rare: Option<Box<PartRare>>,
    /// Most parts hold one item (a single-line reservation, or one line per shard): inline.
    pub items: OneOrMany<PartItem>,
}

/// The SKU of an item with `component` on `line` of `lines` (the part's): the component's, or
/// the line's. [`PartItem::sku`], for a caller that holds the item's fields apart.
pub fn item_sku<'a>(
    component: Option<&'a Component>,
    line: u16,
    lines: &'a [LineHeader],
) -> &'a Sku {
    match component {
        Some(c) => &c.sku,
        None => &lines[usize::from(line)].sku,
    }
}

impl PartItem {
    #[inline]
    pub fn new(
        item: u16,
        line: u16,
        slot: u16,
        component: Option<Component>,
        quantity: i64,
        allocs: OneOrMany<Alloc>,
    ) -> PartItem {
        PartItem {
            item,
            line,
            slot,
            quantity,
            allocs,
            rare: component.map(|c| {
                Box::new(ItemRare {
                    component: Some(c),
                    backordered: 0,
                })
            }),
        }
    }
    /// The item's SKU: its component's, or the SKU of its line in `lines` (the part's).
    pub fn sku<'a>(&'a self, lines: &'a [LineHeader]) -> &'a Sku {
        item_sku(self.component(), self.line, lines)
    }
    /// `Some` exactly when the item's line is a bundle.
    pub fn component(&self) -> Option<&Component> {
        self.rare.as_ref().and_then(|r| r.component.as_ref())
    }
    /// The item's SKU (as [`PartItem::sku`]) next to its allocations and units granted, to
    /// change while the SKU is read.
    pub fn sku_and_units_mut<'a>(
        &'a mut self,
        lines: &'a [LineHeader],
    ) -> (&'a Sku, &'a mut OneOrMany<Alloc>, &'a mut i64) {
        let component = self.rare.as_ref().and_then(|r| r.component.as_ref());
        (
            item_sku(component, self.line, lines),
            &mut self.allocs,
            &mut self.quantity,
        )
    }
    /// Units of the item's SKU per unit of its line.
    pub fn per_unit(&self) -> i64 {
        self.component().map_or(1, |c| c.per_unit)
    }
    /// Units not served: a short pick's, or an allocation's under a backorder fill policy.
    pub fn backordered(&self) -> i64 {
        self.rare.as_ref().map_or(0, |r| r.backordered)
    }
    pub fn set_backordered(&mut self, units: i64) {
        if units == self.backordered() {
            return;
        }
        self.rare.get_or_insert_with(Box::default).backordered = units;
        if self.rare.as_deref() == Some(&ItemRare::default()) {
            self.rare = None;
        }
    }
}

impl Part {
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn new(
        tenant: u32,
        channel: ChanIdx,
        lifecycle: Lifecycle,
        created_at: TimeMs,
        expires_at: TimeMs,
        order_ref: Option<String>,
        lines: LineHeaders,
        granted: Granted,
        items: OneOrMany<PartItem>,
    ) -> Part {
        // The usual hold has neither: nothing is allocated for it.
        let rare = (order_ref.is_some() || granted != Granted::FULL).then(|| {
            Box::new(PartRare {
                ended_at: 0,
                order_ref,
                granted,
            })
        });
        Part {
            tenant,
            channel,
            lifecycle,
            created_at,
            expires_at,
            lines,
            rare,
            items,
        }
    }
    /// Drops an empty `rare`, so that equal parts compare equal however they got there.
    fn tidy(&mut self) {
        if self.rare.as_deref() == Some(&PartRare::default()) {
            self.rare = None;
        }
    }
    fn rare_mut(&mut self) -> &mut PartRare {
        self.rare.get_or_insert_with(Box::default)
    }
    /// When the part was released, expired or cancelled; 0 while it lives.
    pub fn ended_at(&self) -> TimeMs {
        self.rare.as_ref().map_or(0, |r| r.ended_at)
    }
    pub fn set_ended_at(&mut self, at: TimeMs) {
        self.rare_mut().ended_at = at;
        self.tidy();
    }
    pub fn order_ref(&self) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.order_ref.as_deref())
    }
    /// Units granted per line (of `lines`).
    pub fn granted(&self) -> &Granted {
        static FULL: Granted = Granted::FULL;
        self.rare.as_ref().map_or(&FULL, |r| &r.granted)
    }
    pub fn set_granted(&mut self, granted: Granted) {
        self.rare_mut().granted = granted;
        self.tidy();
    }
    pub fn open_units(&self) -> i64 {
        self.items
            .iter()
            .flat_map(|i| &i.allocs)
            .map(|a| a.open)
            .sum()
    }
    pub fn shipped_units(&self) -> i64 {
        self.items
            .iter()
            .flat_map(|i| &i.allocs)
            .map(|a| a.shipped())
            .sum()
    }
    pub fn backordered_units(&self) -> i64 {
        self.items.iter().map(|i| i.backordered()).sum()
    }
    pub fn prep(&self) -> PartPrep {
        PartPrep {
            lifecycle: self.lifecycle,
            expires_at: self.expires_at,
            lines: self.lines.clone(),
            granted: self.granted().clone(),
            open_units: self.open_units(),
            shipped_units: self.shipped_units(),
            backordered_units: self.backordered_units(),
            checks: Vec::new(),
        }
    }
}

/// A part as shown in a reservation view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSnapshot {
    pub part: Part,
}

/// Parts per chunk of the slab: chunks are never moved once allocated, so growing the store
/// copies no part.
const PART_CHUNK: usize = 4096;
/// Ids per chunk of the dense part of [`IdIndex`] (16 KiB of slots).
const ID_CHUNK: usize = 4096;
/// Chunks the dense part spans before a sparse chunk at its front moves to the map: 4,194,304
/// ids, 16 MiB of slots at most for chunks that are mostly empty.
const ID_WINDOW_CHUNKS: usize = 1024;
/// A slot number that names no part.
const NO_SLOT: u32 = u32::MAX;

type IdChunk = Arc<[u32]>;

/// The id -> slot index of [`Parts`]. Reservation ids are sequence numbers, given in increasing
/// order, so recent ids live in a dense array indexed by `id - base`, in chunks of
/// [`ID_CHUNK`] slots: an insert writes next to the last one, with nothing to hash, probe or
/// resize. (A hash table keyed by id cost about a sixth of a shard's time in W1, mostly cache
/// misses in its probe.) A shard sees only its own reservations' ids, so with N shards about
/// 1/N of the slots are used; the chunks at the front are dropped when empty, and a chunk at
/// the front that is less than a quarter used while the dense part spans more than
/// [`ID_WINDOW_CHUNKS`] moves its few entries to a map, so old long-lived reservations never
/// pin a growing array. A clone copies the chunks' pointers (and the map); a chunk still
/// shared with a snapshot's copy is copied when it is next written.
#[derive(Clone, Debug, Default)]
struct IdIndex {
    /// Chunk number (id / ID_CHUNK) of `chunks[0]`.
    first: u64,
    /// `None`: a chunk with no entry.
    chunks: VecDeque<Option<IdChunk>>,
    /// Entries in each chunk.
    live: VecDeque<u32>,
    sparse: Arc<FxHashMap<u64, u32>>,
    len: usize,
}

impl IdIndex {
    fn new() -> Self {
        Self::default()
    }

    /// The position of `id` in the dense part, if it falls in it.
    fn dense_at(&self, id: u64) -> Option<(usize, usize)> {
        let c = (id / ID_CHUNK as u64).checked_sub(self.first)?;
        ((c as usize) < self.chunks.len()).then_some((c as usize, (id % ID_CHUNK as u64) as usize))
    }

    /// Every id with its slot: the dense part in increasing id order, then the map's.
    fn iter(&self) -> impl Iterator<Item = (ReservationId, u32)> + '_ {
        let dense = self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            let base = (self.first + c as u64) * ID_CHUNK as u64;
            chunk.iter().flat_map(move |ch| {
                ch.iter()
                    .enumerate()
                    .filter(|&(_, &s)| s != NO_SLOT)
                    .map(move |(i, &s)| (ReservationId(base + i as u64), s))
            })
        });
        dense.chain(self.sparse.iter().map(|(&id, &s)| (ReservationId(id), s)))
    }

    fn get(&self, id: &ReservationId) -> Option<u32> {
        match self.dense_at(id.0) {
            Some((c, i)) => self.chunks[c]
                .as_ref()
                .map(|ch| ch[i])
                .filter(|&s| s != NO_SLOT),
            None => self.sparse.get(&id.0).copied(),
        }
    }

    /// Records `slot` for `id`, which has no entry yet.
    fn insert(&mut self, id: ReservationId, slot: u32) {
        let c = id.0 / ID_CHUNK as u64;
        if self.chunks.is_empty() {
            self.first = c;
        }
        if c < self.first {
            Arc::make_mut(&mut self.sparse).insert(id.0, slot);
            self.len += 1;
            return;
        }
        let at = (c - self.first) as usize;
        if at >= self.chunks.len() + ID_WINDOW_CHUNKS {
            // A jump far ahead (forced sequence numbers): the dense part moves to the map.
            self.spill_front(self.chunks.len());
            self.first = c;
        }
        let at = (c - self.first) as usize;
        while self.chunks.len() <= at {
            self.chunks.push_back(None);
            self.live.push_back(0);
        }
        let chunk = self.chunks[at].get_or_insert_with(|| Arc::from(vec![NO_SLOT; ID_CHUNK]));
        Arc::make_mut(chunk)[(id.0 % ID_CHUNK as u64) as usize] = slot;
        self.live[at] += 1;
        self.len += 1;
        while self.chunks.len() > ID_WINDOW_CHUNKS && (self.live[0] as usize) * 4 < ID_CHUNK {
            self.spill_front(1);
        }
    }

    fn remove(&mut self, id: &ReservationId) -> Option<u32> {
        let Some((c, i)) = self.dense_at(id.0) else {
            // Looked up first: the map is not copied away from a snapshot for an id it lacks.
            self.sparse.get(&id.0)?;
            let slot = Arc::make_mut(&mut self.sparse).remove(&id.0)?;
            self.len -= 1;
            return Some(slot);
        };
        let chunk = self.chunks[c].as_mut()?;
        if chunk[i] == NO_SLOT {
            return None;
        }
        let slot = std::mem::replace(&mut Arc::make_mut(chunk)[i], NO_SLOT);
        self.live[c] -= 1;
        self.len -= 1;
        if self.live[c] == 0 {
            self.chunks[c] = None;
        }
        self.drop_empty_front();
        Some(slot)
    }

    /// Moves the entries of the first `n` chunks of the dense part to the map.
    fn spill_front(&mut self, n: usize) {
        for _ in 0..n {
            let (Some(chunk), Some(_)) = (self.chunks.pop_front(), self.live.pop_front()) else {
                break;
            };
            if let Some(chunk) = chunk {
                let base = self.first * ID_CHUNK as u64;
                let sparse = Arc::make_mut(&mut self.sparse);
                for (i, &slot) in chunk.iter().enumerate() {
                    if slot != NO_SLOT {
                        sparse.insert(base + i as u64, slot);
                    }
                }
            }
            self.first += 1;
        }
        self.drop_empty_front();
    }

    /// Drops the chunks with no entry at the front of the dense part.
    fn drop_empty_front(&mut self) {
        while self.live.front() == Some(&0) {
            self.chunks.pop_front();
            self.live.pop_front();
            self.first += 1;
        }
    }
}

/// The reservation parts of one shard: a slab of parts in fixed-size chunks (no part is ever
/// moved by growth) and an id -> slot index ([`IdIndex`]) whose entries are 16 bytes, so a
/// resize of the index moves little. Lookups behave as a map keyed by reservation id. A slot
/// holds only its part (its id is in the index; iteration goes through the index), so a free
/// slot is `None` in the part's own niche. Iteration order must not be relied on (callers sort).
#[derive(Clone, Debug)]
pub struct Parts {
    index: IdIndex,
    /// Shared with the copy a snapshot takes ([`Parts::clone`] copies only the pointers): a
    /// chunk still shared is copied when it is first written (copy on write), so the pause of
    /// a snapshot does not copy every part.
    chunks: Vec<Arc<Chunk>>,
    free: Vec<u32>,
}

type Chunk = Vec<Option<Part>>;

/// Chunk `c` for writing: copied first (with room for `cap` entries) if a snapshot's copy
/// still shares it.
fn cow_chunk<T: Clone>(chunks: &mut [Arc<Vec<T>>], c: usize, cap: usize) -> &mut Vec<T> {
    let chunk = &mut chunks[c];
    if Arc::get_mut(chunk).is_none() {
        let mut own = Vec::with_capacity(cap);
        own.extend_from_slice(chunk);
        *chunk = Arc::new(own);
    }
    Arc::get_mut(chunk).expect("the chunk was just made unique")
}

fn chunk_mut(chunks: &mut [Arc<Chunk>], c: usize) -> &mut Chunk {
    cow_chunk(chunks, c, PART_CHUNK)
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            index: IdIndex::new(),
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl Parts {
    fn slot(&self, i: u32) -> &Option<Part> {
        let i = i as usize;
        &self.chunks[i / PART_CHUNK][i % PART_CHUNK]
    }
    fn slot_mut(&mut self, i: u32) -> &mut Option<Part> {
        let i = i as usize;
        &mut chunk_mut(&mut self.chunks, i / PART_CHUNK)[i % PART_CHUNK]
    }
    pub fn len(&self) -> usize {
        self.index.len
    }
    pub fn is_empty(&self) -> bool {
        self.index.len == 0
    }
    pub fn get(&self, id: &ReservationId) -> Option<&Part> {
        let i = self.index.get(id)?;
        self.slot(i).as_ref()
    }
    pub fn get_mut(&mut self, id: &ReservationId) -> Option<&mut Part> {
        let i = self.index.get(id)?;
        self.slot_mut(i).as_mut()
    }
    pub fn contains_key(&self, id: &ReservationId) -> bool {
        self.index.get(id).is_some()
    }
    /// Inserts or replaces the part of `id`.
    pub fn insert(&mut self, id: ReservationId, part: Part) {
        if let Some(i) = self.index.get(&id) {
            *self.slot_mut(i) = Some(part);
            return;
        }
        self.insert_new(id, part);
    }
    /// [`Parts::insert`] of an id the shard does not hold (a new reservation's): not looked up
    /// first.
    pub fn insert_new(&mut self, id: ReservationId, part: Part) {
        debug_assert!(!self.contains_key(&id), "{id} is already held");
        // The part is moved once, into its slot.
        let i = match self.free.pop() {
            Some(i) => {
                let s = i as usize;
                chunk_mut(&mut self.chunks, s / PART_CHUNK)[s % PART_CHUNK] = Some(part);
                i
            }
            None => {
                let n = self.chunks.last().map_or(PART_CHUNK, |c| c.len());
                if n == PART_CHUNK {
                    self.chunks.push(Arc::new(Vec::with_capacity(PART_CHUNK)));
                }
                let last = self.chunks.len() - 1;
                let chunk = chunk_mut(&mut self.chunks, last);
                chunk.push(Some(part));
                (last * PART_CHUNK + chunk.len() - 1) as u32
            }
        };
        self.index.insert(id, i);
    }
    pub fn remove(&mut self, id: &ReservationId) -> Option<Part> {
        let i = self.index.remove(id)?;
        self.free.push(i);
        self.slot_mut(i).take()
    }
    /// Every part with its id, through the index (a slot does not keep its id: 8 bytes per
    /// hold); the dense ids in increasing order, then the map's in any order.
    pub fn iter(&self) -> impl Iterator<Item = (ReservationId, &Part)> {
        self.index.iter().filter_map(|(id, i)| {
            let part = self.slot(i).as_ref();
            debug_assert!(part.is_some(), "the index names a live slot");
            part.map(|p| (id, p))
        })
    }
}

impl<'a> IntoIterator for &'a Parts {
    type Item = (ReservationId, &'a Part);
    type IntoIter = Box<dyn Iterator<Item = (ReservationId, &'a Part)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl std::ops::Index<&ReservationId> for Parts {
    type Output = Part;
    fn index(&self, id: &ReservationId) -> &Part {
        self.get(id).expect("a part of this reservation")
    }
}

/// An empty SKU state for a tenant's configuration: the channel table only when rules need it.
fn new_sku_state(cfg: &TenantConfig) -> impl FnOnce() -> SkuState + '_ {
    move || SkuState {
        chans: if cfg.rules.is_empty() {
            Box::default()
        } else {
            vec![0; 2 * cfg.channels.len()].into_boxed_slice()
        },
        ..SkuState::default()
    }
}

/// SKUs per chunk of a shard's SKU slab.
const SKU_CHUNK: usize = 1024;

type SkuChunk = Vec<(SkuKey, SkuState)>;

/// The SKUs of one shard: their states in a dense slab, found through a table of 4-byte slot
/// numbers. A SKU is never removed. Compared with a map holding the states themselves, the part
/// of the table that stays empty (a hash table is kept at most 7/8 full, and is half that just
/// after it grows) costs 5 bytes per bucket instead of 73.
///
/// The slab is made of chunks of [`SKU_CHUNK`] states behind `Arc`, and the slot table is
/// behind an `Arc` too: a clone (the copy a snapshot takes during its pause) copies pointers
/// only. A chunk still shared is copied when it is next written; the slot table when the next
/// SKU is added (rare once a catalogue is loaded).
///
/// SKUs are placed in the slot table by a hash seeded at random per table (hashbrown's default):
/// SKU names are the merchants' text, and placed by a hash anyone can compute, a tenant could
/// load names that all share one probe sequence and slow every lookup on the shard. Nothing
/// depends on the placement: iteration follows the slab, in the order SKUs were added.
#[derive(Clone, Debug, Default)]
pub struct SkuTable {
    seed: hashbrown::DefaultHashBuilder,
    index: Arc<hashbrown::HashTable<u32>>,
    slab: Vec<Arc<SkuChunk>>,
    len: usize,
}

fn sku_hash(seed: &hashbrown::DefaultHashBuilder, tenant: u32, sku: &str) -> u64 {
    use std::hash::BuildHasher;
    seed.hash_one(SkuRef { tenant, sku })
}

impl SkuTable {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn entry(&self, i: usize) -> &(SkuKey, SkuState) {
        &self.slab[i / SKU_CHUNK][i % SKU_CHUNK]
    }
    fn entry_mut(&mut self, i: usize) -> &mut (SkuKey, SkuState) {
        &mut cow_chunk(&mut self.slab, i / SKU_CHUNK, SKU_CHUNK)[i % SKU_CHUNK]
    }
    /// Buckets of the slot table and capacity of the slab (for memory accounting).
    pub fn capacity(&self) -> (usize, usize) {
        let cap = self.index.capacity();
        // hashbrown: capacity = buckets * 7 / 8 (buckets >= 8, a power of two).
        let buckets = if cap == 0 {
            0
        } else {
            (cap * 8 / 7).next_power_of_two()
        };
        (buckets, self.slab.iter().map(|c| c.capacity()).sum())
    }
    fn find(&self, r: &SkuRef<'_>) -> Option<usize> {
        self.index
            .find(sku_hash(&self.seed, r.tenant, r.sku), |&i| {
                r.equivalent(&self.entry(i as usize).0)
            })
            .map(|&i| i as usize)
    }
    pub fn get(&self, r: &SkuRef<'_>) -> Option<&SkuState> {
        self.slot(r).map(|(_, st)| st)
    }
    /// The state of `r` and its slot. A slot stays the SKU's for the life of the table (SKUs
    /// are never removed), so [`SkuTable::at_mut`] can reach it again without a lookup.
    pub fn slot(&self, r: &SkuRef<'_>) -> Option<(u32, &SkuState)> {
        self.find(r).map(|i| (i as u32, &self.entry(i).1))
    }
    /// The key in `slot`, if the table has that slot.
    pub fn key_at(&self, slot: u32) -> Option<&SkuKey> {
        let i = slot as usize;
        (i < self.len).then(|| &self.entry(i).0)
    }
    /// The state in `slot`, which [`SkuTable::slot`] returned.
    pub fn at_mut(&mut self, slot: u32) -> &mut SkuState {
        &mut self.entry_mut(slot as usize).1
    }
    pub fn get_mut(&mut self, r: &SkuRef<'_>) -> Option<&mut SkuState> {
        self.find(r).map(|i| &mut self.entry_mut(i).1)
    }
    /// The state of `r`, created with `f` when missing.
    pub fn get_or_insert_with(
        &mut self,
        r: SkuRef<'_>,
        f: impl FnOnce() -> SkuState,
    ) -> &mut SkuState {
        let i = match self.find(&r) {
            Some(i) => i,
            None => self.push(SkuKey::from(&r), f()),
        };
        &mut self.entry_mut(i).1
    }
    /// Inserts or replaces the state of `key`.
    pub fn insert(&mut self, key: SkuKey, st: SkuState) {
        let r = SkuRef {
            tenant: key.tenant,
            sku: &key.sku,
        };
        match self.find(&r) {
            Some(i) => self.entry_mut(i).1 = st,
            None => {
                self.push(key, st);
            }
        }
    }
    fn push(&mut self, key: SkuKey, st: SkuState) -> usize {
        let i = self.len;
        let seed = self.seed.clone();
        let hash = sku_hash(&seed, key.tenant, &key.sku);
        if i % SKU_CHUNK == 0 {
            self.slab.push(Arc::new(Vec::with_capacity(SKU_CHUNK)));
        }
        let last = self.slab.len() - 1;
        cow_chunk(&mut self.slab, last, SKU_CHUNK).push((key, st));
        self.len += 1;
        let slab = &self.slab;
        Arc::make_mut(&mut self.index).insert_unique(hash, i as u32, |&j| {
            let k = &slab[j as usize / SKU_CHUNK][j as usize % SKU_CHUNK].0;
            sku_hash(&seed, k.tenant, &k.sku)
        });
        i
    }
    pub fn iter(&self) -> impl Iterator<Item = (&SkuKey, &SkuState)> {
        self.slab.iter().flat_map(|c| c.iter()).map(|(k, s)| (k, s))
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&SkuKey, &mut SkuState)> {
        let chunks = self.slab.len();
        (0..chunks).for_each(|c| {
            cow_chunk(&mut self.slab, c, SKU_CHUNK);
        });
        self.slab
            .iter_mut()
            .flat_map(|c| Arc::get_mut(c).expect("made unique above").iter_mut())
            .map(|(k, s)| (&*k, s))
    }
}

impl<'a> IntoIterator for &'a SkuTable {
    type Item = (&'a SkuKey, &'a SkuState);
    type IntoIter = Box<dyn Iterator<Item = (&'a SkuKey, &'a SkuState)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A shard: SKUs, parts and timers.
#[derive(Clone, Debug)]
pub struct ShardState {
    pub index: usize,
    pub shards: usize,
    pub holds_max: usize,
    pub ended_retention_ms: u64,
    pub tenants: Vec<Arc<TenantConfig>>,
    pub skus: SkuTable,
    pub parts: Parts,
    /// Holds by expiry time.
    pub expiry: Timers,
    /// Ended parts by the time they may be dropped.
    pub purge: Timers,
}

impl ShardState {
    /// The earliest time a tick may have work on this shard (a hold to expire, an ended
    /// reservation or idempotency record to drop), or `TimeMs::MAX` when there is none.
    pub fn next_due(&self) -> TimeMs {
        let e = self.expiry.first_at().unwrap_or(TimeMs::MAX);
        let p = self.purge.first_at().unwrap_or(TimeMs::MAX);
        e.min(p)
    }

    pub fn new(index: usize, shards: usize, holds_max: usize, ended_retention_ms: u64) -> Self {
        ShardState {
            index,
            shards,
            holds_max,
            ended_retention_ms,
            tenants: Vec::new(),
            skus: SkuTable::default(),
            parts: Parts::default(),
            expiry: Timers::default(),
            purge: Timers::default(),
        }
    }

    /// A copy for building a state image ([`crate::snapshot::take`]) while this shard goes on:
    /// the parts' chunks are shared (copied when next written), and the timers, which an image
    /// does not hold (they are rebuilt when it is loaded), are left out.
    pub fn image_copy(&self) -> ShardState {
        ShardState {
            index: self.index,
            shards: self.shards,
            holds_max: self.holds_max,
            ended_retention_ms: self.ended_retention_ms,
            tenants: self.tenants.clone(),
            skus: self.skus.clone(),
            parts: self.parts.clone(),
            expiry: Timers::default(),
            purge: Timers::default(),
        }
    }

    pub fn owns(&self, tenant: u32, sku: &str) -> bool {
        shard_of(tenant, sku, self.shards) == self.index
    }

    /// [`ShardState::owns`] for an item of a reservation, by the shard the front found.
    pub fn owns_item(&self, tenant: u32, item: &crate::job::ItemReq) -> bool {
        debug_assert_eq!(
            usize::from(item.shard) == self.index,
            self.owns(tenant, item.sku.as_str()),
            "the front and the shard agree on the owner of {}",
            item.sku
        );
        usize::from(item.shard) == self.index
    }

    pub fn config(&self, tenant: u32) -> &Arc<TenantConfig> {
        &self.tenants[tenant as usize]
    }

    pub fn sku(&self, tenant: u32, sku: &str) -> Option<&SkuState> {
        self.skus.get(&SkuRef { tenant, sku })
    }

    pub fn sku_mut(&mut self, tenant: u32, sku: &str) -> &mut SkuState {
        let empty = new_sku_state(&self.tenants[tenant as usize]);
        self.skus.get_or_insert_with(SkuRef { tenant, sku }, empty)
    }

    /// Installs a tenant's new configuration and recomputes the ATS of its SKUs.
    pub fn set_config(&mut self, config: Arc<TenantConfig>) {
        let t = config.tenant_idx as usize;
        if self.tenants.len() <= t {
            self.tenants.resize_with(t + 1, Default::default);
        }
        self.tenants[t] = config.clone();
        let n = config.channels.len();
        // Rules installed where there were none: rebuild the held counts the SKUs did not keep.
        // held(SKU, channel) = open units of the live (held or committed) parts of the channel.
        let rebuild = !config.rules.is_empty()
            && self
                .skus
                .iter()
                .any(|(k, st)| k.tenant == config.tenant_idx && st.chans.is_empty() && n > 0);
        let mut held: HashMap<(&str, ChanIdx), i64, FxBuildHasher> = HashMap::default();
        if rebuild {
            for (_, p) in self.parts.iter() {
                if p.tenant != config.tenant_idx || p.lifecycle.ended() {
                    continue;
                }
                for item in &p.items {
                    let open: i64 = item.allocs.iter().map(|a| a.open).sum();
                    *held
                        .entry((item.sku(&p.lines).as_str(), p.channel))
                        .or_default() += open;
                }
            }
        }
        for (key, st) in self.skus.iter_mut() {
            if key.tenant == config.tenant_idx {
                if rebuild && st.chans.is_empty() {
                    st.resize(n);
                    for c in 0..n {
                        let h = held.get(&(&*key.sku, c as ChanIdx)).copied().unwrap_or(0);
                        *st.held_mut(c as ChanIdx) = h;
                    }
                }
                // The SKU id only matters to rules that target it.
                let sku = Sku::new(&key.sku).expect("stored SKU ids are valid");
                st.refresh(&config, &sku);
            }
        }
    }

    /// Recomputes the ATS of one SKU after a change.
    pub fn refresh(&mut self, tenant: u32, sku: &Sku) {
        // Borrow the config rather than clone its `Arc`: the count is shared by all shards.
        let cfg = &self.tenants[tenant as usize];
        if let Some(st) = self.skus.get_mut(&SkuRef {
            tenant,
            sku: sku.as_str(),
        }) {
            st.refresh(cfg, sku);
        }
    }

    /// The tenant's config and the SKU's state (created empty when missing), in one lookup.
    pub fn sku_entry(&mut self, tenant: u32, sku: &str) -> (&TenantConfig, &mut SkuState) {
        let cfg = &self.tenants[tenant as usize];
        let st = self
            .skus
            .get_or_insert_with(SkuRef { tenant, sku }, new_sku_state(cfg));
        (cfg, st)
    }

    /// As [`ShardState::sku_entry`], through the slot where preparing found the SKU when it
    /// did. The slot's key is compared (it sits next to the state, so this costs no lookup);
    /// a slot that does not hold the SKU falls back to the lookup.
    pub fn sku_entry_at(
        &mut self,
        tenant: u32,
        sku: &str,
        slot: Option<u32>,
    ) -> (&TenantConfig, &mut SkuState) {
        let slot = slot.filter(|&s| {
            self.skus
                .key_at(s)
                .is_some_and(|k| k.tenant == tenant && *k.sku == *sku)
        });
        match slot {
            Some(slot) => (&self.tenants[tenant as usize], self.skus.at_mut(slot)),
            None => self.sku_entry(tenant, sku),
        }
    }

    /// Changes a level with `f` and refreshes the SKU's ATS.
    pub fn with_level<R>(
        &mut self,
        tenant: u32,
        sku: &Sku,
        loc: LocIdx,
        f: impl FnOnce(&mut Level) -> R,
    ) -> R {
        let (cfg, st) = self.sku_entry(tenant, sku.as_str());
        let r = f(st.level_mut(loc));
        st.refresh(cfg, sku);
        r
    }

    /// Moves `q` units of a reservation's holds or commitments at (sku, loc) with `f`, and keeps
    /// the channel's held count in step.
    pub fn adjust_held(&mut self, tenant: u32, sku: &Sku, c: ChanIdx, delta: i64) {
        self.sku_mut(tenant, sku.as_str()).add_held(c, delta);
    }

    pub fn live_parts(&self) -> usize {
        self.parts.len()
    }

    /// Reads a bucket of a level for `move`.
    pub fn bucket(level: &Level, b: Bucket) -> i64 {
        match b {
            Bucket::Available => level.available(),
            Bucket::Damaged => level.damaged,
            Bucket::QualityControl => level.quality_control,
            Bucket::SafetyStock => level.safety_stock,
        }
    }

    pub fn bucket_mut(level: &mut Level, b: Bucket) -> Option<&mut i64> {
        match b {
            Bucket::Available => None,
            Bucket::Damaged => Some(&mut level.damaged),
            Bucket::QualityControl => Some(&mut level.quality_control),
            Bucket::SafetyStock => Some(&mut level.safety_stock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Granted, LineHeader, LineHeaders};

    fn part(n: u64) -> Part {
        Part::new(
            0,
            0,
            Lifecycle::Held,
            n,
            n + 1,
            None,
            LineHeaders::One([LineHeader::new(Sku::new("MUG").expect("valid"), 1, false)]),
            Granted::default(),
            OneOrMany::new(),
        )
    }

    /// Every hold is a part in the slab: its size is the memory (and the fresh pages) each
    /// reservation costs. A plain item keeps no SKU of its own; what few parts and items have
    /// is boxed.
    #[test]
    fn a_part_stays_small() {
        assert!(size_of::<Part>() <= 112, "{}", size_of::<Part>());
        // A free slot is `None` in the part's own niche: no tag, no id.
        assert_eq!(size_of::<Option<Part>>(), size_of::<Part>());
        assert!(size_of::<PartItem>() <= 48, "{}", size_of::<PartItem>());
        assert!(size_of::<Alloc>() <= 24, "{}", size_of::<Alloc>());
        // The lists of items and of allocations are as large as one element.
        assert_eq!(size_of::<OneOrMany<PartItem>>(), size_of::<PartItem>());
        assert_eq!(size_of::<OneOrMany<Alloc>>(), size_of::<Alloc>());
    }

    /// The usual hold allocates nothing of its own; a part or an item that gains a rare field
    /// and loses it again is equal to one that never had it (the state digest and the model
    /// test compare parts).
    #[test]
    fn rare_fields_are_boxed_only_while_set() {
        let plain = part(1);
        assert!(plain.rare.is_none());
        assert_eq!(
            (plain.ended_at(), plain.order_ref(), plain.granted()),
            (0, None, &Granted::FULL)
        );
        let mut p = plain.clone();
        p.set_ended_at(7);
        assert_eq!(p.ended_at(), 7);
        assert_ne!(p, plain);
        p.set_ended_at(0);
        assert_eq!(p, plain);
        assert!(p.rare.is_none());
        let partial = Granted::new(&p.lines, &[0]);
        p.set_granted(partial.clone());
        assert_eq!(p.granted(), &partial);
        assert_eq!(p.granted().get(&p.lines, 0), 0);
        p.set_granted(Granted::FULL);
        assert_eq!(p, plain);
        let with_ref = Part::new(
            0,
            0,
            Lifecycle::Held,
            1,
            2,
            Some("order-9".into()),
            plain.lines.clone(),
            Granted::FULL,
            OneOrMany::new(),
        );
        assert_eq!(with_ref.order_ref(), Some("order-9"));
        let mut with_ref_ended = with_ref.clone();
        with_ref_ended.set_ended_at(5);
        with_ref_ended.set_ended_at(0);
        assert_eq!(with_ref_ended, with_ref);
        assert_eq!(with_ref.order_ref(), Some("order-9"));

        let item = PartItem::new(0, 0, 0, None, 3, OneOrMany::new());
        assert!(item.rare.is_none());
        let mut short = item.clone();
        short.set_backordered(2);
        assert_eq!(short.backordered(), 2);
        assert_ne!(short, item);
        short.set_backordered(0);
        assert_eq!(short, item);
        assert!(short.rare.is_none());
        let comp = Component {
            sku: Sku::new("SAUCER").expect("valid"),
            per_unit: 2,
        };
        let mut bundled = PartItem::new(0, 0, 0, Some(comp.clone()), 3, OneOrMany::new());
        bundled.set_backordered(4);
        bundled.set_backordered(0);
        assert_eq!(bundled.component(), Some(&comp));
        assert_eq!(
            bundled,
            PartItem::new(0, 0, 0, Some(comp), 3, OneOrMany::new())
        );
    }

    /// An allocation boxes its shipped and returned units only while one is not zero, and
    /// prints as the struct of four fields it was.
    #[test]
    fn an_allocation_boxes_what_shipped() {
        let held = Alloc::new(3, 5, 0, 0);
        assert!(held.done.is_none());
        assert_eq!((held.shipped(), held.returned()), (0, 0));
        let mut a = held.clone();
        a.open -= 2;
        a.ship(2);
        a.take_back(1);
        assert_eq!((a.open, a.shipped(), a.returned()), (3, 2, 1));
        assert_eq!(a, Alloc::new(3, 3, 2, 1));
        a.ship(0);
        assert_eq!(a, Alloc::new(3, 3, 2, 1));
        assert_eq!(
            format!("{a:?}"),
            "Alloc { loc: 3, open: 3, shipped: 2, returned: 1 }"
        );
        let mut none = held.clone();
        none.ship(0);
        none.take_back(0);
        assert_eq!(none, held);
        assert!(none.done.is_none());
    }

    /// The digest prints an item as it printed the struct of seven fields.
    #[test]
    fn an_item_prints_as_before() {
        let mut item = PartItem::new(1, 0, 2, None, 3, OneOrMany::new());
        item.set_backordered(1);
        assert_eq!(
            format!("{item:?}"),
            "PartItem { item: 1, line: 0, slot: 2, component: None, quantity: 3, allocs: [], \
             backordered: 1 }"
        );
    }

    /// A plain line's item is its line's SKU, one unit per unit; a component names its own.
    #[test]
    fn an_item_finds_its_sku() {
        let p = part(1);
        let plain = PartItem::new(0, 0, 0, None, 1, OneOrMany::new());
        assert_eq!(plain.sku(&p.lines).as_str(), "MUG");
        assert_eq!(plain.per_unit(), 1);
        let component = PartItem::new(
            0,
            0,
            0,
            Some(Component {
                sku: Sku::new("SAUCER").expect("valid"),
                per_unit: 2,
            }),
            1,
            OneOrMany::new(),
        );
        assert_eq!(component.sku(&p.lines).as_str(), "SAUCER");
        assert_eq!(component.per_unit(), 2);
    }

    fn contents(p: &Parts) -> Vec<(u64, TimeMs)> {
        let mut v: Vec<_> = p.iter().map(|(id, p)| (id.0, p.created_at)).collect();
        v.sort_unstable();
        v
    }

    /// A copy shares the chunks; writes to either side after the copy (in place, removals,
    /// reuse of a freed slot, a new chunk) never show on the other side.
    #[test]
    fn a_copy_is_not_changed_by_later_writes() {
        let n = (PART_CHUNK * 2 + 10) as u64;
        let mut parts = Parts::default();
        for i in 0..n {
            parts.insert(ReservationId(i), part(i));
        }
        let before = contents(&parts);
        let copy = parts.clone();
        parts.get_mut(&ReservationId(3)).expect("held").created_at = 1_000_000;
        parts.remove(&ReservationId(PART_CHUNK as u64 + 1));
        parts.insert(ReservationId(n + 1), part(n + 1)); // reuses the freed slot
        for i in n + 2..n + 2 + PART_CHUNK as u64 {
            parts.insert(ReservationId(i), part(i)); // fills the last chunk, starts another
        }
        assert_eq!(contents(&copy), before);
        assert_eq!(copy.len(), n as usize);
        assert_eq!(copy.get(&ReservationId(3)).map(|p| p.created_at), Some(3));
        assert_eq!(
            parts.get(&ReservationId(3)).map(|p| p.created_at),
            Some(1_000_000)
        );
        assert!(parts.get(&ReservationId(PART_CHUNK as u64 + 1)).is_none());
        // The copy's index is its own too.
        assert!(copy.contains_key(&ReservationId(PART_CHUNK as u64 + 1)));
        assert!(!copy.contains_key(&ReservationId(n + 1)));
        assert!(parts.contains_key(&ReservationId(n + 1)));
        assert_eq!(parts.len(), n as usize + PART_CHUNK);
        // And the copy can be written without touching the original either.
        let mut copy = copy;
        copy.remove(&ReservationId(0));
        assert!(parts.get(&ReservationId(0)).is_some());
    }

    /// A slot found while preparing reaches the same SKU when applying; a slot that holds
    /// another SKU, or none, is not trusted: the lookup runs instead.
    #[test]
    fn a_sku_slot_is_used_only_when_it_holds_that_sku() {
        let mut shard = ShardState::new(0, 1, 100, 0);
        shard.tenants.push(Arc::new(TenantConfig::default()));
        shard.sku_entry(0, "MUG").1.pool = 5;
        shard.sku_entry(0, "CUP").1.pool = 7;
        let r = |sku| SkuRef { tenant: 0, sku };
        let (mug, st) = shard.skus.slot(&r("MUG")).expect("MUG is there");
        assert_eq!(st.pool, 5);
        let (cup, _) = shard.skus.slot(&r("CUP")).expect("CUP is there");
        assert_ne!(mug, cup);
        assert!(shard.skus.slot(&r("PLATE")).is_none());
        assert_eq!(shard.skus.key_at(cup).map(|k| &*k.sku), Some("CUP"));
        assert!(shard.skus.key_at(2).is_none());

        assert_eq!(shard.sku_entry_at(0, "MUG", Some(mug)).1.pool, 5);
        // Another SKU's slot, a slot out of range, another tenant's view of the slot: the lookup.
        assert_eq!(shard.sku_entry_at(0, "MUG", Some(cup)).1.pool, 5);
        assert_eq!(shard.sku_entry_at(0, "CUP", Some(99)).1.pool, 7);
        shard.tenants.push(Arc::new(TenantConfig::default()));
        assert_eq!(shard.sku_entry_at(1, "MUG", Some(mug)).1.pool, 0);
        assert_eq!(shard.skus.len(), 3, "tenant 1's MUG is a SKU of its own");
        assert_eq!(shard.sku_entry_at(0, "MUG", None).1.pool, 5);
    }

    /// Ids as a shard among many sees them (one in 40), held for a long time while later ones
    /// come and go: the dense part stays within its window (old sparse chunks move to the
    /// map), every id is still found, and removing everything leaves nothing behind.
    #[test]
    fn the_id_index_moves_old_sparse_ids_to_its_map() {
        let mut parts = Parts::default();
        let mut model = std::collections::BTreeMap::new();
        let span = (ID_CHUNK * (ID_WINDOW_CHUNKS + 300)) as u64;
        for id in (0..span).step_by(40) {
            parts.insert(ReservationId(id), part(id));
            model.insert(id, id);
            // Most reservations end soon; one in ten stays.
            if id >= 400 && (id / 40) % 10 != 0 {
                let old = id - 400;
                assert_eq!(
                    parts.remove(&ReservationId(old)).map(|p| p.created_at),
                    model.remove(&old)
                );
            }
        }
        assert!(
            parts.index.chunks.len() <= ID_WINDOW_CHUNKS + 1,
            "the dense part spans {} chunks",
            parts.index.chunks.len()
        );
        assert!(!parts.index.sparse.is_empty(), "nothing moved to the map");
        assert_eq!(parts.len(), model.len());
        for (&id, &at) in &model {
            assert_eq!(
                parts.get(&ReservationId(id)).map(|p| p.created_at),
                Some(at)
            );
        }
        // A jump far ahead moves the dense part to the map too.
        let far = span * 4;
        parts.insert(ReservationId(far), part(far));
        model.insert(far, far);
        for (&id, &at) in &model {
            assert_eq!(
                parts.get(&ReservationId(id)).map(|p| p.created_at),
                Some(at)
            );
        }
        for &id in model.keys() {
            assert!(parts.remove(&ReservationId(id)).is_some());
        }
        assert!(parts.is_empty());
        assert!(parts.index.chunks.is_empty());
        assert!(parts.index.sparse.is_empty());
    }

    /// Many ids, removed and inserted out of order, across many table resizes: the index
    /// answers as a map would.
    #[test]
    fn the_id_index_behaves_as_a_map() {
        let mut parts = Parts::default();
        let mut model = std::collections::BTreeMap::new();
        let mut x: u64 = 7;
        for step in 0..200_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = if step % 3 == 0 { x >> 40 } else { step };
            if x % 5 == 0 {
                let gone = parts.remove(&ReservationId(id)).map(|p| p.created_at);
                assert_eq!(gone, model.remove(&id));
            } else {
                parts.insert(ReservationId(id), part(step));
                model.insert(id, step);
            }
        }
        assert_eq!(parts.len(), model.len());
        for (&id, &at) in &model {
            assert_eq!(
                parts.get(&ReservationId(id)).map(|p| p.created_at),
                Some(at)
            );
        }
    }

    fn pools(t: &SkuTable) -> Vec<(String, i64)> {
        t.iter().map(|(k, s)| (k.sku.to_string(), s.pool)).collect()
    }

    /// SKU names chosen to share the start of their probe sequence under a hash anyone can
    /// compute (FxHash, low ten bits) are spread by the table's seeded hash, and found.
    #[test]
    fn sku_names_sharing_a_public_hash_do_not_share_a_probe_sequence() {
        use std::hash::BuildHasher;
        let fx = |sku: &str| FxBuildHasher.hash_one(SkuRef { tenant: 1, sku });
        let mut chosen = Vec::new();
        let mut i = 0u64;
        while chosen.len() < 64 {
            let sku = format!("SKU-{i}");
            if fx(&sku) % 1024 == 0 {
                chosen.push(sku);
            }
            i += 1;
        }
        let mut t = SkuTable::default();
        for (n, sku) in chosen.iter().enumerate() {
            let r = SkuRef { tenant: 1, sku };
            t.get_or_insert_with(r, SkuState::default).pool = n as i64;
        }
        let starts: std::collections::BTreeSet<u64> = chosen
            .iter()
            .map(|sku| sku_hash(&t.seed, 1, sku) % 1024)
            .collect();
        assert!(starts.len() > 32, "64 SKUs at {} starts", starts.len());
        for (n, sku) in chosen.iter().enumerate() {
            let r = SkuRef { tenant: 1, sku };
            assert_eq!(t.get(&r).map(|s| s.pool), Some(n as i64));
        }
        // Iteration follows the order SKUs were added, whatever the seed.
        let listed: Vec<String> = t.iter().map(|(k, _)| k.sku.to_string()).collect();
        assert_eq!(listed, chosen);
    }

    /// The same for the SKU slab: a copy keeps what it saw through writes in place, new SKUs
    /// (also in a new chunk), replacements and whole-table updates of the original.
    #[test]
    fn a_sku_table_copy_is_not_changed_by_later_writes() {
        let mut t = SkuTable::default();
        let n = SKU_CHUNK * 2 + 5;
        let name = |i: usize| format!("S{i}");
        for i in 0..n {
            let r = SkuRef {
                tenant: 1,
                sku: &name(i),
            };
            t.get_or_insert_with(r, SkuState::default).pool = i as i64;
        }
        let before = pools(&t);
        let copy = t.clone();
        let r = SkuRef {
            tenant: 1,
            sku: "S7",
        };
        t.get_mut(&r).expect("present").pool = -7;
        t.insert(
            SkuKey::from(&SkuRef {
                tenant: 1,
                sku: "S8",
            }),
            SkuState {
                pool: -8,
                ..SkuState::default()
            },
        );
        for i in n..n + SKU_CHUNK {
            let r = SkuRef {
                tenant: 1,
                sku: &name(i),
            };
            t.get_or_insert_with(r, SkuState::default).pool = i as i64;
        }
        for (_, st) in t.iter_mut() {
            st.pool += 1_000_000;
        }
        assert_eq!(pools(&copy), before);
        assert_eq!(copy.len(), n);
        assert_eq!(copy.get(&r).map(|s| s.pool), Some(7));
        assert_eq!(t.len(), n + SKU_CHUNK);
        assert_eq!(t.get(&r).map(|s| s.pool), Some(1_000_000 - 7));
        let s8 = SkuRef {
            tenant: 1,
            sku: "S8",
        };
        assert_eq!(t.get(&s8).map(|s| s.pool), Some(1_000_000 - 8));
        let last = name(n + SKU_CHUNK - 1);
        let r = SkuRef {
            tenant: 1,
            sku: &last,
        };
        assert!(copy.get(&r).is_none());
        assert_eq!(
            t.get(&r).map(|s| s.pool),
            Some(1_000_000 + (n + SKU_CHUNK - 1) as i64)
        );
    }
}
