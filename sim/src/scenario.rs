//! Named experiments (`porcupine sim scenario NAME [--quick]`): each runs one or
//! more simulations and returns a table, every figure as JSON, and SVG plots.

use serde_json::{Value, json};

use crate::SimError;
use crate::config::{Policy, SimConfig};
use crate::fault::{Fault, FaultKind};
use crate::plot::{Series, line_chart};
use crate::report::Report;

/// The scenarios, in the order `all` would run them.
pub const NAMES: [&str; 6] = [
    "scaling",
    "skew",
    "hetero",
    "failover",
    "billion",
    "ten-billion",
];

/// What one scenario produced.
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// A markdown table of the results.
    pub table: String,
    /// Every figure.
    pub json: Value,
    /// (file name, SVG document).
    pub plots: Vec<(String, String)>,
}

/// Messages per second one node sustains in the model when every core is busy:
/// the CPU a message costs over the cluster (front end, placement, every copy).
pub fn capacity_per_node(cfg: &SimConfig) -> f64 {
    let m = &cfg.model;
    let per_msg_us = m.smtp_cpu_us + m.place_cpu_us + cfg.replicas as f64 * m.store_cpu_us;
    f64::from(m.cores) * 1e6 / per_msg_us
}

const POLICIES: [Policy; 3] = [Policy::Porcupine, Policy::Random, Policy::Static];

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Porcupine => "porcupine",
        Policy::Random => "random",
        Policy::Static => "static",
    }
}

