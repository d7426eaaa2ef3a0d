//! The event loop: one ordered queue of client arrivals, fault times, lock releases
//! and samples in virtual time; the membership machines (when on) advanced in
//! lockstep; every node's `SoftState` in one `softstate::Sim`.
//!
//! A delivery is computed when it arrives: its path through the queues of the client
//! node, the manager and the targets gives its completion time (FIFO at every queue,
//! in arrival order). It fails (4xx) if any node on the path is dead or cut off, or
//! dies before the delivery completes (fault times are known in advance).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use membership::{Epoch, MembershipConfig, Millis, NodeId, UserMap, bucket_of};
use smallvec::SmallVec;
use softstate::place::Rng;
use softstate::sim::Sim as SoftSim;
use softstate::{SessionId, SoftStateConfig, ViewInfo};

use crate::SimError;
use crate::config::SimConfig;
use crate::fault::FaultKind;
use crate::queue::{CORES_MAX, Cpu, Disk};
use crate::report::{Latency, Report, Sample};
use crate::workload::{Zipf, exp_gap, size};

/// Buckets of the user map (the node's default).
const BUCKETS: u32 = membership::DEFAULT_BUCKETS;

/// SMTP clients drawn ahead of their arrival, so that what the next ones touch (the
/// user's mailbox, the nodes' records, the manager's machine) is on its way into
/// the cache while earlier ones are served: at 10,000 nodes and a million users a
/// delivery is mostly waiting for memory.
const AHEAD: usize = 8;

/// One SMTP client drawn ahead.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// The node round-robin DNS gives it first (another if that one is down).
    first_pick: NodeId,
    /// The recipient's rank.
    user: u64,
    /// The recipient's bucket.
    bucket: u16,
    /// The message's size.
    bytes: u64,
    /// The manager of its bucket in its first node's view when drawn (0: none), for
    /// the cache hints only: the delivery looks it up again.
    manager_hint: NodeId,
}

use softstate::hint::prefetch_record;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Smtp,
    Pop,
    Fault(usize),
    Close {
        manager: NodeId,
        user: u64,
        session: SessionId,
    },
    Sample,
    Repair,
}

struct Hw {
    /// Paused (SIGSTOP).
    frozen: bool,
    /// This node's cores (unused when the nodes share the machine's pool).
    cpu: Cpu,
    disk: Disk,
    cpu_factor: f64,
    disk_factor: f64,
    alive: bool,
    /// Will run again (not killed for good).
    returns: bool,
    /// Removed by the operator: its copies no longer count.
    removed: bool,
    copies: u64,
    copies_interval: u64,
}

/// Every node's hardware, and the machine's CPU pool when the nodes share one.
struct Machines {
    hw: Vec<Hw>,
    pool: Option<Cpu>,
    /// The machine's one disk when the nodes share it (`Model::machine_disk`).
    disk_pool: Option<Disk>,
}

impl Machines {
    fn cpu(&self, i: usize) -> &Cpu {
        match &self.pool {
            Some(p) => p,
            None => &self.hw[i].cpu,
        }
    }

    fn cpu_mut(&mut self, i: usize) -> &mut Cpu {
        match &mut self.pool {
            Some(p) => p,
            None => &mut self.hw[i].cpu,
        }
    }

    /// CPU work of `service_us` (before slowness) at node index `i` for a request
    /// that reaches it at `arrive_us`, queued now (`now_us`: queues only ever take
    /// work in time order, so a request is never queued behind one that has not
    /// arrived yet): done at the later of its turn in the queue and its arrival plus
    /// its service.
    fn work(&mut self, i: usize, now_us: f64, arrive_us: f64, service_us: f64) -> f64 {
        let s = service_us * self.hw[i].cpu_factor;
        self.cpu_mut(i).serve(now_us, s).max(arrive_us + s)
    }

    /// The load figure placement compares (`u32::MAX` for an unknown node): queued
    /// CPU work in stored copies' worth, plus writes waiting for the disk.
    fn load(&self, model: &crate::Model, id: NodeId, now_us: f64) -> u32 {
        let Some(h) = self.hw.get(idx(id)) else {
            return u32::MAX;
        };
        let cpu = self.cpu(idx(id)).backlog_us(now_us) / model.store_cpu_us.max(1.0);
        let disk = self.disk_pool.as_ref().unwrap_or(&h.disk);
        (cpu as u32).saturating_add(disk.pending_at(now_us))
    }

    /// A disk write of `bytes` at node index `i` reaching the disk at `arrive_us`,
    /// queued now; when it is durable.
    fn write(
        &mut self,
        i: usize,
        now_us: f64,
        arrive_us: f64,
        bytes: u64,
        m: &crate::Model,
    ) -> f64 {
        let factor = self.hw[i].disk_factor;
        let bw = m.disk_bytes_per_us / factor;
        let fsync = m.fsync_us * factor;
        let work = bytes as f64 / bw.max(1e-9) + m.write_us * factor;
        let disk = match &mut self.disk_pool {
            Some(d) => d,
            None => &mut self.hw[i].disk,
        };
        let queued = disk.write_with(now_us, work, fsync);
        queued.max(arrive_us + work + fsync)
    }
}

/// Most copies of a message the simulator tracks: a holder set is one `u128`.
pub const REPLICAS_MAX: usize = 4;

/// The nodes that hold copies of some messages: up to [`REPLICAS_MAX`] node ids of
/// 32 bits, ascending, packed (0 = no node), so a mailbox keeps its sets inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holders(u128);

impl Holders {
    /// The set of `nodes` (distinct ids below 2^32, at most [`REPLICAS_MAX`]).
    fn of(nodes: &[NodeId]) -> Holders {
        let mut ids = [0u32; REPLICAS_MAX];
        for (slot, n) in ids.iter_mut().zip(nodes) {
            *slot = *n as u32;
        }
        ids[..nodes.len().min(REPLICAS_MAX)].sort_unstable();
        Holders(
            ids.iter()
                .enumerate()
                .fold(0u128, |acc, (i, n)| acc | (u128::from(*n) << (32 * i))),
        )
    }

    /// The holders, ascending.
    fn iter(self) -> impl Iterator<Item = NodeId> {
        (0..REPLICAS_MAX)
            .map(move |i| ((self.0 >> (32 * i)) as u32) as NodeId)
            .filter(|n| *n != 0)
    }
}

