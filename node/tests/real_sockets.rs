//! Integration tests over real sockets: `porcupine serve` processes on 127.0.0.1,
//! driven with raw SMTP and POP3 exchanges and the admin API.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// A `porcupine serve` child, stopped (by its pid) when dropped. Its stdout and stderr
/// go to `log`; when the test is failing, the log's tail is printed on drop.
struct NodeProc {
    id: u64,
    child: Child,
    log: PathBuf,
    smtp: String,
    pop: String,
    admin: String,
    rpc: String,
}

impl NodeProc {
    /// Fail the test if the child has exited (the log tail follows from `Drop`).
    fn assert_running(&mut self, doing: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("node {} exited ({status}) while {doing}", self.id);
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_log_tail(self.id, &self.log);
        }
    }
}

/// Print the last `LOG_TAIL_LINES` lines of a node's log to stderr.
fn print_log_tail(id: u64, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    eprintln!(
        "----- node {id}: last {} of {} lines of {} -----",
        lines.len() - from,
        lines.len(),
        log.display()
    );
    for l in &lines[from..] {
        eprintln!("{l}");
    }
    eprintln!("----- end of node {id} -----");
}

/// The test's temporary directory, kept (and named on stderr) when the test fails.
struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    fn new() -> TestDir {
        TestDir(Some(tempfile::tempdir().unwrap()))
    }
    fn path(&self) -> &Path {
        self.0.as_ref().map(|d| d.path()).unwrap()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("test directory kept: {}", dir.keep().display());
        }
    }
}

