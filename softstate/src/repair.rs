//! The repair plan for one user: given the merged listings of the user's fragment
//! nodes, which tombstones to spread, which messages to copy, which tombstones to
//! collect. Pure: the node (or the simulator) performs the plan and counts the result.
//!
//! The rules (ARCHITECTURE.md, "Replication and anti-entropy"):
//! - a tombstone anywhere wins: every live copy of a tombstoned message gets one;
//! - a message with fewer than the wanted copies is copied only when it is older than
//!   the copy minimum age (its other copies may still be in flight), every fragment
//!   node answered, and every known node is live or removed (a node merely down still
//!   has its copies);
//! - a tombstone is collected (on every fragment node) once no answering node holds a
//!   live copy, every fragment node answered, every known node is live or removed, and
//!   the message is older than the tombstone minimum age.

use std::collections::BTreeMap;

use membership::NodeId;

use crate::listing::Holdings;

/// What the plan needs to know besides the listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairRules {
    /// Copies each message should have (R, capped by the live node count).
    pub wanted_copies: usize,
    /// Every node ever heard of is live or was removed by the operator.
    pub all_known_live: bool,
    /// Now, in the microseconds message ids carry.
    pub now_micros: u64,
    /// Messages younger than this are not copied yet.
    pub copy_min_age_micros: u64,
    /// Tombstones of messages younger than this are not collected.
    pub tombstone_min_age_micros: u64,
}

/// One message to copy to more nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTask<I> {
    /// The message.
    pub id: I,
    /// Nodes holding a live copy (read from any of them), ascending.
    pub from: Vec<NodeId>,
    /// How many new copies are needed.
    pub count: usize,
}

/// The plan for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan<I> {
    /// Per node, the ids it holds live but that are tombstoned elsewhere.
    pub spread_tombstones: BTreeMap<NodeId, Vec<I>>,
    /// Messages to copy now.
    pub copies: Vec<CopyTask<I>>,
    /// Tombstones to purge from every fragment node.
    pub collect: Vec<I>,
    /// Messages seen with fewer than the wanted copies (tombstoned ones excluded).
    pub under_replicated: u64,
    /// Of those, the ones not copied now (too young, a node silent or down).
    pub pending: u64,
    /// Of `pending`, the ones left alone for being younger than the copy minimum age.
    pub young: u64,
}

