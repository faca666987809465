//! depot's engine: an in-memory, sharded, deterministic inventory state machine.
//!
//! - [`Request`]s carrying [`Command`]s go in; [`Response`]s with an [`Outcome`] and
//!   numbered [`Event`]s come out.
//! - [`Machine`] runs everything on one thread, one command at a time: the definition.
//! - [`Engine`] runs one thread per shard and agrees with [`Machine`] command for command.
//! - Time is an argument of every call. The engine reads no clock, does no I/O and draws no
//!   randomness; the same writes in the same order give the same state, proven by
//!   [`Machine::digest`] / [`Engine::digest`].
//!
//! The semantics of stock, ATS, rules and reservations are in `docs/allocation.md`.

pub mod ats;
pub mod chunked;
pub mod codec;
pub mod command;
pub mod config;
pub mod digest;
pub mod exec;
pub mod front;
pub mod idem;
pub mod ids;
pub mod job;
pub mod limits;
pub mod machine;
pub mod one;
pub mod outcome;
pub mod packed;
pub mod rules;
pub mod runtime;
pub mod shard;
pub mod snapshot;
pub mod timers;

pub use command::{Bucket, Command, CommitLine, FillPolicy, FulfilLine, LineRequest, Request};
pub use config::{ChannelKind, Component, LocationKind};
pub use ids::{ChannelId, LocationId, ReservationId, Seq, Sku, TenantId, TimeMs};
pub use limits::Limits;
pub use machine::{LogEntry, Machine};
pub use outcome::{Event, EventKind, Lines, Outcome, Refusal, Reply, ReservationState, Response};
pub use rules::{Rule, RuleDocument, RuleKind};
pub use runtime::{
    Completion, Engine, EngineConfig, Journal, JournalError, MemoryJournal, Replaying,
    ReservationCounts, Unacked,
};

/// Collects `items` into a `SmallVec` one push at a time. The hot paths build lists of one or
/// two entries (a line's locations, an item's allocations), and `collect` into a `SmallVec`
/// goes through its general `extend`, which costs a few times more for so few.
#[inline]
pub(crate) fn small<A: smallvec::Array>(
    items: impl IntoIterator<Item = A::Item>,
) -> smallvec::SmallVec<A> {
    let items = items.into_iter();
    let mut v = smallvec::SmallVec::new();
    // More than fit inline: the room for all at once, not grown one doubling at a time.
    let (least, _) = items.size_hint();
    if least > A::size() {
        v.reserve_exact(least);
    }
    for x in items {
        v.push(x);
    }
    v
}

/// Test helpers shared by the crate's unit tests.
#[cfg(test)]
mod test_rng {
    /// A small deterministic generator (xorshift64): `next(n)` is in `0..n`.
    pub(crate) fn xorshift(mut x: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        }
    }
}
