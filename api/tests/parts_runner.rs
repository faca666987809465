//! The runner's pipelined group commit: a write's answer and events are released only once
//! the journal says it is durable, while the next batch already runs.

use depot_api::events::EventLog;
use depot_api::server::runner::{RunError, Runner};
use depot_engine::{
    Command, Completion, Engine, EngineConfig, Journal, JournalError, Limits, LogEntry, Outcome,
    Request, Seq, TenantId,
};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A journal whose writes become durable only when the test says so. With `syncer`, it runs
/// completions as the write-ahead log's sync thread does: when a release covers them, on the
/// releasing thread; without, the runner's writer waits for them ([`Journal::when_durable`]'s
/// default).
#[derive(Default)]
struct Gate {
    state: Mutex<(Vec<Seq>, Seq)>,
    changed: Condvar,
    syncer: bool,
    completions: Mutex<Vec<(Seq, Completion)>>,
}

impl Gate {
    fn release(&self, upto: Seq) {
        self.state.lock().unwrap().1 = upto;
        self.changed.notify_all();
        let due: Vec<Completion> = {
            let mut c = self.completions.lock().unwrap();
            let (due, later) = std::mem::take(&mut *c)
                .into_iter()
                .partition(|(seq, _)| *seq <= upto);
            *c = later;
            due.into_iter().map(|(_, then)| then).collect()
        };
        for then in due {
            then(Ok(()));
        }
    }
    fn appended(&self) -> Vec<Seq> {
        self.state.lock().unwrap().0.clone()
    }
}

impl Journal for Gate {
    fn append(&self, entries: Vec<LogEntry>) {
        self.state
            .lock()
            .unwrap()
            .0
            .extend(entries.iter().map(|e| e.seq));
    }
    fn wait_durable(&self, seq: Seq) -> Result<(), JournalError> {
        let mut st = self.state.lock().unwrap();
        while st.1 < seq {
            st = self.changed.wait(st).unwrap();
        }
        Ok(())
    }
    fn when_durable(&self, seq: Seq, then: Completion) {
        if !self.syncer {
            return then(self.wait_durable(seq));
        }
        let durable = self.state.lock().unwrap().1;
        if seq <= durable {
            return then(Ok(()));
        }
        self.completions.lock().unwrap().push((seq, then));
    }
    fn writable(&self) -> Result<(), JournalError> {
        Ok(())
    }
}

/// A gate (with a syncer or not), a runner over an engine journaling to it, and its event log.
fn start(syncer: bool) -> (Arc<Gate>, Arc<Runner>, Arc<EventLog>) {
    let gate = Arc::new(Gate {
        syncer,
        ..Gate::default()
    });
    let engine = Engine::start_with(
        EngineConfig {
            shards: 2,
            limits: Limits::default(),
        },
        Some(gate.clone()),
    );
    let events = Arc::new(EventLog::new(1_000));
    let runner = Arc::new(Runner::start(engine, None, events.clone(), 16));
    (gate, runner, events)
}

/// Creates `tenant` through the runner, in a task of its own.
fn spawn_create(
    runner: &Arc<Runner>,
    tenant: &'static str,
) -> tokio::task::JoinHandle<Result<Vec<depot_api::server::runner::Answer>, RunError>> {
    let r = runner.clone();
    tokio::spawn(async move { r.run(create(tenant)).await })
}

