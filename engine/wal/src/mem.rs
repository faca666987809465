//! An in-memory [`Directory`] that remembers what is durable, so a test can "crash" it: every
//! file goes back to its content at its last `sync_data`, and the directory to its entries at
//! its last `sync`. Clones share the same files.

use crate::storage::{Directory, Storage};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct FileState {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash: `data` at the last `sync_data`.
    durable: Vec<u8>,
}

type Shared = Arc<Mutex<FileState>>;

#[derive(Debug, Default)]
struct DirState {
    files: BTreeMap<String, Shared>,
    /// The entries at the last directory sync.
    durable: BTreeMap<String, Shared>,
}

/// A directory in memory. Cheap to clone; clones are the same directory.
#[derive(Debug, Default, Clone)]
pub struct MemDir {
    state: Arc<Mutex<DirState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves plain bytes behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name:?}"))
}

impl MemDir {
    pub fn new() -> MemDir {
        MemDir::default()
    }

    /// Puts a file with `bytes` in the directory, durable as it is (test setup).
    pub fn insert(&self, name: &str, bytes: Vec<u8>) {
        let file = Arc::new(Mutex::new(FileState {
            data: bytes.clone(),
            durable: bytes,
        }));
        let mut d = lock(&self.state);
        d.files.insert(name.to_string(), file.clone());
        d.durable.insert(name.to_string(), file);
    }

    /// The current bytes of a file.
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        let d = lock(&self.state);
        d.files.get(name).map(|f| lock(f).data.clone())
    }

    /// The current file names, sorted.
    pub fn names(&self) -> Vec<String> {
        lock(&self.state).files.keys().cloned().collect()
    }

    /// Loses everything not synced: the directory returns to its last sync, each file to its
    /// last `sync_data`. Handles opened before the crash are detached from the directory.
    pub fn crash(&self) {
        let mut d = lock(&self.state);
        let durable: BTreeMap<String, Shared> = d
            .durable
            .iter()
            .map(|(name, f)| {
                let bytes = lock(f).durable.clone();
                let fresh = Arc::new(Mutex::new(FileState {
                    data: bytes.clone(),
                    durable: bytes,
                }));
                (name.clone(), fresh)
            })
            .collect();
        d.files = durable.clone();
        d.durable = durable;
    }
}

impl Directory for MemDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        let mut d = lock(&self.state);
        if d.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name:?} exists"),
            ));
        }
        let file = Shared::default();
        d.files.insert(name.to_string(), file.clone());
        Ok(Box::new(MemFile { file }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        let d = lock(&self.state);
        let file = d.files.get(name).ok_or_else(|| not_found(name))?.clone();
        Ok(Box::new(MemFile { file }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut d = lock(&self.state);
        d.files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut d = lock(&self.state);
        let file = d.files.remove(from).ok_or_else(|| not_found(from))?;
        d.files.insert(to.to_string(), file);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut d = lock(&self.state);
        d.durable = d.files.clone();
        Ok(())
    }
}

/// A file of a [`MemDir`].
#[derive(Debug)]
pub struct MemFile {
    file: Shared,
}

impl Storage for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.file).data.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = lock(&self.file);
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| f.data.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut f = lock(&self.file);
        let start = usize::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let end = start + data.len();
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[start..end].copy_from_slice(data);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        lock(&self.file).data.resize(len, 0);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut f = lock(&self.file);
        f.durable = f.data.clone();
        Ok(())
    }
}
