//! A client connection that starts in plain text and may switch to TLS part way
//! (SMTP STARTTLS, POP3 STLS), or starts in TLS (POP3S).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::Acceptor;

/// A connection in plain text or in TLS.
pub enum Stream<IO> {
    /// Plain text.
    Plain(IO),
    /// After a successful handshake.
    Tls(Box<TlsStream<IO>>),
    /// A handshake failed part way: the connection is unusable.
    Broken,
}

/// Why switching to TLS failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The stream is already in TLS (or broken).
    #[error("the connection is not in plain text")]
    NotPlain,
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake failed (bad client hello, no common cipher, I/O error).
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] io::Error),
}

impl<IO> Stream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Whether the connection is in TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Run the server side of a TLS handshake on a plain connection. On failure the
    /// stream is left [`Stream::Broken`] and must be dropped.
    pub async fn start_tls(&mut self, acceptor: &Acceptor) -> Result<(), HandshakeError> {
        let io = match std::mem::replace(self, Stream::Broken) {
            Stream::Plain(io) => io,
            other => {
                *self = other;
                return Err(HandshakeError::NotPlain);
            }
        };
        let tls = acceptor.handshake(io).await?;
        *self = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// The negotiated protocol version and cipher suite, for `Received` headers and
    /// logs (`None` in plain text).
    pub fn tls_description(&self) -> Option<String> {
        let Stream::Tls(tls) = self else {
            return None;
        };
        let (_, conn) = tls.get_ref();
        let mut text = match conn.protocol_version() {
            Some(version) => format!("{version:?}"),
            None => "TLS".to_string(),
        };
        if let Some(suite) = conn.negotiated_cipher_suite() {
            text = format!("{text} {:?}", suite.suite());
        }
        // rustls names read `TLSv1_3`, `TLS13_AES_128_GCM_SHA256`: dashes read better.
        Some(text.replace('_', "-"))
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection broken by a failed TLS handshake",
    )
}

impl<IO> AsyncRead for Stream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Stream::Broken => Poll::Ready(Err(broken())),
        }
    }
}

impl<IO> AsyncWrite for Stream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Stream::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Stream::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Stream::Broken => Poll::Ready(Ok(())),
        }
    }
}
