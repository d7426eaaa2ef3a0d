//! STLS (RFC 2595) and the plaintext-login policy: CAPA lists what is allowed,
//! passwords are refused in the clear from a non-loopback peer, input pipelined
//! after STLS is dropped, and login works once in TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use pop::{ClientInfo, PlaintextAuth, PopConfig};
use rustls_pki_types::ServerName;
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

const REMOTE: &str = "192.0.2.7:40000";

struct Started {
    client: Client<DuplexStream>,
    connector: TlsConnector,
    _shutdown: watch::Sender<bool>,
}

/// A session with STLS offered, for a client at `peer`, greeting read.
async fn start_tls_capable(peer: &str, policy: PlaintextAuth) -> Started {
    let pki = tls::testing::test_tls().unwrap();
    let config = PopConfig {
        stls: Some(pki.acceptor),
        plaintext_auth: policy,
        ..test_config()
    };
    let (client_side, server_side) = tokio::io::duplex(64 * 1024);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let store = Arc::new(sample_store());
    let info = ClientInfo {
        peer: Some(peer.parse::<SocketAddr>().unwrap()),
        tls: false,
    };
    tokio::spawn(pop::serve_client(
        server_side,
        info,
        Arc::new(config),
        store.clone(),
        store,
        shutdown_rx,
    ));
    let mut client = Client::new(client_side);
    assert!(client.line().await.starts_with("+OK"));
    Started {
        client,
        connector: TlsConnector::from(pki.client),
        _shutdown: shutdown,
    }
}

async fn capa(
    client: &mut Client<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
) -> Vec<String> {
    assert!(client.cmd("CAPA").await.starts_with("+OK"));
    client.lines().await
}

#[tokio::test]
async fn remote_plaintext_login_is_refused_until_stls() {
    let Started {
        mut client,
        connector,
        _shutdown,
    } = start_tls_capable(REMOTE, PlaintextAuth::Loopback).await;
    let caps = capa(&mut client).await;
    assert!(caps.contains(&"STLS".to_string()), "{caps:?}");
    assert!(!caps.contains(&"USER".to_string()), "{caps:?}");
    assert!(!caps.iter().any(|c| c.starts_with("SASL")), "{caps:?}");
    let refused = client.cmd("USER alice").await;
    assert!(refused.starts_with("-ERR [AUTH] plaintext"), "{refused}");
    let refused = client.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=").await;
    assert!(refused.starts_with("-ERR [AUTH] plaintext"), "{refused}");

    assert_eq!(client.cmd("STLS").await, "+OK Begin TLS negotiation");
    let stream = connector
        .connect(
            ServerName::try_from("localhost").unwrap(),
            client.into_inner(),
        )
        .await
        .expect("TLS handshake");
    let mut tls = Client::new(stream);
    let caps = capa(&mut tls).await;
    assert!(!caps.contains(&"STLS".to_string()), "{caps:?}");
    assert!(caps.contains(&"USER".to_string()), "{caps:?}");
    assert!(tls.cmd("STLS").await.starts_with("-ERR"));
    assert!(
        tls.login("alice", "wonderland")
            .await
            .starts_with("+OK maildrop has 3")
    );
    assert!(tls.cmd("RETR 2").await.starts_with("+OK"));
    assert_eq!(tls.body().await, MSG_TWO);
    assert!(tls.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn input_pipelined_after_stls_is_dropped() {
    let Started {
        mut client,
        connector,
        _shutdown,
    } = start_tls_capable("127.0.0.1:40000", PlaintextAuth::Loopback).await;
    // Injected in the clear behind STLS: must not run under TLS.
    client
        .send(b"STLS\r\nUSER alice\r\nPASS wonderland\r\n")
        .await;
    assert_eq!(client.line().await, "+OK Begin TLS negotiation");
    let stream = connector
        .connect(
            ServerName::try_from("localhost").unwrap(),
            client.into_inner(),
        )
        .await
        .expect("TLS handshake");
    let mut tls = Client::new(stream);
    // Not logged in: the injected USER/PASS were dropped.
    assert!(tls.cmd("STAT").await.starts_with("-ERR"));
    assert!(tls.login("alice", "wonderland").await.starts_with("+OK"));
}

#[tokio::test]
async fn policy_always_and_never() {
    let mut s = start_tls_capable(REMOTE, PlaintextAuth::Always).await;
    assert!(
        s.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
    let mut s = start_tls_capable("127.0.0.1:40000", PlaintextAuth::Never).await;
    assert!(s.client.cmd("USER alice").await.starts_with("-ERR [AUTH]"));
    let mut s = start_tls_capable("127.0.0.1:40000", PlaintextAuth::Loopback).await;
    assert!(
        s.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
}

#[tokio::test]
async fn stls_after_login_is_a_wrong_state() {
    let mut s = start_tls_capable("127.0.0.1:40000", PlaintextAuth::Loopback).await;
    assert!(
        s.client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK")
    );
    assert!(s.client.cmd("STLS").await.starts_with("-ERR"));
    assert!(s.client.cmd("STAT").await.starts_with("+OK"));
    drop(s.connector);
}
