//! `porcupine serve`: start one node, run it until SIGINT/SIGTERM, stop it cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use membership::NodeInfo;
use registry::raft::{RaftLog, RaftTransport};
use registry::{Registry, RegistryState};
use storage::Store;
use tokio::sync::watch;

use crate::cluster::{self, Cluster};
use crate::config::NodeConfig;
use crate::deliver::DeliveryProxy;
use crate::dispatch::NodeRpc;
use crate::listen::{HttpTimeouts, PerIpCap, bind, serve_http, serve_tcp};
use crate::retrieve::RetrievalProxy;
use crate::rpc::{Request, Response, RpcClient};
use crate::service::Node;

/// Carries Raft traffic over the node's RPC channel.
struct RaftOverRpc(RpcClient);

impl RaftTransport for RaftOverRpc {
    async fn send(&self, addr: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.0.call(addr, &Request::Registry(bytes)).await {
            Ok(reply) => match reply.response {
                Response::Registry(b) => Ok(b),
                other => Err(format!("unexpected reply {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Check that the data directory belongs to this node id (or claim it).
fn check_identity(store: &Store, id: u64) -> anyhow::Result<()> {
    let tree = store.kv("node")?;
    match tree.get(b"id")? {
        Some(v) if v.as_slice() != id.to_be_bytes().as_slice() => {
            let other = v
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            anyhow::bail!("data directory belongs to node {other}, not node {id}")
        }
        Some(_) => Ok(()),
        None => Ok(tree.insert(b"id", &id.to_be_bytes())?),
    }
}

/// Wait for SIGINT or SIGTERM.
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Write the bound addresses of `me` as JSON to `path`, atomically: a reader sees
/// either no file (or an older one) or the whole new one, never a partial write.
fn write_ports_file(path: &Path, me: &NodeInfo, pop3s: Option<&str>) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "smtp": me.smtp,
        "pop": me.pop,
        "admin": me.admin,
        "rpc": me.rpc,
        "pop3s": pop3s,
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{json}\n"))
        .with_context(|| format!("writing the ports file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "renaming {} to the ports file {}",
            tmp.display(),
            path.display()
        )
    })
}

/// Run one node until a stop signal.
pub async fn run(mut config: NodeConfig) -> anyhow::Result<()> {
    // A data directory of a newer format is refused before anything touches it.
    if config.data.is_dir() {
        crate::format::check(&config.data)?;
    }
    // Certificates and the RPC credentials rule are checked before anything binds.
    let node_tls = crate::certs::NodeTls::load(&config)?;
    let client_tls = node_tls.client_acceptor()?;
    let rpc_tls = node_tls.rpc_acceptor(Duration::from_secs(config.http_request_timeout_secs))?;
    // Credentials first: a node that may not serve its admin API binds nothing.
    let token_path =
        crate::token::serve_token_path(config.admin_token_file.as_deref(), &config.data);
    let admin_auth = Arc::new(crate::admin::AdminAuth {
        token: crate::token::load_for_serve(&token_path, &config.admin)?,
        metrics_public: config.metrics_public,
        dashboard: Default::default(),
    });
    // A configuration refused above never created the data directory.
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("creating data directory {}", config.data.display()))?;
    crate::format::check(&config.data)?;
    let smtp_listener = bind("SMTP", &config.smtp).await?;
    let pop_listener = bind("POP3", &config.pop).await?;
    let admin_listener = bind("admin HTTP", &config.admin).await?;
    let rpc_listener = bind("cluster RPC", &config.rpc).await?;
    let pop3s_listener = match &config.pop3s {
        Some(addr) => Some(bind("POP3S", addr).await?),
        None => None,
    };
    let bound = |l: &tokio::net::TcpListener| l.local_addr();
    let announce = |name: &'static str, l: &tokio::net::TcpListener| -> anyhow::Result<String> {
        Ok(crate::advertise::advertised(
            name,
            bound(l)?,
            config.advertise.as_deref(),
            &config.seeds,
        )?)
    };
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Other nodes and clients get the advertised addresses; a listener bound to a
    // specific address is advertised as bound.
    let me = NodeInfo {
        id: config.node_id,
        incarnation,
        rpc: announce("cluster RPC", &rpc_listener)?,
        smtp: announce("SMTP", &smtp_listener)?,
        pop: announce("POP3", &pop_listener)?,
        admin: announce("admin HTTP", &admin_listener)?,
    };
    // Listen addresses may ask for port 0: from here on the node's own config holds
    // the bound ones.
    config.smtp = bound(&smtp_listener)?.to_string();
    config.pop = bound(&pop_listener)?.to_string();
    config.admin = bound(&admin_listener)?.to_string();
    config.rpc = bound(&rpc_listener)?.to_string();
    if let Some(listener) = &pop3s_listener {
        config.pop3s = Some(bound(listener)?.to_string());
    }
    if let Some(path) = &config.ports_file {
        write_ports_file(path, &me, config.pop3s.as_deref())?;
    }

    anyhow::ensure!(
        config.smtp_message_size_max + 64 * 1024 <= crate::rpc::RPC_BODY_BYTES_MAX,
        "smtp_message_size_max {} is too large: messages travel between nodes in one RPC of at most {} bytes",
        config.smtp_message_size_max,
        crate::rpc::RPC_BODY_BYTES_MAX
    );
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("creating data directory {}", config.data.display()))?;
    let store = Store::open(&config.data, crate::lifecycle::store_config(&config)?)
        .with_context(|| format!("opening the store in {}", config.data.display()))?;
    check_identity(&store, config.node_id)?;

    let rpc_client_tls = match &node_tls.cluster {
        Some(cluster) => Some(
            cluster
                .client_config()
                .map_err(|e| anyhow::anyhow!("cluster TLS client configuration: {e}"))?,
        ),
        None => None,
    };
    let rpc = RpcClient::with_tls(Duration::from_millis(config.rpc_timeout_ms), rpc_client_tls);
    let state = RegistryState::new(store.kv("registry")?);
    let raft = RaftLog::start(
        config.node_id,
        me.rpc.clone(),
        &store,
        state.clone(),
        Arc::new(RaftOverRpc(rpc.clone())),
    )
    .await
    .context("starting the registry (raft)")?;
    if config.bootstrap {
        raft.bootstrap()
            .await
            .context("bootstrapping the registry")?;
    }
    let argon = registry::ArgonPool::new(
        config.argon2_threads,
        Duration::from_millis(config.argon2_wait_ms),
    );
    let registry = Registry::with_argon(state, raft, argon);
    let forgotten: Vec<String> = store
        .kv("forgotten")?
        .scan_prefix(b"")?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect();
    let (cluster, inbox) = Cluster::new(
        me.clone(),
        membership::DEFAULT_BUCKETS,
        config.seeds.clone(),
        forgotten,
    );
    let node = Node::new(
        config.clone(),
        store,
        registry,
        cluster.clone(),
        rpc.clone(),
    );

    let metrics = crate::telemetry::install();

    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    let rpc_handler = Arc::new(NodeRpc(node.clone()));
    let request_timeout = Duration::from_secs(config.http_request_timeout_secs);
    let http_timeouts = |idle_secs: u64| HttpTimeouts {
        request: request_timeout,
        idle: Duration::from_secs(idle_secs),
    };
    tasks.spawn(serve_http(
        rpc_listener,
        config.rpc_connections_max,
        http_timeouts(config.rpc_idle_timeout_secs),
        rpc_tls,
        shutdown.clone(),
        move |req| crate::rpc::serve_http(rpc_handler.clone(), req),
    ));
    let admin_node = node.clone();
    tasks.spawn(serve_http(
        admin_listener,
        config.admin_connections_max,
        http_timeouts(config.admin_idle_timeout_secs),
        None,
        shutdown.clone(),
        move |req| {
            crate::admin::handle(admin_node.clone(), metrics.clone(), admin_auth.clone(), req)
        },
    ));

    tasks.spawn(crate::certs::reload_on_sighup(
        node_tls.clone(),
        shutdown.clone(),
    ));
    let smtp_config = Arc::new(config.smtp_config(client_tls.clone()));
    let deliver = Arc::new(crate::telemetry::MeteredDeliver(DeliveryProxy(
        node.clone(),
    )));
    let smtp_shutdown = shutdown.clone();
    tasks.spawn(serve_tcp(
        smtp_listener,
        config.smtp_connections_max,
        b"421 4.7.0 too many connections, try again later\r\n",
        PerIpCap::new(
            config.smtp_connections_per_ip_max,
            config.connections_per_ip_exempt.clone(),
            b"421 4.7.0 too many connections from your address\r\n",
        ),
        shutdown.clone(),
        move |stream, peer| {
            let (config, deliver, shutdown) =
                (smtp_config.clone(), deliver.clone(), smtp_shutdown.clone());
            async move {
                let _open = SessionGauge::open("smtp");
                if let Err(e) = smtp::serve(stream, Some(peer), config, deliver, shutdown).await {
                    tracing::debug!(%peer, error = %e, "smtp session ended with an error");
                }
            }
        },
    ));

    let pop_config = Arc::new(config.pop_config(client_tls.clone())?);
    let retrieval = Arc::new(RetrievalProxy(node.clone()));
    let pop_shutdown = shutdown.clone();
    let login_guard = Arc::new(crate::login::LoginGuard::new(
        &config.login_limits(),
        &config.pop_login_failures_exempt,
    ));
    let pop3s_guard = login_guard.clone();
    tasks.spawn(serve_tcp(
        pop_listener,
        config.pop_connections_max,
        b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
        PerIpCap::new(
            config.pop_connections_per_ip_max,
            config.connections_per_ip_exempt.clone(),
            b"-ERR [SYS/TEMP] too many connections from your address\r\n",
        ),
        shutdown.clone(),
        move |stream, peer| {
            let (config, proxy, shutdown) =
                (pop_config.clone(), retrieval.clone(), pop_shutdown.clone());
            let auth = Arc::new(crate::login::PeerAuth {
                proxy: proxy.clone(),
                guard: login_guard.clone(),
                peer,
            });
            async move {
                let _open = SessionGauge::open("pop");
                let client = pop::ClientInfo {
                    peer: Some(peer),
                    tls: false,
                };
                let session = pop::serve_client(stream, client, config, auth, proxy, shutdown);
                if let Err(e) = session.await {
                    tracing::debug!(%peer, error = %e, "pop session ended with an error");
                }
            }
        },
    ));

    // POP3S: the same sessions behind an implicit TLS handshake (RFC 8314).
    if let (Some(listener), Some(acceptor)) = (pop3s_listener, client_tls.clone()) {
        let pop_config = Arc::new(config.pop_config(None)?);
        let retrieval = Arc::new(RetrievalProxy(node.clone()));
        let pop_shutdown = shutdown.clone();
        tasks.spawn(serve_tcp(
            listener,
            config.pop_connections_max,
            // A client of an implicit-TLS port cannot read a plain-text refusal.
            b"",
            PerIpCap::new(
                config.pop_connections_per_ip_max,
                config.connections_per_ip_exempt.clone(),
                b"",
            ),
            shutdown.clone(),
            move |stream, peer| {
                let (config, proxy, shutdown, acceptor) = (
                    pop_config.clone(),
                    retrieval.clone(),
                    pop_shutdown.clone(),
                    acceptor.clone(),
                );
                let auth = Arc::new(crate::login::PeerAuth {
                    proxy: proxy.clone(),
                    guard: pop3s_guard.clone(),
                    peer,
                });
                async move {
                    let _open = SessionGauge::open("pop3s");
                    let stream = match acceptor.handshake(stream).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            metrics::counter!("porcupine_tls_handshake_failures_total", "listener" => "pop3s")
                                .increment(1);
                            tracing::debug!(%peer, %error, "POP3S handshake failed");
                            return;
                        }
                    };
                    let client = pop::ClientInfo {
                        peer: Some(peer),
                        tls: true,
                    };
                    let session = pop::serve_client(stream, client, config, auth, proxy, shutdown);
                    if let Err(e) = session.await {
                        tracing::debug!(%peer, error = %e, "pop3s session ended with an error");
                    }
                }
            },
        ));
    }

    // Soft state: reconstruction at every view change, announces, retries.
    tasks.spawn(crate::soft::run(node.clone(), shutdown.clone()));
    tasks.spawn(crate::release::run(node.clone(), shutdown.clone()));
    tasks.spawn(crate::disk::run(node.disk.clone(), shutdown.clone()));

    // Every view change: let the registry follow membership.
    let mut views = cluster.subscribe();
    let view_node = node.clone();
    let mut view_shutdown = shutdown.clone();
    tasks.spawn(async move {
        // Registry syncs in flight: ended with this task at shutdown, reaped as they end.
        let mut syncs = tokio::task::JoinSet::new();
        loop {
            let view = views.borrow_and_update().clone();
            metrics::counter!("porcupine_view_changes_total").increment(1);
            let at_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            view_node.views.record(
                view.view.epoch.counter,
                view.view.epoch.coordinator,
                view.view.members.iter().map(|m| m.id).collect(),
                at_unix_ms,
            );
            let live: Vec<(u64, String)> = view
                .view
                .members
                .iter()
                .map(|m| (m.id, m.rpc.clone()))
                .collect();
            // Registry membership follows in its own task (it can wait long on a
            // lost quorum); soft state must not wait for it.
            let sync_node = view_node.clone();
            syncs.spawn(async move { sync_node.registry.log().sync_members(live).await });
            loop {
                tokio::select! {
                    _ = view_shutdown.changed() => return,
                    r = views.changed() => if r.is_err() { return } else { break },
                    Some(_) = syncs.join_next(), if !syncs.is_empty() => {},
                }
            }
        }
    });
    // The registry leader changes without a view change; retry membership sync slowly.
    let sync_node = node.clone();
    let mut sync_shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = sync_shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let view = sync_node.cluster.view();
            let live = view
                .view
                .members
                .iter()
                .map(|m| (m.id, m.rpc.clone()))
                .collect();
            sync_node.registry.log().sync_members(live).await;
        }
    });

    if !config.bootstrap {
        tasks.spawn(crate::formation::run(
            node.clone(),
            config.bootstrap_expect,
            shutdown.clone(),
        ));
    }

    tasks.spawn(crate::repair::run(
        node.clone(),
        Duration::from_secs(config.repair_interval_secs),
        shutdown.clone(),
    ));

    let membership_config = config.membership();
    let load_node = node.clone();
    tasks.spawn(cluster::drive(
        cluster.clone(),
        inbox,
        config.seeds.clone(),
        membership_config,
        rpc.clone(),
        move || load_node.load(),
        shutdown.clone(),
    ));

    tracing::info!(
        node = me.id,
        smtp = %me.smtp,
        pop = %me.pop,
        admin = %me.admin,
        rpc = %me.rpc,
        data = %config.data.display(),
        admin_token_file = %token_path.display(),
        "porcupine node ready"
    );

    stop_signal().await;
    tracing::info!("stopping");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    node.registry.log().shutdown().await;
    node.store.close().await.context("closing the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// Counts one open client session in `porcupine_sessions_open{protocol}` for as long as
/// it lives (also when the session task is cancelled).
/// When it ends, it is counted in `porcupine_sessions_total` and its duration goes
/// into `porcupine_session_seconds`.
struct SessionGauge(&'static str, std::time::Instant);

impl SessionGauge {
    fn open(protocol: &'static str) -> Self {
        metrics::gauge!("porcupine_sessions_open", "protocol" => protocol).increment(1.0);
        SessionGauge(protocol, std::time::Instant::now())
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics::gauge!("porcupine_sessions_open", "protocol" => self.0).decrement(1.0);
        metrics::counter!("porcupine_sessions_total", "protocol" => self.0).increment(1);
        metrics::histogram!("porcupine_session_seconds", "protocol" => self.0)
            .record(self.1.elapsed().as_secs_f64());
    }
}
