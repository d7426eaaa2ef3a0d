//! Until the account registry exists on this node: form it (`bootstrap_expect`), or
//! say in the log what the node waits for, so a cluster that never formed a registry
//! is never silent about it.

use std::sync::Arc;
use std::time::Duration;

use registry::Formation;
use tokio::sync::watch;

use crate::service::Node;

/// How often formation is retried.
const STEP: Duration = Duration::from_secs(1);
/// How often an unchanged waiting state is logged again.
const REPEAT: Duration = Duration::from_secs(30);
/// How long a node with neither `bootstrap` nor `bootstrap_expect` waits to be added
/// to a registry before it warns.
const JOIN_PATIENCE: Duration = Duration::from_secs(20);

/// Run until this node belongs to a registry (or shutdown).
pub async fn run(node: Arc<Node>, expect: usize, mut shutdown: watch::Receiver<bool>) {
    let started = tokio::time::Instant::now();
    let mut last: Option<(String, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(STEP) => {}
        }
        let live: Vec<(u64, String)> = node
            .cluster
            .view()
            .view
            .members
            .iter()
            .map(|m| (m.id, m.rpc.clone()))
            .collect();
        let said = if expect > 0 {
            match node.registry.log().form(&live, expect).await {
                Ok(Formation::Member) => return,
                Ok(Formation::Initialised) => {
                    tracing::info!(
                        expect,
                        nodes = ?live.iter().map(|m| m.0).collect::<Vec<_>>(),
                        "account registry initialised here (bootstrap_expect met, lowest id in the view)"
                    );
                    return;
                }
                Ok(Formation::Waiting { have, want }) => format!(
                    "registry not formed yet: waiting for bootstrap_expect = {want} nodes to see each other (view has {have}: {:?})",
                    live.iter().map(|m| m.0).collect::<Vec<_>>()
                ),
                Ok(Formation::Deferred { to }) => format!(
                    "registry not formed yet: node {to}, the lowest id in the view, initialises it"
                ),
                Ok(Formation::Joining { peer }) => format!(
                    "a registry exists (node {peer} belongs to it): waiting for its leader to add this node"
                ),
                Ok(Formation::Unsure { peer, why }) => format!(
                    "registry not formed yet: cannot tell whether node {peer} belongs to a registry ({why})"
                ),
                Err(e) => format!("registry formation failed: {e}"),
            }
        } else {
            if !node.registry.log().status().voter_ids.is_empty() {
                return;
            }
            if started.elapsed() < JOIN_PATIENCE {
                continue;
            }
            "this node belongs to no account registry yet and will not create one (neither `bootstrap` nor `bootstrap_expect` is set): set `bootstrap_expect = N` (the number of nodes) on every node, or `bootstrap = true` on exactly one".to_string()
        };
        let repeat = match &last {
            Some((text, at)) => *text != said || at.elapsed() >= REPEAT,
            None => true,
        };
        if repeat {
            if expect > 0 {
                tracing::info!("{said}");
            } else {
                tracing::warn!("{said}");
            }
            last = Some((said, tokio::time::Instant::now()));
        }
    }
}