/// Run scenario `name`; `progress` gets (what is running, fraction of it done).
pub fn run(
    name: &str,
    quick: bool,
    seed: u64,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Outcome, SimError> {
    match name {
        "scaling" => scaling(quick, seed, progress),
        "skew" => skew(quick, seed, progress),
        "hetero" => hetero(quick, seed, progress),
        "failover" => failover(quick, seed, progress),
        "billion" => volume("billion", 1_000, 11_574.0, quick, seed, progress),
        "ten-billion" => volume("ten-billion", 10_000, 115_741.0, quick, seed, progress),
        _ => Err(SimError::Config(format!(
            "no scenario {name:?}; there are {}",
            NAMES.join(", ")
        ))),
    }
}

fn one(
    label: &str,
    cfg: &SimConfig,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Report, SimError> {
    crate::run(cfg, &mut |f| progress(label, f))
}

/// Acknowledged msgs/s over the second half of the timeline (past the warm-up).
fn steady_throughput(r: &Report) -> f64 {
    let half = r.timeline.len() / 2;
    let tail = &r.timeline[half..];
    if tail.is_empty() {
        return r.throughput_msgs_per_s;
    }
    tail.iter().map(|s| s.acked_per_s).sum::<f64>() / tail.len() as f64
}

fn scaling(
    quick: bool,
    seed: u64,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Outcome, SimError> {
    let sizes: &[u64] = if quick {
        &[10, 30, 100]
    } else {
        &[10, 30, 100, 300, 1_000, 3_000, 10_000]
    };
    let budget_msgs = if quick { 150_000.0 } else { 2_000_000.0 };
    let mut rows = Vec::new();
    let mut base_per_node = None;
    let mut table = String::from(
        "| nodes | offered msgs/s | throughput msgs/s | per node | efficiency vs 10 | p50 ms | p99 ms | load max/mean | simulated s | wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let (mut thr, mut eff) = (Vec::new(), Vec::new());
    for &n in sizes {
        let mut cfg = SimConfig {
            nodes: n,
            users: (n * 100).min(1_000_000),
            seed,
            pop_per_msg: 0.0,
            sample_ms: 50,
            ..SimConfig::default()
        };
        let offered = 1.3 * capacity_per_node(&cfg) * n as f64;
        cfg.rate_msgs_per_s = offered;
        cfg.duration_s = (budget_msgs / offered).clamp(1.0, 20.0);
        let r = one(&format!("scaling {n} nodes"), &cfg, progress)?;
        let t = steady_throughput(&r);
        let per_node = t / n as f64;
        let base = *base_per_node.get_or_insert(per_node);
        let e = per_node / base;
        table.push_str(&format!(
            "| {n} | {offered:.0} | {t:.0} | {per_node:.0} | {:.1} % | {:.2} | {:.2} | {:.3} | {:.2} | {:.1} |\n",
            e * 100.0,
            r.smtp.p50_ms,
            r.smtp.p99_ms,
            r.node_load_max_over_mean,
            r.simulated_s,
            r.wall_s
        ));
        thr.push((n as f64, t));
        eff.push((n as f64, e * 100.0));
        rows.push(
            json!({"nodes": n, "offered_msgs_per_s": offered, "throughput_msgs_per_s": t,
            "per_node_msgs_per_s": per_node, "efficiency": e, "report": r}),
        );
    }
    let plots = vec![
        (
            "scaling-throughput.svg".to_string(),
            line_chart(
                "Throughput at saturation vs nodes",
                "nodes",
                "msgs/s",
                &[Series {
                    name: "acknowledged".into(),
                    points: thr,
                }],
                true,
            ),
        ),
        (
            "scaling-efficiency.svg".to_string(),
            line_chart(
                "Per-node throughput vs 10 nodes",
                "nodes",
                "efficiency %",
                &[Series {
                    name: "efficiency".into(),
                    points: eff,
                }],
                true,
            ),
        ),
    ];
    Ok(Outcome {
        name: "scaling".into(),
        table,
        json: json!({"scenario": "scaling", "rows": rows}),
        plots,
    })
}

fn skew(quick: bool, seed: u64, progress: &mut dyn FnMut(&str, f64)) -> Result<Outcome, SimError> {
    let n = if quick { 10 } else { 30 };
    let zipfs: &[f64] = if quick { &[0.0, 1.2] } else { &[0.0, 0.8, 1.2] };
    let mut table = String::from(
        "| policy | zipf | throughput msgs/s | 4xx | p99 ms | load max/mean |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for p in POLICIES {
        let mut pts = Vec::new();
        for &z in zipfs {
            let mut cfg = SimConfig {
                nodes: n,
                users: 10_000,
                zipf: z,
                policy: p,
                seed,
                duration_s: if quick { 5.0 } else { 20.0 },
                ..SimConfig::default()
            };
            cfg.rate_msgs_per_s = 0.7 * capacity_per_node(&cfg) * n as f64;
            let r = one(&format!("skew {} zipf {z}", policy_name(p)), &cfg, progress)?;
            table.push_str(&format!(
                "| {} | {z} | {:.0} | {} | {:.2} | {:.3} |\n",
                policy_name(p),
                r.throughput_msgs_per_s,
                r.messages_4xx,
                r.smtp.p99_ms,
                r.node_load_max_over_mean
            ));
            pts.push((z, r.node_load_max_over_mean));
            rows.push(json!({"policy": policy_name(p), "zipf": z, "report": r}));
        }
        series.push(Series {
            name: policy_name(p).into(),
            points: pts,
        });
    }
    let plots = vec![(
        "skew-load-spread.svg".to_string(),
        line_chart(
            "Busiest node over mean vs popularity skew",
            "zipf exponent",
            "copies max/mean",
            &series,
            false,
        ),
    )];
    Ok(Outcome {
        name: "skew".into(),
        table,
        json: json!({"scenario": "skew", "rows": rows}),
        plots,
    })
}

fn hetero(
    quick: bool,
    seed: u64,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Outcome, SimError> {
    let n: u64 = if quick { 20 } else { 100 };
    let slow: Vec<u64> = (1..=n / 10).collect();
    let mut table = String::from(
        "| policy | slow nodes' share of new copies | per slow node / per fast node | throughput msgs/s | p99 ms | 4xx |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    let mut rows = Vec::new();
    let mut pts = Vec::new();
    for (i, p) in POLICIES.into_iter().enumerate() {
        let mut faults = Vec::new();
        for &s in &slow {
            for what in ["cpu", "disk"] {
                faults.push(Fault {
                    at_ms: 0,
                    kind: FaultKind::Slow {
                        node: s,
                        what: what.into(),
                        factor: 2.0,
                    },
                });
            }
        }
        let mut cfg = SimConfig {
            nodes: n,
            users: if quick { 5_000 } else { 50_000 },
            policy: p,
            seed,
            faults,
            membership: false,
            duration_s: if quick { 5.0 } else { 30.0 },
            ..SimConfig::default()
        };
        cfg.rate_msgs_per_s = 0.6 * capacity_per_node(&cfg) * n as f64;
        let r = one(&format!("hetero {}", policy_name(p)), &cfg, progress)?;
        let total: u64 = r.copies_per_node.iter().sum();
        let slow_copies: u64 = slow
            .iter()
            .map(|s| r.copies_per_node[(*s - 1) as usize])
            .sum();
        let share = slow_copies as f64 / total.max(1) as f64;
        let per_slow = slow_copies as f64 / slow.len() as f64;
        let per_fast = (total - slow_copies) as f64 / (n as usize - slow.len()) as f64;
        let ratio = per_slow / per_fast.max(1e-9);
        table.push_str(&format!(
            "| {} | {:.1} % | {ratio:.2} | {:.0} | {:.2} | {} |\n",
            policy_name(p),
            share * 100.0,
            r.throughput_msgs_per_s,
            r.smtp.p99_ms,
            r.messages_4xx
        ));
        pts.push((i as f64, ratio));
        rows.push(json!({"policy": policy_name(p), "slow_nodes": slow, "slow_share": share, "slow_over_fast": ratio, "report": r}));
    }
    let plots = vec![(
        "hetero-share.svg".to_string(),
        line_chart(
            "New mail per slow node over per fast node (0 porcupine, 1 random, 2 static)",
            "policy",
            "ratio",
            &[Series {
                name: "slow/fast".into(),
                points: pts,
            }],
            false,
        ),
    )];
    Ok(Outcome {
        name: "hetero".into(),
        table,
        json: json!({"scenario": "hetero", "rows": rows}),
        plots,
    })
}

fn failover(
    quick: bool,
    seed: u64,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Outcome, SimError> {
    let n: u64 = if quick { 30 } else { 1_000 };
    let duration_s: f64 = if quick { 60.0 } else { 300.0 };
    let victims: Vec<u64> = (1..=n).filter(|i| i % 10 == 0).collect();
    // One victim in ten never comes back: the operator removes it, and repair
    // re-replicates its copies.
    let removed: Vec<u64> = victims.iter().copied().step_by(10).collect();
    let kill_ms = (duration_s * 1000.0 / 3.0) as u64;
    let restart_ms = 2 * kill_ms;
    let mut faults = Vec::new();
    for &v in &victims {
        faults.push(Fault {
            at_ms: kill_ms,
            kind: FaultKind::Kill(v),
        });
        faults.push(Fault {
            at_ms: restart_ms,
            kind: if removed.contains(&v) {
                FaultKind::Remove(v)
            } else {
                FaultKind::Restart(v)
            },
        });
    }
    let cfg = SimConfig {
        nodes: n,
        users: n * 100,
        rate_msgs_per_s: 20.0 * n as f64,
        duration_s,
        seed,
        faults,
        repair_interval_s: if quick { 5.0 } else { 30.0 },
        ..SimConfig::default()
    };
    let r = one("failover", &cfg, progress)?;
    // Repaired: the first sample after the removal with nothing short of copies.
    let repaired = r
        .timeline
        .iter()
        .find(|s| s.t_s * 1000.0 > restart_ms as f64 && s.under_replicated == 0)
        .map(|s| s.t_s - restart_ms as f64 / 1000.0);
    let short_peak = r
        .timeline
        .iter()
        .map(|s| s.under_replicated)
        .max()
        .unwrap_or(0);
    let recovered = |from_ms: u64| {
        r.timeline
            .iter()
            .find(|s| {
                s.t_s * 1000.0 > from_ms as f64 && s.temp_per_s == 0.0 && s.buckets_rebuilding == 0
            })
            .map(|s| s.t_s - from_ms as f64 / 1000.0)
    };
    let after_kill = recovered(kill_ms);
    let after_restart = recovered(restart_ms);
    let fmt = |x: Option<f64>| x.map_or("never".to_string(), |s| format!("{s:.1} s"));
    let table = format!(
        "| nodes | killed | offered | acked | 4xx | lost | under-replicated: peak / at end | repair copies | all copies back after removal | no 4xx and maps complete after kill | after restart | view installs |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n| {n} | {} at {:.0} s; {} back, {} removed at {:.0} s | {} | {} | {} | {} | {short_peak} / {} | {} | {} | {} | {} | {} |\n",
        victims.len(),
        kill_ms as f64 / 1e3,
        victims.len() - removed.len(),
        removed.len(),
        restart_ms as f64 / 1e3,
        r.messages_offered,
        r.messages_acknowledged,
        r.messages_4xx,
        r.messages_lost,
        r.messages_under_replicated,
        r.repair_copies,
        fmt(repaired),
        fmt(after_kill),
        fmt(after_restart),
        r.view_installs
    );
    let line = |f: &dyn Fn(&crate::report::Sample) -> f64| {
        r.timeline.iter().map(|s| (s.t_s, f(s))).collect::<Vec<_>>()
    };
    let plots = vec![
        (
            "failover-throughput.svg".to_string(),
            line_chart(
                "Failover: messages per second",
                "time s",
                "msgs/s",
                &[
                    Series {
                        name: "acknowledged".into(),
                        points: line(&|s| s.acked_per_s),
                    },
                    Series {
                        name: "4xx".into(),
                        points: line(&|s| s.temp_per_s),
                    },
                ],
                false,
            ),
        ),
        (
            "failover-recovery.svg".to_string(),
            line_chart(
                "Failover: live nodes and buckets rebuilding",
                "time s",
                "count",
                &[
                    Series {
                        name: "live nodes".into(),
                        points: line(&|s| s.live_nodes as f64),
                    },
                    Series {
                        name: "buckets rebuilding".into(),
                        points: line(&|s| s.buckets_rebuilding as f64),
                    },
                ],
                false,
            ),
        ),
        (
            "failover-repair.svg".to_string(),
            line_chart(
                "Failover: messages short of copies, and repair's copies per second",
                "time s",
                "messages",
                &[
                    Series {
                        name: "under-replicated (last pass)".into(),
                        points: line(&|s| s.under_replicated as f64),
                    },
                    Series {
                        name: "repair copies/s".into(),
                        points: line(&|s| s.repair_copies_per_s),
                    },
                ],
                false,
            ),
        ),
    ];
    Ok(Outcome {
        name: "failover".into(),
        table,
        json: json!({"scenario": "failover", "victims": victims, "removed": removed, "repaired_after_removal_s": repaired, "kill_ms": kill_ms, "restart_ms": restart_ms,
            "recovered_after_kill_s": after_kill, "recovered_after_restart_s": after_restart, "report": r}),
        plots,
    })
}

fn volume(
    name: &str,
    n: u64,
    rate: f64,
    quick: bool,
    seed: u64,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Outcome, SimError> {
    let cfg = SimConfig {
        nodes: n,
        users: if quick { 100_000 } else { 1_000_000 },
        rate_msgs_per_s: rate,
        duration_s: if quick { 10.0 } else { 3_600.0 },
        seed,
        sample_ms: if quick { 1_000 } else { 60_000 },
        ..SimConfig::default()
    };
    let r = one(name, &cfg, progress)?;
    let table = format!(
        "| nodes | users | simulated | offered | acked | 4xx | lost | throughput msgs/s | p50 / p99 ms | load max/mean | wall s | msgs per wall s | events per wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n| {n} | {} | {:.0} s | {} | {} | {} | {} | {:.0} | {:.2} / {:.2} | {:.3} | {:.1} | {:.0} | {:.0} |\n",
        cfg.users,
        r.simulated_s,
        r.messages_offered,
        r.messages_acknowledged,
        r.messages_4xx,
        r.messages_lost,
        r.throughput_msgs_per_s,
        r.smtp.p50_ms,
        r.smtp.p99_ms,
        r.node_load_max_over_mean,
        r.wall_s,
        r.sim_messages_per_wall_s,
        r.events_per_wall_s
    );
    let pts: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_s, s.acked_per_s)).collect();
    let plots = vec![(
        format!("{name}-throughput.svg"),
        line_chart(
            &format!("{name}: acknowledged msgs/s"),
            "time s",
            "msgs/s",
            &[Series {
                name: "acknowledged".into(),
                points: pts,
            }],
            false,
        ),
    )];
    Ok(Outcome {
        name: name.into(),
        table,
        json: json!({"scenario": name, "report": r}),
        plots,
    })
}
