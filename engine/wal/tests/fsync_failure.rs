//! A failed fsync is fatal: the writer reports `SyncFailed` and refuses every later call,
//! without ever retrying the sync, and what was synced before reads back intact.

mod common;

use common::{assert_same, entries, entry, small_segments, write};
use depot_wal::{read_log, FaultDir, MemDir, WalError, WalOptions, WalWriter};

fn assert_sync_failed(r: Result<(), WalError>) {
    assert!(matches!(r, Err(WalError::SyncFailed { .. })), "{r:?}");
}

#[test]
fn a_failed_fsync_stops_the_writer_for_good() {
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let mut w = write(faulty.clone(), WalOptions::default(), &entries(1, 10), 5);
    faulty.set_fail_sync(true);
    w.append(&entry(11)).unwrap();
    let err = w.sync().unwrap_err();
    assert!(
        matches!(&err, WalError::SyncFailed { file, .. } if file == "wal-00000000000000000001.log"),
        "{err}"
    );
    assert_eq!(w.durable_seq(), Some(10));
    // The medium recovers; the writer does not: the kernel may have dropped the pages.
    faulty.set_fail_sync(false);
    let syncs = faulty.syncs();
    assert_sync_failed(w.append(&entry(12)));
    assert_sync_failed(w.sync());
    assert_sync_failed(w.sync());
    assert_eq!(faulty.syncs(), syncs, "a failed fsync is never retried");
    assert!(w.stopped().is_some());
    drop(w);
    // After a restart, recovery has everything synced (and perhaps the unsynced entry).
    let (got, _) = read_log(&mem, 1).unwrap();
    assert!(got.len() >= 10);
    assert_same(&got, &entries(1, got.len() as u64));
}

#[test]
fn a_failed_fsync_while_rotating_stops_the_writer() {
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let mut w = write(faulty.clone(), small_segments(), &entries(1, 5), 5);
    faulty.set_fail_sync(true);
    let mut result = Ok(());
    for seq in 6..200 {
        result = w.append(&entry(seq));
        if result.is_err() {
            break;
        }
    }
    assert_sync_failed(result);
    faulty.set_fail_sync(false);
    assert_sync_failed(w.sync());
    drop(w);
    let (got, _) = read_log(&mem, 1).unwrap();
    assert_same(&got, &entries(1, got.len() as u64));
    assert!(got.len() >= 5);
}

#[test]
fn a_failed_directory_fsync_when_creating_a_segment_stops_the_writer() {
    let faulty = FaultDir::new(MemDir::new());
    let mut w = WalWriter::open(Box::new(faulty.clone()), WalOptions::default()).unwrap();
    faulty.set_fail_sync(true);
    assert_sync_failed(w.append(&entry(1)));
    faulty.set_fail_sync(false);
    assert_sync_failed(w.append(&entry(1)));
}

#[test]
fn opening_on_a_medium_that_cannot_sync_fails() {
    let mem = MemDir::new();
    write(mem.clone(), WalOptions::default(), &entries(1, 3), 3);
    let faulty = FaultDir::new(mem);
    faulty.set_fail_sync(true);
    let r = WalWriter::open(Box::new(faulty), WalOptions::default());
    assert!(matches!(r, Err(WalError::SyncFailed { .. })), "{r:?}");
}
