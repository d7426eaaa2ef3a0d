#![warn(missing_docs)]
//! The account registry: who may receive and read mail, and which domains are ours.
//!
//! Reads are served from this node's local replica ([`state::RegistryState`]); writes
//! go through a [`RegistryLog`] (the Raft group in a cluster) and are applied on every
//! replica in the same order. Passwords are hashed with Argon2 before they leave the
//! admin request, so neither the log nor the state ever holds one in clear.
//!
//! Modules: [`state`] (the local replica and the commands that change it) and [`raft`]
//! (the Raft group: log and state machine on disk, peer RPC, membership upkeep).

pub mod argon;
pub mod raft;
pub mod state;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString};
use blake2::{Blake2b512, Digest};

pub use argon::{ArgonError, ArgonPool};
pub use raft::{Formation, RaftLog, RaftOptions, RaftStatus, RaftTransport};
pub use state::{RegistryCommand, RegistryOutcome, RegistryState, UserRecord};

/// Registry failures, each mapped to an HTTP status by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The address is not `local@domain` with sane characters.
    #[error("invalid address {0:?}: expected local@domain")]
    InvalidAddress(String),
    /// Empty or oversize password.
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    /// The account exists already.
    #[error("user {0} already exists")]
    UserExists(String),
    /// No such account.
    #[error("no such user {0}")]
    NoSuchUser(String),
    /// The write could not be committed now (no leader, no quorum, timeout).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The local replica could not be read or written.
    #[error("registry storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// A stored record did not decode.
    #[error("registry record: {0}")]
    Codec(#[from] postcard::Error),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

/// Where registry writes go to be ordered and replicated.
pub trait RegistryLog: Send + Sync + 'static {
    /// Commit `cmd` cluster-wide and return the outcome of applying it.
    fn submit(
        &self,
        cmd: RegistryCommand,
    ) -> impl std::future::Future<Output = Result<RegistryOutcome, RegistryError>> + Send;
}

/// Lowercase and check an address; returns the canonical `local@domain`.
pub fn canonical_address(raw: &str) -> Result<String, RegistryError> {
    let address = raw.trim().trim_start_matches('<').trim_end_matches('>');
    let address = address.to_ascii_lowercase();
    let bad = || RegistryError::InvalidAddress(raw.to_string());
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if local.is_empty()
        || domain.is_empty()
        || address.len() > 254
        || local.len() > 64
        || !local.chars().all(ok_char)
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(address)
}

/// Argon2id hash of a password, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, RegistryError> {
    check_password(password)?;
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RegistryError::Hash(e.to_string()))
}

/// How long a verified login is remembered, so a client that logs in every few
/// seconds does not pay an Argon2 verification each time (Dovecot's auth cache idea).
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// The registry as the rest of the node sees it.
pub struct Registry<L> {
    state: RegistryState,
    log: L,
    /// address -> (keyed digest of stored hash + password, when verified).
    verified: Mutex<HashMap<String, ([u8; 64], Instant)>>,
    cache_key: [u8; 32],
    /// Where every Argon2 hash and verification runs (bounded threads and memory).
    argon: ArgonPool,
    /// A hash of a random password, verified for logins of unknown users so that
    /// they take as long as a wrong password for a known one.
    dummy_hash: tokio::sync::OnceCell<String>,
}

/// How long a login waits for a free Argon2 thread by default.
pub const ARGON_WAIT_DEFAULT: Duration = Duration::from_secs(5);

impl<L: RegistryLog> Registry<L> {
    /// A registry reading `state` and writing through `log`, with an Argon2 pool of
    /// one thread per core (at least 2) and [`ARGON_WAIT_DEFAULT`].
    pub fn new(state: RegistryState, log: L) -> Self {
        Self::with_argon(state, log, ArgonPool::new(0, ARGON_WAIT_DEFAULT))
    }

    /// A registry whose password hashing and checking runs on `argon`.
    pub fn with_argon(state: RegistryState, log: L, argon: ArgonPool) -> Self {
        let cache_key: [u8; 32] = rand::random();
        Registry {
            state,
            log,
            verified: Mutex::new(HashMap::new()),
            cache_key,
            argon,
            dummy_hash: tokio::sync::OnceCell::new(),
        }
    }

    /// The local replica.
    pub fn state(&self) -> &RegistryState {
        &self.state
    }

    /// The write path.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// Create an account with a fresh Argon2 hash.
    pub async fn add_user(&self, address: &str, password: &str) -> Result<String, RegistryError> {
        let address = canonical_address(address)?;
        let hash = self.hash(password).await?;
        match self
            .log
            .submit(RegistryCommand::AddUser {
                address: address.clone(),
                password_hash: hash,
            })
            .await?
        {
            RegistryOutcome::Done => Ok(address),
            RegistryOutcome::UserExists => Err(RegistryError::UserExists(address)),
            RegistryOutcome::NoSuchUser => Err(RegistryError::NoSuchUser(address)),
        }
    }

    /// Remove an account (its stored mail stays until deleted by POP3).
    pub async fn del_user(&self, address: &str) -> Result<String, RegistryError> {
        let address = canonical_address(address)?;
        self.forget_verified(&address);
        match self
            .log
            .submit(RegistryCommand::DelUser {
                address: address.clone(),
            })
            .await?
        {
            RegistryOutcome::Done => Ok(address),
            _ => Err(RegistryError::NoSuchUser(address)),
        }
    }

