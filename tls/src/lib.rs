//! TLS for Porcupine: the client-facing listeners (SMTP STARTTLS, POP3 STLS and
//! POP3S) and the cluster's mutual TLS between nodes.
//!
//! Files: `stream` (a connection that can switch to TLS), `certs` (a certificate and
//! key from PEM files, reloaded in place), `cluster` (mutual TLS configurations for
//! node-to-node RPC), `pki` (the cluster CA and the certificates it issues).

mod certs;
mod cluster;
mod error;
pub mod pki;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

pub use certs::CertStore;
pub use cluster::ClusterTls;
pub use error::TlsError;
pub use stream::{HandshakeError, Stream};

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The crypto provider every configuration here uses (ring: aws-lc-rs needs cmake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side of TLS for one listener: what a STARTTLS, STLS or implicit-TLS
/// handshake runs with.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Handshakes with `config`, each bounded by `handshake_timeout`.
    pub fn new(config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Self {
        Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout,
        }
    }

    /// Run the server side of a handshake on `io`.
    pub async fn handshake<IO>(&self, io: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.handshake_timeout, self.inner.accept(io)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_elapsed) => Err(HandshakeError::Timeout(self.handshake_timeout)),
        }
    }
}

pub mod testing;
