//! `depot serve`: open the key store, bind the listener, recover the engine in the background
//! (`/readyz` is 503 until then), tick, and on SIGTERM or SIGINT stop accepting, finish the
//! requests in flight, make the log durable and return.

use super::config::ServeConfig;
use super::durable;
use super::runner::Runner;
use super::{app, AppState};
use crate::keys::{KeyStore, Role};
use anyhow::Context;
use depot_engine::{Command, Limits, Outcome, Refusal, Request, Sku, TenantId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The demo tenant of `--demo`.
pub const DEMO_TENANT: &str = "demo";
/// How often holds are expired.
const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// How long in-flight requests may take to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Every accepted connection sends at once (`TCP_NODELAY`): an answer that spans several
/// segments (a `/v1/batch` answer, an event page) must not wait for the client's delayed
/// acknowledgement before its last segment leaves.
pub(super) fn accepted(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
    }
}

/// Runs the server until a stop signal. `Err` when it cannot start (the address is taken, the
/// log is corrupt: the message names the file and offset).
pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads)
        .enable_all()
        .thread_name("depot-http")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run(config));
    // Everything that must finish was awaited in `run`; a recovery cut short by a stop signal
    // is still reading the log on a blocking thread, and is not waited for.
    runtime.shutdown_background();
    result
}

async fn run(config: ServeConfig) -> anyhow::Result<()> {
    // Registered before anything is printed: a signal sent as soon as the address appears
    // must stop the server in order, not kill it with the default action.
    let signals = Signals::register().context("installing the SIGINT and SIGTERM handlers")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let (keys, generated) = KeyStore::open(&config.data_dir, config.master_key.clone())
        .context("opening the key store")?;
    if let Some(key) = generated {
        println!(
            "master key (shown once; stored in {}): {key}",
            config.data_dir.join(crate::keys::MASTER_KEY_FILE).display()
        );
    }
    let state = AppState::new(keys, config.limits.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, sync = ?config.sync, shards = config.shards, "listening");
    println!("depot listening on http://{addr}");

    let (failed_tx, failed_rx) = oneshot::channel::<anyhow::Error>();
    let recovery = tokio::spawn(start_engine(config.clone(), state.clone(), failed_tx, addr));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    // Why the server stops when it is not a signal: the engine could not start, or its log
    // failed while it ran.
    let stop_error: Arc<std::sync::Mutex<Option<anyhow::Error>>> = Arc::default();
    let error_slot = stop_error.clone();
    let shutdown = async move {
        let failed = wait_for_stop(signals, failed_rx).await;
        if let Some(e) = failed {
            tracing::error!(error = %format!("{e:#}"), "stopping");
            *error_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        signal_state.begin_stopping();
        let _ = stop_tx.send(true);
    };
    let metrics = state.metrics().clone();
    let connections = super::listen::ConnectionLimits {
        max_connections: super::listen::fit_max_connections(config.connections.max_connections),
        ..config.connections
    };
    let server = super::listen::serve_connections(
        listener,
        app(state.clone()),
        connections,
        move |n| metrics.add_http_connections(n),
        shutdown,
    );
    let mut stop_rx2 = stop_rx.clone();
    let drained = async move {
        let _ = stop_rx2.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        () = server => {}
        () = drained => tracing::warn!("requests still in flight after the drain timeout; stopping anyway"),
    }
    let stop_error = stop_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    if !state.is_ready() && stop_error.is_none() {
        // Stopped by a signal while recovering: recovery only reads the log (and the engine
        // has written nothing), so there is nothing to finish; the next start recovers again.
        tracing::info!(
            "stopped during recovery, before serving a request; the next start recovers again"
        );
        return Ok(());
    }
    let started = recovery.await.ok().flatten();
    finish(&state).await;
    match (started, stop_error) {
        (Some(()), None) => {
            tracing::info!("stopped");
            Ok(())
        }
        (Some(()), Some(fatal)) => Err(fatal),
        (None, _) => anyhow::bail!("the engine could not start (see the log above)"),
    }
}

/// The stop signals, listened for from the moment they are registered.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

/// Waits for SIGINT, SIGTERM, a failed start or a failed log (returned).
async fn wait_for_stop(
    mut signals: Signals,
    failed: oneshot::Receiver<anyhow::Error>,
) -> Option<anyhow::Error> {
    let ctrl_c = async {
        signals.interrupt.recv().await;
    };
    let term = async {
        signals.terminate.recv().await;
    };
    // A dropped sender (the log watcher stopped) is no reason to stop.
    let failed = async {
        match failed.await {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => { tracing::info!("SIGINT: stopping"); None }
        () = term => { tracing::info!("SIGTERM: stopping"); None }
        e = failed => Some(e),
    }
}

/// Recovers the engine, marks the server ready, starts the ticker and loads the demo.
/// `None` (after reporting on `failed`) when recovery failed.
async fn start_engine(
    config: ServeConfig,
    state: AppState,
    failed: oneshot::Sender<anyhow::Error>,
    addr: SocketAddr,
) -> Option<()> {
    let snapshots = match snapshotter_config(&config) {
        Ok(s) => s,
        Err(e) => {
            let _ = failed.send(anyhow::anyhow!(
                "opening --log-archive-dir {}: {e}",
                config
                    .snapshots
                    .archive_dir
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ));
            return None;
        }
    };
    let wal_dir = config.data_dir.join("wal");
    let (sync, shards) = (config.sync, config.shards);
    let limits = Limits {
        combine_percent: config.combine_percent,
        inline_tasks_max: config.inline_tasks,
        ..Limits::default()
    };
    let events_kept = state.limits().events_kept;
    let limits_for_reload = limits.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        durable::open(&wal_dir, sync, limits, shards, events_kept)
            .with_context(|| format!("recovering from {}", wal_dir.display()))
            .map(|d| (d, started.elapsed()))
    })
    .await;
    let (d, took) = match opened {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            let _ = failed.send(e);
            return None;
        }
        Err(e) => {
            let _ = failed.send(anyhow::anyhow!("recovery panicked: {e}"));
            return None;
        }
    };
    tracing::info!(tail = ?d.tail, took_ms = took.as_millis() as u64, "recovered; ready");
    state.events().push(&d.recent_events);
    let metrics = state.metrics().clone();
    d.journal.set_sync_observer(Box::new(move |took, entries| {
        metrics.observe_sync(took, entries)
    }));
    let runner = Arc::new(Runner::start(
        d.engine,
        Some(d.journal.clone()),
        state.events().clone(),
        state.limits().engine_queue_max,
    ));
    match depot_wal::FsDir::open(config.data_dir.join("wal")) {
        Ok(dir) => state.set_snapshotter(depot_wal::Snapshotter::start(
            runner.engine().clone(),
            d.journal.clone(),
            Box::new(dir),
            snapshots,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "no background snapshots: cannot open the log directory")
        }
    }
    state.set_ready(runner.clone());
    state.metrics().set_wal_writable(true);
    let reload = Reload {
        wal_dir: config.data_dir.join("wal"),
        limits: limits_for_reload,
        shards,
        journal: d.journal.clone(),
    };
    tokio::spawn(watch_log(reload, state.clone(), failed));
    tokio::spawn(tick(state.clone()));
    if config.demo {
        if let Err(e) = load_demo(&state, &runner, addr).await {
            tracing::error!(error = %format!("{e:#}"), "the demo tenant could not be loaded");
        }
    }
    Some(())
}

