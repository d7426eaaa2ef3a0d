//! Random fault schedules over the real core, with invariant checkers (after
//! TigerBeetle's VOPR): a seed gives a cluster size, a network and a schedule of
//! crashes, restarts, pauses and partitions; the run must keep every invariant.
//!
//! Checked: at most one member set per epoch and no node going back an epoch
//! (membership's own checker); at most one open POP3 session per mailbox while the
//! holder's process lives; after the last fault, every running node on one view
//! within the quiet time, every manager's mail maps equal to the fragments the live
//! nodes hold (so every acknowledged, unretrieved message can be found), and no
//! acknowledged message lost.

use softstate::place::Rng;

use crate::SimError;
use crate::config::{SimConfig, SizeDist};
use crate::fault::{Fault, FaultKind};
use crate::report::Report;

/// Simulated seconds of faults, then of quiet before the final checks.
const FAULT_S: u64 = 40;
const QUIET_S: u64 = 30;

/// The experiment seed `seed` stands for.
pub fn schedule(seed: u64, nodes_max: u64) -> SimConfig {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1ce);
    let lo = 3u64;
    let hi = nodes_max.max(lo);
    let nodes = lo + rng.below((hi - lo + 1) as usize) as u64;
    let mut faults = Vec::new();
    let mut down: Vec<(u64, bool)> = Vec::new(); // (node, paused rather than killed)
    let mut partitioned = false;
    let mut t_ms = 2_000 + rng.below(3_000) as u64;
    while t_ms < FAULT_S * 1000 {
        let at_ms = t_ms;
        match rng.below(6) {
            // Crash a node (keep a majority of the cluster running).
            0 | 1 if (down.len() as u64) < nodes / 2 => {
                let n = 1 + rng.below(nodes as usize) as u64;
                if !down.iter().any(|(d, _)| *d == n) {
                    down.push((n, false));
                    faults.push(Fault {
                        at_ms,
                        kind: FaultKind::Kill(n),
                    });
                }
            }
            2 if (down.len() as u64) < nodes / 2 => {
                let n = 1 + rng.below(nodes as usize) as u64;
                if !down.iter().any(|(d, _)| *d == n) {
                    down.push((n, true));
                    faults.push(Fault {
                        at_ms,
                        kind: FaultKind::Pause(n),
                    });
                }
            }
            3 if !down.is_empty() => {
                let (n, paused) = down.remove(rng.below(down.len()));
                let kind = if paused {
                    FaultKind::Resume(n)
                } else {
                    FaultKind::Restart(n)
                };
                faults.push(Fault { at_ms, kind });
            }
            4 if !partitioned && nodes >= 4 => {
                let hi_side = 1 + rng.below((nodes - 1) as usize) as u64;
                partitioned = true;
                faults.push(Fault {
                    at_ms,
                    kind: FaultKind::Partition(1, hi_side),
                });
            }
            5 if partitioned => {
                partitioned = false;
                faults.push(Fault {
                    at_ms,
                    kind: FaultKind::Heal,
                });
            }
            _ => {}
        }
        t_ms += 500 + rng.below(6_000) as u64;
    }
    // Everything ends: heal, and every node back.
    let end_ms = FAULT_S * 1000;
    if partitioned {
        faults.push(Fault {
            at_ms: end_ms,
            kind: FaultKind::Heal,
        });
    }
    for (n, paused) in down {
        let kind = if paused {
            FaultKind::Resume(n)
        } else {
            FaultKind::Restart(n)
        };
        faults.push(Fault {
            at_ms: end_ms,
            kind,
        });
    }
    SimConfig {
        nodes,
        users: 200,
        rate_msgs_per_s: 50.0 + rng.below(200) as f64,
        duration_s: (FAULT_S + QUIET_S) as f64,
        seed,
        zipf: [0.0, 0.8, 1.2][rng.below(3)],
        size: SizeDist::Fixed(1_000),
        pop_per_msg: 0.2,
        replicas: 2,
        spread: 2 + rng.below(2),
        faults,
        membership: true,
        net_drop_per_mille: rng.below(60) as u32,
        net_delay_ms_max: 1 + rng.below(80) as u64,
        soft_refuse_per_mille: rng.below(100) as u32,
        soft_shuffle: rng.below(2) == 0,
        check_invariants: true,
        ..SimConfig::default()
    }
}

/// The outcome of one seed.
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Its experiment.
    pub config: SimConfig,
    /// What it measured (violations included).
    pub report: Report,
}

/// Run seed `seed`.
pub fn run_seed(seed: u64, nodes_max: u64) -> Result<Outcome, SimError> {
    let config = schedule(seed, nodes_max);
    let report = crate::run(&config, &mut |_| {})?;
    Ok(Outcome {
        seed,
        config,
        report,
    })
}
