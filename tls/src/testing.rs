//! Certificates made in memory for tests of the TLS listeners: a throw-away CA, a
//! server certificate for `localhost` and `127.0.0.1`, and a client configuration
//! that trusts only that CA.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Acceptor, TlsError};

/// A server acceptor and a client configuration that trusts it.
pub struct TestTls {
    /// For the server side.
    pub acceptor: Acceptor,
    /// For the client side (no client certificate).
    pub client: Arc<ClientConfig>,
}

/// A fresh CA and a `localhost` server certificate it signed.
pub fn test_tls() -> Result<TestTls, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.der().to_vec()))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let client = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TestTls {
        acceptor: Acceptor::new(Arc::new(server), Duration::from_secs(10)),
        client: Arc::new(client),
    })
}
