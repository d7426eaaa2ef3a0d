//! The last views this node installed (epoch, members, when), for the cluster status
//! and the dashboard's "recent view changes". Bounded: the oldest go first.

use std::collections::VecDeque;
use std::sync::Mutex;

use membership::NodeId;
use serde::Serialize;

/// Most views kept.
pub const ENTRIES_MAX: usize = 32;

/// One installed view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewEntry {
    /// Epoch counter.
    pub epoch: u64,
    /// The node that coordinated it.
    pub coordinator: NodeId,
    /// Its members, ascending.
    pub members: Vec<NodeId>,
    /// Members of the previous view that it left out.
    pub left: Vec<NodeId>,
    /// Members it has that the previous view had not.
    pub joined: Vec<NodeId>,
    /// When this node installed it, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The last [`ENTRIES_MAX`] views, oldest first.
#[derive(Debug, Default)]
pub struct ViewLog {
    entries: Mutex<VecDeque<ViewEntry>>,
}

impl ViewLog {
    /// Record a view with these members (the change against the previous one is
    /// computed here); returns the entry recorded.
    pub fn record(
        &self,
        epoch: u64,
        coordinator: NodeId,
        mut members: Vec<NodeId>,
        at_unix_ms: u64,
    ) -> ViewEntry {
        members.sort_unstable();
        members.dedup();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let previous = entries
            .back()
            .map(|e| e.members.clone())
            .unwrap_or_default();
        let entry = ViewEntry {
            epoch,
            coordinator,
            left: previous
                .iter()
                .filter(|id| !members.contains(id))
                .copied()
                .collect(),
            joined: members
                .iter()
                .filter(|id| !previous.contains(id))
                .copied()
                .collect(),
            members,
            at_unix_ms,
        };
        if entries.len() >= ENTRIES_MAX {
            entries.pop_front();
        }
        entries.push_back(entry.clone());
        entry
    }

    /// The views kept, oldest first.
    pub fn entries(&self) -> Vec<ViewEntry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_computed_against_the_previous_view_and_bounded() {
        let log = ViewLog::default();
        let first = log.record(1, 0, vec![0], 10);
        assert_eq!(first.joined, vec![0]);
        let second = log.record(2, 0, vec![2, 0, 1], 20);
        assert_eq!((second.joined, second.left), (vec![1, 2], vec![]));
        let third = log.record(3, 1, vec![0, 1], 30);
        assert_eq!((third.joined, third.left), (vec![], vec![2]));
        for i in 0..(ENTRIES_MAX as u64 + 5) {
            log.record(4 + i, 0, vec![0, 1], 40 + i);
        }
        let kept = log.entries();
        assert_eq!(kept.len(), ENTRIES_MAX);
        assert_eq!(kept.last().map(|e| e.epoch), Some(ENTRIES_MAX as u64 + 8));
    }
}