/// The snapshotter's triggers and retention from the flags.
fn snapshotter_config(config: &ServeConfig) -> std::io::Result<depot_wal::SnapshotterConfig> {
    let s = &config.snapshots;
    let retention = match s.retention {
        None => None,
        Some(keep_for) => Some(depot_wal::RetentionPolicy {
            keep_for,
            action: match &s.archive_dir {
                None => depot_wal::RetentionAction::Delete,
                Some(dir) => {
                    depot_wal::RetentionAction::Archive(Arc::new(depot_wal::FsDir::open(dir)?))
                }
            },
            ..depot_wal::RetentionPolicy::default()
        }),
    };
    Ok(depot_wal::SnapshotterConfig {
        every_writes: s.every_writes,
        min_log_growth_percent: s.log_growth_percent,
        every: s.every,
        retention,
        ..depot_wal::SnapshotterConfig::default()
    })
}

/// What reloading the state from the log needs (see [`watch_log`]).
struct Reload {
    wal_dir: std::path::PathBuf,
    limits: Limits,
    shards: usize,
    /// The server's log, which refuses writes once it has failed.
    journal: Arc<depot_wal::WalJournal>,
}

/// Watches the log while the server runs. A full disk: writes are refused (503
/// `unavailable`), the operator is told once, and the state is reloaded from the log
/// ([`reload_after_disk_full`]) so that reads answer from what the disk holds. Any other
/// failure, a failed `fdatasync` above all, leaves the medium in doubt (the kernel may have
/// dropped the pages it could not write): the server stops with an error, to be restarted and
/// recover from what the disk really holds, instead of answering reads from a state the disk
/// may not have.
async fn watch_log(reload: Reload, state: AppState, fatal: oneshot::Sender<anyhow::Error>) {
    let mut stopping = state.stopping();
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    let mut told = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        match reload.journal.failure() {
            None => {}
            Some(depot_wal::WalError::DiskFull { .. }) if told => {}
            Some(depot_wal::WalError::DiskFull { file }) => {
                told = true;
                // Taken before anyone can see the log as failed: from then on, no read shows
                // the engine in memory.
                let old = state.take_runner();
                state.metrics().set_wal_writable(false);
                tracing::error!(
                    file,
                    "the disk is full: writes are refused (503 unavailable); reloading the \
                     state from the log, then reads go on; free space, then restart depot"
                );
                if let Err(e) = reload_after_disk_full(&reload, &state, old).await {
                    let _ = fatal.send(e);
                    return;
                }
            }
            Some(e) => {
                state.metrics().set_wal_writable(false);
                let _ = fatal.send(anyhow::anyhow!(
                    "the write-ahead log failed ({e}); restart depot to recover from what the \
                     disk holds"
                ));
                return;
            }
        }
    }
}

