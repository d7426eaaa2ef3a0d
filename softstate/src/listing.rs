//! One mailbox out of many fragments: the merge of what every fragment node of a user
//! lists, deduplicated by message id across replicas, with tombstones winning.
//!
//! Retrieval (the POP3 listing), repair (which copies are short) and the admin mailbox
//! view all read a user's mailbox through [`Holdings::merge`], so they cannot disagree
//! about what the mailbox holds.

use std::collections::{BTreeMap, BTreeSet};

use membership::NodeId;

/// What one node holds of one user's mailbox: live messages with their sizes, and
/// tombstones of deleted ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentListing<I> {
    /// Live messages: id and size in bytes.
    pub messages: Vec<(I, u64)>,
    /// Ids of deleted messages this node recorded.
    pub tombstones: Vec<I>,
}

impl<I> Default for FragmentListing<I> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            tombstones: Vec::new(),
        }
    }
}

/// A live message as the merge sees it: its size and every node holding a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Size in bytes (as the first answering holder reported it).
    pub size_bytes: u64,
    /// Nodes that listed a live copy, ascending.
    pub holders: Vec<NodeId>,
}

/// The merged view of one user's fragments over the nodes that were asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings<I: Ord> {
    /// Every id listed live by at least one node (tombstoned ones included: see
    /// [`Holdings::visible`] for the mailbox a user sees).
    pub messages: BTreeMap<I, Held>,
    /// Ids tombstoned on at least one node.
    pub tombstones: BTreeSet<I>,
    /// Nodes that answered, ascending.
    pub listed: Vec<NodeId>,
    /// Nodes that were asked and did not answer, ascending.
    pub unanswered: Vec<NodeId>,
}

impl<I: Ord + Copy> Holdings<I> {
    /// Merge the answers of the asked nodes: `None` is a node that did not answer.
    pub fn merge(answers: impl IntoIterator<Item = (NodeId, Option<FragmentListing<I>>)>) -> Self {
        let mut h = Holdings {
            messages: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            listed: Vec::new(),
            unanswered: Vec::new(),
        };
        for (node, answer) in answers {
            let Some(listing) = answer else {
                h.unanswered.push(node);
                continue;
            };
            h.listed.push(node);
            for (id, size_bytes) in listing.messages {
                let held = h.messages.entry(id).or_insert(Held {
                    size_bytes,
                    holders: Vec::new(),
                });
                if !held.holders.contains(&node) {
                    held.holders.push(node);
                }
            }
            h.tombstones.extend(listing.tombstones);
        }
        h.listed.sort_unstable();
        h.listed.dedup();
        h.unanswered.sort_unstable();
        h.unanswered.dedup();
        for held in h.messages.values_mut() {
            held.holders.sort_unstable();
        }
        h
    }

    /// True when every asked node answered. A listing with a silent node must not be
    /// shown as the mailbox: that node may hold the only copy of a message (written
    /// while fewer than R nodes were live) or the only tombstone of a delete.
    pub fn is_complete(&self) -> bool {
        self.unanswered.is_empty()
    }

    /// The mailbox a user sees, in id order: every live message not tombstoned on any
    /// answering node (a replica that missed a delete cannot resurrect the message).
    pub fn visible(&self) -> impl Iterator<Item = (I, &Held)> {
        self.messages
            .iter()
            .filter(|(id, _)| !self.tombstones.contains(id))
            .map(|(id, held)| (*id, held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(messages: &[(u32, u64)], tombstones: &[u32]) -> Option<FragmentListing<u32>> {
        Some(FragmentListing {
            messages: messages.to_vec(),
            tombstones: tombstones.to_vec(),
        })
    }

    #[test]
    fn replicas_are_one_message_with_both_holders() {
        let h = Holdings::merge([
            (2, listing(&[(10, 100), (11, 50)], &[])),
            (1, listing(&[(10, 100)], &[])),
        ]);
        assert!(h.is_complete());
        assert_eq!(h.listed, vec![1, 2]);
        let visible: Vec<(u32, Vec<NodeId>)> = h
            .visible()
            .map(|(id, held)| (id, held.holders.clone()))
            .collect();
        assert_eq!(visible, vec![(10, vec![1, 2]), (11, vec![2])]);
    }

    #[test]
    fn a_tombstone_anywhere_hides_every_copy() {
        // Node 3 missed the delete and still lists message 10 live.
        let h = Holdings::merge([
            (1, listing(&[(11, 5)], &[10])),
            (3, listing(&[(10, 100), (11, 5)], &[])),
        ]);
        let visible: Vec<u32> = h.visible().map(|(id, _)| id).collect();
        assert_eq!(visible, vec![11]);
        // Repair still sees the live copy on node 3, to tombstone it there.
        assert_eq!(h.messages[&10].holders, vec![3]);
        assert_eq!(h.tombstones, BTreeSet::from([10]));
    }

    #[test]
    fn a_silent_node_makes_the_listing_incomplete() {
        let h = Holdings::merge([(1, listing(&[(10, 1)], &[])), (2, None)]);
        assert!(!h.is_complete());
        assert_eq!(h.unanswered, vec![2]);
        assert_eq!(h.listed, vec![1]);
    }

    #[test]
    fn a_node_listing_an_id_twice_counts_once() {
        let h = Holdings::merge([(1, listing(&[(10, 1), (10, 1)], &[]))]);
        assert_eq!(h.messages[&10].holders, vec![1]);
    }
}
