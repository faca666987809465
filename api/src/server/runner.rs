//! The bridge from async handlers to the blocking engine.
//!
//! Handlers put a group of requests and a oneshot sender into a bounded queue and await the
//! answers; dedicated OS threads drain the queue into [`Engine::execute`], so no tokio worker
//! ever parks on the engine. Whatever queued up while the engine ran (and its log synced) goes
//! in as the next batch: group commit for free. A full queue refuses at once (503) instead of
//! growing.
//!
//! Writes go through one thread, which executes a batch ([`Engine::execute_unacked`]) and hands
//! its answers to the log ([`Engine::acknowledge_then`]): the log's sync thread, right after the
//! `fdatasync` that covers the batch, pushes its events and sends its answers, while the writer
//! already executes the next batch (pipelined group commit: the engine works while the disk
//! syncs). Batches are answered in order (each waits for the largest seq of those before it
//! too), so events reach the [`EventLog`] in sequence order (the cursor of `/v1/events` must
//! never skip an event pushed late) and only once durable. A separate acknowledging thread
//! used to wait for each sync and do this: one more thread to wake per sync, and on two cores
//! it waited for a core a third of the time. Groups made only of reads go through their own
//! threads and never wait behind a sync.

use crate::events::EventLog;
use crossbeam::channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use depot_engine::{Command, Engine, Event, Outcome, Reply, Request, Response, TenantId};
use depot_wal::WalJournal;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// The engine's answer to one request.
pub type Answer = (Response, Vec<Event>);

/// Most requests handed to the engine in one `execute` call.
const ENGINE_BATCH_MAX: usize = 4_096;
/// Threads running groups of reads.
const READ_THREADS: usize = 2;
/// Executed batches waiting for their `fdatasync` (the writer waits beyond this).
const ACK_QUEUE: usize = 8;

/// Executed batches not answered yet: the writer waits while there are [`ACK_QUEUE`] of them,
/// and for none before it stops.
#[derive(Default)]
struct Unanswered {
    /// The count, and whether the writer waits for it to fall (only then is it woken: a notify
    /// is a system call even when nobody waits).
    count: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Unanswered {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until fewer than `max` batches are unanswered, then counts one more.
    fn add(&self, max: usize) {
        let mut n = self.lock();
        while n.0 >= max {
            n.1 = true;
            n = self.changed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        n.1 = false;
        n.0 += 1;
    }

    fn answered(&self) {
        let mut n = self.lock();
        n.0 -= 1;
        let waiting = n.1;
        drop(n);
        if waiting {
            self.changed.notify_all();
        }
    }
}

/// Counts its batch as answered when dropped: after its answers are sent, and also if the
/// completion carrying it is dropped uncalled or unwinds, so the writer never waits for a batch
/// nobody will answer (its handlers then get [`RunError::Closed`]).
struct Answering(Arc<Unanswered>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answered();
    }
}

struct Work {
    requests: Vec<Request>,
    reply: Option<oneshot::Sender<Vec<Answer>>>,
}

enum Msg {
    Work(Work),
    Stop,
}

/// Why a group was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the engine's queue is full")]
    Full,
    #[error("the server is stopping")]
    Closed,
}

/// The engine behind its queues. See the module docs.
pub struct Runner {
    engine: Arc<Engine>,
    journal: Option<Arc<WalJournal>>,
    writes: Sender<Msg>,
    reads: Sender<Msg>,
    /// Batches taken off the (writes, reads) queues so far.
    taken: Arc<[AtomicU64; 2]>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("engine", &self.engine)
            .field("writes_queued", &self.writes.len())
            .field("reads_queued", &self.reads.len())
            .finish()
    }
}

