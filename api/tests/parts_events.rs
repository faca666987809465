//! The event log: rendering, tenant isolation, pages that never split a sequence number,
//! the bound on memory, and the server-sent-event stream's order and resumption.

use axum::response::IntoResponse;
use depot_api::events::{event_json, sse, EventLog};
use depot_engine::{Event, EventKind, LocationId, ReservationId, Sku, TenantId};
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn event(t: &str, seq: u64, index: u32) -> Event {
    Event {
        seq,
        index,
        at: 1_700_000_000_123,
        tenant: tenant(t),
        key_id: "key_abc".into(),
        kind: EventKind::Fulfilled {
            id: ReservationId(seq),
            sku: Sku::new("SKU-1").unwrap(),
            location: LocationId::new("wh").unwrap(),
            quantity: i64::from(index) + 1,
        },
    }
}

/// `per_seq[i]` events for seq i + 1, all of tenant `t`.
fn events(t: &str, per_seq: &[u32]) -> Vec<Event> {
    per_seq
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| (0..n).map(move |j| event(t, i as u64 + 1, j)))
        .collect()
}

fn seq_index(v: &Value) -> (u64, u64) {
    (v["seq"].as_u64().unwrap(), v["index"].as_u64().unwrap())
}

#[test]
fn an_event_renders_as_the_api_shows_it() {
    let v = event_json(&event("acme", 7, 1));
    assert_eq!(v["seq"], 7);
    assert_eq!(v["index"], 1);
    assert_eq!(v["at"], "2023-11-14T22:13:20.123Z");
    assert_eq!(v["kind"], "fulfilled");
    assert_eq!(v["key_id"], "key_abc");
    assert_eq!(v["id"], "res_7");
    assert_eq!(v["sku"], "SKU-1");
    assert_eq!(v["quantity"], 2);
    assert!(v.get("tenant").is_none(), "{v}");

    let extended = Event {
        kind: EventKind::ReservationExtended {
            id: ReservationId(3),
            expires_at: 1_700_000_060_000,
        },
        ..event("acme", 8, 0)
    };
    let v = event_json(&extended);
    assert_eq!(v["kind"], "reservation_extended");
    assert_eq!(v["expires_at"], "2023-11-14T22:14:20.000Z");
    assert_eq!(v["id"], "res_3");

    // Times RFC 3339 cannot write are clamped, never a panic.
    let far = Event {
        at: u64::MAX,
        ..event("acme", 9, 0)
    };
    assert_eq!(event_json(&far)["at"], "9999-12-31T23:59:59.999Z");
}

#[test]
fn a_tenant_reads_only_its_own_events() {
    let log = EventLog::new(100);
    log.push(&[event("acme", 1, 0), event("globex", 1, 1)]);
    log.push(&[event("globex", 2, 0)]);
    log.push(&[event("acme", 3, 0)]);
    let page = log.read(&tenant("acme"), 0, 10);
    let got: Vec<_> = page.events.iter().map(seq_index).collect();
    assert_eq!(got, vec![(1, 0), (3, 0)]);
    assert_eq!(page.next, 3);
    let page = log.read(&tenant("globex"), 1, 10);
    assert_eq!(
        page.events.iter().map(seq_index).collect::<Vec<_>>(),
        vec![(2, 0)]
    );
    let none = log.read(&tenant("nobody"), 0, 10);
    assert!(none.events.is_empty());
    assert_eq!(none.next, 0, "next = after when nothing is new");
    assert!(!none.missed);
}

/// Lists pushed together (a batch's answers) are kept as the same lists pushed one by one.
#[test]
fn lists_pushed_together_are_kept_as_pushed_one_by_one() {
    let lists = [
        vec![event("acme", 1, 0), event("globex", 1, 1)],
        vec![],
        vec![event("globex", 2, 0)],
        vec![event("acme", 3, 0), event("acme", 3, 1)],
        vec![event("acme", 2, 0)],
    ];
    let together = EventLog::new(100);
    together.push_all(lists.iter().map(Vec::as_slice));
    let one_by_one = EventLog::new(100);
    for l in &lists {
        one_by_one.push(l);
    }
    for t in ["acme", "globex"] {
        let a = together.read(&tenant(t), 0, 10);
        let b = one_by_one.read(&tenant(t), 0, 10);
        assert_eq!(a.events, b.events);
        assert_eq!(a.next, b.next);
    }
    // The late seq 2 of the last list was dropped by both.
    let acme = together.read(&tenant("acme"), 0, 10);
    assert_eq!(
        acme.events.iter().map(seq_index).collect::<Vec<_>>(),
        vec![(1, 0), (3, 0), (3, 1)]
    );
    together.push_all([&[][..], &[]]);
    assert_eq!(together.read(&tenant("acme"), 3, 10).events.len(), 0);

    // Lists given by value (moved into the log, as the acknowledging thread gives a
    // reservation's events), alone or mixed with borrowed ones, are kept as the same lists
    // copied.
    let owned = EventLog::new(100);
    owned.push_all(lists.iter().cloned());
    let mixed = EventLog::new(100);
    mixed.push_all(lists.iter().enumerate().map(|(i, l)| {
        if i % 2 == 0 {
            std::borrow::Cow::Owned(l.clone())
        } else {
            std::borrow::Cow::Borrowed(l.as_slice())
        }
    }));
    for t in ["acme", "globex"] {
        let a = one_by_one.read(&tenant(t), 0, 10);
        for log in [&owned, &mixed] {
            let b = log.read(&tenant(t), 0, 10);
            assert_eq!(a.events, b.events, "{t}");
            assert_eq!(a.next, b.next, "{t}");
        }
    }
}

