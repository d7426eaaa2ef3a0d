//! The dashboard at `/` of the admin API (one HTML page with its script, compiled into
//! the binary) and how a browser gets in without ever holding the admin token:
//!
//! 1. `porcupine dashboard` (holding the token) asks `POST /v1/dashboard/code` for a
//!    one-time login code (random, good for [`CODE_TTL`], usable once);
//! 2. it prints `http://ADMIN/dashboard/login?code=CODE`; opening that URL trades the
//!    code for a session cookie (`HttpOnly; SameSite=Strict; Path=/`, random, good for
//!    [`SESSION_TTL`]) and redirects to `/`;
//! 3. the cookie lets the browser make read-only requests (`GET /`, `GET /v1/status`,
//!    `GET /v1/cluster`, `GET /metrics`); everything else still needs the bearer token.
//!
//! Codes and sessions live in memory: a restarted node forgets them (log in again).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login code may wait to be used.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Name of the session cookie.
pub const COOKIE_NAME: &str = "porcupine_dashboard";
/// Most codes and sessions kept (the oldest go first).
const ENTRIES_MAX: usize = 256;

/// The dashboard page.
pub const PAGE_HTML: &str = include_str!("dashboard.html");

/// One-time login codes and live sessions of the dashboard.
#[derive(Debug, Default)]
pub struct Sessions {
    codes: Mutex<BTreeMap<String, Instant>>,
    sessions: Mutex<BTreeMap<String, Instant>>,
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn insert(map: &Mutex<BTreeMap<String, Instant>>, key: String, until: Instant, now: Instant) {
    if let Ok(mut m) = map.lock() {
        m.retain(|_, t| *t > now);
        while m.len() >= ENTRIES_MAX {
            let oldest = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(key, until);
    }
}

impl Sessions {
    /// A fresh one-time login code.
    pub fn new_code(&self) -> String {
        let code = random_hex();
        let now = Instant::now();
        insert(&self.codes, code.clone(), now + CODE_TTL, now);
        code
    }

    /// Trade a login code for a session id (`None` if unknown, used or expired).
    pub fn redeem(&self, code: &str) -> Option<String> {
        let now = Instant::now();
        let until = self.codes.lock().ok()?.remove(code)?;
        if until <= now {
            return None;
        }
        let session = random_hex();
        insert(&self.sessions, session.clone(), now + SESSION_TTL, now);
        Some(session)
    }

    /// Whether a `Cookie:` header carries a live session.
    pub fn cookie_allows(&self, cookie_header: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(cookie_header) else {
            return false;
        };
        let now = Instant::now();
        let Ok(sessions) = self.sessions.lock() else {
            return false;
        };
        text.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| *k == COOKIE_NAME)
            .any(|(_, v)| sessions.get(v).is_some_and(|t| *t > now))
    }
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(session: &str) -> String {
    format!(
        "{COOKIE_NAME}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// Whether a cookie session may make this request (read-only pages and figures).
pub fn cookie_may(method: &hyper::Method, path: &str) -> bool {
    method == hyper::Method::GET
        && matches!(
            path.trim_matches('/'),
            "" | "v1/status" | "v1/cluster" | "metrics"
        )
}

/// The login code in a query string (`code=...`).
pub fn code_in_query(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "code")
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_its_session_cookie_is_accepted() {
        let s = Sessions::default();
        let code = s.new_code();
        let session = s.redeem(&code).expect("fresh code");
        assert!(s.redeem(&code).is_none(), "codes are one-time");
        assert!(s.redeem("nope").is_none());
        let header = format!("a=b; {COOKIE_NAME}={session}");
        assert!(s.cookie_allows(header.as_bytes()));
        assert!(!s.cookie_allows(format!("{COOKIE_NAME}=forged").as_bytes()));
        assert!(!s.cookie_allows(b""));
        assert!(set_cookie(&session).contains("HttpOnly"));
    }

    #[test]
    fn cookies_only_read() {
        assert!(cookie_may(&hyper::Method::GET, "/"));
        assert!(cookie_may(&hyper::Method::GET, "/v1/status"));
        assert!(!cookie_may(&hyper::Method::GET, "/v1/users"));
        assert!(!cookie_may(&hyper::Method::POST, "/v1/status"));
        assert_eq!(code_in_query(Some("x=1&code=abc")), Some("abc"));
        assert_eq!(code_in_query(None), None);
    }
}
