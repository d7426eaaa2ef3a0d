//! STAT, LIST, UIDL, RETR, TOP, DELE, RSET and QUIT over an in-memory connection.

mod common;

use std::sync::atomic::Ordering;

use common::*;

#[tokio::test]
async fn stat_list_and_uidl() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    let sizes = [MSG_ONE.len(), MSG_TWO.len(), MSG_THREE.len()];
    let total: usize = sizes.iter().sum();
    assert_eq!(h.client.cmd("STAT").await, format!("+OK 3 {total}"));
    assert_eq!(
        h.client.cmd("LIST").await,
        format!("+OK 3 messages ({total} octets)")
    );
    assert_eq!(
        h.client.lines().await,
        [
            format!("1 {}", sizes[0]),
            format!("2 {}", sizes[1]),
            format!("3 {}", sizes[2])
        ]
    );
    assert_eq!(h.client.cmd("LIST 2").await, format!("+OK 2 {}", sizes[1]));
    assert_eq!(h.client.cmd("LIST 4").await, "-ERR no such message");
    assert_eq!(h.client.cmd("LIST 0").await, "-ERR no such message");
    assert!(h.client.cmd("UIDL").await.starts_with("+OK"));
    assert_eq!(
        h.client.lines().await,
        ["1 uid-one", "2 uid-two", "3 uid-three"]
    );
    assert_eq!(h.client.cmd("UIDL 3").await, "+OK 3 uid-three");
    assert_eq!(h.client.cmd("UIDL 9").await, "-ERR no such message");
    assert_eq!(h.client.cmd("NOOP").await, "+OK");
}

#[tokio::test]
async fn retr_returns_the_exact_stored_bytes() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    assert_eq!(
        h.client.cmd("RETR 1").await,
        format!("+OK {} octets", MSG_ONE.len())
    );
    assert_eq!(h.client.body().await, MSG_ONE);
    assert_eq!(
        h.client.cmd("RETR 2").await,
        format!("+OK {} octets", MSG_TWO.len())
    );
    assert_eq!(h.client.body().await, MSG_TWO);
    assert_eq!(h.client.cmd("RETR 4").await, "-ERR no such message");
}

#[tokio::test]
async fn retr_stuffs_lines_beginning_with_a_dot() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    h.client.cmd("RETR 2").await;
    let wire = h.client.raw_body().await;
    let expected: &[u8] = b"From: b@x\r\nSubject: dots\r\n\r\n..leading dot\r\nmiddle . dot\r\n...two dots\r\n..\r\nlast\r\n.\r\n";
    assert_eq!(wire, expected);
}

#[tokio::test]
async fn retr_keeps_eight_bit_bytes_and_ends_an_unterminated_message() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    h.client.cmd("RETR 3").await;
    let wire = h.client.raw_body().await;
    let mut expected = MSG_THREE.to_vec();
    expected.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(wire, expected);
}

#[tokio::test]
async fn retr_of_a_large_message_with_many_dot_lines() {
    let store = sample_store();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..20_000u32 {
        // Every third line starts with a dot; every byte value appears.
        if i % 3 == 0 {
            body.push(b'.');
        }
        body.extend(
            (0..40)
                .map(|j| ((i + j) % 256) as u8)
                .filter(|&b| b != b'\n' && b != b'\r'),
        );
        body.extend_from_slice(b"\r\n");
    }
    assert!(body.len() > 500_000);
    store.add_message("bob", "big", &body);
    let mut h = start(test_config(), &store);
    h.client.line().await;
    h.client.login("bob", "builder").await;
    assert_eq!(
        h.client.cmd("RETR 1").await,
        format!("+OK {} octets", body.len())
    );
    assert_eq!(h.client.body().await, body);
    assert_eq!(h.client.cmd("NOOP").await, "+OK");
}

#[tokio::test]
async fn top_sends_headers_blank_line_and_k_body_lines() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    assert!(h.client.cmd("TOP 2 0").await.starts_with("+OK"));
    assert_eq!(h.client.body().await, b"From: b@x\r\nSubject: dots\r\n\r\n");
    assert!(h.client.cmd("TOP 2 2").await.starts_with("+OK"));
    let wire = h.client.raw_body().await;
    assert_eq!(
        wire,
        b"From: b@x\r\nSubject: dots\r\n\r\n..leading dot\r\nmiddle . dot\r\n.\r\n"
    );
    assert!(h.client.cmd("TOP 2 100").await.starts_with("+OK"));
    assert_eq!(h.client.body().await, MSG_TWO);
    // Unterminated last line: TOP still ends the response properly.
    assert!(h.client.cmd("TOP 3 5").await.starts_with("+OK"));
    let mut expected = MSG_THREE.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(h.client.body().await, expected);
    assert_eq!(h.client.cmd("TOP 9 1").await, "-ERR no such message");
    assert_eq!(h.client.cmd("TOP 1").await, "-ERR usage: TOP msg lines");
}

