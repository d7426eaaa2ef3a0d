//! The node itself: the parts every node runs and the calls between nodes (with a
//! local shortcut to itself). RPC dispatch is in [`crate::dispatch`], the soft-state
//! driver in [`crate::soft`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use membership::{NodeId, NodeInfo};
use storage::{MessageId, MessageKey, Store};

use softstate::fragments::FragmentIndex;

use crate::cluster::{Cluster, ViewState};
use crate::config::NodeConfig;
use crate::manager::UserManager;
use crate::rpc::{Reply, Request, Response, RpcClient, RpcError, SessionId};
use registry::Registry;
use registry::raft::RaftLog;

/// One node's fragment of a user: live messages with sizes, and tombstoned ids.
pub type Fragment = (Vec<(MessageId, u64)>, Vec<MessageId>);

/// How long a node with seeds that is still alone in its first view refuses to act
/// as everyone's manager (the deliverer and the POP3 proxy retry meanwhile).
pub const JOIN_GRACE_MS: u64 = 2000;

/// Environment variable (test only) that slows every `Store` a node serves by this
/// many milliseconds: a slow disk for the load-balancing tests.
pub const STORE_DELAY_ENV: &str = "PORCUPINE_TEST_STORE_DELAY_MS";

/// The registry as a node runs it.
pub type NodeRegistry = Registry<RaftLog>;

/// Why a call to another node (or this one) failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The node is not in the current view.
    #[error("node {0} is not live")]
    NotLive(NodeId),
    /// Transport failure or timeout.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// Everything one node runs, shared by its listeners and tasks.
pub struct Node {
    /// Startup configuration.
    pub config: NodeConfig,
    /// Local hard state.
    pub store: Store,
    /// Accounts and domains.
    pub registry: NodeRegistry,
    /// View, user map, loads.
    pub cluster: Arc<Cluster>,
    /// Soft state: mail maps and locks of the users this node manages, its side of
    /// reconstruction, its POP3 sessions, placement.
    pub manager: UserManager,
    /// Client for calls to other nodes.
    pub rpc: RpcClient,
    /// Anti-entropy figures.
    pub repair: crate::stats::RepairStats,
    /// Wakes the repair task early (after `node remove`).
    pub repair_kick: tokio::sync::Notify,
    /// Wakes the soft-state driver: the machine may have output after an RPC input.
    pub soft_kick: tokio::sync::Notify,
    /// Mailbox lock releases sent in the background.
    pub releases: crate::release::Releases,
    /// Free space on the data dir; nearly full takes this node out of placement.
    pub disk: Arc<crate::disk::DiskWatch>,
    /// Nodes being drained (`porcupine node drain`), saved in the local store.
    pub drain: crate::drain::DrainState,
    /// The last views installed here (status, dashboard).
    pub views: crate::viewlog::ViewLog,
    /// Test-only: extra time every `Store` request takes here (a slow disk), from
    /// `PORCUPINE_TEST_STORE_DELAY_MS`; zero in production.
    store_delay: std::time::Duration,
    message_seq: AtomicU32,
    inflight: AtomicU32,
}

