//! Rate limits: refusal past the burst with the wait until the next token, independent keys,
//! eviction of idle buckets, concurrent use. Time is passed in, so nothing here sleeps.

use depot_api::ratelimit::{retry_after_secs, RateLimiter, BUCKETS_MAX};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn past_the_burst_a_key_is_refused_with_the_wait_for_the_next_token() {
    let limiter = RateLimiter::new(2.0, 3);
    let t0 = Instant::now();
    for i in 0..3 {
        assert_eq!(limiter.check("key_a", t0), Ok(()), "request {i}");
    }
    assert_eq!(limiter.check("key_a", t0), Err(ms(500)));
    // Half a token later it is still refused, with the remaining wait.
    assert_eq!(limiter.check("key_a", t0 + ms(250)), Err(ms(250)));
    assert_eq!(limiter.check("key_a", t0 + ms(500)), Ok(()));
    assert_eq!(limiter.check("key_a", t0 + ms(500)), Err(ms(500)));
    // Other keys have their own buckets.
    assert_eq!(limiter.check("key_b", t0 + ms(500)), Ok(()));
}

#[test]
fn a_bucket_never_holds_more_than_the_burst() {
    let limiter = RateLimiter::new(100.0, 2);
    let t0 = Instant::now();
    assert!(limiter.check("k", t0).is_ok());
    let later = t0 + Duration::from_secs(3_600);
    assert!(limiter.check("k", later).is_ok());
    assert!(limiter.check("k", later).is_ok());
    assert!(limiter.check("k", later).is_err());
}

#[test]
fn a_now_older_than_the_bucket_refills_nothing() {
    let limiter = RateLimiter::new(1.0, 1);
    let t0 = Instant::now() + Duration::from_secs(10);
    assert!(limiter.check("k", t0).is_ok());
    assert_eq!(
        limiter.check("k", t0 - ms(900)),
        Err(Duration::from_secs(1))
    );
    assert_eq!(limiter.check("k", t0 + ms(400)), Err(ms(600)));
    assert_eq!(limiter.check("k", t0 + ms(1_000)), Ok(()));
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(ms(1)), 1);
    assert_eq!(retry_after_secs(ms(1_000)), 1);
    assert_eq!(retry_after_secs(ms(1_001)), 2);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
}

#[test]
fn a_rate_that_is_not_positive_turns_the_limiter_off() {
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let limiter = RateLimiter::new(rate, 1);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.check("k", t0), Ok(()), "rate {rate}");
        }
        assert!(limiter.is_empty());
    }
}

#[test]
fn idle_buckets_are_evicted_and_come_back_full() {
    let limiter = RateLimiter::new(10.0, 5);
    let t0 = Instant::now();
    for i in 0..1_000 {
        let _ = limiter.check(&format!("key_{i}"), t0);
    }
    assert_eq!(limiter.len(), 1_000);
    // 5 tokens at 10/s: full again after 0.5 s. At 0.4 s nothing is idle enough.
    limiter.evict_idle(t0 + ms(400));
    assert_eq!(limiter.len(), 1_000);
    limiter.evict_idle(t0 + ms(500));
    assert_eq!(limiter.len(), 0);

    // The periodic sweep does the same as keys come and go: memory follows the keys in use.
    for second in 1..=20u64 {
        let now = t0 + Duration::from_secs(second);
        for i in 0..100 {
            let _ = limiter.check(&format!("s{second}_k{i}"), now);
        }
    }
    assert!(limiter.len() <= 200, "{} buckets", limiter.len());
    // An evicted key starts with a full bucket, as it would have had anyway.
    let later = t0 + Duration::from_secs(60);
    for _ in 0..5 {
        assert!(limiter.check("key_0", later).is_ok());
    }
    assert!(limiter.check("key_0", later).is_err());
}

#[test]
fn concurrent_checks_grant_exactly_the_burst() {
    let limiter = Arc::new(RateLimiter::new(1.0, 50));
    let granted = Arc::new(AtomicUsize::new(0));
    let now = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (limiter, granted) = (limiter.clone(), granted.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if limiter.check("shared", now).is_ok() {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(granted.load(Ordering::Relaxed), 50);
}

#[test]
fn a_new_key_that_finds_the_map_full_sweeps_it_before_the_next_periodic_sweep() {
    // One token at 1,000/s: a bucket is full again, so idle, 1 ms after its last request.
    let limiter = RateLimiter::new(1_000.0, 1);
    let t0 = Instant::now();
    // The first check sweeps (nothing swept yet); the rest come within the sweep interval.
    for i in 0..BUCKETS_MAX {
        assert!(limiter.check(&format!("key_{i}"), t0).is_ok());
    }
    assert_eq!(limiter.len(), BUCKETS_MAX);
    // A known key does not sweep, even with the map full and every other bucket idle.
    let soon = t0 + ms(5);
    assert!(limiter.check("key_0", soon).is_ok());
    assert_eq!(limiter.len(), BUCKETS_MAX);
    // A new one does: only the buckets used within the last millisecond stay.
    assert!(limiter.check("key_new", soon).is_ok());
    assert_eq!(limiter.len(), 2, "key_0 (used at `soon`) and key_new");
}
