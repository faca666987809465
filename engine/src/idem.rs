//! The remembered idempotency keys of all tenants.
//!
//! Millions of keys are remembered at once (a day of retention), and every keyed write looks
//! one up and inserts one on the front's single thread, so the table is built for that:
//!
//! - It is split into [`PARTS`] hash tables by the key's hash. A table that grows moves only
//!   its own part, so the pause of a growth step is bounded by a 256th of the keys instead of
//!   stopping every write while all of them move at once.
//! - A slot is small (16 bytes: the key's hash and a box holding the key and its entry, see
//!   [`Slot`]): the stored response is behind an `Arc`, and the key's text is one shared
//!   allocation that the expiry queue points at too. Copying the store (the pause of a
//!   snapshot) copies pointers, not responses. The slot keeps the key's hash, so a probe or a
//!   growth step reads the box only on a full-hash match. Four slots share a cache line, which
//!   lets a batch's keys be warmed before they are inserted ([`IdemStore::warm`]).
//! - Lookups take the key as `&str`: nothing is allocated to ask.
//!
//! - The tables are behind `Arc`: the copy a snapshot takes ([`IdemStore::image_copy`]) copies
//!   256 pointers. While a copy shares them, writes do not touch them: each change goes to a
//!   small table of changes of its part (the part's *delta*, `None` for a removed key) that
//!   lookups read first; once no copy shares the table, a writer with nothing else to do
//!   moves them into it a few dozen at a time ([`IdemStore::tidy`]), and each change of the
//!   part moves a few ([`DRAIN`]), until none are left. Copying each table on its first write
//!   instead (copy on write) copied them all within milliseconds of every snapshot, on the
//!   front's thread: with a million keys, about 90 MB and a fresh page fault every 4 KiB while
//!   writes waited, and a quarter of a snapshot's cost. The deltas cost what was written
//!   meanwhile. One delta for the whole store grew by doubling, every step moving all of it,
//!   and was applied by one write: under keyed load, the hundreds of thousands of changes made
//!   during a snapshot of a million keys held that write, and all behind it, for 100 to 300 ms.
//!   A part's whole delta applied by its first change did the same in 256 pieces, but those
//!   first changes come within a few milliseconds of each other under load: a snapshot's end
//!   still stopped the writes for 100 to 200 ms (`http_load --timeline`, keyed batches).
//!   Sixteen moved by each change spread that over more writes, but kept the writer busy
//!   with them for a few hundred milliseconds while the other threads waited for it; moved
//!   in its idle moments, a part after another, they cost the writes next to nothing.
//!
//! Expiry walks a queue in insertion order (time never goes back for sequenced writes), so it
//! never scans the table.

use crate::chunked::ChunkDeque;
use crate::ids::{Seq, TimeMs};
use crate::outcome::Response;
use crate::packed::StoredAnswer;
use hashbrown::HashTable;
use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Arc;

/// How many tables the keys are spread over.
pub const PARTS: usize = 256;

/// Changes a part moves from its delta into its table at each of its changes once no copy
/// shares it (see [`Part::before_change`]): more than the one change a write adds, so the
/// delta empties after about its length over `DRAIN - 1` changes of the part even when the
/// writer is never idle ([`IdemStore::tidy`] moves most of them otherwise).
const DRAIN: usize = 4;

/// A remembered idempotency key.
#[derive(Clone, Debug, PartialEq)]
pub struct IdemEntry {
    pub fingerprint: [u8; 32],
    pub at: TimeMs,
    /// The write that took the key: a repeat that arrives while it executes waits for it and
    /// for its durability. 0 for a key restored from a snapshot, whose answer is already here.
    pub seq: Seq,
    /// Empty while the first request is still executing.
    pub response: IdemAnswer,
}

/// The stored answer of the write that took a key: empty while it executes, then set once, by
/// that write, wherever it runs. The entry and the write share it, so storing the answer does
/// not look the key up again: in a table of millions of keys that lookup was a cache miss or
/// two per keyed write on the front's thread (6-8 % of its time under keyed `/v1/batch` load),
/// and while a snapshot's copy shared the table it copied the entry into the part's delta. A
/// write whose key expired and was taken again meanwhile sets its own answer, which no entry
/// holds any more.
///
/// A copy of the store taken at a quiet point (a snapshot's) shares only answers already set:
/// what it reads never changes.
///
/// The answer is kept in its stored form ([`StoredAnswer`]): a reservation's packed into a few
/// bytes, as millions of them stay for the keys' retention window.
#[derive(Clone, Default)]
pub struct IdemAnswer(Arc<std::sync::OnceLock<StoredAnswer>>);

impl IdemAnswer {
    /// An answer already known (a key restored from a snapshot, a test).
    pub fn ready(response: Response) -> IdemAnswer {
        IdemAnswer(Arc::new(std::sync::OnceLock::from(StoredAnswer::of(
            &response,
        ))))
    }

    /// The answer, once set (a reservation's unpacked).
    pub fn get(&self) -> Option<Cow<'_, Response>> {
        self.0.get().map(StoredAnswer::response)
    }

    /// The answer in its stored form, once set.
    pub fn stored(&self) -> Option<&StoredAnswer> {
        self.0.get()
    }

    pub fn is_none(&self) -> bool {
        self.0.get().is_none()
    }

    /// Sets the answer. The write that took the key sets it once; a second answer (never
    /// given) would be ignored, the first kept.
    pub fn set(&self, response: &Response) {
        let first = self.0.set(StoredAnswer::of(response)).is_ok();
        debug_assert!(first, "an idempotency key's answer is set once");
    }
}

/// As the answer itself (`None` while empty): digests print entries with it.
impl std::fmt::Debug for IdemAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Answers compare by what they hold, not by identity.
impl PartialEq for IdemAnswer {
    fn eq(&self, other: &IdemAnswer) -> bool {
        self.get() == other.get()
    }
}

