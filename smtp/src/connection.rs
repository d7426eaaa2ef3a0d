//! The client's byte stream: an input buffer with a hard maximum, and writes bounded
//! by a timeout.

use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked for per read.
pub(crate) const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How a write ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Everything was written and flushed.
    Done,
    /// The client went away or stopped reading for longer than the timeout.
    ClientGone,
}

/// The client's byte stream (plain, or TLS after STARTTLS) with its input buffer.
pub(crate) struct Connection<IO> {
    io: tls::Stream<IO>,
    input: BytesMut,
    input_size_max_bytes: usize,
    write_timeout: Duration,
}

impl<IO> Connection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Wrap `io`; the input buffer never holds more than `input_size_max_bytes`.
    pub(crate) fn new(io: IO, input_size_max_bytes: usize, write_timeout: Duration) -> Self {
        Connection {
            io: tls::Stream::Plain(io),
            input: BytesMut::new(),
            input_size_max_bytes,
            write_timeout,
        }
    }

    /// Input received and not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.input
    }

    /// Drop the first `count_bytes` of the buffered input.
    pub(crate) fn consume(&mut self, count_bytes: usize) {
        self.input.advance(count_bytes.min(self.input.len()));
    }

    /// Switch to TLS. Input already received is dropped first: it came in the clear
    /// and must not be taken as sent under TLS (CVE-2011-0411).
    pub(crate) async fn start_tls(
        &mut self,
        acceptor: &tls::Acceptor,
    ) -> Result<String, tls::HandshakeError> {
        let dropped_bytes = self.input.len();
        if dropped_bytes > 0 {
            tracing::info!(dropped_bytes, "SMTP input pipelined after STARTTLS dropped");
        }
        self.input.clear();
        self.io.start_tls(acceptor).await?;
        Ok(self.io.tls_description().unwrap_or_default())
    }

    /// Read more input; `Ok(0)` means the client closed its side. Cancel safe: nothing is
    /// lost if the future is dropped before it completes.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        let room_bytes = self.input_size_max_bytes.saturating_sub(self.input.len());
        if room_bytes == 0 {
            // The session consumes every complete line and streams bodies, so only a
            // partial command line (under command_line_max) can be left over here.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "SMTP input buffer full",
            ));
        }
        let want_bytes = room_bytes.min(READ_CHUNK_BYTES);
        self.input.reserve(want_bytes);
        let mut limited = (&mut self.input).limit(want_bytes);
        self.io.read_buf(&mut limited).await
    }

    /// Write and flush `bytes`, waiting at most the write timeout.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<Written> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(Written::Done),
            Ok(Err(error)) if is_disconnect(&error) => Ok(Written::ClientGone),
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Ok(Written::ClientGone),
        }
    }

    /// Close our sending side, so the client sees the end of the stream. Errors mean the
    /// client is already gone, which is what we want anyway.
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
    }
}

/// Errors that only mean the client went away.
pub(crate) fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}
