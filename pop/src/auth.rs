//! The credential check the session calls; the `node` crate implements it against
//! the account registry.

use std::future::Future;

/// Why a login was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password; answered `-ERR [AUTH] invalid credentials`
    /// after the configured delay.
    #[error("invalid credentials")]
    Invalid,
    /// The check could not be made now (registry unavailable, ...); answered
    /// `-ERR [SYS/TEMP] ...` without delay, and not counted as a failed login.
    #[error("temporary failure: {0}")]
    TempFail(String),
    /// Too many failed logins from this client or against this account lately; the
    /// password was not checked. Answered `-ERR [SYS/TEMP] too many login failures,
    /// try later` after the configured delay, and counted as a failed login.
    #[error("too many login failures")]
    RateLimited,
}

/// Checks a user name and password.
pub trait Authenticate: Send + Sync + 'static {
    /// Check credentials; return the canonical mailbox name on success.
    ///
    /// The returned name is what the session passes to [`crate::Mailbox::open`].
    fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = Result<String, AuthError>> + Send;
}
