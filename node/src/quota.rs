//! Mailbox usage against quotas: what one user's mailbox holds as the cluster knows it
//! (the mail map from the user's manager, then every fragment listed and merged by
//! message id, so a message held by two replicas counts once and a tombstone anywhere
//! removes it), and whether one more message fits.
//!
//! Usage is read when it is needed (RCPT, end of DATA, `user list --usage`), never
//! kept: it cannot drift from the mailbox across replicas, repairs and deletes. When a
//! fragment node does not answer, or the manager is rebuilding its maps, usage is
//! unknown and the quota is not enforced for that message (mail is not refused on a
//! guess); deliveries that run at the same time can each fit and together overshoot
//! by what they carry.

use std::sync::Arc;

use registry::state::Effective;
use serde::Serialize;

use crate::rpc::{Request, Response};
use crate::service::Node;

/// What one mailbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Sum of the live messages' sizes, in bytes.
    pub bytes: u64,
    /// Live messages.
    pub messages: u64,
}

/// Usage of `user`'s mailbox, or `None` when the cluster cannot say now.
pub async fn usage(node: &Arc<Node>, user: &str) -> Option<Usage> {
    let bucket = membership::bucket_of(user, node.cluster.buckets());
    let manager = node.cluster.view().map.manager(bucket);
    let req = Request::MailMap {
        user: user.to_string(),
        bucket,
    };
    let map = match node.call(manager, req).await {
        Ok(Response::MailMap(map)) => map,
        other => {
            tracing::debug!(%user, manager, ?other, "no mail map: usage unknown");
            return None;
        }
    };
    let holdings = crate::gather::gather(node, user, bucket, &map).await;
    if !holdings.is_complete() {
        return None;
    }
    Some(
        holdings
            .visible()
            .fold(Usage::default(), |u, (_, held)| Usage {
                bytes: u.bytes + held.size_bytes,
                messages: u.messages + 1,
            }),
    )
}

/// Why `usage` plus a message of `adding_bytes` (0: only whether it is full already)
/// breaks `quota`, or `None` when it fits.
pub fn over(quota: &Effective, usage: Usage, adding_bytes: Option<u64>) -> Option<String> {
    let (bytes, messages) = match adding_bytes {
        Some(size) => (usage.bytes.saturating_add(size), usage.messages + 1),
        None => (usage.bytes, usage.messages),
    };
    let full = |have: u64, max: u64| match adding_bytes {
        Some(_) => have > max,
        None => have >= max,
    };
    if let Some(max) = quota.bytes_max
        && full(bytes, max)
    {
        return Some(format!("holds {} of {max} bytes", usage.bytes));
    }
    if let Some(max) = quota.messages_max
        && full(messages, max)
    {
        return Some(format!("holds {} of {max} messages", usage.messages));
    }
    None
}

/// Whether `user` is a mailbox with room: `Err(reason)` when its quota is known to be
/// broken by a message of `adding_bytes` (or reached already, with `None`).
pub async fn check(node: &Arc<Node>, user: &str, adding_bytes: Option<u64>) -> Result<(), String> {
    let quota = match node.registry.state().effective_quota(user) {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(%user, error = %e, "reading the quota; not enforced");
            return Ok(());
        }
    };
    if quota.bytes_max.is_none() && quota.messages_max.is_none() {
        return Ok(());
    }
    let Some(usage) = usage(node, user).await else {
        tracing::info!(%user, "usage unknown (a fragment node silent); quota not enforced");
        return Ok(());
    };
    match over(&quota, usage, adding_bytes) {
        Some(why) => Err(format!("mailbox {user} is full: {why}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(bytes_max: Option<u64>, messages_max: Option<u64>) -> Effective {
        Effective {
            bytes_max,
            messages_max,
        }
    }

    #[test]
    fn reached_is_full_at_rcpt_and_exceeded_is_full_at_data() {
        let used = Usage {
            bytes: 100,
            messages: 2,
        };
        assert_eq!(over(&q(None, None), used, Some(1 << 40)), None);
        assert_eq!(over(&q(Some(101), None), used, None), None);
        assert!(over(&q(Some(100), None), used, None).is_some());
        assert_eq!(over(&q(Some(150), None), used, Some(50)), None);
        assert!(
            over(&q(Some(150), None), used, Some(51))
                .unwrap()
                .contains("100 of 150 bytes")
        );
        assert_eq!(over(&q(None, Some(3)), used, Some(1)), None);
        assert!(over(&q(None, Some(2)), used, None).is_some());
        assert!(
            over(&q(None, Some(2)), used, Some(1))
                .unwrap()
                .contains("2 of 2 messages")
        );
    }
}
