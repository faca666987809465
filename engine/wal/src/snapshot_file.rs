//! Snapshot files: a state image ([`depot_engine::snapshot::Image`]) in a checksummed file
//! `snapshot-<seq, 20 digits>.rkyv`, written crash-safely (temporary name, `fdatasync`,
//! rename, directory `fsync`). A snapshot only shortens recovery: the log stays the truth, so
//! an invalid snapshot is skipped (with a warning) in favour of an older one or the full log.
//! `docs/wal_format.md` has the layout and the crash-safety argument.

use crate::error::WalError;
use crate::storage::{is_disk_full, read_all_aligned, Directory, Storage};
use depot_engine::snapshot::{self, Image, StateImage};
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
    header_for(seq, body.len() as u64, crc32c::crc32c(body))
}

/// The header of a body of `len` bytes whose CRC32C is `body_crc`. The checksum covers the
/// header's first 28 bytes, then the body.
fn header_for(seq: Seq, len: u64, body_crc: u32) -> [u8; SNAPSHOT_HEADER_LEN as usize] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..28].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&h[0..28]), body_crc, len as usize);
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
    write_snapshot_sized(dir, ImageSource::Image(image)).map(|(name, _)| name)
}

/// [`write_snapshot`] of a state serialized straight from its tables (the same file, without
/// building the owned image first: [`StateImage`]).
pub fn write_state_snapshot(
    dir: &dyn Directory,
    state: &StateImage<'_>,
) -> Result<String, WalError> {
    write_snapshot_sized(dir, ImageSource::State(state)).map(|(name, _)| name)
}

/// What a snapshot file is written from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ImageSource<'a> {
    Image(&'a Image),
    State(&'a StateImage<'a>),
}

impl ImageSource<'_> {
    fn seq(&self) -> Seq {
        match self {
            ImageSource::Image(i) => i.seq,
            ImageSource::State(s) => s.seq(),
        }
    }

    fn serialize_into<W>(&self, writer: W) -> Result<W, rkyv::rancor::Error>
    where
        W: rkyv::ser::Writer<rkyv::rancor::Error>,
    {
        match self {
            ImageSource::Image(i) => snapshot::serialize_into(i, writer),
            ImageSource::State(s) => snapshot::serialize_state_into(s, writer),
        }
    }
}

/// How much of the serialized image [`FileSink`] gathers before it writes it to the file.
const SINK_CHUNK: usize = 1 << 20;

/// An rkyv writer into a snapshot file being written: the body goes to the file in chunks of
/// [`SINK_CHUNK`] bytes as it is serialized (after the header's room), its checksum computed on
/// the way. The whole image is never in memory as bytes.
struct FileSink<'a> {
    file: &'a mut dyn Storage,
    buf: Vec<u8>,
    /// Bytes of the body serialized so far (rkyv's position).
    pos: u64,
    /// Bytes of the body already written to the file.
    flushed: u64,
    /// CRC32C of the flushed bytes.
    crc: u32,
    /// The first write error (disk full, say): kept for the caller, which maps it.
    error: Option<std::io::Error>,
}

