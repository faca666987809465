//! The single-threaded machine: the front and every shard driven one command at a time.
//! It is what log replay and the simulator use, and the definition the threaded
//! [`crate::Engine`] must agree with.

use crate::command::Request;
use crate::exec::{decide, merge};
use crate::front::{Admission, Front};
use crate::ids::{Seq, TimeMs};
use crate::job::{Job, Prep};
use crate::limits::Limits;
use crate::outcome::{Event, Response};
use crate::shard::ShardState;

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
    let participants: Vec<usize> = (0..shards.len())
        .filter(|i| job.shards & (1 << i) != 0)
        .collect();
    let preps: Vec<Prep> = participants
        .iter()
        .map(|&i| shards[i].prepare(job))
        .collect();
    let first = participants[0];
    let d = decide(
        job,
        shards[first].tenants.get(job.tenant as usize).map(|c| &**c),
        &preps,
    );
    let outs: Vec<_> = participants
        .iter()
        .map(|&i| shards[i].apply(job, &d))
        .collect();
    merge(
        job,
        shards[first].tenants.get(job.tenant as usize).map(|c| &**c),
        &d,
        outs,
    )
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
        self.run(request, now, None)
    }

    /// Re-executes a logged write with its recorded sequence number and time.
    pub fn replay(&mut self, entry: &LogEntry) -> (Response, Vec<Event>) {
        let (r, e, _) = self.run(&entry.request, entry.now, Some(entry.seq));
        (r, e)
    }

    fn run(
        &mut self,
        request: &Request,
        now: TimeMs,
        forced: Option<Seq>,
    ) -> (Response, Vec<Event>, Option<LogEntry>) {
        match self.front.admit(request, now, forced) {
            Admission::Immediate(r) => (r, Vec::new(), None),
            Admission::Wait { .. } => {
                unreachable!("one command at a time: nothing is ever in flight")
            }
            Admission::Run { job, idem } => {
                let log = (!request.command.is_read()).then(|| LogEntry {
                    seq: job.seq,
                    now: job.now,
                    request: request.clone(),
                });
                let fin = run_on(&mut self.shards, &job);
                let (r, e) = self.front.finish(&job, idem, fin);
                (r, e, log)
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
