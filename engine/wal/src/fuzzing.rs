//! The bodies of the fuzz targets in `fuzz/` (record decoder, segment reader, snapshot loader),
//! here so that an ordinary test replays the committed corpus on stable. Each takes arbitrary
//! bytes, must not panic except on a broken invariant (the asserts below), and allocates at
//! most in proportion to its input.

use crate::format::{decode_entry, decode_record, encode_record, Record, SEGMENT_HEADER_LEN};
use crate::reader::{read_log, valid_record_after, Tail};
use crate::snapshot_file::{decode_snapshot, encode_snapshot};
use crate::{format, MemDir, WalOptions, WalWriter};
use depot_engine::LogEntry;

/// A body encoder of one record version.
type EncodeEntry = fn(&LogEntry, &mut Vec<u8>);

/// Decodes `data` as one record and its body. A record that decodes re-encodes to the same
/// bytes; a body that parses is the entry it re-serializes to.
pub fn record_decoder(data: &[u8]) {
    let _ = valid_record_after(data, 0);
    let Ok(record) = decode_record(data) else {
        return;
    };
    let mut again = Vec::new();
    encode_record(record.seq, record.version, record.body, &mut again);
    assert_eq!(&again[..], &data[..record.encoded_len() as usize]);
    if let Ok(entry) = decode_entry(&record) {
        // Whatever the record's version, the entry survives both encodings.
        let encodings: [(u8, EncodeEntry); 2] = [
            (format::RECORD_VERSION_BINARY, format::encode_entry),
            (format::RECORD_VERSION_JSON, format::encode_entry_json),
        ];
        for (version, encode) in encodings {
            let mut body = Vec::new();
            encode(&entry, &mut body);
            let again = Record {
                seq: entry.seq,
                version,
                body: &body,
            };
            assert_eq!(decode_entry(&again).as_ref(), Ok(&entry));
        }
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

/// Treats `data` as a snapshot file: the envelope (length bound, checksum) and then the image
/// inside (rkyv validation) must refuse bad bytes without panicking or allocating more than the
/// input justifies. `data` is also tried as a bare image, so the fuzzer reaches the image's
/// validation without having to forge a checksum. An image that validates round-trips, and
/// loading it into a machine either succeeds or refuses it with an error (ids, references and
/// quantity ranges are checked), never panics.
pub fn snapshot_loader(data: &[u8]) {
    check_image(data);
    if let Ok((seq, body)) = decode_snapshot(data) {
        assert_eq!(
            encode_snapshot(seq, body),
            data,
            "a valid file re-encodes the same"
        );
        check_image(body);
    }
}

fn check_image(bytes: &[u8]) {
    use depot_engine::snapshot;
    let Ok(image) = snapshot::from_bytes(bytes) else {
        return;
    };
    let again = snapshot::to_bytes(&image);
    assert_eq!(snapshot::from_bytes(&again).ok().as_ref(), Some(&image));
    if let Ok(m) = snapshot::load(&image, depot_engine::Limits::default(), 2) {
        let _ = m.digest();
    }
}
