//! Where mail for one recipient goes: accounts, aliases, subaddresses (RFC 5233),
//! `postmaster` / `abuse`, and a domain's catch-all, expanded to the final mailboxes.
//!
//! For `local@domain` (canonical), in this order:
//! 1. the domain must be local, else [`Route::NotLocal`];
//! 2. an account of that address: it;
//! 3. an alias of that address: its expansion;
//! 4. with a `recipient_delimiter` in the local part (`user+tag`): steps 2–3 for the
//!    part before the first delimiter (`user`);
//! 5. `postmaster` or `abuse` (also as the base of a subaddress): the configured
//!    `postmaster` account's expansion; with none configured, [`Route::NoPostmaster`]
//!    (the node answers `451 4.3.0` and logs: the mail stays queued at the sender
//!    until an operator adds the account, an alias or the key);
//! 6. the domain's catch-all (`@domain`): its expansion;
//! 7. else [`Route::Unknown`].
//!
//! The bare `postmaster` of RFC 5321 §4.5.1 is `postmaster@` the node's host name
//! when that is a local domain, else the configured `postmaster`.
//!
//! An expansion follows alias targets breadth first, each address once (a loop ends
//! where it started), at most [`ALIAS_DEPTH_MAX`] aliases deep and
//! [`ALIAS_MAILBOXES_MAX`] final mailboxes wide; beyond either the recipient is
//! [`Route::Unroutable`]. A target that is neither an account nor an alias (removed
//! since) is skipped. Final mailboxes come back sorted and deduplicated: one stored
//! copy each.

use std::collections::{BTreeSet, VecDeque};

use crate::RegistryError;
use crate::state::{RegistryState, domain_of};

/// Deepest chain of aliases followed.
pub const ALIAS_DEPTH_MAX: usize = 8;
/// Most final mailboxes one recipient expands to.
pub const ALIAS_MAILBOXES_MAX: usize = 100;

/// What the node's configuration adds to the registry when routing.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// Subaddress separator (`+`); empty disables subaddressing.
    pub recipient_delimiter: String,
    /// Where `postmaster@` and `abuse@` every local domain go when the domain has no
    /// such account or alias (canonical address of an account or alias).
    pub postmaster: Option<String>,
    /// The node's host name: the domain of the bare `postmaster`.
    pub hostname: String,
}

/// Where one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// These accounts, sorted, distinct, never empty.
    Mailboxes(Vec<String>),
    /// The domain is not local (`550 5.7.1`).
    NotLocal,
    /// A local domain but nobody there (`550 5.1.1`).
    Unknown,
    /// `postmaster` / `abuse` with nowhere configured to send it (`451 4.3.0`).
    NoPostmaster,
    /// The expansion broke a bound (`550 5.4.6`); the text says which.
    Unroutable(String),
}

/// Route `address`: a canonical `local@domain`, or the bare `postmaster`.
pub fn route(
    state: &RegistryState,
    config: &RouteConfig,
    address: &str,
) -> Result<Route, RegistryError> {
    if address.eq_ignore_ascii_case("postmaster") {
        let host = config.hostname.to_ascii_lowercase();
        if state.is_local_domain(&host)? {
            return route(state, config, &format!("postmaster@{host}"));
        }
        return configured_postmaster(state, config);
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Ok(Route::Unknown);
    };
    if !state.is_local_domain(domain)? {
        return Ok(Route::NotLocal);
    }
    if let Some(route) = exact(state, address)? {
        return Ok(route);
    }
    let mut base = local;
    if !config.recipient_delimiter.is_empty()
        && let Some((before, _tag)) = local.split_once(config.recipient_delimiter.as_str())
        && !before.is_empty()
    {
        base = before;
        if let Some(route) = exact(state, &format!("{before}@{domain}"))? {
            return Ok(route);
        }
    }
    if base == "postmaster" || base == "abuse" {
        return configured_postmaster(state, config);
    }
    if state.alias(&format!("@{domain}"))?.is_some() {
        return expand(state, &format!("@{domain}"));
    }
    Ok(Route::Unknown)
}

/// An account or alias of exactly `address`.
fn exact(state: &RegistryState, address: &str) -> Result<Option<Route>, RegistryError> {
    if state.user(address)?.is_some() {
        return Ok(Some(Route::Mailboxes(vec![address.to_string()])));
    }
    if state.alias(address)?.is_some() {
        return expand(state, address).map(Some);
    }
    Ok(None)
}

fn configured_postmaster(
    state: &RegistryState,
    config: &RouteConfig,
) -> Result<Route, RegistryError> {
    match &config.postmaster {
        Some(target) => match expand(state, target)? {
            Route::Unknown => Ok(Route::NoPostmaster),
            other => Ok(other),
        },
        None => Ok(Route::NoPostmaster),
    }
}

/// Expand an account or alias to its final mailboxes (see the module doc).
pub fn expand(state: &RegistryState, start: &str) -> Result<Route, RegistryError> {
    let mut seen = BTreeSet::from([start.to_string()]);
    let mut queue = VecDeque::from([(start.to_string(), 0usize)]);
    let mut mailboxes = BTreeSet::new();
    while let Some((address, depth)) = queue.pop_front() {
        if state.user(&address)?.is_some() {
            mailboxes.insert(address);
            if mailboxes.len() > ALIAS_MAILBOXES_MAX {
                return Ok(Route::Unroutable(format!(
                    "{start} expands to more than {ALIAS_MAILBOXES_MAX} mailboxes"
                )));
            }
            continue;
        }
        let Some(alias) = state.alias(&address)? else {
            if address != start {
                tracing::debug!(%start, target = %address, "alias target gone; skipped");
            }
            continue;
        };
        if depth >= ALIAS_DEPTH_MAX {
            return Ok(Route::Unroutable(format!(
                "{start}: aliases nested deeper than {ALIAS_DEPTH_MAX}"
            )));
        }
        for target in alias.targets {
            if seen.insert(target.clone()) {
                queue.push_back((target, depth + 1));
            }
        }
    }
    if mailboxes.is_empty() {
        return Ok(Route::Unknown);
    }
    Ok(Route::Mailboxes(mailboxes.into_iter().collect()))
}

/// Whether `address` (canonical) is an account or alias whose domain is local: what
/// an alias target must be.
pub fn is_local_target(state: &RegistryState, address: &str) -> Result<bool, RegistryError> {
    Ok(state.is_local_domain(domain_of(address))?
        && (state.user(address)?.is_some() || state.alias(address)?.is_some()))
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
