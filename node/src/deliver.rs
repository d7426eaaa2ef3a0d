//! The delivery proxy: what the SMTP front end calls. Checks recipients against the
//! registry, asks each recipient's user manager where to store, writes the copies and
//! returns only when every copy is durable.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use membership::{Epoch, NodeId};
use smtp::{DeliverError, Envelope, RcptVerdict};
use storage::MessageKey;

use crate::rpc::{Request, Response, Unready};
use crate::service::Node;
use registry::resolve::Route;
use softstate::Refused;

/// Most distinct mailboxes one message is stored for, after alias expansion (each
/// recipient expands to at most `registry::resolve::ALIAS_MAILBOXES_MAX`).
pub const MESSAGE_MAILBOXES_MAX: usize = 1000;

/// Implements [`smtp::Deliver`] for a node.
pub struct DeliveryProxy(pub Arc<Node>);

impl DeliveryProxy {
    async fn place(&self, user: &str, bucket: u16) -> Result<(Vec<NodeId>, Epoch), DeliverError> {
        let node = &self.0;
        // A view change may be under way: the manager answers NotReady or is
        // unreachable for a moment. Retry briefly, then let the sender retry (4xx).
        let mut last = String::new();
        for attempt in 0..20 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
            let view = node.cluster.view();
            let manager = view.map.manager(bucket);
            let req = Request::Place {
                user: user.to_string(),
                bucket,
                replicas: node.config.replicas.min(255) as u8,
            };
            match node.call(manager, req).await {
                Ok(Response::Targets { targets, epoch }) if !targets.is_empty() => {
                    return Ok((targets, epoch));
                }
                Ok(Response::NotReady(Unready::Refused(Refused::NoSpace))) => {
                    tracing::warn!(%user, manager, "every node's disk is nearly full; answering 452");
                    return Err(DeliverError::NoSpace(
                        "insufficient system storage, try again later".into(),
                    ));
                }
                Ok(other) => last = format!("manager {manager}: {other:?}"),
                Err(e) => last = format!("manager {manager}: {e}"),
            }
        }
        tracing::warn!(%user, reason = %last, "no placement; answering 4xx");
        Err(DeliverError::Temporary(
            "mailbox temporarily unavailable (cluster reconfiguring), try again later".into(),
        ))
    }
}

impl DeliveryProxy {
    /// The final mailboxes of every envelope recipient, deduplicated (one stored copy
    /// each), after the quota check with the message's size: a recipient whose every
    /// mailbox is full fails the whole message (`552 5.2.2`, nothing stored); a full
    /// member of an alias with others that have room is left out (and logged).
    async fn mailboxes(
        &self,
        envelope: &Envelope,
        size_bytes: u64,
    ) -> Result<Vec<String>, DeliverError> {
        let node = &self.0;
        let mut users = std::collections::BTreeSet::new();
        for rcpt in &envelope.rcpt_to {
            let boxes = match crate::recipients::route(node, rcpt) {
                Ok(Route::Mailboxes(boxes)) => boxes,
                Ok(other) => {
                    // Changed since RCPT (an account or alias removed meanwhile).
                    tracing::warn!(%rcpt, ?other, "recipient no longer routes; left out");
                    continue;
                }
                Err(e) => return Err(DeliverError::Temporary(e.to_string())),
            };
            let checks = futures::future::join_all(
                boxes
                    .iter()
                    .map(|b| crate::quota::check(node, b, Some(size_bytes))),
            )
            .await;
            let mut full = Vec::new();
            let mut room = 0;
            for (b, check) in boxes.iter().zip(checks) {
                match check {
                    Ok(()) => {
                        room += 1;
                        users.insert(b.clone());
                    }
                    Err(why) => full.push(why),
                }
            }
            if room == 0 && !full.is_empty() {
                return Err(DeliverError::OverQuota(full.join("; ")));
            }
            for why in full {
                tracing::warn!(%rcpt, %why, "alias member over quota; left out");
            }
            if users.len() > MESSAGE_MAILBOXES_MAX {
                return Err(DeliverError::Permanent(format!(
                    "the recipients expand to more than {MESSAGE_MAILBOXES_MAX} mailboxes"
                )));
            }
        }
        Ok(users.into_iter().collect())
    }
}

