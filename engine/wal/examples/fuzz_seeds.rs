//! Writes the seed corpus of the fuzz targets: `cargo run -p depot-wal --example fuzz_seeds
//! -- fuzz/corpus`. Valid records and segments, and the damage recovery must survive: torn
//! tails, flipped bits, a hostile length, zeros, an empty file.

use depot_engine::{Command, LocationId, LogEntry, Request, Sku, TenantId};
use depot_wal::format::{encode_entry, encode_record, RECORD_BODY_MAX};
use depot_wal::{MemDir, WalOptions, WalWriter};
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

fn record(seq: u64) -> Vec<u8> {
    let mut body = Vec::new();
    encode_entry(&entry(seq), &mut body);
    let mut out = Vec::new();
    encode_record(seq, &body, &mut out);
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

    let r = record(7);
    put(root, "record_decoder", "valid-receive", &r);
    put(root, "record_decoder", "valid-tick", &record(8));
    put(root, "record_decoder", "torn", &r[..r.len() / 2]);
    let mut flipped = r.clone();
    flipped[20] ^= 0x08;
    put(root, "record_decoder", "bit-flip", &flipped);
    let mut hostile = r.clone();
    hostile[2..6].copy_from_slice(&(RECORD_BODY_MAX + 1).to_le_bytes());
    put(root, "record_decoder", "hostile-length", &hostile);
    let mut not_json = Vec::new();
    encode_record(3, b"{\"seq\":3,", &mut not_json);
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
}
