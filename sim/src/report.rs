//! What a run measured: the JSON every later check reads, and a summary table.

use serde::Serialize;

/// Latency percentiles of one protocol, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// One point of the timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Virtual time, seconds.
    pub t_s: f64,
    /// Messages acknowledged in this interval, per second.
    pub acked_per_s: f64,
    /// Messages answered 4xx in this interval, per second.
    pub temp_per_s: f64,
    /// Processes running.
    pub live_nodes: u64,
    /// Buckets whose mail maps are still being rebuilt, over all managers.
    pub buckets_rebuilding: u64,
    /// Most copies stored on one node over the mean (this interval).
    pub load_max_over_mean: f64,
    /// Messages with fewer live copies than wanted, as the last repair pass saw them.
    pub under_replicated: u64,
    /// Copies repair made in this interval, per second.
    pub repair_copies_per_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Nodes at start.
    pub nodes: u64,
    /// Users.
    pub users: u64,
    /// The seed.
    pub seed: u64,
    /// Placement policy.
    pub policy: String,
    /// Simulated time, seconds.
    pub simulated_s: f64,
    /// Wall-clock time the run took, seconds.
    pub wall_s: f64,
    /// Messages the clients offered.
    pub messages_offered: u64,
    /// Messages answered 250 (stored on every target).
    pub messages_acknowledged: u64,
    /// Messages answered 4xx (the sender retries later).
    pub messages_4xx: u64,
    /// Messages stored but answered after the end of the run (neither of the above).
    pub messages_in_flight_at_end: u64,
    /// Acknowledged messages with no copy on any node that is or will be running
    /// again (from the model of stored copies).
    pub messages_lost: u64,
    /// Acknowledged messages with fewer live copies than replicas at the end.
    pub messages_under_replicated: u64,
    /// Copies written in all (deliveries; repair's are `repair_copies`).
    pub copies_stored: u64,
    /// Repair passes run (every `repair_interval_s` while membership runs).
    pub repair_passes: u64,
    /// Copies repair made (re-replication of messages short of copies).
    pub repair_copies: u64,
    /// POP3 sessions started.
    pub pop_sessions: u64,
    /// POP3 sessions answered with a temporary error (map rebuilding, holder down).
    pub pop_4xx: u64,
    /// POP3 sessions refused because another session held the mailbox.
    pub pop_in_use: u64,
    /// Messages retrieved and deleted.
    pub messages_retrieved: u64,
    /// Acknowledged per simulated second.
    pub throughput_msgs_per_s: f64,
    /// Messages offered per wall second (simulator speed).
    pub sim_messages_per_wall_s: f64,
    /// Events processed per wall second.
    pub events_per_wall_s: f64,
    /// Events processed.
    pub events: u64,
    /// Copies stored on the busiest node over the mean over nodes that ever ran.
    pub node_load_max_over_mean: f64,
    /// Views installed (by any node).
    pub view_installs: u64,
    /// SMTP latency, client connect to 250.
    pub smtp: Latency,
    /// POP3 session latency, connect to the end of the drain.
    pub pop: Latency,
    /// Copies stored per node id (index 0 = node 1).
    pub copies_per_node: Vec<u64>,
    /// One sample per `sample_ms`.
    pub timeline: Vec<Sample>,
    /// Broken invariants, when checked (empty is good).
    pub violations: Vec<String>,
    /// Placements the simulator asked of the managers' `SoftState`.
    pub placement_calls: u64,
    /// Placements the `SoftState` machines counted themselves (running ones).
    pub core_placements: u64,
    /// Messages the membership machines sent (when run).
    pub membership_messages: u64,
}

impl Report {
    /// A short human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, k: &str, v: String| {
            out.push_str(&format!("{k:<28} {v}\n"));
        };
        row(
            &mut out,
            "nodes / users",
            format!("{} / {}", self.nodes, self.users),
        );
        row(
            &mut out,
            "policy, seed",
            format!("{}, {}", self.policy, self.seed),
        );
        row(
            &mut out,
            "simulated / wall",
            format!("{:.1} s / {:.2} s", self.simulated_s, self.wall_s),
        );
        row(
            &mut out,
            "offered / acked / 4xx",
            format!(
                "{} / {} / {}",
                self.messages_offered, self.messages_acknowledged, self.messages_4xx
            ),
        );
        row(
            &mut out,
            "lost / under-replicated",
            format!(
                "{} / {}",
                self.messages_lost, self.messages_under_replicated
            ),
        );
        row(
            &mut out,
            "throughput",
            format!("{:.0} msgs/s", self.throughput_msgs_per_s),
        );
        row(
            &mut out,
            "SMTP latency p50/p99/max",
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                self.smtp.p50_ms, self.smtp.p99_ms, self.smtp.max_ms
            ),
        );
        row(
            &mut out,
            "POP3 sessions / 4xx / in use",
            format!(
                "{} / {} / {}",
                self.pop_sessions, self.pop_4xx, self.pop_in_use
            ),
        );
        row(
            &mut out,
            "retrieved",
            format!("{}", self.messages_retrieved),
        );
        row(
            &mut out,
            "load max/mean",
            format!("{:.3}", self.node_load_max_over_mean),
        );
        row(&mut out, "view installs", format!("{}", self.view_installs));
        row(
            &mut out,
            "repair passes / copies",
            format!("{} / {}", self.repair_passes, self.repair_copies),
        );
        row(
            &mut out,
            "speed",
            format!(
                "{:.0} msgs/wall s, {:.0} events/wall s",
                self.sim_messages_per_wall_s, self.events_per_wall_s
            ),
        );
        out
    }
}
