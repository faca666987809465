//! `depot sim dst`: deterministic simulation testing. One seed drives everything: the
//! workload, the clock (with jumps forward and back), the shard count, the log's segment and
//! buffer sizes (even seeds write zeros ahead of the records), storage faults (torn writes, bit flips, failed fsyncs, a full disk) and crashes
//! (of the process, or of the machine losing everything not synced), all through the real
//! engine ([`Machine`]) and the real log code ([`WalWriter`], [`recover`]) on simulated storage
//! ([`MemDir`] behind a [`FaultDir`]).
//!
//! Checked after every step: the invariants of [`crate::invariants`] on every SKU, and that
//! the reserved and committed units of every level are exactly the open allocations of the
//! live reservations. After every crash: recovery succeeds, keeps every acknowledged write
//! (acknowledged = covered by a `sync` that returned `Ok`), and rebuilds exactly the state the
//! live engine had after the last recovered write (nothing unacknowledged is half there); an
//! idempotent retry of a recovered write returns its first answer. A bit flip must be detected
//! (recovery stops with the file and offset, or — in the last write group or the zeros after
//! it, the format's documented limit — reports a torn tail): it is flipped back afterwards. Now and then a snapshot is
//! written beside the log as the server's snapshotter writes it (armed faults may hit its
//! writes: it then fails, and the engine goes on); recovery starts from the newest valid one,
//! so the checks after a crash hold for snapshot + log, and bit flips are judged on the log
//! alone. At the end, both the log alone and the newest snapshot + the log after it, loaded
//! into fresh engines (other shard counts), give the live engine's digest.
//!
//! The same seed gives the same run byte for byte: [`SeedRun::trace`] is a BLAKE3 digest of
//! every request, answer, fault and recovery.

use crate::invariants::Checker;
use crate::report::Report;
use depot_engine::outcome::ReservationView;
use depot_engine::rules::Rule;
use depot_engine::{
    Bucket, ChannelId, ChannelKind, Command, Component, FillPolicy, FulfilLine, Limits,
    LineRequest, LocationId, LocationKind, Machine, Outcome, Reply, Request, ReservationId,
    ReservationState, Response, RuleDocument, RuleKind, Seq, Sku, TenantId, TimeMs,
};
use depot_wal::{recover, FaultDir, MemDir, Tail, WalError, WalOptions, WalWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The process dies (what it wrote stays in the page cache), or the machine loses power
    /// (everything not synced is lost).
    Crash,
    /// The machine crashes in the middle of a write: only a prefix reaches the medium.
    Torn,
    /// An fsync fails: the log stops for good; the process restarts and recovers.
    Fsync,
    /// The disk fills up: the log refuses writes; space is freed and the process restarts.
    Full,
    /// A bit flips on the medium: recovery must detect it.
    Bitflip,
    /// The clock jumps forward (hours) or back (minutes).
    Clock,
}

pub const ALL_FAULTS: [Fault; 6] = [
    Fault::Crash,
    Fault::Torn,
    Fault::Fsync,
    Fault::Full,
    Fault::Bitflip,
    Fault::Clock,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Torn => "torn",
            Fault::Fsync => "fsync",
            Fault::Full => "full",
            Fault::Bitflip => "bitflip",
            Fault::Clock => "clock",
        }
    }
}

/// A set of faults, written `crash,torn,fsync,full,bitflip,clock`, `all` or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Faults(pub BTreeSet<Fault>);

impl Default for Faults {
    fn default() -> Self {
        Faults(ALL_FAULTS.into_iter().collect())
    }
}

impl FromStr for Faults {
    type Err = String;
    fn from_str(s: &str) -> Result<Faults, String> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => set.extend(ALL_FAULTS),
                "none" => {}
                _ => match ALL_FAULTS.iter().find(|f| f.name() == part) {
                    Some(f) => {
                        set.insert(*f);
                    }
                    None => {
                        return Err(format!(
                            "unknown fault {part:?}: use crash, torn, fsync, full, bitflip, clock, \
                             all or none"
                        ))
                    }
                },
            }
        }
        Ok(Faults(set))
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|x| x.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// A failed seed: what broke, where, and the command that reproduces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DstFailure {
    pub seed: u64,
    pub step: u64,
    pub message: String,
    pub repro: String,
}

impl fmt::Display for DstFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\nreproduce with: {}",
            self.seed, self.step, self.message, self.repro
        )
    }
}

/// What one seed did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedRun {
    pub seed: u64,
    pub steps: u64,
    /// BLAKE3 of the whole run's trace; equal for equal seeds.
    pub trace: [u8; 32],
    pub final_digest: [u8; 32],
    pub writes: u64,
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, u64>,
    pub recoveries: u64,
    /// Unacknowledged writes lost in crashes (allowed), and recovered anyway.
    pub unacked_lost: u64,
    pub unacked_kept: u64,
    pub torn_tails: u64,
    /// Bit flips detected as corruption (file and offset), and as a torn last write group.
    pub flips_corrupt: u64,
    pub flips_torn: u64,
    pub idempotent_retries: u64,
    /// Snapshots written, and failed (a fault hit their writes).
    pub snapshots: u64,
    pub snapshots_failed: u64,
}

