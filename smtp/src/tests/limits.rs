//! Size, line and recipient limits.

use super::support::*;
use crate::SmtpConfig;

#[tokio::test]
async fn size_parameter_over_the_limit_is_552() {
    let mut h = start_greeted(SmtpConfig {
        message_size_max: 1000,
        ..config()
    })
    .await;
    let ehlo = h.client.command("EHLO client.test").await;
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 1000"), "{ehlo:?}");
    assert_reply(
        &h.client
            .command("MAIL FROM:<a@remote.test> SIZE=1001")
            .await,
        "552",
        "5.3.4",
    );
    // No transaction was started.
    assert_reply(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "503",
        "5.5.1",
    );
    assert_reply(
        &h.client
            .command("MAIL FROM:<a@remote.test> SIZE=1000")
            .await,
        "250",
        "2.1.0",
    );
}

#[tokio::test]
async fn oversize_data_is_read_to_the_end_then_refused() {
    let mut h = start_greeted(SmtpConfig {
        message_size_max: 1000,
        ..config()
    })
    .await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    // 50 lines of 100 bytes, with things that look like commands inside.
    let mut wire = Vec::new();
    for i in 0..50 {
        wire.extend_from_slice(format!("QUIT line {i:02} {}\r\n", "y".repeat(85)).as_bytes());
    }
    assert_eq!(wire.len(), 5000);
    let reply = h.client.data(&wire).await;
    assert_reply(&reply, "552", "5.3.4");
    assert!(h.store.deliveries().is_empty());
    // The session continues with a fresh transaction.
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    let exact = vec![b'z'; 998]
        .into_iter()
        .chain(*b"\r\n")
        .collect::<Vec<u8>>();
    assert_eq!(exact.len(), 1000);
    assert_code(&h.client.data(&exact).await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, &exact[..]);
}

#[tokio::test]
async fn text_line_of_998_is_accepted_and_999_refused() {
    let mut h = start_greeted(config()).await;
    let ok_line = [vec![b'a'; 998], b"\r\n".to_vec()].concat();
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    let wire = [b"Subject: long\r\n\r\n".to_vec(), ok_line.clone()].concat();
    assert_reply(&h.client.data(&wire).await, "250", "2.0.0");
    let (_, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, &wire[..]);

    let long_line = [vec![b'a'; 999], b"\r\n".to_vec()].concat();
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    let wire = [
        b"Subject: long\r\n\r\n".to_vec(),
        long_line,
        b"after\r\n".to_vec(),
    ]
    .concat();
    let reply = h.client.data(&wire).await;
    assert_reply(&reply, "552", "5.3.4");
    assert!(reply.text().contains("Line too long"));
    assert_eq!(h.store.deliveries().len(), 1, "nothing new stored");
    assert_code(&h.client.command("NOOP").await, "250");
}

#[tokio::test]
async fn recipient_101_gets_452() {
    let mut h = start_greeted(config()).await;
    h.client.envelope("a@remote.test", &[]).await;
    for i in 0..100 {
        let reply = h
            .client
            .command(&format!("RCPT TO:<user{i}@example.test>"))
            .await;
        assert_code(&reply, "250");
    }
    assert_reply(
        &h.client.command("RCPT TO:<user100@example.test>").await,
        "452",
        "4.5.3",
    );
    assert_code(&h.client.data(b"many\r\n").await, "250");
    let (envelope, _) = h.store.deliveries().pop().unwrap();
    assert_eq!(envelope.rcpt_to.len(), 100);
    assert_eq!(envelope.rcpt_to[99], "user99@example.test");
}

#[tokio::test]
async fn recipient_limit_follows_the_config() {
    let mut h = start_greeted(SmtpConfig {
        recipients_max: 2,
        ..config()
    })
    .await;
    h.client
        .envelope("a@remote.test", &["alice@example.test", "bob@example.test"])
        .await;
    assert_reply(
        &h.client.command("RCPT TO:<user1@example.test>").await,
        "452",
        "4.5.3",
    );
}
