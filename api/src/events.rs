//! The event log of the API: cursor reads (`GET /v1/events`) and the server-sent-event stream
//! (`GET /v1/events/stream`).
//!
//! The engine's events are kept in memory, bounded, per tenant: every tenant has its own queue
//! (so a read is a binary search and a scan of that tenant's events only), and one global
//! queue in sequence order says which tenant's event is the oldest, so the oldest events are
//! dropped first whatever their tenant. Events are dropped a whole sequence number at a time:
//! a page never holds part of a command's events, so `next` (the last sequence number
//! returned) is always a safe cursor.
//!
//! The durable history is the write-ahead log; this buffer is only what live consumers read.
//! A consumer that falls further behind than the buffer holds is told so
//! ([`EventPage::missed`], [`EventLog::oldest_seq`]).

use axum::response::sse::Event as SseEvent;
use depot_engine::{Event, ReservationId, Seq, TenantId};
use futures_util::Stream;
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

/// Sequence numbers' worth of events one step of the SSE stream reads at a time.
const SSE_PAGE_SEQS: usize = 256;

/// One page of a tenant's events.
#[derive(Clone, Debug, PartialEq)]
pub struct EventPage {
    /// Rendered by [`event_json`], oldest first, whole sequence numbers only.
    pub events: Vec<Value>,
    /// The cursor for the next read: the last sequence number returned, or `after` when
    /// nothing newer is held.
    pub next: u64,
    /// True when events newer than `after` were already dropped from the buffer: the reader
    /// missed some (it should resynchronise from the stock endpoints or the log).
    pub missed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// By tenant, hashed with FxHash: every event kept looks its tenant up here, and SipHash of
    /// the id was about 160 instructions of each (tenant ids come from the master key's
    /// tenants, not from whoever calls).
    by_tenant: FxHashMap<TenantId, VecDeque<Arc<Event>>>,
    /// Every held event's (tenant, seq), in sequence order: what to drop next.
    order: VecDeque<(TenantId, Seq)>,
    /// The highest sequence number dropped so far (0: none).
    dropped_through: Seq,
    /// The highest sequence number pushed so far.
    latest: Seq,
}

impl Inner {
    /// Keeps `e` as the newest event, unless it is older than the newest kept (then it is
    /// dropped with an error log: placing it would break every cursor already handed out).
    fn keep(&mut self, e: Event) {
        if e.seq < self.latest {
            tracing::error!(
                seq = e.seq,
                latest = self.latest,
                "event out of sequence order; not kept"
            );
            return;
        }
        self.latest = e.seq;
        self.order.push_back((e.tenant.clone(), e.seq));
        match self.by_tenant.get_mut(&e.tenant) {
            Some(q) => q.push_back(Arc::new(e)),
            None => {
                self.by_tenant
                    .insert(e.tenant.clone(), VecDeque::from([Arc::new(e)]));
            }
        }
    }
}

/// The bounded, thread-safe buffer of recent events. See the module docs.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    inner: Mutex<Inner>,
    latest: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(1_000_000)
    }
}

impl EventLog {
    /// A buffer holding about `capacity_events` events (at least one whole sequence number:
    /// the newest command's events are never split to fit).
    pub fn new(capacity_events: usize) -> Self {
        EventLog {
            capacity: capacity_events.max(1),
            inner: Mutex::new(Inner::default()),
            latest: watch::channel(0).0,
        }
    }

    /// Appends events. They must come in sequence order (several per sequence number, in
    /// index order); an event older than the newest one pushed is dropped with an error log,
    /// since placing it would break every cursor already handed out.
    pub fn push(&self, events: &[Event]) {
        self.push_all([events]);
    }

    /// [`EventLog::push`] of several lists in order (the answers of one batch): one lock and
    /// one wake-up of the streams for all of them. A list given by value (`Vec<Event>`) is
    /// kept as it is; one given by reference is copied.
    pub fn push_all<'a, L>(&self, lists: impl IntoIterator<Item = L>)
    where
        L: Into<Cow<'a, [Event]>>,
    {
        let mut lists = lists
            .into_iter()
            .map(Into::into)
            .filter(|l| !l.is_empty())
            .peekable();
        if lists.peek().is_none() {
            return;
        }
        let latest = {
            let mut inner = self.lock();
            for list in lists {
                match list {
                    Cow::Borrowed(list) => {
                        for e in list {
                            inner.keep(e.clone());
                        }
                    }
                    Cow::Owned(list) => {
                        for e in list {
                            inner.keep(e);
                        }
                    }
                }
            }
            self.drop_oldest(&mut inner);
            inner.latest
        };
        self.latest.send_replace(latest);
    }

    /// Drops the oldest whole sequence numbers while over capacity, never the newest one.
    fn drop_oldest(&self, inner: &mut Inner) {
        while inner.order.len() > self.capacity {
            let Some(&(_, seq)) = inner.order.front() else {
                return;
            };
            if seq >= inner.latest {
                return;
            }
            while inner.order.front().is_some_and(|(_, s)| *s == seq) {
                let Some((tenant, _)) = inner.order.pop_front() else {
                    break;
                };
                if let Some(q) = inner.by_tenant.get_mut(&tenant) {
                    q.pop_front();
                    if q.is_empty() {
                        inner.by_tenant.remove(&tenant);
                    }
                }
            }
            inner.dropped_through = seq;
        }
    }

