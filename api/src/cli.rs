//! The `depot` binary's subcommands as library functions, so tests can call them directly:
//!
//! - [`verify`]: read every segment of a log, check every record, summarise ([`LogSummary`]).
//! - [`inspect`]: the log's entries as JSON lines, filtered by SKU ([`mentions_sku`]) and seq.
//! - [`snapshot`]: recover the state offline and write it as a snapshot file ([`SnapshotWritten`]).
//! - [`Progress`]: the progress bar of the long ones, on stderr when it is a terminal.
//! - [`crash_child`]: a load generator on a real log for the crash test (`depot crash-child`),
//!   printing every acknowledged write.

use depot_engine::{
    ChannelId, ChannelKind, Command, CommitLine, Engine, Limits, LineRequest, LocationId,
    LocationKind, LogEntry, Outcome, Reply, Request, ReservationId, Seq, Sku, TenantId, TimeMs,
};
use depot_wal::{Directory, FsDir, Tail, WalError, WalOptions, WalReader};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

/// What `depot log verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    pub tail: Tail,
}

impl fmt::Display for LogSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = |s: Option<Seq>| s.map_or_else(|| "-".to_string(), |s| s.to_string());
        writeln!(f, "segments:  {}", self.segments)?;
        writeln!(f, "records:   {}", self.records)?;
        writeln!(f, "first seq: {}", seq(self.first_seq))?;
        writeln!(f, "last seq:  {}", seq(self.last_seq))?;
        match &self.tail {
            Tail::Clean => write!(f, "tail:      clean"),
            Tail::Torn { file, offset } => write!(
                f,
                "tail:      torn at {file} byte {offset} (an unacknowledged write cut by a crash; \
                 cut when the log is next opened for writing)"
            ),
        }
    }
}

/// An error of the log tools: the directory cannot be opened, or the log is damaged.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot open log directory {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("writing output")]
    Output(#[source] io::Error),
}

fn open_dir(dir: &Path) -> Result<FsDir, ToolError> {
    if !dir.is_dir() {
        return Err(ToolError::Open {
            path: dir.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "not a directory"),
        });
    }
    FsDir::open(dir).map_err(|source| ToolError::Open {
        path: dir.display().to_string(),
        source,
    })
}