#[test]
fn a_page_holds_whole_sequence_numbers_only() {
    let log = EventLog::new(1_000);
    log.push(&events("acme", &[1, 3, 2, 1]));
    let page = log.read(&tenant("acme"), 0, 2);
    assert_eq!(
        page.events.iter().map(seq_index).collect::<Vec<_>>(),
        vec![(1, 0), (2, 0), (2, 1), (2, 2)]
    );
    assert_eq!(page.next, 2);
    let page = log.read(&tenant("acme"), page.next, 1);
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.next, 3);
    let page = log.read(&tenant("acme"), page.next, 5);
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.next, 4);
    let page = log.read(&tenant("acme"), 4, 5);
    assert!(page.events.is_empty());
    assert_eq!(page.next, 4);
    assert_eq!(log.read(&tenant("acme"), 0, 0).events.len(), 0);
}

proptest! {
    /// Reading page after page from any cursor yields every event after it, in order, each
    /// page made of at most `limit` whole sequence numbers.
    #[test]
    fn pages_concatenate_to_the_log(
        per_seq in prop::collection::vec(0u32..4, 0..40),
        limit in 1usize..6,
        start in 0u64..10,
    ) {
        let log = EventLog::new(10_000);
        let all = events("acme", &per_seq);
        log.push(&all);
        let expected: Vec<_> = all
            .iter()
            .filter(|e| e.seq > start)
            .map(|e| (e.seq, u64::from(e.index)))
            .collect();
        let mut got = Vec::new();
        let mut cursor = start;
        loop {
            let page = log.read(&tenant("acme"), cursor, limit);
            if page.events.is_empty() {
                prop_assert_eq!(page.next, cursor);
                break;
            }
            let seqs: Vec<u64> = page.events.iter().map(|v| seq_index(v).0).collect();
            let mut distinct = seqs.clone();
            distinct.dedup();
            prop_assert!(distinct.len() <= limit);
            prop_assert_eq!(page.next, *seqs.last().unwrap());
            prop_assert!(page.next > cursor);
            // The page's last seq is complete: every event of it is in this page.
            let n_last = all.iter().filter(|e| e.seq == page.next).count();
            prop_assert_eq!(seqs.iter().filter(|&&s| s == page.next).count(), n_last);
            got.extend(page.events.iter().map(seq_index));
            cursor = page.next;
        }
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn the_oldest_whole_sequence_numbers_are_dropped_past_capacity() {
    let log = EventLog::new(5);
    log.push(&events("acme", &[2, 2, 2, 2]));
    // 8 events > 5: seqs 1 and 2 go whole (4 events), seqs 3 and 4 stay.
    assert_eq!(log.len(), 4);
    assert_eq!(log.oldest_seq(), Some(3));
    assert_eq!(log.latest_seq(), 4);
    let page = log.read(&tenant("acme"), 0, 100);
    assert!(page.missed, "events after 0 were dropped");
    assert_eq!(
        page.events.iter().map(seq_index).collect::<Vec<_>>(),
        vec![(3, 0), (3, 1), (4, 0), (4, 1)]
    );
    assert!(!log.read(&tenant("acme"), 2, 100).missed);
}

#[test]
fn the_newest_sequence_number_is_kept_whole_even_past_capacity() {
    let log = EventLog::new(3);
    log.push(&events("acme", &[1]));
    let big: Vec<_> = (0..10).map(|i| event("acme", 2, i)).collect();
    log.push(&big);
    assert_eq!(log.oldest_seq(), Some(2));
    assert_eq!(log.read(&tenant("acme"), 1, 1).events.len(), 10);
    log.push(&[event("acme", 3, 0)]);
    assert_eq!(log.len(), 1, "seq 2 goes whole once it is not the newest");
}

#[test]
fn memory_stays_bounded_over_many_tenants() {
    let log = EventLog::new(50);
    for seq in 1..=1_000u64 {
        log.push(&[event(&format!("t{}", seq % 97), seq, 0)]);
    }
    assert_eq!(log.len(), 50);
    assert_eq!(log.oldest_seq(), Some(951));
}

#[test]
fn an_event_older_than_the_newest_is_not_kept() {
    let log = EventLog::new(100);
    log.push(&[event("acme", 5, 0)]);
    log.push(&[event("acme", 4, 0)]);
    assert_eq!(log.len(), 1);
    assert_eq!(log.latest_seq(), 5);
}

#[test]
fn concurrent_readers_see_whole_seqs_while_a_writer_pushes() {
    let log = Arc::new(EventLog::new(64));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for seq in 1..=2_000u64 {
                let evs: Vec<_> = (0..3).map(|i| event("acme", seq, i)).collect();
                log.push(&evs);
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    let page = log.read(&tenant("acme"), 0, 5);
                    for chunk in page.events.chunks(3) {
                        let seqs: Vec<_> = chunk.iter().map(seq_index).collect();
                        let s = seqs[0].0;
                        assert_eq!(seqs, vec![(s, 0), (s, 1), (s, 2)]);
                    }
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
}

/// The SSE body of the first `n` items of the stream, as text.
async fn sse_text(log: Arc<EventLog>, t: &str, after: u64, n: usize) -> String {
    let stream = sse(log, tenant(t), after).take(n);
    let response = axum::response::Sse::new(stream).into_response();
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(response.into_body(), 1 << 20),
    )
    .await
    .expect("the stream produced the events in time")
    .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// (id, data) of each SSE message.
fn messages(text: &str) -> Vec<(Option<u64>, Option<Value>)> {
    text.split("\n\n")
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let mut id = None;
            let mut data = None;
            for line in m.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            (id, data)
        })
        .collect()
}

#[tokio::test]
async fn the_stream_resumes_from_last_event_id_without_skipping_part_of_a_seq() {
    let log = Arc::new(EventLog::new(1_000));
    log.push(&events("acme", &[1, 1, 3, 1]));
    log.push(&[event("globex", 5, 0)]);

    // A client that got four messages and dropped: in the middle of seq 3.
    let first = messages(&sse_text(log.clone(), "acme", 0, 4).await);
    let got: Vec<_> = first
        .iter()
        .map(|(id, d)| (*id, seq_index(d.as_ref().unwrap())))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(1), (1, 0)),
            (Some(2), (2, 0)),
            (None, (3, 0)),
            (None, (3, 1))
        ]
    );
    // Its Last-Event-ID is the last id it saw: 2. Resuming from there repeats seq 3 whole.
    let last_id = first.iter().rev().find_map(|(id, _)| *id).unwrap();
    let resumed = messages(&sse_text(log.clone(), "acme", last_id, 4).await);
    let got: Vec<_> = resumed
        .iter()
        .map(|(id, d)| (*id, seq_index(d.as_ref().unwrap())))
        .collect();
    assert_eq!(
        got,
        vec![
            (None, (3, 0)),
            (None, (3, 1)),
            (Some(3), (3, 2)),
            (Some(4), (4, 0))
        ]
    );
}

