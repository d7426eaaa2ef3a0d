//! Openraft's network over the node's [`RaftTransport`]: each raft RPC becomes one
//! opaque request/reply exchange with the target's address.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::RaftTransport;
use super::rpc::{RaftReply, RaftRequest, decode, encode};
use super::types::{NodeId, TypeConfig};

/// A boxed transport future.
pub(crate) type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;

/// [`RaftTransport`] made object safe, so `RaftLog` need not be generic.
pub(crate) trait DynTransport: Send + Sync + 'static {
    /// Same as [`RaftTransport::send`].
    fn send_boxed<'a>(&'a self, addr: &'a str, bytes: Vec<u8>) -> SendFuture<'a>;
}

impl<T: RaftTransport> DynTransport for T {
    fn send_boxed<'a>(&'a self, addr: &'a str, bytes: Vec<u8>) -> SendFuture<'a> {
        Box::pin(self.send(addr, bytes))
    }
}

/// A transport failure, as an error type openraft can carry.
#[derive(Debug, thiserror::Error)]
#[error("raft rpc to {addr}: {reason}")]
pub(crate) struct TransportError {
    addr: String,
    reason: String,
}

/// Makes one [`Connection`] per target.
pub(crate) struct Network {
    transport: Arc<dyn DynTransport>,
}

impl Network {
    /// A network sending through `transport`.
    pub(crate) fn new(transport: Arc<dyn DynTransport>) -> Network {
        Network { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            transport: self.transport.clone(),
            addr: node.addr.clone(),
            target,
        }
    }
}

/// Raft RPCs to one node.
pub(crate) struct Connection {
    transport: Arc<dyn DynTransport>,
    addr: String,
    target: NodeId,
}

impl Connection {
    /// Send one request and decode the reply. Openraft bounds every call with its own
    /// timeout, so none is added here.
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
    ) -> Result<RaftReply, RPCError<NodeId, BasicNode, E>> {
        let bytes = encode(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .transport
            .send_boxed(&self.addr, bytes)
            .await
            .map_err(|reason| {
                // Unreachable makes openraft back off instead of retrying at once.
                RPCError::Unreachable(Unreachable::new(&TransportError {
                    addr: self.addr.clone(),
                    reason,
                }))
            })?;
        decode::<RaftReply>(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn unexpected<E: std::error::Error>(
        &self,
        reply: &RaftReply,
    ) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&TransportError {
            addr: self.addr.clone(),
            reason: format!("unexpected reply {reply:?}"),
        }))
    }

    fn remote<E: std::error::Error>(&self, error: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(RaftRequest::AppendEntries(rpc)).await? {
            RaftReply::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RaftRequest::InstallSnapshot(rpc)).await? {
            RaftReply::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(RaftRequest::Vote(rpc)).await? {
            RaftReply::Vote(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }
}
