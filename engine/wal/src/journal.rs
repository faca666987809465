//! Group commit: the engine's [`Journal`] on a [`WalWriter`]. Appends (under the engine's
//! sequencer lock) only queue the entry; one syncer thread writes everything queued and makes
//! it durable with one `fdatasync`, then wakes only the waiters whose write it covered. While it
//! syncs, new appends queue up for the next round, so the number of syncs per second is bounded
//! by the disk while the writes per sync grow with the load.

use crate::snapshot_file::{list_snapshots, read_snapshot};
use crate::{Directory, Tail, WalError, WalOptions, WalReader, WalWriter};
use depot_engine::{
    Completion, Event, Journal, JournalError, Limits, LogEntry, Machine, Response, Seq,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, Thread};

#[derive(Default)]
struct State {
    queued: Vec<LogEntry>,
    /// Highest seq known durable (0 before any).
    durable: Seq,
    /// The error that stopped the log: every later write is refused with it.
    failure: Option<WalError>,
    stop: bool,
    /// True while the syncer waits for work: only then does an append wake it (a notify is a
    /// system call even when nobody waits, and under load the syncer is nearly always busy).
    idle: bool,
    /// Syncs done and entries they covered, for metrics.
    syncs: u64,
    synced_entries: u64,
    /// Log bytes made durable since the journal started.
    synced_bytes: u64,
    /// Threads waiting for a seq to become durable, by that seq. The syncer removes and wakes
    /// exactly those a sync covered (all of them when the log fails), so a sync does not wake
    /// the clients whose writes came in while it ran.
    waiters: BTreeMap<Seq, Vec<Thread>>,
    /// What to call once a seq is durable ([`Journal::when_durable`]), by that seq, in the
    /// order they came: the syncer runs those a sync covered, in seq order, after it.
    completions: BTreeMap<Seq, Vec<Completion>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queued.len())
            .field("durable", &self.durable)
            .field("failure", &self.failure)
            .field("stop", &self.stop)
            .field("syncs", &self.syncs)
            .field("waiters", &self.waiters.len())
            .field("completions", &self.completions.len())
            .finish()
    }
}

impl State {
    /// True when a completion waits for a seq already durable (registered after its sync).
    fn completion_due(&self) -> bool {
        self.completions
            .first_key_value()
            .is_some_and(|(&seq, _)| seq <= self.durable)
    }

    /// Takes the completions a sync up to `durable` covered.
    fn covered_completions(&mut self) -> BTreeMap<Seq, Vec<Completion>> {
        let later = self.completions.split_off(&self.durable.saturating_add(1));
        std::mem::replace(&mut self.completions, later)
    }
}

/// What the engine is told of the error that stopped the log.
fn journal_error(e: &WalError) -> JournalError {
    JournalError {
        message: e.to_string(),
    }
}

/// Runs completions in seq order (and, for one seq, in the order they came).
/// A completion that panics is reported and the others still run: the sync thread must go on
/// making the log durable whatever a caller's completion does.
fn complete(done: BTreeMap<Seq, Vec<Completion>>, result: &Result<(), JournalError>) {
    for then in done.into_values().flatten() {
        let r = result.clone();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || then(r))).is_err() {
            tracing::error!("a completion of the write-ahead log panicked; the log goes on");
        }
    }
}

/// Called by the sync thread after every successful batch: how long writing and `fdatasync`
/// took, and how many entries the batch held (metrics).
pub type SyncObserver = Box<dyn Fn(std::time::Duration, usize) + Send + Sync>;

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    observer: std::sync::OnceLock<SyncObserver>,
    /// Signals the syncer: work queued, or stop. Only the syncer waits on it, so an append
    /// wakes no client.
    changed: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .finish()
    }
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
    /// Log bytes (records with their headers) made durable since the journal started.
    pub bytes: u64,
}

impl WalJournal {
    /// Starts group commit on an opened writer.
    pub fn start(writer: WalWriter) -> WalJournal {
        WalJournal::start_at(writer, 0)
    }