/// The first seq of each segment file in `dir`, sorted (other files are ignored, as recovery
/// does).
fn segment_seqs(dir: &dyn Directory) -> Result<Vec<Seq>, WalError> {
    let names = dir.list().map_err(|source| WalError::Io {
        file: String::new(),
        source,
    })?;
    let mut seqs: Vec<Seq> = names
        .iter()
        .filter_map(|n| depot_wal::format::parse_segment_name(n))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads the whole log in `dir`, every record decoded and checked, and summarises it.
/// `on_entry` sees each entry in order (for progress reporting).
pub fn verify(dir: &Path, mut on_entry: impl FnMut(&LogEntry)) -> Result<LogSummary, ToolError> {
    let fs = open_dir(dir)?;
    let seqs = segment_seqs(&fs)?;
    let segments = seqs.len();
    // From the log's own first seq, whatever it is (older segments may have been dropped).
    let mut reader = WalReader::open(&fs, seqs.first().copied().unwrap_or(1))?;
    let (mut records, mut first_seq, mut last_seq) = (0u64, None, None);
    while let Some(entry) = reader.next_entry()? {
        records += 1;
        first_seq.get_or_insert(entry.seq);
        last_seq = Some(entry.seq);
        on_entry(&entry);
    }
    let tail = reader.tail().cloned().unwrap_or(Tail::Clean);
    tracing::debug!(segments, records, "log verified");
    Ok(LogSummary {
        segments,
        records,
        first_seq,
        last_seq,
        tail,
    })
}

/// True when the entry's command names `sku`: its `sku` field, a bundle's components, a
/// reservation's lines, a commit's or fulfilment's lines.
pub fn mentions_sku(entry: &LogEntry, sku: &str) -> bool {
    match &entry.request.command {
        Command::PutBundle { sku: s, components } => {
            s.as_str() == sku || components.iter().any(|c| c.sku.as_str() == sku)
        }
        Command::Receive { sku: s, .. }
        | Command::Expect { sku: s, .. }
        | Command::Adjust { sku: s, .. }
        | Command::Set { sku: s, .. }
        | Command::Move { sku: s, .. }
        | Command::Transfer { sku: s, .. }
        | Command::Return { sku: s, .. }
        | Command::GetStock { sku: s }
        | Command::Explain { sku: s, .. } => s.as_str() == sku,
        Command::Reserve { lines, .. } => lines.iter().any(|l| l.sku.as_str() == sku),
        Command::Commit { lines, .. } => lines
            .iter()
            .flatten()
            .any(|l: &CommitLine| l.sku.as_str() == sku),
        Command::Fulfil { lines, .. } => lines.iter().any(|l| l.sku.as_str() == sku),
        Command::CreateTenant
        | Command::PutLocation { .. }
        | Command::PutChannel { .. }
        | Command::PutRules { .. }
        | Command::Extend { .. }
        | Command::Release { .. }
        | Command::Cancel { .. }
        | Command::GetReservation { .. }
        | Command::Tick => false,
    }
}

/// Writes the entries of the log in `dir` with `seq >= from` that mention `sku` (all, when
/// `None`) to `out` as JSON lines. Returns how many were written and how the log ends.
pub fn inspect(
    dir: &Path,
    sku: Option<&str>,
    from: Seq,
    out: &mut dyn Write,
    mut on_entry: impl FnMut(&LogEntry),
) -> Result<(u64, Tail), ToolError> {
    let fs = open_dir(dir)?;
    // Open from the first segment so a log whose head was dropped can still be inspected, and
    // so every record is checked; the seq filter is applied here.
    let first = segment_seqs(&fs)?.first().copied().unwrap_or(1);
    let mut reader = WalReader::open(&fs, first)?;
    let mut written = 0;
    while let Some(entry) = reader.next_entry()? {
        on_entry(&entry);
        if entry.seq < from || sku.is_some_and(|s| !mentions_sku(&entry, s)) {
            continue;
        }
        let line = serde_json::to_string(&entry).expect("a log entry serialises");
        writeln!(out, "{line}").map_err(ToolError::Output)?;
        written += 1;
    }
    out.flush().map_err(ToolError::Output)?;
    Ok((written, reader.tail().cloned().unwrap_or(Tail::Clean)))
}

/// What `depot snapshot` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWritten {
    /// The snapshot file's name, in the log's directory.
    pub file: String,
    /// The last seq the snapshot includes.
    pub seq: Seq,
    /// Length of the image.
    pub bytes: u64,
    /// Log entries replayed on top of the newest earlier snapshot (or from the start).
    pub replayed: u64,
    pub tail: Tail,
}

impl fmt::Display for SnapshotWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "snapshot:  {}", self.file)?;
        writeln!(f, "seq:       {}", self.seq)?;
        writeln!(f, "bytes:     {}", self.bytes)?;
        write!(f, "replayed:  {} log entries", self.replayed)?;
        if let Tail::Torn { file, offset } = &self.tail {
            write!(
                f,
                "\ntail:      torn at {file} byte {offset} (not in the snapshot: never acknowledged)"
            )?;
        }
        Ok(())
    }
}

/// Takes a snapshot now, offline: recovers the state from the log in `dir` (from its newest
/// usable snapshot, as a restart does) and writes it there as `snapshot-<seq>.rkyv`, crash-safely.
/// The log itself is not changed. `on_entry` sees each replayed entry (for progress reporting).
pub fn snapshot(
    dir: &Path,
    mut on_entry: impl FnMut(&LogEntry),
) -> Result<SnapshotWritten, ToolError> {
    let fs = open_dir(dir)?;
    let mut replayed = 0u64;
    // The image does not depend on the shard count; one shard replays fastest.
    let (machine, tail) =
        depot_wal::recover_with_progress(&fs, Limits::default(), 1, &mut |e: &LogEntry| {
            replayed += 1;
            on_entry(e);
        })?;
    // Serialized straight from the recovered tables: no second copy of the state in memory.
    let state = machine.state_image();
    let seq = state.seq();
    let file = depot_wal::write_state_snapshot(&fs, &state)?;
    drop(state);
    drop(machine);
    let bytes = std::fs::metadata(dir.join(&file))
        .map_or(0, |m| m.len())
        .saturating_sub(depot_wal::SNAPSHOT_HEADER_LEN);
    tracing::info!(%file, seq, replayed, "snapshot written");
    Ok(SnapshotWritten {
        file,
        seq,
        bytes,
        replayed,
        tail,
    })
}