/// Waits (up to five seconds) until `gate` has seen `n` writes.
async fn appended(gate: &Gate, n: usize) {
    for _ in 0..500 {
        if gate.appended().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the journal never saw {n} writes");
}

/// The outcome of the one request a task created a tenant with (within five seconds).
async fn outcome(
    task: tokio::task::JoinHandle<Result<Vec<depot_api::server::runner::Answer>, RunError>>,
) -> Outcome {
    let answers = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    answers[0].0.outcome.clone()
}

/// Asserts the task's first answer is a success.
async fn assert_ok(
    task: tokio::task::JoinHandle<Result<Vec<depot_api::server::runner::Answer>, RunError>>,
) {
    let a = outcome(task).await;
    assert!(matches!(a, Outcome::Ok(_)), "{a:?}");
}

async fn stop(runner: Arc<Runner>) {
    let runner = Arc::try_unwrap(runner).expect("the only reference");
    tokio::task::spawn_blocking(move || runner.stop())
        .await
        .unwrap();
}

fn create(tenant: &str) -> Vec<Request> {
    vec![Request {
        tenant: TenantId::new(tenant).unwrap(),
        key_id: "k".into(),
        idempotency_key: None,
        command: Command::CreateTenant,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_events_wait_for_durability_while_the_next_batch_runs() {
    let (gate, runner, events) = start(true);

    let first = spawn_create(&runner, "alpha");
    // The write ran (it is in the journal) but is not durable: no answer, no event.
    appended(&gate, 1).await;
    let second = spawn_create(&runner, "beta");
    // The next batch runs while the first waits for its sync.
    appended(&gate, 2).await;
    assert_eq!(gate.appended(), vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(
        events.latest_seq(),
        0,
        "no event before its write is durable"
    );

    gate.release(1);
    assert_ok(first).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "the second batch is not durable yet");
    assert_eq!(events.latest_seq(), 1);

    gate.release(2);
    assert_ok(second).await;
    assert_eq!(events.latest_seq(), 2);
    stop(runner).await;
}

/// A batch that writes nothing (here a refusal) is answered after the batches before it, not
/// ahead of a write still waiting for its sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_without_writes_waits_for_the_batches_before_it() {
    let (gate, runner, events) = start(true);
    let first = spawn_create(&runner, "alpha");
    appended(&gate, 1).await;
    assert_eq!(gate.appended(), vec![1]);
    // The same tenant again: refused before it is sequenced, so nothing to log.
    let second = spawn_create(&runner, "alpha");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gate.appended(), vec![1], "the repeat writes nothing");
    assert!(!first.is_finished());
    assert!(
        !second.is_finished(),
        "answered ahead of the write before it"
    );
    assert_eq!(events.latest_seq(), 0);
    gate.release(1);
    assert_ok(first).await;
    let b = outcome(second).await;
    assert!(matches!(b, Outcome::Refused(_)), "{b:?}");
    assert_eq!(events.latest_seq(), 1);
    stop(runner).await;
}

/// With a journal that only knows how to wait ([`Journal::when_durable`]'s default), answers
/// and events still wait for durability, in order; the writer waits with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_without_a_syncer_still_holds_answers_until_durable() {
    let (gate, runner, events) = start(false);
    let first = spawn_create(&runner, "alpha");
    let second = spawn_create(&runner, "beta");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(
        events.latest_seq(),
        0,
        "no event before its write is durable"
    );
    let written = gate.appended().len();
    gate.release(written as Seq);
    assert_ok(first).await;
    // The second may have run only once the first was durable: release it too.
    appended(&gate, 2).await;
    gate.release(2);
    assert_ok(second).await;
    assert_eq!(events.latest_seq(), 2);
    stop(runner).await;
}

/// At most eight executed batches wait for their sync: the writer stops behind them (a ninth
/// has run and waits to be counted, the tenth waits in the queue) and goes on once they are
/// durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_waits_behind_eight_unanswered_batches() {
    let (gate, runner, _events) = start(true);
    const NAMES: [&str; 10] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"];
    let mut tasks = Vec::new();
    for name in NAMES {
        tasks.push(spawn_create(&runner, name));
        // One batch each: the next goes in once this one ran.
        appended(&gate, tasks.len().min(9)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gate.appended().len(), 9, "the writer went past the bound");
    assert!(tasks.iter().all(|t| !t.is_finished()));
    gate.release(9);
    appended(&gate, 10).await;
    gate.release(10);
    for t in tasks {
        assert_ok(t).await;
    }
    stop(runner).await;
}