impl FileSink<'_> {
    /// Keeps `e` for the caller and gives rkyv an error that stops the serialization.
    fn fail(&mut self, e: std::io::Error) -> rkyv::rancor::Error {
        use rkyv::rancor::Source;
        let out = rkyv::rancor::Error::new(std::io::Error::new(e.kind(), e.to_string()));
        self.error = Some(e);
        out
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_at(SNAPSHOT_HEADER_LEN + self.flushed, &self.buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl rkyv::ser::Positional for FileSink<'_> {
    fn pos(&self) -> usize {
        self.pos as usize
    }
}

impl rkyv::ser::Writer<rkyv::rancor::Error> for FileSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), rkyv::rancor::Error> {
        // rkyv stops at the first error, so nothing is written after one.
        self.pos += bytes.len() as u64;
        if self.pos > SNAPSHOT_BODY_MAX {
            return Err(self.fail(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the image is more than the maximum {SNAPSHOT_BODY_MAX} bytes"),
            )));
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= SINK_CHUNK {
            if let Err(e) = self.flush() {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }
}

/// [`write_snapshot`], also returning the length of the image (the body).
pub(crate) fn write_snapshot_sized(
    dir: &dyn Directory,
    image: ImageSource<'_>,
) -> Result<(String, u64), WalError> {
    let seq = image.seq();
    let name = snapshot_name(seq);
    let tmp = format!("{name}{TMP_SUFFIX}");
    // The remains of an earlier attempt that crashed.
    match dir.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io(&tmp, e)),
    }
    let written = (|| {
        let mut file = dir.create(&tmp).map_err(|e| write_error(&tmp, e))?;
        // The body first, as it is serialized; then the header, which names its length and
        // checksum; then the sync. Until the rename the file has no snapshot's name.
        let mut sink = FileSink {
            file: &mut *file,
            buf: Vec::with_capacity(SINK_CHUNK + 4096),
            pos: 0,
            flushed: 0,
            crc: 0,
            error: None,
        };
        let serialized = image.serialize_into(&mut sink).map(|_| ());
        let flushed = match (sink.error.take(), serialized) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(std::io::Error::other(e.to_string())),
            (None, Ok(())) => sink.flush(),
        };
        flushed.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                WalError::io(&name, e)
            } else {
                write_error(&tmp, e)
            }
        })?;
        let (len, crc) = (sink.flushed, sink.crc);
        file.write_at(0, &header_for(seq, len, crc))
            .map_err(|e| write_error(&tmp, e))?;
        file.sync_data().map_err(|e| WalError::SyncFailed {
            file: tmp.clone(),
            message: e.to_string(),
        })?;
        Ok(len)
    })();
    let len = match written {
        Ok(len) => len,
        Err(e) => {
            let _ = dir.remove(&tmp);
            return Err(e);
        }
    };
    dir.rename(&tmp, &name)
        .map_err(|e| WalError::io(&name, e))?;
    dir.sync().map_err(|e| WalError::SyncFailed {
        file: String::new(),
        message: e.to_string(),
    })?;
    Ok((name, len))
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

    /// An image of `skus` SKUs with two levels each: about 150 bytes a SKU.
    fn big_image(skus: usize) -> Image {
        use depot_engine::snapshot::{LevelImage, SkuImage, IMAGE_VERSION};
        let level = |loc| LevelImage {
            loc,
            on_hand: 7,
            reserved: 1,
            committed: 2,
            damaged: 0,
            quality_control: 0,
            safety_stock: 0,
            incoming: 3,
            incoming_at: 1_700_000_000_000,
        };
        Image {
            version: IMAGE_VERSION,
            seq: 4242,
            now: 1_700_000_000_000,
            tenants: Vec::new(),
            idempotency: Vec::new(),
            skus: (0..skus)
                .map(|i| SkuImage {
                    tenant: 0,
                    sku: format!("SKU-WITH-A-LONGER-NAME-{i:08}"),
                    levels: vec![level(0), level(1)],
                    held: vec![1, 2],
                    cost: (i % 7 == 0).then(|| "12.50".to_string()),
                })
                .collect(),
            reservations: Vec::new(),
        }
    }

    #[test]
    fn a_streamed_snapshot_is_the_buffered_encoding_byte_for_byte() {
        for skus in [0, 1, 30_000] {
            let image = big_image(skus);
            let mem = crate::mem::MemDir::new();
            let (name, len) = write_snapshot_sized(&mem, ImageSource::Image(&image)).unwrap();
            let body = snapshot::to_bytes(&image);
            assert_eq!(len, body.len() as u64);
            if skus == 30_000 {
                assert!(len > 3 * SINK_CHUNK as u64, "several chunks: {len}");
            }
            let file = mem.bytes(&name).unwrap();
            assert!(file == encode_snapshot(image.seq, &body), "{skus} SKUs");
            assert_eq!(
                mem.names(),
                std::slice::from_ref(&name),
                "no temporary file left"
            );
            let (read, read_name) = load_newest_snapshot(&mem).unwrap().unwrap();
            assert_eq!((read, read_name), (image, name));
        }
    }

    #[test]
    fn a_disk_full_while_streaming_leaves_no_snapshot() {
        let image = big_image(30_000);
        let len = snapshot::to_bytes(&image).len() as u64;
        // Full in the first chunk, in a later one, and with no room for the header's rewrite.
        for space in [
            1_000,
            2 * SINK_CHUNK as u64 + 5,
            len + SNAPSHOT_HEADER_LEN - 1,
        ] {
            let faulty = crate::fault::FaultDir::new(crate::mem::MemDir::new());
            faulty.set_space_left(Some(space));
            let err = write_snapshot(&faulty, &image).unwrap_err();
            assert!(matches!(err, WalError::DiskFull { .. }), "{space}: {err}");
            assert!(faulty.list().unwrap().is_empty(), "{space}: nothing left");
            faulty.set_space_left(None);
            write_snapshot(&faulty, &image).unwrap();
            assert_eq!(load_newest_snapshot(&faulty).unwrap().unwrap().0, image);
        }
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
