//! Regressions for what an adversarial probe found (issue 11): quoting lost in the
//! reverse path, SIZE overflow, BDAT size verdicts, SMTPUTF8's reply code, and bare
//! line endings (the SMTP smuggling class, SEC Consult 2023).

use super::support::*;
use crate::SmtpConfig;

#[tokio::test]
async fn quoted_local_part_keeps_its_quotes_in_return_path() {
    let mut h = start_greeted(config()).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    let from = r#"MAIL FROM:<"a>,<b"@other.test>"#;
    assert_code(&h.client.command(from).await, "250");
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    assert_code(&h.client.data(b"hi\r\n").await, "250");
    let (envelope, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(envelope.mail_from, r#""a>,<b"@other.test"#);
    let (fields, _) = split_trace(&message);
    assert!(
        fields.starts_with("Return-Path: <\"a>,<b\"@other.test>\r\n"),
        "{fields}"
    );
}

#[tokio::test]
async fn plain_local_part_is_not_quoted() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("first.last+tag@other.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.data(b"hi\r\n").await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    let (fields, _) = split_trace(&message);
    assert!(
        fields.starts_with("Return-Path: <first.last+tag@other.test>\r\n"),
        "{fields}"
    );
}

#[tokio::test]
async fn huge_size_is_too_big_not_accepted() {
    let mut h = start_greeted(config()).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    for size in [
        "99999999999",
        "18446744073709551616",
        "99999999999999999999",
        "999999999999999999999999",
        "9999999999999999999999999999999999999999999999",
    ] {
        let line = format!("MAIL FROM:<a@remote.test> SIZE={size}");
        assert_reply(&h.client.command(&line).await, "552", "5.3.4");
    }
    // No transaction was started by any of them.
    assert_code(
        &h.client.command("MAIL FROM:<a@remote.test> SIZE=10").await,
        "250",
    );
}

#[tokio::test]
async fn oversize_bdat_last_gets_a_size_answer() {
    let mut h = start_greeted(SmtpConfig {
        message_size_max: 1000,
        ..config()
    })
    .await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    // One long "line" (no LF) in a chunk over the size limit: the verdict is size.
    h.client.send(b"BDAT 3000 LAST\r\n").await;
    h.client.send([b'x'; 3000]).await;
    let reply = h.client.reply().await;
    assert_reply(&reply, "552", "5.3.4");
    assert!(reply.text().contains("size"), "{}", reply.text());
    assert!(h.store.deliveries().is_empty());
    assert_code(&h.client.command("NOOP").await, "250");
}

#[tokio::test]
async fn smtputf8_parameter_gets_555() {
    let mut h = start_greeted(config()).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    let reply = h.client.command("MAIL FROM:<a@remote.test> SMTPUTF8").await;
    assert_reply(&reply, "555", "5.5.4");
    assert!(reply.text().contains("SMTPUTF8"), "{}", reply.text());
}

/// DATA with `wire` then a proper `<CRLF>.<CRLF>`: the candidate terminator in `wire`
/// must not end the data (the commands after it are not run), and the message is
/// refused at the real end for its bare line ending.
async fn smuggling_is_refused(wire: &[u8]) {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    let reply = h.client.data(wire).await;
    assert_reply(&reply, "554", "5.5.2");
    assert!(h.store.deliveries().is_empty(), "{wire:?} was delivered");
    // The smuggled MAIL/RCPT were message text, never commands.
    assert_eq!(h.store.checked(), vec!["alice@example.test"]);
    // The session goes on, outside any transaction.
    assert_reply(
        &h.client.command("RCPT TO:<bob@example.test>").await,
        "503",
        "5.5.1",
    );
    assert_code(&h.client.command("NOOP").await, "250");
}

const SMUGGLED: &[u8] =
    b"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nevil\r\n";

#[tokio::test]
async fn lf_dot_lf_does_not_end_data() {
    smuggling_is_refused(&[b"one\n.\n", SMUGGLED].concat()).await;
}

#[tokio::test]
async fn cr_dot_cr_does_not_end_data() {
    smuggling_is_refused(&[b"one\r.\r", SMUGGLED].concat()).await;
}

#[tokio::test]
async fn lf_dot_crlf_does_not_end_data() {
    smuggling_is_refused(&[b"one\n.\r\n", SMUGGLED].concat()).await;
}

#[tokio::test]
async fn crlf_dot_lf_does_not_end_data() {
    smuggling_is_refused(&[b"one\r\n.\n", SMUGGLED].concat()).await;
}

#[tokio::test]
async fn crlf_dot_cr_does_not_end_data() {
    smuggling_is_refused(&[b"one\r\n.\r", SMUGGLED].concat()).await;
}

#[tokio::test]
async fn bare_lf_and_bare_cr_in_data_are_refused() {
    for wire in [
        &b"bare LF line\nrest\r\n"[..],
        b"bare CR \r in the middle\r\n",
        b"\nfirst byte\r\n",
        b"CR CR LF\r\r\n",
    ] {
        let mut h = start_greeted(config()).await;
        h.client
            .envelope("a@remote.test", &["alice@example.test"])
            .await;
        assert_reply(&h.client.data(wire).await, "554", "5.5.2");
        assert!(h.store.deliveries().is_empty(), "{wire:?}");
    }
}

#[tokio::test]
async fn bare_lf_and_bare_cr_in_bdat_are_refused_too() {
    for chunk in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"ends in CR\r"] {
        let mut h = start_greeted(config()).await;
        h.client
            .envelope("a@remote.test", &["alice@example.test"])
            .await;
        h.client
            .send([format!("BDAT {} LAST\r\n", chunk.len()).as_bytes(), chunk].concat())
            .await;
        assert_reply(&h.client.reply().await, "554", "5.5.2");
        assert!(h.store.deliveries().is_empty(), "{chunk:?}");
    }
}

#[tokio::test]
async fn crlf_split_across_bdat_chunks_is_fine() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    h.client.send(b"BDAT 3\r\nab\r").await;
    assert_code(&h.client.reply().await, "250");
    h.client.send(b"BDAT 3 LAST\r\n\ncd").await;
    assert_code(&h.client.reply().await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, b"ab\r\ncd");
}

#[tokio::test]
async fn crlf_split_across_data_writes_is_fine() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.command("DATA").await, "354");
    for piece in [&b"line one\r"[..], b"\nline two\r", b"\n", b".\r", b"\n"] {
        h.client.send(piece).await;
    }
    assert_code(&h.client.reply().await, "250");
    let (_, message) = h.store.deliveries().pop().unwrap();
    assert_eq!(split_trace(&message).1, b"line one\r\nline two\r\n");
}

#[tokio::test]
async fn commands_with_bare_lf_or_cr_are_refused() {
    let mut h = start_greeted(config()).await;
    h.client.send(b"EHLO client.test\n").await;
    assert_reply(&h.client.reply().await, "500", "5.5.2");
    h.client
        .send(b"NOOP\rMAIL FROM:<evil@remote.test>\r\n")
        .await;
    assert_reply(&h.client.reply().await, "500", "5.5.2");
    // Nothing of either ran: no greeting was accepted, no transaction started.
    assert_reply(
        &h.client.command("MAIL FROM:<a@remote.test>").await,
        "503",
        "5.5.1",
    );
    assert_code(&h.client.command("EHLO client.test").await, "250");
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
}
