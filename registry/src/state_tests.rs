//! The registry state's own rules: domains, aliases, quotas, and reading format 1.

use storage::{Store, StoreConfig};

use super::*;

fn open() -> (tempfile::TempDir, Store, RegistryState) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let state = RegistryState::new(store.kv("registry").unwrap());
    state.migrate().unwrap();
    (dir, store, state)
}

fn add_user(address: &str) -> RegistryCommand {
    RegistryCommand::AddUser {
        address: address.into(),
        password_hash: "h".into(),
    }
}

fn add_domain(domain: &str, bytes: Limit, messages: Limit) -> RegistryCommand {
    RegistryCommand::AddDomain {
        domain: domain.into(),
        quota: Quota { bytes, messages },
    }
}

#[test]
fn format_1_entries_are_read_as_they_are() {
    // What the users-only registry wrote: postcard user records, empty domain values,
    // no version key.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let tree = store.kv("registry").unwrap();
    let hash = UserRecord {
        password_hash: "$argon2id$old".into(),
    };
    tree.apply(vec![
        (
            b"u/alice@old.test".to_vec(),
            Some(postcard::to_allocvec(&hash).unwrap()),
        ),
        (b"d/old.test".to_vec(), Some(Vec::new())),
        (b"d/-bad-.test".to_vec(), Some(Vec::new())),
    ])
    .unwrap();
    let state = RegistryState::new(tree);
    assert_eq!(state.version().unwrap(), 1);
    state.migrate().unwrap();
    assert_eq!(state.version().unwrap(), STATE_VERSION);
    assert_eq!(state.users().unwrap(), vec!["alice@old.test"]);
    assert_eq!(state.user("alice@old.test").unwrap(), Some(hash));
    assert_eq!(state.domains().unwrap(), vec!["-bad-.test", "old.test"]);
    assert_eq!(
        state.domain("old.test").unwrap(),
        Some(DomainRecord::default())
    );
    assert_eq!(
        state.effective_quota("alice@old.test").unwrap(),
        Effective::default()
    );
    // And the old domains can be managed now: the implicit one left behind is removable.
    assert_eq!(
        state
            .apply(&RegistryCommand::DelDomain {
                domain: "-bad-.test".into(),
                force: false
            })
            .unwrap(),
        RegistryOutcome::Done
    );
    assert_eq!(
        state
            .apply(&RegistryCommand::SetDomainQuota {
                domain: "old.test".into(),
                bytes: Some(Limit::Max(1000)),
                messages: None,
            })
            .unwrap(),
        RegistryOutcome::Done
    );
    assert_eq!(
        state.effective_quota("alice@old.test").unwrap().bytes_max,
        Some(1000)
    );
}

