//! Wire messages between membership state machines, and the events the state
//! machine reports to its driver.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::types::{Epoch, Members, NodeId, NodeInfo, View, ViewDelta};

/// What every message carries about its sender: who it is, which view it is
/// in, and how busy it is (load gossip rides on every message for free).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The sender's identity, incarnation and endpoints.
    pub from: NodeInfo,
    /// The epoch of the sender's installed view when it sent this.
    pub epoch: Epoch,
    /// The sender's load figure (see `Membership::set_local_load`).
    pub load: u32,
}

/// Protocol messages (serde; the node encodes them with postcard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Failure detector: "are you alive?", sent to the ring successor.
    Ping {
        /// Sender facts.
        header: Header,
    },
    /// Answer to `Ping`.
    PingAck {
        /// Sender facts.
        header: Header,
    },
    /// Discovery: sent to seeds and to known nodes outside the view.
    Probe {
        /// Sender facts.
        header: Header,
    },
    /// Answer to `Probe`, carrying the sender's view so a merge can include
    /// the whole other side, not just the node that answered.
    ProbeAck {
        /// Sender facts.
        header: Header,
        /// The members of the sender's installed view.
        members: Members,
    },
    /// Round 1: a coordinator asks the candidates to join a view under `proposal`.
    Propose {
        /// Sender (coordinator) facts.
        header: Header,
        /// The epoch the coordinator wants to commit.
        proposal: Epoch,
        /// Who is asked, so an accepter can name view mates the coordinator
        /// did not know about.
        asked: Asked,
    },
    /// Round 2: the sender promises `proposal` and wants to be in its view.
    Accept {
        /// Sender facts.
        header: Header,
        /// The proposal being accepted.
        proposal: Epoch,
        /// Members of the sender's view missing from the proposal's
        /// candidates: the coordinator asks them too, so accepting a
        /// newcomer's proposal never splits the sender off its old view.
        others: Vec<NodeInfo>,
    },
    /// Round 2: the sender already promised or installed something not lower.
    Reject {
        /// Sender facts.
        header: Header,
        /// The proposal being rejected.
        proposal: Epoch,
        /// The highest epoch the sender has promised or installed.
        promised: Epoch,
    },
    /// Round 3: the coordinator's final view (itself plus every accepter),
    /// as a change to the view the accepter was in (O(change) bytes). Also
    /// re-sent to a member seen lagging one view behind (a lost commit).
    Commit {
        /// Sender facts.
        header: Header,
        /// The committed view as a change to its base view, with a digest.
        delta: ViewDelta,
    },
    /// Round 3 for an accepter that was not in the coordinator's view (or
    /// whose base did not match): the whole committed view. Also the answer
    /// to `ViewRequest`, and re-sent to a member lagging more than one view.
    CommitView {
        /// Sender facts.
        header: Header,
        /// The committed view.
        view: View,
    },
    /// A `Commit` did not apply (the receiver's view is not the delta's
    /// base, or the digest differs): "send me your view in full".
    ViewRequest {
        /// Sender facts.
        header: Header,
        /// The epoch of the commit that did not apply.
        epoch: Epoch,
    },
}

/// Who a `Propose` asks, in O(excluded) bytes when the accepter shares the
/// coordinator's view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Asked {
    /// The coordinator's installed view (the epoch in its header) without
    /// these members (suspects, forgotten), plus nodes from outside it. Sent
    /// to members of that view: they know it already.
    ViewWithout(Vec<NodeId>),
    /// Exactly these ids, coordinator included, ascending. Sent to nodes
    /// outside the coordinator's view, whose own view may be another one;
    /// one list shared by every such message.
    Ids(Arc<Vec<NodeId>>),
}

impl Message {
    /// The sender facts every message carries.
    pub fn header(&self) -> &Header {
        match self {
            Message::Ping { header }
            | Message::PingAck { header }
            | Message::Probe { header }
            | Message::ProbeAck { header, .. }
            | Message::Propose { header, .. }
            | Message::Accept { header, .. }
            | Message::Reject { header, .. }
            | Message::Commit { header, .. }
            | Message::CommitView { header, .. }
            | Message::ViewRequest { header, .. } => header,
        }
    }

    /// A short name of the message kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::PingAck { .. } => "ping_ack",
            Message::Probe { .. } => "probe",
            Message::ProbeAck { .. } => "probe_ack",
            Message::Propose { .. } => "propose",
            Message::Accept { .. } => "accept",
            Message::Reject { .. } => "reject",
            Message::Commit { .. } => "commit",
            Message::CommitView { .. } => "commit_view",
            Message::ViewRequest { .. } => "view_request",
        }
    }
}

/// What the state machine tells its driver (drain with `poll_event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new view was installed on this node; recompute the user map from it.
    ViewChanged(crate::types::View),
}
