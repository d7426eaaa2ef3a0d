//! An in-process cluster of [`SoftState`] machines on an instant (or shuffled,
//! lossy) network, with an in-memory fragment model and the ground-truth checker.
//! The soft-state tests and `corebench` drive it; the cluster simulator can too.
//!
//! Cost per step is logarithmic in the number of nodes: only machines that got an
//! input are drained, and deadlines wait in one ordered timer queue.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use membership::{Epoch, Millis, NodeId, bucket_of};

use crate::machine::{SoftState, SoftStateConfig};
use crate::message::{Note, Transmit};
use crate::place::Rng;
use crate::view::{Transition, ViewInfo};

/// Faults of the network: shuffled delivery and refused messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Out of 1000 deliveries, how many are refused (the sender retries).
    pub refuse_per_mille: u32,
    /// Deliver in a random order instead of FIFO.
    pub shuffle: bool,
}

/// The machines by node id, ascending: a sorted vector, so a lookup of the dense ids
/// a cluster usually has (1..=N) is one index, not a walk down a tree of 10,000.
#[derive(Default)]
pub struct Machines(Vec<(NodeId, Box<SoftState>)>);

impl Machines {
    fn find(&self, id: NodeId) -> Result<usize, usize> {
        let guess = (id as usize).wrapping_sub(1);
        match self.0.get(guess) {
            Some((at, _)) if *at == id => Ok(guess),
            _ => self.0.binary_search_by_key(&id, |(n, _)| *n),
        }
    }

    /// The machine of node `id`.
    pub fn get(&self, id: &NodeId) -> Option<&SoftState> {
        self.find(*id).ok().map(|i| &*self.0[i].1)
    }

    fn get_mut(&mut self, id: &NodeId) -> Option<&mut SoftState> {
        match self.find(*id) {
            Ok(i) => Some(&mut *self.0[i].1),
            Err(_) => None,
        }
    }

    fn insert(&mut self, id: NodeId, machine: Box<SoftState>) {
        match self.find(id) {
            Ok(i) => self.0[i].1 = machine,
            Err(i) => self.0.insert(i, (id, machine)),
        }
    }

    fn remove(&mut self, id: &NodeId) {
        if let Ok(i) = self.find(*id) {
            self.0.remove(i);
        }
    }

    /// Every machine with its node id, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &SoftState)> {
        self.0.iter().map(|(id, m)| (id, &**m))
    }

    /// Every machine, by ascending node id.
    pub fn values(&self) -> impl Iterator<Item = &SoftState> {
        self.0.iter().map(|(_, m)| &**m)
    }
}

impl<'a> IntoIterator for &'a Machines {
    type Item = (&'a NodeId, &'a SoftState);
    type IntoIter = Box<dyn Iterator<Item = (&'a NodeId, &'a SoftState)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// What one node holds on "disk": (bucket, user) pairs with live mail or
/// tombstones. A store appends (the cluster simulator adds one per new holder of a
/// user, at its message rate); the pairs are sorted and made distinct only when a
/// scan reads them, which is rare (view changes).
#[derive(Debug, Default, Clone)]
pub struct Held {
    pairs: Vec<(u16, String)>,
    /// `pairs[..settled]` is ascending and distinct.
    settled: usize,
}

impl Held {
    /// The node now holds fragments of the user in the bucket.
    pub fn insert(&mut self, pair: (u16, String)) {
        self.pairs.push(pair);
    }

    /// The pairs, in no particular order, possibly repeated (use [`Held::settle`]
    /// first for each once, ascending).
    pub fn iter(&self) -> std::slice::Iter<'_, (u16, String)> {
        self.pairs.iter()
    }

    /// Sort the pairs and drop repeats.
    pub fn settle(&mut self) {
        if self.settled < self.pairs.len() {
            self.pairs.sort_unstable();
            self.pairs.dedup();
            self.settled = self.pairs.len();
        }
    }
}

