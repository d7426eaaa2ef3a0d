//! A view as the soft state sees it, and what changed between two views.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use membership::{Epoch, NodeId, UserMap, View};

/// One installed view: its epoch, its members with their incarnations, and the
/// user map. Built once per view and shared (`Arc`) by every machine a driver runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewInfo {
    /// The view's epoch.
    pub epoch: Epoch,
    /// Member id -> incarnation (the process start time).
    pub members: BTreeMap<NodeId, u64>,
    /// Member ids ascending (for O(1) sampling by index).
    pub ids: Vec<NodeId>,
    /// bucket -> manager.
    pub map: Arc<UserMap>,
}

impl ViewInfo {
    /// A view of `members` (id, incarnation) with its user map.
    pub fn new(
        epoch: Epoch,
        members: impl IntoIterator<Item = (NodeId, u64)>,
        map: Arc<UserMap>,
    ) -> Self {
        let members: BTreeMap<NodeId, u64> = members.into_iter().collect();
        let ids = members.keys().copied().collect();
        ViewInfo {
            epoch,
            members,
            ids,
            map,
        }
    }

    /// The soft-state picture of a membership view (`map` must be its user map).
    pub fn from_view(view: &View, map: Arc<UserMap>) -> Self {
        ViewInfo::new(
            view.epoch,
            view.members.iter().map(|m| (m.id, m.incarnation)),
            map,
        )
    }

    /// Whether exactly this process (id and incarnation) is a member.
    pub fn has_process(&self, id: NodeId, incarnation: u64) -> bool {
        self.members.get(&id) == Some(&incarnation)
    }

    /// Whether node `id` is a member (of any incarnation): one index for the dense
    /// ids a cluster usually has, else a binary search of `ids`.
    pub fn is_member(&self, id: NodeId) -> bool {
        let guess = (id as usize).wrapping_sub(1);
        self.ids.get(guess) == Some(&id) || self.ids.binary_search(&id).is_ok()
    }

    /// Number of buckets of the user map.
    pub fn buckets(&self) -> u32 {
        self.map.buckets()
    }
}

/// What changed from one view to the next, as the soft state needs it. Computed
/// once per pair of views (O(B + N log N)) and shareable by every machine that
/// installs the same pair (the simulator, the benchmark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The epoch of the previous view (`None`: no previous view).
    pub from: Option<Epoch>,
    /// The epoch of the new view.
    pub to: Epoch,
    /// New manager -> buckets whose previous manager process is gone (left,
    /// restarted) or that are new to the map, ascending. Every live node reports
    /// these buckets to them.
    pub gained: BTreeMap<NodeId, Vec<u16>>,
    /// Old manager -> new manager -> buckets that moved between two live processes,
    /// ascending. The old manager hands its maps over; nobody else reports.
    pub outgoing: BTreeMap<NodeId, BTreeMap<NodeId, Vec<u16>>>,
    /// New manager -> (bucket, old manager) of the same moves.
    pub incoming: BTreeMap<NodeId, Vec<(u16, NodeId)>>,
    /// Members of the new view that were not in the previous one as the same process
    /// (joined, or restarted with a new incarnation). They report all their fragments,
    /// and every manager waits for them.
    pub fresh: BTreeSet<NodeId>,
    /// Ids of the previous view whose process is not in the new one (left, or
    /// restarted): dropped from every mail map.
    pub stale: BTreeSet<NodeId>,
}

impl Transition {
    /// The change from `prev` (none for a process's first view) to `next`.
    pub fn between(prev: Option<&ViewInfo>, next: &ViewInfo) -> Transition {
        let fresh: BTreeSet<NodeId> = next
            .members
            .iter()
            .filter(|(id, inc)| prev.is_none_or(|p| !p.has_process(**id, **inc)))
            .map(|(id, _)| *id)
            .collect();
        let stale: BTreeSet<NodeId> = prev
            .map(|p| {
                p.members
                    .iter()
                    .filter(|(id, inc)| !next.has_process(**id, **inc))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        let mut gained: BTreeMap<NodeId, Vec<u16>> = BTreeMap::new();
        let mut outgoing: BTreeMap<NodeId, BTreeMap<NodeId, Vec<u16>>> = BTreeMap::new();
        let mut incoming: BTreeMap<NodeId, Vec<(u16, NodeId)>> = BTreeMap::new();
        let resized = prev.is_some_and(|p| p.map.buckets() != next.map.buckets());
        for slot in 0..next.map.buckets() {
            let bucket = slot as u16;
            let manager = next.map.manager(bucket);
            let old = match prev {
                Some(p) if !resized => Some(p.map.manager(bucket)),
                _ => None,
            };
            match old {
                // Same manager process: kept.
                Some(o) if o == manager && !fresh.contains(&manager) => {}
                // A live old manager hands over to a live, not new, manager (a fresh
                // manager gets full reports from everyone anyway).
                Some(o) if o != manager && !stale.contains(&o) && !fresh.contains(&manager) => {
                    outgoing
                        .entry(o)
                        .or_default()
                        .entry(manager)
                        .or_default()
                        .push(bucket);
                    incoming.entry(manager).or_default().push((bucket, o));
                }
                _ => gained.entry(manager).or_default().push(bucket),
            }
        }
        Transition {
            from: prev.map(|p| p.epoch),
            to: next.epoch,
            gained,
            outgoing,
            incoming,
            fresh,
            stale,
        }
    }

    /// Buckets that changed hands, in all (reported and handed over).
    pub fn changed_buckets(&self) -> usize {
        self.gained.values().map(Vec::len).sum::<usize>()
            + self.incoming.values().map(Vec::len).sum::<usize>()
    }
}
