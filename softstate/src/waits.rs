//! Whom a manager still waits for, per bucket, without a set per bucket.
//!
//! A view change makes many buckets wait on the same nodes: every bucket a manager
//! gained waits on every member, every bucket it manages waits on every fresh
//! member. Kept as one set of nodes per bucket, that is buckets × nodes entries to
//! insert and then to remove one report at a time (a partition of 50 nodes: about
//! 65,536 × 25). [`Waits`] keeps such a wait once, as a [`Group`]: a sorted bucket
//! list and the nodes that each still owe a report covering all of it. Only what is
//! really per bucket (the waiting set a handover carries, "everyone reports" after a
//! lost handover, the old managers still to hand a bucket over) is kept per bucket.
//!
//! Bucket `b` waits on node `n` when `n` is in a group whose list holds `b`, or in
//! `b`'s own set. That relation is exactly what the per-bucket sets held before.

use std::collections::{BTreeMap, BTreeSet};

use membership::NodeId;

use crate::sorted;

/// Nodes that each still owe a report for every bucket of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    /// Ascending, distinct, never empty.
    buckets: Vec<u16>,
    /// Never empty (a group is dropped when its last node reports).
    nodes: BTreeSet<NodeId>,
}

/// A manager's outstanding reports and handovers. See the module documentation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Waits {
    groups: Vec<Group>,
    /// Per-bucket waits (only non-empty sets).
    single: BTreeMap<u16, BTreeSet<NodeId>>,
    /// Old managers that must still hand a bucket over (only non-empty sets).
    handoff: BTreeMap<u16, BTreeSet<NodeId>>,
}