    /// The events of `tenant` with a sequence number above `after`, oldest first: those of at
    /// most `limit` sequence numbers, never part of one. See [`EventPage`].
    pub fn read(&self, tenant: &TenantId, after: u64, limit: usize) -> EventPage {
        self.read_page(tenant, after, limit).0
    }

    /// [`EventLog::read`], and the highest sequence number dropped when it read.
    fn read_page(&self, tenant: &TenantId, after: u64, limit: usize) -> (EventPage, Seq) {
        let (held, dropped_through) = {
            let inner = self.lock();
            let held = match inner.by_tenant.get(tenant) {
                Some(q) => take_seqs(q, after, limit),
                None => Vec::new(),
            };
            (held, inner.dropped_through)
        };
        // Rendering happens outside the lock: writers never wait for a reader's JSON.
        let page = EventPage {
            next: held.last().map_or(after, |e| e.seq),
            events: held.iter().map(|e| event_json(e)).collect(),
            missed: dropped_through > after,
        };
        (page, dropped_through)
    }

    /// The oldest sequence number still held (of any tenant), if any.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.lock().order.front().map(|&(_, s)| s)
    }

    /// The newest sequence number pushed (0 before any).
    pub fn latest_seq(&self) -> u64 {
        self.lock().latest
    }

    /// Events held, over all tenants.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches the newest sequence number pushed: changes on every push.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under this lock leaves the queues consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The events of `q` after `after`, of at most `limit` whole sequence numbers.
fn take_seqs(q: &VecDeque<Arc<Event>>, after: u64, limit: usize) -> Vec<Arc<Event>> {
    let start = q.partition_point(|e| e.seq <= after);
    let mut out = Vec::new();
    let mut seqs = 0;
    for e in q.range(start..) {
        if out.last().is_none_or(|last: &Arc<Event>| last.seq != e.seq) {
            if seqs == limit {
                break;
            }
            seqs += 1;
        }
        out.push(e.clone());
    }
    out
}

