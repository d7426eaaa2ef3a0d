//! User → bucket → user manager: the user map, a pure function of the view.
//!
//! # Why Maglev
//!
//! The map from buckets to nodes uses Maglev hashing (Eisenbud et al., NSDI
//! 2016). Every node fills a lookup table of B entries from its own
//! permutation, round-robin with the others, so each node owns exactly
//! ⌊B/N⌋ or ⌈B/N⌉ buckets: balance is B/N ± 1 by construction, even at 1000
//! nodes with only ~65 buckets each. Rendezvous hashing moves the fewest
//! buckets possible on a change, but its balance is only statistical (a node's
//! share has a standard deviation of about √(B/N)), so at tens of buckets per
//! node some nodes would manage 20–30 % more users than others. Maglev pays a
//! small extra movement on membership changes (measured and bounded in the
//! tests below) for exact balance, which is what the user managers' load needs.
//!
//! Maglev's preference lists are `offset + j * skip` modulo a prime table size;
//! our table size is the bucket count (65,536 by default, a power of two), where
//! such lists correlate, so each node's list is a keyed bijective mix instead
//! (see `Preference`).

use thiserror::Error;

use crate::hash::{fmix64, fnv1a64_ascii_lowercase, salted};
use crate::types::NodeId;

/// Default number of buckets (fixed per cluster).
pub const DEFAULT_BUCKETS: u32 = 65_536;

/// Largest bucket count: buckets are numbered by `u16`.
pub const BUCKETS_MAX: u32 = 65_536;

/// A user map that cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserMapError {
    /// The member set is empty, so no node can manage any bucket.
    #[error("a user map needs at least one member")]
    NoMembers,
    /// The bucket count is outside `1..=65536`.
    #[error("bucket count {buckets} is outside 1..=65536")]
    BucketsOutOfRange {
        /// The rejected bucket count.
        buckets: u32,
    },
}

/// The bucket count actually used for a requested one: `1..=65536`.
fn clamp_buckets(buckets: u32) -> u32 {
    buckets.clamp(1, BUCKETS_MAX)
}

/// Stable hash of a user name (lowercased) to a bucket: must never change across versions/platforms.
///
/// FNV-1a 64 over the name with ASCII letters lowered, then MurmurHash3's
/// finalizer, modulo the bucket count. Only ASCII is case-folded: Unicode case
/// tables change between Unicode versions, and this value must not. A bucket
/// count outside `1..=65536` is clamped into it.
pub fn bucket_of(user: &str, buckets: u32) -> u16 {
    let buckets = u64::from(clamp_buckets(buckets));
    let hash = fmix64(fnv1a64_ascii_lowercase(user.as_bytes()));
    // buckets <= 65536, so the remainder fits in u16.
    (hash % buckets) as u16
}

/// bucket -> node, a pure function of the member set; identical on every node.
///
/// Besides the table it keeps a by-manager index (every member's buckets, listed
/// once when the map is built), so a member's buckets cost what it manages, not B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMap {
    /// Members, sorted ascending, without duplicates.
    members: Vec<NodeId>,
    /// For each bucket, the index into `members` of its manager.
    table: Vec<u32>,
    /// Every bucket, grouped by manager (in member order), ascending within a group.
    by_manager: Vec<u16>,
    /// Member `i`'s buckets are `by_manager[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
}

impl UserMap {
    /// Builds the map for a member set (order and duplicates do not matter).
    ///
    /// A bucket count outside `1..=65536` is clamped into it; an empty member
    /// set gives an empty map (see [`UserMap::try_manager`]).
    pub fn new(members: &[NodeId], buckets: u32) -> UserMap {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        let table = maglev_table(&members, clamp_buckets(buckets));
        let (by_manager, starts) = index_by_manager(members.len(), &table);
        UserMap {
            members,
            table,
            by_manager,
            starts,
        }
    }

    /// Like [`UserMap::new`], but refuses an empty member set or a bucket
    /// count outside `1..=65536` instead of clamping.
    pub fn try_new(members: &[NodeId], buckets: u32) -> Result<UserMap, UserMapError> {
        if members.is_empty() {
            return Err(UserMapError::NoMembers);
        }
        if clamp_buckets(buckets) != buckets {
            return Err(UserMapError::BucketsOutOfRange { buckets });
        }
        Ok(UserMap::new(members, buckets))
    }

