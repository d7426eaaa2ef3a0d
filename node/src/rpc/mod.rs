//! Inter-node RPC: postcard-encoded [`proto::Request`]s over HTTP/2 (hyper, h2c prior
//! knowledge), a timeout on every call, the responder's load on every reply.

pub mod proto;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use proto::{Failure, Reply, Request, Response, SessionId, StorageOp, Unready};

/// The RPC wire version this node speaks; every request and reply carries it in the
/// [`VERSION_HEADER`]. Raise it when a change to [`proto`] is not readable by the
/// previous release (appending enum variants and `#[serde(default)]` fields is).
pub const RPC_VERSION: u32 = 1;
/// The oldest RPC version this node still reads (a rolling upgrade mixes two).
pub const RPC_VERSION_MIN: u32 = 1;
/// The HTTP header naming the sender's RPC version (absent: version 1).
pub const VERSION_HEADER: &str = "porcupine-rpc-version";

/// Whether this node reads RPC `version`; the answer's text says why not.
pub fn check_version(version: u32) -> Result<(), String> {
    if (RPC_VERSION_MIN..=RPC_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "rpc version {version} not supported: this node (porcupine {}) reads versions {RPC_VERSION_MIN} to {RPC_VERSION}",
            env!("CARGO_PKG_VERSION")
        ))
    }
}

/// The sender's RPC version from its headers (absent: 1, the first release).
fn version_of(headers: &hyper::HeaderMap) -> Result<u32, String> {
    match headers.get(VERSION_HEADER) {
        None => Ok(1),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| format!("unreadable {VERSION_HEADER} header {v:?}")),
    }
}

/// RPCs refused since start because their version was unreadable (for status).
pub static VERSION_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Log an RPC version this node cannot read once per version, not per call.
fn note_unreadable_version(from: &str, why: &str) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = SEEN
        .lock()
        .map(|mut seen| seen.len() < 64 && seen.insert(why.to_string()))
        .unwrap_or(false);
    metrics::counter!("porcupine_rpc_version_refused_total").increment(1);
    VERSION_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if first {
        tracing::warn!(
            from,
            "{why} (requests in it are refused; this node serves the rest)"
        );
    }
}

/// Largest RPC body accepted (a message of the largest size plus framing).
pub const RPC_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why a call failed; every variant means "the callee may or may not have acted".
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Could not connect or the connection broke.
    #[error("rpc to {addr}: transport: {reason}")]
    Transport {
        /// Callee address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("rpc to {addr}: timed out after {timeout_ms} ms")]
    Timeout {
        /// Callee address.
        addr: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The answer did not decode or had a bad status.
    #[error("rpc to {addr}: bad reply: {reason}")]
    BadReply {
        /// Callee address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

/// A pooled HTTP/2 client for calling other nodes.
#[derive(Clone)]
pub struct RpcClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    /// `https` with cluster TLS, `http` without.
    scheme: &'static str,
}

impl RpcClient {
    /// A client whose calls give up after `timeout`, in plain HTTP/2 (loopback only).
    pub fn new(timeout: Duration) -> Self {
        Self::with_tls(timeout, None)
    }

    /// A client whose calls give up after `timeout`; with `tls` (the cluster's
    /// client configuration) every call is mutual TLS.
    pub fn with_tls(timeout: Duration, tls: Option<rustls::ClientConfig>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Without cluster TLS the URIs are http:// and this configuration is unused.
        let tls = tls.unwrap_or_else(|| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Some(Duration::from_secs(5)))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .build(connector);
        RpcClient {
            client,
            timeout,
            scheme,
        }
    }

    /// Send `req` to the node listening at `addr` and wait for its reply.
    pub async fn call(&self, addr: &str, req: &Request) -> Result<Reply, RpcError> {
        self.call_with_timeout(addr, req, self.timeout).await
    }

    /// As [`RpcClient::call`] with an explicit timeout.
    pub async fn call_with_timeout(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Reply, RpcError> {
        let body = postcard::to_allocvec(req).map_err(|e| RpcError::BadReply {
            addr: addr.to_string(),
            reason: format!("encoding request: {e}"),
        })?;
        let transport = |e: String| RpcError::Transport {
            addr: addr.to_string(),
            reason: e,
        };
        let http_req = hyper::Request::builder()
            .method(Method::POST)
            .uri(format!("{}://{addr}/rpc", self.scheme))
            .header("content-type", "application/x-porcupine-rpc")
            .header(VERSION_HEADER, RPC_VERSION.to_string())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(http_req)
                .await
                .map_err(|e| transport(format!("{e:?}")))?;
            let status = resp.status();
            if let Err(why) = version_of(resp.headers()).and_then(check_version) {
                note_unreadable_version(addr, &why);
                return Err(RpcError::BadReply {
                    addr: addr.to_string(),
                    reason: why,
                });
            }
            let bytes = Limited::new(resp.into_body(), RPC_BODY_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(RpcError::BadReply {
                    addr: addr.to_string(),
                    reason: format!("status {status}: {}", String::from_utf8_lossy(&bytes)),
                });
            }
            postcard::from_bytes::<Reply>(&bytes).map_err(|e| RpcError::BadReply {
                addr: addr.to_string(),
                reason: e.to_string(),
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout {
                addr: addr.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

/// What answers RPCs on this node.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handle one request.
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
    /// This node's current load figure.
    fn load(&self) -> u32;
}

/// Decode, dispatch and encode one RPC HTTP request.
pub async fn serve_http<H: RpcHandler>(
    handler: Arc<H>,
    req: hyper::Request<crate::listen::TimedBody>,
) -> hyper::Response<Full<Bytes>> {
    let plain = |status: StatusCode, msg: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(msg)));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::POST || req.uri().path() != "/rpc" {
        return plain(StatusCode::NOT_FOUND, "not an rpc path".into());
    }
    if let Err(why) = version_of(req.headers()).and_then(check_version) {
        note_unreadable_version("a peer", &why);
        return plain(StatusCode::BAD_REQUEST, why);
    }
    let bytes = match Limited::new(req.into_body(), RPC_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    let request: Request = match postcard::from_bytes(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("decoding request (rpc version {RPC_VERSION}): {e}"),
            );
        }
    };
    let response = handler.handle(request).await;
    let reply = Reply {
        load: handler.load(),
        response,
    };
    match postcard::to_allocvec(&reply) {
        Ok(body) => {
            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                VERSION_HEADER,
                hyper::header::HeaderValue::from(RPC_VERSION),
            );
            r
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding reply: {e}"),
        ),
    }
}