/// Options of a DST run.
#[derive(Debug, Clone)]
pub struct DstOptions {
    pub seed: u64,
    pub seeds: u64,
    pub steps: u64,
    pub faults: Faults,
}

impl DstOptions {
    pub fn repro(&self, seed: u64) -> String {
        format!(
            "depot sim dst --seed {seed} --steps {} --faults {}",
            self.steps, self.faults
        )
    }
}

const SKUS: [&str; 6] = ["S1", "S2", "S3", "S4", "S5", "S6"];
const BUNDLE: &str = "KIT";
const LOCATIONS: [&str; 3] = ["wh-a", "wh-b", "store-c"];
const CHANNELS: [(&str, i32); 3] = [("web", 10), ("market", 1), ("b2b", 5)];

fn sku(s: &str) -> Sku {
    Sku::new(s).expect("valid id")
}
fn loc(s: &str) -> LocationId {
    LocationId::new(s).expect("valid id")
}
fn chan(s: &str) -> ChannelId {
    ChannelId::new(s).expect("valid id")
}

/// The rule document of a seed: each rule of a small pool with probability 1/2.
fn rules(rng: &mut ChaCha8Rng) -> RuleDocument {
    let rule = |id: &str, kind: RuleKind| Rule {
        id: Some(id.into()),
        kind,
        ..Rule::default()
    };
    let pool = vec![
        Rule {
            channels: Some(vec![chan("market")]),
            ..rule(
                "market-no-store",
                RuleKind::Eligibility {
                    locations: None,
                    deny_locations: Some(vec![loc("store-c")]),
                },
            )
        },
        Rule {
            channels: Some(vec![chan("market")]),
            ..rule(
                "market-buffer",
                RuleKind::Buffer {
                    units: Some(1),
                    percent: None,
                },
            )
        },
        Rule {
            channels: Some(vec![chan("b2b")]),
            ..rule("b2b-cap", RuleKind::Cap { units: 5 })
        },
        Rule {
            skus: Some(vec![sku("S3")]),
            ..rule(
                "b2b-fence",
                RuleKind::RingFence {
                    channel: chan("b2b"),
                    units: Some(2),
                    percent: None,
                },
            )
        },
        rule(
            "last-units",
            RuleKind::Scarcity {
                threshold: 2,
                min_priority: 5,
            },
        ),
    ];
    let oversell = if rng.gen() {
        depot_engine::rules::OversellPolicy::LowestPriorityFirst
    } else {
        depot_engine::rules::OversellPolicy::NewestFirst
    };
    RuleDocument {
        version: 0,
        oversell_policy: oversell,
        rules: pool.into_iter().filter(|_| rng.gen()).collect(),
    }
}

/// A deliberate defect for testing the simulator itself: the checks must catch it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sabotage {
    /// No defect.
    #[default]
    None,
    /// Every file `sync_data` returns `Ok` without making anything durable: a power loss then
    /// loses acknowledged writes.
    LyingFsync,
}

/// The simulated medium: memory, optionally with a [`Sabotage`].
#[derive(Debug, Clone)]
struct SimDir {
    mem: MemDir,
    sabotage: Sabotage,
}

#[derive(Debug)]
struct LyingFile(Box<dyn depot_wal::Storage>);

impl depot_wal::Storage for LyingFile {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, data)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SimDir {
    fn wrap(&self, f: Box<dyn depot_wal::Storage>) -> Box<dyn depot_wal::Storage> {
        match self.sabotage {
            Sabotage::None => f,
            Sabotage::LyingFsync => Box::new(LyingFile(f)),
        }
    }
}

impl depot_wal::Directory for SimDir {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.mem.list()
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn depot_wal::Storage>> {
        Ok(self.wrap(self.mem.create(name)?))
    }
    fn open(&self, name: &str) -> std::io::Result<Box<dyn depot_wal::Storage>> {
        Ok(self.wrap(self.mem.open(name)?))
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.mem.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.mem.rename(from, to)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.mem.sync()
    }
}

/// The fault armed on the medium, waiting to be hit by a write or a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    Torn,
    Fsync,
    Full,
}

struct World {
    seed: u64,
    rng: ChaCha8Rng,
    faults: BTreeSet<Fault>,
    mem: MemDir,
    base: SimDir,
    fdir: FaultDir,
    options: WalOptions,
    writer: Option<WalWriter>,
    machine: Machine,
    tenant: TenantId,
    now: TimeMs,
    /// Digest of the live state after each seq (since the log began).
    history: BTreeMap<Seq, [u8; 32]>,
    appended: Seq,
    acked: Seq,
    /// Unacknowledged writes carrying an idempotency key: (request, first answer).
    pending: Vec<(Request, Response)>,
    armed: Option<Armed>,
    reservations: BTreeSet<ReservationId>,
    /// Reservations ended (expired by a tick, released, cancelled), with the seq that ended them.
    ended: BTreeMap<ReservationId, Seq>,
    shipped: Vec<ReservationId>,
    checker: Checker,
    trace: blake3::Hasher,
    run: SeedRun,
    step: u64,
    keys: u64,
}

