//! Why a session ended abnormally.

/// How a session failed. Protocol-level endings (QUIT, client disconnect, idle
/// timeout, too many errors, shutdown) are `Ok(())`; only transport trouble is an error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading from or writing to the client failed.
    #[error("client connection i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not take our output within the idle timeout.
    #[error("writing to the client timed out")]
    WriteTimeout,
    /// The TLS handshake after STLS failed.
    #[error("{0}")]
    Tls(#[from] tls::HandshakeError),
}
