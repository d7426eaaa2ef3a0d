//! Whole runs of the simulator: determinism, accounting, faults, policies.

use sim::{Fault, Policy, SimConfig, SizeDist};

fn small() -> SimConfig {
    SimConfig {
        nodes: 5,
        users: 500,
        rate_msgs_per_s: 500.0,
        duration_s: 20.0,
        seed: 7,
        size: SizeDist::Fixed(2_000),
        ..SimConfig::default()
    }
}

fn run(cfg: &SimConfig) -> sim::Report {
    sim::run(cfg, &mut |_| {}).expect("valid config")
}

/// The JSON without the wall-clock figures.
fn figures(r: &sim::Report) -> String {
    let mut v = serde_json::to_value(r).expect("serialisable");
    for k in ["wall_s", "sim_messages_per_wall_s", "events_per_wall_s"] {
        v.as_object_mut().expect("object").remove(k);
    }
    v.to_string()
}

#[test]
fn the_same_seed_gives_the_same_figures_and_another_seed_does_not() {
    let a = run(&small());
    let b = run(&small());
    assert_eq!(figures(&a), figures(&b));
    let c = run(&SimConfig { seed: 8, ..small() });
    assert_ne!(figures(&a), figures(&c));
}

#[test]
fn every_offered_message_is_acknowledged_or_4xxd_and_none_is_lost() {
    let r = run(&small());
    // Poisson arrivals at 500/s for 20 s: 10,000 ± 3σ (σ = 100).
    assert!(
        (9_700..=10_300).contains(&r.messages_offered),
        "{}",
        r.messages_offered
    );
    assert_eq!(
        r.messages_offered,
        r.messages_acknowledged + r.messages_4xx + r.messages_in_flight_at_end
    );
    assert_eq!(r.messages_4xx, 0, "an idle healthy cluster refuses nothing");
    assert_eq!(r.copies_stored, 2 * r.messages_acknowledged);
    assert_eq!(r.messages_lost, 0);
    assert!(r.pop_sessions > 0 && r.messages_retrieved > 0);
    // Light load: a delivery is a few network hops plus one fsync.
    assert!(r.smtp.p50_ms > 2.0 && r.smtp.p50_ms < 10.0, "{:?}", r.smtp);
}

#[test]
fn a_killed_node_costs_some_4xx_but_no_acknowledged_message() {
    let cfg = SimConfig {
        faults: vec![
            Fault::parse("kill 3 at 5s").expect("fault"),
            Fault::parse("restart 3 at 12s").expect("fault"),
        ],
        ..small()
    };
    let r = run(&cfg);
    assert_eq!(
        r.messages_offered,
        r.messages_acknowledged + r.messages_4xx + r.messages_in_flight_at_end
    );
    assert!(
        r.messages_4xx > 0,
        "deliveries to the dead node must fail until the view changes"
    );
    assert!(
        r.view_installs >= 8,
        "survivors drop it, then take it back: {}",
        r.view_installs
    );
    assert_eq!(r.messages_lost, 0);
    // After the rejoin, mail flows at the offered rate again and maps are complete.
    let last = r.timeline.last().expect("samples");
    assert_eq!(last.live_nodes, 5);
    assert_eq!(last.buckets_rebuilding, 0);
    assert!(last.temp_per_s == 0.0, "{last:?}");
}

#[test]
fn a_node_killed_for_good_leaves_copies_short_but_loses_nothing_with_two_replicas() {
    let cfg = SimConfig {
        faults: vec![Fault::parse("kill 2 at 10s").expect("fault")],
        repair_interval_s: 5.0,
        ..small()
    };
    let r = run(&cfg);
    assert_eq!(r.messages_lost, 0);
    assert!(r.messages_under_replicated > 0);
    // A node merely down still holds its copies: repair waits for its removal.
    assert!(r.repair_passes > 0);
    assert_eq!(r.repair_copies, 0);
    let one_copy = SimConfig { replicas: 1, ..cfg };
    let r1 = run(&one_copy);
    assert!(
        r1.messages_lost > 0,
        "with one copy, a node gone for good loses mail"
    );
}

#[test]
fn repair_re_replicates_the_copies_of_a_removed_node() {
    let cfg = SimConfig {
        faults: vec![
            Fault::parse("kill 2 at 5s").expect("fault"),
            Fault::parse("remove 2 at 8s").expect("fault"),
        ],
        repair_interval_s: 10.0,
        ..small()
    };
    let r = run(&cfg);
    assert_eq!(r.messages_lost, 0);
    assert_eq!(r.repair_passes, 2);
    assert!(r.repair_copies > 0, "{r:?}");
    // At the pass at 10 s node 2's copies are younger than the copy minimum age
    // (15 s); the pass at 20 s copies them all.
    let at = |t: f64| {
        r.timeline
            .iter()
            .find(|s| (s.t_s - t).abs() < 1e-9)
            .expect("a sample")
    };
    assert!(at(15.0).under_replicated > 0, "{:?}", at(15.0));
    assert_eq!(r.messages_under_replicated, 0);
    // A removed node does not come back.
    let back = SimConfig {
        faults: vec![
            Fault::parse("remove 2 at 5s").expect("fault"),
            Fault::parse("restart 2 at 8s").expect("fault"),
        ],
        ..cfg
    };
    let r = run(&back);
    assert_eq!(r.timeline.last().expect("samples").live_nodes, 4);
}

