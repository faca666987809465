//! The state digest: a BLAKE3 hash over a canonical rendering of the whole state. It does not
//! depend on the number of shards, on hash-map order or on the memory layout, so two engines
//! that processed the same commands have the same digest.

use crate::front::Front;
use crate::shard::ShardState;
use std::collections::BTreeMap;

/// Hashes the canonical state: sorted tenants, levels, reservations and keys.
pub fn digest<'a>(front: &Front, shards: impl Iterator<Item = &'a ShardState>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for line in canonical(front, shards) {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    *h.finalize().as_bytes()
}

/// The canonical rendering of the state, one line per item, for digests and for comparing
/// two states line by line when digests differ.
pub fn canonical<'a>(front: &Front, shards: impl Iterator<Item = &'a ShardState>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut put = |s: String| lines.push(s);
    put(format!("seq {} now {}", front.seq, front.now));
    for e in &front.tenants {
        let c = &e.config;
        put(format!(
            "tenant {} {:?} {:?}",
            e.id, c.locations, c.channels
        ));
        put(format!("bundles {:?}", c.bundles));
        put(format!(
            "rules {}",
            serde_json::to_string(&c.rule_document).expect("rules serialize")
        ));
    }
    for (k, e) in front.idempotency_sorted() {
        let (t, key) = (k.tenant, &*k.key);
        put(format!(
            "idem {t} {key:?} {:?} {} {:?}",
            e.fingerprint, e.at, e.response
        ));
    }
    let mut skus = BTreeMap::new();
    let mut parts = BTreeMap::new();
    let mut timers = 0usize;
    for s in shards {
        for (k, st) in &s.skus {
            skus.insert(
                (k.tenant, k.sku.clone()),
                (st.levels.clone(), st.chans.clone(), st.cost.clone()),
            );
        }
        for (id, p) in &s.parts {
            // Every part carries the same header (kept once, so the digest does not depend on
            // the shard count); the items are spread over the parts.
            let header = format!(
                "{} {:?} {} {} {} {:?} {:?} {:?} {:?}",
                p.tenant,
                p.lifecycle,
                p.created_at,
                p.expires_at,
                p.ended_at(),
                p.channel,
                p.order_ref(),
                p.lines,
                // Printed as the list of units per line, as when it was always stored.
                p.granted().units(&p.lines)
            );
            let entry = parts
                .entry(id)
                .or_insert_with(|| (header.clone(), Vec::new()));
            if entry.0 != header {
                // Parts that disagree are a broken state: the digest must not match any
                // consistent one, so both headers go in.
                entry.0 = format!("{} DISAGREES WITH {header}", entry.0);
            }
            entry.1.extend(p.items.iter().cloned());
        }
        timers += s.expiry.len() + s.purge.len();
    }
    let _ = timers; // Timer entries are lazily deleted: their count is not part of the state.
    for ((t, sku), (levels, chans, cost)) in skus {
        put(format!("sku {t} {sku} {levels:?} {chans:?} {cost:?}"));
    }
    for (id, (header, mut items)) in parts {
        items.sort_by_key(|i| i.item);
        put(format!("res {} {header} {items:?}", id.0));
    }
    lines
}

/// Hex form of a digest.
pub fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