/// A tenant's idempotency key; cloning it shares the text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdemKey {
    pub tenant: u32,
    pub key: Arc<str>,
}

impl IdemKey {
    pub fn new(tenant: u32, key: &str) -> Self {
        Self {
            tenant,
            key: Arc::from(key),
        }
    }
}

/// A table's slot: 16 bytes, the key and its entry boxed behind it.
///
/// A table that grows allocates (fresh pages the kernel clears) and moves its slots. With the
/// key and entry in the slot (96 bytes), that was most of the writing thread's kernel time
/// under keyed load and the bursts in its latency: a key's memory was written again at
/// every doubling of its table. Boxed, a key's body is written once, next to the keys
/// inserted just before it (as the later lookup of its answer finds it), and growing moves a
/// quarter of the bytes.
#[derive(Clone, Debug)]
struct Slot {
    /// The key's hash in this store (seeded, see [`IdemStore::hash`]), kept so that growing a
    /// table and comparing in a probe never follow the pointer to the key's text (a cache
    /// miss each, with millions of keys).
    hash: u64,
    body: Box<Body>,
}

#[derive(Clone, Debug)]
struct Body {
    key: IdemKey,
    entry: IdemEntry,
}

impl Slot {
    /// Whether this slot holds `key` (of hash `h`).
    fn holds(&self, h: u64, key: &IdemKey) -> bool {
        same_key(self.hash, &self.body.key, h, key)
    }
}

/// Whether `key`, of hash `h`, is `held` (of hash `held_hash`): the hash first, then the key's
/// text only when it is not the very same allocation.
fn same_key(held_hash: u64, held: &IdemKey, h: u64, key: &IdemKey) -> bool {
    held_hash == h
        && held.tenant == key.tenant
        && (Arc::ptr_eq(&held.key, &key.key) || held.key == key.key)
}

/// Sets the slot of `key` (of hash `h`) in `table` to `entry`, or removes it (`None`); true
/// when the table held the key before. One probe.
fn set_slot(table: &mut HashTable<Slot>, h: u64, key: IdemKey, entry: Option<IdemEntry>) -> bool {
    match table.entry(h, |s| s.holds(h, &key), |s| s.hash) {
        hashbrown::hash_table::Entry::Occupied(mut o) => {
            match entry {
                Some(entry) => o.get_mut().body.entry = entry,
                None => {
                    o.remove();
                }
            }
            true
        }
        hashbrown::hash_table::Entry::Vacant(v) => {
            if let Some(entry) = entry {
                v.insert(Slot {
                    hash: h,
                    body: Box::new(Body { key, entry }),
                });
            }
            false
        }
    }
}

/// A change made while a copy shares the tables: the key's entry now (`None`: removed).
#[derive(Clone, Debug)]
struct Change {
    hash: u64,
    key: IdemKey,
    entry: Option<IdemEntry>,
}

impl Change {
    fn holds(&self, h: u64, key: &IdemKey) -> bool {
        same_key(self.hash, &self.key, h, key)
    }
}

/// A key's place in the canonical order of [`IdemStore::sorted`]: a fixed function, the same
/// in every process, so that digests and snapshot files do not depend on where they were made.
/// Never used to place keys in the tables: anyone can compute it, so keys chosen to share it
/// would all land in one probe sequence.
fn order(tenant: u32, key: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one((tenant, key))
}

fn order_of(key: &IdemKey) -> u64 {
    order(key.tenant, &key.key)
}

/// The part of a hash: bits the tables' own probing (low bits for the bucket, the top seven
/// for the tag) does not depend on.
fn part(h: u64) -> usize {
    ((h >> 32) as usize) % PARTS
}

/// One of the [`PARTS`] tables and the changes made to it while a copy shares it.
#[derive(Clone, Debug, Default)]
struct Part {
    table: Arc<HashTable<Slot>>,
    /// The changes made to this part since a copy started sharing `table`, by key; `None`
    /// while no copy does (see the module documentation).
    delta: Option<Arc<HashTable<Change>>>,
}

impl Part {
    /// True while a copy shares the table.
    fn shared(&self) -> bool {
        Arc::strong_count(&self.table) > 1
    }

    /// Called before every change of this part: starts keeping changes apart when a copy
    /// shares the table, and once no copy does, moves up to [`DRAIN`] of them into the table.
    /// Each part does this on its own changes, so what piled up during a snapshot is applied a
    /// little at a time by many writes instead of all at once by one (or by the first change of
    /// every part, which come within milliseconds of each other under load).
    fn before_change(&mut self) {
        match &self.delta {
            None if self.shared() => self.delta = Some(Arc::default()),
            Some(_) if !self.shared() => {
                self.drain(DRAIN);
            }
            _ => {}
        }
    }

    /// Moves up to `most` changes into the table (no copy shares either) and returns how many
    /// it moved; forgets the delta once it is empty. A key's change replaces its entry in the
    /// table (or removes it): the delta is the newer of the two.
    fn drain(&mut self, most: usize) -> usize {
        let Some(delta) = &mut self.delta else {
            return 0;
        };
        let delta = Arc::make_mut(delta);
        let table = Arc::make_mut(&mut self.table);
        let mut moved = 0;
        for c in delta.extract_if(|_| true).take(most) {
            set_slot(table, c.hash, c.key, c.entry);
            moved += 1;
        }
        if delta.is_empty() {
            self.delta = None;
        }
        moved
    }

