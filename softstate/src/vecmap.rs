//! An ordered map kept as one sorted vector: for the mail maps of one bucket (users
//! ÷ buckets entries, tens at most), where a lookup is a binary search over one
//! contiguous run of memory instead of a walk down tree nodes spread over the heap.
//! Iteration order is the key order, as with `BTreeMap`. Beside the entries, a
//! short fingerprint of each key (in the same order) is searched first: one cache
//! line of fingerprints, then the one entry, instead of a binary search's several
//! lines of keys. A map of up to [`PRINTS_INLINE`] keys keeps its fingerprints in
//! itself, so finding a key in it reads the map, then the entry.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use smallvec::SmallVec;

/// Fingerprints kept inside the map (a bucket's mail maps: users ÷ buckets keys,
/// about 15 at a million users, more than 24 in one of 70 buckets).
pub const PRINTS_INLINE: usize = 24;

/// Keys ascending, each once, with their values.
#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
    /// `fingerprint(key)` of each entry, in entry order.
    prints: SmallVec<[u16; PRINTS_INLINE]>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
            prints: SmallVec::new(),
        }
    }
}

/// A fixed (unseeded) multiplicative hash: the same key gives the same print in
/// every process.
struct Fold(u64);

impl Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn fingerprint<Q: Hash + ?Sized>(key: &Q) -> u16 {
    let mut h = Fold(0);
    key.hash(&mut h);
    (h.finish() >> 48) as u16
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord + Hash, V> VecMap<K, V> {
    /// Where `key` is (`Ok`) or would go (`Err`).
    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        let print = fingerprint(key);
        for (i, p) in self.prints.iter().enumerate() {
            if *p == print && self.entries[i].0.borrow() == key {
                return Ok(i);
            }
        }
        match self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key)) {
            Ok(i) => Ok(i),
            Err(i) => Err(i),
        }
    }

    /// Start loading the entry of `key`, if there is one (a [`crate::hint`]).
    pub fn prefetch<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        let print = fingerprint(key);
        if let Some(i) = self.prints.iter().position(|p| *p == print) {
            crate::hint::prefetch_record(&self.entries[i]);
        }
    }

    fn insert_at(&mut self, i: usize, key: K, value: V) {
        self.prints.insert(i, fingerprint(&key));
        self.entries.insert(i, (key, value));
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, to change it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        match self.find(key) {
            Ok(i) => Some(&mut self.entries[i].1),
            Err(_) => None,
        }
    }

    /// Set `key` to `value`; the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.insert_at(i, key, value);
                None
            }
        }
    }

    /// The value of `key`, added as `V::default()` if absent.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.insert_at(i, key, V::default());
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Keep only the entries `keep` says yes to (it may change their values).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let mut i = 0;
        self.entries.retain_mut(|(k, v)| {
            let kept = keep(k, v);
            if !kept {
                self.prints.remove(i);
            } else {
                i += 1;
            }
            kept
        });
    }

    /// The entries, ascending by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::place::Rng;

    /// Same answers and order as `BTreeMap` over a seeded mix of operations.
    #[test]
    fn behaves_as_a_btree_map() {
        let mut rng = Rng::new(7);
        let mut ours: VecMap<String, u32> = VecMap::default();
        let mut theirs: BTreeMap<String, u32> = BTreeMap::new();
        for step in 0..20_000u32 {
            let key = format!("u{}", rng.below(300));
            match rng.below(5) {
                0 => assert_eq!(ours.insert(key.clone(), step), theirs.insert(key, step)),
                1 => {
                    *ours.get_or_default(key.clone()) += 1;
                    *theirs.entry(key).or_default() += 1;
                }
                2 => assert_eq!(ours.get(key.as_str()), theirs.get(&key)),
                3 => {
                    if let Some(v) = ours.get_mut(key.as_str()) {
                        *v += 2;
                    }
                    if let Some(v) = theirs.get_mut(&key) {
                        *v += 2;
                    }
                }
                _ => {
                    let cut = rng.below(1000) as u32;
                    ours.retain(|_, v| *v % 1000 != cut);
                    theirs.retain(|_, v| *v % 1000 != cut);
                }
            }
            assert_eq!(ours.len(), theirs.len());
        }
        assert!(!ours.is_empty());
        assert!(ours.iter().eq(theirs.iter()));
        assert!(ours.into_iter().eq(theirs.into_iter()));
    }
}
