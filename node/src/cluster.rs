//! The node's picture of the cluster and the driver of the sans-IO membership core.
//!
//! [`Cluster`] holds the current view with its user map (rebuilt on every view change),
//! the load table, and the channel into the membership driver task. The driver owns
//! the [`membership::Membership`] state machine: it feeds it incoming messages, RPC
//! failures and timeouts with real time, and sends what it asks to send.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use membership::{
    Dest, Event, Membership, MembershipConfig, Millis, NodeId, NodeInfo, UserMap, View,
};
use softstate::LoadTable;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::rpc::{Request, RpcClient};

/// One installed view and everything derived from it.
#[derive(Debug)]
pub struct ViewState {
    /// The agreed view.
    pub view: View,
    /// bucket -> manager for this view; built once per member set and shared
    /// by every view with the same members (an epoch bump, a restart).
    pub map: Arc<UserMap>,
    /// Live member ids, sorted.
    pub live: Vec<NodeId>,
}

impl ViewState {
    fn new(view: View, buckets: u32, previous: Option<&ViewState>) -> Self {
        let live: Vec<NodeId> = view.members.iter().map(|m| m.id).collect();
        let map = match previous {
            Some(p) if p.live == live => p.map.clone(),
            _ => Arc::new(UserMap::new(&live, buckets)),
        };
        ViewState { view, map, live }
    }

    /// The member with this id, if live.
    pub fn member(&self, id: NodeId) -> Option<&NodeInfo> {
        self.view.member(id)
    }
}

/// What the driver task accepts.
#[derive(Debug)]
pub enum DriverInput {
    /// A membership message from another node.
    Message(membership::Message),
    /// A membership send failed.
    Unreachable(Dest),
    /// Forget a node for good.
    Forget(NodeId),
}

/// This node's shared picture of the cluster.
pub struct Cluster {
    me: NodeInfo,
    buckets: u32,
    current: RwLock<Arc<ViewState>>,
    views: watch::Sender<Arc<ViewState>>,
    /// The one load table: reply and gossip figures, newest observation wins.
    loads: Mutex<LoadTable>,
    /// Origin of this node's monotonic clock (membership, load figures, soft state).
    start: Instant,
    known: RwLock<Vec<NodeInfo>>,
    seeds: Vec<String>,
    forgotten: RwLock<std::collections::BTreeSet<String>>,
    input: mpsc::Sender<DriverInput>,
    /// When (this node's clock, ms) a membership message from another node last
    /// arrived; `u64::MAX`: never.
    peer_heard_ms: AtomicU64,
    /// Whether a view with other members has been installed since start.
    ever_joined: AtomicBool,
    /// Membership's lease on the view, ms on this node's clock (`u64::MAX`: none,
    /// a one-node view); see [`Cluster::view_lease_until`].
    lease_until_ms: AtomicU64,
}

