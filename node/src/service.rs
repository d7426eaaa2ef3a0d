//! The node itself: the services every node runs, and the RPC entry point that serves
//! other nodes (and this one, through a local shortcut).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use membership::{NodeId, NodeInfo};
use storage::{MessageId, MessageKey, NewMessage, Store};

use crate::cluster::{Cluster, ViewState};
use crate::config::NodeConfig;
use crate::manager::{OpenOutcome, UserManager};
use crate::rpc::{Reply, Request, Response, RpcClient, RpcError, RpcHandler, SessionId};
use registry::Registry;
use registry::raft::RaftLog;

/// One node's fragment of a user: live messages with sizes, and tombstoned ids.
pub type Fragment = (Vec<(MessageId, u64)>, Vec<MessageId>);

/// What a node reports to one manager: users it holds mail for, POP3 sessions it runs.
type ReportParts = (Vec<String>, Vec<(String, SessionId)>);

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
    /// Soft state for the users this node manages.
    pub manager: UserManager,
    /// Client for calls to other nodes.
    pub rpc: RpcClient,
    /// Anti-entropy figures.
    pub repair: crate::repair::RepairStats,
    /// Wakes the repair task early (after `node remove`).
    pub repair_kick: tokio::sync::Notify,
    message_seq: AtomicU32,
    session_seq: AtomicU64,
    inflight: AtomicU32,
    sessions: std::sync::Mutex<HashMap<SessionId, String>>,
    me: std::sync::Weak<Node>,
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
        Arc::new_cyclic(|me| Node {
            config,
            store,
            registry,
            cluster,
            manager: UserManager::new(),
            rpc,
            repair: Default::default(),
            repair_kick: tokio::sync::Notify::new(),
            message_seq: AtomicU32::new(0),
            session_seq: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            sessions: std::sync::Mutex::new(HashMap::new()),
            me: me.clone(),
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
        let seq = self.session_seq.fetch_add(1, Ordering::Relaxed);
        let id = SessionId {
            node: self.id(),
            seq,
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(id, user.to_string());
        }
        id
    }

    /// Forget a POP3 session of this node.
    pub fn end_session(&self, id: SessionId) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&id);
        }
    }

    /// This node's load figure: requests being served now plus disk writes queued.
    pub fn load(&self) -> u32 {
        let pending = self.store.stats().pending_write_requests;
        self.inflight
            .load(Ordering::Relaxed)
            .saturating_add(u32::try_from(pending).unwrap_or(u32::MAX))
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
        let Reply { load, response } = self.rpc.call(&addr, &req).await?;
        self.cluster.set_load(node, load);
        Ok(response)
    }

    async fn serve(&self, req: Request) -> Response {
        // A guard, not a decrement after the await: a caller that times out drops this
        // future mid-way, and the load figure must not keep the abandoned request.
        struct InFlight<'a>(&'a AtomicU32);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&self.inflight);
        self.dispatch(req).await
    }

    /// Tell the current managers that this node holds fragments of `users`, retrying
    /// in the background until they take it or the view changes again (the next
    /// reconstruction then reports these users anyway).
    fn announce(&self, users: Vec<(u16, String)>) {
        let Some(node) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let view = node.cluster.view();
            for (bucket, user) in users {
                let manager = view.map.manager(bucket);
                let req = Request::Announce {
                    user,
                    node: node.id(),
                    epoch: view.view.epoch,
                };
                if !node.send_until_taken(manager, req, view.view.epoch).await {
                    return;
                }
            }
        });
    }

    /// Send soft-state news (a report, an announcement) to a manager until it takes it
    /// (`Ack`); give up once the view is no longer `epoch`. Returns whether it was taken.
    async fn send_until_taken(
        &self,
        manager: NodeId,
        req: Request,
        epoch: membership::Epoch,
    ) -> bool {
        loop {
            if self.cluster.view().view.epoch != epoch {
                return false;
            }
            match self.call(manager, req.clone()).await {
                Ok(Response::Ack) => return true,
                other => tracing::debug!(manager, ?other, "not taken yet"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn dispatch(&self, req: Request) -> Response {
        match req {
            Request::Membership(msg) => {
                self.cluster.deliver_membership(msg);
                Response::Ack
            }
            Request::Place {
                user,
                bucket,
                replicas,
            } => self.place(&user, bucket, replicas as usize),
            Request::Store { keys, data, epoch } => {
                let users: Vec<(u16, String)> =
                    keys.iter().map(|k| (k.bucket, k.user.clone())).collect();
                let batch = keys
                    .into_iter()
                    .map(|key| NewMessage {
                        key,
                        data: data.clone(),
                    })
                    .collect();
                match self.store.append(batch).await {
                    Ok(()) => {
                        if self.cluster.view().view.epoch != epoch {
                            // Placed under another view: our report for the current one
                            // may have gone out before this store; tell the manager.
                            self.announce(users);
                        }
                        Response::Ack
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing messages");
                        Response::Error(format!("store: {e}"))
                    }
                }
            }
            Request::Open {
                user,
                bucket,
                session,
            } => {
                if !self.manages(bucket) {
                    return Response::NotReady("not the manager in this view".into());
                }
                match self.manager.open(&user, session) {
                    OpenOutcome::Locked(map) => Response::MailMap(map),
                    OpenOutcome::InUse => Response::InUse,
                    OpenOutcome::NotReady => Response::NotReady("mail maps rebuilding".into()),
                }
            }
            Request::MailMap { user, bucket } => {
                if !self.manages(bucket) || !self.manager.is_complete() {
                    return Response::NotReady("not the manager, or maps rebuilding".into());
                }
                Response::MailMap(self.manager.mail_map(&user))
            }
            Request::Close { user, session } => {
                self.manager.close(&user, session);
                Response::Ack
            }
            Request::List { bucket, user } => match self.list_fragment(bucket, &user) {
                Ok((messages, tombstones)) => Response::Listing {
                    messages,
                    tombstones,
                },
                Err(e) => Response::Error(format!("list: {e}")),
            },
            Request::Forget { id } => {
                if let Some(addr) = self.cluster.forget(id) {
                    let saved = match self.store.kv("forgotten") {
                        Ok(t) => match t.insert(addr.as_bytes(), &id.to_be_bytes()) {
                            Ok(()) => t.flush().await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(e) = saved {
                        tracing::error!(error = %e, "recording a removed node");
                    }
                }
                self.repair_kick.notify_one();
                Response::Ack
            }
            Request::Read { key } => match self.store.read(&key).await {
                Ok(data) => Response::Message(data),
                Err(e) => Response::Error(format!("read: {e}")),
            },
            Request::Purge { keys } => match self.store.purge_tombstones(&keys) {
                Ok(_) => Response::Ack,
                Err(e) => Response::Error(format!("purge: {e}")),
            },
            Request::Delete { keys } => match self.store.delete(keys).await {
                Ok(()) => Response::Ack,
                Err(e) => Response::Error(format!("delete: {e}")),
            },
            Request::Report {
                epoch,
                from,
                users,
                locks,
            } => {
                if self.manager.report(epoch, from, users, locks) {
                    Response::Ack
                } else {
                    Response::NotReady("report for another view".into())
                }
            }
            Request::Announce { user, node, epoch } => {
                let bucket = membership::bucket_of(&user, self.cluster.buckets());
                if epoch != self.cluster.view().view.epoch || !self.manages(bucket) {
                    return Response::NotReady("announcement for another view".into());
                }
                self.manager.add(&user, &[node]);
                Response::Ack
            }
            Request::Registry(bytes) => {
                Response::Registry(self.registry.log().handle_rpc(&bytes).await)
            }
        }
    }

    /// This node's fragment of one user: live messages with sizes, and tombstoned ids.
    pub fn list_fragment(
        &self,
        bucket: u16,
        user: &str,
    ) -> Result<Fragment, storage::StorageError> {
        let messages = self
            .store
            .list(bucket, user)?
            .into_iter()
            .map(|m| (m.id, m.size))
            .collect();
        let tombstones = self.store.tombstones(bucket, user)?;
        Ok((messages, tombstones))
    }

    /// Whether this node's soft state is rebuilt for the current view.
    pub fn maps_ready(&self) -> bool {
        self.manager.is_complete() && self.manager.epoch() == Some(self.cluster.view().view.epoch)
    }

    /// Whether this node manages `bucket` in the current view and its soft state
    /// belongs to that view (a view is installed a moment before its soft state is
    /// reset; answering from the old state in between would hand out stale maps).
    fn manages(&self, bucket: u16) -> bool {
        let view = self.cluster.view();
        view.map.manager(bucket) == self.id() && self.manager.epoch() == Some(view.view.epoch)
    }

    /// As user manager: choose the nodes that will store a new message of `user`.
    fn place(&self, user: &str, bucket: u16, replicas: usize) -> Response {
        if !self.manages(bucket) {
            return Response::NotReady("not the manager in this view".into());
        }
        let view = self.cluster.view();
        let mail_map = self.manager.mail_map(user);
        let load = |id: NodeId| {
            if id == self.id() {
                self.load()
            } else {
                self.cluster.load_of(id)
            }
        };
        let tie_break = self.message_seq.fetch_add(1, Ordering::Relaxed) as u64;
        let targets = membership::pick_targets(
            &mail_map,
            &view.live,
            &load,
            self.config.spread.max(1),
            replicas.clamp(1, view.live.len().max(1)),
            tie_break,
        );
        self.manager.add(user, &targets);
        Response::Targets(targets)
    }

    /// Rebuild soft state for a newly installed view: reset what this node manages and
    /// report this node's fragments and POP3 locks to every manager of the view.
    pub async fn reconstruct(self: &Arc<Self>, view: Arc<ViewState>) {
        self.manager
            .new_view(view.view.epoch, view.live.iter().copied());
        self.unforget_live(&view);
        // Users with live mail here, and users with only tombstones here: a node that
        // recorded a delete must stay in the mail map, or a replica that missed the
        // delete would bring the message back.
        let scan = self.store.users(|_| true).and_then(|live| {
            let mut all: Vec<(u16, String)> = live.into_iter().map(|(b, u, _)| (b, u)).collect();
            all.extend(self.store.tombstone_users()?);
            all.sort();
            all.dedup();
            Ok(all)
        });
        let users = match scan {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "scanning fragments for reconstruction");
                return;
            }
        };
        let mut per_manager: HashMap<NodeId, ReportParts> = view
            .live
            .iter()
            .map(|&id| (id, Default::default()))
            .collect();
        for (bucket, user) in users {
            let m = view.map.manager(bucket);
            if let Some(entry) = per_manager.get_mut(&m) {
                entry.0.push(user);
            }
        }
        let sessions: Vec<(SessionId, String)> = self
            .sessions
            .lock()
            .map(|s| s.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        for (session, user) in sessions {
            let bucket = membership::bucket_of(&user, self.cluster.buckets());
            let m = view.map.manager(bucket);
            if let Some(entry) = per_manager.get_mut(&m) {
                entry.1.push((user, session));
            }
        }
        let mut tasks = Vec::new();
        for (manager, (users, locks)) in per_manager {
            let node = self.clone();
            let view = view.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::Report {
                    epoch: view.view.epoch,
                    from: node.id(),
                    users,
                    locks,
                };
                // Superseded views need nothing: the next reconstruction reports again.
                node.send_until_taken(manager, req, view.view.epoch).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// A node the operator removed may come back (same address, new process): once it
    /// is live again it is no longer "removed", and repair must wait for it when it
    /// is down, like for any other node.
    fn unforget_live(&self, view: &ViewState) {
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

/// Serves RPCs arriving over HTTP.
pub struct NodeRpc(pub Arc<Node>);

impl RpcHandler for NodeRpc {
    async fn handle(&self, req: Request) -> Response {
        self.0.serve(req).await
    }

    fn load(&self) -> u32 {
        self.0.load()
    }
}
