//! Integration tests over real sockets: `porcupine serve` processes on 127.0.0.1,
//! driven with raw SMTP and POP3 exchanges and the admin API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `porcupine serve` child, stopped (by its pid) when dropped.
struct NodeProc {
    child: Child,
    smtp: String,
    pop: String,
    admin: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn start(id: u64, data: &Path, seeds: &[String], rpc: Option<String>, bootstrap: bool) -> NodeProc {
    let (smtp, pop, admin) = (free_addr(), free_addr(), free_addr());
    let rpc = rpc.unwrap_or_else(free_addr);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_porcupine"));
    cmd.args(["serve", "--node-id", &id.to_string(), "--data"])
        .arg(data)
        .args([
            "--smtp", &smtp, "--pop", &pop, "--admin", &admin, "--rpc", &rpc,
        ])
        .args(["--pop-auth-failure-delay-ms", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for s in seeds {
        cmd.args(["--seed", s]);
    }
    if bootstrap {
        cmd.arg("--bootstrap");
    }
    let child = cmd.spawn().unwrap();
    let node = NodeProc {
        child,
        smtp,
        pop,
        admin,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&node.admin, "GET", "/v1/health", "").is_none() {
        assert!(Instant::now() < deadline, "node {id} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

/// A minimal HTTP/1.1 client: returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

struct Line(BufReader<TcpStream>);

impl Line {
    fn connect(addr: &str) -> Line {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Line(BufReader::new(s))
    }
    fn read(&mut self) -> String {
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        l
    }
    /// Read a (possibly multi-line) SMTP reply; returns the last line.
    fn reply(&mut self) -> String {
        loop {
            let l = self.read();
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return l;
            }
        }
    }
    fn send(&mut self, data: &[u8]) {
        self.0.get_mut().write_all(data).unwrap();
    }
    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

fn send_mail(smtp: &str, to: &str, body: &str) -> String {
    let mut c = Line::connect(smtp);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO test.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@elsewhere.test>").starts_with("250"));
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>"));
    if !rcpt.starts_with("250") {
        return rcpt;
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(body.as_bytes());
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

/// Log in and return (session, the STAT line).
fn pop_login(pop: &str, user: &str, pass: &str) -> (Line, String) {
    let mut c = Line::connect(pop);
    assert!(c.read().starts_with("+OK"));
    assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {pass}"));
    (c, r)
}

fn retr(c: &mut Line, n: usize) -> Vec<u8> {
    c.send(format!("RETR {n}\r\n").as_bytes());
    assert!(c.read().starts_with("+OK"));
    let mut out = Vec::new();
    loop {
        let mut l = Vec::new();
        c.0.read_until(b'\n', &mut l).unwrap();
        if l == b".\r\n" {
            return out;
        }
        if l.starts_with(b"..") {
            l.remove(0);
        }
        out.extend_from_slice(&l);
    }
}

#[test]
fn single_node_delivers_and_serves_over_real_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(0, &dir.path().join("n0"), &[], None, false);
    let (status, body) = http(
        &node.admin,
        "POST",
        "/v1/users",
        r#"{"address":"Alice@Example.test","password":"s3cret"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, _) = http(
        &node.admin,
        "POST",
        "/v1/users",
        r#"{"address":"alice@example.test","password":"x"}"#,
    )
    .unwrap();
    assert_eq!(status, 409, "duplicate add");
    let (status, _) = http(
        &node.admin,
        "POST",
        "/v1/users",
        r#"{"address":"nodomain","password":"x"}"#,
    )
    .unwrap();
    assert_eq!(status, 400);

    assert!(send_mail(&node.smtp, "nobody@example.test", "").starts_with("550 5.1.1"));
    assert!(send_mail(&node.smtp, "alice@elsewhere.test", "").starts_with("550 5.7.1"));
    let body = "Subject: t\r\n\r\n..leading dot\r\nplain\r\n";
    assert!(send_mail(&node.smtp, "alice@example.test", body).starts_with("250"));

    let (mut c, r) = pop_login(&node.pop, "alice@example.test", "wrong");
    assert!(r.starts_with("-ERR [AUTH]"), "{r}");
    drop(c);
    let (mut c2, r) = pop_login(&node.pop, "alice@example.test", "s3cret");
    assert!(r.starts_with("+OK"), "{r}");
    let (_other, r) = pop_login(&node.pop, "alice@example.test", "s3cret");
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    let stat = c2.cmd("STAT");
    assert!(stat.starts_with("+OK 1 "), "{stat}");
    let got = retr(&mut c2, 1);
    let text = String::from_utf8(got.clone()).unwrap();
    assert!(
        text.starts_with("Return-Path: <s@elsewhere.test>\r\nReceived: "),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\n.leading dot\r\nplain\r\n"),
        "{text}"
    );
    let size: usize = stat.split(' ').nth(2).unwrap().trim().parse().unwrap();
    assert_eq!(size, got.len(), "STAT octets equal RETR bytes");
    assert!(c2.cmd("DELE 1").starts_with("+OK"));
    assert!(c2.cmd("QUIT").starts_with("+OK"));
    let (mut c3, _) = pop_login(&node.pop, "alice@example.test", "s3cret");
    assert!(c3.cmd("STAT").starts_with("+OK 0 0"));
    c = c3;
    c.cmd("QUIT");
}

fn cluster_json(admin: &str) -> String {
    http(admin, "GET", "/v1/cluster", "")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

#[test]
fn three_nodes_agree_and_mail_crosses_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let rpcs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let nodes: Vec<NodeProc> = (0..3)
        .map(|i| {
            let seeds: Vec<String> = rpcs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r.clone())
                .collect();
            start(
                i as u64,
                &dir.path().join(format!("n{i}")),
                &seeds,
                Some(rpcs[i].clone()),
                i == 0,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<String> = nodes.iter().map(|n| cluster_json(&n.admin)).collect();
        let epochs: Vec<Option<&str>> = views.iter().map(|v| field(v, "epoch")).collect();
        let all_three = views.iter().all(|v| v.contains("\"live\":[0,1,2]"));
        let complete = views.iter().all(|v| v.contains("\"maps_complete\":true"));
        if all_three && complete && epochs.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "no agreement: {views:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // An account added through a follower's admin API is forwarded to the registry
    // leader and readable everywhere.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http(
            &nodes[2].admin,
            "POST",
            "/v1/users",
            r#"{"address":"bob@example.test","password":"pw"}"#,
        )
        .unwrap();
        if r.0 == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "user add never succeeded: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Deliver through every node, read through every other node.
    for (i, n) in nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = send_mail(
                &n.smtp,
                "bob@example.test",
                &format!("Subject: via {i}\r\n\r\nbody {i}\r\n"),
            );
            if r.starts_with("250") {
                break;
            }
            assert!(Instant::now() < deadline, "delivery via node {i}: {r}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for n in &nodes {
        let (mut c, r) = pop_login(&n.pop, "bob@example.test", "pw");
        assert!(r.starts_with("+OK"), "{r}");
        let stat = c.cmd("STAT");
        assert!(stat.starts_with("+OK 3 "), "via {}: {stat}", n.pop);
        let bodies: Vec<String> = (1..=3)
            .map(|k| String::from_utf8(retr(&mut c, k)).unwrap())
            .collect();
        for i in 0..3 {
            assert_eq!(
                bodies
                    .iter()
                    .filter(|b| b.ends_with(&format!("\r\n\r\nbody {i}\r\n")))
                    .count(),
                1
            );
        }
        c.cmd("QUIT");
    }
    // Every message has two copies (R = 2 by default) on distinct nodes.
    let (_, mailbox) = http(&nodes[1].admin, "GET", "/v1/mailboxes/bob@example.test", "").unwrap();
    assert_eq!(mailbox.matches("\"holders\":[").count(), 3, "{mailbox}");
    for part in mailbox.split("\"holders\":[").skip(1) {
        let holders = &part[..part.find(']').unwrap()];
        assert_eq!(holders.split(',').count(), 2, "{mailbox}");
    }

    // A fourth node joining through a seed takes a fair share of the buckets and
    // starts receiving new fragments.
    let joiner = start(3, &dir.path().join("n3"), &[rpcs[0].clone()], None, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = cluster_json(&joiner.admin);
        if v.contains("\"live\":[0,1,2,3]") && v.contains("\"maps_complete\":true") {
            assert_eq!(v.matches("\"buckets\":16384").count(), 4, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "node 3 did not join: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let users: Vec<String> = (0..12).map(|i| format!("new{i}@example.test")).collect();
    for u in &users {
        let body = format!(r#"{{"address":"{u}","password":"pw"}}"#);
        let r = http(&joiner.admin, "POST", "/v1/users", &body).unwrap();
        assert_eq!(r.0, 201, "{r:?}");
    }
    // The joiner learns accounts as a registry learner; deliver through it.
    for u in &users {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = send_mail(&joiner.smtp, u, "Subject: hi\r\n\r\nhello\r\n");
            if r.starts_with("250") {
                break;
            }
            assert!(Instant::now() < deadline, "delivery to {u}: {r}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let v = cluster_json(&joiner.admin);
    let messages: u64 = field(&v, "messages")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(messages > 0, "the new node stores no fragment: {v}");
}
