//! Greeting, CAPA, USER/PASS, AUTH PLAIN, failed logins, locking.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use tokio::time::Instant;

fn plain(authzid: &str, user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{authzid}\0{user}\0{password}"))
}

const EXPECTED_CAPA: &[&str] = &[
    "TOP",
    "USER",
    "UIDL",
    "RESP-CODES",
    "PIPELINING",
    "AUTH-RESP-CODE",
    "SASL PLAIN",
    "IMPLEMENTATION Porcupine",
];

#[tokio::test]
async fn greeting_names_the_host() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    assert_eq!(h.client.line().await, "+OK pop.test POP3 Porcupine ready");
}

#[tokio::test]
async fn capa_lists_capabilities_in_both_states() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(h.client.cmd("CAPA").await.starts_with("+OK"));
    assert_eq!(h.client.lines().await, EXPECTED_CAPA);
    h.client.login("alice", "wonderland").await;
    assert!(h.client.cmd("capa").await.starts_with("+OK"));
    assert_eq!(h.client.lines().await, EXPECTED_CAPA);
}

#[tokio::test]
async fn user_pass_login_opens_and_locks_the_maildrop() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(!store.is_locked("alice"));
    assert!(h.client.cmd("USER alice").await.starts_with("+OK"));
    let total = MSG_ONE.len() + MSG_TWO.len() + MSG_THREE.len();
    assert_eq!(
        h.client.cmd("PASS wonderland").await,
        format!("+OK maildrop has 3 messages ({total} octets)")
    );
    assert!(store.is_locked("alice"));
    assert_eq!(h.client.cmd("STAT").await, format!("+OK 3 {total}"));
}

#[tokio::test]
async fn login_uses_the_canonical_mailbox_name() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(
        h.client
            .login("ALICE", "wonderland")
            .await
            .starts_with("+OK maildrop has 3")
    );
    assert!(store.is_locked("alice"));
}

#[tokio::test]
async fn auth_plain_with_initial_response() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    let reply = h
        .client
        .cmd(&format!("AUTH PLAIN {}", plain("", "alice", "wonderland")))
        .await;
    assert!(reply.starts_with("+OK maildrop has 3 messages"), "{reply}");
    assert!(store.is_locked("alice"));
}

#[tokio::test]
async fn auth_plain_with_continuation_and_cancel() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    // Cancel first: RFC 5034 says "*" aborts the exchange with -ERR.
    assert_eq!(h.client.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(h.client.cmd("*").await, "-ERR authentication cancelled");
    assert!(!store.is_locked("alice"));
    // Then a real exchange, authzid equal to the user.
    assert_eq!(h.client.cmd("auth plain").await, "+ ");
    let reply = h.client.cmd(&plain("alice", "alice", "wonderland")).await;
    assert!(reply.starts_with("+OK maildrop has 3 messages"), "{reply}");
    assert!(store.is_locked("alice"));
}

#[tokio::test]
async fn bare_auth_lists_plain() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(h.client.cmd("AUTH").await.starts_with("+OK"));
    assert_eq!(h.client.lines().await, ["PLAIN"]);
}

#[tokio::test]
async fn auth_refuses_other_mechanisms_and_bad_base64() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert_eq!(
        h.client.cmd("AUTH CRAM-MD5").await,
        "-ERR unsupported authentication mechanism"
    );
    assert_eq!(
        h.client.cmd("AUTH PLAIN !!notbase64").await,
        "-ERR invalid base64 in SASL response"
    );
    assert!(!store.is_locked("alice"));
}

#[tokio::test(start_paused = true)]
async fn wrong_password_is_refused_after_the_delay() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(h.client.cmd("USER alice").await.starts_with("+OK"));
    let before = Instant::now();
    assert_eq!(
        h.client.cmd("PASS wrong").await,
        "-ERR [AUTH] invalid credentials"
    );
    assert!(
        before.elapsed() >= Duration::from_secs(1),
        "{:?}",
        before.elapsed()
    );
    assert!(!store.is_locked("alice"));
    // Still in AUTHORIZATION: a correct login now works.
    assert!(
        h.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
}

