//! One shard's state: the stock of the SKUs it owns, their per-channel ATS, the reservation
//! parts for those SKUs and their timers. Owned by exactly one thread at a time; every method
//! is a pure function of the state and its arguments.

use crate::ats::{self, Level};
use crate::command::Bucket;
use crate::config::{ChanIdx, LocIdx, TenantConfig};
use crate::ids::{ReservationId, Sku, TimeMs};
use crate::job::{LineHeader, PartPrep};
use crate::timers::Timers;
use hashbrown::{Equivalent, HashMap};
use rust_decimal::Decimal;
use rustc_hash::FxBuildHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Which shard owns (tenant, SKU): FNV-1a over the tenant index and the SKU bytes. Stable
/// across runs and platforms, so logs and snapshots do not depend on it.
pub fn shard_of(tenant: u32, sku: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.to_le_bytes().iter().chain(sku.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits are weak for short keys.
    ((h ^ (h >> 32)) % shards as u64) as usize
}

/// Map key: tenant index and SKU, stored compactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuKey {
    pub tenant: u32,
    pub sku: Box<str>,
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
            sku: Box::from(r.sku),
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
    /// units of this SKU reserved or committed per channel (for ring-fences).
    pub chans: Box<[i64]>,
    /// Weighted average unit cost of receipts.
    pub cost: Option<Box<Decimal>>,
}

impl SkuState {
    pub fn channels(&self) -> usize {
        self.chans.len() / 2
    }
    pub fn ats(&self, c: ChanIdx) -> i64 {
        self.chans.get(c as usize).copied().unwrap_or(0)
    }
    pub fn held(&self) -> &[i64] {
        &self.chans[self.channels()..]
    }
    pub fn held_mut(&mut self, c: ChanIdx) -> &mut i64 {
        let n = self.channels();
        &mut self.chans[n + c as usize]
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
        self.resize(n);
        if cfg.rules.is_empty() {
            // No rule distinguishes channels: ATS is the pool, or zero during an incident.
            let (mut pool, mut incident) = (0i64, false);
            for l in &self.levels {
                let a = l.available();
                incident |= a < 0;
                pool += a;
            }
            let v = if incident { 0 } else { pool.max(0) };
            self.chans[..n].fill(v);
            return;
        }
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alloc {
    pub loc: LocIdx,
    /// Held or committed and not shipped.
    pub open: i64,
    pub shipped: i64,
    pub returned: i64,
}

/// An item of a reservation whose SKU this shard owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartItem {
    pub item: u16,
    pub line: u16,
    pub slot: u16,
    pub sku: Sku,
    /// Units of this SKU per unit of the line.
    pub per_unit: i64,
    /// Units granted.
    pub quantity: i64,
    pub allocs: Vec<Alloc>,
    pub backordered: i64,
}

/// The part of a reservation on one shard. Every part of a reservation has the same header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub tenant: u32,
    pub channel: ChanIdx,
    pub lifecycle: Lifecycle,
    pub created_at: TimeMs,
    pub expires_at: TimeMs,
    pub ended_at: TimeMs,
    pub order_ref: Option<Box<str>>,
    pub lines: Arc<[LineHeader]>,
    /// Units granted per line.
    pub granted: Arc<[i64]>,
    pub items: Vec<PartItem>,
}

impl Part {
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
            .map(|a| a.shipped)
            .sum()
    }
    pub fn backordered_units(&self) -> i64 {
        self.items.iter().map(|i| i.backordered).sum()
    }
    pub fn prep(&self) -> PartPrep {
        PartPrep {
            lifecycle: self.lifecycle,
            expires_at: self.expires_at,
            lines: self.lines.clone(),
            granted: self.granted.clone(),
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

/// A shard: SKUs, parts and timers.
#[derive(Debug)]
pub struct ShardState {
    pub index: usize,
    pub shards: usize,
    pub holds_max: usize,
    pub ended_retention_ms: u64,
    pub tenants: Vec<Arc<TenantConfig>>,
    pub skus: HashMap<SkuKey, SkuState, FxBuildHasher>,
    pub parts: HashMap<ReservationId, Part, FxBuildHasher>,
    /// Holds by expiry time.
    pub expiry: Timers,
    /// Ended parts by the time they may be dropped.
    pub purge: Timers,
}

impl ShardState {
    pub fn new(index: usize, shards: usize, holds_max: usize, ended_retention_ms: u64) -> Self {
        ShardState {
            index,
            shards,
            holds_max,
            ended_retention_ms,
            tenants: Vec::new(),
            skus: HashMap::with_hasher(FxBuildHasher),
            parts: HashMap::with_hasher(FxBuildHasher),
            expiry: Timers::default(),
            purge: Timers::default(),
        }
    }

    pub fn owns(&self, tenant: u32, sku: &str) -> bool {
        shard_of(tenant, sku, self.shards) == self.index
    }

    pub fn config(&self, tenant: u32) -> &Arc<TenantConfig> {
        &self.tenants[tenant as usize]
    }

    pub fn sku(&self, tenant: u32, sku: &str) -> Option<&SkuState> {
        self.skus.get(&SkuRef { tenant, sku })
    }

    pub fn sku_mut(&mut self, tenant: u32, sku: &str) -> &mut SkuState {
        let n = self.tenants[tenant as usize].channels.len();
        self.skus
            .entry_ref(&SkuRef { tenant, sku })
            .or_insert_with(|| SkuState {
                chans: vec![0; 2 * n].into_boxed_slice(),
                ..SkuState::default()
            })
    }

    /// Installs a tenant's new configuration and recomputes the ATS of its SKUs.
    pub fn set_config(&mut self, config: Arc<TenantConfig>) {
        let t = config.tenant_idx as usize;
        if self.tenants.len() <= t {
            self.tenants.resize_with(t + 1, Default::default);
        }
        self.tenants[t] = config.clone();
        for (key, st) in self.skus.iter_mut() {
            if key.tenant == config.tenant_idx {
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
        let n = cfg.channels.len();
        let st = self
            .skus
            .entry_ref(&SkuRef { tenant, sku })
            .or_insert_with(|| SkuState {
                chans: vec![0; 2 * n].into_boxed_slice(),
                ..SkuState::default()
            });
        (cfg, st)
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
        *self.sku_mut(tenant, sku.as_str()).held_mut(c) += delta;
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
