//! Accept loops: bind errors name the port, every listener caps its connections, and
//! each stops accepting when shutdown is signalled (sessions then end in protocol).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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

/// Accept connections on `listener` until shutdown; at most `max` at once. A client over
/// the cap gets `busy` and is closed. Returns after every session has ended.
pub async fn serve_tcp<F, Fut>(
    listener: TcpListener,
    max: usize,
    busy: &'static [u8],
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
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = session(stream, peer);
                sessions.spawn(async move {
                    fut.await;
                    drop(permit);
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

/// Serve HTTP (1.1 or h2c) on `listener` with `handler` until shutdown; at most `max`
/// connections at once: one over the cap is answered `503` and closed.
pub async fn serve_http<H, Fut>(
    listener: TcpListener,
    max: usize,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
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
        conns.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(h(req).await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
    conns.abort_all();
}
