//! The binary record body (record version 2): a [`LogEntry`] in a compact, explicit layout that
//! decodes without serde's buffering of internally tagged enums. `docs/wal_format.md` has the
//! tables. Decoding is panic-free on any input, checks every id and enum tag as the engine's own
//! constructors do, and allocates only in proportion to the bytes it is given.
//!
//! The stock and reservation commands (the log's bulk) have a native layout each. The rare
//! configuration commands (`create_tenant`, `put_location`, `put_channel`, `put_bundle`,
//! `put_rules`) are stored as their JSON inside the binary body: a rule document is a tree of
//! tagged, optional and flattened fields that gains nothing from a hand-made layout.
//!
//! It lives in the engine, not in the log's crate, because the engine hashes a command's layout
//! ([`encode_command`]) for the fingerprint of an idempotency key.

use crate::{
    Bucket, ChannelId, Command, CommitLine, FillPolicy, FulfilLine, LineRequest, LocationId,
    LogEntry, Request, ReservationId, Seq, Sku, TenantId,
};
use rust_decimal::Decimal;

/// Why a binary body does not decode: what was being read, and the byte offset in the body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} at body offset {at}: {reason}")]
pub struct BodyError {
    pub what: &'static str,
    pub at: usize,
    pub reason: String,
}

/// Operation codes of the body's command byte.
mod op {
    pub const JSON: u8 = 0;
    pub const RECEIVE: u8 = 1;
    pub const EXPECT: u8 = 2;
    pub const ADJUST: u8 = 3;
    pub const SET: u8 = 4;
    pub const MOVE: u8 = 5;
    pub const TRANSFER: u8 = 6;
    pub const RESERVE: u8 = 7;
    pub const EXTEND: u8 = 8;
    pub const COMMIT: u8 = 9;
    pub const RELEASE: u8 = 10;
    pub const CANCEL: u8 = 11;
    pub const FULFIL: u8 = 12;
    pub const RETURN: u8 = 13;
    pub const TICK: u8 = 14;
}

/// Appends the binary body of `entry` to `out`. The frame carries the seq; the body does not.
pub fn encode(entry: &LogEntry, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    let r = &entry.request;
    w.u64(entry.now);
    w.str(r.tenant.as_str());
    w.str(&r.key_id);
    w.opt(r.idempotency_key.as_deref(), |w, k| w.str(k));
    encode_command(&r.command, w.0);
}

