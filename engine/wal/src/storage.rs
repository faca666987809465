//! The storage seam: one file ([`Storage`]) and one directory of files ([`Directory`]), in the
//! style of redb's `StorageBackend`. The log uses nothing else, so tests and the simulator run
//! it on memory ([`crate::MemDir`]) or on a medium that fails ([`crate::FaultDir`]); servers run
//! it on the file system ([`FsDir`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One file. Offsets and lengths are `u64` bytes.
pub trait Storage: Send + fmt::Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; `UnexpectedEof` when the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Replaces the content of `buf` with the file's first `len` bytes (a whole segment), in
    /// its existing allocation. Override it to read without zero-filling the buffer first.
    fn read_into(&self, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
        buf.clear();
        buf.resize(len, 0);
        self.read_at(0, buf)
    }
    /// Writes all of `data` at `offset`, extending the file if needed. Not durable until
    /// [`Storage::sync_data`] returns `Ok`. On error, any prefix of `data` may have been written.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes every write and length change so far durable (`fdatasync`). After an error the
    /// state of the medium is unknown: callers never retry.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// A directory of files named by plain names (no separators).
pub trait Directory: Send + Sync + fmt::Debug {
    /// The names of the files in the directory, in any order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; `AlreadyExists` if it exists. The name is durable only after
    /// [`Directory::sync`].
    fn create(&self, name: &str) -> io::Result<Box<dyn Storage>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Box<dyn Storage>>;
    /// Removes a file (durable after [`Directory::sync`]).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file, replacing `to` (durable after [`Directory::sync`]).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames durable (`fsync` of the directory).
    fn sync(&self) -> io::Result<()>;
    /// Creates a new, empty file (as [`Directory::create`]) for one long write made of whole
    /// blocks: every offset and length a multiple of [`BULK_BLOCK`], from buffers aligned to
    /// it, except the last [`Storage::set_len`]. A directory may write such a file around its
    /// caches ([`FsDir`]: `O_DIRECT`); by default it is an ordinary file.
    fn create_bulk(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        self.create(name)
    }
}

/// The block of [`Directory::create_bulk`]'s files: offsets, lengths and buffer addresses of
/// their writes are multiples of it (the logical block size `O_DIRECT` asks for is at most
/// this on the disks and file systems a server runs on).
pub const BULK_BLOCK: usize = 4096;

/// Reads a whole file, refusing files longer than `len_max` (so a hostile or runaway file
/// never becomes an allocation of its size).
pub fn read_all(file: &dyn Storage, len_max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_all_into(file, len_max, &mut buf)?;
    Ok(buf)
}

/// [`read_all`] into `buf`, reusing its allocation: a reader going through many segments
/// allocates (and the kernel zeroes) the memory once, not once per segment.
pub fn read_all_into(file: &dyn Storage, len_max: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = checked_len(file, len_max)?;
    file.read_into(buf, len)
}

/// [`read_all`] into a buffer aligned to 16 bytes (a snapshot's image is read in place).
pub fn read_all_aligned(
    file: &dyn Storage,
    len_max: u64,
) -> io::Result<depot_engine::snapshot::AlignedBytes> {
    let len = checked_len(file, len_max)?;
    let mut buf = depot_engine::snapshot::AlignedBytes::with_capacity(len);
    buf.resize(len, 0);
    file.read_at(0, &mut buf)?;
    Ok(buf)
}

/// The file's length, refused above `len_max`.
fn checked_len(file: &dyn Storage, len_max: u64) -> io::Result<usize> {
    let len = file.len()?;
    if len > len_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, the limit is {len_max}"),
        ));
    }
    usize::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, more than this machine can address"),
        )
    })
}

/// True for `EINVAL` (here: a file system refusing `O_DIRECT`).
fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// True when an I/O error means the medium is full (`ENOSPC`, or `EDQUOT` for a quota).
pub fn is_disk_full(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// A directory of the real file system.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// Opens (creating it and its parents if needed) the directory at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FsDir> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path)?;
        Ok(FsDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the new file `name`, opened for reading and writing with `flags` added.
    fn create_file(&self, name: &str, flags: i32) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(flags)
            .open(self.file_path(name)?)
    }

    fn file_path(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a plain file name: {name:?}"),
            ));
        }
        Ok(self.path.join(name))
    }
}

