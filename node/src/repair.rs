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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use membership::NodeId;
use storage::{MessageId, MessageKey};

use crate::rpc::{Request, Response};
use crate::service::Node;

/// How old a message must be before repair adds copies of it. A delivery places its
/// copies in the mail map before writing them, so a younger message may simply have
/// its other copies still in flight (or be about to be withdrawn after a 4xx);
/// copying it then would leave an extra copy.
pub const COPY_MIN_AGE: Duration = Duration::from_secs(15);

/// Tombstones that may be collected: no node holds a live copy of the message any
/// more (so every replica has the tombstone) and the message is at least `min_age`
/// old (`tombstone_min_age_secs`, default 1 h: any store of it that could still be in
/// flight, such as a slow replica write of a delivery that was answered 4xx and
/// withdrawn, has timed out long before). The caller must also know that every
/// fragment node answered and every known node is live or removed.
pub fn collectable(
    tombstones: &BTreeSet<MessageId>,
    live: &BTreeMap<MessageId, (u64, Vec<NodeId>)>,
    now_micros: u64,
    min_age: Duration,
) -> Vec<MessageId> {
    let min_age = min_age.as_micros() as u64;
    tombstones
        .iter()
        .filter(|id| !live.contains_key(id))
        .filter(|id| now_micros.saturating_sub(id.time_micros()) >= min_age)
        .copied()
        .collect()
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Figures of the last repair pass, for status and metrics.
#[derive(Default)]
pub struct RepairStats {
    /// Copies short of R seen in the last complete pass (before it repaired them).
    pub under_replicated: AtomicU64,
    /// Copies still short of R after the last pass (waiting for a down node or failed).
    pub pending: AtomicU64,
    /// Copies made by repair since start.
    pub copies_made_total: AtomicU64,
    /// Tombstones spread by repair since start.
    pub tombstones_spread_total: AtomicU64,
    /// Tombstones collected since start.
    pub tombstones_collected_total: AtomicU64,
    /// Passes completed since start.
    pub passes_total: AtomicU64,
    /// Duration of the last pass, in milliseconds.
    pub last_pass_ms: AtomicU64,
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
}

/// What the fragment nodes of one user hold.
pub struct Holdings {
    /// id -> (size, nodes holding a live copy)
    pub messages: BTreeMap<MessageId, (u64, Vec<NodeId>)>,
    /// Ids tombstoned on at least one node.
    pub tombstones: BTreeSet<MessageId>,
    /// Nodes that answered.
    pub listed: Vec<NodeId>,
}

/// List one user's fragment on every node of `map` and merge.
pub async fn gather(node: &Arc<Node>, user: &str, bucket: u16, map: &[NodeId]) -> Holdings {
    let listings = futures::future::join_all(map.iter().map(|&holder| {
        let req = Request::List {
            bucket,
            user: user.to_string(),
        };
        async move { (holder, node.call(holder, req).await) }
    }))
    .await;
    let mut h = Holdings {
        messages: BTreeMap::new(),
        tombstones: BTreeSet::new(),
        listed: Vec::new(),
    };
    for (holder, r) in listings {
        if let Ok(Response::Listing {
            messages,
            tombstones,
        }) = r
        {
            h.listed.push(holder);
            for (id, size) in messages {
                h.messages
                    .entry(id)
                    .or_insert((size, Vec::new()))
                    .1
                    .push(holder);
            }
            h.tombstones.extend(tombstones);
        } else {
            tracing::warn!(holder, %user, ?r, "listing a fragment failed");
        }
    }
    h
}

/// Run one pass over the users this node manages.
pub async fn pass(node: &Arc<Node>) -> PassReport {
    let mut report = PassReport::default();
    let view = node.cluster.view();
    let epoch = view.view.epoch;
    // The soft state must be complete and belong to the current view.
    if !node.maps_ready() || node.manager.epoch() != Some(epoch) {
        return report;
    }
    let live: BTreeSet<NodeId> = view.live.iter().copied().collect();
    let all_known_live = node.cluster.all_accounted_for();
    let wanted = node.config.replicas.clamp(1, live.len().max(1));
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
        // Tombstones win: every live copy of a deleted message is tombstoned.
        let mut deletes: BTreeMap<NodeId, Vec<MessageKey>> = BTreeMap::new();
        for (id, (_, holders)) in &h.messages {
            if h.tombstones.contains(id) {
                for &holder in holders {
                    deletes.entry(holder).or_default().push(key(*id));
                }
            }
        }
        for (holder, keys) in deletes {
            let n = keys.len() as u64;
            match node.call(holder, Request::Delete { keys }).await {
                Ok(Response::Ack) => report.tombstones_spread += n,
                other => tracing::warn!(holder, ?other, "spreading tombstones"),
            }
        }
        if all_known_live && h.listed.len() == map.len() {
            let min_age = Duration::from_secs(node.config.tombstone_min_age_secs);
            let ids = collectable(&h.tombstones, &h.messages, now_micros(), min_age);
            if !ids.is_empty() {
                let keys: Vec<MessageKey> = ids.iter().map(|id| key(*id)).collect();
                let mut all = true;
                for &n in &map {
                    let req = Request::Purge { keys: keys.clone() };
                    all &= matches!(node.call(n, req).await, Ok(Response::Ack));
                }
                if all {
                    report.tombstones_collected += keys.len() as u64;
                }
            }
        }
        let young_from = now_micros().saturating_sub(COPY_MIN_AGE.as_micros() as u64);
        for (id, (_, holders)) in &h.messages {
            if h.tombstones.contains(id) || holders.len() >= wanted {
                continue;
            }
            report.under_replicated += 1;
            if id.time_micros() > young_from {
                report.young += 1;
                report.pending += 1;
                continue;
            }
            if !all_known_live || h.listed.len() < map.len() {
                report.pending += 1;
                continue;
            }
            match copy(node, key(*id), holders, wanted - holders.len(), &view.live).await {
                Ok(made) => report.copies_made += made,
                Err(e) => {
                    tracing::warn!(%user, %id, error = %e, "re-replicating");
                    report.pending += 1;
                }
            }
        }
    }
    report
}

