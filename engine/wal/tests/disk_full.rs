//! A full disk: the writer reports `DiskFull` and refuses every later write, nothing on the
//! medium is corrupted, everything synced before reads back, and once there is space again a
//! restarted writer goes on.

mod common;

use common::{assert_same, entries, entry, small_segments, write};
use depot_wal::{read_log, sync_log, FaultDir, MemDir, Tail, WalError, WalWriter};

fn assert_disk_full<T: std::fmt::Debug>(r: Result<T, WalError>) {
    assert!(matches!(r, Err(WalError::DiskFull { .. })), "{r:?}");
}

#[test]
fn a_full_disk_stops_appends_and_keeps_what_was_synced() {
    let mem = MemDir::new();
    let faulty = FaultDir::new(mem.clone());
    let mut w = write(faulty.clone(), small_segments(), &entries(1, 50), 10);
    faulty.set_space_left(Some(700));
    let mut synced = 50;
    let err = loop {
        let seq = synced + 1;
        if let Err(e) = w.append(&entry(seq)).and_then(|()| w.sync()) {
            break e;
        }
        synced = seq;
    };
    assert!(matches!(err, WalError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    // Sticky: even after space is freed, this writer writes nothing more.
    faulty.set_space_left(None);
    let written = faulty.bytes_written();
    assert_disk_full(w.append(&entry(synced + 1)));
    assert_disk_full(w.sync());
    assert_eq!(faulty.bytes_written(), written);
    drop(w);
    let (got, tail) = read_log(&mem, 1).unwrap();
    assert_eq!(tail, Tail::Clean, "the partial write was cut");
    assert_same(&got, &entries(1, synced));
    // A restarted writer, with space again, goes on.
    let mut w = WalWriter::open(Box::new(mem.clone()), small_segments()).unwrap();
    w.append(&entry(synced + 1)).unwrap();
    w.sync().unwrap();
    assert_same(&read_log(&mem, 1).unwrap().0, &entries(1, synced + 1));
}

#[test]
fn a_full_disk_at_any_byte_corrupts_nothing() {
    for space in (0..6_000).step_by(53) {
        let mem = MemDir::new();
        let faulty = FaultDir::new(mem.clone());
        let mut w = write(faulty.clone(), small_segments(), &entries(1, 10), 10);
        faulty.set_space_left(Some(space));
        let mut synced = 10;
        for seq in 11..300 {
            match w.append(&entry(seq)).and_then(|()| w.sync()) {
                Ok(()) => synced = seq,
                Err(e) => {
                    assert!(matches!(e, WalError::DiskFull { .. }), "space {space}: {e}");
                    break;
                }
            }
        }
        drop(w);
        mem.crash();
        let (got, _) = read_log(&mem, 1).unwrap();
        assert_same(&got, &entries(1, synced));
        let mut w = WalWriter::open(Box::new(mem.clone()), small_segments()).unwrap();
        w.append(&entry(synced + 1)).unwrap();
        w.sync().unwrap();
    }
}

/// A writer stopped by a full disk may have written records it never synced (its buffer went
/// out before the failing write). Recovery reads them from the page cache; `sync_log` makes
/// them durable without writing, and fails (it never pretends) when the sync does.
#[test]
fn sync_log_makes_records_read_back_durable() {
    // 10 entries synced, then some on the medium (written when the buffer filled) but not
    // synced: `n` in all read back.
    let unsynced = || {
        let mem = MemDir::new();
        let faulty = FaultDir::new(mem.clone());
        let mut w = write(faulty.clone(), small_segments(), &entries(1, 10), 10);
        for seq in 11..=16 {
            w.append(&entry(seq)).unwrap();
        }
        drop(w);
        let n = read_log(&mem, 1).unwrap().0.len() as u64;
        assert!(n > 10, "{n}");
        assert_same(&read_log(&mem, 1).unwrap().0, &entries(1, n));
        (mem, faulty, n)
    };
    // Without the sync a crash loses them...
    let (mem, _, n) = unsynced();
    mem.crash();
    let kept = read_log(&mem, 1).unwrap().0.len() as u64;
    assert!((10..n).contains(&kept), "{kept} of {n}");
    // ...with it, it does not, and nothing is written.
    let (mem, faulty, n) = unsynced();
    faulty.set_fail_sync(true);
    let err = sync_log(&faulty).unwrap_err();
    assert!(matches!(err, WalError::SyncFailed { .. }), "{err}");
    faulty.set_fail_sync(false);
    let written = faulty.bytes_written();
    sync_log(&faulty).unwrap();
    assert_eq!(faulty.bytes_written(), written);
    mem.crash();
    assert_same(&read_log(&mem, 1).unwrap().0, &entries(1, n));
    // An empty directory has nothing to sync.
    sync_log(&MemDir::new()).unwrap();
}
