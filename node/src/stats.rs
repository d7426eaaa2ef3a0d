//! Counters the node's background work keeps for status and metrics (a leaf module:
//! the node holds them, the tasks that do the work update them).

use std::sync::atomic::AtomicU64;

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
    /// Passes completed since start (a pass skipped because the soft state was not
    /// complete for the current view does not count).
    pub passes_total: AtomicU64,
    /// Duration of the last pass, in milliseconds.
    pub last_pass_ms: AtomicU64,
    /// Copies made since start because a holder was draining.
    pub drain_copies_total: AtomicU64,
    /// Messages short of R copies outside draining nodes after the last pass.
    pub drain_pending: AtomicU64,
    /// The draining nodes as the last complete pass began (a drain is done once every
    /// node's last pass counted it).
    pub last_pass_draining: std::sync::Mutex<Vec<membership::NodeId>>,
}
