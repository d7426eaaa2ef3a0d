//! The flags of `porcupine load` and the validated [`Plan`] they make.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::error::LoadError;
use crate::size::SizeDist;

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// SMTP only.
    Send,
    /// POP3 only: retrieve, verify and delete every message of every user.
    Drain,
    /// Send, then drain everything and check that every acknowledged message came back.
    SendThenDrain,
    /// Send and drain at once (drain sessions own disjoint users), then a final drain.
    Mixed,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.to_possible_value().expect("no variant is skipped");
        f.write_str(v.get_name())
    }
}

impl Mode {
    /// True when the run sends over SMTP.
    pub fn sends(self) -> bool {
        self != Mode::Drain
    }
    /// True when the run retrieves over POP3.
    pub fn drains(self) -> bool {
        self != Mode::Send
    }
}

/// `porcupine load`: drive any SMTP and POP3 server and check every message end to end.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// SMTP server HOST:PORT (repeatable; sessions are spread over the list).
    #[arg(long = "smtp", value_name = "HOST:PORT")]
    pub smtp: Vec<String>,
    /// POP3 server HOST:PORT (repeatable; sessions are spread over the list).
    #[arg(long = "pop", value_name = "HOST:PORT")]
    pub pop: Vec<String>,
    /// Users u0..u{N-1}@DOMAIN with passwords pw0..pw{N-1}.
    #[arg(long, default_value_t = 100)]
    pub users: u64,
    /// Domain of the generated users.
    #[arg(long, default_value = "bench.test")]
    pub domain: String,
    /// Users from a file instead: one `address password` per line (# comments).
    #[arg(long, value_name = "FILE")]
    pub user_file: Option<PathBuf>,
    /// Envelope and header sender.
    #[arg(long, default_value = "load@porcupine-load.test")]
    pub from: String,
    /// Concurrent SMTP connections (one task each).
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
    /// Concurrent POP3 connections (default: --sessions, at most one per user).
    #[arg(long)]
    pub pop_sessions: Option<usize>,
    /// Messages per SMTP connection before QUIT and a new connection.
    #[arg(long, default_value_t = 1000)]
    pub messages_per_connection: u64,
    /// Send MAIL, RCPT and DATA in one write when the server advertises PIPELINING.
    #[arg(long)]
    pub pipelining: bool,
    /// Open loop: offer this many messages per second in all (default: closed loop).
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,
    /// How long to send, e.g. 30s, 500ms, 2m (default 30s unless --messages is given).
    #[arg(long)]
    pub duration: Option<String>,
    /// Send this many messages in all (stops at whichever of this and --duration comes first).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Message size, bytes: N, fixed:N, uniform:A-B or lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "4096")]
    pub size: String,
    /// send | drain | send-then-drain | mixed.
    #[arg(long, value_enum, default_value_t = Mode::Send)]
    pub mode: Mode,
    /// Deadline of every command (connect, each reply, each write), e.g. 30s.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// Seed of sizes and bodies (message ids are unique per run regardless).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write service-time estimates for `porcupine sim run --calibrate` here.
    #[arg(long, value_name = "FILE")]
    pub calibrate_out: Option<PathBuf>,
    /// Cores of the server for --calibrate-out (default: this machine's).
    #[arg(long)]
    pub calibrate_cores: Option<u32>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

/// One account the generator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Mail address (RCPT TO and POP3 USER).
    pub address: String,
    /// POP3 password.
    pub password: String,
}

/// A run, checked and resolved: what [`crate::run::execute`] needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Resolved SMTP servers.
    pub smtp: Vec<SocketAddr>,
    /// Resolved POP3 servers.
    pub pop: Vec<SocketAddr>,
    /// The accounts.
    pub users: Vec<User>,
    /// Envelope sender.
    pub from: String,
    /// SMTP sessions.
    pub sessions: usize,
    /// POP3 sessions.
    pub pop_sessions: usize,
    /// Messages per SMTP connection.
    pub messages_per_connection: u64,
    /// Use PIPELINING where offered.
    pub pipelining: bool,
    /// Open-loop rate, messages per second.
    pub rate_msgs_per_s: Option<f64>,
    /// Send phase length (None: until `messages_max`).
    pub duration: Option<Duration>,
    /// Messages to send at most.
    pub messages_max: Option<u64>,
    /// Sizes.
    pub size: SizeDist,
    /// What to do.
    pub mode: Mode,
    /// Per-command deadline.
    pub timeout: Duration,
    /// Seed.
    pub seed: u64,
    /// Run a single-session probe first and write estimates here.
    pub calibrate_out: Option<PathBuf>,
    /// Server cores for the estimates.
    pub calibrate_cores: u32,
    /// Show a progress bar (stderr is a terminal and not --quiet).
    pub progress: bool,
    /// JSON report path.
    pub json: Option<PathBuf>,
}