impl<'a> IntoIterator for &'a Held {
    type Item = &'a (u16, String);
    type IntoIter = std::slice::Iter<'a, (u16, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The seeded in-process cluster.
pub struct Sim {
    /// Boxed, so the index itself stays small enough for the cache at 10,000 nodes.
    nodes: Machines,
    /// What each node holds on "disk": (bucket, user) with live mail or tombstones.
    pub fragments: BTreeMap<NodeId, Held>,
    /// The view the live nodes installed last.
    pub view: Option<Arc<ViewInfo>>,
    /// Virtual time.
    pub now: Millis,
    /// Network faults.
    pub faults: Faults,
    config: SoftStateConfig,
    rng: Rng,
    queue: VecDeque<(NodeId, Transmit)>,
    /// Machines that took an input since they were last drained.
    dirty: BTreeSet<NodeId>,
    /// (deadline, node) of every armed machine.
    timers: BTreeSet<(Millis, NodeId)>,
    /// The deadline each node has in `timers`.
    armed: BTreeMap<NodeId, Millis>,
    /// Processes started and not stopped: only they act and take messages.
    running: BTreeSet<NodeId>,
    /// Running processes that are paused (SIGSTOP): they neither act nor answer.
    frozen: BTreeSet<NodeId>,
    /// One side of a network partition: messages between it and the rest are
    /// refused.
    pub cut: Option<BTreeSet<NodeId>>,
    /// Transitions already computed, shared by the machines that install them.
    transitions: Transitions,
}

/// Transitions by (previous epoch, new epoch), each with the two views it was
/// computed from: a machine whose views differ (which membership's checker would
/// flag) gets its own, so sharing never changes what a machine installs.
#[derive(Default)]
struct Transitions {
    known: BTreeMap<(Option<Epoch>, Epoch), Shared>,
}

struct Shared {
    prev: Option<Arc<ViewInfo>>,
    next: Arc<ViewInfo>,
    transition: Arc<Transition>,
}

/// Whether two views are the same: epoch, processes and member set of the map
/// (O(N), not a compare of the B-slot tables).
fn same_view(a: &ViewInfo, b: &ViewInfo) -> bool {
    a.epoch == b.epoch
        && a.members == b.members
        && (Arc::ptr_eq(&a.map, &b.map)
            || (a.map.buckets() == b.map.buckets() && a.map.members() == b.map.members()))
}

impl Transitions {
    const KEPT_MAX: usize = 1024;

    /// The transition from `prev` to `next`, computed once per pair.
    fn get(&mut self, prev: Option<&Arc<ViewInfo>>, next: &Arc<ViewInfo>) -> Arc<Transition> {
        let key = (prev.map(|p| p.epoch), next.epoch);
        if let Some(s) = self.known.get(&key) {
            let prev_same = match (&s.prev, prev) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || same_view(a, b),
                _ => false,
            };
            if prev_same && (Arc::ptr_eq(&s.next, next) || same_view(&s.next, next)) {
                return s.transition.clone();
            }
        }
        let transition = Arc::new(Transition::between(prev.map(|p| &**p), next));
        if self.known.len() >= Self::KEPT_MAX {
            // A bound on what a long run keeps; dropping only costs a recomputation.
            self.known.clear();
        }
        self.known.insert(
            key,
            Shared {
                prev: prev.cloned(),
                next: next.clone(),
                transition: transition.clone(),
            },
        );
        transition
    }
}

impl Sim {
    /// An empty cluster; `seed` drives faults and the machines' samplers.
    pub fn new(seed: u64, config: SoftStateConfig) -> Self {
        Sim {
            nodes: Machines::default(),
            fragments: BTreeMap::new(),
            view: None,
            now: Millis(0),
            faults: Faults::default(),
            config: SoftStateConfig { seed, ..config },
            rng: Rng::new(seed),
            queue: VecDeque::new(),
            dirty: BTreeSet::new(),
            timers: BTreeSet::new(),
            armed: BTreeMap::new(),
            running: BTreeSet::new(),
            frozen: BTreeSet::new(),
            cut: None,
            transitions: Transitions::default(),
        }
    }

    /// The machines by node id (running or not).
    pub fn nodes(&self) -> &Machines {
        &self.nodes
    }

