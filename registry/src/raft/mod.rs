//! The registry's Raft group (openraft 0.9): a few voters, every other node a learner
//! with a full copy, so every read is local and every write goes through the leader.
//!
//! Modules:
//! - `types`: openraft type configuration.
//! - `codec`: on-disk keys, JSON records, storage error mapping.
//! - `log_store`: the log and the vote (`raft_log`, `raft_meta` trees).
//! - `state_machine`: applying entries to [`RegistryState`], snapshots.
//! - `rpc`: the request/reply enums nodes exchange through [`RaftTransport`].
//! - `network`: openraft's network over that transport.
//! - `members`: which membership changes follow a change of the live view (pure).
//!
//! [`RaftLog`] ties them together: it starts raft, answers peers' RPCs
//! ([`RaftLog::handle_rpc`]), commits writes ([`RegistryLog::submit`], forwarded to the
//! leader from any node) and keeps the voter set filled ([`RaftLog::sync_members`]).

// Storage callbacks must return openraft's `StorageError` (224 bytes); boxing it in our
// helpers would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

mod codec;
mod form;
mod log_store;
mod members;
mod network;
mod rpc;
mod state_machine;
#[cfg(test)]
mod storage_tests;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, timeout, timeout_at};

pub use self::form::Formation;
use self::log_store::LogStore;
use self::members::MemberView;
use self::network::{DynTransport, Network};
use self::rpc::{RaftReply, RaftRequest, WriteReply, decode, encode, encode_reply};
use self::state_machine::StateMachine;
use self::types::{NodeId, Raft};
use crate::state::{RegistryCommand, RegistryOutcome, RegistryState};
use crate::{RegistryError, RegistryLog};

/// How Raft messages reach other nodes; the node implements it over its HTTP/2 RPC.
pub trait RaftTransport: Send + Sync + 'static {
    /// Send an opaque request to the node at `addr` and return its opaque reply.
    fn send(
        &self,
        addr: &str,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

/// Tuning of the registry's Raft group. The defaults suit a LAN cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftOptions {
    /// Leader heartbeat period; also openraft's timeout for one append-entries RPC.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound (exclusive) of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Timeout for sending and installing one snapshot chunk.
    pub install_snapshot_timeout_ms: u64,
    /// How many voters `sync_members` keeps; every other node is a learner.
    pub voters_max: usize,
    /// How long a write may take end to end (election, forwarding, commit) before it
    /// fails with [`RegistryError::Unavailable`].
    pub write_timeout_ms: u64,
    /// How long `sync_members` lets new learners catch up before making them voters.
    pub promote_wait_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot (lagging followers catch up from the log).
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            install_snapshot_timeout_ms: 2000,
            voters_max: 3,
            write_timeout_ms: 5000,
            promote_wait_ms: 3000,
            snapshot_logs_since_last: 5000,
            logs_kept_after_snapshot: 1000,
        }
    }
}

impl RaftOptions {
    fn openraft_config(&self) -> Result<Config, RegistryError> {
        let config = Config {
            cluster_name: "porcupine-registry".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RegistryError::Unavailable(format!("raft configuration: {e}")))
    }
}

/// The Raft group as seen from this node, for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This node's id.
    pub node_id: u64,
    /// The leader this node knows of, if any.
    pub leader_id: Option<u64>,
    /// Current voters, ascending.
    pub voter_ids: Vec<u64>,
    /// Current learners (full copies without a vote), ascending.
    pub learner_ids: Vec<u64>,
    /// Index of the last log entry applied to the local registry state.
    pub last_applied_index: Option<u64>,
    /// Index of the last entry in this node's log (applied or not).
    pub last_log_index: Option<u64>,
    /// Last log index covered by this node's current snapshot, if it has one.
    pub snapshot_index: Option<u64>,
    /// Current Raft term.
    pub term: u64,
}

/// Pause between write attempts while there is no (reachable) leader.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// This node's member of the registry Raft group, and the cluster-wide write path.
pub struct RaftLog {
    id: NodeId,
    addr: String,
    raft: Raft,
    transport: Arc<dyn DynTransport>,
    options: RaftOptions,
    /// Serialises `sync_members`: membership changes must not overlap.
    sync_lock: tokio::sync::Mutex<()>,
}

