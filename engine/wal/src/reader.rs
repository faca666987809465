//! Recovery: reads every segment in order and yields the log entries from a given seq, checking
//! each segment header and record checksum, and that sequence numbers run on without a gap
//! within and across segments. The end of the log is either clean or a torn tail (an
//! unacknowledged write cut by a crash); anything else that does not decode is corruption.
//!
//! The last segment may end in zeros the writer wrote ahead of its records: the log ends
//! cleanly where they start. Because those zeros are already allocated, a crash of the machine
//! during an unacknowledged write into them can keep any of its pages and lose others: records
//! of the write may survive after a hole. A damaged record in the last segment is therefore a
//! torn tail when no valid record after it starts a write group (record version 3 continues
//! the group of the record before it; the writer writes a group only after the previous one is
//! synced, so a valid group start after the damage proves the damage was synced: corruption).

use crate::error::WalError;
use crate::format::{
    decode_entry_with, decode_record, decode_segment_header, is_record_version, parse_segment_name,
    Record, RECORD_MAGIC, RECORD_VERSION_BINARY_GROUPED, SEGMENT_HEADER_LEN,
};
use crate::storage::{read_all, read_all_into, Directory};
use depot_engine::{LogEntry, Seq};
use std::ops::Range;

/// Longest segment file recovery reads (a segment is read whole). The writer's segments stay
/// far below it.
pub const SEGMENT_FILE_MAX: u64 = 1 << 30;

/// How the log ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The last segment ends after its last valid record, or only zeros follow it.
    Clean,
    /// From `offset` of `file` (the last segment) on, the bytes are the remains of a write
    /// that a crash cut short: no valid record follows. Opening a [`crate::WalWriter`]
    /// truncates them.
    Torn { file: String, offset: u64 },
}

/// Where the log ends, for the writer.
#[derive(Debug)]
pub(crate) struct LogEnd {
    pub tail: Tail,
    /// The seq the next appended entry must carry; `None` for a log without segments.
    pub next_seq: Option<Seq>,
    /// The last segment: name, first seq, and the length of its valid part.
    pub last: Option<(String, Seq, u64)>,
}

/// The segment files of `dir`, sorted by first seq. Other files are ignored.
pub(crate) fn list_segments(dir: &dyn Directory) -> Result<Vec<(Seq, String)>, WalError> {
    let mut segments: Vec<(Seq, String)> = dir
        .list()
        .map_err(|e| WalError::io("", e))?
        .into_iter()
        .filter_map(|name| Some((parse_segment_name(&name)?, name)))
        .collect();
    segments.sort();
    Ok(segments)
}

/// True when a record with a valid checksum starts anywhere in `bytes[from..]`: then a failure
/// before `from` cannot be a torn tail, because something was written durably after it.
pub fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    valid_after(bytes, from, |_| true)
}

/// True when a record with a valid checksum that starts a write group (any version but
/// [`RECORD_VERSION_BINARY_GROUPED`]) starts anywhere in `bytes[from..]`: a damaged record
/// before `from` was then synced before that group was written, so it is not a torn write.
fn group_start_after(bytes: &[u8], from: usize) -> bool {
    valid_after(bytes, from, |v| v != RECORD_VERSION_BINARY_GROUPED)
}

fn valid_after(bytes: &[u8], from: usize, version: impl Fn(u8) -> bool) -> bool {
    let Some(rest) = bytes.get(from..) else {
        return false;
    };
    (0..rest.len()).any(|i| {
        rest[i] == RECORD_MAGIC
            && rest
                .get(i + 1)
                .is_some_and(|&v| is_record_version(v) && version(v))
            && decode_record(&rest[i..]).is_ok()
    })
}

#[derive(Debug)]
struct Loaded {
    name: String,
    bytes: Vec<u8>,
    offset: usize,
    last: bool,
}

/// Reads log entries in sequence order. See the module docs.
#[derive(Debug)]
pub struct WalReader<'d> {
    dir: &'d dyn Directory,
    segments: Vec<(Seq, String)>,
    next_index: usize,
    current: Option<Loaded>,
    /// The seq the next record must carry.
    expected: Option<Seq>,
    from_seq: Seq,
    /// Skip segments wholly before `from_seq` without reading them (replay); the writer's scan
    /// reads and checks everything.
    skip: bool,
    tail: Option<Tail>,
    /// The length of the valid part of the last segment, once its end is reached.
    last_len: Option<u64>,
    failed: Option<WalError>,
    /// The buffer of the last segment read, reused for the next one.
    spare: Vec<u8>,
    /// Names of the last entry decoded, copied when the next one repeats them.
    recent: crate::codec::Recent,
}