type Step<T> = Result<T, String>;

impl World {
    fn trace(&mut self, line: &str) {
        self.trace.update(line.as_bytes());
        self.trace.update(b"\n");
    }

    fn request(&self, command: Command, key: Option<String>) -> Request {
        Request {
            tenant: self.tenant.clone(),
            key_id: "dst".into(),
            idempotency_key: key,
            command,
        }
    }

    fn read(&mut self, command: Command) -> Outcome {
        let req = self.request(command, None);
        self.machine.execute(&req, self.now).0.outcome
    }

    fn view(&mut self, id: ReservationId) -> Option<ReservationView> {
        match self.read(Command::GetReservation { id }) {
            Outcome::Ok(Reply::Reservation(v)) => Some(v),
            _ => None,
        }
    }

    /// Executes a request on the live engine and appends its log entry. A log failure is a
    /// crash of the process (the real server stops writing, then restarts and recovers).
    fn exec(&mut self, req: Request) -> Step<Response> {
        let (resp, events, log) = self.machine.execute(&req, self.now);
        for e in &events {
            use depot_engine::EventKind as K;
            if let K::ReservationExpired { id }
            | K::ReservationReleased { id }
            | K::ReservationCancelled { id } = &e.kind
            {
                self.ended.insert(*id, e.seq);
            }
        }
        let line = format!(
            "exec {} -> {}",
            serde_json::to_string(&req).unwrap_or_default(),
            serde_json::to_string(&resp).unwrap_or_default()
        );
        self.trace(&line);
        self.checker.observe(&req, &resp.outcome);
        if let Some(entry) = log {
            self.history.insert(entry.seq, self.machine.digest());
            self.appended = entry.seq;
            self.run.writes += 1;
            if req.idempotency_key.is_some() {
                self.pending.push((req.clone(), resp.clone()));
            }
            let result = match self.writer.as_mut() {
                Some(w) => w.append(&entry),
                None => return Err("no log writer".into()),
            };
            if let Err(e) = result {
                self.log_failed(e)?;
            }
        }
        Ok(resp)
    }

    fn sync(&mut self) -> Step<()> {
        let result = match self.writer.as_mut() {
            Some(w) => w.sync(),
            None => return Err("no log writer".into()),
        };
        match result {
            Ok(()) => {
                self.acked = self.appended;
                self.pending.clear();
                self.trace(&format!("synced {}", self.acked));
                Ok(())
            }
            Err(e) => self.log_failed(e),
        }
    }

    /// The log refused a write or a sync: expected only when a fault was armed.
    fn log_failed(&mut self, e: WalError) -> Step<()> {
        let armed = self.armed.take();
        self.trace(&format!("log failed ({armed:?}): {e}"));
        let expected = matches!(
            (armed, &e),
            (Some(Armed::Fsync), WalError::SyncFailed { .. })
                | (Some(Armed::Full), WalError::DiskFull { .. })
                | (
                    Some(Armed::Torn),
                    WalError::Io { .. } | WalError::Stopped { .. } | WalError::SyncFailed { .. }
                )
        );
        if !expected {
            return Err(format!(
                "the log failed with no matching injected fault ({armed:?}): {e}"
            ));
        }
        // A failed fsync may have dropped the dirty pages: half the time, a power loss.
        let power_loss = armed == Some(Armed::Fsync) && self.rng.gen();
        self.restart(power_loss, &format!("{armed:?}"))
    }

    /// Stops the process (and with `power_loss` the machine), then recovers from the medium
    /// and checks what came back.
    fn restart(&mut self, power_loss: bool, why: &str) -> Step<()> {
        self.writer = None;
        if power_loss {
            self.mem.crash();
        }
        self.fdir = FaultDir::new(self.base.clone());
        let shards = self.rng.gen_range(1..=4);
        let (machine, tail) = recover(&self.fdir, Limits::default(), shards)
            .map_err(|e| format!("recovery after {why} failed: {e}"))?;
        let r = machine.front.seq;
        self.trace(&format!(
            "recovered after {why} (power loss {power_loss}) to seq {r}, tail {tail:?}"
        ));
        if matches!(tail, Tail::Torn { .. }) {
            self.run.torn_tails += 1;
        }
        if r < self.acked {
            return Err(format!(
                "acknowledged writes lost: recovery after {why} stops at seq {r}, but seq {} was \
                 acknowledged",
                self.acked
            ));
        }
        if r > self.appended {
            return Err(format!(
                "recovery reached seq {r}, beyond the last write {}",
                self.appended
            ));
        }
        let want = self.history.get(&r).copied();
        if want != Some(machine.digest()) {
            return Err(format!(
                "the state recovered after {why} (seq {r}) is not the state the engine had after \
                 seq {r}: a write is half there"
            ));
        }
        self.run.recoveries += 1;
        self.run.unacked_lost += self.appended - r;
        self.run.unacked_kept += r - self.acked;
        self.machine = machine;
        self.history.retain(|s, _| *s <= r);
        // Ends lost with the unrecovered writes: those reservations live again.
        let revived: Vec<ReservationId> = self
            .ended
            .iter()
            .filter(|(_, s)| **s > r)
            .map(|(id, _)| *id)
            .collect();
        self.reservations.extend(revived);
        self.ended.retain(|_, s| *s <= r);
        self.appended = r;
        self.acked = r;
        let writer = WalWriter::open(Box::new(self.fdir.clone()), self.options)
            .map_err(|e| format!("reopening the log after {why} failed: {e}"))?;
        self.writer = Some(writer);
        // Idempotent retries of recovered writes answer their first answer.
        for (req, first) in std::mem::take(&mut self.pending) {
            if first.seq.is_some_and(|s| s <= r) {
                let (again, _, log) = self.machine.execute(&req, self.now);
                self.run.idempotent_retries += 1;
                if log.is_some() || !again.replayed || again.outcome != first.outcome {
                    return Err(format!(
                        "an idempotent retry after recovery did not return the first answer: \
                         {req:?}: first {first:?}, again {again:?}"
                    ));
                }
            }
        }
        let all = all_skus();
        self.checker.reset_levels();
        self.checker
            .baseline(&mut self.machine, &self.tenant.clone(), &all, self.now);
        Ok(())
    }

