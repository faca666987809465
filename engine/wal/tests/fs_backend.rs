//! The same log on the real file system (a temporary directory): round trip across rotations
//! and reopening, a torn tail cut on reopen, a flipped bit found, a full disk.

mod common;

use common::{assert_same, entries, entry, last_record, small_segments, write};
use depot_wal::{read_log, FaultDir, FsDir, Tail, WalError, WalOptions, WalWriter};
use std::fs;

#[test]
fn round_trip_and_reopen_on_the_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FsDir::open(tmp.path().join("wal")).unwrap();
    fs::write(dir.path().join("README"), "not a segment").unwrap();
    drop(write(dir.clone(), small_segments(), &entries(1, 150), 20));
    let mut w =
        WalWriter::open(Box::new(FsDir::open(dir.path()).unwrap()), small_segments()).unwrap();
    assert_eq!(w.next_seq(), Some(151));
    for e in entries(151, 50) {
        w.append(&e).unwrap();
    }
    w.sync().unwrap();
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert_eq!(tail, Tail::Clean);
    assert_same(&got, &entries(1, 200));
    let segments = fs::read_dir(dir.path()).unwrap().count() - 1;
    assert!(segments > 5, "{segments} segments");
}

#[test]
fn a_torn_tail_on_the_file_system_is_cut_on_reopen() {
    for preallocate in [0, WalOptions::default().preallocate] {
        torn_tail_is_cut(WalOptions {
            preallocate,
            ..WalOptions::default()
        });
    }
}

fn torn_tail_is_cut(options: WalOptions) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FsDir::open(tmp.path()).unwrap();
    drop(write(dir.clone(), options, &entries(1, 20), 20));
    let path = tmp.path().join("wal-00000000000000000001.log");
    let mut bytes = fs::read(&path).unwrap();
    let (last, end) = last_record(&bytes);
    if options.preallocate == 0 {
        // A write cut short: the file ends inside the last record.
        assert_eq!(end, bytes.len());
        bytes.truncate(end - 5);
    } else {
        // A write into the zeros ahead that kept only the start of the last record (its
        // checksum and body are zeros again).
        assert!(bytes.len() > end);
        bytes[last + 14..end].fill(0);
    }
    fs::write(&path, bytes).unwrap();
    let (got, tail) = read_log(&dir, 1).unwrap();
    assert_same(&got, &entries(1, 19));
    let Tail::Torn { file, offset } = tail else {
        panic!("{tail:?}")
    };
    assert_eq!(file, "wal-00000000000000000001.log");
    let mut w = WalWriter::open(Box::new(dir.clone()), options).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        offset,
        "truncated at the torn record"
    );
    w.append(&entry(20)).unwrap();
    w.sync().unwrap();
    assert_eq!(read_log(&dir, 1).unwrap(), (entries(1, 20), Tail::Clean));
}

#[test]
fn a_flipped_bit_on_the_file_system_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FsDir::open(tmp.path()).unwrap();
    // Synced in groups of five: the damaged record (the second) is followed by later groups.
    drop(write(
        dir.clone(),
        WalOptions::default(),
        &entries(1, 20),
        5,
    ));
    let path = tmp.path().join("wal-00000000000000000001.log");
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 4;
    fs::write(&path, bytes).unwrap();
    let err = read_log(&dir, 1).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { file, offset, .. }
            if file == "wal-00000000000000000001.log" && *offset <= 100),
        "{err}"
    );
}

#[test]
fn a_full_disk_on_the_file_system_keeps_what_was_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FsDir::open(tmp.path()).unwrap();
    let faulty = FaultDir::new(dir.clone());
    let mut w = write(faulty.clone(), small_segments(), &entries(1, 30), 10);
    faulty.set_space_left(Some(1_000));
    let mut synced = 30;
    for seq in 31..200 {
        match w.append(&entry(seq)).and_then(|()| w.sync()) {
            Ok(()) => synced = seq,
            Err(e) => {
                assert!(matches!(e, WalError::DiskFull { .. }), "{e}");
                break;
            }
        }
    }
    drop(w);
    assert_eq!(
        read_log(&dir, 1).unwrap(),
        (entries(1, synced), Tail::Clean)
    );
}
