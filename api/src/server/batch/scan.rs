//! The shape nearly every `/v1/batch` has, read by hand.
//!
//! A batch of reservations is a list of small objects whose keys and values are plain strings
//! and integers. serde_json reads them through its visitors, one call per key and value, and
//! that was about 4,300 instructions per operation, a quarter of the server's work per
//! batched reservation. [`scan`] reads the same bytes in one loop for the shape of nearly every
//! batch: the batch's `operations` and nothing else; each operation's `method`, `path`,
//! `idempotency_key` and `body`, in any order but with the body after the method and the path;
//! bodies that are `null` or a reservation's; strings without escapes; integers without
//! fraction or exponent. Anything else (an escape, a float, a duplicate or unknown key, another
//! operation's body, a field of the wrong type, an error of any kind) gives `None`, and the
//! batch is read by serde as before ([`super::fast`], then the general reading). What [`scan`]
//! reads, it reads as they do: the tests compare it with the general reading.

use super::{FastBatch, FastOp, OpBody};
use crate::server::dto::{FillDto, LineDto, ReserveBody};
use crate::server::ops::Route;
use std::borrow::Cow;

/// The batch in `text`, with room for `capacity` operations, or `None` when it is not of the
/// shape this reader takes.
pub fn scan(text: &str, capacity: usize) -> Option<FastBatch<'_>> {
    let mut s = Scanner::new(text);
    s.token(b'{')?;
    s.key(&BATCH)?;
    s.token(b'[')?;
    let mut operations = Vec::with_capacity(capacity);
    if !s.close(b']') {
        loop {
            operations.push(s.operation()?);
            if !s.more(b']')? {
                break;
            }
        }
    }
    s.token(b'}')?;
    s.at_end().then_some(FastBatch { operations })
}

/// A reservation's body alone (the body of a single `POST /v1/reservations`), read as [`scan`]
/// reads one in a batch, or `None` when it is not of that shape (then serde reads it, and
/// reports any error).
pub fn reserve_body(text: &str) -> Option<ReserveBody<'_>> {
    let mut s = Scanner::new(text);
    s.ws();
    let body = s.reserve()?;
    s.at_end().then_some(body)
}

/// The keys an object may have, each as the bytes it starts with where it stands (its name and
/// closing quote) in a 16-byte word with the rest masked off, its name's length, and what it
/// stands for.
struct Keys<T: Copy, const N: usize>([(u128, u128, usize, T); N]);

impl<T: Copy, const N: usize> Keys<T, N> {
    const fn new(keys: [(&str, T); N]) -> Self {
        let mut out = [(0, 0, 0, keys[0].1); N];
        let mut k = 0;
        while k < N {
            let name = keys[k].0.as_bytes();
            assert!(
                !name.is_empty() && name.len() < 16,
                "a key of 1 to 15 bytes"
            );
            let mut value = (b'"' as u128) << (8 * name.len());
            let mut i = 0;
            while i < name.len() {
                value |= (name[i] as u128) << (8 * i);
                i += 1;
            }
            let mask = match name.len() {
                15 => u128::MAX,
                n => (1 << (8 * (n + 1))) - 1,
            };
            out[k] = (value, mask, name.len(), keys[k].1);
            k += 1;
        }
        Keys(out)
    }
}

const BATCH: Keys<(), 1> = Keys::new([("operations", ())]);

#[derive(Clone, Copy)]
enum OpKey {
    Method,
    Path,
    IdempotencyKey,
    Body,
}

const OPERATION: Keys<OpKey, 4> = Keys::new([
    ("method", OpKey::Method),
    ("path", OpKey::Path),
    ("idempotency_key", OpKey::IdempotencyKey),
    ("body", OpKey::Body),
]);

#[derive(Clone, Copy)]
enum BodyKey {
    Channel,
    Lines,
    TtlSeconds,
    OrderRef,
    ShipToRegion,
    Fill,
    MaxLocations,
}

const RESERVATION: Keys<BodyKey, 7> = Keys::new([
    ("channel", BodyKey::Channel),
    ("lines", BodyKey::Lines),
    ("ttl_seconds", BodyKey::TtlSeconds),
    ("order_ref", BodyKey::OrderRef),
    ("ship_to_region", BodyKey::ShipToRegion),
    ("fill", BodyKey::Fill),
    ("max_locations", BodyKey::MaxLocations),
]);

#[derive(Clone, Copy)]
enum LineKey {
    Sku,
    Quantity,
}

