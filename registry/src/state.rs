//! The registry's state machine: accounts and local domains in a `storage` key-value tree.
//!
//! Every change is a [`RegistryCommand`] applied through [`RegistryState::apply`], so
//! the same code serves a node's local copy whether commands come from the Raft log or
//! (in tests) directly. Reads are always local.

use serde::{Deserialize, Serialize};
use storage::KvTree;

use crate::RegistryError;

/// One change to the registry; what the Raft log carries. Holds hashes, never passwords.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Create an account (and make its domain local).
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
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2 PHC string.
    pub password_hash: String,
}

/// Every (key, value) of the registry tree: what a Raft snapshot carries.
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

const USER_PREFIX: &[u8] = b"u/";
const DOMAIN_PREFIX: &[u8] = b"d/";

/// The local replica of the registry.
#[derive(Clone)]
pub struct RegistryState {
    tree: KvTree,
}

fn user_key(address: &str) -> Vec<u8> {
    [USER_PREFIX, address.as_bytes()].concat()
}

fn domain_key(domain: &str) -> Vec<u8> {
    [DOMAIN_PREFIX, domain.as_bytes()].concat()
}

impl RegistryState {
    /// Wrap the tree holding this node's copy.
    pub fn new(tree: KvTree) -> Self {
        RegistryState { tree }
    }

    /// Apply one command (idempotent outcomes: a replay gives the same state).
    pub fn apply(&self, cmd: &RegistryCommand) -> Result<RegistryOutcome, RegistryError> {
        match cmd {
            RegistryCommand::AddUser {
                address,
                password_hash,
            } => {
                if self.user(address)?.is_some() {
                    return Ok(RegistryOutcome::UserExists);
                }
                let record = UserRecord {
                    password_hash: password_hash.clone(),
                };
                let value = postcard::to_allocvec(&record)?;
                let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                self.tree.apply(vec![
                    (user_key(address), Some(value)),
                    (domain_key(domain), Some(Vec::new())),
                ])?;
                Ok(RegistryOutcome::Done)
            }
            RegistryCommand::DelUser { address } => {
                if self.user(address)?.is_none() {
                    return Ok(RegistryOutcome::NoSuchUser);
                }
                self.tree.remove(&user_key(address))?;
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
                    .insert(&user_key(address), &postcard::to_allocvec(&record)?)?;
                Ok(RegistryOutcome::Done)
            }
        }
    }

    /// The account for a canonical address, if any.
    pub fn user(&self, address: &str) -> Result<Option<UserRecord>, RegistryError> {
        match self.tree.get(&user_key(address))? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether mail for `domain` is ours.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool, RegistryError> {
        Ok(self.tree.get(&domain_key(domain))?.is_some())
    }

    /// Every account address, sorted.
    pub fn users(&self) -> Result<Vec<String>, RegistryError> {
        self.names(USER_PREFIX)
    }

    /// Every local domain, sorted.
    pub fn domains(&self) -> Result<Vec<String>, RegistryError> {
        self.names(DOMAIN_PREFIX)
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

    /// Replace the whole state, from a Raft snapshot.
    pub fn import(&self, entries: StateEntries) -> Result<(), RegistryError> {
        self.tree.clear()?;
        self.tree
            .apply(entries.into_iter().map(|(k, v)| (k, Some(v))).collect())?;
        Ok(())
    }
}
