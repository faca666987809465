//! The threaded engine: one thread per shard, each owning its shard's state, fed in sequence
//! order through a queue. The front assigns sequence numbers under one lock and pushes each
//! batch's jobs to every shard queue before releasing it, so every shard sees jobs in the same
//! global order. A job spanning shards meets at a [`Rendezvous`]: every participant prepares,
//! the last to arrive decides, every participant applies, the last to finish merges.

use crate::command::Request;
use crate::exec::{decide, merge};
use crate::front::{respond, Admission, Front, IdemAnswer, IdemKey};
use crate::ids::{ReservationId, Seq, TimeMs};
use crate::job::{Decision, Job, PartOut, Prep};
use crate::limits::Limits;
use crate::machine::{LogEntry, Machine};
use crate::outcome::{Event, Outcome, Refusal, Response};
use crate::shard::ShardState;
use crossbeam::channel::{unbounded, Receiver, Sender};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::{JoinHandle, Thread};

/// Why a journal cannot make writes durable. Fatal: once returned, every later write is
/// refused (a failed `fdatasync` is never retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JournalError {
    pub message: String,
}

/// Receives every sequenced write and makes it durable. The write-ahead log implements it with
/// group commit: many appends, one `fdatasync`.
pub trait Journal: Send + Sync {
    /// Called under the sequencer lock with a batch's writes, in sequence order, before any of
    /// them runs. Must be cheap: it only buffers (it takes the entries, so nothing is copied).
    fn append(&self, entries: Vec<LogEntry>);
    /// Blocks until every entry up to `seq` is durable.
    fn wait_durable(&self, seq: Seq) -> Result<(), JournalError>;
    /// Calls `then` once every entry up to `seq` is durable, or with the error that stopped
    /// the log. Calls made with seqs in increasing order run in that order. This default waits
    /// on the calling thread; a journal with a thread of its own that syncs runs `then` there,
    /// right after the sync that covers `seq`, so the caller goes on at once and no thread is
    /// woken only to be told.
    fn when_durable(&self, seq: Seq, then: Completion) {
        then(self.wait_durable(seq));
    }
    /// `Err` when no new write can be made durable (after a failure, or with a full disk).
    fn writable(&self) -> Result<(), JournalError>;
}

/// What [`Journal::when_durable`] calls: `Ok` once the entries are durable, or the error that
/// stopped the log.
pub type Completion = Box<dyn FnOnce(Result<(), JournalError>) + Send>;

/// A journal that keeps entries in memory (tests, simulation): durable at once.
#[derive(Debug, Default, Clone)]
pub struct MemoryJournal {
    pub entries: Arc<Mutex<Vec<LogEntry>>>,
}

impl Journal for MemoryJournal {
    fn append(&self, entries: Vec<LogEntry>) {
        self.entries.lock().expect("journal lock").extend(entries);
    }
    fn wait_durable(&self, _seq: Seq) -> Result<(), JournalError> {
        Ok(())
    }
    fn writable(&self) -> Result<(), JournalError> {
        Ok(())
    }
}

/// How to start an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shard threads; default: one per core.
    pub shards: usize,
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineConfig {
            shards: cores.clamp(1, crate::limits::SHARDS_MAX),
            limits: Limits::default(),
        }
    }
}

type Answer = (Response, Vec<Event>);

/// The answers of a batch not yet known durable (see [`Engine::execute_unacked`]).
#[derive(Debug)]
#[must_use = "answers are acknowledged with Engine::acknowledge"]
pub struct Unacked {
    answers: Vec<Answer>,
    /// What the answers wait for: the batch's last write, or the first request of a repeat
    /// answered in it if that is later (`None`: nothing to wait for).
    last_write: Option<Seq>,
}

impl Unacked {
    /// The seq the answers wait for: the batch's last write, or the first request of a repeat
    /// answered in it if that is later (`None`: nothing to wait for).
    pub fn waits_for(&self) -> Option<Seq> {
        self.last_write
    }
}

/// Replayed entries on their way through the shards (see [`Engine::replay_submit`]).
#[must_use = "the answers are collected with Engine::replay_wait"]
pub struct Replaying {
    batch: Arc<Batch>,
    sent: Vec<Arc<Vec<Task>>>,
}

impl std::fmt::Debug for Replaying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replaying")
            .field("outstanding", &self.batch.remaining.load(Ordering::Relaxed))
            .field("quiet", &self.batch.discards())
            .finish()
    }
}

/// Reservations by state (see [`Engine::reservation_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReservationCounts {
    pub held: u64,
    /// Held past `expires_at`, not yet expired by a tick (still counted as reserved).
    pub overdue: u64,
    pub committed: u64,
}

/// The answers of one `execute` call and who waits for them.
struct Batch {
    /// Requests in the batch.
    len: usize,
    /// True for a batch whose answers are dropped ([`Batch::discarding`]).
    discard: bool,
    /// The answers left so far, one list per thread that answered ([`Answering`]), each in
    /// the order that thread answered.
    lists: Mutex<Vec<AnswerList>>,
    /// Where emptied lists go back to, for the next batch.
    pool: Arc<ListPool>,
    /// The tenant configurations [`Deferred`] answers are built with, by index.
    cfgs: Mutex<Vec<Arc<crate::config::TenantConfig>>>,
    remaining: AtomicUsize,
    waiter: Thread,
}

/// Answers with their slots (index in the batch), as one thread left them.
type AnswerList = Vec<(usize, Slot)>;

/// Emptied answer lists, kept with their capacity: a list of a few hundred answers is large,
/// and freed by another thread than the one that filled it (the collector), its memory would
/// be given back and faulted in again.
#[derive(Default)]
struct ListPool(Mutex<Vec<AnswerList>>);

/// Most lists kept in a [`ListPool`]: one per thread that may be answering or collecting at
/// once is enough; more would only hold memory.
const POOLED_LISTS_MAX: usize = 64;

impl ListPool {
    fn take(&self) -> AnswerList {
        self.0
            .lock()
            .expect("list pool lock")
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, list: AnswerList) {
        debug_assert!(list.is_empty());
        let mut pool = self.0.lock().expect("list pool lock");
        if pool.len() < POOLED_LISTS_MAX && list.capacity() > 0 {
            pool.push(list);
        }
    }
}

/// A request's answer, as the thread that ran it leaves it.
enum Slot {
    Answer(Answer),
    Deferred(Deferred),
}

/// What a reservation's answer is built from ([`merge`] and [`respond`]), left by the thread
/// that ran it to the thread that collects the batch. The answer of a reservation (its view,
/// its lines, its events) is most of the work of building answers, and a thread running a
/// combined batch runs the reservations of every shard it touches one after another, while the
/// submitter only waits: so the submitter builds them (ARCHITECTURE.md, "Sharding and
/// multi-shard atomicity"). Only for a reservation that holds (`Decision::Reserve`) or is
/// refused, has no idempotency key and is not quiet: its answer then needs nothing of the
/// front but, for a refusal, forgetting its route, which the collector hands off; no response
/// to store, no event of another tenant. `merge` is pure, so the answer is the one the running
/// thread would have built.
struct Deferred {
    /// Index in [`Batch::cfgs`]: the tenant's configuration when the job ran.
    cfg: usize,
    decision: Decision,
    outs: Vec<PartOut>,
}

impl Batch {
    /// A batch of `len` requests, answered to the calling thread.
    fn new(len: usize, pool: &Arc<ListPool>) -> Arc<Batch> {
        Batch::make(len, pool, false)
    }

    /// A batch of `len` requests whose answers nobody reads: each is dropped where it is
    /// made, only the count of those outstanding is kept.
    fn discarding(len: usize, pool: &Arc<ListPool>) -> Arc<Batch> {
        Batch::make(len, pool, true)
    }

    fn make(len: usize, pool: &Arc<ListPool>, discard: bool) -> Arc<Batch> {
        Arc::new(Batch {
            len,
            discard,
            lists: Mutex::new(Vec::new()),
            pool: pool.clone(),
            cfgs: Mutex::new(Vec::new()),
            remaining: AtomicUsize::new(len),
            waiter: std::thread::current(),
        })
    }

    /// True for a batch made by [`Batch::discarding`] (or one of no requests).
    fn discards(&self) -> bool {
        self.discard || self.len == 0
    }

    /// Parks the waiter until every request is answered.
    fn wait(&self) {
        while self.remaining.load(Ordering::Acquire) != 0 {
            std::thread::park();
        }
    }

    /// Answers slot `i` alone (a request answered by whoever finishes the request it waited
    /// for); a thread answering many uses an [`Answering`].
    fn complete(&self, i: usize, a: Answer) {
        Answering::new(self, 0).complete(i, a);
    }

    /// Hands in `list` (none of whose slots was answered before) and counts `n` answers;
    /// the last wakes the waiter.
    fn hand_in(&self, list: AnswerList, n: usize) {
        if list.is_empty() {
            self.pool.give(list);
        } else {
            self.lists.lock().expect("answer lists lock").push(list);
        }
        if n > 0 && self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.waiter.unpark();
        }
    }
}

