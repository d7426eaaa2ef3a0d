#![warn(missing_docs)]
//! The account registry: who may receive and read mail, and which domains are ours.
//!
//! Reads are served from this node's local replica ([`state::RegistryState`]); writes
//! go through a [`RegistryLog`] (the Raft group in a cluster) and are applied on every
//! replica in the same order. Passwords are hashed with Argon2 before they leave the
//! admin request, so neither the log nor the state ever holds one in clear.
//!
//! Modules: [`state`] (the local replica and the commands that change it), [`address`]
//! (RFC 5321/5322 address and domain checks), [`resolve`] (recipient routing: aliases,
//! subaddresses, postmaster, catch-all) and [`raft`] (the Raft group: log and state
//! machine on disk, peer RPC, membership upkeep).

pub mod address;
pub mod argon;
pub mod raft;
pub mod resolve;
pub mod state;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString};
use blake2::{Blake2b512, Digest};

pub use address::{AddressError, canonical_domain};
pub use argon::{ArgonError, ArgonPool};
pub use raft::{Formation, RaftLog, RaftOptions, RaftStatus, RaftTransport};
pub use state::{Limit, Quota, RegistryCommand, RegistryOutcome, RegistryState, UserRecord};

/// Registry failures, each mapped to an HTTP status by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The address breaks a rule of RFC 5321/5322/1035 (named in the text).
    #[error("invalid address {address:?}: {rule}")]
    InvalidAddress {
        /// As given.
        address: String,
        /// The rule it breaks.
        rule: AddressError,
    },
    /// The domain name breaks a rule of RFC 1035 (named in the text).
    #[error("invalid domain {domain:?}: {rule}")]
    InvalidDomain {
        /// As given.
        domain: String,
        /// The rule it breaks.
        rule: AddressError,
    },
    /// The domain is local already.
    #[error("domain {0} already exists")]
    DomainExists(String),
    /// The domain is not local.
    #[error("no such domain {0} (add it with `porcupine domain add`)")]
    NoSuchDomain(String),
    /// `domain del` of a domain that still has accounts or aliases.
    #[error(
        "domain {domain} still has {users} account(s) and {aliases} alias(es); delete \
         them first or pass --force to delete them with the domain"
    )]
    DomainInUse {
        /// The domain.
        domain: String,
        /// Its accounts.
        users: u64,
        /// Its aliases.
        aliases: u64,
    },
    /// The alias exists already.
    #[error("alias {0} already exists")]
    AliasExists(String),
    /// No such alias.
    #[error("no such alias {0}")]
    NoSuchAlias(String),
    /// An alias where an account is, or the other way round.
    #[error("{0} is already an account or an alias")]
    AddressTaken(String),
    /// An alias target that is not a local account or alias.
    #[error(
        "alias target {0} is not a local account or alias (mail is only forwarded to local mailboxes)"
    )]
    BadTarget(String),
    /// An alias without targets, or with too many.
    #[error("an alias needs 1 to {max} targets, got {got}")]
    TargetCount {
        /// Targets given.
        got: usize,
        /// The most allowed.
        max: usize,
    },
    /// The stored state is of a format this binary cannot read.
    #[error("registry state: {0}")]
    Format(String),
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

/// Check a written address (RFC 5321/5322, see [`address`]); returns the canonical
/// `local@domain` (lowercase, the local part unquoted).
pub fn canonical_address(raw: &str) -> Result<String, RegistryError> {
    address::canonical_address(raw).map_err(|rule| RegistryError::InvalidAddress {
        address: raw.to_string(),
        rule,
    })
}

/// Check a domain name (RFC 1035 labels and lengths); returns it lowercase.
pub fn checked_domain(raw: &str) -> Result<String, RegistryError> {
    address::canonical_domain(raw).map_err(|rule| RegistryError::InvalidDomain {
        domain: raw.to_string(),
        rule,
    })
}

