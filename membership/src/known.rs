//! The table of nodes this node has heard of outside its view, or heard
//! from directly: newest incarnation wins, forgotten nodes stay out, and the
//! last gossiped facts (load, epoch, the view a node reported in a probe
//! answer) are kept per node.
//!
//! Members of the installed view are not copied in: the view itself is the
//! record of them (at 10,000 nodes a copy per member per node would be the
//! biggest thing in memory and the biggest cost of a view change). Calls
//! that must account for them take the view's entry for the id as `member`;
//! members that leave the view are learned here when the view changes.

use std::collections::BTreeMap;

use crate::message::Header;
use crate::types::{Epoch, Members, Millis, NodeId, NodeInfo};

/// What we know about one other node.
#[derive(Clone, Debug)]
pub(crate) struct KnownNode {
    /// Newest identity seen for this id.
    pub info: NodeInfo,
    /// Load from the node's last message, if it ever sent us one.
    pub load: Option<u32>,
    /// When we last received a message from this incarnation.
    pub last_heard: Option<Millis>,
    /// Epoch of the view the node was in when it last wrote to us.
    pub epoch: Option<Epoch>,
    /// The members of the node's view, from its last `ProbeAck`.
    pub reported_members: Members,
}

impl KnownNode {
    fn fresh(info: NodeInfo) -> Self {
        KnownNode {
            info,
            load: None,
            last_heard: None,
            epoch: None,
            reported_members: Members::default(),
        }
    }
}

/// How a direct message from a node relates to what we knew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// First time we hear of this id.
    New,
    /// Same incarnation as before.
    Same,
    /// A newer incarnation: the node restarted.
    Restarted,
    /// An older incarnation or a forgotten node: drop the message.
    Ignore,
}

/// Every node ever heard of, except ourselves and forgotten ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct KnownTable {
    nodes: BTreeMap<NodeId, KnownNode>,
    /// Forgotten ids with the newest incarnation seen when forgotten (a
    /// strictly newer incarnation is a new life and is welcome again) and
    /// their RPC address (a seed naming it is not probed any more).
    forgotten: BTreeMap<NodeId, (u64, String)>,
    /// Bumped whenever an identity is added, replaced or dropped.
    changes: u64,
}

impl KnownTable {
    /// True when messages and hints about this identity are to be dropped.
    pub fn is_forgotten(&self, info: &NodeInfo) -> bool {
        self.forgotten
            .get(&info.id)
            .is_some_and(|(inc, _)| info.incarnation <= *inc)
    }

    /// True when `rpc` is the address of a forgotten node.
    pub fn is_forgotten_addr(&self, rpc: &str) -> bool {
        self.forgotten.values().any(|(_, addr)| addr == rpc)
    }

    /// How many times an identity was added, replaced or dropped.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Records a direct message's header and says how to treat the message;
    /// `member` is the view's entry for the sender's id, if any.
    pub fn admit(&mut self, now: Millis, header: &Header, member: Option<&NodeInfo>) -> Admission {
        let info = &header.from;
        if self.is_forgotten(info) {
            return Admission::Ignore;
        }
        if self.forgotten.remove(&info.id).is_some() {
            self.changes += 1;
        }
        let admission = match self.nodes.get_mut(&info.id) {
            Some(known) if info.incarnation < known.info.incarnation => return Admission::Ignore,
            Some(known) if info.incarnation > known.info.incarnation => {
                *known = KnownNode::fresh(info.clone());
                self.changes += 1;
                Admission::Restarted
            }
            Some(known) => {
                // Same process: endpoints may still have been corrected.
                if known.info != *info {
                    known.info = info.clone();
                    self.changes += 1;
                }
                Admission::Same
            }
            None => {
                let admission = match member {
                    Some(m) if info.incarnation < m.incarnation => return Admission::Ignore,
                    Some(m) if info.incarnation > m.incarnation => Admission::Restarted,
                    Some(m) => {
                        if m != info {
                            self.changes += 1;
                        }
                        Admission::Same
                    }
                    None => {
                        self.changes += 1;
                        Admission::New
                    }
                };
                self.nodes.insert(info.id, KnownNode::fresh(info.clone()));
                admission
            }
        };
        if let Some(known) = self.nodes.get_mut(&info.id) {
            known.load = Some(header.load);
            known.last_heard = Some(now);
            known.epoch = Some(header.epoch);
        }
        admission
    }

    /// Learns of a node second hand (a probe answer, an accept, a member
    /// leaving the view): adds it if new or newer, never overwrites
    /// first-hand facts about the same incarnation. `member` is the view's
    /// entry for the id: a member already recorded there is not copied.
    pub fn learn(&mut self, info: &NodeInfo, member: Option<&NodeInfo>) {
        if self.is_forgotten(info) {
            return;
        }
        match self.nodes.get_mut(&info.id) {
            Some(known) if info.incarnation > known.info.incarnation => {
                *known = KnownNode::fresh(info.clone());
                self.changes += 1;
            }
            Some(_) => {}
            None if member.is_some_and(|m| m.incarnation >= info.incarnation) => {}
            None => {
                self.nodes.insert(info.id, KnownNode::fresh(info.clone()));
                self.changes += 1;
            }
        }
    }

    /// Takes a node back after `forget` (the cluster re-admitted it).
    pub fn unforget(&mut self, info: &NodeInfo) {
        if self.is_forgotten(info) {
            self.forgotten.remove(&info.id);
            self.changes += 1;
        }
    }

