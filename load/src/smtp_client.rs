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

    /// Keep a failure text (formatted only while there is room for it).
    fn note_with(&mut self, text: impl FnOnce() -> String) {
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            let text = text();
            if !self.error_samples.contains(&text) {
                self.error_samples.push(text);
            }
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

/// Buffers a session reuses for every message (no allocation once they are big enough).
struct Buffers {
    /// MAIL/RCPT/DATA lines of the current message.
    cmd: Vec<u8>,
    /// The current message.
    msg: Vec<u8>,
    /// The next message when chaining.
    next: Vec<u8>,
    /// Bytes of the next write (stuffed body, maybe the next envelope).
    wire: Vec<u8>,
}

/// Append the MAIL, RCPT and DATA lines of a message of `size_bytes` to `out`; the
/// offsets where RCPT and DATA start.
fn envelope_into(
    out: &mut Vec<u8>,
    caps: Caps,
    from: &str,
    to: &str,
    size_bytes: usize,
) -> (usize, usize) {
    let _ = write!(out, "MAIL FROM:<{from}>");
    if caps.size {
        let _ = write!(out, " SIZE={size_bytes}");
    }
    out.extend_from_slice(b"\r\n");
    let rcpt_at = out.len();
    let _ = write!(out, "RCPT TO:<{to}>\r\n");
    let data_at = out.len();
    out.extend_from_slice(b"DATA\r\n");
    (rcpt_at, data_at)
}

/// The first failing code of an envelope's MAIL, RCPT, DATA replies.
fn envelope_failure([mail, rcpt, data]: [u16; 3]) -> Option<u16> {
    [mail, rcpt]
        .into_iter()
        .find(|c| c / 100 != 2)
        .or((data != 354).then_some(data))
}

/// End a failed envelope: classify it and RSET unless the server is closing.
async fn envelope_failed(conn: &mut Conn, code: u16) -> Result<Tx, ConnError> {
    let tx = classify(code).map_err(|c| ConnError::Protocol {
        what: "envelope",
        line: c.to_string(),
    })?;
    if tx != Tx::Closing {
        let dl = conn.deadline();
        conn.write_all(b"RSET\r\n", dl, "write RSET").await?;
        if read_reply(conn, dl, "read RSET reply", None).await? == 421 {
            return Ok(Tx::Closing);
        }
    }
    Ok(tx)
}

fn final_reply(code: u16) -> Result<Tx, ConnError> {
    classify(code).map_err(|c| ConnError::Protocol {
        what: "end of DATA",
        line: c.to_string(),
    })
}

/// One transaction, a command at a time (no PIPELINING).
async fn stepwise(
    conn: &mut Conn,
    caps: Caps,
    bufs: &mut Buffers,
    from: &str,
    to: &str,
) -> Result<Tx, ConnError> {
    let Buffers { cmd, msg, wire, .. } = bufs;
    cmd.clear();
    let (rcpt_at, data_at) = envelope_into(cmd, caps, from, to, msg.len());
    let dl = conn.deadline();
    let mut codes = [250u16, 250, 354];
    for (i, range) in [0..rcpt_at, rcpt_at..data_at, data_at..cmd.len()]
        .into_iter()
        .enumerate()
    {
        conn.write_all(&cmd[range], dl, "write command").await?;
        codes[i] = read_reply(conn, dl, "read reply", None).await?;
        if envelope_failure(codes).is_some() {
            break;
        }
    }
    if let Some(code) = envelope_failure(codes) {
        return envelope_failed(conn, code).await;
    }
    wire.clear();
    message::dot_stuff_into(msg, wire);
    let dl = conn.deadline();
    conn.write_all(wire, dl, "write message").await?;
    final_reply(read_reply(conn, dl, "read reply after DATA", None).await?)
}

/// Best-effort QUIT (a failure here loses nothing).
async fn quit(mut conn: Conn) {
    let dl = Instant::now() + conn.timeout.min(Duration::from_secs(5));
    if conn.write_all(b"QUIT\r\n", dl, "write QUIT").await.is_ok() {
        let _ = read_reply(&mut conn, dl, "read QUIT reply", None).await;
    }
}

/// How a connection's loop ended.
enum ConnEnd {
    /// `messages_per_connection` reached: QUIT, connect again.
    Budget,
    /// The schedule is over: QUIT, stop.
    Finished,
    /// `421`: the server closed it.
    Closing,
    /// A socket error, timeout or protocol violation (already counted).
    Broken,
}

/// A message on its way: built in a buffer, envelope perhaps already written.
#[derive(Clone, Copy)]
struct InFlight {
    id: u64,
    /// When its MAIL FROM was written.
    t0: Instant,
}

/// One SMTP session's state across connections.
struct Session<'a> {
    job: &'a SendJob,
    addr: SocketAddr,
    out: SendOutcome,
    rng: Rng,
    bufs: Buffers,
}