/// The answers one thread gives a batch in one go (a shard thread, the tasks of one message):
/// kept in a list of its own and handed in at once when the thread is done with the batch,
/// counted off the batch's `remaining` once. A slot of its own per request, written by the
/// answering threads, cost an atomic handshake per answer and moved its cache lines between
/// the cores twice (see ARCHITECTURE.md, "Sharding and multi-shard atomicity").
struct Answering<'b> {
    batch: &'b Batch,
    list: AnswerList,
    given: usize,
    /// What the front must learn of the answers given (idempotent responses to store, routes
    /// to forget), handed off at once, before the answers are handed in: one lock of the
    /// hand-off list and one [`Inner::settle`] per message instead of per answer (every
    /// `/v1/batch` reservation has an idempotency key). Only for a shard thread running its
    /// own message ([`Answering::running`]), which counts the message's tasks off its queue
    /// depth after handing everything in, so that whoever sees every depth at zero
    /// (`Engine::inspect`) finds every hand-off queued.
    handoffs: Vec<Handoff>,
    inner: Option<&'b Inner>,
}

impl<'b> Answering<'b> {
    /// For about `expected` answers.
    fn new(batch: &'b Batch, expected: usize) -> Answering<'b> {
        let mut list = Vec::new();
        if !batch.discards() && expected > 0 {
            list = batch.pool.take();
            list.reserve(expected);
        }
        Answering {
            batch,
            list,
            given: 0,
            handoffs: Vec::new(),
            inner: None,
        }
    }

    /// For a shard thread running its own message of the batch: its answers' hand-offs to the
    /// front are kept ([`Answering::hand_off`]) and queued when it hands the answers in.
    fn running(batch: &'b Batch, expected: usize, inner: &'b Inner) -> Answering<'b> {
        let mut out = Answering::new(batch, expected);
        out.inner = Some(inner);
        out
    }

    /// Keeps `h` until the answers are handed in ([`Answering::running`] only).
    fn hand_off(&mut self, h: Handoff) {
        debug_assert!(
            self.inner.is_some(),
            "kept only by a thread running a message"
        );
        self.handoffs.push(h);
    }

    fn complete(&mut self, i: usize, a: Answer) {
        self.fill(i, Slot::Answer(a));
    }

    fn fill(&mut self, i: usize, a: Slot) {
        // A discarding batch drops the answer here; it counts it all the same.
        if !self.batch.discards() {
            self.list.push((i, a));
        }
        self.given += 1;
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if let (false, Some(inner)) = (self.handoffs.is_empty(), self.inner) {
            // Before the answers: a repeat sent on seeing its first answer usually finds the
            // response stored.
            inner
                .handoffs
                .lock()
                .expect("handoff lock")
                .append(&mut self.handoffs);
            inner.settle(None);
        }
        self.batch.hand_in(
            std::mem::take(&mut self.list),
            std::mem::take(&mut self.given),
        );
    }
}

/// The meeting point of a job spanning shards.
struct Rendezvous {
    participants: usize,
    preps: Mutex<Vec<(usize, Prep)>>,
    decision: OnceLock<Decision>,
    /// Participants parked while waiting for the decision.
    sleepers: Mutex<Vec<Thread>>,
    outs: Mutex<Vec<PartOut>>,
}

struct Task {
    job: TaskJob,
    slot: usize,
    idem: Option<(IdemKey, IdemAnswer)>,
    rendezvous: Option<Arc<Rendezvous>>,
}

/// A task's job: owned by the one shard that runs it (most jobs: no allocation per request),
/// shared by the shards of a job spanning several.
// The job inline is the point: boxing it would be the allocation this saves.
#[allow(clippy::large_enum_variant)]
enum TaskJob {
    Own(Job),
    Shared(Arc<Job>),
}

impl std::ops::Deref for TaskJob {
    type Target = Job;
    fn deref(&self) -> &Job {
        match self {
            TaskJob::Own(job) => job,
            TaskJob::Shared(job) => job,
        }
    }
}

enum Msg {
    /// A shard's tasks of one batch. The submitting thread keeps a reference to `tasks` until
    /// the batch is answered, so the tasks are freed by the thread that allocated them (a
    /// large buffer freed by another thread is returned to the system and faulted in again).
    Tasks {
        batch: Arc<Batch>,
        tasks: Arc<Vec<Task>>,
    },
    /// A whole batch, every shard's tasks (`lists`, by shard index; empty for the shards it
    /// does not touch), run by this shard's thread alone once every other shard it touches has
    /// reached its [`Msg::Lend`] of the same batch: see [`Engine::combines`].
    Combined {
        batch: Arc<Batch>,
        lists: Vec<Arc<Vec<Task>>>,
        loan: Arc<Loan>,
    },
    /// This shard's state is lent to the shard running a combined batch: wait until it is
    /// done with it before going on.
    Lend {
        loan: Arc<Loan>,
    },
    Stop,
}

/// The hand-over of a combined batch: the lenders, each with the number of its
/// [`Msg::Lend`] in its queue (see [`Progress`]), and `done` once the batch has run.
struct Loan {
    lenders: Vec<(usize, u64)>,
    done: Signal,
}

/// How far a shard's thread has got through its queue: every message up to number
/// `finished` (counted from 1 in the order sent) has run. A combined batch's leader may use a
/// lender's state once every message before the lender's [`Msg::Lend`] has run: the lender
/// then holds no lock, and will not run anything later before the batch is done. The lender
/// thread need not be awake for that: when one combined batch follows another, the leader
/// counts the first's `Lend` as run when it finishes the first, and starts the second while
/// the lender is still being woken.
struct Progress {
    finished: AtomicU64,
    sleepers: Mutex<Vec<Thread>>,
}

impl Progress {
    fn advance(&self, upto: u64) {
        self.finished.fetch_max(upto, Ordering::AcqRel);
        for t in self.sleepers.lock().expect("progress lock").drain(..) {
            t.unpark();
        }
    }

    fn wait(&self, upto: u64) {
        spin_then_park(&self.sleepers, || {
            (self.finished.load(Ordering::Acquire) >= upto).then_some(())
        });
    }
}

/// A count down to zero that threads can wait for ([`spin_then_park`], as for a decision):
/// the last [`Signal::arrive`] wakes them.
struct Signal {
    left: AtomicUsize,
    sleepers: Mutex<Vec<Thread>>,
}

impl Signal {
    fn new(count: usize) -> Signal {
        Signal {
            left: AtomicUsize::new(count),
            sleepers: Mutex::new(Vec::new()),
        }
    }

    fn arrive(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            for t in self.sleepers.lock().expect("signal lock").drain(..) {
                t.unpark();
            }
        }
    }

    fn wait(&self) {
        spin_then_park(&self.sleepers, || {
            (self.left.load(Ordering::Acquire) == 0).then_some(())
        });
    }
}

/// A request waiting for another's response: its batch and slot.
type Waiter = (Arc<Batch>, usize);

struct FrontSide {
    front: Front,
    journal: Option<Arc<dyn Journal>>,
    /// Requests waiting for the first execution of their idempotency key.
    waiting: FxHashMap<IdemKey, Vec<Waiter>>,
    /// The hand-offs being applied ([`Inner::take_handoffs`]), kept to reuse its buffer.
    spare: Vec<Handoff>,
}

/// Front work of a finished job that a shard thread leaves behind instead of waiting for the
/// front lock: the requests waiting for the answer of the job's idempotency key, and the
/// routes of reservations that are gone. Whoever holds the front lock next applies it
/// ([`FrontGuard`]). The answer itself is set when the hand-off is made ([`IdemAnswer`]), so a
/// repeat of the key admitted from then on is answered with it (once the job is durable); one
/// admitted before waits, and the hand-off answers it. Until the hand-off is applied a request
/// for a gone reservation goes to its shards, which answer "not found" as the front's fallback
/// shard would.
struct Handoff {
    idem: Option<(IdemKey, IdemAnswer)>,
    dropped: Vec<ReservationId>,
}

impl Handoff {
    /// The front work of `task`, answered `response`, after which `dropped` are gone; sets the
    /// answer of the task's idempotency key.
    fn of(task: &Task, response: &Response, dropped: Vec<ReservationId>) -> Handoff {
        if let Some((_, answer)) = &task.idem {
            answer.set(response);
        }
        Handoff {
            idem: task.idem.clone(),
            dropped,
        }
    }
}

/// The front lock, held. Taking it applies the hand-offs left so far; letting it go applies
/// those left meanwhile (see [`Inner::settle`]).
struct FrontGuard<'a> {
    inner: &'a Inner,
    side: Option<MutexGuard<'a, FrontSide>>,
}

impl std::ops::Deref for FrontGuard<'_> {
    type Target = FrontSide;
    fn deref(&self) -> &FrontSide {
        self.side.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for FrontGuard<'_> {
    fn deref_mut(&mut self) -> &mut FrontSide {
        self.side.as_mut().expect("held until dropped")
    }
}

impl Drop for FrontGuard<'_> {
    fn drop(&mut self) {
        self.inner.settle(self.side.take());
    }
}

