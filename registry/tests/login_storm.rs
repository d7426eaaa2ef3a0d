//! A storm of failed logins: memory stays bounded by the Argon2 pool, and an unknown
//! user costs as long as a wrong password (one test binary of its own, since it reads
//! the process's peak RSS).

use std::time::{Duration, Instant};

use registry::{ArgonPool, LocalLog, Registry, RegistryError, RegistryState};
use storage::{Store, StoreConfig};

/// Peak resident set of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_storm_keeps_memory_bounded_and_unknown_users_cost_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let state = RegistryState::new(store.kv("registry").unwrap());
    let registry = std::sync::Arc::new(Registry::with_argon(
        state.clone(),
        LocalLog::new(state),
        ArgonPool::new(2, Duration::from_secs(120)),
    ));
    registry
        .add_user("alice@example.test", "right")
        .await
        .unwrap();

    // Timing: the median unknown-user check is within a third of a wrong password's
    // (without the dummy verification it is ~1000 times faster).
    registry.verify("nobody@example.test", "x").await.unwrap();
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..7 {
        let t = Instant::now();
        assert_eq!(
            registry
                .verify("alice@example.test", &format!("no{i}"))
                .await
                .unwrap(),
            None
        );
        wrong.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(
            registry
                .verify(&format!("nobody{i}@example.test"), "no")
                .await
                .unwrap(),
            None
        );
        unknown.push(t.elapsed());
    }
    let (wrong, unknown) = (median(wrong), median(unknown));
    let gap = wrong.abs_diff(unknown);
    assert!(
        gap < wrong / 3,
        "wrong password {wrong:?}, unknown user {unknown:?}"
    );

    // Memory: 100 wrong passwords at once fill at most two 19 MiB buffers (the
    // pool's threads), not 100 (tokio's blocking pool did).
    let before_kib = peak_rss_kib();
    let started = Instant::now();
    let storm: Vec<_> = (0..100)
        .map(|i| {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .verify("alice@example.test", &format!("guess{i}"))
                    .await
            })
        })
        .collect();
    for task in storm {
        assert!(matches!(task.await.unwrap(), Ok(None)));
    }
    let grown_mib = peak_rss_kib().saturating_sub(before_kib) / 1024;
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB in the storm"
    );
    eprintln!(
        "100 wrong passwords: {:?}, peak RSS +{grown_mib} MiB; wrong {wrong:?} unknown {unknown:?}",
        started.elapsed()
    );

    // A pool that stays busy past its wait bound answers "unavailable", not later.
    let state = RegistryState::new(store.kv("registry2").unwrap());
    let impatient = std::sync::Arc::new(Registry::with_argon(
        state.clone(),
        LocalLog::new(state),
        ArgonPool::new(1, Duration::from_millis(1)),
    ));
    let checks: Vec<_> = (0..4)
        .map(|_| {
            let r = impatient.clone();
            tokio::spawn(async move { r.verify("x@example.test", "y").await })
        })
        .collect();
    let mut busy = 0;
    for c in checks {
        if let Err(RegistryError::Unavailable(_)) = c.await.unwrap() {
            busy += 1;
        }
    }
    assert!(busy >= 1, "no check was refused as busy");
}
