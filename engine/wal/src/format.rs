//! The byte layouts of the log: segment file names, the segment header and the record frame.
//! Pure functions over byte slices, panic-free on any input; `docs/wal_format.md` has the
//! tables and the reasons.

pub use crate::codec::BodyError;
use depot_engine::{LogEntry, Seq};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"DEPOTWAL";
/// Version of the segment header and of the record frame inside it.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes of the segment header: magic (8), version (2), reserved (2), first seq (8), CRC32C (4).
pub const SEGMENT_HEADER_LEN: u64 = 24;

/// First byte of every record.
pub const RECORD_MAGIC: u8 = 0xD7;
/// Second byte of every record: the record's version, which names its body's encoding. Version
/// 1 bodies are the entry's JSON (logs written before version 2 existed; still read), version 2
/// and 3 bodies the binary layout of [`crate::codec`], which the writer writes: version 2 for
/// the first record of a write group (the records between two `fdatasync`s), version 3 for the
/// others. Recovery uses the difference to tell an unacknowledged write persisted out of order
/// from damage (see `reader.rs`).
pub const RECORD_VERSION: u8 = RECORD_VERSION_BINARY;
/// Record version whose body is the `LogEntry` as JSON.
pub const RECORD_VERSION_JSON: u8 = 1;
/// Record version whose body is the binary layout of [`crate::codec`]: the first record of its
/// write group (every record of a log written before version 3 existed).
pub const RECORD_VERSION_BINARY: u8 = 2;
/// Record version whose body is the binary layout of [`crate::codec`], in the same write group
/// as the record before it (nothing was synced between them).
pub const RECORD_VERSION_BINARY_GROUPED: u8 = 3;
/// Bytes of the record header: magic (1), version (1), body length (4), seq (8), CRC32C (4).
pub const RECORD_HEADER_LEN: u64 = 18;
/// Longest record body. A length field above it is corruption, never an allocation.
pub const RECORD_BODY_MAX: u32 = 4 * 1024 * 1024;

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;

/// The file name of the segment whose first record has sequence number `first_seq`.
pub fn segment_name(first_seq: Seq) -> String {
    format!(
        "{SEGMENT_PREFIX}{first_seq:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

/// The first seq of a segment file name, or `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The sequence number of the segment's first record (also in its file name).
    pub first_seq: Seq,
}

/// Why bytes are not a valid segment header or record. `Short` means the bytes end before the
/// structure does: at the end of the log, a torn write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("ends after {have} bytes, {need} needed")]
    Short { have: u64, need: u64 },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u16),
    #[error("reserved bytes are not zero")]
    BadReserved,
    #[error("body length {0} exceeds the maximum {RECORD_BODY_MAX}")]
    TooLong(u32),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
}

/// The 24 bytes that start a segment.
pub fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    // 10..12 reserved, zero.
    out[12..20].copy_from_slice(&header.first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the segment header at the start of `bytes`.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, FrameError> {
    let h = bytes
        .get(..SEGMENT_HEADER_LEN as usize)
        .ok_or(FrameError::Short {
            have: bytes.len() as u64,
            need: SEGMENT_HEADER_LEN,
        })?;
    if h[0..8] != SEGMENT_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let stored = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    let computed = crc32c::crc32c(&h[0..20]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != SEGMENT_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    if h[10..12] != [0, 0] {
        return Err(FrameError::BadReserved);
    }
    Ok(SegmentHeader {
        first_seq: u64_at(h, 12),
    })
}

/// A record decoded from bytes: its seq, its version and its (checksummed, not yet parsed) body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: Seq,
    pub version: u8,
    pub body: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record occupies on disk, header included.
    pub fn encoded_len(&self) -> u64 {
        RECORD_HEADER_LEN + self.body.len() as u64
    }
}

/// Appends the record `(seq, version, body)` to `out`. The caller checks
/// `body.len() <= RECORD_BODY_MAX` and that the body is encoded as `version` says.
pub fn encode_record(seq: Seq, version: u8, body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("the caller bounds the body length");
    let start = out.len();
    out.push(RECORD_MAGIC);
    out.push(version);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 14]), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// Decodes the record at the start of `bytes`. Allocates nothing: the body is a slice of
