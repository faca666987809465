//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets'
//! bodies on stable, plus truncations and single-bit flips of every seed, so CI covers the
//! decoders without nightly. No input may panic. Allocation stays bounded because every
//! length field is checked against `RECORD_BODY_MAX` (`SNAPSHOT_BODY_MAX` for a snapshot)
//! before use, a segment is read as at most its own bytes, and rkyv's validation checks every
//! length inside an image against the bytes that hold it before anything is deserialized.

use depot_wal::format::decode_record;
use depot_wal::fuzzing::{record_decoder, segment_reader, snapshot_loader};
use depot_wal::{decode_snapshot, FrameError, RECORD_BODY_MAX, SNAPSHOT_BODY_MAX};
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{target}: corpus too small");
    files
}

/// Each seed, every prefix of it, and each seed with one bit flipped (every 7th bit).
fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..=seed.len()).map(|n| seed[..n].to_vec()).collect();
    for bit in (0..seed.len() * 8).step_by(7) {
        let mut m = seed.to_vec();
        m[bit / 8] ^= 1 << (bit % 8);
        out.push(m);
    }
    out
}

#[test]
fn record_decoder_corpus() {
    for (name, seed) in corpus("record_decoder") {
        for input in mutations(&seed) {
            let r = std::panic::catch_unwind(|| record_decoder(&input));
            assert!(r.is_ok(), "{name}: panicked on {input:?}");
        }
    }
}

#[test]
fn segment_reader_corpus() {
    for (name, seed) in corpus("segment_reader") {
        for input in mutations(&seed) {
            let r = std::panic::catch_unwind(|| segment_reader(&input));
            assert!(r.is_ok(), "{name}: panicked on {input:?}");
        }
    }
}

#[test]
fn a_hostile_length_is_refused_without_allocating() {
    let mut header = vec![0xd7, 1];
    header.extend((RECORD_BODY_MAX + 1).to_le_bytes());
    header.extend([0u8; 12]);
    assert_eq!(
        decode_record(&header),
        Err(FrameError::TooLong(RECORD_BODY_MAX + 1))
    );
    header[2..6].copy_from_slice(&RECORD_BODY_MAX.to_le_bytes());
    assert!(matches!(
        decode_record(&header),
        Err(FrameError::Short { .. })
    ));
}

#[test]
fn snapshot_loader_corpus() {
    for (name, seed) in corpus("snapshot_loader") {
        for input in mutations(&seed) {
            let r = std::panic::catch_unwind(|| snapshot_loader(&input));
            assert!(r.is_ok(), "{name}: panicked on {input:?}");
        }
    }
}

/// The seeds mean what their names say: the valid file and image load, the damaged ones are
/// refused at the right layer.
#[test]
fn snapshot_seeds_are_what_they_claim() {
    use depot_engine::snapshot::from_bytes;
    let seeds: std::collections::BTreeMap<String, Vec<u8>> = corpus("snapshot_loader")
        .into_iter()
        .map(|(path, b)| (path.rsplit('/').next().unwrap().to_string(), b))
        .collect();
    let (seq, body) = decode_snapshot(&seeds["valid-file"]).unwrap();
    let image = from_bytes(body).unwrap();
    assert_eq!(image.seq, seq);
    assert!(!image.reservations.is_empty() && !image.idempotency.is_empty());
    assert!(depot_engine::snapshot::load(&image, Default::default(), 3).is_ok());
    assert_eq!(from_bytes(&seeds["valid-image"]).unwrap(), image);
    // Written by versions 1 (every answer as JSON), 2 and 3 (answers inline, none by
    // reference): the same state. The fingerprints of versions 1 and 2 hashed the commands'
    // JSON and are forgotten.
    assert!(image.idempotency.iter().any(|e| matches!(
        e.response,
        Some(depot_engine::snapshot::ResponseImage::Reference(_))
    )));
    for name in [
        "valid-file-image-v1",
        "valid-file-image-v2",
        "valid-file-image-v3",
    ] {
        let (seq_old, body_old) = decode_snapshot(&seeds[name]).unwrap();
        let old = from_bytes(body_old).unwrap();
        assert_eq!(seq_old, seq, "{name}");
        assert_ne!(old, image, "{name}");
        let again = depot_engine::snapshot::load(&old, Default::default(), 2).unwrap();
        let mut expected = image.clone();
        if !name.ends_with("v3") {
            for e in &mut expected.idempotency {
                e.fingerprint = depot_engine::front::UNKNOWN_FINGERPRINT;
            }
        }
        assert_eq!(again.image(), expected, "{name}");
    }
    let hostile = decode_snapshot(&seeds["hostile-length"]).unwrap_err();
    assert!(
        hostile.contains(&SNAPSHOT_BODY_MAX.to_string()),
        "{hostile}"
    );
    assert!(decode_snapshot(&seeds["bit-flip"])
        .unwrap_err()
        .contains("checksum"));
    // The checksum holds, so only the image's validation stands between it and a 4 GiB vector.
    let (_, damaged) = decode_snapshot(&seeds["damaged-image-valid-checksum"]).unwrap();
    assert!(from_bytes(damaged).is_err());
    let (seq2, body2) = decode_snapshot(&seeds["seq-mismatch"]).unwrap();
    assert_ne!(from_bytes(body2).unwrap().seq, seq2);
}
