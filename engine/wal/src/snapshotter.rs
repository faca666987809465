//! Background snapshots of a running engine. A thread checks its triggers (every N writes once
//! the log has grown by a share of the last snapshot's size, every T) and, when one fires:
//!
//! 1. captures the state ([`capture_state`]): [`Engine::inspect`] stops the writes at a quiet
//!    point while the front and the shards are copied (shared pointers, mostly); this is the
//!    only pause the writers see, and it is measured;
//! 2. waits until the log holds every entry up to the copy's seq (a snapshot never outruns
//!    the log);
//! 3. serializes the copy as the image straight from its tables ([`StateImage`]) into the
//!    snapshot file ([`crate::write_snapshot`]'s crash-safe steps) while the writes go on, on
//!    a thread of lower scheduling priority ([`in_background`]): the seconds of CPU a large
//!    state takes to write yield to the threads serving requests when the cores are busy,
//!    and only then;
//! 4. applies the [`RetentionPolicy`], if any, to log segments and old snapshots.
//!
//! A failure is logged, counted in [`SnapshotStats`] and retried at the next trigger (after a
//! back-off); it never stops the engine: the log alone is enough to recover.

use crate::error::WalError;
use crate::journal::WalJournal;
use crate::reader::log_bytes_after;
use crate::retention::{apply_retention, RetentionPolicy, RetentionReport};
use crate::snapshot_file::{list_snapshots, write_snapshot_sized, ImageSource};
use crate::storage::Directory;
use depot_engine::front::Front;
use depot_engine::shard::ShardState;
use depot_engine::snapshot::{self, Image, StateImage};
use depot_engine::{Engine, Journal, Seq, TimeMs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When the background snapshotter takes a snapshot, and what it does after.
#[derive(Clone, Debug)]
pub struct SnapshotterConfig {
    /// A snapshot once this many writes have become durable since the last one (`None`: not
    /// by count)...
    pub every_writes: Option<u64>,
    /// ... and the log written since the last snapshot is at least this percentage of that
    /// snapshot's size (`None`: the count alone).
    ///
    /// A snapshot costs in proportion to the state, a write in proportion to itself: with a
    /// count alone, a large state (millions of holds and idempotency keys) is written again
    /// every few seconds under load, and snapshots take most of the machine. Waiting for the
    /// log to grow by the snapshot's own size bounds that cost to about the cost of writing
    /// the log once more, whatever the state's size; recovery then reads at most about twice
    /// the snapshot's size (the snapshot, then a log of about its size).
    pub min_log_growth_percent: Option<u32>,
    /// A snapshot once this long has passed since the last one, if anything was written since
    /// (`None`: not by time).
    pub every: Option<Duration>,
    /// How often the triggers are checked.
    pub check_every: Duration,
    /// After a failed snapshot, triggers are ignored this long (a full disk is not hammered).
    pub retry_after: Duration,
    /// Applied after each snapshot; `None` keeps every segment and snapshot.
    pub retention: Option<RetentionPolicy>,
    /// The clock retention measures ages with, in the milliseconds of the log's entries.
    pub clock: fn() -> TimeMs,
}

impl Default for SnapshotterConfig {
    /// Every 1,000,000 writes once the log has grown by the last snapshot's size, or every
    /// hour; checked every 100 ms; no retention.
    fn default() -> Self {
        SnapshotterConfig {
            every_writes: Some(1_000_000),
            min_log_growth_percent: Some(100),
            every: Some(Duration::from_secs(3600)),
            check_every: Duration::from_millis(100),
            retry_after: Duration::from_secs(10),
            retention: None,
            clock: wall_clock_ms,
        }
    }
}

/// How much lower than its creator's the priority of [`in_background`]'s thread is, in nice
/// steps: at +10 a busy thread gets about a tenth of the CPU a thread of normal priority does
/// when both want the same core, and all of an idle core.
pub const BACKGROUND_NICE: i32 = 10;

/// Runs `work` on a new thread whose scheduling priority is [`BACKGROUND_NICE`] steps lower
/// (a higher nice value, at most 19; Linux keeps one per thread) and returns its result. Where
/// the priority cannot be changed, or no thread can be started, `work` runs all the same.
pub fn in_background<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let slot = Mutex::new(Some(work));
    let take = || slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let ran = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("depot-snapshot-write".into())
            .spawn_scoped(s, || {
                lower_priority(BACKGROUND_NICE);
                take().map(|work| work())
            })
            .map(|thread| thread.join())
    });
    match ran {
        Ok(Ok(Some(out))) => out,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // No thread could be started: the work runs here, at this thread's priority.
        Ok(Ok(None)) | Err(_) => match take() {
            Some(work) => work(),
            None => unreachable!("the work is taken once, by the thread that runs it"),
        },
    }
}

