//! A crash that cuts the last write short: recovery yields every earlier entry and reports the
//! torn tail, the reopened writer truncates it, and appends go on. Checked at every byte
//! offset of the last record and of a new segment's header. The logs are written without
//! zeros ahead of the records, so that a cut file ends where the write was cut; zeros after
//! the last whole record are a clean end.

mod common;

use common::{assert_same, entries, entry, no_zeros, small_segments, write};
use depot_wal::format::segment_name;
use depot_wal::{read_log, FaultDir, MemDir, Tail, WalOptions, WalWriter, SEGMENT_HEADER_LEN};

/// A copy of `dir` whose file `name` holds `bytes`.
fn with_file(dir: &MemDir, name: &str, bytes: Vec<u8>) -> MemDir {
    let copy = MemDir::new();
    for n in dir.names() {
        copy.insert(&n, dir.bytes(&n).unwrap());
    }
    copy.insert(name, bytes);
    copy
}

/// Recovery of `dir` gives entries `1..=count` and `tail`; a writer reopened on it truncates,
/// and two more entries append and read back.
fn check(dir: &MemDir, count: u64, tail: Tail) {
    let (got, found) = read_log(dir, 1).unwrap();
    assert_eq!(found, tail);
    assert_same(&got, &entries(1, count));
    let mut w = WalWriter::open(Box::new(dir.clone()), small_segments()).unwrap();
    assert_eq!(w.next_seq(), Some(count + 1));
    w.append(&entry(count + 1)).unwrap();
    w.append(&entry(count + 2)).unwrap();
    w.sync().unwrap();
    let (got, found) = read_log(dir, 1).unwrap();
    assert_eq!(found, Tail::Clean);
    assert_same(&got, &entries(1, count + 2));
}

#[test]
fn a_torn_last_record_at_every_byte_offset() {
    let dir = MemDir::new();
    let options = WalOptions {
        preallocate: 0,
        ..small_segments()
    };
    let mut w = write(dir.clone(), options, &entries(1, 40), 40);
    let last = dir.names().pop().unwrap();
    let before = dir.bytes(&last).unwrap().len();
    w.append(&entry(41)).unwrap();
    w.sync().unwrap();
    assert_eq!(
        dir.names().last(),
        Some(&last),
        "entry 41 shares the last segment"
    );
    let full = dir.bytes(&last).unwrap();
    assert!(full.len() - before > 50);
    for cut in before..full.len() {
        let torn = Tail::Torn {
            file: last.clone(),
            offset: before as u64,
        };
        let expect = if cut == before {
            Tail::Clean
        } else {
            torn.clone()
        };
        check(
            &with_file(&dir, &last, full[..cut].to_vec()),
            40,
            expect.clone(),
        );
        // The file system may also leave zeros or stale bytes past the write.
        let mut zeros = full[..cut].to_vec();
        zeros.resize(full.len() + 100, 0);
        check(&with_file(&dir, &last, zeros), 40, expect);
        let mut junk = full[..cut].to_vec();
        junk.extend(std::iter::repeat_n(0xd7, 40));
        check(&with_file(&dir, &last, junk), 40, torn);
    }
}

#[test]
fn a_checksum_failure_in_the_last_record_is_a_torn_tail() {
    let dir = MemDir::new();
    write(dir.clone(), no_zeros(), &entries(1, 10), 10);
    let name = segment_name(1);
    let full = dir.bytes(&name).unwrap();
    let mut bad = full.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x10;
    // Recovery cannot tell a flipped bit in the last record from a torn write of it.
    let probe = with_file(&dir, &name, full[..n - 1].to_vec());
    let Tail::Torn { offset, .. } = read_log(&probe, 1).unwrap().1 else {
        panic!("not torn")
    };
    check(
        &with_file(&dir, &name, bad),
        9,
        Tail::Torn { file: name, offset },
    );
}

#[test]
fn a_torn_segment_header_at_every_byte_offset() {
    let dir = MemDir::new();
    write(dir.clone(), no_zeros(), &entries(1, 30), 30);
    let next = segment_name(31);
    let header = {
        let probe = MemDir::new();
        write(probe.clone(), no_zeros(), &entries(31, 1), 1);
        probe.bytes(&next).unwrap()[..SEGMENT_HEADER_LEN as usize].to_vec()
    };
    for cut in 0..SEGMENT_HEADER_LEN as usize {
        let torn = Tail::Torn {
            file: next.clone(),
            offset: 0,
        };
        check(&with_file(&dir, &next, header[..cut].to_vec()), 30, torn);
    }
    check(&with_file(&dir, &next, header), 30, Tail::Clean);
}

#[test]
fn a_crash_in_the_middle_of_any_write_recovers() {
    for crash_at in (0..3_000).step_by(37) {
        let mem = MemDir::new();
        let faulty = FaultDir::new(mem.clone());
        let mut w = write(faulty.clone(), small_segments(), &entries(1, 20), 5);
        faulty.crash_after(crash_at);
        let mut synced = 20;
        for seq in 21..200 {
            if w.append(&entry(seq)).is_err() || w.sync().is_err() {
                break;
            }
            synced = seq;
        }
        assert!(faulty.crashed(), "crash_at {crash_at}");
        drop(w);
        // The process died; the page cache kept whatever prefix reached it.
        let (got, _) = read_log(&mem, 1).unwrap();
        assert!(
            got.len() as u64 >= synced,
            "crash_at {crash_at}: lost a synced entry"
        );
        assert_same(&got, &entries(1, got.len() as u64));
        check(&mem, got.len() as u64, read_log(&mem, 1).unwrap().1);
    }
}
