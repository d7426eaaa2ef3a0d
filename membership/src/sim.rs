//! A deterministic cluster simulator for the membership state machine:
//! virtual time, a seeded RNG for message delays and drops, kills, restarts,
//! isolation (network pause), freezing (SIGSTOP) and partitions, with the
//! safety invariants checked on every step.
//!
//! One `u64` seed fixes every random choice, so a failing run is replayed
//! exactly by running the same seed again. The cluster tests, the
//! `viewbench` example and the cluster simulator drive the same code.
//!
//! Cost per step is logarithmic in the number of nodes: deliveries and timer
//! deadlines sit in ordered queues (`BTreeMap` / `BTreeSet`), addresses are
//! looked up in an index, and nothing scans every node per step.
//!
//! Invariants (see [`Cluster::violations`]): no node installs an epoch at or
//! below its last one; one epoch is never committed with two member lists;
//! the last `ViewChanged` event equals `Membership::view`; no deadline is
//! still due right after `handle_timeout`; virtual time keeps advancing.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::machine::Membership;
use crate::{Dest, Epoch, Event, MembershipConfig, Message, Millis, NodeId, NodeInfo, View};

/// Watches every message the simulated network carries: sender, destination, message.
pub type Observer = Box<dyn FnMut(NodeId, &Dest, &Message)>;

/// Network behaviour of the simulated cluster.
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    /// Shortest one-way delay.
    pub delay_ms_min: u64,
    /// Longest one-way delay.
    pub delay_ms_max: u64,
    /// Messages lost silently, per thousand.
    pub drop_per_mille: u32,
    /// How long a sender waits before a send to a cut-off or frozen node is
    /// reported unreachable (an RPC timeout).
    pub rpc_timeout_ms: u64,
    /// How long before a send to a dead address is reported unreachable
    /// (connection refused).
    pub refused_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            delay_ms_min: 1,
            delay_ms_max: 20,
            drop_per_mille: 10,
            rpc_timeout_ms: 1_000,
            refused_ms: 2,
        }
    }
}

/// Something scheduled on the virtual clock.
#[derive(Clone, Debug)]
enum Pending {
    /// A message reaching whatever listens at `dest`'s address.
    Deliver {
        from: NodeId,
        from_incarnation: u64,
        dest: Dest,
        msg: Box<Message>,
    },
    /// The driver of `node` learns that a send to `dest` failed.
    Unreachable {
        node: NodeId,
        incarnation: u64,
        dest: Dest,
    },
}

/// One running process.
struct Instance {
    machine: Membership,
    /// Installed views in order, as reported by events.
    views: Vec<View>,
}

/// The simulated cluster.
pub struct Cluster {
    /// The seed every random choice derives from.
    pub seed: u64,
    rng: StdRng,
    now: Millis,
    config: MembershipConfig,
    net: NetConfig,
    nodes: BTreeMap<NodeId, Instance>,
    /// Running processes by RPC address.
    by_addr: BTreeMap<String, NodeId>,
    queue: BTreeMap<(Millis, u64), Pending>,
    /// Armed deadline of every running, unfrozen node, ordered by time.
    timers: BTreeSet<(Millis, NodeId)>,
    /// The deadline each node has in `timers`.
    armed: BTreeMap<NodeId, Millis>,
    next_seq: u64,
    /// Partition group per node (absent = group 0); groups cannot talk.
    groups: BTreeMap<NodeId, u32>,
    /// Nodes whose network is cut off (they keep running).
    isolated: BTreeSet<NodeId>,
    /// Nodes that are stopped (no timers, no deliveries).
    frozen: BTreeSet<NodeId>,
    next_incarnation: u64,
    /// Every view any node ever installed, by epoch: two different member
    /// lists under one epoch would be a protocol bug.
    /// (Compared by size and digest, a 64-bit hash of every identity, so
    /// the check costs O(1) per installed view, not O(N).)
    committed: BTreeMap<Epoch, View>,
    /// Safety violations seen so far.
    violations: Vec<String>,
    /// Number of messages sent, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Print protocol traffic to stderr (set `MEMBERSHIP_TRACE=1`).
    pub trace: bool,
    /// Also print pings (set `MEMBERSHIP_TRACE=pings`).
    pub trace_pings: bool,
    /// Print one node's whole state after each of its steps in a time
    /// window (set `MEMBERSHIP_DEBUG=<node>:<from_ms>:<to_ms>`).
    debug: Option<(NodeId, u64, u64)>,
    /// Sees every message handed to the network (before drops).
    observer: Option<Observer>,
    /// Views installed since the last [`Cluster::take_installs`], when recorded.
    installs: Option<Vec<(Millis, NodeId, View)>>,
}