impl<'d> WalReader<'d> {
    /// A reader of the log in `dir` yielding the entries with `seq >= from_seq`. Fails with
    /// [`WalError::Gap`] when the log starts after `from_seq` (the entries between are gone).
    pub fn open(dir: &'d dyn Directory, from_seq: Seq) -> Result<WalReader<'d>, WalError> {
        let segments = list_segments(dir)?;
        if let Some(&(first, _)) = segments.first() {
            if from_seq < first {
                return Err(WalError::Gap {
                    from: from_seq,
                    first,
                });
            }
        }
        Ok(WalReader::new(dir, segments, from_seq, true))
    }

    fn new(
        dir: &'d dyn Directory,
        segments: Vec<(Seq, String)>,
        from_seq: Seq,
        skip: bool,
    ) -> Self {
        WalReader {
            dir,
            segments,
            next_index: 0,
            current: None,
            expected: None,
            from_seq,
            skip,
            tail: None,
            last_len: None,
            failed: None,
            spare: Vec::new(),
            recent: Default::default(),
        }
    }

    /// The next entry, `Ok(None)` at the end of the log. After an error, returns it again.
    pub fn next_entry(&mut self) -> Result<Option<LogEntry>, WalError> {
        if let Some(e) = &self.failed {
            return Err(e.duplicate());
        }
        let result = self.next_record().and_then(|found| {
            let Some((seq, version, body)) = found else {
                return Ok(None);
            };
            let cur = self
                .current
                .as_ref()
                .expect("a record comes from a segment");
            let offset = body.start as u64 - crate::format::RECORD_HEADER_LEN;
            let record = Record {
                seq,
                version,
                body: &cur.bytes[body],
            };
            let entry = decode_entry_with(&record, &mut self.recent).map_err(|e| {
                WalError::corrupt(&cur.name, offset, format!("body does not parse: {e}"))
            })?;
            Ok(Some(entry))
        });
        if let Err(e) = &result {
            self.failed = Some(e.duplicate());
        }
        result
    }

    /// How the log ends; `Some` once [`WalReader::next_entry`] has returned `Ok(None)`.
    pub fn tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }

    /// The seq the next appended entry must carry (`None` for a log without segments); known
    /// once the end is reached.
    pub fn next_seq(&self) -> Option<Seq> {
        self.tail.as_ref().and(self.expected)
    }

    /// The next record with `seq >= from_seq`: its seq and the range of its body in the
    /// current segment's bytes.
    fn next_record(&mut self) -> Result<Option<(Seq, u8, Range<usize>)>, WalError> {
        loop {
            if self.tail.is_some() {
                return Ok(None);
            }
            let Some(cur) = self.current.as_mut() else {
                if !self.load_next()? {
                    self.tail = Some(Tail::Clean);
                    return Ok(None);
                }
                continue;
            };
            if cur.offset == cur.bytes.len() {
                if cur.last {
                    self.last_len = Some(cur.offset as u64);
                }
                if let Some(done) = self.current.take() {
                    self.spare = done.bytes;
                }
                continue;
            }
            let expected = self.expected.expect("set when the segment was loaded");
            let offset = cur.offset as u64;
            let record = match decode_record(&cur.bytes[cur.offset..]) {
                Ok(r) => r,
                Err(e) => {
                    if cur.last && cur.bytes[cur.offset..].iter().all(|&b| b == 0) {
                        // The zeros written ahead of the records: a clean end.
                        self.last_len = Some(offset);
                        self.tail = Some(Tail::Clean);
                        return Ok(None);
                    }
                    if cur.last && !group_start_after(&cur.bytes, cur.offset + 1) {
                        self.last_len = Some(offset);
                        self.tail = Some(Tail::Torn {
                            file: cur.name.clone(),
                            offset,
                        });
                        return Ok(None);
                    }
                    return Err(WalError::corrupt(&cur.name, offset, format!("record {e}")));
                }
            };
            if record.seq != expected {
                return Err(WalError::corrupt(
                    &cur.name,
                    offset,
                    format!("record has seq {}, expected {expected}", record.seq),
                ));
            }
            let body_start = cur.offset + crate::format::RECORD_HEADER_LEN as usize;
            let body = body_start..body_start + record.body.len();
            cur.offset = body.end;
            self.expected = Some(expected.checked_add(1).ok_or_else(|| {
                WalError::corrupt(&cur.name, offset, "sequence number overflows")
            })?);
            if record.seq >= self.from_seq {
                return Ok(Some((record.seq, record.version, body)));
            }
        }
    }

