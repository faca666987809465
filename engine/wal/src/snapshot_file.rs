//! Snapshot files: a state image ([`depot_engine::snapshot::Image`]) in a checksummed file
//! `snapshot-<seq, 20 digits>.rkyv`, written crash-safely (temporary name, `fdatasync`,
//! rename, directory `fsync`). A snapshot only shortens recovery: the log stays the truth, so
//! an invalid snapshot is skipped (with a warning) in favour of an older one or the full log.
//! `docs/wal_format.md` has the layout and the crash-safety argument.

use crate::error::WalError;
use crate::storage::{is_disk_full, read_all_aligned, Directory, Storage, BULK_BLOCK};
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

/// A buffer of file bytes aligned for [`Directory::create_bulk`]'s files.
type BlockBuf = rkyv::util::AlignedVec<BULK_BLOCK>;

/// An rkyv writer into a snapshot file being written: the body goes to the file in chunks of
/// about [`SINK_CHUNK`] bytes as it is serialized, its checksum computed on the way. The whole
/// image is never in memory as bytes.
///
/// The file is written in whole blocks ([`BULK_BLOCK`]) from an aligned buffer, as
/// [`Directory::create_bulk`] asks: the buffer holds the file's bytes from `written` on (the
/// first block starts with the header's room), only whole blocks are written before the end,
/// the last block is written padded and the file then cut to its length. The header, known
/// only at the end, goes into the first block, which is kept until then and written last.
struct FileSink<'a> {
    file: &'a mut dyn Storage,
    /// The file's bytes from `written` on, not written yet.
    buf: BlockBuf,
    /// The file's first block as written (`None` until it is): the header is put in it at the
    /// end and it is written again.
    first: Option<BlockBuf>,
    /// Bytes of the body serialized so far (rkyv's position).
    pos: u64,
    /// Bytes of the file written so far: a multiple of [`BULK_BLOCK`].
    written: u64,
    /// CRC32C of the body's bytes written so far.
    crc: u32,
    /// The first write error (disk full, say): kept for the caller, which maps it.
    error: Option<std::io::Error>,
}

impl<'a> FileSink<'a> {
    fn new(file: &'a mut dyn Storage) -> Self {
        let mut buf = BlockBuf::with_capacity(SINK_CHUNK + 2 * BULK_BLOCK);
        buf.resize(SNAPSHOT_HEADER_LEN as usize, 0);
        FileSink {
            file,
            buf,
            first: None,
            pos: 0,
            written: 0,
            crc: 0,
            error: None,
        }
    }

    /// Keeps `e` for the caller and gives rkyv an error that stops the serialization.
    fn fail(&mut self, e: std::io::Error) -> rkyv::rancor::Error {
        use rkyv::rancor::Source;
        let out = rkyv::rancor::Error::new(std::io::Error::new(e.kind(), e.to_string()));
        self.error = Some(e);
        out
    }

    /// Writes the buffer's first `n` bytes (whole blocks) at `written`, and counts the body's
    /// part of them into the checksum (`body_end`: where the body ends in the buffer, for the
    /// padded last block).
    fn write_blocks(&mut self, n: usize, body_end: usize) -> std::io::Result<()> {
        debug_assert_eq!(n % BULK_BLOCK, 0);
        self.file.write_at(self.written, &self.buf[..n])?;
        // The header's room is not part of the body.
        let body_start = if self.written == 0 {
            SNAPSHOT_HEADER_LEN as usize
        } else {
            0
        };
        self.crc = crc32c::crc32c_append(self.crc, &self.buf[body_start..body_end.min(n)]);
        if self.written == 0 {
            let mut first = BlockBuf::with_capacity(BULK_BLOCK);
            first.extend_from_slice(&self.buf[..BULK_BLOCK]);
            self.first = Some(first);
        }
        self.written += n as u64;
        Ok(())
    }

    /// Writes the whole blocks the buffer holds and keeps the rest in it.
    fn flush_blocks(&mut self) -> std::io::Result<()> {
        let n = self.buf.len() / BULK_BLOCK * BULK_BLOCK;
        if n == 0 {
            return Ok(());
        }
        self.write_blocks(n, n)?;
        let rest = self.buf.len() - n;
        self.buf.as_mut_slice().copy_within(n.., 0);
        self.buf.resize(rest, 0);
        Ok(())
    }

