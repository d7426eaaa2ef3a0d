//! The node's handle on its soft state: a Mutex around the sans-IO
//! [`softstate::SoftState`] machine (mail maps, POP3 locks, reconstruction,
//! placement). All logic lives there; the soft-state driver (`soft.rs`) feeds it
//! views, scans, timeouts and RPC answers, and the RPC dispatch feeds it requests.

use std::sync::{Mutex, MutexGuard};

use membership::{Epoch, NodeId};
use softstate::{SoftState, SoftStateConfig};

/// The soft state of this node, shared by its tasks.
pub struct UserManager {
    inner: Mutex<SoftState>,
}

impl UserManager {
    /// The soft state of process (`me`, `incarnation`), no view yet, placing new
    /// mail by `balance`, with a lock grace of `lock_grace_ms` for buckets taken over
    /// from a manager that left the view (see `SoftStateConfig::lock_grace_ms`).
    pub fn new(
        me: NodeId,
        incarnation: u64,
        balance: softstate::place::Balance,
        lock_grace_ms: u64,
    ) -> Self {
        let config = SoftStateConfig {
            // Any seed does; the driver picks one, the machine stays deterministic.
            seed: incarnation ^ me.rotate_left(32),
            balance,
            lock_grace_ms,
            ..SoftStateConfig::default()
        };
        UserManager {
            inner: Mutex::new(SoftState::new(me, incarnation, config)),
        }
    }

    /// Run `f` on the machine. Keep it short: no awaits while holding it.
    pub fn with<R>(&self, f: impl FnOnce(&mut SoftState) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, SoftState> {
        // A panic while holding this lock would be a bug; keep serving with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every bucket this node manages is rebuilt for its installed view.
    pub fn is_complete(&self) -> bool {
        self.lock().is_complete()
    }

    /// Record that `nodes` hold (or are about to hold) fragments of `user`.
    pub fn add(&self, user: &str, nodes: &[NodeId]) {
        self.lock().add(user, nodes)
    }

    /// Every user of a complete managed bucket with its mail map (for repair passes).
    pub fn snapshot(&self) -> Vec<(String, Vec<NodeId>)> {
        self.lock().snapshot()
    }

    /// The epoch the soft state belongs to.
    pub fn epoch(&self) -> Option<Epoch> {
        self.lock().epoch()
    }

    /// Number of users with a mail map here.
    pub fn users_managed(&self) -> usize {
        self.lock().users_managed()
    }
}
