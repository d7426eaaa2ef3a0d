//! Placement: which nodes store a new message of a user. Cost per call independent of
//! the cluster size: the user's mail map plus a few sampled live nodes (the power of
//! d choices), never a sort or a set of every live node.

use membership::NodeId;

/// Up to this many live nodes, placement runs `membership::pick_targets` over all of
/// them (exact least-loaded choice; constant cost at this size).
pub const SMALL_CLUSTER_MAX: usize = 32;

/// Live nodes drawn per top-up slot on larger clusters; the least loaded wins.
pub const SAMPLES_PER_SLOT: usize = 2;

/// A seeded pseudo-random generator (splitmix64): deterministic given its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias is negligible at our sizes.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What one placement looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The chosen nodes, least loaded first, distinct.
    pub targets: Vec<NodeId>,
    /// Candidates whose load was looked at (mail-map nodes plus samples).
    pub examined: usize,
}

/// Choose `replicas` distinct nodes of `live` (ascending ids) for a new fragment of a
/// user whose live mail-map nodes are `mail_map`.
///
/// The policy of `membership::pick_targets`: prefer the mail map (affinity), top up
/// with lightly loaded nodes while below `spread`, add distinct nodes while below
/// `replicas`, return the `replicas` least loaded (ties by a hash of the node and
/// `tie_break`). Up to [`SMALL_CLUSTER_MAX`] live nodes it *is* `pick_targets`;
/// beyond, each top-up slot takes the least loaded of [`SAMPLES_PER_SLOT`] random
/// live nodes outside the candidates, so the cost does not grow with `live`.
pub fn choose(
    mail_map: &[NodeId],
    live: &[NodeId],
    load: &dyn Fn(NodeId) -> u32,
    spread: usize,
    replicas: usize,
    tie_break: u64,
    rng: &mut Rng,
) -> Choice {
    let replicas = replicas.min(live.len());
    if live.len() <= SMALL_CLUSTER_MAX {
        let targets = membership::pick_targets(mail_map, live, load, spread, replicas, tie_break);
        return Choice {
            targets,
            examined: live.len(),
        };
    }
    let wanted = spread.max(replicas);
    let mut candidates: Vec<NodeId> = Vec::with_capacity(wanted.max(mail_map.len()));
    candidates.extend(mail_map.iter().copied().filter(|n| is_member(live, *n)));
    candidates.sort_unstable();
    candidates.dedup();
    let mut examined = candidates.len();
    let tie = mix(tie_break);
    let key = |n: NodeId| (load(n), mix(n ^ tie), n);
    // Each candidate's key once: `load` is the costly part.
    let mut keyed: Vec<(u32, u64, NodeId)> = candidates.iter().map(|n| key(*n)).collect();
    while keyed.len() < wanted {
        let taken = |n: &NodeId| keyed.iter().any(|k| k.2 == *n);
        match sample_slot(live, &key, &taken, rng, &mut examined) {
            Some(k) => keyed.push(k),
            None => break,
        }
    }
    keyed.sort_unstable();
    candidates.clear();
    candidates.extend(keyed.iter().take(replicas).map(|k| k.2));
    Choice {
        targets: candidates,
        examined,
    }
}

/// Whether `n` is in `live` (ascending): first where it would be if no id below it
/// were missing (the common case: ids 1..=N), else a binary search.
fn is_member(live: &[NodeId], n: NodeId) -> bool {
    let guess = (n as usize).wrapping_sub(1);
    if live.get(guess) == Some(&n) {
        return true;
    }
    live.binary_search(&n).is_ok()
}

/// One top-up slot: the least loaded (by `key`) of [`SAMPLES_PER_SLOT`] random live
/// nodes not `taken`, each found in a few draws (the taken ones are few of many);
/// counts every draw in `examined`.
fn sample_slot(
    live: &[NodeId],
    key: &dyn Fn(NodeId) -> (u32, u64, NodeId),
    taken: &dyn Fn(&NodeId) -> bool,
    rng: &mut Rng,
    examined: &mut usize,
) -> Option<(u32, u64, NodeId)> {
    let mut best: Option<(u32, u64, NodeId)> = None;
    for _ in 0..SAMPLES_PER_SLOT {
        for _ in 0..8 {
            let n = live[rng.below(live.len())];
            *examined += 1;
            if taken(&n) || best.is_some_and(|b| b.2 == n) {
                continue;
            }
            let k = key(n);
            if best.is_none_or(|b| k < b) {
                best = Some(k);
            }
            break;
        }
    }
    best
}

