//! Login failure rate limits: a sliding window of failed logins per client address
//! and per account, in bounded memory. Sans-IO: the caller passes the time in.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits of a [`LoginLimiter`].
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Failed logins one client address (IPv6: its /64) may make per window.
    pub per_ip_max: usize,
    /// Failed logins against one account (from anywhere) per window.
    pub per_account_max: usize,
    /// Length of the sliding window.
    pub window: Duration,
    /// Most addresses, and most accounts, tracked at once; past it the entry whose
    /// last failure is oldest is forgotten.
    pub entries_max: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_ip_max: 10,
            per_account_max: 5,
            window: Duration::from_secs(60),
            entries_max: 10_000,
        }
    }
}

/// Which limit a login ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The client address made too many failed logins in the window.
    Ip,
    /// The account had too many failed logins in the window.
    Account,
}

/// Failure times per key: at most `per_key_max` each, at most `entries_max` keys.
#[derive(Debug)]
struct Window<K: Ord + Clone> {
    failures: BTreeMap<K, VecDeque<Instant>>,
    per_key_max: usize,
    entries_max: usize,
}

impl<K: Ord + Clone> Window<K> {
    fn new(per_key_max: usize, entries_max: usize) -> Self {
        Window {
            failures: BTreeMap::new(),
            per_key_max,
            entries_max: entries_max.max(1),
        }
    }

    /// Failures of `key` within `window` before `now`.
    fn count(&self, key: &K, now: Instant, window: Duration) -> usize {
        self.failures.get(key).map_or(0, |times| {
            times
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) < window)
                .count()
        })
    }

    fn full(&self, key: &K, now: Instant, window: Duration) -> bool {
        self.count(key, now, window) >= self.per_key_max
    }

    fn record(&mut self, key: &K, now: Instant, window: Duration) {
        if !self.failures.contains_key(key) && self.failures.len() >= self.entries_max {
            self.make_room(now, window);
        }
        let times = self.failures.entry(key.clone()).or_default();
        times.retain(|&t| now.saturating_duration_since(t) < window);
        times.push_back(now);
        // Only the newest `per_key_max` matter for the verdict.
        while times.len() > self.per_key_max.max(1) {
            times.pop_front();
        }
    }

    /// Drop keys with no failure left in the window; if none, the one whose last
    /// failure is the oldest.
    fn make_room(&mut self, now: Instant, window: Duration) {
        let before = self.failures.len();
        self.failures.retain(|_, times| {
            times
                .back()
                .is_some_and(|&t| now.saturating_duration_since(t) < window)
        });
        if self.failures.len() < before {
            return;
        }
        let oldest = self
            .failures
            .iter()
            .min_by_key(|(_, times)| times.back().copied())
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.failures.remove(&k);
        }
    }

    fn len(&self) -> usize {
        self.failures.len()
    }
}

/// Per-address and per-account failed-login windows, shared by every POP3 session of
/// a node. Check before verifying a password; record each failure after.
#[derive(Debug)]
pub struct LoginLimiter {
    window: Duration,
    ips: Window<IpAddr>,
    accounts: Window<String>,
}

