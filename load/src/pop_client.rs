//! POP3 draining: log in as a user, STAT, UIDL, LIST, then RETR every message (undoing
//! dot-stuffing), verify it, DELE it, and QUIT so the deletes apply.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, sleep};

use crate::args::User;
use crate::conn::Conn;
use crate::error::ConnError;
use crate::message::{self, LoadId, Verdict};
use crate::report::new_histogram;
use crate::schedule::Live;
use crate::smtp_client::ERROR_SAMPLES_MAX;

/// Messages accepted in one mailbox listing.
const LISTING_MAX: usize = 10_000_000;
/// Logins tried per user while the server answers "in use" or "try later".
const LOGIN_TRIES_MAX: u32 = 50;
/// Pause between such logins.
const LOGIN_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Largest message accepted in RETR.
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What every POP3 session of a phase shares.
#[derive(Debug)]
pub struct DrainJob {
    /// Servers; session i talks to `pop[i % len]`.
    pub pop: Vec<SocketAddr>,
    /// Every account.
    pub users: Arc<Vec<User>>,
    /// Per-command deadline.
    pub timeout: Duration,
    /// Progress counters.
    pub live: Arc<Live>,
}

/// Which users a drain session takes.
#[derive(Debug)]
pub enum UserOrder {
    /// One pass over all users, each taken by whichever session is free next.
    Shared(AtomicUsize),
    /// Session i of n owns users i, i+n, ...; passes repeat until `stop` is set.
    Owned {
        /// Sessions in all.
        sessions: usize,
        /// Set when the send phase is over.
        stop: Arc<AtomicBool>,
    },
}

/// What one POP3 session did.
#[derive(Debug)]
pub struct DrainOutcome {
    /// Successful logins.
    pub logins: u64,
    /// Messages retrieved (RETR answered in full).
    pub retrieved: u64,
    /// Bytes retrieved (unstuffed).
    pub retrieved_bytes: u64,
    /// Retrieved messages whose body did not match their load header.
    pub corrupt: u64,
    /// Retrieved messages without a load header.
    pub unmarked: u64,
    /// RETR sizes that differed from LIST.
    pub size_mismatch: u64,
    /// Sessions broken by a socket error, timeout, refusal or protocol violation.
    pub errors: u64,
    /// Ids of intact messages.
    pub intact: Vec<LoadId>,
    /// Ids of corrupt messages (when readable).
    pub corrupt_ids: Vec<LoadId>,
    /// RETR written → last line read, microseconds.
    pub latency_us: Histogram<u64>,
    /// USER written → `+OK` to PASS, microseconds.
    pub login_us: Histogram<u64>,
    /// The first few distinct failure texts.
    pub error_samples: Vec<String>,
}

impl DrainOutcome {
    fn new() -> DrainOutcome {
        DrainOutcome {
            logins: 0,
            retrieved: 0,
            retrieved_bytes: 0,
            corrupt: 0,
            unmarked: 0,
            size_mismatch: 0,
            errors: 0,
            intact: Vec::new(),
            corrupt_ids: Vec::new(),
            latency_us: new_histogram(),
            login_us: new_histogram(),
            error_samples: Vec::new(),
        }
    }

    fn note(&mut self, text: String) {
        if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(&text) {
            self.error_samples.push(text);
        }
    }
}

/// How a login attempt ended.
enum Login {
    Done,
    /// `-ERR [IN-USE]` or `[SYS/TEMP]`: try again later.
    Later(String),
}

/// One status line: `Ok(rest)` for `+OK`, `Err(text)` for `-ERR`.
async fn status(
    conn: &mut Conn,
    deadline: Instant,
    what: &'static str,
) -> Result<Result<String, String>, ConnError> {
    let line = conn.read_line(deadline, what).await?;
    let text = String::from_utf8_lossy(line).trim_end().to_string();
    if let Some(rest) = text.strip_prefix("+OK") {
        Ok(Ok(rest.trim().to_string()))
    } else if text.starts_with("-ERR") {
        Ok(Err(text))
    } else {
        Err(ConnError::protocol(what, line))
    }
}