/// After a full disk, the engine in memory holds the writes of the batches whose log write
/// failed (and of those run behind them before the failure was seen): all answered
/// `unavailable`, none on the disk. Reads must not show them, now or later. So the server
/// stops serving `/v1` (503 `not_ready`, `/readyz` too; `old` is the engine taken from the
/// state), stops it and the
/// snapshotter, recovers the state from the log again (read only), and serves reads from that;
/// writes stay refused with the log's error. A failure here stops the server.
async fn reload_after_disk_full(
    reload: &Reload,
    state: &AppState,
    old: Option<Arc<Runner>>,
) -> anyhow::Result<()> {
    let (st, wal_dir, limits, shards, journal) = (
        state.clone(),
        reload.wal_dir.clone(),
        reload.limits.clone(),
        reload.shards,
        reload.journal.clone(),
    );
    let started = std::time::Instant::now();
    let engine = tokio::task::spawn_blocking(move || {
        st.stop_snapshotter();
        if let Some(old) = old {
            old.stop();
        }
        durable::reload(&wal_dir, limits, shards, journal)
    })
    .await
    .map_err(|e| anyhow::anyhow!("reloading the state panicked: {e}"))?
    .map_err(|e| {
        anyhow::anyhow!(
            "the disk is full and reloading the state from the log failed ({e}); restart depot \
             to recover from what the disk holds"
        )
    })?;
    let runner = Runner::start(
        engine,
        Some(reload.journal.clone()),
        state.events().clone(),
        state.limits().engine_queue_max,
    );
    state.set_ready(Arc::new(runner));
    tracing::warn!(
        took_ms = started.elapsed().as_millis() as u64,
        "reloaded the state from the log after the full disk: reads answer from what the disk \
         holds; writes stay refused until a restart"
    );
    Ok(())
}

/// Sends a tick when a hold or record may be due, to whichever engine serves.
async fn tick(state: AppState) {
    let mut stopping = state.stopping();
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                // Only when a hold or record may be due: an idle server writes nothing. A full
                // queue skips a tick; the next one expires the same holds.
                let Ok(runner) = state.runner() else { continue };
                let due = runner.engine().next_due();
                if due.is_some_and(|t| t <= super::runner::wall_ms()) {
                    let _ = runner.tick();
                }
            }
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Creates the demo tenant when it is missing and prints a new admin key for it.
async fn load_demo(state: &AppState, runner: &Runner, addr: SocketAddr) -> anyhow::Result<()> {
    let tenant = TenantId::new(DEMO_TENANT).expect("a valid id");
    let probe = Request {
        tenant: tenant.clone(),
        key_id: crate::demo::DEMO_KEY_ID.into(),
        idempotency_key: None,
        command: Command::GetStock {
            sku: Sku::new("-").expect("a valid id"),
        },
    };
    let exists = !matches!(
        runner.run(vec![probe]).await?.first().map(|a| &a.0.outcome),
        Some(Outcome::Refused(Refusal::NotFound { .. }))
    );
    if exists {
        tracing::info!(tenant = DEMO_TENANT, "the demo tenant exists already");
    } else {
        let answers = runner.run(crate::demo::demo_requests(&tenant)).await?;
        if let Some(r) = answers.iter().find_map(|a| a.0.outcome.refusal()) {
            anyhow::bail!("a demo request was refused: {r}");
        }
        tracing::info!(
            tenant = DEMO_TENANT,
            requests = answers.len(),
            "demo tenant loaded"
        );
    }
    let keys = state.keys().clone();
    let now = super::runner::wall_ms() as i64;
    let (record, secret) = tokio::task::spawn_blocking(move || {
        keys.create(Some(tenant), Role::Admin, vec![], vec![], vec![], now)
    })
    .await??;
    println!(
        "demo tenant \"{DEMO_TENANT}\": admin key {} (id {}); try\n  curl -H 'Authorization: Bearer {}' http://{addr}/v1/stock/DEMO-MUG",
        secret, record.id, secret
    );
    Ok(())
}

/// Stops the engine's threads after everything queued has run, and waits until every write
/// sequenced so far is durable.
async fn finish(state: &AppState) {
    let Ok(runner) = state.runner() else {
        return;
    };
    let st = state.clone();
    let done = tokio::task::spawn_blocking(move || {
        st.stop_snapshotter();
        runner.stop();
        // A log that failed (a full disk) was reported when it did: nothing more to sync.
        if let Some(j) = runner.journal().filter(|j| j.failure().is_none()) {
            let last = runner.engine().inspect(|front, _| front.seq);
            if let Err(e) = depot_engine::Journal::wait_durable(&**j, last) {
                tracing::error!(error = %e, "the log could not be made durable");
            }
        }
    })
    .await;
    if done.is_err() {
        tracing::error!("stopping the engine failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr);
        let ((mut server, _), _client) = tokio::try_join!(listener.accept(), client).unwrap();
        assert!(
            !server.nodelay().unwrap(),
            "a fresh socket uses Nagle's algorithm"
        );
        accepted(&mut server);
        assert!(server.nodelay().unwrap());
    }
}
