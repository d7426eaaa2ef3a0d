//! The registry's state machine: accounts, local domains, aliases and quotas in a
//! `storage` key-value tree.
//!
//! Every change is a [`RegistryCommand`] applied through [`RegistryState::apply`], so
//! the same code serves a node's local copy whether commands come from the Raft log or
//! (in tests) directly. Reads are always local.
//!
//! Layout (state format [`STATE_VERSION`], under `meta/version`; a tree without it is
//! format 1, the users-only registry, and is read as it is):
//!
//! | key | value | since |
//! | --- | --- | --- |
//! | `u/ADDRESS` | [`UserRecord`] (postcard) | 1 |
//! | `d/DOMAIN` | empty (format 1: implicit, no quota) or [`DomainRecord`] | 1 / 2 |
//! | `q/ADDRESS` | the account's [`Quota`] when it has its own | 2 |
//! | `a/SOURCE` | [`AliasRecord`]; SOURCE is `local@domain` or `@domain` (catch-all) | 2 |
//! | `meta/version` | format, u32 big-endian | 2 |
//!
//! Commands only ever gain variants at the end, and old variants keep their fields,
//! so a log or snapshot written by an older version decodes and applies unchanged.

use serde::{Deserialize, Serialize};
use storage::KvTree;

use crate::RegistryError;

/// The state format this code writes; opening an older tree upgrades it, a newer one
/// is refused.
pub const STATE_VERSION: u32 = 2;

/// One change to the registry; what the Raft log carries. Holds hashes, never passwords.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Create an account (and make its domain local if it is not).
    AddUser {
        /// Canonical address, `local@domain`, lowercase.
        address: String,
        /// Argon2 PHC string.
        password_hash: String,
    },
    /// Remove an account.
    DelUser {
        /// Canonical address.
        address: String,
    },
    /// Replace an account's password hash.
    SetPassword {
        /// Canonical address.
        address: String,
        /// Argon2 PHC string.
        password_hash: String,
    },
    /// Create an account with its own quota (format 2).
    AddAccount {
        /// Canonical address.
        address: String,
        /// Argon2 PHC string.
        password_hash: String,
        /// The account's own limits (`Default` fields follow its domain).
        quota: Quota,
    },
    /// Make a domain local, with default quotas for its accounts.
    AddDomain {
        /// Canonical domain.
        domain: String,
        /// Defaults for accounts of the domain.
        quota: Quota,
    },
    /// Remove a local domain; refused while it has accounts or aliases unless `force`,
    /// which removes them too.
    DelDomain {
        /// Canonical domain.
        domain: String,
        /// Remove the domain's accounts and aliases with it.
        force: bool,
    },
    /// Change a domain's default quotas (`None` fields stay as they are).
    SetDomainQuota {
        /// Canonical domain.
        domain: String,
        /// New default byte limit.
        bytes: Option<Limit>,
        /// New default message limit.
        messages: Option<Limit>,
    },
    /// Change an account's own quota (`None` fields stay as they are).
    SetUserQuota {
        /// Canonical address.
        address: String,
        /// New byte limit.
        bytes: Option<Limit>,
        /// New message limit.
        messages: Option<Limit>,
    },
    /// Create an alias (or a domain's catch-all, source `@domain`).
    AddAlias {
        /// Canonical `local@domain` or `@domain`.
        source: String,
        /// Canonical local addresses (accounts or aliases), sorted, deduplicated.
        targets: Vec<String>,
    },
    /// Remove an alias or catch-all.
    DelAlias {
        /// Canonical `local@domain` or `@domain`.
        source: String,
    },
}

/// What applying a command produced; deterministic on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryOutcome {
    /// The command took effect.
    Done,
    /// `AddUser` of an existing account.
    UserExists,
    /// `DelUser`/`SetPassword` of an unknown account.
    NoSuchUser,
    /// `AddDomain` of a local domain.
    DomainExists,
    /// A command naming a domain that is not local.
    NoSuchDomain,
    /// `DelDomain` without `force` of a domain that still has accounts or aliases.
    DomainInUse {
        /// Accounts of the domain.
        users: u64,
        /// Aliases of the domain (the catch-all included).
        aliases: u64,
    },
    /// `AddAlias` of an existing alias.
    AliasExists,
    /// `DelAlias` of an unknown alias.
    NoSuchAlias,
    /// An account where an alias is asked for, or an alias where an account is.
    AddressTaken,
    /// `DelDomain` with `force` done: what went with the domain.
    DomainRemoved {
        /// Accounts removed.
        users: u64,
        /// Aliases removed.
        aliases: u64,
    },
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2 PHC string.
    pub password_hash: String,
}

