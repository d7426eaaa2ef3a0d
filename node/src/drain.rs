//! Draining nodes (operator `porcupine node drain ID`): a draining node takes no new
//! mail (placement and repair copies treat it as unplaceable) and its copies stop
//! counting towards R, so repair passes re-replicate its messages elsewhere. Once no
//! manager finds a message whose only copies short of R are on draining nodes, the
//! node "holds nothing needed" and can be stopped and removed.
//!
//! Every live node keeps the draining set, told by the `Drain` RPC, and saves it in its
//! local store (`kv/draining`) so a restart keeps it.

use std::collections::BTreeSet;
use std::sync::RwLock;

use membership::NodeId;
use storage::Store;

/// The store tree holding the draining set (key: node id, big-endian).
const TREE: &str = "draining";

/// The nodes being drained, as this node knows them.
#[derive(Debug, Default)]
pub struct DrainState {
    ids: RwLock<BTreeSet<NodeId>>,
}

impl DrainState {
    /// The draining set saved in `store` (empty if none, or unreadable: logged).
    pub fn load(store: &Store) -> Self {
        let ids = match store.kv(TREE).and_then(|t| t.scan_prefix(b"")) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
                .map(u64::from_be_bytes)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the draining set; starting with none");
                BTreeSet::new()
            }
        };
        DrainState {
            ids: RwLock::new(ids),
        }
    }

    /// The draining nodes.
    pub fn ids(&self) -> BTreeSet<NodeId> {
        self.ids.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether `id` is draining.
    pub fn contains(&self, id: NodeId) -> bool {
        self.ids.read().map(|s| s.contains(&id)).unwrap_or(false)
    }

    /// Mark `id` draining (`on`) or not, and save the set durably. Returns whether the
    /// set changed.
    pub async fn set(&self, store: &Store, id: NodeId, on: bool) -> Result<bool, String> {
        let changed = match self.ids.write() {
            Ok(mut s) => {
                if on {
                    s.insert(id)
                } else {
                    s.remove(&id)
                }
            }
            Err(_) => return Err("draining set lock poisoned".into()),
        };
        if changed {
            let tree = store.kv(TREE).map_err(|e| e.to_string())?;
            let key = id.to_be_bytes();
            if on {
                tree.insert(&key, b"").map_err(|e| e.to_string())?;
            } else {
                tree.remove(&key).map_err(|e| e.to_string())?;
            }
            tree.flush().await.map_err(|e| e.to_string())?;
            tracing::info!(id, draining = on, "node drain state changed");
        }
        Ok(changed)
    }
}

/// Copies of one message that count towards R: those on nodes not draining.
pub fn counted_holders(holders: &[NodeId], draining: &BTreeSet<NodeId>) -> usize {
    holders.iter().filter(|h| !draining.contains(h)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_on_draining_nodes_do_not_count() {
        let draining = BTreeSet::from([2]);
        assert_eq!(counted_holders(&[1, 2], &draining), 1);
        assert_eq!(counted_holders(&[2], &draining), 0);
        assert_eq!(counted_holders(&[0, 1], &draining), 2);
        assert_eq!(counted_holders(&[], &draining), 0);
    }
}