/// `bytes`, and a length field is checked against [`RECORD_BODY_MAX`] before it is used.
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, FrameError> {
    let have = bytes.len() as u64;
    let h = bytes
        .get(..RECORD_HEADER_LEN as usize)
        .ok_or(FrameError::Short {
            have,
            need: RECORD_HEADER_LEN,
        })?;
    if h[0] != RECORD_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if !is_record_version(h[1]) {
        return Err(FrameError::BadVersion(u16::from(h[1])));
    }
    let len = u32::from_le_bytes([h[2], h[3], h[4], h[5]]);
    if len > RECORD_BODY_MAX {
        return Err(FrameError::TooLong(len));
    }
    let need = RECORD_HEADER_LEN + u64::from(len);
    let body = bytes
        .get(RECORD_HEADER_LEN as usize..need as usize)
        .ok_or(FrameError::Short { have, need })?;
    let stored = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&h[0..14]), body);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(Record {
        seq: u64_at(h, 6),
        version: h[1],
        body,
    })
}

/// True for the record versions this reader knows.
pub fn is_record_version(v: u8) -> bool {
    v == RECORD_VERSION_JSON || v == RECORD_VERSION_BINARY || v == RECORD_VERSION_BINARY_GROUPED
}

/// The body of a log entry as the writer writes it (record version [`RECORD_VERSION`]).
pub fn encode_entry(entry: &LogEntry, out: &mut Vec<u8>) {
    crate::codec::encode(entry, out);
}

/// The body of a log entry as a version 1 record holds it: its JSON.
pub fn encode_entry_json(entry: &LogEntry, out: &mut Vec<u8>) {
    serde_json::to_writer(out, entry).expect("a LogEntry always serializes to JSON");
}

/// Parses a record's body back into its log entry, by the record's version. A JSON body carries
/// its own seq, which must equal the frame's.
pub fn decode_entry(record: &Record<'_>) -> Result<LogEntry, BodyError> {
    decode_entry_with(record, &mut crate::codec::Recent::default())
}

/// [`decode_entry`] for a reader going through many records: names repeated from the last
/// binary body are copied from `recent` instead of checked again (see [`crate::codec::Recent`]).
pub fn decode_entry_with(
    record: &Record<'_>,
    recent: &mut crate::codec::Recent,
) -> Result<LogEntry, BodyError> {
    match record.version {
        RECORD_VERSION_BINARY | RECORD_VERSION_BINARY_GROUPED => {
            crate::codec::decode_with(record.seq, record.body, recent)
        }
        RECORD_VERSION_JSON => {
            let entry: LogEntry = serde_json::from_slice(record.body).map_err(|e| BodyError {
                what: "JSON body",
                at: 0,
                reason: e.to_string(),
            })?;
            if entry.seq != record.seq {
                return Err(BodyError {
                    what: "JSON body",
                    at: 0,
                    reason: format!("body has seq {}, frame has {}", entry.seq, record.seq),
                });
            }
            Ok(entry)
        }
        v => Err(BodyError {
            what: "record version",
            at: 0,
            reason: format!("unsupported version {v}"),
        }),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        assert_eq!(segment_name(42), "wal-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "wal-42.log",
            "wal-0000000000000000004x.log",
            "wal-99999999999999999999.log",
            "x.log",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn record_round_trips_and_every_prefix_is_short() {
        let mut buf = Vec::new();
        encode_record(7, RECORD_VERSION, b"hello", &mut buf);
        let r = decode_record(&buf).unwrap();
        assert_eq!(
            (r.seq, r.version, r.body, r.encoded_len()),
            (7, RECORD_VERSION, &b"hello"[..], 23)
        );
        for cut in 0..buf.len() {
            assert!(matches!(
                decode_record(&buf[..cut]),
                Err(FrameError::Short { .. })
            ));
        }
    }

    #[test]
    fn hostile_length_is_refused_before_use() {
        let mut buf = Vec::new();
        encode_record(1, RECORD_VERSION, b"x", &mut buf);
        buf[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_record(&buf), Err(FrameError::TooLong(u32::MAX)));
    }

    #[test]
    fn segment_header_round_trips() {
        let h = SegmentHeader { first_seq: 99 };
        let bytes = encode_segment_header(h);
        assert_eq!(decode_segment_header(&bytes), Ok(h));
        let mut bad = bytes;
        bad[13] ^= 1;
        assert!(matches!(
            decode_segment_header(&bad),
            Err(FrameError::Checksum { .. })
        ));
    }
}
