//! One session over a real TCP socket on 127.0.0.1.

mod common;

use std::sync::Arc;

use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[tokio::test]
async fn full_session_over_loopback_tcp() {
    let store = sample_store();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let server_store = Arc::new(store.clone());
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        pop::serve(
            socket,
            Arc::new(test_config()),
            server_store.clone(),
            server_store,
            shutdown_rx,
        )
        .await
    });

    let mut client = Client::new(TcpStream::connect(address).await.unwrap());
    assert_eq!(client.line().await, "+OK pop.test POP3 Porcupine ready");
    assert!(
        client
            .login("alice", "wonderland")
            .await
            .starts_with("+OK maildrop has 3")
    );
    assert!(client.cmd("RETR 2").await.starts_with("+OK"));
    assert_eq!(client.body().await, MSG_TWO);
    assert!(client.cmd("RETR 3").await.starts_with("+OK"));
    let mut expected = MSG_THREE.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(client.body().await, expected);
    assert_eq!(client.cmd("DELE 2").await, "+OK message 2 deleted");
    assert!(client.cmd("QUIT").await.starts_with("+OK"));
    assert!(client.at_eof().await);
    finish(server).await.unwrap();
    assert_eq!(store.uids("alice"), ["uid-one", "uid-three"]);
    assert!(!store.is_locked("alice"));
}
