//! Opening the durable engine of `depot serve`: recovery from `<data-dir>/wal`, then the
//! write-ahead log with the chosen [`SyncMode`].
//!
//! - `always`: depot-wal's group commit as it is; an answer waits for its `fdatasync`.
//! - `interval=<ms>`: the same log, synced continuously, but an answer only waits for the disk
//!   when the oldest write not yet durable is older than the interval ([`LaggingJournal`]).
//! - `none`: the log's files skip `fdatasync` ([`UnsyncedDir`]); the kernel writes them back.

use super::config::SyncMode;
use depot_engine::{Engine, Event, Journal, JournalError, Limits, LogEntry, Seq};
use depot_wal::{Directory, FsDir, Storage, Tail, WalError, WalJournal, WalOptions, WalWriter};
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The engine and its log, as recovery left them.
#[derive(Debug)]
pub struct Durable {
    pub engine: Engine,
    pub journal: Arc<WalJournal>,
    pub tail: Tail,
    /// The last events of the replayed log, oldest first.
    pub recent_events: Vec<Event>,
}

/// Recovers the state in `wal_dir` and starts the engine on it, logging with `sync`.
pub fn open(
    wal_dir: &Path,
    sync: SyncMode,
    limits: Limits,
    shards: usize,
    events_kept: usize,
) -> Result<Durable, WalError> {
    let fs = FsDir::open(wal_dir).map_err(|source| WalError::Io {
        file: wal_dir.display().to_string(),
        source,
    })?;
    let dir: Box<dyn Directory> = match (sync, injected_fault()?) {
        (SyncMode::None, None) => Box::new(UnsyncedDir(fs)),
        (_, None) => Box::new(fs),
        (SyncMode::None, Some(_)) => {
            return Err(fault_error("needs --sync always or interval=<ms>"))
        }
        (_, Some(fault)) => {
            tracing::warn!(
                ?fault,
                "{INJECT_FAULT_ENV}: the log's medium will fail on purpose"
            );
            let dir = depot_wal::FaultDir::new(fs);
            match fault {
                Fault::SyncFailsAfter(n) => dir.fail_sync_after(n),
                Fault::DiskFullAfter(bytes) => dir.set_space_left(Some(bytes)),
            }
            Box::new(dir)
        }
    };
    // The newest events of the replayed log, so event cursors survive a restart (as far back
    // as the snapshot recovery starts from, at most `events_kept`; the replay builds the events
    // of the last `events_kept` entries at least, and of a contiguous run of entries).
    let mut recent: VecDeque<Event> = VecDeque::new();
    let (machine, tail) = depot_wal::recover_with_events(
        &*dir,
        limits.clone(),
        shards,
        events_kept as u64,
        &mut |entry, events| {
            // A retried start (a snapshot ahead of the log) replays entries again: keep one copy.
            while recent.back().is_some_and(|e| e.seq >= entry.seq) {
                recent.pop_back();
            }
            recent.extend(events);
            while recent.len() > events_kept {
                recent.pop_front();
            }
        },
    )?;
    let recovered = machine.front.seq;
    let writer = WalWriter::open(dir, WalOptions::default())?;
    let journal = Arc::new(WalJournal::start_at(writer, recovered));
    let hook: Arc<dyn Journal> = match sync {
        SyncMode::Interval(lag_max) => Arc::new(LaggingJournal {
            inner: journal.clone(),
            lag_max,
            pending: Mutex::new(VecDeque::new()),
        }),
        _ => journal.clone(),
    };
    let engine = Engine::from_machine(machine, limits, Some(hook));
    Ok(Durable {
        engine,
        journal,
        tail,
        recent_events: recent.into(),
    })
}

/// The state the disk holds, for a server whose log has stopped for good (a full disk): the
/// log is recovered again, read only, and made durable as it is ([`depot_wal::sync_log`]: the
/// stopped writer may have written records it never synced). The engine gets `journal`, the
/// stopped log, so it refuses every write with the log's error, as before.
pub fn reload(
    wal_dir: &Path,
    limits: Limits,
    shards: usize,
    journal: Arc<WalJournal>,
) -> Result<Engine, WalError> {
    let dir = FsDir::open(wal_dir).map_err(|source| WalError::Io {
        file: wal_dir.display().to_string(),
        source,
    })?;
    let (machine, _) = depot_wal::recover(&dir, limits.clone(), shards)?;
    depot_wal::sync_log(&dir)?;
    Ok(Engine::from_machine(machine, limits, Some(journal)))
}

