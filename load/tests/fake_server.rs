//! `porcupine load` against a tiny fake SMTP + POP3 server on 127.0.0.1:0 that stores
//! mail in memory and serves it back: a clean run passes with matching counts; a server
//! that corrupts a byte on RETR or drops an accepted message makes the run fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use load::LoadError;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Commands a fake session serves before it hangs up (bounds every loop).
const COMMANDS_MAX: usize = 100_000;
/// Every test run must end within this.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Flip one body byte of the first message RETR serves.
    CorruptFirstRetr,
    /// Answer 250 to the first message but never store it.
    DropFirstMessage,
    /// Accept connections and never answer.
    Mute,
    /// `450` to every RCPT for u0 (and `503` to the DATA that follows).
    TempFailU0,
}

#[derive(Default)]
struct Store {
    boxes: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    accepted: AtomicU64,
    smtp_connections: AtomicU64,
    retrs: AtomicU64,
}

struct Fake {
    smtp: SocketAddr,
    pop: SocketAddr,
    store: Arc<Store>,
}

async fn start(fault: Fault) -> Fake {
    let store = Arc::new(Store::default());
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pop = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (smtp_addr, pop_addr) = (smtp.local_addr().unwrap(), pop.local_addr().unwrap());
    let s = store.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = smtp.accept().await {
            s.smtp_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(smtp_session(sock, s.clone(), fault));
        }
    });
    let s = store.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = pop.accept().await {
            tokio::spawn(pop_session(sock, s.clone(), fault));
        }
    });
    Fake {
        smtp: smtp_addr,
        pop: pop_addr,
        store,
    }
}

async fn smtp_session(sock: TcpStream, store: Arc<Store>, fault: Fault) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    if fault == Fault::Mute {
        let mut line = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.read_until(b'\n', &mut line)).await;
        return;
    }
    let _ = w.write_all(b"220 fake ESMTP\r\n").await;
    let mut rcpt = String::new();
    let mut rcpt_ok = false;
    let mut line = Vec::new();
    for _ in 0..COMMANDS_MAX {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250-fake\r\n250-PIPELINING\r\n250 SIZE 100000000\r\n"
        } else if cmd.starts_with("MAIL FROM:") || cmd.starts_with("RSET") {
            rcpt_ok = false;
            b"250 ok\r\n"
        } else if cmd.starts_with("RCPT TO:<") {
            let text = String::from_utf8_lossy(&line);
            rcpt = text[9..].split('>').next().unwrap_or("").to_string();
            rcpt_ok = !(fault == Fault::TempFailU0 && rcpt.starts_with("u0@"));
            if rcpt_ok {
                b"250 ok\r\n"
            } else {
                b"450 try later\r\n"
            }
        } else if cmd.starts_with("DATA") && !rcpt_ok {
            b"503 no valid recipients\r\n"
        } else if cmd.starts_with("DATA") {
            let _ = w.write_all(b"354 go\r\n").await;
            let mut msg = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == b".\r\n" {
                    break;
                }
                // Independent unstuffing: one leading dot removed.
                msg.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
            }
            let n = store.accepted.fetch_add(1, Ordering::Relaxed);
            if !(fault == Fault::DropFirstMessage && n == 0) {
                store
                    .boxes
                    .lock()
                    .unwrap()
                    .entry(rcpt.clone())
                    .or_default()
                    .push(msg);
            }
            rcpt_ok = false;
            b"250 queued\r\n"
        } else if cmd.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"500 what\r\n"
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