/// The key an address counts under: IPv4 (also IPv4-mapped) as is, IPv6 per /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl LoginLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: &LoginLimits) -> Self {
        LoginLimiter {
            window: limits.window,
            ips: Window::new(limits.per_ip_max, limits.entries_max),
            accounts: Window::new(limits.per_account_max, limits.entries_max),
        }
    }

    /// May a login from `ip` to `account` be tried at `now`? `Err` names the limit
    /// it ran into; such a login should be refused without checking the password.
    pub fn check(&self, ip: IpAddr, account: &str, now: Instant) -> Result<(), Limited> {
        if self.ips.full(&ip_key(ip), now, self.window) {
            return Err(Limited::Ip);
        }
        if self.accounts.full(&account.to_string(), now, self.window) {
            return Err(Limited::Account);
        }
        Ok(())
    }

    /// Count one failed login from `ip` to `account` at `now`.
    pub fn record_failure(&mut self, ip: IpAddr, account: &str, now: Instant) {
        self.ips.record(&ip_key(ip), now, self.window);
        self.accounts.record(&account.to_string(), now, self.window);
    }

    /// Addresses and accounts tracked now (for tests and metrics).
    pub fn entries(&self) -> (usize, usize) {
        (self.ips.len(), self.accounts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits() -> LoginLimits {
        LoginLimits {
            per_ip_max: 3,
            per_account_max: 2,
            window: Duration::from_secs(60),
            entries_max: 4,
        }
    }

    #[test]
    fn per_ip_limit_and_sliding_window() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(&limits());
        let a = ip("192.0.2.1");
        // Three failures, each against a different account: the address is full.
        for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
            assert_eq!(l.check(a, user, t0), Ok(()));
            l.record_failure(a, user, t0 + Duration::from_secs(i as u64));
        }
        let t = t0 + Duration::from_secs(10);
        assert_eq!(l.check(a, "u4", t), Err(Limited::Ip));
        // Another address is unaffected.
        assert_eq!(l.check(ip("192.0.2.2"), "u4", t), Ok(()));
        // Once the first failure leaves the window, one more try is allowed.
        assert_eq!(
            l.check(a, "u4", t0 + Duration::from_secs(59)),
            Err(Limited::Ip)
        );
        assert_eq!(l.check(a, "u4", t0 + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn per_account_limit_across_addresses() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(&limits());
        l.record_failure(ip("192.0.2.1"), "alice", t0);
        l.record_failure(ip("192.0.2.2"), "alice", t0);
        assert_eq!(l.check(ip("192.0.2.3"), "alice", t0), Err(Limited::Account));
        assert_eq!(l.check(ip("192.0.2.3"), "bob", t0), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(&LoginLimits {
            per_account_max: 100,
            ..limits()
        });
        for i in 1..=3 {
            l.record_failure(ip(&format!("2001:db8::{i}")), "x", t0);
        }
        assert_eq!(l.check(ip("2001:db8::ffff:1"), "y", t0), Err(Limited::Ip));
        assert_eq!(l.check(ip("2001:db8:0:1::1"), "y", t0), Ok(()));
        for _ in 0..3 {
            l.record_failure(ip("::ffff:192.0.2.9"), "x", t0);
        }
        assert_eq!(l.check(ip("192.0.2.9"), "y", t0), Err(Limited::Ip));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes_first() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(&LoginLimits {
            per_ip_max: 1,
            per_account_max: 100,
            ..limits()
        });
        for i in 0..100u64 {
            l.record_failure(
                ip(&format!("10.0.0.{}", i % 250)),
                "acct",
                t0 + Duration::from_millis(i),
            );
            let (ips, accounts) = l.entries();
            assert!(ips <= 4 && accounts <= 4, "{ips} {accounts}");
        }
        let t = t0 + Duration::from_secs(1);
        // The four newest addresses are still limited; an evicted one is not.
        assert_eq!(l.check(ip("10.0.0.99"), "other", t), Err(Limited::Ip));
        assert_eq!(l.check(ip("10.0.0.96"), "other", t), Err(Limited::Ip));
        assert_eq!(l.check(ip("10.0.0.95"), "other", t), Ok(()));
        // Expired entries are what goes first once the window has passed.
        l.record_failure(ip("10.0.1.1"), "acct", t0 + Duration::from_secs(120));
        assert_eq!(l.entries().0, 1);
    }

    #[test]
    fn per_key_memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(&limits());
        for i in 0..1000 {
            l.record_failure(ip("192.0.2.1"), "a", t0 + Duration::from_millis(i));
        }
        assert!(l.ips.failures.values().all(|t| t.len() <= 3));
        assert!(l.accounts.failures.values().all(|t| t.len() <= 2));
    }
}
