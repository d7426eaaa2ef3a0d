//! The driver: runs a [`Session`] over a byte stream with its deadlines (idle, per
//! command line, per DATA/BDAT transfer with a rate floor), the shutdown signal and
//! batched writes.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::SmtpConfig;
use crate::connection::{Connection, READ_CHUNK_BYTES, Written, is_disconnect};
use crate::deliver::Deliver;
use crate::error::SessionError;
use crate::session::{Session, Step};

/// Replies are written when the input is drained; a client pipelining more than this
/// many bytes of replies in one go gets them written early, to bound memory.
const REPLIES_PENDING_MAX_BYTES: usize = 64 * 1024;

/// Run one SMTP session to completion on `io`. Returns when the client quits,
/// disconnects, times out, or `shutdown` flips to true (then answer "421 4.3.0 <host>
/// shutting down" and close). Errors only for I/O failures worth logging.
pub async fn serve<IO, D>(
    io: IO,
    peer: Option<SocketAddr>,
    config: Arc<SmtpConfig>,
    deliver: Arc<D>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    D: Deliver,
{
    let idle_timeout = config.idle_timeout;
    // Between reads the buffer holds at most a partial command line: every complete
    // line is consumed and bodies are streamed.
    let input_size_max_bytes = config.command_line_max.saturating_add(READ_CHUNK_BYTES);
    let mut connection = Connection::new(io, input_size_max_bytes, idle_timeout);
    let mut clock = Clock::new(&config);
    let mut session = Session::new(config, deliver, peer);
    // If the sender is gone, no shutdown can ever be announced: stop watching.
    let mut watching_shutdown = true;
    tracing::debug!(?peer, "SMTP session started");

    // A client arriving during shutdown gets 421 instead of the greeting (RFC 5321 3.1).
    if !*shutdown.borrow() {
        session.greet();
    }
    loop {
        let commands_before = session.commands_count();
        loop {
            if *shutdown.borrow_and_update() {
                session.shutting_down();
                return finish(&mut connection, &mut session).await;
            }
            match session.step(connection.buffered()).await {
                Step::Consumed(count_bytes) => {
                    connection.consume(count_bytes);
                    if session.replies().len_bytes() >= REPLIES_PENDING_MAX_BYTES
                        && !flush(&mut connection, &mut session).await?
                    {
                        return Ok(());
                    }
                }
                Step::NeedMore => break,
                Step::Close => return finish(&mut connection, &mut session).await,
                Step::StartTls => {
                    if !flush(&mut connection, &mut session).await? {
                        return Ok(());
                    }
                    let Some(acceptor) = session.starttls_acceptor().cloned() else {
                        return Ok(());
                    };
                    match connection.start_tls(&acceptor).await {
                        Ok(description) => {
                            tracing::debug!(?peer, %description, "SMTP session in TLS");
                            session.tls_started(description);
                        }
                        Err(error) => {
                            tracing::info!(?peer, %error, "SMTP STARTTLS handshake failed");
                            return Ok(());
                        }
                    }
                }
            }
        }
        // The input is drained: one write answers the whole pipeline batch.
        if !flush(&mut connection, &mut session).await? {
            return Ok(());
        }
        let (deadline, what) = clock.next_deadline(
            session.receiving_body(),
            session.commands_count() != commands_before,
            !connection.buffered().is_empty() || session.skipping_line(),
        );
        tokio::select! {
            changed = shutdown.changed(), if watching_shutdown => {
                // Checked at the top of the loop.
                if changed.is_err() {
                    watching_shutdown = false;
                }
            }
            read = tokio::time::timeout_at(deadline, connection.fill()) => match read {
                Ok(Ok(0)) => {
                    tracing::debug!(?peer, "SMTP client disconnected");
                    return Ok(());
                }
                Ok(Ok(count_bytes)) => clock.received(session.receiving_body(), count_bytes),
                Ok(Err(error)) if is_disconnect(&error) => return Ok(()),
                Ok(Err(error)) => return Err(SessionError::Read(error)),
                Err(_elapsed) => {
                    tracing::info!(?peer, what, "SMTP client too slow, closing");
                    session.timed_out(what);
                    return finish(&mut connection, &mut session).await;
                }
            },
        }
    }
}

/// The session's deadlines: the idle timeout restarts with every read, but a command
/// line is timed from its first byte and a DATA text or BDAT chunk from its start,
/// so a client trickling one byte at a time cannot hold the session for ever.
struct Clock {
    idle: Duration,
    command: Duration,
    data: Duration,
    data_rate_min: u64,
    /// When the first byte of the command line now pending arrived.
    line_started: Option<Instant>,
    /// When the body (or chunk) being received started, and its bytes so far.
    body: Option<(Instant, u64)>,
}

impl Clock {
    fn new(config: &SmtpConfig) -> Clock {
        Clock {
            idle: config.idle_timeout,
            command: config.command_timeout,
            data: config.data_timeout,
            data_rate_min: config.data_rate_min,
            line_started: None,
            body: None,
        }
    }

    /// Count `count_bytes` just read (towards the body if one is being received).
    fn received(&mut self, in_body: bool, count_bytes: usize) {
        if in_body && let Some((_, bytes)) = &mut self.body {
            *bytes = bytes.saturating_add(count_bytes as u64);
        }
    }

    /// The deadline of the next read and what it is called in the `421` reply, given
    /// whether a body is being received, whether commands were completed since the
    /// last read, and whether part of a command line is buffered.
    fn next_deadline(
        &mut self,
        in_body: bool,
        commands_done: bool,
        partial_line: bool,
    ) -> (Instant, &'static str) {
        let now = Instant::now();
        let idle = (now + self.idle, "idle");
        if in_body {
            self.line_started = None;
            let (started, bytes) = *self.body.get_or_insert((now, 0));
            let allowance = match self.data_rate_min {
                0 => Duration::ZERO,
                rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
            };
            let data = (started + self.data + allowance, "data");
            return if data.0 < idle.0 { data } else { idle };
        }
        self.body = None;
        if commands_done {
            self.line_started = None;
        }
        if !partial_line {
            self.line_started = None;
            return idle;
        }
        let started = *self.line_started.get_or_insert(now);
        let command = (started + self.command, "command");
        if command.0 < idle.0 { command } else { idle }
    }
}

/// Write the pending replies; false if the client is gone.
async fn flush<IO, D>(
    connection: &mut Connection<IO>,
    session: &mut Session<D>,
) -> Result<bool, SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    if session.replies().len_bytes() == 0 {
        return Ok(true);
    }
    let written = connection
        .write(session.replies().as_bytes())
        .await
        .map_err(SessionError::Write)?;
    session.clear_replies();
    Ok(written == Written::Done)
}

/// Write the last replies and close.
async fn finish<IO, D>(
    connection: &mut Connection<IO>,
    session: &mut Session<D>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    if flush(connection, session).await? {
        connection.close().await;
    }
    Ok(())
}
