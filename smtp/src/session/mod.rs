//! The SMTP protocol state machine. It takes input bytes and appends replies; the
//! driver in `serve` owns the socket, the clock and the shutdown signal. One step
//! handles one command line or one stretch of message body, so replies come out in
//! command order however the input was split or pipelined.
//!
//! Files: `hello` (EHLO/HELO), `mail`, `rcpt`, `data` (DATA, BDAT, body and
//! delivery), `other` (RSET, NOOP, VRFY, EXPN, HELP, QUIT), `transaction`.

mod data;
mod hello;
mod mail;
mod other;
mod rcpt;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{Error as ParseError, Request};

use crate::body::BodyReceiver;
use crate::config::SmtpConfig;
use crate::deliver::Deliver;
use crate::reply::{self, Replies, Reply};
use transaction::{Hello, Transaction};

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Progress was made; drop this many input bytes (possibly zero) and step again.
    Consumed(usize),
    /// Nothing more can be done until more input arrives.
    NeedMore,
    /// Write the pending replies and close the connection.
    Close,
    /// STARTTLS was accepted: write the pending replies, drop any input after the
    /// command (it was sent in the clear, RFC 3207 and CVE-2011-0411), run the TLS
    /// handshake, then call [`Session::tls_started`].
    StartTls,
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep going.
    Continue,
    /// Write the pending replies and close.
    Close,
}

/// What the input bytes are, at this point of the session.
enum Phase {
    /// Command lines.
    Command,
    /// The rest of a command line that was too long, to be dropped up to its LF so
    /// that its tail is never taken for a command.
    SkipLine,
    /// Message text after DATA, or one BDAT chunk.
    Body(Incoming),
}

/// A body being received.
struct Incoming {
    receiver: BodyReceiver,
    kind: BodyKind,
}

/// What a body being received is for.
#[derive(Debug, Clone, Copy)]
enum BodyKind {
    /// The text after DATA.
    Data,
    /// A BDAT chunk of the current transaction.
    Chunk { size_bytes: usize, last: bool },
    /// A BDAT chunk that is read and dropped; `Reply` answers it.
    Rejected(Reply),
}

/// One SMTP session.
pub(crate) struct Session<D> {
    config: Arc<SmtpConfig>,
    deliver: Arc<D>,
    peer: Option<SocketAddr>,
    hello: Option<Hello>,
    transaction: Option<Transaction>,
    phase: Phase,
    replies: Replies,
    /// Where refused body bytes go to be dropped; holds at most one input chunk.
    scratch: Vec<u8>,
    commands_count: usize,
    errors_count: usize,
    /// The TLS in use (protocol and cipher), once STARTTLS has completed.
    tls: Option<String>,
    /// STARTTLS was just accepted; the driver is to switch.
    tls_requested: bool,
}

impl<D: Deliver> Session<D> {
    /// A session with a client at `peer`, before the greeting.
    pub(crate) fn new(config: Arc<SmtpConfig>, deliver: Arc<D>, peer: Option<SocketAddr>) -> Self {
        Session {
            config,
            deliver,
            peer,
            hello: None,
            transaction: None,
            phase: Phase::Command,
            replies: Replies::default(),
            scratch: Vec::new(),
            commands_count: 0,
            errors_count: 0,
            tls: None,
            tls_requested: false,
        }
    }

    /// Replies waiting to be written.
    pub(crate) fn replies(&self) -> &Replies {
        &self.replies
    }

    /// Forget the replies once written.
    pub(crate) fn clear_replies(&mut self) {
        self.replies.clear();
    }

    /// The `220` greeting.
    pub(crate) fn greet(&mut self) {
        let text = format!("{} ESMTP Porcupine", self.config.hostname);
        self.replies.push_plain(220, &text);
    }

    /// The last reply when the service shuts down.
    pub(crate) fn shutting_down(&mut self) {
        let text = format!("{} shutting down", self.config.hostname);
        self.replies.push_text(421, [4, 3, 0], &text);
    }

    /// The last reply when the client was too slow: `what` is `idle`, `command`
    /// or `data`.
    pub(crate) fn timed_out(&mut self, what: &str) {
        let text = format!("{} {what} timeout", self.config.hostname);
        self.replies.push_text(421, [4, 4, 2], &text);
    }

    /// The handshake STARTTLS asked for, if STARTTLS is offered.
    pub(crate) fn starttls_acceptor(&self) -> Option<&tls::Acceptor> {
        self.config.starttls.as_ref()
    }

    /// The TLS handshake after STARTTLS completed with `description` (protocol and
    /// cipher): the session starts over, as RFC 3207 4.2 requires.
    pub(crate) fn tls_started(&mut self, description: String) {
        self.hello = None;
        self.transaction = None;
        self.tls = Some(description);
    }

    /// Whether the input is message text (DATA or a BDAT chunk) rather than commands.
    pub(crate) fn receiving_body(&self) -> bool {
        matches!(self.phase, Phase::Body(_))
    }

    /// Whether the rest of an over-long command line is being dropped.
    pub(crate) fn skipping_line(&self) -> bool {
        matches!(self.phase, Phase::SkipLine)
    }

    /// Command lines taken so far (good or bad).
    pub(crate) fn commands_count(&self) -> usize {
        self.commands_count
    }

