//! Many log entries written across many segment rotations read back exactly, from any seq;
//! a reopened log goes on where it ended; a crash keeps every synced entry.

mod common;

use common::{assert_same, entries, entry, small_segments, write};
use depot_wal::format::{decode_segment_header, parse_segment_name};
use depot_wal::{read_log, MemDir, Tail, WalError, WalOptions, WalReader, WalWriter};

#[test]
fn entries_round_trip_across_rotations() {
    let dir = MemDir::new();
    let want = entries(1, 600);
    let w = write(dir.clone(), small_segments(), &want, 7);
    assert_eq!(w.next_seq(), Some(601));
    assert_eq!(w.durable_seq(), Some(600));
    let names = dir.names();
    assert!(names.len() > 20, "rotated only {} times", names.len());
    for name in &names {
        let bytes = dir.bytes(name).unwrap();
        let header = decode_segment_header(&bytes).unwrap();
        assert_eq!(Some(header.first_seq), parse_segment_name(name));
        assert!(bytes.len() <= 4096, "{name} is {} bytes", bytes.len());
    }
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_same(&got, &want);
}

#[test]
fn reading_from_a_seq_skips_earlier_entries() {
    let dir = MemDir::new();
    let want = entries(1, 300);
    write(dir.clone(), small_segments(), &want, 50);
    for from in [1, 2, 57, 150, 299, 300, 301, 1000] {
        let mut reader = WalReader::open(&dir, from).unwrap();
        let got: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        let from_index = (from as usize - 1).min(want.len());
        assert_same(&got, &want[from_index..]);
        assert_eq!(reader.tail(), Some(&Tail::Clean));
        assert_eq!(reader.next_seq(), Some(301));
    }
}

#[test]
fn a_log_that_starts_later_refuses_an_earlier_start() {
    let dir = MemDir::new();
    write(dir.clone(), WalOptions::default(), &entries(1_000, 5), 5);
    let err = WalReader::open(&dir, 10).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::Gap {
                from: 10,
                first: 1_000
            }
        ),
        "{err}"
    );
    let (got, _) = read_log(&dir, 1_000).unwrap();
    assert_eq!(got.len(), 5);
}

#[test]
fn an_empty_directory_is_an_empty_log() {
    let dir = MemDir::new();
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert!(got.is_empty());
    assert_eq!(tail, Tail::Clean);
    let w = WalWriter::open(Box::new(dir.clone()), WalOptions::default()).unwrap();
    assert_eq!(w.next_seq(), None);
    assert!(dir.names().is_empty(), "no segment before the first append");
}

#[test]
fn a_reopened_log_continues_where_it_ended() {
    let dir = MemDir::new();
    let first = entries(1, 100);
    drop(write(dir.clone(), small_segments(), &first, 10));
    let mut w = WalWriter::open(Box::new(dir.clone()), small_segments()).unwrap();
    assert_eq!(w.next_seq(), Some(101));
    assert_eq!(w.durable_seq(), Some(100));
    let err = w.append(&entry(103)).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::OutOfOrder {
                expected: 101,
                seq: 103
            }
        ),
        "{err}"
    );
    // Out of order is the caller's mistake, not the medium's: the writer goes on.
    for e in entries(101, 100) {
        w.append(&e).unwrap();
    }
    w.sync().unwrap();
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_same(&got, &entries(1, 200));
}

#[test]
fn a_crash_keeps_every_synced_entry_and_loses_only_unsynced_ones() {
    let dir = MemDir::new();
    let mut w = write(dir.clone(), small_segments(), &entries(1, 250), 25);
    for e in entries(251, 3) {
        w.append(&e).unwrap();
    }
    drop(w);
    dir.crash();
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    // Unsynced entries may survive (a rotation syncs the full segment), synced ones must.
    let n = got.len() as u64;
    assert!((250..=253).contains(&n), "{n}");
    assert_same(&got, &entries(1, n));
    let mut w = WalWriter::open(Box::new(dir.clone()), small_segments()).unwrap();
    assert_eq!(w.next_seq(), Some(n + 1));
    w.append(&entry(n + 1)).unwrap();
    w.sync().unwrap();
    dir.crash();
    assert_same(&read_log(&dir, 1).unwrap().0, &entries(1, n + 1));
}
