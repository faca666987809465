//! Timers bucketed by second, with lazy deletion: an entry is checked against its part when
//! it fires, so extending or ending a hold never searches the timers. Firing touches only the
//! due buckets, never all holds.

use crate::ids::{ReservationId, TimeMs};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Timers {
    buckets: BTreeMap<u64, Vec<ReservationId>>,
    len: usize,
}

impl Timers {
    /// A new latest bucket starts with the length of the one before it as its capacity (up to
    /// 2^20 entries, 8 MiB), so a steady stream of holds does not regrow every second's bucket
    /// from empty: at a million holds a second per shard, a bucket that started at 2^16 was
    /// copied four times into fresh pages as it grew. Capacity not yet written is address
    /// space, not memory.
    pub fn insert(&mut self, at: TimeMs, id: ReservationId) {
        let key = at / 1000;
        self.len += 1;
        if let Some(mut last) = self.buckets.last_entry() {
            if *last.key() == key {
                last.get_mut().push(id);
                return;
            }
        }
        let hint = match self.buckets.last_key_value() {
            Some((&last, v)) if key > last => v.len().min(1 << 20),
            _ => 0,
        };
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Vec::with_capacity(hint));
        bucket.push(id);
    }

    /// Removes and returns every entry whose bucket may hold a time `<= now`. Entries in the
    /// bucket of `now` itself are returned too; the caller re-inserts those not yet due.
    pub fn take_due(&mut self, now: TimeMs) -> Vec<ReservationId> {
        let mut out = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > now / 1000 {
                break;
            }
            out.extend(entry.remove());
        }
        self.len -= out.len();
        out
    }

    /// The earliest time an entry may be due (the start of its second), if any.
    pub fn first_at(&self) -> Option<TimeMs> {
        self.buckets.keys().next().map(|k| k.saturating_mul(1000))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