    /// Loads the next segment, checking its header; `false` when there is none.
    fn load_next(&mut self) -> Result<bool, WalError> {
        let count = self.segments.len();
        while self.skip
            && self.next_index + 1 < count
            && self.segments[self.next_index + 1].0 <= self.from_seq
        {
            // Every record of this segment is before `from_seq`; the next one says where
            // the sequence resumes.
            self.next_index += 1;
            self.expected = None;
        }
        let Some((name_seq, name)) = self.segments.get(self.next_index).cloned() else {
            return Ok(false);
        };
        self.next_index += 1;
        let last = self.next_index == count;
        if let Some(expected) = self.expected {
            if expected != name_seq {
                return Err(WalError::corrupt(
                    &name,
                    0,
                    format!(
                        "segment starts at seq {name_seq}, the previous one ends before {expected}"
                    ),
                ));
            }
        }
        let file = self.dir.open(&name).map_err(|e| WalError::io(&name, e))?;
        let mut bytes = std::mem::take(&mut self.spare);
        read_all_into(&*file, SEGMENT_FILE_MAX, &mut bytes).map_err(|e| WalError::io(&name, e))?;
        self.expected = Some(name_seq);
        match decode_segment_header(&bytes) {
            Ok(h) if h.first_seq == name_seq => {}
            Ok(h) => {
                return Err(WalError::corrupt(
                    &name,
                    0,
                    format!("header says first seq {}, the name {name_seq}", h.first_seq),
                ))
            }
            Err(e) => {
                if last && !valid_record_after(&bytes, 1) {
                    // A crash while the segment was being created: no record was ever in it.
                    self.last_len = Some(0);
                    self.tail = Some(Tail::Torn {
                        file: name,
                        offset: 0,
                    });
                    return Ok(true);
                }
                return Err(WalError::corrupt(&name, 0, format!("segment header {e}")));
            }
        }
        self.current = Some(Loaded {
            name,
            bytes,
            offset: SEGMENT_HEADER_LEN as usize,
            last,
        });
        Ok(true)
    }
}

impl Iterator for WalReader<'_> {
    type Item = Result<LogEntry, WalError>;

    /// Yields each entry, then `None`; after an error, `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed.is_some() {
            return None;
        }
        self.next_entry().transpose()
    }
}

/// Reads every entry with `seq >= from_seq` and how the log ends.
pub fn read_log(dir: &dyn Directory, from_seq: Seq) -> Result<(Vec<LogEntry>, Tail), WalError> {
    let mut reader = WalReader::open(dir, from_seq)?;
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        entries.push(entry);
    }
    let tail = reader.tail().cloned().unwrap_or(Tail::Clean);
    Ok((entries, tail))
}

/// Checks the whole log (checksums and sequence, not bodies) and finds where it ends.
pub(crate) fn scan_end(dir: &dyn Directory) -> Result<LogEnd, WalError> {
    let segments = list_segments(dir)?;
    let mut reader = WalReader::new(dir, segments.clone(), Seq::MAX, false);
    while reader.next_record()?.is_some() {}
    let last = segments.last().map(|(first, name)| {
        let len = reader.last_len.unwrap_or(SEGMENT_HEADER_LEN);
        (name.clone(), *first, len)
    });
    Ok(LogEnd {
        tail: reader.tail.clone().unwrap_or(Tail::Clean),
        next_seq: reader.expected,
        last,
    })
}

/// The bytes of the records after `seq` in the log of `dir` (headers included, as
/// [`crate::WalWriter::appended_bytes`] counts them): the whole of every segment that starts
/// after `seq` but the last, and the records after `seq` of the one holding it and of the last
/// one (which may end in zeros), found by walking their frames. A damaged frame ends the count
/// of its segment. Used to count the log already on disk after a snapshot towards the next
/// one.
pub fn log_bytes_after(dir: &dyn Directory, seq: Seq) -> Result<u64, WalError> {
    let segments = list_segments(dir)?;
    let mut total = 0u64;
    for (i, (first, name)) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map(|(s, _)| *s);
        if next_first.is_some_and(|n| n <= seq.saturating_add(1)) {
            continue; // wholly at or before `seq`
        }
        let file = dir.open(name).map_err(|e| WalError::io(name, e))?;
        let len = file.len().map_err(|e| WalError::io(name, e))?;
        if *first > seq && next_first.is_some() {
            // Not the last segment: no zeros after its records.
            total += len.saturating_sub(SEGMENT_HEADER_LEN);
            continue;
        }
        let bytes = read_all(&*file, SEGMENT_FILE_MAX).map_err(|e| WalError::io(name, e))?;
        let mut at = SEGMENT_HEADER_LEN as usize;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            let Ok(record) = decode_record(rest) else {
                break;
            };
            if record.seq > seq {
                total += record.encoded_len();
            }
            at += record.encoded_len() as usize;
        }
    }
    Ok(total)
}
