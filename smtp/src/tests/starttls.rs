//! STARTTLS (RFC 3207): offered only with a certificate and only before TLS, the
//! session reset after the handshake, and input pipelined after the command dropped
//! (the command-injection class of CVE-2011-0411).

use rustls_pki_types::ServerName;
use tokio::io::DuplexStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::support::*;
use crate::SmtpConfig;

fn tls_config() -> (SmtpConfig, TlsConnector) {
    let pki = tls::testing::test_tls().unwrap();
    let config = SmtpConfig {
        starttls: Some(pki.acceptor),
        ..config()
    };
    (config, TlsConnector::from(pki.client))
}

async fn handshake(
    client: Client<DuplexStream>,
    connector: &TlsConnector,
) -> Client<TlsStream<DuplexStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    let stream = connector
        .connect(name, client.into_inner())
        .await
        .expect("TLS handshake");
    Client::new(stream)
}

#[tokio::test]
async fn starttls_is_offered_only_with_a_certificate() {
    let mut h = start_greeted(config()).await;
    let ehlo = h.client.command("EHLO client.test").await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert_reply(&h.client.command("STARTTLS").await, "502", "5.5.1");

    let (config, _) = tls_config();
    let mut h = start_greeted(config).await;
    let ehlo = h.client.command("EHLO client.test").await;
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
}

#[tokio::test]
async fn mail_over_starttls_is_delivered_with_esmtps_trace() {
    let (config, connector) = tls_config();
    let mut h = start_greeted(config).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    assert_reply(&h.client.command("STARTTLS").await, "220", "2.0.0");
    let mut tls = handshake(h.client, &connector).await;
    // The session starts over: a greeting is needed again, and STARTTLS is gone.
    assert_reply(
        &tls.command("MAIL FROM:<a@remote.test>").await,
        "503",
        "5.5.1",
    );
    let ehlo = tls.command("EHLO client.test").await;
    assert_code(&ehlo, "250");
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert_reply(&tls.command("STARTTLS").await, "503", "5.5.1");
    assert_code(&tls.command("MAIL FROM:<a@remote.test>").await, "250");
    assert_code(&tls.command("RCPT TO:<alice@example.test>").await, "250");
    assert_code(
        &tls.data(b"Subject: over TLS\r\n\r\nhello\r\n").await,
        "250",
    );
    let deliveries = h.store.deliveries();
    assert_eq!(deliveries.len(), 1);
    let text = String::from_utf8_lossy(&deliveries[0].1).to_string();
    assert!(text.contains(" with ESMTPS id "), "{text}");
    assert!(text.contains("(using TLS"), "{text}");
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_dropped() {
    let (config, connector) = tls_config();
    let mut h = start_greeted(config).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    // An attacker in the path appends commands in the clear after STARTTLS.
    h.client
        .send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .await;
    assert_reply(&h.client.reply().await, "220", "2.0.0");
    let mut tls = handshake(h.client, &connector).await;
    // The first reply under TLS answers our EHLO, not the injected MAIL.
    let ehlo = tls.command("EHLO client.test").await;
    assert_code(&ehlo, "250");
    assert!(
        ehlo.lines.len() > 1,
        "expected the EHLO reply, got {ehlo:?}"
    );
    // No transaction was opened by the injected MAIL FROM.
    assert_reply(
        &tls.command("RCPT TO:<alice@example.test>").await,
        "503",
        "5.5.1",
    );
    assert_code(&tls.command("QUIT").await, "221");
}

#[tokio::test]
async fn starttls_refused_in_a_transaction_or_with_parameters() {
    let (config, _) = tls_config();
    let mut h = start_greeted(config).await;
    assert_code(&h.client.command("EHLO client.test").await, "250");
    assert_reply(&h.client.command("STARTTLS now").await, "501", "5.5.4");
    assert_code(&h.client.command("MAIL FROM:<a@remote.test>").await, "250");
    assert_reply(&h.client.command("STARTTLS").await, "503", "5.5.1");
    assert_code(&h.client.command("RSET").await, "250");
    assert_reply(&h.client.command("STARTTLS").await, "220", "2.0.0");
}

#[tokio::test]
async fn a_failed_handshake_ends_the_session_quietly() {
    let (config, _) = tls_config();
    let mut h = start_greeted(config).await;
    assert_reply(&h.client.command("STARTTLS").await, "220", "2.0.0");
    h.client
        .send(b"this is not a TLS client hello\r\n\r\n")
        .await;
    h.ended().await.unwrap();
}