/// An estimate of the log entries in `dir` with `seq >= from`, for a progress bar: exact for
/// every segment but the last (the next one's name says where it ends), the last one's size
/// divided by the mean entry size of the others. `None` when there is no log.
pub fn estimate_entries(dir: &Path, from: Seq) -> Option<u64> {
    let mut segments: Vec<(Seq, u64)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let seq = depot_wal::format::parse_segment_name(e.file_name().to_str()?)?;
            Some((seq, e.metadata().ok()?.len()))
        })
        .collect();
    segments.sort_unstable();
    let (first, _) = *segments.first()?;
    let (last_first, last_len) = *segments.last()?;
    let header = depot_wal::SEGMENT_HEADER_LEN;
    let earlier_entries = last_first.saturating_sub(first);
    let earlier_bytes: u64 = segments[..segments.len() - 1]
        .iter()
        .map(|(_, len)| len.saturating_sub(header))
        .sum();
    let per_entry = earlier_bytes
        .checked_div(earlier_entries)
        .unwrap_or(256)
        .max(1);
    let end = last_first.saturating_add(last_len.saturating_sub(header) / per_entry);
    Some(end.saturating_sub(from.max(first)))
}

/// The seq after the newest snapshot file in `dir` (by name; 1 without one): where a recovery
/// starts replaying.
pub fn replay_start(dir: &Path) -> Seq {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| depot_wal::parse_snapshot_name(e.ok()?.file_name().to_str()?))
        .max()
        .map_or(1, |s| s.saturating_add(1))
}

/// A progress bar of log entries on stderr, hidden when stderr is not a terminal (or when made
/// with [`Progress::hidden`]). Cheap per entry: the bar is advanced every 4,096 entries.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    pending: u64,
}

impl Progress {
    /// A bar for `what` ("verifying", ...) sized by `estimate` entries (a spinner if unknown).
    pub fn new(what: &str, estimate: Option<u64>) -> Progress {
        use std::io::IsTerminal;
        let target = if io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = match estimate {
            Some(len) => ProgressBar::with_draw_target(Some(len), target).with_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {human_pos}/~{human_len} entries, {per_sec}, {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{msg:>10} {spinner} {human_pos} entries, {per_sec}")
                    .expect("a valid template"),
            ),
        };
        bar.set_message(what.to_string());
        Progress { bar, pending: 0 }
    }

    /// A bar that never draws.
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            pending: 0,
        }
    }

    /// Counts one entry.
    pub fn entry(&mut self) {
        self.pending += 1;
        if self.pending == 4_096 {
            self.flush();
        }
    }

    /// Entries counted so far.
    pub fn position(&self) -> u64 {
        self.bar.position() + self.pending
    }

    /// Shows a new phase ("writing").
    pub fn phase(&mut self, what: &str) {
        self.flush();
        self.bar.set_message(what.to_string());
    }

    /// Removes the bar from the terminal.
    pub fn finish(mut self) {
        self.flush();
        self.bar.finish_and_clear();
    }

    fn flush(&mut self) {
        let pos = self.bar.position() + self.pending;
        if self.bar.length().is_some_and(|len| pos > len) {
            self.bar.set_length(pos); // the estimate was short
        }
        self.bar.set_position(pos);
        self.pending = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// The crash test's child.

/// The SKUs the crash child trades in, and the units each gets at each of the two locations.
pub const CRASH_SKUS: [&str; 6] = ["sku-0", "sku-1", "sku-2", "sku-3", "sku-4", "sku-5"];
pub const CRASH_UNITS: i64 = 5_000;
/// Shards of the crash child's engine (recovery may use any number).
const CRASH_SHARDS: usize = 4;
const CRASH_THREADS: u64 = 4;

pub fn crash_tenant() -> TenantId {
    TenantId::new("crash").expect("valid id")
}

fn crash_req(command: Command, key: Option<String>) -> Request {
    Request {
        tenant: crash_tenant(),
        key_id: "crash-child".into(),
        idempotency_key: key,
        command,
    }
}

fn wall_ms() -> TimeMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as TimeMs)
}

