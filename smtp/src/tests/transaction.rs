//! Whole mail transactions: the happy path, pipelining, envelope resets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::DateTime;
use tokio::sync::watch;

use super::support::*;
use crate::serve;

#[tokio::test]
async fn full_transaction() {
    let mut h = start(config());
    let greeting = h.client.reply().await;
    assert_code(&greeting, "220");
    assert_eq!(greeting.text(), format!("{HOST} ESMTP Porcupine"));

    let ehlo = h.client.command("EHLO client.test").await;
    assert_code(&ehlo, "250");
    let capabilities: Vec<&str> = ehlo.lines[1..].iter().map(String::as_str).collect();
    for wanted in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "HELP",
    ] {
        assert!(
            capabilities.contains(&wanted),
            "{wanted} missing from {ehlo:?}"
        );
    }
    assert!(
        !capabilities
            .iter()
            .any(|c| c.starts_with("STARTTLS") || c.starts_with("AUTH"))
    );

    assert_reply(
        &h.client.command("MAIL FROM:<sender@remote.test>").await,
        "250",
        "2.1.0",
    );
    assert_reply(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
        "2.1.5",
    );
    assert_reply(
        &h.client.command("RCPT TO:<bob@example.test>").await,
        "250",
        "2.1.5",
    );
    let body = b"Subject: hello\r\n\r\nHi Alice.\r\n";
    let done = h.client.data(body).await;
    assert_reply(&done, "250", "2.0.0");
    assert!(done.text().contains("queued as "), "{done:?}");
    assert_reply(&h.client.command("QUIT").await, "221", "2.0.0");
    h.client.expect_closed().await;

    let store = h.store.clone();
    h.ended().await.unwrap();
    let deliveries = store.deliveries();
    assert_eq!(deliveries.len(), 1);
    let (envelope, message) = &deliveries[0];
    assert_eq!(envelope.helo, "client.test");
    assert_eq!(envelope.mail_from, "sender@remote.test");
    assert_eq!(
        envelope.rcpt_to,
        vec!["alice@example.test", "bob@example.test"]
    );
    assert_eq!(envelope.peer, Some(PEER.parse().unwrap()));

    let (trace, rest) = split_trace(message);
    assert_eq!(rest, body, "the text after the trace fields is byte-exact");
    let queue_id = done.text().rsplit(' ').next().unwrap();
    let expected_prefix = format!(
        "Return-Path: <sender@remote.test>\r\n\
         Received: from client.test ([192.0.2.1])\r\n\
         \tby {HOST} (Porcupine) with ESMTP id {queue_id}\r\n\
         \tfor <alice@example.test>; "
    );
    assert!(trace.starts_with(&expected_prefix), "{trace}");
    let date = trace[expected_prefix.len()..].trim_end_matches("\r\n");
    DateTime::parse_from_rfc2822(date).expect("Received date is RFC 5322");
}

#[tokio::test]
async fn helo_session_is_smtp_and_null_sender_is_empty() {
    let mut h = start_greeted(config()).await;
    let helo = h.client.command("HELO old.client.test").await;
    assert_code(&helo, "250");
    assert_eq!(helo.lines.len(), 1);
    assert_code(&h.client.command("MAIL FROM:<>").await, "250");
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    assert_code(&h.client.data(b"bounce\r\n").await, "250");
    let (envelope, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(envelope.mail_from, "");
    assert_eq!(envelope.helo, "old.client.test");
    let (trace, rest) = split_trace(&message);
    assert!(trace.starts_with("Return-Path: <>\r\nReceived: from old.client.test "));
    assert!(trace.contains(" with SMTP id "), "{trace}");
    assert_eq!(rest, b"bounce\r\n");
}

#[tokio::test]
async fn pipelined_transaction_in_one_write_is_answered_in_one_write() {
    let (mut client_end, server_end) = tokio::io::duplex(256 * 1024);
    let writes = Arc::new(AtomicUsize::new(0));
    let counting = CountingStream {
        inner: server_end,
        writes: writes.clone(),
    };
    // The whole batch is in the stream before the session reads anything.
    let batch = "EHLO client.test\r\n\
                 MAIL FROM:<sender@remote.test>\r\n\
                 RCPT TO:<alice@example.test>\r\n\
                 RCPT TO:<nobody@example.test>\r\n\
                 RCPT TO:<bob@example.test>\r\n\
                 DATA\r\n\
                 Subject: pipelined\r\n\r\nbody\r\n.\r\n\
                 QUIT\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut client_end, batch.as_bytes())
        .await
        .unwrap();
    let store = Arc::new(MemoryDeliver::default());
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        counting,
        None,
        Arc::new(config()),
        store.clone(),
        shutdown_rx,
    ));
    let mut client = Client::new(client_end);
    let codes = [
        "220", "250", "250", "250", "550", "250", "354", "250", "221",
    ];
    for code in codes {
        assert_code(&client.reply().await, code);
    }
    client.expect_closed().await;
    task.await.unwrap().unwrap();
    assert_eq!(
        writes.load(Ordering::SeqCst),
        2,
        "greeting, then one write for the whole batch"
    );
    let (envelope, message) = store.deliveries().pop().unwrap();
    assert_eq!(
        envelope.rcpt_to,
        vec!["alice@example.test", "bob@example.test"]
    );
    assert_eq!(envelope.peer, None);
    assert!(message.ends_with(b"\r\n\r\nbody\r\n"));
    assert!(!message.windows(4).any(|w| w == b"QUIT"));
}