    /// The entry of `key` (of hash `h`): the delta's first, then the table's.
    fn find(&self, h: u64, is: impl Fn(&IdemKey) -> bool) -> Option<&IdemEntry> {
        if let Some(change) = self
            .delta
            .as_ref()
            .and_then(|d| d.find(h, |c| c.hash == h && is(&c.key)))
        {
            return change.entry.as_ref();
        }
        self.table
            .find(h, |s| s.hash == h && is(&s.body.key))
            .map(|s| &s.body.entry)
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct IdemStore {
    /// The seed of the keys' hashes in the tables: random per store (a copy keeps it), so that
    /// no client can choose keys that share a probe sequence (keys are the clients' text).
    seed: hashbrown::DefaultHashBuilder,
    parts: Box<[Part]>,
    /// Keys in the order they were inserted, with their insertion time. A key inserted again
    /// (after its first entry expired) appears twice; only the entry with the same time is
    /// removed when its turn comes. In chunks ([`ChunkDeque`]): a day of keys is millions, and
    /// a doubling `VecDeque` copied them all at once on the front's thread.
    order: ChunkDeque<(TimeMs, IdemKey)>,
    len: usize,
    /// Where [`IdemStore::tidy`] looks for a delta first.
    tidy_at: usize,
    /// False only when no part has a delta (set when one starts, cleared by
    /// [`IdemStore::tidy`] when it finds none): a writer with nothing to tidy asks cheaply.
    deltas: bool,
}

impl Default for IdemStore {
    fn default() -> Self {
        Self {
            seed: hashbrown::DefaultHashBuilder::default(),
            parts: (0..PARTS).map(|_| Part::default()).collect(),
            order: ChunkDeque::default(),
            len: 0,
            tidy_at: 0,
            deltas: false,
        }
    }
}

impl IdemStore {
    /// Keys remembered (expired ones included until [`IdemStore::expire`] drops them).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash that places a key in the tables (seeded; see [`order`] for the other one).
    fn hash(&self, tenant: u32, key: &str) -> u64 {
        self.seed.hash_one((tenant, key))
    }

    pub fn get(&self, tenant: u32, key: &str) -> Option<&IdemEntry> {
        let h = self.hash(tenant, key);
        self.parts[part(h)].find(h, |k| k.tenant == tenant && &*k.key == key)
    }

    /// Reads where each of `keys` would be found, and where a new one would be inserted, and
    /// forgets the answers (returns how many were found): the reads of the tables, a cache
    /// miss or two each with millions of keys, overlap when they come one after another with
    /// nothing in between, and the lookups and inserts that follow for the same keys find the
    /// lines in the cache. Called on a batch's keys before it is admitted.
    ///
    /// The insert's line matters most: a store that misses holds every later store of the
    /// thread behind it (x86 commits stores in order), and a load that needs one of them
    /// waits for all. Under keyed W1 batches the slot's write was 90 % of `set_slot`'s
    /// samples and a stall in `Front::admit`; warmed, the writer's CPU per reservation fell
    /// by about a tenth (ARCHITECTURE.md, "Idempotency").
    pub fn warm<'k>(&self, keys: impl Iterator<Item = (u32, &'k str)>) -> usize {
        let mut found = 0;
        for (tenant, key) in keys {
            let h = self.hash(tenant, key);
            let part = &self.parts[part(h)];
            // The control bytes, and a slot's hash only where its tag matches (rare for the
            // new keys of a batch); never a key's text.
            if part.table.find(h, |s| s.hash == h).is_some() {
                found += 1;
                continue;
            }
            if part.delta.is_some() {
                // Inserts go to the delta while a copy shares the table.
                continue;
            }
            // A new key goes into the first bucket that is not full from where its probe
            // starts (hashbrown: the hash's low bits, a group of 16): found in the control
            // bytes just read. That bucket cannot be read, but the line holding it can,
            // through a full bucket beside it: four 16-byte slots share a 64-byte line (the
            // slots end where the control bytes start, at a multiple of 64 in a table of
            // more than a few buckets). The insert then writes into a line in the cache
            // instead of waiting for it, and every store behind it with it.
            let n = part.table.num_buckets();
            let mask = n.wrapping_sub(1);
            let start = h as usize & mask;
            let Some(free) = (0..16.min(n))
                .map(|k| (start + k) & mask)
                .find(|&i| part.table.get_bucket(i).is_none())
            else {
                continue;
            };
            if let Some(s) = (free & !3..=free | 3).find_map(|i| part.table.get_bucket(i)) {
                std::hint::black_box(s.hash);
            }
        }
        found
    }

    /// The part of `h`, ready to be changed.
    fn part_mut(&mut self, h: u64) -> &mut Part {
        let part = &mut self.parts[part(h)];
        part.before_change();
        self.deltas |= part.delta.is_some();
        part
    }

    /// Moves up to `budget` of the changes kept aside during a snapshot into their tables, in
    /// parts no copy shares any more, and tells whether any are left that could move now
    /// (false for a `budget` of 0, which moves nothing).
    ///
    /// For a writer with nothing else to do: each change of a part also moves a few
    /// ([`DRAIN`]), but right after a snapshot of millions of keys nearly every write pays for
    /// them (an insert into a large table, a cache miss or two each), and under keyed load the
    /// writer ran flat out for a few hundred milliseconds while the other threads, waiting for
    /// it, left a core idle. Moved in the writer's idle moments instead, in steps of `budget`
    /// so that a request arriving meanwhile waits for one step at most, they are mostly gone
    /// before the writes get to them. What a key's entry is does not change: lookups read the
    /// delta first either way.
    pub fn tidy(&mut self, mut budget: usize) -> bool {
        if !self.deltas || budget == 0 {
            return false;
        }
        let mut shared = false;
        for _ in 0..PARTS {
            let part = &mut self.parts[self.tidy_at];
            if part.delta.is_some() {
                if part.shared() {
                    shared = true;
                } else {
                    budget -= part.drain(budget);
                    if part.delta.is_some() {
                        // The budget is spent; the rest of this part next time.
                        return true;
                    }
                }
            }
            self.tidy_at = (self.tidy_at + 1) % PARTS;
        }
        // A whole round: every delta left belongs to a part a copy still shares.
        self.deltas = shared;
        false
    }