/// `30s`, `500ms`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1e3,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn resolve(list: &[String]) -> Result<Vec<SocketAddr>, LoadError> {
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let addr = a
            .to_socket_addrs()
            .map_err(|source| LoadError::Resolve {
                addr: a.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| LoadError::Resolve {
                addr: a.clone(),
                source: std::io::Error::other("no address"),
            })?;
        out.push(addr);
    }
    Ok(out)
}

/// Parse a user file: `address password` per line, blank lines and `#` comments skipped.
pub fn parse_user_file(text: &str, path: &str) -> Result<Vec<User>, LoadError> {
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(a), Some(p), None) if a.contains('@') => users.push(User {
                address: a.to_string(),
                password: p.to_string(),
            }),
            _ => {
                return Err(LoadError::UserFile {
                    path: path.to_string(),
                    line: i + 1,
                });
            }
        }
    }
    Ok(users)
}

impl LoadArgs {
    /// Check the flags, resolve the servers, read the users.
    pub fn plan(&self) -> Result<Plan, LoadError> {
        let bad = |m: String| Err(LoadError::Args(m));
        if self.mode.sends() && self.smtp.is_empty() {
            return bad(format!(
                "--mode {:?} needs at least one --smtp HOST:PORT",
                self.mode
            ));
        }
        if self.mode.drains() && self.pop.is_empty() {
            return bad(format!(
                "--mode {:?} needs at least one --pop HOST:PORT",
                self.mode
            ));
        }
        if self.sessions == 0 || self.pop_sessions == Some(0) {
            return bad("--sessions and --pop-sessions must be at least 1".into());
        }
        if self.messages_per_connection == 0 {
            return bad("--messages-per-connection must be at least 1".into());
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return bad(format!(
                "--rate {r}: want a positive number of messages per second"
            ));
        }
        let size = SizeDist::parse(&self.size).map_err(LoadError::Args)?;
        let timeout = parse_duration(&self.timeout)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                LoadError::Args(format!("--timeout {:?}: want e.g. 30s", self.timeout))
            })?;
        let duration = match (&self.duration, self.messages) {
            (Some(d), _) => Some(
                parse_duration(d)
                    .ok_or_else(|| LoadError::Args(format!("--duration {d:?}: want e.g. 30s")))?,
            ),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(30)),
        };
        let users = match &self.user_file {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| LoadError::File {
                    verb: "reading",
                    path: shown.clone(),
                    source,
                })?;
                parse_user_file(&text, &shown)?
            }
            None => (0..self.users)
                .map(|i| User {
                    address: format!("u{i}@{}", self.domain),
                    password: format!("pw{i}"),
                })
                .collect(),
        };
        if users.is_empty() {
            return bad("no users: give --users N (N ≥ 1) or a non-empty --user-file".into());
        }
        let pop_sessions = self.pop_sessions.unwrap_or(self.sessions).min(users.len());
        let stderr_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Ok(Plan {
            smtp: resolve(&self.smtp)?,
            pop: resolve(&self.pop)?,
            users,
            from: self.from.clone(),
            sessions: self.sessions,
            pop_sessions,
            messages_per_connection: self.messages_per_connection,
            pipelining: self.pipelining,
            rate_msgs_per_s: self.rate,
            duration,
            messages_max: self.messages,
            size,
            mode: self.mode,
            timeout,
            seed: self.seed,
            calibrate_out: self.calibrate_out.clone(),
            calibrate_cores: self.calibrate_cores.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
            progress: stderr_tty && !self.quiet,
            json: self.json.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("3d"), None);
    }

    #[test]
    fn user_file() {
        let u = parse_user_file("# c\n\na@b.test pw1\n  c@d.test   pw2  \n", "f").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[1].address, "c@d.test");
        assert_eq!(u[1].password, "pw2");
        assert!(matches!(
            parse_user_file("a@b.test\n", "f"),
            Err(LoadError::UserFile { line: 1, .. })
        ));
    }
}
