//! From an RCPT address to final mailboxes: the node's side of
//! [`registry::resolve`] (its `postmaster` and `recipient_delimiter` keys, the SMTP
//! form of addresses), used by the delivery proxy at RCPT and again at end of DATA.

use registry::resolve::{Route, RouteConfig};

use crate::service::Node;

/// The routing settings of this node's configuration.
pub fn route_config(node: &Node) -> RouteConfig {
    let postmaster = node.config.postmaster.as_deref().and_then(|p| {
        registry::canonical_address(p)
            .inspect_err(|e| tracing::warn!(error = %e, "the postmaster key is not an address"))
            .ok()
    });
    RouteConfig {
        recipient_delimiter: node.config.recipient_delimiter.clone(),
        postmaster,
        hostname: node.config.hostname.clone(),
    }
}

/// Where mail for `address` (as the SMTP session hands it over: without `<>`, the
/// local part unquoted; or the bare `postmaster`) goes.
pub fn route(node: &Node, address: &str) -> Result<Route, registry::RegistryError> {
    let state = node.registry.state();
    let config = route_config(node);
    if address.eq_ignore_ascii_case("postmaster") {
        return registry::resolve::route(state, &config, "postmaster");
    }
    let canonical = match registry::address::canonical_smtp(address) {
        Ok(a) => a,
        Err(rule) => {
            // An account written under rules since tightened (`x@-bad-.test`) still
            // receives mail; anything else that breaks a rule is nobody.
            let legacy = address.to_ascii_lowercase();
            if state.user(&legacy)?.is_some() {
                return Ok(Route::Mailboxes(vec![legacy]));
            }
            tracing::debug!(%address, %rule, "recipient address refused");
            return Ok(Route::Unknown);
        }
    };
    let route = registry::resolve::route(state, &config, &canonical)?;
    if route == Route::NoPostmaster {
        tracing::warn!(
            %address,
            "mail for postmaster/abuse with no account, alias or `postmaster` key to take it; \
             answering 451 (set `postmaster` in node.toml or add an alias)"
        );
    }
    Ok(route)
}

/// Characters a `recipient_delimiter` may hold: `atext` specials except the dot (a
/// dot separates atoms), so `user<delim>tag` stays a dot-atom.
const DELIMITER_CHARS: &str = "!#$%&'*+-/=?^_`{|}~";

/// Check the `postmaster` and `recipient_delimiter` keys before a node starts.
pub fn check_keys(config: &crate::config::NodeConfig) -> Result<(), String> {
    if let Some(p) = &config.postmaster {
        registry::canonical_address(p).map_err(|e| format!("postmaster = {p:?}: {e}"))?;
    }
    let d = &config.recipient_delimiter;
    if d.len() > 4 || d.chars().any(|c| !DELIMITER_CHARS.contains(c)) {
        return Err(format!(
            "recipient_delimiter = {d:?}: use up to 4 of {DELIMITER_CHARS} (\"\" disables \
             subaddressing)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let mut c = crate::config::NodeConfig::default();
        assert_eq!(check_keys(&c), Ok(()));
        c.recipient_delimiter = String::new();
        assert_eq!(check_keys(&c), Ok(()));
        c.recipient_delimiter = "-".into();
        assert_eq!(check_keys(&c), Ok(()));
        c.recipient_delimiter = ".".into();
        assert!(check_keys(&c).is_err());
        c.recipient_delimiter = "a".into();
        assert!(check_keys(&c).is_err());
        c.recipient_delimiter = "+".into();
        c.postmaster = Some("admin@x.test".into());
        assert_eq!(check_keys(&c), Ok(()));
        c.postmaster = Some("admin@-x.test".into());
        assert!(check_keys(&c).unwrap_err().contains("RFC 1035"));
    }
}