struct Inner {
    front: Mutex<FrontSide>,
    /// Front work left by shard threads that found the front lock taken ([`Handoff`]).
    handoffs: Mutex<Vec<Handoff>>,
    queues: Vec<Sender<Msg>>,
    /// Per shard, the messages sent to its queue (under the front lock).
    sent: Vec<AtomicU64>,
    /// Per shard, the messages its thread has run.
    progress: Vec<Progress>,
    depth: Vec<AtomicUsize>,
    states: Vec<Arc<Mutex<ShardState>>>,
    /// Per shard, [`ShardState::next_due`] as of its last batch (read without stopping it).
    next_due: Vec<AtomicU64>,
    queue_depth_max: usize,
    batch_len_max: usize,
    /// See [`Limits::inline_tasks_max`].
    inline_tasks_max: usize,
    /// See [`Limits::combine_percent`].
    combine_percent: u32,
    /// The same journal as the front's, for waiting on durability outside the front lock.
    journal: Option<Arc<dyn Journal>>,
    /// Answer lists for the batches to reuse ([`Answering`]).
    pool: Arc<ListPool>,
}

/// The sharded engine. Cheap to share: wrap it in an `Arc`.
pub struct Engine {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.inner.queues.len())
            .finish()
    }
}

impl Engine {
    pub fn start(config: EngineConfig) -> Engine {
        Self::start_with(config, None)
    }

    /// Starts an engine whose every sequenced write is handed to `journal`.
    pub fn start_with(config: EngineConfig, journal: Option<Arc<dyn Journal>>) -> Engine {
        Self::from_machine(
            Machine::new(config.limits.clone(), config.shards),
            config.limits,
            journal,
        )
    }