/// Lowers the calling thread's scheduling priority by `steps` nice values (at most to 19).
/// Failing to is not an error: the thread runs at the priority it has.
fn lower_priority(steps: i32) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = rustix::thread::gettid();
        let lowered = getpriority_process(Some(tid))
            .and_then(|nice| setpriority_process(Some(tid), (nice + steps).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "could not lower the snapshot writer's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = steps;
}

/// Milliseconds since the Unix epoch (the clock the server stamps entries with).
pub fn wall_clock_ms() -> TimeMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A copy of a running engine's state, taken at a quiet point, and what taking it cost the
/// writers. The copy is mostly shared pointers (`ShardState::image_copy`, `Front::image_copy`):
/// whoever writes to a piece the copy still shares copies that piece first.
#[derive(Debug)]
pub struct CapturedState {
    pub front: Front,
    pub shards: Vec<ShardState>,
    /// How long writes were stopped: from the moment the engine was quiet and locked until it
    /// was released (the copy was made in between).
    pub pause: Duration,
    /// How long it took to reach a quiet point before that (writes go on meanwhile).
    pub wait: Duration,
}

impl CapturedState {
    /// The copy as an image ready to be serialized ([`StateImage`]: sorted references into it).
    pub fn state_image(&self) -> StateImage<'_> {
        StateImage::new(&self.front, self.shards.iter())
    }
}

/// Copies the engine's state under [`Engine::inspect`] and measures the pause.
pub fn capture_state(engine: &Engine) -> CapturedState {
    let asked = Instant::now();
    let mut locked = asked;
    let (front, shards) = engine.inspect(|front, shards| {
        locked = Instant::now();
        let copy: Vec<ShardState> = shards.iter().map(|s| s.image_copy()).collect();
        (front.image_copy(), copy)
    });
    let released = Instant::now();
    CapturedState {
        front,
        shards,
        pause: released - locked,
        wait: locked - asked,
    }
}

/// An image captured from a running engine, and what capturing it cost the writers.
#[derive(Debug)]
pub struct CapturedImage {
    pub image: Image,
    /// See [`CapturedState::pause`].
    pub pause: Duration,
    /// See [`CapturedState::wait`].
    pub wait: Duration,
    /// Building the owned image from the copy, after the pause (writes go on).
    pub build: Duration,
}

/// Captures the engine's state ([`capture_state`]) and builds the owned [`Image`] from the copy.
/// The snapshotter itself serializes the copy without building it ([`StateImage`]).
pub fn capture_image(engine: &Engine) -> CapturedImage {
    let captured = capture_state(engine);
    let started = Instant::now();
    let image = snapshot::take(&captured.front, captured.shards.iter());
    CapturedImage {
        image,
        pause: captured.pause,
        wait: captured.wait,
        build: started.elapsed(),
    }
}

/// One snapshot the snapshotter wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenSnapshot {
    /// The last seq the snapshot includes.
    pub seq: Seq,
    pub file: String,
    /// Length of the image (the file is 32 bytes more).
    pub bytes: u64,
    /// Writes stopped for this long (see [`CapturedImage::pause`]).
    pub pause: Duration,
    /// Time to reach a quiet point before the pause.
    pub wait: Duration,
    /// Sorting the copy into the image's order after the pause ([`StateImage::new`]; writes go on).
    pub build: Duration,
    /// Waiting for the log, serializing and writing the file, outside the pause.
    pub write: Duration,
    /// What retention did after it (`None`: no policy, or it failed).
    pub retention: Option<RetentionReport>,
}

/// Figures of the snapshotter so far, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots written.
    pub taken: u64,
    /// Snapshots that failed.
    pub failed: u64,
    pub last: Option<TakenSnapshot>,
    /// The longest pause so far.
    pub max_pause: Duration,
    pub last_error: Option<String>,
    /// Log segments deleted or archived by retention, in all.
    pub segments_removed: u64,
    /// Snapshot files deleted by retention, in all.
    pub snapshots_deleted: u64,
    /// Retention runs that failed (the snapshot itself was written).
    pub retention_failures: u64,
}

