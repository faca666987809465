//! The bodies of the fuzz targets in `fuzz/`, here so that an ordinary test replays the
//! committed corpus on stable. Each takes arbitrary bytes, must not panic except on a broken
//! invariant (the asserts below), and allocates at most in proportion to its input.

use crate::format::{decode_entry, decode_record, encode_record, SEGMENT_HEADER_LEN};
use crate::reader::{read_log, valid_record_after, Tail};
use crate::{format, MemDir, WalOptions, WalWriter};

/// Decodes `data` as one record and its body. A record that decodes re-encodes to the same
/// bytes; a body that parses is the entry it re-serializes to.
pub fn record_decoder(data: &[u8]) {
    let _ = valid_record_after(data, 0);
    let Ok(record) = decode_record(data) else {
        return;
    };
    let mut again = Vec::new();
    encode_record(record.seq, record.body, &mut again);
    assert_eq!(&again[..], &data[..record.encoded_len() as usize]);
    if let Ok(entry) = decode_entry(record.body) {
        let mut body = Vec::new();
        format::encode_entry(&entry, &mut body);
        assert_eq!(decode_entry(&body).ok(), Some(entry));
    }
}

/// Treats `data` as the only segment of a log (named after the first seq in its header, if
/// it has one) and recovers it. When recovery succeeds, the writer opens the same log, cuts
/// a torn tail, and recovery afterwards finds the same entries and a clean end.
pub fn segment_reader(data: &[u8]) {
    let first_seq = data
        .get(12..20)
        .map_or(1, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let name = format::segment_name(first_seq);
    let dir = MemDir::new();
    dir.insert(&name, data.to_vec());
    let Ok((entries, tail)) = read_log(&dir, first_seq) else {
        return;
    };
    let writer = WalWriter::open(Box::new(dir.clone()), WalOptions::default())
        .expect("a log that recovers also opens for writing");
    let valid_len = dir.bytes(&name).map_or(0, |b| b.len() as u64);
    match &tail {
        Tail::Clean => assert_eq!(valid_len, data.len() as u64),
        Tail::Torn { offset, .. } => assert_eq!(valid_len, (*offset).max(SEGMENT_HEADER_LEN)),
    }
    drop(writer);
    let (again, tail) = read_log(&dir, first_seq).expect("a truncated log recovers");
    assert_eq!(tail, Tail::Clean);
    assert_eq!(again, entries);
}