impl RaftLog {
    /// Open (or create) this node's raft state in `store` and start raft.
    pub async fn start<T: RaftTransport>(
        id: u64,
        addr: String,
        store: &storage::Store,
        state: RegistryState,
        transport: Arc<T>,
    ) -> Result<RaftLog, RegistryError> {
        Self::start_with_options(id, addr, store, state, transport, RaftOptions::default()).await
    }

    /// [`RaftLog::start`] with explicit tuning.
    pub async fn start_with_options<T: RaftTransport>(
        id: u64,
        addr: String,
        store: &storage::Store,
        state: RegistryState,
        transport: Arc<T>,
        options: RaftOptions,
    ) -> Result<RaftLog, RegistryError> {
        let config = Arc::new(options.openraft_config()?);
        let log_tree = store.kv("raft_log")?;
        let meta_tree = store.kv("raft_meta")?;
        let log_store = LogStore::new(log_tree, meta_tree.clone());
        let state_machine = StateMachine::open(state, meta_tree)
            .await
            .map_err(|e| RegistryError::Unavailable(format!("raft state machine: {e}")))?;
        let transport: Arc<dyn DynTransport> = transport;
        let raft = Raft::new(
            id,
            config,
            Network::new(transport.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| RegistryError::Unavailable(format!("raft start: {e}")))?;
        Ok(RaftLog {
            id,
            addr,
            raft,
            transport,
            options,
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// If this raft has never been initialised, make it a one-voter cluster of itself.
    ///
    /// Call it on one node only (the one forming the cluster): two nodes bootstrapped
    /// separately are two clusters that never merge. Others join through
    /// [`RaftLog::sync_members`] on the leader.
    pub async fn bootstrap(&self) -> Result<(), RegistryError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("raft stopped: {e}")))?;
        if initialized {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(&self.addr))]);
        match self.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => return Ok(()),
            Err(e) => return Err(RegistryError::Unavailable(format!("raft bootstrap: {e}"))),
        }
        // A one-voter cluster elects itself at once; wait for it so that the caller's
        // next `sync_members` finds a leader.
        let id = self.id;
        let _ = self
            .raft
            .wait(Some(self.write_timeout()))
            .metrics(|m| m.current_leader == Some(id), "bootstrapped node leads")
            .await;
        Ok(())
    }

    /// Answer one opaque request from another node (raft RPCs and forwarded client writes).
    pub async fn handle_rpc(&self, bytes: &[u8]) -> Vec<u8> {
        let reply = match decode::<RaftRequest>(bytes) {
            Err(e) => RaftReply::BadRequest(format!("undecodable registry raft request: {e}")),
            Ok(RaftRequest::AppendEntries(req)) => {
                RaftReply::AppendEntries(self.raft.append_entries(req).await)
            }
            Ok(RaftRequest::Vote(req)) => RaftReply::Vote(self.raft.vote(req).await),
            Ok(RaftRequest::InstallSnapshot(req)) => {
                RaftReply::InstallSnapshot(self.raft.install_snapshot(req).await)
            }
            Ok(RaftRequest::ClientWrite(cmd)) => {
                let deadline = Instant::now() + self.write_timeout();
                RaftReply::ClientWrite(self.write_here(cmd, deadline).await)
            }
            Ok(RaftRequest::Initialized) => match self.raft.is_initialized().await {
                Ok(yes) => RaftReply::Initialized(yes),
                Err(e) => RaftReply::BadRequest(format!("raft stopped: {e}")),
            },
        };
        encode_reply(&reply)
    }

    /// Called by the node whenever the live membership view changes (id, rpc addr of
    /// every live node). If this node is the raft leader: add unknown nodes as learners,
    /// and keep up to `voters_max` voters, preferring the lowest ids among live nodes
    /// (promote a learner when there are fewer than `voters_max` voters; dead voters are
    /// not demoted). Otherwise do nothing.
    ///
    /// A learner that has not caught up within `promote_wait_ms` is promoted anyway,
    /// so the voter set fills even without a later view change.
    pub async fn sync_members(&self, live: Vec<(u64, String)>) {
        let _serial = self.sync_lock.lock().await;
        if !self.is_leader() {
            return;
        }
        let plan = members::plan(&self.member_view(), &live, self.options.voters_max);
        if plan.is_empty() {
            return;
        }
        tracing::info!(?plan, "registry raft membership change");
        if !plan.add_learners.is_empty() {
            // One membership entry for all newcomers: a whole cluster starting up
            // costs one commit, not one per node.
            let nodes = plan
                .add_learners
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            let added = self
                .raft
                .change_membership(ChangeMembers::AddNodes(nodes), true);
            if let Err(problem) = self.bounded_change(added).await {
                tracing::warn!(%problem, "could not add registry learners");
                return;
            }
        }
        if !plan.readdress.is_empty() {
            let nodes = plan
                .readdress
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            let changed = self
                .raft
                .change_membership(ChangeMembers::SetNodes(nodes), true);
            if let Err(problem) = self.bounded_change(changed).await {
                tracing::warn!(%problem, "could not update registry member addresses");
                return;
            }
        }
        if !plan.promote.is_empty() {
            self.wait_caught_up(&plan.promote).await;
            let ids: BTreeSet<NodeId> = plan.promote.iter().copied().collect();
            let changed = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), true);
            if let Err(problem) = self.bounded_change(changed).await {
                tracing::warn!(ids = ?plan.promote, %problem, "could not promote registry voters");
            }
        }
    }

    /// Operator `node remove`: if this node leads, take `id` out of the raft membership
    /// (voter and member). Returns `Ok(true)` when this node made the change, `Ok(false)`
    /// when it is not the leader or `id` is no member. The next `sync_members` then
    /// promotes a live learner into the freed voter seat.
    pub async fn remove_member(&self, id: NodeId) -> Result<bool, String> {
        let _serial = self.sync_lock.lock().await;
        if !self.is_leader() || id == self.id {
            return Ok(false);
        }
        let view = self.member_view();
        if !view.nodes.contains_key(&id) && !view.voter_ids.contains(&id) {
            return Ok(false);
        }
        tracing::info!(id, "registry raft: removing a member for good");
        let ids: BTreeSet<NodeId> = BTreeSet::from([id]);
        if view.voter_ids.contains(&id) {
            let changed = self
                .raft
                .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false);
            self.bounded_change(changed).await?;
        }
        if self.member_view().nodes.contains_key(&id) {
            let changed = self
                .raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false);
            self.bounded_change(changed).await?;
        }
        Ok(true)
    }

    /// For status: leader id, voter ids, learner ids, last applied index.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        RaftStatus {
            node_id: self.id,
            leader_id: m.current_leader,
            voter_ids: membership.voter_ids().collect(),
            learner_ids: membership.learner_ids().collect(),
            last_applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            term: m.current_term,
        }
    }

    /// Stop raft on this node (idempotent). Peers see it as down.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "registry raft did not stop cleanly");
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.options.write_timeout_ms)
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader this node knows of, and its address if raft has one.
    fn leader(&self) -> Option<(NodeId, Option<String>)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone());
        Some((leader, addr))
    }

    fn member_view(&self) -> MemberView {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        MemberView {
            voter_ids: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }

    /// Run a membership change with the write timeout; `Err` says why it failed.
    async fn bounded_change<T, E: std::fmt::Display>(
        &self,
        change: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<(), String> {
        match timeout(self.write_timeout(), change).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not committed within {:?}", self.write_timeout())),
        }
    }

    /// Wait (bounded) until every node in `ids` has replicated the leader's log.
    async fn wait_caught_up(&self, ids: &[NodeId]) {
        let target = self.raft.metrics().borrow().last_log_index;
        let ids = ids.to_vec();
        let caught_up = self
            .raft
            .wait(Some(Duration::from_millis(self.options.promote_wait_ms)))
            .metrics(
                move |m| {
                    ids.iter().all(|id| {
                        let matched = m
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(id))
                            .and_then(|l| l.as_ref())
                            .map(|l| l.index);
                        matched >= target
                    })
                },
                "learners caught up",
            )
            .await;
        if let Err(e) = caught_up {
            tracing::info!(error = %e, "promoting registry learners that are still catching up");
        }
    }

    /// Commit `cmd` through the local raft, which must be the leader.
    async fn write_here(&self, cmd: RegistryCommand, deadline: Instant) -> WriteReply {
        // Confirm leadership with a quorum first: a leader cut off from its voters would
        // otherwise append the entry, time out, answer "unavailable", and then commit
        // the change anyway once the voters return. Checked first, a refused write is
        // (outside a quorum lost in the middle of the call) really not applied.
        match timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                return WriteReply::NotLeader;
            }
            Ok(Err(e)) => {
                return WriteReply::Unavailable(format!(
                    "registry has no quorum, nothing written: {e}"
                ));
            }
            Err(_) => {
                return WriteReply::Unavailable(
                    "registry has no quorum, nothing written".to_string(),
                );
            }
        }
        match timeout_at(deadline, self.raft.client_write(cmd)).await {
            Ok(Ok(response)) => WriteReply::Done(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                WriteReply::NotLeader
            }
            Ok(Err(e)) => WriteReply::Unavailable(format!("registry write failed: {e}")),
            Err(_) => WriteReply::Unavailable("registry write not committed in time".to_string()),
        }
    }

    /// Send `cmd` to the leader at `addr`; `Err` means it was surely not committed there
    /// by this attempt's answer (not the leader, unreachable, garbled reply).
    async fn write_at(
        &self,
        addr: &str,
        cmd: &RegistryCommand,
        deadline: Instant,
    ) -> Result<WriteReply, String> {
        let request = encode(&RaftRequest::ClientWrite(cmd.clone())).map_err(|e| e.to_string())?;
        let bytes = match timeout_at(deadline, self.transport.send_boxed(addr, request)).await {
            Err(_) => {
                return Ok(WriteReply::Unavailable(format!(
                    "registry leader at {addr} did not answer in time"
                )));
            }
            Ok(Err(e)) => return Err(format!("leader at {addr} unreachable: {e}")),
            Ok(Ok(bytes)) => bytes,
        };
        match decode::<RaftReply>(&bytes) {
            Ok(RaftReply::ClientWrite(reply)) => Ok(reply),
            Ok(other) => Err(format!("leader at {addr} answered {other:?}")),
            Err(e) => Err(format!("leader at {addr} sent an undecodable reply: {e}")),
        }
    }

    async fn submit_write(&self, cmd: RegistryCommand) -> Result<RegistryOutcome, RegistryError> {
        let deadline = Instant::now() + self.write_timeout();
        let mut problem = "no registry leader elected".to_string();
        loop {
            let reply = match self.leader() {
                None => None,
                Some((leader, _)) if leader == self.id => {
                    Some(self.write_here(cmd.clone(), deadline).await)
                }
                Some((leader, None)) => {
                    problem = format!("registry leader {leader} has no known address");
                    None
                }
                Some((_, Some(addr))) => match self.write_at(&addr, &cmd, deadline).await {
                    Ok(reply) => Some(reply),
                    Err(why) => {
                        problem = why;
                        None
                    }
                },
            };
            match reply {
                Some(WriteReply::Done(outcome)) => return Ok(outcome),
                Some(WriteReply::Unavailable(why)) => return Err(RegistryError::Unavailable(why)),
                Some(WriteReply::NotLeader) => {
                    problem = "registry leadership is moving".to_string()
                }
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RegistryError::Unavailable(problem));
            }
            tokio::time::sleep_until((now + WRITE_RETRY_PAUSE).min(deadline)).await;
        }
    }
}

impl RegistryLog for RaftLog {
    /// On the leader: commit through raft. Elsewhere: forward to the current leader,
    /// retrying while there is no reachable leader, up to `write_timeout_ms`.
    ///
    /// A write retried after a lost reply may already have been applied, in which case
    /// the outcome is the replay's (`UserExists` / `NoSuchUser`).
    async fn submit(&self, cmd: RegistryCommand) -> Result<RegistryOutcome, RegistryError> {
        self.submit_write(cmd).await
    }
}
