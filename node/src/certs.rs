//! The node's certificates: the one clients see (STARTTLS, STLS, POP3S) and the
//! cluster one (mutual TLS between nodes), loaded from the configured PEM files at
//! start and reloaded on SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::NodeConfig;

/// What TLS this node offers, from its configuration.
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    /// The client-facing certificate, if `tls_cert`/`tls_key` are set.
    pub clients: Option<Arc<tls::CertStore>>,
    /// The cluster CA and this node's certificate, if `cluster_*` are set.
    pub cluster: Option<tls::ClusterTls>,
}

impl NodeTls {
    /// Load what `config` names; an error names the key and the file.
    pub fn load(config: &NodeConfig) -> anyhow::Result<NodeTls> {
        let clients = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls::CertStore::load(cert, key).context("loading tls_cert / tls_key")?)
            }
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together: set both or neither"),
        };
        let cluster = match (
            &config.cluster_ca,
            &config.cluster_cert,
            &config.cluster_key,
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(
                tls::ClusterTls::load(ca, cert, key)
                    .context("loading cluster_ca / cluster_cert / cluster_key")?,
            ),
            (None, None, None) => None,
            _ => anyhow::bail!(
                "cluster_ca, cluster_cert and cluster_key go together: set all three or none"
            ),
        };
        if config.pop3s.is_some() && clients.is_none() {
            anyhow::bail!("pop3s needs a certificate: set tls_cert and tls_key");
        }
        check_rpc_secured(&config.rpc, cluster.is_some())?;
        Ok(NodeTls { clients, cluster })
    }

    /// The acceptor of the client-facing listeners.
    pub fn client_acceptor(&self) -> anyhow::Result<Option<tls::Acceptor>> {
        self.clients
            .as_ref()
            .map(|store| {
                let config = store.server_config()?;
                Ok(tls::Acceptor::new(config, tls::HANDSHAKE_TIMEOUT))
            })
            .transpose()
            .map_err(|e: tls::TlsError| anyhow::anyhow!("client TLS configuration: {e}"))
    }

    /// The acceptor of the RPC listener (client certificates required), whose
    /// handshakes must finish within `handshake_timeout`.
    pub fn rpc_acceptor(
        &self,
        handshake_timeout: std::time::Duration,
    ) -> anyhow::Result<Option<tls::Acceptor>> {
        self.cluster
            .as_ref()
            .map(|cluster| {
                let config = cluster.server_config()?;
                Ok(tls::Acceptor::new(config, handshake_timeout))
            })
            .transpose()
            .map_err(|e: tls::TlsError| anyhow::anyhow!("cluster TLS configuration: {e}"))
    }

    /// Read every certificate file again; a file that fails keeps its old
    /// certificate in use and is logged.
    pub fn reload(&self) {
        let stores = self
            .clients
            .iter()
            .chain(self.cluster.as_ref().map(|c| c.cert()));
        for store in stores {
            match store.reload() {
                Ok(()) => {
                    tracing::info!(cert = %store.cert_path().display(), "certificate reloaded")
                }
                Err(error) => {
                    tracing::warn!(%error, "certificate not reloaded, the old one stays in use")
                }
            }
        }
    }
}

/// RPC on an address other machines can reach must be mutual TLS: without it anyone
/// who reaches the port could read and delete mail and rewrite the registry.
fn check_rpc_secured(rpc: &str, has_cluster_tls: bool) -> anyhow::Result<()> {
    if has_cluster_tls {
        return Ok(());
    }
    let loopback = match rpc.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => rpc.starts_with("localhost:"),
    };
    anyhow::ensure!(
        loopback,
        "refusing to serve cluster RPC on {rpc} without credentials: set cluster_ca, cluster_cert and cluster_key (see `porcupine ca init` and `porcupine cert issue`), or bind rpc to 127.0.0.1"
    );
    Ok(())
}

/// Reload the certificates on every SIGHUP until shutdown.
pub async fn reload_on_sighup(node_tls: NodeTls, mut shutdown: watch::Receiver<bool>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "SIGHUP handler not installed: certificates will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            got = hangups.recv() => match got {
                Some(()) => node_tls.reload(),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_off_loopback_needs_cluster_tls() {
        assert!(check_rpc_secured("127.0.0.1:2503", false).is_ok());
        assert!(check_rpc_secured("[::1]:2503", false).is_ok());
        assert!(check_rpc_secured("localhost:2503", false).is_ok());
        let error = check_rpc_secured("0.0.0.0:2503", false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster_ca"), "{error}");
        assert!(check_rpc_secured("10.0.0.5:2503", false).is_err());
        assert!(check_rpc_secured("10.0.0.5:2503", true).is_ok());
    }
}
