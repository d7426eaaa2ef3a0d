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
    /// New manager -> buckets whose manager *process* changed (another node, or the
    /// same id restarted), ascending. Every live node reports these buckets to them.
    pub gained: BTreeMap<NodeId, Vec<u16>>,
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
        let same_map = prev.is_some_and(|p| Arc::ptr_eq(&p.map, &next.map) || p.map == next.map);
        for slot in 0..next.map.buckets() {
            let bucket = slot as u16;
            let manager = next.map.manager(bucket);
            let moved = match prev {
                None => true,
                Some(_) if same_map => false,
                Some(p) => {
                    p.map.buckets() != next.map.buckets() || p.map.manager(bucket) != manager
                }
            };
            if moved || fresh.contains(&manager) {
                gained.entry(manager).or_default().push(bucket);
            }
        }
        Transition {
            from: prev.map(|p| p.epoch),
            to: next.epoch,
            gained,
            fresh,
            stale,
        }
    }

    /// Buckets that changed hands, in all.
    pub fn changed_buckets(&self) -> usize {
        self.gained.values().map(Vec::len).sum()
    }
}
