//! Single commands and their error codes.

use super::support::*;

#[tokio::test]
async fn sequence_errors_are_503() {
    let mut h = start_greeted(config()).await;
    // MAIL before HELO/EHLO.
    assert_reply(
        &h.client.command("MAIL FROM:<a@remote.test>").await,
        "503",
        "5.5.1",
    );
    assert_code(&h.client.command("EHLO client.test").await, "250");
    // RCPT and DATA before MAIL.
    assert_reply(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "503",
        "5.5.1",
    );
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    // Nested MAIL.
    assert_reply(
        &h.client.command("MAIL FROM:<b@remote.test>").await,
        "503",
        "5.5.1",
    );
    // DATA before any accepted RCPT.
    assert_code(
        &h.client.command("RCPT TO:<nobody@example.test>").await,
        "550",
    );
    assert_reply(&h.client.command("DATA").await, "503", "5.5.1");
    // The transaction is still the first one.
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    assert_code(&h.client.data(b"x\r\n").await, "250");
    assert_eq!(h.store.deliveries()[0].0.mail_from, "a@remote.test");
}

#[tokio::test]
async fn recipient_verdicts() {
    let mut h = start_greeted(config()).await;
    h.client.envelope("a@remote.test", &[]).await;
    let unknown = h.client.command("RCPT TO:<nobody@example.test>").await;
    assert_reply(&unknown, "550", "5.1.1");
    let relay = h.client.command("RCPT TO:<someone@elsewhere.test>").await;
    assert_reply(&relay, "550", "5.7.1");
    assert!(relay.text().contains("relaying denied"));
    let temp = h.client.command("RCPT TO:<tempfail@example.test>").await;
    assert_reply(&temp, "451", "4.3.0");
    assert!(temp.text().contains("registry unavailable"));
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
    assert_code(&h.client.data(b"x\r\n").await, "250");
    let (envelope, _) = h.store.deliveries().pop().unwrap();
    assert_eq!(
        envelope.rcpt_to,
        vec!["alice@example.test"],
        "only accepted recipients"
    );
}

#[tokio::test]
async fn syntax_errors() {
    let mut h = start_greeted(crate::SmtpConfig {
        errors_max: 100,
        ..config()
    })
    .await;
    assert_reply(&h.client.command("FROB").await, "500", "5.5.2");
    assert_reply(&h.client.command("").await, "500", "5.5.2");
    assert_reply(&h.client.command("EHLO").await, "501", "5.5.4");
    assert_code(&h.client.command("EHLO client.test").await, "250");
    assert_reply(
        &h.client.command("MAIL FROM:a@remote.test").await,
        "501",
        "5.5.4",
    );
    assert_reply(
        &h.client.command("MAIL FROM:<a@@remote.test>").await,
        "501",
        "5.5.4",
    );
    assert_reply(
        &h.client.command("MAIL FROM:<a@remote.test> FOO=BAR").await,
        "555",
        "5.5.4",
    );
    // Parameters we do not know and extensions we do not advertise: 555 (RFC 5321
    // 4.1.1.11).
    assert_reply(
        &h.client.command("MAIL FROM:<a@remote.test> SMTPUTF8").await,
        "555",
        "5.5.4",
    );
    assert_reply(
        &h.client.command("MAIL FROM:<a@remote.test> RET=FULL").await,
        "555",
        "5.5.4",
    );
    assert_reply(
        &h.client.command("MAIL FROM:<ä@remote.test>").await,
        "501",
        "5.5.4",
    );
    assert_code(
        &h.client
            .command("MAIL FROM:<a@remote.test> BODY=8BITMIME SIZE=100")
            .await,
        "250",
    );
    assert_reply(
        &h.client.command("RCPT TO:alice@example.test").await,
        "501",
        "5.5.4",
    );
    assert_reply(
        &h.client
            .command("RCPT TO:<alice@example.test> NOTIFY=NEVER")
            .await,
        "555",
        "5.5.4",
    );
    // None of that disturbed the transaction.
    assert_code(
        &h.client.command("RCPT TO:<alice@example.test>").await,
        "250",
    );
}

#[tokio::test]
async fn informational_and_unoffered_commands() {
    let mut h = start_greeted(config()).await;
    assert_reply(&h.client.command("NOOP").await, "250", "2.0.0");
    assert_reply(&h.client.command("VRFY alice").await, "252", "2.5.0");
    let expn = h.client.command("EXPN staff").await;
    assert!(expn.code == "502" || expn.code == "252", "{expn:?}");
    assert_reply(&h.client.command("HELP").await, "214", "2.0.0");
    assert_reply(&h.client.command("STARTTLS").await, "502", "5.5.1");
    assert_reply(
        &h.client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await,
        "502",
        "5.5.1",
    );
    assert_reply(&h.client.command("QUIT").await, "221", "2.0.0");
    h.client.expect_closed().await;
    h.ended().await.unwrap();
}

#[tokio::test]
async fn garbage_bytes_get_500_and_the_session_lives_on() {
    let mut h = start_greeted(config()).await;
    h.client.send(b"\x00\xff\xfe\x80\x01garbage\r\n").await;
    assert_reply(&h.client.reply().await, "500", "5.5.2");
    h.client.send(b"\xc3\x28 \x00\x00\r\n").await;
    assert_reply(&h.client.reply().await, "500", "5.5.2");
    h.client.send(b"\r\n").await;
    assert_reply(&h.client.reply().await, "500", "5.5.2");
    assert_code(&h.client.command("NOOP").await, "250");
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.data(b"x\r\n").await, "250");
}

#[tokio::test]
async fn long_command_line_is_refused_and_its_tail_never_runs() {
    let mut h = start_greeted(config()).await;
    // Exactly 512 bytes with CRLF is allowed.
    let fits = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    assert_eq!(fits.len() + 2, 512);
    assert_code(&h.client.command(&fits).await, "250");
    // 513 is not.
    let over = format!("NOOP {}", "x".repeat(512 - 2 - 4));
    assert_reply(&h.client.command(&over).await, "500", "5.5.2");
    // A long line, sent in pieces, whose tail looks like a command.
    h.client.send("X".repeat(3000)).await;
    h.client.send("X".repeat(3000)).await;
    h.client.send(b" QUIT\r\n").await;
    assert_reply(&h.client.reply().await, "500", "5.5.2");
    // Still alive: QUIT in the tail was dropped with the line.
    assert_code(&h.client.command("NOOP").await, "250");
}

#[tokio::test]
async fn too_many_errors_ends_the_session_with_421() {
    let mut h = start_greeted(crate::SmtpConfig {
        errors_max: 3,
        ..config()
    })
    .await;
    assert_code(&h.client.command("FROB").await, "500");
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "503");
    h.client.send(b"\x00\x01\x02\r\n").await;
    assert_code(&h.client.reply().await, "500");
    let last = h.client.reply().await;
    assert_reply(&last, "421", "4.7.0");
    assert!(last.text().contains(HOST));
    h.client.expect_closed().await;
    h.ended().await.unwrap();
}

#[tokio::test]
async fn too_many_commands_ends_the_session_with_421() {
    let mut h = start_greeted(crate::SmtpConfig {
        commands_max: 5,
        ..config()
    })
    .await;
    for _ in 0..5 {
        assert_code(&h.client.command("NOOP").await, "250");
    }
    assert_reply(&h.client.command("NOOP").await, "421", "4.7.0");
    h.client.expect_closed().await;
    h.ended().await.unwrap();
}
