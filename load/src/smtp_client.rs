//! One SMTP sending session: connect, EHLO, then MAIL/RCPT/DATA loops on the same
//! connection (no RSET between successful transactions; optional PIPELINING), QUIT
//! after `messages_per_connection` and connect again. Failures are counted, never fatal.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use tokio::time::{Instant, sleep, sleep_until};

use crate::args::User;
use crate::conn::Conn;
use crate::error::ConnError;
use crate::message::{self, Envelope, LoadId, TextBlock};
use crate::report::new_histogram;
use crate::rng::Rng;
use crate::schedule::{Live, Schedule};
use crate::size::SizeDist;

/// Name given in EHLO.
const EHLO_NAME: &str = "porcupine-load.localhost";
/// Consecutive failed connection attempts after which a session gives up.
const CONNECT_FAILURES_MAX: u32 = 10;
/// Lines accepted in one multi-line reply.
const REPLY_LINES_MAX: usize = 200;
/// A transaction started this much after its due time counts as late (open loop).
const LATE_AFTER: Duration = Duration::from_millis(10);
/// Error texts kept per session for the report.
pub const ERROR_SAMPLES_MAX: usize = 5;

/// What every SMTP session of a phase shares (read-only but for the atomics).
#[derive(Debug)]
pub struct SendJob {
    /// Servers; session i talks to `smtp[i % len]`.
    pub smtp: Vec<SocketAddr>,
    /// Recipients; message id n goes to `users[n % len]`.
    pub users: Arc<Vec<User>>,
    /// Envelope and header sender.
    pub from: String,
    /// Sizes.
    pub size: SizeDist,
    /// Transactions per connection.
    pub messages_per_connection: u64,
    /// Pipeline MAIL/RCPT/DATA when offered.
    pub pipelining: bool,
    /// Per-command deadline.
    pub timeout: Duration,
    /// Body text.
    pub text: Arc<TextBlock>,
    /// This run's id (in every load header).
    pub run_id: u64,
    /// Seed of sizes and bodies.
    pub seed: u64,
    /// Ids and the end of the phase.
    pub schedule: Schedule,
    /// Progress counters.
    pub live: Arc<Live>,
}

/// What one SMTP session did.
#[derive(Debug)]
pub struct SendOutcome {
    /// Transactions started (MAIL FROM written).
    pub sent: u64,
    /// `250` after DATA.
    pub acknowledged: u64,
    /// A `4xx` at any step.
    pub temp_failed: u64,
    /// A `5xx` at any step.
    pub perm_failed: u64,
    /// Transactions broken by a socket error, timeout or protocol violation.
    pub errors: u64,
    /// Connection attempts that failed before a transaction.
    pub connect_failures: u64,
    /// Connections opened.
    pub connections: u64,
    /// Open loop: transactions started more than 10 ms after they were due.
    pub late: u64,
    /// Bytes of messages acknowledged (before dot-stuffing).
    pub acknowledged_bytes: u64,
    /// MAIL FROM written → `250` after DATA, microseconds (acknowledged messages only).
    pub latency_us: Histogram<u64>,
    /// Ids that got `250`.
    pub acked_ids: Vec<u64>,
    /// The first few distinct failure texts.
    pub error_samples: Vec<String>,
}

impl SendOutcome {
    fn new() -> SendOutcome {
        SendOutcome {
            sent: 0,
            acknowledged: 0,
            temp_failed: 0,
            perm_failed: 0,
            errors: 0,
            connect_failures: 0,
            connections: 0,
            late: 0,
            acknowledged_bytes: 0,
            latency_us: new_histogram(),
            acked_ids: Vec::new(),
            error_samples: Vec::new(),
        }
    }

    fn note(&mut self, text: String) {
        if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(&text) {
            self.error_samples.push(text);
        }
    }
}

/// How one transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    Acked,
    Temp(u16),
    Perm(u16),
    /// `421`: the server is closing the connection.
    Closing,
}

fn classify(code: u16) -> Result<Tx, u16> {
    match code {
        200..=299 => Ok(Tx::Acked),
        421 => Ok(Tx::Closing),
        400..=499 => Ok(Tx::Temp(code)),
        500..=599 => Ok(Tx::Perm(code)),
        other => Err(other),
    }
}

/// ESMTP capabilities the client cares about.
#[derive(Debug, Default, Clone, Copy)]
struct Caps {
    pipelining: bool,
    size: bool,
}

