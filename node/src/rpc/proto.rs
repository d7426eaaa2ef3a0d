//! The inter-node RPC vocabulary: one request enum, one response enum, postcard on the wire.

use bytes::Bytes;
use membership::{Epoch, NodeId};
use serde::{Deserialize, Serialize};
use storage::{MessageId, MessageKey};

pub use softstate::SessionId;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A membership protocol message (one-way; answered with `Ack`).
    Membership(membership::Message),
    /// To a user manager: choose where to store a new message for `user`; the manager
    /// records the chosen nodes in the user's mail map before answering.
    Place {
        /// Canonical user.
        user: String,
        /// The user's bucket.
        bucket: u16,
        /// Copies wanted.
        replicas: u8,
    },
    /// To a fragment holder: store one message body under these keys (one per
    /// recipient held there) durably before answering.
    Store {
        /// Where the body goes.
        keys: Vec<MessageKey>,
        /// The message, sent once whatever the number of keys.
        data: Bytes,
        /// The epoch the sender placed them in (the holder re-announces on mismatch).
        epoch: Epoch,
    },
    /// To a user manager: lock `user`'s mailbox for `session` and return the mail map.
    Open {
        /// Canonical user.
        user: String,
        /// The user's bucket.
        bucket: u16,
        /// The locking session.
        session: SessionId,
    },
    /// To a user manager: the user's mail map, without locking (operator inspection).
    MailMap {
        /// Canonical user.
        user: String,
        /// The user's bucket.
        bucket: u16,
    },
    /// To a user manager: release the lock taken by `Open`.
    Close {
        /// Canonical user.
        user: String,
        /// The session that holds the lock.
        session: SessionId,
    },
    /// To a fragment holder: the live messages of `user` stored there.
    List {
        /// The user's bucket.
        bucket: u16,
        /// Canonical user.
        user: String,
    },
    /// To a fragment holder: one message's bytes.
    Read {
        /// Which message.
        key: MessageKey,
    },
    /// To a fragment holder: tombstone these messages durably.
    Delete {
        /// Which messages.
        keys: Vec<MessageKey>,
    },
    /// To a fragment holder: collect these tombstones (every replica has them and no
    /// copy of their messages is left).
    Purge {
        /// Which tombstones.
        keys: Vec<MessageKey>,
    },
    /// To a user manager after a view change: the users whose fragments the sender
    /// holds in the covered buckets (those that changed hands, or all of the
    /// manager's after a join or restart), the POP3 locks it holds there, and
    /// "done" for those buckets.
    Report(softstate::Report),
    /// To a user manager: the sender now holds fragments of these users (a store
    /// placed under another epoch landed).
    Announce(softstate::Announce),
    /// From a user manager still waiting: report these buckets, hand over those.
    Ask(softstate::Ask),
    /// From the old manager of buckets that moved to a live node: their maps and locks.
    Handoff(softstate::Handoff),
    /// To every node: forget node `id` for good (operator `node remove`).
    Forget {
        /// The node that is gone.
        id: NodeId,
    },
    /// To every node: mark node `id` draining (or not): no new mail is placed there
    /// and its copies stop counting towards R (operator `node drain`).
    Drain {
        /// The node.
        id: NodeId,
        /// On or off.
        draining: bool,
    },
    /// This node's own figures for a cluster-wide status (answered with `Status`).
    Status,
    /// A registry (Raft) message, opaque here.
    Registry(Vec<u8>),
}