/// A command whose answer must be `+OK` (no allocation unless it is not).
async fn ok(conn: &mut Conn, cmd: &[u8], what: &'static str) -> Result<(), ConnError> {
    let dl = conn.deadline();
    conn.write_all(cmd, dl, what).await?;
    let line = conn.read_line(dl, what).await?;
    if line.starts_with(b"+OK") {
        Ok(())
    } else {
        Err(ConnError::protocol(what, line))
    }
}

/// Read the rest of a multi-line answer, calling `each` with every unstuffed line.
async fn multiline(
    conn: &mut Conn,
    deadline: Instant,
    what: &'static str,
    lines_max: usize,
    mut each: impl FnMut(&[u8]) -> Result<(), ConnError>,
) -> Result<(), ConnError> {
    for _ in 0..lines_max {
        let line = conn.read_line(deadline, what).await?;
        match message::unstuff_line(line) {
            None => return Ok(()),
            Some(l) => each(l)?,
        }
    }
    Err(ConnError::Protocol {
        what,
        line: format!("more than {lines_max} lines"),
    })
}

/// Drain one mailbox on one connection.
async fn drain_one(
    job: &DrainJob,
    addr: SocketAddr,
    user: &User,
    out: &mut DrainOutcome,
    msg: &mut Vec<u8>,
    sizes: &mut Vec<u64>,
) -> Result<Login, ConnError> {
    let mut conn = Conn::connect(addr, job.timeout).await?;
    let dl = conn.deadline();
    if let Err(text) = status(&mut conn, dl, "read greeting").await? {
        return Err(ConnError::Protocol {
            what: "greeting",
            line: text,
        });
    }
    let t_login = Instant::now();
    ok(
        &mut conn,
        format!("USER {}\r\n", user.address).as_bytes(),
        "USER",
    )
    .await?;
    let dl = conn.deadline();
    conn.write_all(format!("PASS {}\r\n", user.password).as_bytes(), dl, "PASS")
        .await?;
    if let Err(text) = status(&mut conn, dl, "PASS").await? {
        if text.contains("[IN-USE]") || text.contains("[SYS/TEMP]") {
            return Ok(Login::Later(text));
        }
        return Err(ConnError::Protocol {
            what: "login",
            line: format!("{}: {text}", user.address),
        });
    }
    out.logins += 1;
    out.login_us
        .saturating_record((t_login.elapsed().as_micros() as u64).max(1));
    let dl = conn.deadline();
    conn.write_all(b"STAT\r\n", dl, "STAT").await?;
    let stat = match status(&mut conn, dl, "STAT").await? {
        Ok(rest) => rest,
        Err(text) => {
            return Err(ConnError::Protocol {
                what: "STAT",
                line: text,
            });
        }
    };
    let count: usize = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ConnError::protocol("STAT", stat.as_bytes()))?;
    if count > LISTING_MAX {
        return Err(ConnError::Protocol {
            what: "STAT",
            line: stat,
        });
    }
    ok(&mut conn, b"UIDL\r\n", "UIDL").await?;
    let dl = conn.deadline();
    let mut uidls = 0usize;
    multiline(&mut conn, dl, "UIDL listing", LISTING_MAX, |_| {
        uidls += 1;
        Ok(())
    })
    .await?;
    ok(&mut conn, b"LIST\r\n", "LIST").await?;
    sizes.clear();
    let dl = conn.deadline();
    multiline(&mut conn, dl, "LIST listing", LISTING_MAX, |line| {
        let mut w = line.split(|&b| b == b' ');
        let size = w
            .nth(1)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ConnError::protocol("LIST line", line))?;
        sizes.push(size);
        Ok(())
    })
    .await?;
    if sizes.len() != count || uidls != count {
        return Err(ConnError::Protocol {
            what: "listing",
            line: format!("STAT {count}, UIDL {uidls}, LIST {} lines", sizes.len()),
        });
    }
    let mut cmd = Vec::with_capacity(32);
    for n in 1..=count {
        cmd.clear();
        let _ = write!(cmd, "RETR {n}\r\n");
        let t0 = Instant::now();
        ok(&mut conn, &cmd, "RETR").await?;
        msg.clear();
        let dl = conn.deadline();
        multiline(&mut conn, dl, "RETR body", usize::MAX, |line| {
            if msg.len() + line.len() > MESSAGE_BYTES_MAX {
                return Err(ConnError::Protocol {
                    what: "RETR",
                    line: "message too large".into(),
                });
            }
            msg.extend_from_slice(line);
            Ok(())
        })
        .await?;
        out.latency_us
            .saturating_record((t0.elapsed().as_micros() as u64).max(1));
        out.retrieved += 1;
        out.retrieved_bytes += msg.len() as u64;
        Live::bump(&job.live.retrieved);
        if sizes[n - 1] != msg.len() as u64 {
            out.size_mismatch += 1;
        }
        match message::verify(msg) {
            Verdict::Intact(id) => out.intact.push(id),
            Verdict::Corrupt(id) => {
                out.corrupt += 1;
                Live::bump(&job.live.corrupt);
                if let Some(id) = id {
                    out.corrupt_ids.push(id);
                }
                out.note(format!(
                    "pop {addr}: {} message {n} is corrupt",
                    user.address
                ));
            }
            Verdict::Unmarked => out.unmarked += 1,
        }
        cmd.clear();
        let _ = write!(cmd, "DELE {n}\r\n");
        ok(&mut conn, &cmd, "DELE").await?;
    }
    ok(&mut conn, b"QUIT\r\n", "QUIT").await?;
    Ok(Login::Done)
}

