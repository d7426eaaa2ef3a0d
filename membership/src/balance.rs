//! Balancing policy: which nodes store a new fragment of a user's mailbox.
//!
//! Pure and deterministic so the node and the simulator run the same choice.

use std::collections::BTreeSet;

use crate::hash::salted;
use crate::types::NodeId;

/// Pick nodes to store a new fragment: prefer nodes already holding the user's mail
/// (affinity), top up with least-loaded live nodes while below `spread`, choose the
/// `replicas` least-loaded distinct candidates. Deterministic given its inputs.
///
/// - Only `live` nodes are ever returned, each at most once.
/// - Candidates are the live nodes of `mail_map`; while there are fewer than
///   `spread` of them, the least-loaded other live nodes join.
/// - If the candidates are still fewer than `replicas`, more live nodes join
///   (least-loaded first): replicas must land on distinct nodes, and the
///   spread is a soft bound while the replica count is not.
/// - The result holds `min(replicas, live nodes)` nodes, least-loaded first
///   (the first is the natural primary).
/// - Equal loads are ordered by a hash of (node, `tie_break`), so callers that
///   pass e.g. a message counter spread ties over nodes instead of always
///   picking the lowest id.
pub fn pick_targets(
    mail_map: &[NodeId],
    live: &[NodeId],
    load: &dyn Fn(NodeId) -> u32,
    spread: usize,
    replicas: usize,
    tie_break: u64,
) -> Vec<NodeId> {
    let live: BTreeSet<NodeId> = live.iter().copied().collect();
    // Sort key: least loaded first, then a per-call pseudo-random order, then id.
    let key = |node: NodeId| (load(node), salted(node, tie_break), node);

    let mut candidates: BTreeSet<NodeId> = mail_map
        .iter()
        .copied()
        .filter(|n| live.contains(n))
        .collect();

    let mut others: Vec<NodeId> = live
        .iter()
        .copied()
        .filter(|n| !candidates.contains(n))
        .collect();
    others.sort_by_key(|n| key(*n));
    let wanted = spread.max(replicas);
    for node in others {
        if candidates.len() >= wanted {
            break;
        }
        candidates.insert(node);
    }

    let mut chosen: Vec<NodeId> = candidates.into_iter().collect();
    chosen.sort_by_key(|n| key(*n));
    chosen.truncate(replicas);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn loads(pairs: &[(NodeId, u32)]) -> impl Fn(NodeId) -> u32 {
        let table: BTreeMap<NodeId, u32> = pairs.iter().copied().collect();
        move |n| table.get(&n).copied().unwrap_or(0)
    }

    #[test]
    fn affinity_wins_over_a_less_loaded_stranger_when_spread_is_reached() {
        let load = loads(&[(1, 50), (2, 60), (3, 0), (4, 0)]);
        // The user already has fragments on 1 and 2, spread 2: stay there.
        let picked = pick_targets(&[1, 2], &[1, 2, 3, 4], &load, 2, 1, 0);
        assert_eq!(picked, vec![1]);
        let picked = pick_targets(&[1, 2], &[1, 2, 3, 4], &load, 2, 2, 0);
        assert_eq!(picked, vec![1, 2]);
    }

    #[test]
    fn below_spread_the_least_loaded_stranger_joins() {
        let load = loads(&[(1, 50), (2, 60), (3, 5), (4, 1)]);
        // Spread 2 with only node 1 holding mail: node 4 (least loaded) joins
        // the candidates and, being less loaded than 1, is chosen.
        assert_eq!(pick_targets(&[1], &[1, 2, 3, 4], &load, 2, 1, 0), vec![4]);
        assert_eq!(
            pick_targets(&[1], &[1, 2, 3, 4], &load, 2, 2, 0),
            vec![4, 1]
        );
    }

    #[test]
    fn dead_mail_map_nodes_are_skipped() {
        let load = loads(&[(1, 0), (2, 10), (3, 20)]);
        // Node 1 holds mail but is not live.
        assert_eq!(pick_targets(&[1, 3], &[2, 3], &load, 1, 1, 0), vec![3]);
        assert_eq!(pick_targets(&[1], &[2, 3], &load, 1, 1, 0), vec![2]);
    }

    #[test]
    fn replicas_beyond_spread_are_topped_up_with_distinct_nodes() {
        let load = loads(&[(1, 0), (2, 10), (3, 5)]);
        let picked = pick_targets(&[1], &[1, 2, 3], &load, 1, 3, 0);
        assert_eq!(picked, vec![1, 3, 2]);
        // Fewer live nodes than replicas: all of them, once.
        let picked = pick_targets(&[], &[2, 3], &load, 1, 5, 0);
        assert_eq!(picked, vec![3, 2]);
        assert!(pick_targets(&[1], &[], &load, 2, 2, 0).is_empty());
        assert!(pick_targets(&[1], &[1, 2], &load, 2, 0, 0).is_empty());
    }

    #[test]
    fn ties_are_spread_by_the_tie_break() {
        let load = |_: NodeId| 7;
        let live: Vec<NodeId> = (1..=10).collect();
        let firsts: BTreeSet<NodeId> = (0..200u64)
            .map(|t| pick_targets(&[], &live, &load, 2, 1, t)[0])
            .collect();
        assert!(
            firsts.len() >= 8,
            "ties always broken the same way: {firsts:?}"
        );
    }

    proptest! {
        #[test]
        fn prop_targets_are_live_distinct_and_deterministic(
            mail_map in proptest::collection::vec(0u64..30, 0..8),
            live in proptest::collection::btree_set(0u64..30, 0..20),
            load_seed in any::<u64>(),
            spread in 0usize..6,
            replicas in 0usize..5,
            tie_break in any::<u64>(),
        ) {
            let live: Vec<NodeId> = live.into_iter().collect();
            let load = move |n: NodeId| (salted(n, load_seed) % 100) as u32;
            let picked = pick_targets(&mail_map, &live, &load, spread, replicas, tie_break);
            prop_assert_eq!(picked.len(), replicas.min(live.len()));
            let distinct: BTreeSet<NodeId> = picked.iter().copied().collect();
            prop_assert_eq!(distinct.len(), picked.len());
            prop_assert!(picked.iter().all(|n| live.contains(n)));
            prop_assert!(picked.windows(2).all(|w| load(w[0]) <= load(w[1])));
            // Same inputs, same answer; input order does not matter.
            let mut reversed = live.clone();
            reversed.reverse();
            prop_assert_eq!(
                &picked,
                &pick_targets(&mail_map, &reversed, &load, spread, replicas, tie_break)
            );
            // Affinity: if enough live mail-map nodes exist to cover both the
            // spread and the replicas, nothing outside the mail map is chosen.
            let live_mail: BTreeSet<NodeId> =
                mail_map.iter().copied().filter(|n| live.contains(n)).collect();
            if live_mail.len() >= spread.max(replicas) {
                prop_assert!(picked.iter().all(|n| live_mail.contains(n)));
            }
        }
    }
}