impl Request {
    /// Whether serving this request may wait on this node's mail store: what its
    /// load figure counts (Porcupine's measure, pending requests that may touch the
    /// disk). Control traffic (membership, placement, locks, soft-state reports,
    /// registry heartbeats) is cheap and would only add noise: a manager counting
    /// the `Place` it is serving would never place on itself when idle.
    pub fn touches_store(&self) -> bool {
        match self {
            Request::Store { .. }
            | Request::Read { .. }
            | Request::Delete { .. }
            | Request::Purge { .. }
            | Request::List { .. } => true,
            Request::Membership(_)
            | Request::Place { .. }
            | Request::Open { .. }
            | Request::MailMap { .. }
            | Request::Close { .. }
            | Request::Report(_)
            | Request::Announce(_)
            | Request::Ask(_)
            | Request::Handoff(_)
            | Request::Forget { .. }
            | Request::Drain { .. }
            | Request::Status
            | Request::Registry(_) => false,
        }
    }
}

/// An answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Done, nothing to return.
    Ack,
    /// Nodes chosen by `Place`, and the manager's epoch the placement was recorded
    /// in (the stores carry it; a holder in another view announces them).
    Targets {
        /// Where the copies go, least loaded first.
        targets: Vec<NodeId>,
        /// The manager's view when it placed them.
        epoch: Epoch,
    },
    /// Mail map returned by `Open`.
    MailMap(Vec<NodeId>),
    /// `Open` refused: another session holds the lock.
    InUse,
    /// The callee is not ready (reconstructing, or not the manager in its view): retry.
    NotReady(Unready),
    /// Listing of `List`: live messages with sizes, and tombstoned ids.
    Listing {
        /// Live messages and their sizes.
        messages: Vec<(MessageId, u64)>,
        /// Ids deleted here (a replica that missed the delete must not resurrect them).
        tombstones: Vec<MessageId>,
    },
    /// Bytes of `Read`; `None` when absent or deleted.
    Message(Option<Bytes>),
    /// An opaque registry answer.
    Registry(Vec<u8>),
    /// The callee's status as JSON (the `GET /v1/cluster` body of that node).
    Status(String),
    /// The callee failed to carry out the request.
    Error(Failure),
}

/// Why a callee cannot serve a request yet; the caller retries (elsewhere or later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Unready {
    /// A view is installed but the soft state has not caught up with it (or the node
    /// is still joining the cluster).
    #[error("soft state behind the view")]
    Behind,
    /// The soft-state machine refused the request.
    #[error(transparent)]
    Refused(#[from] softstate::Refused),
    /// The callee's view holds no majority of the cluster's nodes (it is on the small
    /// side of a partition, or most nodes are down) and `partition_policy = quorum`:
    /// it grants no mailbox locks and places no mail.
    #[error("this node's view is a minority of the cluster")]
    Minority,
}

/// The local operation a callee's storage failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageOp {
    /// Appending messages (`Store`).
    Store,
    /// Listing a fragment (`List`).
    List,
    /// Reading a message (`Read`).
    Read,
    /// Dropping tombstones (`Purge`).
    Purge,
    /// Writing tombstones (`Delete`).
    Delete,
}

/// A request the callee took but could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// Its storage failed; `detail` is the storage error as the callee logged it.
    #[error("{op:?} failed: {detail}")]
    Storage {
        /// What was being done.
        op: StorageOp,
        /// The callee's error text.
        detail: String,
    },
    /// Its data disk is full: nothing was stored (the caller answers `452 4.3.1`).
    #[error("{op:?} refused: the data disk is full")]
    NoSpace {
        /// What was refused.
        op: StorageOp,
    },
}

impl Failure {
    /// A storage failure in `op`.
    pub fn storage(op: StorageOp, e: impl std::fmt::Display) -> Self {
        Failure::Storage {
            op,
            detail: e.to_string(),
        }
    }

    /// A storage failure in `op`, as [`Failure::NoSpace`] when the disk is full.
    pub fn from_storage(op: StorageOp, e: &storage::StorageError) -> Self {
        if e.is_disk_full() {
            Failure::NoSpace { op }
        } else {
            Failure::storage(op, e)
        }
    }
}

/// Every response travels with the responder's load, so callers learn loads for free.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The responder's current load figure.
    pub load: u32,
    /// The answer.
    pub response: Response,
}
