//! Which membership changes the leader makes when the node's live view changes: a
//! pure function of (current raft membership, live nodes, voters_max), so it is tested
//! without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use super::types::NodeId;

/// The raft membership as far as planning cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemberView {
    /// Current voters (in a joint configuration: of every config).
    pub(crate) voter_ids: BTreeSet<NodeId>,
    /// Every member (voters and learners) and its RPC address.
    pub(crate) nodes: BTreeMap<NodeId, String>,
}

/// The changes to make, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemberPlan {
    /// Live nodes raft does not know yet: add as learners.
    pub(crate) add_learners: Vec<(NodeId, String)>,
    /// Known members whose address changed (restarted elsewhere): record the new one.
    pub(crate) readdress: Vec<(NodeId, String)>,
    /// Live non-voters to make voters, lowest ids first, up to `voters_max` voters.
    pub(crate) promote: Vec<NodeId>,
}

impl MemberPlan {
    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.add_learners.is_empty() && self.readdress.is_empty() && self.promote.is_empty()
    }
}

/// Plan the changes that bring raft's membership in line with the `live` view.
///
/// Dead voters are never demoted here: taking a voter out on a mere failure suspicion
/// could shrink the quorum below safety; an operator decides that.
pub(crate) fn plan(view: &MemberView, live: &[(NodeId, String)], voters_max: usize) -> MemberPlan {
    // One address per id; the last report wins, as the freshest.
    let live: BTreeMap<NodeId, &String> = live.iter().map(|(id, addr)| (*id, addr)).collect();
    let mut plan = MemberPlan::default();
    for (id, addr) in &live {
        match view.nodes.get(id) {
            None => plan.add_learners.push((*id, (*addr).clone())),
            Some(known) if known != *addr => plan.readdress.push((*id, (*addr).clone())),
            Some(_) => {}
        }
    }
    let free_seats = voters_max.saturating_sub(view.voter_ids.len());
    plan.promote = live
        .keys()
        .filter(|id| !view.voter_ids.contains(id))
        .take(free_seats)
        .copied()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[NodeId], learners: &[NodeId]) -> MemberView {
        MemberView {
            voter_ids: voters.iter().copied().collect(),
            nodes: voters
                .iter()
                .chain(learners)
                .map(|id| (*id, format!("n{id}")))
                .collect(),
        }
    }

    fn live(ids: &[NodeId]) -> Vec<(NodeId, String)> {
        ids.iter().map(|id| (*id, format!("n{id}"))).collect()
    }

    #[test]
    fn new_nodes_become_learners_and_fill_voter_seats_lowest_first() {
        let p = plan(&view(&[1], &[]), &live(&[5, 1, 3, 2, 4]), 3);
        assert_eq!(
            p.add_learners,
            vec![
                (2, "n2".into()),
                (3, "n3".into()),
                (4, "n4".into()),
                (5, "n5".into())
            ]
        );
        assert_eq!(p.promote, vec![2, 3]);
        assert!(p.readdress.is_empty());
    }

    #[test]
    fn full_voter_set_only_adds_learners() {
        let p = plan(&view(&[1, 2, 3], &[]), &live(&[1, 2, 3, 4]), 3);
        assert_eq!(p.add_learners, vec![(4, "n4".into())]);
        assert!(p.promote.is_empty());
    }

    #[test]
    fn dead_voters_are_kept_and_live_learners_fill_free_seats() {
        // Voter 2 is dead: it keeps its seat; one free seat goes to the lowest live learner.
        let p = plan(&view(&[1, 2], &[4, 6]), &live(&[1, 6, 4]), 3);
        assert!(p.add_learners.is_empty());
        assert_eq!(p.promote, vec![4]);
    }

    #[test]
    fn dead_learners_are_not_promoted() {
        let p = plan(&view(&[1], &[2, 3]), &live(&[1, 3]), 3);
        assert_eq!(p.promote, vec![3]);
    }

    #[test]
    fn changed_addresses_are_recorded() {
        let p = plan(
            &view(&[1, 2], &[]),
            &[(1, "n1".into()), (2, "elsewhere".into())],
            3,
        );
        assert_eq!(p.readdress, vec![(2, "elsewhere".into())]);
        assert!(p.add_learners.is_empty());
    }

    #[test]
    fn nothing_to_do_when_in_line() {
        let p = plan(&view(&[1, 2, 3], &[4]), &live(&[1, 2, 3, 4]), 3);
        assert!(p.is_empty(), "{p:?}");
        let p = plan(&view(&[1, 2, 3], &[]), &live(&[1, 2, 3]), 1);
        assert!(
            p.is_empty(),
            "more voters than voters_max are never demoted: {p:?}"
        );
    }
}
