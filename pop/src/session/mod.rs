//! One POP3 session: greeting, the AUTHORIZATION / TRANSACTION / UPDATE states, the
//! session limits, and the way out (QUIT, disconnect, idle timeout, shutdown).
//!
//! `conn` hides the bytes, `authorization` and `transaction` hold the verbs of their
//! state; this file holds the loop and what is common to every state.

mod authorization;
mod conn;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::auth::Authenticate;
use crate::command::{self, Command, ParseError};
use crate::config::{PlaintextAuth, PopConfig};
use crate::error::SessionError;
use crate::mailbox::Mailbox;
use crate::maildrop::Maildrop;
use conn::{Connection, Input};

/// Where the client is and how it reached us.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo {
    /// The client's address; `None` for an in-process stream, treated like loopback.
    pub peer: Option<SocketAddr>,
    /// The connection is already in TLS (implicit TLS, POP3S on its own port).
    pub tls: bool,
}

/// Run one POP3 session over an in-process or loopback `io`; see [`serve_client`].
pub async fn serve<IO, A, M>(
    io: IO,
    config: Arc<PopConfig>,
    auth: Arc<A>,
    mailbox: Arc<M>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticate,
    M: Mailbox,
{
    serve_client(io, ClientInfo::default(), config, auth, mailbox, shutdown).await
}

/// Run one POP3 session over `io` with the client described by `client`, until the
/// client quits or leaves, the session times out or breaks a limit, or `shutdown`
/// turns true (or its sender is dropped).
///
/// Messages are deleted only by a QUIT in TRANSACTION state; every other ending drops
/// the mailbox session, which releases its lock and deletes nothing. Protocol-level
/// endings return `Ok(())`; only a failing transport is an error.
pub async fn serve_client<IO, A, M>(
    io: IO,
    client: ClientInfo,
    config: Arc<PopConfig>,
    auth: Arc<A>,
    mailbox: Arc<M>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticate,
    M: Mailbox,
{
    let timeouts = (config.idle_timeout, config.command_timeout);
    let conn = Connection::new(io, config.command_line_max, timeouts, shutdown);
    let mut session = Session {
        conn,
        config,
        auth,
        mailbox,
        state: State::Authorization { pending_user: None },
        commands: 0,
        errors: 0,
        auth_failures: 0,
        client,
    };
    let result = session.run().await;
    // Drop the maildrop (releasing its lock) before the goodbye is written, so a
    // client that reconnects at once finds it free.
    session.state = State::Update;
    match result {
        Ok(()) => {
            session.conn.close().await;
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Where the session is in RFC 1939's state machine.
enum State<S> {
    /// Not logged in yet; `pending_user` is the name from a USER just before.
    Authorization { pending_user: Option<String> },
    /// Logged in with the maildrop open and locked.
    Transaction(Maildrop<S>),
    /// QUIT is being carried out, or the session is over.
    Update,
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session<IO, A, M: Mailbox> {
    conn: Connection<IO>,
    config: Arc<PopConfig>,
    auth: Arc<A>,
    mailbox: Arc<M>,
    state: State<M::Session>,
    /// Command lines received so far (good or bad).
    commands: usize,
    /// Protocol errors so far (see [`Session::protocol_error`]).
    errors: usize,
    /// Failed logins so far.
    auth_failures: usize,
    /// Where the client is; `tls` turns true after STLS.
    client: ClientInfo,
}

impl<IO, A, M> Session<IO, A, M>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    A: Authenticate,
    M: Mailbox,
{
    async fn run(&mut self) -> Result<(), SessionError> {
        if self.conn.is_shutting_down() {
            self.shutting_down();
            return Ok(());
        }
        let greeting = format!("{} POP3 Porcupine ready", self.config.hostname);
        self.conn.reply(true, &greeting);
        loop {
            let input = self.conn.next_input().await?;
            if matches!(input, Input::Line(_) | Input::TooLong) {
                self.commands += 1;
                if self.commands > self.config.commands_max {
                    self.conn.reply(false, "too many commands");
                    return Ok(());
                }
            }
            let flow = match input {
                Input::Line(line) => self.handle_line(&line).await?,
                Input::TooLong => self.protocol_error("line too long"),
                Input::Closed => {
                    tracing::debug!("pop: client left without QUIT");
                    Flow::Close
                }
                Input::IdleTimeout => {
                    // RFC 1939 section 3: an autologout closes the connection without
                    // sending any response (and without entering UPDATE).
                    tracing::debug!("pop: idle timeout");
                    Flow::Close
                }
                Input::CommandTimeout => {
                    tracing::info!("pop: command line too slow, closing");
                    self.conn.reply(false, "command timeout");
                    Flow::Close
                }
                Input::Shutdown => {
                    self.shutting_down();
                    Flow::Close
                }
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    fn shutting_down(&mut self) {
        self.conn.reply(false, "[SYS/TEMP] server shutting down");
    }

    async fn handle_line(&mut self, line: &[u8]) -> Result<Flow, SessionError> {
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(ParseError::Unknown) => return Ok(self.protocol_error("unknown command")),
            Err(ParseError::BadArguments(why)) => return Ok(self.protocol_error(why)),
        };
        // RFC 1939: PASS must follow USER directly, so any other command forgets it.
        let pending_user = match &mut self.state {
            State::Authorization { pending_user } => pending_user.take(),
            _ => None,
        };
        match command {
            Command::Capa => {
                let capabilities = self.capabilities();
                self.conn
                    .reply_lines("Capability list follows", capabilities);
                Ok(Flow::Continue)
            }
            Command::Stls => self.stls().await,
            Command::Noop => {
                if matches!(self.state, State::Transaction(_)) {
                    self.conn.reply(true, "");
                    Ok(Flow::Continue)
                } else {
                    Ok(self.wrong_state())
                }
            }
            Command::Quit => self.quit().await,
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } => {
                if matches!(self.state, State::Authorization { .. }) {
                    self.authorization(command, pending_user).await
                } else {
                    Ok(self.wrong_state())
                }
            }
            Command::Stat
            | Command::List(_)
            | Command::Uidl(_)
            | Command::Retr(_)
            | Command::Top { .. }
            | Command::Dele(_)
            | Command::Rset => {
                if matches!(self.state, State::Transaction(_)) {
                    self.transaction(command).await
                } else {
                    Ok(self.wrong_state())
                }
            }
        }
    }

    /// QUIT: in TRANSACTION state commit the deletes (UPDATE state); in any case close.
    async fn quit(&mut self) -> Result<Flow, SessionError> {
        match std::mem::replace(&mut self.state, State::Update) {
            State::Transaction(maildrop) => match maildrop.commit().await {
                Ok(removed) => {
                    let text =
                        format!("Porcupine POP3 server signing off ({removed} messages deleted)");
                    self.conn.reply(true, &text);
                }
                Err(error) => {
                    tracing::warn!(%error, "pop: commit of deletes failed");
                    self.conn
                        .reply(false, "[SYS/TEMP] messages not deleted, try again later");
                }
            },
            State::Authorization { .. } | State::Update => {
                self.conn.reply(true, "Porcupine POP3 server signing off");
            }
        }
        Ok(Flow::Close)
    }

    /// What CAPA lists now: STLS only before TLS and login, the password
    /// mechanisms only where a password may be sent.
    fn capabilities(&self) -> Vec<&'static str> {
        let authorization = matches!(self.state, State::Authorization { .. });
        let plaintext = self.plaintext_allowed();
        let mut capabilities = vec!["TOP"];
        if plaintext {
            capabilities.push("USER");
        }
        capabilities.extend(["UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]);
        if plaintext {
            capabilities.push("SASL PLAIN");
        }
        if authorization && self.stls_offered() {
            capabilities.push("STLS");
        }
        capabilities.push("IMPLEMENTATION Porcupine");
        capabilities
    }

    fn stls_offered(&self) -> bool {
        self.config.stls.is_some() && !self.client.tls
    }

    /// Whether a password may be sent on this connection (see [`PlaintextAuth`]).
    fn plaintext_allowed(&self) -> bool {
        if self.client.tls {
            return true;
        }
        match self.config.plaintext_auth {
            PlaintextAuth::Always => true,
            PlaintextAuth::Never => false,
            PlaintextAuth::Loopback => self.client.peer.is_none_or(|p| p.ip().is_loopback()),
        }
    }

    /// STLS (RFC 2595): only in AUTHORIZATION state, once, where a certificate is
    /// configured. A USER given before is forgotten.
    async fn stls(&mut self) -> Result<Flow, SessionError> {
        if !matches!(self.state, State::Authorization { .. }) {
            return Ok(self.wrong_state());
        }
        let Some(acceptor) = self.config.stls.clone() else {
            return Ok(self.protocol_error("STLS not available"));
        };
        if self.client.tls {
            return Ok(self.protocol_error("TLS already active"));
        }
        self.conn.reply(true, "Begin TLS negotiation");
        match self.conn.start_tls(&acceptor).await {
            Ok(()) => {
                self.client.tls = true;
                Ok(Flow::Continue)
            }
            Err(SessionError::Tls(error)) => {
                tracing::info!(peer = ?self.client.peer, %error, "pop: STLS handshake failed");
                Ok(Flow::Close)
            }
            Err(error) => Err(error),
        }
    }

    fn wrong_state(&mut self) -> Flow {
        self.protocol_error("command not valid in this state")
    }

    /// Answer a client mistake (unknown command, bad arguments, wrong state, long
    /// line). The `errors_max`-th one is answered `-ERR too many errors` and closes
    /// the session. Failed logins and missing messages are not counted here.
    fn protocol_error(&mut self, text: &str) -> Flow {
        self.errors += 1;
        if self.errors >= self.config.errors_max {
            self.conn.reply(false, "too many errors");
            Flow::Close
        } else {
            self.conn.reply(false, text);
            Flow::Continue
        }
    }
}