/// Read one (possibly multi-line) reply; its code. With `caps`, note EHLO keywords.
async fn read_reply(
    conn: &mut Conn,
    deadline: Instant,
    what: &'static str,
    mut caps: Option<&mut Caps>,
) -> Result<u16, ConnError> {
    for _ in 0..REPLY_LINES_MAX {
        let line = conn.read_line(deadline, what).await?;
        let code = match line.get(..3) {
            Some(d) if d.iter().all(u8::is_ascii_digit) => {
                (d[0] - b'0') as u16 * 100 + (d[1] - b'0') as u16 * 10 + (d[2] - b'0') as u16
            }
            _ => return Err(ConnError::protocol(what, line)),
        };
        if let Some(c) = caps.as_deref_mut() {
            let kw = line.get(4..).unwrap_or_default();
            let starts = |k: &[u8]| kw.len() >= k.len() && kw[..k.len()].eq_ignore_ascii_case(k);
            c.pipelining |= starts(b"PIPELINING");
            c.size |= starts(b"SIZE");
        }
        match line.get(3) {
            Some(b'-') => continue,
            Some(b' ' | b'\r' | b'\n') => return Ok(code),
            _ => return Err(ConnError::protocol(what, line)),
        }
    }
    Err(ConnError::Protocol {
        what,
        line: format!("more than {REPLY_LINES_MAX} reply lines"),
    })
}

/// Connect, read the greeting, EHLO (HELO if refused).
async fn open(addr: SocketAddr, timeout: Duration) -> Result<(Conn, Caps), ConnError> {
    let mut conn = Conn::connect(addr, timeout).await?;
    let dl = conn.deadline();
    let greeting = read_reply(&mut conn, dl, "read greeting", None).await?;
    if greeting != 220 {
        return Err(ConnError::Protocol {
            what: "greeting",
            line: greeting.to_string(),
        });
    }
    let mut caps = Caps::default();
    let dl = conn.deadline();
    conn.write_all(format!("EHLO {EHLO_NAME}\r\n").as_bytes(), dl, "write EHLO")
        .await?;
    let code = read_reply(&mut conn, dl, "read EHLO reply", Some(&mut caps)).await?;
    if code != 250 {
        caps = Caps::default();
        let dl = conn.deadline();
        conn.write_all(format!("HELO {EHLO_NAME}\r\n").as_bytes(), dl, "write HELO")
            .await?;
        let code = read_reply(&mut conn, dl, "read HELO reply", None).await?;
        if code != 250 {
            return Err(ConnError::Protocol {
                what: "HELO",
                line: code.to_string(),
            });
        }
    }
    Ok((conn, caps))
}

/// Buffers a session reuses for every message.
struct Buffers {
    cmd: Vec<u8>,
    msg: Vec<u8>,
    wire: Vec<u8>,
}

/// One MAIL/RCPT/DATA transaction of the message in `bufs.msg`.
async fn transaction(
    conn: &mut Conn,
    caps: Caps,
    pipeline: bool,
    bufs: &mut Buffers,
    from: &str,
    to: &str,
) -> Result<Tx, ConnError> {
    let Buffers { cmd, msg, wire } = bufs;
    cmd.clear();
    let _ = write!(cmd, "MAIL FROM:<{from}>");
    if caps.size {
        let _ = write!(cmd, " SIZE={}", msg.len());
    }
    cmd.extend_from_slice(b"\r\n");
    let mail_end = cmd.len();
    let _ = write!(cmd, "RCPT TO:<{to}>\r\n");
    let rcpt_end = cmd.len();
    cmd.extend_from_slice(b"DATA\r\n");
    wire.clear();
    message::dot_stuff_into(msg, wire);

    let dl = conn.deadline();
    let codes = if pipeline && caps.pipelining {
        conn.write_all(cmd, dl, "write MAIL/RCPT/DATA").await?;
        let mail = read_reply(conn, dl, "read MAIL reply", None).await?;
        let rcpt = read_reply(conn, dl, "read RCPT reply", None).await?;
        let data = read_reply(conn, dl, "read DATA reply", None).await?;
        if data == 354 && !(mail / 100 == 2 && rcpt / 100 == 2) {
            // DATA accepted without a valid envelope: end it empty, then report the failure.
            conn.write_all(b".\r\n", dl, "write empty DATA").await?;
            read_reply(conn, dl, "read empty DATA reply", None).await?;
        }
        [mail, rcpt, data]
    } else {
        let mut codes = [0u16; 3];
        for (i, range) in [0..mail_end, mail_end..rcpt_end, rcpt_end..cmd.len()]
            .into_iter()
            .enumerate()
        {
            conn.write_all(&cmd[range], dl, "write command").await?;
            codes[i] = read_reply(conn, dl, "read reply", None).await?;
            let want = if i == 2 { 354 } else { 250 };
            if codes[i] / 100 != want / 100 {
                break;
            }
        }
        codes
    };
    let [mail, rcpt, data] = codes;
    let failure = [mail, rcpt]
        .into_iter()
        .find(|c| c / 100 != 2)
        .or((data != 354).then_some(data));
    if let Some(code) = failure {
        let tx = classify(code).map_err(|c| ConnError::Protocol {
            what: "envelope",
            line: c.to_string(),
        })?;
        if tx != Tx::Closing {
            // Leave the server in a clean state for the next transaction.
            let dl = conn.deadline();
            conn.write_all(b"RSET\r\n", dl, "write RSET").await?;
            if read_reply(conn, dl, "read RSET reply", None).await? == 421 {
                return Ok(Tx::Closing);
            }
        }
        return Ok(tx);
    }
    let dl = conn.deadline();
    conn.write_all(wire, dl, "write message").await?;
    let code = read_reply(conn, dl, "read reply after DATA", None).await?;
    classify(code).map_err(|c| ConnError::Protocol {
        what: "end of DATA",
        line: c.to_string(),
    })
}