#[tokio::test]
async fn dele_hides_a_message_and_rset_brings_it_back() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    let (one, two, three) = (MSG_ONE.len(), MSG_TWO.len(), MSG_THREE.len());
    assert_eq!(h.client.cmd("DELE 1").await, "+OK message 1 deleted");
    assert_eq!(
        h.client.cmd("DELE 1").await,
        "-ERR message 1 already deleted"
    );
    assert_eq!(h.client.cmd("DELE 7").await, "-ERR no such message");
    assert_eq!(h.client.cmd("STAT").await, format!("+OK 2 {}", two + three));
    h.client.cmd("LIST").await;
    assert_eq!(
        h.client.lines().await,
        [format!("2 {two}"), format!("3 {three}")]
    );
    assert_eq!(h.client.cmd("LIST 1").await, "-ERR no such message");
    assert_eq!(h.client.cmd("UIDL 1").await, "-ERR no such message");
    h.client.cmd("UIDL").await;
    assert_eq!(h.client.lines().await, ["2 uid-two", "3 uid-three"]);
    assert_eq!(h.client.cmd("RETR 1").await, "-ERR no such message");
    assert_eq!(h.client.cmd("TOP 1 0").await, "-ERR no such message");
    let total = one + two + three;
    assert_eq!(
        h.client.cmd("RSET").await,
        format!("+OK maildrop has 3 messages ({total} octets)")
    );
    assert_eq!(h.client.cmd("STAT").await, format!("+OK 3 {total}"));
    assert!(h.client.cmd("RETR 1").await.starts_with("+OK"));
    assert_eq!(h.client.body().await, MSG_ONE);
}

#[tokio::test]
async fn quit_commits_the_deletes() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    h.client.cmd("DELE 1").await;
    h.client.cmd("DELE 3").await;
    // Nothing is removed before QUIT.
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
    assert_eq!(
        h.client.cmd("QUIT").await,
        "+OK Porcupine POP3 server signing off (2 messages deleted)"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-two"]);
    assert_eq!(store.commits(), 1);
    assert!(!store.is_locked("alice"));
}

#[tokio::test]
async fn quit_after_rset_deletes_nothing() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    h.client.cmd("DELE 2").await;
    h.client.cmd("RSET").await;
    assert!(h.client.cmd("QUIT").await.starts_with("+OK"));
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
}

#[tokio::test]
async fn disconnect_without_quit_deletes_nothing_and_unlocks() {
    let store = sample_store();
    let mut h = start_logged_in(&store).await;
    assert_eq!(h.client.cmd("DELE 1").await, "+OK message 1 deleted");
    drop(h.client);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
    assert_eq!(store.commits(), 0);
    assert!(!store.is_locked("alice"));
}

#[tokio::test]
async fn failed_commit_reports_sys_temp_and_deletes_nothing() {
    let store = sample_store();
    store.set_fail_commit(true);
    let mut h = start_logged_in(&store).await;
    h.client.cmd("DELE 1").await;
    assert_eq!(
        h.client.cmd("QUIT").await,
        "-ERR [SYS/TEMP] messages not deleted, try again later"
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-two", "uid-three"]);
    assert!(!store.is_locked("alice"));
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_in_one_write() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    let flushes_before = h.flushes.load(Ordering::SeqCst);
    h.client
        .send(b"USER alice\r\nPASS wonderland\r\nSTAT\r\nLIST 1\r\nRETR 2\r\nDELE 1\r\nUIDL\r\nBOGUS\r\nQUIT\r\n")
        .await;
    assert_eq!(h.client.line().await, "+OK send PASS");
    assert!(
        h.client
            .line()
            .await
            .starts_with("+OK maildrop has 3 messages")
    );
    assert!(h.client.line().await.starts_with("+OK 3 "));
    assert_eq!(h.client.line().await, format!("+OK 1 {}", MSG_ONE.len()));
    assert!(h.client.line().await.starts_with("+OK"));
    assert_eq!(h.client.body().await, MSG_TWO);
    assert_eq!(h.client.line().await, "+OK message 1 deleted");
    assert!(h.client.line().await.starts_with("+OK"));
    assert_eq!(h.client.lines().await, ["2 uid-two", "3 uid-three"]);
    assert_eq!(h.client.line().await, "-ERR unknown command");
    assert!(
        h.client
            .line()
            .await
            .starts_with("+OK Porcupine POP3 server signing off")
    );
    assert!(h.client.at_eof().await);
    finish(h.task).await.unwrap();
    // All ten replies left in one write-and-flush.
    let flushes = h.flushes.load(Ordering::SeqCst) - flushes_before;
    assert_eq!(flushes, 1);
    assert_eq!(store.uids("alice"), ["uid-two", "uid-three"]);
}

#[tokio::test]
async fn transaction_commands_need_a_login() {
    let store = sample_store();
    let mut h = start(test_config(), &store);
    h.client.line().await;
    for command in [
        "STAT", "LIST", "UIDL 1", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP",
    ] {
        assert_eq!(
            h.client.cmd(command).await,
            "-ERR command not valid in this state",
            "{command}"
        );
    }
}
