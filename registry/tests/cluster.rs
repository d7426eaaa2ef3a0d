//! Registry Raft clusters in one process: nodes on temporary data directories, joined
//! by an in-memory transport (address -> node). Killing a node = shutting its raft
//! down and taking it off the transport; restarting = starting again from its dir.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::{
    RaftLog, RaftOptions, RaftTransport, Registry, RegistryCommand, RegistryError, RegistryLog,
    RegistryOutcome, RegistryState,
};
use storage::{Store, StoreConfig};

/// Address -> running node.
#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<String, Arc<RaftLog>>>,
}

struct MemTransport(Arc<Net>);

impl RaftTransport for MemTransport {
    fn send(
        &self,
        addr: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send {
        let node = self.0.nodes.lock().unwrap().get(addr).cloned();
        let missing = format!("no node listens at {addr}");
        async move {
            match node {
                Some(node) => Ok(node.handle_rpc(&bytes).await),
                None => Err(missing),
            }
        }
    }
}

struct Node {
    id: u64,
    store: Store,
    state: RegistryState,
    log: Arc<RaftLog>,
}

fn addr(id: u64) -> String {
    format!("node-{id}")
}

fn live(ids: &[u64]) -> Vec<(u64, String)> {
    ids.iter().map(|id| (*id, addr(*id))).collect()
}

/// Open the node's store, retrying while a node that was just stopped still holds it.
async fn open_store(dir: &Path) -> Store {
    let started = Instant::now();
    loop {
        match Store::open(dir, StoreConfig::default()) {
            Ok(store) => return store,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store at {} did not reopen: {e}", dir.display()),
        }
    }
}

async fn start(net: &Arc<Net>, id: u64, dir: &Path, options: RaftOptions) -> Node {
    let node = start_isolated(net, id, dir, options).await;
    net.nodes.lock().unwrap().insert(addr(id), node.log.clone());
    node
}

/// Start a node that can send but that nobody can reach.
async fn start_isolated(net: &Arc<Net>, id: u64, dir: &Path, options: RaftOptions) -> Node {
    let store = open_store(dir).await;
    let state = RegistryState::new(store.kv("registry").unwrap());
    let transport = Arc::new(MemTransport(net.clone()));
    let log = RaftLog::start_with_options(id, addr(id), &store, state.clone(), transport, options)
        .await
        .unwrap();
    let log = Arc::new(log);
    Node {
        id,
        store,
        state,
        log,
    }
}

async fn kill(net: &Arc<Net>, node: Node) {
    net.nodes.lock().unwrap().remove(&addr(node.id));
    node.log.shutdown().await;
    node.store.close().await.unwrap();
}

/// Poll `check` until it holds, or fail naming `what`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_user(node: &Node, address: &str) -> bool {
    node.state.user(address).unwrap().is_some()
}