#[tokio::test]
async fn rset_clears_the_envelope() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("first@remote.test", &["alice@example.test"])
        .await;
    assert_reply(&h.client.command("RSET").await, "250", "2.0.0");
    // The transaction is gone: RCPT and DATA need a new MAIL.
    assert_reply(
        &h.client.command("RCPT TO:<bob@example.test>").await,
        "503",
        "5.5.1",
    );
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
    assert_code(
        &h.client.command("MAIL FROM:<second@remote.test>").await,
        "250",
    );
    assert_code(&h.client.command("RCPT TO:<bob@example.test>").await, "250");
    assert_code(&h.client.data(b"x\r\n").await, "250");
    let (envelope, _) = h.store.deliveries().pop().unwrap();
    assert_eq!(envelope.mail_from, "second@remote.test");
    assert_eq!(envelope.rcpt_to, vec!["bob@example.test"]);
}

#[tokio::test]
async fn ehlo_during_a_transaction_resets_it() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("first@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.command("EHLO again.test").await, "250");
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
}

#[tokio::test]
async fn envelope_resets_after_each_message() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.data(b"one\r\n").await, "250");
    // Same session, new transaction: the old recipients are gone.
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
    assert_code(&h.client.command("MAIL FROM:<b@remote.test>").await, "250");
    assert_code(&h.client.command("RCPT TO:<bob@example.test>").await, "250");
    assert_code(&h.client.data(b"two\r\n").await, "250");
    let deliveries = h.store.deliveries();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[1].0.mail_from, "b@remote.test");
    assert_eq!(deliveries[1].0.rcpt_to, vec!["bob@example.test"]);
    assert!(deliveries[1].1.ends_with(b"\r\ntwo\r\n"));
}

#[tokio::test]
async fn duplicate_recipient_is_stored_once() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope(
            "a@remote.test",
            &[
                "alice@example.test",
                "ALICE@example.test",
                "bob@example.test",
            ],
        )
        .await;
    assert_code(&h.client.data(b"x\r\n").await, "250");
    let (envelope, _) = h.store.deliveries().pop().unwrap();
    assert_eq!(
        envelope.rcpt_to,
        vec!["alice@example.test", "bob@example.test"]
    );
}

#[tokio::test]
async fn postmaster_without_domain_is_a_recipient_but_empty_path_is_not() {
    let mut h = start_greeted(config()).await;
    h.client.envelope("a@remote.test", &[]).await;
    assert_reply(&h.client.command("RCPT TO:<>").await, "501", "5.5.4");
    assert_reply(
        &h.client.command("RCPT TO:<Postmaster>").await,
        "250",
        "2.1.5",
    );
    assert_eq!(h.store.checked(), vec!["postmaster"]);
}

#[tokio::test]
async fn deliver_failures_map_to_451_and_554_and_end_the_transaction() {
    let mut h = start_greeted(config()).await;
    h.store.fail_with(Some(FailMode::Temporary));
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    let reply = h.client.data(b"x\r\n").await;
    assert_reply(&reply, "451", "4.3.0");
    assert!(reply.text().contains("store busy"));
    assert_reply(
        &h.client.command("RCPT TO:<bob@example.test>").await,
        "503",
        "5.5.1",
    );

    h.store.fail_with(Some(FailMode::Permanent));
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    let reply = h.client.data(b"x\r\n").await;
    assert_reply(&reply, "554", "5.3.0");
    assert!(reply.text().contains("mailbox disabled"));
    assert!(h.store.deliveries().is_empty());

    // The session goes on and the next message succeeds.
    h.store.fail_with(None);
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    assert_reply(&h.client.data(b"x\r\n").await, "250", "2.0.0");
    assert_eq!(h.store.deliveries().len(), 1);
}

#[tokio::test]
async fn over_quota_is_552_5_2_2_at_rcpt_and_at_end_of_data() {
    let mut h = start_greeted(config()).await;
    h.client.envelope("a@remote.test", &[]).await;
    let reply = h.client.command("RCPT TO:<full@example.test>").await;
    assert_reply(&reply, "552", "5.2.2");
    assert!(reply.text().contains("mailbox full"));
    assert_reply(
        &h.client.command("RCPT TO:<loop@example.test>").await,
        "550",
        "5.4.6",
    );
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    h.store.fail_with(Some(FailMode::OverQuota));
    let reply = h.client.data(b"x\r\n").await;
    assert_reply(&reply, "552", "5.2.2");
    assert!(reply.text().contains("over quota"));
    assert!(h.store.deliveries().is_empty());
    // The session goes on.
    h.store.fail_with(None);
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
}

#[test]
fn serve_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (_client, server) = tokio::io::duplex(64);
    let (_tx, rx) = watch::channel(false);
    let future = serve(
        server,
        None,
        Arc::new(config()),
        Arc::new(MemoryDeliver::default()),
        rx,
    );
    assert_send(&future);
}
