//! Forming the registry from identical configuration on every node
//! (`bootstrap_expect = N`): once N nodes see each other, the lowest id among them
//! initialises the Raft group, after asking every other one that none of them
//! belongs to a registry already; `sync_members` then adds the rest.

use std::time::Duration;

use tokio::time::timeout;

use super::RaftLog;
use super::rpc::{RaftReply, RaftRequest, decode, encode};
use crate::RegistryError;

/// How long a peer may take to say whether it belongs to a registry.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a `bootstrap_expect` formation stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formation {
    /// This node belongs to a registry: nothing left to do.
    Member,
    /// Fewer nodes than expected see each other yet.
    Waiting {
        /// Nodes in the view.
        have: usize,
        /// `bootstrap_expect`.
        want: usize,
    },
    /// Another node, the lowest id in the view, initialises the registry.
    Deferred {
        /// That node.
        to: u64,
    },
    /// A peer already belongs to a registry: this node waits to be added to it.
    Joining {
        /// That peer.
        peer: u64,
    },
    /// A peer could not say whether it belongs to a registry; asked again later.
    Unsure {
        /// That peer.
        peer: u64,
        /// Why it could not.
        why: String,
    },
    /// This node has just initialised the registry.
    Initialised,
}

/// What this node should do next, from what it knows without asking anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Stop here with this answer.
    Done(Formation),
    /// Ask these peers (id, address) whether they belong to a registry, then
    /// initialise if none does.
    AskThenInit(Vec<(u64, String)>),
}

/// The formation rule itself: `live` is every node in the view (this one included).
fn decide(me: u64, initialized: bool, live: &[(u64, String)], expect: usize) -> Step {
    if initialized {
        return Step::Done(Formation::Member);
    }
    if live.len() < expect {
        return Step::Done(Formation::Waiting {
            have: live.len(),
            want: expect,
        });
    }
    match live.iter().map(|(id, _)| *id).min() {
        Some(lowest) if lowest != me => Step::Done(Formation::Deferred { to: lowest }),
        _ => Step::AskThenInit(live.iter().filter(|(id, _)| *id != me).cloned().collect()),
    }
}

impl RaftLog {
    /// One step of forming the registry with `bootstrap_expect = expect` over the
    /// current view `live` (id, RPC address of every live node, this one included).
    /// Call it again while it answers anything but [`Formation::Member`].
    pub async fn form(
        &self,
        live: &[(u64, String)],
        expect: usize,
    ) -> Result<Formation, RegistryError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("raft stopped: {e}")))?;
        let peers = match decide(self.id, initialized, live, expect) {
            Step::Done(f) => return Ok(f),
            Step::AskThenInit(peers) => peers,
        };
        for (peer, addr) in peers {
            match self.ask_initialized(&addr).await {
                Ok(false) => {}
                Ok(true) => return Ok(Formation::Joining { peer }),
                Err(why) => return Ok(Formation::Unsure { peer, why }),
            }
        }
        self.bootstrap().await?;
        Ok(Formation::Initialised)
    }

    /// Whether the node at `addr` belongs to a registry.
    async fn ask_initialized(&self, addr: &str) -> Result<bool, String> {
        let request = encode(&RaftRequest::Initialized).map_err(|e| e.to_string())?;
        let bytes = match timeout(ASK_TIMEOUT, self.transport.send_boxed(addr, request)).await {
            Err(_) => return Err(format!("{addr} did not answer in time")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(bytes)) => bytes,
        };
        match decode::<RaftReply>(&bytes) {
            Ok(RaftReply::Initialized(yes)) => Ok(yes),
            Ok(other) => Err(format!("{addr} answered {other:?}")),
            Err(e) => Err(format!("{addr} sent an undecodable reply: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[u64]) -> Vec<(u64, String)> {
        ids.iter().map(|i| (*i, format!("n{i}"))).collect()
    }

    #[test]
    fn a_member_does_nothing() {
        assert_eq!(
            decide(0, true, &live(&[0]), 3),
            Step::Done(Formation::Member)
        );
    }

    #[test]
    fn waits_for_the_expected_count() {
        assert_eq!(
            decide(0, false, &live(&[0, 1]), 3),
            Step::Done(Formation::Waiting { have: 2, want: 3 })
        );
    }

    #[test]
    fn only_the_lowest_id_initialises() {
        assert_eq!(
            decide(2, false, &live(&[1, 2, 5]), 3),
            Step::Done(Formation::Deferred { to: 1 })
        );
        assert_eq!(
            decide(1, false, &live(&[5, 1, 2]), 3),
            Step::AskThenInit(live(&[5, 2]))
        );
    }

    #[test]
    fn more_nodes_than_expected_still_form() {
        assert_eq!(
            decide(0, false, &live(&[0, 1, 2, 3]), 3),
            Step::AskThenInit(live(&[1, 2, 3]))
        );
    }
}
