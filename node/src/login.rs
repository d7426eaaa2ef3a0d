//! POP3 logins as the node checks them: failed-login rate limits per client address
//! and per account (a login over a limit is refused without running Argon2), and one
//! structured `auth` log line per failure, which never carries the password.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pop::{AuthError, Limited, LoginLimiter, LoginLimits};

use crate::retrieve::RetrievalProxy;

/// The failed-login windows of one node, shared by all its POP3 sessions.
pub struct LoginGuard {
    limiter: Mutex<LoginLimiter>,
    /// Client addresses whose failures are neither limited nor counted.
    exempt: Vec<IpAddr>,
}

impl LoginGuard {
    /// Windows with `limits`; clients at `exempt` are not limited.
    pub fn new(limits: &LoginLimits, exempt: &[IpAddr]) -> Self {
        LoginGuard {
            limiter: Mutex::new(LoginLimiter::new(limits)),
            exempt: exempt.iter().map(|ip| ip.to_canonical()).collect(),
        }
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.contains(&ip.to_canonical())
    }

    fn check(&self, ip: IpAddr, account: &str) -> Result<(), Limited> {
        if self.is_exempt(ip) {
            return Ok(());
        }
        match self.limiter.lock() {
            Ok(l) => l.check(ip, account, Instant::now()),
            // A poisoned lock only means a panic elsewhere; limits are best effort.
            Err(p) => p.into_inner().check(ip, account, Instant::now()),
        }
    }

    fn record_failure(&self, ip: IpAddr, account: &str) {
        if self.is_exempt(ip) {
            return;
        }
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        l.record_failure(ip, account, Instant::now());
    }
}

/// The [`pop::Authenticate`] of one POP3 session: the retrieval proxy's check behind
/// the node's [`LoginGuard`], knowing the client's address.
pub struct PeerAuth {
    /// Does the password check.
    pub proxy: Arc<RetrievalProxy>,
    /// The node's failure windows.
    pub guard: Arc<LoginGuard>,
    /// The client.
    pub peer: SocketAddr,
}

/// The name failures of a login count under: the canonical address, or the name as
/// given (lower-cased) when it is not a valid address.
fn account_key(user: &str) -> String {
    registry::canonical_address(user).unwrap_or_else(|_| user.to_ascii_lowercase())
}

impl pop::Authenticate for PeerAuth {
    async fn authenticate(&self, user: &str, password: &str) -> Result<String, AuthError> {
        let account = account_key(user);
        let ip = self.peer.ip();
        if let Err(limit) = self.guard.check(ip, &account) {
            let limit = match limit {
                Limited::Ip => "client address",
                Limited::Account => "account",
            };
            tracing::info!(target: "auth", peer = %self.peer, user = ?user, reason = "rate limited", limit, "POP3 login failed");
            return Err(AuthError::RateLimited);
        }
        let result = pop::Authenticate::authenticate(self.proxy.as_ref(), user, password).await;
        if let Err(AuthError::Invalid) = &result {
            self.guard.record_failure(ip, &account);
            // Which one it was is for the log only; the client's answer is the same.
            let known = matches!(self.proxy.0.registry.state().user(&account), Ok(Some(_)));
            let reason = if known {
                "bad password"
            } else {
                "unknown user"
            };
            tracing::info!(target: "auth", peer = %self.peer, user = ?user, reason, "POP3 login failed");
        }
        result
    }
}
