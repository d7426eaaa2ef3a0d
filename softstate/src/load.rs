//! One load table for the whole node: figures learned from RPC replies and from
//! membership gossip, each with the time it was observed; the newest figure wins.
//!
//! Before, the node overwrote every reply's fresh figure with the (older) gossiped one
//! on every membership input. Here a figure only replaces one observed earlier.

use std::collections::{BTreeMap, BTreeSet};

use membership::{Millis, NodeId};

/// The bit of a load figure that says "my disk is nearly full: place no new mail here"
/// (the node still serves reads and deletes). It rides in the figure itself, so every
/// RPC reply and every membership message carries it without a wire change, and a full
/// node also sorts last wherever figures are compared.
pub const NEARLY_FULL_FLAG: u32 = 1 << 31;

/// A node's load figure: `queue` (requests in service plus queued disk writes, capped
/// below the flag) with [`NEARLY_FULL_FLAG`] set when `nearly_full`.
pub fn encode_figure(queue: u32, nearly_full: bool) -> u32 {
    let queue = queue.min(NEARLY_FULL_FLAG - 1);
    if nearly_full {
        queue | NEARLY_FULL_FLAG
    } else {
        queue
    }
}

/// The queue part of a load figure (what an operator reads as "load").
pub fn queue_of(figure: u32) -> u32 {
    figure & !NEARLY_FULL_FLAG
}

/// Whether a load figure says the node's disk is nearly full.
pub fn is_nearly_full(figure: u32) -> bool {
    figure & NEARLY_FULL_FLAG != 0
}

/// One node's load as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// Requests in service plus queued disk writes, as the node reported it.
    pub load: u32,
    /// When the figure was observed, on the driver's monotonic clock.
    pub at: Millis,
}

/// Load figures by node, newest observation wins.
#[derive(Debug, Default, Clone)]
pub struct LoadTable {
    figures: BTreeMap<NodeId, Figure>,
    /// Nodes whose figure in `figures` has the nearly-full flag (kept with it, so
    /// placement does not scan every figure).
    full: BTreeSet<NodeId>,
}

impl LoadTable {
    /// An empty table (every node counts as idle until heard of).
    pub fn new() -> Self {
        Self::default()
    }

    /// Record `load` for `node`, observed at `at`. Keeps the figure unless one was
    /// observed later already (a figure observed at the same time replaces it: it
    /// arrived later). Returns whether the figure was taken.
    pub fn observe(&mut self, node: NodeId, load: u32, at: Millis) -> bool {
        match self.figures.get(&node) {
            Some(have) if have.at > at => false,
            _ => {
                self.figures.insert(node, Figure { load, at });
                if is_nearly_full(load) {
                    self.full.insert(node);
                } else {
                    self.full.remove(&node);
                }
                true
            }
        }
    }

    /// The figure of `node` as placement should weigh it at `now`: its queue part
    /// counts only while the figure is at most `max_age_ms` old. An old queue says
    /// nothing of the node now, and kept for ever it would steer placement away from a
    /// node nobody calls any more (so nobody hears a newer figure). The nearly-full
    /// flag stays until a newer figure clears it: placing on a full node fails.
    pub fn load_at(&self, node: NodeId, now: Millis, max_age_ms: u64) -> u32 {
        match self.figures.get(&node) {
            None => 0,
            Some(f) if now.0.saturating_sub(f.at.0) <= max_age_ms => f.load,
            Some(f) => f.load & NEARLY_FULL_FLAG,
        }
    }

    /// The newest figure of `node` with its time, if any.
    pub fn figure(&self, node: NodeId) -> Option<Figure> {
        self.figures.get(&node).copied()
    }

    /// Nodes whose newest figure says their disk is nearly full, ascending.
    pub fn nearly_full(&self) -> Vec<NodeId> {
        self.full.iter().copied().collect()
    }

    /// Forget the figures of nodes `keep` rejects (nodes that left the view).
    pub fn retain(&mut self, keep: impl Fn(NodeId) -> bool) {
        self.figures.retain(|id, _| keep(*id));
        self.full.retain(|id| keep(*id));
    }

    /// Number of nodes with a figure.
    pub fn len(&self) -> usize {
        self.figures.len()
    }

    /// Whether no figure is known.
    pub fn is_empty(&self) -> bool {
        self.figures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest figure's load, however old (0 when never heard of).
    fn newest(t: &LoadTable, node: NodeId) -> u32 {
        t.figure(node).map_or(0, |f| f.load)
    }

    #[test]
    fn an_old_queue_counts_as_idle_but_an_old_full_flag_stays() {
        let mut t = LoadTable::new();
        assert_eq!(t.load_at(1, Millis(0), 1_000), 0);
        t.observe(1, 9, Millis(100));
        assert_eq!(t.load_at(1, Millis(1_100), 1_000), 9);
        assert_eq!(t.load_at(1, Millis(1_101), 1_000), 0);
        // A clock read before the figure's own time (another thread) is not "old".
        assert_eq!(t.load_at(1, Millis(50), 1_000), 9);
        let full = encode_figure(4, true);
        t.observe(2, full, Millis(100));
        assert_eq!(t.load_at(2, Millis(500), 1_000), full);
        assert_eq!(t.load_at(2, Millis(5_000), 1_000), NEARLY_FULL_FLAG);
        assert!(is_nearly_full(t.load_at(2, Millis(5_000), 1_000)));
        // The plain reading is the newest figure, however old.
        assert_eq!(newest(&t, 1), 9);
    }

    #[test]
    fn newest_figure_wins_whatever_the_arrival_order() {
        let mut t = LoadTable::new();
        assert_eq!(newest(&t, 1), 0);
        // A reply at 100 ms says 7.
        assert!(t.observe(1, 7, Millis(100)));
        // Gossip heard at 40 ms (republished after the reply) must not overwrite it.
        assert!(!t.observe(1, 3, Millis(40)));
        assert_eq!(newest(&t, 1), 7);
        // Newer gossip does.
        assert!(t.observe(1, 2, Millis(150)));
        assert_eq!(
            t.figure(1),
            Some(Figure {
                load: 2,
                at: Millis(150)
            })
        );
        // Same time: the later input replaces.
        assert!(t.observe(1, 9, Millis(150)));
        assert_eq!(newest(&t, 1), 9);
        t.observe(2, 1, Millis(1));
        t.retain(|id| id != 1);
        assert_eq!((t.len(), newest(&t, 1), newest(&t, 2)), (1, 0, 1));
    }

    #[test]
    fn the_nearly_full_flag_rides_in_the_figure_and_newest_wins() {
        let f = encode_figure(12, true);
        assert!(is_nearly_full(f));
        assert_eq!(queue_of(f), 12);
        assert!(!is_nearly_full(encode_figure(12, false)));
        // A queue that large cannot set the flag by itself.
        assert!(!is_nearly_full(encode_figure(u32::MAX, false)));
        let mut t = LoadTable::new();
        t.observe(3, encode_figure(1, true), Millis(10));
        t.observe(4, encode_figure(9, false), Millis(10));
        assert_eq!(t.nearly_full(), vec![3]);
        // The node freed space: its newer figure clears the flag.
        t.observe(3, encode_figure(1, false), Millis(20));
        assert!(t.nearly_full().is_empty());
        // A node that left the view is forgotten with its flag.
        t.observe(5, encode_figure(0, true), Millis(30));
        t.retain(|id| id != 5);
        assert!(t.nearly_full().is_empty());
    }
}