    /// Starts an engine on the state of a machine (rebuilt by log replay or from an image),
    /// with one thread per shard of the machine.
    pub fn from_machine(
        machine: Machine,
        limits: Limits,
        journal: Option<Arc<dyn Journal>>,
    ) -> Engine {
        let config = EngineConfig {
            shards: machine.shards.len(),
            limits,
        };
        let n = config.shards;
        let front = machine.front;
        let next_due = machine
            .shards
            .iter()
            .map(|s| AtomicU64::new(s.next_due()))
            .collect();
        let states: Vec<_> = machine
            .shards
            .into_iter()
            .map(|s| Arc::new(Mutex::new(s)))
            .collect();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| unbounded::<Msg>()).unzip();
        let inner = Arc::new(Inner {
            front: Mutex::new(FrontSide {
                front,
                journal: journal.clone(),
                waiting: FxHashMap::default(),
                spare: Vec::new(),
            }),
            handoffs: Mutex::new(Vec::new()),
            queues: senders,
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            progress: (0..n)
                .map(|_| Progress {
                    finished: AtomicU64::new(0),
                    sleepers: Mutex::new(Vec::new()),
                })
                .collect(),
            depth: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            states,
            next_due,
            queue_depth_max: config.limits.queue_depth_max,
            batch_len_max: config.limits.batch_len_max,
            inline_tasks_max: config.limits.inline_tasks_max,
            combine_percent: config.limits.combine_percent,
            journal,
            pool: Arc::default(),
        });
        let threads = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("depot-shard-{i}"))
                    .spawn(move || shard_main(i, rx, inner))
                    .expect("spawn shard thread")
            })
            .collect();
        Engine { inner, threads }
    }

    /// The earliest time a [`Command::Tick`](crate::Command::Tick) may have work (holds to
    /// expire, ended reservations or idempotency records to drop), as of the shards' last
    /// batches; `None` when nothing waits. A caller ticking on a clock may skip ticks before
    /// it: they would change nothing but the sequence number.
    pub fn next_due(&self) -> Option<TimeMs> {
        let t = self
            .inner
            .next_due
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .min()
            .unwrap_or(TimeMs::MAX);
        (t != TimeMs::MAX).then_some(t)
    }

    /// Reservations by state at `now`: held and unexpired, held past their expiry but not yet
    /// ticked, and committed. Counts every part, under [`Engine::inspect`] (writes wait for
    /// it: a few milliseconds per million reservations); for metrics, not the hot path.
    pub fn reservation_counts(&self, now: TimeMs) -> ReservationCounts {
        self.inspect(|front, shards| {
            let mut c = ReservationCounts::default();
            for (i, s) in shards.iter().enumerate() {
                for (id, part) in s.parts.iter() {
                    // A reservation spanning shards is counted by the first of them.
                    if front.route_of(id).trailing_zeros() as usize != i {
                        continue;
                    }
                    match part.lifecycle {
                        crate::shard::Lifecycle::Held if part.expires_at <= now => c.overdue += 1,
                        crate::shard::Lifecycle::Held => c.held += 1,
                        crate::shard::Lifecycle::Committed => c.committed += 1,
                        _ => {}
                    }
                }
            }
            c
        })
    }

    pub fn shards(&self) -> usize {
        self.inner.queues.len()
    }

    /// Executes one request.
    pub fn execute_one(&self, request: Request, now: TimeMs) -> Answer {
        self.execute(vec![request], now)
            .pop()
            .expect("one answer per request")
    }

    /// Executes a batch of requests, sequenced in order, and waits for all answers.
    pub fn execute(&self, requests: Vec<Request>, now: TimeMs) -> Vec<Answer> {
        let ran = self.execute_unacked(requests, now);
        self.acknowledge(ran)
    }

    /// Executes a batch like [`Engine::execute`] but returns as soon as the shards have
    /// answered, before the journal has made the writes durable. The answers must not be shown
    /// to anyone until [`Engine::acknowledge`] returns them: a caller can run the next batch
    /// while another thread waits for this one's `fdatasync` (pipelined group commit).
    pub fn execute_unacked(&self, requests: Vec<Request>, now: TimeMs) -> Unacked {
        let batch = Batch::new(requests.len(), &self.inner.pool);
        if requests.len() > self.inner.batch_len_max {
            let r = Refusal::LimitExceeded {
                what: "requests in one batch".into(),
                limit: self.inner.batch_len_max as u64,
            };
            return Unacked {
                answers: requests
                    .iter()
                    .map(|_| (refused(r.clone()), Vec::new()))
                    .collect(),
                last_write: None,
            };
        }
        let (last_write, sent) = self.submit(&batch, requests, now);
        let answers = collect(&self.inner, batch, sent);
        Unacked {
            answers,
            last_write,
        }
    }

    /// Waits until every write of an executed batch is durable and returns its answers. Group
    /// commit: the shards ran the batch while the journal synced it. If the journal failed,
    /// the batch's writes are not acknowledged: they are refused as `unavailable`.
    pub fn acknowledge(&self, ran: Unacked) -> Vec<Answer> {
        let durable = match (ran.last_write, self.inner.journal.as_ref()) {
            (Some(seq), Some(j)) => j.wait_durable(seq),
            _ => Ok(()),
        };
        settle(ran.answers, durable)
    }

    /// [`Engine::acknowledge`] without waiting: `then` gets the answers once every write up to
    /// the batch's own and up to `after` is durable (with the writes refused if the log
    /// failed). With the write-ahead log it runs on the log's sync thread, right after the
    /// `fdatasync` that covers them ([`Journal::when_durable`]); without a journal, or with
    /// nothing to wait for, at once on this thread. Calls whose seqs (the larger of `after` and
    /// [`Unacked::waits_for`]) do not decrease run in the order they were made: a caller that
    /// passes the largest seq it has passed so far gets its batches answered in order.
    pub fn acknowledge_then(
        &self,
        ran: Unacked,
        after: Option<Seq>,
        then: impl FnOnce(Vec<Answer>) + Send + 'static,
    ) {
        match (ran.last_write.max(after), self.inner.journal.as_ref()) {
            (Some(seq), Some(j)) => {
                let answers = ran.answers;
                j.when_durable(seq, Box::new(move |r| then(settle(answers, r))));
            }
            _ => then(ran.answers),
        }
    }

    /// Sequences and queues a batch; returns the sequence number of its last write and the
    /// task lists sent to the shards.
    fn submit(
        &self,
        batch: &Arc<Batch>,
        requests: Vec<Request>,
        now: TimeMs,
    ) -> (Option<Seq>, Vec<Arc<Vec<Task>>>) {
        let n = self.inner.queues.len();
        let len = requests.len();
        // Filled on first use: a batch often touches only some shards.
        let mut per_shard: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        let mut last_write = None;
        // The answers given here, before any shard runs: refusals, stored answers of repeats.
        let mut out = Answering::new(batch, 0);
        let mut side = self.inner.lock_front();
        // The batch's writes for the journal, handed over at once before any of them runs
        // (room for all of them from the start: an entry is about 200 bytes, and growing the
        // list one doubling at a time copied it six times per batch of 100).
        let mut logged: Vec<LogEntry> =
            Vec::with_capacity(if side.journal.is_some() { len } else { 0 });
        // The queue depths as last read. Only a submitter holding the front lock adds to a
        // depth, so while this one holds it they can only fall: a depth is read again only
        // when the one last read would refuse. (Read for every request, they were lines the
        // shard threads write.)
        let mut depths: Vec<usize> = self
            .inner
            .depth
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect();
        let max = self.inner.queue_depth_max;
        let writable = side.journal.as_ref().map_or(Ok(()), |j| j.writable());
        if len > 1 {
            side.front.warm(requests.iter());
        }
        for (slot, req) in requests.into_iter().enumerate() {
            if let (Err(e), false) = (&writable, req.command.is_read()) {
                // Nothing can be made durable: refuse before anything changes. Reads go on.
                out.complete(
                    slot,
                    (
                        refused(Refusal::Unavailable {
                            message: e.message.clone(),
                        }),
                        Vec::new(),
                    ),
                );
                continue;
            }
            // A full queue refuses before admission, so a refused request leaves no trace.
            let full = (0..n).any(|s| {
                if depths[s] + per_shard[s].len() >= max {
                    depths[s] = self.inner.depth[s].load(Ordering::Relaxed);
                }
                depths[s] + per_shard[s].len() >= max
            });
            if full {
                out.complete(slot, (refused(Refusal::Overloaded), Vec::new()));
                continue;
            }
            let admission = side.front.admit(&req, now, None);
            match &admission {
                Admission::Run { job, .. } if !req.command.is_read() => {
                    last_write = Some(job.seq);
                    if side.journal.is_some() {
                        logged.push(LogEntry {
                            seq: job.seq,
                            now: job.now,
                            request: req,
                        });
                    }
                }
                // A repeat answers with the first request's outcome, which is acknowledged
                // only once that request is durable: the repeat waits for it too (it may be
                // in a batch still syncing, or in one whose sync failed).
                Admission::Immediate(r) if r.replayed => last_write = last_write.max(r.seq),
                Admission::Wait(_, seq) => last_write = last_write.max(Some(*seq)),
                _ => {}
            }
            route(
                &mut side,
                &mut per_shard,
                (batch, &mut out),
                slot,
                len - slot,
                admission,
            );
        }
        drop(out);
        if let (Some(j), false) = (side.journal.as_ref(), logged.is_empty()) {
            j.append(logged);
        }
        let tasks: usize = per_shard.iter().map(Vec::len).sum();
        let idle = per_shard
            .iter()
            .zip(&self.inner.depth)
            .all(|(t, d)| t.is_empty() || d.load(Ordering::Acquire) == 0);
        if tasks <= self.inner.inline_tasks_max && idle {
            run_inline(&self.inner, &mut side, batch, &per_shard);
            drop(side);
            return (last_write, Vec::new());
        }
        let sent = self.dispatch(batch, per_shard);
        drop(side);
        (last_write, sent)
    }

    /// True when a batch's tasks, `per_shard`, should run as one combined batch on one shard
    /// thread instead of on each shard's thread: it touches several shards, and at least
    /// [`Limits::combine_percent`] of its tasks belong to jobs spanning shards. Each of those
    /// jobs would otherwise meet at a rendezvous, and on a hot SKU every later job on it waits
    /// for that decision: on two cores, carts of three lines went faster on one shard than on
    /// two (ARCHITECTURE.md, "Sharding and multi-shard atomicity").
    fn combines(&self, per_shard: &[Vec<Task>]) -> bool {
        let touched = per_shard.iter().filter(|t| !t.is_empty()).count();
        if touched < 2 || self.inner.combine_percent > 100 {
            return false;
        }
        let tasks: usize = per_shard.iter().map(Vec::len).sum();
        let spanning: usize = per_shard
            .iter()
            .flatten()
            .filter(|t| t.job.shards.count_ones() > 1)
            .count();
        spanning * 100 >= tasks * self.inner.combine_percent as usize
    }

    /// Queues a batch's tasks: on each shard's thread, or combined on one (see
    /// [`Engine::combines`]). Called under the front lock, so every queue gets its messages
    /// in sequence order.
    fn dispatch(&self, batch: &Arc<Batch>, per_shard: Vec<Vec<Task>>) -> Vec<Arc<Vec<Task>>> {
        if !self.combines(&per_shard) {
            return self.send(batch, per_shard);
        }
        // The shard with the most tasks runs them all; the others lend it their state.
        let leader = (0..per_shard.len())
            .max_by_key(|&s| (per_shard[s].len(), std::cmp::Reverse(s)))
            .expect("a batch touching several shards");
        // The number each lender's `Lend` will have in its queue.
        let lenders = (0..per_shard.len())
            .filter(|&s| s != leader && !per_shard[s].is_empty())
            .map(|s| (s, self.inner.sent[s].load(Ordering::Relaxed) + 1))
            .collect();
        let loan = Arc::new(Loan {
            lenders,
            done: Signal::new(1),
        });
        let lists: Vec<Arc<Vec<Task>>> = per_shard.into_iter().map(Arc::new).collect();
        for (s, tasks) in lists.iter().enumerate() {
            if tasks.is_empty() {
                continue;
            }
            self.inner.depth[s].fetch_add(tasks.len(), Ordering::Relaxed);
            self.inner.sent[s].fetch_add(1, Ordering::Relaxed);
            let msg = if s == leader {
                Msg::Combined {
                    batch: batch.clone(),
                    lists: lists.clone(),
                    loan: loan.clone(),
                }
            } else {
                Msg::Lend { loan: loan.clone() }
            };
            self.inner.queues[s]
                .send(msg)
                .expect("shard threads outlive the engine handle");
        }
        lists
    }

    /// Queues every task list of a batch on its shard.
    fn send(&self, batch: &Arc<Batch>, mut per_shard: Vec<Vec<Task>>) -> Vec<Arc<Vec<Task>>> {
        meet(&mut per_shard);
        let mut sent = Vec::with_capacity(per_shard.len());
        for (s, tasks) in per_shard.into_iter().enumerate() {
            if tasks.is_empty() {
                continue;
            }
            self.inner.depth[s].fetch_add(tasks.len(), Ordering::Relaxed);
            self.inner.sent[s].fetch_add(1, Ordering::Relaxed);
            let tasks = Arc::new(tasks);
            sent.push(tasks.clone());
            self.inner.queues[s]
                .send(Msg::Tasks {
                    batch: batch.clone(),
                    tasks,
                })
                .expect("shard threads outlive the engine handle");
        }
        sent
    }

    /// Replays logged entries (in log order, each with its recorded sequence number and time)
    /// on the shard threads, without waiting for them: the caller can decode and submit the
    /// next entries while the shards run these, then collect the answers with
    /// [`Engine::replay_wait`] on the same thread. Nothing is appended to the journal (the
    /// entries are logged already), and no entry is refused for a full queue or batch: the
    /// caller bounds what it has in flight. The state after the last entry is the state a
    /// [`Machine`] replaying the same entries one by one reaches (`tests/tests/model.rs`).
    ///
    /// With `quiet`, nobody reads the answers: [`Engine::replay_wait`] returns none, and the
    /// answers and events of reservations without an idempotency key are not even built
    /// (recovery that keeps no events uses it). Keyed requests are still answered in full,
    /// as their answers are stored for repeats.
    pub fn replay_submit(&self, entries: &[LogEntry], quiet: bool) -> Replaying {
        let batch = if quiet {
            Batch::discarding(entries.len(), &self.inner.pool)
        } else {
            Batch::new(entries.len(), &self.inner.pool)
        };
        let n = self.inner.queues.len();
        let mut per_shard: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        let mut side = self.inner.lock_front();
        let mut out = Answering::new(&batch, 0);
        for (slot, e) in entries.iter().enumerate() {
            let mut admission = side.front.admit(&e.request, e.now, Some(e.seq));
            if let Admission::Run { job, idem: None } = &mut admission {
                job.quiet = quiet && matches!(job.kind, crate::job::JobKind::Reserve { .. });
            }
            route(
                &mut side,
                &mut per_shard,
                (&batch, &mut out),
                slot,
                entries.len() - slot,
                admission,
            );
        }
        drop(out);
        let sent = self.dispatch(&batch, per_shard);
        drop(side);
        Replaying { batch, sent }
    }

    /// The answers of replayed entries, in order, once the shards have run them; none for a
    /// quiet replay. Must be called on the thread that called [`Engine::replay_submit`] (it
    /// is the one woken).
    pub fn replay_wait(&self, replaying: Replaying) -> Vec<Answer> {
        debug_assert_eq!(
            replaying.batch.waiter.id(),
            std::thread::current().id(),
            "replay_wait runs on the submitting thread"
        );
        if replaying.batch.discards() {
            replaying.batch.wait();
            // The task lists are freed by whichever of this thread and the shards lets go of
            // them last.
            return Vec::new();
        }
        collect(&self.inner, replaying.batch, replaying.sent)
    }

    /// Stops the shard threads and returns the state as a [`Machine`] (for example to start
    /// again with a journal once the log is replayed). Call it when nothing is in flight.
    pub fn into_machine(mut self) -> Machine {
        for q in &self.inner.queues {
            let _ = q.send(Msg::Stop);
        }
        for t in self.threads.drain(..) {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let inner = self.inner.clone();
        drop(self);
        let inner = Arc::try_unwrap(inner).unwrap_or_else(|_| {
            panic!("the shard threads have stopped: nothing else holds the engine")
        });
        let mut side = inner
            .front
            .into_inner()
            .expect("front lock: a panic elsewhere poisoned it");
        for h in inner
            .handoffs
            .into_inner()
            .expect("handoff lock: a panic elsewhere poisoned it")
        {
            apply_handoff(&mut side, h);
        }
        debug_assert!(side.waiting.is_empty(), "nothing in flight");
        let shards = inner
            .states
            .into_iter()
            .map(|s| {
                Arc::try_unwrap(s)
                    .unwrap_or_else(|_| panic!("only the engine holds a shard's state"))
                    .into_inner()
                    .expect("shard lock: a panic elsewhere poisoned it")
            })
            .collect();
        Machine {
            front: side.front,
            shards,
        }
    }

    /// Work that keeps the state fast and changes nothing it holds, in a step of about
    /// `budget` items, for a writer with no requests waiting ([`Front::tidy`]); true while
    /// there is more. Returns at once, false, when the front is busy.
    pub fn tidy(&self, budget: usize) -> bool {
        self.inner
            .try_lock_front()
            .is_some_and(|mut side| side.front.tidy(budget))
    }

    /// Waits until every queued job has run, then calls `f` with the front and all shards.
    /// New requests wait meanwhile. Used for digests and snapshots.
    pub fn inspect<R>(&self, f: impl FnOnce(&Front, &[&ShardState]) -> R) -> R {
        // Shards may need the front lock to finish a job, so it is not held while waiting.
        let mut side = loop {
            let side = self.inner.lock_front();
            if self
                .inner
                .depth
                .iter()
                .all(|d| d.load(Ordering::Acquire) == 0)
            {
                break side;
            }
            drop(side);
            std::thread::yield_now();
        };
        // Every job has run, and left its hand-off before it was counted off its queue.
        self.inner.take_handoffs(&mut side);
        let guards: Vec<MutexGuard<'_, ShardState>> = self
            .inner
            .states
            .iter()
            .map(|s| s.lock().expect("shard lock"))
            .collect();
        let refs: Vec<&ShardState> = guards.iter().map(|g| &**g).collect();
        f(&side.front, &refs)
    }

    /// The state digest; equal to the digest of a [`crate::Machine`] fed the same writes.
    pub fn digest(&self) -> [u8; 32] {
        self.inspect(|front, shards| crate::digest::digest(front, shards.iter().copied()))
    }

    /// The canonical state, line by line; see [`crate::digest`].
    pub fn canonical(&self) -> Vec<String> {
        self.inspect(|front, shards| crate::digest::canonical(front, shards.iter().copied()))
    }

    /// Commands queued per shard, for metrics.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.inner
            .depth
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for q in &self.inner.queues {
            let _ = q.send(Msg::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Puts an admitted request where it goes: answered now, waiting for the first execution of
/// its idempotency key, or as tasks on the task lists of its shards (`room`: at most this many
/// more tasks of the batch go to one shard).
fn route(
    side: &mut FrontSide,
    per_shard: &mut [Vec<Task>],
    (batch, out): (&Arc<Batch>, &mut Answering<'_>),
    slot: usize,
    room: usize,
    admission: Admission,
) {
    match admission {
        Admission::Immediate(r) => out.complete(slot, (r, Vec::new())),
        Admission::Wait(key, _) => side
            .waiting
            .entry(key)
            .or_default()
            .push((batch.clone(), slot)),
        Admission::Run { job, idem } => {
            let targets = job.shards;
            let count = targets.count_ones() as usize;
            if count == 1 {
                // One shard: the task owns the job, nothing is shared.
                let tasks = &mut per_shard[targets.trailing_zeros() as usize];
                if tasks.capacity() == 0 {
                    tasks.reserve_exact(room);
                }
                tasks.push(Task {
                    job: TaskJob::Own(job),
                    slot,
                    idem,
                    rendezvous: None,
                });
            } else {
                // The rendezvous comes later, and only if the tasks run on the shards' own
                // threads ([`meet`]): a batch run inline or combined never meets there, and
                // the batch is routed before that is known.
                let job = Arc::new(job);
                for (s, tasks) in per_shard.iter_mut().enumerate() {
                    if targets & (1 << s) != 0 {
                        if tasks.capacity() == 0 {
                            tasks.reserve_exact(room);
                        }
                        tasks.push(Task {
                            job: TaskJob::Shared(job.clone()),
                            slot,
                            idem: idem.clone(),
                            rendezvous: None,
                        });
                    }
                }
            }
        }
    }
}

/// Gives the tasks of each job spanning shards one rendezvous, shared by the job's tasks: for
/// a batch whose tasks run on each shard's own thread. Allocated only then: a combined batch
/// (every W2 batch of carts on two cores) has no use for it.
fn meet(per_shard: &mut [Vec<Task>]) {
    let mut open: FxHashMap<usize, Arc<Rendezvous>> = FxHashMap::default();
    for task in per_shard.iter_mut().flatten() {
        let participants = task.job.shards.count_ones() as usize;
        if participants < 2 {
            continue;
        }
        let rv = open.entry(task.slot).or_insert_with(|| {
            // Its lists allocate on first use.
            Arc::new(Rendezvous {
                participants,
                preps: Mutex::new(Vec::new()),
                decision: OnceLock::new(),
                sleepers: Mutex::new(Vec::new()),
                outs: Mutex::new(Vec::new()),
            })
        });
        task.rendezvous = Some(rv.clone());
    }
}

/// Waits (parked) until every slot of a batch is answered and returns the answers in order.
fn collect(inner: &Inner, batch: Arc<Batch>, sent: Vec<Arc<Vec<Task>>>) -> Vec<Answer> {
    batch.wait();
    // A shard drops its reference right after the message's last task: wait for that
    // instead of copying every answer.
    let mut batch = batch;
    let batch = loop {
        match Arc::try_unwrap(batch) {
            Ok(b) => break b,
            Err(shared) => {
                batch = shared;
                std::thread::yield_now();
            }
        }
    };
    let cfgs = batch.cfgs.into_inner().expect("configs lock");
    // The jobs of deferred answers are in the task lists (a job spanning shards in several).
    let mut jobs: Vec<Option<&Job>> = Vec::new();
    if !cfgs.is_empty() {
        jobs.resize(batch.len, None);
        for task in sent.iter().flat_map(|l| l.iter()) {
            jobs[task.slot] = Some(&*task.job);
        }
    }
    let mut dropped = Vec::new();
    let mut answers = Vec::with_capacity(batch.len);
    let lists = batch.lists.into_inner().expect("answer lists lock");
    in_slot_order(lists, &batch.pool, |i, slot| {
        debug_assert_eq!(i, answers.len(), "every slot is answered once");
        answers.push(match slot {
            Slot::Answer(a) => a,
            Slot::Deferred(d) => {
                let job = jobs[i].expect("a deferred answer's job is in the task lists");
                match (&d.decision, d.outs.is_empty()) {
                    // A hold (its outputs were kept only if they carry events or data).
                    (Decision::Reserve { granted, plans }, true) => {
                        crate::exec::held_answer(job, &cfgs[d.cfg], granted, plans)
                    }
                    _ => {
                        let mut fin = merge(job, Some(&*cfgs[d.cfg]), &d.decision, d.outs);
                        debug_assert!(fin.foreign.is_empty());
                        if !fin.dropped.is_empty() {
                            // A refused reservation: the front forgets its route.
                            dropped.push(Handoff {
                                idem: None,
                                dropped: std::mem::take(&mut fin.dropped),
                            });
                        }
                        respond(job, fin, |_| unreachable!("no foreign-tenant events"))
                    }
                }
            }
        });
    });
    assert_eq!(answers.len(), batch.len, "every slot is answered");
    drop(sent);
    if !dropped.is_empty() {
        inner
            .handoffs
            .lock()
            .expect("handoff lock")
            .append(&mut dropped);
        inner.settle(None);
    }
    answers
}

/// Calls `f` with every answer of `lists` (whose slots are distinct) in slot order, and gives
/// the emptied lists back to `pool`. Each list is nearly in order already (a shard thread
/// answers its tasks in order, but for a reservation spanning shards it finished later): a
/// few lists are merged by looking at each one's next answer.
fn in_slot_order(mut lists: Vec<AnswerList>, pool: &ListPool, mut f: impl FnMut(usize, Slot)) {
    /// More lists than this are put together and sorted instead (answers of many requests
    /// that waited for others, each handed in alone).
    const MERGED_MAX: usize = 8;
    for l in &mut lists {
        if !l.is_sorted_by_key(|(i, _)| *i) {
            l.sort_unstable_by_key(|(i, _)| *i);
        }
    }
    if lists.len() > MERGED_MAX {
        let mut all = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        for mut l in lists.drain(..) {
            all.append(&mut l);
            pool.give(l);
        }
        all.sort_unstable_by_key(|(i, _)| *i);
        lists.push(all);
    }
    // Each list's next answer is looked at in place (`as_slice`), and moved once, to `f`.
    let mut heads: Vec<std::vec::Drain<'_, (usize, Slot)>> =
        lists.iter_mut().map(|l| l.drain(..)).collect();
    loop {
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(h, it)| it.as_slice().first().map(|(i, _)| (*i, h)))
            .min();
        let Some((_, h)) = next else { break };
        let (i, slot) = heads[h].next().expect("looked at");
        f(i, slot);
    }
    drop(heads);
    for l in lists {
        pool.give(l);
    }
}

fn refused(r: Refusal) -> Response {
    Response {
        seq: None,
        replayed: false,
        outcome: Outcome::Refused(r),
    }
}

/// A batch's answers once its writes are durable, or refused as `unavailable` if they could not
/// be made durable: not durable, so not acknowledged. Repeats are refused too, as their first
/// request may be among the writes.
fn settle(answers: Vec<Answer>, durable: Result<(), JournalError>) -> Vec<Answer> {
    match durable {
        Ok(()) => answers,
        Err(e) => answers
            .into_iter()
            .map(|(r, events)| match r.seq {
                Some(_) => (
                    refused(Refusal::Unavailable {
                        message: e.message.clone(),
                    }),
                    Vec::new(),
                ),
                _ => (r, events),
            })
            .collect(),
    }
}

impl Inner {
    fn lock_front(&self) -> FrontGuard<'_> {
        self.hold_front(
            self.front
                .lock()
                .expect("front lock: a panic elsewhere poisoned it"),
        )
    }

    /// [`Inner::lock_front`] if no one holds it.
    fn try_lock_front(&self) -> Option<FrontGuard<'_>> {
        self.front.try_lock().ok().map(|side| self.hold_front(side))
    }

    /// The front lock just taken, with the hand-offs left so far applied.
    fn hold_front<'a>(&'a self, mut side: MutexGuard<'a, FrontSide>) -> FrontGuard<'a> {
        self.take_handoffs(&mut side);
        FrontGuard {
            inner: self,
            side: Some(side),
        }
    }

    /// Applies the hand-offs left so far; the caller holds the front lock.
    fn take_handoffs(&self, side: &mut FrontSide) {
        {
            let mut left = self.handoffs.lock().expect("handoff lock");
            if left.is_empty() {
                return;
            }
            std::mem::swap(&mut *left, &mut side.spare);
        }
        let mut taken = std::mem::take(&mut side.spare);
        for h in taken.drain(..) {
            apply_handoff(side, h);
        }
        side.spare = taken;
    }

    /// Releases the front lock (if `side` holds it), then, while hand-offs are left and the
    /// lock is free, takes it and applies them. Never waits for the lock: a shard thread
    /// (which may hold shard locks) goes on while a submitter sequences a batch. Nothing is
    /// left behind for good: a hand-off is pushed before its thread calls this; if that
    /// thread finds the lock taken, the holder calls this after releasing it and finds the
    /// hand-off.
    fn settle<'a>(&'a self, mut side: Option<MutexGuard<'a, FrontSide>>) {
        loop {
            if let Some(mut held) = side.take() {
                self.take_handoffs(&mut held);
            }
            if self.handoffs.lock().expect("handoff lock").is_empty() {
                return;
            }
            match self.front.try_lock() {
                Ok(held) => side = Some(held),
                // The holder settles when it lets go; after a panic nobody goes on.
                Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return,
            }
        }
    }
}

