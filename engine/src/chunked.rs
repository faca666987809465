//! A deque in fixed-size chunks, for the queues that grow with live state (the front's routes,
//! the idempotency keys' expiry order).
//!
//! A `VecDeque` doubles when full: it allocates twice its size and copies every entry, on the
//! thread that pushed. With millions of entries that is one copy of tens of megabytes into
//! fresh pages (each zeroed by the kernel on first touch) while every write waits behind it.
//! [`ChunkDeque`] allocates one more chunk of [`CHUNK`] entries instead and never moves what
//! it holds. Entries are pushed at the back and popped at the front only, so every chunk but
//! the first and the last is full, and an index is found with a division.

use std::collections::VecDeque;

/// Entries per chunk.
pub const CHUNK: usize = 4096;

#[derive(Clone, Debug)]
pub struct ChunkDeque<T> {
    /// Never empty of chunks once something was pushed; each chunk holds at most [`CHUNK`]
    /// entries and never grows past that capacity.
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for ChunkDeque<T> {
    fn default() -> Self {
        ChunkDeque {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> ChunkDeque<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, v: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(v),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(v);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let v = first.pop_front()?;
        self.len -= 1;
        // An emptied chunk goes, unless it is the only one: a queue that empties and fills
        // again (a quiet server) does not allocate a chunk each time.
        if first.is_empty() && self.chunks.len() > 1 {
            self.chunks.pop_front();
        }
        Some(v)
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(|c| c.front())
    }

    /// Chunk and position of entry `i` (< len).
    fn at(&self, i: usize) -> (usize, usize) {
        let first = self.chunks[0].len();
        if i < first {
            (0, i)
        } else {
            let j = i - first;
            (1 + j / CHUNK, j % CHUNK)
        }
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        (i < self.len).then(|| {
            let (c, k) = self.at(i);
            &self.chunks[c][k]
        })
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        let (c, k) = self.at(i);
        Some(&mut self.chunks[c][k])
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T: Clone> ChunkDeque<T> {
    /// Grows to `n` entries, the new ones `v`.
    pub fn resize(&mut self, n: usize, v: T) {
        while self.len < n {
            self.push_back(v.clone());
        }
    }
}

impl<T> std::ops::Index<usize> for ChunkDeque<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        let len = self.len;
        self.get(i)
            .unwrap_or_else(|| panic!("entry {i} of a deque of {len}"))
    }
}

impl<T> std::ops::IndexMut<usize> for ChunkDeque<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        let len = self.len;
        self.get_mut(i)
            .unwrap_or_else(|| panic!("entry {i} of a deque of {len}"))
    }
}

impl<T> IntoIterator for ChunkDeque<T> {
    type Item = T;
    type IntoIter = std::iter::Flatten<std::collections::vec_deque::IntoIter<VecDeque<T>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl<T> FromIterator<T> for ChunkDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut d = ChunkDeque::default();
        for v in iter {
            d.push_back(v);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked deque behaves as a `VecDeque` across chunk boundaries: pushes, pops, writes
    /// by index, growth by `resize`, emptying and filling again; no chunk grows past its size.
    #[test]
    fn it_behaves_as_a_vecdeque() {
        let mut d = ChunkDeque::default();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        for step in 0..60_000u64 {
            match next(20) {
                0..=9 => {
                    d.push_back(step);
                    model.push_back(step);
                }
                10..=15 => assert_eq!(d.pop_front(), model.pop_front()),
                16 if !model.is_empty() => {
                    let i = next(model.len() as u64) as usize;
                    d[i] = step;
                    model[i] = step;
                }
                17 => {
                    let n = model.len() + next(CHUNK as u64 / 2) as usize;
                    d.resize(n, 7);
                    model.resize(n, 7);
                }
                _ => {}
            }
            if step % 7_919 == 0 {
                // Emptied, then filled again from the kept chunk.
                while d.pop_front().is_some() {}
                model.clear();
                assert!(d.is_empty() && d.chunks.len() <= 1);
            }
            assert_eq!(d.len(), model.len());
            assert_eq!(d.front(), model.front());
            if let Some(i) = model.len().checked_sub(1) {
                assert_eq!(d[i], model[i]);
            }
            assert_eq!(d.get(model.len()), None);
        }
        assert!(d.chunks.iter().all(|c| c.len() <= CHUNK));
        assert!(d.chunks.len() <= d.len() / CHUNK + 2);
        assert!(d.iter().eq(model.iter()));
        let copy: ChunkDeque<u64> = model.iter().copied().collect();
        assert!(copy.iter().eq(d.iter()));
        assert!(copy.into_iter().eq(model.into_iter()));
    }
}
