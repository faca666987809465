//! Zeros written ahead of the records (`WalOptions::preallocate`): only the last segment ends in
//! them, recovery reads them as a clean end, a reopened writer writes over them, a crash keeps
//! what was synced, a full disk while writing them costs nothing, and the log's byte count
//! counts records only.

mod common;

use common::{entries, entry, last_record, small_segments, write};
use depot_wal::format::decode_record;
use depot_wal::{
    log_bytes_after, read_log, FaultDir, MemDir, Tail, WalOptions, WalWriter, SEGMENT_HEADER_LEN,
};

/// Where the records of a segment file end (zeros may follow them).
fn records_end(bytes: &[u8]) -> usize {
    last_record(bytes).1
}

#[test]
fn only_the_last_segment_ends_in_zeros_and_they_read_as_a_clean_end() {
    let dir = MemDir::new();
    let options = small_segments();
    write(dir.clone(), options, &entries(1, 200), 7);
    let names = dir.names();
    assert!(names.len() > 3);
    for name in &names[..names.len() - 1] {
        let bytes = dir.bytes(name).unwrap();
        assert_eq!(
            records_end(&bytes),
            bytes.len(),
            "{name} ends at its records"
        );
    }
    let last = dir.bytes(names.last().unwrap()).unwrap();
    let end = records_end(&last);
    assert!(last.len() > end, "zeros follow the last records");
    assert!(last.len() as u64 <= options.segment_len_max);
    assert!(last[end..].iter().all(|&b| b == 0));
    assert_eq!(read_log(&dir, 1).unwrap(), (entries(1, 200), Tail::Clean));
}

#[test]
fn a_reopened_writer_writes_over_the_zeros() {
    let dir = MemDir::new();
    let options = WalOptions {
        segment_len_max: 1 << 20,
        write_buffer_max: 256,
        preallocate: 64 * 1024,
    };
    drop(write(dir.clone(), options, &entries(1, 10), 10));
    let name = dir.names().pop().unwrap();
    let before = dir.bytes(&name).unwrap();
    let end = records_end(&before);
    assert!(before.len() >= end + 32 * 1024, "{} {end}", before.len());

    let mut w = WalWriter::open(Box::new(dir.clone()), options).unwrap();
    assert_eq!(w.next_seq(), Some(11));
    w.append(&entry(11)).unwrap();
    w.sync().unwrap();
    let after = dir.bytes(&name).unwrap();
    assert_eq!(after[..end], before[..end]);
    // The new record follows the old ones, in what were zeros, and zeros follow it.
    let record = decode_record(&after[end..]).unwrap();
    assert_eq!(record.seq, 11);
    assert_eq!(records_end(&after), end + record.encoded_len() as usize);
    assert!(after.len() > records_end(&after));
    assert_eq!(read_log(&dir, 1).unwrap(), (entries(1, 11), Tail::Clean));
}

#[test]
fn a_crash_keeps_the_synced_records_and_zeros() {
    let dir = MemDir::new();
    let mut w = write(dir.clone(), small_segments(), &entries(1, 50), 5);
    for e in entries(51, 3) {
        w.append(&e).unwrap();
    }
    drop(w);
    dir.crash();
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(got, entries(1, 50));
    assert_eq!(tail, Tail::Clean);
    let mut w = WalWriter::open(Box::new(dir.clone()), small_segments()).unwrap();
    w.append(&entry(51)).unwrap();
    w.sync().unwrap();
    assert_eq!(read_log(&dir, 1).unwrap(), (entries(1, 51), Tail::Clean));
}

#[test]
fn a_full_disk_while_writing_zeros_does_not_stop_the_writer() {
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let options = WalOptions {
        segment_len_max: 1 << 20,
        write_buffer_max: 64,
        preallocate: 64 * 1024,
    };
    // Room for the header, a few records and a little of the first 16 KiB of zeros.
    faulty.set_space_left(Some(2_000));
    let mut w = WalWriter::open(Box::new(faulty.clone()), options).unwrap();
    let mut synced = 0;
    for seq in 1..200 {
        match w.append(&entry(seq)).and_then(|()| w.sync()) {
            Ok(()) => synced = seq,
            Err(e) => {
                assert!(matches!(e, depot_wal::WalError::DiskFull { .. }), "{e}");
                break;
            }
        }
    }
    assert!(
        synced >= 3,
        "records went on after the zeros failed: {synced}"
    );
    drop(w);
    let (got, tail) = read_log(&mem, 1).unwrap();
    assert_eq!(got, entries(1, synced));
    assert!(matches!(tail, Tail::Clean | Tail::Torn { .. }), "{tail:?}");
}

#[test]
fn the_log_byte_count_counts_records_not_zeros() {
    let dir = MemDir::new();
    let options = small_segments();
    let mut w = write(dir.clone(), options, &entries(1, 60), 6);
    let appended = w.appended_bytes();
    w.sync().unwrap();
    let header_bytes = SEGMENT_HEADER_LEN * dir.names().len() as u64;
    let files: u64 = dir
        .names()
        .iter()
        .map(|n| dir.bytes(n).unwrap().len() as u64)
        .sum();
    assert!(files > appended + header_bytes, "zeros are on disk");
    // Everything after seq 0: every record, as the writer counted them.
    assert_eq!(log_bytes_after(&dir, 0).unwrap(), appended);
    // After the last seq: nothing, though zeros follow it.
    assert_eq!(log_bytes_after(&dir, 60).unwrap(), 0);
}
