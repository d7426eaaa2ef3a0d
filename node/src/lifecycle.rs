//! The storage lifecycle seen from the node: the store's tuning from the node's
//! configuration (segment size, compaction), a compaction pass on request, and the
//! removal of a deleted user's mail from every node (`user del`).

use std::sync::Arc;
use std::time::Duration;

use membership::NodeId;
use serde::Serialize;
use storage::{CompactHook, CompactReport, CompactStep, MessageKey, StoreConfig};

use crate::config::NodeConfig;
use crate::rpc::{Request, Response};
use crate::service::Node;

/// Test knob: a compaction step name (`chunk-copied`, `copied`, `index-durable`,
/// `removed`); the node's compaction stops for good there, so an end-to-end test
/// can kill -9 the node mid-compaction. Never set in production.
pub const COMPACT_PAUSE_ENV: &str = "PORCUPINE_COMPACT_PAUSE_AT";

/// The store's configuration from the node's (`segment_size_mb`, `compact_*` keys,
/// and [`COMPACT_PAUSE_ENV`]).
pub fn store_config(config: &NodeConfig) -> anyhow::Result<StoreConfig> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&config.compact_live_ratio_min),
        "compact_live_ratio_min = {}: want a fraction from 0 (off) to 1",
        config.compact_live_ratio_min
    );
    let hook = match std::env::var(COMPACT_PAUSE_ENV) {
        Ok(name) => {
            let step = CompactStep::from_name(&name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{COMPACT_PAUSE_ENV}={name:?}: want one of chunk-copied, copied, index-durable, removed"
                )
            })?;
            Some(CompactHook(Arc::new(move |at, segment| {
                if at == step {
                    tracing::warn!(
                        step = at.name(),
                        segment,
                        "compaction paused for good ({COMPACT_PAUSE_ENV})"
                    );
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
            })))
        }
        Err(_) => None,
    };
    Ok(StoreConfig {
        segment_size_bytes_max: config.segment_size_mb.max(1) * 1024 * 1024,
        compact_live_ratio_min: config.compact_live_ratio_min,
        compact_rate_bytes_per_sec: config.compact_rate_mb_per_sec.saturating_mul(1024 * 1024),
        compact_interval_ms: config.compact_interval_secs.max(1).saturating_mul(1000),
        compact_hook: hook,
        ..StoreConfig::default()
    })
}

/// What `POST /v1/storage/compact` answers.
#[derive(Debug, Serialize)]
pub struct CompactOutcome {
    /// Segments removed.
    pub segments_removed: u64,
    /// Bytes read from them.
    pub read_bytes: u64,
    /// Live bytes copied to the log head.
    pub copied_bytes: u64,
    /// Bytes of files removed.
    pub removed_bytes: u64,
    /// Duration of the pass, in milliseconds.
    pub elapsed_ms: u64,
    /// Segment bytes on disk after the pass.
    pub segment_bytes: u64,
}

impl CompactOutcome {
    fn new(report: CompactReport, segment_bytes: u64) -> CompactOutcome {
        CompactOutcome {
            segments_removed: report.segments_removed,
            read_bytes: report.bytes_read,
            copied_bytes: report.bytes_copied,
            removed_bytes: report.bytes_removed,
            elapsed_ms: report.elapsed_ms,
            segment_bytes,
        }
    }
}

/// Run one compaction pass on this node now, over segments below `live_ratio_min`
/// (default: the configured ratio, or 0.5 when background compaction is off).
pub async fn compact_now(
    node: &Node,
    live_ratio_min: Option<f64>,
) -> Result<CompactOutcome, storage::StorageError> {
    let ratio = live_ratio_min.unwrap_or(if node.config.compact_live_ratio_min > 0.0 {
        node.config.compact_live_ratio_min
    } else {
        0.5
    });
    let report = node.store.compact(ratio).await?;
    Ok(CompactOutcome::new(
        report,
        node.store.stats().segment_bytes,
    ))
}

/// What removing one user's mail did, per node.
#[derive(Debug, Default, Serialize)]
pub struct PurgeOutcome {
    /// Messages tombstoned, over every node.
    pub messages_deleted: u64,
    /// Nodes that answered (and deleted what they held).
    pub nodes: Vec<NodeId>,
    /// Nodes that did not answer, with why: their copies stay until they do.
    pub failed: Vec<(NodeId, String)>,
}