/// Applies a finished job's front work: answers the requests waiting for its idempotent
/// answer, forgets gone routes.
fn apply_handoff(side: &mut FrontSide, h: Handoff) {
    side.front.forget_routes(&h.dropped);
    // Nearly always nobody waits: then the key is not even hashed again.
    let Some((key, answer)) = h.idem.filter(|_| !side.waiting.is_empty()) else {
        return;
    };
    // The stored answer is unpacked only for a key that has requests waiting on it.
    let Some(waiters) = side.waiting.remove(&key) else {
        return;
    };
    // Set by `Handoff::of`, before the hand-off existed; if not, the requests go on waiting.
    let Some(response) = answer.get() else {
        side.waiting.insert(key, waiters);
        return;
    };
    for (b, slot) in waiters {
        b.complete(
            slot,
            (
                Response {
                    replayed: true,
                    ..(*response).clone()
                },
                Vec::new(),
            ),
        );
    }
}

/// Most multi-shard reservations a shard keeps prepared but not yet applied.
const PENDING_MAX: usize = 64;

/// A multi-shard reservation this shard has prepared and posted, waiting for its decision.
/// While it waits, the shard runs later reservations whose SKUs on this shard differ from
/// those of every pending one (see [`overtakes`]).
struct Pending<'t> {
    task: &'t Task,
}

