//! Damage before the tail: a flipped bit anywhere in the log except the last write group, a
//! bad segment header, a missing or misnamed segment. Recovery stops with `Corrupt` naming the
//! file and byte offset, after yielding exactly the entries before it; the writer refuses to
//! open. Damage in the last write group (the records after the last sync) is a torn tail: a
//! crash can keep any pages of an unacknowledged write into the zeros ahead of the records.

mod common;

use common::{entries, small_segments, write};
use depot_wal::format::{decode_record, segment_name, RECORD_VERSION_BINARY_GROUPED};
use depot_wal::{
    flip_bit, read_log, MemDir, Tail, WalError, WalReader, WalWriter, SEGMENT_HEADER_LEN,
};

/// Every record of the log: (segment, offset, seq, encoded length, version). Only the last
/// segment ends in zeros.
fn records(dir: &MemDir) -> Vec<(String, u64, u64, u64, u8)> {
    let mut out = Vec::new();
    let names = dir.names();
    for name in &names {
        let bytes = dir.bytes(name).unwrap();
        let mut at = SEGMENT_HEADER_LEN as usize;
        while at < bytes.len() && (bytes[at] != 0 || Some(name) != names.last()) {
            let r = decode_record(&bytes[at..]).unwrap();
            out.push((name.clone(), at as u64, r.seq, r.encoded_len(), r.version));
            at += r.encoded_len() as usize;
        }
    }
    out
}

/// Where the last write group starts in `records(dir)`: at its last group start.
fn last_group(all: &[(String, u64, u64, u64, u8)]) -> usize {
    all.iter()
        .rposition(|r| r.4 != RECORD_VERSION_BINARY_GROUPED)
        .unwrap()
}

fn copy(dir: &MemDir) -> MemDir {
    let c = MemDir::new();
    for n in dir.names() {
        c.insert(&n, dir.bytes(&n).unwrap());
    }
    c
}

/// Recovery yields entries before `seq` and then fails with `Corrupt { file, offset }`.
fn assert_corrupt_at(dir: &MemDir, file: &str, offset: u64, seq: u64) {
    let mut reader = WalReader::open(dir, 1).unwrap();
    let mut got = Vec::new();
    let err = loop {
        match reader.next_entry() {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("read to the end without noticing the damage in {file} at {offset}"),
            Err(e) => break e,
        }
    };
    match &err {
        WalError::Corrupt {
            file: f, offset: o, ..
        } => {
            assert_eq!((f.as_str(), *o), (file, offset), "{err}")
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert_eq!(got, entries(1, seq - 1), "entries before the damage");
    assert!(
        matches!(reader.next_entry(), Err(WalError::Corrupt { .. })),
        "sticky"
    );
    assert!(reader.next().is_none(), "the iterator ends after an error");
    let w = WalWriter::open(Box::new(dir.clone()), small_segments());
    assert!(
        matches!(w, Err(WalError::Corrupt { .. })),
        "the writer refuses to open"
    );
}

#[test]
fn a_bit_flip_before_the_last_write_group_is_corruption() {
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 120), 10);
    let all = records(&dir);
    assert!(dir.names().len() > 3);
    let group = last_group(&all);
    assert!(all.len() - group > 1, "the last group has several records");
    // Every record before the last group, at bytes of each header field and of the body.
    for (name, offset, seq, len, _) in &all[..group] {
        for at in [0, 1, 2, 5, 6, 13, 14, 17, 18, len / 2, len - 1] {
            let damaged = copy(&dir);
            flip_bit(&damaged, name, offset + at, (at % 8) as u8).unwrap();
            assert_corrupt_at(&damaged, name, *offset, *seq);
        }
    }
}

#[test]
fn a_bad_segment_header_is_corruption() {
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 120), 10);
    // The last segment too: records follow its header, so it is not a torn creation.
    for name in &dir.names() {
        let first = records(&dir).into_iter().find(|r| &r.0 == name).unwrap().2;
        for at in [0, 8, 10, 12, 19, 20, 23] {
            let damaged = copy(&dir);
            flip_bit(&damaged, name, at, 3).unwrap();
            assert_corrupt_at(&damaged, name, 0, first);
        }
    }
}

#[test]
fn a_missing_segment_is_corruption() {
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 120), 10);
    let names = dir.names();
    let damaged = MemDir::new();
    for n in names.iter().filter(|n| *n != &names[2]) {
        damaged.insert(n, dir.bytes(n).unwrap());
    }
    let first_of_3 = records(&dir)
        .into_iter()
        .find(|r| r.0 == names[2])
        .unwrap()
        .2;
    assert_corrupt_at(&damaged, &names[3], 0, first_of_3);
}

#[test]
fn a_segment_that_does_not_continue_the_sequence_is_corruption() {
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 50), 10);
    let names = dir.names();
    let last = names.last().unwrap().clone();
    let damaged = copy(&dir);
    // A whole valid record removed from the end of the previous segment: the next segment
    // no longer continues the sequence.
    let prev = &names[names.len() - 2];
    let prev_records: Vec<_> = records(&dir).into_iter().filter(|x| &x.0 == prev).collect();
    let (_, cut, seq, _, _) = prev_records.last().unwrap().clone();
    damaged.insert(prev, dir.bytes(prev).unwrap()[..cut as usize].to_vec());
    assert_corrupt_at(&damaged, &last, 0, seq);
}