/// The RPC address of a node id in the simulation.
/// (Plain labels: nothing here ever opens a socket.)
pub fn addr(id: NodeId) -> String {
    format!("sim-node-{id}:rpc")
}

/// Two views are the same: epoch, size and digest (a 64-bit hash of every
/// identity) agree. O(1), which lets the checkers run on every step at
/// 10,000 nodes.
pub fn same_view(a: &View, b: &View) -> bool {
    a.epoch == b.epoch
        && a.members.len() == b.members.len()
        && a.members.digest() == b.members.digest()
}

/// The identity of one life of a simulated node.
pub fn info(id: NodeId, incarnation: u64) -> NodeInfo {
    NodeInfo {
        id,
        incarnation,
        rpc: addr(id),
        smtp: format!("sim-node-{id}:smtp"),
        pop: format!("sim-node-{id}:pop"),
        admin: format!("sim-node-{id}:admin"),
    }
}

impl Cluster {
    /// An empty cluster at time 0.
    pub fn new(seed: u64, net: NetConfig, config: MembershipConfig) -> Self {
        Cluster {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: Millis(0),
            config,
            net,
            nodes: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            queue: BTreeMap::new(),
            timers: BTreeSet::new(),
            armed: BTreeMap::new(),
            next_seq: 0,
            groups: BTreeMap::new(),
            isolated: BTreeSet::new(),
            frozen: BTreeSet::new(),
            next_incarnation: 1_000,
            committed: BTreeMap::new(),
            violations: Vec::new(),
            sent: BTreeMap::new(),
            trace: std::env::var_os("MEMBERSHIP_TRACE").is_some(),
            trace_pings: std::env::var("MEMBERSHIP_TRACE").is_ok_and(|v| v == "pings"),
            debug: std::env::var("MEMBERSHIP_DEBUG").ok().and_then(|v| {
                let mut parts = v.split(':').map(|p| p.parse::<u64>().ok());
                Some((parts.next()??, parts.next()??, parts.next()??))
            }),
            observer: None,
            installs: None,
        }
    }

    /// Record every view install from now on (see [`Cluster::take_installs`]).
    pub fn record_installs(&mut self) {
        self.installs.get_or_insert_with(Vec::new);
    }

