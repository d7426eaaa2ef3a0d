//! The driver: runs a [`Session`] over a byte stream with the idle timeout, the
//! shutdown signal and batched writes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

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
    let mut session = Session::new(config, deliver, peer);
    // If the sender is gone, no shutdown can ever be announced: stop watching.
    let mut watching_shutdown = true;
    tracing::debug!(?peer, "SMTP session started");

    // A client arriving during shutdown gets 421 instead of the greeting (RFC 5321 3.1).
    if !*shutdown.borrow() {
        session.greet();
    }
    loop {
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
            }
        }
        // The input is drained: one write answers the whole pipeline batch.
        if !flush(&mut connection, &mut session).await? {
            return Ok(());
        }
        tokio::select! {
            changed = shutdown.changed(), if watching_shutdown => {
                // Checked at the top of the loop.
                if changed.is_err() {
                    watching_shutdown = false;
                }
            }
            read = tokio::time::timeout(idle_timeout, connection.fill()) => match read {
                Ok(Ok(0)) => {
                    tracing::debug!(?peer, "SMTP client disconnected");
                    return Ok(());
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) if is_disconnect(&error) => return Ok(()),
                Ok(Err(error)) => return Err(SessionError::Read(error)),
                Err(_elapsed) => {
                    tracing::debug!(?peer, "SMTP client idle too long");
                    session.idle_timeout();
                    return finish(&mut connection, &mut session).await;
                }
            },
        }
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
