//! AUTHORIZATION-state verbs: USER, PASS and AUTH PLAIN, then opening the maildrop.

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Input;
use super::{Flow, Session, State};
use crate::auth::{AuthError, Authenticate};
use crate::command::Command;
use crate::error::SessionError;
use crate::mailbox::{Mailbox, MailboxError};
use crate::maildrop::Maildrop;
use crate::sasl::{self, SaslError};

impl<IO, A, M> Session<IO, A, M>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticate,
    M: Mailbox,
{
    /// Handle USER, PASS or AUTH; only called in AUTHORIZATION state.
    pub(super) async fn authorization(
        &mut self,
        command: Command,
        pending_user: Option<String>,
    ) -> Result<Flow, SessionError> {
        if !self.plaintext_allowed() {
            // Refused before the password is even asked for (like Dovecot).
            self.conn.reply(
                false,
                "[AUTH] plaintext authentication disallowed on non-secure connections, use STLS or POP3S",
            );
            return Ok(Flow::Continue);
        }
        match command {
            Command::User(name) => {
                // Always +OK: whether the name exists is not revealed here.
                self.state = State::Authorization {
                    pending_user: Some(name),
                };
                self.conn.reply(true, "send PASS");
                Ok(Flow::Continue)
            }
            Command::Pass(password) => match pending_user {
                Some(user) => self.login(&user, &password).await,
                None => Ok(self.protocol_error("USER first")),
            },
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            _ => Ok(self.wrong_state()),
        }
    }

    /// AUTH (RFC 5034) with the PLAIN mechanism, the only one offered.
    async fn auth(
        &mut self,
        mechanism: Option<String>,
        initial_response: Option<String>,
    ) -> Result<Flow, SessionError> {
        let Some(mechanism) = mechanism else {
            // Bare AUTH lists the mechanisms, as pre-CAPA clients expect.
            self.conn.reply_lines("", ["PLAIN"]);
            return Ok(Flow::Continue);
        };
        if mechanism != "PLAIN" {
            return Ok(self.protocol_error("unsupported authentication mechanism"));
        }
        let response = match initial_response {
            Some(response) => response,
            None => {
                // An empty challenge; the client answers on the next line.
                self.conn.raw(b"+ \r\n");
                match self.conn.next_input().await? {
                    Input::Line(line) => match String::from_utf8(line.to_vec()) {
                        Ok(text) if text == "*" => {
                            self.conn.reply(false, "authentication cancelled");
                            return Ok(Flow::Continue);
                        }
                        Ok(text) => text,
                        Err(_) => return Ok(self.sasl_error(SaslError::Base64).await),
                    },
                    Input::TooLong => return Ok(self.protocol_error("line too long")),
                    Input::Closed => return Ok(Flow::Close),
                    // RFC 1939 section 3: autologout closes without a response.
                    Input::IdleTimeout => return Ok(Flow::Close),
                    Input::CommandTimeout => {
                        self.conn.reply(false, "command timeout");
                        return Ok(Flow::Close);
                    }
                    Input::Shutdown => {
                        self.shutting_down();
                        return Ok(Flow::Close);
                    }
                }
            }
        };
        match sasl::decode_plain(&response) {
            Ok(creds) => self.login(&creds.user, &creds.password).await,
            Err(error) => Ok(self.sasl_error(error).await),
        }
    }

    async fn sasl_error(&mut self, error: SaslError) -> Flow {
        match error {
            SaslError::Base64 | SaslError::Malformed => self.protocol_error(&error.to_string()),
            // A well-formed request we will not grant: a failed login.
            SaslError::AuthzidNotAllowed => self.login_failed().await,
        }
    }

    /// Check the credentials, then open and lock the maildrop.
    async fn login(&mut self, user: &str, password: &str) -> Result<Flow, SessionError> {
        let mailbox_name = match self.auth.authenticate(user, password).await {
            Ok(name) => name,
            Err(AuthError::Invalid) => {
                tracing::debug!(user, "pop: login refused");
                return Ok(self.login_failed().await);
            }
            Err(AuthError::RateLimited) => {
                tracing::debug!(user, "pop: login rate limited");
                return Ok(self
                    .login_failed_with("[SYS/TEMP] too many login failures, try later")
                    .await);
            }
            Err(AuthError::TempFail(why)) => {
                tracing::warn!(user, %why, "pop: authentication unavailable");
                self.conn
                    .reply(false, "[SYS/TEMP] authentication temporarily unavailable");
                return Ok(Flow::Continue);
            }
        };
        match self.mailbox.open(&mailbox_name).await {
            Ok(session) => {
                let maildrop = Maildrop::new(session);
                let (count, size_bytes) = maildrop.stat();
                tracing::debug!(mailbox = %mailbox_name, count, "pop: maildrop opened");
                self.state = State::Transaction(maildrop);
                let text = format!("maildrop has {count} messages ({size_bytes} octets)");
                self.conn.reply(true, &text);
            }
            Err(MailboxError::InUse) => {
                self.conn.reply(false, "[IN-USE] mailbox locked");
            }
            Err(error @ (MailboxError::TempFail(_) | MailboxError::NoSuchMessage)) => {
                tracing::warn!(mailbox = %mailbox_name, %error, "pop: maildrop unavailable");
                self.conn
                    .reply(false, "[SYS/TEMP] maildrop temporarily unavailable");
            }
        }
        Ok(Flow::Continue)
    }

    /// Count a failed login, wait out the delay, answer, and close after too many.
    async fn login_failed(&mut self) -> Flow {
        self.login_failed_with("[AUTH] invalid credentials").await
    }

    /// [`Self::login_failed`] answering `text` (with `, too many failures` on the last).
    async fn login_failed_with(&mut self, text: &str) -> Flow {
        self.auth_failures += 1;
        // Slows down guessing; the client gets nothing back until it has passed.
        tokio::time::sleep(self.config.auth_failure_delay).await;
        if self.auth_failures >= self.config.auth_attempts_max {
            self.conn
                .reply(false, &format!("{text}, too many failures"));
            Flow::Close
        } else {
            self.conn.reply(false, text);
            Flow::Continue
        }
    }
}
