//! What registry nodes say to each other through the node's transport: one request
//! enum and one reply enum, postcard-encoded (compact for log entries and snapshot
//! chunks). The transport only sees opaque bytes.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{NodeId, TypeConfig};
use crate::state::{RegistryCommand, RegistryOutcome};

/// A request from one registry node to another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftRequest {
    /// Raft log replication and heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A registry write forwarded to the node believed to be the leader.
    ClientWrite(RegistryCommand),
    /// Has this node's raft been initialised (it belongs to a registry)? Asked before
    /// a `bootstrap_expect` formation so a registry is never created twice.
    Initialized,
}

/// The answer to a [`RaftRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftReply {
    /// Answer to [`RaftRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to [`RaftRequest::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to [`RaftRequest::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to [`RaftRequest::ClientWrite`].
    ClientWrite(WriteReply),
    /// Answer to [`RaftRequest::Initialized`].
    Initialized(bool),
    /// The request did not decode (version skew or corruption).
    BadRequest(String),
}

/// How a write went on the node that tried to commit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WriteReply {
    /// Committed and applied; the outcome of applying it.
    Done(RegistryOutcome),
    /// That node is not the leader (any more): nothing was proposed, try the leader.
    NotLeader,
    /// The leader could not commit it in time, or raft is stopped. The entry may still
    /// commit later, so the caller must not blindly retry.
    Unavailable(String),
}

/// Encode a message for the wire.
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(message)
}

/// Decode a message from the wire.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Encode a reply; a reply that cannot be encoded becomes a `BadRequest` naming why.
pub(crate) fn encode_reply(reply: &RaftReply) -> Vec<u8> {
    encode(reply).unwrap_or_else(|e| {
        encode(&RaftReply::BadRequest(format!("reply did not encode: {e}"))).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_write_round_trips() {
        let cmd = RegistryCommand::AddUser {
            address: "a@b.c".into(),
            password_hash: "$argon2id$x".into(),
        };
        let bytes = encode(&RaftRequest::ClientWrite(cmd.clone())).unwrap();
        match decode::<RaftRequest>(&bytes).unwrap() {
            RaftRequest::ClientWrite(back) => assert_eq!(back, cmd),
            other => panic!("decoded as {other:?}"),
        }
        let reply = encode_reply(&RaftReply::ClientWrite(WriteReply::Done(
            RegistryOutcome::UserExists,
        )));
        match decode::<RaftReply>(&reply).unwrap() {
            RaftReply::ClientWrite(w) => {
                assert_eq!(w, WriteReply::Done(RegistryOutcome::UserExists))
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(decode::<RaftRequest>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<RaftRequest>(&[]).is_err());
    }
}
