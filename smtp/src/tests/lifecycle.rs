//! How sessions end: idle timeout, shutdown, disconnects; and a real TCP socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::support::*;
use crate::serve;

#[tokio::test(start_paused = true)]
async fn idle_client_gets_421_after_the_timeout() {
    let started = tokio::time::Instant::now();
    let mut h = start(config());
    assert_code(&h.client.reply_untimed().await, "220");
    tokio::time::sleep(Duration::from_secs(299)).await;
    // Activity restarts the clock.
    h.client.send(b"NOOP\r\n").await;
    assert_code(&h.client.reply_untimed().await, "250");
    let reply = h.client.reply_untimed().await;
    assert_reply(&reply, "421", "4.4.2");
    assert!(reply.text().contains(HOST) && reply.text().contains("idle timeout"));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(599) && elapsed < Duration::from_secs(601),
        "{elapsed:?}"
    );
    h.client.expect_closed().await;
    h.ended().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_applies_inside_data() {
    let mut h = start(crate::SmtpConfig {
        idle_timeout: Duration::from_secs(30),
        ..config()
    });
    assert_code(&h.client.reply_untimed().await, "220");
    h.client
        .send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .await;
    for _ in 0..3 {
        assert_code(&h.client.reply_untimed().await, "250");
    }
    h.client.send(b"DATA\r\n").await;
    assert_code(&h.client.reply_untimed().await, "354");
    h.client.send(b"half a message\r\n").await;
    assert_reply(&h.client.reply_untimed().await, "421", "4.4.2");
    assert!(h.store.deliveries().is_empty());
}

#[tokio::test]
async fn shutdown_answers_421_and_closes() {
    let mut h = start_greeted(config()).await;
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    h.shutdown.send(true).unwrap();
    let reply = h.client.reply().await;
    assert_reply(&reply, "421", "4.3.0");
    assert!(reply.text().contains(&format!("{HOST} shutting down")));
    h.client.expect_closed().await;
    assert!(h.store.deliveries().is_empty());
    h.ended().await.unwrap();
}

#[tokio::test]
async fn client_arriving_during_shutdown_gets_421_instead_of_the_greeting() {
    let mut h = start(config());
    // The session task has not run yet (single-threaded test runtime).
    h.shutdown.send(true).unwrap();
    assert_reply(&h.client.reply().await, "421", "4.3.0");
    h.client.expect_closed().await;
    h.ended().await.unwrap();
}

#[tokio::test]
async fn dropped_shutdown_sender_does_not_end_the_session() {
    let Harness {
        mut client,
        shutdown,
        task,
        ..
    } = start_greeted(config()).await;
    drop(shutdown);
    assert_code(&client.command("NOOP").await, "250");
    assert_code(&client.command("QUIT").await, "221");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn disconnect_during_data_delivers_nothing() {
    let Harness {
        mut client,
        store,
        task,
        shutdown: _shutdown,
    } = start_greeted(config()).await;
    client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&client.command("DATA").await, "354");
    client.send(b"Subject: cut short\r\n\r\npart").await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(store.deliveries().is_empty());
}

#[tokio::test]
async fn disconnect_mid_command_returns_quietly() {
    let Harness {
        mut client,
        task,
        shutdown: _shutdown,
        ..
    } = start_greeted(config()).await;
    client.send(b"MAIL FROM:<a@rem").await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn full_transaction_over_loopback_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let store = Arc::new(MemoryDeliver::default());
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let server_store = store.clone();
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        serve(
            stream,
            Some(peer),
            Arc::new(config()),
            server_store,
            shutdown_rx,
        )
        .await
    });
    let stream = TcpStream::connect(address).await.unwrap();
    let client_address = stream.local_addr().unwrap();
    let mut client = Client::new(stream);
    assert_code(&client.reply().await, "220");
    client
        .envelope("sender@remote.test", &["alice@example.test"])
        .await;
    let body = b"Subject: tcp\r\n\r\n..over a real socket\r\n";
    assert_code(&client.data(body).await, "250");
    assert_code(&client.command("QUIT").await, "221");
    client.expect_closed().await;
    server.await.unwrap().unwrap();

    let (envelope, message) = store.deliveries().pop().unwrap();
    assert_eq!(envelope.peer, Some(client_address));
    let (trace, rest) = split_trace(&message);
    assert!(
        trace.contains("Received: from client.test ([127.0.0.1])\r\n"),
        "{trace}"
    );
    assert_eq!(rest, b"Subject: tcp\r\n\r\n.over a real socket\r\n");
}

