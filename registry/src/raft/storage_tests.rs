//! Storage tests: openraft's own conformance suite over our log store and state
//! machine, and the restart and crash-recovery cases the suite does not cover.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder,
    Vote,
};
use storage::{Store, StoreConfig};

use super::log_store::LogStore;
use super::state_machine::{StateMachine, write_snapshot};
use super::types::{Entry, LogId, RaftStorageError, StoredMembership};
use crate::state::{RegistryCommand, RegistryOutcome, RegistryState};

struct Opened {
    store: Store,
    log: LogStore,
    machine: StateMachine,
    state: RegistryState,
}

async fn open(dir: &Path) -> Opened {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let state = RegistryState::new(store.kv("registry").unwrap());
    let meta = store.kv("raft_meta").unwrap();
    let log = LogStore::new(store.kv("raft_log").unwrap(), meta.clone());
    let machine = StateMachine::open(state.clone(), meta).await.unwrap();
    Opened {
        store,
        log,
        machine,
        state,
    }
}

async fn close(opened: Opened) {
    opened.store.close().await.unwrap();
    drop(opened);
}

struct Builder;

impl StoreBuilder<super::types::TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(dir.path()).await;
        Ok((dir, opened.log, opened.machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<super::types::TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn add_user(address: &str, hash: &str) -> EntryPayload<super::types::TypeConfig> {
    EntryPayload::Normal(RegistryCommand::AddUser {
        address: address.into(),
        password_hash: hash.into(),
    })
}

fn membership(voters: &[u64]) -> Membership<u64, BasicNode> {
    let ids: BTreeSet<u64> = voters.iter().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|id| (*id, BasicNode::new(format!("n{id}"))))
        .collect();
    Membership::new(vec![ids], nodes)
}

#[tokio::test]
async fn log_vote_and_pointers_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = open(dir.path()).await;
        o.log.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        let entries: Vec<Entry> = (0..6)
            .map(|i| entry(3, i, add_user(&format!("u{i}@x.test"), "h")))
            .collect();
        o.log.blocking_append(entries).await.unwrap();
        o.log.save_committed(Some(log_id(3, 4))).await.unwrap();
        o.log.purge(log_id(3, 1)).await.unwrap();
        o.log.truncate(log_id(3, 5)).await.unwrap();
        close(o).await;
    }
    let mut o = open(dir.path()).await;
    assert_eq!(
        o.log.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 1))
    );
    assert_eq!(o.log.read_committed().await.unwrap(), Some(log_id(3, 4)));
    let state = o.log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 1)));
    assert_eq!(state.last_log_id, Some(log_id(3, 4)));
    let indexes: Vec<u64> = o
        .log
        .try_get_log_entries(0..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![2, 3, 4]);
    let middle = o.log.try_get_log_entries(3..=3).await.unwrap();
    assert_eq!(middle.len(), 1);
    assert_eq!(middle[0].payload, add_user("u3@x.test", "h"));
    // Purging everything leaves the purge point as the last log id.
    o.log.purge(log_id(3, 4)).await.unwrap();
    let state = o.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(3, 4)));
    assert!(o.log.try_get_log_entries(0..).await.unwrap().is_empty());
}

#[tokio::test]
async fn applied_state_and_outcomes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = open(dir.path()).await;
        let outcomes = o
            .machine
            .apply(vec![
                entry(1, 0, EntryPayload::Membership(membership(&[1, 2]))),
                entry(1, 1, EntryPayload::Blank),
                entry(1, 2, add_user("a@x.test", "h1")),
                entry(1, 3, add_user("a@x.test", "h2")),
                entry(
                    1,
                    4,
                    EntryPayload::Normal(RegistryCommand::SetPassword {
                        address: "nobody@x.test".into(),
                        password_hash: "h3".into(),
                    }),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            vec![
                RegistryOutcome::Done,
                RegistryOutcome::Done,
                RegistryOutcome::Done,
                RegistryOutcome::UserExists,
                RegistryOutcome::NoSuchUser,
            ]
        );
        close(o).await;
    }
    let mut o = open(dir.path()).await;
    let (applied, members) = o.machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(
        members,
        StoredMembership::new(Some(log_id(1, 0)), membership(&[1, 2]))
    );
    assert_eq!(o.state.users().unwrap(), vec!["a@x.test".to_string()]);
    assert_eq!(
        o.state.user("a@x.test").unwrap().unwrap().password_hash,
        "h1"
    );
    assert!(o.state.user("nobody@x.test").unwrap().is_none());
}

/// Build a snapshot on a fresh state machine holding `users`.
async fn snapshot_with(users: &[&str]) -> (openraft::SnapshotMeta<u64, BasicNode>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path()).await;
    let mut entries = vec![entry(2, 0, EntryPayload::Membership(membership(&[1])))];
    for (i, user) in users.iter().enumerate() {
        entries.push(entry(2, i as u64 + 1, add_user(user, "h")));
    }
    o.machine.apply(entries).await.unwrap();
    let mut builder = o.machine.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(
        snapshot.meta.last_log_id,
        Some(log_id(2, users.len() as u64))
    );
    let current = o.machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    (snapshot.meta, snapshot.snapshot.into_inner())
}

