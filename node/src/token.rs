//! The admin API's bearer token: made (32 random bytes, hex, mode 0600) or read from
//! a file, the start-up rule for a non-loopback admin address, and the constant-time
//! check of an `Authorization` header. The token itself is never logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// File name of the token in a data directory (`serve`'s default, `up`'s shared one).
pub const TOKEN_FILE_NAME: &str = "admin.token";

/// Random bytes in a new token (hex-encoded: 64 characters).
const TOKEN_RANDOM_BYTES: usize = 32;

/// Largest token file read, in bytes (a token is one short line).
const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// The secret every admin request must carry as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token from its text; `None` when empty (after trimming white space).
    pub fn new(text: &str) -> Option<AdminToken> {
        let t = text.trim();
        (!t.is_empty()).then(|| AdminToken(t.to_string()))
    }

    /// The token text, for a client to send.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// True when `header` (an `Authorization` value) is `Bearer <this token>`. The
    /// token bytes are compared in constant time: every byte is looked at whatever
    /// the first difference, so timing does not reveal a matching prefix.
    pub fn matches_header(&self, header: &[u8]) -> bool {
        let Some(given) = strip_bearer(header) else {
            return false;
        };
        constant_time_eq(given, self.0.as_bytes())
    }
}

/// The credentials of `Authorization: Bearer <credentials>` (scheme case-insensitive).
fn strip_bearer(header: &[u8]) -> Option<&[u8]> {
    let scheme = header.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(header[7..].trim_ascii())
}

/// Byte-string equality whose time depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A fresh random token: 32 bytes from the OS-seeded CSPRNG, as 64 hex characters.
pub fn generate() -> AdminToken {
    let bytes: [u8; TOKEN_RANDOM_BYTES] = rand::random();
    AdminToken(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write a new random token to `path` with mode 0600, failing if the file exists.
pub fn create_file(path: &Path) -> anyhow::Result<AdminToken> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the admin token", dir.display()))?;
    }
    let token = generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the admin token file {}", path.display()))?;
    f.write_all(format!("{}\n", token.secret()).as_bytes())
        .with_context(|| format!("writing the admin token file {}", path.display()))?;
    Ok(token)
}

/// What a token file looks like on disk.
#[derive(Debug)]
pub struct TokenFile {
    /// The token it holds (`None`: the file is empty).
    pub token: Option<AdminToken>,
    /// Whether users other than the owner (group or others) may read it.
    pub readable_by_others: bool,
}

/// Read the token file at `path` (at most 4 KiB).
pub fn read_file(path: &Path) -> anyhow::Result<TokenFile> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= TOKEN_FILE_BYTES_MAX,
        "the admin token file {} is {} bytes; a token is one short line",
        path.display(),
        meta.len()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    Ok(TokenFile {
        token: AdminToken::new(&text),
        readable_by_others: meta.permissions().mode() & 0o044 != 0,
    })
}

/// True when the listen address `addr` ("host:port") is on loopback only. A name
/// other than `localhost` counts as not loopback (it could resolve anywhere).
pub fn is_loopback_listen(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return sa.ip().is_loopback();
    }
    matches!(addr.rsplit_once(':'), Some((host, _)) if host.eq_ignore_ascii_case("localhost"))
}

/// The token file `serve` uses: `admin_token_file`, else `<data>/admin.token`.
pub fn serve_token_path(admin_token_file: Option<&Path>, data: &Path) -> PathBuf {
    admin_token_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data.join(TOKEN_FILE_NAME))
}

/// The token `serve` requires on its admin API, by the start-up rule:
///
/// - admin on loopback: a missing token file is created (random, mode 0600); an
///   existing one must hold a token; one readable by others is used, with a warning;
/// - admin on any other address: the file must already exist, hold a token, and be
///   readable by its owner only. Anything else stops `serve` before it binds a port.
pub fn load_for_serve(path: &Path, admin_addr: &str) -> anyhow::Result<AdminToken> {
    let loopback = is_loopback_listen(admin_addr);
    if !path.exists() {
        if !loopback {
            bail!(
                "admin = {admin_addr:?} is not a loopback address, and its token file {} \
                 (key admin_token_file / --admin-token-file) does not exist: create it \
                 with a secret token and mode 0600 before serving admin off loopback",
                path.display()
            );
        }
        let token = create_file(path)?;
        tracing::info!(file = %path.display(), "created a new admin token file");
        return Ok(token);
    }
    let file = read_file(path)?;
    let Some(token) = file.token else {
        bail!(
            "the admin token file {} (key admin_token_file / --admin-token-file) is empty",
            path.display()
        );
    };
    if file.readable_by_others {
        if !loopback {
            bail!(
                "admin = {admin_addr:?} is not a loopback address, and its token file {} \
                 (key admin_token_file / --admin-token-file) is readable by other users: \
                 chmod 600 it",
                path.display()
            );
        }
        tracing::warn!(
            file = %path.display(),
            "the admin token file is readable by other users; chmod 600 it"
        );
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_wants_bearer_and_the_exact_token() {
        let t = AdminToken::new("abc123\n").unwrap();
        assert!(t.matches_header(b"Bearer abc123"));
        assert!(t.matches_header(b"bearer abc123"));
        assert!(!t.matches_header(b"Bearer abc12"));
        assert!(!t.matches_header(b"Bearer abc1234"));
        assert!(!t.matches_header(b"Bearer abd123"));
        assert!(!t.matches_header(b"Basic abc123"));
        assert!(!t.matches_header(b"abc123"));
        assert!(!t.matches_header(b""));
        assert!(AdminToken::new(" \n").is_none());
    }

    #[test]
    fn generated_tokens_are_64_hex_and_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.secret().len(), 64);
        assert!(a.secret().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.secret(), b.secret());
        assert_eq!(format!("{a:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback_listen("127.0.0.1:2502"));
        assert!(is_loopback_listen("127.0.0.2:0"));
        assert!(is_loopback_listen("[::1]:2502"));
        assert!(is_loopback_listen("localhost:2502"));
        assert!(!is_loopback_listen("0.0.0.0:2502"));
        assert!(!is_loopback_listen("[::]:2502"));
        assert!(!is_loopback_listen("192.0.2.1:2502"));
        assert!(!is_loopback_listen("mail.example.test:2502"));
    }

    #[test]
    fn serve_rule_creates_on_loopback_and_refuses_off_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(TOKEN_FILE_NAME);
        // Off loopback, a missing file is refused and not created.
        let e = load_for_serve(&path, "0.0.0.0:2502").unwrap_err();
        assert!(format!("{e:#}").contains("admin_token_file"), "{e:#}");
        assert!(!path.exists());
        // On loopback it is created, mode 0600, and read back the same.
        let made = load_for_serve(&path, "127.0.0.1:2502").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_for_serve(&path, "127.0.0.1:2502").unwrap();
        assert_eq!(made.secret(), again.secret());
        // A private, non-empty file is good off loopback too.
        assert!(load_for_serve(&path, "0.0.0.0:2502").is_ok());
        // World- or group-readable: refused off loopback, allowed (warned) on it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_for_serve(&path, "0.0.0.0:2502").unwrap_err();
        assert!(
            format!("{e:#}").contains("readable by other users"),
            "{e:#}"
        );
        assert!(load_for_serve(&path, "127.0.0.1:2502").is_ok());
        // Empty: refused everywhere.
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for addr in ["127.0.0.1:2502", "0.0.0.0:2502"] {
            let e = load_for_serve(&path, addr).unwrap_err();
            assert!(format!("{e:#}").contains("is empty"), "{e:#}");
        }
    }
}
