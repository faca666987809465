//! Snapshot files: a state image ([`depot_engine::snapshot::Image`]) in a checksummed file
//! `snapshot-<seq, 20 digits>.rkyv`, written crash-safely (temporary name, `fdatasync`,
//! rename, directory `fsync`). A snapshot only shortens recovery: the log stays the truth, so
//! an invalid snapshot is skipped (with a warning) in favour of an older one or the full log.
//! `docs/wal_format.md` has the layout and the crash-safety argument.

use crate::error::WalError;
use crate::storage::{is_disk_full, read_all_aligned, Directory};
use depot_engine::snapshot::{self, Image};
use depot_engine::Seq;

/// The file's magic: ASCII `DEPOTSNP`.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"DEPOTSNP";
/// Version of the snapshot file header (the image inside has its own version).
pub const SNAPSHOT_VERSION: u32 = 1;
/// Header length: magic 8, version 4, seq 8, body length 8, checksum 4.
pub const SNAPSHOT_HEADER_LEN: u64 = 32;
/// Longest body a snapshot may have (64 GiB), checked before anything is allocated. A file is
/// read into memory of its real length, never of the length its header claims.
pub const SNAPSHOT_BODY_MAX: u64 = 1 << 36;

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".rkyv";
const TMP_SUFFIX: &str = ".tmp";
const DIGITS: usize = 20;

/// The file name of the snapshot of the state after `seq`.
pub fn snapshot_name(seq: Seq) -> String {
    format!("{PREFIX}{seq:0width$}{SUFFIX}", width = DIGITS)
}

/// The seq of a snapshot file name, or `None` for any other name (temporary files included).
pub fn parse_snapshot_name(name: &str) -> Option<Seq> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes the whole file: header then body.
pub fn encode_snapshot(seq: Seq, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN as usize + body.len());
    out.extend_from_slice(&snapshot_header(seq, body));
    out.extend_from_slice(body);
    out
}

/// The file's header for `body`.
fn snapshot_header(seq: Seq, body: &[u8]) -> [u8; SNAPSHOT_HEADER_LEN as usize] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..28].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[0..28]), body);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a whole snapshot file and returns its seq and body. Panic-free on any bytes.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(Seq, &[u8]), String> {
    let header = bytes
        .get(..SNAPSHOT_HEADER_LEN as usize)
        .ok_or_else(|| format!("{} bytes, shorter than the header", bytes.len()))?;
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "version {version} is not supported (this build reads {SNAPSHOT_VERSION})"
        ));
    }
    let seq = u64_at(12);
    let len = u64_at(20);
    if len > SNAPSHOT_BODY_MAX {
        return Err(format!(
            "body length {len} exceeds the maximum {SNAPSHOT_BODY_MAX}"
        ));
    }
    let body = &bytes[SNAPSHOT_HEADER_LEN as usize..];
    if body.len() as u64 != len {
        return Err(format!(
            "body is {} bytes, the header says {len}",
            body.len()
        ));
    }
    let stored = u32_at(28);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header[0..28]), body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok((seq, body))
}

fn write_error(file: &str, e: std::io::Error) -> WalError {
    if is_disk_full(&e) {
        WalError::DiskFull {
            file: file.to_string(),
        }
    } else {
        WalError::io(file, e)
    }
}

/// Writes `image` as `snapshot-<image.seq>.rkyv` and returns the name. Crash-safe: the bytes
/// go to a temporary name and are `fdatasync`ed, then renamed into place and the directory
/// `fsync`ed, so a crash leaves either no such snapshot or a complete one.
///
/// Every entry up to `image.seq` must be durable in the log first (for the engine:
/// `journal.wait_durable(image.seq)`); recovery skips a snapshot that is ahead of the log.
pub fn write_snapshot(dir: &dyn Directory, image: &Image) -> Result<String, WalError> {
    write_snapshot_body(dir, image.seq, &snapshot::to_bytes(image))
}

