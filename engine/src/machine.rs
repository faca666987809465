//! The single-threaded machine: the front and every shard driven one command at a time.
//! It is what log replay and the simulator use, and the definition the threaded
//! [`crate::Engine`] must agree with.

use crate::command::Request;
use crate::config::TenantConfig;
use crate::exec::{decide, merge};
use crate::front::{Admission, Front};
use crate::ids::{Seq, TimeMs};
use crate::job::{Job, PartOut, Prep};
use crate::limits::Limits;
use crate::outcome::{Event, Response};
use crate::shard::ShardState;
use smallvec::SmallVec;

/// A sequenced write as the log records it: replaying these in order rebuilds the state.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    pub seq: Seq,
    pub now: TimeMs,
    pub request: Request,
}

#[derive(Debug)]
pub struct Machine {
    pub front: Front,
    pub shards: Vec<ShardState>,
}

/// Runs a job on the given shards (all of them, indexed by shard number) sequentially.
pub(crate) fn run_on(shards: &mut [ShardState], job: &Job) -> crate::job::Finished {
    if job.shards.count_ones() == 1 {
        // One participant (most commands): no lists to build.
        let shard = &mut shards[job.shards.trailing_zeros() as usize];
        let prep = shard.prepare(job);
        let d = decide(job, tenant_config(shard, job), std::slice::from_ref(&prep));
        let out = shard.apply(job, &d);
        return merge(job, tenant_config(shard, job), &d, std::iter::once(out));
    }
    let participants: SmallVec<[usize; 4]> = (0..shards.len())
        .filter(|i| job.shards & (1 << i) != 0)
        .collect();
    let preps: SmallVec<[Prep; 2]> = participants
        .iter()
        .map(|&i| shards[i].prepare(job))
        .collect();
    let first = participants[0];
    let d = decide(job, tenant_config(&shards[first], job), &preps);
    let outs: SmallVec<[PartOut; 2]> = participants
        .iter()
        .map(|&i| shards[i].apply(job, &d))
        .collect();
    merge(job, tenant_config(&shards[first], job), &d, outs)
}

/// The job's tenant configuration as a shard holds it (borrowed: no reference count touched).
fn tenant_config<'a>(shard: &'a ShardState, job: &Job) -> Option<&'a TenantConfig> {
    shard.tenants.get(job.tenant as usize).map(|c| &**c)
}

impl Machine {
    pub fn new(limits: Limits, shards: usize) -> Self {
        let states = (0..shards)
            .map(|i| {
                ShardState::new(
                    i,
                    shards,
                    limits.holds_per_shard_max,
                    limits.ended_retention_ms,
                )
            })
            .collect();
        Machine {
            front: Front::new(limits, shards),
            shards: states,
        }
    }

    /// Executes one request at time `now`. Writes are returned with the log entry that
    /// reproduces them.
    pub fn execute(
        &mut self,
        request: &Request,
        now: TimeMs,
    ) -> (Response, Vec<Event>, Option<LogEntry>) {
        let mut log = None;
        let (r, e) = self.run(request, now, None, Some(&mut log));
        (r, e, log)
    }

    /// Re-executes a logged write with its recorded sequence number and time.
    pub fn replay(&mut self, entry: &LogEntry) -> (Response, Vec<Event>) {
        // The entry is logged already: no copy of its request is made.
        self.run(&entry.request, entry.now, Some(entry.seq), None)
    }

    /// Runs one request; `log`, when given, receives the log entry of a write.
    fn run(
        &mut self,
        request: &Request,
        now: TimeMs,
        forced: Option<Seq>,
        log: Option<&mut Option<LogEntry>>,
    ) -> (Response, Vec<Event>) {
        match self.front.admit(request, now, forced) {
            Admission::Immediate(r) => (r, Vec::new()),
            Admission::Wait(..) => {
                unreachable!("one command at a time: nothing is ever in flight")
            }
            Admission::Run { job, idem } => {
                if let Some(log) = log.filter(|_| !request.command.is_read()) {
                    *log = Some(LogEntry {
                        seq: job.seq,
                        now: job.now,
                        request: request.clone(),
                    });
                }
                let fin = run_on(&mut self.shards, &job);
                self.front.finish(&job, idem, fin)
            }
        }
    }

    /// The canonical state, line by line; see [`crate::digest`].
    pub fn canonical(&self) -> Vec<String> {
        crate::digest::canonical(&self.front, self.shards.iter())
    }

    /// The digest of the whole state; see [`crate::digest`].
    pub fn digest(&self) -> [u8; 32] {
        crate::digest::digest(&self.front, self.shards.iter())
    }
}
