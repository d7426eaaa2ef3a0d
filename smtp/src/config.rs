//! Limits and identity of the SMTP service.

use std::time::Duration;

/// Limits and identity of the SMTP service.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Name of this server in the greeting, the EHLO reply and the `Received` header.
    pub hostname: String,
    /// Largest message body accepted, in bytes; advertised as `SIZE` in the EHLO reply.
    pub message_size_max: usize,
    /// Most recipients in one transaction; more get `452 4.5.3`.
    pub recipients_max: usize,
    /// Longest command line in bytes, CRLF included; longer lines get `500 5.5.2`.
    pub command_line_max: usize,
    /// Longest line of message text in bytes, CRLF included; a longer line makes the
    /// message fail with `552 5.3.4` once its data has ended.
    pub text_line_max: usize,
    /// How long one read or write may wait before the session ends with `421 4.4.2`.
    pub idle_timeout: Duration,
    /// A command line must be complete this long after its first byte arrived, or the
    /// session ends with `421 4.4.2` (against clients that trickle a byte at a time,
    /// which the idle timeout alone never stops).
    pub command_timeout: Duration,
    /// A DATA text or BDAT chunk must be complete within this plus one second per
    /// `data_rate_min` bytes received, or the session ends with `421 4.4.2`: after
    /// this grace a transfer must keep up an average of `data_rate_min` bytes/s.
    pub data_timeout: Duration,
    /// The data rate floor in bytes per second (see `data_timeout`); 0: none, only
    /// `data_timeout` for the whole transfer.
    pub data_rate_min: u64,
    /// Bad commands tolerated in one session; the last one is followed by `421 4.7.0`.
    pub errors_max: usize,
    /// Commands allowed in one session; the one after them gets `421 4.7.0`.
    pub commands_max: usize,
    /// The certificate STARTTLS (RFC 3207) switches to; `None`: STARTTLS is not
    /// offered.
    pub starttls: Option<tls::Acceptor>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            hostname: "localhost".to_string(),
            message_size_max: 25 * 1024 * 1024,
            recipients_max: 100,
            command_line_max: 512,
            text_line_max: 1000,
            idle_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(300),
            data_rate_min: 1024,
            errors_max: 10,
            commands_max: 10_000,
            starttls: None,
        }
    }
}
