//! Per-key rate limits (token buckets).
//!
//! Each key has a bucket of at most `burst` tokens, refilled at `rate_per_second`; a request
//! takes one token or is refused with the time until one is there (`Retry-After`). Buckets
//! live in a sharded concurrent map, so keys never contend on one lock. A bucket idle long
//! enough to have refilled completely is the same as no bucket: such buckets are dropped (at
//! most once a second, and whenever a new key finds the map at [`BUCKETS_MAX`]), so memory
//! follows the keys in use, not every key ever seen.
//!
//! Time is an argument (`now`), so tests and the simulator drive it; the server passes
//! `Instant::now()`.

use dashmap::DashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets held before idle ones are swept at once (rather than on the next periodic sweep).
pub const BUCKETS_MAX: usize = 100_000;
/// Least time between two periodic sweeps of idle buckets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per key. See the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens per second; `None` when the limiter is off (a rate that is zero, negative or
    /// not finite).
    rate: Option<f64>,
    burst: f64,
    /// By key id. The ids are depot's own (`key_` and hex digits, or `master`), never a
    /// client's text, so the map uses FxHash rather than SipHash: no client can choose ids
    /// that collide, and a check costs about a quarter less.
    buckets: DashMap<String, Bucket, rustc_hash::FxBuildHasher>,
    last_sweep: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `rate_per_second` tokens per second, at most `burst` (at least 1) at once. A rate that
    /// is not a positive finite number turns the limiter off: every check passes.
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        let rate =
            (rate_per_second.is_finite() && rate_per_second > 0.0).then_some(rate_per_second);
        RateLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: DashMap::with_hasher(rustc_hash::FxBuildHasher),
            last_sweep: Mutex::new(None),
        }
    }

    /// Takes a token for `key_id` at `now`, or says how long until one is there.
    pub fn check(&self, key_id: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        self.maybe_sweep(now, false);
        if let Some(mut b) = self.buckets.get_mut(key_id) {
            return take(&mut b, rate, self.burst, now);
        }
        // (The guard above is released here: `entry` locks the same shard.) The map grows only
        // here, so only here is its size checked (`len` locks every shard of the map in turn).
        if self.buckets.len() >= BUCKETS_MAX {
            self.maybe_sweep(now, true);
        }
        // Another thread may insert the same key meanwhile; `or_insert` keeps the first, and
        // both take from it.
        let full = Bucket {
            tokens: self.burst,
            last: now,
        };
        let mut b = self.buckets.entry(key_id.to_string()).or_insert(full);
        take(&mut b, rate, self.burst, now)
    }

    /// Drops every bucket that has been idle long enough to be full again.
    pub fn evict_idle(&self, now: Instant) {
        let Some(rate) = self.rate else {
            return;
        };
        let full_after = Duration::from_secs_f64((self.burst / rate).min(1e9));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Sweeps idle buckets if the last sweep is [`SWEEP_INTERVAL`] old, or at once if `full`.
    fn maybe_sweep(&self, now: Instant, full: bool) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return; // another thread is sweeping
        };
        let due = last.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
        if due || full {
            *last = Some(now);
            drop(last);
            self.evict_idle(now);
        }
    }
}

/// Refills `b` up to `now` and takes one token, or returns the wait for the next one.
fn take(b: &mut Bucket, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
    // A `now` older than the bucket's (threads racing) refills nothing and moves nothing back.
    let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate).min(burst);
    if now > b.last {
        b.last = now;
    }
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        // Whole microseconds: float noise never shows as a stray nanosecond.
        let wait_us = ((1.0 - b.tokens) / rate * 1e6).round().min(1e15);
        Err(Duration::from_micros(wait_us as u64).max(Duration::from_millis(1)))
    }
}

/// Whole seconds for a `Retry-After` header: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}