/// Messages of one mailbox that share their holders.
#[derive(Debug, Clone, Copy)]
struct Group {
    holders: Holders,
    messages: u32,
    /// When the newest of them was acknowledged, virtual ms.
    newest_ms: u32,
}

/// Holder sets of one mailbox, inline for the usual few (spread 4, R = 2: at most
/// six pairs), so a delivery's accounting is one mailbox's cache lines.
type Groups = SmallVec<[Group; 4]>;

/// One user's mail as the simulator counts it, kept inline: a delivery touches one
/// record, not three allocations.
#[derive(Default)]
struct Mailbox {
    /// Nodes that hold fragments of this user (live mail or tombstones).
    fragments_on: SmallVec<[NodeId; 4]>,
    bytes: u64,
    sets: Groups,
}

struct World<'a> {
    cfg: &'a SimConfig,
    rng: Rng,
    /// The SMTP clients' own stream (arrival gaps, nodes, users, sizes), drawn
    /// [`AHEAD`] clients early.
    workload_rng: Rng,
    ahead: VecDeque<Arrival>,
    m: Machines,
    soft: SoftSim,
    members: Option<membership::sim::Cluster>,
    maps: BTreeMap<Vec<NodeId>, Arc<UserMap>>,
    /// Kill times per node (µs), ascending.
    kills: Vec<Vec<f64>>,
    partition: Option<(u64, u64)>,
    mailboxes: Vec<Mailbox>,
    zipf: Zipf,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    smtp_lat: Histogram<u64>,
    pop_lat: Histogram<u64>,
    report: Report,
    /// Acknowledgements by the sample interval their answer falls in.
    acked_by_interval: Vec<u64>,
    interval_temp: u64,
    /// Exact (fractional µs) arrival times of the next SMTP and POP3 clients.
    smtp_at_us: f64,
    pop_at_us: f64,
    /// When the last acknowledged delivery was answered (a closed-loop session sends
    /// its next message then).
    last_done_us: f64,
    /// The end of the run, virtual µs.
    end_us: f64,
    /// Open POP3 sessions' locks by user (for the one-holder invariant).
    open_locks: BTreeMap<u64, SessionId>,
    /// The view each node's soft state has installed (by node index), kept beside
    /// the machines so a delivery needs no lookup of them.
    views: Vec<Option<Arc<ViewInfo>>>,
    /// Membership violations already copied into the report.
    membership_violations_seen: usize,
    /// Messages short of copies at the last repair pass.
    under_replicated: u64,
    /// Copies repair made since the last sample.
    repair_copies_interval: u64,
}

fn idx(id: NodeId) -> usize {
    (id - 1) as usize
}

/// A user's name (`u{k}`) formatted on the stack: no allocation per message.
#[derive(Default)]
struct NameBuf([u8; 24]);

impl NameBuf {
    fn name(&mut self, mut k: u64) -> &str {
        let mut at = self.0.len();
        loop {
            at -= 1;
            self.0[at] = b'0' + (k % 10) as u8;
            k /= 10;
            if k == 0 {
                break;
            }
        }
        at -= 1;
        self.0[at] = b'u';
        std::str::from_utf8(&self.0[at..]).unwrap_or("u?")
    }
}