/// Start node `id` in `dir` (data in `n{id}/`, log in `n{id}.log`): it binds port 0 for
/// all four listeners and reports the addresses in its ports file, so no port is
/// chosen before the node holds it.
fn start(id: u64, dir: &Path, seeds: &[String], bootstrap: bool) -> NodeProc {
    // One admin token for every node of the test, as `up` does it.
    let token_file = dir.join("admin.token");
    if !token_file.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .unwrap();
        writeln!(f, "{ADMIN_TOKEN}").unwrap();
    }
    let log = dir.join(format!("n{id}.log"));
    let ports_file = dir.join(format!("n{id}.ports.json"));
    let out = File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_porcupine"));
    cmd.args(["serve", "--node-id", &id.to_string(), "--data"])
        .arg(dir.join(format!("n{id}")))
        .arg("--ports-file")
        .arg(&ports_file)
        .args(["--smtp", "127.0.0.1:0", "--pop", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--rpc", "127.0.0.1:0"])
        .args(["--pop-auth-failure-delay-ms", "100"])
        .arg("--admin-token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for s in seeds {
        cmd.args(["--seed", s]);
    }
    if bootstrap {
        cmd.arg("--bootstrap");
    }
    let mut node = NodeProc {
        id,
        child: cmd.spawn().unwrap(),
        log,
        smtp: String::new(),
        pop: String::new(),
        admin: String::new(),
        rpc: String::new(),
    };
    // The file is written whole (temp + rename): once it exists it must parse.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ports_file.exists() {
        node.assert_running("binding its listeners");
        assert!(
            Instant::now() < deadline,
            "node {id} wrote no ports file {} within 30 s",
            ports_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&ports_file).unwrap();
    let ports: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("node {id}: ports file is not JSON ({e}): {text:?}"));
    let addr = |key: &str| -> String {
        let a = ports[key]
            .as_str()
            .unwrap_or_else(|| panic!("node {id}: no {key:?} in the ports file: {text}"));
        let parsed: std::net::SocketAddr = a
            .parse()
            .unwrap_or_else(|e| panic!("node {id}: {key} {a:?} is not an address: {e}"));
        assert!(
            parsed.ip().is_loopback() && parsed.port() != 0,
            "node {id}: {key} {a} is not a bound loopback address"
        );
        a.to_string()
    };
    (node.smtp, node.pop, node.admin, node.rpc) =
        (addr("smtp"), addr("pop"), addr("admin"), addr("rpc"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&node.admin, "GET", "/v1/health", "").is_none() {
        node.assert_running("starting");
        assert!(
            Instant::now() < deadline,
            "node {id} did not answer /v1/health on {} within 30 s",
            node.admin
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

/// Every node in `view` (a `/v1/cluster` answer) that is one of `nodes` is advertised
/// with the addresses it bound.
fn assert_advertises_bound_addresses(view: &str, nodes: &[&NodeProc]) {
    let v: serde_json::Value =
        serde_json::from_str(view).unwrap_or_else(|e| panic!("bad /v1/cluster JSON ({e}): {view}"));
    let listed = v["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {view}"));
    for n in nodes {
        let entry = listed
            .iter()
            .find(|e| e["id"].as_u64() == Some(n.id))
            .unwrap_or_else(|| panic!("node {} not listed in {view}", n.id));
        for (key, bound) in [
            ("smtp", &n.smtp),
            ("pop", &n.pop),
            ("admin", &n.admin),
            ("rpc", &n.rpc),
        ] {
            assert_eq!(
                entry[key].as_str(),
                Some(bound.as_str()),
                "node {} advertised as {key} {} but bound {bound}: {view}",
                n.id,
                entry[key]
            );
        }
    }
}

/// A minimal HTTP/1.1 client: returns (status, body).
/// The admin token every test node is given.
const ADMIN_TOKEN: &str = "real-sockets-test-token";

fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

/// Deliver through `smtp`, retrying only temporary refusals (4xx: the node may be
/// rebuilding its maps) for at most 15 s; any other reply fails the test.
fn deliver(smtp: &str, to: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for attempt in 1.. {
        let r = send_mail(smtp, to, body);
        if r.starts_with("250") {
            return;
        }
        assert!(
            r.starts_with('4'),
            "delivery to {to} via {smtp} refused: {r}"
        );
        assert!(
            Instant::now() < deadline && attempt < 100,
            "delivery to {to} via {smtp} still refused after {attempt} tries: {r}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Wait (at most 30 s) until `node`'s local copy of the registry lists every one of
/// `users` (a follower or learner applies a write a little after the leader).
fn wait_for_users(node: &NodeProc, users: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(&node.admin, "GET", "/v1/users", "").unwrap_or_default();
        let listed: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["users"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        if status == 200 && users.iter().all(|u| listed.iter().any(|l| l == u)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} does not list {users:?} after 30 s: {status} {body}",
            node.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn single_node_delivers_and_serves_over_real_sockets() {
    let dir = TestDir::new();
    let node = start(0, dir.path(), &[], false);
    assert_advertises_bound_addresses(&cluster_json(&node.admin), &[&node]);
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
    let dir = TestDir::new();
    // Each node is seeded with the RPC addresses its predecessors reported.
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..3 {
        let seeds: Vec<String> = nodes.iter().map(|n| n.rpc.clone()).collect();
        nodes.push(start(i, dir.path(), &seeds, i == 0));
    }
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
    let all: Vec<&NodeProc> = nodes.iter().collect();
    for n in &nodes {
        assert_advertises_bound_addresses(&cluster_json(&n.admin), &all);
    }
    // An account added through a follower's admin API is forwarded to the registry
    // leader and readable everywhere. Only 503 (registry unavailable) is retried.
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
        assert_eq!(r.0, 503, "user add through a follower: {r:?}");
        assert!(Instant::now() < deadline, "user add never succeeded: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    for n in &nodes {
        wait_for_users(n, &["bob@example.test"]);
    }
    // Deliver through every node, read through every other node.
    for (i, n) in nodes.iter().enumerate() {
        deliver(
            &n.smtp,
            "bob@example.test",
            &format!("Subject: via {i}\r\n\r\nbody {i}\r\n"),
        );
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
    let joiner = start(3, dir.path(), &[nodes[0].rpc.clone()], false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = cluster_json(&joiner.admin);
        if v.contains("\"live\":[0,1,2,3]") && v.contains("\"maps_complete\":true") {
            assert_eq!(v.matches("\"buckets\":16384").count(), 4, "{v}");
            let mut all: Vec<&NodeProc> = nodes.iter().collect();
            all.push(&joiner);
            assert_advertises_bound_addresses(&v, &all);
            break;
        }
        assert!(Instant::now() < deadline, "node 3 did not join: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // New users until the joiner stores a fragment and some message is stored on its
    // own user's manager. Placement ties between idle nodes are pseudo-random (each of
    // 4 nodes takes one of a message's 2 copies half the time), so a few users do it;
    // 40 misses in a row would mean a node is kept out of placement (a stale load
    // figure, or a manager counting its own placement as load).
    let mut joiner_has_mail = false;
    let mut stored_on_manager = false;
    let mut seen: Vec<String> = Vec::new();
    for i in 0..40 {
        let u = format!("new{i}@example.test");
        let body = format!(r#"{{"address":"{u}","password":"pw"}}"#);
        let r = http(&joiner.admin, "POST", "/v1/users", &body).unwrap();
        assert_eq!(r.0, 201, "{r:?}");
        // The joiner learns accounts as a registry learner; deliver through it.
        wait_for_users(&joiner, &[u.as_str()]);
        deliver(&joiner.smtp, &u, "Subject: hi\r\n\r\nhello\r\n");
        let (_, mailbox) = http(&joiner.admin, "GET", &format!("/v1/mailboxes/{u}"), "").unwrap();
        let manager = field(&mailbox, "manager").unwrap_or("?").to_string();
        let holders = mailbox
            .split("\"holders\":[")
            .nth(1)
            .and_then(|h| h.split(']').next())
            .unwrap_or("")
            .to_string();
        stored_on_manager |= holders.split(',').any(|h| h == manager);
        seen.push(format!("{u}: manager {manager}, holders [{holders}]"));
        let v = cluster_json(&joiner.admin);
        let messages: u64 = field(&v, "messages")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        joiner_has_mail = messages > 0;
        if joiner_has_mail && stored_on_manager {
            break;
        }
    }
    assert!(
        joiner_has_mail,
        "the new node stores no fragment: {seen:#?}"
    );
    assert!(
        stored_on_manager,
        "no manager ever placed a message on itself: {seen:#?}"
    );
}