/// Milliseconds since the Unix epoch, read at the edge (the engine reads no clock).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Runner {
    /// Starts the threads. `queue_max` bounds each queue, in groups.
    pub fn start(
        engine: Engine,
        journal: Option<Arc<WalJournal>>,
        events: Arc<EventLog>,
        queue_max: usize,
    ) -> Runner {
        let engine = Arc::new(engine);
        let (writes, writes_rx) = bounded(queue_max.max(1));
        let (reads, reads_rx) = bounded(queue_max.max(1));
        let mut threads = Vec::new();
        let taken = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let e = engine.clone();
        let t = taken.clone();
        threads.push(
            std::thread::Builder::new()
                .name("depot-api-writes".into())
                .spawn(move || {
                    let unanswered = Arc::new(Unanswered::default());
                    // The largest seq a batch so far waited for: every later batch waits for
                    // it too, so batches are answered in order.
                    let mut after = None;
                    drain(&writes_rx, &e, &t[0], true, |ran, works, lens| {
                        after = after.max(ran.waits_for());
                        unanswered.add(ACK_QUEUE);
                        let (events, counted) = (events.clone(), Answering(unanswered.clone()));
                        e.acknowledge_then(ran, after, move |answers| {
                            answer(&events, works, lens, answers);
                            drop(counted);
                        });
                    });
                    // Everything executed is answered (or refused) before the thread ends.
                    unanswered.add(1);
                })
                .expect("spawn the engine's write thread"),
        );
        for i in 0..READ_THREADS {
            let (e, rx, t) = (engine.clone(), reads_rx.clone(), taken.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("depot-api-reads-{i}"))
                    // Reads write nothing: their answers are final at once (and have no events).
                    .spawn(move || {
                        drain(&rx, &e, &t[1], false, |ran, works, lens| {
                            reply(works, lens, e.acknowledge(ran));
                        });
                    })
                    .expect("spawn an engine read thread"),
            );
        }
        Runner {
            engine,
            journal,
            writes,
            reads,
            taken,
            threads: Mutex::new(threads),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn journal(&self) -> Option<&Arc<WalJournal>> {
        self.journal.as_ref()
    }

    /// Groups waiting in the (writes, reads) queues.
    pub fn queued(&self) -> (usize, usize) {
        (self.writes.len(), self.reads.len())
    }

    /// Batches taken off the (writes, reads) queues so far: a batch counts once its thread has
    /// stopped adding groups to it and goes on to execute it.
    pub fn taken(&self) -> (u64, u64) {
        (
            self.taken[0].load(Ordering::Acquire),
            self.taken[1].load(Ordering::Acquire),
        )
    }

    fn queue_for(&self, requests: &[Request]) -> &Sender<Msg> {
        if requests.iter().all(|r| r.command.is_read()) {
            &self.reads
        } else {
            &self.writes
        }
    }

    /// Runs `requests` as one group (sequenced together, in order) and returns their answers.
    pub async fn run(&self, requests: Vec<Request>) -> Result<Vec<Answer>, RunError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        let queue = self.queue_for(&requests);
        let msg = Msg::Work(Work {
            requests,
            reply: Some(tx),
        });
        match queue.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(RunError::Full),
            Err(TrySendError::Disconnected(_)) => return Err(RunError::Closed),
        }
        rx.await.map_err(|_| RunError::Closed)
    }

    /// Queues `requests` without waiting for their answers (the ticker).
    pub fn submit(&self, requests: Vec<Request>) -> Result<(), RunError> {
        let msg = Msg::Work(Work {
            requests,
            reply: None,
        });
        self.writes.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => RunError::Full,
            TrySendError::Disconnected(_) => RunError::Closed,
        })
    }

    /// The periodic tick that expires holds (engine-wide: it runs on every tenant).
    pub fn tick(&self) -> Result<(), RunError> {
        let tenant = TenantId::new(depot_engine::front::SYSTEM_TENANT).expect("a valid id");
        self.submit(vec![Request {
            tenant,
            key_id: "ticker".into(),
            idempotency_key: None,
            command: Command::Tick,
        }])
    }

    /// Runs everything queued so far, then stops the threads. Blocks: call it from a blocking
    /// context. Later groups are refused with [`RunError::Closed`] or never answered.
    pub fn stop(&self) {
        let _ = self.writes.send(Msg::Stop);
        for _ in 0..READ_THREADS {
            let _ = self.reads.send(Msg::Stop);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Items one step of [`Engine::tidy`] moves on the writer's idle moments: a few microseconds,
/// the most a request arriving meanwhile waits for it.
const TIDY_STEP: usize = 32;

/// Takes whatever is queued (up to [`ENGINE_BATCH_MAX`] requests) as one batch, executes it and
/// hands it to `then`, until a stop message. With `tidy`, tidies the engine
/// ([`Engine::tidy`]) while nothing is queued.
fn drain(
    rx: &Receiver<Msg>,
    engine: &Engine,
    taken: &AtomicU64,
    tidy: bool,
    mut then: impl FnMut(depot_engine::Unacked, Vec<Work>, Vec<usize>),
) {
    loop {
        let next = match rx.try_recv() {
            // Nothing waiting: the writer tidies the state a step at a time while it can
            // ([`Engine::tidy`]), looking for requests between steps, then sleeps.
            Err(TryRecvError::Empty) if tidy && engine.tidy(TIDY_STEP) => continue,
            Err(TryRecvError::Empty) => rx.recv().ok(),
            other => other.ok(),
        };
        let Some(Msg::Work(first)) = next else {
            return;
        };
        let mut total = first.requests.len();
        let mut works = vec![first];
        let mut stop = false;
        while total < ENGINE_BATCH_MAX {
            match rx.try_recv() {
                Ok(Msg::Work(w)) => {
                    total += w.requests.len();
                    works.push(w);
                }
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut lens = Vec::with_capacity(works.len());
        let requests = if let [only] = works.as_mut_slice() {
            // One group (a batch alone, or a single request): its list as it is, not copied.
            lens.push(only.requests.len());
            std::mem::take(&mut only.requests)
        } else {
            let mut requests = Vec::with_capacity(total);
            for w in &mut works {
                lens.push(w.requests.len());
                requests.append(&mut w.requests);
            }
            requests
        };
        taken.fetch_add(1, Ordering::Release);
        let ran = engine.execute_unacked(requests, wall_ms());
        then(ran, works, lens);
        if stop {
            return;
        }
    }
}

/// Answers an executed batch once it is durable: pushes its events and sends its answers.
///
/// A reservation's answer reaches its handler without its events: they are moved into the
/// event log instead of copied, since no handler renders a reservation from its events
/// (`ops::render` reads only a stock operation's). Every other answer keeps its events.
fn answer(events: &EventLog, works: Vec<Work>, lens: Vec<usize>, mut answers: Vec<Answer>) {
    events.push_all(answers.iter_mut().map(|(response, evs)| {
        if matches!(response.outcome, Outcome::Ok(Reply::Reservation(_))) {
            Cow::Owned(std::mem::take(evs))
        } else {
            Cow::Borrowed(evs.as_slice())
        }
    }));
    reply(works, lens, answers);
}

/// Sends each group its answers.
fn reply(works: Vec<Work>, lens: Vec<usize>, answers: Vec<Answer>) {
    let mut answers = answers.into_iter();
    for (w, len) in works.into_iter().zip(lens) {
        let part: Vec<Answer> = answers.by_ref().take(len).collect();
        if let Some(reply) = w.reply {
            // The handler may have gone (client disconnect, timeout): nothing to do.
            let _ = reply.send(part);
        }
    }
}