#[tokio::test(start_paused = true)]
async fn wrong_auth_plain_and_unknown_user_are_refused_after_the_delay() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    let before = Instant::now();
    assert_eq!(
        h.client
            .cmd(&format!("AUTH PLAIN {}", plain("", "alice", "nope")))
            .await,
        "-ERR [AUTH] invalid credentials"
    );
    assert!(before.elapsed() >= Duration::from_secs(1));
    let before = Instant::now();
    assert_eq!(
        h.client.login("mallory", "x").await,
        "-ERR [AUTH] invalid credentials"
    );
    assert!(before.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn proxy_authzid_is_a_failed_login() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    let reply = h
        .client
        .cmd(&format!(
            "AUTH PLAIN {}",
            plain("bob", "alice", "wonderland")
        ))
        .await;
    assert_eq!(reply, "-ERR [AUTH] invalid credentials");
    assert!(!store.is_locked("alice") && !store.is_locked("bob"));
}

#[tokio::test(start_paused = true)]
async fn too_many_failed_logins_close_the_session() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert_eq!(
        h.client.login("alice", "a").await,
        "-ERR [AUTH] invalid credentials"
    );
    assert_eq!(
        h.client.login("alice", "b").await,
        "-ERR [AUTH] invalid credentials"
    );
    assert_eq!(
        h.client.login("alice", "c").await,
        "-ERR [AUTH] invalid credentials, too many failures"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
}

#[tokio::test]
async fn second_session_gets_in_use_and_stays_in_authorization() {
    let store = sample_store();
    let mut first = start_logged_in(&store).await;
    let mut second = start(test_config(), &store);
    second.client.line().await;
    assert_eq!(
        second.client.login("alice", "wonderland").await,
        "-ERR [IN-USE] mailbox locked"
    );
    // Still AUTHORIZATION: TRANSACTION commands are refused.
    assert_eq!(
        second.client.cmd("STAT").await,
        "-ERR command not valid in this state"
    );
    assert_eq!(first.client.cmd("QUIT").await.get(..3), Some("+OK"));
    finish(first.task).await.unwrap();
    assert!(!store.is_locked("alice"));
    assert!(
        second
            .client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK maildrop has 3")
    );
}

#[tokio::test]
async fn temporary_failures_answer_sys_temp() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    store.set_auth_tempfail(true);
    assert_eq!(
        h.client.login("alice", "wonderland").await,
        "-ERR [SYS/TEMP] authentication temporarily unavailable"
    );
    store.set_auth_tempfail(false);
    store.set_open_tempfail(true);
    assert_eq!(
        h.client.login("alice", "wonderland").await,
        "-ERR [SYS/TEMP] maildrop temporarily unavailable"
    );
    store.set_open_tempfail(false);
    assert!(
        h.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
}

#[tokio::test]
async fn pass_needs_user_right_before() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert_eq!(h.client.cmd("PASS wonderland").await, "-ERR USER first");
    assert!(h.client.cmd("USER alice").await.starts_with("+OK"));
    assert!(h.client.cmd("CAPA").await.starts_with("+OK"));
    h.client.lines().await;
    // CAPA came between USER and PASS, so PASS no longer pairs with USER.
    assert_eq!(h.client.cmd("PASS wonderland").await, "-ERR USER first");
    assert!(!store.is_locked("alice"));
}

#[tokio::test]
async fn password_may_contain_spaces() {
    let store = sample_store();
    store.add_user("carol", "two words ");
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(
        h.client
            .login("carol", "two words ")
            .await
            .starts_with("+OK maildrop has 0 messages (0 octets)")
    );
}

#[tokio::test]
async fn login_commands_refused_after_login() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    assert_eq!(
        h.client.cmd("USER bob").await,
        "-ERR command not valid in this state"
    );
    assert_eq!(
        h.client.cmd("AUTH PLAIN").await,
        "-ERR command not valid in this state"
    );
}

#[tokio::test]
async fn quit_in_authorization_closes_without_commit() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    assert!(h.client.cmd("QUIT").await.starts_with("+OK"));
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.commits(), 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_login_is_a_failed_login_with_its_own_answer() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    store.set_auth_rate_limited(true);
    // Even the right password: the limiter answers before any password check.
    assert_eq!(
        h.client.login("alice", "wonderland").await,
        "-ERR [SYS/TEMP] too many login failures, try later"
    );
    assert!(!store.is_locked("alice"));
    store.set_auth_rate_limited(false);
    assert!(
        h.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_logins_count_towards_the_attempt_cap() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    store.set_auth_rate_limited(true);
    let attempts = test_config().auth_attempts_max;
    for i in 1..=attempts {
        let answer = h.client.login("alice", "x").await;
        if i < attempts {
            assert_eq!(answer, "-ERR [SYS/TEMP] too many login failures, try later");
        } else {
            assert_eq!(
                answer,
                "-ERR [SYS/TEMP] too many login failures, try later, too many failures"
            );
        }
    }
    assert!(h.client.at_eof().await);
}
