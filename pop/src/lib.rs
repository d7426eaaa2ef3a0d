//! POP3 server session for Porcupine (RFC 1939, RFC 2449 CAPA and response codes,
//! RFC 5034 SASL PLAIN), independent of the cluster.
//!
//! [`serve`] speaks POP3 over any async byte stream and reaches the rest of the
//! system only through two traits that the `node` crate implements:
//! [`Authenticate`] (check a login) and [`Mailbox`] / [`MailboxSession`] (open, read
//! and commit one locked maildrop).
//!
//! Module map:
//! - `config`: [`PopConfig`], the session's limits.
//! - `auth`, `mailbox`: the traits the session calls and their errors.
//! - `limit`: [`LoginLimiter`], failed-login windows per address and account (sans-IO).
//! - `error`: [`SessionError`], how a session can fail.
//! - `line`: splits input into command lines with a length cap (sans-IO).
//! - `command`: parses one command line (pure).
//! - `sasl`: decodes SASL PLAIN responses (pure).
//! - `multiline`: byte-stuffing, terminator, and the TOP cut (pure).
//! - `maildrop`: message numbers and delete marks of the TRANSACTION state.
//! - `session`: the driver: state machine, limits, timeouts, shutdown.
#![warn(missing_docs)]

mod auth;
mod command;
mod config;
mod error;
mod limit;
mod line;
mod mailbox;
mod maildrop;
mod multiline;
mod sasl;
mod session;

pub use auth::{AuthError, Authenticate};
pub use config::{PlaintextAuth, PopConfig};
pub use error::SessionError;
pub use limit::{Limited, LoginLimiter, LoginLimits};
pub use mailbox::{Mailbox, MailboxError, MailboxSession, MessageEntry};
pub use session::{ClientInfo, serve, serve_client};