    /// Number of buckets in this map.
    pub fn buckets(&self) -> u32 {
        // The table length is at most 65536, so it fits.
        self.table.len() as u32
    }

    /// The member set, sorted ascending.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The manager of `bucket`, or `None` for an empty map. Bucket numbers past
    /// the end wrap around (they cannot come from `bucket_of` with this count).
    pub fn try_manager(&self, bucket: u16) -> Option<NodeId> {
        if self.table.is_empty() {
            return None;
        }
        let slot = usize::from(bucket) % self.table.len();
        let index = *self.table.get(slot)?;
        self.members.get(index as usize).copied()
    }

    /// The index into [`UserMap::members`] of `bucket`'s manager, or `None` for an
    /// empty map (bucket numbers past the end wrap around, as in `try_manager`). For
    /// callers that keep per-member tables: no search of the member list.
    pub fn manager_index(&self, bucket: u16) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let slot = usize::from(bucket) % self.table.len();
        self.table.get(slot).map(|i| *i as usize)
    }

    /// The node that manages `bucket`. A view always contains its own node, so
    /// maps built from a view are never empty; an empty map answers `NodeId::MAX`.
    pub fn manager(&self, bucket: u16) -> NodeId {
        self.try_manager(bucket).unwrap_or(NodeId::MAX)
    }

    /// The manager of a user name's bucket.
    pub fn manager_of_user(&self, user: &str) -> NodeId {
        self.manager(bucket_of(user, self.buckets()))
    }

    /// How many buckets `node` manages.
    pub fn buckets_of(&self, node: NodeId) -> usize {
        self.managed(node).len()
    }

    /// The buckets `node` manages, ascending.
    pub fn buckets_managed_by(&self, node: NodeId) -> Vec<u16> {
        self.managed(node).to_vec()
    }

    /// The buckets `node` manages, ascending, borrowed from the by-manager index
    /// (O(log N) to find, no copy); empty for a non-member.
    pub fn managed(&self, node: NodeId) -> &[u16] {
        let Ok(index) = self.members.binary_search(&node) else {
            return &[];
        };
        let (Some(&from), Some(&to)) = (self.starts.get(index), self.starts.get(index + 1)) else {
            return &[];
        };
        self.by_manager
            .get(from as usize..to as usize)
            .unwrap_or_default()
    }

    /// Buckets whose manager differs between `self` and `other`, ascending.
    /// Maps of different sizes number buckets differently, so then every
    /// bucket of the larger map counts as changed. One pass over the two tables
    /// (member indices translated once), no per-bucket lookups.
    pub fn changed_buckets(&self, other: &UserMap) -> Vec<u16> {
        if self.table.len() != other.table.len() {
            let len = self.table.len().max(other.table.len());
            return (0..len).map(|slot| slot as u16).collect();
        }
        // Our member index -> the same node's index in `other` (or none).
        const ABSENT: u32 = u32::MAX;
        let translate: Vec<u32> = self
            .members
            .iter()
            .map(|m| other.members.binary_search(m).map_or(ABSENT, |i| i as u32))
            .collect();
        self.table
            .iter()
            .zip(&other.table)
            .enumerate()
            .filter(|(_, (mine, theirs))| translate.get(**mine as usize) != Some(*theirs))
            .map(|(slot, _)| slot as u16)
            .collect()
    }
}

