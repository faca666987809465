//! A list that keeps one element inline and more in a boxed slice, in the size of the element.
//!
//! `SmallVec<[T; 1]>` spends a word on its length next to the inline element; for the lists of
//! a hold's part (its items, and each item's allocations), almost always of one element, that
//! word is 8 of every part's bytes, twice. [`OneOrMany`] is an enum whose `Many` variant lives
//! in a niche of `T` (an element type with a spare bit pattern, see [`Niche`]), so the list is
//! exactly as large as one element. `Many` is a boxed slice (two words), not a `Vec` (three):
//! it must fit beside the niche in an element of three words. These lists are built once and
//! seldom changed, so a push or a retain that copies the slice into a new one costs little.

use std::fmt;

/// A field of one byte that has a single valid value: it costs a byte of a struct's padding
/// and gives the struct 255 spare bit patterns, where an enum around it keeps its tag.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Niche {
    #[default]
    Only = 0,
}

/// One element inline, or any number in a boxed slice (an empty list is an empty slice, which
/// allocates nothing). Compared and printed as a slice, however it is stored.
#[derive(Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Box<[T]>),
}

impl<T> OneOrMany<T> {
    pub fn new() -> Self {
        OneOrMany::Many(Box::default())
    }
    /// The list of `v`'s elements: one inline, else `v`'s as a slice.
    fn of(mut v: Vec<T>) -> Self {
        match v.pop() {
            Some(x) if v.is_empty() => OneOrMany::One(x),
            last => {
                v.extend(last);
                OneOrMany::Many(v.into_boxed_slice())
            }
        }
    }
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(b) => b.into_vec(),
        }
    }
    /// Appends `x`: inline if the list was empty, else into a slice one longer (one
    /// reallocation, and none left over).
    pub fn push(&mut self, x: T) {
        if let OneOrMany::Many(b) = self {
            if b.is_empty() {
                // The usual first push: an empty slice owns nothing to drop.
                *self = OneOrMany::One(x);
                return;
            }
        }
        *self = match std::mem::take(self) {
            OneOrMany::One(first) => OneOrMany::Many(Box::new([first, x])),
            OneOrMany::Many(b) => {
                let mut v = b.into_vec();
                v.reserve_exact(1);
                v.push(x);
                OneOrMany::Many(v.into_boxed_slice())
            }
        };
    }
    /// Keeps the elements for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            OneOrMany::One(x) => {
                if !keep(x) {
                    *self = OneOrMany::new();
                }
            }
            OneOrMany::Many(_) => {
                let mut v = std::mem::take(self).into_vec();
                v.retain(keep);
                *self = OneOrMany::of(v);
            }
        }
    }
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::new()
    }
}

impl<T> std::ops::Deref for OneOrMany<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            OneOrMany::One(x) => std::slice::from_ref(x),
            OneOrMany::Many(v) => v,
        }
    }
}

impl<T> std::ops::DerefMut for OneOrMany<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            OneOrMany::One(x) => std::slice::from_mut(x),
            OneOrMany::Many(v) => v,
        }
    }
}

impl<T> FromIterator<T> for OneOrMany<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut items = items.into_iter();
        let Some(first) = items.next() else {
            return OneOrMany::new();
        };
        match items.next() {
            None => OneOrMany::One(first),
            Some(second) => {
                // The room for all at once, not grown one doubling at a time.
                let mut v = Vec::with_capacity(2 + items.size_hint().0);
                v.push(first);
                v.push(second);
                v.extend(items);
                OneOrMany::Many(v.into_boxed_slice())
            }
        }
    }
}

impl<T> Extend<T> for OneOrMany<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for x in items {
            self.push(x);
        }
    }
}

impl<T> IntoIterator for OneOrMany<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

impl<'a, T> IntoIterator for &'a OneOrMany<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut OneOrMany<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T: PartialEq> PartialEq for OneOrMany<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Eq> Eq for OneOrMany<T> {}

impl<T: fmt::Debug> fmt::Debug for OneOrMany<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        <[T] as fmt::Debug>::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Wide {
        a: u64,
        b: u64,
        c: u64,
        n: Niche,
    }

    fn w(a: u64) -> Wide {
        Wide {
            a,
            b: a + 1,
            c: a + 2,
            n: Niche::Only,
        }
    }

    /// The list is exactly as large as its element when the element has a niche, and so is an
    /// `Option` of it.
    #[test]
    fn the_list_takes_the_elements_size() {
        assert_eq!(size_of::<OneOrMany<Wide>>(), size_of::<Wide>());
        assert_eq!(size_of::<Option<OneOrMany<Wide>>>(), size_of::<Wide>());
    }

    /// Pushing, retaining, collecting and extending give the same slice as a `Vec` would,
    /// and one element stays inline.
    #[test]
    fn it_behaves_as_a_vec() {
        for n in 0..5u64 {
            let v: Vec<Wide> = (0..n).map(w).collect();
            let collected: OneOrMany<Wide> = v.iter().cloned().collect();
            assert_eq!(&*collected, &v[..]);
            assert_eq!(n == 1, matches!(collected, OneOrMany::One(_)));
            let mut pushed = OneOrMany::new();
            for x in &v {
                pushed.push(x.clone());
            }
            assert_eq!(pushed, collected);
            let mut extended = OneOrMany::default();
            extended.extend(v.iter().cloned());
            assert_eq!(extended, collected);
            assert_eq!(collected.clone().into_iter().collect::<Vec<_>>(), v);
            for keep_odd in [false, true] {
                let mut r = collected.clone();
                r.retain(|x| (x.a % 2 == 1) == keep_odd);
                let mut want = v.clone();
                want.retain(|x| (x.a % 2 == 1) == keep_odd);
                assert_eq!(&*r, &want[..]);
            }
            let mut m = collected.clone();
            for x in &mut m {
                x.a += 10;
            }
            assert!(m.iter().zip(&v).all(|(x, y)| x.a == y.a + 10));
        }
        // One inline and a slice of one compare equal, and print as a list.
        assert_eq!(OneOrMany::One(w(1)), OneOrMany::Many(Box::new([w(1)])));
        assert_eq!(format!("{:?}", OneOrMany::One(7u8)), format!("{:?}", [7u8]));
    }
}
