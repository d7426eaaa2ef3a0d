//! Openraft's type configuration for the registry group, and the aliases the other
//! raft modules share.

use std::io::Cursor;

use openraft::BasicNode;

use crate::state::{RegistryCommand, RegistryOutcome};

/// Raft node ids are the cluster's node ids.
pub(crate) type NodeId = u64;

openraft::declare_raft_types!(
    /// The registry's Raft types: log entries carry [`RegistryCommand`]s, applying one
    /// yields a [`RegistryOutcome`], and a node is known by its RPC address.
    pub(crate) TypeConfig:
        D = RegistryCommand,
        R = RegistryOutcome,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One log entry.
pub(crate) type Entry = openraft::Entry<TypeConfig>;
/// A log position (term, leader, index).
pub(crate) type LogId = openraft::LogId<NodeId>;
/// Openraft's storage error, the only error storage callbacks may return.
pub(crate) type RaftStorageError = openraft::StorageError<NodeId>;
/// The cluster configuration as stored with the log position that set it.
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
/// What a snapshot covers.
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
/// The raft handle.
pub(crate) type Raft = openraft::Raft<TypeConfig>;