    /// The entry of `k`, to change in place. The engine never changes an entry once inserted
    /// (its answer is set through [`IdemAnswer`]); tests change entries with it, also while a
    /// copy shares the table.
    #[cfg(test)]
    pub fn get_mut(&mut self, k: &IdemKey) -> Option<&mut IdemEntry> {
        let h = self.hash(k.tenant, &k.key);
        let part = self.part_mut(h);
        let Some(delta) = &mut part.delta else {
            return Arc::make_mut(&mut part.table)
                .find_mut(h, |s| s.holds(h, k))
                .map(|s| &mut s.body.entry);
        };
        let delta = Arc::make_mut(delta);
        if delta.find(h, |c| c.holds(h, k)).is_none() {
            // The first change of a key the table holds: a copy of its entry, changed here.
            let slot = part.table.find(h, |s| s.holds(h, k))?;
            let change = Change {
                hash: h,
                key: slot.body.key.clone(),
                entry: Some(slot.body.entry.clone()),
            };
            delta.insert_unique(h, change, |c| c.hash);
        }
        delta
            .find_mut(h, |c| c.holds(h, k))
            .and_then(|c| c.entry.as_mut())
    }

    /// Remembers `entry` under `key` (replacing an older entry of the same key).
    pub fn insert(&mut self, key: IdemKey, entry: IdemEntry) {
        self.order.push_back((entry.at, key.clone()));
        self.put(key, entry);
    }

