//! The retrieval proxy: what the POP3 front end calls. Logs users in against the
//! registry, locks the mailbox at the user manager, lists every fragment in parallel and
//! merges them into one maildrop, fetches from any holder, applies deletes at QUIT.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use membership::NodeId;
use pop::{AuthError, MailboxError, MessageEntry};
use storage::{MessageId, MessageKey};

use crate::release::Release;
use crate::rpc::{Request, Response, SessionId};
use crate::service::Node;

/// How long an open waits for mail maps to be rebuilt before answering `[SYS/TEMP]`.
const OPEN_WAIT: Duration = Duration::from_secs(3);

/// Implements [`pop::Authenticate`] and [`pop::Mailbox`] for a node.
pub struct RetrievalProxy(pub Arc<Node>);

impl pop::Authenticate for RetrievalProxy {
    async fn authenticate(&self, user: &str, password: &str) -> Result<String, AuthError> {
        match self.0.registry.verify(user, password).await {
            Ok(Some(canonical)) => Ok(canonical),
            Ok(None) => Err(AuthError::Invalid),
            Err(e) => Err(AuthError::TempFail(e.to_string())),
        }
    }
}

/// One open maildrop, locked at the user manager until commit or drop.
pub struct ProxySession {
    node: Arc<Node>,
    user: String,
    bucket: u16,
    session: SessionId,
    /// The mail map at open: every node holding fragments of this user.
    map: Vec<NodeId>,
    entries: Vec<MessageEntry>,
    /// For each entry: its id and the nodes that listed it.
    holders: Vec<(MessageId, Vec<NodeId>)>,
    released: bool,
}

