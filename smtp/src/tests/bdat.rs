//! CHUNKING (RFC 3030): BDAT transfers.

use super::support::*;
use crate::SmtpConfig;

#[tokio::test]
async fn bdat_chunks_are_stored_verbatim() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    // No dot-stuffing and no end marker in BDAT: these bytes are all message.
    let first = b"Subject: chunks\r\n\r\n..dots\r\n.\r\n";
    let second = b"QUIT\r\n\x00\xff";
    h.client.send(format!("BDAT {}\r\n", first.len())).await;
    h.client.send(first).await;
    let reply = h.client.reply().await;
    assert_reply(&reply, "250", "2.0.0");
    assert!(reply.text().contains(&format!("{} octets", first.len())));
    h.client
        .send(format!("BDAT {} LAST\r\n", second.len()))
        .await;
    h.client.send(second).await;
    assert_reply(&h.client.reply().await, "250", "2.0.0");
    let (envelope, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(envelope.rcpt_to, vec!["alice@example.test"]);
    assert_eq!(split_trace(&message).1, [&first[..], &second[..]].concat());
    assert_code(&h.client.command("NOOP").await, "250");
}

#[tokio::test]
async fn pipelined_bdat_in_one_write() {
    let mut h = start_greeted(config()).await;
    let body = b"hello\r\nworld\r\n";
    let mut batch = format!(
        "EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT {} LAST\r\n",
        body.len()
    )
    .into_bytes();
    batch.extend_from_slice(body);
    batch.extend_from_slice(b"QUIT\r\n");
    h.client.send(&batch).await;
    for code in ["250", "250", "250", "250", "221"] {
        assert_code(&h.client.reply().await, code);
    }
    h.client.expect_closed().await;
    let store = h.store.clone();
    h.ended().await.unwrap();
    let (_, message) = store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, body);
}

#[tokio::test]
async fn bdat_zero_last_ends_the_message() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    h.client.send(b"BDAT 4\r\nabcd").await;
    assert_code(&h.client.reply().await, "250");
    assert_code(&h.client.command("BDAT 0 LAST").await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, b"abcd");
}

#[tokio::test]
async fn refused_bdat_chunk_is_still_read_and_dropped() {
    let mut h = start_greeted(config()).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    // No transaction: the chunk, which looks like commands, must not be executed.
    let chunk = b"MAIL FROM:<x@remote.test>\r\nQUIT\r\n";
    h.client
        .send(format!("BDAT {} LAST\r\n", chunk.len()))
        .await;
    h.client.send(chunk).await;
    assert_reply(&h.client.reply().await, "503", "5.5.1");
    // Had the chunk run, this would be a nested MAIL, or the stream would be closed.
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    // BDAT with no recipient is refused too.
    h.client.send(b"BDAT 3 LAST\r\nabc").await;
    assert_reply(&h.client.reply().await, "503", "5.5.1");
    assert!(h.store.deliveries().is_empty());
}

#[tokio::test]
async fn data_after_bdat_is_a_sequence_error() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    h.client.send(b"BDAT 2\r\nab").await;
    assert_code(&h.client.reply().await, "250");
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
}

#[tokio::test]
async fn oversize_bdat_is_refused_and_ends_the_transaction() {
    let mut h = start_greeted(SmtpConfig {
        message_size_max: 100,
        ..config()
    })
    .await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    h.client.send(b"BDAT 60\r\n").await;
    h.client.send([b'a'; 60]).await;
    assert_code(&h.client.reply().await, "250");
    h.client.send(b"BDAT 60\r\n").await;
    h.client.send([b'b'; 60]).await;
    assert_reply(&h.client.reply().await, "552", "5.3.4");
    // The transaction is over; a further chunk finds none.
    h.client.send(b"BDAT 1 LAST\r\nc").await;
    assert_reply(&h.client.reply().await, "503", "5.5.1");
    assert!(h.store.deliveries().is_empty());
    assert_code(&h.client.command("NOOP").await, "250");
}
