//! Whole-cluster scenarios in virtual time: join, kill, restart, pause,
//! freeze, partition, forget. Every scenario runs for several seeds and
//! cluster sizes; a failure names its seed so it can be replayed with
//! `MEMBERSHIP_SEED=<seed> cargo test -p membership --test cluster`.
//! `MEMBERSHIP_SEEDS=<count>` runs more seeds; see `net()` for a harsher network.

use std::collections::BTreeSet;

use membership::sim::{Cluster, NetConfig, addr};
use membership::{MembershipConfig, Millis, NodeId};

/// Virtual time allowed for every convergence the brief asks for.
const CONVERGE_MS_MAX: u64 = 10_000;
/// How long a pause, freeze or partition lasts.
const OUTAGE_MS: u64 = 10_000;
/// Quiet time after convergence during which no view may change.
const STABLE_MS: u64 = 5_000;
/// Cluster sizes the brief names; `MEMBERSHIP_SIZES=50,200` tries others.
fn sizes() -> Vec<u64> {
    match std::env::var("MEMBERSHIP_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => vec![3, 5, 20],
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("MEMBERSHIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("MEMBERSHIP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8u64);
    (0..count).collect()
}

/// The simulated network; `MEMBERSHIP_DROP_PER_MILLE` and
/// `MEMBERSHIP_DELAY_MS_MAX` make it harsher for exploratory runs.
fn net() -> NetConfig {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let mut net = NetConfig::default();
    if let Some(drop) = env("MEMBERSHIP_DROP_PER_MILLE") {
        net.drop_per_mille = drop as u32;
    }
    if let Some(delay) = env("MEMBERSHIP_DELAY_MS_MAX") {
        net.delay_ms_max = delay.max(net.delay_ms_min);
    }
    net
}

/// Runs `scenario` for every seed and size; fails listing every failing seed.
fn for_each_seed(name: &str, scenario: impl Fn(&mut Cluster, u64) -> Result<(), String>) {
    let mut failures = Vec::new();
    for n in sizes() {
        for seed in seeds() {
            // Different sizes draw different randomness from the same seed list.
            let mut cluster = Cluster::new(seed * 1_000 + n, net(), MembershipConfig::default());
            let outcome = scenario(&mut cluster, n).and_then(|()| {
                if cluster.violations().is_empty() {
                    Ok(())
                } else {
                    Err(format!("safety: {:?}", cluster.violations()))
                }
            });
            if let Err(err) = outcome {
                failures.push(format!(
                    "{name}: seed={} (MEMBERSHIP_SEED={seed}) n={n}: {err}\n  views: {}",
                    cluster.seed,
                    cluster.describe()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn ids(n: u64) -> BTreeSet<NodeId> {
    (1..=n).collect()
}

/// Waits until `expected` agree on one view with exactly them as members.
fn converge(cluster: &mut Cluster, expected: &BTreeSet<NodeId>, what: &str) -> Result<u64, String> {
    let start = cluster.now();
    let limit = start.plus_ms(CONVERGE_MS_MAX);
    match cluster.run_until(limit, |c| c.agreement(expected).is_ok()) {
        Some(at) => Ok(at.since_ms(start)),
        None => Err(format!(
            "{what}: no agreement within {CONVERGE_MS_MAX} ms: {}",
            cluster.agreement(expected).err().unwrap_or_default()
        )),
    }
}

/// Runs a while and checks nobody changed view: the protocol is quiet when
/// nothing happens.
fn stays_stable(
    cluster: &mut Cluster,
    expected: &BTreeSet<NodeId>,
    what: &str,
) -> Result<(), String> {
    let before: Vec<usize> = expected
        .iter()
        .map(|id| cluster.views_of(*id).len())
        .collect();
    cluster.run_for(STABLE_MS);
    cluster
        .agreement(expected)
        .map_err(|e| format!("{what}, after quiet period: {e}"))?;
    let after: Vec<usize> = expected
        .iter()
        .map(|id| cluster.views_of(*id).len())
        .collect();
    if before != after {
        return Err(format!(
            "{what}: views changed while nothing happened: {before:?} -> {after:?}"
        ));
    }
    Ok(())
}

/// Starts `n` nodes a little apart; seeds are either every address or just
/// node 1 and one random other (chosen by the seed), then waits for one view.
fn bootstrap(cluster: &mut Cluster, n: u64) -> Result<(), String> {
    let everyone = cluster.random_below(2) == 0;
    for id in 1..=n {
        let seeds: Vec<String> = if everyone {
            (1..=n).map(addr).collect()
        } else {
            let other = 1 + cluster.random_below(n);
            vec![addr(1), addr(other)]
        };
        cluster.start(id, seeds);
        let gap_ms = cluster.random_below(50);
        cluster.run_for(gap_ms);
    }
    converge(cluster, &ids(n), "initial join")?;
    stays_stable(cluster, &ids(n), "initial join")
}

#[test]
fn initial_join_converges_and_stays_quiet() {
    for_each_seed("join", bootstrap);
}

#[test]
fn kill_then_restart() {
    for_each_seed("kill/restart", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        cluster.kill(victim);
        let mut survivors = ids(n);
        survivors.remove(&victim);
        converge(cluster, &survivors, "after kill")?;
        stays_stable(cluster, &survivors, "after kill")?;

        // Same id, new process; seeds point at one survivor.
        let seed_node = *survivors.iter().next().ok_or("no survivor")?;
        cluster.start(victim, vec![addr(seed_node)]);
        cluster.note(&format!("restarted {victim}"));
        converge(cluster, &ids(n), "after restart")?;
        cluster.note("converged");
        stays_stable(cluster, &ids(n), "after restart")
    });
}

#[test]
fn quick_restart_before_detection_rejoins() {
    // The node comes back (new incarnation) before anyone suspected it.
    for_each_seed("quick restart", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        cluster.kill(victim);
        cluster.run_for(300);
        cluster.start(victim, Vec::new());
        cluster.note(&format!("restarted {victim}"));
        converge(cluster, &ids(n), "after quick restart")?;
        cluster.note("converged");
        stays_stable(cluster, &ids(n), "after quick restart")
    });
}

#[test]
fn restart_without_a_new_incarnation_still_rejoins() {
    // A driver that forgets to pass its start time reuses the incarnation;
    // rejoining must still work, early (before detection) or late.
    for_each_seed("same incarnation", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        let incarnation = cluster
            .machine(victim)
            .ok_or("victim not running")?
            .me()
            .incarnation;
        let early = cluster.random_below(2) == 0;
        cluster.kill(victim);
        cluster.run_for(if early { 300 } else { 6_000 });
        cluster.start_as(victim, incarnation, vec![addr(1 + victim % n)]);
        cluster.note(&format!("restarted {victim} early={early}"));
        converge(cluster, &ids(n), "after restart")?;
        cluster.note("converged");
        stays_stable(cluster, &ids(n), "after restart")
    });
}

#[test]
fn isolated_node_rejoins_after_network_pause() {
    for_each_seed("pause", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        cluster.isolate(victim);
        let mut rest = ids(n);
        rest.remove(&victim);
        let start = cluster.now();
        converge(cluster, &rest, "others during pause")?;
        let elapsed_ms = cluster.now().since_ms(start);
        cluster.run_for(OUTAGE_MS.saturating_sub(elapsed_ms));
        cluster
            .agreement(&rest)
            .map_err(|e| format!("others at end of pause: {e}"))?;
        cluster.reconnect(victim);
        converge(cluster, &ids(n), "after pause")?;
        stays_stable(cluster, &ids(n), "after pause")
    });
}

#[test]
fn frozen_node_rejoins_after_thaw() {
    for_each_seed("freeze", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        cluster.freeze(victim);
        cluster.note(&format!("freeze {victim}"));
        cluster.run_for(OUTAGE_MS);
        let mut rest = ids(n);
        rest.remove(&victim);
        cluster
            .agreement(&rest)
            .map_err(|e| format!("others at end of freeze: {e}"))?;
        cluster.thaw(victim);
        cluster.note(&format!("thaw {victim}"));
        converge(cluster, &ids(n), "after thaw")?;
        cluster.note("converged");
        stays_stable(cluster, &ids(n), "after thaw")
    });
}

#[test]
fn partition_halves_then_merge() {
    for_each_seed("partition", |cluster, n| {
        bootstrap(cluster, n)?;
        let all = ids(n);
        // A random half (at least one node on each side).
        let mut side = BTreeSet::new();
        while side.len() < (n / 2) as usize {
            side.insert(1 + cluster.random_below(n));
        }
        let other: BTreeSet<NodeId> = all.difference(&side).copied().collect();
        cluster.partition(&side);
        let start = cluster.now();
        let limit = start.plus_ms(OUTAGE_MS);
        let split = cluster.run_until(limit, |c| {
            c.agreement(&side).is_ok() && c.agreement(&other).is_ok()
        });
        if split.is_none() {
            return Err(format!(
                "halves did not settle: {:?} / {:?}",
                cluster.agreement(&side).err(),
                cluster.agreement(&other).err()
            ));
        }
        cluster.run_until(limit, |_| false);
        cluster.heal();
        converge(cluster, &all, "after heal")?;
        stays_stable(cluster, &all, "after heal")
    });
}

#[test]
fn two_kills_at_once() {
    for_each_seed("double kill", |cluster, n| {
        if n < 5 {
            return Ok(());
        }
        bootstrap(cluster, n)?;
        // Neighbours in the ring: the detector of the second is the first.
        let first = 1 + cluster.random_below(n - 1);
        cluster.kill(first);
        cluster.kill(first + 1);
        let mut survivors = ids(n);
        survivors.remove(&first);
        survivors.remove(&(first + 1));
        converge(cluster, &survivors, "after double kill")?;
        stays_stable(cluster, &survivors, "after double kill")
    });
}

#[test]
fn a_dead_node_costs_the_cluster_a_few_probes_per_interval_not_one_per_member() {
    for_each_seed("dead node probes", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = n;
        cluster.kill(victim);
        let mut survivors = ids(n);
        survivors.remove(&victim);
        converge(cluster, &survivors, "after kill")?;
        let intervals = STABLE_MS / MembershipConfig::default().probe_interval_ms;
        let before = cluster.sent.get("probe").copied().unwrap_or(0);
        cluster.run_for(STABLE_MS);
        let probes = cluster.sent.get("probe").copied().unwrap_or(0) - before;
        // About 2 per interval in all (the members share them); still probed, so
        // it can come back.
        if probes == 0 || probes > 4 * intervals + 4 {
            return Err(format!(
                "{probes} probes of the dead node in {intervals} intervals by {} members",
                n - 1
            ));
        }
        Ok(())
    });
}

#[test]
fn forgotten_node_is_removed_and_not_probed() {
    for_each_seed("forget", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = n;
        cluster.kill(victim);
        let mut survivors = ids(n);
        survivors.remove(&victim);
        converge(cluster, &survivors, "after kill")?;
        for id in &survivors {
            cluster.forget(*id, victim);
        }
        let probes_before = cluster.sent.get("probe").copied().unwrap_or(0);
        cluster.run_for(STABLE_MS);
        let probes_after = cluster.sent.get("probe").copied().unwrap_or(0);
        if probes_after != probes_before {
            return Err(format!(
                "{} probes after forgetting the only outsider",
                probes_after - probes_before
            ));
        }
        for id in &survivors {
            let machine = cluster.machine(*id).ok_or("survivor gone")?;
            if machine.known_nodes().iter().any(|k| k.id == victim) {
                return Err(format!("node {id} still lists the forgotten node"));
            }
        }
        cluster.agreement(&survivors)
    });
}