impl Directory for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        Ok(Box::new(FsFile {
            file: self.create_file(name, 0)?,
            direct: false,
        }))
    }

    /// With `O_DIRECT` where the file system takes it: the bytes go from the writer's buffer
    /// to the disk, not copied into the page cache first (for a snapshot of hundreds of
    /// megabytes, that copy into fresh pages was about a third of the snapshot's CPU time),
    /// and a snapshot does not push the log's pages out of the cache. A file system that
    /// refuses the flag when the file is opened, or at a write (`EINVAL`), gets an ordinary
    /// file instead.
    fn create_bulk(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        #[cfg(target_os = "linux")]
        match self.create_file(name, rustix::fs::OFlags::DIRECT.bits() as i32) {
            Ok(file) => return Ok(Box::new(FsFile { file, direct: true })),
            Err(e) if is_einval(&e) => {}
            Err(e) => return Err(e),
        }
        self.create(name)
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.file_path(name)?)?;
        Ok(Box::new(FsFile {
            file,
            direct: false,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.file_path(name)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.file_path(from)?, self.file_path(to)?)
    }

    fn sync(&self) -> io::Result<()> {
        // On Linux a directory opened read-only can be fsynced; that makes its entries durable.
        File::open(&self.path)?.sync_all()
    }
}

/// A file of the real file system: positioned reads and writes (`pread`/`pwrite`).
#[derive(Debug)]
pub struct FsFile {
    file: File,
    /// Opened with `O_DIRECT` ([`Directory::create_bulk`]), and the file system has not
    /// refused a write yet.
    direct: bool,
}

impl FsFile {
    /// Turns `O_DIRECT` off for the rest of this file's writes (`fcntl(F_SETFL)`).
    fn stop_direct(&mut self) -> io::Result<()> {
        self.direct = false;
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
            let flags = fcntl_getfl(&self.file)?;
            fcntl_setfl(&self.file, flags - OFlags::DIRECT)?;
        }
        Ok(())
    }
}

impl Storage for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn read_into(&self, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        // `read_to_end` fills the spare capacity without zeroing it first. Reads and writes
        // elsewhere are positioned (`pread`/`pwrite`): moving the file offset affects nothing.
        buf.clear();
        buf.reserve(len);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        file.take(len as u64).read_to_end(buf)?;
        if buf.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {} of {len} bytes", buf.len()),
            ));
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self.file.write_all_at(data, offset) {
            // `O_DIRECT` refused (a file system that takes the flag but not such writes, or a
            // write that is not whole blocks): the whole write again through the page cache.
            // Whatever part of it went through already is written again with the same bytes.
            Err(e) if self.direct && is_einval(&e) => {
                self.stop_direct()?;
                self.file.write_all_at(data, offset)
            }
            done => done,
        }
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        // fdatasync: the data and the metadata needed to read it back (the length), not times.
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file made for whole blocks ([`Directory::create_bulk`]: `O_DIRECT` where the file
    /// system takes it) takes any write all the same, aligned or not, and reads back what was
    /// written.
    #[test]
    fn a_bulk_file_takes_unaligned_writes_too() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = FsDir::open(tmp.path()).expect("the directory opens");
        let mut file = dir.create_bulk("bulk").expect("created");
        let mut block = rkyv::util::AlignedVec::<BULK_BLOCK>::with_capacity(2 * BULK_BLOCK);
        block.resize(2 * BULK_BLOCK, 5);
        file.write_at(0, &block).expect("whole blocks");
        // Neither offset nor length nor (likely) the address are whole blocks.
        file.write_at(3, b"abc").expect("an unaligned write");
        file.write_at(2 * BULK_BLOCK as u64, b"tail")
            .expect("past the blocks");
        file.sync_data().expect("synced");
        let mut expected = vec![5u8; 2 * BULK_BLOCK];
        expected[3..6].copy_from_slice(b"abc");
        expected.extend_from_slice(b"tail");
        assert_eq!(
            read_all(&*dir.open("bulk").expect("opens"), 1 << 20).expect("read"),
            expected
        );
        assert_eq!(
            dir.create_bulk("bulk").expect_err("exists").kind(),
            io::ErrorKind::AlreadyExists
        );
    }

    /// A reused buffer, longer or shorter than the file, ends up holding exactly the file; a
    /// file shorter than asked is an error, never a short or zero-padded buffer.
    #[test]
    fn read_into_reuses_the_buffer_and_reads_exactly_the_file() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = FsDir::open(tmp.path()).expect("the directory opens");
        let mut long = dir.create("long").expect("created");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        long.write_at(0, &data).expect("written");
        let mut short = dir.create("short").expect("created");
        short.write_at(0, b"abc").expect("written");

        let mut buf = vec![7u8; 10];
        read_all_into(&*dir.open("long").expect("opens"), 1 << 20, &mut buf).expect("read");
        assert_eq!(buf, data);
        let capacity = buf.capacity();
        read_all_into(&*dir.open("short").expect("opens"), 1 << 20, &mut buf).expect("read");
        assert_eq!(buf, b"abc");
        assert_eq!(buf.capacity(), capacity, "the allocation is kept");

        let e = dir
            .open("short")
            .expect("opens")
            .read_into(&mut buf, 10)
            .expect_err("the file has 3 bytes, not 10");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = read_all_into(&*dir.open("long").expect("opens"), 1_000, &mut buf)
            .expect_err("longer than the limit");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