/// Where new mail goes (the node's `balance` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Affinity to the mail map, top up below `spread`, least loaded ([`choose`]).
    #[default]
    Porcupine,
    /// Random live nodes, whatever their load or the mail map ([`choose_random`]).
    Random,
    /// The user's manager and its successors by id: the classic partitioned design,
    /// for comparison ([`choose_static`]).
    Static,
}

/// `replicas` distinct random nodes of `live`; O(replicas).
pub fn choose_random(live: &[NodeId], replicas: usize, rng: &mut Rng) -> Choice {
    let replicas = replicas.min(live.len());
    let mut targets: Vec<NodeId> = Vec::with_capacity(replicas);
    let mut examined = 0;
    while targets.len() < replicas && examined < 64 * replicas.max(1) {
        let n = live[rng.below(live.len())];
        examined += 1;
        if !targets.contains(&n) {
            targets.push(n);
        }
    }
    // Vanishingly rare (tiny views): fill in order.
    for &n in live {
        if targets.len() >= replicas {
            break;
        }
        if !targets.contains(&n) {
            targets.push(n);
        }
    }
    Choice { targets, examined }
}

/// `manager` and the next `replicas - 1` members of `live` (ascending ids) after it,
/// wrapping: every message of a user lands on the same nodes.
pub fn choose_static(manager: NodeId, live: &[NodeId], replicas: usize) -> Choice {
    let replicas = replicas.min(live.len());
    let start = live.partition_point(|n| *n < manager);
    let targets = (0..replicas)
        .map(|i| live[(start + i) % live.len()])
        .collect();
    Choice {
        targets,
        examined: 0,
    }
}