    /// Handle the next command line or stretch of body at the start of `input`.
    pub(crate) async fn step(&mut self, input: &[u8]) -> Step {
        match self.phase {
            Phase::Command => self.command_step(input).await,
            Phase::SkipLine => self.skip_line_step(input),
            Phase::Body(_) => self.body_step(input).await,
        }
    }

    async fn command_step(&mut self, input: &[u8]) -> Step {
        if input.is_empty() {
            return Step::NeedMore;
        }
        // Lines are framed here rather than by smtp-proto's RequestReceiver: that one caps
        // lines at 4096 bytes and, past the cap, parses the tail of the long line as a new
        // command. We cap at command_line_max and hand smtp-proto only complete lines.
        let line_max_bytes = self.config.command_line_max;
        let window = &input[..input.len().min(line_max_bytes)];
        match memchr::memchr(b'\n', window) {
            Some(pos) => {
                let line = &input[..=pos];
                match self.command(line).await {
                    Flow::Continue if std::mem::take(&mut self.tls_requested) => Step::StartTls,
                    Flow::Continue => Step::Consumed(line.len()),
                    Flow::Close => Step::Close,
                }
            }
            None if input.len() >= line_max_bytes => {
                self.phase = Phase::SkipLine;
                if self.count_command() == Flow::Close {
                    return Step::Close;
                }
                match self.bad(reply::LINE_TOO_LONG) {
                    // The LF may already be in `input` past the window: SkipLine finds it.
                    Flow::Continue => Step::Consumed(window.len()),
                    Flow::Close => Step::Close,
                }
            }
            None => Step::NeedMore,
        }
    }

    fn skip_line_step(&mut self, input: &[u8]) -> Step {
        if input.is_empty() {
            return Step::NeedMore;
        }
        match memchr::memchr(b'\n', input) {
            Some(pos) => {
                self.phase = Phase::Command;
                Step::Consumed(pos + 1)
            }
            None => Step::Consumed(input.len()),
        }
    }

    /// Count a command against `commands_max`.
    fn count_command(&mut self) -> Flow {
        self.commands_count += 1;
        if self.commands_count > self.config.commands_max {
            let text = format!("{} too many commands", self.config.hostname);
            self.replies.push_text(421, [4, 7, 0], &text);
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Parse and run one complete command line (LF included).
    async fn command(&mut self, line: &[u8]) -> Flow {
        if self.count_command() == Flow::Close {
            return Flow::Close;
        }
        // A command line ends in CRLF and holds no other CR (RFC 5321 2.3.8); a bare
        // LF or CR is refused, as for message text, so no two parsers can disagree
        // on where a command ends.
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        if !line.ends_with(b"\r\n") || memchr::memchr(b'\r', text).is_some() {
            return self.bad(reply::BARE_NEWLINE_COMMAND);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(error) => return self.parse_error(&error, line),
        };
        match request {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            Request::Mail { from } => self.mail(from, line),
            Request::Rcpt { to } => self.rcpt(to, line).await,
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => self.rset(),
            Request::Noop { .. } => self.answer(reply::OK),
            Request::Vrfy { .. } => self.answer(reply::CANNOT_VRFY),
            Request::Expn { .. } => self.answer(reply::NO_EXPN),
            Request::Help { .. } => self.answer(reply::HELP),
            Request::Quit => self.quit(),
            // LMTP's greeting means nothing in SMTP.
            Request::Lhlo { .. } => self.bad(reply::UNRECOGNIZED),
            Request::StartTls => self.starttls(line),
            Request::Auth { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.bad(reply::NOT_IMPLEMENTED),
        }
    }

    fn parse_error(&mut self, error: &ParseError, line: &[u8]) -> Flow {
        match error {
            // smtp-proto refuses a SIZE past usize::MAX as a bad parameter; it is a
            // size over the limit like any other (RFC 1870: 552).
            ParseError::InvalidParameter { param: "SIZE" } if mail::size_overflows(line) => {
                self.answer(reply::TOO_BIG)
            }
            ParseError::UnknownCommand
            | ParseError::ResponseTooLong
            | ParseError::InvalidResponse { .. } => self.bad(reply::UNRECOGNIZED),
            ParseError::InvalidSenderAddress | ParseError::InvalidRecipientAddress => {
                self.bad(reply::BAD_ADDRESS)
            }
            ParseError::UnsupportedParameter { .. } => self.bad(reply::UNSUPPORTED_PARAMETER),
            ParseError::SyntaxError { syntax } => {
                let text = format!("Syntax: {syntax}");
                self.replies.push_text(501, [5, 5, 4], &text);
                self.count_error()
            }
            ParseError::InvalidParameter { .. } | ParseError::NeedsMoreData { .. } => {
                self.bad(reply::SYNTAX)
            }
        }
    }

    /// Answer `reply` and go on.
    fn answer(&mut self, reply: Reply) -> Flow {
        self.replies.push(reply);
        Flow::Continue
    }

    /// Answer a bad command with `reply` and count it against `errors_max`.
    fn bad(&mut self, reply: Reply) -> Flow {
        self.replies.push(reply);
        self.count_error()
    }

    fn count_error(&mut self) -> Flow {
        self.errors_count += 1;
        if self.errors_count >= self.config.errors_max {
            let text = format!("{} too many errors", self.config.hostname);
            self.replies.push_text(421, [4, 7, 0], &text);
            return Flow::Close;
        }
        Flow::Continue
    }
}
