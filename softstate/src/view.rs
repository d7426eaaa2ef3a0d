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
/// once per pair of views and shareable by every machine that installs the same
/// pair (the simulator, the benchmark): one pass comparing the two user maps'
/// tables (O(B) word compares, no per-bucket lookups), then work proportional to
/// the buckets that changed manager or belong to a fresh manager.
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
    /// Old manager -> buckets it no longer manages, ascending (every bucket whose
    /// manager id changed). `None` when the two maps cannot be compared (no previous
    /// view, or another bucket count).
    pub lost: Option<BTreeMap<NodeId, Vec<u16>>>,
    /// Members of the new view that were not in the previous one as the same process
    /// (joined, or restarted with a new incarnation). They report all their fragments,
    /// and every manager waits for them.
    pub fresh: BTreeSet<NodeId>,
    /// Ids of the previous view whose process is not in the new one (left, or
    /// restarted): dropped from every mail map.
    pub stale: BTreeSet<NodeId>,
    /// Buckets, ascending, whose previous manager left the view (its id is not in
    /// the new one; a restarted manager's old process is gone). That manager may
    /// live on in a view of its own, still counting us as members, and grant
    /// these buckets' locks there for a while (every bucket when the bucket count
    /// changed). Shared: every machine installing the pair keeps it for a grace.
    pub deserted: Arc<Vec<u16>>,
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
        let old_map = prev
            .map(|p| &p.map)
            .filter(|m| m.buckets() == next.map.buckets());
        // Only these buckets can be anything but kept: those whose manager changed
        // and those of a fresh manager (a restarted node keeps its id and its
        // buckets, but not its maps). Without a comparable previous map, all.
        let candidates: Vec<u16> = match old_map {
            Some(old) => {
                let mut c = if Arc::ptr_eq(old, &next.map) {
                    Vec::new()
                } else {
                    old.changed_buckets(&next.map)
                };
                let before = c.len();
                for m in &fresh {
                    c.extend_from_slice(next.map.managed(*m));
                }
                if c.len() > before {
                    c = crate::sorted::set_of(c);
                }
                c
            }
            None => (0..next.map.buckets()).map(|slot| slot as u16).collect(),
        };
        // Per member index (new map for managers, old map for old managers), so a
        // candidate costs two table reads and no tree lookup.
        let new_ids = next.map.members();
        let new_fresh: Vec<bool> = new_ids.iter().map(|m| fresh.contains(m)).collect();
        let old_ids = old_map.map_or(&[][..], |m| m.members());
        let old_stale: Vec<bool> = old_ids.iter().map(|m| stale.contains(m)).collect();
        let mut gained_by: Vec<Vec<u16>> = vec![Vec::new(); new_ids.len()];
        let mut lost_by: Vec<Vec<u16>> = vec![Vec::new(); old_ids.len()];
        let mut moves: Vec<(u16, NodeId, NodeId)> = Vec::new();
        for bucket in candidates {
            let Some(ni) = next.map.manager_index(bucket) else {
                continue;
            };
            let manager = new_ids[ni];
            let manager_fresh = new_fresh[ni];
            let old = old_map.and_then(|m| m.manager_index(bucket));
            if let Some(oi) = old
                && old_ids[oi] != manager
            {
                lost_by[oi].push(bucket);
            }
            match old {
                // Same manager process: kept.
                Some(oi) if old_ids[oi] == manager && !manager_fresh => {}
                // A live old manager hands over to a live, not new, manager (a fresh
                // manager gets full reports from everyone anyway).
                Some(oi) if old_ids[oi] != manager && !old_stale[oi] && !manager_fresh => {
                    moves.push((bucket, old_ids[oi], manager));
                }
                _ => gained_by[ni].push(bucket),
            }
        }
        let gained: BTreeMap<NodeId, Vec<u16>> = new_ids
            .iter()
            .zip(gained_by)
            .filter(|(_, bs)| !bs.is_empty())
            .map(|(m, bs)| (*m, bs))
            .collect();
        // Every bucket of a departed manager changed manager, so `lost_by` holds
        // them all; without comparable maps, every bucket if anyone departed.
        let departed = |m: &NodeId| !next.members.contains_key(m);
        let deserted: Vec<u16> = match (prev, old_map) {
            (None, _) => Vec::new(),
            (Some(_), Some(_)) => crate::sorted::set_of(
                old_ids
                    .iter()
                    .zip(&lost_by)
                    .filter(|(m, _)| departed(m))
                    .flat_map(|(_, bs)| bs.iter().copied())
                    .collect(),
            ),
            (Some(p), None) if p.ids.iter().any(departed) => {
                (0..next.map.buckets()).map(|slot| slot as u16).collect()
            }
            (Some(_), None) => Vec::new(),
        };
        let lost = old_map.map(|_| {
            old_ids
                .iter()
                .zip(lost_by)
                .filter(|(_, bs)| !bs.is_empty())
                .map(|(m, bs)| (*m, bs))
                .collect()
        });
        let mut outgoing: BTreeMap<NodeId, BTreeMap<NodeId, Vec<u16>>> = BTreeMap::new();
        let mut incoming: BTreeMap<NodeId, Vec<(u16, NodeId)>> = BTreeMap::new();
        for (bucket, o, manager) in moves {
            outgoing
                .entry(o)
                .or_default()
                .entry(manager)
                .or_default()
                .push(bucket);
            incoming.entry(manager).or_default().push((bucket, o));
        }
        Transition {
            from: prev.map(|p| p.epoch),
            to: next.epoch,
            gained,
            outgoing,
            incoming,
            lost,
            fresh,
            stale,
            deserted: Arc::new(deserted),
        }
    }

    /// Buckets that changed hands, in all (reported and handed over).
    pub fn changed_buckets(&self) -> usize {
        self.gained.values().map(Vec::len).sum::<usize>()
            + self.incoming.values().map(Vec::len).sum::<usize>()
    }
}