impl Session<'_> {
    /// Claim the next message and build it into `bufs.msg` (`bufs.next` with
    /// `next_buf`), waiting for its due time in open
    /// loop); `None` once the schedule is over.
    async fn next_message(&mut self, next_buf: bool) -> Option<(u64, usize)> {
        let ticket = self.job.schedule.claim()?;
        if let Some(due) = ticket.due {
            sleep_until(due).await;
            if Instant::now() > due + LATE_AFTER {
                self.out.late += 1;
            }
        }
        let user = (ticket.id % self.job.users.len() as u64) as usize;
        let unix_secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let env = Envelope {
            load_id: LoadId {
                run: self.job.run_id,
                id: ticket.id,
            },
            from: &self.job.from,
            to: &self.job.users[user].address,
            size_bytes: self.job.size.sample(&mut self.rng),
            unix_secs,
        };
        let buf = if next_buf {
            &mut self.bufs.next
        } else {
            &mut self.bufs.msg
        };
        message::build(buf, &env, &self.job.text, &mut self.rng);
        self.out.sent += 1;
        Live::bump(&self.job.live.sent);
        Some((ticket.id, user))
    }

    /// Count how a transaction of the message in `bufs.msg` ended.
    fn record(&mut self, m: InFlight, result: &Result<Tx, ConnError>) {
        let addr = self.addr;
        let out = &mut self.out;
        match result {
            Ok(Tx::Acked) => {
                out.latency_us
                    .saturating_record((m.t0.elapsed().as_micros() as u64).max(1));
                out.acknowledged += 1;
                out.acknowledged_bytes += self.bufs.msg.len() as u64;
                out.acked_ids.push(m.id);
                Live::bump(&self.job.live.acknowledged);
                return;
            }
            Ok(Tx::Temp(code)) => {
                out.temp_failed += 1;
                out.note_with(|| format!("smtp {addr}: {code} reply"));
            }
            Ok(Tx::Perm(code)) => {
                out.perm_failed += 1;
                out.note_with(|| format!("smtp {addr}: {code} reply"));
            }
            Ok(Tx::Closing) => {
                out.temp_failed += 1;
                out.note_with(|| format!("smtp {addr}: 421 (server closing the connection)"));
            }
            Err(e) => {
                out.errors += 1;
                out.note_with(|| format!("smtp {addr}: {e}"));
            }
        }
        Live::bump(&self.job.live.failed);
    }

    /// Transactions one command at a time, until the budget or the schedule runs out.
    async fn run_stepwise(&mut self, conn: &mut Conn, caps: Caps) -> ConnEnd {
        for _ in 0..self.job.messages_per_connection {
            let Some((id, user)) = self.next_message(false).await else {
                return ConnEnd::Finished;
            };
            let m = InFlight {
                id,
                t0: Instant::now(),
            };
            let to = &self.job.users[user].address;
            let result = stepwise(conn, caps, &mut self.bufs, &self.job.from, to).await;
            self.record(m, &result);
            match result {
                Ok(Tx::Closing) => return ConnEnd::Closing,
                Err(_) => return ConnEnd::Broken,
                Ok(_) => {}
            }
        }
        ConnEnd::Budget
    }

    /// PIPELINING: MAIL, RCPT and DATA in one write; in closed loop the next message's
    /// envelope rides in the same write as this message's body (RFC 2920 allows the
    /// message content first in a group), so a message costs one round trip.
    async fn run_pipelined(&mut self, conn: &mut Conn, caps: Caps) -> ConnEnd {
        let chain = self.job.schedule.is_closed_loop();
        let budget = self.job.messages_per_connection;
        let mut pending: Option<InFlight> = None; // envelope written, replies unread
        let mut done = 0u64;
        while done < budget {
            let m = match pending.take() {
                Some(m) => m,
                None => {
                    let Some((id, user)) = self.next_message(false).await else {
                        return ConnEnd::Finished;
                    };
                    self.bufs.cmd.clear();
                    let to = &self.job.users[user].address;
                    envelope_into(
                        &mut self.bufs.cmd,
                        caps,
                        &self.job.from,
                        to,
                        self.bufs.msg.len(),
                    );
                    let t0 = Instant::now();
                    let dl = conn.deadline();
                    let written = conn
                        .write_all(&self.bufs.cmd, dl, "write MAIL/RCPT/DATA")
                        .await;
                    if let Err(e) = written {
                        self.record(InFlight { id, t0 }, &Err(e));
                        return ConnEnd::Broken;
                    }
                    InFlight { id, t0 }
                }
            };
            done += 1;
            let (result, next) = self
                .pipelined_rest(conn, caps, chain && done < budget)
                .await;
            self.record(m, &result);
            if let Some(n) = next {
                // The chained message becomes the current one.
                std::mem::swap(&mut self.bufs.msg, &mut self.bufs.next);
                if result.is_err() || matches!(result, Ok(Tx::Closing)) {
                    let e = Err(ConnError::Closed {
                        what: "chained transaction",
                    });
                    self.record(n, &e);
                }
                pending = Some(n);
            }
            match result {
                Ok(Tx::Closing) => return ConnEnd::Closing,
                Err(_) => return ConnEnd::Broken,
                Ok(_) => {}
            }
        }
        ConnEnd::Budget
    }

    /// Read the envelope replies of the message in `bufs.msg`, send its body (with the next envelope when
    /// `chain` and there is a next message), read its final reply.
    async fn pipelined_rest(
        &mut self,
        conn: &mut Conn,
        caps: Caps,
        chain: bool,
    ) -> (Result<Tx, ConnError>, Option<InFlight>) {
        let dl = Instant::now() + conn.timeout;
        let mut codes = [0u16; 3];
        for (c, what) in
            codes
                .iter_mut()
                .zip(["read MAIL reply", "read RCPT reply", "read DATA reply"])
        {
            match read_reply(conn, dl, what, None).await {
                Ok(code) => *c = code,
                Err(e) => return (Err(e), None),
            }
        }
        if let Some(code) = envelope_failure(codes) {
            if codes[2] == 354 {
                // DATA accepted without a valid envelope: end it empty first.
                if let Err(e) = conn.write_all(b".\r\n", dl, "write empty DATA").await {
                    return (Err(e), None);
                }
                if let Err(e) = read_reply(conn, dl, "read empty DATA reply", None).await {
                    return (Err(e), None);
                }
            }
            return (envelope_failed(conn, code).await, None);
        }
        self.bufs.wire.clear();
        message::dot_stuff_into(&self.bufs.msg, &mut self.bufs.wire);
        let next = match chain {
            true => self.next_message(true).await,
            false => None,
        };
        if let Some((_, user)) = next {
            let to = &self.job.users[user].address;
            envelope_into(
                &mut self.bufs.wire,
                caps,
                &self.job.from,
                to,
                self.bufs.next.len(),
            );
        }
        let t_write = Instant::now();
        let next = next.map(|(id, _)| InFlight { id, t0: t_write });
        let dl = conn.deadline();
        if let Err(e) = conn.write_all(&self.bufs.wire, dl, "write message").await {
            return (Err(e), next);
        }
        let result = match read_reply(conn, dl, "read reply after DATA", None).await {
            Ok(code) => final_reply(code),
            Err(e) => Err(e),
        };
        (result, next)
    }
}