#[test]
fn format_1_log_entries_decode() {
    // The Raft log stores entries as JSON and ships them postcard-encoded: both encodings
    // of a format-1 command still decode to the same command.
    let json = r#"{"AddUser":{"address":"a@x.test","password_hash":"h"}}"#;
    let cmd: RegistryCommand = serde_json::from_str(json).unwrap();
    assert_eq!(cmd, add_user("a@x.test"));
    // Postcard: variant index 0, then the two strings, as format 1 wrote it.
    let mut old = vec![0u8, 8];
    old.extend_from_slice(b"a@x.test");
    old.extend_from_slice(&[1, b'h']);
    assert_eq!(postcard::from_bytes::<RegistryCommand>(&old).unwrap(), cmd);
    assert_eq!(postcard::to_allocvec(&cmd).unwrap(), old);
    let del: RegistryCommand =
        serde_json::from_str(r#"{"DelUser":{"address":"a@x.test"}}"#).unwrap();
    assert_eq!(
        del,
        RegistryCommand::DelUser {
            address: "a@x.test".into()
        }
    );
}

#[test]
fn a_newer_format_is_refused() {
    let (_dir, store, _state) = open();
    let tree = store.kv("registry").unwrap();
    tree.insert(b"meta/version", &9u32.to_be_bytes()).unwrap();
    let state = RegistryState::new(tree);
    let err = state.migrate().unwrap_err().to_string();
    assert!(err.contains("format 9 is newer"), "{err}");
}

#[test]
fn importing_a_format_1_snapshot_upgrades_it() {
    let (_dir, _store, state) = open();
    let hash = postcard::to_allocvec(&UserRecord {
        password_hash: "h".into(),
    })
    .unwrap();
    state
        .import(vec![
            (b"d/x.test".to_vec(), Vec::new()),
            (b"u/a@x.test".to_vec(), hash),
        ])
        .unwrap();
    assert_eq!(state.version().unwrap(), STATE_VERSION);
    assert_eq!(state.users().unwrap(), vec!["a@x.test"]);
    assert!(state.is_local_domain("x.test").unwrap());
}

#[test]
fn domain_del_is_refused_while_in_use_unless_forced() {
    let (_dir, _store, state) = open();
    assert_eq!(
        state
            .apply(&add_domain("x.test", Limit::Default, Limit::Default))
            .unwrap(),
        RegistryOutcome::Done
    );
    assert_eq!(
        state
            .apply(&add_domain("x.test", Limit::Default, Limit::Default))
            .unwrap(),
        RegistryOutcome::DomainExists
    );
    state.apply(&add_user("a@x.test")).unwrap();
    state.apply(&add_user("b@y.test")).unwrap();
    state
        .apply(&RegistryCommand::AddAlias {
            source: "@x.test".into(),
            targets: vec!["a@x.test".into()],
        })
        .unwrap();
    let del = |force| RegistryCommand::DelDomain {
        domain: "x.test".into(),
        force,
    };
    assert_eq!(
        state.apply(&del(false)).unwrap(),
        RegistryOutcome::DomainInUse {
            users: 1,
            aliases: 1
        }
    );
    assert!(state.is_local_domain("x.test").unwrap());
    assert_eq!(
        state.apply(&del(true)).unwrap(),
        RegistryOutcome::DomainRemoved {
            users: 1,
            aliases: 1
        }
    );
    assert!(!state.is_local_domain("x.test").unwrap());
    assert_eq!(state.users().unwrap(), vec!["b@y.test"]);
    assert!(state.aliases().unwrap().is_empty());
    // Replayed: the same state, an outcome that says so.
    assert_eq!(
        state.apply(&del(true)).unwrap(),
        RegistryOutcome::NoSuchDomain
    );
}

#[test]
fn add_user_keeps_an_existing_domain_record() {
    let (_dir, _store, state) = open();
    state
        .apply(&add_domain("x.test", Limit::Max(500), Limit::Max(3)))
        .unwrap();
    state.apply(&add_user("a@x.test")).unwrap();
    assert_eq!(
        state.effective_quota("a@x.test").unwrap(),
        Effective {
            bytes_max: Some(500),
            messages_max: Some(3)
        }
    );
}

#[test]
fn quotas_follow_the_domain_unless_set() {
    let (_dir, _store, state) = open();
    state
        .apply(&add_domain("x.test", Limit::Max(500), Limit::Default))
        .unwrap();
    state
        .apply(&RegistryCommand::AddAccount {
            address: "a@x.test".into(),
            password_hash: "h".into(),
            quota: Quota {
                bytes: Limit::Default,
                messages: Limit::Max(2),
            },
        })
        .unwrap();
    assert_eq!(
        state.effective_quota("a@x.test").unwrap(),
        Effective {
            bytes_max: Some(500),
            messages_max: Some(2)
        }
    );
    state
        .apply(&RegistryCommand::SetUserQuota {
            address: "a@x.test".into(),
            bytes: Some(Limit::Unlimited),
            messages: None,
        })
        .unwrap();
    assert_eq!(
        state.effective_quota("a@x.test").unwrap(),
        Effective {
            bytes_max: None,
            messages_max: Some(2)
        }
    );
    assert_eq!(
        state
            .apply(&RegistryCommand::SetUserQuota {
                address: "nobody@x.test".into(),
                bytes: None,
                messages: None,
            })
            .unwrap(),
        RegistryOutcome::NoSuchUser
    );
    // Deleting the account drops its quota: a new account of that name starts afresh.
    state
        .apply(&RegistryCommand::DelUser {
            address: "a@x.test".into(),
        })
        .unwrap();
    state.apply(&add_user("a@x.test")).unwrap();
    assert_eq!(
        state.effective_quota("a@x.test").unwrap().messages_max,
        None
    );
}

#[test]
fn aliases_and_accounts_do_not_share_an_address() {
    let (_dir, _store, state) = open();
    state.apply(&add_user("a@x.test")).unwrap();
    let alias = |source: &str| RegistryCommand::AddAlias {
        source: source.into(),
        targets: vec!["a@x.test".into()],
    };
    assert_eq!(
        state.apply(&alias("a@x.test")).unwrap(),
        RegistryOutcome::AddressTaken
    );
    assert_eq!(
        state.apply(&alias("s@nowhere.test")).unwrap(),
        RegistryOutcome::NoSuchDomain
    );
    assert_eq!(
        state.apply(&alias("s@x.test")).unwrap(),
        RegistryOutcome::Done
    );
    assert_eq!(
        state.apply(&alias("s@x.test")).unwrap(),
        RegistryOutcome::AliasExists
    );
    assert_eq!(
        state.apply(&add_user("s@x.test")).unwrap(),
        RegistryOutcome::AddressTaken
    );
    assert_eq!(state.aliases_of("x.test").unwrap(), vec!["s@x.test"]);
    assert_eq!(
        state
            .apply(&RegistryCommand::DelAlias {
                source: "s@x.test".into()
            })
            .unwrap(),
        RegistryOutcome::Done
    );
    assert_eq!(
        state
            .apply(&RegistryCommand::DelAlias {
                source: "s@x.test".into()
            })
            .unwrap(),
        RegistryOutcome::NoSuchAlias
    );
}
