//! Writes the seed corpus of the fuzz targets: `cargo run -p depot-wal --example fuzz_seeds
//! -- fuzz/corpus`. Valid records, segments and snapshots, and the damage recovery must
//! survive: torn tails, flipped bits, hostile lengths, zeros, an empty file.

use depot_engine::{
    ChannelId, ChannelKind, Command, LineRequest, LocationId, LocationKind, LogEntry, Machine,
    Request, Sku, TenantId,
};
use depot_wal::format::{
    encode_entry, encode_entry_json, encode_record, RECORD_BODY_MAX, RECORD_VERSION_BINARY,
    RECORD_VERSION_JSON,
};
use depot_wal::{encode_snapshot, MemDir, WalOptions, WalWriter, SNAPSHOT_BODY_MAX};
use std::path::Path;

fn entry(seq: u64) -> LogEntry {
    let command = if seq % 2 == 0 {
        Command::Tick
    } else {
        Command::Receive {
            sku: Sku::new("SKU-1").unwrap(),
            location: LocationId::new("wh-1").unwrap(),
            quantity: seq as i64,
            unit_cost: Some("12.50".parse().unwrap()),
            reason: "po".into(),
        }
    };
    LogEntry {
        seq,
        now: 1_700_000_000_000 + seq,
        request: Request {
            tenant: TenantId::new("acme").unwrap(),
            key_id: "k".into(),
            idempotency_key: None,
            command,
        },
    }
}

/// A record as the writer writes it (binary body).
fn record(seq: u64) -> Vec<u8> {
    let mut body = Vec::new();
    encode_entry(&entry(seq), &mut body);
    let mut out = Vec::new();
    encode_record(seq, RECORD_VERSION_BINARY, &body, &mut out);
    out
}

/// A record as logs written before binary bodies hold it (JSON body).
fn json_record(seq: u64) -> Vec<u8> {
    let mut body = Vec::new();
    encode_entry_json(&entry(seq), &mut body);
    let mut out = Vec::new();
    encode_record(seq, RECORD_VERSION_JSON, &body, &mut out);
    out
}

fn segment(first: u64, count: u64) -> Vec<u8> {
    let dir = MemDir::new();
    let mut w = WalWriter::open(Box::new(dir.clone()), WalOptions::default()).unwrap();
    for seq in first..first + count {
        w.append(&entry(seq)).unwrap();
    }
    w.sync().unwrap();
    dir.bytes(&dir.names()[0]).unwrap()
}

/// The image of a small state: a tenant, two locations, a channel, a bundle, rules, stock, a
/// held and a committed reservation, an idempotency key.
fn image() -> depot_engine::snapshot::Image {
    let mut m = Machine::new(depot_engine::Limits::default(), 2);
    let req = |command, key: Option<&str>| Request {
        tenant: TenantId::new("acme").unwrap(),
        key_id: "k".into(),
        idempotency_key: key.map(str::to_string),
        command,
    };
    let mut cmds = vec![Command::CreateTenant];
    for l in ["wh-1", "wh-2"] {
        cmds.push(Command::PutLocation {
            location: LocationId::new(l).unwrap(),
            kind: LocationKind::Warehouse,
            name: l.into(),
            region: Some("eu".into()),
            wms: None,
        });
    }
    cmds.push(Command::PutChannel {
        channel: ChannelId::new("web").unwrap(),
        kind: ChannelKind::Shopify,
        priority: 3,
    });
    cmds.push(Command::PutBundle {
        sku: Sku::new("KIT").unwrap(),
        components: vec![depot_engine::Component {
            sku: Sku::new("SKU-1").unwrap(),
            quantity: 2,
        }],
    });
    cmds.push(Command::PutRules {
        document: serde_json::from_str(
            r#"{"rules":[{"id":"cap","kind":"cap","channels":["web"],"units":50}]}"#,
        )
        .unwrap(),
    });
    for (s, l) in [("SKU-1", "wh-1"), ("SKU-1", "wh-2"), ("SKU-2", "wh-2")] {
        cmds.push(Command::Receive {
            sku: Sku::new(s).unwrap(),
            location: LocationId::new(l).unwrap(),
            quantity: 40,
            unit_cost: Some("2.50".parse().unwrap()),
            reason: "po".into(),
        });
    }
    for lines in [vec![("SKU-1", 3), ("SKU-2", 1)], vec![("KIT", 1)]] {
        cmds.push(Command::Reserve {
            channel: ChannelId::new("web").unwrap(),
            lines: lines
                .into_iter()
                .map(|(s, q)| LineRequest {
                    sku: Sku::new(s).unwrap(),
                    quantity: q,
                })
                .collect(),
            ttl_ms: Some(60_000),
            order_ref: Some("#1".into()),
            ship_to_region: None,
            fill: Default::default(),
        });
    }
    let n = cmds.len();
    for (i, c) in cmds.into_iter().enumerate() {
        let key = (i + 1 == n).then_some("idem-1");
        let (r, _, _) = m.execute(&req(c, key), 1_700_000_000_000 + i as u64);
        assert!(r.outcome.is_ok(), "{r:?}");
    }
    let (r, _, _) = m.execute(
        &req(
            Command::Commit {
                id: depot_engine::ReservationId(n as u64 - 1),
                lines: None,
            },
            None,
        ),
        1_700_000_001_000,
    );
    assert!(r.outcome.is_ok(), "{r:?}");
    m.image()
}

fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);

    let r = json_record(7);
    put(root, "record_decoder", "valid-receive", &r);
    put(root, "record_decoder", "valid-tick", &json_record(8));
    let b = record(7);
    put(root, "record_decoder", "binary-receive", &b);
    put(root, "record_decoder", "binary-tick", &record(8));
    put(root, "record_decoder", "binary-torn", &b[..b.len() - 3]);
    // A valid checksum over a body whose unit cost option tag is damaged.
    let mut body = Vec::new();
    encode_entry(&entry(7), &mut body);
    let n = body.len();
    body[n - 1 - 2 - 1 - 6] = 9;
    let mut bad_body = Vec::new();
    encode_record(7, RECORD_VERSION_BINARY, &body, &mut bad_body);
    put(root, "record_decoder", "binary-bad-body", &bad_body);
    put(root, "record_decoder", "torn", &r[..r.len() / 2]);
    let mut flipped = r.clone();
    flipped[20] ^= 0x08;
    put(root, "record_decoder", "bit-flip", &flipped);
    let mut hostile = r.clone();
    hostile[2..6].copy_from_slice(&(RECORD_BODY_MAX + 1).to_le_bytes());
    put(root, "record_decoder", "hostile-length", &hostile);
    let mut not_json = Vec::new();
    encode_record(3, RECORD_VERSION_JSON, b"{\"seq\":3,", &mut not_json);
    put(root, "record_decoder", "body-not-json", &not_json);
    put(root, "record_decoder", "empty", &[]);

    let s = segment(1, 5);
    put(root, "segment_reader", "valid-5", &s);
    put(
        root,
        "segment_reader",
        "valid-from-1000",
        &segment(1_000, 3),
    );
    let mut legacy = s[..24].to_vec();
    for seq in 1..=3 {
        legacy.extend(json_record(seq));
    }
    put(root, "segment_reader", "json-records-3", &legacy);
    put(root, "segment_reader", "header-only", &s[..24]);
    put(root, "segment_reader", "torn-header", &s[..13]);
    put(root, "segment_reader", "torn-tail", &s[..s.len() - 7]);
    let mut zeros = s.clone();
    zeros.extend([0u8; 64]);
    put(root, "segment_reader", "zero-tail", &zeros);
    let mut mid = s.clone();
    mid[40] ^= 0x01;
    put(root, "segment_reader", "bit-flip-middle", &mid);
    let mut last = s.clone();
    let n = last.len();
    last[n - 2] ^= 0x80;
    put(root, "segment_reader", "bit-flip-last", &last);
    put(root, "segment_reader", "empty", &[]);

    let img = image();
    let body = depot_engine::snapshot::to_bytes(&img);
    let file = encode_snapshot(img.seq, &body);
    put(root, "snapshot_loader", "valid-file", &file);
    put(root, "snapshot_loader", "valid-image", &body);
    // The same state as version 1 of the image wrote it (every stored response as JSON).
    let old = depot_engine::snapshot::v1::to_bytes(&img);
    put(
        root,
        "snapshot_loader",
        "valid-file-image-v1",
        &encode_snapshot(img.seq, &old),
    );
    // As version 3 wrote it (answers inline, none by reference to its reservation).
    put(
        root,
        "snapshot_loader",
        "valid-file-image-v3",
        &encode_snapshot(img.seq, &depot_engine::snapshot::v3::to_bytes(&img, 3)),
    );
    // As version 4 wrote it: this layout, its fingerprints 32-byte BLAKE3 digests (of what
    // does not matter to the loader).
    let mut v4 = img.clone();
    v4.version = 4;
    for e in &mut v4.idempotency {
        e.fingerprint = *blake3::hash(&e.fingerprint).as_bytes();
    }
    put(
        root,
        "snapshot_loader",
        "valid-file-image-v4",
        &encode_snapshot(img.seq, &depot_engine::snapshot::to_bytes(&v4)),
    );
    let empty = depot_engine::snapshot::to_bytes(&Machine::new(Default::default(), 1).image());
    put(
        root,
        "snapshot_loader",
        "empty-state",
        &encode_snapshot(0, &empty),
    );
    put(root, "snapshot_loader", "torn", &file[..file.len() / 2]);
    let mut flipped = file.clone();
    flipped[100] ^= 0x10;
    put(root, "snapshot_loader", "bit-flip", &flipped);
    let mut hostile = file.clone();
    hostile[20..28].copy_from_slice(&(SNAPSHOT_BODY_MAX + 1).to_le_bytes());
    put(root, "snapshot_loader", "hostile-length", &hostile);
    // A checksum that matches a damaged image: only rkyv's validation can refuse it.
    let mut bad_body = body.clone();
    let n = bad_body.len();
    bad_body[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
    put(
        root,
        "snapshot_loader",
        "damaged-image-valid-checksum",
        &encode_snapshot(img.seq, &bad_body),
    );
    put(
        root,
        "snapshot_loader",
        "seq-mismatch",
        &encode_snapshot(img.seq + 1, &body),
    );
    put(root, "snapshot_loader", "empty", &[]);
}
