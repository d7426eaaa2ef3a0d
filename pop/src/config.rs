//! Session limits and identity: everything a POP3 session needs to know that is
//! not the protocol itself.

use std::time::Duration;

/// Settings and limits of one POP3 session; share one `Arc<PopConfig>` between sessions.
#[derive(Debug, Clone)]
pub struct PopConfig {
    /// Host name shown in the greeting.
    pub hostname: String,
    /// How long the server waits for the next complete command line before it closes
    /// the session (RFC 1939 asks for at least 10 minutes). Also bounds each write.
    pub idle_timeout: std::time::Duration,
    /// A command line must be complete this long after its first byte arrived, or the
    /// session answers `-ERR command timeout` and closes (against clients that trickle
    /// a byte at a time).
    pub command_timeout: std::time::Duration,
    /// Longest accepted command line in bytes, CRLF included; longer lines are
    /// discarded up to the next LF and answered `-ERR line too long`.
    pub command_line_max: usize,
    /// Protocol errors (unknown command, bad arguments, wrong state, long line) after
    /// which the session answers `-ERR too many errors` and closes.
    pub errors_max: usize,
    /// Command lines accepted in one session; the next one is answered
    /// `-ERR too many commands` and the session closes.
    pub commands_max: usize,
    /// Pause before answering a failed PASS/AUTH, to slow down password guessing.
    pub auth_failure_delay: std::time::Duration,
    /// Failed logins after which the session closes.
    pub auth_attempts_max: usize,
    /// The certificate STLS (RFC 2595) switches to; `None`: STLS is not offered.
    pub stls: Option<tls::Acceptor>,
    /// Where logins that send the password in the clear (USER/PASS, AUTH PLAIN
    /// outside TLS) are allowed.
    pub plaintext_auth: PlaintextAuth,
}

/// Where a password may be sent over a connection that is not in TLS (like
/// Dovecot's `disable_plaintext_auth`). Inside TLS it always may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlaintextAuth {
    /// Only from a loopback address (the default: safe on a network, easy locally).
    #[default]
    Loopback,
    /// From anywhere.
    Always,
    /// Never: TLS is required even on loopback.
    Never,
}

impl std::str::FromStr for PlaintextAuth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "loopback" => Ok(PlaintextAuth::Loopback),
            "always" => Ok(PlaintextAuth::Always),
            "never" => Ok(PlaintextAuth::Never),
            other => Err(format!(
                "unknown plaintext auth policy {other:?} (loopback, always or never)"
            )),
        }
    }
}

impl Default for PopConfig {
    fn default() -> Self {
        PopConfig {
            hostname: "localhost".to_string(),
            idle_timeout: Duration::from_secs(600),
            command_timeout: Duration::from_secs(60),
            command_line_max: 512,
            errors_max: 10,
            commands_max: 100_000,
            auth_failure_delay: Duration::from_secs(1),
            auth_attempts_max: 3,
            stls: None,
            plaintext_auth: PlaintextAuth::Loopback,
        }
    }
}
