//! Shared helpers of the log's tests: log entries of every shape, and writing them.
#![allow(dead_code)]

use depot_engine::{
    Bucket, ChannelId, ChannelKind, Command, CommitLine, Component, Engine, FillPolicy,
    LineRequest, LocationId, LocationKind, LogEntry, Request, ReservationId, Sku, TenantId,
};
use depot_wal::{Directory, WalOptions, WalWriter};
use rust_decimal::Decimal;
use std::str::FromStr;

pub fn sku(i: u64) -> Sku {
    Sku::new(&format!("SKU-{}", i % 97)).unwrap()
}

pub fn loc(i: u64) -> LocationId {
    LocationId::new(&format!("wh-{}", i % 3)).unwrap()
}

/// A deterministic variety of commands (every shape the log must round-trip, decimals with
/// trailing zeros included).
pub fn command(i: u64) -> Command {
    match i % 9 {
        0 => Command::Receive {
            sku: sku(i),
            location: loc(i),
            quantity: (i as i64) * 3 + 1,
            unit_cost: Some(Decimal::from_str(&format!("{}.{:02}0", i % 1000, i % 100)).unwrap()),
            reason: "po-ü-\"quoted\"".into(),
        },
        1 => Command::Reserve {
            channel: ChannelId::new("shopify:acme").unwrap(),
            lines: (0..(i % 4 + 1))
                .map(|k| LineRequest {
                    sku: sku(i + k),
                    quantity: k as i64 + 1,
                })
                .collect(),
            ttl_ms: (i % 2 == 0).then_some(60_000),
            order_ref: Some(format!("order-{i}")),
            ship_to_region: None,
            fill: if i % 3 == 0 {
                FillPolicy::Split { max_locations: 2 }
            } else {
                FillPolicy::Partial
            },
        },
        2 => Command::Commit {
            id: ReservationId(i),
            lines: Some(vec![CommitLine {
                sku: sku(i),
                quantity: (i % 2 == 0).then_some(1),
            }]),
        },
        3 => Command::Move {
            sku: sku(i),
            location: loc(i),
            from: Bucket::Available,
            to: Bucket::Damaged,
            quantity: 2,
            reason: String::new(),
        },
        4 => Command::PutLocation {
            location: loc(i),
            kind: LocationKind::ThirdParty,
            name: "Third party".into(),
            region: Some("eu".into()),
            wms: None,
        },
        5 => Command::PutChannel {
            channel: ChannelId::new("b2b").unwrap(),
            kind: ChannelKind::B2b,
            priority: -(i as i32),
        },
        6 => Command::PutBundle {
            sku: sku(i),
            components: vec![Component {
                sku: sku(i + 1),
                quantity: 2,
            }],
        },
        7 => Command::Tick,
        _ => Command::Receive {
            sku: sku(i),
            location: loc(i),
            quantity: 1,
            unit_cost: Some(Decimal::from_str("-0.000000000000000000000000001").unwrap()),
            reason: "x".repeat((i % 50) as usize),
        },
    }
}

pub fn entry(seq: u64) -> LogEntry {
    LogEntry {
        seq,
        now: 1_700_000_000_000 + seq * 7,
        request: Request {
            tenant: TenantId::new("acme").unwrap(),
            key_id: format!("key-{}", seq % 5).into(),
            idempotency_key: (seq % 3 == 0).then(|| format!("idem-{seq}")),
            command: command(seq),
        },
    }
}

/// Entries `first..first + count`.
pub fn entries(first: u64, count: u64) -> Vec<LogEntry> {
    (first..first + count).map(entry).collect()
}

/// Small segments, so a few hundred entries rotate many times.
pub fn small_segments() -> WalOptions {
    WalOptions {
        segment_len_max: 1024,
        write_buffer_max: 256,
        preallocate: 512,
    }
}

/// Where the last record of a segment file starts and where its records end (zeros may follow
/// them; the last record of a file without records is at 0).
pub fn last_record(bytes: &[u8]) -> (usize, usize) {
    let (mut last, mut at) = (0, depot_wal::SEGMENT_HEADER_LEN as usize);
    while at < bytes.len() && bytes[at] != 0 {
        last = at;
        at += depot_wal::format::decode_record(&bytes[at..])
            .unwrap()
            .encoded_len() as usize;
    }
    (last, at)
}

/// The default options without zeros written ahead: a segment file ends at its last record.
pub fn no_zeros() -> WalOptions {
    WalOptions {
        preallocate: 0,
        ..WalOptions::default()
    }
}

/// Opens a writer on `dir` and appends `entries`, syncing every `batch`.
pub fn write(
    dir: impl Directory + 'static,
    options: WalOptions,
    entries: &[LogEntry],
    batch: usize,
) -> WalWriter {
    let mut w = WalWriter::open(Box::new(dir), options).unwrap();
    for chunk in entries.chunks(batch.max(1)) {
        for e in chunk {
            w.append(e).unwrap();
        }
        w.sync().unwrap();
    }
    w
}

/// Asserts decimals kept their exact text (scale included), not just their value.
pub fn assert_same(got: &[LogEntry], want: &[LogEntry]) {
    assert_eq!(got.len(), want.len(), "entry count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w);
        assert_eq!(
            serde_json::to_string(g).unwrap(),
            serde_json::to_string(w).unwrap()
        );
    }
}

/// A request of tenant `acme`.
pub fn req(command: Command) -> Request {
    Request {
        tenant: TenantId::new("acme").unwrap(),
        key_id: "k".into(),
        idempotency_key: None,
        command,
    }
}

/// Tenant `acme`: warehouse `wh`, channel `web`, 1,000 units of `sku-0`..`sku-19`.
pub fn setup(engine: &Engine) {
    let cmds = vec![
        req(Command::CreateTenant),
        req(Command::PutLocation {
            location: LocationId::new("wh").unwrap(),
            kind: LocationKind::Warehouse,
            name: "wh".into(),
            region: None,
            wms: None,
        }),
        req(Command::PutChannel {
            channel: ChannelId::new("web").unwrap(),
            kind: ChannelKind::Shopify,
            priority: 1,
        }),
    ];
    for (r, _) in engine.execute(cmds, 1_000) {
        assert!(r.outcome.is_ok(), "{r:?}");
    }
    let receipts = (0..20)
        .map(|i| {
            req(Command::Receive {
                sku: Sku::new(&format!("sku-{i}")).unwrap(),
                location: LocationId::new("wh").unwrap(),
                quantity: 1_000,
                unit_cost: Some("2.50".parse().unwrap()),
                reason: "po".into(),
            })
        })
        .collect();
    assert!(engine
        .execute(receipts, 1_000)
        .iter()
        .all(|(r, _)| r.outcome.is_ok()));
}
