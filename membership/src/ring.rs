//! Failure detector: each member pings its successor in the ring of the view
//! (members sorted by id) and suspects it after a silence.

use crate::types::{Millis, NodeId, NodeInfo, View};

/// The ring successor of `me` in `view`, if the view has anyone else.
pub(crate) fn successor(view: &View, me: NodeId) -> Option<&NodeInfo> {
    if view.members.len() < 2 {
        return None;
    }
    view.members
        .next_above(me)
        .or_else(|| view.members.first())
        .filter(|m| m.id != me)
}

/// Liveness tracking of the current ring successor.
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    /// Who we ping; `None` in a one-node view.
    pub successor: Option<NodeInfo>,
    /// Last time the successor was heard from (or the time we started watching it).
    pub last_heard: Millis,
    /// When the next ping is due.
    pub next_ping_at: Millis,
    /// When the silence ran out and one last ping went out; suspicion
    /// follows only if that one is not answered either.
    pub last_chance_at: Option<Millis>,
    /// The silence has already been turned into a suspicion.
    pub suspected: bool,
    /// When the oldest ping not answered yet went out.
    pub ping_sent_at: Option<Millis>,
    /// The send time of the last ping the successor answered from our epoch (or
    /// when we started watching): the view was current then, for certain.
    pub confirmed_at: Millis,
}

impl Detector {
    /// Starts watching `successor` at `now`, with a ping due at once.
    pub fn watch(successor: Option<NodeInfo>, now: Millis) -> Self {
        Detector {
            successor,
            last_heard: now,
            next_ping_at: now,
            last_chance_at: None,
            suspected: false,
            ping_sent_at: None,
            confirmed_at: now,
        }
    }

    /// Notes a ping to the successor sent at `now`.
    pub fn ping_sent(&mut self, now: Millis) {
        self.ping_sent_at.get_or_insert(now);
    }

    /// Notes a ping answer from the successor in our own epoch. Answers carry no
    /// ping id, so it is credited with the oldest unanswered ping's send time (the
    /// answer is at least that recent) and later answers of those pings with
    /// nothing: a late answer never makes the view look more current than it was.
    pub fn confirmed(&mut self) {
        if let Some(sent) = self.ping_sent_at.take() {
            self.confirmed_at = self.confirmed_at.max(sent);
        }
    }

    /// Notes a message from `id`; only the successor matters here.
    pub fn heard_from(&mut self, id: NodeId, now: Millis) {
        if self.successor.as_ref().is_some_and(|s| s.id == id) {
            self.last_heard = self.last_heard.max(now);
            self.last_chance_at = None;
            self.suspected = false;
        }
    }

    /// When silence turns into suspicion, if it has not already: first
    /// `suspect_after_ms` of silence, then `grace_ms` for a last ping.
    pub fn suspect_at(&self, suspect_after_ms: u64, grace_ms: u64) -> Option<Millis> {
        match (&self.successor, self.suspected, self.last_chance_at) {
            (Some(_), false, None) => Some(self.last_heard.plus_ms(suspect_after_ms)),
            (Some(_), false, Some(at)) => Some(at.plus_ms(grace_ms)),
            _ => None,
        }
    }

    /// When the next ping is due, if there is anyone to ping.
    pub fn ping_at(&self) -> Option<Millis> {
        self.successor.as_ref().map(|_| self.next_ping_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Epoch;

    fn view(ids: &[NodeId]) -> View {
        View {
            epoch: Epoch::initial(0),
            members: ids
                .iter()
                .map(|id| NodeInfo {
                    id: *id,
                    incarnation: 0,
                    rpc: String::new(),
                    smtp: String::new(),
                    pop: String::new(),
                    admin: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn successor_wraps_around_the_ring() {
        let v = view(&[2, 5, 9]);
        assert_eq!(successor(&v, 2).map(|m| m.id), Some(5));
        assert_eq!(successor(&v, 5).map(|m| m.id), Some(9));
        assert_eq!(successor(&v, 9).map(|m| m.id), Some(2));
        assert_eq!(successor(&view(&[4]), 4).map(|m| m.id), None);
        assert_eq!(successor(&view(&[4, 8]), 8).map(|m| m.id), Some(4));
    }

    #[test]
    fn silence_becomes_suspicion_once() {
        let v = view(&[1, 2]);
        let mut d = Detector::watch(successor(&v, 1).cloned(), Millis(100));
        assert_eq!(d.suspect_at(2_000, 250), Some(Millis(2_100)));
        d.heard_from(2, Millis(600));
        assert_eq!(d.suspect_at(2_000, 250), Some(Millis(2_600)));
        d.heard_from(7, Millis(900));
        assert_eq!(d.suspect_at(2_000, 250), Some(Millis(2_600)));
        d.last_chance_at = Some(Millis(2_600));
        assert_eq!(d.suspect_at(2_000, 250), Some(Millis(2_850)));
        d.suspected = true;
        assert_eq!(d.suspect_at(2_000, 250), None);
        d.heard_from(2, Millis(3_000));
        assert_eq!(d.last_chance_at, None);
        assert_eq!(d.suspect_at(2_000, 250), Some(Millis(5_000)));
    }
}
