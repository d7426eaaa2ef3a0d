//! TRANSACTION-state verbs: STAT, LIST, UIDL, RETR, TOP, DELE, RSET.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session, State};
use crate::auth::Authenticate;
use crate::command::Command;
use crate::error::SessionError;
use crate::mailbox::{Mailbox, MailboxError};
use crate::maildrop::Unusable;
use crate::multiline;

const NO_SUCH_MESSAGE: &str = "no such message";

impl<IO, A, M> Session<IO, A, M>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticate,
    M: Mailbox,
{
    /// Handle a TRANSACTION-state command; only called in that state.
    pub(super) async fn transaction(&mut self, command: Command) -> Result<Flow, SessionError> {
        let State::Transaction(maildrop) = &mut self.state else {
            return Ok(self.wrong_state());
        };
        let conn = &mut self.conn;
        match command {
            Command::Stat => {
                let (count, size_bytes) = maildrop.stat();
                conn.reply(true, &format!("{count} {size_bytes}"));
            }
            Command::List(None) => {
                let (count, size_bytes) = maildrop.stat();
                let text = format!("{count} messages ({size_bytes} octets)");
                let lines = maildrop
                    .visible()
                    .map(|(number, entry)| format!("{number} {}", entry.size));
                conn.reply_lines(&text, lines);
            }
            Command::List(Some(number)) => match maildrop.entry(number) {
                Ok(entry) => conn.reply(true, &format!("{number} {}", entry.size)),
                Err(_) => conn.reply(false, NO_SUCH_MESSAGE),
            },
            Command::Uidl(None) => {
                let lines = maildrop
                    .visible()
                    .map(|(number, entry)| format!("{number} {}", entry.uid));
                conn.reply_lines("unique-id listing follows", lines);
            }
            Command::Uidl(Some(number)) => match maildrop.entry(number) {
                Ok(entry) => conn.reply(true, &format!("{number} {}", entry.uid)),
                Err(_) => conn.reply(false, NO_SUCH_MESSAGE),
            },
            Command::Retr(number) => {
                let size_bytes = match maildrop.entry(number) {
                    Ok(entry) => entry.size,
                    Err(_) => {
                        conn.reply(false, NO_SUCH_MESSAGE);
                        return Ok(Flow::Continue);
                    }
                };
                match maildrop.fetch(number).await {
                    Ok(body) => {
                        conn.reply_body(&format!("{size_bytes} octets"), &body)
                            .await?;
                    }
                    Err(error) => fetch_failed(conn, number, &error),
                }
            }
            Command::Top {
                message,
                body_lines,
            } => match maildrop.fetch(message).await {
                Ok(body) => {
                    let cut = multiline::top_length(&body, body_lines);
                    conn.reply_body("top of message follows", &body[..cut])
                        .await?;
                }
                Err(error) => fetch_failed(conn, message, &error),
            },
            Command::Dele(number) => match maildrop.delete(number) {
                Ok(()) => conn.reply(true, &format!("message {number} deleted")),
                Err(Unusable::AlreadyDeleted) => {
                    conn.reply(false, &format!("message {number} already deleted"));
                }
                Err(Unusable::NoSuchMessage) => conn.reply(false, NO_SUCH_MESSAGE),
            },
            Command::Rset => {
                maildrop.reset();
                let (count, size_bytes) = maildrop.stat();
                conn.reply(
                    true,
                    &format!("maildrop has {count} messages ({size_bytes} octets)"),
                );
            }
            _ => return Ok(self.wrong_state()),
        }
        Ok(Flow::Continue)
    }
}

fn fetch_failed<IO>(conn: &mut super::conn::Connection<IO>, number: usize, error: &MailboxError)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    match error {
        MailboxError::NoSuchMessage => conn.reply(false, NO_SUCH_MESSAGE),
        MailboxError::InUse | MailboxError::TempFail(_) => {
            tracing::warn!(number, %error, "pop: message fetch failed");
            conn.reply(false, "[SYS/TEMP] message temporarily unavailable");
        }
    }
}