    /// Writes the rest of the body and then the header for `seq` (the file's first block,
    /// again), and cuts the file to its length. Returns the body's length.
    fn finish(mut self, seq: Seq) -> std::io::Result<u64> {
        let file_len = self.written + self.buf.len() as u64;
        let body_len = file_len - SNAPSHOT_HEADER_LEN;
        let end = self.buf.len();
        if end > 0 {
            self.buf.resize(end.next_multiple_of(BULK_BLOCK), 0);
            self.write_blocks(self.buf.len(), end)?;
        }
        let mut first = self.first.take().expect("the header's block is written");
        first[..SNAPSHOT_HEADER_LEN as usize].copy_from_slice(&header_for(seq, body_len, self.crc));
        self.file.write_at(0, &first)?;
        // Without the last block's padding (the first block's, for a file shorter than one).
        self.file.set_len(file_len)?;
        Ok(body_len)
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
            if let Err(e) = self.flush_blocks() {
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
        let mut file = dir.create_bulk(&tmp).map_err(|e| write_error(&tmp, e))?;
        // The body first, as it is serialized; then the header, which names its length and
        // checksum; then the sync. Until the rename the file has no snapshot's name.
        let mut sink = FileSink::new(&mut *file);
        let serialized = image.serialize_into(&mut sink).map(|_| ());
        let finished = match (sink.error.take(), serialized) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(std::io::Error::other(e.to_string())),
            (None, Ok(())) => sink.finish(seq),
        };
        let len = finished.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                WalError::io(&name, e)
            } else {
                write_error(&tmp, e)
            }
        })?;
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
        let tmp = tempfile::tempdir().unwrap();
        let fs = crate::storage::FsDir::open(tmp.path()).unwrap();
        for skus in [0, 1, 30_000] {
            let image = big_image(skus);
            let body = snapshot::to_bytes(&image);
            let mem = crate::mem::MemDir::new();
            // In memory, and on the file system (around the page cache where it allows).
            let dirs: [(&dyn Directory, &str); 2] = [(&mem, "memory"), (&fs, "file system")];
            for (dir, what) in dirs {
                let (name, len) = write_snapshot_sized(dir, ImageSource::Image(&image)).unwrap();
                assert_eq!(len, body.len() as u64);
                if skus == 30_000 {
                    assert!(len > 3 * SINK_CHUNK as u64, "several chunks: {len}");
                }
                let file = crate::storage::read_all(&*dir.open(&name).unwrap(), u64::MAX).unwrap();
                assert!(
                    file == encode_snapshot(image.seq, &body),
                    "{skus} SKUs, {what}"
                );
                assert_eq!(
                    dir.list().unwrap(),
                    std::slice::from_ref(&name),
                    "no temporary file left ({what})"
                );
                let (read, read_name) = load_newest_snapshot(dir).unwrap().unwrap();
                assert_eq!((read, read_name), (image.clone(), name.clone()));
                dir.remove(&name).unwrap();
            }
        }
    }

    /// The sink writes whole blocks and the header last: for bodies ending on every side of a
    /// block and of a chunk, written in pieces of every size, the file is the header and the
    /// body, in memory and on the file system.
    #[test]
    fn the_sink_writes_any_body_as_the_header_and_the_body() {
        use rkyv::ser::Writer;
        let tmp = tempfile::tempdir().unwrap();
        let fs = crate::storage::FsDir::open(tmp.path()).unwrap();
        let mem = crate::mem::MemDir::new();
        let header = SNAPSHOT_HEADER_LEN as usize;
        let lens = [
            0,
            1,
            BULK_BLOCK - header - 1,
            BULK_BLOCK - header,
            BULK_BLOCK - header + 1,
            3 * BULK_BLOCK + 17,
            SINK_CHUNK - 1,
            SINK_CHUNK,
            2 * SINK_CHUNK + BULK_BLOCK - header + 5,
        ];
        for (i, len) in lens.into_iter().enumerate() {
            let body: Vec<u8> = (0..len).map(|j| (j * 31 % 251) as u8 ^ i as u8).collect();
            let piece = [1, 7, 4096, 100_000][i % 4];
            let dirs: [(&dyn Directory, &str); 2] = [(&mem, "memory"), (&fs, "file system")];
            for (dir, what) in dirs {
                let name = format!("sink-{i}");
                let mut file = dir.create_bulk(&name).unwrap();
                let mut sink = FileSink::new(&mut *file);
                for part in body.chunks(piece) {
                    sink.write(part).unwrap();
                }
                assert_eq!(sink.finish(77).unwrap(), len as u64);
                file.sync_data().unwrap();
                drop(file);
                let written =
                    crate::storage::read_all(&*dir.open(&name).unwrap(), u64::MAX).unwrap();
                assert!(
                    written == encode_snapshot(77, &body),
                    "a body of {len} bytes in pieces of {piece}, {what}"
                );
            }
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
