//! Bad input and session limits: long lines, garbage, error and command caps, idle
//! timeout, shutdown.

mod common;

use std::time::Duration;

use common::*;
use pop::PopConfig;
use tokio::time::Instant;

#[tokio::test]
async fn overlong_line_is_refused_and_the_session_goes_on() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    // 512 bytes with CRLF is the limit: "USER " + 505 + CRLF fits exactly.
    let name = "a".repeat(505);
    assert_eq!(h.client.cmd(&format!("USER {name}")).await, "+OK send PASS");
    let name = "a".repeat(506);
    assert_eq!(
        h.client.cmd(&format!("USER {name}")).await,
        "-ERR line too long"
    );
    // A much longer line, sent in pieces, is discarded up to its LF.
    h.client.send(&vec![b'x'; 100_000]).await;
    h.client.send(&vec![b'y'; 100_000]).await;
    assert_eq!(h.client.cmd("").await, "-ERR line too long");
    assert!(
        h.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
}

#[tokio::test]
async fn garbage_and_bad_arguments_get_err_and_the_session_goes_on() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    h.client.send(b"\xff\xfe\x00\x01garbage\r\n").await;
    assert_eq!(h.client.line().await, "-ERR unknown command");
    assert_eq!(h.client.cmd("").await, "-ERR unknown command");
    assert_eq!(h.client.cmd("HELO there").await, "-ERR unknown command");
    h.client.send(b"USER \xc3\x28\r\n").await;
    assert_eq!(h.client.line().await, "-ERR argument is not valid UTF-8");
    assert!(
        h.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
    assert_eq!(
        h.client.cmd("RETR one").await,
        "-ERR invalid message number"
    );
    assert_eq!(
        h.client.cmd("STAT 1").await,
        "-ERR this command takes no arguments"
    );
    assert!(h.client.cmd("STAT").await.starts_with("+OK 3 "));
}

#[tokio::test]
async fn too_many_errors_close_the_session_without_deleting() {
    let store = sample_store();
    let config = PopConfig {
        errors_max: 3,
        ..test_config()
    };
    let mut h = start(config, &store);
    h.client.line().await;
    h.client.login("alice", "wonderland").await;
    h.client.cmd("DELE 1").await;
    // Missing messages are not protocol errors and do not count.
    for _ in 0..5 {
        assert_eq!(h.client.cmd("RETR 42").await, "-ERR no such message");
    }
    assert_eq!(h.client.cmd("XYZZY").await, "-ERR unknown command");
    assert_eq!(
        h.client.cmd("USER bob").await,
        "-ERR command not valid in this state"
    );
    assert_eq!(h.client.cmd("RETR").await, "-ERR too many errors");
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
    assert!(!store.is_locked("alice"));
}

#[tokio::test]
async fn too_many_commands_close_the_session() {
    let store = sample_store();
    let config = PopConfig {
        commands_max: 4,
        ..test_config()
    };
    let mut h = start(config, &store);
    h.client.line().await;
    h.client.login("alice", "wonderland").await;
    assert_eq!(h.client.cmd("NOOP").await, "+OK");
    assert_eq!(h.client.cmd("NOOP").await, "+OK");
    assert_eq!(h.client.cmd("NOOP").await, "-ERR too many commands");
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_silently_and_deletes_nothing() {
    let store = sample_store();
    let config = PopConfig {
        idle_timeout: Duration::from_secs(600),
        // Not the line deadline: that one is tested below.
        command_timeout: Duration::from_secs(3600),
        ..test_config()
    };
    let mut h = start(config, &store);
    h.client.line().await;
    h.client.login("alice", "wonderland").await;
    assert_eq!(h.client.cmd("DELE 2").await, "+OK message 2 deleted");
    let before = Instant::now();
    // A partial line does not count as activity.
    h.client.send(b"NO").await;
    // RFC 1939 section 3: closed without any response.
    assert!(h.client.at_eof().await);
    let waited = before.elapsed();
    assert!(waited >= Duration::from_secs(600), "{waited:?}");
    assert!(waited < Duration::from_secs(601), "{waited:?}");
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
    assert!(!store.is_locked("alice"));
}

#[tokio::test(start_paused = true)]
async fn trickled_line_is_cut_at_the_command_deadline_and_deletes_nothing() {
    let store = sample_store();
    let config = PopConfig {
        command_timeout: Duration::from_secs(10),
        ..test_config()
    };
    let mut h = start(config, &store);
    h.client.line().await;
    h.client.login("alice", "wonderland").await;
    assert_eq!(h.client.cmd("DELE 2").await, "+OK message 2 deleted");
    // One byte a second: the idle clock (a whole line within 600 s) would allow
    // 600 s; the line deadline, from the first byte, allows 10.
    let before = Instant::now();
    let mut reply = None;
    for _ in 0..120 {
        tokio::select! {
            line = h.client.line() => {
                reply = Some(line);
                break;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => h.client.send(b"N").await,
        }
    }
    assert_eq!(reply.as_deref(), Some("-ERR command timeout"));
    let waited = before.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(12),
        "{waited:?}"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
}

#[tokio::test(start_paused = true)]
async fn each_command_restarts_the_idle_clock() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    let start = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(500)).await;
        assert!(h.client.cmd("CAPA").await.starts_with("+OK"));
        h.client.lines().await;
    }
    assert!(h.client.at_eof().await);
    assert!(start.elapsed() >= Duration::from_secs(2100));
}

#[tokio::test]
async fn shutdown_answers_sys_temp_closes_and_deletes_nothing() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    h.client.cmd("DELE 1").await;
    h.shutdown.send(true).unwrap();
    assert_eq!(
        h.client.line().await,
        "-ERR [SYS/TEMP] server shutting down"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
    assert!(!store.is_locked("alice"));
}

#[tokio::test]
async fn shutdown_before_the_greeting() {
    let store = sample_store();
    let mut h = start_with_shutdown(test_config(), &store, true);
    assert_eq!(
        h.client.line().await,
        "-ERR [SYS/TEMP] server shutting down"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_a_pipelined_batch() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    h.shutdown.send(true).unwrap();
    h.client.send(b"DELE 1\r\nQUIT\r\n").await;
    assert_eq!(
        h.client.line().await,
        "-ERR [SYS/TEMP] server shutting down"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
}

#[tokio::test]
async fn dropped_shutdown_sender_ends_the_session() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    drop(h.shutdown);
    assert_eq!(
        h.client.line().await,
        "-ERR [SYS/TEMP] server shutting down"
    );
    finish(h.task).await.unwrap();
    assert!(!store.is_locked("alice"));
}
