//! Group commit: the engine's [`Journal`] on a [`WalWriter`]. Appends (under the engine's
//! sequencer lock) only queue the entry; one syncer thread writes everything queued and makes
//! it durable with one `fdatasync`, then wakes every waiter whose write it covered. While it
//! syncs, new appends queue up for the next round, so the number of syncs per second is bounded
//! by the disk while the writes per sync grow with the load.

use crate::{read_log, Directory, Tail, WalError, WalOptions, WalWriter};
use depot_engine::{Journal, JournalError, Limits, LogEntry, Machine, Seq};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

#[derive(Debug, Default)]
struct State {
    queued: Vec<LogEntry>,
    /// Highest seq known durable (0 before any).
    durable: Seq,
    failed: Option<String>,
    stop: bool,
    /// Syncs done and entries they covered, for metrics.
    syncs: u64,
    synced_entries: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signals the syncer (work queued, stop) and the waiters (durable moved, failure).
    changed: Condvar,
}

/// The write-ahead log as the engine's journal, with group commit.
#[derive(Debug)]
pub struct WalJournal {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

/// Figures of the group commit so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    pub syncs: u64,
    pub entries: u64,
    pub durable_seq: Seq,
}

impl WalJournal {
    /// Starts group commit on an opened writer.
    pub fn start(writer: WalWriter) -> WalJournal {
        let shared = Arc::new(Shared::default());
        shared.state.lock().expect("journal lock").durable = writer.durable_seq().unwrap_or(0);
        let s = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("depot-wal-sync".into())
            .spawn(move || sync_loop(writer, &s))
            .expect("spawn the log's sync thread");
        WalJournal {
            shared,
            syncer: Some(syncer),
        }
    }

    pub fn stats(&self) -> GroupCommitStats {
        let st = self.shared.state.lock().expect("journal lock");
        GroupCommitStats {
            syncs: st.syncs,
            entries: st.synced_entries,
            durable_seq: st.durable,
        }
    }
}

impl Drop for WalJournal {
    fn drop(&mut self) {
        self.shared.state.lock().expect("journal lock").stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(mut writer: WalWriter, shared: &Shared) {
    loop {
        let batch = {
            let mut st = shared.state.lock().expect("journal lock");
            while st.queued.is_empty() && !st.stop {
                st = shared.changed.wait(st).expect("journal lock");
            }
            if st.queued.is_empty() {
                return; // stopping, and everything queued is durable
            }
            std::mem::take(&mut st.queued)
        };
        let last = batch.last().map_or(0, |e| e.seq);
        let result = batch
            .iter()
            .try_for_each(|e| writer.append(e))
            .and_then(|()| writer.sync());
        let mut st = shared.state.lock().expect("journal lock");
        match result {
            Ok(()) => {
                st.durable = last;
                st.syncs += 1;
                st.synced_entries += batch.len() as u64;
            }
            Err(e) => {
                // Never retried: the writer is stopped and so is every later write.
                tracing::error!(error = %e, "the write-ahead log failed; writes are refused from now on");
                st.failed = Some(e.to_string());
            }
        }
        drop(st);
        shared.changed.notify_all();
    }
}

impl Journal for WalJournal {
    fn append(&self, entry: &LogEntry) {
        let mut st = self.shared.state.lock().expect("journal lock");
        st.queued.push(entry.clone());
        drop(st);
        self.shared.changed.notify_all();
    }

    fn wait_durable(&self, seq: Seq) -> Result<(), JournalError> {
        let mut st = self.shared.state.lock().expect("journal lock");
        loop {
            if st.durable >= seq {
                return Ok(());
            }
            if let Some(message) = &st.failed {
                return Err(JournalError {
                    message: message.clone(),
                });
            }
            st = self.shared.changed.wait(st).expect("journal lock");
        }
    }

    fn writable(&self) -> Result<(), JournalError> {
        match &self.shared.state.lock().expect("journal lock").failed {
            Some(message) => Err(JournalError {
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Rebuilds the state from the log in `dir`: every entry replayed, in order, into a machine
/// with `shards` shards. A torn last record is reported (and cut when the writer reopens the
/// log); any earlier damage is an error naming the file and offset.
pub fn recover(
    dir: &dyn Directory,
    limits: Limits,
    shards: usize,
) -> Result<(Machine, Tail), WalError> {
    // Sequence numbers start at 1; a log that does not start there has lost its head.
    let (entries, tail) = read_log(dir, 1)?;
    let mut machine = Machine::new(limits, shards);
    for e in &entries {
        machine.replay(e);
    }
    Ok((machine, tail))
}

/// Recovers from the log in `dir` and starts a threaded engine that logs to it with group
/// commit: what `depot serve` does on start.
pub fn open_engine(
    dir: Box<dyn Directory>,
    options: WalOptions,
    limits: Limits,
    shards: usize,
) -> Result<(depot_engine::Engine, Arc<WalJournal>, Tail), WalError> {
    let (machine, tail) = recover(&*dir, limits.clone(), shards)?;
    let writer = WalWriter::open(dir, options)?;
    let journal = Arc::new(WalJournal::start(writer));
    let engine = depot_engine::Engine::from_machine(machine, limits, Some(journal.clone()));
    Ok((engine, journal, tail))
}