/// An event as API.md shows it: `{seq, index, at, kind, key_id, ...the kind's fields}`, with
/// times as RFC 3339 UTC and reservation ids as `res_<n>`; the tenant is left out (a reader
/// only ever sees its own).
pub fn event_json(e: &Event) -> Value {
    let mut v = match serde_json::to_value(e) {
        Ok(v) => v,
        // Serialising plain data into a `Value` cannot fail; say so rather than panic.
        Err(err) => return serde_json::json!({ "seq": e.seq, "error": err.to_string() }),
    };
    if let Some(m) = v.as_object_mut() {
        m.remove("tenant");
        m.insert("at".into(), Value::String(rfc3339(e.at)));
        if let Some(id) = m.get("id").and_then(Value::as_u64) {
            m.insert("id".into(), Value::String(ReservationId(id).to_string()));
        }
        if let Some(t) = m.get("expires_at").and_then(Value::as_u64) {
            m.insert("expires_at".into(), Value::String(rfc3339(t)));
        }
        let level = m.get_mut("level").and_then(Value::as_object_mut);
        if let Some(level) = level {
            if let Some(t) = level.get("incoming_expected_at").and_then(Value::as_u64) {
                level.insert("incoming_expected_at".into(), Value::String(rfc3339(t)));
            }
        }
    }
    v
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
/// Times past the year 9999 (which RFC 3339 cannot write) show as its last millisecond.
pub fn rfc3339(ms: u64) -> String {
    with_rfc3339(ms, str::to_owned)
}

/// `f` of [`rfc3339`]'s text, without allocating it.
pub fn with_rfc3339<R>(ms: u64, f: impl FnOnce(&str) -> R) -> R {
    with_rfc3339_bytes(ms, |text| {
        f(std::str::from_utf8(text).unwrap_or("1970-01-01T00:00:00.000Z"))
    })
}

/// [`with_rfc3339`] with the text as bytes (ASCII), for a writer of bytes: no UTF-8 check.
pub fn with_rfc3339_bytes<R>(ms: u64, f: impl FnOnce(&[u8]) -> R) -> R {
    f(&recent_rfc3339(ms.min(LAST_MS_OF_9999)))
}

/// The last millisecond of the year 9999: later times are written as it.
const LAST_MS_OF_9999: u64 = 253_402_300_799_999;

/// [`format_rfc3339`], remembering the last two times each thread wrote: the reservations of
/// one `/v1/batch` share their creation and their expiry time, written in turn for each.
fn recent_rfc3339(ms: u64) -> [u8; 24] {
    thread_local! {
        static RECENT: std::cell::Cell<[(u64, [u8; 24]); 2]> =
            const { std::cell::Cell::new([(u64::MAX, [0; 24]); 2]) };
    }
    let [a, b] = RECENT.get();
    if a.0 == ms {
        return a.1;
    }
    if b.0 == ms {
        return b.1;
    }
    let text = format_rfc3339(ms);
    RECENT.set([(ms, text), a]);
    text
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of `ms` (at most the last millisecond of 9999). Each thread
/// remembers the date of the last day it formatted with humantime: another time of that day
/// only needs its time of day written (single requests each have new times, nearly always of
/// the same day; humantime's whole formatting cost about 950 instructions a time).
fn format_rfc3339(ms: u64) -> [u8; 24] {
    const DAY_MS: u64 = 86_400_000;
    thread_local! {
        static DAY: std::cell::Cell<(u64, [u8; 11])> =
            const { std::cell::Cell::new((u64::MAX, [0; 11])) };
    }
    let mut text = [0u8; 24];
    let day = ms / DAY_MS;
    let (known, date) = DAY.get();
    if known == day {
        // `YYYY-MM-DDT` of the day, then the time of day.
        text[..11].copy_from_slice(&date);
        let t = ms % DAY_MS;
        let digits = |out: &mut [u8], mut v: u64| {
            for b in out.iter_mut().rev() {
                *b = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        digits(&mut text[11..13], t / 3_600_000);
        text[13] = b':';
        digits(&mut text[14..16], t / 60_000 % 60);
        text[16] = b':';
        digits(&mut text[17..19], t / 1_000 % 60);
        text[19] = b'.';
        digits(&mut text[20..23], t % 1_000);
        text[23] = b'Z';
    } else {
        let t = UNIX_EPOCH + Duration::from_millis(ms);
        let mut w = &mut text[..];
        use std::io::Write as _;
        // Always 24 bytes up to the year 9999: nothing is cut off and nothing is left over.
        let _ = write!(w, "{}", humantime::format_rfc3339_millis(t));
        let mut date = [0u8; 11];
        date.copy_from_slice(&text[..11]);
        DAY.set((day, date));
    }
    text
}

/// The server-sent events of `tenant` after `after`: everything held, then new events as they
/// are pushed. Each SSE event is one depot event (`event:` its kind, `data:` its JSON); the
/// `id:` field (the sequence number) is set on the last event of each sequence number only,
/// so a client resuming with `Last-Event-ID` never skips the rest of a half-received command.
/// When events were dropped before the stream could send them, a comment says from where.
/// The stream never ends by itself (it holds the log); keep-alive and ending it on shutdown
/// are the caller's.
pub fn sse(
    log: Arc<EventLog>,
    tenant: TenantId,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let state = SseState {
        // Subscribed before the first read: a push after that read still wakes the stream.
        rx: log.subscribe(),
        log,
        tenant,
        cursor: after,
        pending: VecDeque::new(),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            let (page, dropped_through) = st.log.read_page(&st.tenant, st.cursor, SSE_PAGE_SEQS);
            let mut next = page.next;
            if page.missed {
                // Everything up to `dropped_through` is gone for every tenant: say so once and
                // carry on after it.
                st.pending.push_back(SseEvent::default().comment(format!(
                    "events after seq {} up to seq {dropped_through} are no longer held",
                    st.cursor
                )));
                next = next.max(dropped_through);
            }
            st.pending.extend(sse_events(&page.events));
            if st.pending.is_empty() {
                // Nothing new: wait for the next push (or the end of the log).
                st.rx.changed().await.ok()?;
            }
            st.cursor = next;
        }
    })
}

struct SseState {
    log: Arc<EventLog>,
    rx: watch::Receiver<u64>,
    tenant: TenantId,
    cursor: u64,
    pending: VecDeque<SseEvent>,
}

/// Rendered events as SSE events; `id:` on the last event of each sequence number.
fn sse_events(events: &[Value]) -> Vec<SseEvent> {
    let seq = |v: &Value| v.get("seq").and_then(Value::as_u64);
    events
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or("event");
            let ev = SseEvent::default().event(kind).data(v.to_string());
            let last_of_seq = events.get(i + 1).is_none_or(|n| seq(n) != seq(v));
            match seq(v) {
                Some(s) if last_of_seq => ev.id(s.to_string()),
                _ => ev,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What humantime writes for `ms`, the reference the shortcuts must match.
    fn reference(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    proptest::proptest! {
        /// Times written in any order (repeats, alternating pairs, other days, the same day)
        /// read as humantime writes them: the remembered times and dates never leak into
        /// another time's text.
        #[test]
        fn times_are_written_as_humantime_writes_them(
            base in 0..=LAST_MS_OF_9999,
            steps in proptest::collection::vec((0u8..4, 0u64..200_000_000), 1..40),
        ) {
            let mut last = [base, base];
            for (kind, d) in steps {
                let ms = match kind {
                    0 => last[0],
                    1 => last[1],
                    2 => last[0].saturating_add(d).min(LAST_MS_OF_9999),
                    _ => d.wrapping_mul(1_267_001) % (LAST_MS_OF_9999 + 1),
                };
                proptest::prop_assert_eq!(rfc3339(ms), reference(ms));
                last = [ms, last[0]];
            }
        }
    }

    #[test]
    fn times_past_9999_show_its_last_millisecond() {
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
