//! `porcupine up`: a whole local cluster as N separate `porcupine serve` processes on
//! loopback, each with a self-sufficient command line that the operator can re-run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hyper::Method;
use tokio::process::{Child, Command};

use crate::cli::AdminClient;
use crate::token::AdminToken;

/// Flags of `porcupine up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of nodes (default: every node-N directory found in --data, else 1; a
    /// number that differs from the directories found is refused).
    #[arg(long)]
    pub nodes: Option<u16>,
    /// Node i listens on P+10i (SMTP), +1 (POP3), +2 (admin), +3 (RPC), +4 (POP3S).
    #[arg(long, default_value_t = 2500)]
    pub base_port: u16,
    /// Data directory; node i keeps its state in DIR/node-i.
    #[arg(long, default_value = "porcupine-data")]
    pub data: PathBuf,
    /// Copies of each message (default: 2, or 1 for a single node).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Where new mail goes on every node: porcupine, random or static.
    #[arg(long)]
    pub balance: Option<String>,
    /// Soft bound on the nodes holding one user's mail, on every node (`spread`).
    #[arg(long)]
    pub spread: Option<usize>,
    /// Seconds between repair passes on every node (passed on as `--repair-interval-secs`).
    #[arg(long)]
    pub repair_interval_secs: Option<u64>,
    /// Minimum age in seconds of a deleted message before its tombstone is collected
    /// (passed on to every node as `--tombstone-min-age-secs`).
    #[arg(long)]
    pub tombstone_min_age_secs: Option<u64>,
    /// Account receiving postmaster@ and abuse@ every local domain, on every node
    /// (passed on as `--postmaster`).
    #[arg(long)]
    pub postmaster: Option<String>,
    /// Subaddress separator on every node, "" to disable (`--recipient-delimiter`).
    #[arg(long)]
    pub recipient_delimiter: Option<String>,
    /// A `node.toml` every node reads (`serve --config FILE`), for keys `up` has no
    /// flag for; `up`'s own flags win over it.
    #[arg(long)]
    pub node_config: Option<PathBuf>,
    /// Seconds to wait for the nodes to agree on one view.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

struct Planned {
    id: u16,
    smtp: String,
    pop: String,
    admin: String,
    rpc: String,
    pop3s: String,
    data: PathBuf,
    log: PathBuf,
    /// This node's certificate and key (for clients and for the cluster).
    cert: PathBuf,
    key: PathBuf,
    args: Vec<String>,
}

/// Where `up` keeps the local CA and the node certificates: `DATA/tls`.
fn tls_dir(data: &Path) -> PathBuf {
    data.join("tls")
}

fn plan(args: &UpArgs, count: u16, exe: &Path) -> anyhow::Result<Vec<Planned>> {
    anyhow::ensure!(count >= 1, "--nodes must be at least 1");
    let top = args.base_port as u32 + 10 * (count as u32 - 1) + 4;
    anyhow::ensure!(
        top <= 65535,
        "ports would run past 65535 (base port {} with {} nodes)",
        args.base_port,
        count
    );
    let data = std::path::absolute(&args.data).context("resolving --data")?;
    let port = |i: u16, k: u16| format!("127.0.0.1:{}", args.base_port + 10 * i + k);
    let replicas = args.replicas.unwrap_or(if count > 1 { 2 } else { 1 });
    let mut out = Vec::new();
    let tls = tls_dir(&data);
    let ca = tls::pki::CaPaths::in_dir(&tls);
    for i in 0..count {
        let node_data = data.join(format!("node-{i}"));
        let cert = tls.join(format!("node-{i}.pem"));
        let key = tls.join(format!("node-{i}.key"));
        let mut a = vec![
            exe.display().to_string(),
            "serve".into(),
            "--node-id".into(),
            i.to_string(),
            "--data".into(),
            node_data.display().to_string(),
            "--smtp".into(),
            port(i, 0),
            "--pop".into(),
            port(i, 1),
            "--admin".into(),
            port(i, 2),
            "--rpc".into(),
            port(i, 3),
            "--admin-token-file".into(),
            data.join(crate::token::TOKEN_FILE_NAME)
                .display()
                .to_string(),
            "--pop3s".into(),
            port(i, 4),
            "--replicas".into(),
            replicas.to_string(),
        ];
        // One certificate per node, from up's own CA: clients see it on STARTTLS,
        // STLS and POP3S, and the nodes use it for mutual TLS between them.
        for (flag, path) in [
            ("--tls-cert", &cert),
            ("--tls-key", &key),
            ("--cluster-ca", &ca.cert),
            ("--cluster-cert", &cert),
            ("--cluster-key", &key),
        ] {
            a.push(flag.into());
            a.push(path.display().to_string());
        }
        if let Some(path) = &args.node_config {
            a.push("--config".into());
            a.push(
                std::path::absolute(path)
                    .context("resolving --node-config")?
                    .display()
                    .to_string(),
            );
        }
        if let Some(b) = &args.balance {
            a.push("--balance".into());
            a.push(b.clone());
        }
        if let Some(n) = args.spread {
            a.push("--spread".into());
            a.push(n.to_string());
        }
        if let Some(secs) = args.repair_interval_secs {
            a.push("--repair-interval-secs".into());
            a.push(secs.to_string());
        }
        if let Some(secs) = args.tombstone_min_age_secs {
            a.push("--tombstone-min-age-secs".into());
            a.push(secs.to_string());
        }
        if let Some(p) = &args.postmaster {
            a.push("--postmaster".into());
            a.push(p.clone());
        }
        if let Some(d) = &args.recipient_delimiter {
            a.push(format!("--recipient-delimiter={d}"));
        }
        if i == 0 {
            a.push("--bootstrap".into());
        }
        // One host: nodes fail but the network between them does not partition, so
        // a node left alone keeps serving (see partition_policy).
        a.push("--partition-policy".into());
        a.push("available".into());
        for j in 0..count {
            if j != i {
                a.push("--seed".into());
                a.push(port(j, 3));
            }
        }
        out.push(Planned {
            id: i,
            smtp: port(i, 0),
            pop: port(i, 1),
            admin: port(i, 2),
            rpc: port(i, 3),
            pop3s: port(i, 4),
            data: node_data,
            log: data.join(format!("node-{i}.log")),
            cert,
            key,
            args: a,
        });
    }
    Ok(out)
}