fn add(address: &str) -> RegistryCommand {
    RegistryCommand::AddUser {
        address: address.to_string(),
        password_hash: format!("hash-of-{address}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_forward_writes_fail_over_and_catch_up() {
    let net = Arc::new(Net::default());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(&net, 1, dirs[0].path(), RaftOptions::default()).await;
    let n2 = start(&net, 2, dirs[1].path(), RaftOptions::default()).await;
    let n3 = start(&net, 3, dirs[2].path(), RaftOptions::default()).await;

    n1.log.bootstrap().await.unwrap();
    assert_eq!(n1.log.status().leader_id, Some(1));
    n1.log.sync_members(live(&[1, 2, 3])).await;
    eventually("1, 2 and 3 are voters", || {
        let s = n1.log.status();
        s.voter_ids == vec![1, 2, 3] && s.learner_ids.is_empty()
    })
    .await;
    eventually("the followers know the leader", || {
        n2.log.status().leader_id == Some(1) && n3.log.status().leader_id == Some(1)
    })
    .await;

    // A write through a follower is forwarded to the leader and lands everywhere.
    let reg2 = Registry::new(n2.state.clone(), n2.log.clone());
    assert_eq!(
        reg2.add_user("Alice@Example.TEST", "pw1").await.unwrap(),
        "alice@example.test"
    );
    eventually("alice is on every replica", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|n| has_user(n, "alice@example.test"))
    })
    .await;
    let reg3 = Registry::new(n3.state.clone(), n3.log.clone());
    assert!(matches!(
        reg3.add_user("alice@example.test", "other").await,
        Err(RegistryError::UserExists(_))
    ));
    assert_eq!(
        reg3.verify("alice@example.test", "pw1").await.unwrap(),
        Some("alice@example.test".to_string())
    );
    assert_eq!(
        reg3.verify("alice@example.test", "other").await.unwrap(),
        None
    );

    // Kill the leader: the other two elect a new one and keep taking writes.
    kill(&net, n1).await;
    eventually("2 and 3 agree on a new leader", || {
        let (a, b) = (n2.log.status().leader_id, n3.log.status().leader_id);
        a.is_some() && a != Some(1) && a == b
    })
    .await;
    assert_eq!(
        n3.log.submit(add("bob@example.test")).await.unwrap(),
        RegistryOutcome::Done
    );
    eventually("bob is on 2 and 3", || {
        has_user(&n2, "bob@example.test") && has_user(&n3, "bob@example.test")
    })
    .await;

    // Node 1 comes back from its data directory and catches up.
    let n1 = start(&net, 1, dirs[0].path(), RaftOptions::default()).await;
    assert!(
        has_user(&n1, "alice@example.test"),
        "applied state kept across restart"
    );
    eventually("node 1 caught up with bob", || {
        has_user(&n1, "bob@example.test")
    })
    .await;
    let leader = n2.log.status().leader_id;
    eventually("node 1 follows the new leader", || {
        n1.log.status().leader_id == leader
    })
    .await;

    // And writes through it reach everyone.
    let reg1 = Registry::new(n1.state.clone(), n1.log.clone());
    reg1.set_password("bob@example.test", "pw3").await.unwrap();
    let hash_on = |n: &Node| {
        n.state
            .user("bob@example.test")
            .unwrap()
            .map(|u| u.password_hash)
    };
    eventually("the new password hash is everywhere", || {
        let hashes = [hash_on(&n1), hash_on(&n2), hash_on(&n3)];
        hashes.iter().all(|h| h == &hashes[0])
            && hashes[0] != Some("hash-of-bob@example.test".into())
    })
    .await;
    assert_eq!(
        reg2.verify("bob@example.test", "pw3").await.unwrap(),
        Some("bob@example.test".to_string())
    );
    assert!(matches!(
        reg1.del_user("nobody@example.test").await,
        Err(RegistryError::NoSuchUser(_))
    ));
    for node in [n1, n2, n3] {
        node.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_applied_state_and_membership() {
    let net = Arc::new(Net::default());
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(&net, 1, dir.path(), RaftOptions::default()).await;
    n1.log.bootstrap().await.unwrap();
    for user in ["a@x.test", "b@x.test", "c@y.test"] {
        assert_eq!(
            n1.log.submit(add(user)).await.unwrap(),
            RegistryOutcome::Done
        );
    }
    let before = n1.log.status();
    assert_eq!(before.voter_ids, vec![1]);
    let applied_before = before.last_applied_index.unwrap();
    kill(&net, n1).await;

    let n1 = start(&net, 1, dir.path(), RaftOptions::default()).await;
    // Not bootstrapped again: the stored membership makes it a one-voter cluster.
    // (The vote is checked by `restarted_voter_keeps_its_vote`: a lone voter elects
    // itself in term 1 whether or not it remembers voting.)
    eventually("node 1 leads again", || {
        n1.log.status().leader_id == Some(1)
    })
    .await;
    let after = n1.log.status();
    assert_eq!(after.voter_ids, vec![1]);
    assert!(after.last_applied_index.unwrap() >= applied_before);
    assert_eq!(
        n1.state.users().unwrap(),
        vec!["a@x.test", "b@x.test", "c@y.test"]
    );
    assert_eq!(n1.state.domains().unwrap(), vec!["x.test", "y.test"]);

    // It keeps working from there: new entries go after the old ones. (That the log
    // entries themselves survive is checked by the storage tests: openraft would
    // cover a lost log with the applied state here.)
    n1.log.bootstrap().await.unwrap();
    assert_eq!(
        n1.log.submit(add("a@x.test")).await.unwrap(),
        RegistryOutcome::UserExists
    );
    assert_eq!(
        n1.log.submit(add("d@x.test")).await.unwrap(),
        RegistryOutcome::Done
    );
    eventually("the new entries are applied after the old ones", || {
        n1.log
            .status()
            .last_applied_index
            .is_some_and(|i| i >= applied_before + 2)
    })
    .await;
    n1.log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_voter_keeps_its_vote() {
    let net = Arc::new(Net::default());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(&net, 1, dirs[0].path(), RaftOptions::default()).await;
    let n2 = start(&net, 2, dirs[1].path(), RaftOptions::default()).await;
    let n3 = start(&net, 3, dirs[2].path(), RaftOptions::default()).await;
    n1.log.bootstrap().await.unwrap();
    n1.log.sync_members(live(&[1, 2, 3])).await;
    eventually("three voters", || {
        n1.log.status().voter_ids == vec![1, 2, 3]
    })
    .await;
    eventually("2 follows 1", || n2.log.status().leader_id == Some(1)).await;
    kill(&net, n1).await;
    eventually("a new leader after an election", || {
        let s = n2.log.status();
        s.leader_id.is_some_and(|l| l != 1) && s.term >= 2
    })
    .await;
    let term = n2.log.status().term;
    kill(&net, n2).await;
    kill(&net, n3).await;

    // Alone and unreachable, node 2 can only know its term from its stored vote: its
    // own elections would start over from term 1 otherwise (and each would raise the
    // term by one, so a late enough check could see `term` by counting up).
    // Elections are set further away than `eventually` waits (20 s), and the clock
    // starts once raft runs (not before the store opens, which may retry for 10 s):
    // a term seen within the bound below was read from disk, not reached by electing.
    let slow_elections = RaftOptions {
        election_timeout_min_ms: 60_000,
        election_timeout_max_ms: 61_000,
        ..RaftOptions::default()
    };
    let first_election = Duration::from_millis(slow_elections.election_timeout_min_ms);
    let n2 = start_isolated(&net, 2, dirs[1].path(), slow_elections).await;
    let raft_started = Instant::now();
    eventually("node 2 reports its stored term", || {
        n2.log.status().term == term
    })
    .await;
    assert!(
        raft_started.elapsed() < first_election,
        "term seen only after an election could have run"
    );
    assert_eq!(n2.log.status().voter_ids, vec![1, 2, 3]);
    n2.log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_is_a_learner_with_the_data() {
    let net = Arc::new(Net::default());
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(start(&net, i as u64 + 1, dir.path(), RaftOptions::default()).await);
    }
    nodes[0].log.bootstrap().await.unwrap();
    // Unsorted, with a duplicate: the lowest ids get the voter seats.
    nodes[0].log.sync_members(live(&[4, 3, 1, 2, 3])).await;
    eventually("voters 1-3 and learner 4", || {
        let s = nodes[0].log.status();
        s.voter_ids == vec![1, 2, 3] && s.learner_ids == vec![4]
    })
    .await;

    // Only the leader changes membership: a follower's sync_members returns without
    // proposing anything. No sleep to "let it happen": the leader's log shows it.
    // Once the leader has applied all it appended, the next entry after the follower's
    // call must be the write, with no membership entry in between.
    let settled = |n: &Node, at_least: u64| {
        let s = n.log.status();
        s.last_applied_index.is_some_and(|i| i >= at_least)
            && s.last_log_index == s.last_applied_index
    };
    eventually("the leader applied all it appended", || {
        settled(&nodes[0], 0)
    })
    .await;
    let before = nodes[0].log.status().last_applied_index.unwrap();
    nodes[1].log.sync_members(live(&[1, 2, 3, 4, 5])).await;
    assert_eq!(
        nodes[0].log.submit(add("x@a.test")).await.unwrap(),
        RegistryOutcome::Done
    );
    eventually("the leader applied the write", || {
        settled(&nodes[0], before + 1)
    })
    .await;
    let s = nodes[0].log.status();
    assert_eq!(
        s.last_log_index,
        Some(before + 1),
        "only the write was appended after the follower's sync_members: {s:?}"
    );
    assert_eq!((s.voter_ids, s.learner_ids), (vec![1, 2, 3], vec![4]));

    // A learner's write is forwarded too.
    assert_eq!(
        nodes[3].log.submit(add("y@a.test")).await.unwrap(),
        RegistryOutcome::Done
    );
    eventually("the learner holds both users", || {
        has_user(&nodes[3], "x@a.test") && has_user(&nodes[3], "y@a.test")
    })
    .await;
    eventually("the learner knows the membership", || {
        let s = nodes[3].log.status();
        s.voter_ids == vec![1, 2, 3] && s.learner_ids == vec![4] && s.leader_id == Some(1)
    })
    .await;
    for node in nodes {
        node.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_node_catches_up_from_a_snapshot() {
    let net = Arc::new(Net::default());
    let compacting = RaftOptions {
        snapshot_logs_since_last: 5,
        logs_kept_after_snapshot: 0,
        ..RaftOptions::default()
    };
    let dir1 = tempfile::tempdir().unwrap();
    let n1 = start(&net, 1, dir1.path(), compacting).await;
    n1.log.bootstrap().await.unwrap();
    let users: Vec<String> = (0..12).map(|i| format!("user{i:02}@s.test")).collect();
    for user in &users {
        n1.log.submit(add(user)).await.unwrap();
    }
    // Entries up to the snapshot are purged (none kept), so a newcomer needs the snapshot.
    eventually("the leader snapshotted its log", || {
        n1.log.status().snapshot_index.is_some_and(|i| i >= 5)
    })
    .await;

    // This node never builds a snapshot of its own, so having one means it installed it.
    let dir2 = tempfile::tempdir().unwrap();
    let never = RaftOptions {
        snapshot_logs_since_last: 1_000_000,
        ..RaftOptions::default()
    };
    let n2 = start(&net, 2, dir2.path(), never).await;
    n1.log.sync_members(live(&[1, 2])).await;
    eventually("node 2 holds every user", || {
        n2.state.users().unwrap() == users
    })
    .await;
    assert!(
        n2.log.status().snapshot_index.is_some(),
        "node 2 installed a snapshot"
    );
    eventually("node 2 is a voter", || {
        n1.log.status().voter_ids == vec![1, 2]
    })
    .await;
    n1.log.shutdown().await;
    n2.log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_without_a_quorum() {
    let net = Arc::new(Net::default());
    let write_timeout_ms = 1500;
    let quick = RaftOptions {
        write_timeout_ms,
        ..RaftOptions::default()
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(&net, 1, dirs[0].path(), quick.clone()).await;
    let n2 = start(&net, 2, dirs[1].path(), quick.clone()).await;
    let n3 = start(&net, 3, dirs[2].path(), quick).await;
    n1.log.bootstrap().await.unwrap();
    n1.log.sync_members(live(&[1, 2, 3])).await;
    eventually("three voters", || {
        n1.log.status().voter_ids == vec![1, 2, 3]
    })
    .await;
    assert_eq!(
        n1.log.submit(add("ok@q.test")).await.unwrap(),
        RegistryOutcome::Done
    );

    kill(&net, n2).await;
    kill(&net, n3).await;
    // Without a deadline the write would wait for a quorum forever; with one it gives
    // up after write_timeout_ms. The bound checks that it gives up at all: the
    // configured timeout plus a margin for a loaded machine, not a speed test.
    let bound = Duration::from_millis(write_timeout_ms) + Duration::from_secs(10);
    match tokio::time::timeout(bound, n1.log.submit(add("lost@q.test"))).await {
        Ok(Err(RegistryError::Unavailable(_))) => {}
        Ok(other) => panic!("a write without quorum returned {other:?}"),
        Err(_) => panic!("a write without quorum still waited after {bound:?}"),
    }
    assert!(n1.state.user("lost@q.test").unwrap().is_none());
    n1.log.shutdown().await;
}

/// Domains, aliases and quotas are Raft commands like accounts: written through any
/// node, applied alike on every replica (the export, key for key), refusals answered
/// from the leader's apply, and the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_aliases_and_quotas_replicate() {
    let net = Arc::new(Net::default());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(&net, 1, dirs[0].path(), RaftOptions::default()).await;
    let n2 = start(&net, 2, dirs[1].path(), RaftOptions::default()).await;
    let n3 = start(&net, 3, dirs[2].path(), RaftOptions::default()).await;
    n1.log.bootstrap().await.unwrap();
    n1.log.sync_members(live(&[1, 2, 3])).await;
    eventually("the followers know the leader", || {
        n2.log.status().leader_id == Some(1) && n3.log.status().leader_id == Some(1)
    })
    .await;
    let reg3 = Registry::new(n3.state.clone(), n3.log.clone());
    let quota = registry::Quota {
        bytes: registry::Limit::Max(1 << 20),
        messages: registry::Limit::Default,
    };
    reg3.add_domain("Example.TEST", quota).await.unwrap();
    assert!(matches!(
        reg3.add_domain("example.test", quota).await,
        Err(RegistryError::DomainExists(_))
    ));
    assert!(matches!(
        reg3.add_domain("-bad-.test", quota).await,
        Err(RegistryError::InvalidDomain { .. })
    ));
    reg3.add_user("a@example.test", "pw").await.unwrap();
    eventually("a@ is on node 3 (an alias target must exist there)", || {
        has_user(&n3, "a@example.test")
    })
    .await;
    reg3.add_alias("sales@example.test", &["a@example.test".into()])
        .await
        .unwrap();
    reg3.set_user_quota("a@example.test", None, Some(registry::Limit::Max(7)))
        .await
        .unwrap();
    assert!(matches!(
        reg3.del_domain("example.test", false).await,
        Err(RegistryError::DomainInUse {
            users: 1,
            aliases: 1,
            ..
        })
    ));
    eventually("every replica holds the same registry", || {
        let e = [&n1, &n2, &n3].map(|n| n.state.export().unwrap());
        e[0] == e[1] && e[1] == e[2] && n1.state.alias("sales@example.test").unwrap().is_some()
    })
    .await;
    assert_eq!(
        n1.state.effective_quota("a@example.test").unwrap(),
        registry::state::Effective {
            bytes_max: Some(1 << 20),
            messages_max: Some(7)
        }
    );
    assert_eq!(
        reg3.del_domain("example.test", true).await.unwrap(),
        ("example.test".to_string(), 1, 1)
    );
    eventually("the domain is gone everywhere", || {
        [&n1, &n2, &n3].iter().all(|n| {
            !n.state.is_local_domain("example.test").unwrap()
                && n.state.users().unwrap().is_empty()
                && n.state.aliases().unwrap().is_empty()
        })
    })
    .await;
    kill(&net, n2).await;
    let n2 = start(&net, 2, dirs[1].path(), RaftOptions::default()).await;
    assert!(!n2.state.is_local_domain("example.test").unwrap());
    assert_eq!(n2.state.version().unwrap(), registry::state::STATE_VERSION);
    for node in [n1, n2, n3] {
        node.log.shutdown().await;
    }
}
