//! An ordered map kept as one sorted vector: for the mail maps of one bucket (users
//! ÷ buckets entries, tens at most), where a lookup is a binary search over one
//! contiguous run of memory instead of a walk down tree nodes spread over the heap.
//! Iteration order is the key order, as with `BTreeMap`.

use std::borrow::Borrow;

/// Keys ascending, each once, with their values.
#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// The value of `key`, to change it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.find(key) {
            Ok(i) => Some(&mut self.0[i].1),
            Err(_) => None,
        }
    }

    /// Set `key` to `value`; the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
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
                self.0.insert(i, (key, V::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Keep only the entries `keep` says yes to (it may change their values).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v));
    }

    /// The entries, ascending by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
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