    /// The views installed (time, node, view) since the last call, oldest first;
    /// empty unless [`Cluster::record_installs`] was called.
    pub fn take_installs(&mut self) -> Vec<(Millis, NodeId, View)> {
        self.installs
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Calls `observer` for every message any node sends from now on.
    pub fn set_observer(&mut self, observer: impl FnMut(NodeId, &Dest, &Message) + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// Current virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// A random number in `0..bound` from the cluster's seeded RNG.
    pub fn random_below(&mut self, bound: u64) -> u64 {
        self.rng.random_range(0..bound)
    }

    /// Starts a process for `id` (a new incarnation if it ran before).
    pub fn start(&mut self, id: NodeId, seeds: Vec<String>) {
        self.next_incarnation += 1;
        self.start_as(id, self.next_incarnation, seeds);
    }

    /// Starts a process for `id` with a given incarnation (a driver that
    /// does not pass a start time would always use the same one).
    pub fn start_as(&mut self, id: NodeId, incarnation: u64, seeds: Vec<String>) {
        let machine = Membership::new(info(id, incarnation), seeds, self.config, self.now);
        self.launch(machine);
    }

    /// Starts one process per id, all already members of one agreed view
    /// (epoch `{2, lowest id}`), as if they had converged long ago: the
    /// way to set up a large cluster without thousands of joins.
    pub fn start_in_view(&mut self, ids: &BTreeSet<NodeId>, seeds: Vec<String>) {
        let Some(first) = ids.first().copied() else {
            return;
        };
        let members: Vec<NodeInfo> = ids
            .iter()
            .map(|id| {
                self.next_incarnation += 1;
                info(*id, self.next_incarnation)
            })
            .collect();
        let coordinator = members
            .iter()
            .find(|m| m.id == first)
            .cloned()
            .unwrap_or_else(|| info(first, 0));
        let view = View {
            epoch: Epoch::proposed_by(2, &coordinator),
            members: members.clone().into_iter().collect(),
        };
        for me in members {
            let machine =
                Membership::in_view(me, seeds.clone(), self.config, self.now, view.clone());
            self.launch(machine);
        }
    }

    fn launch(&mut self, machine: Membership) {
        let id = machine.me().id;
        self.by_addr.insert(machine.me().rpc.clone(), id);
        self.nodes.insert(
            id,
            Instance {
                machine,
                views: Vec::new(),
            },
        );
        self.frozen.remove(&id);
        self.drain(id);
    }

    /// Prints a scenario step when tracing.
    pub fn note(&self, what: &str) {
        if self.trace {
            eprintln!("t={} === {what}", self.now.0);
        }
    }

    /// Kills the process of `id` (its address refuses connections).
    pub fn kill(&mut self, id: NodeId) {
        if let Some(instance) = self.nodes.remove(&id) {
            self.by_addr.remove(&instance.machine.me().rpc);
        }
        self.frozen.remove(&id);
        self.disarm(id);
    }

    /// Cuts `id` off the network (messages to and from it are lost, and
    /// senders see RPC timeouts); it keeps running.
    pub fn isolate(&mut self, id: NodeId) {
        self.isolated.insert(id);
    }

    /// Reconnects an isolated node.
    pub fn reconnect(&mut self, id: NodeId) {
        self.isolated.remove(&id);
    }

    /// Stops `id` like SIGSTOP: no timers, deliveries to it time out.
    pub fn freeze(&mut self, id: NodeId) {
        self.frozen.insert(id);
        self.disarm(id);
    }

    /// Resumes a frozen node; its overdue timers fire at once.
    pub fn thaw(&mut self, id: NodeId) {
        self.frozen.remove(&id);
        self.rearm(id);
    }

    /// Splits the cluster: nodes in `side` can only talk among themselves.
    pub fn partition(&mut self, side: &BTreeSet<NodeId>) {
        self.groups = side.iter().map(|id| (*id, 1)).collect();
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.groups.clear();
    }

    /// Runs an operator `forget` on node `on`.
    pub fn forget(&mut self, on: NodeId, id: NodeId) {
        let now = self.now;
        if let Some(instance) = self.nodes.get_mut(&on) {
            instance.machine.forget(now, id);
        }
        self.drain(on);
    }

    /// The machine of a running node.
    pub fn machine(&self, id: NodeId) -> Option<&Membership> {
        self.nodes.get(&id).map(|i| &i.machine)
    }

    /// Ids of running processes (frozen ones included).
    pub fn running(&self) -> BTreeSet<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Views installed by node `id`'s current process, oldest first.
    pub fn views_of(&self, id: NodeId) -> Vec<View> {
        self.nodes
            .get(&id)
            .map(|i| i.views.clone())
            .unwrap_or_default()
    }

    /// Safety violations seen so far (must stay empty).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        !self.isolated.contains(&a)
            && !self.isolated.contains(&b)
            && self.groups.get(&a).copied().unwrap_or(0)
                == self.groups.get(&b).copied().unwrap_or(0)
    }

    /// Takes node `id`'s deadline out of the timer queue.
    fn disarm(&mut self, id: NodeId) {
        if let Some(at) = self.armed.remove(&id) {
            self.timers.remove(&(at, id));
        }
    }

    /// Puts node `id`'s current deadline into the timer queue (none while
    /// it is frozen or dead).
    fn rearm(&mut self, id: NodeId) {
        self.disarm(id);
        if self.frozen.contains(&id) {
            return;
        }
        if let Some(at) = self.nodes.get(&id).and_then(|i| i.machine.poll_timeout()) {
            self.armed.insert(id, at);
            self.timers.insert((at, id));
        }
    }

    fn schedule(&mut self, at: Millis, pending: Pending) {
        self.next_seq += 1;
        self.queue.insert((at, self.next_seq), pending);
    }

    /// Takes a node's output: messages onto the wire, events into its log.
    fn drain(&mut self, id: NodeId) {
        let now = self.now;
        let Some(instance) = self.nodes.get_mut(&id) else {
            return;
        };
        let incarnation = instance.machine.me().incarnation;
        if let Some((node, from_ms, to_ms)) = self.debug
            && node == id
            && (from_ms..=to_ms).contains(&now.0)
        {
            eprintln!("t={} state of {id}: {:?}", now.0, instance.machine);
        }
        let mut outgoing = Vec::new();
        while let Some(t) = instance.machine.poll_transmit() {
            outgoing.push(t);
        }
        let deadline = instance.machine.poll_timeout();
        while let Some(Event::ViewChanged(view)) = instance.machine.poll_event() {
            if let Some(previous) = instance.views.last()
                && view.epoch <= previous.epoch
            {
                self.violations.push(format!(
                    "t={} node {id} went from {:?} back to {:?}",
                    now.0, previous.epoch, view.epoch
                ));
            }
            match self.committed.get(&view.epoch) {
                Some(seen) if !same_view(seen, &view) => self.violations.push(format!(
                    "t={} epoch {:?} committed with two member lists: {:?} and {:?}",
                    now.0,
                    view.epoch,
                    seen.ids(),
                    view.ids()
                )),
                Some(_) => {}
                None => {
                    self.committed.insert(view.epoch, view.clone());
                }
            }
            if let Some(log) = self.installs.as_mut() {
                log.push((now, id, view.clone()));
            }
            instance.views.push(view);
        }
        if instance
            .views
            .last()
            .is_some_and(|v| !same_view(v, instance.machine.view()))
        {
            self.violations.push(format!(
                "t={} node {id}: last event differs from view()",
                now.0
            ));
        }
        if let Some(at) = self.armed.remove(&id) {
            self.timers.remove(&(at, id));
        }
        if let Some(at) = deadline
            && !self.frozen.contains(&id)
        {
            self.armed.insert(id, at);
            self.timers.insert((at, id));
        }
        for (dest, msg) in outgoing {
            *self.sent.entry(msg.kind()).or_default() += 1;
            if let Some(observer) = self.observer.as_mut() {
                observer(id, &dest, &msg);
            }
            if self.trace
                && (self.trace_pings
                    || !matches!(msg, Message::Ping { .. } | Message::PingAck { .. }))
            {
                let detail = match &msg {
                    Message::Propose { proposal, .. } | Message::Accept { proposal, .. } => {
                        format!("{}/{}", proposal.counter, proposal.coordinator)
                    }
                    Message::Reject {
                        proposal, promised, ..
                    } => format!(
                        "{}/{} promised {}/{}",
                        proposal.counter,
                        proposal.coordinator,
                        promised.counter,
                        promised.coordinator
                    ),
                    Message::Commit { delta, .. } => format!(
                        "{}/{} on {}/{} -{:?} +{:?}",
                        delta.epoch.counter,
                        delta.epoch.coordinator,
                        delta.base.counter,
                        delta.base.coordinator,
                        delta.removed,
                        delta.added.iter().map(|m| m.id).collect::<Vec<_>>()
                    ),
                    Message::CommitView { view, .. } => format!(
                        "{}/{} {:?}",
                        view.epoch.counter,
                        view.epoch.coordinator,
                        view.ids()
                    ),
                    Message::ViewRequest { epoch, .. } => {
                        format!("{}/{}", epoch.counter, epoch.coordinator)
                    }
                    _ => String::new(),
                };
                let h = msg.header();
                eprintln!(
                    "t={} {id}@{}/{} -> {} {} {detail}",
                    now.0,
                    h.epoch.counter,
                    h.epoch.coordinator,
                    dest.rpc_addr(),
                    msg.kind()
                );
            }
            if self.rng.random_range(0..1000) < self.net.drop_per_mille {
                continue;
            }
            let delay_ms = self
                .rng
                .random_range(self.net.delay_ms_min..=self.net.delay_ms_max);
            self.schedule(
                now.plus_ms(delay_ms),
                Pending::Deliver {
                    from: id,
                    from_incarnation: incarnation,
                    dest,
                    msg: Box::new(msg),
                },
            );
        }
    }

    fn deliver(&mut self, pending: Pending) {
        let now = self.now;
        match pending {
            Pending::Deliver {
                from,
                from_incarnation,
                dest,
                msg,
            } => {
                let target = self.by_addr.get(dest.rpc_addr()).copied();
                let notify_at = match target {
                    None => Some(now.plus_ms(self.net.refused_ms)),
                    Some(to) if !self.can_talk(from, to) || self.frozen.contains(&to) => {
                        Some(now.plus_ms(self.net.rpc_timeout_ms))
                    }
                    Some(to) => {
                        if let Some(instance) = self.nodes.get_mut(&to) {
                            instance.machine.handle_message(now, *msg);
                        }
                        self.drain(to);
                        None
                    }
                };
                if let Some(at) = notify_at {
                    self.schedule(
                        at,
                        Pending::Unreachable {
                            node: from,
                            incarnation: from_incarnation,
                            dest,
                        },
                    );
                }
            }
            Pending::Unreachable {
                node,
                incarnation,
                dest,
            } => {
                if self.frozen.contains(&node) {
                    return;
                }
                let Some(instance) = self.nodes.get_mut(&node) else {
                    return;
                };
                if instance.machine.me().incarnation != incarnation {
                    return;
                }
                instance.machine.handle_unreachable(now, &dest);
                self.drain(node);
            }
        }
    }

    /// Earliest thing that happens next, if any.
    fn next_at(&self) -> Option<Millis> {
        let queued = self.queue.keys().next().map(|(at, _)| *at);
        let timers = self.timers.first().map(|(at, _)| *at);
        match (queued, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Processes everything due at the current instant.
    fn step_now(&mut self) {
        let now = self.now;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let pending = entry.remove();
            self.deliver(pending);
        }
        // Due nodes run in id order, whatever their deadlines.
        let mut due = BTreeSet::new();
        while let Some((at, id)) = self.timers.first().copied() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.armed.remove(&id);
            due.insert(id);
        }
        for id in due {
            if let Some(instance) = self.nodes.get_mut(&id) {
                instance.machine.handle_timeout(now);
                if let Some(at) = instance.machine.poll_timeout()
                    && at <= now
                {
                    self.violations.push(format!(
                        "t={} node {id}: deadline {} still due after handle_timeout",
                        now.0, at.0
                    ));
                }
            }
            self.drain(id);
        }
    }

    /// Advances virtual time by `duration_ms`, processing everything on the way.
    pub fn run_for(&mut self, duration_ms: u64) {
        let end = self.now.plus_ms(duration_ms);
        self.run_until(end, |_| false);
    }

    /// Runs until `done` holds (checked after each instant) or `end` is
    /// reached; returns the time `done` first held.
    pub fn run_until(
        &mut self,
        end: Millis,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> Option<Millis> {
        if done(self) {
            return Some(self.now);
        }
        let mut steps_at_same_time = 0u32;
        while let Some(at) = self.next_at() {
            if at > end {
                break;
            }
            if at == self.now {
                steps_at_same_time += 1;
                if steps_at_same_time > 100_000 {
                    self.violations
                        .push(format!("t={}: time does not advance", at.0));
                    return None;
                }
            } else {
                steps_at_same_time = 0;
            }
            self.now = self.now.max(at);
            self.step_now();
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(end);
        None
    }

    /// Checks that every node in `expected` is running and has installed the
    /// same view, whose members are exactly `expected` (current incarnations).
    pub fn agreement(&self, expected: &BTreeSet<NodeId>) -> Result<(), String> {
        let mut reference: Option<(NodeId, &View)> = None;
        for id in expected {
            let Some(instance) = self.nodes.get(id) else {
                return Err(format!("node {id} is not running"));
            };
            let view = instance.machine.view();
            match reference {
                None => reference = Some((*id, view)),
                Some((ref_id, ref_view)) if !same_view(ref_view, view) => {
                    return Err(format!(
                        "node {id} has {:?} {:?}, node {ref_id} has {:?} {:?}",
                        view.epoch,
                        view.ids(),
                        ref_view.epoch,
                        ref_view.ids()
                    ));
                }
                Some(_) => {}
            }
        }
        let Some((_, view)) = reference else {
            return Ok(());
        };
        let ids: BTreeSet<NodeId> = view.ids().into_iter().collect();
        if ids != *expected {
            return Err(format!(
                "view {:?} has {:?}, want {:?}",
                view.epoch, ids, expected
            ));
        }
        for member in &view.members {
            let current = self
                .nodes
                .get(&member.id)
                .map(|i| i.machine.me().incarnation);
            if current != Some(member.incarnation) {
                return Err(format!(
                    "view lists node {} with a stale incarnation",
                    member.id
                ));
            }
        }
        Ok(())
    }

    /// A one-line summary of every node's view, for failure messages.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, i)| {
                let v = i.machine.view();
                format!(
                    "{id}:{}/{}{:?}",
                    v.epoch.counter,
                    v.epoch.coordinator,
                    v.ids()
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}
