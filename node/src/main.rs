//! `porcupine`: the node daemon and the operator CLI.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use node::cli::{self, AdminClient};
use node::config::NodeConfig;

/// Porcupine: a clustered mail service (SMTP in, POP3 out) in which every node is the same.
#[derive(Parser)]
#[command(name = "porcupine", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster of N nodes on loopback (the embedded default).
    Up(node::up::UpArgs),
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Manage accounts through a node's admin API.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Manage local domains (and their default quotas).
    Domain {
        #[command(subcommand)]
        command: node::accounts_cli::DomainCommand,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Manage aliases and catch-alls (forwarding to local accounts).
    Alias {
        #[command(subcommand)]
        command: node::accounts_cli::AliasCommand,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Operate on cluster nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// The cluster simulator: the real cluster core in virtual time.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
    /// The cluster CA that node certificates come from.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Node certificates from the cluster CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Load generator: drive any SMTP + POP3 server, check every message end to end.
    Load(load::LoadArgs),
    /// Show the whole cluster (every live node's figures), asked of any node.
    Status {
        #[command(flatten)]
        admin: AdminArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time URL that logs a browser into the dashboard (read-only).
    Dashboard {
        #[command(flatten)]
        admin: AdminArg,
    },
}

#[derive(Args, Clone)]
struct AdminArg {
    /// Admin API of any node.
    #[arg(
        long,
        global = true,
        env = "PORCUPINE_ADMIN",
        default_value = "http://127.0.0.1:2502"
    )]
    admin: String,
    /// File holding the admin token (else $PORCUPINE_TOKEN_FILE, $PORCUPINE_TOKEN,
    /// ./porcupine-data/admin.token, ./porcupine-data/node-0/admin.token).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

impl AdminArg {
    /// A client for `--admin` carrying the token found as `--token-file` says.
    fn client(&self) -> anyhow::Result<AdminClient> {
        let token = cli::find_token(self.token_file.as_deref())?;
        Ok(AdminClient::new(&self.admin).with_token(token))
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account (its domain becomes a local domain).
    Add {
        /// The address, local@domain.
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        quota: node::accounts_cli::QuotaFlags,
    },
    /// Change an account's quota.
    Set {
        /// The address.
        address: String,
        #[command(flatten)]
        quota: node::accounts_cli::QuotaFlags,
    },
    /// Delete an account.
    Del {
        /// The address.
        address: String,
        /// Keep the user's stored mail (default: delete it on every node; the
        /// space returns with each node's next compaction pass).
        #[arg(long)]
        keep_mail: bool,
    },
    /// List accounts with their usage and quotas.
    List,
    /// Change an account's password.
    Passwd {
        /// The address.
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// One experiment: a table on stdout, every figure with --json.
    Run(node::simcli::SimRunArgs),
    /// A named experiment: scaling, skew, hetero, failover, billion, ten-billion.
    Scenario(node::simcli::ScenarioArgs),
    /// Random fault schedules over the real core, checking invariants.
    Vopr(node::simcli::VoprArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new cluster CA (DIR/ca.pem, DIR/ca.key mode 0600); refuses to
    /// replace one.
    Init {
        /// Where to put it.
        #[arg(long, default_value = "porcupine-ca")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Porcupine cluster CA")]
        name: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue node N's certificate (OUT/node-N.pem, OUT/node-N.key mode 0600), good
    /// for serving clients and for mutual TLS with the other nodes.
    Issue {
        /// The node's id.
        #[arg(long)]
        node_id: u64,
        /// The CA made by `porcupine ca init`.
        #[arg(long, default_value = "porcupine-ca")]
        ca_dir: PathBuf,
        /// Where to write the certificate and key.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// A host name or IP address the node is reached at (repeat); peers check
        /// the RPC address they call against these.
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Declare a dead node gone for good; its messages are re-replicated and a
    /// registry voter seat it held goes to a learner.
    Remove {
        /// The node id.
        id: u64,
    },
    /// Take a node out gracefully: no new mail goes there and its messages are
    /// copied elsewhere; `status` says when it holds nothing needed.
    Drain {
        /// The node id.
        id: u64,
        /// Stop draining (the node takes new mail again).
        #[arg(long)]
        undo: bool,
        /// Wait up to SECS until the node holds nothing needed.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// fsck: check the checksum of every stored record on the node behind --admin.
    Verify {
        /// Replace each damaged message with a good copy from another node.
        #[arg(long)]
        repair: bool,
    },
    /// Run one segment compaction pass on the node behind --admin now.
    Compact {
        /// Compact segments whose live fraction is below this (default: the node's
        /// `compact_live_ratio_min`; 1 compacts every segment with a dead byte).
        #[arg(long)]
        live_ratio_min: Option<f64>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PasswordArgs {
    /// The password (visible to other local users in the process list; prefer --password-stdin).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn read(&self) -> anyhow::Result<String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let mut s = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut s)
            .context("reading the password from stdin")?;
        let line = s.lines().next().unwrap_or("").to_string();
        anyhow::ensure!(!line.is_empty(), "empty password on stdin");
        Ok(line)
    }
}

/// Flags of `porcupine serve`; each overrides the key of the same name (with `_`) in `--config`.
#[derive(Args)]
struct ServeArgs {
    /// A node.toml; flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the configuration, print it as the node would run with it (TOML), and
    /// exit without binding or touching the data directory.
    #[arg(long)]
    check: bool,
    /// Cluster-unique node id (`node_id`).
    #[arg(long)]
    node_id: Option<u64>,
    /// Data directory (`data`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Name in greetings and trace headers (`hostname`).
    #[arg(long)]
    hostname: Option<String>,
    /// SMTP listen address (`smtp`).
    #[arg(long)]
    smtp: Option<String>,
    /// POP3 listen address (`pop`).
    #[arg(long)]
    pop: Option<String>,
    /// Admin HTTP listen address (`admin`).
    #[arg(long)]
    admin: Option<String>,
    /// Cluster RPC listen address (`rpc`).
    #[arg(long)]
    rpc: Option<String>,
    /// File with the admin API's bearer token (`admin_token_file`; default
    /// `<data>/admin.token`, created on loopback).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// RPC address of another node; repeat for several (`seeds`).
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// Initialise the account registry with this node as first voter (`bootstrap`);
    /// implied when there are no seeds.
    #[arg(long)]
    bootstrap: bool,
    /// On the small side of a partition: quorum (refuse) or available (`partition_policy`).
    #[arg(long, value_enum)]
    partition_policy: Option<node::config::PartitionPolicy>,
    /// Form the registry once this many nodes see each other (`bootstrap_expect`).
    #[arg(long)]
    bootstrap_expect: Option<usize>,
    /// Host other nodes use for listeners bound to 0.0.0.0 or :: (`advertise`).
    #[arg(long)]
    advertise: Option<String>,
    /// Take the node id from the host name's trailing digits (`node_id_from_hostname`).
    #[arg(long)]
    node_id_from_hostname: bool,
    /// Copies of each message (`replicas`).
    #[arg(long)]
    replicas: Option<usize>,
    /// Soft bound on nodes holding one user's mail (`spread`).
    #[arg(long)]
    spread: Option<usize>,
    /// Where new mail goes: porcupine, random or static (`balance`).
    #[arg(long, value_parser = node::config::parse_balance)]
    balance: Option<softstate::place::Balance>,
    /// Largest message in bytes (`smtp_message_size_max`).
    #[arg(long)]
    smtp_message_size_max: Option<usize>,
    /// Most recipients per message (`smtp_recipients_max`).
    #[arg(long)]
    smtp_recipients_max: Option<usize>,
    /// SMTP idle timeout in seconds (`smtp_idle_timeout_secs`).
    #[arg(long)]
    smtp_idle_timeout_secs: Option<u64>,
    /// Most concurrent SMTP connections (`smtp_connections_max`).
    #[arg(long)]
    smtp_connections_max: Option<usize>,
    /// POP3 idle timeout in seconds (`pop_idle_timeout_secs`).
    #[arg(long)]
    pop_idle_timeout_secs: Option<u64>,
    /// Most concurrent POP3 connections (`pop_connections_max`).
    #[arg(long)]
    pop_connections_max: Option<usize>,
    /// Most concurrent admin HTTP connections (`admin_connections_max`).
    #[arg(long)]
    admin_connections_max: Option<usize>,
    /// Most concurrent inbound cluster RPC connections (`rpc_connections_max`).
    #[arg(long)]
    rpc_connections_max: Option<usize>,
    /// Delay before a failed POP3 login is answered, ms (`pop_auth_failure_delay_ms`).
    #[arg(long)]
    pop_auth_failure_delay_ms: Option<u64>,
    /// Failure detector ping interval, ms (`ping_interval_ms`).
    #[arg(long)]
    ping_interval_ms: Option<u64>,
    /// Silence before a node is suspected, ms (`suspect_after_ms`).
    #[arg(long)]
    suspect_after_ms: Option<u64>,
    /// Timeout of one cluster RPC, ms (`rpc_timeout_ms`).
    #[arg(long)]
    rpc_timeout_ms: Option<u64>,
    /// Write the bound addresses as JSON to this file once listening (`ports_file`).
    #[arg(long)]
    ports_file: Option<PathBuf>,
    /// Seconds between repair passes (`repair_interval_secs`).
    #[arg(long)]
    repair_interval_secs: Option<u64>,
    /// Age in seconds a deleted message must reach before its tombstone is collected
    /// (`tombstone_min_age_secs`).
    #[arg(long)]
    tombstone_min_age_secs: Option<u64>,
    /// Free space in MiB below which the node takes no new mail (`disk_reserve_mb`).
    #[arg(long)]
    disk_reserve_mb: Option<u64>,
    /// Segment file size in MiB (`segment_size_mb`).
    #[arg(long)]
    segment_size_mb: Option<u64>,
    /// Compact sealed segments less live than this fraction; 0: off
    /// (`compact_live_ratio_min`).
    #[arg(long)]
    compact_live_ratio_min: Option<f64>,
    /// Compaction read rate cap in MiB/s; 0: none (`compact_rate_mb_per_sec`).
    #[arg(long)]
    compact_rate_mb_per_sec: Option<u64>,
    /// Seconds between compaction passes (`compact_interval_secs`).
    #[arg(long)]
    compact_interval_secs: Option<u64>,
    /// POP3S (implicit TLS) listen address (`pop3s`).
    #[arg(long)]
    pop3s: Option<String>,
    /// Certificate chain PEM for STARTTLS, STLS and POP3S (`tls_cert`).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Private key PEM of the certificate (`tls_key`).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Where POP3 passwords may be sent outside TLS: loopback, always, never
    /// (`pop_plaintext_auth`).
    #[arg(long)]
    pop_plaintext_auth: Option<String>,
    /// Cluster CA certificate PEM: RPC becomes mutual TLS (`cluster_ca`).
    #[arg(long)]
    cluster_ca: Option<PathBuf>,
    /// This node's certificate from the cluster CA (`cluster_cert`).
    #[arg(long)]
    cluster_cert: Option<PathBuf>,
    /// Private key of `cluster_cert` (`cluster_key`).
    #[arg(long)]
    cluster_key: Option<PathBuf>,
    /// Account receiving postmaster@ and abuse@ every local domain (`postmaster`).
    #[arg(long)]
    postmaster: Option<String>,
    /// Subaddress separator, "" to disable (`recipient_delimiter`).
    #[arg(long)]
    recipient_delimiter: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut c = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            node_id,
            data,
            hostname,
            smtp,
            pop,
            admin,
            rpc,
            bootstrap_expect,
            partition_policy,
            replicas,
            spread,
            balance,
            smtp_message_size_max,
            smtp_recipients_max,
            smtp_idle_timeout_secs,
            smtp_connections_max,
            pop_idle_timeout_secs,
            pop_connections_max,
            admin_connections_max,
            rpc_connections_max,
            pop_auth_failure_delay_ms,
            ping_interval_ms,
            suspect_after_ms,
            rpc_timeout_ms,
            repair_interval_secs,
            tombstone_min_age_secs,
            disk_reserve_mb,
            segment_size_mb,
            compact_live_ratio_min,
            compact_rate_mb_per_sec,
            compact_interval_secs
        );
        if self.ports_file.is_some() {
            c.ports_file = self.ports_file;
        }
        if let Some(v) = self.pop_plaintext_auth {
            c.pop_plaintext_auth = v;
        }
        macro_rules! set_some {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f; } )* };
        }
        set_some!(
            pop3s,
            tls_cert,
            tls_key,
            cluster_ca,
            cluster_cert,
            cluster_key,
            postmaster
        );
        if let Some(v) = self.recipient_delimiter {
            c.recipient_delimiter = v;
        }
        if self.admin_token_file.is_some() {
            c.admin_token_file = self.admin_token_file;
        }
        if self.advertise.is_some() {
            c.advertise = self.advertise;
        }
        c.node_id_from_hostname |= self.node_id_from_hostname;
        // `--node-id` overrides the host name, as every flag overrides the file.
        if c.node_id_from_hostname && self.node_id.is_none() {
            c.node_id = node::advertise::node_id_from_hostname()?;
        }
        if !self.seeds.is_empty() {
            c.seeds = self.seeds;
        }
        // A node without seeds is a cluster of its own, unless others are expected
        // to find it (`bootstrap_expect`).
        c.bootstrap |= self.bootstrap || (c.seeds.is_empty() && c.bootstrap_expect <= 1);
        anyhow::ensure!(
            !(c.bootstrap && c.bootstrap_expect > 1),
            "bootstrap and bootstrap_expect = {} exclude each other: bootstrap_expect forms the registry by itself",
            c.bootstrap_expect
        );
        anyhow::ensure!(c.replicas >= 1, "replicas must be at least 1");
        node::recipients::check_keys(&c).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            c.repair_interval_secs >= 1,
            "repair_interval_secs must be at least 1"
        );
        anyhow::ensure!(
            c.tombstone_min_age_secs.saturating_mul(1000) > c.rpc_timeout_ms,
            "tombstone_min_age_secs ({} s) must exceed rpc_timeout_ms ({} ms): a store still in flight could otherwise outlive the tombstone",
            c.tombstone_min_age_secs,
            c.rpc_timeout_ms
        );
        Ok(c)
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORCUPINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // A log line that cannot be written (the log's disk is full) is dropped:
        // reporting it would eprintln!, which panics when stderr fails, and took
        // SMTP sessions down with it.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(tracing_subscriber::filter::filter_fn(node::logfilter::keep));
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Sim { .. } | Command::Ca { .. } | Command::Cert { .. } | Command::Load(_)
    ) {
        // These print with `println!`: when the reader goes away (`| head`) they end
        // quietly by SIGPIPE, as other Unix tools do, instead of panicking. The admin
        // commands print through `node::out` (exit 0 on a closed pipe); the daemons
        // keep ignoring SIGPIPE (their sockets report EPIPE as an error instead).
        // SAFETY: called before any other thread writes; SIG_DFL is a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Up(args) => {
            init_logs();
            node::up::run(args).await
        }
        Command::Serve(args) => {
            init_logs();
            let check = args.check;
            match args.into_config() {
                Ok(config) if check => node::config::check(&config),
                Ok(config) => node::serve::run(config).await,
                Err(e) => Err(e),
            }
        }
        Command::User { command, admin } => match admin.client() {
            Err(e) => Err(e),
            Ok(client) => match command {
                UserCommand::Add {
                    address,
                    password,
                    quota,
                } => match password.read() {
                    Ok(p) => {
                        node::accounts_cli::user_add(&client, &address, &p, quota.into()).await
                    }
                    Err(e) => Err(e),
                },
                UserCommand::Set { address, quota } => {
                    node::accounts_cli::user_set(&client, &address, quota.into()).await
                }
                UserCommand::Del { address, keep_mail } => {
                    cli::user_del(&client, &address, keep_mail).await
                }
                UserCommand::List => node::accounts_cli::user_list(&client).await,
                UserCommand::Passwd { address, password } => match password.read() {
                    Ok(p) => cli::user_passwd(&client, &address, &p).await,
                    Err(e) => Err(e),
                },
            },
        },
        Command::Domain { command, admin } => match admin.client() {
            Ok(c) => node::accounts_cli::domain(&c, command).await,
            Err(e) => Err(e),
        },
        Command::Alias { command, admin } => match admin.client() {
            Ok(c) => node::accounts_cli::alias(&c, command).await,
            Err(e) => Err(e),
        },
        Command::Node { command, admin } => match admin.client() {
            Ok(c) => match command {
                NodeCommand::Remove { id } => cli::node_remove(&c, id).await,
                NodeCommand::Drain { id, undo, wait } => cli::node_drain(&c, id, undo, wait).await,
                NodeCommand::Verify { repair } => cli::node_verify(&c, repair).await,
                NodeCommand::Compact { live_ratio_min } => {
                    cli::node_compact(&c, live_ratio_min).await
                }
            },
            Err(e) => Err(e),
        },
        Command::Dashboard { admin } => match admin.client() {
            Ok(c) => cli::dashboard(&c).await,
            Err(e) => Err(e),
        },
        Command::Status { admin, json } => match admin.client() {
            Ok(c) => cli::status(&c, json).await,
            Err(e) => Err(e),
        },
        Command::Sim { command } => tokio::task::block_in_place(|| match command {
            SimCommand::Run(args) => {
                node::simcli::reexec_with_huge_pages();
                node::simcli::run(&args)
            }
            SimCommand::Scenario(args) => {
                node::simcli::reexec_with_huge_pages();
                node::simcli::scenario(&args)
            }
            SimCommand::Vopr(args) => node::simcli::vopr(&args),
        }),
        Command::Ca {
            command: CaCommand::Init { dir, name },
        } => tls::pki::init_ca(&dir, &name)
            .map(|paths| {
                println!("CA certificate: {}", paths.cert.display());
                println!(
                    "CA key (keep it safe, off the nodes if you can): {}",
                    paths.key.display()
                );
            })
            .map_err(Into::into),
        Command::Cert {
            command:
                CertCommand::Issue {
                    node_id,
                    ca_dir,
                    out_dir,
                    sans,
                    days,
                },
        } => {
            let spec = tls::pki::NodeCertSpec {
                common_name: format!("porcupine node {node_id}"),
                subject_alt_names: sans,
                validity_days: days,
            };
            let cert = out_dir.join(format!("node-{node_id}.pem"));
            let key = out_dir.join(format!("node-{node_id}.key"));
            tls::pki::issue(&tls::pki::CaPaths::in_dir(&ca_dir), &spec, &cert, &key)
                .map(|()| {
                    println!("certificate: {}", cert.display());
                    println!("key: {}", key.display());
                })
                .map_err(Into::into)
        }
        Command::Load(args) => load::run(args).await.map(drop).map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porcupine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
