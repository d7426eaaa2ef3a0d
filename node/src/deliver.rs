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
use softstate::Refused;

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
    /// The account a recipient address names. The bare `postmaster` (RFC 5321 4.5.1,
    /// which every server must accept) goes to `postmaster@` the first local domain
    /// that has such an account.
    fn resolve(&self, address: &str) -> Option<String> {
        if address.eq_ignore_ascii_case("postmaster") {
            let state = self.0.registry.state();
            return state.domains().ok()?.into_iter().find_map(|d| {
                let a = format!("postmaster@{d}");
                matches!(state.user(&a), Ok(Some(_))).then_some(a)
            });
        }
        registry::canonical_address(address).ok()
    }
}

impl smtp::Deliver for DeliveryProxy {
    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        let state = self.0.registry.state();
        let Some(canonical) = self.resolve(address) else {
            return RcptVerdict::UnknownUser;
        };
        let domain = canonical.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        match state.is_local_domain(domain) {
            Ok(false) => return RcptVerdict::RelayDenied,
            Ok(true) => {}
            Err(e) => return RcptVerdict::TempFail(e.to_string()),
        }
        match state.user(&canonical) {
            Ok(Some(_)) => RcptVerdict::Accept,
            Ok(None) => RcptVerdict::UnknownUser,
            Err(e) => RcptVerdict::TempFail(e.to_string()),
        }
    }

    async fn deliver(&self, envelope: &Envelope, message: Bytes) -> Result<(), DeliverError> {
        let node = &self.0;
        let id = node.next_message_id();
        let mut users: Vec<String> = envelope
            .rcpt_to
            .iter()
            .filter_map(|r| self.resolve(r))
            .collect();
        users.sort();
        users.dedup();
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
