//! The message text: dot-unstuffing, 8-bit and binary bytes, streaming.

use super::support::*;

/// Send `wire` after DATA and return what was stored after the trace fields.
async fn roundtrip(h: &mut Harness, wire: &[u8]) -> Vec<u8> {
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_reply(&h.client.data(wire).await, "250", "2.0.0");
    let (_, message) = h.store.deliveries().pop().unwrap();
    split_trace(&message).1.to_vec()
}

#[tokio::test]
async fn leading_dots_are_unstuffed_exactly() {
    let mut h = start_greeted(config()).await;
    let wire = b"..first line starts with a dot\r\n\
                 ...\r\n\
                 .. \r\n\
                 middle . dot\r\n\
                 ..\r\n";
    let stored = roundtrip(&mut h, wire).await;
    assert_eq!(
        stored,
        b".first line starts with a dot\r\n\
          ..\r\n\
          . \r\n\
          middle . dot\r\n\
          .\r\n"
    );
}

#[tokio::test]
async fn eight_bit_and_binary_bytes_pass_unchanged() {
    let mut h = start_greeted(config()).await;
    let mut wire = b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n".to_vec();
    wire.extend_from_slice("café ünïcödé 日本語\r\n".as_bytes());
    wire.extend_from_slice(b"raw \x80\x81\xfe\xff and NUL \x00\x00 bytes\r\n");
    let stored = roundtrip(&mut h, &wire).await;
    assert_eq!(stored, wire);
}

#[tokio::test]
async fn empty_message() {
    let mut h = start_greeted(config()).await;
    let stored = roundtrip(&mut h, b"").await;
    assert!(stored.is_empty());
}

#[tokio::test]
async fn large_message_in_small_writes_arrives_whole() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.command("DATA").await, "354");
    let mut wire = Vec::new();
    for i in 0..20_000 {
        wire.extend_from_slice(format!(".{i} line of text\r\n").as_bytes());
    }
    // Odd-sized pieces so that CRLF and dots fall on write boundaries.
    for piece in wire.chunks(997) {
        h.client.send(piece).await;
    }
    h.client.send(b".\r\n").await;
    assert_code(&h.client.reply().await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    let mut expected = Vec::new();
    for i in 0..20_000 {
        expected.extend_from_slice(format!("{i} line of text\r\n").as_bytes());
    }
    assert_eq!(split_trace(&message).1, &expected[..]);
}

#[tokio::test]
async fn terminator_split_across_writes() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.command("DATA").await, "354");
    for piece in [&b"text\r"[..], b"\n", b".", b"\r", b"\n"] {
        h.client.send(piece).await;
        tokio::task::yield_now().await;
    }
    assert_code(&h.client.reply().await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, b"text\r\n");
}