/// Plan the repair of one user's mailbox from the merged listings of its fragment
/// nodes; `time_of` gives a message id's creation time in microseconds.
pub fn plan<I: Ord + Copy>(
    holdings: &Holdings<I>,
    rules: &RepairRules,
    time_of: impl Fn(I) -> u64,
) -> RepairPlan<I> {
    let mut p = RepairPlan {
        spread_tombstones: BTreeMap::new(),
        copies: Vec::new(),
        collect: Vec::new(),
        under_replicated: 0,
        pending: 0,
        young: 0,
    };
    let age = |id: I| rules.now_micros.saturating_sub(time_of(id));
    let settled = rules.all_known_live && holdings.is_complete();
    for (&id, held) in &holdings.messages {
        if holdings.tombstones.contains(&id) {
            for &holder in &held.holders {
                p.spread_tombstones.entry(holder).or_default().push(id);
            }
            continue;
        }
        if held.holders.len() >= rules.wanted_copies {
            continue;
        }
        p.under_replicated += 1;
        if age(id) < rules.copy_min_age_micros {
            p.young += 1;
            p.pending += 1;
        } else if !settled {
            p.pending += 1;
        } else {
            p.copies.push(CopyTask {
                id,
                from: held.holders.clone(),
                count: rules.wanted_copies - held.holders.len(),
            });
        }
    }
    if settled {
        p.collect = holdings
            .tombstones
            .iter()
            .copied()
            .filter(|id| !holdings.messages.contains_key(id))
            .filter(|&id| age(id) >= rules.tombstone_min_age_micros)
            .collect();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::FragmentListing;

    const S: u64 = 1_000_000;

    /// Ids are their own creation time in seconds (times S) in these tests.
    fn time_of(id: u64) -> u64 {
        id * S
    }

    fn rules(now_s: u64) -> RepairRules {
        RepairRules {
            wanted_copies: 2,
            all_known_live: true,
            now_micros: now_s * S,
            copy_min_age_micros: 15 * S,
            tombstone_min_age_micros: 3600 * S,
        }
    }

    /// A node's answer in these tests: (live ids, tombstoned ids), or silence.
    type Answer = (NodeId, Option<(Vec<u64>, Vec<u64>)>);

    fn holdings(answers: Vec<Answer>) -> Holdings<u64> {
        Holdings::merge(answers.into_iter().map(|(n, a)| {
            (
                n,
                a.map(|(m, t)| FragmentListing {
                    messages: m.into_iter().map(|id| (id, 10)).collect(),
                    tombstones: t,
                }),
            )
        }))
    }

    #[test]
    fn old_single_copies_are_copied_young_ones_wait() {
        // 100 has one copy and is old; 9_990 has one copy and is 10 s old.
        let h = holdings(vec![
            (1, Some((vec![100, 9_990, 200], vec![]))),
            (2, Some((vec![200], vec![]))),
        ]);
        let p = plan(&h, &rules(10_000), time_of);
        assert_eq!(
            p.copies,
            vec![CopyTask {
                id: 100,
                from: vec![1],
                count: 1
            }]
        );
        assert_eq!((p.under_replicated, p.pending, p.young), (2, 1, 1));
        assert!(p.spread_tombstones.is_empty());
        assert!(p.collect.is_empty());
    }

    #[test]
    fn tombstones_reach_every_live_copy_and_old_ones_are_collected() {
        // 100: deleted on node 1, node 2 missed it. 50: deleted everywhere, old.
        // 9_000: deleted everywhere but younger than an hour.
        let h = holdings(vec![
            (1, Some((vec![], vec![100, 50, 9_000]))),
            (2, Some((vec![100], vec![50, 9_000]))),
        ]);
        let p = plan(&h, &rules(10_000), time_of);
        assert_eq!(p.spread_tombstones, BTreeMap::from([(2, vec![100])]));
        assert_eq!(p.collect, vec![50]);
        assert!(p.copies.is_empty());
        assert_eq!(p.under_replicated, 0);
        // A shorter minimum age (`tombstone_min_age_secs`) collects the young one too.
        let mut short = rules(10_000);
        short.tombstone_min_age_micros = 30 * S;
        assert_eq!(plan(&h, &short, time_of).collect, vec![50, 9_000]);
    }

    #[test]
    fn a_silent_node_or_a_down_node_blocks_copies_and_collection_not_spreading() {
        let answers = vec![
            (1, Some((vec![100, 7], vec![50]))),
            (2, Some((vec![7], vec![50]))),
            (3, None),
        ];
        let h = holdings(answers.clone());
        let p = plan(&h, &rules(10_000), time_of);
        assert!(p.copies.is_empty());
        assert!(p.collect.is_empty());
        assert_eq!((p.under_replicated, p.pending), (1, 1));

        let mut r = rules(10_000);
        r.all_known_live = false;
        let complete = holdings(answers[..2].to_vec());
        let p = plan(&complete, &r, time_of);
        assert!(p.copies.is_empty());
        assert!(p.collect.is_empty());
        assert_eq!(p.pending, 1);

        // Spreading a tombstone needs no one else: a node that missed a delete gets it.
        let h = holdings(vec![
            (1, Some((vec![], vec![7]))),
            (2, Some((vec![7], vec![]))),
            (3, None),
        ]);
        let p = plan(&h, &rules(10_000), time_of);
        assert_eq!(p.spread_tombstones, BTreeMap::from([(2, vec![7])]));
    }

    #[test]
    fn a_tombstone_with_a_live_copy_left_is_not_collected() {
        let h = holdings(vec![
            (1, Some((vec![], vec![5]))),
            (2, Some((vec![5], vec![]))),
        ]);
        let p = plan(&h, &rules(10_000), time_of);
        assert!(p.collect.is_empty());
        assert_eq!(p.spread_tombstones, BTreeMap::from([(2, vec![5])]));
    }

    #[test]
    fn a_clock_behind_the_ids_collects_and_copies_nothing() {
        let h = holdings(vec![(1, Some((vec![100], vec![50])))]);
        let p = plan(&h, &rules(0), time_of);
        assert!(p.collect.is_empty());
        assert!(p.copies.is_empty());
        assert_eq!(p.young, 1);
    }

    #[test]
    fn three_replicas_wanted_asks_for_the_difference() {
        let mut r = rules(10_000);
        r.wanted_copies = 3;
        let h = holdings(vec![
            (1, Some((vec![100], vec![]))),
            (2, Some((vec![100], vec![]))),
        ]);
        let p = plan(&h, &r, time_of);
        assert_eq!(
            p.copies,
            vec![CopyTask {
                id: 100,
                from: vec![1, 2],
                count: 1
            }]
        );
    }
}
