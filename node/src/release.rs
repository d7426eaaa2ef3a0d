//! Mailbox lock releases nobody waits for: a POP3 session dropped without QUIT, or an
//! open that failed after the manager may have granted the lock. They queue here
//! (bounded) and one task of the node sends them, so shutdown ends them too.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::rpc::{Request, SessionId};
use crate::service::Node;

/// Most releases queued; beyond it a release is dropped with a warning (the lock then
/// ends with the session's process or at the next view change).
pub const RELEASES_QUEUED_MAX: usize = 4096;

/// Most releases in flight at once.
const RELEASES_INFLIGHT_MAX: usize = 64;

/// One lock to release at the manager of `bucket`.
#[derive(Debug)]
pub struct Release {
    /// Whose mailbox.
    pub user: String,
    /// The user's bucket.
    pub bucket: u16,
    /// The session that may hold the lock.
    pub session: SessionId,
}

/// The queue of releases: the sending half lives in the node, the receiving half
/// goes to [`run`] once.
pub struct Releases {
    tx: mpsc::Sender<Release>,
    rx: Mutex<Option<mpsc::Receiver<Release>>>,
}

impl Default for Releases {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(RELEASES_QUEUED_MAX);
        Releases {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Releases {
    /// Queue a release (never blocks).
    pub fn push(&self, release: Release) {
        if let Err(e) = self.tx.try_send(release) {
            tracing::warn!(error = %e, "mailbox lock release queue full or closed: dropped");
        }
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<Release>> {
        self.rx.lock().ok().and_then(|mut g| g.take())
    }
}

/// Send queued releases until `shutdown`.
pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = node.releases.take_receiver() else {
        return;
    };
    let mut inflight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            r = rx.recv(), if inflight.len() < RELEASES_INFLIGHT_MAX => {
                let Some(Release { user, bucket, session }) = r else { return };
                let node = node.clone();
                inflight.spawn(async move {
                    let manager = node.cluster.view().map.manager(bucket);
                    if let Err(e) = node.call(manager, Request::Close { user, session }).await {
                        tracing::warn!(error = %e, "releasing mailbox lock");
                    }
                });
            }
        }
    }
}