impl Node {
    /// Assemble a node from its parts.
    pub fn new(
        config: NodeConfig,
        store: Store,
        registry: NodeRegistry,
        cluster: Arc<Cluster>,
        rpc: RpcClient,
    ) -> Arc<Self> {
        let manager = UserManager::new(
            cluster.me().id,
            cluster.me().incarnation,
            config.balance,
            softstate::SoftStateConfig::lock_grace_for(&config.membership()),
        );
        let disk = Arc::new(crate::disk::DiskWatch::new(
            &config.data,
            config.disk_reserve_mb.saturating_mul(1024 * 1024),
        ));
        let store_delay = std::env::var(STORE_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or_default();
        if !store_delay.is_zero() {
            tracing::warn!(
                delay_ms = store_delay.as_millis() as u64,
                "{STORE_DELAY_ENV} set: every store here is slowed down (test only)"
            );
        }
        let drain = crate::drain::DrainState::load(&store);
        Arc::new(Node {
            config,
            store,
            registry,
            cluster,
            manager,
            rpc,
            repair: Default::default(),
            repair_kick: tokio::sync::Notify::new(),
            soft_kick: tokio::sync::Notify::new(),
            releases: Default::default(),
            drain,
            views: Default::default(),
            disk,
            store_delay,
            message_seq: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cluster.me().id
    }

    /// This node's endpoints.
    pub fn info(&self) -> &NodeInfo {
        self.cluster.me()
    }

    /// A fresh cluster-unique message id.
    pub fn next_message_id(&self) -> MessageId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seq = self.message_seq.fetch_add(1, Ordering::Relaxed);
        MessageId::new(micros, self.id() as u32, seq)
    }

    /// Register a POP3 session run by this node; the lock it takes is reported to
    /// new managers after a view change.
    pub fn begin_session(&self, user: &str) -> SessionId {
        self.manager.with(|s| s.begin_session(user))
    }

    /// Forget a POP3 session of this node.
    pub fn end_session(&self, id: SessionId) {
        self.manager.with(|s| s.end_session(id))
    }

    /// This node's load figure: mail-store requests being served now
    /// ([`Request::touches_store`]) plus disk writes queued,
    /// with the nearly-full flag when the data dir's free space is below the reserve
    /// (see [`softstate::encode_figure`]).
    pub fn load(&self) -> u32 {
        let pending = self.store.stats().pending_write_requests;
        let queue = self
            .inflight
            .load(Ordering::Relaxed)
            .saturating_add(u32::try_from(pending).unwrap_or(u32::MAX));
        softstate::encode_figure(queue, self.disk.nearly_full())
    }

    /// The test-only delay of every `Store` served here (zero unless
    /// `PORCUPINE_TEST_STORE_DELAY_MS` is set).
    pub(crate) fn store_delay(&self) -> std::time::Duration {
        self.store_delay
    }

    /// Call `node` (directly when it is this node).
    pub async fn call(&self, node: NodeId, req: Request) -> Result<Response, CallError> {
        if node == self.id() {
            return Ok(self.serve(req).await);
        }
        let view = self.cluster.view();
        let addr = match view.member(node) {
            Some(info) => info.rpc.clone(),
            None => return Err(CallError::NotLive(node)),
        };
        let kind = crate::telemetry::request_kind(&req);
        let started = std::time::Instant::now();
        let reply = self.rpc.call(&addr, &req).await;
        metrics::histogram!("porcupine_rpc_seconds", "request" => kind)
            .record(started.elapsed().as_secs_f64());
        let outcome = if reply.is_ok() { "ok" } else { "error" };
        metrics::counter!(
            "porcupine_rpc_calls_total",
            "request" => kind,
            "peer" => node.to_string(),
            "outcome" => outcome
        )
        .increment(1);
        let Reply { load, response } = reply?;
        self.cluster.set_load(node, load);
        Ok(response)
    }

    /// Serve one request, counted in this node's load while it runs if it may wait
    /// on the mail store ([`Request::touches_store`]).
    pub(crate) async fn serve(&self, req: Request) -> Response {
        // A guard, not a decrement after the await: a caller that times out drops this
        // future mid-way, and the load figure must not keep the abandoned request.
        struct InFlight<'a>(&'a AtomicU32);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if !req.touches_store() {
            return self.dispatch(req).await;
        }
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&self.inflight);
        self.dispatch(req).await
    }

    /// This node's fragment of one user: live messages with sizes, and tombstoned ids.
    pub fn list_fragment(
        &self,
        bucket: u16,
        user: &str,
    ) -> Result<Fragment, storage::StorageError> {
        let f = crate::fragments::StoreFragments(&self.store).listing(bucket, user)?;
        Ok((f.messages, f.tombstones))
    }

    /// Whether this node's soft state is rebuilt for the current view.
    pub fn maps_ready(&self) -> bool {
        self.manager.is_complete() && self.soft_current()
    }

    /// Whether the soft state belongs to the current view: a view is installed a
    /// moment before the soft-state driver hands it to the machine, and answering from
    /// the old state in between would hand out stale maps.
    pub(crate) fn soft_current(&self) -> bool {
        self.manager.epoch() == Some(self.cluster.view().view.epoch)
            && !self.cluster.joining(JOIN_GRACE_MS)
    }

    /// A node the operator removed may come back (same address, new process): once it
    /// is live again it is no longer "removed", and repair must wait for it when it
    /// is down, like for any other node.
    pub(crate) fn unforget_live(&self, view: &ViewState) {
        for m in &view.view.members {
            if self.cluster.unforget(&m.rpc) {
                let removed = self
                    .store
                    .kv("forgotten")
                    .and_then(|t| t.remove(m.rpc.as_bytes()));
                if let Err(e) = removed {
                    tracing::error!(error = %e, "clearing a removed node that returned");
                }
            }
        }
    }

    /// The key of `user`'s copy of message `id`.
    pub fn key_for(&self, user: &str, id: MessageId) -> MessageKey {
        MessageKey {
            bucket: membership::bucket_of(user, self.cluster.buckets()),
            user: user.to_string(),
            id,
        }
    }
}