/// Check an alias source: `local@domain`, or `@domain` for the domain's catch-all.
pub fn canonical_source(raw: &str) -> Result<String, RegistryError> {
    match address::catch_all_domain(raw) {
        Some(domain) => {
            domain
                .map(|d| format!("@{d}"))
                .map_err(|rule| RegistryError::InvalidAddress {
                    address: raw.to_string(),
                    rule,
                })
        }
        None => canonical_address(raw),
    }
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

    /// Create an account with a fresh Argon2 hash (its domain becomes local if it is
    /// not; a new domain has no quota).
    pub async fn add_user(&self, address: &str, password: &str) -> Result<String, RegistryError> {
        self.add_account(address, password, Quota::default()).await
    }

    /// Create an account with its own quota (`Default` limits follow the domain's).
    pub async fn add_account(
        &self,
        address: &str,
        password: &str,
        quota: Quota,
    ) -> Result<String, RegistryError> {
        let address = canonical_address(address)?;
        let hash = self.hash(password).await?;
        // Format 1's command when there is nothing format 2 adds: a log that a
        // rolled-back binary might still read.
        let cmd = if quota == Quota::default() {
            RegistryCommand::AddUser {
                address: address.clone(),
                password_hash: hash,
            }
        } else {
            RegistryCommand::AddAccount {
                address: address.clone(),
                password_hash: hash,
                quota,
            }
        };
        let outcome = self.log.submit(cmd).await?;
        done(outcome, &address)
    }

    /// Change an account's own limits (`None` leaves a limit as it is).
    pub async fn set_user_quota(
        &self,
        address: &str,
        bytes: Option<Limit>,
        messages: Option<Limit>,
    ) -> Result<String, RegistryError> {
        let address = canonical_address(address)?;
        let outcome = self
            .log
            .submit(RegistryCommand::SetUserQuota {
                address: address.clone(),
                bytes,
                messages,
            })
            .await?;
        done(outcome, &address)
    }

    /// Make a domain local, with default limits for its accounts.
    pub async fn add_domain(&self, domain: &str, quota: Quota) -> Result<String, RegistryError> {
        let domain = checked_domain(domain)?;
        let outcome = self
            .log
            .submit(RegistryCommand::AddDomain {
                domain: domain.clone(),
                quota,
            })
            .await?;
        done(outcome, &domain)
    }

    /// Change a domain's default limits (`None` leaves a limit as it is).
    pub async fn set_domain_quota(
        &self,
        domain: &str,
        bytes: Option<Limit>,
        messages: Option<Limit>,
    ) -> Result<String, RegistryError> {
        let domain = checked_domain(domain)?;
        let outcome = self
            .log
            .submit(RegistryCommand::SetDomainQuota {
                domain: domain.clone(),
                bytes,
                messages,
            })
            .await?;
        done(outcome, &domain)
    }

    /// Remove a local domain: refused while it has accounts or aliases unless `force`.
    /// Returns the domain and how many accounts and aliases went with it.
    pub async fn del_domain(
        &self,
        domain: &str,
        force: bool,
    ) -> Result<(String, u64, u64), RegistryError> {
        // A domain written by format 1 may break today's rules (`-bad-.test`): it can
        // still be deleted, so it is only lowercased here.
        let domain = domain.trim().to_ascii_lowercase();
        let users = self.state.users_of(&domain)?;
        for u in &users {
            self.forget_verified(u);
        }
        match self
            .log
            .submit(RegistryCommand::DelDomain {
                domain: domain.clone(),
                force,
            })
            .await?
        {
            RegistryOutcome::DomainRemoved { users, aliases } => Ok((domain, users, aliases)),
            outcome => done(outcome, &domain).map(|d| (d, 0, 0)),
        }
    }

    /// Create an alias (`source` `local@domain`, or `@domain` for a catch-all) to local
    /// accounts or aliases.
    pub async fn add_alias(
        &self,
        source: &str,
        targets: &[String],
    ) -> Result<(String, Vec<String>), RegistryError> {
        let source = canonical_source(source)?;
        if targets.is_empty() || targets.len() > resolve::ALIAS_MAILBOXES_MAX {
            return Err(RegistryError::TargetCount {
                got: targets.len(),
                max: resolve::ALIAS_MAILBOXES_MAX,
            });
        }
        let mut canonical = Vec::with_capacity(targets.len());
        for t in targets {
            let t = canonical_address(t)?;
            if t == source || !resolve::is_local_target(&self.state, &t)? {
                return Err(RegistryError::BadTarget(t));
            }
            canonical.push(t);
        }
        canonical.sort();
        canonical.dedup();
        let outcome = self
            .log
            .submit(RegistryCommand::AddAlias {
                source: source.clone(),
                targets: canonical.clone(),
            })
            .await?;
        done(outcome, &source).map(|s| (s, canonical))
    }

    /// Remove an alias or catch-all.
    pub async fn del_alias(&self, source: &str) -> Result<String, RegistryError> {
        let source = canonical_source(source)?;
        let outcome = self
            .log
            .submit(RegistryCommand::DelAlias {
                source: source.clone(),
            })
            .await?;
        done(outcome, &source)
    }

    /// Remove an account (its stored mail stays until deleted by POP3).
    pub async fn del_user(&self, address: &str) -> Result<String, RegistryError> {
        let address = self.existing_address(address)?;
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
        let address = self.existing_address(address)?;
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

    /// The canonical form of an address that names an account or alias: checked as
    /// [`canonical_address`] does, except that an account written by format 1 under
    /// rules since tightened (`x@-bad-.test`) is still found by its lowercase text, so
    /// it can log in, be changed and be deleted (never created).
    pub fn existing_address(&self, raw: &str) -> Result<String, RegistryError> {
        match canonical_address(raw) {
            Ok(address) => Ok(address),
            Err(e) => {
                let legacy = raw.trim().to_ascii_lowercase();
                if self.state.user(&legacy)?.is_some() {
                    Ok(legacy)
                } else {
                    Err(e)
                }
            }
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
        let address = self.existing_address(address).ok();
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

/// `Ok(subject)` for `Done`, else the error the outcome means.
fn done(outcome: RegistryOutcome, subject: &str) -> Result<String, RegistryError> {
    let s = subject.to_string();
    Err(match outcome {
        RegistryOutcome::Done => return Ok(s),
        RegistryOutcome::UserExists => RegistryError::UserExists(s),
        RegistryOutcome::NoSuchUser => RegistryError::NoSuchUser(s),
        RegistryOutcome::DomainExists => RegistryError::DomainExists(s),
        RegistryOutcome::NoSuchDomain => RegistryError::NoSuchDomain(
            subject
                .rsplit_once('@')
                .map_or(subject, |(_, d)| d)
                .to_string(),
        ),
        RegistryOutcome::DomainInUse { users, aliases } => RegistryError::DomainInUse {
            domain: s,
            users,
            aliases,
        },
        RegistryOutcome::AliasExists => RegistryError::AliasExists(s),
        RegistryOutcome::NoSuchAlias => RegistryError::NoSuchAlias(s),
        RegistryOutcome::AddressTaken => RegistryError::AddressTaken(s),
        RegistryOutcome::DomainRemoved { .. } => return Ok(s),
    })
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
        for bad in [
            "",
            "alice",
            "@x",
            "a@",
            "a b@x",
            "a@x..",
            "a@.x",
            "a@x/y",
            "x@-bad-.test",
        ] {
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
