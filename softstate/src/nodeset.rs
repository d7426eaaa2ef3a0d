//! A user's mail map as the manager keeps it: a few node ids, ascending and distinct,
//! stored inline (no allocation and no pointer to follow for the usual handful).

use membership::NodeId;
use smallvec::SmallVec;

/// Node ids, ascending, distinct; up to four inline.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NodeSet(SmallVec<[NodeId; 4]>);

impl NodeSet {
    /// Add `n`; whether it was new.
    pub fn insert(&mut self, n: NodeId) -> bool {
        match self.0.binary_search(&n) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, n);
                true
            }
        }
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: &NodeId) -> bool {
        self.0.binary_search(n).is_ok()
    }

    /// The ids, ascending.
    pub fn iter(&self) -> std::slice::Iter<'_, NodeId> {
        self.0.iter()
    }

    /// How many ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keep the ids `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.0.retain(|n| keep(n));
    }
}

impl std::fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl Extend<NodeId> for NodeSet {
    fn extend<T: IntoIterator<Item = NodeId>>(&mut self, iter: T) {
        for n in iter {
            self.insert(n);
        }
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<T: IntoIterator<Item = NodeId>>(iter: T) -> Self {
        let mut s = NodeSet::default();
        s.extend(iter);
        s
    }
}

impl IntoIterator for NodeSet {
    type Item = NodeId;
    type IntoIter = smallvec::IntoIter<[NodeId; 4]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a NodeSet {
    type Item = &'a NodeId;
    type IntoIter = std::slice::Iter<'a, NodeId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_sorted_and_distinct_past_its_inline_size() {
        let mut s: NodeSet = [9, 3, 3, 7].into_iter().collect();
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![3, 7, 9]);
        assert!(!s.insert(7));
        s.extend([1, 12, 5]);
        assert_eq!(s.len(), 6);
        assert_eq!(
            s.clone().into_iter().collect::<Vec<_>>(),
            vec![1, 3, 5, 7, 9, 12]
        );
        assert!(s.contains(&12) && !s.contains(&4));
        s.retain(|n| n % 3 == 0);
        assert_eq!(format!("{s:?}"), "{3, 9, 12}");
    }
}