    /// Starts group commit on an opened writer for an engine recovered up to `recovered` (the
    /// recovered machine's seq). Everything recovered is durable, even when the log ends before
    /// it (a snapshot with no log after it), so waiting for it returns at once.
    pub fn start_at(writer: WalWriter, recovered: Seq) -> WalJournal {
        let shared = Arc::new(Shared::default());
        shared.state.lock().expect("journal lock").durable =
            writer.durable_seq().unwrap_or(0).max(recovered);
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

    /// Sets the function told about every batch made durable (once; later calls are
    /// ignored). It runs on the sync thread: it must be quick.
    pub fn set_sync_observer(&self, observer: SyncObserver) {
        let _ = self.shared.observer.set(observer);
    }

    /// The error that stopped the log, if it failed: from then on every write is refused.
    /// A full disk ([`WalError::DiskFull`]) leaves what was synced intact; any other failure
    /// (a failed `fdatasync` above all) leaves the medium in doubt, and the process should
    /// restart and recover from what it holds.
    pub fn failure(&self) -> Option<WalError> {
        let st = self.shared.state.lock().expect("journal lock");
        st.failure.as_ref().map(WalError::duplicate)
    }

    pub fn stats(&self) -> GroupCommitStats {
        let st = self.shared.state.lock().expect("journal lock");
        GroupCommitStats {
            syncs: st.syncs,
            entries: st.synced_entries,
            durable_seq: st.durable,
            bytes: st.synced_bytes,
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
            while st.queued.is_empty() && !st.completion_due() && !st.stop {
                st.idle = true;
                st = shared.changed.wait(st).expect("journal lock");
                st.idle = false;
            }
            if st.queued.is_empty() {
                // Completions registered for what an earlier sync already covered.
                let done = st.covered_completions();
                let stopping = st.stop;
                let left = if stopping {
                    // Stopping, and everything queued is durable: a completion still waiting
                    // is for a seq that was never appended.
                    std::mem::take(&mut st.completions)
                } else {
                    BTreeMap::new()
                };
                drop(st);
                complete(done, &Ok(()));
                if stopping {
                    complete(
                        left,
                        &Err(JournalError {
                            message: "the log stopped before this write reached it".into(),
                        }),
                    );
                    return;
                }
                continue;
            }
            std::mem::take(&mut st.queued)
        };
        let last = batch.last().map_or(0, |e| e.seq);
        let started = std::time::Instant::now();
        let result = batch
            .iter()
            .try_for_each(|e| writer.append(e))
            .and_then(|()| writer.sync());
        if let (Ok(()), Some(observe)) = (&result, shared.observer.get()) {
            observe(started.elapsed(), batch.len());
        }
        let mut st = shared.state.lock().expect("journal lock");
        let (woken, done, outcome) = match result {
            Ok(()) => {
                st.durable = last;
                st.syncs += 1;
                st.synced_entries += batch.len() as u64;
                st.synced_bytes = writer.appended_bytes();
                // Everything up to `last` is answered; later waiters stay asleep.
                let later = st.waiters.split_off(&last.saturating_add(1));
                let woken = std::mem::replace(&mut st.waiters, later);
                (woken, st.covered_completions(), Ok(()))
            }
            Err(e) => {
                // Never retried: the writer is stopped and so is every later write.
                tracing::error!(error = %e, "the write-ahead log failed; writes are refused from now on");
                let failed = journal_error(&e);
                st.failure = Some(e.duplicate());
                let all = std::mem::take(&mut st.completions);
                (std::mem::take(&mut st.waiters), all, Err(failed))
            }
        };
        drop(st);
        for thread in woken.into_values().flatten() {
            thread.unpark();
        }
        complete(done, &outcome);
        // Freed after the answers: they wait for nothing the entries hold.
        drop(batch);
    }
}

impl Journal for WalJournal {
    fn append(&self, mut entries: Vec<LogEntry>) {
        let mut st = self.shared.state.lock().expect("journal lock");
        if st.queued.is_empty() {
            std::mem::swap(&mut st.queued, &mut entries);
        } else {
            st.queued.append(&mut entries);
        }
        let idle = st.idle;
        drop(st);
        if idle {
            self.shared.changed.notify_one();
        }
    }