    /// Ids forgotten by the operator (and not seen in a newer life since).
    pub fn forgotten_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.forgotten.keys().copied()
    }

    /// Stores the view members a node reported in a probe answer.
    pub fn set_reported_members(&mut self, id: NodeId, members: Members) {
        if let Some(known) = self.nodes.get_mut(&id) {
            known.reported_members = members;
        }
    }

    /// Drops a node for good (until a newer incarnation of it shows up).
    pub fn forget(&mut self, id: NodeId, hint: Option<&NodeInfo>) {
        let removed = self.nodes.remove(&id).map(|known| known.info);
        let newest = match (removed, hint) {
            (Some(a), Some(b)) if b.incarnation > a.incarnation => b.clone(),
            (Some(a), _) => a,
            (None, Some(b)) => b.clone(),
            (None, None) => {
                let (incarnation, rpc) = self.forgotten.get(&id).cloned().unwrap_or_default();
                NodeInfo {
                    id,
                    incarnation,
                    rpc,
                    smtp: String::new(),
                    pop: String::new(),
                    admin: String::new(),
                }
            }
        };
        self.forgotten.insert(id, (newest.incarnation, newest.rpc));
        self.changes += 1;
    }

    /// What we know about `id`.
    pub fn get(&self, id: NodeId) -> Option<&KnownNode> {
        self.nodes.get(&id)
    }

    /// True if `info` is older than the incarnation we know for its id.
    pub fn is_outdated(&self, info: &NodeInfo) -> bool {
        self.nodes
            .get(&info.id)
            .is_some_and(|known| known.info.incarnation > info.incarnation)
    }

    /// All nodes in the table, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = &KnownNode> {
        self.nodes.values()
    }

    /// Nodes in the table with an id above `id`, ascending.
    pub fn iter_above(&self, id: NodeId) -> impl Iterator<Item = &KnownNode> {
        self.nodes
            .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded))
            .map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: NodeId, incarnation: u64) -> NodeInfo {
        NodeInfo {
            id,
            incarnation,
            rpc: format!("r{id}.{incarnation}"),
            smtp: String::new(),
            pop: String::new(),
            admin: String::new(),
        }
    }

    fn header(id: NodeId, incarnation: u64) -> Header {
        Header {
            from: info(id, incarnation),
            epoch: Epoch::initial(id),
            load: 3,
        }
    }

    #[test]
    fn incarnations_order_identities() {
        let mut table = KnownTable::default();
        assert_eq!(table.admit(Millis(1), &header(5, 10), None), Admission::New);
        assert_eq!(
            table.admit(Millis(2), &header(5, 10), None),
            Admission::Same
        );
        assert_eq!(
            table.admit(Millis(3), &header(5, 9), None),
            Admission::Ignore
        );
        assert_eq!(table.get(5).unwrap().last_heard, Some(Millis(2)));
        assert_eq!(
            table.admit(Millis(4), &header(5, 11), None),
            Admission::Restarted
        );
        assert_eq!(table.get(5).unwrap().info.incarnation, 11);
        assert!(table.is_outdated(&info(5, 10)));
    }

    #[test]
    fn learning_second_hand_never_downgrades() {
        let mut table = KnownTable::default();
        table.admit(Millis(1), &header(5, 10), None);
        table.learn(&info(5, 9), None);
        assert_eq!(table.get(5).unwrap().info.incarnation, 10);
        assert_eq!(table.get(5).unwrap().load, Some(3));
        table.learn(&info(5, 12), None);
        assert_eq!(table.get(5).unwrap().info.incarnation, 12);
        assert_eq!(table.get(5).unwrap().load, None);
        // A view member is not copied in, unless the hint is newer.
        table.learn(&info(7, 3), Some(&info(7, 3)));
        assert!(table.get(7).is_none());
        table.learn(&info(7, 4), Some(&info(7, 3)));
        assert_eq!(table.get(7).unwrap().info.incarnation, 4);
    }

    #[test]
    fn a_member_known_only_from_the_view_is_admitted_against_it() {
        let mut table = KnownTable::default();
        let member = info(5, 10);
        assert_eq!(
            table.admit(Millis(1), &header(5, 9), Some(&member)),
            Admission::Ignore
        );
        assert!(table.get(5).is_none());
        assert_eq!(
            table.admit(Millis(1), &header(5, 10), Some(&member)),
            Admission::Same
        );
        assert_eq!(table.get(5).unwrap().last_heard, Some(Millis(1)));
        let mut table = KnownTable::default();
        assert_eq!(
            table.admit(Millis(1), &header(5, 11), Some(&member)),
            Admission::Restarted
        );
    }

    #[test]
    fn forgotten_nodes_stay_out_until_a_new_life() {
        let mut table = KnownTable::default();
        table.admit(Millis(1), &header(5, 10), None);
        table.forget(5, None);
        assert!(table.get(5).is_none());
        assert!(table.is_forgotten_addr("r5.10"));
        assert_eq!(
            table.admit(Millis(2), &header(5, 10), None),
            Admission::Ignore
        );
        table.learn(&info(5, 10), None);
        assert!(table.get(5).is_none());
        assert_eq!(table.admit(Millis(3), &header(5, 11), None), Admission::New);
        assert!(!table.is_forgotten(&info(5, 11)));
        table.forget(6, Some(&info(6, 4)));
        assert!(table.is_forgotten(&info(6, 4)));
        table.unforget(&info(6, 4));
        assert!(!table.is_forgotten(&info(6, 4)));
        assert_eq!(table.admit(Millis(4), &header(6, 4), None), Admission::New);
    }
}