impl Waits {
    /// Nothing outstanding for any bucket.
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.single.is_empty() && self.handoff.is_empty()
    }

    /// Forget every wait.
    pub(crate) fn clear(&mut self) {
        *self = Waits::default();
    }

    /// Whether bucket `b` waits on nobody.
    pub(crate) fn complete(&self, b: u16) -> bool {
        !self.single.contains_key(&b)
            && !self.handoff.contains_key(&b)
            && self
                .groups
                .iter()
                .all(|g| g.buckets.binary_search(&b).is_err())
    }

    /// Every bucket that waits on somebody, ascending.
    pub(crate) fn rebuilding(&self) -> Vec<u16> {
        let mut all: Vec<u16> = self
            .single
            .keys()
            .chain(self.handoff.keys())
            .copied()
            .collect();
        for g in &self.groups {
            all.extend_from_slice(&g.buckets);
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Each of `nodes` owes a report covering every bucket of `buckets` (ascending,
    /// distinct).
    pub(crate) fn wait_group(
        &mut self,
        buckets: Vec<u16>,
        nodes: impl IntoIterator<Item = NodeId>,
    ) {
        let nodes: BTreeSet<NodeId> = nodes.into_iter().collect();
        if buckets.is_empty() || nodes.is_empty() {
            return;
        }
        debug_assert!(sorted::is_set(&buckets));
        self.groups.push(Group { buckets, nodes });
    }

    /// Bucket `b` also waits on `nodes`.
    pub(crate) fn wait_one(&mut self, b: u16, nodes: impl IntoIterator<Item = NodeId>) {
        let mut nodes = nodes.into_iter().peekable();
        if nodes.peek().is_some() {
            self.single.entry(b).or_default().extend(nodes);
        }
    }

    /// Bucket `b` waits for `from`'s handover.
    pub(crate) fn wait_handoff(&mut self, b: u16, from: NodeId) {
        self.handoff.entry(b).or_default().insert(from);
    }

    /// `from`'s handover of bucket `b` came.
    pub(crate) fn handed(&mut self, b: u16, from: NodeId) {
        if let Some(set) = self.handoff.get_mut(&b) {
            set.remove(&from);
            if set.is_empty() {
                self.handoff.remove(&b);
            }
        }
    }

    /// Whom bucket `b` waits on for reports, ascending.
    pub(crate) fn waiting_on(&self, b: u16) -> BTreeSet<NodeId> {
        let mut nodes = self.single.get(&b).cloned().unwrap_or_default();
        for g in &self.groups {
            if g.buckets.binary_search(&b).is_ok() {
                nodes.extend(g.nodes.iter().copied());
            }
        }
        nodes
    }

    /// The old managers that must still hand bucket `b` over, ascending.
    pub(crate) fn handoff_from(&self, b: u16) -> impl Iterator<Item = NodeId> + '_ {
        self.handoff.get(&b).into_iter().flatten().copied()
    }

    /// Buckets with a handover still to come, ascending.
    pub(crate) fn handoff_buckets(&self) -> Vec<u16> {
        self.handoff.keys().copied().collect()
    }

    /// Stop waiting on the nodes `keep` says no to (they left the view).
    pub(crate) fn retain_nodes(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.groups.retain_mut(|g| {
            g.nodes.retain(|n| keep(n));
            !g.nodes.is_empty()
        });
        self.single.retain(|_, nodes| {
            nodes.retain(|n| keep(n));
            !nodes.is_empty()
        });
    }

    /// Set the handovers of bucket `b` still to come to those `keep` says yes to.
    pub(crate) fn retain_handoffs(&mut self, b: u16, mut keep: impl FnMut(&NodeId) -> bool) {
        if let Some(set) = self.handoff.get_mut(&b) {
            set.retain(|n| keep(n));
            if set.is_empty() {
                self.handoff.remove(&b);
            }
        }
    }

    /// Forget the buckets `keep` says no to (no longer managed here).
    pub(crate) fn retain_buckets(&mut self, mut keep: impl FnMut(u16) -> bool) {
        self.groups.retain_mut(|g| {
            g.buckets.retain(|b| keep(*b));
            !g.buckets.is_empty()
        });
        self.single.retain(|b, _| keep(*b));
        self.handoff.retain(|b, _| keep(*b));
    }

    /// Forget every wait of bucket `b` (it starts afresh).
    pub(crate) fn reset(&mut self, b: u16) {
        self.single.remove(&b);
        self.handoff.remove(&b);
        for g in &mut self.groups {
            if let Ok(at) = g.buckets.binary_search(&b) {
                g.buckets.remove(at);
            }
        }
        self.groups.retain(|g| !g.buckets.is_empty());
    }

    /// `from` reported every bucket.
    pub(crate) fn reported_all(&mut self, from: NodeId) {
        self.retain_nodes(|n| *n != from);
    }

    /// `from` reported the buckets `reported` (any order).
    pub(crate) fn reported(&mut self, from: NodeId, reported: &[u16]) {
        let owned;
        let reported = if sorted::is_set(reported) {
            reported
        } else {
            owned = sorted::set_of(reported.to_vec());
            &owned[..]
        };
        let mut split = Vec::new();
        for g in &mut self.groups {
            if !g.nodes.contains(&from) {
                continue;
            }
            let rest = sorted::difference(&g.buckets, reported);
            if rest.len() == g.buckets.len() {
                continue;
            }
            g.nodes.remove(&from);
            if !rest.is_empty() {
                // Covered in part: `from` still owes the rest (rare: an ask or a
                // report built in an earlier view).
                split.push(Group {
                    buckets: rest,
                    nodes: BTreeSet::from([from]),
                });
            }
        }
        self.groups.retain(|g| !g.nodes.is_empty());
        self.groups.extend(split);
        if self.single.len() <= reported.len() {
            self.single.retain(|b, nodes| {
                if reported.binary_search(b).is_ok() {
                    nodes.remove(&from);
                }
                !nodes.is_empty()
            });
        } else {
            for b in reported {
                if let Some(nodes) = self.single.get_mut(b) {
                    nodes.remove(&from);
                    if nodes.is_empty() {
                        self.single.remove(b);
                    }
                }
            }
        }
    }

    /// Per node still waited on: the buckets it must report and the buckets it must
    /// hand over, each ascending (what [`crate::Ask`]s carry).
    pub(crate) fn asks(&self) -> BTreeMap<NodeId, (Vec<u16>, Vec<u16>)> {
        let mut per: BTreeMap<NodeId, (Vec<u16>, Vec<u16>)> = BTreeMap::new();
        for g in &self.groups {
            for n in &g.nodes {
                per.entry(*n).or_default().0.extend_from_slice(&g.buckets);
            }
        }
        for (b, nodes) in &self.single {
            for n in nodes {
                per.entry(*n).or_default().0.push(*b);
            }
        }
        for (b, nodes) in &self.handoff {
            for n in nodes {
                per.entry(*n).or_default().1.push(*b);
            }
        }
        for (buckets, _) in per.values_mut() {
            buckets.sort_unstable();
            buckets.dedup();
        }
        per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-bucket sets the waits stand for, over buckets `0..16`.
    fn expand(w: &Waits) -> Vec<(u16, Vec<NodeId>)> {
        (0..16u16)
            .map(|b| {
                let mut n: Vec<NodeId> = w.waiting_on(b).into_iter().collect();
                n.extend(w.handoff_from(b).map(|x| x + 100));
                (b, n)
            })
            .filter(|(_, n)| !n.is_empty())
            .collect()
    }

    #[test]
    fn groups_and_single_waits_stand_for_per_bucket_sets() {
        let mut w = Waits::default();
        assert!(w.is_empty() && w.complete(3));
        w.wait_group(vec![1, 3, 5], [1, 2]);
        w.wait_group(vec![3, 4], [3]);
        w.wait_one(7, [2]);
        w.wait_handoff(8, 4);
        assert_eq!(
            expand(&w),
            vec![
                (1, vec![1, 2]),
                (3, vec![1, 2, 3]),
                (4, vec![3]),
                (5, vec![1, 2]),
                (7, vec![2]),
                (8, vec![104]),
            ]
        );
        assert_eq!(w.rebuilding(), vec![1, 3, 4, 5, 7, 8]);
        let asks = w.asks();
        assert_eq!(asks[&2], (vec![1, 3, 5, 7], vec![]));
        assert_eq!(asks[&4], (vec![], vec![8]));

        // A report of part of a group: node 2 still owes the rest.
        w.reported(2, &[5, 3, 9]);
        assert_eq!(w.waiting_on(1), BTreeSet::from([1, 2]));
        assert_eq!(w.waiting_on(3), BTreeSet::from([1, 3]));
        assert_eq!(w.waiting_on(5), BTreeSet::from([1]));
        assert_eq!(w.waiting_on(7), BTreeSet::from([2]));
        w.reported(2, &[1, 7]);
        assert_eq!(w.asks().get(&2), None);
        w.reported_all(1);
        w.retain_nodes(|n| *n != 3);
        assert_eq!(expand(&w), vec![(8, vec![104])]);
        assert!(!w.complete(8));
        w.handed(8, 4);
        assert!(w.is_empty());
    }

    #[test]
    fn buckets_leave_and_start_afresh() {
        let mut w = Waits::default();
        w.wait_group(vec![1, 2, 3], [1]);
        w.wait_one(2, [5]);
        w.wait_handoff(3, 6);
        w.retain_buckets(|b| b != 1);
        assert!(w.complete(1));
        w.reset(2);
        assert!(w.complete(2));
        assert_eq!(expand(&w), vec![(3, vec![1, 106])]);
        w.retain_handoffs(3, |_| false);
        w.reported(1, &[3]);
        assert!(w.is_empty());
    }
}
