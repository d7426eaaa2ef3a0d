//! Anti-entropy, driven by user managers: for every user it manages, a node compares the
//! fragments on all nodes of the user's mail map, spreads tombstones to every copy
//! that missed a delete, and re-replicates messages that have fewer than R copies.
//!
//! Re-replication waits until every known node is live or has been removed by the
//! operator (`porcupine node remove`): a node that is merely down still holds its
//! copies, and copying them elsewhere would only make work (and extra copies) that the
//! node's return would undo. The same pass repairs mail written while fewer than R
//! nodes were live (the hinted-handoff case): once enough nodes are live, the pass
//! finds those messages short of copies and adds them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use membership::NodeId;
use softstate::repair::RepairRules;
use storage::{MessageId, MessageKey};

use crate::gather::gather;
use crate::rpc::{Request, Response};
use crate::service::Node;

/// How old a message must be before repair adds copies of it. A delivery places its
/// copies in the mail map before writing them, so a younger message may simply have
/// its other copies still in flight (or be about to be withdrawn after a 4xx);
/// copying it then would leave an extra copy.
pub const COPY_MIN_AGE: Duration = Duration::from_secs(15);

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Messages seen with fewer than the wanted copies.
    pub under_replicated: u64,
    /// Copies written.
    pub copies_made: u64,
    /// Tombstones written to copies that had missed a delete.
    pub tombstones_spread: u64,
    /// Tombstones collected (every replica had them, no copy left).
    pub tombstones_collected: u64,
    /// Shortfalls left (node down, copy failed, or message too young to copy yet).
    pub pending: u64,
    /// Of `pending`, messages left alone for being younger than [`COPY_MIN_AGE`].
    pub young: u64,
    /// Copies made because a holder is draining (see [`crate::drain`]).
    pub drain_copies: u64,
    /// Messages still short of R copies outside draining nodes after this pass.
    pub drain_pending: u64,
}

/// Run one pass over the users this node manages; `None` when the soft state is not
/// (yet) complete for the current view, so no pass could run.
pub async fn pass(node: &Arc<Node>) -> Option<PassReport> {
    let mut report = PassReport::default();
    let view = node.cluster.view();
    let epoch = view.view.epoch;
    // The soft state must be complete and belong to the current view.
    if !node.maps_ready() || node.manager.epoch() != Some(epoch) {
        return None;
    }
    let live: BTreeSet<NodeId> = view.live.iter().copied().collect();
    let all_known_live = node.cluster.all_accounted_for();
    let wanted = node.config.replicas.clamp(1, live.len().max(1));
    let draining = node.drain.ids();
    for (user, map) in node.manager.snapshot() {
        if node.cluster.view().view.epoch != epoch || node.manager.epoch() != Some(epoch) {
            break; // the next view's pass takes over
        }
        let bucket = membership::bucket_of(&user, node.cluster.buckets());
        let h = gather(node, &user, bucket, &map).await;
        let key = |id: MessageId| MessageKey {
            bucket,
            user: user.clone(),
            id,
        };
        let rules = RepairRules {
            wanted_copies: wanted,
            all_known_live,
            now_micros: now_micros(),
            copy_min_age_micros: COPY_MIN_AGE.as_micros() as u64,
            tombstone_min_age_micros: node.config.tombstone_min_age_secs.saturating_mul(1_000_000),
        };
        let plan = softstate::repair::plan(&h, &rules, |id: MessageId| id.time_micros());
        let planned: BTreeSet<MessageId> = plan.copies.iter().map(|t| t.id).collect();
        report.under_replicated += plan.under_replicated;
        report.pending += plan.pending;
        report.young += plan.young;
        for (holder, ids) in plan.spread_tombstones {
            let keys: Vec<MessageKey> = ids.into_iter().map(key).collect();
            let n = keys.len() as u64;
            match node.call(holder, Request::Delete { keys }).await {
                Ok(Response::Ack) => report.tombstones_spread += n,
                other => tracing::warn!(holder, ?other, "spreading tombstones"),
            }
        }
        if !plan.collect.is_empty() {
            let keys: Vec<MessageKey> = plan.collect.iter().map(|id| key(*id)).collect();
            let mut all = true;
            for &n in &map {
                let req = Request::Purge { keys: keys.clone() };
                all &= matches!(node.call(n, req).await, Ok(Response::Ack));
            }
            if all {
                report.tombstones_collected += keys.len() as u64;
            }
        }
        for task in plan.copies {
            match copy(node, key(task.id), &task.from, task.count).await {
                Ok(made) => report.copies_made += made,
                Err(e) => {
                    tracing::warn!(%user, id = %task.id, error = %e, "re-replicating");
                    report.pending += 1;
                }
            }
        }
        if !draining.is_empty() {
            drain_user(node, &h, &planned, &draining, wanted, &key, &mut report).await;
        }
    }
    Some(report)
}

