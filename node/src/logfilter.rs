//! What the node's log leaves out: openraft's `ERROR openraft::replication: RPCError`,
//! logged for every AppendEntries to a peer that is down, still starting or slow to
//! answer (a node restarting, a rejoin, a `kill -9`). Those are normal cluster events:
//! membership logs the view change at INFO, and openraft logs the same failure at WARN
//! right before (`error replication to target=N error=...`), so nothing is lost but an
//! ERROR line that is not one. openraft's storage errors (same target, field `error`)
//! stay ERROR.

use tracing::{Level, Metadata};

/// Whether an event is openraft's per-peer replication RPC failure at ERROR (its
/// callsite: target `openraft::replication`, level ERROR, a field named `err`).
pub fn is_peer_rpc_error(target: &str, level: &Level, field_names: &[&str]) -> bool {
    *level == Level::ERROR && target == "openraft::replication" && field_names.contains(&"err")
}

/// The per-layer filter for the node's log output: every event but
/// [`is_peer_rpc_error`] ones.
pub fn keep(meta: &Metadata<'_>) -> bool {
    let names: Vec<&str> = meta.fields().iter().map(|f| f.name()).collect();
    !is_peer_rpc_error(meta.target(), meta.level(), &names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_replication_rpc_error_is_left_out() {
        assert!(is_peer_rpc_error(
            "openraft::replication",
            &Level::ERROR,
            &["message", "err"]
        ));
        // Storage errors of replication, other targets and levels stay.
        assert!(!is_peer_rpc_error(
            "openraft::replication",
            &Level::ERROR,
            &["message", "error"]
        ));
        assert!(!is_peer_rpc_error(
            "openraft::replication",
            &Level::WARN,
            &["message", "err"]
        ));
        assert!(!is_peer_rpc_error(
            "openraft::core",
            &Level::ERROR,
            &["message", "err"]
        ));
        assert!(!is_peer_rpc_error("node::serve", &Level::ERROR, &["err"]));
    }
}
