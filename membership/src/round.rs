//! One view-change round as seen by its coordinator: who was asked, who
//! accepted, and when to stop waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::types::{Epoch, Millis, NodeId, NodeInfo, View, ViewDelta};

/// A coordinator's open proposal.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    /// The proposed epoch (`counter` above anything seen, `coordinator` = us).
    pub epoch: Epoch,
    /// Everyone asked, except the coordinator itself.
    pub candidates: BTreeMap<NodeId, NodeInfo>,
    /// Candidates that accepted, with the identity they answered with.
    pub accepted: BTreeMap<NodeId, NodeInfo>,
    /// The epoch of the view each accepter was in when it accepted (the
    /// base its commit can be a change to).
    pub accepted_from: BTreeMap<NodeId, Epoch>,
    /// Members of the coordinator's view it does not ask (suspects,
    /// forgotten): what `Asked::ViewWithout` names.
    pub excluded: Vec<NodeId>,
    /// Every id asked, coordinator included, ascending: built on first use
    /// and shared by every `Asked::Ids` until a candidate is added.
    ids: Option<Arc<Vec<NodeId>>>,
    /// Candidates that answered in any way (accepted, or found unreachable).
    pub answered: BTreeSet<NodeId>,
    /// When the coordinator commits with whoever accepted by then.
    pub deadline: Millis,
    /// When silent candidates are asked again (a lost proposal or accept
    /// must not cost a node its place in the view), if any resend is left.
    pub resend_at: Option<Millis>,
}

impl Round {
    /// A round that has asked `candidates` and waits until `deadline`,
    /// asking silent candidates again at `resend_at`.
    pub fn new(
        epoch: Epoch,
        candidates: BTreeMap<NodeId, NodeInfo>,
        deadline: Millis,
        resend_at: Option<Millis>,
    ) -> Self {
        Round {
            epoch,
            candidates,
            accepted: BTreeMap::new(),
            accepted_from: BTreeMap::new(),
            excluded: Vec::new(),
            ids: None,
            answered: BTreeSet::new(),
            deadline,
            resend_at,
        }
    }

    /// Candidates that have not answered yet.
    pub fn unanswered(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.candidates
            .values()
            .filter(|c| !self.answered.contains(&c.id))
    }

    /// Records an accept from a node in the view of epoch `base`; ignores
    /// nodes that were not asked.
    pub fn accept(&mut self, from: &NodeInfo, base: Epoch) {
        if self.candidates.contains_key(&from.id) {
            self.accepted.insert(from.id, from.clone());
            self.accepted_from.insert(from.id, base);
            self.answered.insert(from.id);
        }
    }

    /// Adds a candidate learned during the round; false if already asked.
    pub fn add_candidate(&mut self, info: &NodeInfo) -> bool {
        if self.candidates.contains_key(&info.id) {
            return false;
        }
        self.candidates.insert(info.id, info.clone());
        self.excluded.retain(|id| *id != info.id);
        self.ids = None;
        true
    }

    /// Every id asked, coordinator (`me`) included, ascending; one shared list.
    pub fn ids(&mut self, me: NodeId) -> Arc<Vec<NodeId>> {
        self.ids
            .get_or_insert_with(|| {
                let mut ids: Vec<NodeId> = self.candidates.keys().copied().collect();
                ids.push(me);
                ids.sort_unstable();
                ids.dedup();
                Arc::new(ids)
            })
            .clone()
    }

    /// Records that a candidate will not answer (it is unreachable).
    pub fn give_up_on(&mut self, id: NodeId) {
        if self.candidates.contains_key(&id) {
            self.answered.insert(id);
        }
    }

    /// True once every candidate has answered: no reason to wait longer.
    /// O(1): it runs on every accept. (`answered` only ever holds candidates.)
    pub fn complete(&self) -> bool {
        self.answered.len() >= self.candidates.len()
    }

    /// The view this round commits (the coordinator plus every accepter),
    /// built as a change to the coordinator's view `base` so that it shares
    /// its untouched chunks, and that change.
    pub fn view(&self, me: &NodeInfo, base: &View) -> (View, ViewDelta) {
        let removed: Vec<NodeId> = base
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != me.id && !self.accepted.contains_key(id))
            .collect();
        let mut added: Vec<NodeInfo> = self
            .accepted
            .values()
            .filter(|a| a.id != me.id && base.member(a.id) != Some(*a))
            .cloned()
            .collect();
        if base.member(me.id) != Some(me) {
            added.push(me.clone());
            added.sort_by_key(|m| m.id);
        }
        let members = base.members.apply(&removed, &added);
        let delta = ViewDelta {
            epoch: self.epoch,
            base: base.epoch,
            removed,
            added,
            len: members.len() as u64,
            digest: members.digest(),
        };
        let view = View {
            epoch: self.epoch,
            members,
        };
        (view, delta)
    }

    /// Candidates that never accepted.
    pub fn silent(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.candidates
            .keys()
            .copied()
            .filter(|id| !self.accepted.contains_key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: NodeId) -> NodeInfo {
        NodeInfo {
            id,
            incarnation: 1,
            rpc: String::new(),
            smtp: String::new(),
            pop: String::new(),
            admin: String::new(),
        }
    }

    #[test]
    fn commits_coordinator_plus_accepters_sorted() {
        let candidates = [3, 7, 9].into_iter().map(|id| (id, info(id))).collect();
        let epoch = Epoch {
            counter: 4,
            coordinator: 5,
            incarnation: 0,
        };
        let mut round = Round::new(epoch, candidates, Millis(500), None);
        let base = Epoch::initial(5);
        round.accept(&info(9), base);
        round.accept(&info(42), base); // never asked
        assert!(!round.complete());
        let silent: Vec<NodeId> = round.unanswered().map(|c| c.id).collect();
        assert_eq!(silent, vec![3, 7]);
        round.accept(&info(3), base);
        round.give_up_on(7);
        assert!(round.complete());
        let old = View {
            epoch: base,
            members: [5, 7, 8, 9].into_iter().map(info).collect(),
        };
        let (view, delta) = round.view(&info(5), &old);
        assert_eq!(view.epoch, epoch);
        assert_eq!(view.ids(), vec![3, 5, 9]);
        assert_eq!(delta.removed, vec![7, 8]);
        assert_eq!(delta.added, vec![info(3)]);
        assert_eq!(old.apply(&delta), Some(view));
        assert_eq!(round.silent().collect::<Vec<_>>(), vec![7]);
    }
}