/// One limit of a quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// An account: its domain's default; a domain: no limit.
    #[default]
    Default,
    /// No limit (an account exempt from its domain's default).
    Unlimited,
    /// At most this many (bytes or messages).
    Max(u64),
}

impl Limit {
    /// The limit in force: this one, or `fallback` when this is `Default`.
    pub fn or(self, fallback: Limit) -> Option<u64> {
        match self {
            Limit::Max(n) => Some(n),
            Limit::Unlimited => None,
            Limit::Default => match fallback {
                Limit::Max(n) => Some(n),
                _ => None,
            },
        }
    }
}

/// Storage limits of one mailbox (an account's own, or a domain's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Total size of the mailbox's messages, in bytes.
    pub bytes: Limit,
    /// Number of messages.
    pub messages: Limit,
}

/// The limits in force for one account (after its domain's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// Most bytes, if limited.
    pub bytes_max: Option<u64>,
    /// Most messages, if limited.
    pub messages_max: Option<u64>,
}

/// A local domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Defaults for the domain's accounts.
    pub quota: Quota,
}

/// An alias: where mail for its source goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    /// Canonical local addresses (accounts or other aliases).
    pub targets: Vec<String>,
}

/// Every (key, value) of the registry tree: what a Raft snapshot carries.
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

const USER_PREFIX: &[u8] = b"u/";
const DOMAIN_PREFIX: &[u8] = b"d/";
const QUOTA_PREFIX: &[u8] = b"q/";
const ALIAS_PREFIX: &[u8] = b"a/";
const VERSION_KEY: &[u8] = b"meta/version";

/// The local replica of the registry.
#[derive(Clone)]
pub struct RegistryState {
    tree: KvTree,
}

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