/// Drain `user`, retrying while the server says "later" (bounded).
async fn drain_user(
    job: &DrainJob,
    addr: SocketAddr,
    user: &User,
    out: &mut DrainOutcome,
    msg: &mut Vec<u8>,
    sizes: &mut Vec<u64>,
) {
    let mut last = String::new();
    for _ in 0..LOGIN_TRIES_MAX {
        match drain_one(job, addr, user, out, msg, sizes).await {
            Ok(Login::Done) => return,
            Ok(Login::Later(text)) => {
                last = text;
                sleep(LOGIN_RETRY_PAUSE).await;
            }
            Err(e) => {
                out.errors += 1;
                out.note(format!("pop {addr}: {}: {e}", user.address));
                return;
            }
        }
    }
    out.errors += 1;
    out.note(format!(
        "pop {addr}: {}: {LOGIN_TRIES_MAX} logins answered {last:?}",
        user.address
    ));
}

/// Run POP3 session `index` over the users `order` gives it.
pub async fn run_session(job: Arc<DrainJob>, index: usize, order: Arc<UserOrder>) -> DrainOutcome {
    let mut out = DrainOutcome::new();
    let addr = job.pop[index % job.pop.len()];
    let mut msg = Vec::with_capacity(64 * 1024);
    let mut sizes = Vec::new();
    match &*order {
        UserOrder::Shared(next) => loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(user) = job.users.get(i) else { break };
            drain_user(&job, addr, user, &mut out, &mut msg, &mut sizes).await;
        },
        UserOrder::Owned { sessions, stop } => {
            while !stop.load(Ordering::Relaxed) {
                let before = out.retrieved;
                for user in job.users.iter().skip(index).step_by(*sessions) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    drain_user(&job, addr, user, &mut out, &mut msg, &mut sizes).await;
                }
                if out.retrieved == before {
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    out
}

/// A POP3 session that only logs in, STATs and QUITs (deleting nothing): its time,
/// connect → `+OK` to QUIT, in microseconds; `None` if the server refused or failed.
pub async fn probe_session(addr: SocketAddr, user: &User, timeout: Duration) -> Option<u64> {
    let t0 = Instant::now();
    let mut conn = Conn::connect(addr, timeout).await.ok()?;
    let dl = conn.deadline();
    status(&mut conn, dl, "read greeting").await.ok()?.ok()?;
    let mut cmd = Vec::with_capacity(128);
    for line in [
        format!("USER {}\r\n", user.address),
        format!("PASS {}\r\n", user.password),
        "STAT\r\n".to_string(),
        "QUIT\r\n".to_string(),
    ] {
        cmd.clear();
        cmd.extend_from_slice(line.as_bytes());
        ok(&mut conn, &cmd, "probe").await.ok()?;
    }
    Some(t0.elapsed().as_micros() as u64)
}