    /// Writes a snapshot of the live state beside the log, as the server's snapshotter does:
    /// only once the log holds every write in it (a sync first). A fault armed on the medium
    /// may hit its writes; the snapshot then fails, the engine goes on, and the log meets the
    /// fault on its next write.
    fn snapshot(&mut self) -> Step<()> {
        self.sync()?;
        if self.writer.is_none() || self.machine.front.seq > self.acked {
            return Ok(());
        }
        let image = self.machine.image();
        match depot_wal::write_snapshot(&self.fdir, &image) {
            Ok(name) => {
                self.run.snapshots += 1;
                self.trace(&format!("snapshot {name}"));
            }
            Err(e) => {
                if self.armed.is_none() {
                    return Err(format!("a snapshot failed with no fault armed: {e}"));
                }
                self.run.snapshots_failed += 1;
                self.trace(&format!("snapshot failed: {e}"));
            }
        }
        Ok(())
    }

    /// Flips a bit of a log segment behind the log's back, checks that recovery from the log
    /// alone detects it, and flips it back.
    fn bit_flip(&mut self) -> Step<()> {
        let segments: Vec<String> = self
            .mem
            .names()
            .into_iter()
            .filter(|n| n.starts_with("wal-"))
            .collect();
        let Some(name) = segments
            .get(self.rng.gen_range(0..segments.len().max(1)))
            .cloned()
        else {
            return Ok(());
        };
        let len = self.mem.bytes(&name).map_or(0, |b| b.len() as u64);
        if len == 0 {
            return Ok(());
        }
        let offset = self.rng.gen_range(0..len);
        let bit = self.rng.gen_range(0..8u8);
        let last = segments.last() == Some(&name);
        depot_wal::flip_bit(&self.mem, &name, offset, bit).map_err(|e| e.to_string())?;
        let result = recover(&log_only(&self.mem), Limits::default(), 1);
        depot_wal::flip_bit(&self.mem, &name, offset, bit).map_err(|e| e.to_string())?;
        *self.run.injected.entry("bitflip").or_default() += 1;
        let outcome = match result {
            Err(WalError::Corrupt {
                file, offset: at, ..
            }) => {
                if file != name || at > offset {
                    return Err(format!(
                        "a bit flipped in {name} at byte {offset} was reported in {file:?} at byte {at}"
                    ));
                }
                self.run.flips_corrupt += 1;
                format!("corrupt {file} {at}")
            }
            Err(e) => {
                return Err(format!(
                    "a bit flipped in {name} at byte {offset}: recovery failed with {e}"
                ))
            }
            Ok((_, Tail::Torn { file, offset: at })) if last && file == name && at <= offset => {
                // The documented limit: damage in the last write group (or the zeros after it)
                // looks like a torn write.
                self.run.flips_torn += 1;
                format!("torn {file} {at}")
            }
            Ok((_, tail)) => {
                return Err(format!(
                    "a bit flipped in {name} at byte {offset} went undetected (tail {tail:?})"
                ))
            }
        };
        self.trace(&format!("bitflip {name} {offset} {bit}: {outcome}"));
        Ok(())
    }