impl smtp::Deliver for DeliveryProxy {
    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        let node = &self.0;
        let boxes = match crate::recipients::route(node, address) {
            Ok(Route::Mailboxes(boxes)) => boxes,
            Ok(Route::NotLocal) => return RcptVerdict::RelayDenied,
            Ok(Route::Unknown) => return RcptVerdict::UnknownUser,
            Ok(Route::NoPostmaster) => {
                return RcptVerdict::TempFail(
                    "no postmaster configured here yet, try again later".into(),
                );
            }
            Ok(Route::Unroutable(why)) => return RcptVerdict::Unroutable(why),
            Err(e) => return RcptVerdict::TempFail(e.to_string()),
        };
        // Refused now only when every mailbox it reaches is known to be full.
        let checks =
            futures::future::join_all(boxes.iter().map(|b| crate::quota::check(node, b, None)))
                .await;
        let full: Vec<String> = checks.into_iter().filter_map(Result::err).collect();
        if full.len() == boxes.len() {
            return RcptVerdict::OverQuota(full.join("; "));
        }
        RcptVerdict::Accept
    }

    async fn deliver(&self, envelope: &Envelope, message: Bytes) -> Result<(), DeliverError> {
        let node = &self.0;
        let id = node.next_message_id();
        let users = self.mailboxes(envelope, message.len() as u64).await?;
        if users.is_empty() {
            return Err(DeliverError::Permanent("no valid recipients".into()));
        }
        let placements = futures::future::join_all(users.iter().map(|u| {
            let bucket = membership::bucket_of(u, node.cluster.buckets());
            async move { (u, bucket, self.place(u, bucket).await) }
        }))
        .await;
        // Each store carries the oldest epoch its keys were placed in: a holder whose
        // view differs announces them to its current managers (their reports may
        // have been built before the store landed).
        let mut per_node: HashMap<NodeId, (Vec<MessageKey>, Epoch)> = HashMap::new();
        for (user, bucket, placed) in placements {
            let (targets, epoch) = placed?;
            for t in targets {
                let entry = per_node.entry(t).or_insert_with(|| (Vec::new(), epoch));
                entry.1 = entry.1.min(epoch);
                entry.0.push(MessageKey {
                    bucket,
                    user: user.clone(),
                    id,
                });
            }
        }
        let results =
            futures::future::join_all(per_node.into_iter().map(|(target, (keys, epoch))| {
                let req = Request::Store {
                    keys: keys.clone(),
                    data: message.clone(),
                    epoch,
                };
                async move { (target, keys, node.call(target, req).await) }
            }))
            .await;
        let mut failure = None;
        let mut no_space = false;
        for (target, _, r) in &results {
            match r {
                Ok(Response::Ack) => {}
                Ok(Response::Error(crate::rpc::Failure::NoSpace { .. })) => {
                    no_space = true;
                    failure = Some(format!("node {target}: data disk full"));
                }
                Ok(other) => failure = Some(format!("node {target}: {other:?}")),
                Err(e) => failure = Some(format!("node {target}: {e}")),
            }
        }
        if let Some(why) = failure {
            // The sender will retry the whole message: withdraw every copy, including
            // those whose store failed (a timed-out store may still land; its tombstone
            // written first makes the late append a no-op), so the retry is not shown
            // twice.
            for (target, keys, _) in results {
                if let Err(e) = node.call(target, Request::Delete { keys }).await {
                    tracing::warn!(target, error = %e, "withdrawing partial delivery");
                }
            }
            if no_space {
                tracing::warn!(reason = %why, "delivery failed for want of disk space; answering 452");
                return Err(DeliverError::NoSpace(
                    "insufficient system storage, try again later".into(),
                ));
            }
            tracing::warn!(reason = %why, "delivery failed; answering 4xx");
            return Err(DeliverError::Temporary(
                "could not store every copy, try again later".into(),
            ));
        }
        metrics::counter!("porcupine_messages_delivered_total").increment(users.len() as u64);
        Ok(())
    }
}