/// Run one experiment; `progress` gets the simulated fraction done now and then.
pub fn run(cfg: &SimConfig, progress: &mut dyn FnMut(f64)) -> Result<Report, SimError> {
    if cfg.nodes == 0 || cfg.users == 0 || cfg.replicas == 0 {
        return Err(SimError::Config(
            "nodes, users and replicas must be at least 1".into(),
        ));
    }
    if cfg.replicas > REPLICAS_MAX || cfg.nodes > u64::from(u32::MAX) {
        return Err(SimError::Config(format!(
            "the simulator tracks at most {REPLICAS_MAX} replicas and {} nodes",
            u32::MAX
        )));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(cfg.rate_msgs_per_s) || !positive(cfg.duration_s) {
        return Err(SimError::Config(
            "rate and duration must be positive".into(),
        ));
    }
    let age_ok = cfg.repair_copy_min_age_s.is_finite() && cfg.repair_copy_min_age_s >= 0.0;
    if !positive(cfg.repair_interval_s) || !age_ok {
        return Err(SimError::Config(
            "the repair interval must be positive and the copy minimum age not negative".into(),
        ));
    }
    for f in &cfg.faults {
        let id = match f.kind {
            FaultKind::Kill(n)
            | FaultKind::Restart(n)
            | FaultKind::Remove(n)
            | FaultKind::Unslow(n)
            | FaultKind::Pause(n)
            | FaultKind::Resume(n) => n,
            FaultKind::Slow { node, .. } => node,
            FaultKind::Partition(_, b) => b,
            FaultKind::Heal => 1,
        };
        if id == 0 || id > cfg.nodes {
            return Err(SimError::Config(format!(
                "fault names node {id}; nodes are 1..={}",
                cfg.nodes
            )));
        }
    }
    if cfg.model.cores > CORES_MAX || cfg.model.machine_cores > CORES_MAX {
        return Err(SimError::Config(format!(
            "cores and machine_cores are at most {CORES_MAX}"
        )));
    }
    let started = Instant::now();
    let mut w = World::new(cfg);
    let end_us = (cfg.duration_s * 1e6) as u64;
    let mut next_progress = 0.0;
    while let Some(Reverse((t, _, ev))) = w.queue.pop() {
        if t > end_us {
            break;
        }
        w.report.events += 1;
        w.advance(t);
        w.handle(t, ev);
        let done = t as f64 / end_us as f64;
        if done >= next_progress {
            progress(done);
            next_progress = done + 0.01;
        }
    }
    w.advance(end_us);
    Ok(w.finish(started.elapsed().as_secs_f64()))
}

impl<'a> World<'a> {
    fn new(cfg: &'a SimConfig) -> Self {
        let n = cfg.nodes;
        let ids: Vec<NodeId> = (1..=n).collect();
        let soft_config = SoftStateConfig {
            seed: cfg.seed,
            balance: cfg.policy,
            ..SoftStateConfig::default()
        };
        let mut soft = SoftSim::new(cfg.seed, soft_config);
        soft.faults = softstate::sim::Faults {
            refuse_per_mille: cfg.soft_refuse_per_mille,
            shuffle: cfg.soft_shuffle,
        };
        // Slowness needs no failure detector; deaths, pauses and partitions do.
        let membership_on = cfg.membership
            || cfg
                .faults
                .iter()
                .any(|f| !matches!(f.kind, FaultKind::Slow { .. } | FaultKind::Unslow(_)));
        let (members, view) = if membership_on {
            let net = membership::sim::NetConfig {
                drop_per_mille: cfg.net_drop_per_mille,
                delay_ms_max: cfg.net_delay_ms_max.max(1),
                ..membership::sim::NetConfig::default()
            };
            let mut c = membership::sim::Cluster::new(cfg.seed, net, MembershipConfig::default());
            let set: BTreeSet<NodeId> = ids.iter().copied().collect();
            let seeds = vec![membership::sim::addr(1)];
            c.start_in_view(&set, seeds);
            c.record_installs();
            let v = c
                .machine(1)
                .map(|m| m.view().clone())
                .expect("node 1 was just started");
            let map = Arc::new(UserMap::new(&ids, BUCKETS));
            (Some(c), Arc::new(ViewInfo::from_view(&v, map)))
        } else {
            let map = Arc::new(UserMap::new(&ids, BUCKETS));
            let epoch = Epoch {
                counter: 2,
                coordinator: 1,
                incarnation: 1,
            };
            (
                None,
                Arc::new(ViewInfo::new(epoch, ids.iter().map(|i| (*i, 1)), map)),
            )
        };
        for &id in &ids {
            let inc = view.members.get(&id).copied().unwrap_or(1);
            soft.start(id, inc);
            if let Some(node) = soft.node_mut(id) {
                node.install_settled(view.clone(), []);
            }
        }
        soft.view = Some(view.clone());
        let mut maps = BTreeMap::new();
        maps.insert(ids.clone(), view.map.clone());
        let pool = (cfg.model.machine_cores > 0).then(|| Cpu::new(cfg.model.machine_cores));
        let hw = ids
            .iter()
            .map(|_| Hw {
                frozen: false,
                cpu: Cpu::new(cfg.model.cores),
                disk: Disk::default(),
                cpu_factor: 1.0,
                disk_factor: 1.0,
                alive: true,
                returns: true,
                removed: false,
                copies: 0,
                copies_interval: 0,
            })
            .collect();
        let mut kills = vec![Vec::new(); n as usize];
        for f in &cfg.faults {
            if let FaultKind::Kill(id) | FaultKind::Remove(id) = f.kind {
                kills[idx(id)].push(f.at_ms as f64 * 1e3);
            }
        }
        for k in &mut kills {
            k.sort_by(f64::total_cmp);
        }
        let hist = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        let mut w = World {
            cfg,
            rng: Rng::new(cfg.seed ^ 0x5eed),
            workload_rng: Rng::new(cfg.seed ^ 0x00c1_1e47),
            ahead: VecDeque::with_capacity(AHEAD + 1),
            m: Machines {
                hw,
                pool,
                disk_pool: cfg.model.machine_disk.then(Disk::default),
            },
            soft,
            members,
            maps,
            kills,
            partition: None,
            mailboxes: (0..cfg.users).map(|_| Mailbox::default()).collect(),
            zipf: Zipf::new(cfg.users, cfg.zipf),
            queue: BinaryHeap::new(),
            seq: 0,
            smtp_lat: hist(),
            pop_lat: hist(),
            report: Report {
                nodes: n,
                users: cfg.users,
                seed: cfg.seed,
                policy: format!("{:?}", cfg.policy).to_lowercase(),
                ..Report::default()
            },
            acked_by_interval: Vec::new(),
            interval_temp: 0,
            smtp_at_us: 0.0,
            last_done_us: 0.0,
            pop_at_us: 0.0,
            end_us: cfg.duration_s * 1e6,
            open_locks: BTreeMap::new(),
            views: vec![Some(view.clone()); n as usize],
            membership_violations_seen: 0,
            under_replicated: 0,
            repair_copies_interval: 0,
        };
        // Open loop: one arrival process; closed loop: one event per session.
        for _ in 0..cfg.sessions.max(1) {
            w.push(0, Ev::Smtp);
        }
        if cfg.pop_per_msg > 0.0 {
            w.push(0, Ev::Pop);
        }
        for (i, f) in cfg.faults.iter().enumerate() {
            w.push(f.at_ms * 1000, Ev::Fault(i));
        }
        w.push(cfg.sample_ms.max(1) * 1000, Ev::Sample);
        if w.members.is_some() {
            w.push((cfg.repair_interval_s * 1e6) as u64, Ev::Repair);
        }
        w
    }

    fn push(&mut self, t_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t_us, self.seq, ev)));
    }

    /// Bring membership and the soft state up to `t_us`.
    fn advance(&mut self, t_us: u64) {
        let ms = t_us / 1000;
        if let Some(c) = self.members.as_mut() {
            if ms > c.now().0 {
                c.run_for(ms - c.now().0);
            }
            for (at, id, view) in c.take_installs() {
                self.report.view_installs += 1;
                let ids = view.ids();
                let map = self
                    .maps
                    .entry(ids.clone())
                    .or_insert_with(|| Arc::new(UserMap::new(&ids, BUCKETS)))
                    .clone();
                let info = Arc::new(ViewInfo::from_view(&view, map));
                if at > self.soft.now {
                    let gap = at.0 - self.soft.now.0;
                    self.soft.run(gap, |_| {});
                    self.soft.now = self.soft.now.max(at);
                }
                if self.soft.is_running(id) {
                    self.views[idx(id)] = Some(info.clone());
                    self.soft.install(info, Some(&[id]));
                }
            }
        }
        let target = Millis(ms);
        if target > self.soft.now {
            self.soft.run(target.0 - self.soft.now.0, |_| {});
            self.soft.now = self.soft.now.max(target);
        }
    }

    fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        match self.partition {
            Some((lo, hi)) => (lo..=hi).contains(&a) == (lo..=hi).contains(&b),
            None => true,
        }
    }

    /// Whether `id` runs at `from_us` and is not killed before `to_us`.
    fn up_through(&self, id: NodeId, from_us: f64, to_us: f64) -> bool {
        let Some(hw) = self.m.hw.get(idx(id)) else {
            return false;
        };
        hw.alive
            && !hw.frozen
            && !self.kills[idx(id)]
                .iter()
                .any(|k| *k > from_us && *k <= to_us)
    }

    /// The next SMTP client; the one [`AHEAD`] behind it is drawn now. What the
    /// clients in between will read is prefetched in stages, each loading what the
    /// previous one brought in points to.
    fn next_arrival(&mut self) -> Arrival {
        while self.ahead.len() <= AHEAD {
            let first_pick = self.workload_rng.below(self.cfg.nodes as usize) as NodeId + 1;
            let user = self.zipf.draw(&mut self.workload_rng);
            let bytes = size(&self.cfg.size, &mut self.workload_rng);
            let bucket = bucket_of(NameBuf::default().name(user), BUCKETS);
            let manager_hint = self.views[idx(first_pick)]
                .as_ref()
                .map_or(0, |v| v.map.manager(bucket));
            let a = Arrival {
                first_pick,
                user,
                bucket,
                bytes,
                manager_hint,
            };
            self.prefetch_drawn(&a);
            self.ahead.push_back(a);
            if let Some(mid) = self.ahead.get(AHEAD / 2) {
                self.prefetch_midway(mid);
            }
            if let Some(near) = self.ahead.get(2) {
                self.prefetch_near(near);
            }
        }
        match self.ahead.pop_front() {
            Some(a) => a,
            None => unreachable!("the ring was just filled"),
        }
    }

    /// Node `id`'s record, if there is such a node (hints may name none: 0).
    fn hw_of(&self, id: NodeId) -> Option<&Hw> {
        self.m.hw.get(usize::try_from(id.checked_sub(1)?).ok()?)
    }

    /// Just drawn: its mailbox, its node's and its manager's records, the manager's
    /// soft state.
    fn prefetch_drawn(&self, a: &Arrival) {
        prefetch_record(&self.mailboxes[a.user as usize]);
        prefetch_record(&self.m.hw[idx(a.first_pick)]);
        if let Some(h) = self.hw_of(a.manager_hint) {
            prefetch_record(h);
        }
        if let Some(s) = self.soft.nodes().get(&a.manager_hint) {
            s.prefetch_place();
        }
    }

    /// Halfway: the records of the nodes already holding its mail (the candidates
    /// whose loads placement reads), and the manager's record of its bucket.
    fn prefetch_midway(&self, a: &Arrival) {
        for n in &self.mailboxes[a.user as usize].fragments_on {
            if let Some(h) = self.hw_of(*n) {
                prefetch_record(h);
            }
        }
        if let Some(s) = self.soft.nodes().get(&a.manager_hint) {
            s.prefetch_bucket(a.bucket);
        }
    }

    /// Nearly due: the user's mail map at the manager.
    fn prefetch_near(&self, a: &Arrival) {
        if let Some(s) = self.soft.nodes().get(&a.manager_hint) {
            s.prefetch_mail_map(a.bucket, NameBuf::default().name(a.user));
        }
    }

    /// A running node a client reaches (round-robin DNS: a dead one refuses and the
    /// client tries another), trying `first` first.
    fn client_node_from(&mut self, first: NodeId) -> Option<NodeId> {
        if self.m.hw[idx(first)].alive && !self.m.hw[idx(first)].frozen {
            return Some(first);
        }
        self.client_node()
    }

    /// A running node a client reaches (round-robin DNS: a dead one refuses and the
    /// client tries another).
    fn client_node(&mut self) -> Option<NodeId> {
        let n = self.cfg.nodes as usize;
        for _ in 0..8 {
            let id = self.rng.below(n) as NodeId + 1;
            if self.m.hw[idx(id)].alive && !self.m.hw[idx(id)].frozen {
                return Some(id);
            }
        }
        None
    }

    fn handle(&mut self, t: u64, ev: Ev) {
        match ev {
            Ev::Smtp if self.cfg.sessions > 0 => {
                // Closed loop: this session's next message goes when this one is
                // answered (a refusal is answered at once).
                let at = t as f64;
                self.report.messages_offered += 1;
                let arrival = self.next_arrival();
                let next = if self.deliver(at, arrival) {
                    self.last_done_us
                } else {
                    self.report.messages_4xx += 1;
                    self.interval_temp += 1;
                    at + self.cfg.model.smtp_cpu_us.max(1.0)
                };
                self.push(next.ceil().max(at + 1.0) as u64, Ev::Smtp);
            }
            Ev::Smtp => {
                let at = self.smtp_at_us;
                self.smtp_at_us += exp_gap(&mut self.workload_rng, 1e6 / self.cfg.rate_msgs_per_s);
                self.push(self.smtp_at_us.ceil() as u64, Ev::Smtp);
                self.report.messages_offered += 1;
                let arrival = self.next_arrival();
                if !self.deliver(at, arrival) {
                    self.report.messages_4xx += 1;
                    self.interval_temp += 1;
                }
            }
            Ev::Pop => {
                let rate = self.cfg.rate_msgs_per_s * self.cfg.pop_per_msg;
                let at = self.pop_at_us;
                self.pop_at_us += exp_gap(&mut self.rng, 1e6 / rate);
                self.push(self.pop_at_us.ceil() as u64, Ev::Pop);
                self.pop(at);
            }
            Ev::Fault(i) => self.fault(i),
            Ev::Close {
                manager,
                user,
                session,
            } => {
                let mut buf = NameBuf::default();
                let name = buf.name(user);
                // Lock calls give the machines no output: no draining needed.
                if let Some(m) = self.soft.node_mut_silent(manager) {
                    m.close(name, session);
                }
                if let Some(a) = self.soft.node_mut_silent(session.node) {
                    a.end_session(session);
                }
                if self.open_locks.get(&user) == Some(&session) {
                    self.open_locks.remove(&user);
                }
            }
            Ev::Sample => {
                self.sample(t);
                self.push(t + self.cfg.sample_ms.max(1) * 1000, Ev::Sample);
            }
            Ev::Repair => {
                self.repair(t as f64);
                self.push(t + (self.cfg.repair_interval_s * 1e6) as u64, Ev::Repair);
            }
        }
    }

    /// One SMTP delivery arriving at `t`; whether it was acknowledged.
    fn deliver(&mut self, t: f64, arrival: Arrival) -> bool {
        let m = &self.cfg.model;
        let Some(a) = self.client_node_from(arrival.first_pick) else {
            return false;
        };
        let k = arrival.user;
        let mut buf = NameBuf::default();
        let name = buf.name(k);
        let bucket = arrival.bucket;
        let bytes = arrival.bytes;
        if self.m.cpu(idx(a)).backlog_us(t) > f64::from(self.cfg.smtp_backlog_max) * m.smtp_cpu_us {
            return false; // 421: too busy
        }
        let factor = self.m.hw[idx(a)].cpu_factor;
        let t1 = self.m.cpu_mut(idx(a)).serve(t, m.smtp_cpu_us * factor);
        let Some(view) = self.views[idx(a)].clone() else {
            return false;
        };
        let manager = view.map.manager(bucket);
        if !self.can_talk(a, manager) || !self.up_through(manager, t, t1) {
            return false;
        }
        let t2 = t1 + m.net_latency_us;
        // A call to another node costs RPC work at both ends (the caller's is queued
        // with the callee's, in call order).
        let rpc = |to: NodeId| if to == a { 0.0 } else { m.rpc_cpu_us };
        let t3 = self
            .m
            .work(idx(manager), t, t2, m.place_cpu_us + rpc(manager));
        if manager != a && m.rpc_cpu_us > 0.0 {
            self.m.work(idx(a), t, t1, m.rpc_cpu_us);
        }
        let targets = match self.place(manager, name, &view, t3) {
            Some(p) => p,
            None => return false,
        };
        let epoch = view.epoch;
        let t4 = t3 + m.net_latency_us;
        let mut done = t4;
        for &target in &targets.0 {
            let arrive = t4 + m.net_latency_us + bytes as f64 / m.net_bytes_per_us;
            if !self.can_talk(a, target) || !self.up_through(target, t, arrive) {
                return false;
            }
            let c = self
                .m
                .work(idx(target), t, arrive, m.store_cpu_us + rpc(target));
            if target != a && m.rpc_cpu_us > 0.0 {
                self.m.work(idx(a), t, t4, m.rpc_cpu_us);
            }
            let d = self.m.write(idx(target), t, c, bytes, m);
            done = done.max(d + m.net_latency_us);
        }
        // The deliverer gives up (451) on a delivery that takes too long.
        if done - t > m.deliver_timeout_us {
            return false;
        }
        // Everyone on the path must live until the answer.
        if !self.up_through(a, t, done) || !self.up_through(manager, t, t3) {
            return false;
        }
        for &target in &targets.0 {
            if !self.up_through(target, t, done) {
                return false;
            }
        }
        // Acknowledged: the copies exist.
        let now = self.soft.now;
        let placed_epoch = targets.1.unwrap_or(epoch);
        for &target in &targets.0 {
            let h = &mut self.m.hw[idx(target)];
            h.copies += 1;
            h.copies_interval += 1;
            self.record_fragment(k as usize, target, bucket, name);
            let behind = self.views[idx(target)]
                .as_ref()
                .is_some_and(|v| v.epoch != placed_epoch);
            if behind && let Some(s) = self.soft.node_mut(target) {
                s.stored(now, placed_epoch, [(bucket, name.to_string())]);
            }
        }
        let set = Holders::of(&targets.0);
        // Affinity: the user's mail mostly goes to holder sets it already has.
        let mb = &mut self.mailboxes[k as usize];
        let newest_ms = (done / 1e3) as u32;
        match mb.sets.iter_mut().find(|g| g.holders == set) {
            Some(g) => {
                g.messages += 1;
                g.newest_ms = g.newest_ms.max(newest_ms);
            }
            None => mb.sets.push(Group {
                holders: set,
                messages: 1,
                newest_ms,
            }),
        }
        mb.bytes += bytes;
        if done > self.end_us {
            // Stored, answered after the end of the run.
            self.report.messages_in_flight_at_end += 1;
        } else {
            self.report.messages_acknowledged += 1;
        }
        self.report.copies_stored += targets.0.len() as u64;
        let slot = (done / (self.cfg.sample_ms.max(1) as f64 * 1e3)) as usize;
        if self.acked_by_interval.len() <= slot {
            self.acked_by_interval.resize(slot + 1, 0);
        }
        self.acked_by_interval[slot] += 1;
        let _ = self.smtp_lat.record(((done - t) as u64).max(1));
        self.last_done_us = done;
        true
    }

    /// `target` now holds fragments of user `k` (`name`, in `bucket`): in the user's
    /// mailbox and on the node's modelled disk, which reconstruction scans.
    fn record_fragment(&mut self, k: usize, target: NodeId, bucket: u16, name: &str) {
        let mb = &mut self.mailboxes[k];
        if !mb.fragments_on.contains(&target) {
            mb.fragments_on.push(target);
            self.soft
                .fragments
                .entry(target)
                .or_default()
                .insert((bucket, name.to_string()));
        }
    }

    /// The targets of a new message of `name` as `manager` chooses them, with the
    /// manager's epoch when the soft state placed it.
    fn place(
        &mut self,
        manager: NodeId,
        name: &str,
        view: &ViewInfo,
        at_us: f64,
    ) -> Option<(Vec<NodeId>, Option<Epoch>)> {
        let cfg = self.cfg;
        let replicas = cfg.replicas.min(view.ids.len());
        // Every policy is the soft state's own (`SoftStateConfig::balance`).
        self.report.placement_calls += 1;
        let machines = &self.m;
        let model = &cfg.model;
        let load = |id: NodeId| machines.load(model, id, at_us);
        let node = self.soft.node_mut_silent(manager)?;
        let p = node.place(name, replicas, cfg.spread, &load).ok()?;
        Some((p.targets, Some(p.epoch)))
    }

    /// One POP3 session draining one user's mailbox.
    fn pop(&mut self, t: f64) {
        let m = &self.cfg.model;
        self.report.pop_sessions += 1;
        let Some(a) = self.client_node() else {
            self.report.pop_4xx += 1;
            return;
        };
        let k = self.zipf.draw(&mut self.rng);
        let mut buf = NameBuf::default();
        let name = buf.name(k);
        let bucket = bucket_of(name, BUCKETS);
        let factor = self.m.hw[idx(a)].cpu_factor;
        let t1 = self.m.cpu_mut(idx(a)).serve(t, m.pop_cpu_us * factor);
        let Some(view) = self.views[idx(a)].clone() else {
            self.report.pop_4xx += 1;
            return;
        };
        let manager = view.map.manager(bucket);
        if !self.can_talk(a, manager) || !self.up_through(manager, t, t1) {
            self.report.pop_4xx += 1;
            return;
        }
        let now = Millis((t / 1000.0) as u64);
        // The front end's own grace: a manager it left behind may still grant this
        // bucket to its view-mates.
        let session = self.soft.node_mut_silent(a).and_then(|s| {
            s.may_lock_here(now, bucket).ok()?;
            Some(s.begin_session(name))
        });
        let Some(session) = session else {
            self.report.pop_4xx += 1;
            return;
        };
        // The manager's membership lease on its view (no membership: views never
        // go stale, no lease).
        let lease = self
            .members
            .as_ref()
            .and_then(|c| c.machine(manager))
            .and_then(|m| m.view_lease_until());
        let opened = self
            .soft
            .node_mut_silent(manager)
            .map(|s| s.open(now, lease, name, session));
        let map = match opened {
            Some(Ok(map)) => {
                if self.cfg.check_invariants {
                    self.check_one_lock_holder(k, manager, session, t);
                }
                map
            }
            Some(Err(softstate::Refused::InUse)) => {
                self.report.pop_in_use += 1;
                self.end_session(a, session);
                return;
            }
            _ => {
                self.report.pop_4xx += 1;
                self.end_session(a, session);
                return;
            }
        };
        let close = |w: &mut World, at: f64| {
            w.push(
                at as u64,
                Ev::Close {
                    manager,
                    user: k,
                    session,
                },
            );
        };
        // List every fragment: all holders must answer.
        let t2 = t1 + m.net_latency_us;
        let mut listed = t2;
        for &h in &map {
            if !self.can_talk(a, h) || !self.up_through(h, t, t2) {
                self.report.pop_4xx += 1;
                close(self, t2 + m.dead_call_us);
                return;
            }
            listed = listed.max(self.m.work(idx(h), t, t2, m.list_cpu_us) + m.net_latency_us);
        }
        // Retrieve every message from a live holder, then delete it everywhere.
        let mb = std::mem::take(&mut self.mailboxes[k as usize].sets);
        let bytes = std::mem::take(&mut self.mailboxes[k as usize].bytes);
        let count: u64 = mb.iter().map(|g| u64::from(g.messages)).sum();
        let mean_bytes = bytes.checked_div(count).unwrap_or(0);
        let mut end = listed;
        let mut kept = Groups::new();
        for g in mb {
            let n = g.messages;
            let Some(h) = g
                .holders
                .iter()
                .find(|h| self.can_talk(a, *h) && self.up_through(*h, t, listed))
            else {
                kept.push(g);
                continue;
            };
            let read = self.m.work(idx(h), t, listed, m.read_cpu_us * f64::from(n))
                + m.net_latency_us
                + (mean_bytes * u64::from(n)) as f64 / m.net_bytes_per_us;
            end = end.max(read);
            self.report.messages_retrieved += u64::from(n);
        }
        // Tombstones: one write per holder of the drained mail.
        for &h in &map {
            if self.up_through(h, t, end) {
                let d = self.m.write(idx(h), t, end + m.net_latency_us, 64, m);
                end = end.max(d + m.net_latency_us);
            }
        }
        let mbx = &mut self.mailboxes[k as usize];
        mbx.sets = kept;
        let _ = self.pop_lat.record(((end - t) as u64).max(1));
        close(self, end);
    }

    /// A second POP3 session of the same mailbox opened at a manager whose view
    /// still holds the first session's process breaks the one-lock-holder rule. (A
    /// holder outside that view — dead, paused past detection, across a partition —
    /// has lost its lock with its membership, by design.)
    fn check_one_lock_holder(&mut self, user: u64, manager: NodeId, session: SessionId, t: f64) {
        if let Some(held) = self.open_locks.get(&user).copied() {
            let in_view = self
                .soft
                .nodes()
                .get(&manager)
                .and_then(|m| m.view())
                .is_some_and(|v| v.has_process(held.node, held.incarnation));
            if in_view {
                self.report.violations.push(format!(
                    "t={:.3}s: mailbox u{user} locked by {held:?} and {session:?} (manager {manager})",
                    t / 1e6
                ));
            }
        }
        self.open_locks.insert(user, session);
    }

    fn end_session(&mut self, a: NodeId, session: SessionId) {
        if let Some(s) = self.soft.node_mut_silent(a) {
            s.end_session(session);
        }
    }

    fn kill(&mut self, id: NodeId, returns: bool) {
        let h = &mut self.m.hw[idx(id)];
        h.alive = false;
        h.returns = returns;
        self.soft.stop(id);
        self.views[idx(id)] = None;
        if let Some(c) = self.members.as_mut() {
            c.kill(id);
        }
    }

    /// One repair pass of every manager (the node's `repair::pass`): for each user,
    /// the manager lists the fragments of the nodes in the user's mail map, plans
    /// with the core's `repair::plan`, and copies short messages to the nodes the
    /// core's `place_copies` chooses. Messages of one holder set count as one id.
    fn repair(&mut self, t: f64) {
        let cfg = self.cfg;
        let m = &cfg.model;
        let running = |h: &Hw| h.alive && !h.frozen;
        let live = self.m.hw.iter().filter(|h| running(h)).count();
        let all_known_live = self.m.hw.iter().all(|h| running(h) || h.removed);
        let wanted = cfg.replicas.clamp(1, live.max(1));
        let rules = softstate::repair::RepairRules {
            wanted_copies: wanted,
            all_known_live,
            now_micros: t as u64,
            copy_min_age_micros: (cfg.repair_copy_min_age_s * 1e6) as u64,
            tombstone_min_age_micros: u64::MAX,
        };
        let Some(view) = self.soft.view.clone() else {
            return;
        };
        let current = Some(view.epoch);
        let mut under = 0u64;
        let mut copies = 0u64;
        let mut buf = NameBuf::default();
        for k in 0..self.mailboxes.len() {
            if self.mailboxes[k].sets.is_empty() {
                continue;
            }
            let short: u64 = self.mailboxes[k]
                .sets
                .iter()
                .filter(|g| {
                    g.holders
                        .iter()
                        .filter(|h| running(&self.m.hw[idx(*h)]))
                        .count()
                        < wanted
                })
                .map(|g| u64::from(g.messages))
                .sum();
            under += short;
            if short == 0 {
                continue;
            }
            let name = buf.name(k as u64);
            let bucket = bucket_of(name, BUCKETS);
            let manager = view.map.manager(bucket);
            if !self.m.hw.get(idx(manager)).is_some_and(running) {
                continue;
            }
            // The soft state must be complete and belong to the current view.
            let map = match self.soft.nodes().get(&manager) {
                Some(s) if s.is_complete() && s.epoch() == current => match s.mail_map(name) {
                    Ok(map) => map,
                    Err(_) => continue,
                },
                _ => continue,
            };
            let mb = &self.mailboxes[k];
            let mean_bytes = mb
                .bytes
                .checked_div(mb.sets.iter().map(|g| u64::from(g.messages)).sum::<u64>());
            let answers = map.iter().map(|&n| {
                let answers =
                    self.m.hw.get(idx(n)).is_some_and(running) && self.can_talk(manager, n);
                let listing = answers.then(|| softstate::listing::FragmentListing {
                    messages: mb
                        .sets
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| g.holders.iter().any(|h| h == n))
                        .map(|(i, g)| (i, u64::from(g.messages)))
                        .collect(),
                    tombstones: Vec::new(),
                });
                (n, listing)
            });
            let holdings = softstate::listing::Holdings::merge(answers);
            let newest: Vec<u64> = mb
                .sets
                .iter()
                .map(|g| u64::from(g.newest_ms) * 1000)
                .collect();
            let plan = softstate::repair::plan(&holdings, &rules, |i: usize| newest[i]);
            for task in plan.copies {
                let n = self.mailboxes[k].sets[task.id].messages;
                let bytes = mean_bytes.unwrap_or(0) * u64::from(n);
                let machines = &self.m;
                let load = |id: NodeId| machines.load(m, id, t);
                let Some(node) = self.soft.node_mut_silent(manager) else {
                    break;
                };
                let targets = node.place_copies(&task.from, task.count, &load);
                if targets.is_empty() {
                    continue;
                }
                node.add(name, &targets);
                // Read from one holder, store at each new one.
                let read = self.m.work(
                    idx(task.from[0]),
                    t,
                    t + m.net_latency_us,
                    m.read_cpu_us * f64::from(n),
                );
                for &target in &targets {
                    let arrive = read + m.net_latency_us + bytes as f64 / m.net_bytes_per_us;
                    let c = self
                        .m
                        .work(idx(target), t, arrive, m.store_cpu_us * f64::from(n));
                    self.m.write(idx(target), t, c, bytes, m);
                    self.record_fragment(k, target, bucket, name);
                }
                let mut nodes: Vec<NodeId> = task.from.clone();
                nodes.extend(&targets);
                copies += u64::from(n) * targets.len() as u64;
                let sets = &mut self.mailboxes[k].sets;
                sets[task.id].holders = Holders::of(&nodes);
            }
            // Groups that now share their holders become one.
            let sets = &mut self.mailboxes[k].sets;
            let mut i = 0;
            while i < sets.len() {
                match (0..i).find(|j| sets[*j].holders == sets[i].holders) {
                    Some(j) => {
                        let g = sets.swap_remove(i);
                        sets[j].messages += g.messages;
                        sets[j].newest_ms = sets[j].newest_ms.max(g.newest_ms);
                    }
                    None => i += 1,
                }
            }
        }
        self.report.repair_passes += 1;
        self.report.repair_copies += copies;
        self.repair_copies_interval += copies;
        self.under_replicated = under;
    }

    fn fault(&mut self, i: usize) {
        let Some(f) = self.cfg.faults.get(i).cloned() else {
            return;
        };
        match f.kind {
            FaultKind::Kill(id) => {
                let returns = self
                    .cfg
                    .faults
                    .iter()
                    .any(|g| g.at_ms > f.at_ms && g.kind == FaultKind::Restart(id));
                self.kill(id, returns);
            }
            FaultKind::Remove(id) => {
                if self.m.hw[idx(id)].alive {
                    self.kill(id, false);
                }
                let h = &mut self.m.hw[idx(id)];
                h.returns = false;
                h.removed = true;
            }
            FaultKind::Restart(id) => {
                if self.m.hw[idx(id)].alive || self.m.hw[idx(id)].removed {
                    return;
                }
                let h = &mut self.m.hw[idx(id)];
                h.alive = true;
                h.returns = true;
                if self.cfg.model.machine_cores == 0 {
                    h.cpu = Cpu::new(self.cfg.model.cores);
                }
                h.disk = Disk::default();
                let seed = (1..=self.cfg.nodes)
                    .find(|n| *n != id && self.m.hw[idx(*n)].alive)
                    .unwrap_or(1);
                if let Some(c) = self.members.as_mut() {
                    c.start(id, vec![membership::sim::addr(seed)]);
                    let inc = c.machine(id).map_or(1, |m| m.me().incarnation);
                    self.soft.start(id, inc);
                }
            }
            FaultKind::Slow { node, what, factor } => {
                let h = &mut self.m.hw[idx(node)];
                if what == "cpu" {
                    h.cpu_factor = factor;
                } else {
                    h.disk_factor = factor;
                }
            }
            FaultKind::Pause(id) => {
                self.m.hw[idx(id)].frozen = true;
                self.soft.freeze(id);
                if let Some(c) = self.members.as_mut() {
                    c.freeze(id);
                }
            }
            FaultKind::Resume(id) => {
                self.m.hw[idx(id)].frozen = false;
                self.soft.thaw(id);
                if let Some(c) = self.members.as_mut() {
                    c.thaw(id);
                }
            }
            FaultKind::Unslow(node) => {
                let h = &mut self.m.hw[idx(node)];
                h.cpu_factor = 1.0;
                h.disk_factor = 1.0;
            }
            FaultKind::Partition(lo, hi) => {
                self.partition = Some((lo, hi));
                self.soft.cut = Some((lo..=hi).collect());
                if let Some(c) = self.members.as_mut() {
                    c.partition(&(lo..=hi).collect());
                }
            }
            FaultKind::Heal => {
                self.partition = None;
                self.soft.cut = None;
                if let Some(c) = self.members.as_mut() {
                    c.heal();
                }
            }
        }
    }

    fn sample(&mut self, t: u64) {
        if self.cfg.check_invariants
            && let Some(c) = self.members.as_ref()
        {
            let v = c.violations();
            for line in &v[self.membership_violations_seen.min(v.len())..] {
                self.report.violations.push(format!("membership: {line}"));
            }
            self.membership_violations_seen = v.len();
        }
        let interval_s = self.cfg.sample_ms.max(1) as f64 / 1e3;
        let live = self.m.hw.iter().filter(|h| h.alive).count() as u64;
        let rebuilding = self
            .soft
            .nodes()
            .iter()
            .filter(|(id, _)| self.soft.is_running(**id))
            .map(|(_, s)| s.buckets_rebuilding() as u64)
            .sum();
        let copies: Vec<u64> = self
            .m
            .hw
            .iter()
            .filter(|h| h.alive)
            .map(|h| h.copies_interval)
            .collect();
        let mean = copies.iter().sum::<u64>() as f64 / copies.len().max(1) as f64;
        let max = copies.iter().copied().max().unwrap_or(0) as f64;
        self.report.timeline.push(Sample {
            t_s: t as f64 / 1e6,
            acked_per_s: self
                .acked_by_interval
                .get(self.report.timeline.len())
                .copied()
                .unwrap_or(0) as f64
                / interval_s,
            temp_per_s: self.interval_temp as f64 / interval_s,
            live_nodes: live,
            buckets_rebuilding: rebuilding,
            load_max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
            under_replicated: self.under_replicated,
            repair_copies_per_s: self.repair_copies_interval as f64 / interval_s,
        });
        self.repair_copies_interval = 0;
        for h in &mut self.m.hw {
            h.copies_interval = 0;
        }
        self.interval_temp = 0;
    }

    /// After the last fault: every running node on one view, every manager's maps
    /// equal to the fragments the nodes hold, nothing acknowledged lost.
    fn check_settled(&mut self) {
        let running: BTreeSet<NodeId> = (1..=self.cfg.nodes)
            .filter(|id| self.m.hw[idx(*id)].alive && !self.m.hw[idx(*id)].frozen)
            .collect();
        let Some(c) = self.members.as_ref() else {
            return;
        };
        if let Err(e) = c.agreement(&running) {
            self.report
                .violations
                .push(format!("no agreed view at the end: {e}"));
            return;
        }
        let Some(first) = running.first() else {
            return;
        };
        let Some(view) = self.soft.nodes().get(first).and_then(|s| s.view().cloned()) else {
            self.report
                .violations
                .push("no soft-state view at the end".into());
            return;
        };
        // Every live holder of a user's fragments is in the user's map at its
        // manager (a map may name more: a placement whose delivery failed).
        let mut truth: BTreeMap<&str, (u16, BTreeSet<NodeId>)> = BTreeMap::new();
        for id in &running {
            for (b, user) in self.soft.fragments.get(id).into_iter().flatten() {
                truth
                    .entry(user.as_str())
                    .or_insert((*b, BTreeSet::new()))
                    .1
                    .insert(*id);
            }
        }
        for (user, (b, holders)) in truth {
            let manager = view.map.manager(b);
            let map = match self.soft.nodes().get(&manager).map(|m| m.mail_map(user)) {
                Some(Ok(map)) => map,
                Some(Err(e)) => {
                    self.report
                        .violations
                        .push(format!("at the end, {user}'s manager {manager}: {e}"));
                    return;
                }
                None => {
                    self.report
                        .violations
                        .push(format!("at the end, {user}'s manager {manager} is missing"));
                    return;
                }
            };
            if let Some(h) = holders.iter().find(|h| !map.contains(h)) {
                self.report.violations.push(format!(
                    "at the end, {user}'s map at {manager} is {map:?}: holder {h} missing (holders {holders:?})"
                ));
                return;
            }
        }
    }

    fn finish(mut self, wall_s: f64) -> Report {
        self.report.core_placements = self
            .soft
            .nodes()
            .values()
            .map(|s| s.stats().placements)
            .sum();
        if let Some(c) = self.members.as_ref() {
            self.report.membership_messages = c.sent.values().sum();
        }
        if self.cfg.check_invariants {
            self.check_settled();
        }
        let r = &mut self.report;
        r.simulated_s = self.cfg.duration_s;
        r.wall_s = wall_s;
        r.throughput_msgs_per_s = r.messages_acknowledged as f64 / r.simulated_s;
        r.sim_messages_per_wall_s = r.messages_offered as f64 / wall_s.max(1e-9);
        r.events_per_wall_s = r.events as f64 / wall_s.max(1e-9);
        r.copies_per_node = self.m.hw.iter().map(|h| h.copies).collect();
        let mean =
            r.copies_per_node.iter().sum::<u64>() as f64 / r.copies_per_node.len().max(1) as f64;
        let max = r.copies_per_node.iter().copied().max().unwrap_or(0) as f64;
        r.node_load_max_over_mean = if mean > 0.0 { max / mean } else { 0.0 };
        // Lost: every holder gone for good. Under-replicated: fewer live copies
        // than replicas now.
        let mut lost = 0;
        let mut short = 0;
        for mb in &self.mailboxes {
            for g in &mb.sets {
                let n = g.messages;
                if !g.holders.iter().any(|h| self.m.hw[idx(h)].returns) {
                    lost += u64::from(n);
                }
                let live = g
                    .holders
                    .iter()
                    .filter(|h| self.m.hw[idx(*h)].alive)
                    .count();
                if live < self.cfg.replicas.min(self.cfg.nodes as usize) {
                    short += u64::from(n);
                }
            }
        }
        r.messages_lost = lost;
        if self.cfg.check_invariants && lost > 0 {
            r.violations
                .push(format!("{lost} acknowledged messages lost"));
        }
        r.messages_under_replicated = short;
        r.smtp = latency(&self.smtp_lat);
        r.pop = latency(&self.pop_lat);
        // Freeing millions of small allocations takes seconds: do it beside the
        // caller (on the other core), not in its way. Inline if no thread starts.
        let big = (
            std::mem::take(&mut self.mailboxes),
            std::mem::replace(&mut self.soft, SoftSim::new(0, SoftStateConfig::default())),
        );
        let _ = std::thread::Builder::new()
            .name("sim-free".into())
            .spawn(move || drop(big));
        self.report
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1e3;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}