    fn wait_durable(&self, seq: Seq) -> Result<(), JournalError> {
        let mut registered = false;
        loop {
            let mut st = self.shared.state.lock().expect("journal lock");
            if st.durable >= seq {
                return Ok(());
            }
            if let Some(e) = &st.failure {
                return Err(journal_error(e));
            }
            // Once registered, the entry stays until the syncer wakes this thread for it (then
            // `durable >= seq` or the log failed); any other wake-up is spurious (`park` allows
            // them, and the engine parks and unparks the same thread): look again, sleep again.
            if !registered {
                st.waiters
                    .entry(seq)
                    .or_default()
                    .push(std::thread::current());
                registered = true;
            }
            drop(st);
            std::thread::park();
        }
    }

    fn when_durable(&self, seq: Seq, then: Completion) {
        let mut st = self.shared.state.lock().expect("journal lock");
        if let Some(e) = st.failure.as_ref().map(journal_error) {
            drop(st);
            then(Err(e));
            return;
        }
        let due = seq <= st.durable;
        st.completions.entry(seq).or_default().push(then);
        let idle = st.idle;
        drop(st);
        if due && idle {
            // Already durable, but run by the syncer all the same, so that it never overtakes
            // a completion of a lower seq the syncer is still running (a busy syncer looks at
            // its completions before it waits again).
            self.shared.changed.notify_one();
        }
    }