fn check_ports_free(nodes: &[Planned]) -> anyhow::Result<()> {
    for n in nodes {
        for (what, addr) in [
            ("SMTP", &n.smtp),
            ("POP3", &n.pop),
            ("admin", &n.admin),
            ("RPC", &n.rpc),
            ("POP3S", &n.pop3s),
        ] {
            if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
                bail!(
                    "port {addr} ({what} of node {}) is not available: {e}",
                    n.id
                );
            }
        }
    }
    Ok(())
}

/// Make the local CA and each node's certificate where they are missing (kept across
/// runs, so clients keep trusting the same CA). Returns the CA certificate's path.
fn ensure_certificates(data: &Path, nodes: &[Planned]) -> anyhow::Result<PathBuf> {
    let data = std::path::absolute(data).context("resolving --data")?;
    let ca = tls::pki::CaPaths::in_dir(&tls_dir(&data));
    if !ca.exist() {
        tls::pki::init_ca(&tls_dir(&data), "Porcupine local CA (porcupine up)")
            .context("creating the local CA")?;
    }
    for n in nodes {
        if n.cert.is_file() && n.key.is_file() {
            continue;
        }
        let spec = tls::pki::NodeCertSpec {
            common_name: format!("porcupine node {}", n.id),
            subject_alt_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            validity_days: tls::pki::CA_VALIDITY_DAYS,
        };
        tls::pki::issue(&ca, &spec, &n.cert, &n.key)
            .with_context(|| format!("issuing the certificate of node {}", n.id))?;
    }
    Ok(ca.cert)
}

fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn(n: &Planned) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log)
        .with_context(|| format!("opening log file {}", n.log.display()))?;
    let child = Command::new(&n.args[0])
        .args(&n.args[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("starting node {}", n.id))?;
    Ok(child)
}