/// Send one byte a second (never a line end) until a reply comes; fail after
/// `seconds_max`.
async fn trickle(client: &mut Client<tokio::io::DuplexStream>, seconds_max: u32) -> Reply {
    for _ in 0..seconds_max {
        tokio::select! {
            reply = client.reply_untimed() => return reply,
            () = tokio::time::sleep(Duration::from_secs(1)) => client.send(b"x").await,
        }
    }
    panic!("no reply while trickling for {seconds_max} s");
}

#[tokio::test(start_paused = true)]
async fn trickled_command_line_gets_421_at_the_command_deadline() {
    // One byte a second never trips the 300 s idle timeout; the 10 s line deadline,
    // counted from the line's first byte, does.
    let mut h = start(crate::SmtpConfig {
        command_timeout: Duration::from_secs(10),
        ..config()
    });
    assert_code(&h.client.reply_untimed().await, "220");
    // A whole line at once is fine, and restarts nothing it should not.
    h.client.send(b"NOOP\r\n").await;
    assert_code(&h.client.reply_untimed().await, "250");
    let started = tokio::time::Instant::now();
    let reply = trickle(&mut h.client, 120).await;
    assert_reply(&reply, "421", "4.4.2");
    assert!(reply.text().contains("command timeout"), "{reply:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(10) && elapsed <= Duration::from_secs(12),
        "{elapsed:?}"
    );
    h.client.expect_closed().await;
    h.ended().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn endless_overlong_line_is_timed_too() {
    let mut h = start(crate::SmtpConfig {
        command_timeout: Duration::from_secs(10),
        ..config()
    });
    assert_code(&h.client.reply_untimed().await, "220");
    h.client.send(vec![b'x'; 600]).await;
    assert_reply(&h.client.reply_untimed().await, "500", "5.5.2");
    let started = tokio::time::Instant::now();
    let reply = trickle(&mut h.client, 120).await;
    assert_reply(&reply, "421", "4.4.2");
    assert!(
        started.elapsed() <= Duration::from_secs(11),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn trickled_data_gets_421_after_the_grace_and_keeps_nothing() {
    let mut h = start(crate::SmtpConfig {
        data_timeout: Duration::from_secs(20),
        data_rate_min: 100,
        ..config()
    });
    assert_code(&h.client.reply_untimed().await, "220");
    h.client
        .send(
            b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
        )
        .await;
    for code in ["250", "250", "250", "354"] {
        assert_code(&h.client.reply_untimed().await, code);
    }
    let started = tokio::time::Instant::now();
    let reply = trickle(&mut h.client, 120).await;
    assert_reply(&reply, "421", "4.4.2");
    assert!(reply.text().contains("data timeout"), "{reply:?}");
    // 20 s of grace plus 1/100 s per byte received.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(20) && elapsed <= Duration::from_secs(21),
        "{elapsed:?}"
    );
    assert!(h.store.deliveries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn data_above_the_rate_floor_outlasts_the_grace() {
    let mut h = start(crate::SmtpConfig {
        data_timeout: Duration::from_secs(5),
        data_rate_min: 100,
        ..config()
    });
    assert_code(&h.client.reply_untimed().await, "220");
    h.client
        .envelope("a@remote.test", &["alice@example.test"])
        .await;
    assert_code(&h.client.command("DATA").await, "354");
    // 30 s at 200 bytes/s: twice the floor, six times the grace.
    let line = [vec![b'z'; 198], b"\r\n".to_vec()].concat();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.client.send(&line).await;
    }
    h.client.send(b".\r\n").await;
    assert_code(&h.client.reply_untimed().await, "250");
    assert_eq!(h.store.deliveries().len(), 1);
}