    /// One workload command, chosen by the seed.
    fn command(&mut self) -> Step<()> {
        let pick = self.rng.gen_range(0..100);
        let s = |rng: &mut ChaCha8Rng| sku(SKUS[rng.gen_range(0..SKUS.len())]);
        let l = |rng: &mut ChaCha8Rng| loc(LOCATIONS[rng.gen_range(0..LOCATIONS.len())]);
        let known: Vec<ReservationId> = self.reservations.iter().copied().collect();
        let any_res = |rng: &mut ChaCha8Rng| -> ReservationId {
            if known.is_empty() || rng.gen_range(0..20) == 0 {
                ReservationId(rng.gen_range(1..10_000))
            } else {
                known[rng.gen_range(0..known.len())]
            }
        };
        let mut key = None;
        let command = match pick {
            0..=29 => {
                let n = self.rng.gen_range(1..=3);
                let mut lines: Vec<LineRequest> = Vec::new();
                for _ in 0..n {
                    let name = if self.rng.gen_range(0..8) == 0 {
                        sku(BUNDLE)
                    } else {
                        s(&mut self.rng)
                    };
                    if !lines.iter().any(|x| x.sku == name) {
                        lines.push(LineRequest {
                            sku: name,
                            quantity: self.rng.gen_range(1..=4),
                        });
                    }
                }
                let fill = match self.rng.gen_range(0..4) {
                    0 => FillPolicy::Partial,
                    1 => FillPolicy::Split {
                        max_locations: self.rng.gen_range(1..=2),
                    },
                    _ => FillPolicy::AllOrNothing,
                };
                if self.rng.gen() {
                    self.keys += 1;
                    key = Some(format!("k{}", self.keys));
                }
                Command::Reserve {
                    channel: chan(CHANNELS[self.rng.gen_range(0..CHANNELS.len())].0),
                    lines,
                    ttl_ms: Some(self.rng.gen_range(1_000..=120_000)),
                    order_ref: None,
                    ship_to_region: None,
                    fill,
                }
            }
            30..=41 => {
                if self.rng.gen() {
                    self.keys += 1;
                    key = Some(format!("k{}", self.keys));
                }
                Command::Commit {
                    id: any_res(&mut self.rng),
                    lines: None,
                }
            }
            42..=46 => Command::Release {
                id: any_res(&mut self.rng),
            },
            47..=50 => Command::Cancel {
                id: any_res(&mut self.rng),
            },
            51..=52 => Command::Extend {
                id: any_res(&mut self.rng),
                ttl_ms: self.rng.gen_range(1_000..=60_000),
            },
            53..=62 => {
                let id = any_res(&mut self.rng);
                let short = self.rng.gen_range(0..3) == 0;
                match self.fulfil_lines(id, short) {
                    Some(lines) => Command::Fulfil { id, lines },
                    None => Command::Release { id },
                }
            }
            63..=66 => {
                let Some(&id) = self
                    .shipped
                    .get(self.rng.gen_range(0..self.shipped.len().max(1)))
                else {
                    return Ok(());
                };
                let Some(v) = self.view(id) else {
                    return Ok(());
                };
                let Some((sku, location, shipped)) = v
                    .lines
                    .iter()
                    .flat_map(|l| {
                        std::iter::once((&l.sku, &l.allocations))
                            .chain(l.components.iter().map(|c| (&c.sku, &c.allocations)))
                    })
                    .flat_map(|(s, a)| {
                        a.iter()
                            .map(move |a| (s.clone(), a.location.clone(), a.shipped - a.returned))
                    })
                    .find(|x| x.2 > 0)
                else {
                    return Ok(());
                };
                Command::Return {
                    id,
                    sku,
                    location,
                    quantity: self.rng.gen_range(1..=shipped),
                    damaged: self.rng.gen(),
                    reason: "return".into(),
                }
            }
            67..=76 => Command::Receive {
                sku: s(&mut self.rng),
                location: l(&mut self.rng),
                quantity: self.rng.gen_range(1..=8),
                unit_cost: None,
                reason: "po".into(),
            },
            77..=80 => Command::Adjust {
                sku: s(&mut self.rng),
                location: l(&mut self.rng),
                delta: self.rng.gen_range(-3..=3),
                reason: "adjust".into(),
            },
            81..=84 => {
                let buckets = [
                    Bucket::Available,
                    Bucket::Damaged,
                    Bucket::QualityControl,
                    Bucket::SafetyStock,
                ];
                let from = buckets[self.rng.gen_range(0..4)];
                let to = buckets[self.rng.gen_range(0..4)];
                Command::Move {
                    sku: s(&mut self.rng),
                    location: l(&mut self.rng),
                    from,
                    to,
                    quantity: self.rng.gen_range(1..=3),
                    reason: "move".into(),
                }
            }
            85..=87 => Command::Set {
                sku: s(&mut self.rng),
                location: l(&mut self.rng),
                quantity: self.rng.gen_range(0..=6),
                compare_quantity: None,
                reason: "count".into(),
            },
            88..=89 => Command::Transfer {
                sku: s(&mut self.rng),
                location: l(&mut self.rng),
                to_location: l(&mut self.rng),
                quantity: self.rng.gen_range(1..=2),
                expected_at: None,
                reason: "transfer".into(),
            },
            _ => Command::Tick,
        };
        let req = self.request(command, key);
        let resp = self.exec(req.clone())?;
        if let Some(v) = resp.outcome.reservation() {
            self.reservations.insert(v.id);
        }
        if let (Command::Fulfil { id, .. }, true) = (&req.command, resp.outcome.is_ok()) {
            if !self.shipped.contains(id) {
                self.shipped.push(*id);
            }
        }
        self.check(&req)
    }