/// Wait until every node answers and all report the same epoch with every node alive.
async fn wait_agreed(
    nodes: &[Planned],
    children: &mut [Child],
    token: &AdminToken,
    wait: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + wait;
    let clients: Vec<AdminClient> = nodes
        .iter()
        .map(|n| AdminClient::new(&n.admin).with_token(token.clone()))
        .collect();
    loop {
        for (n, child) in nodes.iter().zip(children.iter_mut()) {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "node {} exited during start-up ({status}); its log: {}",
                    n.id,
                    n.log.display()
                );
            }
        }
        let mut epochs = Vec::new();
        for c in &clients {
            match c.request(Method::GET, "/v1/cluster", None).await {
                Ok((s, v)) if s.is_success() => {
                    let live = v["live"].as_array().map(|a| a.len()).unwrap_or(0);
                    let leader = !v["registry"]["leader"].is_null();
                    let complete = v["maps_complete"].as_bool() == Some(true);
                    if live == nodes.len() && leader && complete {
                        epochs.push(v["epoch"].as_u64().unwrap_or(0));
                    }
                }
                _ => {}
            }
        }
        if epochs.len() == nodes.len() && epochs.windows(2).all(|w| w[0] == w[1]) {
            return Ok(epochs[0]);
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes did not agree on one view within {} s; see the logs in {}",
                wait.as_secs(),
                nodes[0]
                    .log
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory involved.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Run `porcupine up` until Ctrl-C / SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the porcupine binary")?;
    let found = crate::existing::node_dirs(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let count = crate::existing::nodes_to_start(args.nodes, &found, &args.data)
        .map_err(anyhow::Error::msg)?;
    if !found.is_empty() {
        println!(
            "porcupine: {} holds {count} node(s) from an earlier run; starting them all",
            args.data.display()
        );
    }
    let nodes = plan(&args, count, &exe)?;
    check_ports_free(&nodes)?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    // One admin token for the whole local cluster, made once and kept with its data.
    let token_path = std::path::absolute(args.data.join(crate::token::TOKEN_FILE_NAME))
        .context("resolving the admin token path")?;
    let token = crate::token::load_for_serve(&token_path, &nodes[0].admin)?;
    let ca_cert = ensure_certificates(&args.data, &nodes)?;
    let mut children = Vec::new();
    for n in &nodes {
        match spawn(n) {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &children {
                    signal(c, libc::SIGTERM);
                }
                return Err(e);
            }
        }
    }
    let agreed = tokio::select! {
        r = wait_agreed(&nodes, &mut children, &token, Duration::from_secs(args.wait_secs)) => r,
        _ = crate::serve::stop_signal() => Err(anyhow::anyhow!("interrupted during start-up")),
    };
    let epoch = match agreed {
        Ok(e) => e,
        Err(e) => {
            for c in &children {
                signal(c, libc::SIGTERM);
            }
            for c in &mut children {
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            }
            return Err(e);
        }
    };
    println!(
        "porcupine: {} node(s) up, view epoch {epoch}, data in {}",
        nodes.len(),
        std::path::absolute(&args.data)?.display()
    );
    println!(
        "{:>4} {:>8} {:>16} {:>16} {:>16} {:>16}",
        "node", "pid", "smtp", "pop3", "admin", "rpc"
    );
    for (n, c) in nodes.iter().zip(&children) {
        println!(
            "{:>4} {:>8} {:>16} {:>16} {:>16} {:>16}",
            n.id,
            c.id().map(|p| p.to_string()).unwrap_or_default(),
            n.smtp,
            n.pop,
            format!("http://{}", n.admin),
            n.rpc
        );
    }
    println!("command lines (re-run one to bring its node back; logs beside each data dir):");
    for n in &nodes {
        println!("  node {}: {}", n.id, shell_line(&n.args));
        let _ = &n.data;
    }
    println!("admin token: {}", token_path.display());
    println!("tls ca: {}", ca_cert.display());
    for n in &nodes {
        println!(
            "pop3s of node {}: {} (and STARTTLS on smtp, STLS on pop3)",
            n.id, n.pop3s
        );
    }
    // From the directory holding the default data dir the CLI finds the token itself.
    let token_flag = if args.data == Path::new("porcupine-data") {
        String::new()
    } else {
        format!(
            " --token-file {}",
            shell_line(&[token_path.display().to_string()])
        )
    };
    println!(
        "add a user:  porcupine user add alice@example.test --password s3cret --admin http://{}{token_flag}",
        nodes[0].admin
    );
    println!("press Ctrl-C to stop");

    let mut alive: Vec<bool> = vec![true; children.len()];
    let stop = crate::serve::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, c) in children.iter_mut().enumerate() {
                    if alive[i] && let Ok(Some(status)) = c.try_wait() {
                        alive[i] = false;
                        println!("porcupine: node {i} exited ({status}); not restarting it. To bring it back run:\n  {}", shell_line(&nodes[i].args));
                    }
                }
            }
        }
    }
    println!(
        "porcupine: stopping {} node(s)",
        alive.iter().filter(|a| **a).count()
    );
    for (i, c) in children.iter().enumerate() {
        if alive[i] {
            signal(c, libc::SIGTERM);
        }
    }
    for (i, c) in children.iter_mut().enumerate() {
        if !alive[i] {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(20), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("porcupine: node {i} did not stop in 20 s; killing it");
                let _ = c.kill().await;
            }
        }
    }
    println!("porcupine: stopped");
    Ok(())
}