impl RetrievalProxy {
    async fn lock(
        &self,
        user: &str,
        bucket: u16,
        session: SessionId,
    ) -> Result<Vec<NodeId>, MailboxError> {
        let node = &self.0;
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        loop {
            // A manager of a view we left may still grant this bucket's locks: wait
            // as for a manager's refusal.
            let held_back = node
                .manager
                .with(|s| s.may_lock_here(node.cluster.now(), bucket));
            let why = match held_back {
                Err(e) => e.to_string(),
                Ok(()) => {
                    let manager = node.cluster.view().map.manager(bucket);
                    let req = Request::Open {
                        user: user.to_string(),
                        bucket,
                        session,
                    };
                    match node.call(manager, req).await {
                        Ok(Response::MailMap(map)) => return Ok(map),
                        Ok(Response::InUse) => return Err(MailboxError::InUse),
                        Ok(other) => format!("{other:?}"),
                        Err(e) => e.to_string(),
                    }
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(MailboxError::TempFail(format!(
                    "mailbox map not available, try again later ({why})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl pop::Mailbox for RetrievalProxy {
    type Session = ProxySession;

    async fn open(&self, user: &str) -> Result<ProxySession, MailboxError> {
        let started = std::time::Instant::now();
        let r = self.open_mailbox(user).await;
        crate::telemetry::pop_command("open", started, r.is_ok());
        r
    }
}

impl RetrievalProxy {
    /// Lock and read the mailbox (the `Mailbox::open` of the trait, untimed).
    async fn open_mailbox(&self, user: &str) -> Result<ProxySession, MailboxError> {
        let node = self.0.clone();
        let bucket = membership::bucket_of(user, node.cluster.buckets());
        let session = node.begin_session(user);
        let map = match self.lock(user, bucket, session).await {
            Ok(x) => x,
            Err(e) => {
                node.end_session(session);
                // The lock may have been granted after all (a reply lost to a timeout,
                // or installed from our report at a view change): release it. Close
                // only releases a lock this very session holds.
                if !matches!(e, MailboxError::InUse) {
                    node.releases.push(Release {
                        user: user.to_string(),
                        bucket,
                        session,
                    });
                }
                return Err(e);
            }
        };
        let mut s = ProxySession {
            node: node.clone(),
            user: user.to_string(),
            bucket,
            session,
            map: map.clone(),
            entries: Vec::new(),
            holders: Vec::new(),
            released: false,
        };
        let h = crate::gather::gather(&node, user, bucket, &map).await;
        // Any fragment node that does not answer may hold the only copy of a message
        // (written while fewer than R nodes were live) or the only tombstone of one:
        // answer "try again" rather than show a mailbox that may be partial.
        if !h.is_complete() {
            return Err(MailboxError::TempFail(
                "some of the mailbox is unreachable, try again later".into(),
            ));
        }
        // A replica that missed a delete still lists the message; a tombstone anywhere wins.
        for (id, held) in h.visible() {
            s.entries.push(MessageEntry {
                uid: id.to_string(),
                size: held.size_bytes,
            });
            s.holders.push((id, held.holders.clone()));
        }
        Ok(s)
    }
}

impl ProxySession {
    fn key(&self, id: MessageId) -> MessageKey {
        MessageKey {
            bucket: self.bucket,
            user: self.user.clone(),
            id,
        }
    }

    async fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        self.node.end_session(self.session);
        let req = Request::Close {
            user: self.user.clone(),
            session: self.session,
        };
        let manager = self.node.cluster.view().map.manager(self.bucket);
        if let Err(e) = self.node.call(manager, req).await {
            tracing::warn!(error = %e, "releasing mailbox lock");
        }
    }
}

impl pop::MailboxSession for ProxySession {
    fn messages(&self) -> &[MessageEntry] {
        &self.entries
    }

    async fn fetch(&mut self, index: usize) -> Result<Bytes, MailboxError> {
        let started = std::time::Instant::now();
        let r = self.fetch_message(index).await;
        crate::telemetry::pop_command("retr", started, r.is_ok());
        if let Ok(bytes) = &r {
            metrics::counter!("porcupine_pop_messages_retrieved_total").increment(1);
            metrics::counter!("porcupine_pop_bytes_total").increment(bytes.len() as u64);
            crate::telemetry::POP_MESSAGES_RETRIEVED
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn commit(self, deleted: Vec<usize>) -> Result<(), MailboxError> {
        let started = std::time::Instant::now();
        let r = self.commit_deletes(deleted).await;
        crate::telemetry::pop_command("quit", started, r.is_ok());
        r
    }
}

impl ProxySession {
    /// One message's bytes, the local copy first (`MailboxSession::fetch`, untimed).
    async fn fetch_message(&mut self, index: usize) -> Result<Bytes, MailboxError> {
        let (id, holders) = self
            .holders
            .get(index)
            .ok_or(MailboxError::NoSuchMessage)?
            .clone();
        let key = self.key(id);
        let mut last = String::from("no holder");
        // The local copy first, then the least loaded holder.
        let me = self.node.id();
        let mut holders = holders;
        holders.sort_by_key(|h| {
            (
                *h != me,
                softstate::queue_of(self.node.cluster.load_of(*h)),
                *h,
            )
        });
        for holder in holders {
            match self
                .node
                .call(holder, Request::Read { key: key.clone() })
                .await
            {
                Ok(Response::Message(Some(bytes))) => {
                    let source = if holder == me { "local" } else { "remote" };
                    metrics::counter!("porcupine_pop_reads_total", "source" => source).increment(1);
                    return Ok(bytes);
                }
                Ok(other) => last = format!("node {holder}: {other:?}"),
                Err(e) => last = format!("node {holder}: {e}"),
            }
        }
        Err(MailboxError::TempFail(format!(
            "message unavailable: {last}"
        )))
    }

    /// Tombstone `deleted` and release the lock (`MailboxSession::commit`, untimed).
    async fn commit_deletes(mut self, deleted: Vec<usize>) -> Result<(), MailboxError> {
        let mut per_node: BTreeMap<NodeId, Vec<MessageKey>> = BTreeMap::new();
        let mut wanted: Vec<(MessageId, Vec<NodeId>)> = Vec::new();
        for i in deleted {
            let Some((id, holders)) = self.holders.get(i).cloned() else {
                continue;
            };
            // Tombstone on every fragment node, not only the holders: the more nodes
            // know of the delete, the fewer ways a stale copy can come back.
            let mut targets: BTreeSet<NodeId> = holders.iter().copied().collect();
            targets.extend(self.map.iter().copied());
            for &h in &targets {
                per_node.entry(h).or_default().push(self.key(id));
            }
            wanted.push((id, targets.into_iter().collect()));
        }
        let node = self.node.clone();
        let results = futures::future::join_all(per_node.into_iter().map(|(h, keys)| {
            let node = node.clone();
            async move { (h, node.call(h, Request::Delete { keys }).await) }
        }))
        .await;
        let mut acked = BTreeSet::new();
        for (h, r) in results {
            match r {
                Ok(Response::Ack) => {
                    acked.insert(h);
                }
                other => tracing::warn!(node = h, ?other, "tombstoning failed on one node"),
            }
        }
        self.release().await;
        // A delete holds once one node has the tombstone: listings drop any message
        // tombstoned anywhere, and repair passes spread the tombstone.
        let missed = wanted
            .iter()
            .filter(|(_, targets)| !targets.iter().any(|t| acked.contains(t)))
            .count();
        if missed > 0 {
            return Err(MailboxError::TempFail(format!(
                "{missed} deletes could not be recorded"
            )));
        }
        Ok(())
    }
}

impl Drop for ProxySession {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.node.end_session(self.session);
        self.node.releases.push(Release {
            user: std::mem::take(&mut self.user),
            bucket: self.bucket,
            session: self.session,
        });
    }
}