fn shard_main(index: usize, rx: Receiver<Msg>, inner: Arc<Inner>) {
    let mut received = 0u64;
    while let Ok(msg) = rx.recv() {
        received += 1;
        let (batch, tasks) = match msg {
            Msg::Tasks { batch, tasks } => (batch, tasks),
            Msg::Combined { batch, lists, loan } => {
                run_combined(&inner, &batch, &lists, &loan);
                inner.progress[index].advance(received);
                // As for `Tasks`: the lists first, then the batch its submitter waits for.
                drop(lists);
                drop(batch);
                continue;
            }
            Msg::Lend { loan } => {
                // Nothing of this shard is locked or pending between messages; the leader
                // counted this message as run when it finished.
                loan.done.wait();
                continue;
            }
            Msg::Stop => return,
        };
        let mut state = inner.states[index].lock().expect("shard lock");
        // Shard threads build their answers: in a batch of single-shard jobs (W1) every
        // shard thread runs at once, and the submitters building the answers instead were
        // slower (they sequence the next batches meanwhile).
        let mut defer = Deferrer::new(None);
        let mut out = Answering::running(&batch, tasks.len(), &inner);
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for task in tasks.iter() {
            if !pending.is_empty() {
                apply_decided(&mut state, &inner, &mut out, &mut pending);
                if !overtakes(&state, task, &pending) {
                    drain(&mut state, &inner, &mut out, &mut pending);
                }
            }
            match &task.rendezvous {
                None => {
                    let ran = defer.run_single(&mut state, task);
                    answer(&inner, &mut out, task, ran);
                }
                Some(rv) => {
                    post(index, &state, rv, &task.job);
                    if rv.decision.get().is_none() && is_reserve(task) {
                        // Run later work instead of waiting at the rendezvous.
                        pending.push(Pending { task });
                    } else {
                        finish_multi(&mut state, &inner, &mut out, task);
                    }
                }
            }
        }
        drain(&mut state, &inner, &mut out, &mut pending);
        drop(out);
        // Counted off the queue's depth at once, not task by task: the submitters read the
        // depths as they sequence, and a write per task moved the counters' cache line
        // between the cores at every reservation. Until then the depth still counts every
        // task of the message, which is all the front lock's rule asks (a thread holding a
        // shard lock may wait for the front lock only while the shard's depth counts its task).
        inner.depth[index].fetch_sub(tasks.len(), Ordering::Release);
        inner.next_due[index].store(state.next_due(), Ordering::Release);
        drop(state);
        inner.progress[index].advance(received);
        // The tasks before the batch: the submitter frees them once the batch is answered.
        drop(tasks);
        drop(batch);
    }
}

fn is_reserve(task: &Task) -> bool {
    matches!(task.job.kind, crate::job::JobKind::Reserve { .. })
}

