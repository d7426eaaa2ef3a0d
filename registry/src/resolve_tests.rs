//! Routing rules, one test per rule.

use storage::{Store, StoreConfig};

use super::*;
use crate::state::{RegistryCommand, RegistryOutcome};

struct Fixture {
    _dir: tempfile::TempDir,
    _store: Store,
    state: RegistryState,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let state = RegistryState::new(store.kv("registry").unwrap());
    state.migrate().unwrap();
    for u in ["alice@x.test", "bob@x.test", "carol@y.test", "admin@x.test"] {
        state
            .apply(&RegistryCommand::AddUser {
                address: u.into(),
                password_hash: "h".into(),
            })
            .unwrap();
    }
    Fixture {
        _dir: dir,
        _store: store,
        state,
    }
}

fn alias(state: &RegistryState, source: &str, targets: &[&str]) {
    assert_eq!(
        state
            .apply(&RegistryCommand::AddAlias {
                source: source.into(),
                targets: targets.iter().map(|t| t.to_string()).collect(),
            })
            .unwrap(),
        RegistryOutcome::Done
    );
}

fn config() -> RouteConfig {
    RouteConfig {
        recipient_delimiter: "+".into(),
        postmaster: None,
        hostname: "mx.elsewhere.test".into(),
    }
}

fn boxes(list: &[&str]) -> Route {
    Route::Mailboxes(list.iter().map(|s| s.to_string()).collect())
}

#[test]
fn accounts_unknowns_and_foreign_domains() {
    let f = fixture();
    let c = config();
    assert_eq!(
        route(&f.state, &c, "alice@x.test").unwrap(),
        boxes(&["alice@x.test"])
    );
    assert_eq!(route(&f.state, &c, "zed@x.test").unwrap(), Route::Unknown);
    assert_eq!(
        route(&f.state, &c, "a@other.test").unwrap(),
        Route::NotLocal
    );
}

#[test]
fn subaddresses_go_to_the_base_account() {
    let f = fixture();
    let mut c = config();
    assert_eq!(
        route(&f.state, &c, "alice+news@x.test").unwrap(),
        boxes(&["alice@x.test"])
    );
    assert_eq!(
        route(&f.state, &c, "alice+a+b@x.test").unwrap(),
        boxes(&["alice@x.test"]),
        "split at the first delimiter"
    );
    assert_eq!(route(&f.state, &c, "+news@x.test").unwrap(), Route::Unknown);
    assert_eq!(
        route(&f.state, &c, "zed+news@x.test").unwrap(),
        Route::Unknown
    );
    c.recipient_delimiter = "-".into();
    assert_eq!(
        route(&f.state, &c, "alice-news@x.test").unwrap(),
        boxes(&["alice@x.test"])
    );
    assert_eq!(
        route(&f.state, &c, "alice+news@x.test").unwrap(),
        Route::Unknown
    );
    c.recipient_delimiter = String::new();
    assert_eq!(
        route(&f.state, &c, "alice-news@x.test").unwrap(),
        Route::Unknown
    );
}

#[test]
fn an_account_with_the_delimiter_in_its_name_wins() {
    let f = fixture();
    f.state
        .apply(&RegistryCommand::AddUser {
            address: "alice+vip@x.test".into(),
            password_hash: "h".into(),
        })
        .unwrap();
    assert_eq!(
        route(&f.state, &config(), "alice+vip@x.test").unwrap(),
        boxes(&["alice+vip@x.test"])
    );
}

#[test]
fn aliases_expand_deduplicated() {
    let f = fixture();
    alias(&f.state, "sales@x.test", &["alice@x.test", "bob@x.test"]);
    alias(
        &f.state,
        "team@x.test",
        &["sales@x.test", "alice@x.test", "carol@y.test"],
    );
    assert_eq!(
        route(&f.state, &config(), "team@x.test").unwrap(),
        boxes(&["alice@x.test", "bob@x.test", "carol@y.test"])
    );
    assert_eq!(
        route(&f.state, &config(), "sales+q3@x.test").unwrap(),
        boxes(&["alice@x.test", "bob@x.test"])
    );
}

#[test]
fn alias_loops_end_and_empty_loops_are_unknown() {
    let f = fixture();
    alias(&f.state, "l1@x.test", &["l2@x.test", "alice@x.test"]);
    alias(&f.state, "l2@x.test", &["l1@x.test"]);
    assert_eq!(
        route(&f.state, &config(), "l2@x.test").unwrap(),
        boxes(&["alice@x.test"])
    );
    alias(&f.state, "e1@x.test", &["e2@x.test"]);
    alias(&f.state, "e2@x.test", &["e1@x.test"]);
    assert_eq!(
        route(&f.state, &config(), "e1@x.test").unwrap(),
        Route::Unknown
    );
}