    fn fulfil_lines(&mut self, id: ReservationId, short: bool) -> Option<Vec<FulfilLine>> {
        let v = self.view(id)?;
        let mut lines = Vec::new();
        for l in &v.lines {
            for (s, allocs) in std::iter::once((&l.sku, &l.allocations))
                .chain(l.components.iter().map(|c| (&c.sku, &c.allocations)))
            {
                for a in allocs.iter().filter(|a| a.quantity > 0) {
                    lines.push(FulfilLine {
                        sku: s.clone(),
                        location: a.location.clone(),
                        quantity: a.quantity,
                        missing: 0,
                    });
                }
            }
        }
        if lines.is_empty() {
            return None;
        }
        if short {
            let i = self.rng.gen_range(0..lines.len());
            let missing = self.rng.gen_range(1..=lines[i].quantity);
            lines[i].quantity -= missing;
            lines[i].missing = missing;
        }
        Some(lines)
    }

    /// The invariants on every SKU, and the ledger of reservations against the levels.
    fn check(&mut self, req: &Request) -> Step<()> {
        let all = all_skus();
        let context = format!(
            "step {} ({})",
            self.step,
            serde_json::to_string(&req.command).unwrap_or_default()
        );
        let tenant = self.tenant.clone();
        if self
            .checker
            .check(&mut self.machine, &tenant, &all, req, self.now, &context)
            > 0
        {
            return Err(self.checker.violations.last().cloned().unwrap_or_default());
        }
        // reserved / committed of every level = open allocations of held / committed reservations.
        let mut want: BTreeMap<(Sku, LocationId), (i64, i64)> = BTreeMap::new();
        let mut by: BTreeMap<(Sku, LocationId), Vec<String>> = BTreeMap::new();
        let mut ended = Vec::new();
        for id in self.reservations.clone() {
            let Some(v) = self.view(id) else {
                ended.push(id);
                continue;
            };
            // A hold past its expiry reads as expired but keeps its units until a tick (or a
            // command on it) ends it; an ended reservation's view keeps its allocations as
            // history, so ends are known from the events.
            if self.ended.contains_key(&id) {
                ended.push(id);
                continue;
            }
            let held = matches!(v.state, ReservationState::Held | ReservationState::Expired);
            for l in &v.lines {
                for (s, allocs) in std::iter::once((&l.sku, &l.allocations))
                    .chain(l.components.iter().map(|c| (&c.sku, &c.allocations)))
                {
                    for a in allocs {
                        if a.quantity != 0 {
                            by.entry((s.clone(), a.location.clone()))
                                .or_default()
                                .push(format!("{} {:?} {}", v.id, v.state, a.quantity));
                        }
                        let e = want.entry((s.clone(), a.location.clone())).or_default();
                        if held {
                            e.0 += a.quantity;
                        } else {
                            e.1 += a.quantity;
                        }
                    }
                }
            }
        }
        for id in ended {
            self.reservations.remove(&id);
        }

        for s in SKUS {
            let s = sku(s);
            let Some(view) = crate::invariants::stock(&mut self.machine, &tenant, &s, self.now)
            else {
                continue;
            };
            for lv in &view.locations {
                let (r, c) = want
                    .get(&(s.clone(), lv.location.clone()))
                    .copied()
                    .unwrap_or((0, 0));
                if (lv.reserved, lv.committed) != (r, c) {
                    return Err(format!(
                        "{context}: {s} at {}: reserved {} and committed {} but the live \
                         reservations hold {r} and have committed {c} ({:?})",
                        lv.location,
                        lv.reserved,
                        lv.committed,
                        by.get(&(s.clone(), lv.location.clone()))
                    ));
                }
            }
        }
        Ok(())
    }

    /// One step: maybe a fault, the clock, a command, maybe a sync.
    fn step(&mut self) -> Step<()> {
        let f = |w: &World, x: Fault| w.faults.contains(&x);
        self.now += self.rng.gen_range(0..2_000);
        if f(self, Fault::Clock) {
            match self.rng.gen_range(0..100) {
                0 => {
                    self.now += self.rng.gen_range(0..7_200_000);
                    *self.run.injected.entry("clock").or_default() += 1;
                }
                1 => {
                    self.now = self.now.saturating_sub(self.rng.gen_range(0..600_000));
                    *self.run.injected.entry("clock").or_default() += 1;
                }
                _ => {}
            }
        }
        self.trace(&format!("step {} now {}", self.step, self.now));
        let roll = self.rng.gen_range(0..1_000);
        if self.armed.is_none() {
            match roll {
                0..=9 if f(self, Fault::Crash) => {
                    *self.run.injected.entry("crash").or_default() += 1;
                    let power = self.rng.gen();
                    self.restart(
                        power,
                        if power {
                            "a power loss"
                        } else {
                            "a process crash"
                        },
                    )?;
                }
                10..=17 if f(self, Fault::Torn) => {
                    *self.run.injected.entry("torn").or_default() += 1;
                    self.armed = Some(Armed::Torn);
                    self.fdir.crash_after(self.rng.gen_range(0..400));
                }
                18..=25 if f(self, Fault::Fsync) => {
                    *self.run.injected.entry("fsync").or_default() += 1;
                    self.armed = Some(Armed::Fsync);
                    self.fdir.set_fail_sync(true);
                }
                26..=33 if f(self, Fault::Full) => {
                    *self.run.injected.entry("full").or_default() += 1;
                    self.armed = Some(Armed::Full);
                    self.fdir.set_space_left(Some(self.rng.gen_range(0..600)));
                }
                34..=45 if f(self, Fault::Bitflip) => {
                    // Flips are checked on what is on the medium: sync first.
                    self.sync()?;
                    if self.armed.is_none() {
                        self.bit_flip()?;
                    }
                }
                _ => {}
            }
        }
        if self.rng.gen_range(0..100) < 2 {
            self.snapshot()?;
        }
        self.command()?;
        if self.rng.gen_range(0..3) == 0 {
            self.sync()?;
        }
        Ok(())
    }
}