/// Copy one message from a holder to `count` new nodes.
async fn copy(
    node: &Arc<Node>,
    key: MessageKey,
    holders: &[NodeId],
    count: usize,
    live: &[NodeId],
) -> Result<u64, String> {
    let mut data = None;
    for &h in holders {
        if let Ok(Response::Message(Some(bytes))) =
            node.call(h, Request::Read { key: key.clone() }).await
        {
            data = Some(bytes);
            break;
        }
    }
    let data = data.ok_or("no holder could be read")?;
    let candidates: Vec<NodeId> = live
        .iter()
        .copied()
        .filter(|n| !holders.contains(n))
        .collect();
    let load = |id: NodeId| node.cluster.load_of(id);
    let targets = membership::pick_targets(
        &[],
        &candidates,
        &load,
        candidates.len().max(1),
        count,
        key.id.0[15] as u64,
    );
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
            other => return Err(format!("storing a copy on node {t}: {other:?}")),
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
        let r = pass(&node).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MICROS: u64 = 3_600_000_000;

    fn id(time_micros: u64, seq: u32) -> MessageId {
        MessageId::new(time_micros, 1, seq)
    }

    #[test]
    fn collects_only_old_tombstones_without_live_copies() {
        let now = 10 * HOUR_MICROS;
        let old_gone = id(now - 2 * HOUR_MICROS, 1);
        let old_still_live = id(now - 2 * HOUR_MICROS, 2);
        let young_gone = id(now - 60_000_000, 3);
        let tombstones: BTreeSet<MessageId> = [old_gone, old_still_live, young_gone].into();
        let live: BTreeMap<MessageId, (u64, Vec<NodeId>)> =
            [(old_still_live, (10, vec![2]))].into();
        let hour = Duration::from_secs(3600);
        assert_eq!(collectable(&tombstones, &live, now, hour), vec![old_gone]);
        assert_eq!(
            collectable(&tombstones, &live, now, Duration::from_secs(30)),
            vec![old_gone, young_gone],
            "a shorter minimum age collects the young one too"
        );
        assert!(
            collectable(&tombstones, &live, 0, hour).is_empty(),
            "clock behind: nothing is old"
        );
    }
}
