//! Soft-state reconstruction and placement cost at N nodes, in process.
//!
//! `cargo run --release -p softstate --example corebench -- 100 1000 10000`
//!
//! Starts N settled machines (100 users per node, each user's mail on two nodes, the
//! default 65,536 buckets) on an instant network, kills one node, then adds a new
//! one, and prints per view change the buckets that changed hands, the reconstruction
//! messages and their bytes (postcard, as the node sends them), CPU seconds, and
//! whether every manager's maps equal the ground truth. Then the placement cost per
//! message at a manager (ns and candidates examined).

use std::collections::BTreeMap;
use std::sync::Arc;

use membership::{DEFAULT_BUCKETS, Epoch, NodeId, UserMap, bucket_of};
use softstate::place::Rng;
use softstate::sim::Sim;
use softstate::{Note, SoftState, SoftStateConfig, Transition, ViewInfo};

const USERS_PER_NODE: u64 = 100;

fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn view_of(counter: u64, members: &[(NodeId, u64)]) -> Arc<ViewInfo> {
    let ids: Vec<NodeId> = members.iter().map(|m| m.0).collect();
    Arc::new(ViewInfo::new(
        Epoch {
            counter,
            coordinator: ids[0],
            incarnation: 0,
        },
        members.iter().copied(),
        Arc::new(UserMap::new(&ids, DEFAULT_BUCKETS)),
    ))
}

#[derive(Default)]
struct Count {
    messages: u64,
    bytes: u64,
    reports: u64,
    asks: u64,
    announces: u64,
    handoffs: u64,
}

fn change(sim: &mut Sim, view: Arc<ViewInfo>, prev: &ViewInfo) -> (Count, usize, f64) {
    let moved = Transition::between(Some(prev), &view).changed_buckets();
    let started = cpu_s();
    sim.install(view, None);
    let mut c = Count::default();
    sim.run(10_000, |t| {
        c.messages += 1;
        c.bytes += postcard::to_allocvec(&t.note).map_or(0, |b| b.len() as u64) + 1;
        match t.note {
            Note::Report(_) => c.reports += 1,
            Note::Ask(_) => c.asks += 1,
            Note::Announce(_) => c.announces += 1,
            Note::Handoff(_) => c.handoffs += 1,
        }
    });
    (c, moved, cpu_s() - started)
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 10_000]
    } else {
        sizes
    };
    println!(
        "| N | change | buckets moved | messages | reports / handoffs / asks | bytes | bytes/member | CPU s | maps = truth |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut placement_rows = Vec::new();
    for n in sizes {
        let mut sim = Sim::new(n, SoftStateConfig::default());
        let mut members: Vec<(NodeId, u64)> = (1..=n).map(|i| (i, 1)).collect();
        let v1 = view_of(1, &members);
        let buckets = v1.buckets();
        let mut maps: BTreeMap<NodeId, Vec<(String, Vec<NodeId>)>> = BTreeMap::new();
        for &(id, inc) in &members {
            sim.start(id, inc);
        }
        for i in 1..=n {
            for k in 0..USERS_PER_NODE {
                let user = format!("u{i}.{k}");
                let b = bucket_of(&user, buckets);
                let other = (i + k * 7) % n + 1;
                let holders = if other == i {
                    vec![i]
                } else {
                    vec![i.min(other), i.max(other)]
                };
                for h in &holders {
                    sim.fragments
                        .entry(*h)
                        .or_default()
                        .insert((b, user.clone()));
                }
                maps.entry(v1.map.manager(b))
                    .or_default()
                    .push((user, holders));
            }
        }
        for &(id, _) in &members {
            if let Some(node) = sim.node_mut(id) {
                node.install_settled(v1.clone(), maps.remove(&id).unwrap_or_default());
            }
        }
        sim.view = Some(v1.clone());
        let check = |sim: &Sim| if sim.check().is_ok() { "yes" } else { "NO" };
        // Kill one.
        let dead = n / 2 + 1;
        members.retain(|m| m.0 != dead);
        sim.stop(dead);
        let v2 = view_of(2, &members);
        let (c, moved, cpu) = change(&mut sim, v2.clone(), &v1);
        let live = members.len() as u64;
        println!(
            "| {n} | remove | {moved} | {} | {} / {} / {} | {} | {} | {cpu:.3} | {} |",
            c.messages,
            c.reports,
            c.handoffs,
            c.asks,
            c.bytes,
            c.bytes / live,
            check(&sim)
        );
        // Add one: a new, empty node that lived alone first.
        let new = n + 1;
        sim.start(new, 1);
        sim.install(view_of(0, &[(new, 1)]), Some(&[new]));
        sim.run(10_000, |_| {});
        members.push((new, 1));
        let v3 = view_of(3, &members);
        let (c, moved, cpu) = change(&mut sim, v3.clone(), &v2);
        let live = members.len() as u64;
        println!(
            "| {n} | add | {moved} | {} | {} / {} / {} | {} | {} | {cpu:.3} | {} |",
            c.messages,
            c.reports,
            c.handoffs,
            c.asks,
            c.bytes,
            c.bytes / live,
            check(&sim)
        );
        placement_rows.push(placement(n, &v3, &mut sim));
    }
    println!();
    println!(
        "| N | ns per placement (affinity / new user) | candidates examined (affinity / new user) |"
    );
    println!("| --- | --- | --- |");
    for row in placement_rows {
        println!("{row}");
    }
}

/// Placement cost at one manager with random loads (spread 2, 2 replicas): 20,000
/// messages of users with mail already (affinity), then 20,000 first messages of
/// users (empty maps: both slots topped up by sampling).
fn placement(n: u64, view: &Arc<ViewInfo>, sim: &mut Sim) -> String {
    let manager = view.ids[view.ids.len() / 3];
    let Some(node) = sim.node_mut(manager) else {
        return format!("| {n} | - | - | - |");
    };
    let mut rng = Rng::new(n);
    let loads: Vec<u32> = (0..=view.ids.len() as u64 + 2)
        .map(|_| rng.below(50) as u32)
        .collect();
    let load = |id: NodeId| loads.get(id as usize).copied().unwrap_or(0);
    let users: Vec<String> = node.snapshot().into_iter().map(|(u, _)| u).collect();
    let rounds = 20_000;
    let measure = |node: &mut SoftState, fresh: bool| {
        let before = node.stats().clone();
        let mut elapsed = std::time::Duration::ZERO;
        let mut done = 0;
        while done < rounds {
            if fresh {
                // Forget the maps (not timed): every placement starts from nothing.
                node.install_settled(view.clone(), []);
            }
            let started = std::time::Instant::now();
            for user in users.iter().take(rounds - done) {
                std::hint::black_box(node.place(user, 2, 2, &load).ok());
                done += 1;
            }
            elapsed += started.elapsed();
        }
        let after = node.stats();
        let placed = after.placements - before.placements;
        let examined =
            (after.candidates_examined - before.candidates_examined) as f64 / placed.max(1) as f64;
        (elapsed.as_nanos() as f64 / placed.max(1) as f64, examined)
    };
    if users.is_empty() {
        return format!("| {n} | - | - | - |");
    }
    let (ns_a, ex_a) = measure(node, false);
    let (ns_f, ex_f) = measure(node, true);
    format!("| {n} | {ns_a:.0} / {ns_f:.0} | {ex_a:.1} / {ex_f:.1} |")
}
