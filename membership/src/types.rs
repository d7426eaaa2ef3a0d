//! Plain data shared by every part of the crate: node identities, time, epochs,
//! views and message destinations.

use serde::{Deserialize, Serialize};

/// A node's cluster-wide identifier, fixed in its configuration.
pub type NodeId = u64;

/// Milliseconds on the driver's monotonic clock.
///
/// The state machine never reads a clock: every `handle_*` call carries `now`,
/// and deadlines come back out of `poll_timeout` in the same unit.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// This instant moved `delta_ms` later, saturating instead of overflowing.
    pub fn plus_ms(self, delta_ms: u64) -> Millis {
        Millis(self.0.saturating_add(delta_ms))
    }

    /// Milliseconds elapsed from `earlier` to `self` (0 if `earlier` is later).
    pub fn since_ms(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A node's identity and endpoints, gossiped so every node can print the cluster table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Cluster-wide node id (stable across restarts).
    pub id: NodeId,
    /// Which life of this node id this is: the driver passes the process start
    /// time (wall-clock ms), so a restarted node outranks its former self and
    /// late messages from the old process are ignored.
    #[serde(default)]
    pub incarnation: u64,
    /// Address of the inter-node RPC endpoint (where membership messages go).
    pub rpc: String,
    /// Address of the SMTP listener.
    pub smtp: String,
    /// Address of the POP3 listener.
    pub pop: String,
    /// Address of the admin HTTP API.
    pub admin: String,
}

impl NodeInfo {
    /// True when `other` is the same process: same id and same incarnation.
    pub fn same_process(&self, other: &NodeInfo) -> bool {
        self.id == other.id && self.incarnation == other.incarnation
    }
}

/// Totally ordered view epoch: a counter, ties broken by coordinator id.
///
/// Field order matters: the derived `Ord` compares `counter` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Grows by one with every view change a coordinator proposes.
    pub counter: u64,
    /// The node that proposed this epoch; breaks ties between concurrent coordinators.
    pub coordinator: NodeId,
}

impl Epoch {
    /// The epoch of the one-node view every node starts in.
    pub fn initial(me: NodeId) -> Epoch {
        Epoch {
            counter: 1,
            coordinator: me,
        }
    }
}

/// An agreed membership: the live nodes and the epoch that named them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The epoch this view was committed under.
    pub epoch: Epoch,
    /// The live nodes, sorted by id, no duplicate ids.
    pub members: Vec<NodeInfo>,
}

impl View {
    /// The one-node view a fresh node starts with.
    pub fn single(me: NodeInfo) -> View {
        View {
            epoch: Epoch::initial(me.id),
            members: vec![me],
        }
    }

    /// The member with this id, if any.
    pub fn member(&self, id: NodeId) -> Option<&NodeInfo> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .and_then(|i| self.members.get(i))
    }

    /// True when a node with this id is a member (any incarnation).
    pub fn contains(&self, id: NodeId) -> bool {
        self.member(id).is_some()
    }

    /// True when exactly this process (id and incarnation) is a member.
    pub fn contains_process(&self, info: &NodeInfo) -> bool {
        self.member(info.id).is_some_and(|m| m.same_process(info))
    }

    /// Member ids in ascending order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }
}

/// Where a message goes: a known node, or a bare address (seed not yet identified).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A node we know by identity; send to its `rpc` address.
    Node(NodeInfo),
    /// An RPC address whose node we do not know yet (a seed).
    Addr(String),
}

impl Dest {
    /// The RPC address the driver should deliver to.
    pub fn rpc_addr(&self) -> &str {
        match self {
            Dest::Node(info) => &info.rpc,
            Dest::Addr(addr) => addr,
        }
    }

    /// The node id, when the destination is a known node.
    pub fn node_id(&self) -> Option<NodeId> {
        match self {
            Dest::Node(info) => Some(info.id),
            Dest::Addr(_) => None,
        }
    }
}