/// The setup writes, each with an idempotency key so a child restarted after a kill in the
/// middle of setup repeats the missing ones and gets the stored answer for the others.
fn crash_setup() -> Vec<Request> {
    let mut cmds = vec![Command::CreateTenant];
    for l in ["wh-a", "wh-b"] {
        cmds.push(Command::PutLocation {
            location: LocationId::new(l).expect("valid id"),
            kind: LocationKind::Warehouse,
            name: l.into(),
            region: None,
            wms: None,
        });
    }
    cmds.push(Command::PutChannel {
        channel: ChannelId::new("web").expect("valid id"),
        kind: ChannelKind::B2b,
        priority: 0,
    });
    for s in CRASH_SKUS {
        for l in ["wh-a", "wh-b"] {
            cmds.push(Command::Receive {
                sku: Sku::new(s).expect("valid id"),
                location: LocationId::new(l).expect("valid id"),
                quantity: CRASH_UNITS,
                unit_cost: None,
                reason: "initial".into(),
            });
        }
    }
    cmds.into_iter()
        .enumerate()
        .map(|(i, c)| crash_req(c, Some(format!("setup-{i}"))))
        .collect()
}

/// Runs until killed: recovers the log in `dir`, sets up a tenant (once), then `CRASH_THREADS`
/// threads send batches of reservations, commits and releases. After each batch is answered
/// (so durable), every acknowledged write is printed to stdout and flushed:
///
/// - `R <id> <sku>:<qty>,...` a reservation created (held);
/// - `P <id> <sku>:<qty>,...` the stored answer to a repeat of a reservation's key (some
///   reservations are sent again, by any thread, while the first may still run or sync);
/// - `C <id>` a reservation committed; `X <id>` a reservation released.
///
/// Returns only on an error; the process is meant to be SIGKILLed.
pub fn crash_child(dir: &Path, seed: u64) -> Result<(), ToolError> {
    std::fs::create_dir_all(dir).map_err(|source| ToolError::Open {
        path: dir.display().to_string(),
        source,
    })?;
    let fs = open_dir(dir)?;
    let options = WalOptions {
        // Small segments so rotation happens under the test's load.
        segment_len_max: 64 * 1024,
        ..WalOptions::default()
    };
    let (engine, _journal, tail) =
        depot_wal::open_engine(Box::new(fs), options, Limits::default(), CRASH_SHARDS)?;
    tracing::info!(?tail, "crash child recovered");
    let engine = Arc::new(engine);
    let setup = crash_setup();
    for (req, (r, _)) in setup.iter().zip(engine.execute(setup.clone(), wall_ms())) {
        // The tenant's creation is not covered by its idempotency key (keys live in the
        // tenant): after a restart it is refused as existing, which is what we want.
        let exists = matches!(req.command, Command::CreateTenant)
            && matches!(
                &r.outcome,
                Outcome::Refused(depot_engine::Refusal::InvalidState { message })
                    if message.contains("exists")
            );
        if !r.outcome.is_ok() && !exists {
            // A refusal here would make every later check meaningless.
            eprintln!("crash child: setup refused: {:?}", r.outcome);
            std::process::exit(3);
        }
    }
    println!("READY");
    io::stdout().flush().map_err(ToolError::Output)?;
    let recent = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let handles: Vec<_> = (0..CRASH_THREADS)
        .map(|t| {
            let (engine, recent) = (engine.clone(), recent.clone());
            std::thread::spawn(move || {
                crash_load(&engine, &recent, seed.wrapping_mul(31).wrapping_add(t))
            })
        })
        .collect();
    for h in handles {
        h.join().expect("load thread")?;
    }
    Ok(())
}

/// Keyed reservations the load threads sent lately, for repeats from any thread.
type Recent = std::sync::Mutex<std::collections::VecDeque<Request>>;
/// How many of them are kept.
const RECENT_MAX: usize = 64;