/// Run SMTP session `index` until the schedule runs out (or the server keeps refusing).
pub async fn run_session(job: Arc<SendJob>, index: usize) -> SendOutcome {
    let mut s = Session {
        job: &job,
        addr: job.smtp[index % job.smtp.len()],
        out: SendOutcome::new(),
        rng: Rng::new(job.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        bufs: Buffers {
            cmd: Vec::with_capacity(1024),
            msg: Vec::with_capacity(64 * 1024),
            next: Vec::with_capacity(64 * 1024),
            wire: Vec::with_capacity(64 * 1024),
        },
    };
    let addr = s.addr;
    let mut failures_in_a_row = 0u32;
    while !job.schedule.finished() {
        let (mut conn, caps) = match open(addr, job.timeout).await {
            Ok(c) => c,
            Err(e) => {
                s.out.connect_failures += 1;
                s.out.note_with(|| format!("smtp {addr}: {e}"));
                failures_in_a_row += 1;
                if failures_in_a_row >= CONNECT_FAILURES_MAX {
                    s.out.note_with(|| {
                        format!("smtp {addr}: gave up after {failures_in_a_row} failures in a row")
                    });
                    break;
                }
                sleep(Duration::from_millis(50 << failures_in_a_row.min(4))).await;
                continue;
            }
        };
        s.out.connections += 1;
        let acked_before = s.out.acknowledged;
        let end = if job.pipelining && caps.pipelining {
            s.run_pipelined(&mut conn, caps).await
        } else {
            s.run_stepwise(&mut conn, caps).await
        };
        if s.out.acknowledged > acked_before {
            failures_in_a_row = 0;
        }
        match end {
            ConnEnd::Budget => quit(conn).await,
            ConnEnd::Finished => {
                quit(conn).await;
                break;
            }
            ConnEnd::Closing => {}
            ConnEnd::Broken => {
                failures_in_a_row += 1;
                if failures_in_a_row >= CONNECT_FAILURES_MAX {
                    s.out.note_with(|| {
                        format!("smtp {addr}: gave up after {failures_in_a_row} failures in a row")
                    });
                    break;
                }
            }
        }
    }
    s.out
}
