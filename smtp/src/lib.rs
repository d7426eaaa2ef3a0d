//! The SMTP server session of Porcupine: RFC 5321 with the ESMTP extensions PIPELINING,
//! SIZE, 8BITMIME, ENHANCEDSTATUSCODES, CHUNKING and HELP, spoken over any byte stream.
//!
//! This crate knows nothing about the cluster. It takes mail in and hands each finished
//! message to a [`Deliver`] implementation (the `node` crate's SMTP proxy), answering
//! `250` only once that call says the message is durable.
//!
//! Module map:
//! - [`config`]: [`SmtpConfig`], the limits and identity of the service.
//! - [`deliver`]: the [`Deliver`] trait and the types crossing it ([`Envelope`],
//!   [`RcptVerdict`], [`DeliverError`]).
//! - [`error`]: [`SessionError`], the I/O failures [`serve`] reports.
//! - `serve`: [`serve`], the driver: reads, idle timeout, shutdown, batched writes.
//! - `connection`: the byte stream with a bounded input buffer and timed writes.
//! - `session`: the protocol state machine, one file per verb group.
//! - `body`: message body reception (smtp-proto's DATA/BDAT receivers) with size and
//!   line-length limits.
//! - `reply`: reply formatting (enhanced status codes via smtp-proto).
//! - `trace`: the `Return-Path` and `Received` header fields and queue ids.
//! - `address`: re-quoting a mailbox's local part for header fields.
#![warn(missing_docs)]

mod address;
mod body;
pub mod config;
mod connection;
pub mod deliver;
pub mod error;
mod reply;
mod serve;
mod session;
mod trace;

#[cfg(test)]
mod tests;

pub use config::SmtpConfig;
pub use deliver::{Deliver, DeliverError, Envelope, RcptVerdict};
pub use error::SessionError;
pub use serve::serve;