const LINE: Keys<LineKey, 2> = Keys::new([("sku", LineKey::Sku), ("quantity", LineKey::Quantity)]);

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    /// True when nothing but whitespace is left.
    fn at_end(&mut self) -> bool {
        self.ws();
        self.at == self.bytes.len()
    }

    /// Skips JSON's whitespace (space, tab, line feed, carriage return).
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Whitespace, then `byte`. Compact JSON has `byte` right there: that is looked at first.
    #[inline]
    fn token(&mut self, byte: u8) -> Option<()> {
        if self.bytes.get(self.at) != Some(&byte) {
            self.ws();
            if self.bytes.get(self.at) != Some(&byte) {
                return None;
            }
        }
        self.at += 1;
        Some(())
    }

    /// Whitespace, then `byte` if it comes next (an empty object or list): taken, `true`.
    fn close(&mut self, byte: u8) -> bool {
        self.token(byte).is_some()
    }

    /// After a member of an object or a list: `,` (another follows: `true`) or `close` (the
    /// end: `false`).
    fn more(&mut self, close: u8) -> Option<bool> {
        if self.bytes.get(self.at).is_none_or(|&b| b <= b' ') {
            self.ws();
        }
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        match b {
            b',' => Some(true),
            b if b == close => Some(false),
            _ => None,
        }
    }

    /// A string without escapes or control characters, borrowed from the input.
    fn string(&mut self) -> Option<&'a str> {
        self.token(b'"')?;
        let start = self.at;
        let end = string_end(self.bytes, start);
        if self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        // Both ends are ASCII quotes, so the slice is on character boundaries.
        self.text.get(start..end)
    }

    /// One of `keys` and its colon; `None` for any other key, or one written with an escape.
    /// Compared where it stands, 16 bytes at once: a key is not scanned first.
    fn key<T: Copy, const N: usize>(&mut self, keys: &Keys<T, N>) -> Option<T> {
        self.token(b'"')?;
        let rest = &self.bytes[self.at..];
        // One load where 16 bytes are left (a slice's `copy_from_slice` called `memcpy`).
        let word = match rest.first_chunk::<16>() {
            Some(sixteen) => u128::from_le_bytes(*sixteen),
            None => {
                let mut word = [0u8; 16];
                word[..rest.len()].copy_from_slice(rest);
                u128::from_le_bytes(word)
            }
        };
        for &(value, mask, len, key) in &keys.0 {
            if word & mask == value {
                self.at += len + 1;
                self.token(b':')?;
                return Some(key);
            }
        }
        None
    }

    /// `null`, taken if it comes next.
    fn null(&mut self) -> bool {
        self.ws();
        if self.bytes[self.at..].starts_with(b"null") {
            self.at += 4;
            true
        } else {
            false
        }
    }

    /// `null` as `None`, else what `value` reads.
    fn nullable<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null() {
            Some(None)
        } else {
            value(self).map(Some)
        }
    }

    /// An integer of at most `max` without sign, fraction or exponent.
    fn unsigned(&mut self, max: u64) -> Option<u64> {
        self.ws();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&d @ b'0'..=b'9') = self.bytes.get(self.at) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        // No digits, or a leading zero (not JSON): serde's turn. A fraction or an exponent
        // (`.`, `e`) is not `,`, `}` or `]`, which the caller wants next.
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') || n > max {
            return None;
        }
        Some(n)
    }

    /// An integer of `i64` without fraction or exponent.
    fn signed(&mut self) -> Option<i64> {
        self.ws();
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        // Whitespace after the sign is not JSON.
        if !matches!(self.bytes.get(self.at), Some(b'0'..=b'9')) {
            return None;
        }
        let n = i64::try_from(self.unsigned(i64::MAX as u64)?).ok()?;
        match (negative, n) {
            // serde_json reads `-0` as a float, which an `i64` refuses.
            (true, 0) => None,
            (true, n) => Some(-n),
            (false, n) => Some(n),
        }
    }

    /// One operation.
    fn operation(&mut self) -> Option<FastOp<'a>> {
        self.token(b'{')?;
        let mut method = None;
        let mut path = None;
        let mut key: Option<Option<String>> = None;
        let mut route: Option<Option<Route>> = None;
        let mut body = None;
        if !self.close(b'}') {
            loop {
                match self.key(&OPERATION)? {
                    OpKey::Method if method.is_none() => method = Some(self.string()?),
                    OpKey::Path if path.is_none() => path = Some(self.string()?),
                    OpKey::IdempotencyKey if key.is_none() => {
                        key = Some(self.nullable(|s| s.string().map(str::to_owned))?);
                    }
                    OpKey::Body if body.is_none() => {
                        let r = route.insert(Route::parse(method?, path?));
                        body = Some(if self.null() {
                            OpBody::Absent
                        } else if matches!(r, Some(Route::Reserve)) {
                            OpBody::Reserve(self.reserve()?)
                        } else {
                            return None;
                        });
                    }
                    _ => return None,
                }
                if !self.more(b'}')? {
                    break;
                }
            }
        }
        let (method, path) = (method?, path?);
        Some(FastOp {
            route: route.unwrap_or_else(|| Route::parse(method, path)),
            method: Cow::Borrowed(method),
            path: Cow::Borrowed(path),
            body: body.unwrap_or(OpBody::Absent),
            idempotency_key: key.flatten(),
        })
    }

    /// A reservation's body (`ReserveBody`'s fields).
    fn reserve(&mut self) -> Option<ReserveBody<'a>> {
        self.token(b'{')?;
        let mut channel = None;
        let mut lines = None;
        let mut ttl_seconds = None;
        let mut order_ref = None;
        let mut ship_to_region = None;
        let mut fill = None;
        let mut max_locations = None;
        if !self.close(b'}') {
            loop {
                match self.key(&RESERVATION)? {
                    BodyKey::Channel if channel.is_none() => channel = Some(self.string()?),
                    BodyKey::Lines if lines.is_none() => lines = Some(self.lines()?),
                    BodyKey::TtlSeconds if ttl_seconds.is_none() => {
                        ttl_seconds = Some(self.nullable(|s| s.unsigned(u64::MAX))?);
                    }
                    BodyKey::OrderRef if order_ref.is_none() => {
                        order_ref = Some(self.nullable(|s| s.string().map(str::to_owned))?);
                    }
                    BodyKey::ShipToRegion if ship_to_region.is_none() => {
                        ship_to_region = Some(self.nullable(|s| s.string().map(str::to_owned))?);
                    }
                    BodyKey::Fill if fill.is_none() => {
                        fill = Some(self.nullable(|s| match s.string()? {
                            "all_or_nothing" => Some(FillDto::AllOrNothing),
                            "partial" => Some(FillDto::Partial),
                            "split" => Some(FillDto::Split),
                            _ => None,
                        })?);
                    }
                    BodyKey::MaxLocations if max_locations.is_none() => {
                        max_locations = Some(
                            self.nullable(|s| s.unsigned(u64::from(u16::MAX)).map(|n| n as u16))?,
                        );
                    }
                    _ => return None,
                }
                if !self.more(b'}')? {
                    break;
                }
            }
        }
        Some(ReserveBody {
            channel: Cow::Borrowed(channel?),
            lines: lines?,
            ttl_seconds: ttl_seconds.flatten(),
            order_ref: order_ref.flatten(),
            ship_to_region: ship_to_region.flatten(),
            fill: fill.flatten(),
            max_locations: max_locations.flatten(),
        })
    }

    /// A reservation's `lines`.
    fn lines(&mut self) -> Option<Vec<LineDto<'a>>> {
        self.token(b'[')?;
        let mut lines = Vec::new();
        if self.close(b']') {
            return Some(lines);
        }
        loop {
            self.token(b'{')?;
            let mut sku = None;
            let mut quantity = None;
            loop {
                match self.key(&LINE)? {
                    LineKey::Sku if sku.is_none() => sku = Some(self.string()?),
                    LineKey::Quantity if quantity.is_none() => quantity = Some(self.signed()?),
                    _ => return None,
                }
                if !self.more(b'}')? {
                    break;
                }
            }
            lines.push(LineDto {
                sku: Cow::Borrowed(sku?),
                quantity: quantity?,
            });
            if !self.more(b']')? {
                return Some(lines);
            }
        }
    }
}

