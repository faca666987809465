//! The runner's pipelined group commit: a write's answer and events are released only once
//! the journal says it is durable, while the next batch already runs.

use depot_api::events::EventLog;
use depot_api::server::runner::Runner;
use depot_engine::{
    Command, Engine, EngineConfig, Journal, JournalError, Limits, LogEntry, Outcome, Request, Seq,
    TenantId,
};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A journal whose writes become durable only when the test says so.
#[derive(Default)]
struct Gate {
    state: Mutex<(Vec<Seq>, Seq)>,
    changed: Condvar,
}

impl Gate {
    fn release(&self, upto: Seq) {
        self.state.lock().unwrap().1 = upto;
        self.changed.notify_all();
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
    fn writable(&self) -> Result<(), JournalError> {
        Ok(())
    }
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
    let gate = Arc::new(Gate::default());
    let engine = Engine::start_with(
        EngineConfig {
            shards: 2,
            limits: Limits::default(),
        },
        Some(gate.clone()),
    );
    let events = Arc::new(EventLog::new(1_000));
    let runner = Arc::new(Runner::start(engine, None, events.clone(), 16));

    let r = runner.clone();
    let first = tokio::spawn(async move { r.run(create("alpha")).await });
    // The write ran (it is in the journal) but is not durable: no answer, no event.
    let wait_for = |n: usize| {
        let gate = gate.clone();
        async move {
            for _ in 0..500 {
                if gate.appended().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the journal never saw {n} writes");
        }
    };
    wait_for(1).await;
    let r = runner.clone();
    let second = tokio::spawn(async move { r.run(create("beta")).await });
    // The next batch runs while the first waits for its sync.
    wait_for(2).await;
    assert_eq!(gate.appended(), vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(
        events.latest_seq(),
        0,
        "no event before its write is durable"
    );

    gate.release(1);
    let a = first.await.unwrap().unwrap();
    assert!(matches!(a[0].0.outcome, Outcome::Ok(_)), "{a:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "the second batch is not durable yet");
    assert_eq!(events.latest_seq(), 1);

    gate.release(2);
    let b = second.await.unwrap().unwrap();
    assert!(matches!(b[0].0.outcome, Outcome::Ok(_)), "{b:?}");
    assert_eq!(events.latest_seq(), 2);
    let runner = Arc::try_unwrap(runner).expect("the only reference");
    tokio::task::spawn_blocking(move || runner.stop())
        .await
        .unwrap();
}