/// True when `task` may run before the pending reservations are applied, with the same result
/// as after them: it is a reservation, none of its SKUs on this shard is a SKU of a pending
/// reservation on this shard (only those SKUs' levels, ATS and held counts change when a
/// reservation is applied), there is room for another pending one, and the shard's hold limit
/// cannot be reached by the pending ones (so its own limit check reads the same).
fn overtakes(state: &ShardState, task: &Task, pending: &[Pending<'_>]) -> bool {
    use crate::job::JobKind;
    let JobKind::Reserve { items, .. } = &task.job.kind else {
        return false;
    };
    if pending.len() >= PENDING_MAX || state.parts.len() + pending.len() >= state.holds_max {
        return false;
    }
    let tenant = task.job.tenant;
    items.iter().all(|it| {
        !state.owns(tenant, it.sku.as_str())
            || pending.iter().all(|p| {
                let JobKind::Reserve { items: other, .. } = &p.task.job.kind else {
                    return true;
                };
                p.task.job.tenant != tenant || other.iter().all(|o| o.sku != it.sku)
            })
    })
}

/// Applies the pending reservations whose decision is known, without waiting.
fn apply_decided(
    state: &mut ShardState,
    inner: &Inner,
    out: &mut Answering<'_>,
    pending: &mut Vec<Pending<'_>>,
) {
    let mut i = 0;
    while i < pending.len() {
        let rv = pending[i]
            .task
            .rendezvous
            .as_ref()
            .expect("pending tasks meet");
        if rv.decision.get().is_some() {
            let p = pending.remove(i);
            finish_multi(state, inner, out, p.task);
        } else {
            i += 1;
        }
    }
}

/// Applies every pending reservation, waiting for the decisions still missing, in sequence
/// order.
fn drain(
    state: &mut ShardState,
    inner: &Inner,
    out: &mut Answering<'_>,
    pending: &mut Vec<Pending<'_>>,
) {
    for p in pending.drain(..) {
        finish_multi(state, inner, out, p.task);
    }
}

/// Borrowed, not cloned: the config's `Arc` count is shared by every shard thread.
fn cfg_of(s: &ShardState, t: u32) -> Option<&crate::config::TenantConfig> {
    s.tenants.get(t as usize).map(|c| &**c)
}

/// Prepares a job spanning shards and posts the preparation; the last participant to post
/// decides and wakes the others.
fn post(index: usize, state: &ShardState, rv: &Rendezvous, job: &Job) {
    let prep = state.prepare(job);
    let last = {
        let mut preps = rv.preps.lock().expect("rendezvous lock");
        preps.push((index, prep));
        preps.len() == rv.participants
    };
    if last {
        let mut preps = std::mem::take(&mut *rv.preps.lock().expect("rendezvous lock"));
        preps.sort_by_key(|(i, _)| *i);
        let preps: Vec<Prep> = preps.into_iter().map(|(_, p)| p).collect();
        let _ = rv
            .decision
            .set(decide(job, cfg_of(state, job.tenant), &preps));
        for t in rv.sleepers.lock().expect("rendezvous lock").drain(..) {
            t.unpark();
        }
    }
}

/// Applies the decision of a posted job spanning shards (waiting for it if needed); the last
/// participant to apply merges and answers.
fn finish_multi(state: &mut ShardState, inner: &Inner, out: &mut Answering<'_>, task: &Task) {
    let job = &*task.job;
    let rv = task.rendezvous.as_ref().expect("a job spanning shards");
    let d = wait_for(rv);
    let part = state.apply(job, d);
    let ran = {
        let mut outs = rv.outs.lock().expect("rendezvous lock");
        outs.push(part);
        if outs.len() < rv.participants {
            None
        } else {
            let outs = std::mem::take(&mut *outs);
            Some(finish(task, cfg_of(state, job.tenant), d, outs))
        }
    };
    if let Some(ran) = ran {
        answer(inner, out, task, ran);
    }
}

/// Answers a finished job; what the front must learn of it (its idempotent response, gone
/// routes) is handed off ([`Handoff`]), without waiting for the front lock.
fn deliver(inner: &Inner, out: &mut Answering<'_>, task: &Task, fin: crate::job::Finished) {
    let Some(mut fin) = deliver_plain(out, task, fin) else {
        return;
    };
    if !fin.foreign.is_empty() {
        // Events of other tenants (a tick's) are named from the front's tenant table.
        deliver_front(&mut inner.lock_front(), out, task, fin);
        return;
    }
    let dropped = std::mem::take(&mut fin.dropped);
    let answer = respond(&task.job, fin, |_| unreachable!("no foreign-tenant events"));
    let h = Handoff::of(task, &answer.0, dropped);
    hand_off_and_complete(inner, out, task.slot, h, answer);
}

/// Answers a hold built in one step ([`Ran::Answered`]): at once, or with its idempotent
/// response handed off as [`deliver`] hands it off.
fn deliver_held(inner: &Inner, out: &mut Answering<'_>, task: &Task, answer: Answer) {
    if task.idem.is_none() {
        out.complete(task.slot, answer);
        return;
    }
    let h = Handoff::of(task, &answer.0, Vec::new());
    hand_off_and_complete(inner, out, task.slot, h, answer);
}

/// Queues the front work `h` of the answer of `slot` and gives the answer.
fn hand_off_and_complete(
    inner: &Inner,
    out: &mut Answering<'_>,
    slot: usize,
    h: Handoff,
    answer: Answer,
) {
    if out.inner.is_some() {
        // Handed off with the thread's other answers, before any of them is handed in.
        out.hand_off(h);
        out.complete(slot, answer);
    } else {
        // Handed off before the answer, so that a repeat sent on seeing the answer usually
        // finds the response stored.
        inner.handoffs.lock().expect("handoff lock").push(h);
        out.complete(slot, answer);
        inner.settle(None);
    }
}

/// Answers a job that needs nothing of the front (no idempotency key to record, nothing
/// dropped, no event of another tenant); hands back the others.
fn deliver_plain(
    out: &mut Answering<'_>,
    task: &Task,
    fin: crate::job::Finished,
) -> Option<crate::job::Finished> {
    if task.idem.is_some() || !fin.dropped.is_empty() || !fin.foreign.is_empty() {
        return Some(fin);
    }
    let answer = respond(&task.job, fin, |_| unreachable!("no foreign-tenant events"));
    out.complete(task.slot, answer);
    None
}

/// [`deliver`] of a job [`deliver_plain`] handed back, with the front lock held.
fn deliver_front(
    side: &mut FrontSide,
    out: &mut Answering<'_>,
    task: &Task,
    mut fin: crate::job::Finished,
) {
    let job = &*task.job;
    let dropped = std::mem::take(&mut fin.dropped);
    let (response, events) = respond(job, fin, |t| side.front.tenants[t as usize].id.clone());
    apply_handoff(side, Handoff::of(task, &response, dropped));
    out.complete(task.slot, (response, events));
}

/// Runs the task lists of a batch on the calling thread, which holds the front lock (so no
/// other batch is sequenced meanwhile) and has seen every shard they touch with an empty
/// queue (so nothing sequenced earlier is still to run there). Tasks run in slot order, which
/// is sequence order; a job spanning shards is prepared on each of its shards, decided and
/// applied at once, without a rendezvous. The answers are those the shard threads would give:
/// a shard thread only ever runs a later job before an earlier one when the result is the
/// same.
fn run_inline(inner: &Inner, side: &mut FrontSide, batch: &Batch, per_shard: &[Vec<Task>]) {
    // Lock order as in `Engine::inspect`: the front, then the shards by index.
    let lists: Vec<&[Task]> = per_shard.iter().map(Vec::as_slice).collect();
    // The submitter runs and collects an inline batch itself: nothing to defer.
    let mut out = Answering::new(batch, lists.iter().map(|l| l.len()).sum());
    run_in_order(inner, &lists, None, |task, ran, _| match ran {
        Ran::Answered(a) => {
            if task.idem.is_some() {
                apply_handoff(side, Handoff::of(task, &a.0, Vec::new()));
            }
            out.complete(task.slot, a)
        }
        Ran::Finished(fin) => {
            if let Some(fin) = deliver_plain(&mut out, task, fin) {
                deliver_front(side, &mut out, task, fin);
            }
        }
        Ran::Deferred(_) => unreachable!("nothing deferred"),
    });
}

/// Runs a combined batch on this shard's thread (see [`Engine::combines`]): once every other
/// shard it touches has run everything before its [`Msg::Lend`] (so it holds no lock and
/// nothing pending, and waits at the `Lend` before it runs anything later: see
/// [`Progress`]), the tasks run as [`run_inline`] runs them, under the locks of every shard
/// they touch; each is answered as a shard thread answers it, and counted off its shards'
/// queue depths after its answer (a thread holding a shard lock may take the front lock only
/// while that shard's depth counts its task, as in [`shard_main`]). Then the lenders go on.
fn run_combined(inner: &Inner, batch: &Batch, lists: &[Arc<Vec<Task>>], loan: &Loan) {
    for &(s, lend) in &loan.lenders {
        inner.progress[s].wait(lend - 1);
    }
    let lists: Vec<&[Task]> = lists.iter().map(|l| l.as_slice()).collect();
    // Each answer's hand-off is queued at once (`Answering::new`): the tasks are counted off
    // their depths one by one, and whoever sees every depth at zero (`Engine::inspect`) must
    // find every response in the queue.
    let mut out = Answering::new(batch, lists.iter().map(|l| l.len()).sum());
    run_in_order(inner, &lists, Some(batch), |task, ran, shards| {
        answer(inner, &mut out, task, ran);
        for s in shards {
            inner.depth[s].fetch_sub(1, Ordering::Release);
        }
    });
    for &(s, lend) in &loan.lenders {
        inner.progress[s].advance(lend);
    }
    loan.done.arrive();
}

/// A task that ran: its answer, its result, or what its answer is built from later.
enum Ran {
    /// A hold, its answer built in one step ([`crate::exec::held_answer`]); the front still
    /// records it if it has an idempotency key ([`deliver_held`]).
    Answered(Answer),
    Finished(crate::job::Finished),
    Deferred(Deferred),
}

/// Decides, for each task a thread runs, whether its answer is built now ([`merge`]) or left
/// to the batch's collector ([`Deferred`]), and keeps the configurations deferred answers need
/// in the batch: one `Arc` per configuration per message, not one per answer (every shard
/// thread shares the count).
struct Deferrer<'b> {
    batch: Option<&'b Batch>,
    /// The configuration last put in the batch's list, and its index there.
    last: Option<(*const crate::config::TenantConfig, usize)>,
}