#[test]
fn forgetting_a_live_member_excludes_it() {
    for_each_seed("forget live", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        // The operator removes it everywhere, then stops it.
        for id in ids(n) {
            if id != victim {
                cluster.forget(id, victim);
            }
        }
        cluster.kill(victim);
        let mut survivors = ids(n);
        survivors.remove(&victim);
        converge(cluster, &survivors, "after forget")?;
        stays_stable(cluster, &survivors, "after forget")
    });
}

#[test]
fn forgetting_a_running_node_on_one_node_only_does_not_flap() {
    for_each_seed("forget on one", |cluster, n| {
        bootstrap(cluster, n)?;
        let victim = 1 + cluster.random_below(n);
        let operator = 1 + victim % n;
        cluster.forget(operator, victim);
        cluster.note(&format!("{operator} forgets {victim}"));
        // The operator's node excludes it at once; the others still hear
        // from it and take it back in, after which everything is quiet.
        cluster.run_for(CONVERGE_MS_MAX / 2);
        converge(cluster, &ids(n), "after one-sided forget")?;
        cluster.note("converged");
        stays_stable(cluster, &ids(n), "after one-sided forget")
    });
}

#[test]
fn same_seed_replays_exactly() {
    let run = || {
        let mut cluster = Cluster::new(42, NetConfig::default(), MembershipConfig::default());
        bootstrap(&mut cluster, 5).map(|()| {
            cluster.kill(3);
            cluster.run_for(6_000);
            (cluster.now(), cluster.describe(), cluster.sent.clone())
        })
    };
    let first = run().unwrap();
    let second = run().unwrap();
    assert_eq!(first, second);
}