#[tokio::test]
async fn install_snapshot_replaces_state_and_is_kept() {
    let (meta, data) = snapshot_with(&["a@x.test", "b@y.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = open(dir.path()).await;
        o.machine
            .apply(vec![entry(1, 0, add_user("old@z.test", "h"))])
            .await
            .unwrap();
        o.machine
            .install_snapshot(&meta, Box::new(std::io::Cursor::new(data)))
            .await
            .unwrap();
        assert_eq!(o.state.users().unwrap(), vec!["a@x.test", "b@y.test"]);
        assert_eq!(o.state.domains().unwrap(), vec!["x.test", "y.test"]);
        close(o).await;
    }
    let mut o = open(dir.path()).await;
    let (applied, members) = o.machine.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
    assert_eq!(members, meta.last_membership);
    let current = o.machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    assert_eq!(o.state.users().unwrap(), vec!["a@x.test", "b@y.test"]);
}

#[tokio::test]
async fn open_finishes_an_install_cut_short() {
    let (meta, data) = snapshot_with(&["a@x.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    {
        // A crash after the snapshot was saved but before the state was replaced.
        let o = open(dir.path()).await;
        o.state
            .apply(&RegistryCommand::AddUser {
                address: "stale@z.test".into(),
                password_hash: "h".into(),
            })
            .unwrap();
        write_snapshot(&o.store.kv("raft_meta").unwrap(), &meta, &data)
            .await
            .unwrap();
        close(o).await;
    }
    let mut o = open(dir.path()).await;
    assert_eq!(o.machine.applied_state().await.unwrap().0, meta.last_log_id);
    assert_eq!(o.state.users().unwrap(), vec!["a@x.test"]);
}

#[tokio::test]
async fn a_format_1_store_opens_and_takes_new_commands() {
    // What the users-only registry left on disk: a snapshot of format-1 entries (no
    // version key, empty domain values) and log entries in its JSON.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let meta = store.kv("raft_meta").unwrap();
        let user = |hash: &str| {
            postcard::to_allocvec(&crate::state::UserRecord {
                password_hash: hash.into(),
            })
            .unwrap()
        };
        let old_entries: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"d/-bad-.test".to_vec(), Vec::new()),
            (b"d/old.test".to_vec(), Vec::new()),
            (b"u/a@old.test".to_vec(), user("ha")),
            (b"u/x@-bad-.test".to_vec(), user("hx")),
        ];
        let snapshot_meta = openraft::SnapshotMeta {
            last_log_id: Some(log_id(1, 4)),
            last_membership: StoredMembership::new(Some(log_id(1, 0)), membership(&[1])),
            snapshot_id: "1-1-4-old".into(),
        };
        write_snapshot(
            &meta,
            &snapshot_meta,
            &postcard::to_allocvec(&old_entries).unwrap(),
        )
        .await
        .unwrap();
        let log = store.kv("raft_log").unwrap();
        let json = r#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":5},"payload":{"Normal":{"AddUser":{"address":"b@old.test","password_hash":"hb"}}}}"#;
        log.insert(&super::codec::index_key(5), json.as_bytes())
            .unwrap();
        store.close().await.unwrap();
    }
    let mut o = open(dir.path()).await;
    assert_eq!(
        o.machine.applied_state().await.unwrap().0,
        Some(log_id(1, 4))
    );
    assert_eq!(o.state.version().unwrap(), crate::state::STATE_VERSION);
    assert_eq!(o.state.users().unwrap(), vec!["a@old.test", "x@-bad-.test"]);
    let logged = o.log.try_get_log_entries(5..=5).await.unwrap();
    assert_eq!(logged.len(), 1, "a format-1 JSON log entry decodes");
    let outcomes = o
        .machine
        .apply(vec![
            logged[0].clone(),
            entry(
                1,
                6,
                EntryPayload::Normal(RegistryCommand::DelDomain {
                    domain: "old.test".into(),
                    force: false,
                }),
            ),
            entry(
                1,
                7,
                EntryPayload::Normal(RegistryCommand::DelDomain {
                    domain: "-bad-.test".into(),
                    force: true,
                }),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            RegistryOutcome::Done,
            RegistryOutcome::DomainInUse {
                users: 2,
                aliases: 0
            },
            RegistryOutcome::DomainRemoved {
                users: 1,
                aliases: 0
            },
        ]
    );
    assert_eq!(o.state.users().unwrap(), vec!["a@old.test", "b@old.test"]);
    assert_eq!(o.state.domains().unwrap(), vec!["old.test"]);
}
