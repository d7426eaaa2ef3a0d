//! The fragment index: what the soft-state core needs to read from a node's hard
//! state — which users have fragments in which buckets, and one user's listing. The
//! node implements it over its store; [`MemFragments`] implements it in memory for the
//! core's tests and the simulator, which need no disk.

use std::collections::{BTreeMap, BTreeSet};

use crate::listing::FragmentListing;

/// Read access to the fragments one node holds.
pub trait FragmentIndex {
    /// Message id type of this index.
    type Id: Ord + Copy;
    /// Error of a failed read (a disk error on a real node).
    type Error: std::error::Error;

    /// Users with live mail or tombstones in the buckets `filter` accepts, as
    /// (bucket, user), sorted by bucket then user, each once.
    fn users(&self, filter: &dyn Fn(u16) -> bool) -> Result<Vec<(u16, String)>, Self::Error>;

    /// One user's fragment: live messages with sizes, and tombstones.
    fn listing(&self, bucket: u16, user: &str) -> Result<FragmentListing<Self::Id>, Self::Error>;
}

/// One user's fragment in memory: live messages (id → size in bytes) and tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemFragment<I: Ord> {
    live: BTreeMap<I, u64>,
    tombstones: BTreeSet<I>,
}

impl<I: Ord> Default for MemFragment<I> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            tombstones: BTreeSet::new(),
        }
    }
}

/// An in-memory fragment index with the store's semantics: a tombstone makes a later
/// store of the same id a no-op, and purging drops the tombstone.
#[derive(Debug, Clone)]
pub struct MemFragments<I: Ord> {
    fragments: BTreeMap<(u16, String), MemFragment<I>>,
}

impl<I: Ord> Default for MemFragments<I> {
    fn default() -> Self {
        Self {
            fragments: BTreeMap::new(),
        }
    }
}

/// An in-memory index never fails.
#[derive(Debug, thiserror::Error)]
#[error("in-memory fragment index cannot fail")]
pub enum Never {}

impl<I: Ord + Copy> MemFragments<I> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Store a message; false (and nothing stored) when it is tombstoned here.
    pub fn store(&mut self, bucket: u16, user: &str, id: I, size_bytes: u64) -> bool {
        let f = self
            .fragments
            .entry((bucket, user.to_string()))
            .or_default();
        if f.tombstones.contains(&id) {
            return false;
        }
        f.live.insert(id, size_bytes);
        true
    }

    /// Delete a message: its live copy (if any) becomes a tombstone.
    pub fn tombstone(&mut self, bucket: u16, user: &str, id: I) {
        let f = self
            .fragments
            .entry((bucket, user.to_string()))
            .or_default();
        f.live.remove(&id);
        f.tombstones.insert(id);
    }

    /// Drop a tombstone (collection); the user disappears once nothing is left.
    pub fn purge(&mut self, bucket: u16, user: &str, id: I) {
        let key = (bucket, user.to_string());
        if let Some(f) = self.fragments.get_mut(&key) {
            f.tombstones.remove(&id);
            if f.live.is_empty() && f.tombstones.is_empty() {
                self.fragments.remove(&key);
            }
        }
    }

    /// Live messages held, over all users.
    pub fn messages(&self) -> usize {
        self.fragments.values().map(|f| f.live.len()).sum()
    }
}

impl<I: Ord + Copy> FragmentIndex for MemFragments<I> {
    type Id = I;
    type Error = Never;

    fn users(&self, filter: &dyn Fn(u16) -> bool) -> Result<Vec<(u16, String)>, Never> {
        Ok(self
            .fragments
            .keys()
            .filter(|(bucket, _)| filter(*bucket))
            .cloned()
            .collect())
    }

    fn listing(&self, bucket: u16, user: &str) -> Result<FragmentListing<I>, Never> {
        Ok(self
            .fragments
            .get(&(bucket, user.to_string()))
            .map(|f| FragmentListing {
                messages: f.live.iter().map(|(id, size)| (*id, *size)).collect(),
                tombstones: f.tombstones.iter().copied().collect(),
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_makes_a_late_store_a_no_op() {
        let mut f = MemFragments::new();
        assert!(f.store(3, "a", 1u64, 10));
        f.tombstone(3, "a", 1);
        assert!(!f.store(3, "a", 1, 10), "late append after a withdraw");
        let l = f.listing(3, "a").unwrap();
        assert_eq!(l.messages, vec![]);
        assert_eq!(l.tombstones, vec![1]);
        assert_eq!(f.users(&|_| true).unwrap(), vec![(3, "a".to_string())]);
        f.purge(3, "a", 1);
        assert_eq!(f.users(&|_| true).unwrap(), vec![]);
    }

    #[test]
    fn users_are_filtered_by_bucket_and_sorted() {
        let mut f = MemFragments::new();
        f.store(9, "z", 1u64, 1);
        f.store(2, "b", 2, 1);
        f.store(2, "a", 3, 1);
        assert_eq!(
            f.users(&|b| b < 5).unwrap(),
            vec![(2, "a".to_string()), (2, "b".to_string())]
        );
        assert_eq!(f.messages(), 3);
        assert_eq!(f.listing(2, "a").unwrap().messages, vec![(3, 1)]);
        assert_eq!(f.listing(7, "nobody").unwrap(), FragmentListing::default());
    }
}
