//! Errors [`serve`](crate::serve) reports: I/O failures worth logging. A client that
//! disconnects or stops answering is not an error.

/// An I/O failure that ended a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading from the client failed for a reason other than the client going away.
    #[error("reading from the SMTP client failed: {0}")]
    Read(#[source] std::io::Error),
    /// Writing to the client failed for a reason other than the client going away.
    #[error("writing to the SMTP client failed: {0}")]
    Write(#[source] std::io::Error),
}
