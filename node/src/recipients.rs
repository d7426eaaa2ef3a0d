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