async fn pop_session(sock: TcpStream, store: Arc<Store>, fault: Fault) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let _ = w.write_all(b"+OK fake POP3\r\n").await;
    let mut user = String::new();
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut deleted: Vec<bool> = Vec::new();
    let mut line = Vec::new();
    for _ in 0..COMMANDS_MAX {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut words = text.split(' ');
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let arg = words.next().unwrap_or("");
        let n: usize = arg.parse().unwrap_or(0);
        let mut out = Vec::new();
        match verb.as_str() {
            "USER" => {
                user = arg.to_string();
                out.extend_from_slice(b"+OK\r\n");
            }
            "PASS" => {
                // Take the mailbox (a real server locks it; enough here).
                msgs = store
                    .boxes
                    .lock()
                    .unwrap()
                    .remove(&user)
                    .unwrap_or_default();
                deleted = vec![false; msgs.len()];
                out.extend_from_slice(b"+OK logged in\r\n");
            }
            "STAT" => {
                let size: usize = msgs.iter().map(Vec::len).sum();
                out.extend_from_slice(format!("+OK {} {size}\r\n", msgs.len()).as_bytes());
            }
            "UIDL" | "LIST" => {
                out.extend_from_slice(b"+OK\r\n");
                for (i, m) in msgs.iter().enumerate() {
                    let v = if verb == "UIDL" {
                        format!("uid{i}")
                    } else {
                        m.len().to_string()
                    };
                    out.extend_from_slice(format!("{} {v}\r\n", i + 1).as_bytes());
                }
                out.extend_from_slice(b".\r\n");
            }
            "RETR" if (1..=msgs.len()).contains(&n) => {
                let mut m = msgs[n - 1].clone();
                let k = store.retrs.fetch_add(1, Ordering::Relaxed);
                if fault == Fault::CorruptFirstRetr && k == 0 {
                    let at = m.len() - 5; // inside the body's last line
                    m[at] ^= 0x20;
                }
                out.extend_from_slice(b"+OK message follows\r\n");
                for l in m.split_inclusive(|&b| b == b'\n') {
                    if l.starts_with(b".") {
                        out.push(b'.');
                    }
                    out.extend_from_slice(l);
                }
                out.extend_from_slice(b".\r\n");
            }
            "DELE" if (1..=msgs.len()).contains(&n) => {
                deleted[n - 1] = true;
                out.extend_from_slice(b"+OK deleted\r\n");
            }
            "QUIT" => {
                // Undeleted messages go back to the mailbox.
                let keep: Vec<Vec<u8>> = msgs
                    .drain(..)
                    .zip(&deleted)
                    .filter(|(_, d)| !**d)
                    .map(|(m, _)| m)
                    .collect();
                if !keep.is_empty() {
                    store
                        .boxes
                        .lock()
                        .unwrap()
                        .entry(user.clone())
                        .or_default()
                        .extend(keep);
                }
                let _ = w.write_all(b"+OK bye\r\n").await;
                return;
            }
            _ => out.extend_from_slice(b"-ERR no\r\n"),
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn args(fake: &Fake, json: &std::path::Path, extra: &[&str]) -> load::LoadArgs {
    let smtp = fake.smtp.to_string();
    let pop = fake.pop.to_string();
    let mut words = vec![
        "load",
        "--smtp",
        &smtp,
        "--pop",
        &pop,
        "--users",
        "5",
        "--domain",
        "fake.test",
        "--sessions",
        "3",
        "--json",
        json.to_str().unwrap(),
        "--quiet",
        "--timeout",
        "5s",
    ];
    words.extend_from_slice(extra);
    load::parse_args(words).expect("flags parse")
}

async fn run(args: load::LoadArgs) -> Result<load::Report, LoadError> {
    tokio::time::timeout(RUN_DEADLINE, load::run(args))
        .await
        .expect("the run ends in time")
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_counts_match() {
    let fake = start(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let extra = [
        "--messages",
        "120",
        "--mode",
        "send-then-drain",
        "--size",
        "uniform:600-20000",
        "--messages-per-connection",
        "7",
    ];
    let report = run(args(&fake, &path, &extra))
        .await
        .expect("a clean run passes");
    assert_eq!(report.sent, 120);
    assert_eq!(report.acknowledged, 120);
    assert_eq!(report.retrieved, 120);
    assert_eq!(
        (report.corrupt, report.missing, report.duplicate),
        (0, 0, 0)
    );
    assert_eq!(report.size_mismatch, 0);
    assert_eq!(fake.store.accepted.load(Ordering::Relaxed), 120);
    // 120 messages at 7 per connection over 3 sessions: at least 18 connections.
    assert!(fake.store.smtp_connections.load(Ordering::Relaxed) >= 18);
    let v = json(&path);
    assert_eq!(v["acknowledged"], 120);
    assert_eq!(v["retrieved"], 120);
    assert!(v["smtp"]["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["pop"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(
        fake.store.boxes.lock().unwrap().values().all(Vec::is_empty),
        "drained and deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_and_lognormal_sizes() {
    let fake = start(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let extra = [
        "--messages",
        "200",
        "--mode",
        "send-then-drain",
        "--pipelining",
        "--size",
        "lognormal:3000,1",
    ];
    let report = run(args(&fake, &path, &extra)).await.expect("passes");
    assert_eq!((report.acknowledged, report.retrieved), (200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mode_drains_while_sending() {
    let fake = start(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let cal = dir.path().join("cal.json");
    let extra = [
        "--duration",
        "1s",
        "--rate",
        "300",
        "--mode",
        "mixed",
        "--pop-sessions",
        "2",
        "--calibrate-out",
        cal.to_str().unwrap(),
    ];
    let report = run(args(&fake, &path, &extra)).await.expect("passes");
    assert!(report.acknowledged > 100, "{}", report.acknowledged);
    assert_eq!(report.retrieved, report.acknowledged);
    assert_eq!(
        report
            .phases
            .iter()
            .map(|p| p.phase.as_str())
            .collect::<Vec<_>>(),
        ["probe", "mixed", "drain-rest"]
    );
    let c = json(&cal);
    assert!(
        c["smtp_cpu_us"].is_number() && c["fsync_us"].is_number() && c["notes"].is_object(),
        "{c}"
    );
    assert!(
        c["pop_cpu_us"].is_number() && c["read_cpu_us"].is_number(),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_body_fails_the_run() {
    let fake = start(Fault::CorruptFirstRetr).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let extra = ["--messages", "40", "--mode", "send-then-drain"];
    match run(args(&fake, &path, &extra)).await {
        Err(LoadError::Integrity {
            corrupt: 1,
            missing: 0,
            duplicate: 0,
            ..
        }) => {}
        other => panic!("want corrupt=1, got {other:?}"),
    }
    let v = json(&path);
    assert_eq!(v["corrupt"], 1);
    assert_eq!(v["retrieved"], 40);
    assert_eq!(v["corrupt_ids"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_message_is_missing() {
    let fake = start(Fault::DropFirstMessage).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let extra = ["--messages", "40", "--mode", "send-then-drain"];
    match run(args(&fake, &path, &extra)).await {
        Err(LoadError::Integrity {
            corrupt: 0,
            missing: 1,
            duplicate: 0,
            ..
        }) => {}
        other => panic!("want missing=1, got {other:?}"),
    }
    let v = json(&path);
    assert_eq!(
        (
            v["acknowledged"].as_u64(),
            v["retrieved"].as_u64(),
            v["missing"].as_u64()
        ),
        (Some(40), Some(39), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_server_times_out_instead_of_hanging() {
    let fake = start(Fault::Mute).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut a = args(&fake, &path, &["--messages", "10"]);
    a.timeout = "200ms".into();
    let t0 = std::time::Instant::now();
    let r = run(a).await;
    assert!(matches!(r, Err(LoadError::NothingAcknowledged(_))), "{r:?}");
    // 10 failed connections per session with backoff, each bounded by the deadline.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_failures_are_counted_not_missing() {
    for pipelining in [false, true] {
        let fake = start(Fault::TempFailU0).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut extra = vec!["--messages", "40", "--mode", "send-then-drain"];
        if pipelining {
            extra.push("--pipelining");
        }
        let report = run(args(&fake, &path, &extra))
            .await
            .expect("4xx is not an integrity failure");
        // Ids 0, 5, 10, ... go to u0: 8 of 40.
        assert_eq!(
            (report.sent, report.acknowledged, report.temp_failed),
            (40, 32, 8),
            "pipelining {pipelining}"
        );
        assert_eq!(
            (report.retrieved, report.missing, report.smtp_errors),
            (32, 0, 0)
        );
    }
}