    /// One machine, to give it an input directly (a placement, a store); it is
    /// drained at the next [`Sim::run`].
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut SoftState> {
        self.dirty.insert(id);
        self.nodes.get_mut(&id)
    }

    /// One machine, for an input that never gives output (`place`, `add`,
    /// `mail_map`, `open`, `close`, sessions): it is not queued for draining, which
    /// keeps such a call O(log N).
    pub fn node_mut_silent(&mut self, id: NodeId) -> Option<&mut SoftState> {
        self.nodes.get_mut(&id)
    }

    /// Stop process `id` for good (its machine and timers go; fragments stay).
    pub fn stop(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.disarm(id);
        self.dirty.remove(&id);
        self.running.remove(&id);
    }

    /// Start (or restart, with a new incarnation and empty soft state) process
    /// `id`; its fragments stay.
    pub fn start(&mut self, id: NodeId, incarnation: u64) {
        self.nodes.insert(
            id,
            Box::new(SoftState::new(id, incarnation, self.config.clone())),
        );
        self.fragments.entry(id).or_default();
        self.disarm(id);
        self.dirty.insert(id);
        self.running.insert(id);
    }

    /// Install `view` on the given members (default: all of them), sharing one
    /// transition among machines that come from the same view: transitions are kept
    /// by (previous epoch, new epoch) across calls, so a driver installing a view
    /// one node at a time (the cluster simulator) computes each pair once.
    pub fn install(&mut self, view: Arc<ViewInfo>, on: Option<&[NodeId]>) {
        let targets: Vec<NodeId> = match on {
            Some(ids) => ids.to_vec(),
            None => view.ids.clone(),
        };
        for id in targets {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let t = self.transitions.get(node.view(), &view);
            node.install_view_with(self.now, view.clone(), &t);
            self.dirty.insert(id);
        }
        self.view = Some(view);
    }

    fn disarm(&mut self, id: NodeId) {
        if let Some(at) = self.armed.remove(&id) {
            self.timers.remove(&(at, id));
        }
    }

    fn rearm(&mut self, id: NodeId) {
        self.disarm(id);
        if let Some(at) = self.nodes.get(&id).and_then(|n| n.poll_timeout()) {
            self.timers.insert((at, id));
            self.armed.insert(id, at);
        }
    }

    fn drain(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        while let Some(scan) = node.poll_scan() {
            let users = self.fragments.get_mut(&id).map_or_else(Vec::new, |f| {
                f.settle();
                f.iter().filter(|(b, _)| scan.wants(*b)).cloned().collect()
            });
            node.handle_scan(self.now, scan.id, users);
        }
        while let Some(t) = node.poll_transmit() {
            self.queue.push_back((id, t));
        }
        self.rearm(id);
    }