/// The by-manager index of a table (a counting sort by manager index): every
/// bucket grouped by manager, ascending within each group, and where each group
/// starts (`members + 1` offsets).
fn index_by_manager(members: usize, table: &[u32]) -> (Vec<u16>, Vec<u32>) {
    let mut starts = vec![0u32; members + 1];
    for &m in table {
        if let Some(c) = starts.get_mut(m as usize + 1) {
            *c += 1;
        }
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut by_manager = vec![0u16; table.len()];
    for (slot, &m) in table.iter().enumerate() {
        if let Some(at) = next.get_mut(m as usize) {
            // The table has at most 65,536 slots, numbered by u16.
            by_manager[*at as usize] = slot as u16;
            *at += 1;
        }
    }
    (by_manager, starts)
}

/// Salts of the keys of a node's table permutation.
const PERM_SALTS: [u64; 4] = [
    0x6f66_6673_6574_2d31, // "offset-1"
    0x736b_6970_2d73_616c, // "skip-sal"
    0x6d75_6c74_2d6b_6579, // "mult-key"
    0x6164_642d_6b65_7932, // "add-key2"
];

/// A node's Maglev preference list: a bijection of `0..size`, keyed by stable
/// hashes of the node id.
///
/// The paper's `offset + j * skip (mod M)` needs a prime M. Our M is the bucket
/// count, a power of two by default, and there the affine lists of different nodes
/// share their low-bit patterns (bit k cycles with period 2^(k+1) for every node),
/// which made a single removal move several percent of buckets beyond the leaver's
/// (found by the property test). Instead each list is a keyed mix
/// (add, odd multiply, xorshift, odd multiply, xorshift, add: each step a bijection
/// on w-bit words) over the next power of two, cycle-walked back into `0..size`.
#[derive(Clone, Copy, Debug)]
struct Preference {
    keys: [u64; 4],
    size: u64,
    /// `2^bits - 1` (all ones for 64 bits), and the two xorshift amounts: computed
    /// once, since a table fill calls `mix` about B·ln B times.
    mask: u64,
    shift1: u32,
    shift2: u32,
}

impl Preference {
    fn new(node: NodeId, size: u64) -> Preference {
        let bits = size.next_power_of_two().trailing_zeros();
        let mut keys = PERM_SALTS.map(|salt| salted(node, salt));
        // The multipliers must be odd; setting the bit once is what `mix` did.
        keys[1] |= 1;
        keys[2] |= 1;
        Preference {
            keys,
            size,
            mask: if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            },
            shift1: bits / 2 + 1,
            shift2: bits.div_ceil(2),
        }
    }

    fn mix(&self, x: u64) -> u64 {
        let mask = self.mask;
        let [k0, k1, k2, k3] = self.keys;
        let mut x = x.wrapping_add(k0) & mask;
        x = x.wrapping_mul(k1) & mask;
        x ^= x >> self.shift1;
        x = x.wrapping_mul(k2) & mask;
        x ^= x >> self.shift2;
        x.wrapping_add(k3) & mask
    }

    /// The `j`-th slot of this node's list (`j < size`).
    fn slot(&self, j: u64) -> u64 {
        let mut x = self.mix(j);
        while x >= self.size {
            x = self.mix(x);
        }
        x
    }
}

