//! The user manager: soft state for the users whose buckets this node manages —
//! their mail maps (which nodes hold fragments) and their POP3 locks.
//!
//! Rebuilt from scratch at every view change: each live node reports the users it holds
//! fragments for (and the POP3 sessions it runs); the maps are complete once every
//! member of the view has reported. Until then mailbox opens are refused as
//! not-ready, so a partial mailbox is never shown as complete.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use membership::{Epoch, NodeId};

use crate::rpc::SessionId;

/// Result of trying to open a mailbox.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenOutcome {
    /// Locked for the caller; these nodes hold the user's fragments.
    Locked(Vec<NodeId>),
    /// Another session holds the lock.
    InUse,
    /// Mail maps are still being rebuilt for this view.
    NotReady,
}

#[derive(Default)]
struct Inner {
    epoch: Option<Epoch>,
    members: BTreeSet<NodeId>,
    reported: BTreeSet<NodeId>,
    maps: HashMap<String, BTreeSet<NodeId>>,
    locks: HashMap<String, SessionId>,
    /// Sessions closed in this view: a report that still lists one (sent before the
    /// close) must not lock the mailbox again.
    closed: std::collections::HashSet<SessionId>,
}

/// Mail maps and locks of the users this node manages in the current view.
#[derive(Default)]
pub struct UserManager {
    inner: Mutex<Inner>,
}

impl UserManager {
    /// An empty manager (no view yet: nothing is ready).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug; keep serving with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new view was installed: forget all soft state and wait for reports.
    pub fn new_view(&self, epoch: Epoch, members: impl IntoIterator<Item = NodeId>) {
        let mut s = self.lock();
        s.epoch = Some(epoch);
        s.members = members.into_iter().collect();
        s.reported.clear();
        s.maps.clear();
        s.locks.clear();
        s.closed.clear();
    }

    /// A member's report for `epoch`; false when it is not for the current view.
    pub fn report(
        &self,
        epoch: Epoch,
        from: NodeId,
        users: Vec<String>,
        locks: Vec<(String, SessionId)>,
    ) -> bool {
        let mut s = self.lock();
        if s.epoch != Some(epoch) || !s.members.contains(&from) {
            return false;
        }
        for user in users {
            s.maps.entry(user).or_default().insert(from);
        }
        for (user, session) in locks {
            if !s.closed.contains(&session) {
                s.locks.insert(user, session);
            }
        }
        s.reported.insert(from);
        true
    }

    /// Whether every member has reported for the current view.
    pub fn is_complete(&self) -> bool {
        let s = self.lock();
        s.epoch.is_some() && s.members.is_subset(&s.reported)
    }

    /// The user's mail map (nodes believed to hold fragments), sorted.
    pub fn mail_map(&self, user: &str) -> Vec<NodeId> {
        let s = self.lock();
        s.maps
            .get(user)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Record that `nodes` hold (or are about to hold) fragments of `user`.
    pub fn add(&self, user: &str, nodes: &[NodeId]) {
        let mut s = self.lock();
        let members = s.members.clone();
        let entry = s.maps.entry(user.to_string()).or_default();
        entry.extend(nodes.iter().copied().filter(|n| members.contains(n)));
    }

    /// Lock `user`'s mailbox for `session`.
    pub fn open(&self, user: &str, session: SessionId) -> OpenOutcome {
        let mut s = self.lock();
        if s.epoch.is_none() || !s.members.is_subset(&s.reported) {
            return OpenOutcome::NotReady;
        }
        match s.locks.get(user) {
            Some(holder) if *holder != session => return OpenOutcome::InUse,
            _ => {}
        }
        s.locks.insert(user.to_string(), session);
        OpenOutcome::Locked(
            s.maps
                .get(user)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default(),
        )
    }

    /// Release `session`'s lock on `user` (a no-op if someone else holds it).
    pub fn close(&self, user: &str, session: SessionId) {
        let mut s = self.lock();
        if s.locks.get(user) == Some(&session) {
            s.locks.remove(user);
        } else {
            // Closed before the report that names it arrived (or before a retried
            // one): remember it, so that report does not lock the mailbox again.
            // Only these racing closes are kept, so the set stays small.
            s.closed.insert(session);
        }
    }

    /// Every managed user with its mail map (for repair passes).
    pub fn snapshot(&self) -> Vec<(String, Vec<NodeId>)> {
        let s = self.lock();
        s.maps
            .iter()
            .map(|(u, set)| (u.clone(), set.iter().copied().collect()))
            .collect()
    }

    /// The epoch the soft state belongs to.
    pub fn epoch(&self) -> Option<Epoch> {
        self.lock().epoch
    }

    /// Number of users with a mail map here.
    pub fn users_managed(&self) -> usize {
        self.lock().maps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u64) -> Epoch {
        Epoch {
            counter: n,
            coordinator: 1,
        }
    }

    fn sess(node: NodeId, seq: u64) -> SessionId {
        SessionId { node, seq }
    }

    #[test]
    fn not_ready_until_every_member_reported() {
        let m = UserManager::new();
        assert_eq!(m.open("a", sess(1, 1)), OpenOutcome::NotReady);
        m.new_view(epoch(2), [1, 2, 3]);
        assert!(m.report(epoch(2), 1, vec!["a".into()], vec![]));
        assert!(m.report(epoch(2), 2, vec![], vec![]));
        assert_eq!(m.open("a", sess(1, 1)), OpenOutcome::NotReady);
        assert!(
            !m.report(epoch(1), 3, vec!["a".into()], vec![]),
            "stale epoch"
        );
        assert!(m.report(epoch(2), 3, vec!["a".into()], vec![]));
        assert_eq!(m.open("a", sess(1, 1)), OpenOutcome::Locked(vec![1, 3]));
    }

    #[test]
    fn lock_is_exclusive_and_survives_view_change_via_reports() {
        let m = UserManager::new();
        m.new_view(epoch(1), [1]);
        m.report(epoch(1), 1, vec![], vec![]);
        assert!(matches!(m.open("a", sess(1, 1)), OpenOutcome::Locked(_)));
        assert_eq!(m.open("a", sess(1, 2)), OpenOutcome::InUse);
        m.new_view(epoch(2), [1, 2]);
        m.report(epoch(2), 1, vec![], vec![("a".into(), sess(1, 1))]);
        m.report(epoch(2), 2, vec![], vec![]);
        assert_eq!(m.open("a", sess(2, 9)), OpenOutcome::InUse);
        m.close("a", sess(2, 9));
        assert_eq!(
            m.open("a", sess(2, 9)),
            OpenOutcome::InUse,
            "only the holder releases"
        );
        m.close("a", sess(1, 1));
        assert!(matches!(m.open("a", sess(2, 9)), OpenOutcome::Locked(_)));
    }

    #[test]
    fn a_late_report_does_not_relock_a_closed_session() {
        let m = UserManager::new();
        m.new_view(epoch(3), [1, 2]);
        m.close("a", sess(2, 5));
        m.report(epoch(3), 2, vec![], vec![("a".into(), sess(2, 5))]);
        m.report(epoch(3), 1, vec![], vec![]);
        assert!(matches!(m.open("a", sess(1, 1)), OpenOutcome::Locked(_)));
    }

    #[test]
    fn add_ignores_non_members() {
        let m = UserManager::new();
        m.new_view(epoch(1), [1, 2]);
        m.add("a", &[2, 7]);
        assert_eq!(m.mail_map("a"), vec![2]);
    }
}