#[test]
fn a_segment_whose_name_disagrees_with_its_header_is_corruption() {
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 5), 5);
    let renamed = MemDir::new();
    renamed.insert(&segment_name(3), dir.bytes(&segment_name(1)).unwrap());
    let err = read_log(&renamed, 3).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { file, offset: 0, reason }
            if file == &segment_name(3) && reason.contains("header says first seq 1")),
        "{err}"
    );
}

#[test]
fn damage_in_the_last_write_group_is_a_torn_tail() {
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 120), 10);
    let all = records(&dir);
    let group = last_group(&all);
    for (name, offset, seq, len, _) in &all[group..] {
        for at in [0, 1, 6, 14, 18, len / 2, len - 1] {
            let damaged = copy(&dir);
            flip_bit(&damaged, name, offset + at, (at % 8) as u8).unwrap();
            let (got, tail) = read_log(&damaged, 1).unwrap();
            assert_eq!(
                tail,
                Tail::Torn {
                    file: name.clone(),
                    offset: *offset
                }
            );
            assert_eq!(got, entries(1, seq - 1));
        }
    }
}

#[test]
fn a_lost_page_of_the_last_write_is_a_torn_tail_and_the_writer_goes_on() {
    // A machine crash during an unacknowledged write into the zeros ahead of the records can
    // keep its later pages and lose an earlier one: the group's start is gone, the records
    // after it are intact.
    let dir = MemDir::new();
    write(dir.clone(), small_segments(), &entries(1, 120), 10);
    let all = records(&dir);
    let group = last_group(&all);
    let (name, offset, seq, len, _) = all[group].clone();
    let damaged = copy(&dir);
    let mut bytes = damaged.bytes(&name).unwrap();
    bytes[offset as usize..(offset + len) as usize].fill(0);
    damaged.insert(&name, bytes);
    let (got, tail) = read_log(&damaged, 1).unwrap();
    assert_eq!(tail, Tail::Torn { file: name, offset });
    assert_eq!(got, entries(1, seq - 1));

    let mut w = WalWriter::open(Box::new(damaged.clone()), small_segments()).unwrap();
    for e in entries(seq, 10) {
        w.append(&e).unwrap();
    }
    w.sync().unwrap();
    let (got, tail) = read_log(&damaged, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_eq!(got, entries(1, seq + 9));
}

#[test]
fn a_record_that_starts_a_later_group_after_damage_proves_corruption() {
    // The same lost record, but a later write group follows it: the damaged record was synced
    // before that group was written, so this is corruption, not a torn write.
    let dir = MemDir::new();
    let mut w = write(dir.clone(), small_segments(), &entries(1, 3), 3);
    w.append(&entries(4, 1)[0]).unwrap();
    w.sync().unwrap();
    drop(w);
    let all = records(&dir);
    assert_eq!(all.iter().map(|r| r.4).collect::<Vec<_>>(), [2, 3, 3, 2]);
    let (name, offset, _, _, _) = all[1].clone();
    let damaged = copy(&dir);
    flip_bit(&damaged, &name, offset + 20, 1).unwrap();
    assert_corrupt_at(&damaged, &name, offset, 2);
}

#[test]
fn in_a_log_written_before_write_groups_any_damage_followed_by_a_record_is_corruption() {
    // Every record version 2, as earlier versions wrote them: each its own group, so a valid
    // record after damage proves the damage was synced, as it always did.
    let dir = MemDir::new();
    let mut seg =
        depot_wal::format::encode_segment_header(depot_wal::format::SegmentHeader { first_seq: 1 })
            .to_vec();
    let mut offsets = Vec::new();
    for e in entries(1, 6) {
        offsets.push(seg.len() as u64);
        let mut body = Vec::new();
        depot_wal::format::encode_entry(&e, &mut body);
        depot_wal::format::encode_record(
            e.seq,
            depot_wal::format::RECORD_VERSION_BINARY,
            &body,
            &mut seg,
        );
    }
    dir.insert(&segment_name(1), seg);
    assert_eq!(read_log(&dir, 1).unwrap(), (entries(1, 6), Tail::Clean));
    for (i, offset) in offsets[..5].iter().enumerate() {
        let damaged = copy(&dir);
        flip_bit(&damaged, &segment_name(1), offset + 20, 2).unwrap();
        assert_corrupt_at(&damaged, &segment_name(1), *offset, i as u64 + 1);
    }
    // The last record has nothing after it: a torn tail, as before.
    let damaged = copy(&dir);
    flip_bit(&damaged, &segment_name(1), offsets[5] + 20, 2).unwrap();
    let (got, tail) = read_log(&damaged, 1).unwrap();
    assert_eq!(got, entries(1, 5));
    assert_eq!(
        tail,
        Tail::Torn {
            file: segment_name(1),
            offset: offsets[5]
        }
    );
}