    /// Whether process `id` runs (started, not stopped).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.running.contains(&id)
    }

    /// Whether process `id` runs and is not paused.
    fn is_active(&self, id: NodeId) -> bool {
        self.running.contains(&id) && !self.frozen.contains(&id)
    }

    /// Pause process `id`: no timers, no input, messages to it refused.
    pub fn freeze(&mut self, id: NodeId) {
        self.frozen.insert(id);
    }

    /// Resume a paused process; overdue timers fire at once.
    pub fn thaw(&mut self, id: NodeId) {
        if self.frozen.remove(&id) {
            self.dirty.insert(id);
        }
    }

    fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        self.cut
            .as_ref()
            .is_none_or(|side| side.contains(&a) == side.contains(&b))
    }

    fn drain_dirty(&mut self) {
        let mut parked = Vec::new();
        while let Some(id) = self.dirty.pop_first() {
            if self.frozen.contains(&id) {
                parked.push(id);
            } else if self.is_running(id) {
                self.drain(id);
            }
        }
        // A paused machine keeps its input for when it resumes.
        self.dirty.extend(parked);
    }

    /// Run until nothing is in flight and no timer is due within `horizon_ms`; calls
    /// `observe` with every message sent. Returns the messages delivered.
    pub fn run(&mut self, horizon_ms: u64, mut observe: impl FnMut(&Transmit)) -> u64 {
        let end = self.now.plus_ms(horizon_ms);
        let mut delivered = 0;
        loop {
            self.drain_dirty();
            if self.queue.is_empty() {
                match self.timers.first().copied() {
                    Some((at, _)) if at <= end => {
                        self.now = self.now.max(at);
                        while let Some((at, id)) = self.timers.first().copied() {
                            if at > self.now {
                                break;
                            }
                            self.disarm(id);
                            if !self.is_running(id) {
                                continue;
                            }
                            if self.frozen.contains(&id) {
                                // Fires when it resumes (thaw marks it dirty).
                                continue;
                            }
                            if let Some(n) = self.nodes.get_mut(&id) {
                                n.handle_timeout(self.now);
                            }
                            self.dirty.insert(id);
                        }
                        continue;
                    }
                    _ => return delivered,
                }
            }
            while !self.queue.is_empty() {
                let pick = if self.faults.shuffle {
                    self.rng.below(self.queue.len())
                } else {
                    0
                };
                let Some((from, t)) = self.queue.remove(pick) else {
                    break;
                };
                observe(&t);
                delivered += 1;
                let refused = self.faults.refuse_per_mille > 0
                    && (self.rng.below(1000) as u32) < self.faults.refuse_per_mille;
                let live = self.is_active(t.to) && self.can_talk(from, t.to);
                let now = self.now;
                let taken = !refused
                    && live
                    && self
                        .nodes
                        .get_mut(&t.to)
                        .is_some_and(|n| match t.note.clone() {
                            Note::Report(r) => n.handle_report(r).is_ok(),
                            Note::Announce(a) => n.handle_announce(a).is_ok(),
                            Note::Ask(a) => n.handle_ask(a).is_ok(),
                            Note::Handoff(h) => n.handle_handoff(now, h).is_ok(),
                        });
                self.dirty.insert(t.to);
                if let Some(sender) = self.nodes.get_mut(&from) {
                    if taken {
                        sender.handle_delivered(t.token);
                    } else {
                        sender.handle_refused(self.now, t.token);
                    }
                    self.dirty.insert(from);
                }
                if self.faults.shuffle {
                    // Let other nodes act between deliveries.
                    break;
                }
            }
        }
    }

    /// Check every live manager's mail maps against the fragments of the live nodes:
    /// each user's map at its manager equals the set of live holders, and every
    /// manager is complete. Returns the first difference.
    pub fn check(&self) -> Result<(), String> {
        let view = self.view.as_ref().ok_or("no view")?;
        let mut truth: BTreeMap<&str, BTreeSet<NodeId>> = BTreeMap::new();
        for id in &view.ids {
            for (_, user) in self.fragments.get(id).into_iter().flatten() {
                truth.entry(user).or_default().insert(*id);
            }
        }
        for id in &view.ids {
            let node = self.nodes.get(id).ok_or(format!("node {id} missing"))?;
            if node.epoch() != Some(view.epoch) {
                return Err(format!("node {id} at {:?}", node.epoch()));
            }
            if !node.is_complete() {
                return Err(format!(
                    "node {id}: {} buckets rebuilding",
                    node.buckets_rebuilding()
                ));
            }
            for (user, map) in node.snapshot() {
                let want: Vec<NodeId> = truth
                    .get(user.as_str())
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                if map != want {
                    return Err(format!("node {id}, {user}: map {map:?}, holders {want:?}"));
                }
            }
        }
        for (user, holders) in &truth {
            let manager = view.map.manager(bucket_of(user, view.buckets()));
            let node = self.nodes.get(&manager).ok_or("manager missing")?;
            let map = node
                .mail_map(user)
                .map_err(|e| format!("{user} at {manager}: {e}"))?;
            if map != holders.iter().copied().collect::<Vec<_>>() {
                return Err(format!(
                    "{user} at {manager}: map {map:?}, holders {holders:?}"
                ));
            }
        }
        Ok(())
    }
}