/// Choose `count` distinct live nodes outside `exclude` for extra copies of a message
/// (repair: `exclude` are its holders), least loaded first. Up to
/// [`SMALL_CLUSTER_MAX`] live nodes the exact least-loaded choice; beyond, each slot
/// takes the least loaded of [`SAMPLES_PER_SLOT`] random outside nodes, so the cost
/// does not grow with `live`.
pub fn choose_extra(
    exclude: &[NodeId],
    live: &[NodeId],
    load: &dyn Fn(NodeId) -> u32,
    count: usize,
    tie_break: u64,
    rng: &mut Rng,
) -> Choice {
    let key = |n: NodeId| (load(n), mix(n ^ mix(tie_break)), n);
    if live.len() <= SMALL_CLUSTER_MAX {
        let mut others: Vec<NodeId> = live
            .iter()
            .copied()
            .filter(|n| !exclude.contains(n))
            .collect();
        others.sort_by_key(|n| key(*n));
        others.truncate(count);
        return Choice {
            targets: others,
            examined: live.len(),
        };
    }
    let mut chosen: Vec<(u32, u64, NodeId)> = Vec::with_capacity(count);
    let mut examined = 0;
    while chosen.len() < count {
        let taken = |n: &NodeId| exclude.contains(n) || chosen.iter().any(|k| k.2 == *n);
        match sample_slot(live, &key, &taken, rng, &mut examined) {
            Some(k) => chosen.push(k),
            None => break,
        }
    }
    chosen.sort_unstable();
    Choice {
        targets: chosen.into_iter().map(|k| k.2).collect(),
        examined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn small_clusters_follow_pick_targets_exactly() {
        let live: Vec<NodeId> = (1..=5).collect();
        let load = |n: NodeId| [0, 50, 60, 5, 1, 9][n as usize];
        let mut rng = Rng::new(1);
        for tie in 0..20 {
            let c = choose(&[1], &live, &load, 2, 2, tie, &mut rng);
            assert_eq!(
                c.targets,
                membership::pick_targets(&[1], &live, &load, 2, 2, tie)
            );
        }
        assert_eq!(
            choose(&[1], &live, &load, 2, 2, 0, &mut rng).targets,
            vec![4, 1]
        );
    }

    #[test]
    fn large_clusters_keep_affinity_distinctness_and_examine_a_constant_number() {
        let live: Vec<NodeId> = (0..10_000).collect();
        let load = |n: NodeId| (n % 97) as u32;
        let mut rng = Rng::new(7);
        // Enough mail-map nodes: only they are chosen, least loaded first.
        let c = choose(&[500, 98, 7000], &live, &load, 2, 2, 3, &mut rng);
        assert_eq!(c.targets, vec![98, 500]);
        assert_eq!(c.examined, 3);
        // Top-ups: distinct, live, and a handful examined whatever N.
        for tie in 0..200 {
            let c = choose(&[42], &live, &load, 3, 3, tie, &mut rng);
            let set: BTreeSet<NodeId> = c.targets.iter().copied().collect();
            assert_eq!((c.targets.len(), set.len()), (3, 3));
            assert!(c.examined <= 1 + 2 * SAMPLES_PER_SLOT * 8);
            assert!(c.targets.windows(2).all(|w| load(w[0]) <= load(w[1])));
        }
    }

    #[test]
    fn sampling_prefers_lightly_loaded_nodes() {
        let live: Vec<NodeId> = (0..1000).collect();
        let load = |n: NodeId| n as u32; // node id = load
        let mut rng = Rng::new(11);
        let picks: Vec<u64> = (0..2000)
            .map(|t| choose(&[], &live, &load, 1, 1, t, &mut rng).targets[0])
            .collect();
        let mean = picks.iter().sum::<u64>() as f64 / picks.len() as f64;
        // Uniform would average ~500; best of two averages ~333.
        assert!(mean < 400.0, "mean load of picks {mean}");
    }

    #[test]
    fn extra_copies_avoid_the_holders_and_prefer_light_nodes() {
        let small: Vec<NodeId> = (1..=5).collect();
        let load = |n: NodeId| [0, 50, 60, 5, 1, 9][n as usize];
        let mut rng = Rng::new(3);
        let c = choose_extra(&[4], &small, &load, 2, 0, &mut rng);
        assert_eq!(c.targets, vec![3, 5]);
        assert_eq!(
            choose_extra(&[1, 2, 3, 4], &small, &load, 3, 0, &mut rng).targets,
            vec![5]
        );
        let large: Vec<NodeId> = (0..10_000).collect();
        let by_id = |n: NodeId| n as u32;
        let holders = [3, 9_000];
        let mut sum = 0u64;
        for tie in 0..500 {
            let c = choose_extra(&holders, &large, &by_id, 2, tie, &mut rng);
            let set: BTreeSet<NodeId> = c.targets.iter().copied().collect();
            assert_eq!((c.targets.len(), set.len()), (2, 2));
            assert!(c.targets.iter().all(|t| !holders.contains(t)));
            assert!(c.examined <= 2 * SAMPLES_PER_SLOT * 8);
            sum += c.targets[0];
        }
        // The lighter of each pair of draws: well below the uniform mean of 5,000.
        assert!(sum / 500 < 4_000, "mean id {}", sum / 500);
    }

    #[test]
    fn random_and_static_choices_are_distinct_live_nodes() {
        let live: Vec<NodeId> = vec![2, 5, 9, 11];
        let mut rng = Rng::new(4);
        for _ in 0..100 {
            let c = choose_random(&live, 3, &mut rng);
            let set: BTreeSet<NodeId> = c.targets.iter().copied().collect();
            assert_eq!((c.targets.len(), set.len()), (3, 3));
            assert!(c.targets.iter().all(|t| live.contains(t)));
        }
        assert_eq!(choose_random(&live, 9, &mut rng).targets.len(), 4);
        assert_eq!(choose_static(9, &live, 3).targets, vec![9, 11, 2]);
        assert_eq!(choose_static(11, &live, 2).targets, vec![11, 2]);
        assert_eq!(choose_static(5, &live, 1).targets, vec![5]);
    }
}