/// A test seam: `DEPOT_INJECT_FAULT=fsync-after=N` makes every sync of the log fail (`EIO`)
/// once N more have succeeded, `disk-full-after=BYTES` makes its writes fail (`ENOSPC`) once
/// the log's files grew by that many bytes (depot-wal's `FaultDir` over the real directory;
/// writes over the zeros the log writes ahead take no space), so that what the server
/// does when its log fails is tested on the real binary (`tests/log_failure.rs`). Only builds
/// with the `fault-injection` feature (this package's tests) read it; any other build warns
/// that it is set and ignores it.
pub const INJECT_FAULT_ENV: &str = "DEPOT_INJECT_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Without the seam no fault is ever made.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
enum Fault {
    SyncFailsAfter(u64),
    DiskFullAfter(u64),
}

#[cfg(not(feature = "fault-injection"))]
fn injected_fault() -> Result<Option<Fault>, WalError> {
    if std::env::var_os(INJECT_FAULT_ENV).is_some() {
        tracing::warn!("{INJECT_FAULT_ENV} is set and ignored: this build has no fault injection");
    }
    Ok(None)
}

#[cfg(feature = "fault-injection")]
fn injected_fault() -> Result<Option<Fault>, WalError> {
    let Some(value) = std::env::var_os(INJECT_FAULT_ENV) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    let parsed = match value.split_once('=') {
        Some(("fsync-after", n)) => n.parse().ok().map(Fault::SyncFailsAfter),
        Some(("disk-full-after", n)) => n.parse().ok().map(Fault::DiskFullAfter),
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| fault_error("expected fsync-after=<syncs> or disk-full-after=<bytes>"))
}

fn fault_error(message: &str) -> WalError {
    WalError::Io {
        file: String::new(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{INJECT_FAULT_ENV}: {message}"),
        ),
    }
}

/// Group commit whose answers may run ahead of the disk by at most `lag_max`.
#[derive(Debug)]
struct LaggingJournal {
    inner: Arc<WalJournal>,
    lag_max: Duration,
    /// Appended writes not yet known durable, oldest first, with when they were appended.
    pending: Mutex<VecDeque<(Seq, Instant)>>,
}

impl Journal for LaggingJournal {
    fn append(&self, entries: Vec<LogEntry>) {
        if let Ok(mut p) = self.pending.lock() {
            let now = Instant::now();
            p.extend(entries.iter().map(|e| (e.seq, now)));
        }
        self.inner.append(entries);
    }

    fn wait_durable(&self, seq: Seq) -> Result<(), JournalError> {
        self.inner.writable()?;
        let durable = self.inner.stats().durable_seq;
        let overdue = {
            let Ok(mut p) = self.pending.lock() else {
                return self.inner.wait_durable(seq);
            };
            while p.front().is_some_and(|&(s, _)| s <= durable) {
                p.pop_front();
            }
            p.front()
                .is_some_and(|&(_, at)| at.elapsed() > self.lag_max)
        };
        if overdue {
            // The disk is further behind than allowed: this answer waits for it.
            self.inner.wait_durable(seq)
        } else {
            Ok(())
        }
    }

    fn writable(&self) -> Result<(), JournalError> {
        self.inner.writable()
    }
}

/// The file system, with `fdatasync` of the log's files left to the kernel (`--sync none`).
#[derive(Debug)]
struct UnsyncedDir(FsDir);

#[derive(Debug)]
struct UnsyncedFile(Box<dyn Storage>);

impl Storage for UnsyncedFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn read_into(&self, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
        self.0.read_into(buf, len)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Directory for UnsyncedDir {
    fn list(&self) -> io::Result<Vec<String>> {
        self.0.list()
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        Ok(Box::new(UnsyncedFile(self.0.create(name)?)))
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        Ok(Box::new(UnsyncedFile(self.0.open(name)?)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn sync(&self) -> io::Result<()> {
        // Directory entries change only on rotation: rare enough to keep durable.
        self.0.sync()
    }
}