fn crash_load(engine: &Engine, recent: &Recent, seed: u64) -> Result<(), ToolError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let web = ChannelId::new("web").expect("valid id");
    // This thread's held reservations: only it commits or releases them.
    let mut held: Vec<ReservationId> = Vec::new();
    let mut keys = 0u64;
    loop {
        let mut batch = Vec::new();
        let mut sent = Vec::new();
        // Some batches are a repeat alone: a batch with writes of its own waits for them, and
        // so for everything sequenced before, which would hide a repeat answered too early.
        let items = if rng.gen_bool(0.2) {
            1
        } else {
            rng.gen_range(1..8)
        };
        for _ in 0..items {
            let lock = || recent.lock().unwrap_or_else(|e| e.into_inner());
            let repeat = rng
                .gen_bool(if items == 1 { 0.5 } else { 0.15 })
                .then(|| {
                    let r = lock();
                    // Mostly the newest: those may still be running or syncing.
                    let from = if rng.gen_bool(0.8) {
                        r.len().saturating_sub(4)
                    } else {
                        0
                    };
                    (!r.is_empty()).then(|| r[rng.gen_range(from..r.len())].clone())
                })
                .flatten();
            if let Some(req) = repeat {
                // A repeat of a reservation sent by any thread, perhaps still running or
                // syncing: its answer must not come before the first one is durable.
                batch.push(req);
            } else if !held.is_empty() && rng.gen_bool(0.4) {
                let id = held.swap_remove(rng.gen_range(0..held.len()));
                let command = if rng.gen_bool(0.25) {
                    Command::Commit { id, lines: None }
                } else {
                    Command::Release { id }
                };
                batch.push(crash_req(command, None));
            } else {
                let mut lines: Vec<LineRequest> = Vec::new();
                for _ in 0..rng.gen_range(1..=3) {
                    let sku = CRASH_SKUS[rng.gen_range(0..CRASH_SKUS.len())];
                    if lines.iter().all(|l| l.sku.as_str() != sku) {
                        lines.push(LineRequest {
                            sku: Sku::new(sku).expect("valid id"),
                            quantity: rng.gen_range(1..=3),
                        });
                    }
                }
                keys += 1;
                let req = crash_req(
                    Command::Reserve {
                        channel: web.clone(),
                        lines,
                        ttl_ms: Some(3_600_000),
                        order_ref: None,
                        ship_to_region: None,
                        fill: Default::default(),
                    },
                    Some(format!("r-{seed}-{keys}")),
                );
                sent.push(req.clone());
                batch.push(req);
            }
        }
        {
            let mut r = recent.lock().unwrap_or_else(|e| e.into_inner());
            r.extend(sent);
            while r.len() > RECENT_MAX {
                r.pop_front();
            }
        }
        let answers = engine.execute(batch.clone(), wall_ms());
        let mut acked = String::new();
        for (req, (resp, _)) in batch.iter().zip(answers) {
            match (&req.command, &resp.outcome) {
                (Command::Reserve { lines, .. }, Outcome::Ok(Reply::Reservation(v))) => {
                    let lines: Vec<String> = lines
                        .iter()
                        .map(|l| format!("{}:{}", l.sku.as_str(), l.quantity))
                        .collect();
                    // The first execution of a key holds it; a repeat only reports it.
                    let kind = if resp.replayed { "P" } else { "R" };
                    if !resp.replayed {
                        held.push(v.id);
                    }
                    acked.push_str(&format!("{kind} {} {}\n", v.id.0, lines.join(",")));
                }
                (Command::Commit { id, .. }, Outcome::Ok(_)) => {
                    acked.push_str(&format!("C {}\n", id.0));
                }
                (Command::Release { id }, Outcome::Ok(_)) => {
                    acked.push_str(&format!("X {}\n", id.0));
                }
                // Sold out: releases and commits above bring stock back or end holds.
                (_, Outcome::Refused(depot_engine::Refusal::InsufficientStock { .. })) => {}
                (_, other) => {
                    eprintln!("crash child: unexpected outcome {other:?}");
                    std::process::exit(3);
                }
            }
        }
        let mut out = io::stdout().lock();
        out.write_all(acked.as_bytes())
            .and_then(|()| out.flush())
            .map_err(ToolError::Output)?;
        drop(out);
        // A modest pace keeps the log (and each round's recovery) small in debug builds.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
