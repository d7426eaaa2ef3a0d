//! What soft-state machines send each other. Serde types: the node carries them in
//! its RPC enum (postcard), the simulator delivers them as they are.

use membership::{Epoch, NodeId};
use serde::{Deserialize, Serialize};

/// Identifies one POP3 session cluster-wide: the proxy node's process and its local
/// counter. The incarnation keeps a restarted node's sessions (whose counter starts
/// again at 0) apart from its former self's, whose locks die with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId {
    /// The node running the POP3 session.
    pub node: NodeId,
    /// That node's incarnation (process start time).
    pub incarnation: u64,
    /// That process's session counter.
    pub seq: u64,
}

/// Which of the receiving manager's buckets a report covers: the reporter has told
/// the manager everything it holds there, and the manager stops waiting for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every bucket the manager manages in the report's epoch (sent by a node that
    /// joined or restarted, and to a manager that did).
    All,
    /// These buckets, ascending (they changed hands, or the manager asked).
    Buckets(Vec<u16>),
}

/// To a manager: the users whose fragments `from` holds in the covered buckets, the
/// POP3 sessions it runs there, and "done" for those buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The view the report belongs to.
    pub epoch: Epoch,
    /// The reporting node.
    pub from: NodeId,
    /// The buckets covered.
    pub scope: Scope,
    /// Users with live mail or tombstones on `from` in those buckets.
    pub users: Vec<String>,
    /// POP3 sessions running on `from` for users of those buckets.
    pub locks: Vec<(String, SessionId)>,
}

/// To a manager: `from` now holds fragments of `users` (a store placed under another
/// epoch landed; the report for the current one may have missed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The view the announcement is meant for.
    pub epoch: Epoch,
    /// The holder.
    pub from: NodeId,
    /// The users, all managed by the receiver in `epoch`.
    pub users: Vec<String>,
}

/// From a manager to a node it still waits for: report these buckets (the node may
/// have missed the view in which they changed hands), hand over those.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The manager's view.
    pub epoch: Epoch,
    /// The manager.
    pub from: NodeId,
    /// The buckets it waits for a report of, ascending.
    pub buckets: Vec<u16>,
    /// The buckets it waits for a handover of, ascending.
    pub handoffs: Vec<u16>,
}

/// One bucket's soft state as its old manager hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedBucket {
    /// The bucket.
    pub bucket: u16,
    /// Its users' mail maps.
    pub users: Vec<(String, Vec<NodeId>)>,
    /// Its POP3 locks.
    pub locks: Vec<(String, SessionId)>,
    /// Nodes the old manager still waited for a report from (they now report to
    /// the new manager).
    pub waiting: Vec<NodeId>,
    /// Managers the old manager still waited for a handover from.
    pub handoff_from: Vec<NodeId>,
}

/// From the old manager of buckets that moved between two live nodes to their new
/// manager: their complete maps and locks (one message per pair of managers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The view the handover is meant for.
    pub epoch: Epoch,
    /// The old manager.
    pub from: NodeId,
    /// The buckets.
    pub buckets: Vec<HandedBucket>,
}

/// Any soft-state message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Note {
    /// See [`Report`].
    Report(Report),
    /// See [`Announce`].
    Announce(Announce),
    /// See [`Ask`].
    Ask(Ask),
    /// See [`Handoff`].
    Handoff(Handoff),
}

/// A message to send. The driver answers with
/// [`SoftState::handle_delivered`](crate::SoftState::handle_delivered) when the
/// receiver took it and [`SoftState::handle_refused`](crate::SoftState::handle_refused)
/// when it refused it or could not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The receiver.
    pub to: NodeId,
    /// Names this send in the answer.
    pub token: u64,
    /// The message.
    pub note: Note,
}