#[tokio::test]
async fn the_stream_sends_events_pushed_after_it_started() {
    let log = Arc::new(EventLog::new(1_000));
    log.push(&[event("acme", 1, 0)]);
    let reader = tokio::spawn(sse_text(log.clone(), "acme", 1, 2));
    tokio::task::yield_now().await;
    // Another tenant's events wake the stream but are not sent to it.
    log.push(&[event("globex", 2, 0)]);
    log.push(&[event("acme", 3, 0)]);
    log.push(&[event("acme", 4, 0), event("acme", 4, 1)]);
    let text = reader.await.unwrap();
    let got: Vec<_> = messages(&text)
        .iter()
        .map(|(id, d)| (*id, seq_index(d.as_ref().unwrap())))
        .collect();
    assert_eq!(got, vec![(Some(3), (3, 0)), (None, (4, 0))]);
    assert!(text.contains("event: fulfilled"), "{text}");
}

#[tokio::test]
async fn a_stream_behind_the_buffer_says_what_it_missed_then_goes_on() {
    let log = Arc::new(EventLog::new(2));
    log.push(&events("acme", &[1, 1, 1, 1]));
    let text = sse_text(log.clone(), "acme", 0, 3).await;
    assert!(
        text.starts_with(": events after seq 0 up to seq 2 are no longer held"),
        "{text}"
    );
    let got: Vec<_> = messages(&text)
        .iter()
        .filter_map(|(id, d)| d.as_ref().map(|d| (*id, seq_index(d))))
        .collect();
    assert_eq!(got, vec![(Some(3), (3, 0)), (Some(4), (4, 0))]);
}
