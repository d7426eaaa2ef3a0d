//! The listeners' abuse limits over real loopback sockets: the per-address cap of the
//! SMTP/POP3 accept loop, and the deadlines of the HTTP (RPC and admin) listener.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use node::listen::{HttpTimeouts, PerIpCap, serve_http, serve_tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const BUSY: &[u8] = b"421 4.7.0 too many connections from your address\r\n";

/// Start `serve_tcp` with a greeting session that then waits for the client to close.
async fn tcp_server(per_ip: PerIpCap) -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve_tcp(
        listener,
        100,
        b"421 4.7.0 too many connections\r\n",
        per_ip,
        rx,
        |mut stream: TcpStream, _peer| async move {
            let _ = stream.write_all(b"220 hello\r\n").await;
            let mut buf = [0u8; 64];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        },
    ));
    (addr, tx)
}

/// Connect and read the first line the server sends.
async fn first_line(addr: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while stream.read(&mut byte).await.unwrap_or(0) == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
    })
    .await
    .expect("no line within 10 s");
    (stream, String::from_utf8_lossy(&line).into_owned())
}

#[tokio::test]
async fn per_ip_cap_refuses_the_one_over_and_frees_slots_on_close() {
    let (addr, _stop) = tcp_server(PerIpCap::new(3, Vec::new(), BUSY)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (stream, line) = first_line(&addr).await;
        assert_eq!(line, "220 hello\r\n");
        held.push(stream);
    }
    let (mut over, line) = first_line(&addr).await;
    assert_eq!(line.as_bytes(), BUSY);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), over.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed after the busy line");
    // A slot comes back when its connection ends.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (stream, line) = first_line(&addr).await;
        if line == "220 hello\r\n" {
            held.push(stream);
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exempt_addresses_are_not_capped() {
    let exempt: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
    let (addr, _stop) = tcp_server(PerIpCap::new(2, exempt, BUSY)).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let (stream, line) = first_line(&addr).await;
        assert_eq!(line, "220 hello\r\n");
        held.push(stream);
    }
}

#[test]
fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
    let cap = PerIpCap::new(1, Vec::new(), BUSY);
    let a = cap.admit("2001:db8:1:2::1".parse().unwrap());
    assert!(a.is_some());
    assert!(cap.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
    assert!(cap.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
    let b = cap.admit("192.0.2.7".parse().unwrap());
    assert!(b.is_some());
    assert!(cap.admit("::ffff:192.0.2.7".parse().unwrap()).is_none());
    drop(a);
    assert!(cap.admit("2001:db8:1:2::1".parse().unwrap()).is_some());
}

/// Start `serve_http` answering every request `200 ok` after reading its body.
async fn http_server(timeouts: HttpTimeouts, max: usize) -> (String, watch::Sender<bool>) {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve_http(
        listener,
        max,
        timeouts,
        None,
        rx,
        |req| async move {
            let text = match req.into_body().collect().await {
                Ok(body) => format!("ok {}", body.to_bytes().len()),
                Err(e) => format!("body error: {e}"),
            };
            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)))
        },
    ));
    (addr, tx)
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; the response text.
async fn http_get(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http_connections_are_dropped_and_real_requests_still_served() {
    let timeouts = HttpTimeouts {
        request: Duration::from_secs(2),
        idle: Duration::from_secs(3),
    };
    let (addr, _stop) = http_server(timeouts, 4096).await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // Some say nothing, some half an HTTP/2 preface, some half a request line.
        match i % 3 {
            0 => {}
            1 => s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(),
            _ => s.write_all(b"GET / HT").await.unwrap(),
        }
        stalled.push(s);
    }
    // Meanwhile a real request is answered.
    assert!(http_get(&addr).await.contains("ok 0"));
    for (i, s) in stalled.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left).await,
            "stalled connection {i} still open after {:?}",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the deadline"
    );
    assert!(http_get(&addr).await.contains("ok 0"));
}

#[tokio::test]
async fn idle_keepalive_and_trickled_body_are_cut() {
    let timeouts = HttpTimeouts {
        request: Duration::from_secs(1),
        idle: Duration::from_secs(2),
    };
    let (addr, _stop) = http_server(timeouts, 64).await;
    // A body announced at 100 bytes and sent a byte at a time: answered with the body
    // error once the request deadline passes, not held open.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {
                let _ = s.write_all(b"x").await;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("body error"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A keep-alive HTTP/1 connection that goes quiet after a request is closed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
}