/// Best-effort QUIT (a failure here loses nothing).
async fn quit(mut conn: Conn) {
    let dl = Instant::now() + conn.timeout.min(Duration::from_secs(5));
    if conn.write_all(b"QUIT\r\n", dl, "write QUIT").await.is_ok() {
        let _ = read_reply(&mut conn, dl, "read QUIT reply", None).await;
    }
}

/// Run SMTP session `index` until the schedule runs out (or the server keeps refusing).
pub async fn run_session(job: Arc<SendJob>, index: usize) -> SendOutcome {
    let mut out = SendOutcome::new();
    let addr = job.smtp[index % job.smtp.len()];
    let mut rng = Rng::new(job.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut bufs = Buffers {
        cmd: Vec::with_capacity(1024),
        msg: Vec::with_capacity(64 * 1024),
        wire: Vec::with_capacity(64 * 1024),
    };
    let mut failures_in_a_row = 0u32;
    'connection: while !job.schedule.finished() {
        let (mut conn, caps) = match open(addr, job.timeout).await {
            Ok(c) => c,
            Err(e) => {
                out.connect_failures += 1;
                out.note(format!("smtp {addr}: {e}"));
                failures_in_a_row += 1;
                if failures_in_a_row >= CONNECT_FAILURES_MAX {
                    out.note(format!(
                        "smtp {addr}: gave up after {failures_in_a_row} failed connections"
                    ));
                    break;
                }
                sleep(Duration::from_millis(50 << failures_in_a_row.min(4))).await;
                continue;
            }
        };
        out.connections += 1;
        for _ in 0..job.messages_per_connection {
            let Some(ticket) = job.schedule.claim() else {
                quit(conn).await;
                break 'connection;
            };
            if let Some(due) = ticket.due {
                sleep_until(due).await;
                if Instant::now() > due + LATE_AFTER {
                    out.late += 1;
                }
            }
            let user = &job.users[(ticket.id % job.users.len() as u64) as usize];
            let unix_secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let env = Envelope {
                load_id: LoadId {
                    run: job.run_id,
                    id: ticket.id,
                },
                from: &job.from,
                to: &user.address,
                size_bytes: job.size.sample(&mut rng),
                unix_secs,
            };
            message::build(&mut bufs.msg, &env, &job.text, &mut rng);
            out.sent += 1;
            Live::bump(&job.live.sent);
            let t0 = Instant::now();
            let result = transaction(
                &mut conn,
                caps,
                job.pipelining,
                &mut bufs,
                &job.from,
                &user.address,
            )
            .await;
            match result {
                Ok(Tx::Acked) => {
                    let us = t0.elapsed().as_micros() as u64;
                    out.latency_us.saturating_record(us.max(1));
                    out.acknowledged += 1;
                    out.acknowledged_bytes += bufs.msg.len() as u64;
                    out.acked_ids.push(ticket.id);
                    Live::bump(&job.live.acknowledged);
                    failures_in_a_row = 0;
                }
                Ok(Tx::Temp(code)) => {
                    out.temp_failed += 1;
                    out.note(format!("smtp {addr}: {code} reply"));
                    Live::bump(&job.live.failed);
                }
                Ok(Tx::Perm(code)) => {
                    out.perm_failed += 1;
                    out.note(format!("smtp {addr}: {code} reply"));
                    Live::bump(&job.live.failed);
                }
                Ok(Tx::Closing) => {
                    out.temp_failed += 1;
                    out.note(format!("smtp {addr}: 421 (server closing the connection)"));
                    Live::bump(&job.live.failed);
                    continue 'connection;
                }
                Err(e) => {
                    out.errors += 1;
                    out.note(format!("smtp {addr}: {e}"));
                    Live::bump(&job.live.failed);
                    failures_in_a_row += 1;
                    if failures_in_a_row >= CONNECT_FAILURES_MAX {
                        break 'connection;
                    }
                    continue 'connection;
                }
            }
        }
        quit(conn).await;
    }
    out
}
