//! The session's only way out to the mail store: the [`Deliver`] trait and its types.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

/// Verdict on one RCPT TO address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// A local user: accept the recipient (`250 2.1.5`).
    Accept,
    /// A local domain but no such user (`550 5.1.1`).
    UnknownUser,
    /// Not one of our domains; we are never an open relay (`550 5.7.1`).
    RelayDenied,
    /// Cannot decide now (registry unreachable, ...); the text goes into `451 4.3.0`.
    TempFail(String),
    /// The mailbox is full (RFC 3463 X.2.2); the text goes into `552 5.2.2`.
    OverQuota(String),
    /// The address expands beyond a bound (alias loop or fan-out); the text goes into
    /// `550 5.4.6`.
    Unroutable(String),
}

/// What the session hands over at end of DATA/BDAT LAST.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Reverse-path without `<>`, `""` for the null sender.
    pub mail_from: String,
    /// Accepted recipients, as given (without `<>`), duplicates left out.
    pub rcpt_to: Vec<String>,
    /// The client's address, when the transport has one.
    pub peer: Option<SocketAddr>,
}

/// Why a message could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Try again later; the client gets `451 4.3.0` and keeps the message queued.
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// No storage for the message now (every disk that could take it is nearly full);
    /// the client gets `452 4.3.1` and retries later.
    #[error("insufficient storage: {0}")]
    NoSpace(String),
    /// A recipient's mailbox cannot take the message (RFC 3463 X.2.2); the client gets
    /// `552 5.2.2` and bounces it.
    #[error("mailbox full: {0}")]
    OverQuota(String),
    /// Will never succeed; the client gets `554 5.3.0` and bounces the message.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// The session's only way out to the mail store.
pub trait Deliver: Send + Sync + 'static {
    /// Decide whether `address` (as given in RCPT TO, without `<>`) is accepted.
    fn check_recipient(&self, address: &str) -> impl Future<Output = RcptVerdict> + Send;

    /// Store `message` for every recipient of `envelope`; return Ok only once durable.
    fn deliver(
        &self,
        envelope: &Envelope,
        message: Bytes,
    ) -> impl Future<Output = Result<(), DeliverError>> + Send;
}
