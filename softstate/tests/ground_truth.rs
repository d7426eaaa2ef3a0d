//! Seeded property test: after random view changes (deaths, joins, restarts, nodes
//! that miss a view), lossy shuffled delivery, every manager's mail maps equal the
//! ground truth once reconstruction settles.

use std::sync::Arc;

use membership::{Epoch, NodeId, UserMap, bucket_of};
use softstate::place::Rng;
use softstate::sim::{Faults, Sim};
use softstate::{SoftStateConfig, ViewInfo};

const B: u32 = 64;

fn view_of(counter: u64, members: &[(NodeId, u64)]) -> Arc<ViewInfo> {
    let ids: Vec<NodeId> = members.iter().map(|m| m.0).collect();
    Arc::new(ViewInfo::new(
        Epoch {
            counter,
            coordinator: ids[0],
            incarnation: 0,
        },
        members.iter().copied(),
        Arc::new(UserMap::new(&ids, B)),
    ))
}

fn trace(sim: &Sim) {
    if let Ok(user) = std::env::var("GT_USER") {
        let b = bucket_of(&user, B);
        let v = sim.view.as_ref().map(|v| v.map.manager(b));
        eprintln!("  {user} bucket {b} manager {v:?}");
        for (id, n) in sim.nodes() {
            eprintln!("    node {id}: {}", n.describe_bucket(b));
        }
    }
}

fn deliver(sim: &mut Sim, rng: &mut Rng) {
    let Some(view) = sim.view.clone() else {
        return;
    };
    let user = format!("user{}", rng.below(40));
    let b = bucket_of(&user, B);
    let manager = view.map.manager(b);
    let load = |_: NodeId| 0;
    let placed = sim
        .node_mut(manager)
        .and_then(|m| m.place(&user, 1, 2, &load).ok());
    let Some(p) = placed else {
        return; // NotManager / no view: the sender would retry
    };
    for h in p.targets {
        sim.fragments
            .entry(h)
            .or_default()
            .insert((b, user.clone()));
        let now = sim.now;
        if let Some(node) = sim.node_mut(h) {
            node.stored(now, p.epoch, [(b, user.clone())]);
        }
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut sim = Sim::new(seed, SoftStateConfig::default());
    sim.faults = Faults {
        refuse_per_mille: 100,
        shuffle: true,
    };
    let mut members: Vec<(NodeId, u64)> = (1..=4).map(|i| (i, 1)).collect();
    let mut next_id = 5;
    let mut counter = 1;
    for &(id, inc) in &members {
        sim.start(id, inc);
        for k in 0..6 {
            let user = format!("user{}", rng.below(30) + k);
            sim.fragments
                .entry(id)
                .or_default()
                .insert((bucket_of(&user, B), user));
        }
    }
    sim.install(view_of(counter, &members), None);
    sim.run(10_000, |_| {});
    sim.check().map_err(|e| format!("initial: {e}"))?;
    for _ in 0..8 {
        counter += 1;
        match rng.below(4) {
            0 if members.len() > 2 => {
                let i = rng.below(members.len());
                let (gone, _) = members.remove(i);
                sim.stop(gone);
            }
            1 => {
                sim.start(next_id, 1);
                let user = format!("user{}", rng.below(30));
                sim.fragments
                    .entry(next_id)
                    .or_default()
                    .insert((bucket_of(&user, B), user));
                // A newcomer first lives in its own one-node view.
                let alone = view_of(0, &[(next_id, 1)]);
                sim.install(alone, Some(&[next_id]));
                members.push((next_id, 1));
                next_id += 1;
            }
            2 => {
                let i = rng.below(members.len());
                let (id, inc) = members[i];
                sim.start(id, inc + 1);
                members[i] = (id, inc + 1);
            }
            _ => {}
        }
        members.sort();
        let v = view_of(counter, &members);
        if std::env::var("GT_TRACE").is_ok() {
            eprintln!("epoch {counter}: members {members:?}");
        }
        // Sometimes one node misses this view (it will see the next one).
        let skip = (rng.below(3) == 0).then(|| members[rng.below(members.len())].0);
        let on: Vec<NodeId> = members
            .iter()
            .map(|m| m.0)
            .filter(|id| Some(*id) != skip)
            .collect();
        if std::env::var("GT_TRACE").is_ok() {
            eprintln!("  skip {skip:?}");
        }
        sim.install(v, Some(&on));
        // Deliveries go on: a manager places (recording the holder first, as the
        // node does), the store lands later, and the holder announces it if its view
        // moved on meanwhile.
        for _ in 0..rng.below(4) {
            deliver(&mut sim, &mut rng);
            sim.run(rng.below(50) as u64, |_| {});
        }
        // Let part of the reconstruction happen before the next change.
        sim.run(rng.below(300) as u64, |_| {});
        trace(&sim);
    }
    counter += 1;
    sim.install(view_of(counter, &members), None);
    sim.run(60_000, |_| {});
    trace(&sim);
    if std::env::var("GT_TRACE").is_ok() {
        for (id, n) in sim.nodes() {
            for b in n.rebuilding() {
                eprintln!("node {id} rebuilding {b}");
                for (j, m) in sim.nodes() {
                    eprintln!("    node {j}: {}", m.describe_bucket(b));
                }
            }
        }
    }
    sim.check()
}

#[test]
fn maps_equal_ground_truth_after_random_view_changes() {
    // GT_SEED=n replays one seed; GT_SEEDS=n runs n seeds (default 300).
    let count: u64 = std::env::var("GT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seeds = match std::env::var("GT_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(x) => x..x + 1,
        None => 0..count,
    };
    for seed in seeds {
        if let Err(e) = run_seed(seed) {
            panic!("seed {seed}: {e}");
        }
    }
}