    /// Replace an account's password.
    pub async fn set_password(
        &self,
        address: &str,
        password: &str,
    ) -> Result<String, RegistryError> {
        let address = canonical_address(address)?;
        let hash = self.hash(password).await?;
        self.forget_verified(&address);
        match self
            .log
            .submit(RegistryCommand::SetPassword {
                address: address.clone(),
                password_hash: hash,
            })
            .await?
        {
            RegistryOutcome::Done => Ok(address),
            _ => Err(RegistryError::NoSuchUser(address)),
        }
    }

    fn forget_verified(&self, address: &str) {
        if let Ok(mut cache) = self.verified.lock() {
            cache.remove(address);
        }
    }

    fn cache_digest(&self, hash: &str, password: &str) -> [u8; 64] {
        let mut h = Blake2b512::new();
        h.update(self.cache_key);
        h.update((hash.len() as u64).to_be_bytes());
        h.update(hash.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// A new Argon2id hash of `password`, computed on the pool.
    async fn hash(&self, password: &str) -> Result<String, RegistryError> {
        check_password(password)?;
        self.argon.hash(password).await.map_err(argon_error)
    }

    /// Check a login; `Ok(Some(canonical))` when the password matches. An unknown or
    /// malformed address costs one Argon2 verification too (against a dummy hash), so
    /// the answer takes as long as for a known user with a wrong password. Every
    /// verification waits for a thread of the pool; `Unavailable` when none came free
    /// in time.
    pub async fn verify(
        &self,
        address: &str,
        password: &str,
    ) -> Result<Option<String>, RegistryError> {
        let address = canonical_address(address).ok();
        let record = match &address {
            Some(address) => self.state.user(address)?,
            None => None,
        };
        let Some((address, record)) = address.zip(record) else {
            let dummy = self
                .dummy_hash
                .get_or_try_init(|| async {
                    let random: [u8; 16] = rand::random();
                    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
                    self.argon.hash(&password).await
                })
                .await
                .map_err(argon_error)?;
            self.argon
                .verify(dummy, password)
                .await
                .map_err(argon_error)?;
            return Ok(None);
        };
        let digest = self.cache_digest(&record.password_hash, password);
        if let Ok(cache) = self.verified.lock()
            && let Some((d, at)) = cache.get(&address)
            && *d == digest
            && at.elapsed() < VERIFIED_TTL
        {
            return Ok(Some(address));
        }
        let ok = self
            .argon
            .verify(&record.password_hash, password)
            .await
            .map_err(argon_error)?;
        if !ok {
            return Ok(None);
        }
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(address.clone(), (digest, Instant::now()));
        }
        Ok(Some(address))
    }
}

/// Argon2 pool failures as registry errors: busy or stopped is "unavailable" (`503`,
/// `-ERR [SYS/TEMP]`), a hashing failure is itself.
fn argon_error(e: ArgonError) -> RegistryError {
    match e {
        ArgonError::Hash(why) => RegistryError::Hash(why),
        ArgonError::Busy | ArgonError::Stopped => RegistryError::Unavailable(e.to_string()),
    }
}

/// The password rules of [`hash_password`].
fn check_password(password: &str) -> Result<(), RegistryError> {
    if password.is_empty() {
        return Err(RegistryError::InvalidPassword("empty"));
    }
    if password.len() > 1024 {
        return Err(RegistryError::InvalidPassword("longer than 1024 bytes"));
    }
    Ok(())
}

/// A shared log is a log too: lets the node keep its [`raft::RaftLog`] in an `Arc` for
/// RPC handling while a [`Registry`] writes through it.
impl<L: RegistryLog> RegistryLog for std::sync::Arc<L> {
    fn submit(
        &self,
        cmd: RegistryCommand,
    ) -> impl std::future::Future<Output = Result<RegistryOutcome, RegistryError>> + Send {
        L::submit(self, cmd)
    }
}

/// A registry log that applies commands to the local replica only: a cluster of one
/// without Raft, used by unit tests.
pub struct LocalLog {
    state: RegistryState,
}

impl LocalLog {
    /// Apply straight to `state`.
    pub fn new(state: RegistryState) -> Self {
        LocalLog { state }
    }
}

impl RegistryLog for LocalLog {
    async fn submit(&self, cmd: RegistryCommand) -> Result<RegistryOutcome, RegistryError> {
        self.state.apply(&cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses() {
        assert_eq!(
            canonical_address("Alice@Example.TEST").unwrap(),
            "alice@example.test"
        );
        assert_eq!(canonical_address("<bob@x.y>").unwrap(), "bob@x.y");
        for bad in ["", "alice", "@x", "a@", "a b@x", "a@x..", "a@.x", "a@x/y"] {
            assert!(
                canonical_address(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        let mut memory = Vec::new();
        assert!(argon::verify_with(&mut memory, &a, "s3cret"));
        assert!(!argon::verify_with(&mut memory, &a, "wrong"));
        assert!(hash_password("").is_err());
    }
}