#[test]
fn deep_chains_are_unroutable() {
    let f = fixture();
    for i in 0..=ALIAS_DEPTH_MAX {
        alias(
            &f.state,
            &format!("c{i}@x.test"),
            &[&format!("c{}@x.test", i + 1)],
        );
    }
    alias(
        &f.state,
        &format!("c{}@x.test", ALIAS_DEPTH_MAX + 1),
        &["alice@x.test"],
    );
    assert!(matches!(
        route(&f.state, &config(), "c0@x.test").unwrap(),
        Route::Unroutable(why) if why.contains("deeper")
    ));
    // Eight deep is fine.
    assert_eq!(
        route(&f.state, &config(), "c2@x.test").unwrap(),
        boxes(&["alice@x.test"])
    );
}

#[test]
fn wide_expansions_are_unroutable() {
    let f = fixture();
    let mut many = Vec::new();
    for i in 0..=ALIAS_MAILBOXES_MAX {
        let u = format!("u{i}@x.test");
        f.state
            .apply(&RegistryCommand::AddUser {
                address: u.clone(),
                password_hash: "h".into(),
            })
            .unwrap();
        many.push(u);
    }
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    alias(&f.state, "all@x.test", &refs);
    assert!(matches!(
        route(&f.state, &config(), "all@x.test").unwrap(),
        Route::Unroutable(why) if why.contains("more than 100")
    ));
    alias(&f.state, "most@x.test", &refs[..ALIAS_MAILBOXES_MAX]);
    assert!(matches!(
        route(&f.state, &config(), "most@x.test").unwrap(),
        Route::Mailboxes(m) if m.len() == ALIAS_MAILBOXES_MAX
    ));
}

#[test]
fn catch_all_takes_what_nothing_else_does() {
    let f = fixture();
    alias(&f.state, "@x.test", &["bob@x.test"]);
    assert_eq!(
        route(&f.state, &config(), "zed@x.test").unwrap(),
        boxes(&["bob@x.test"])
    );
    assert_eq!(
        route(&f.state, &config(), "alice+t@x.test").unwrap(),
        boxes(&["alice@x.test"]),
        "a subaddress of an account is not caught"
    );
    assert_eq!(
        route(&f.state, &config(), "zed@y.test").unwrap(),
        Route::Unknown
    );
}

#[test]
fn postmaster_and_abuse_for_every_domain() {
    let f = fixture();
    let mut c = config();
    for a in ["postmaster@x.test", "abuse@y.test", "postmaster+x@y.test"] {
        assert_eq!(route(&f.state, &c, a).unwrap(), Route::NoPostmaster, "{a}");
    }
    assert_eq!(
        route(&f.state, &c, "postmaster").unwrap(),
        Route::NoPostmaster
    );
    c.postmaster = Some("admin@x.test".into());
    for a in [
        "postmaster@x.test",
        "abuse@y.test",
        "postmaster",
        "abuse+spam@x.test",
    ] {
        assert_eq!(
            route(&f.state, &c, a).unwrap(),
            boxes(&["admin@x.test"]),
            "{a}"
        );
    }
    // A domain's own alias comes first, even over the catch-all.
    alias(&f.state, "postmaster@y.test", &["carol@y.test"]);
    alias(&f.state, "@x.test", &["bob@x.test"]);
    assert_eq!(
        route(&f.state, &c, "postmaster@y.test").unwrap(),
        boxes(&["carol@y.test"])
    );
    assert_eq!(
        route(&f.state, &c, "postmaster@x.test").unwrap(),
        boxes(&["admin@x.test"])
    );
    // A configured postmaster that does not exist is no postmaster.
    c.postmaster = Some("gone@x.test".into());
    assert_eq!(
        route(&f.state, &c, "abuse@x.test").unwrap(),
        Route::NoPostmaster
    );
    // The bare postmaster is postmaster@ the host name when that domain is ours.
    c.hostname = "Y.test".into();
    assert_eq!(
        route(&f.state, &c, "postmaster").unwrap(),
        boxes(&["carol@y.test"])
    );
}

#[test]
fn gone_targets_are_skipped() {
    let f = fixture();
    alias(&f.state, "s@x.test", &["alice@x.test", "bob@x.test"]);
    f.state
        .apply(&RegistryCommand::DelUser {
            address: "bob@x.test".into(),
        })
        .unwrap();
    assert_eq!(
        route(&f.state, &config(), "s@x.test").unwrap(),
        boxes(&["alice@x.test"])
    );
}
