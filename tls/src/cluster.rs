//! Mutual TLS between nodes: every node presents a certificate issued by the cluster
//! CA and accepts only peers that do the same, in both directions of an RPC.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::certs::read_certs;
use crate::{CertStore, TlsError};

/// HTTP/2 is what the RPC speaks, negotiated by ALPN.
const ALPN_H2: &[u8] = b"h2";

/// The cluster CA and this node's certificate.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    roots: Arc<RootCertStore>,
    cert: Arc<CertStore>,
}

impl ClusterTls {
    /// The CA certificate(s) in `ca_path`, this node's chain and key.
    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca_path)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: ca_path.to_path_buf(),
                what: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(ClusterTls {
            roots: Arc::new(roots),
            cert: CertStore::load(cert_path, key_path)?,
        })
    }

    /// This node's certificate, to reload on SIGHUP.
    pub fn cert(&self) -> &Arc<CertStore> {
        &self.cert
    }

    /// The RPC listener's configuration: a client certificate from the cluster CA is
    /// required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crate::provider())
                .build()
                .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.cert.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// The RPC client's configuration: presents this node's certificate and trusts
    /// only servers whose certificate the cluster CA issued for the address called.
    /// ALPN is left to the HTTP connector, which offers `h2`.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let config = ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(self.cert.clone());
        Ok(config)
    }
}