/// Tombstone every message of `user` on every live node (not only the mail map's:
/// a map rebuilt after restarts may miss an old holder). Tombstones, not purges, so
/// a copy arriving later (a replica that was down) is ignored; the space comes back
/// with each node's next compaction pass.
pub async fn purge_user_mail(node: &Arc<Node>, user: &str) -> PurgeOutcome {
    let bucket = membership::bucket_of(user, node.cluster.buckets());
    let live: Vec<NodeId> = node.cluster.view().live.to_vec();
    let calls = live
        .iter()
        .map(|&n| async move { (n, purge_on(node, n, bucket, user).await) });
    let mut outcome = PurgeOutcome::default();
    for (n, result) in futures::future::join_all(calls).await {
        match result {
            Ok(deleted) => {
                outcome.messages_deleted += deleted;
                outcome.nodes.push(n);
            }
            Err(e) => outcome.failed.push((n, e)),
        }
    }
    outcome
}

/// List `user`'s fragment on `holder` and tombstone all of it; returns how many.
async fn purge_on(
    node: &Arc<Node>,
    holder: NodeId,
    bucket: u16,
    user: &str,
) -> Result<u64, String> {
    let listing = node
        .call(
            holder,
            Request::List {
                bucket,
                user: user.to_owned(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let messages = match listing {
        Response::Listing { messages, .. } => messages,
        other => return Err(format!("listing answered {other:?}")),
    };
    if messages.is_empty() {
        return Ok(0);
    }
    let keys: Vec<MessageKey> = messages
        .iter()
        .map(|(id, _)| MessageKey::new(bucket, user, *id))
        .collect();
    let count = keys.len() as u64;
    match node.call(holder, Request::Delete { keys }).await {
        Ok(Response::Ack) => Ok(count),
        Ok(other) => Err(format!("delete answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What `POST /v1/storage/verify` answers.
#[derive(Debug, Serialize)]
pub struct VerifyOutcome {
    /// What the scan found (before any repair).
    pub report: storage::VerifyReport,
    /// Damaged live messages replaced from a replica (`?repair=1`).
    pub repaired: Vec<MessageKey>,
    /// Damaged live messages no replica had a good copy of, with why.
    pub unrepaired: Vec<(MessageKey, String)>,
}

/// Check every record of this node's store; with `repair`, replace each damaged
/// live message with a good copy read from another live node (whose own read
/// verifies its checksum). Damaged records nothing uses are only reported (a
/// damaged header also keeps compaction off its segment, which it logs).
pub async fn verify(
    node: &Arc<Node>,
    repair: bool,
) -> Result<VerifyOutcome, storage::StorageError> {
    let report = node.store.verify().await?;
    let mut outcome = VerifyOutcome {
        report,
        repaired: Vec::new(),
        unrepaired: Vec::new(),
    };
    if !repair {
        return Ok(outcome);
    }
    let me = node.id();
    let others: Vec<NodeId> = node
        .cluster
        .view()
        .live
        .iter()
        .copied()
        .filter(|&n| n != me)
        .collect();
    let keys: Vec<MessageKey> = outcome
        .report
        .damaged
        .iter()
        .filter_map(|d| d.key.clone())
        .collect();
    for key in keys {
        let mut why = "no other live node".to_owned();
        let mut done = false;
        for &n in &others {
            match node.call(n, Request::Read { key: key.clone() }).await {
                Ok(Response::Message(Some(data))) => {
                    match node.store.replace_damaged(&key, data).await {
                        Ok(true) => {
                            tracing::info!(bucket = key.bucket, user = %key.user, id = %key.id, from = n,
                            "damaged message replaced from a replica");
                            done = true;
                            break;
                        }
                        Ok(false) => why = "the local record is no longer damaged".to_owned(),
                        Err(e) => why = format!("replacing: {e}"),
                    }
                }
                Ok(Response::Message(None)) => why = format!("node {n} holds no copy"),
                Ok(other) => why = format!("node {n}: {other:?}"),
                Err(e) => why = format!("node {n}: {e}"),
            }
        }
        if done {
            outcome.repaired.push(key);
        } else {
            outcome.unrepaired.push((key, why));
        }
    }
    Ok(outcome)
}