/// [`write_snapshot`] of an image already serialized with `snapshot::to_bytes`.
pub(crate) fn write_snapshot_body(
    dir: &dyn Directory,
    seq: Seq,
    body: &[u8],
) -> Result<String, WalError> {
    let name = snapshot_name(seq);
    let tmp = format!("{name}{TMP_SUFFIX}");
    if body.len() as u64 > SNAPSHOT_BODY_MAX {
        let message = format!(
            "the image is {} bytes, more than the maximum {SNAPSHOT_BODY_MAX}",
            body.len()
        );
        return Err(WalError::io(
            &name,
            std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        ));
    }
    // Header and body are written in place: a body of gigabytes is not copied once more.
    let header = snapshot_header(seq, body);
    // The remains of an earlier attempt that crashed.
    match dir.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io(&tmp, e)),
    }
    let written = (|| {
        let mut file = dir.create(&tmp).map_err(|e| write_error(&tmp, e))?;
        file.write_at(0, &header)
            .map_err(|e| write_error(&tmp, e))?;
        file.write_at(SNAPSHOT_HEADER_LEN, body)
            .map_err(|e| write_error(&tmp, e))?;
        file.sync_data().map_err(|e| WalError::SyncFailed {
            file: tmp.clone(),
            message: e.to_string(),
        })
    })();
    if let Err(e) = written {
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    dir.rename(&tmp, &name)
        .map_err(|e| WalError::io(&name, e))?;
    dir.sync().map_err(|e| WalError::SyncFailed {
        file: String::new(),
        message: e.to_string(),
    })?;
    Ok(name)
}

/// The snapshot files of `dir`, newest (highest seq) first.
pub(crate) fn list_snapshots(dir: &dyn Directory) -> Result<Vec<(Seq, String)>, WalError> {
    let mut found: Vec<(Seq, String)> = dir
        .list()
        .map_err(|e| WalError::io("", e))?
        .into_iter()
        .filter_map(|name| Some((parse_snapshot_name(&name)?, name)))
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Reads and checks one snapshot file: magic, version, length bound, checksum, that the seq
/// in the header, the name and the image agree, and that the image validates.
/// `Err` carries the reason it is not usable.
pub(crate) fn read_snapshot(dir: &dyn Directory, name: &str) -> Result<Image, String> {
    let name_seq = parse_snapshot_name(name).ok_or("not a snapshot file name")?;
    let file = dir.open(name).map_err(|e| format!("cannot open: {e}"))?;
    // Aligned, so that the body (32 bytes in) is read in place, not copied.
    let bytes = read_all_aligned(&*file, SNAPSHOT_HEADER_LEN + SNAPSHOT_BODY_MAX)
        .map_err(|e| format!("cannot read: {e}"))?;
    let (seq, body) = decode_snapshot(&bytes)?;
    if seq != name_seq {
        return Err(format!("header says seq {seq}, the name {name_seq}"));
    }
    let image = snapshot::from_bytes(body).map_err(|e| e.to_string())?;
    if image.seq != seq {
        return Err(format!("image has seq {}, the header {seq}", image.seq));
    }
    Ok(image)
}

/// The newest valid snapshot of `dir` and its file name; `None` when there is none. An
/// invalid snapshot is skipped with a `tracing::warn!` naming the file and the reason.
pub fn load_newest_snapshot(dir: &dyn Directory) -> Result<Option<(Image, String)>, WalError> {
    for (_, name) in list_snapshots(dir)? {
        match read_snapshot(dir, &name) {
            Ok(image) => return Ok(Some((image, name))),
            Err(reason) => {
                tracing::warn!(file = %name, %reason, "skipping an invalid snapshot");
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(snapshot_name(42), "snapshot-00000000000000000042.rkyv");
        assert_eq!(
            parse_snapshot_name(&snapshot_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(
            parse_snapshot_name("snapshot-00000000000000000042.rkyv.tmp"),
            None
        );
        assert_eq!(parse_snapshot_name("snapshot-42.rkyv"), None);
        assert_eq!(parse_snapshot_name("wal-00000000000000000001.log"), None);
    }

    #[test]
    fn every_damage_is_caught() {
        let bytes = encode_snapshot(7, b"some body bytes");
        assert_eq!(decode_snapshot(&bytes), Ok((7, &b"some body bytes"[..])));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_snapshot(&b).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..len]).is_err(), "length {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_snapshot(&longer).is_err());
    }
}