/// Fills the Maglev lookup table: members take turns, each claiming the next
/// free slot of its own preference list, until every slot is taken.
fn maglev_table(members: &[NodeId], buckets: u32) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    let size = u64::from(buckets);
    let prefs: Vec<Preference> = members.iter().map(|m| Preference::new(*m, size)).collect();
    let mut next = vec![0u64; members.len()];
    const FREE: u32 = u32::MAX;
    let mut table = vec![FREE; buckets as usize];
    let mut filled = 0usize;
    while filled < table.len() {
        for (index, (pref, next)) in prefs.iter().zip(next.iter_mut()).enumerate() {
            // Each list is a permutation of all slots, so a free one is found
            // within `size` steps while any slot is free.
            let mut j = *next;
            loop {
                let slot = pref.slot(j) as usize;
                j += 1;
                if let Some(owner) = table.get_mut(slot)
                    && *owner == FREE
                {
                    *owner = index as u32;
                    filled += 1;
                    break;
                }
            }
            *next = j;
            if filled == table.len() {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Number of buckets of each member, in member order.
    fn counts(map: &UserMap) -> Vec<usize> {
        map.members().iter().map(|m| map.buckets_of(*m)).collect()
    }

    /// Distinct pseudo-random node ids (ids in real clusters are arbitrary).
    fn node_ids(count: usize, seed: u64) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = (0..count as u64)
            .map(|i| salted(i, seed) % 1_000_000)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut extra = 0;
        while ids.len() < count {
            extra += 1;
            let candidate = 1_000_000 + extra;
            ids.push(candidate);
        }
        ids
    }

    fn assert_balanced(map: &UserMap) {
        let n = map.members().len();
        let b = map.buckets() as usize;
        let (low, high) = (b / n, b.div_ceil(n));
        for (member, count) in map.members().iter().zip(counts(map)) {
            assert!(
                (low..=high).contains(&count),
                "node {member} has {count} buckets, want {low}..={high} (B={b}, N={n})"
            );
        }
        assert_eq!(counts(map).iter().sum::<usize>(), b);
    }

    /// Buckets that moved although neither their old nor their new manager is
    /// the node that left or arrived: Maglev's extra disruption.
    fn extra_moves(before: &UserMap, after: &UserMap, changed_node: NodeId) -> usize {
        before
            .changed_buckets(after)
            .into_iter()
            .filter(|b| before.manager(*b) != changed_node && after.manager(*b) != changed_node)
            .count()
    }

    #[test]
    fn bucket_of_is_pinned() {
        // Regression pins: these values are part of every cluster's data
        // layout; if this test fails, stored mail would land in the wrong
        // buckets after an upgrade.
        let pinned: Vec<u16> = ["alice", "bob", "", "Postmaster", "x@example.org"]
            .iter()
            .map(|user| bucket_of(user, DEFAULT_BUCKETS))
            .collect();
        let recomputed: Vec<u16> = ["alice", "bob", "", "Postmaster", "x@example.org"]
            .iter()
            .map(|user| (fmix64(fnv1a64_ascii_lowercase(user.as_bytes())) % 65_536) as u16)
            .collect();
        assert_eq!(pinned, recomputed);
        assert_eq!(
            pinned,
            vec![PIN_ALICE, PIN_BOB, PIN_EMPTY, PIN_POSTMASTER, PIN_X]
        );
    }

    // Values cross-checked with an independent Python implementation of
    // FNV-1a 64 + fmix64 (mod 65536); they must never change.
    const PIN_ALICE: u16 = 2292;
    const PIN_BOB: u16 = 19168;
    const PIN_EMPTY: u16 = 10534;
    const PIN_POSTMASTER: u16 = 19903;
    const PIN_X: u16 = 53569;

    #[test]
    fn bucket_of_ignores_ascii_case_and_respects_bucket_count() {
        assert_eq!(
            bucket_of("Alice@Example.ORG", DEFAULT_BUCKETS),
            bucket_of("alice@example.org", DEFAULT_BUCKETS)
        );
        for buckets in [1u32, 2, 3, 256, 1000, 65_536] {
            for user in ["a", "b", "carol", "dave@example.com"] {
                assert!(u32::from(bucket_of(user, buckets)) < buckets);
            }
        }
        // Out-of-range counts are clamped rather than dividing by zero.
        assert_eq!(bucket_of("a", 0), 0);
        assert_eq!(bucket_of("a", 1 << 20), bucket_of("a", 65_536));
    }

    #[test]
    fn bucket_of_spreads_users_evenly() {
        let buckets = 256u32;
        let mut hits = vec![0usize; buckets as usize];
        for i in 0..256_000 {
            hits[bucket_of(&format!("user{i}"), buckets) as usize] += 1;
        }
        // Expected 1000 per bucket; a fair hash stays within ±20 % here.
        for (bucket, count) in hits.iter().enumerate() {
            assert!((800..=1200).contains(count), "bucket {bucket} got {count}");
        }
    }

    #[test]
    fn empty_and_invalid_maps() {
        let empty = UserMap::new(&[], DEFAULT_BUCKETS);
        assert_eq!(empty.try_manager(0), None);
        assert_eq!(empty.manager(0), NodeId::MAX);
        assert_eq!(UserMap::try_new(&[], 16), Err(UserMapError::NoMembers));
        assert_eq!(
            UserMap::try_new(&[1], 0),
            Err(UserMapError::BucketsOutOfRange { buckets: 0 })
        );
        assert_eq!(
            UserMap::try_new(&[1], 65_537),
            Err(UserMapError::BucketsOutOfRange { buckets: 65_537 })
        );
        let one = UserMap::try_new(&[7], 16).unwrap();
        assert!((0..16).all(|b| one.manager(b) == 7));
        assert_eq!(one.manager(17), 7, "bucket numbers wrap");
    }

    #[test]
    fn balance_and_movement_at_3_10_100_1000_nodes() {
        for n in [3usize, 10, 100, 1000] {
            let ids = node_ids(n + 1, n as u64);
            let (members, newcomer) = ids.split_at(n);
            let map = UserMap::new(members, DEFAULT_BUCKETS);
            assert_balanced(&map);

            // Remove one node: its buckets move, and few others do.
            let leaver = members[n / 2];
            let rest: Vec<NodeId> = members.iter().copied().filter(|m| *m != leaver).collect();
            if !rest.is_empty() {
                let after = UserMap::new(&rest, DEFAULT_BUCKETS);
                assert_balanced(&after);
                let extra = extra_moves(&map, &after, leaver);
                let bound = removal_extra_bound(n);
                assert!(
                    extra <= bound,
                    "N={n}: removing a node moved {extra} extra buckets (bound {bound})"
                );
            }

            // Add one node: it takes a fair share, and few others move.
            let mut grown = members.to_vec();
            grown.push(newcomer[0]);
            let after = UserMap::new(&grown, DEFAULT_BUCKETS);
            assert_balanced(&after);
            let taken = after.buckets_of(newcomer[0]);
            let fair = DEFAULT_BUCKETS as usize / (n + 1);
            assert!(
                taken.abs_diff(fair) <= 1,
                "N={n}: newcomer took {taken}, fair {fair}"
            );
            let extra = extra_moves(&map, &after, newcomer[0]);
            let bound = addition_extra_bound(n);
            assert!(
                extra <= bound,
                "N={n}: adding a node moved {extra} extra buckets (bound {bound})"
            );
        }
    }

    /// Stated bound on buckets that move on a removal beyond the leaver's own:
    /// under 1 % of B for N >= 10 (and 2 % for the tiny N = 3 case).
    fn removal_extra_bound(n: usize) -> usize {
        let b = DEFAULT_BUCKETS as usize;
        if n >= 10 { b / 100 } else { b / 50 }
    }

    /// Stated bound on buckets that move on an addition beyond the newcomer's share.
    fn addition_extra_bound(n: usize) -> usize {
        removal_extra_bound(n)
    }

    #[test]
    fn same_set_in_another_order_gives_the_same_map() {
        let ids = node_ids(50, 9);
        let mut reversed = ids.clone();
        reversed.reverse();
        let mut doubled = ids.clone();
        doubled.extend_from_slice(&ids);
        let a = UserMap::new(&ids, DEFAULT_BUCKETS);
        assert_eq!(a, UserMap::new(&reversed, DEFAULT_BUCKETS));
        assert_eq!(a, UserMap::new(&doubled, DEFAULT_BUCKETS));
        assert!(
            a.changed_buckets(&UserMap::new(&reversed, DEFAULT_BUCKETS))
                .is_empty()
        );
    }

    #[test]
    fn changed_buckets_reports_exactly_the_differences() {
        let a = UserMap::new(&[1, 2, 3], 1024);
        let b = UserMap::new(&[1, 2, 3, 4], 1024);
        let changed = a.changed_buckets(&b);
        let expected: Vec<u16> = (0..1024u16)
            .filter(|x| a.manager(*x) != b.manager(*x))
            .collect();
        assert_eq!(changed, expected);
        assert!(!changed.is_empty());
        assert_eq!(b.changed_buckets(&a), changed);
        let other_size = UserMap::new(&[1, 2, 3], 512);
        assert_eq!(a.changed_buckets(&other_size).len(), 1024);
    }

    #[test]
    fn buckets_managed_by_matches_counts() {
        let map = UserMap::new(&[10, 20, 30], 999);
        let all: usize = [10, 20, 30]
            .iter()
            .map(|n| {
                let mine = map.buckets_managed_by(*n);
                assert!(mine.iter().all(|b| map.manager(*b) == *n));
                assert_eq!(mine.len(), map.buckets_of(*n));
                mine.len()
            })
            .sum();
        assert_eq!(all, 999);
        assert_eq!(map.buckets_of(40), 0);
    }

    #[test]
    fn the_by_manager_index_lists_exactly_each_members_buckets() {
        for (n, buckets) in [(1usize, 1u32), (3, 999), (7, 65_536), (20, 8)] {
            let ids = node_ids(n, u64::from(buckets));
            let map = UserMap::new(&ids, buckets);
            for m in &ids {
                let brute: Vec<u16> = (0..buckets)
                    .map(|b| b as u16)
                    .filter(|b| map.manager(*b) == *m)
                    .collect();
                assert_eq!(map.managed(*m), &brute[..], "N={n} B={buckets} node {m}");
            }
            assert!(map.managed(u64::MAX).is_empty());
        }
    }

    #[test]
    fn changed_buckets_across_removals_and_replacements_match_the_table() {
        let all = node_ids(12, 5);
        let before = UserMap::new(&all, DEFAULT_BUCKETS);
        // One left, one replaced by a newcomer, and an unrelated member set.
        let mut replaced = all[1..].to_vec();
        replaced.push(9_999_999);
        for other in [&all[1..], &replaced[..], &node_ids(5, 77)[..]] {
            let after = UserMap::new(other, DEFAULT_BUCKETS);
            let brute: Vec<u16> = (0..DEFAULT_BUCKETS)
                .map(|b| b as u16)
                .filter(|b| before.manager(*b) != after.manager(*b))
                .collect();
            assert_eq!(before.changed_buckets(&after), brute);
            assert_eq!(after.changed_buckets(&before), brute);
        }
    }

    #[test]
    fn non_power_of_two_tables_are_balanced() {
        for buckets in [1u32, 2, 7, 100, 255, 4096, 65_535] {
            for n in [1usize, 2, 3, 10] {
                let map = UserMap::new(&node_ids(n, buckets as u64), buckets);
                if n <= buckets as usize {
                    assert_balanced(&map);
                }
            }
        }
    }

    #[test]
    fn more_members_than_buckets_still_fills_every_bucket() {
        let map = UserMap::new(&node_ids(20, 1), 8);
        assert_eq!(map.buckets(), 8);
        assert!((0..8).all(|b| map.try_manager(b).is_some()));
        assert_eq!(counts(&map).iter().sum::<usize>(), 8);
        assert!(counts(&map).iter().all(|c| *c <= 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn prop_order_independent_and_balanced(
            mut ids in proptest::collection::btree_set(any::<u64>(), 1..60),
            seed in any::<u64>(),
            buckets in 1u32..=4096,
        ) {
            let ids: Vec<NodeId> = std::mem::take(&mut ids).into_iter().collect();
            let mut shuffled = ids.clone();
            // Deterministic shuffle from the seed.
            shuffled.sort_by_key(|id| salted(*id, seed));
            let a = UserMap::new(&ids, buckets);
            let b = UserMap::new(&shuffled, buckets);
            prop_assert_eq!(&a, &b);
            if ids.len() <= buckets as usize {
                let n = ids.len();
                let bk = buckets as usize;
                for count in counts(&a) {
                    prop_assert!((bk / n..=bk.div_ceil(n)).contains(&count));
                }
            }
        }

        #[test]
        fn prop_removal_moves_little_beyond_the_leaver(
            ids in proptest::collection::btree_set(any::<u64>(), 10..40),
            pick in any::<prop::sample::Index>(),
        ) {
            let ids: Vec<NodeId> = ids.into_iter().collect();
            let leaver = ids[pick.index(ids.len())];
            let rest: Vec<NodeId> = ids.iter().copied().filter(|i| *i != leaver).collect();
            let before = UserMap::new(&ids, DEFAULT_BUCKETS);
            let after = UserMap::new(&rest, DEFAULT_BUCKETS);
            // Every bucket of the leaver moves; others mostly stay.
            prop_assert!(before.buckets_managed_by(leaver).iter().all(|b| after.manager(*b) != leaver));
            let extra = extra_moves(&before, &after, leaver);
            prop_assert!(extra <= removal_extra_bound(ids.len()), "extra {}", extra);
        }
    }
}

#[cfg(test)]
mod preference_tests {
    use super::*;

    #[test]
    fn every_preference_list_is_a_permutation() {
        for size in [1u64, 2, 3, 7, 100, 1000, 4096, 65_535, 65_536] {
            for node in [0u64, 1, 9, u64::MAX] {
                let p = Preference::new(node, size);
                let mut seen = vec![false; size as usize];
                for j in 0..size {
                    let s = p.slot(j) as usize;
                    assert!(!seen[s], "size {size} node {node}: slot {s} twice");
                    seen[s] = true;
                }
            }
        }
    }
}