/// Copy elsewhere the messages of one user whose copies outside draining nodes are
/// fewer than `wanted` (those the plan already copies this pass wait for the next).
async fn drain_user(
    node: &Arc<Node>,
    h: &crate::gather::Holdings,
    planned: &BTreeSet<MessageId>,
    draining: &BTreeSet<NodeId>,
    wanted: usize,
    key: &impl Fn(MessageId) -> MessageKey,
    report: &mut PassReport,
) {
    let now = now_micros();
    let short: Vec<(MessageId, Vec<NodeId>, usize)> = h
        .visible()
        .filter(|(_, held)| held.holders.iter().any(|n| draining.contains(n)))
        .filter_map(|(id, held)| {
            let counted = crate::drain::counted_holders(&held.holders, draining);
            (counted < wanted).then(|| (id, held.holders.clone(), wanted - counted))
        })
        .collect();
    for (id, holders, count) in short {
        let young = now.saturating_sub(id.time_micros()) < COPY_MIN_AGE.as_micros() as u64;
        if planned.contains(&id) || young {
            report.drain_pending += 1;
            continue;
        }
        let copied = copy(node, key(id), &holders, count).await;
        if let Ok(made) = copied {
            report.drain_copies += made;
            // Counted as they are made (not at the end of the pass), so `status`
            // shows a drain's progress while a long pass runs.
            node.repair
                .drain_copies_total
                .fetch_add(made, Ordering::Relaxed);
        }
        match copied {
            Ok(made) if made as usize >= count => {}
            Ok(_) => report.drain_pending += 1,
            Err(e) => {
                tracing::warn!(%id, error = %e, "copying a message off a draining node");
                report.drain_pending += 1;
            }
        }
    }
}

/// Why a repair copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// No node holding a live copy answered a read of it.
    #[error("no holder of the message could be read")]
    NoReadableHolder,
    /// A target did not store the copy.
    #[error("storing a copy on node {node}: {reply}")]
    Store {
        /// The target node.
        node: NodeId,
        /// What it (or the RPC layer) answered.
        reply: String,
    },
}

/// Copy one message from a holder to `count` new nodes.
async fn copy(
    node: &Arc<Node>,
    key: MessageKey,
    holders: &[NodeId],
    count: usize,
) -> Result<u64, CopyError> {
    let mut data = None;
    for &h in holders {
        if let Ok(Response::Message(Some(bytes))) =
            node.call(h, Request::Read { key: key.clone() }).await
        {
            data = Some(bytes);
            break;
        }
    }
    let data = data.ok_or(CopyError::NoReadableHolder)?;
    let load = |id: NodeId| node.cluster.load_of(id);
    let mut full = node
        .cluster
        .nearly_full_nodes(node.id(), node.disk.nearly_full());
    full.extend(node.drain.ids());
    let targets = node.manager.with(|s| {
        s.set_unplaceable(full);
        s.place_copies(holders, count, &load)
    });
    let epoch = node.cluster.view().view.epoch;
    let mut made = 0;
    for t in targets {
        let req = Request::Store {
            keys: vec![key.clone()],
            data: data.clone(),
            epoch,
        };
        match node.call(t, req).await {
            Ok(Response::Ack) => {
                node.manager.add(&key.user, &[t]);
                made += 1;
            }
            other => {
                return Err(CopyError::Store {
                    node: t,
                    reply: format!("{other:?}"),
                });
            }
        }
    }
    Ok(made)
}

/// Run repair passes: shortly after every view change and then every `interval`.
pub async fn run(
    node: Arc<Node>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut views = node.cluster.subscribe();
    loop {
        // Let reconstruction finish first.
        let mut waited = Duration::ZERO;
        while !node.maps_ready() && waited < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            waited += Duration::from_millis(200);
        }
        let started = Instant::now();
        let draining_at_start: Vec<NodeId> = node.drain.ids().into_iter().collect();
        let Some(r) = pass(&node).await else {
            // Soft state not complete for this view: not a pass. Try again on the
            // next view or in a moment.
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = views.changed() => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            }
            continue;
        };
        let s = &node.repair;
        s.under_replicated
            .store(r.under_replicated, Ordering::Relaxed);
        s.pending.store(r.pending, Ordering::Relaxed);
        s.copies_made_total
            .fetch_add(r.copies_made, Ordering::Relaxed);
        s.tombstones_spread_total
            .fetch_add(r.tombstones_spread, Ordering::Relaxed);
        s.tombstones_collected_total
            .fetch_add(r.tombstones_collected, Ordering::Relaxed);
        s.passes_total.fetch_add(1, Ordering::Relaxed);
        s.drain_pending.store(r.drain_pending, Ordering::Relaxed);
        if let Ok(mut d) = s.last_pass_draining.lock() {
            *d = draining_at_start;
        }
        s.last_pass_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if r != PassReport::default() {
            tracing::info!(
                ?r,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "repair pass"
            );
        }
        let kick = node.repair_kick.notified();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = views.changed() => {},
            _ = kick => {},
            // Come back for the young ones as soon as they are old enough.
            _ = tokio::time::sleep(if r.young > 0 { COPY_MIN_AGE.min(interval) } else { interval }) => {},
        }
    }
}
