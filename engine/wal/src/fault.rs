//! A [`Directory`] wrapper that makes the medium misbehave on command, for tests and the
//! simulator: failing fsyncs, a disk that fills up, a crash that tears a write, and bit flips.
//! Clones share the same faults.

use crate::storage::{Directory, Storage};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct Faults {
    /// Every `sync_data` and directory `sync` fails with `EIO` while set.
    fail_sync: bool,
    /// Every sync fails with `EIO` once this many have succeeded.
    fail_sync_after: Option<u64>,
    /// Bytes the files may still grow by (an overwrite takes none); a write past it writes the
    /// prefix that fits and fails with `ENOSPC`.
    space_left: Option<u64>,
    /// Bytes that may still be written before the machine "crashes": the write that crosses
    /// it reaches the medium only up to it, and every later operation fails.
    crash_after: Option<u64>,
    crashed: bool,
    bytes_written: u64,
    syncs: u64,
}

/// A directory whose medium fails on command. See the module docs.
#[derive(Clone)]
pub struct FaultDir {
    inner: Arc<dyn Directory>,
    faults: Arc<Mutex<Faults>>,
}

impl fmt::Debug for FaultDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultDir")
            .field("inner", &self.inner)
            .field("faults", &*self.lock())
            .finish()
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn crashed_error() -> io::Error {
    io::Error::other("the simulated machine has crashed")
}

impl FaultDir {
    pub fn new(inner: impl Directory + 'static) -> FaultDir {
        FaultDir {
            inner: Arc::new(inner),
            faults: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While `fail` is true, every file and directory sync fails with `EIO`.
    pub fn set_fail_sync(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// Once `syncs` more file or directory syncs have succeeded, every sync fails with `EIO`.
    pub fn fail_sync_after(&self, syncs: u64) {
        let mut f = self.lock();
        f.fail_sync_after = Some(f.syncs.saturating_add(syncs));
    }

    /// After files grew by `bytes` more bytes, writes fail with `ENOSPC` (`None`: unlimited).
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.lock().space_left = bytes;
    }

    /// After `bytes` more bytes the machine crashes mid-write: only that prefix of the write
    /// reaches the medium and every later call fails.
    pub fn crash_after(&self, bytes: u64) {
        self.lock().crash_after = Some(bytes);
    }

    /// Whether a `crash_after` crash has happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Bytes written through this directory so far.
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// Successful file and directory syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of file `name`, behind the log's back.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> io::Result<()> {
        flip_bit(&*self.inner, name, offset, bit)
    }

    fn check(&self) -> io::Result<()> {
        if self.lock().crashed {
            return Err(crashed_error());
        }
        Ok(())
    }

    fn wrap(&self, file: Box<dyn Storage>) -> Box<dyn Storage> {
        Box::new(FaultFile {
            inner: file,
            dir: self.clone(),
        })
    }

    fn sync_allowed(&self) -> io::Result<()> {
        let mut f = self.lock();
        if f.crashed {
            return Err(crashed_error());
        }
        if f.fail_sync || f.fail_sync_after.is_some_and(|n| f.syncs >= n) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        f.syncs += 1;
        Ok(())
    }
}

/// Flips one bit of a file in any directory (tests of corruption on the medium).
pub fn flip_bit(dir: &dyn Directory, name: &str, offset: u64, bit: u8) -> io::Result<()> {
    let mut file = dir.open(name)?;
    let mut b = [0u8; 1];
    file.read_at(offset, &mut b)?;
    b[0] ^= 1 << (bit & 7);
    file.write_at(offset, &b)
}

impl Directory for FaultDir {
    fn list(&self) -> io::Result<Vec<String>> {
        self.check()?;
        self.inner.list()
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        self.check()?;
        Ok(self.wrap(self.inner.create(name)?))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        self.check()?;
        Ok(self.wrap(self.inner.open(name)?))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.check()?;
        self.inner.remove(name)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check()?;
        self.inner.rename(from, to)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_allowed()?;
        self.inner.sync()
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn Storage>,
    dir: FaultDir,
}

impl Storage for FaultFile {
    fn len(&self) -> io::Result<u64> {
        self.dir.check()?;
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.dir.check()?;
        self.inner.read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        // Decide how much reaches the medium, then write it without holding the lock. Only
        // bytes past the file's end take space: an overwrite (of the zeros the log writes
        // ahead of its records) needs none.
        let len = self.inner.len()?;
        let (allowed, failure) = {
            let mut f = self.dir.lock();
            if f.crashed {
                return Err(crashed_error());
            }
            let want = data.len() as u64;
            let mut allowed = want;
            let mut failure = None;
            if let Some(left) = f.crash_after {
                if want > left {
                    allowed = left;
                    f.crashed = true;
                    failure = Some(crashed_error());
                }
                f.crash_after = Some(left.saturating_sub(want));
            }
            if let Some(left) = f.space_left {
                let end = len.max(offset);
                if offset + allowed > end + left {
                    allowed = (end + left).saturating_sub(offset);
                    failure = Some(io::Error::from_raw_os_error(ENOSPC));
                }
                f.space_left = Some(left - (offset + allowed).saturating_sub(end));
            }
            f.bytes_written += allowed;
            (allowed, failure)
        };
        self.inner.write_at(offset, &data[..allowed as usize])?;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.dir.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.dir.sync_allowed()?;
        self.inner.sync_data()
    }
}
