//! The cluster CA and the node certificates it issues (`porcupine ca init`,
//! `porcupine cert issue`, and `porcupine up` for the embedded default).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// How long a CA made by [`init_ca`] is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// The CA's certificate and key file names inside its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// See [`CA_CERT_FILE`].
pub const CA_KEY_FILE: &str = "ca.key";

/// Where a CA's files are.
#[derive(Debug, Clone)]
pub struct CaPaths {
    /// The CA certificate (public: give it to clients and to every node).
    pub cert: PathBuf,
    /// The CA private key (keep it off the nodes if you can).
    pub key: PathBuf,
}

impl CaPaths {
    /// The files of the CA kept in `dir`.
    pub fn in_dir(dir: &Path) -> CaPaths {
        CaPaths {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }

    /// Whether both files exist.
    pub fn exist(&self) -> bool {
        self.cert.is_file() && self.key.is_file()
    }
}

/// What a node certificate is issued for.
#[derive(Debug, Clone)]
pub struct NodeCertSpec {
    /// The certificate's common name (e.g. `porcupine node 2`).
    pub common_name: String,
    /// Host names and IP addresses clients and peers use to reach the node.
    pub subject_alt_names: Vec<String>,
    /// Validity from now.
    pub validity_days: i64,
}

/// Create a new CA in `dir` (certificate 0644, key 0600). Refuses to replace an
/// existing one.
pub fn init_ca(dir: &Path, name: &str) -> Result<CaPaths, TlsError> {
    let paths = CaPaths::in_dir(dir);
    for path in [&paths.cert, &paths.key] {
        if path.exists() {
            return Err(TlsError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a CA is already there; remove it first to make a new one",
                ),
            });
        }
    }
    create_dir(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&paths.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(paths)
}

/// Issue a certificate for a node, good for both ends of TLS (server and client
/// authentication), signed by the CA at `ca`; writes `cert_path` (0644) and
/// `key_path` (0600), replacing what was there.
pub fn issue(
    ca: &CaPaths,
    spec: &NodeCertSpec,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let ca_cert_pem = read_text(&ca.cert)?;
    let ca_key_pem = read_text(&ca.key)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Pem {
        path: ca.key.clone(),
        what: format!("not a usable CA key: {e}"),
    })?;
    let issuer_params =
        CertificateParams::from_ca_cert_pem(&ca_cert_pem).map_err(|e| TlsError::Pem {
            path: ca.cert.clone(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    let issuer = issuer_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(spec.subject_alt_names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name.as_str());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, spec.validity_days);
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    if let Some(dir) = cert_path.parent() {
        create_dir(dir)?;
    }
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for clocks slightly behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days.max(1));
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Write `bytes` to `path` with `mode` (the mode is set before any byte is written,
/// so a key is never readable by others even for a moment).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // An existing file keeps its old mode through open: set it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertStore, ClusterTls};

    #[test]
    fn ca_issues_a_node_cert_that_loads_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(&dir.path().join("ca"), "test CA").unwrap();
        let spec = NodeCertSpec {
            common_name: "porcupine node 0".into(),
            subject_alt_names: vec!["localhost".into(), "127.0.0.1".into()],
            validity_days: 30,
        };
        let cert = dir.path().join("node-0.pem");
        let key = dir.path().join("node-0.key");
        issue(&ca, &spec, &cert, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&key), 0o600);
        let store = CertStore::load(&cert, &key).unwrap();
        store.server_config().unwrap();
        let cluster = ClusterTls::load(&ca.cert, &cert, &key).unwrap();
        cluster.server_config().unwrap();
        cluster.client_config().unwrap();
        // A second CA in the same place is refused.
        assert!(init_ca(&dir.path().join("ca"), "again").is_err());
    }

    #[test]
    fn mismatched_key_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(&dir.path().join("ca"), "test CA").unwrap();
        let spec = NodeCertSpec {
            common_name: "n".into(),
            subject_alt_names: vec!["localhost".into()],
            validity_days: 30,
        };
        let (c0, k0) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        let (c1, k1) = (dir.path().join("b.pem"), dir.path().join("b.key"));
        issue(&ca, &spec, &c0, &k0).unwrap();
        issue(&ca, &spec, &c1, &k1).unwrap();
        let error = CertStore::load(&c0, &k1).unwrap_err().to_string();
        assert!(error.contains("b.key"), "{error}");
        let error = CertStore::load(&dir.path().join("none.pem"), &k0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("none.pem"), "{error}");
    }
}