/// The log segments of `mem` without its snapshots (recovery then replays the whole log).
fn log_only(mem: &MemDir) -> MemDir {
    let copy = MemDir::new();
    for name in mem.names() {
        if depot_wal::format::parse_segment_name(&name).is_some() {
            if let Some(bytes) = mem.bytes(&name) {
                copy.insert(&name, bytes);
            }
        }
    }
    copy
}

fn all_skus() -> BTreeSet<Sku> {
    SKUS.iter()
        .chain(std::iter::once(&BUNDLE))
        .map(|s| sku(s))
        .collect()
}

/// Runs one seed for `steps` steps with the given faults.
pub fn run_seed(seed: u64, steps: u64, faults: &Faults) -> Result<SeedRun, DstFailure> {
    run_seed_with(seed, steps, faults, Sabotage::None)
}

/// [`run_seed`] on a medium with a deliberate defect (to test that the checks catch it).
pub fn run_seed_with(
    seed: u64,
    steps: u64,
    faults: &Faults,
    sabotage: Sabotage,
) -> Result<SeedRun, DstFailure> {
    let opts = DstOptions {
        seed,
        seeds: 1,
        steps,
        faults: faults.clone(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shards = rng.gen_range(1..=4);
    let segment_len_max = rng.gen_range(2_048..=16_384);
    let options = WalOptions {
        segment_len_max,
        write_buffer_max: rng.gen_range(64..=2_048),
        // Half the seeds write zeros ahead of the records, half let segments grow with them.
        preallocate: if seed % 2 == 0 {
            segment_len_max / 2
        } else {
            0
        },
    };
    let mem = MemDir::new();
    let base = SimDir {
        mem: mem.clone(),
        sabotage,
    };
    let fdir = FaultDir::new(base.clone());
    let fail = |step: u64, message: String| DstFailure {
        seed,
        step,
        message,
        repro: opts.repro(seed),
    };
    let writer =
        WalWriter::open(Box::new(fdir.clone()), options).map_err(|e| fail(0, e.to_string()))?;
    let mut w = World {
        seed,
        rng,
        faults: faults.0.clone(),
        mem,
        base,
        fdir,
        options,
        writer: Some(writer),
        machine: Machine::new(Limits::default(), shards),
        tenant: TenantId::new("dst").expect("valid id"),
        now: 1_800_000_000_000,
        history: BTreeMap::new(),
        appended: 0,
        acked: 0,
        pending: Vec::new(),
        armed: None,
        reservations: BTreeSet::new(),
        ended: BTreeMap::new(),
        shipped: Vec::new(),
        checker: Checker::new(),
        trace: blake3::Hasher::new(),
        run: SeedRun {
            seed,
            ..SeedRun::default()
        },
        step: 0,
        keys: 0,
    };
    w.trace(&format!(
        "seed {} shards {shards} options {options:?}",
        w.seed
    ));
    w.history.insert(0, w.machine.digest());
    setup(&mut w).map_err(|m| fail(0, m))?;
    for step in 1..=steps {
        w.step = step;
        w.step().map_err(|m| fail(step, m))?;
    }
    // The end: everything synced, then the log replayed into a fresh engine.
    let end = steps + 1;
    if w.armed.is_some() {
        // A fault still armed fires on this sync, or is disarmed.
        w.sync().map_err(|m| fail(end, m))?;
        w.fdir = FaultDir::new(w.base.clone());
        w.armed = None;
        w.restart(false, "the end").map_err(|m| fail(end, m))?;
    }
    w.sync().map_err(|m| fail(end, m))?;
    let live = w.machine.digest();
    for (what, dir) in [
        ("the log", log_only(&w.mem)),
        ("the newest snapshot and the log after it", w.mem.clone()),
    ] {
        let shards = w.rng.gen_range(1..=4);
        let (replayed, tail) = recover(&dir, Limits::default(), shards)
            .map_err(|e| fail(end, format!("the final replay of {what} failed: {e}")))?;
        if tail != Tail::Clean || replayed.digest() != live {
            return Err(fail(
                end,
                format!(
                    "{what} loaded into a fresh engine ({shards} shards, tail {tail:?}) does not \
                     give the live engine's digest"
                ),
            ));
        }
    }
    w.trace(&format!("final {}", depot_engine::digest::hex(&live)));
    w.run.steps = steps;
    w.run.final_digest = live;
    w.run.trace = *w.trace.finalize().as_bytes();
    Ok(w.run)
}

fn setup(w: &mut World) -> Step<()> {
    let mut commands = vec![Command::CreateTenant];
    for (i, l) in LOCATIONS.iter().enumerate() {
        commands.push(Command::PutLocation {
            location: loc(l),
            kind: if i == 2 {
                LocationKind::Store
            } else {
                LocationKind::Warehouse
            },
            name: l.to_string(),
            region: None,
            wms: None,
        });
    }
    for (c, p) in CHANNELS {
        commands.push(Command::PutChannel {
            channel: chan(c),
            kind: ChannelKind::Other,
            priority: p,
        });
    }
    commands.push(Command::PutBundle {
        sku: sku(BUNDLE),
        components: vec![
            Component {
                sku: sku("S1"),
                quantity: 1,
            },
            Component {
                sku: sku("S2"),
                quantity: 2,
            },
        ],
    });
    let document = rules(&mut w.rng);
    commands.push(Command::PutRules { document });
    for s in SKUS {
        for l in LOCATIONS {
            let quantity = w.rng.gen_range(0..=10);
            if quantity > 0 {
                commands.push(Command::Receive {
                    sku: sku(s),
                    location: loc(l),
                    quantity,
                    unit_cost: None,
                    reason: "opening".into(),
                });
            }
        }
    }
    for command in commands {
        let name = command.name();
        let req = w.request(command, None);
        let resp = w.exec(req)?;
        if let Outcome::Refused(r) = resp.outcome {
            return Err(format!("setup: {name} refused: {r}"));
        }
    }
    w.sync()
}

/// Runs seeds `opts.seed .. opts.seed + opts.seeds`; stops at the first failure.
pub fn run(opts: &DstOptions, progress: bool) -> (Vec<SeedRun>, Option<DstFailure>) {
    let bar = crate::progress::bar("seeds", opts.seeds, progress);
    let mut runs = Vec::new();
    for seed in opts.seed..opts.seed.saturating_add(opts.seeds) {
        match run_seed(seed, opts.steps, &opts.faults) {
            Ok(r) => runs.push(r),
            Err(f) => {
                bar.finish_and_clear();
                tracing::error!(seed = f.seed, step = f.step, "{}", f.message);
                return (runs, Some(f));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    (runs, None)
}

/// The report of a DST run.
pub fn report(opts: &DstOptions, runs: &[SeedRun], failure: Option<&DstFailure>) -> Report {
    let total = |f: fn(&SeedRun) -> u64| runs.iter().map(f).sum::<u64>();
    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    for r in runs {
        for (k, v) in &r.injected {
            *injected.entry(k).or_default() += v;
        }
    }
    let mut facts = vec![
        (
            "seeds".to_string(),
            format!("{} from {}", opts.seeds, opts.seed),
        ),
        ("steps per seed".into(), opts.steps.to_string()),
        ("faults".into(), opts.faults.to_string()),
        ("seeds passed".into(), runs.len().to_string()),
        ("writes".into(), total(|r| r.writes).to_string()),
        ("faults injected".into(), format!("{injected:?}")),
        (
            "crash recoveries".into(),
            total(|r| r.recoveries).to_string(),
        ),
        (
            "unacknowledged writes lost / kept".into(),
            format!(
                "{} / {}",
                total(|r| r.unacked_lost),
                total(|r| r.unacked_kept)
            ),
        ),
        ("torn tails cut".into(), total(|r| r.torn_tails).to_string()),
        (
            "bit flips detected: corrupt / torn last write group".into(),
            format!(
                "{} / {}",
                total(|r| r.flips_corrupt),
                total(|r| r.flips_torn)
            ),
        ),
        (
            "idempotent retries after recovery".into(),
            total(|r| r.idempotent_retries).to_string(),
        ),
        (
            "snapshots written / failed under a fault".into(),
            format!(
                "{} / {}",
                total(|r| r.snapshots),
                total(|r| r.snapshots_failed)
            ),
        ),
        (
            "oversells (must be 0)".into(),
            if failure.is_some() {
                "see failure".into()
            } else {
                "0".into()
            },
        ),
    ];
    if let Some(f) = failure {
        facts.push(("FAILED".into(), f.to_string()));
    } else {
        facts.push(("result".into(), "every seed passed".into()));
    }
    let head = [
        "seed",
        "steps",
        "writes",
        "recoveries",
        "lost unacked",
        "torn tails",
        "flips detected",
        "trace digest",
        "state digest",
    ];
    let rows = runs
        .iter()
        .take(1_000)
        .map(|r| {
            vec![
                r.seed.to_string(),
                r.steps.to_string(),
                r.writes.to_string(),
                r.recoveries.to_string(),
                r.unacked_lost.to_string(),
                r.torn_tails.to_string(),
                (r.flips_corrupt + r.flips_torn).to_string(),
                depot_engine::digest::hex(&r.trace)[..16].to_string(),
                depot_engine::digest::hex(&r.final_digest)[..16].to_string(),
            ]
        })
        .collect();
    Report {
        title: format!(
            "depot deterministic simulation: seeds {}..={}",
            opts.seed,
            opts.seed.saturating_add(opts.seeds.saturating_sub(1))
        ),
        facts,
        runs: Vec::new(),
        sections: Vec::new(),
        table: Some((head.iter().map(|s| s.to_string()).collect(), rows)),
    }
}
