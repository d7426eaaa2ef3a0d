//! Node configuration: every `porcupine serve` flag has a key in `node.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Everything one node needs to start. Flags override the file; the file overrides defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Cluster-unique id of this node.
    pub node_id: u64,
    /// Data directory (owned by the `storage` crate).
    pub data: PathBuf,
    /// Name used in greetings and trace headers.
    pub hostname: String,
    /// SMTP listen address.
    pub smtp: String,
    /// POP3 listen address.
    pub pop: String,
    /// Admin HTTP listen address.
    pub admin: String,
    /// Cluster RPC listen address.
    pub rpc: String,
    /// File holding the admin API's bearer token (default `<data>/admin.token`, made
    /// on first start when admin is on loopback).
    pub admin_token_file: Option<PathBuf>,
    /// Serve `GET /metrics` without the admin token.
    pub metrics_public: bool,
    /// RPC addresses of other nodes to find the cluster through.
    pub seeds: Vec<String>,
    /// Initialise the account registry as its first voter if it has never been initialised.
    pub bootstrap: bool,
    /// Form the account registry once this many nodes see each other (the lowest id
    /// among them initialises it, after checking none belongs to one): the same value
    /// on every node replaces `bootstrap` on one. 0: off.
    pub bootstrap_expect: usize,
    /// Host (name or address) other nodes and clients should use for this node's
    /// listeners that are bound to an unspecified address (`0.0.0.0`, `::`);
    /// `{hostname}` is replaced by the OS host name. Without it, such a listener is
    /// announced with the source address of the route to the first reachable seed.
    pub advertise: Option<String>,
    /// Take `node_id` from the trailing digits of the OS host name (`porcupine-2` → 2),
    /// as StatefulSet pods are named.
    pub node_id_from_hostname: bool,
    /// What a node does when its view holds no majority of the cluster (the small side
    /// of a partition, or most nodes down): `quorum` (default) grants no POP3 locks and
    /// takes no mail (`4xx`, `-ERR [SYS/TEMP]`), so two sides never both serve one
    /// mailbox; `available` serves on with the nodes it has (`up`, on one host, where
    /// the network cannot partition).
    pub partition_policy: PartitionPolicy,
    /// Copies of each message (issue 4); 1 stores one copy.
    pub replicas: usize,
    /// Soft upper bound on the nodes holding one user's fragments.
    pub spread: usize,
    /// Where new mail goes: `porcupine` (affinity, spread, least loaded), `random`,
    /// or `static` (the user's manager and its successors; for comparison).
    pub balance: softstate::place::Balance,
    /// Largest accepted message, in bytes.
    pub smtp_message_size_max: usize,
    /// Most recipients per message.
    pub smtp_recipients_max: usize,
    /// SMTP idle timeout, in seconds.
    pub smtp_idle_timeout_secs: u64,
    /// Most concurrent SMTP connections.
    pub smtp_connections_max: usize,
    /// POP3 idle timeout, in seconds.
    pub pop_idle_timeout_secs: u64,
    /// Most concurrent POP3 connections.
    pub pop_connections_max: usize,
    /// Most concurrent admin HTTP connections.
    pub admin_connections_max: usize,
    /// Most concurrent inbound cluster RPC connections (peers keep one or a few each).
    pub rpc_connections_max: usize,
    /// Delay before answering a failed POP3 login, in milliseconds.
    pub pop_auth_failure_delay_ms: u64,
    /// Failure detector: ping interval, in milliseconds.
    pub ping_interval_ms: u64,
    /// Failure detector: silence after which a node is suspected, in milliseconds.
    pub suspect_after_ms: u64,
    /// Timeout of one cluster RPC, in milliseconds.
    pub rpc_timeout_ms: u64,
    /// Where to write the bound listen addresses (JSON) once all four listeners are
    /// bound; lets a caller ask for port 0 and learn the ports the OS picked.
    pub ports_file: Option<PathBuf>,
    /// Seconds between repair passes (besides the pass after every view change).
    pub repair_interval_secs: u64,
    /// Age a deleted message must reach before repair may collect its tombstone, in seconds.
    pub tombstone_min_age_secs: u64,
    /// Free space to keep on the data dir's file system, in MiB: below it the node is
    /// nearly full and takes no new mail (reads and deletes go on). 0 disables.
    pub disk_reserve_mb: u64,
    // Storage lifecycle (issue 14).
    /// Size at which a new segment file is started, in MiB.
    pub segment_size_mb: u64,
    /// A sealed segment whose live records fill less than this fraction of it is
    /// compacted in the background (0 turns background compaction off).
    pub compact_live_ratio_min: f64,
    /// Most MiB per second compaction reads, so deliveries keep the disk (0: no limit).
    pub compact_rate_mb_per_sec: u64,
    /// Seconds between background compaction passes.
    pub compact_interval_secs: u64,
    // Abuse limits (issue 11): README's config table says what each one bounds.
    /// Threads that hash and verify passwords (0: one per core, at least 2).
    pub argon2_threads: usize,
    /// How long a login waits for a free Argon2 thread before `-ERR [SYS/TEMP]`, in ms.
    pub argon2_wait_ms: u64,
    /// An SMTP command line must be complete this long after its first byte, in seconds.
    pub smtp_command_timeout_secs: u64,
    /// A DATA text or BDAT chunk must be complete within this (seconds) plus one
    /// second per `smtp_data_rate_min` bytes received.
    pub smtp_data_timeout_secs: u64,
    /// Data rate floor after `smtp_data_timeout_secs`, in bytes per second (0: none).
    pub smtp_data_rate_min: u64,
    /// A POP3 command line must be complete this long after its first byte, in seconds.
    pub pop_command_timeout_secs: u64,
    /// Most concurrent SMTP connections from one client address.
    pub smtp_connections_per_ip_max: usize,
    /// Most concurrent POP3 connections from one client address.
    pub pop_connections_per_ip_max: usize,
    /// Client addresses the per-IP caps do not apply to.
    pub connections_per_ip_exempt: Vec<std::net::IpAddr>,
    /// Failed POP3 logins one client address (IPv6: /64) may make per window.
    pub pop_login_failures_per_ip_max: usize,
    /// Failed POP3 logins against one account per window, from anywhere.
    pub pop_login_failures_per_account_max: usize,
    /// The sliding window of the login failure limits, in seconds.
    pub pop_login_failure_window_secs: u64,
    /// Addresses and accounts each failure table tracks at most (oldest forgotten).
    pub pop_login_failure_entries_max: usize,
    /// Client addresses whose failed logins are neither limited nor counted.
    pub pop_login_failures_exempt: Vec<std::net::IpAddr>,
    /// A new RPC or admin connection must send a request within this, and each
    /// request's headers and body must arrive within it, in seconds.
    pub http_request_timeout_secs: u64,
    /// An RPC connection with no request in flight for this long is closed, in seconds.
    pub rpc_idle_timeout_secs: u64,
    /// An admin connection with no request in flight for this long is closed, in seconds.
    pub admin_idle_timeout_secs: u64,
    // TLS (issue 11).
    /// POP3S (implicit TLS, RFC 8314) listen address; needs `tls_cert`.
    pub pop3s: Option<String>,
    /// Certificate chain (PEM, leaf first) clients see on STARTTLS, STLS and POP3S;
    /// without it none of them is offered. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Where a POP3 password may be sent outside TLS: `loopback` (default), `always`
    /// or `never`.
    pub pop_plaintext_auth: String,
    /// The cluster CA certificate (PEM): node-to-node RPC is mutual TLS, and only
    /// peers with a certificate it issued are answered. Needs `cluster_cert` and
    /// `cluster_key`; required when `rpc` is not a loopback address.
    pub cluster_ca: Option<PathBuf>,
    /// This node's certificate from the cluster CA (PEM). Reloaded on SIGHUP.
    pub cluster_cert: Option<PathBuf>,
    /// Private key (PEM) of `cluster_cert`.
    pub cluster_key: Option<PathBuf>,
    // Accounts (issue 14).
    /// Account (or alias) that receives `postmaster@` and `abuse@` every local domain
    /// and the bare `postmaster`, where the domain has no such account or alias of its
    /// own. Unset: such mail is answered `451 4.3.0` (kept queued at the sender) and a
    /// warning is logged. Same value on every node.
    pub postmaster: Option<String>,
    /// Subaddress separator (RFC 5233): `user+tag@domain` is delivered to
    /// `user@domain`. Empty disables subaddressing. Same value on every node.
    pub recipient_delimiter: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 0,
            data: PathBuf::from("porcupine-data/node-0"),
            hostname: "porcupine.localhost".into(),
            smtp: "127.0.0.1:2500".into(),
            pop: "127.0.0.1:2501".into(),
            admin: "127.0.0.1:2502".into(),
            rpc: "127.0.0.1:2503".into(),
            admin_token_file: None,
            metrics_public: false,
            seeds: Vec::new(),
            bootstrap: false,
            bootstrap_expect: 0,
            partition_policy: PartitionPolicy::Quorum,
            advertise: None,
            node_id_from_hostname: false,
            replicas: 2,
            spread: 4,
            balance: softstate::place::Balance::Porcupine,
            smtp_message_size_max: 25 * 1024 * 1024,
            smtp_recipients_max: 100,
            smtp_idle_timeout_secs: 300,
            smtp_connections_max: 1000,
            pop_idle_timeout_secs: 600,
            pop_connections_max: 1000,
            admin_connections_max: 64,
            rpc_connections_max: 4096,
            pop_auth_failure_delay_ms: 1000,
            ping_interval_ms: 500,
            suspect_after_ms: 2000,
            rpc_timeout_ms: 3000,
            ports_file: None,
            repair_interval_secs: 30,
            tombstone_min_age_secs: 3600,
            disk_reserve_mb: 256,
            segment_size_mb: 256,
            compact_live_ratio_min: 0.5,
            compact_rate_mb_per_sec: 32,
            compact_interval_secs: 30,
            // Abuse limits (issue 11).
            argon2_threads: 0,
            argon2_wait_ms: 5000,
            smtp_command_timeout_secs: 60,
            smtp_data_timeout_secs: 300,
            smtp_data_rate_min: 1024,
            pop_command_timeout_secs: 60,
            smtp_connections_per_ip_max: 20,
            pop_connections_per_ip_max: 20,
            connections_per_ip_exempt: vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            pop_login_failures_per_ip_max: 10,
            pop_login_failures_per_account_max: 5,
            pop_login_failure_window_secs: 60,
            pop_login_failure_entries_max: 10_000,
            pop_login_failures_exempt: vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            http_request_timeout_secs: 10,
            rpc_idle_timeout_secs: 120,
            admin_idle_timeout_secs: 60,
            postmaster: None,
            recipient_delimiter: "+".into(),
            pop3s: None,
            tls_cert: None,
            tls_key: None,
            pop_plaintext_auth: "loopback".into(),
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
        }
    }
}