    fn writable(&self) -> Result<(), JournalError> {
        match &self.shared.state.lock().expect("journal lock").failure {
            Some(e) => Err(journal_error(e)),
            None => Ok(()),
        }
    }
}

/// Rebuilds the state from `dir`: the newest usable snapshot (if any) loaded into a machine
/// with `shards` shards, then every log entry after it replayed in order; without a snapshot,
/// the whole log. A torn last record is reported (and cut when the writer reopens the log);
/// any earlier damage is an error naming the file and offset.
///
/// A snapshot is only an optimisation: one that does not validate or load, or that is ahead
/// of the log (the log ends before its seq), is skipped with a `tracing::warn!` and the next
/// older one (or the empty state) is used instead. When the log does not reach back far
/// enough for that, recovery fails rather than lose the entries in between.
pub fn recover(
    dir: &dyn Directory,
    limits: Limits,
    shards: usize,
) -> Result<(Machine, Tail), WalError> {
    recover_with_events(dir, limits, shards, 0, &mut |_, _| {})
}

/// [`recover`], calling `on_entry` with each log entry replayed (for progress reporting).
pub fn recover_with_progress(
    dir: &dyn Directory,
    limits: Limits,
    shards: usize,
    on_entry: &mut dyn FnMut(&LogEntry),
) -> Result<(Machine, Tail), WalError> {
    recover_with_events(dir, limits, shards, 0, &mut |entry, _| on_entry(entry))
}

/// [`recover`], calling `on_entry` with each log entry replayed after the snapshot it starts
/// from, and the events the entry produced (the server rebuilds its recent events from these).
/// Only the last `events_of_last` entries of the log are sure to come with their events: the
/// replay does not build the events and answers of reservations further from the end (without
/// an idempotency key), which is most of its work besides the state itself.
pub fn recover_with_events(
    dir: &dyn Directory,
    limits: Limits,
    shards: usize,
    events_of_last: u64,
    on_entry: &mut dyn FnMut(&LogEntry, Vec<Event>),
) -> Result<(Machine, Tail), WalError> {
    // The first snapshot skipped, and why: named in the error if the log cannot cover it.
    let mut skipped: Option<(String, String)> = None;
    let mut skip = |name: &str, reason: String| {
        tracing::warn!(file = %name, %reason, "recovery: skipping a snapshot");
        skipped.get_or_insert_with(|| (name.to_string(), reason));
    };
    for (_, name) in list_snapshots(dir)? {
        let image = match read_snapshot(dir, &name) {
            Ok(image) => image,
            Err(reason) => {
                skip(&name, reason);
                continue;
            }
        };
        let Some(from) = image.seq.checked_add(1) else {
            skip(&name, "seq overflows".into());
            continue;
        };
        let machine = match depot_engine::snapshot::load(&image, limits.clone(), shards) {
            Ok(m) => m,
            Err(e) => {
                skip(&name, format!("does not load: {e}"));
                continue;
            }
        };
        match replay_after(dir, machine, from, events_of_last, on_entry) {
            Ok(Replayed::Done(machine, tail)) => return Ok((*machine, tail)),
            Ok(Replayed::LogEndsBefore(next)) => skip(
                &name,
                format!(
                    "it is ahead of the log (snapshot seq {}, the log ends at seq {})",
                    image.seq,
                    next.saturating_sub(1)
                ),
            ),
            Err(e) => return Err(explain_gap(e, skipped)),
        }
    }
    // Sequence numbers start at 1; a log that does not start there has lost its head.
    match replay_after(
        dir,
        Machine::new(limits, shards),
        1,
        events_of_last,
        on_entry,
    ) {
        Ok(Replayed::Done(machine, tail)) => Ok((*machine, tail)),
        Ok(Replayed::LogEndsBefore(next)) => Err(WalError::corrupt(
            "",
            0,
            format!("the log ends before seq 1 (its next seq is {next})"),
        )),
        Err(e) => Err(explain_gap(e, skipped)),
    }
}

enum Replayed {
    Done(Box<Machine>, Tail),
    /// The log ends before `from`: the next entry it would take is this seq.
    LogEndsBefore(Seq),
}

/// Replays every log entry with `seq >= from` into `machine`.
///
/// Three stages overlap: a decoding thread reads, checksums and parses the log a few batches
/// ahead; this thread sequences each batch (the front: admission with the logged sequence
/// numbers and times); the machine's shards run on their own threads
/// ([`Engine::replay_submit`]), one batch while this thread sequences the next. The result is
/// the state a single [`Machine`] replaying entry by entry reaches (`tests/tests/model.rs`).
fn replay_after(
    dir: &dyn Directory,
    machine: Machine,
    from: Seq,
    events_of_last: u64,
    on_entry: &mut dyn FnMut(&LogEntry, Vec<Event>),
) -> Result<Replayed, WalError> {
    let mut reader = WalReader::open(dir, from)?;
    let limits = machine.front.limits.clone();
    let engine = depot_engine::Engine::from_machine(machine, limits, None);
    // The decoder may run `events_of_last` entries further ahead, so that a batch known to be
    // that far from the end can be replayed quietly.
    let ahead = REPLAY_AHEAD
        + usize::try_from(events_of_last.div_ceil(REPLAY_BATCH as u64))
            .unwrap_or(usize::MAX)
            .min(REPLAY_AHEAD_MAX);
    let (batches, received) = std::sync::mpsc::sync_channel::<Vec<LogEntry>>(ahead);
    // Replayed batches go back to the decoding thread, which frees their entries (cheaper on
    // the thread that allocated them) and refills the emptied list.
    let (give_back, returned) = std::sync::mpsc::channel::<Vec<LogEntry>>();
    // The seq of the last entry decoded: the log ends at it or later.
    let decoded = AtomicU64::new(0);
    let reader = std::thread::scope(|scope| {
        let decoded_by = &decoded;
        let decoder = std::thread::Builder::new()
            .name("depot-wal-decode".into())
            .spawn_scoped(scope, move || -> Result<WalReader<'_>, WalError> {
                let fresh = || match returned.try_recv() {
                    Ok(mut done) => {
                        done.clear();
                        done
                    }
                    Err(_) => Vec::with_capacity(REPLAY_BATCH),
                };
                let mut batch = fresh();
                while let Some(entry) = reader.next_entry()? {
                    decoded_by.store(entry.seq, Ordering::Release);
                    batch.push(entry);
                    if batch.len() == REPLAY_BATCH {
                        let full = std::mem::replace(&mut batch, fresh());
                        if batches.send(full).is_err() {
                            break;
                        }
                    }
                }
                let _ = batches.send(batch);
                Ok(reader)
            })
            .map_err(|e| WalError::io("", e))?;
        // A quiet batch comes back without answers: its entries are reported without events.
        let mut report = |entries: Vec<LogEntry>, answers: Vec<(Response, Vec<Event>)>| {
            let mut answers = answers.into_iter();
            for entry in &entries {
                on_entry(entry, answers.next().map(|(_, e)| e).unwrap_or_default());
            }
            // Once the decoder is done, nobody takes them: they are freed here.
            let _ = give_back.send(entries);
        };
        // Batches submitted whose answers are not collected yet: a few, so that a shard with
        // more of one batch's work than the others does not leave them idle meanwhile.
        let mut in_flight: VecDeque<(Vec<LogEntry>, depot_engine::Replaying)> =
            VecDeque::with_capacity(REPLAY_IN_FLIGHT + 1);
        // Quiet batches only ever come first, so the events reported are those of a contiguous
        // run of entries up to the end of the log (an event cursor never skips one).
        let mut loud = false;
        for batch in received {
            let last = batch.last().map_or(0, |e| e.seq);
            // At least `events_of_last` entries follow this batch: nobody reads its answers.
            let quiet =
                !loud && decoded.load(Ordering::Acquire) >= last.saturating_add(events_of_last);
            loud |= !quiet;
            let next = engine.replay_submit(&batch, quiet);
            in_flight.push_back((batch, next));
            if in_flight.len() > REPLAY_IN_FLIGHT {
                if let Some((entries, running)) = in_flight.pop_front() {
                    report(entries, engine.replay_wait(running));
                }
            }
        }
        while let Some((entries, running)) = in_flight.pop_front() {
            report(entries, engine.replay_wait(running));
        }
        decoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    let machine = engine.into_machine();
    if let Some(next) = reader.next_seq() {
        if next < from {
            return Ok(Replayed::LogEndsBefore(next));
        }
    }
    let tail = reader.tail().cloned().unwrap_or(Tail::Clean);
    Ok(Replayed::Done(Box::new(machine), tail))
}

/// Entries per batch handed from the decoding thread to the replay, and batches in flight.
const REPLAY_BATCH: usize = 4_096;
const REPLAY_AHEAD: usize = 8;
/// Batches on the shards at once during a replay.
const REPLAY_IN_FLIGHT: usize = 4;
/// At most this many batches decoded ahead, whatever the events wanted (about 400 MB).
const REPLAY_AHEAD_MAX: usize = 1_024;

/// A gap after a skipped snapshot: say which snapshot was lost and what the log misses.
fn explain_gap(e: WalError, skipped: Option<(String, String)>) -> WalError {
    match (e, skipped) {
        (WalError::Gap { from, first }, Some((name, reason))) => WalError::Corrupt {
            file: name,
            offset: 0,
            reason: format!(
                "the snapshot is unusable ({reason}) and the log cannot replace it: the next \
                 usable state needs the log from seq {from}, but it starts at seq {first}; \
                 entries {from}..{} would be lost",
                first - 1
            ),
        },
        (e, _) => e,
    }
}

/// Recovers from `dir` (the newest usable snapshot, then the log; see [`recover`]) and starts
/// a threaded engine that logs to it with group commit: what `depot serve` does on start.
pub fn open_engine(
    dir: Box<dyn Directory>,
    options: WalOptions,
    limits: Limits,
    shards: usize,
) -> Result<(depot_engine::Engine, Arc<WalJournal>, Tail), WalError> {
    let (machine, tail) = recover(&*dir, limits.clone(), shards)?;
    let writer = WalWriter::open(dir, options)?;
    let journal = Arc::new(WalJournal::start_at(writer, machine.front.seq));
    let engine = depot_engine::Engine::from_machine(machine, limits, Some(journal.clone()));
    Ok((engine, journal, tail))
}