/// Where a string's text that starts at `from` ends: at the first `"`, `\\` or control
/// character (below 0x20) at or after `from`, else at the end of `bytes`. Eight bytes at a
/// time: a byte equal to `b` is a zero byte of `x ^ (b * ONES)`, and `(v - ONES) & !v & HIGHS`
/// flags zero bytes of `v` (bytes below 0x20 with `0x20 * ONES` in place of `ONES`). A flag can
/// be false only above a true one (a borrow carries upwards), and only the lowest is used.
pub(crate) fn string_end(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGHS;
    let mut i = from;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        let hit = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::string_end;

    /// The first `"`, `\` or control character at or after `from`, a byte at a time.
    fn naive(bytes: &[u8], from: usize) -> usize {
        bytes[from..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .map_or(bytes.len(), |p| from + p)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// Eight bytes at a time finds what a byte at a time finds, with the bytes around the
        /// edges of each test (0x1f/0x20, `"`/`#`, `\`, 0x7f/0x80, 0xa0, 0xff) anywhere.
        #[test]
        fn string_end_finds_the_first_special_byte(
            bytes in proptest::collection::vec(
                proptest::sample::select(
                    &[0u8, 0x01, 0x1f, 0x20, 0x21, b'"', b'#', b'!', b'\\', b']', b'a', 0x7f, 0x80,
                        0x81, 0x9f, 0xa0, 0xa2, 0xdc, 0xff][..]
                ),
                0..40,
            ),
            from in 0..40usize,
        ) {
            let from = from.min(bytes.len());
            proptest::prop_assert_eq!(string_end(&bytes, from), naive(&bytes, from));
        }
    }

    #[test]
    fn string_end_stops_at_each_special_byte_in_each_position() {
        for special in [b'"', b'\\', 0x00, 0x1f] {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[at] = special;
                assert_eq!(string_end(&bytes, 0), at, "{special:#x} at {at}");
            }
        }
        assert_eq!(string_end(b"abcdefghijkl", 0), 12);
        assert_eq!(string_end(b"", 0), 0);
    }
}