    fn put(&mut self, key: IdemKey, entry: IdemEntry) {
        let h = self.hash(key.tenant, &key.key);
        let part = self.part_mut(h);
        let Some(delta) = &mut part.delta else {
            let table = Arc::make_mut(&mut part.table);
            if !set_slot(table, h, key, Some(entry)) {
                self.len += 1;
            }
            return;
        };
        let delta = Arc::make_mut(delta);
        let held = match delta.find(h, |c| c.holds(h, &key)) {
            Some(c) => c.entry.is_some(),
            None => part.table.find(h, |s| s.holds(h, &key)).is_some(),
        };
        match delta.entry(h, |c| c.holds(h, &key), |c| c.hash) {
            hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().entry = Some(entry),
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Change {
                    hash: h,
                    key,
                    entry: Some(entry),
                });
            }
        }
        if !held {
            self.len += 1;
        }
    }

    fn remove_if_at(&mut self, key: &IdemKey, at: TimeMs) {
        let h = self.hash(key.tenant, &key.key);
        let part = self.part_mut(h);
        let Some(delta) = &mut part.delta else {
            let table = Arc::make_mut(&mut part.table);
            if let Ok(e) = table.find_entry(h, |s| s.holds(h, key) && s.body.entry.at == at) {
                e.remove();
                self.len -= 1;
            }
            return;
        };
        let delta = Arc::make_mut(delta);
        if let Some(c) = delta.find_mut(h, |c| c.holds(h, key)) {
            if c.entry.as_ref().is_some_and(|e| e.at == at) {
                c.entry = None;
                self.len -= 1;
            }
        } else if part
            .table
            .find(h, |s| s.holds(h, key) && s.body.entry.at == at)
            .is_some()
        {
            let change = Change {
                hash: h,
                key: key.clone(),
                entry: None,
            };
            delta.insert_unique(h, change, |c| c.hash);
            self.len -= 1;
        }
    }

    /// How many of the oldest entries are past `retention` at `now` (they are forgotten, even
    /// if not dropped yet).
    pub fn expired(&self, now: TimeMs, retention: u64) -> usize {
        let past = |at: &TimeMs| at.saturating_add(retention) <= now;
        // Nearly always none (`expire` runs with every write): answered without an iterator.
        match self.order.front() {
            Some((at, _)) if past(at) => self.order.iter().take_while(|(at, _)| past(at)).count(),
            _ => 0,
        }
    }

    /// Drops the entries past `retention` at `now`.
    pub fn expire(&mut self, now: TimeMs, retention: u64) {
        while let Some((at, _)) = self.order.front() {
            if at.saturating_add(retention) > now {
                break;
            }
            let (at, key) = self.order.pop_front().expect("front exists");
            self.remove_if_at(&key, at);
        }
    }

    /// A copy for building a state image while this store goes on: the tables and any changes
    /// not yet applied to them are shared (the store keeps its next changes apart), and the
    /// expiry queue, which an image does not hold, is left out: the copy must not be expired
    /// or written.
    pub fn image_copy(&self) -> IdemStore {
        IdemStore {
            seed: self.seed.clone(),
            parts: self.parts.clone(),
            order: ChunkDeque::default(),
            len: self.len,
            tidy_at: 0,
            deltas: self.deltas,
        }
    }

    /// Puts back the entries of a state image (in any order).
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (IdemKey, IdemEntry)>) {
        for (key, entry) in entries {
            self.insert(key, entry);
        }
        // Expiry walks the queue front to back: sort it by time once.
        let mut order: Vec<_> = std::mem::take(&mut self.order).into_iter().collect();
        order.sort();
        self.order = order.into_iter().collect();
    }

    /// The entries in a canonical order, for digests and snapshots: by the key's hash (a fixed
    /// function, not seeded), then tenant and key. The order depends only on the entries, never
    /// on the order they were inserted in or on the tables' history.
    ///
    /// Ordering by hash first keeps the sort on integers in a flat array: sorting millions of
    /// keys by their text chases a pointer per comparison and was most of a snapshot's cost.
    /// The hash is computed here, once per key (the slots do not keep it: 16 bytes instead of
    /// 24, four to a cache line).
    pub fn sorted(&self) -> Vec<(&IdemKey, &IdemEntry)> {
        let mut v: Vec<(u64, &IdemKey, &IdemEntry)> = Vec::with_capacity(self.len);
        for p in self.parts.iter() {
            match &p.delta {
                None => v.extend(
                    p.table
                        .iter()
                        .map(|s| (order_of(&s.body.key), &s.body.key, &s.body.entry)),
                ),
                Some(d) => {
                    let changed =
                        |s: &Slot| d.find(s.hash, |c| c.holds(s.hash, &s.body.key)).is_some();
                    v.extend(
                        p.table
                            .iter()
                            .filter(|s| !changed(s))
                            .map(|s| (order_of(&s.body.key), &s.body.key, &s.body.entry)),
                    );
                    v.extend(
                        d.iter().filter_map(|c| {
                            c.entry.as_ref().map(|e| (order_of(&c.key), &c.key, e))
                        }),
                    );
                }
            }
        }
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        v.into_iter().map(|(_, k, e)| (k, e)).collect()
    }

    /// Parts with changes not yet applied to their tables (for tests).
    #[cfg(test)]
    fn pending_parts(&self) -> usize {
        self.parts.iter().filter(|p| p.delta.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every entry of a store with its (tenant, key), in key order: comparable with a model
    /// map's listing.
    type Listing = Vec<((u32, String), IdemEntry)>;

    fn listing(s: &IdemStore) -> Listing {
        let mut all: Vec<_> = s
            .sorted()
            .into_iter()
            .map(|(k, e)| ((k.tenant, k.key.to_string()), e.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn entry(at: TimeMs, n: u8) -> IdemEntry {
        IdemEntry {
            fingerprint: [n; 32],
            at,
            seq: u64::from(n),
            response: IdemAnswer::default(),
        }
    }

    /// The write that took a key sets the answer the store then holds, without a lookup, even
    /// when the key was inserted while a copy shared its table; a write whose key expired and
    /// was taken again meanwhile sets only its own answer; a copy taken before never changes.
    #[test]
    fn an_answer_set_by_its_write_is_the_one_the_store_holds() {
        let done = |seq| Response {
            seq: Some(seq),
            replayed: false,
            outcome: crate::outcome::Outcome::Ok(crate::outcome::Reply::Done),
        };
        // A write takes `key` at `at` with `answer` in its entry.
        let take = |store: &mut IdemStore, key: &str, at: TimeMs, answer: &IdemAnswer| {
            let e = IdemEntry {
                response: answer.clone(),
                ..entry(at, 1)
            };
            store.insert(IdemKey::new(1, key), e);
        };
        let mut store = IdemStore::default();
        let first = IdemAnswer::default();
        take(&mut store, "k", 10, &first);
        take(&mut store, "q", 10, &IdemAnswer::ready(done(0)));
        assert!(store.get(1, "k").is_some_and(|e| e.response.is_none()));
        // Inserted while a copy shares the tables: kept apart, set all the same.
        let copy = store.image_copy();
        let during = IdemAnswer::default();
        take(&mut store, "d", 11, &during);
        during.set(&done(11));
        assert_eq!(
            store.get(1, "d").and_then(|e| e.response.get()),
            Some(Cow::Owned(done(11)))
        );
        assert!(copy.get(1, "d").is_none());
        assert_eq!(
            copy.get(1, "q").and_then(|e| e.response.get()),
            Some(Cow::Owned(done(0)))
        );
        drop(copy);
        // "k" expires and is taken again before its first write answers.
        store.expire(200, 100);
        assert!(store.get(1, "k").is_none());
        let second = IdemAnswer::default();
        take(&mut store, "k", 200, &second);
        first.set(&done(10));
        assert!(store.get(1, "k").is_some_and(|e| e.response.is_none()));
        second.set(&done(200));
        assert_eq!(
            store.get(1, "k").and_then(|e| e.response.get()),
            Some(Cow::Owned(done(200)))
        );
        // Compared and printed as the answers they hold.
        assert_eq!(first, IdemAnswer::ready(done(10)));
        assert_ne!(first, second);
        assert_eq!(format!("{:?}", IdemAnswer::default()), "None");
        assert_eq!(
            format!("{second:?}"),
            format!("{:?}", Some(Arc::new(done(200))))
        );
    }

    /// The store behaves as an ordered map under inserts, re-inserts, lookups and expiry,
    /// with enough keys that every part grows several times.
    #[test]
    fn behaves_as_a_map_with_expiry() {
        let mut store = IdemStore::default();
        let mut model: BTreeMap<(u32, String), IdemEntry> = BTreeMap::new();
        let retention = 1_000;
        for i in 0..20_000u64 {
            let now = i;
            let tenant = (i % 3) as u32;
            // Every 7th key repeats one inserted about 1,500 steps earlier (so usually expired).
            let key = if i % 7 == 0 && i > 1_500 {
                format!("k{}", i - 1_500)
            } else {
                format!("k{i}")
            };
            store.expire(now, retention);
            model.retain(|_, e| e.at + retention > now);
            let k = IdemKey::new(tenant, &key);
            assert_eq!(store.get(tenant, &key), model.get(&(tenant, key.clone())));
            let e = entry(now, (i % 251) as u8);
            store.insert(k.clone(), e.clone());
            model.insert((tenant, key.clone()), e);
            if i % 5 == 0 {
                let r = Response {
                    seq: Some(i),
                    replayed: false,
                    outcome: crate::outcome::Outcome::Ok(crate::outcome::Reply::Done),
                };
                store.get_mut(&k).expect("just inserted").response = IdemAnswer::ready(r.clone());
                model.get_mut(&(tenant, key)).unwrap().response = IdemAnswer::ready(r);
            }
            assert_eq!(store.len(), model.len());
        }
        assert_eq!(listing(&store), model.into_iter().collect::<Vec<_>>());
    }

    /// The canonical order depends on the entries alone: inserted in another order, with
    /// other keys inserted and expired in between, two stores list them the same way.
    #[test]
    fn the_canonical_order_does_not_depend_on_history() {
        let keys: Vec<(u32, String)> = (0..5_000u32)
            .map(|i| (i % 4, format!("order-{i}")))
            .collect();
        let mut a = IdemStore::default();
        for (i, (t, k)) in keys.iter().enumerate() {
            a.insert(IdemKey::new(*t, k), entry(10_000 + i as u64, 1));
        }
        let mut b = IdemStore::default();
        for i in 0..3_000u64 {
            b.insert(IdemKey::new(9, &format!("gone-{i}")), entry(i, 2));
        }
        for (i, (t, k)) in keys.iter().enumerate().rev() {
            b.insert(IdemKey::new(*t, k), entry(10_000 + i as u64, 1));
        }
        b.expire(3_500, 500);
        let list = |s: &IdemStore| -> Vec<(u32, String)> {
            s.sorted()
                .into_iter()
                .map(|(k, _)| (k.tenant, k.key.to_string()))
                .collect()
        };
        assert_eq!(b.len(), keys.len());
        assert_eq!(list(&a), list(&b));
        // Not the insertion order, and every key once.
        assert_ne!(list(&a), keys);
        let mut seen = list(&a);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), keys.len());
    }

    /// An image copy keeps what it saw while the original goes on: inserts, stored responses,
    /// expiry.
    #[test]
    fn an_image_copy_is_not_changed_by_later_writes() {
        let mut a = IdemStore::default();
        for i in 0..2_000u64 {
            a.insert(IdemKey::new(1, &format!("k{i}")), entry(i, 1));
        }
        let before: Vec<_> = a
            .sorted()
            .into_iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let copy = a.image_copy();
        for i in 2_000..3_000u64 {
            a.insert(IdemKey::new(1, &format!("k{i}")), entry(i, 2));
        }
        let r = Response {
            seq: Some(1),
            replayed: false,
            outcome: crate::outcome::Outcome::Ok(crate::outcome::Reply::Done),
        };
        a.get_mut(&IdemKey::new(1, "k5")).expect("present").response = IdemAnswer::ready(r);
        a.expire(1_500, 100);
        let after: Vec<_> = copy
            .sorted()
            .into_iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        assert_eq!(after, before);
        assert_eq!(copy.len(), 2_000);
        assert!(copy.get(1, "k5").is_some_and(|e| e.response.is_none()));
        assert!(a.get(1, "k5").is_none() && a.get(1, "k2500").is_some());
    }

    /// While copies share the tables, the store still behaves as a map (inserts, re-inserts,
    /// changed responses, expiry), every copy keeps what it saw, and no table is copied; once
    /// the copies are gone the changes are in the tables.
    #[test]
    fn copies_see_their_moment_and_writes_meanwhile_copy_no_table() {
        let mut store = IdemStore::default();
        let mut model: BTreeMap<(u32, String), IdemEntry> = BTreeMap::new();
        let mut copies: Vec<(IdemStore, Listing)> = Vec::new();
        let retention = 700;
        let mut x = 12_345u64;
        for i in 0..12_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = x >> 33;
            // Now and then a copy is taken, or the oldest one dropped.
            if r % 97 == 0 {
                let table = Arc::as_ptr(&store.parts[7].table);
                copies.push((store.image_copy(), listing(&store)));
                assert_eq!(Arc::as_ptr(&store.parts[7].table), table);
            } else if r % 89 == 0 && !copies.is_empty() {
                let (copy, seen) = copies.remove(0);
                assert_eq!(listing(&copy), seen);
                assert_eq!(copy.len(), seen.len());
            }
            let tables: Vec<*const HashTable<Slot>> =
                store.parts.iter().map(|p| Arc::as_ptr(&p.table)).collect();
            let shared = store.parts.iter().all(Part::shared);
            let now = i;
            store.expire(now, retention);
            model.retain(|_, e| e.at + retention > now);
            let tenant = (r % 2) as u32;
            let key = format!("k{}", r % 2_000);
            assert_eq!(store.get(tenant, &key), model.get(&(tenant, key.clone())));
            if r % 3 == 0 {
                let e = entry(now, (r % 251) as u8);
                store.insert(IdemKey::new(tenant, &key), e.clone());
                model.insert((tenant, key.clone()), e);
            } else if r % 3 == 1 {
                let answer = IdemAnswer::ready(Response {
                    seq: Some(i),
                    replayed: false,
                    outcome: crate::outcome::Outcome::Ok(crate::outcome::Reply::Done),
                });
                let got = store.get_mut(&IdemKey::new(tenant, &key)).map(|e| {
                    e.response = answer.clone();
                });
                let want = model.get_mut(&(tenant, key)).map(|e| {
                    e.response = answer;
                });
                assert_eq!(got, want);
            }
            assert_eq!(store.len(), model.len());
            if shared {
                // Written while shared: not one table was copied.
                let now_tables: Vec<_> =
                    store.parts.iter().map(|p| Arc::as_ptr(&p.table)).collect();
                assert_eq!(now_tables, tables, "step {i}");
            }
        }
        assert_eq!(
            listing(&store),
            model.clone().into_iter().collect::<Vec<_>>()
        );
        for (copy, seen) in copies.drain(..) {
            assert_eq!(listing(&copy), seen);
        }
        // No copy left: a part's next change moves some of its changes into its table, and
        // only its own.
        let pending = store.pending_parts();
        assert!(pending > 100, "{pending} parts with changes kept apart");
        // A key of the part with the most changes kept apart.
        let most = (0..PARTS)
            .max_by_key(|&i| store.parts[i].delta.as_ref().map_or(0, |d| d.len()))
            .expect("parts");
        let last = (0..)
            .map(|j| IdemKey::new(0, &format!("last{j}")))
            .find(|k| part(store.hash(k.tenant, &k.key)) == most)
            .expect("some key falls in every part");
        let last_part = most;
        let kept = |store: &IdemStore| store.parts[last_part].delta.as_ref().map_or(0, |d| d.len());
        let others = |store: &IdemStore| -> Vec<usize> {
            (store.parts.iter().enumerate())
                .filter(|&(i, _)| i != last_part)
                .map(|(_, p)| p.delta.as_ref().map_or(0, |d| d.len()))
                .collect()
        };
        let had = usize::from(kept(&store) > 0);
        let mut step = 0u8;
        while kept(&store) > 0 {
            let (before, rest) = (kept(&store), others(&store));
            let e = entry(12_000, step);
            store.insert(last.clone(), e.clone());
            model.insert((0, last.key.to_string()), e);
            // The change itself may go to the delta: at least DRAIN - 1 fewer, or none left.
            let after = kept(&store);
            assert!(
                after == 0 || after + (DRAIN - 1) <= before,
                "{before} -> {after}"
            );
            assert_eq!(others(&store), rest);
            step += 1;
        }
        assert!(store.parts[last_part].delta.is_none());
        assert_eq!(store.pending_parts(), pending - had);
        assert_eq!(
            listing(&store),
            model.clone().into_iter().collect::<Vec<_>>()
        );
        // Every part's next change applies its own; lookups read the same before and after.
        for i in 0..8_000u64 {
            let key = format!("k{}", i % 2_000);
            let tenant = (i % 2) as u32;
            assert_eq!(store.get(tenant, &key), model.get(&(tenant, key.clone())));
            let e = entry(12_001 + i, 3);
            let key = format!("n{i}");
            store.insert(IdemKey::new(tenant, &key), e.clone());
            model.insert((tenant, key), e);
        }
        assert_eq!(store.pending_parts(), 0);
        assert_eq!(store.len(), model.len());
        assert_eq!(listing(&store), model.into_iter().collect::<Vec<_>>());
    }

    /// The changes made while a copy shared a part reach its table a few per change of that
    /// part once the copy is gone, never all at once; lookups read the same all along.
    #[test]
    fn a_delta_drains_a_few_changes_at_a_time() {
        let mut store = IdemStore::default();
        let mut model: BTreeMap<(u32, String), IdemEntry> = BTreeMap::new();
        // Keys of part 0 only.
        let keys: Vec<String> = (0..)
            .map(|j| format!("p0-{j}"))
            .filter(|k| part(store.hash(1, k)) == 0)
            .take(600)
            .collect();
        let put = |store: &mut IdemStore,
                   model: &mut BTreeMap<(u32, String), IdemEntry>,
                   key: &str,
                   at: TimeMs,
                   n: u8| {
            store.insert(IdemKey::new(1, key), entry(at, n));
            model.insert((1, key.to_string()), entry(at, n));
        };
        for (i, k) in keys[..300].iter().enumerate() {
            put(&mut store, &mut model, k, i as TimeMs, 1);
        }
        let copy = store.image_copy();
        // While shared: 300 new keys, 100 changed answers, all kept apart.
        for (i, k) in keys[300..].iter().enumerate() {
            put(&mut store, &mut model, k, 300 + i as TimeMs, 2);
        }
        for k in &keys[..100] {
            let e = store.get_mut(&IdemKey::new(1, k)).expect("held");
            e.seq = 99;
            model.get_mut(&(1, k.clone())).expect("held").seq = 99;
        }
        let kept = |s: &IdemStore| s.parts[0].delta.as_ref().map_or(0, |d| d.len());
        assert_eq!(kept(&store), 400);
        assert_eq!(listing(&copy).len(), 300);
        drop(copy);
        let mut changes = 0;
        while kept(&store) > 0 {
            let before = kept(&store);
            let key = &keys[changes % 600];
            put(&mut store, &mut model, key, 1_000 + changes as TimeMs, 3);
            changes += 1;
            let after = kept(&store);
            assert!(
                after == 0 || after + (DRAIN - 1) <= before,
                "{before} -> {after}"
            );
            assert!(
                before - after <= DRAIN,
                "{before} -> {after}: at most {DRAIN} a change"
            );
            for k in keys.iter().step_by(37) {
                assert_eq!(store.get(1, k), model.get(&(1, k.clone())), "{k}");
            }
            assert!(store.parts[1..].iter().all(|p| p.delta.is_none()));
        }
        assert!(changes >= 400 / DRAIN, "{changes} changes emptied 400");
        assert_eq!(store.len(), model.len());
        assert_eq!(listing(&store), model.into_iter().collect::<Vec<_>>());
    }

    /// A writer with nothing to do moves the changes kept apart into their tables, `budget`
    /// at a time, only in parts no copy shares; lookups read the same all along, and once
    /// nothing is left it says so without looking again.
    #[test]
    fn tidy_moves_kept_changes_a_budget_at_a_time_once_no_copy_shares_them() {
        let mut store = IdemStore::default();
        let mut model: BTreeMap<(u32, String), IdemEntry> = BTreeMap::new();
        let mut put = |store: &mut IdemStore, key: String, at: TimeMs, n: u8| {
            store.insert(IdemKey::new(1, &key), entry(at, n));
            model.insert((1, key), entry(at, n));
        };
        for i in 0..2_000u64 {
            put(&mut store, format!("k{i}"), i, 1);
        }
        assert!(!store.tidy(64), "nothing kept apart: nothing to tidy");
        let copy = store.image_copy();
        // While shared: new keys and new entries of old ones, all kept apart.
        for i in 0..3_000u64 {
            put(&mut store, format!("k{}", i * 7 % 5_000), 5_000 + i, 2);
        }
        let kept = |s: &IdemStore| -> usize {
            s.parts
                .iter()
                .map(|p| p.delta.as_ref().map_or(0, |d| d.len()))
                .sum()
        };
        let total = kept(&store);
        assert!(total > 2_000, "{total} changes kept apart");
        // The copy still shares every table: nothing moves.
        assert!(!store.tidy(64));
        assert_eq!(kept(&store), total);
        assert_eq!(listing(&copy).len(), 2_000);
        drop(copy);
        assert!(!store.tidy(0), "a budget of nothing moves nothing");
        assert_eq!(kept(&store), total);
        let mut steps = 0;
        loop {
            let before = kept(&store);
            let more = store.tidy(64);
            let after = kept(&store);
            assert_eq!(before - after, before.min(64), "a step moves its budget");
            assert_eq!(more, after > 0, "{after} left");
            for i in (0..5_000u64).step_by(97) {
                let key = format!("k{i}");
                assert_eq!(store.get(1, &key), model.get(&(1, key.clone())), "{key}");
            }
            steps += 1;
            if !more {
                break;
            }
        }
        assert_eq!(steps, total.div_ceil(64));
        assert_eq!(store.pending_parts(), 0);
        assert!(!store.deltas, "nothing left, and it knows");
        assert!(!store.tidy(64));
        assert_eq!(store.len(), model.len());
        assert_eq!(listing(&store), model.into_iter().collect::<Vec<_>>());
    }

    /// Keys a client chose to share their canonical hash's part still spread over the tables:
    /// the tables place keys by a seeded hash no client can compute.
    #[test]
    fn keys_sharing_the_canonical_hash_do_not_share_a_table() {
        let mut chosen = Vec::new();
        let mut i = 0u64;
        while chosen.len() < 64 {
            let key = format!("attack-{i}");
            if part(order(1, &key)) == 0 {
                chosen.push(key);
            }
            i += 1;
        }
        let mut store = IdemStore::default();
        for (n, key) in chosen.iter().enumerate() {
            store.insert(IdemKey::new(1, key), entry(n as u64, 1));
        }
        let parts: std::collections::BTreeSet<usize> =
            chosen.iter().map(|k| part(store.hash(1, k))).collect();
        assert!(parts.len() > 32, "64 keys in {} tables", parts.len());
        for key in &chosen {
            assert!(store.get(1, key).is_some());
        }
        // Another store seeds its own hash; the canonical order is the same in both.
        let other = IdemStore::default();
        assert_ne!(
            chosen.iter().map(|k| store.hash(1, k)).collect::<Vec<_>>(),
            chosen.iter().map(|k| other.hash(1, k)).collect::<Vec<_>>()
        );
        let mut copy = IdemStore::default();
        copy.restore(
            store
                .sorted()
                .into_iter()
                .map(|(k, e)| (k.clone(), e.clone())),
        );
        assert_eq!(listing(&copy), listing(&store));
        let keys = |s: &IdemStore| -> Vec<String> {
            s.sorted()
                .into_iter()
                .map(|(k, _)| k.key.to_string())
                .collect()
        };
        assert_eq!(keys(&copy), keys(&store));
    }

    /// Warming finds the keys a table holds and changes nothing, on tables of every size.
    #[test]
    fn warming_reads_the_tables_and_changes_nothing() {
        let mut s = IdemStore::default();
        for i in 0..1000u64 {
            s.insert(IdemKey::new(1, &format!("k{i}")), entry(i, 0));
        }
        let before = listing(&s);
        // Held keys are found by their hash; another tenant's, or new ones, are not.
        let keys = ["k1", "k999", "k1000", "x"].map(|k| (1, k));
        assert_eq!(s.warm(keys.into_iter()), 2);
        assert_eq!(s.warm([(2, "k1"), (1, "k500")].into_iter()), 1);
        assert_eq!(s.warm(std::iter::empty()), 0);
        assert_eq!(listing(&s), before);
        assert_eq!(s.len(), 1000);
        // Tables of every small size, empty ones included, and one shared with a copy.
        let mut small = IdemStore::default();
        for i in 0..40u64 {
            let new = format!("n{i}");
            assert_eq!(
                small.warm([(1, new.as_str()), (1, "n0")].into_iter()),
                usize::from(i > 0)
            );
            small.insert(IdemKey::new(1, &new), entry(i, 0));
        }
        let copy = small.image_copy();
        small.insert(IdemKey::new(1, "late"), entry(50, 0));
        assert_eq!(
            small.warm([(1, "late"), (1, "n39"), (1, "none")].into_iter()),
            1
        );
        assert_eq!(copy.len(), 40);
        assert_eq!(small.len(), 41);
    }

    /// A slot stays the size a growing table moves cheaply and four share a cache line (see
    /// [`Slot`] and [`IdemStore::warm`]).
    #[test]
    fn a_slot_is_two_words() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    /// `expired` counts what `expire` drops; a restored store expires like the original.
    #[test]
    fn restore_sorts_the_expiry_queue() {
        let mut a = IdemStore::default();
        for i in 0..100u64 {
            a.insert(IdemKey::new(1, &format!("k{i}")), entry(i * 10, 0));
        }
        let mut b = IdemStore::default();
        // Restored in key order, not time order.
        b.restore(a.sorted().into_iter().map(|(k, e)| (k.clone(), e.clone())));
        assert_eq!(a.expired(99, 100), 0);
        assert_eq!(a.expired(100, 100), 1);
        assert_eq!(a.expired(500, 100), 41);
        assert_eq!(b.expired(500, 100), 41);
        a.expire(500, 100);
        b.expire(500, 100);
        assert_eq!((a.expired(509, 100), a.expired(510, 100)), (0, 1));
        assert_eq!(IdemStore::default().expired(u64::MAX, 0), 0);
        assert_eq!(a.len(), 59);
        assert_eq!(b.len(), 59);
        assert!(b.get(1, "k40").is_none() && b.get(1, "k41").is_some());
    }
}
