//! Why a load run could not run or did not pass.

use std::io;

/// Everything that stops `porcupine load` with a failure exit.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or a combination of flags that cannot work.
    #[error("{0}")]
    Args(String),
    /// A `--smtp`/`--pop` address that does not resolve.
    #[error("resolving {addr:?}: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// Reading `--user-file` or writing `--json` / `--calibrate-out`.
    #[error("{verb} {path}: {source}")]
    File {
        /// What was being done ("reading", "writing").
        verb: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A line of `--user-file` that is not `address password`.
    #[error("{path} line {line}: want `address password`")]
    UserFile {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// No message got a `250` although some were sent (nothing to measure).
    #[error("no message was acknowledged: {0}")]
    NothingAcknowledged(String),
    /// The run could not do what was asked (e.g. a drain session failed).
    #[error("incomplete run: {0}")]
    Incomplete(String),
    /// An acknowledged message came back corrupt, never came back, or came back twice.
    #[error(
        "integrity check failed: {corrupt} corrupt, {missing} missing, {duplicate} duplicate \
         (of {acknowledged} acknowledged, {retrieved} retrieved)"
    )]
    Integrity {
        /// Messages whose body did not match the hash in their header.
        corrupt: u64,
        /// Acknowledged messages never retrieved.
        missing: u64,
        /// Messages retrieved more than once.
        duplicate: u64,
        /// Messages that got `250`.
        acknowledged: u64,
        /// Messages retrieved.
        retrieved: u64,
    },
}

/// Why one protocol exchange failed (counted per session, never fatal to the run).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed while doing `what`.
    #[error("{what}: {source}")]
    Io {
        /// The step ("connect", "read reply", "write body").
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The per-command deadline (`--timeout`) passed while doing `what`.
    #[error("{what}: timed out")]
    Timeout {
        /// The step.
        what: &'static str,
    },
    /// The peer closed the connection while doing `what`.
    #[error("{what}: connection closed by the server")]
    Closed {
        /// The step.
        what: &'static str,
    },
    /// The peer sent something that is not the protocol (`line` is its start, lossy).
    #[error("{what}: unexpected answer {line:?}")]
    Protocol {
        /// The step.
        what: &'static str,
        /// What came instead.
        line: String,
    },
    /// A reply line longer than the reader's limit.
    #[error("{what}: line longer than {limit_bytes} bytes")]
    LineTooLong {
        /// The step.
        what: &'static str,
        /// The limit.
        limit_bytes: usize,
    },
}

impl ConnError {
    /// A protocol error with the offending line, shortened and made printable.
    pub fn protocol(what: &'static str, line: &[u8]) -> ConnError {
        let end = line.len().min(120);
        ConnError::Protocol {
            what,
            line: String::from_utf8_lossy(&line[..end]).trim_end().to_string(),
        }
    }
}
