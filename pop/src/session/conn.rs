//! The session's transport: turns the client's bytes into [`Input`] events (lines,
//! over-long lines, end of stream, idle timeout, shutdown) and batches replies.
//!
//! Replies collect in one buffer that is written only when no further complete
//! command is waiting in the input (RFC 2449 PIPELINING), or when it grows past
//! [`OUT_FLUSH_BYTES`] (large RETR bodies).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::SessionError;
use crate::line::{Frame, LineReader};
use crate::multiline;

/// Output buffered beyond this is written out before more is added.
pub const OUT_FLUSH_BYTES: usize = 64 * 1024;

/// How much to ask the socket for per read.
const READ_CHUNK_BYTES: usize = 4 * 1024;

/// Bound on the goodbye write and close when the session ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the session is to act on next.
#[derive(Debug)]
pub enum Input {
    /// One command line, line ending removed.
    Line(BytesMut),
    /// A line over the limit was discarded.
    TooLong,
    /// The client closed its side (or vanished) without QUIT.
    Closed,
    /// No complete line arrived within the idle timeout.
    IdleTimeout,
    /// A line was begun but not completed within the command timeout.
    CommandTimeout,
    /// The server is shutting down.
    Shutdown,
}

/// One client connection: reader, reply buffer, idle deadline and shutdown signal.
pub struct Connection<IO> {
    io: tls::Stream<IO>,
    reader: LineReader,
    out: BytesMut,
    shutdown: watch::Receiver<bool>,
    /// Set once the shutdown signal fired or its sender went away.
    shutting_down: bool,
    idle_timeout: Duration,
    /// When waiting for the current command line gives up.
    deadline: Instant,
    command_timeout: Duration,
    /// When the first byte of the pending, unfinished line arrived.
    line_started: Option<Instant>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Wrap `io`; lines longer than `line_bytes_max` (ending included) are refused.
    /// A line must arrive whole within `idle_timeout` of the previous one and within
    /// `command_timeout` of its own first byte.
    pub fn new(
        io: IO,
        line_bytes_max: usize,
        (idle_timeout, command_timeout): (Duration, Duration),
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let shutting_down = *shutdown.borrow();
        Connection {
            io: tls::Stream::Plain(io),
            reader: LineReader::new(line_bytes_max),
            out: BytesMut::with_capacity(4096),
            shutdown,
            shutting_down,
            idle_timeout,
            deadline: Instant::now() + idle_timeout,
            command_timeout,
            line_started: None,
        }
    }

    /// Whether shutdown has been signalled (checked before the greeting).
    pub fn is_shutting_down(&mut self) -> bool {
        self.shutting_down = self.shutting_down || *self.shutdown.borrow_and_update();
        self.shutting_down
    }

    /// Wait for the next thing to act on. Buffered replies are written first
    /// whenever no complete line is already waiting.
    pub async fn next_input(&mut self) -> Result<Input, SessionError> {
        loop {
            if self.is_shutting_down() {
                return Ok(Input::Shutdown);
            }
            if let Some(frame) = self.reader.next_frame() {
                // The idle clock restarts with every command line; the line clock
                // with the next line's first byte (already here if it was pipelined).
                let now = Instant::now();
                self.deadline = now + self.idle_timeout;
                self.line_started = self.reader.mid_line().then_some(now);
                return Ok(match frame {
                    Frame::Line(line) => Input::Line(line),
                    Frame::TooLong => Input::TooLong,
                });
            }
            self.flush().await?;
            let line_deadline = self.line_started.map(|at| at + self.command_timeout);
            let (deadline, timeout) = match line_deadline {
                Some(line) if line < self.deadline => (line, Input::CommandTimeout),
                _ => (self.deadline, Input::IdleTimeout),
            };
            let buf = self.reader.buf_mut();
            buf.reserve(READ_CHUNK_BYTES);
            tokio::select! {
                changed = self.shutdown.changed() => {
                    // A dropped sender means the server is gone: shut down too.
                    if changed.is_err() || *self.shutdown.borrow_and_update() {
                        self.shutting_down = true;
                    }
                }
                read = self.io.read_buf(buf) => {
                    match read {
                        Ok(0) => return Ok(Input::Closed),
                        Ok(_) => {
                            if self.line_started.is_none() {
                                self.line_started = Some(Instant::now());
                            }
                        }
                        Err(error) if is_disconnect(&error) => return Ok(Input::Closed),
                        Err(error) => return Err(error.into()),
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ok(timeout),
            }
        }
    }

    /// Write out the queued replies, then switch to TLS. Input received before the
    /// handshake is dropped: it came in the clear (the STARTTLS injection class).
    pub async fn start_tls(&mut self, acceptor: &tls::Acceptor) -> Result<(), SessionError> {
        self.flush().await?;
        let dropped_bytes = self.reader.clear();
        if dropped_bytes > 0 {
            tracing::info!(dropped_bytes, "pop: input pipelined after STLS dropped");
        }
        self.line_started = None;
        self.io
            .start_tls(acceptor)
            .await
            .map_err(SessionError::Tls)?;
        self.deadline = Instant::now() + self.idle_timeout;
        Ok(())
    }

    /// Queue a one-line reply: `+OK text` or `-ERR text`.
    pub fn reply(&mut self, ok: bool, text: &str) {
        self.out.put_slice(if ok {
            b"+OK".as_slice()
        } else {
            b"-ERR".as_slice()
        });
        if !text.is_empty() {
            self.out.put_u8(b' ');
            self.out.put_slice(text.as_bytes());
        }
        self.out.put_slice(b"\r\n");
    }

    /// Queue `+OK text` then a multi-line body of short text lines and the terminator.
    ///
    /// Synchronous on purpose: listings are small (about 20 bytes a message), and an
    /// await here would hold the caller's borrowing iterator across a suspension.
    pub fn reply_lines<I, L>(&mut self, text: &str, lines: I)
    where
        I: IntoIterator<Item = L>,
        L: AsRef<str>,
    {
        self.reply(true, text);
        for line in lines {
            self.raw(line.as_ref().as_bytes());
            self.raw(b"\r\n");
        }
        self.raw(b".\r\n");
    }

    /// Queue `+OK text` then `body` as a byte-stuffed multi-line body with its
    /// terminator, writing out as it goes so a large body is never copied whole.
    pub async fn reply_body(&mut self, text: &str, body: &[u8]) -> Result<(), SessionError> {
        self.reply(true, text);
        let mut at_line_start = true;
        for chunk in body.chunks(OUT_FLUSH_BYTES) {
            at_line_start = multiline::stuff_into(&mut self.out, chunk, at_line_start);
            if self.out.len() >= OUT_FLUSH_BYTES {
                self.flush().await?;
            }
        }
        multiline::terminate(&mut self.out, body);
        Ok(())
    }

    /// Queue bytes exactly as given (continuation prompts, list lines).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.put_slice(bytes);
    }

    /// Write out everything queued, giving up after the idle timeout.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.idle_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(SessionError::WriteTimeout),
        }
        self.out.clear();
        Ok(())
    }

    /// Write out what is queued and close our side; a client that has already gone
    /// or does not read is not an error at this point.
    pub async fn close(mut self) {
        let bound = CLOSE_TIMEOUT.min(self.idle_timeout);
        let _ = tokio::time::timeout(bound, async {
            if let Err(error) = self.flush().await {
                tracing::debug!(%error, "pop: goodbye not delivered");
            }
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// Errors that only mean the client went away.
fn is_disconnect(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}
