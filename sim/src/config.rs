//! What one experiment simulates: cluster, workload, model, policy, faults.

use serde::{Deserialize, Serialize};

use crate::fault::Fault;

/// Where new mail goes: the soft state's own policies (`softstate::place::Balance`),
/// the node's `balance` setting.
pub use softstate::place::Balance as Policy;

/// Message size distribution, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeDist {
    /// Every message this size.
    Fixed(u64),
    /// Uniform between the two bounds.
    Uniform(u64, u64),
    /// Lognormal with this median and sigma (mail-like: many small, a long tail).
    Lognormal(f64, f64),
}

impl SizeDist {
    /// Parse `fixed:N`, `uniform:A-B`, `lognormal:MEDIAN,SIGMA` or a bare number.
    pub fn parse(text: &str) -> Result<SizeDist, String> {
        let bad =
            || format!("size {text:?}: want N, fixed:N, uniform:A-B or lognormal:MEDIAN,SIGMA");
        if let Ok(n) = text.parse::<u64>() {
            return Ok(SizeDist::Fixed(n));
        }
        let (kind, rest) = text.split_once(':').ok_or_else(bad)?;
        match kind {
            "fixed" => rest.parse().map(SizeDist::Fixed).map_err(|_| bad()),
            "uniform" => {
                let (a, b) = rest.split_once('-').ok_or_else(bad)?;
                let (a, b) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                Ok(SizeDist::Uniform(a, b))
            }
            "lognormal" => {
                let (m, s) = rest.split_once(',').ok_or_else(bad)?;
                Ok(SizeDist::Lognormal(
                    m.parse().map_err(|_| bad())?,
                    s.parse().map_err(|_| bad())?,
                ))
            }
            _ => Err(bad()),
        }
    }
}

/// Service times and capacities of the hardware model (microseconds, bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Model {
    /// CPU cores per node (requests are served by the first free core).
    pub cores: u32,
    /// CPU per SMTP message at the node the client talks to (session, parse, relay).
    pub smtp_cpu_us: f64,
    /// CPU per placement at the manager.
    pub place_cpu_us: f64,
    /// CPU per stored copy at its node (index update, the store's own work).
    pub store_cpu_us: f64,
    /// CPU of one call between two different nodes, at each end (encoding,
    /// authentication, the RPC framework); 0 in the defaults, whose service times
    /// already hold it.
    pub rpc_cpu_us: f64,
    /// One fsync of the store's group commit (every write waiting joins the next one).
    pub fsync_us: f64,
    /// Disk write bandwidth, bytes per microsecond.
    pub disk_bytes_per_us: f64,
    /// One-way network latency between two nodes.
    pub net_latency_us: f64,
    /// Network bandwidth per transfer, bytes per microsecond.
    pub net_bytes_per_us: f64,
    /// CPU per POP3 session at the node the client talks to (login, commands).
    pub pop_cpu_us: f64,
    /// CPU per fragment listed at its node.
    pub list_cpu_us: f64,
    /// CPU per message retrieved at its holder (read, checksum).
    pub read_cpu_us: f64,
    /// How long a call to a dead node takes to fail (connect refused or timeout).
    pub dead_call_us: f64,
    /// How long the deliverer waits for every copy before it answers 451.
    pub deliver_timeout_us: f64,
    /// Serial work per write in the store's single writer (segment append, index
    /// update), on top of the bytes' transfer.
    pub write_us: f64,
    /// When above 0, every node's CPU work is served by one pool of this many cores:
    /// the nodes share one machine (as under `porcupine up`).
    pub machine_cores: u32,
    /// Every node's writes go through one disk with one group commit: the nodes
    /// share one machine's filesystem (as under `porcupine up`).
    pub machine_disk: bool,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            cores: 2,
            smtp_cpu_us: 250.0,
            place_cpu_us: 20.0,
            store_cpu_us: 60.0,
            rpc_cpu_us: 0.0,
            fsync_us: 2_000.0,
            disk_bytes_per_us: 200.0,
            net_latency_us: 100.0,
            net_bytes_per_us: 1_000.0,
            pop_cpu_us: 300.0,
            list_cpu_us: 30.0,
            read_cpu_us: 40.0,
            dead_call_us: 1_000.0,
            deliver_timeout_us: 10e6,
            write_us: 0.0,
            machine_cores: 0,
            machine_disk: false,
        }
    }
}

/// One experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    /// Nodes at start (ids 1..=nodes).
    pub nodes: u64,
    /// Users u0..u{users-1}.
    pub users: u64,
    /// Messages offered per second (Poisson arrivals); unused with `sessions`.
    pub rate_msgs_per_s: f64,
    /// Closed loop when above 0: this many SMTP clients, each sending its next
    /// message when the previous one is answered (as `porcupine load` without
    /// `--rate`), instead of Poisson arrivals.
    #[serde(default)]
    pub sessions: u32,
    /// Simulated time.
    pub duration_s: f64,
    /// The one seed of every random choice.
    pub seed: u64,
    /// Zipf exponent of user popularity (0 = uniform).
    pub zipf: f64,
    /// Message sizes.
    pub size: SizeDist,
    /// POP3 sessions per message offered (each drains one user's mailbox).
    pub pop_per_msg: f64,
    /// Copies of each message.
    pub replicas: usize,
    /// Nodes a user's mail may spread over (Porcupine policy; the node's default 4).
    pub spread: usize,
    /// Placement policy.
    pub policy: Policy,
    /// Hardware model.
    pub model: Model,
    /// Faults at given virtual times.
    pub faults: Vec<Fault>,
    /// Run the membership protocol (failure detection, view changes). Without
    /// faults it is off unless asked for: an agreed view that never changes.
    pub membership: bool,
    /// Timeline sample interval, milliseconds.
    pub sample_ms: u64,
    /// Most in-flight deliveries a node's SMTP front end takes; beyond, 4xx.
    pub smtp_backlog_max: u32,
    /// Membership messages lost, per thousand.
    pub net_drop_per_mille: u32,
    /// Longest one-way delay of a membership message, milliseconds.
    pub net_delay_ms_max: u64,
    /// Soft-state messages refused (the sender retries), per thousand.
    pub soft_refuse_per_mille: u32,
    /// Deliver soft-state messages in a random order.
    pub soft_shuffle: bool,
    /// Check the invariants while running and after the faults (see `vopr`).
    pub check_invariants: bool,
    /// Seconds between repair passes (the node's `repair_interval_secs`); passes run
    /// when membership does (a run with faults).
    pub repair_interval_s: f64,
    /// Messages younger than this are not re-replicated yet (the node's
    /// `repair::COPY_MIN_AGE`).
    pub repair_copy_min_age_s: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 10,
            users: 10_000,
            rate_msgs_per_s: 1_000.0,
            sessions: 0,
            duration_s: 60.0,
            seed: 1,
            zipf: 0.0,
            size: SizeDist::Lognormal(4_000.0, 1.0),
            pop_per_msg: 0.1,
            replicas: 2,
            spread: 4,
            policy: Policy::Porcupine,
            model: Model::default(),
            faults: Vec::new(),
            membership: false,
            sample_ms: 1_000,
            smtp_backlog_max: 512,
            net_drop_per_mille: 10,
            net_delay_ms_max: 20,
            soft_refuse_per_mille: 0,
            soft_shuffle: false,
            check_invariants: false,
            repair_interval_s: 30.0,
            repair_copy_min_age_s: 15.0,
        }
    }
}