impl NodeConfig {
    /// The membership timings this node runs with (the failure detector from the
    /// config, the rest the protocol's defaults).
    pub fn membership(&self) -> membership::MembershipConfig {
        membership::MembershipConfig {
            ping_interval_ms: self.ping_interval_ms,
            suspect_after_ms: self.suspect_after_ms,
            ..membership::MembershipConfig::default()
        }
    }

    /// Read a `node.toml`.
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// POP3 login failure limits derived from this config.
    pub fn login_limits(&self) -> pop::LoginLimits {
        pop::LoginLimits {
            per_ip_max: self.pop_login_failures_per_ip_max,
            per_account_max: self.pop_login_failures_per_account_max,
            window: Duration::from_secs(self.pop_login_failure_window_secs),
            entries_max: self.pop_login_failure_entries_max,
        }
    }

    /// SMTP session limits derived from this config, STARTTLS offered with `starttls`.
    pub fn smtp_config(&self, starttls: Option<tls::Acceptor>) -> smtp::SmtpConfig {
        smtp::SmtpConfig {
            hostname: self.hostname.clone(),
            message_size_max: self.smtp_message_size_max,
            recipients_max: self.smtp_recipients_max,
            idle_timeout: Duration::from_secs(self.smtp_idle_timeout_secs),
            command_timeout: Duration::from_secs(self.smtp_command_timeout_secs),
            data_timeout: Duration::from_secs(self.smtp_data_timeout_secs),
            data_rate_min: self.smtp_data_rate_min,
            starttls,
            ..smtp::SmtpConfig::default()
        }
    }