/// Appends the binary layout of `command` alone (the body after its header). It is also what
/// an idempotency key's fingerprint hashes ([`crate::front::fingerprint`]): two commands with
/// the same bytes are the same command, as [`decode`] reading them back proves.
pub fn encode_command(command: &Command, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    match command {
        Command::Receive {
            sku,
            location,
            quantity,
            unit_cost,
            reason,
        } => {
            w.u8(op::RECEIVE);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.i64(*quantity);
            // As its text, which keeps the scale (`12.50`), like the API and the JSON body.
            w.opt(unit_cost.as_ref(), |w, c| w.str(&c.to_string()));
            w.str(reason);
        }
        Command::Expect {
            sku,
            location,
            quantity,
            expected_at,
            reason,
        } => {
            w.u8(op::EXPECT);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.i64(*quantity);
            w.opt(*expected_at, Writer::u64);
            w.str(reason);
        }
        Command::Adjust {
            sku,
            location,
            delta,
            reason,
        } => {
            w.u8(op::ADJUST);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.i64(*delta);
            w.str(reason);
        }
        Command::Set {
            sku,
            location,
            quantity,
            compare_quantity,
            reason,
        } => {
            w.u8(op::SET);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.i64(*quantity);
            w.opt(*compare_quantity, Writer::i64);
            w.str(reason);
        }
        Command::Move {
            sku,
            location,
            from,
            to,
            quantity,
            reason,
        } => {
            w.u8(op::MOVE);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.u8(bucket_code(*from));
            w.u8(bucket_code(*to));
            w.i64(*quantity);
            w.str(reason);
        }
        Command::Transfer {
            sku,
            location,
            to_location,
            quantity,
            expected_at,
            reason,
        } => {
            w.u8(op::TRANSFER);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.str(to_location.as_str());
            w.i64(*quantity);
            w.opt(*expected_at, Writer::u64);
            w.str(reason);
        }
        Command::Reserve {
            channel,
            lines,
            ttl_ms,
            order_ref,
            ship_to_region,
            fill,
        } => {
            w.u8(op::RESERVE);
            w.str(channel.as_str());
            w.len(lines.len());
            for l in lines {
                w.str(l.sku.as_str());
                w.i64(l.quantity);
            }
            w.opt(*ttl_ms, Writer::u64);
            w.opt(order_ref.as_deref(), |w, s| w.str(s));
            w.opt(ship_to_region.as_deref(), |w, s| w.str(s));
            match fill {
                FillPolicy::AllOrNothing => w.u8(0),
                FillPolicy::Partial => w.u8(1),
                FillPolicy::Split { max_locations } => {
                    w.u8(2);
                    w.0.extend_from_slice(&max_locations.to_le_bytes());
                }
            }
        }
        Command::Extend { id, ttl_ms } => {
            w.u8(op::EXTEND);
            w.u64(id.0);
            w.u64(*ttl_ms);
        }
        Command::Commit { id, lines } => {
            w.u8(op::COMMIT);
            w.u64(id.0);
            w.opt(lines.as_ref(), |w, lines| {
                w.len(lines.len());
                for l in lines {
                    w.str(l.sku.as_str());
                    w.opt(l.quantity, Writer::i64);
                }
            });
        }
        Command::Release { id } => {
            w.u8(op::RELEASE);
            w.u64(id.0);
        }
        Command::Cancel { id } => {
            w.u8(op::CANCEL);
            w.u64(id.0);
        }
        Command::Fulfil { id, lines } => {
            w.u8(op::FULFIL);
            w.u64(id.0);
            w.len(lines.len());
            for l in lines {
                w.str(l.sku.as_str());
                w.str(l.location.as_str());
                w.i64(l.quantity);
                w.i64(l.missing);
            }
        }
        Command::Return {
            id,
            sku,
            location,
            quantity,
            damaged,
            reason,
        } => {
            w.u8(op::RETURN);
            w.u64(id.0);
            w.str(sku.as_str());
            w.str(location.as_str());
            w.i64(*quantity);
            w.u8(u8::from(*damaged));
            w.str(reason);
        }
        Command::Tick => w.u8(op::TICK),
        other => {
            w.u8(op::JSON);
            let json = serde_json::to_string(other).expect("a Command always serializes to JSON");
            w.str(&json);
        }
    }
}

/// Decodes a binary body into the entry with sequence number `seq` (the frame's).
pub fn decode(seq: Seq, body: &[u8]) -> Result<LogEntry, BodyError> {
    decode_with(seq, body, &mut Recent::default())
}

/// The tenant, key and channel of the last entry decoded. A log's entries mostly repeat them,
/// and a repeat is taken as a copy of the value already checked: the same bytes give the same
/// value, so the result is exactly [`decode`]'s.
#[derive(Debug, Default)]
pub struct Recent {
    tenant: Option<TenantId>,
    key_id: Option<compact_str::CompactString>,
    channel: Option<ChannelId>,
}