impl Cluster {
    /// Start with a one-node view of `me`; returns the cluster and the driver's inbox.
    pub fn new(
        me: NodeInfo,
        buckets: u32,
        seeds: Vec<String>,
        forgotten: impl IntoIterator<Item = String>,
    ) -> (Arc<Cluster>, mpsc::Receiver<DriverInput>) {
        let view = View {
            epoch: membership::Epoch {
                counter: 0,
                coordinator: me.id,
                incarnation: me.incarnation,
            },
            members: std::iter::once(me.clone()).collect(),
        };
        let state = Arc::new(ViewState::new(view, buckets, None));
        let (views, _) = watch::channel(state.clone());
        let (input, rx) = mpsc::channel(DRIVER_INBOX_MAX);
        let cluster = Cluster {
            me: me.clone(),
            buckets,
            current: RwLock::new(state),
            views,
            loads: Mutex::new(LoadTable::new()),
            start: Instant::now(),
            known: RwLock::new(vec![me]),
            seeds,
            forgotten: RwLock::new(forgotten.into_iter().collect()),
            input,
            peer_heard_ms: AtomicU64::new(u64::MAX),
            ever_joined: AtomicBool::new(false),
            lease_until_ms: AtomicU64::new(u64::MAX),
        };
        (Arc::new(cluster), rx)
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// Buckets per cluster.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The current view and user map.
    pub fn view(&self) -> Arc<ViewState> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Subscribe to view changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ViewState>> {
        self.views.subscribe()
    }

    /// Every node ever heard of.
    pub fn known(&self) -> Vec<NodeInfo> {
        self.known.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Hand an incoming membership message to the driver.
    pub fn deliver_membership(&self, msg: membership::Message) {
        if msg.header().from.id != self.me.id {
            self.peer_heard_ms.store(self.now().0, Ordering::Relaxed);
        }
        // The protocol tolerates lost messages; a full inbox drops rather than grows.
        if self.input.try_send(DriverInput::Message(msg)).is_err() {
            tracing::warn!("membership inbox full or closed: message dropped");
        }
    }

    /// Ask the driver to forget a node for good; returns its RPC address if known.
    pub fn forget(&self, id: NodeId) -> Option<String> {
        let addr = self.known().into_iter().find(|k| k.id == id).map(|k| k.rpc);
        if let (Some(a), Ok(mut f)) = (&addr, self.forgotten.write()) {
            f.insert(a.clone());
        }
        if self.input.try_send(DriverInput::Forget(id)).is_err() {
            tracing::warn!(id, "membership inbox full or closed: forget not delivered");
        }
        addr
    }

    /// A removed node's address is live again: stop treating it as removed. Returns
    /// whether it was marked removed.
    pub fn unforget(&self, rpc: &str) -> bool {
        self.forgotten
            .write()
            .map(|mut f| f.remove(rpc))
            .unwrap_or(false)
    }

    /// Whether every node this node knows of (from gossip or as a seed) is live in the
    /// current view or was removed by the operator: only then is a message with fewer
    /// than R live copies really short of copies, not just waiting for a node to return.
    pub fn all_accounted_for(&self) -> bool {
        let view = self.view();
        let live_addrs: std::collections::BTreeSet<&str> =
            view.view.members.iter().map(|m| m.rpc.as_str()).collect();
        let forgotten = self.forgotten.read().map(|f| f.clone()).unwrap_or_default();
        let known_ok = self
            .known()
            .iter()
            .all(|k| view.live.contains(&k.id) || forgotten.contains(&k.rpc));
        let seeds_ok = self
            .seeds
            .iter()
            .all(|s| live_addrs.contains(s.as_str()) || forgotten.contains(s));
        known_ok && seeds_ok
    }

    /// Whether the current view holds a strict majority of the cluster's nodes: every
    /// node known (from views, gossip or as a seed) and not removed by the operator.
    /// Two sides of a partition cannot both hold one.
    pub fn in_majority(&self) -> bool {
        let view = self.view();
        let forgotten = self.forgotten.read().map(|f| f.clone()).unwrap_or_default();
        let known = self.known();
        let mut ids: std::collections::BTreeSet<u64> = known
            .iter()
            .filter(|k| !forgotten.contains(&k.rpc))
            .map(|k| k.id)
            .collect();
        ids.extend(view.view.members.iter().map(|m| m.id));
        let addrs: std::collections::BTreeSet<&str> = known
            .iter()
            .chain(view.view.members.iter())
            .map(|k| k.rpc.as_str())
            .collect();
        let unidentified_seeds = self
            .seeds
            .iter()
            .filter(|s| {
                **s != self.me.rpc && !addrs.contains(s.as_str()) && !forgotten.contains(*s)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        is_majority(view.live.len(), ids.len() + unidentified_seeds)
    }

    /// Whether this node, which has seeds, is still alone in the view it started with
    /// and should wait before serving: within `grace_ms` of starting, and for up to
    /// [`JOIN_WAIT_MAX_MS`] while other nodes talk to it (a merge is under way). A
    /// restarted node is alone for a moment before it merges back; serving placements
    /// and mailboxes then would store single copies (replicas are clamped to the view)
    /// and show its own fragments as whole mailboxes. Once nobody answers it serves
    /// alone: the rest of the cluster may really be gone.
    pub fn joining(&self, grace_ms: u64) -> bool {
        if self.seeds.is_empty()
            || self.ever_joined.load(Ordering::Relaxed)
            || self.view().view.members.len() > 1
        {
            return false;
        }
        let now = self.now().0;
        let heard = self.peer_heard_ms.load(Ordering::Relaxed);
        now < grace_ms
            || (now < JOIN_WAIT_MAX_MS && heard != u64::MAX && now.saturating_sub(heard) < grace_ms)
    }

    /// Until when the membership core takes the view as current for exclusive grants
    /// (POP3 locks), as `membership::Membership::view_lease_until`; `None` in a
    /// one-node view.
    pub fn view_lease_until(&self) -> Option<Millis> {
        match self.lease_until_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Millis(ms)),
        }
    }

    /// Milliseconds on this node's monotonic clock (shared by the membership driver,
    /// the load table and the soft-state driver).
    pub fn now(&self) -> Millis {
        Millis(self.start.elapsed().as_millis() as u64)
    }

    /// The instant a [`Millis`] deadline of this node's clock falls on.
    pub fn instant_of(&self, at: Millis) -> Instant {
        self.start + Duration::from_millis(at.0)
    }

    /// Record a load figure carried by an RPC reply received just now.
    pub fn set_load(&self, id: NodeId, load: u32) {
        let now = self.now();
        self.observe_load(id, load, now);
    }

    /// Record a load figure observed at `at` (newest observation wins).
    pub fn observe_load(&self, id: NodeId, load: u32, at: Millis) {
        if let Ok(mut l) = self.loads.lock() {
            l.observe(id, load, at);
        }
    }

    /// A node's load figure as of now, nearly-full flag included (see
    /// [`softstate::queue_of`] for the queue alone): the last one heard, its queue
    /// counted as idle once older than [`LOAD_FIGURE_AGE_MAX_MS`] (0 when unknown).
    pub fn load_of(&self, id: NodeId) -> u32 {
        let now = self.now();
        self.loads
            .lock()
            .map(|l| l.load_at(id, now, LOAD_FIGURE_AGE_MAX_MS))
            .unwrap_or(0)
    }

    /// The nodes whose newest load figure says their disk is nearly full; this node
    /// (`me`) by its own reading `me_full`, not by what others last heard.
    pub fn nearly_full_nodes(&self, me: NodeId, me_full: bool) -> Vec<NodeId> {
        let mut full = self
            .loads
            .lock()
            .map(|l| l.nearly_full())
            .unwrap_or_default();
        full.retain(|n| *n != me);
        if me_full {
            full.push(me);
            full.sort_unstable();
        }
        full
    }

    fn install(&self, view: View) {
        if view.members.len() > 1 {
            self.ever_joined.store(true, Ordering::Relaxed);
        }
        let state = Arc::new(ViewState::new(view, self.buckets, Some(&self.view())));
        if let Ok(mut g) = self.current.write() {
            *g = state.clone();
        }
        self.views.send_replace(state);
    }
}

/// The longest a restarted node that other nodes talk to waits, alone in its first
/// view, for the merge before it serves alone (see [`Cluster::joining`]).
pub const JOIN_WAIT_MAX_MS: u64 = 30_000;

/// How often gossiped load figures are copied into the load table, in milliseconds
/// (figures from RPC replies go in at once).
const LOADS_PUBLISH_MS: u64 = 250;

/// How long a load figure's queue part counts, in milliseconds: a few membership
/// pings (500 ms apart by default), so a ring neighbour's figure is always fresh, and
/// a figure from a burst long past no longer keeps placement away from a node.
pub const LOAD_FIGURE_AGE_MAX_MS: u64 = 5_000;

/// Most inputs queued for the membership driver (a coordinator of a 10,000-node view
/// receives one Accept per member in a round).
pub const DRIVER_INBOX_MAX: usize = 65_536;

/// Run the membership core until `shutdown`; `load` reads this node's load figure.
pub async fn drive(
    cluster: Arc<Cluster>,
    mut inbox: mpsc::Receiver<DriverInput>,
    seeds: Vec<String>,
    config: MembershipConfig,
    rpc: RpcClient,
    load: impl Fn() -> u32 + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = cluster.start;
    let now = || Millis(start.elapsed().as_millis() as u64);
    let mut core = Membership::new(cluster.me.clone(), seeds, config, now());
    let (fail_tx, mut fail_rx) = mpsc::channel::<Dest>(DRIVER_INBOX_MAX);
    // Every send in flight, so shutdown ends them with the driver.
    let mut sends = JoinSet::new();
    // The known-node list is O(N) to copy: only when it may have changed.
    let mut known_version = None;
    // Copying every gossiped load is O(N): at most every LOADS_PUBLISH_MS, not per input.
    let mut loads_published: Option<Millis> = None;
    let mut publish = |core: &mut Membership, cluster: &Cluster| {
        let lease_ms = core.view_lease_until().map_or(u64::MAX, |m| m.0);
        cluster.lease_until_ms.store(lease_ms, Ordering::Relaxed);
        while let Some(event) = core.poll_event() {
            match event {
                Event::ViewChanged(view) => {
                    tracing::info!(
                        epoch = view.epoch.counter,
                        coordinator = view.epoch.coordinator,
                        members = ?view.members.iter().map(|m| m.id).collect::<Vec<_>>(),
                        "new view"
                    );
                    cluster.install(view);
                }
            }
        }
        // Each gossiped figure is as old as the message that carried it: it must not
        // replace a newer figure from an RPC reply.
        let at_now = now();
        let due = loads_published.is_none_or(|t| at_now.0 >= t.0 + LOADS_PUBLISH_MS);
        if due && let Ok(mut table) = cluster.loads.lock() {
            loads_published = Some(at_now);
            for (id, load) in core.loads() {
                if let Some(at) = core.last_heard(id) {
                    table.observe(id, load, at);
                }
            }
        }
        if known_version != Some(core.known_version()) {
            known_version = Some(core.known_version());
            if let Ok(mut k) = cluster.known.write() {
                *k = core.known_nodes();
            }
        }
    };
    // The initial one-node view counts as a view change too.
    cluster.install(core.view().clone());
    loop {
        core.set_local_load(load());
        while let Some((dest, msg)) = core.poll_transmit() {
            let addr = match &dest {
                Dest::Node(info) => info.rpc.clone(),
                Dest::Addr(a) => a.clone(),
            };
            let rpc = rpc.clone();
            let fail_tx = fail_tx.clone();
            sends.spawn(async move {
                let req = Request::Membership(msg);
                if let Err(e) = rpc
                    .call_with_timeout(&addr, &req, Duration::from_millis(1000))
                    .await
                {
                    tracing::debug!(%addr, error = %e, "membership send failed");
                    let _ = fail_tx.try_send(dest);
                }
            });
        }
        publish(&mut core, &cluster);
        let deadline = core
            .poll_timeout()
            .map(|m| start + Duration::from_millis(m.0))
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(500));
        tokio::select! {
            _ = shutdown.changed() => return,
            input = inbox.recv() => match input {
                Some(DriverInput::Message(msg)) => core.handle_message(now(), msg),
                Some(DriverInput::Unreachable(dest)) => core.handle_unreachable(now(), &dest),
                Some(DriverInput::Forget(id)) => core.forget(now(), id),
                None => return,
            },
            Some(dest) = fail_rx.recv() => core.handle_unreachable(now(), &dest),
            Some(_) = sends.join_next(), if !sends.is_empty() => {},
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(now()),
        }
    }
}

/// Whether `live` nodes are a strict majority of a cluster of `cluster` nodes.
pub fn is_majority(live: usize, cluster: usize) -> bool {
    live * 2 > cluster
}

#[cfg(test)]
mod majority_tests {
    use super::is_majority;

    #[test]
    fn strict_majorities_only() {
        assert!(is_majority(1, 1));
        assert!(is_majority(2, 3));
        assert!(!is_majority(1, 3));
        assert!(
            !is_majority(1, 2),
            "one of two cannot tell a partition from a crash"
        );
        assert!(is_majority(3, 5));
        assert!(!is_majority(2, 4));
    }
}
