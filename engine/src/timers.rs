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
    pub fn insert(&mut self, at: TimeMs, id: ReservationId) {
        self.buckets.entry(at / 1000).or_default().push(id);
        self.len += 1;
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

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