/// [`decode`], taking repeated names from (and keeping new ones in) `recent`.
pub fn decode_with(seq: Seq, body: &[u8], recent: &mut Recent) -> Result<LogEntry, BodyError> {
    let mut r = Reader { bytes: body, at: 0 };
    let now = r.u64("time")?;
    let tenant = r.repeated_id(
        "tenant",
        &mut recent.tenant,
        TenantId::new,
        TenantId::as_str,
    )?;
    let key_id = r.repeated_id(
        "key id",
        &mut recent.key_id,
        |k| Ok::<_, std::convert::Infallible>(k.into()),
        compact_str::CompactString::as_str,
    )?;
    let idempotency_key = r.opt("idempotency key", |r| r.string("idempotency key"))?;
    let command = match r.u8("operation")? {
        op::RECEIVE => Command::Receive {
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            quantity: r.i64("quantity")?,
            unit_cost: r.opt("unit cost", |r| {
                let at = r.at;
                let text = r.str("unit cost")?;
                text.parse::<Decimal>()
                    .map_err(|e| r.fail_at("unit cost", at, e.to_string()))
            })?,
            reason: r.string("reason")?,
        },
        op::EXPECT => Command::Expect {
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            quantity: r.i64("quantity")?,
            expected_at: r.opt("expected at", |r| r.u64("expected at"))?,
            reason: r.string("reason")?,
        },
        op::ADJUST => Command::Adjust {
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            delta: r.i64("delta")?,
            reason: r.string("reason")?,
        },
        op::SET => Command::Set {
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            quantity: r.i64("quantity")?,
            compare_quantity: r.opt("compare quantity", |r| r.i64("compare quantity"))?,
            reason: r.string("reason")?,
        },
        op::MOVE => Command::Move {
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            from: r.bucket("from")?,
            to: r.bucket("to")?,
            quantity: r.i64("quantity")?,
            reason: r.string("reason")?,
        },
        op::TRANSFER => Command::Transfer {
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            to_location: r.id("to location", LocationId::new)?,
            quantity: r.i64("quantity")?,
            expected_at: r.opt("expected at", |r| r.u64("expected at"))?,
            reason: r.string("reason")?,
        },
        op::RESERVE => {
            let channel = r.repeated_id(
                "channel",
                &mut recent.channel,
                ChannelId::new,
                ChannelId::as_str,
            )?;
            let lines = r.list("lines", |r| {
                Ok(LineRequest {
                    sku: r.id("sku", Sku::new)?,
                    quantity: r.i64("quantity")?,
                })
            })?;
            Command::Reserve {
                channel,
                lines,
                ttl_ms: r.opt("ttl", |r| r.u64("ttl"))?,
                order_ref: r.opt("order ref", |r| r.string("order ref"))?,
                ship_to_region: r.opt("ship-to region", |r| r.string("ship-to region"))?,
                fill: match r.u8("fill policy")? {
                    0 => FillPolicy::AllOrNothing,
                    1 => FillPolicy::Partial,
                    2 => FillPolicy::Split {
                        max_locations: u16::from_le_bytes(r.array("max locations")?),
                    },
                    t => return Err(r.fail("fill policy", format!("unknown tag {t}"))),
                },
            }
        }
        op::EXTEND => Command::Extend {
            id: ReservationId(r.u64("reservation id")?),
            ttl_ms: r.u64("ttl")?,
        },
        op::COMMIT => Command::Commit {
            id: ReservationId(r.u64("reservation id")?),
            lines: r.opt("commit lines", |r| {
                r.list("commit lines", |r| {
                    Ok(CommitLine {
                        sku: r.id("sku", Sku::new)?,
                        quantity: r.opt("quantity", |r| r.i64("quantity"))?,
                    })
                })
            })?,
        },
        op::RELEASE => Command::Release {
            id: ReservationId(r.u64("reservation id")?),
        },
        op::CANCEL => Command::Cancel {
            id: ReservationId(r.u64("reservation id")?),
        },
        op::FULFIL => Command::Fulfil {
            id: ReservationId(r.u64("reservation id")?),
            lines: r.list("fulfil lines", |r| {
                Ok(FulfilLine {
                    sku: r.id("sku", Sku::new)?,
                    location: r.id("location", LocationId::new)?,
                    quantity: r.i64("quantity")?,
                    missing: r.i64("missing")?,
                })
            })?,
        },
        op::RETURN => Command::Return {
            id: ReservationId(r.u64("reservation id")?),
            sku: r.id("sku", Sku::new)?,
            location: r.id("location", LocationId::new)?,
            quantity: r.i64("quantity")?,
            damaged: match r.u8("damaged")? {
                0 => false,
                1 => true,
                b => return Err(r.fail("damaged", format!("{b} is not a boolean"))),
            },
            reason: r.string("reason")?,
        },
        op::TICK => Command::Tick,
        op::JSON => {
            let at = r.at;
            let json = r.str("command JSON")?;
            serde_json::from_str::<Command>(json)
                .map_err(|e| r.fail_at("command JSON", at, e.to_string()))?
        }
        t => return Err(r.fail("operation", format!("unknown operation code {t}"))),
    };
    if r.at != body.len() {
        return Err(r.fail(
            "end",
            format!("{} bytes after the entry", body.len() - r.at),
        ));
    }
    Ok(LogEntry {
        seq,
        now,
        request: Request {
            tenant,
            key_id,
            idempotency_key,
            command,
        },
    })
}

fn bucket_code(b: Bucket) -> u8 {
    match b {
        Bucket::Available => 0,
        Bucket::Damaged => 1,
        Bucket::QualityControl => 2,
        Bucket::SafetyStock => 3,
    }
}

pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A length or count: unsigned LEB128 (one byte below 128).
    fn len(&mut self, n: usize) {
        self.var(n as u64);
    }
    /// An unsigned number in LEB128: as many bytes as its significant bits need, 7 per byte.
    pub(crate) fn var(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }
    /// A signed number, zigzag-mapped (0, -1, 1, -2, ...) to [`Writer::var`]: small
    /// magnitudes of either sign take one byte.
    pub(crate) fn ivar(&mut self, v: i64) {
        self.var(((v << 1) ^ (v >> 63)) as u64);
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(crate) fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                put(self, v);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn fail_at(&self, what: &'static str, at: usize, reason: String) -> BodyError {
        BodyError { what, at, reason }
    }
    fn fail(&self, what: &'static str, reason: String) -> BodyError {
        self.fail_at(what, self.at, reason)
    }
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], BodyError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.fail(
                what,
                format!("needs {n} bytes, {} left", self.bytes.len() - self.at),
            ));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BodyError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(what, N)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, BodyError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, BodyError> {
        self.array(what).map(u64::from_le_bytes)
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, BodyError> {
        self.array(what).map(i64::from_le_bytes)
    }
    /// A LEB128 length. It can never exceed the bytes left, since every counted item takes at
    /// least one byte: so no hostile count becomes a large allocation.
    fn len(&mut self, what: &'static str) -> Result<usize, BodyError> {
        // The usual case, one byte: a length below 128 that fits.
        if let Some(&b) = self.bytes.get(self.at) {
            if b < 0x80 && usize::from(b) < self.bytes.len() - self.at {
                self.at += 1;
                return Ok(usize::from(b));
            }
        }
        let start = self.at;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                let left = (self.bytes.len() - self.at) as u64;
                if n > left {
                    return Err(self.fail_at(
                        what,
                        start,
                        format!("length {n} exceeds the {left} bytes left"),
                    ));
                }
                return Ok(n as usize);
            }
        }
        Err(self.fail_at(what, start, "length has more than 64 bits".into()))
    }
    /// A length-prefixed byte string, not yet checked to be UTF-8 (see [`Reader::utf8`]).
    fn raw(&mut self, what: &'static str) -> Result<&'a [u8], BodyError> {
        let n = self.len(what)?;
        self.take(what, n)
    }
    /// `bytes`, just read with [`Reader::raw`], as text.
    fn utf8(&self, what: &'static str, bytes: &'a [u8]) -> Result<&'a str, BodyError> {
        std::str::from_utf8(bytes)
            .map_err(|e| self.fail_at(what, self.at - bytes.len(), e.to_string()))
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, BodyError> {
        let bytes = self.raw(what)?;
        self.utf8(what, bytes)
    }
    fn string(&mut self, what: &'static str) -> Result<String, BodyError> {
        self.str(what).map(str::to_string)
    }
    fn id<T, E: std::fmt::Display>(
        &mut self,
        what: &'static str,
        new: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, BodyError> {
        let at = self.at;
        let s = self.str(what)?;
        new(s).map_err(|e| self.fail_at(what, at, e.to_string()))
    }
    /// As [`Reader::id`], but a value equal to `last` is cloned instead of checked again; a
    /// new one replaces `last`.
    fn repeated_id<T: Clone, E: std::fmt::Display>(
        &mut self,
        what: &'static str,
        last: &mut Option<T>,
        new: impl FnOnce(&str) -> Result<T, E>,
        as_str: impl Fn(&T) -> &str,
    ) -> Result<T, BodyError> {
        let at = self.at;
        let bytes = self.raw(what)?;
        if let Some(v) = last.as_ref().filter(|v| as_str(v).as_bytes() == bytes) {
            return Ok(v.clone());
        }
        let s = self.utf8(what, bytes)?;
        let v = new(s).map_err(|e| self.fail_at(what, at, e.to_string()))?;
        *last = Some(v.clone());
        Ok(v)
    }
    fn opt<T>(
        &mut self,
        what: &'static str,
        get: impl FnOnce(&mut Self) -> Result<T, BodyError>,
    ) -> Result<Option<T>, BodyError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => get(self).map(Some),
            t => Err(self.fail(what, format!("option tag {t} is neither 0 nor 1"))),
        }
    }
    fn list<T>(
        &mut self,
        what: &'static str,
        mut get: impl FnMut(&mut Self) -> Result<T, BodyError>,
    ) -> Result<Vec<T>, BodyError> {
        let n = self.len(what)?;
        let mut v = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            v.push(get(self)?);
        }
        Ok(v)
    }
    fn bucket(&mut self, what: &'static str) -> Result<Bucket, BodyError> {
        Ok(match self.u8(what)? {
            0 => Bucket::Available,
            1 => Bucket::Damaged,
            2 => Bucket::QualityControl,
            3 => Bucket::SafetyStock,
            t => return Err(self.fail(what, format!("unknown quantity code {t}"))),
        })
    }
}
