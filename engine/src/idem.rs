//! The remembered idempotency keys of all tenants.
//!
//! Millions of keys are remembered at once (a day of retention), and every keyed write looks
//! one up and inserts one on the front's single thread, so the table is built for that:
//!
//! - It is split into [`PARTS`] hash tables by the key's hash. A table that grows moves only
//!   its own part, so the pause of a growth step is bounded by a 256th of the keys instead of
//!   stopping every write while all of them move at once.
//! - A slot is small (about 90 bytes): the stored response is behind an `Arc`, and the key's
//!   text is one shared allocation that the expiry queue points at too. Copying the store (the
//!   pause of a snapshot) copies pointers, not responses. The slot keeps the key's hash, so a
//!   probe, a growth step or the canonical listing reads the text only on a full-hash match.
//! - Lookups take the key as `&str`: nothing is allocated to ask.
//!
//! - The tables are behind `Arc`: the copy a snapshot takes ([`IdemStore::image_copy`]) copies
//!   256 pointers, and a table still shared is copied when it is next written.
//!
//! Expiry walks a queue in insertion order (time never goes back for sequenced writes), so it
//! never scans the table.

use crate::chunked::ChunkDeque;
use crate::ids::{Seq, TimeMs};
use crate::outcome::Response;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::Arc;

/// How many tables the keys are spread over.
pub const PARTS: usize = 256;

/// A remembered idempotency key.
#[derive(Clone, Debug, PartialEq)]
pub struct IdemEntry {
    pub fingerprint: [u8; 32],
    pub at: TimeMs,
    /// The write that took the key: its answer is the one recorded here (a key can expire and
    /// be taken again while the first write is still executing, in a replay of a log with a
    /// long pause in it). 0 for a key restored from a snapshot, whose answer is already here.
    pub seq: Seq,
    /// `None` while the first request is still executing.
    pub response: Option<Arc<Response>>,
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

#[derive(Clone, Debug)]
struct Slot {
    /// The key's hash, kept so that growing a table, comparing in a probe and listing in the
    /// canonical order never follow the pointer to the key's text (a cache miss each, with
    /// millions of keys).
    hash: u64,
    key: IdemKey,
    entry: IdemEntry,
}

impl Slot {
    /// Whether this slot holds `key` (of hash `h`): the hash first, then the key's text only
    /// when it is not the very allocation this slot holds.
    fn holds(&self, h: u64, key: &IdemKey) -> bool {
        self.hash == h
            && self.key.tenant == key.tenant
            && (Arc::ptr_eq(&self.key.key, &key.key) || self.key.key == key.key)
    }
}

fn hash(tenant: u32, key: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one((tenant, key))
}

/// The part of a hash: bits the tables' own probing (low bits for the bucket, the top seven
/// for the tag) does not depend on.
fn part(h: u64) -> usize {
    ((h >> 32) as usize) % PARTS
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct IdemStore {
    parts: Box<[Arc<HashTable<Slot>>]>,
    /// Keys in the order they were inserted, with their insertion time. A key inserted again
    /// (after its first entry expired) appears twice; only the entry with the same time is
    /// removed when its turn comes. In chunks ([`ChunkDeque`]): a day of keys is millions, and
    /// a doubling `VecDeque` copied them all at once on the front's thread.
    order: ChunkDeque<(TimeMs, IdemKey)>,
    len: usize,
}

impl Default for IdemStore {
    fn default() -> Self {
        Self {
            parts: (0..PARTS).map(|_| Arc::new(HashTable::new())).collect(),
            order: ChunkDeque::default(),
            len: 0,
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

    pub fn get(&self, tenant: u32, key: &str) -> Option<&IdemEntry> {
        let h = hash(tenant, key);
        self.parts[part(h)]
            .find(h, |s| {
                s.hash == h && s.key.tenant == tenant && &*s.key.key == key
            })
            .map(|s| &s.entry)
    }

    pub fn get_mut(&mut self, k: &IdemKey) -> Option<&mut IdemEntry> {
        let h = hash(k.tenant, &k.key);
        Arc::make_mut(&mut self.parts[part(h)])
            .find_mut(h, |s| s.holds(h, k))
            .map(|s| &mut s.entry)
    }

    /// Remembers `entry` under `key` (replacing an older entry of the same key).
    pub fn insert(&mut self, key: IdemKey, entry: IdemEntry) {
        self.order.push_back((entry.at, key.clone()));
        self.put(key, entry);
    }

    fn put(&mut self, key: IdemKey, entry: IdemEntry) {
        let h = hash(key.tenant, &key.key);
        let table = Arc::make_mut(&mut self.parts[part(h)]);
        match table.entry(h, |s| s.holds(h, &key), |s| s.hash) {
            hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().entry = entry,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Slot {
                    hash: h,
                    key,
                    entry,
                });
                self.len += 1;
            }
        }
    }

    fn remove_if_at(&mut self, key: &IdemKey, at: TimeMs) {
        let h = hash(key.tenant, &key.key);
        let table = Arc::make_mut(&mut self.parts[part(h)]);
        if let Ok(e) = table.find_entry(h, |s| s.holds(h, key) && s.entry.at == at) {
            e.remove();
            self.len -= 1;
        }
    }

    /// How many of the oldest entries are past `retention` at `now` (they are forgotten, even
    /// if not dropped yet).
    pub fn expired(&self, now: TimeMs, retention: u64) -> usize {
        self.order
            .iter()
            .take_while(|(at, _)| at.saturating_add(retention) <= now)
            .count()
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

    /// A copy for building a state image while this store goes on: the tables are shared
    /// (copied when next written here), and the expiry queue, which an image does not hold, is
    /// left out: the copy must not be expired or written.
    pub fn image_copy(&self) -> IdemStore {
        IdemStore {
            parts: self.parts.clone(),
            order: ChunkDeque::default(),
            len: self.len,
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
    pub fn sorted(&self) -> Vec<(&IdemKey, &IdemEntry)> {
        let mut v: Vec<(u64, &Slot)> = self
            .parts
            .iter()
            .flat_map(|t| t.iter().map(|s| (s.hash, s)))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)));
        v.into_iter().map(|(_, s)| (&s.key, &s.entry)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(at: TimeMs, n: u8) -> IdemEntry {
        IdemEntry {
            fingerprint: [n; 32],
            at,
            seq: u64::from(n),
            response: None,
        }
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
                store.get_mut(&k).expect("just inserted").response = Some(Arc::new(r.clone()));
                model.get_mut(&(tenant, key)).unwrap().response = Some(Arc::new(r));
            }
            assert_eq!(store.len(), model.len());
        }
        let mut all: Vec<_> = store
            .sorted()
            .into_iter()
            .map(|(k, e)| ((k.tenant, k.key.to_string()), e.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
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
        a.get_mut(&IdemKey::new(1, "k5")).expect("present").response = Some(Arc::new(r));
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
        assert_eq!(a.expired(500, 100), 41);
        assert_eq!(b.expired(500, 100), 41);
        a.expire(500, 100);
        b.expire(500, 100);
        assert_eq!(a.len(), 59);
        assert_eq!(b.len(), 59);
        assert!(b.get(1, "k40").is_none() && b.get(1, "k41").is_some());
    }
}