impl<'b> Deferrer<'b> {
    /// `None`: every answer is built at once.
    fn new(batch: Option<&'b Batch>) -> Deferrer<'b> {
        Deferrer { batch, last: None }
    }

    /// A job on this shard alone: prepare, decide, apply, then [`Deferrer::ran`].
    fn run_single(&mut self, state: &mut ShardState, task: &Task) -> Ran {
        let job = &*task.job;
        let prep = state.prepare(job);
        let d = decide(job, cfg_of(state, job.tenant), std::slice::from_ref(&prep));
        let out = state.apply(job, &d);
        self.ran(state, task, d, std::iter::once(out))
    }

    /// The outputs are collected into a list only for a deferred answer: a single-shard job
    /// answered at once (every W1 reservation) allocates none.
    fn ran(
        &mut self,
        state: &ShardState,
        task: &Task,
        d: Decision,
        outs: impl IntoIterator<Item = PartOut>,
    ) -> Ran {
        let job = &*task.job;
        let cfg = state.tenants.get(job.tenant as usize);
        match (self.batch, cfg) {
            (Some(batch), Some(cfg))
                if task.idem.is_none() && !job.quiet && !batch.discards() && defers(job, &d) =>
            {
                let index = match self.last {
                    Some((ptr, i)) if std::ptr::eq(ptr, &**cfg) => i,
                    _ => {
                        let mut cfgs = batch.cfgs.lock().expect("configs lock");
                        cfgs.push(cfg.clone());
                        self.last = Some((&**cfg, cfgs.len() - 1));
                        cfgs.len() - 1
                    }
                };
                // A refused reservation's outputs are empty too: a cart's answer usually keeps
                // no list at all.
                let outs = outs.into_iter().filter(PartOut::adds_to_answer).collect();
                Ran::Deferred(Deferred {
                    cfg: index,
                    decision: d,
                    outs,
                })
            }
            _ => finish(task, cfg.map(|c| &**c), &d, outs),
        }
    }
}

/// The answer of a task that ran, built now: in one step for a hold
/// ([`crate::exec::held_answer`], for [`deliver_held`]), else its result ([`merge`]) for
/// [`deliver`].
fn finish(
    task: &Task,
    cfg: Option<&crate::config::TenantConfig>,
    d: &Decision,
    outs: impl IntoIterator<Item = PartOut>,
) -> Ran {
    let job = &*task.job;
    match (d, cfg) {
        (Decision::Reserve { granted, plans }, Some(cfg)) if !job.quiet => {
            // An output that adds to the answer takes the general path.
            let mut outs = outs.into_iter().filter(PartOut::adds_to_answer).peekable();
            match outs.peek() {
                None => Ran::Answered(crate::exec::held_answer(job, cfg, granted, plans)),
                Some(_) => Ran::Finished(merge(job, Some(cfg), d, outs)),
            }
        }
        _ => Ran::Finished(merge(job, cfg, d, outs)),
    }
}

/// True when the answer of `job`, decided `d`, can be left to the batch's collector (given
/// no idempotency key and a batch whose answers are read): a reservation that holds, or one
/// refused (whose route the collector hands off: see [`collect`]).
fn defers(job: &Job, d: &Decision) -> bool {
    match d {
        Decision::Reserve { .. } => true,
        Decision::Refuse(_) => matches!(job.kind, crate::job::JobKind::Reserve { .. }),
        _ => false,
    }
}

/// Answers a task that ran: delivered ([`deliver`]) or left to the collector.
fn answer(inner: &Inner, out: &mut Answering<'_>, task: &Task, ran: Ran) {
    match ran {
        Ran::Answered(a) => deliver_held(inner, out, task, a),
        Ran::Finished(fin) => deliver(inner, out, task, fin),
        Ran::Deferred(d) => out.fill(task.slot, Slot::Deferred(d)),
    }
}

/// Runs the tasks of `lists` (by shard) in sequence order on the calling thread, under the
/// locks of the shards that have tasks (taken in index order): a job spanning shards is
/// prepared on each, decided and applied at once. `finished` gets each task with its result
/// and the shards it ran on.
fn run_in_order(
    inner: &Inner,
    lists: &[&[Task]],
    defer_to: Option<&Batch>,
    mut finished: impl FnMut(&Task, Ran, &mut dyn Iterator<Item = usize>),
) {
    let mut defer = Deferrer::new(defer_to);
    let mut states: Vec<Option<MutexGuard<'_, ShardState>>> = lists
        .iter()
        .zip(&inner.states)
        .map(|(tasks, state)| (!tasks.is_empty()).then(|| state.lock().expect("shard lock")))
        .collect();
    let mut next = vec![0usize; lists.len()];
    loop {
        // The shard whose next task comes first.
        let first = lists
            .iter()
            .enumerate()
            .filter_map(|(s, tasks)| tasks.get(next[s]).map(|t| (t.slot, s)))
            .min();
        let Some((_, s)) = first else { break };
        let task = &lists[s][next[s]];
        let job = &*task.job;
        if job.shards.count_ones() == 1 {
            next[s] += 1;
            let r = defer.run_single(states[s].as_mut().expect("locked"), task);
            finished(task, r, &mut std::iter::once(s));
            continue;
        }
        let targets = || (0..lists.len()).filter(|&t| job.shards & (1 << t) != 0);
        // Inline for a job spanning two shards: nothing to allocate per cart.
        let preps: SmallVec<[Prep; 2]> = targets()
            .map(|t| states[t].as_ref().expect("locked").prepare(job))
            .collect();
        let d = decide(
            job,
            cfg_of(states[s].as_ref().expect("locked"), job.tenant),
            &preps,
        );
        let outs: SmallVec<[PartOut; 2]> = targets()
            .map(|t| {
                next[t] += 1;
                states[t].as_mut().expect("locked").apply(job, &d)
            })
            .collect();
        let r = defer.ran(states[s].as_ref().expect("locked"), task, d, outs);
        finished(task, r, &mut targets());
    }
    for (s, state) in states.iter().enumerate() {
        if let Some(state) = state {
            inner.next_due[s].store(state.next_due(), Ordering::Release);
        }
    }
}

/// Waits for the decision of a rendezvous (the decider wakes the sleepers).
fn wait_for(rv: &Rendezvous) -> &Decision {
    spin_then_park(&rv.sleepers, || rv.decision.get())
}

/// Waits until `ready` gives a value: spins briefly (what is awaited is usually about to
/// happen), then yields the core a few times, then registers in `sleepers` and parks until
/// woken, so a waiting thread never burns a core an oversubscribed machine needs for the
/// others. Whoever makes `ready` give a value then unparks every thread in `sleepers`; this
/// thread registers before its last check, so it cannot miss that.
fn spin_then_park<T>(sleepers: &Mutex<Vec<Thread>>, ready: impl Fn() -> Option<T>) -> T {
    for i in 0..200u32 {
        if let Some(v) = ready() {
            return v;
        }
        if i < 100 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    // Registered before every check: a waker drains every sleeper, also one whose condition
    // does not hold yet (a `Progress` advanced short of what it waits for), and a thread that
    // parked again without registering again would never be woken.
    let me = std::thread::current();
    loop {
        {
            let mut s = sleepers.lock().expect("sleepers lock");
            if !s.iter().any(|t| t.id() == me.id()) {
                s.push(me.clone());
            }
        }
        if let Some(v) = ready() {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer that names its slot (as its sequence number).
    fn answer(i: usize) -> Slot {
        Slot::Answer((
            Response {
                seq: Some(i as Seq),
                replayed: false,
                outcome: Outcome::Ok(crate::outcome::Reply::Done),
            },
            Vec::new(),
        ))
    }

    fn list(slots: &[usize]) -> AnswerList {
        slots.iter().map(|&i| (i, answer(i))).collect()
    }

    /// The slots `in_slot_order` calls back with, checking each answer is its slot's.
    fn order_of(lists: Vec<AnswerList>, pool: &ListPool) -> Vec<usize> {
        let mut seen = Vec::new();
        in_slot_order(lists, pool, |i, slot| {
            let Slot::Answer((r, _)) = slot else {
                panic!("only answers here")
            };
            assert_eq!(r.seq, Some(i as Seq), "slot {i} got another's answer");
            seen.push(i);
        });
        seen
    }

    /// Lists merged in slot order, whatever order each list and the lists come in; with more
    /// lists than are merged by looking (answers handed in one at a time) as well; the
    /// emptied lists go back to the pool.
    #[test]
    fn answers_come_out_in_slot_order() {
        let pool = ListPool::default();
        let lists = vec![list(&[1, 4, 6]), list(&[5, 0, 2]), list(&[3])];
        assert_eq!(order_of(lists, &pool), (0..7).collect::<Vec<_>>());
        assert_eq!(pool.0.lock().unwrap().len(), 3);
        assert!(pool.0.lock().unwrap().iter().all(Vec::is_empty));

        let mut many: Vec<AnswerList> = (0..20).rev().map(|i| list(&[i])).collect();
        many.push(list(&[25, 21, 23]));
        many.push(list(&[20, 22, 24]));
        assert_eq!(order_of(many, &pool), (0..26).collect::<Vec<_>>());
        assert!(pool.0.lock().unwrap().len() <= POOLED_LISTS_MAX);
        assert_eq!(order_of(Vec::new(), &pool), Vec::<usize>::new());
    }

    /// A batch is answered when every thread has handed in: the answers of several
    /// `Answering`s and of single completions are all there, and the count reaches zero only
    /// with the last hand-in. A discarding batch counts its answers and keeps none.
    #[test]
    fn a_batch_counts_what_each_thread_hands_in() {
        let pool = Arc::new(ListPool::default());
        let batch = Batch::new(5, &pool);
        {
            let mut a = Answering::new(&batch, 2);
            a.fill(3, answer(3));
            a.fill(0, answer(0));
            let mut b = Answering::new(&batch, 2);
            b.fill(4, answer(4));
            drop(b);
            assert_eq!(batch.remaining.load(Ordering::Acquire), 4, "a's not yet in");
            a.fill(1, answer(1));
        }
        assert_eq!(batch.remaining.load(Ordering::Acquire), 1);
        batch.complete(2, (refused(Refusal::Overloaded), Vec::new()));
        assert_eq!(batch.remaining.load(Ordering::Acquire), 0);
        batch.wait();
        let batch = Arc::try_unwrap(batch)
            .ok()
            .expect("only this thread holds it");
        let lists = batch.lists.into_inner().unwrap();
        let mut seen = Vec::new();
        in_slot_order(lists, &pool, |i, _| seen.push(i));
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);

        let quiet = Batch::discarding(3, &pool);
        let mut a = Answering::new(&quiet, 3);
        for i in 0..3 {
            a.fill(i, answer(i));
        }
        drop(a);
        assert_eq!(quiet.remaining.load(Ordering::Acquire), 0);
        assert!(quiet.lists.lock().unwrap().is_empty());
    }
}
