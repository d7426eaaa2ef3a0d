//! One view-change round as seen by its coordinator: who was asked, who
//! accepted, and when to stop waiting.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Epoch, Millis, NodeId, NodeInfo, View};

/// A coordinator's open proposal.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    /// The proposed epoch (`counter` above anything seen, `coordinator` = us).
    pub epoch: Epoch,
    /// Everyone asked, except the coordinator itself.
    pub candidates: BTreeMap<NodeId, NodeInfo>,
    /// Candidates that accepted, with the identity they answered with.
    pub accepted: BTreeMap<NodeId, NodeInfo>,
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

    /// Records an accept; ignores nodes that were not asked.
    pub fn accept(&mut self, from: &NodeInfo) {
        if self.candidates.contains_key(&from.id) {
            self.accepted.insert(from.id, from.clone());
            self.answered.insert(from.id);
        }
    }

    /// Adds a candidate learned during the round; false if already asked.
    pub fn add_candidate(&mut self, info: &NodeInfo) -> bool {
        if self.candidates.contains_key(&info.id) {
            return false;
        }
        self.candidates.insert(info.id, info.clone());
        true
    }

    /// Records that a candidate will not answer (it is unreachable).
    pub fn give_up_on(&mut self, id: NodeId) {
        if self.candidates.contains_key(&id) {
            self.answered.insert(id);
        }
    }

    /// True once every candidate has answered: no reason to wait longer.
    pub fn complete(&self) -> bool {
        self.candidates.keys().all(|id| self.answered.contains(id))
    }

    /// The view this round commits: the coordinator plus every accepter.
    pub fn view(&self, me: &NodeInfo) -> View {
        let mut members: Vec<NodeInfo> = self.accepted.values().cloned().collect();
        members.retain(|m| m.id != me.id);
        members.push(me.clone());
        members.sort_by_key(|m| m.id);
        View {
            epoch: self.epoch,
            members,
        }
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
        };
        let mut round = Round::new(epoch, candidates, Millis(500), None);
        round.accept(&info(9));
        round.accept(&info(42)); // never asked
        assert!(!round.complete());
        let silent: Vec<NodeId> = round.unanswered().map(|c| c.id).collect();
        assert_eq!(silent, vec![3, 7]);
        round.accept(&info(3));
        round.give_up_on(7);
        assert!(round.complete());
        let view = round.view(&info(5));
        assert_eq!(view.epoch, epoch);
        assert_eq!(view.ids(), vec![3, 5, 9]);
        assert_eq!(round.silent().collect::<Vec<_>>(), vec![7]);
    }
}