/// The domain of a canonical address or catch-all source.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl RegistryState {
    /// Wrap the tree holding this node's copy.
    pub fn new(tree: KvTree) -> Self {
        RegistryState { tree }
    }

    /// The state format of the tree (1 when it predates versioning).
    pub fn version(&self) -> Result<u32, RegistryError> {
        Ok(match self.tree.get(VERSION_KEY)? {
            Some(bytes) => {
                let raw: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
                    RegistryError::Format(format!("meta/version is {} bytes", bytes.len()))
                })?;
                u32::from_be_bytes(raw)
            }
            None => 1,
        })
    }

    /// Bring an older tree to [`STATE_VERSION`]; refuse a newer one. Format 1 (users
    /// and implicit domains) is read as it is, so the upgrade only records the version.
    /// Deterministic: every replica upgrading the same state gets the same bytes.
    pub fn migrate(&self) -> Result<(), RegistryError> {
        let version = self.version()?;
        if version > STATE_VERSION {
            return Err(RegistryError::Format(format!(
                "registry state format {version} is newer than this binary's \
                 ({STATE_VERSION}); run the newer version"
            )));
        }
        if version < STATE_VERSION {
            if version == 1 {
                tracing::info!("registry state format 1 (users only): upgrading to 2");
            }
            self.tree
                .insert(VERSION_KEY, &STATE_VERSION.to_be_bytes())?;
        }
        Ok(())
    }

    /// Apply one command (idempotent outcomes: a replay gives the same state).
    pub fn apply(&self, cmd: &RegistryCommand) -> Result<RegistryOutcome, RegistryError> {
        match cmd {
            RegistryCommand::AddUser {
                address,
                password_hash,
            } => self.add_user(address, password_hash, None),
            RegistryCommand::AddAccount {
                address,
                password_hash,
                quota,
            } => self.add_user(address, password_hash, Some(quota)),
            RegistryCommand::DelUser { address } => {
                if self.user(address)?.is_none() {
                    return Ok(RegistryOutcome::NoSuchUser);
                }
                self.tree.apply(vec![
                    (key(USER_PREFIX, address), None),
                    (key(QUOTA_PREFIX, address), None),
                ])?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::SetPassword {
                address,
                password_hash,
            } => {
                if self.user(address)?.is_none() {
                    return Ok(RegistryOutcome::NoSuchUser);
                }
                let record = UserRecord {
                    password_hash: password_hash.clone(),
                };
                self.tree
                    .insert(&key(USER_PREFIX, address), &postcard::to_allocvec(&record)?)?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::AddDomain { domain, quota } => {
                if self.domain(domain)?.is_some() {
                    return Ok(RegistryOutcome::DomainExists);
                }
                let record = DomainRecord { quota: *quota };
                self.tree.insert(
                    &key(DOMAIN_PREFIX, domain),
                    &postcard::to_allocvec(&record)?,
                )?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::DelDomain { domain, force } => self.del_domain(domain, *force),
            RegistryCommand::SetDomainQuota {
                domain,
                bytes,
                messages,
            } => {
                let Some(mut record) = self.domain(domain)? else {
                    return Ok(RegistryOutcome::NoSuchDomain);
                };
                record.quota.bytes = bytes.unwrap_or(record.quota.bytes);
                record.quota.messages = messages.unwrap_or(record.quota.messages);
                self.tree.insert(
                    &key(DOMAIN_PREFIX, domain),
                    &postcard::to_allocvec(&record)?,
                )?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::SetUserQuota {
                address,
                bytes,
                messages,
            } => {
                if self.user(address)?.is_none() {
                    return Ok(RegistryOutcome::NoSuchUser);
                }
                let mut quota = self.user_quota(address)?;
                quota.bytes = bytes.unwrap_or(quota.bytes);
                quota.messages = messages.unwrap_or(quota.messages);
                self.tree
                    .insert(&key(QUOTA_PREFIX, address), &postcard::to_allocvec(&quota)?)?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::AddAlias { source, targets } => {
                if self.domain(domain_of(source))?.is_none() {
                    return Ok(RegistryOutcome::NoSuchDomain);
                }
                if self.alias(source)?.is_some() {
                    return Ok(RegistryOutcome::AliasExists);
                }
                if self.user(source)?.is_some() {
                    return Ok(RegistryOutcome::AddressTaken);
                }
                let record = AliasRecord {
                    targets: targets.clone(),
                };
                self.tree
                    .insert(&key(ALIAS_PREFIX, source), &postcard::to_allocvec(&record)?)?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::DelAlias { source } => {
                if self.alias(source)?.is_none() {
                    return Ok(RegistryOutcome::NoSuchAlias);
                }
                self.tree.remove(&key(ALIAS_PREFIX, source))?;
                Ok(RegistryOutcome::Done)
            }
        }
    }

    fn add_user(
        &self,
        address: &str,
        password_hash: &str,
        quota: Option<&Quota>,
    ) -> Result<RegistryOutcome, RegistryError> {
        if self.user(address)?.is_some() {
            return Ok(RegistryOutcome::UserExists);
        }
        if self.alias(address)?.is_some() {
            return Ok(RegistryOutcome::AddressTaken);
        }
        let record = UserRecord {
            password_hash: password_hash.to_string(),
        };
        let mut batch: Batch = vec![(
            key(USER_PREFIX, address),
            Some(postcard::to_allocvec(&record)?),
        )];
        let domain = domain_of(address);
        // Adding an account makes its domain local (as format 1 did), with no quota.
        if self.domain(domain)?.is_none() {
            batch.push((key(DOMAIN_PREFIX, domain), Some(Vec::new())));
        }
        if let Some(quota) = quota
            && *quota != Quota::default()
        {
            batch.push((
                key(QUOTA_PREFIX, address),
                Some(postcard::to_allocvec(quota)?),
            ));
        }
        self.tree.apply(batch)?;
        Ok(RegistryOutcome::Done)
    }

    fn del_domain(&self, domain: &str, force: bool) -> Result<RegistryOutcome, RegistryError> {
        if self.domain(domain)?.is_none() {
            return Ok(RegistryOutcome::NoSuchDomain);
        }
        let users = self.users_of(domain)?;
        let aliases = self.aliases_of(domain)?;
        let counts = (users.len() as u64, aliases.len() as u64);
        if !force && (counts.0 > 0 || counts.1 > 0) {
            return Ok(RegistryOutcome::DomainInUse {
                users: counts.0,
                aliases: counts.1,
            });
        }
        let mut batch: Batch = vec![(key(DOMAIN_PREFIX, domain), None)];
        for u in &users {
            batch.push((key(USER_PREFIX, u), None));
            batch.push((key(QUOTA_PREFIX, u), None));
        }
        for a in &aliases {
            batch.push((key(ALIAS_PREFIX, a), None));
        }
        self.tree.apply(batch)?;
        Ok(if force {
            RegistryOutcome::DomainRemoved {
                users: counts.0,
                aliases: counts.1,
            }
        } else {
            RegistryOutcome::Done
        })
    }

    /// The account for a canonical address, if any.
    pub fn user(&self, address: &str) -> Result<Option<UserRecord>, RegistryError> {
        match self.tree.get(&key(USER_PREFIX, address))? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The account's own quota (all `Default` when it has none).
    pub fn user_quota(&self, address: &str) -> Result<Quota, RegistryError> {
        match self.tree.get(&key(QUOTA_PREFIX, address))? {
            Some(bytes) => Ok(postcard::from_bytes(&bytes)?),
            None => Ok(Quota::default()),
        }
    }

    /// The limits in force for an account: its own, else its domain's defaults.
    pub fn effective_quota(&self, address: &str) -> Result<Effective, RegistryError> {
        let own = self.user_quota(address)?;
        let domain = self.domain(domain_of(address))?.unwrap_or_default().quota;
        Ok(Effective {
            bytes_max: own.bytes.or(domain.bytes),
            messages_max: own.messages.or(domain.messages),
        })
    }

    /// A local domain's record; `None` when the domain is not local.
    pub fn domain(&self, domain: &str) -> Result<Option<DomainRecord>, RegistryError> {
        match self.tree.get(&key(DOMAIN_PREFIX, domain))? {
            // Format 1 wrote domains as empty values: no quota.
            Some(bytes) if bytes.is_empty() => Ok(Some(DomainRecord::default())),
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The alias (or catch-all, `@domain`) for a canonical source, if any.
    pub fn alias(&self, source: &str) -> Result<Option<AliasRecord>, RegistryError> {
        match self.tree.get(&key(ALIAS_PREFIX, source))? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether mail for `domain` is ours.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool, RegistryError> {
        Ok(self.tree.get(&key(DOMAIN_PREFIX, domain))?.is_some())
    }

    /// Every account address, sorted.
    pub fn users(&self) -> Result<Vec<String>, RegistryError> {
        self.names(USER_PREFIX)
    }

    /// Every local domain, sorted.
    pub fn domains(&self) -> Result<Vec<String>, RegistryError> {
        self.names(DOMAIN_PREFIX)
    }

    /// Every alias with its targets, sorted by source.
    pub fn aliases(&self) -> Result<Vec<(String, AliasRecord)>, RegistryError> {
        self.tree
            .scan_prefix(ALIAS_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                let source = String::from_utf8_lossy(&k[ALIAS_PREFIX.len()..]).into_owned();
                Ok((source, postcard::from_bytes(&v)?))
            })
            .collect()
    }

    /// The accounts of one domain, sorted.
    pub fn users_of(&self, domain: &str) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .users()?
            .into_iter()
            .filter(|u| domain_of(u) == domain)
            .collect())
    }

    /// The aliases of one domain (its catch-all included), sorted.
    pub fn aliases_of(&self, domain: &str) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .names(ALIAS_PREFIX)?
            .into_iter()
            .filter(|a| domain_of(a) == domain)
            .collect())
    }

    fn names(&self, prefix: &[u8]) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .tree
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Every entry of the tree, for a Raft snapshot.
    pub fn export(&self) -> Result<StateEntries, RegistryError> {
        Ok(self.tree.scan_prefix(b"")?)
    }

    /// Replace the whole state, from a Raft snapshot (of any format this code reads:
    /// an older one is upgraded).
    pub fn import(&self, entries: StateEntries) -> Result<(), RegistryError> {
        self.tree.clear()?;
        self.tree
            .apply(entries.into_iter().map(|(k, v)| (k, Some(v))).collect())?;
        self.migrate()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