#[test]
fn convergence_after_a_kill_is_fast_with_defaults() {
    // With default timings and a lossless network, a kill is detected after
    // at most suspect_after_ms (+ a ping interval) and fixed in one round.
    let net = NetConfig {
        drop_per_mille: 0,
        ..NetConfig::default()
    };
    for seed in seeds() {
        let mut cluster = Cluster::new(seed, net, MembershipConfig::default());
        bootstrap(&mut cluster, 5).unwrap();
        let victim = 1 + cluster.random_below(5);
        cluster.kill(victim);
        let mut survivors = ids(5);
        survivors.remove(&victim);
        let took_ms = converge(&mut cluster, &survivors, "kill").unwrap();
        assert!(took_ms <= 3_500, "seed {seed}: took {took_ms} ms");
        assert!(
            cluster.violations().is_empty(),
            "seed {seed}: {:?}",
            cluster.violations()
        );
    }
    let _ = Millis(0);
}

/// Bytes a view change costs per member, as the node sends it (postcard),
/// pings left out: one kill, then one join, in a cluster of `n` started in
/// agreement, on a lossless network with the default delays.
fn change_bytes_per_member(seed: u64, n: u64) -> Result<(f64, f64), String> {
    use std::cell::Cell;
    use std::rc::Rc;
    let net = NetConfig {
        drop_per_mille: 0,
        ..NetConfig::default()
    };
    let mut cluster = Cluster::new(seed, net, MembershipConfig::default());
    let mut expected = ids(n);
    cluster.start_in_view(&expected, vec![addr(1)]);
    cluster.run_for(1_000);
    let bytes = Rc::new(Cell::new(0u64));
    let sink = bytes.clone();
    cluster.set_observer(move |_, _, msg| {
        if !matches!(msg.kind(), "ping" | "ping_ack") {
            let size = postcard::to_allocvec(msg).map_or(0, |v| v.len() as u64 + 1);
            sink.set(sink.get() + size);
        }
    });
    let victim = n / 2;
    cluster.kill(victim);
    expected.remove(&victim);
    converge(&mut cluster, &expected, "kill")?;
    let kill = bytes.replace(0) as f64 / expected.len() as f64;
    cluster.start(n + 1, vec![addr(1)]);
    expected.insert(n + 1);
    converge(&mut cluster, &expected, "join")?;
    let join = bytes.get() as f64 / expected.len() as f64;
    if !cluster.violations().is_empty() {
        return Err(format!("safety: {:?}", cluster.violations()));
    }
    Ok((kill, join))
}

#[test]
fn a_view_change_costs_o_n_bytes() {
    // Before deltas, a commit carried the whole view to every accepter
    // (O(N²) bytes: ~77 KB per member at 1,000 nodes). Now a member's share
    // stays under 1 KB and flat in N.
    let seed = seeds()[0];
    let (kill_small, join_small) = change_bytes_per_member(seed, 50).unwrap();
    let (kill_big, join_big) = change_bytes_per_member(seed, 800).unwrap();
    for (what, small, big) in [
        ("kill", kill_small, kill_big),
        ("join", join_small, join_big),
    ] {
        assert!(big < 1_024.0, "{what}: {big:.0} bytes per member at 800");
        assert!(
            big < 2.0 * small,
            "{what}: {small:.0} -> {big:.0} bytes per member from 50 to 800 nodes"
        );
    }
}
