//! Every named scenario in its quick form, with the claim each one exists to show;
//! and a few hundred `vopr` seeds.

use serde_json::Value;

fn scenario(name: &str) -> Value {
    let out = sim::scenario::run(name, true, 1, &mut |_, _| {}).expect("scenario runs");
    assert!(out.table.starts_with('|'), "{name}: a markdown table");
    for (file, svg) in &out.plots {
        assert!(
            file.ends_with(".svg") && svg.starts_with("<svg"),
            "{name}: {file}"
        );
    }
    out.json
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

#[test]
fn scaling_keeps_per_node_throughput_from_10_nodes_up() {
    let j = scenario("scaling");
    let rows = j["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    for r in rows {
        let e = f(r, &["efficiency"]);
        assert!((0.9..1.1).contains(&e), "efficiency {e} at {}", r["nodes"]);
        // Saturated: more was offered than acknowledged.
        assert!(f(r, &["offered_msgs_per_s"]) > f(r, &["throughput_msgs_per_s"]) * 1.1);
    }
}

#[test]
fn skewed_popularity_overloads_the_static_design_more_than_porcupine() {
    let j = scenario("skew");
    let spread = |policy: &str, zipf: f64| {
        j["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["policy"] == policy && f(r, &["zipf"]) == zipf)
            .map(|r| f(r, &["report", "node_load_max_over_mean"]))
            .expect("row")
    };
    assert!(spread("static", 1.2) > spread("porcupine", 1.2) * 1.2);
    assert!(spread("static", 1.2) > spread("static", 0.0) * 1.2);
}

#[test]
fn slow_nodes_get_less_new_mail_under_porcupine_only() {
    let j = scenario("hetero");
    let ratio = |policy: &str| {
        j["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["policy"] == policy)
            .map(|r| f(r, &["slow_over_fast"]))
            .expect("row")
    };
    assert!(ratio("porcupine") < 0.6, "porcupine {}", ratio("porcupine"));
    assert!(
        (0.85..1.15).contains(&ratio("random")),
        "random {}",
        ratio("random")
    );
}

#[test]
fn failover_loses_nothing_and_recovers() {
    let j = scenario("failover");
    assert_eq!(f(&j, &["report", "messages_lost"]), 0.0);
    assert!(
        f(&j, &["report", "messages_4xx"]) > 0.0,
        "the kill must cost something"
    );
    assert!(f(&j, &["recovered_after_kill_s"]) < 10.0);
    assert!(f(&j, &["recovered_after_restart_s"]) < 10.0);
    // The removed victim's copies are re-replicated before the end.
    assert!(f(&j, &["report", "repair_copies"]) > 0.0);
    assert!(f(&j, &["repaired_after_removal_s"]) < 20.0);
    assert_eq!(f(&j, &["report", "messages_under_replicated"]), 0.0);
    let r = &j["report"];
    assert_eq!(
        f(r, &["messages_offered"]),
        f(r, &["messages_acknowledged"])
            + f(r, &["messages_4xx"])
            + f(r, &["messages_in_flight_at_end"])
    );
}

#[test]
fn the_volume_scenarios_carry_their_rate() {
    for (name, rate) in [("billion", 11_574.0), ("ten-billion", 115_741.0)] {
        let j = scenario(name);
        let t = f(&j, &["report", "throughput_msgs_per_s"]);
        assert!((t / rate - 1.0).abs() < 0.05, "{name}: {t} msgs/s");
        assert_eq!(f(&j, &["report", "messages_4xx"]), 0.0, "{name}");
        assert_eq!(f(&j, &["report", "messages_lost"]), 0.0, "{name}");
    }
}

#[test]
fn the_simulator_places_through_the_real_soft_state() {
    let cfg = sim::SimConfig {
        nodes: 8,
        users: 1_000,
        rate_msgs_per_s: 400.0,
        duration_s: 10.0,
        ..sim::SimConfig::default()
    };
    let r = sim::run(&cfg, &mut |_| {}).expect("runs");
    assert!(r.placement_calls >= r.messages_acknowledged && r.messages_acknowledged > 0);
    assert_eq!(
        r.core_placements, r.placement_calls,
        "every placement is SoftState::place"
    );
    let faulty = sim::SimConfig {
        faults: vec![sim::Fault::parse("kill 2 at 3s").expect("fault")],
        ..cfg
    };
    let r = sim::run(&faulty, &mut |_| {}).expect("runs");
    assert!(
        r.membership_messages > 0,
        "faults run the membership machines"
    );
    assert!(r.view_installs >= 7);
}

#[test]
fn vopr_seeds_keep_every_invariant() {
    let seeds: u64 = std::env::var("VOPR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // Seeds are independent: one thread per core, each taking every k-th seed.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut failed: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for seed in (t..seeds).step_by(threads as usize) {
                        let o = sim::vopr::run_seed(seed, 12).expect("runs");
                        if let Some(v) = o.report.violations.first() {
                            failed.push(format!("seed {seed}: {v}"));
                        }
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a vopr worker panicked"))
            .collect()
    });
    failed.sort();
    assert!(
        failed.is_empty(),
        "replay with `porcupine sim vopr --nodes-max 12 --seed S`:\n{}",
        failed.join("\n")
    );
}

/// Seeds `vopr` once failed on, kept as regressions: (seed, `--nodes-max`).
const REGRESSION_SEEDS: &[(u64, u64)] = &[
    // 508: nodes 1, 6 and 7 restarted together and merged before hearing from the
    // rest; the restarted coordinator reused its former self's epoch {2, node 1}
    // with other members (fixed: epochs carry the coordinator's incarnation).
    (508, 12),
    // 303: node 5, cut off, installed view {5} at 18.14 s and locked a mailbox of a
    // bucket it took from node 2; node 2, still in a view with node 5, locked the
    // same mailbox at 18.348 s (fixed: a lock grace on buckets taken from a manager
    // that left the view without a handover).
    (303, 8),
    // 258, 401, 959: a manager paused past detection resumed and, still in its old
    // view, locked a mailbox its successor manager had locked meanwhile, within
    // 10-130 ms of the resume (fixed: membership's view lease; a lock needs a ping
    // answered in the same epoch within `suspect_after_ms`).
    (258, 8),
    (401, 8),
    (959, 8),
    // 910: node 3, dropped and re-added on a lossy network while it saw neither
    // change, owed the managers a full report it did not know of; they waited for
    // their Ask (2 s) and the run ended 1.9 s after the change (fixed: a full
    // report from a manager makes a node owe it one back).
    (910, 8),
    // 2521, 6875 (found by `bench/vopr --seeds 10000`): a view change 0.6 s before
    // the end; manager 11 took node 16's full report, then a handover whose waiting
    // set named node 16 (fresh to the old manager) made bucket 11461 wait for it
    // again, and only the Ask 2 s later would have ended the wait (fixed: a
    // handover does not make a bucket wait for a node whose full report the
    // manager already took in this view).
    (2521, 50),
    (6875, 50),
    // 6304 (on the SMTP stream before d666ccb; it passes on today's stream): after
    // a partition healed, node 14, in the merged view, locked u0 at manager 35, still
    // in its own side's view without 14, while 18, u0's manager in 14's old view
    // (lease running), locked u0 for node 2 (fixed: `open` refuses a session whose
    // process is not in the manager's view).
    (6304, 50),
    // 1504 (on the SMTP stream before d666ccb): manager 11, paused 18.4-40 s, came
    // back in view (9, 9) keeping bucket 11461 with its 18 s map; node 10, which got
    // u67's mail meanwhile under manager 6, owed 11 a full report that 11 did not
    // wait for, and 11 handed the stale map to 6 at the next change (fixed: a full
    // report from a node not taken for fresh makes every managed bucket wait on
    // every member again).
    (1504, 50),
    // 6599: node 3 left view [2, 3, 4] for [1, 3] when a partition healed while 2
    // was paused; 1 had managed u1's bucket alone since the partition, so it saw no
    // manager change and granted u1 to 3, while 2 (lease renewed by 3 on waking)
    // granted u1 to 4 in the old view, which still counted 3 (fixed: a node keeps
    // its own sessions off the buckets of managers it left behind, for the lock
    // grace: `SoftState::may_lock_here`).
    (6599, 50),
];

#[test]
fn vopr_regression_seeds() {
    for &(seed, nodes_max) in REGRESSION_SEEDS {
        let o = sim::vopr::run_seed(seed, nodes_max).expect("runs");
        assert!(
            o.report.violations.is_empty(),
            "seed {seed}: {:?}",
            o.report.violations
        );
    }
}
