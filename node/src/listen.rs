//! Accept loops: bind errors name the port, every listener caps its connections (SMTP
//! and POP3 also per client address), HTTP connections have deadlines, and each loop
//! stops accepting when shutdown is signalled (sessions then end in protocol).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Bind `addr`, with an error that names it when it is taken.
pub async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr} (is the port already in use?)")
    })
}

/// A cap on the connections one client address may hold open at once. IPv6 clients
/// count per /64 (one host usually has a whole /64); IPv4-mapped addresses as IPv4.
#[derive(Debug, Clone)]
pub struct PerIpCap {
    /// Connections allowed per address (or /64).
    pub max: usize,
    /// Addresses the cap does not apply to.
    pub exempt: Vec<IpAddr>,
    /// The answer to a client over the cap, before it is closed.
    pub busy: &'static [u8],
    open: OpenPerIp,
}

/// Open connections per client address (or IPv6 /64).
type OpenPerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

impl PerIpCap {
    /// At most `max` connections per client address, except from `exempt`.
    pub fn new(max: usize, exempt: Vec<IpAddr>, busy: &'static [u8]) -> PerIpCap {
        let exempt = exempt.into_iter().map(|ip| ip.to_canonical()).collect();
        PerIpCap {
            max,
            exempt,
            busy,
            open: Arc::default(),
        }
    }

    /// Count one more connection from `ip`; `None` when that would pass the cap. The
    /// returned guard gives the slot back when dropped.
    pub fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        if self.exempt.contains(&ip) {
            return Some(IpSlot(None));
        }
        let key = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot(Some((self.open.clone(), key))))
    }
}

/// One connection counted against its address's cap, until dropped.
pub struct IpSlot(Option<(OpenPerIp, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((open, key)) = self.0.take() {
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Accept connections on `listener` until shutdown; at most `max` at once, and at most
/// `per_ip.max` from one client address. A client over the cap gets `busy` (over the
/// per-address cap: `per_ip.busy`) and is closed. Returns after every session has ended.
pub async fn serve_tcp<F, Fut>(
    listener: TcpListener,
    max: usize,
    busy: &'static [u8],
    per_ip: PerIpCap,
    mut shutdown: watch::Receiver<bool>,
    session: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let mut sessions = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = per_ip.admit(peer.ip()) else {
            tracing::debug!(%peer, max = per_ip.max, "too many connections from one address");
            sessions.spawn(refuse(stream, per_ip.busy));
            continue;
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = session(stream, peer);
                sessions.spawn(async move {
                    fut.await;
                    drop(permit);
                    drop(slot);
                });
            }
            Err(_) => {
                sessions.spawn(refuse(stream, busy));
            }
        }
    }
    // Sessions see the same shutdown signal and end in protocol; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    sessions.abort_all();
}

/// The answer of an HTTP listener over its connection cap.
const HTTP_BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 32\r\nconnection: close\r\n\r\n{\"error\":\"too many connections\"}";

/// Answer a client over a listener's cap with `busy` (at most 2 s) and close.
async fn refuse(mut stream: TcpStream, busy: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(busy)).await;
    let _ = stream.shutdown().await;
}

/// Deadlines of an HTTP listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// A new connection must start a request within this (else it is dropped), an
    /// HTTP/1 request's headers must arrive within it, and so must each request body.
    pub request: Duration,
    /// A connection with no request in flight for this long is closed (gracefully:
    /// HTTP/2 `GOAWAY`).
    pub idle: Duration,
}

/// A request body that fails once its deadline has passed.
pub struct TimedBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err("request body not received in time".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection's watchdog knows: requests in flight, and when the last one
/// ended (or the connection was accepted).
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicUsize,
    last: Mutex<tokio::time::Instant>,
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve HTTP (1.1 or h2c) on `listener` with `handler` until shutdown; at most `max`
/// connections at once: one over the cap is answered `503` and closed. Connections
/// keep `timeouts`: one that sends no request in time is dropped, one idle too long
/// is closed.
pub async fn serve_http<H, Fut>(
    listener: TcpListener,
    max: usize,
    timeouts: HttpTimeouts,
    tls: Option<tls::Acceptor>,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(hyper::Request<TimedBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            conns.spawn(refuse(stream, HTTP_BUSY));
            continue;
        };
        let handler = handler.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = tls else {
                serve_http_connection(stream, peer, timeouts, handler).await;
                return;
            };
            // The acceptor's own deadline bounds the handshake (serve sets it to the
            // time a new connection has to send its first request).
            match acceptor.handshake(stream).await {
                Ok(tls_stream) => {
                    serve_http_connection(tls_stream, peer, timeouts, handler).await;
                }
                Err(tls::HandshakeError::Timeout(_)) => {
                    tracing::debug!(%peer, "TLS handshake too slow, dropped");
                }
                Err(error) => {
                    metrics::counter!("porcupine_tls_handshake_failures_total", "listener" => "rpc")
                        .increment(1);
                    tracing::info!(%peer, %error, "TLS handshake refused");
                }
            }
        });
    }
    conns.abort_all();
}

/// One HTTP connection with its watchdog.
async fn serve_http_connection<IO, H, Fut>(
    stream: IO,
    peer: SocketAddr,
    timeouts: HttpTimeouts,
    handler: H,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<TimedBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
        last: Mutex::new(tokio::time::Instant::now()),
    });
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = seen.start();
        let h = handler.clone();
        let req = req.map(|inner| TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeouts.request)),
        });
        async move {
            let response = h(req).await;
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.request);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    tokio::pin!(conn);
    loop {
        // No request in flight: the deadline runs from the last one's end (or the
        // accept); with one in flight, look again an idle period later.
        let busy = activity.in_flight.load(Ordering::SeqCst) > 0;
        let never_used = activity.requests.load(Ordering::SeqCst) == 0;
        let last = *activity.last.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = match (busy, never_used) {
            (true, _) => tokio::time::Instant::now() + timeouts.idle,
            (false, true) => last + timeouts.request,
            (false, false) => last + timeouts.idle,
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                let still_idle = activity.in_flight.load(Ordering::SeqCst) == 0
                    && *activity.last.lock().unwrap_or_else(|e| e.into_inner()) == last;
                if !still_idle {
                    continue;
                }
                if activity.requests.load(Ordering::SeqCst) == 0 {
                    tracing::debug!(%peer, "http connection sent no request in time, dropped");
                    return;
                }
                tracing::debug!(%peer, "http connection idle, closing");
                break;
            }
        }
    }
    // Idle after requests: say goodbye properly (HTTP/2 GOAWAY), briefly.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}