    /// POP3 session limits derived from this config, STLS offered with `stls`.
    pub fn pop_config(&self, stls: Option<tls::Acceptor>) -> anyhow::Result<pop::PopConfig> {
        let plaintext_auth = self
            .pop_plaintext_auth
            .parse()
            .map_err(|e: String| anyhow::anyhow!("pop_plaintext_auth: {e}"))?;
        Ok(pop::PopConfig {
            hostname: self.hostname.clone(),
            idle_timeout: Duration::from_secs(self.pop_idle_timeout_secs),
            command_timeout: Duration::from_secs(self.pop_command_timeout_secs),
            auth_failure_delay: Duration::from_millis(self.pop_auth_failure_delay_ms),
            stls,
            plaintext_auth,
            ..pop::PopConfig::default()
        })
    }
}

/// `serve --check`: validate what can be checked without binding (addresses are
/// HOST:PORT, policies parse; TLS files missing here are noted) and print the effective config.
pub fn check(config: &NodeConfig) -> anyhow::Result<()> {
    config.pop_config(None)?;
    for (key, path) in [
        ("tls_cert", &config.tls_cert),
        ("tls_key", &config.tls_key),
        ("cluster_ca", &config.cluster_ca),
        ("cluster_cert", &config.cluster_cert),
        ("cluster_key", &config.cluster_key),
    ] {
        if let Some(p) = path.as_ref().filter(|p| !p.exists()) {
            // Checked for real at start; a config made for another host names its files.
            eprintln!("note: {key} {} does not exist on this host", p.display());
        }
    }
    for (key, addr) in [
        ("smtp", &config.smtp),
        ("pop", &config.pop),
        ("admin", &config.admin),
        ("rpc", &config.rpc),
    ] {
        anyhow::ensure!(
            addr.rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok()),
            "{key} = {addr:?}: want HOST:PORT"
        );
    }
    print!(
        "{}",
        toml::to_string(config).context("printing the config")?
    );
    Ok(())
}

/// See [`NodeConfig::partition_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PartitionPolicy {
    /// Serve only while in a majority view.
    Quorum,
    /// Serve with whatever nodes are in the view.
    Available,
}

/// Parse a `--balance` value.
pub fn parse_balance(text: &str) -> Result<softstate::place::Balance, String> {
    use softstate::place::Balance;
    match text {
        "porcupine" => Ok(Balance::Porcupine),
        "random" => Ok(Balance::Random),
        "static" => Ok(Balance::Static),
        _ => Err(format!("{text:?}: want porcupine, random or static")),
    }
}