#[derive(Debug, Default)]
struct State {
    stop: bool,
    /// Snapshots asked for with [`Snapshotter::snapshot_now`], and how many are answered.
    requested: u64,
    answered: u64,
    last_result: Option<Result<TakenSnapshot, String>>,
    stats: SnapshotStats,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only plain figures live behind the lock: usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background snapshotter. Dropping it stops the thread (after a snapshot in progress).
#[derive(Debug)]
pub struct Snapshotter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Worker {
    engine: Arc<Engine>,
    journal: Arc<WalJournal>,
    dir: Box<dyn Directory>,
    config: SnapshotterConfig,
    shared: Arc<Shared>,
    /// The seq of the last snapshot written (or found in the directory at start).
    last_seq: Seq,
    /// The log's bytes ([`Worker::log_bytes`]) when the last snapshot was taken (0 at start).
    last_bytes: u64,
    /// The log already on disk after the newest snapshot when the snapshotter started: it
    /// counts towards the next snapshot as much as the log written since.
    carried: u64,
    /// The size of the last snapshot (the newest found at start), in bytes.
    last_len: u64,
    last_at: Instant,
    failed_at: Option<Instant>,
}

impl Snapshotter {
    /// Starts the snapshotter of `engine`, whose log is `journal` in `dir` (a handle on the same
    /// directory the journal writes to).
    pub fn start(
        engine: Arc<Engine>,
        journal: Arc<WalJournal>,
        dir: Box<dyn Directory>,
        config: SnapshotterConfig,
    ) -> Snapshotter {
        let shared = Arc::new(Shared::default());
        let (last_seq, last_len) = match list_snapshots(&*dir) {
            Ok(found) => found.first().map_or((0, 0), |(seq, name)| {
                let len = dir.open(name).and_then(|f| f.len()).unwrap_or(0);
                (*seq, len)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "snapshotter: cannot list snapshots");
                (0, 0)
            }
        };
        let worker = Worker {
            engine,
            journal,
            dir,
            config,
            shared: shared.clone(),
            last_seq,
            last_bytes: 0,
            carried: 0,
            last_len,
            last_at: Instant::now(),
            failed_at: None,
        };
        let thread = std::thread::Builder::new()
            .name("depot-snapshot".into())
            .spawn(move || worker.run())
            .expect("spawn the snapshot thread");
        Snapshotter {
            shared,
            thread: Some(thread),
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> SnapshotStats {
        self.shared.lock().stats.clone()
    }

    /// Takes a snapshot now (whatever the triggers say) and waits for it.
    pub fn snapshot_now(&self) -> Result<TakenSnapshot, String> {
        let mut st = self.shared.lock();
        st.requested += 1;
        let ticket = st.requested;
        self.shared.changed.notify_all();
        while st.answered < ticket && !st.stop {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        match &st.last_result {
            Some(r) if st.answered >= ticket => r.clone(),
            _ => Err("the snapshotter stopped".into()),
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Worker {
    fn run(mut self) {
        if self.last_len > 0 {
            // What the journal made durable since it opened is on disk too, and counted by it.
            let since_open = self.journal.stats().bytes;
            self.carried = match log_bytes_after(&*self.dir, self.last_seq) {
                Ok(bytes) => bytes.saturating_sub(since_open),
                Err(e) => {
                    tracing::warn!(error = %e, "snapshotter: cannot measure the log after the last snapshot");
                    0
                }
            };
        }
        loop {
            let requested = {
                let mut st = self.shared.lock();
                if st.requested == st.answered && !st.stop {
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, self.config.check_every)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if st.stop {
                    return;
                }
                (st.requested > st.answered).then_some(st.requested)
            };
            if requested.is_none() && !self.due() {
                continue;
            }
            let result = self.take_one();
            let mut st = self.shared.lock();
            match &result {
                Ok(taken) => {
                    st.stats.taken += 1;
                    st.stats.max_pause = st.stats.max_pause.max(taken.pause);
                    st.stats.last = Some(taken.clone());
                }
                Err(e) => {
                    st.stats.failed += 1;
                    st.stats.last_error = Some(e.clone());
                }
            }
            if let Some(ticket) = requested {
                st.answered = ticket;
            }
            st.last_result = Some(result);
            drop(st);
            self.shared.changed.notify_all();
        }
    }

    /// The log's bytes as the triggers count them: what was on disk after the newest snapshot
    /// at start, and what the journal made durable since.
    fn log_bytes(&self) -> u64 {
        self.journal.stats().bytes + self.carried
    }

    /// Whether a trigger fires: enough writes (and log), or enough time with at least one write.
    fn due(&self) -> bool {
        if self
            .failed_at
            .is_some_and(|t| t.elapsed() < self.config.retry_after)
        {
            return false;
        }
        let stats = self.journal.stats();
        let new_writes = stats.durable_seq.saturating_sub(self.last_seq);
        let grown = self.log_bytes().saturating_sub(self.last_bytes);
        let log_grown = self
            .config
            .min_log_growth_percent
            .is_none_or(|p| u128::from(grown) * 100 >= u128::from(self.last_len) * u128::from(p));
        let by_count = self.config.every_writes.is_some_and(|n| new_writes >= n) && log_grown;
        let by_time = self
            .config
            .every
            .is_some_and(|t| new_writes > 0 && self.last_at.elapsed() >= t);
        by_count || by_time
    }

    fn take_one(&mut self) -> Result<TakenSnapshot, String> {
        // The log written from here on counts towards the next snapshot (a little of it may
        // be in this one: the next one comes that much earlier).
        let bytes = self.log_bytes();
        let result = self.write_one();
        self.last_at = Instant::now();
        match &result {
            Ok(taken) => {
                self.failed_at = None;
                self.last_seq = taken.seq;
                self.last_bytes = bytes;
                self.last_len = taken.bytes;
                tracing::info!(
                    seq = taken.seq,
                    file = %taken.file,
                    bytes = taken.bytes,
                    pause_us = taken.pause.as_micros() as u64,
                    build_ms = taken.build.as_millis() as u64,
                    write_ms = taken.write.as_millis() as u64,
                    "snapshot written"
                );
            }
            Err(e) => {
                self.failed_at = Some(Instant::now());
                tracing::warn!(error = %e, "snapshot failed; the log alone still recovers");
            }
        }
        result.map_err(|e| e.to_string())
    }

    fn write_one(&mut self) -> Result<TakenSnapshot, WalError> {
        // The capture stops the writers: it runs on this thread, at normal priority (a thread
        // of low priority holding the engine would make every writer wait for it).
        let captured = capture_state(&self.engine);
        let (pause, wait) = (captured.pause, captured.wait);
        let (journal, dir) = (&self.journal, &*self.dir);
        let (seq, file, bytes, build, write) = in_background(move || {
            let built = Instant::now();
            let state = captured.state_image();
            let build = built.elapsed();
            let seq = state.seq();
            let started = Instant::now();
            journal.wait_durable(seq).map_err(|e| WalError::Stopped {
                file: String::new(),
                message: format!("the log did not make seq {seq} durable: {}", e.message),
            })?;
            let (file, bytes) = write_snapshot_sized(dir, ImageSource::State(&state))?;
            drop(state);
            drop(captured);
            Ok::<_, WalError>((seq, file, bytes, build, started.elapsed()))
        })?;
        let retention = self.config.retention.as_ref().and_then(|policy| {
            match apply_retention(&*self.dir, policy, (self.config.clock)()) {
                Ok(report) => {
                    let mut st = self.shared.lock();
                    st.stats.segments_removed +=
                        (report.deleted.len() + report.archived.len()) as u64;
                    st.stats.snapshots_deleted += report.snapshots_deleted.len() as u64;
                    Some(report)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "log retention failed; nothing after the error was removed");
                    self.shared.lock().stats.retention_failures += 1;
                    None
                }
            }
        });
        Ok(TakenSnapshot {
            seq,
            file,
            bytes,
            pause,
            wait,
            build,
            write,
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn background_work_runs_at_a_lower_priority_and_the_caller_keeps_its_own() {
        let nice = || {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("read this thread's nice value")
        };
        let before = nice();
        let (inside, name) =
            in_background(|| (nice(), std::thread::current().name().map(str::to_string)));
        assert_eq!(inside, (before + BACKGROUND_NICE).min(19));
        assert_eq!(name.as_deref(), Some("depot-snapshot-write"));
        assert_eq!(nice(), before, "the calling thread's priority is unchanged");
    }

    #[test]
    fn background_work_returns_its_result_and_its_panic() {
        assert_eq!(in_background(|| 6 * 7), 42);
        let caught = std::panic::catch_unwind(|| in_background(|| panic!("inside")));
        let message = caught.expect_err("the panic comes back to the caller");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"inside"));
    }
}