#[test]
fn a_slow_node_gets_less_new_mail_under_porcupine_than_under_random() {
    let base = SimConfig {
        nodes: 6,
        rate_msgs_per_s: 3_000.0,
        pop_per_msg: 0.0,
        spread: 4,
        faults: vec![Fault::parse("slow 1 disk 8 at 0s").expect("fault")],
        ..small()
    };
    let share = |policy: Policy| {
        let r = run(&SimConfig {
            policy,
            ..base.clone()
        });
        let total: u64 = r.copies_per_node.iter().sum();
        r.copies_per_node[0] as f64 / total as f64
    };
    let porcupine = share(Policy::Porcupine);
    let random = share(Policy::Random);
    assert!(
        porcupine < random * 0.8,
        "slow node's share: porcupine {porcupine:.3}, random {random:.3}"
    );
}

/// Three nodes offered far more than they can take, SMTP only.
fn three_saturated() -> SimConfig {
    SimConfig {
        nodes: 3,
        rate_msgs_per_s: 40_000.0,
        duration_s: 3.0,
        pop_per_msg: 0.0,
        ..small()
    }
}

#[test]
fn nodes_sharing_one_machine_share_its_cores() {
    let base = three_saturated();
    let own = run(&base);
    let mut shared = base.clone();
    shared.model.machine_cores = 2;
    let one_machine = run(&shared);
    // Each node with 2 cores of its own vs 3 nodes on 2 cores: a third of the work.
    let ratio = one_machine.messages_acknowledged as f64 / own.messages_acknowledged as f64;
    assert!((0.28..0.40).contains(&ratio), "{ratio}");
    // A serial writer cost bounds one disk's writes per second.
    let mut writer = base;
    writer.model.write_us = 1_000.0;
    let slow = run(&writer);
    assert!(
        slow.throughput_msgs_per_s < 3.0 * 1_000.0 / 2.0 * 1.1,
        "{}",
        slow.throughput_msgs_per_s
    );
    assert!(
        slow.messages_4xx > 0,
        "deliveries stuck behind the writer time out"
    );
    // One disk for the machine: the three nodes' writes share one writer.
    let mut one_disk = writer.clone();
    one_disk.model.machine_disk = true;
    let disk = run(&one_disk);
    assert!(
        disk.throughput_msgs_per_s < 1_000.0 / 2.0 * 1.1,
        "{}",
        disk.throughput_msgs_per_s
    );
    assert!(disk.throughput_msgs_per_s > 0.3 * slow.throughput_msgs_per_s);
}

#[test]
fn calls_between_nodes_cost_cpu_at_both_ends() {
    let base = three_saturated();
    let free = run(&base);
    let mut costly = base.clone();
    costly.model.rpc_cpu_us = 200.0;
    let r = run(&costly);
    // 250 + 20 + 2 x 60 = 390 us a message without; with: 2/3 of 3 calls remote,
    // two ends of 200 us each: +800 us. About a third of the throughput.
    let ratio = r.throughput_msgs_per_s / free.throughput_msgs_per_s;
    assert!((0.25..0.45).contains(&ratio), "{ratio}");
    // One node makes no calls: nothing changes.
    let one = SimConfig { nodes: 1, ..base };
    let mut one_costly = one.clone();
    one_costly.model.rpc_cpu_us = 200.0;
    assert_eq!(
        run(&one).messages_acknowledged,
        run(&one_costly).messages_acknowledged
    );
}

#[test]
fn a_closed_loop_keeps_its_sessions_busy_and_no_more() {
    let base = SimConfig {
        nodes: 1,
        sessions: 4,
        duration_s: 2.0,
        pop_per_msg: 0.0,
        ..small()
    };
    let r = run(&base);
    // Four clients, one message each in flight: throughput x latency = sessions
    // (Little's law; the median stands in for the mean of near-equal latencies).
    let in_flight = r.throughput_msgs_per_s * r.smtp.p50_ms / 1e3;
    assert!((3.0..5.0).contains(&in_flight), "{in_flight}");
    assert_eq!(r.messages_4xx, 0);
    // Twice the sessions share the group commits: more messages, not twice the latency.
    let more = run(&SimConfig {
        sessions: 8,
        ..base
    });
    assert!(more.throughput_msgs_per_s > 1.3 * r.throughput_msgs_per_s);
}
