//! The membership state machine: failure detection, probing and the
//! three-round view change, driven by `handle_*` calls and drained by `poll_*`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::config::MembershipConfig;
use crate::known::{Admission, KnownTable};
use crate::message::{Asked, Event, Header, Message};
use crate::ring::{Detector, successor};
use crate::round::Round;
use crate::types::{Dest, Epoch, Millis, NodeId, NodeInfo, View, ViewDelta};

/// Highest rank that still adds delay before a node coordinates a merge: past
/// it every node waits the same, so a large cluster still reacts promptly.
const RANK_DELAY_CAP: u64 = 8;

/// Most known nodes outside the view one node probes per `probe_interval_ms`,
/// taken in turn; unidentified seeds are probed on top of these.
const PROBE_TARGETS_MAX: usize = 4;

/// Probes per interval the whole view aims to send each known non-member, shared
/// among the members: a node down for good costs the cluster about this many
/// messages per interval, not one per member.
const PROBES_PER_OUTSIDER: u64 = 2;

/// A proposal this node accepted and has not yet seen committed.
#[derive(Clone, Copy, Debug)]
struct Promise {
    epoch: Epoch,
    expires_at: Millis,
}

/// Timers, one deadline each; `poll_timeout` is the earliest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// The open round's collection time is over: commit.
    RoundEnd,
    /// Ask the round's silent candidates again.
    RoundResend,
    /// An accepted proposal saw no commit in time: stop honouring it.
    PromiseExpiry,
    /// The ring successor has been silent too long.
    Suspect,
    /// Ping the ring successor.
    Ping,
    /// Probe seeds and known nodes outside the view.
    Probe,
    /// There is a reason to change the view and nothing holds us back.
    StartChange,
}

/// In which order due timers fire within one `handle_timeout` call: finish
/// what is open before starting anything new.
const TIMERS: [Timer; 7] = [
    Timer::RoundEnd,
    Timer::RoundResend,
    Timer::PromiseExpiry,
    Timer::Suspect,
    Timer::Ping,
    Timer::Probe,
    Timer::StartChange,
];

/// Sans-IO cluster membership of one node.
///
/// # Driving it
///
/// 1. Feed inputs: `handle_message` for every decoded message,
///    `handle_unreachable` when a send failed, `handle_timeout` when the
///    deadline from `poll_timeout` has passed (early or repeated calls do
///    nothing harmful).
/// 2. After each input, drain `poll_transmit` until `None` and send each
///    message, then drain `poll_event`.
/// 3. Re-arm one timer at `poll_timeout()`; a deadline already in the past
///    means "call `handle_timeout` now".
///
/// Time only enters as `now`; nothing here reads a clock, draws random
/// numbers or touches a socket, so a simulator can run the same code.
///
/// Replies are ordinary messages to the sender (`Dest::Node`), not RPC
/// responses: a driver may post each message and ignore what comes back.
///
/// ```
/// use membership::{Membership, MembershipConfig, Millis, NodeInfo};
///
/// let info = |id: u64| NodeInfo {
///     id,
///     incarnation: 1,
///     rpc: format!("node{id}"),
///     smtp: String::new(),
///     pop: String::new(),
///     admin: String::new(),
/// };
/// let config = MembershipConfig::default();
/// let mut nodes = vec![
///     Membership::new(info(1), vec!["node2".into()], config, Millis(0)),
///     Membership::new(info(2), Vec::new(), config, Millis(0)),
/// ];
/// let mut now = Millis(0);
/// for _ in 0..100 {
///     for node in nodes.iter_mut() {
///         if node.poll_timeout().is_some_and(|at| at <= now) {
///             node.handle_timeout(now);
///         }
///     }
///     // A lossless network that delivers at once.
///     loop {
///         let sent: Vec<_> = nodes
///             .iter_mut()
///             .flat_map(|n| std::iter::from_fn(|| n.poll_transmit()).collect::<Vec<_>>())
///             .collect();
///         if sent.is_empty() {
///             break;
///         }
///         for (dest, msg) in sent {
///             if let Some(to) = nodes.iter_mut().find(|n| n.me().rpc == dest.rpc_addr()) {
///                 to.handle_message(now, msg);
///             }
///         }
///     }
///     now = now.plus_ms(10);
/// }
/// assert_eq!(nodes[0].view(), nodes[1].view());
/// assert_eq!(nodes[0].view().ids(), vec![1, 2]);
/// ```
#[derive(Debug)]
pub struct Membership {
    me: NodeInfo,
    config: MembershipConfig,
    /// Seed RPC addresses, without our own.
    seeds: Vec<String>,
    view: View,
    load_local: u32,
    known: KnownTable,
    /// Highest epoch counter seen anywhere; proposals go one above it.
    max_seen_counter: u64,
    /// A proposal we accepted and that has not been committed yet.
    promise: Option<Promise>,
    /// Our own open proposal, when coordinating.
    round: Option<Round>,
    /// View members we believe dead (excluded by the next change).
    suspects: BTreeSet<NodeId>,
    /// Members reported unreachable once and pinged to confirm; a second
    /// report before any word from them makes them suspects.
    doubted: BTreeSet<NodeId>,
    /// Nodes outside the view we heard from directly, with when.
    wanted: BTreeMap<NodeId, Millis>,
    /// Members first seen reporting another epoch than ours, with when.
    mismatch_since: BTreeMap<NodeId, Millis>,
    /// Earliest time we re-send our view's commit to a lagging member.
    resend_commit_after: BTreeMap<NodeId, Millis>,
    /// A member's epoch has disagreed with ours for too long: re-agree.
    forced: bool,
    /// When the current reasons for a change say to start (rank delay included).
    want_at: Option<Millis>,
    /// No new round before this (after a rejected proposal).
    backoff_until: Millis,
    detector: Detector,
    next_probe_at: Millis,
    /// The last known non-member probed, when there were more than
    /// `PROBE_TARGETS_MAX`: the next probe continues after it.
    probe_cursor: NodeId,
    /// Probe intervals elapsed (varies which members probe this time).
    probe_round: u64,
    /// For each seed, whether a member of the view has its address.
    seeds_in_view: Vec<bool>,
    /// The change that produced the installed view from the one before,
    /// when known: re-sent to a member lagging exactly one view behind.
    last_delta: Option<ViewDelta>,
    /// The newest commit we asked the full view of (one request per epoch).
    view_requested: Option<Epoch>,
    /// Views installed so far (part of `known_version`).
    installs: u64,
    transmits: VecDeque<(Dest, Message)>,
    events: VecDeque<Event>,
}

impl Membership {
    /// A node starting as a one-node view, epoch `{1, me}`; it probes the
    /// seeds (RPC addresses) at once and merges with whoever answers.
    pub fn new(me: NodeInfo, seeds: Vec<String>, config: MembershipConfig, now: Millis) -> Self {
        let mut seeds: Vec<String> = seeds
            .into_iter()
            .filter(|s| !s.is_empty() && *s != me.rpc)
            .collect();
        seeds.sort();
        seeds.dedup();
        let view = View::single(me.clone());
        let seeds_in_view = vec![false; seeds.len()];
        Membership {
            config: config.sanitized(),
            seeds_in_view,
            seeds,
            max_seen_counter: view.epoch.counter,
            view,
            me,
            load_local: 0,
            known: KnownTable::default(),
            promise: None,
            round: None,
            suspects: BTreeSet::new(),
            doubted: BTreeSet::new(),
            wanted: BTreeMap::new(),
            mismatch_since: BTreeMap::new(),
            resend_commit_after: BTreeMap::new(),
            forced: false,
            want_at: None,
            backoff_until: now,
            detector: Detector::watch(None, now),
            next_probe_at: now,
            probe_cursor: 0,
            probe_round: 0,
            last_delta: None,
            view_requested: None,
            installs: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A node that starts as a member of an agreed `view` (simulator and
    /// benchmark bootstrap: a large cluster without thousands of joins). The
    /// view is installed at `now` and reported by a `ViewChanged` event; if
    /// it does not name this very process, the node starts alone instead.
    pub fn in_view(
        me: NodeInfo,
        seeds: Vec<String>,
        config: MembershipConfig,
        now: Millis,
        view: View,
    ) -> Self {
        let mut machine = Membership::new(me, seeds, config, now);
        if view.contains_process(&machine.me) && view.epoch > machine.view.epoch {
            machine.install(now, view, None);
        }
        machine
    }

    // ----- inputs -------------------------------------------------------

    /// Feeds one message received from another node.
    pub fn handle_message(&mut self, now: Millis, msg: Message) {
        let header = msg.header().clone();
        if header.from.id == self.me.id {
            // Our own probe came back through a seed address that names us.
            return;
        }
        match self
            .known
            .admit(now, &header, self.view.member(header.from.id))
        {
            Admission::Ignore => return,
            Admission::Restarted => {
                // The old process is gone; whatever we thought of it is void.
                self.mismatch_since.remove(&header.from.id);
            }
            Admission::New | Admission::Same => {}
        }
        let from = header.from.clone();
        self.max_seen_counter = self.max_seen_counter.max(header.epoch.counter);
        self.suspects.remove(&from.id);
        self.doubted.remove(&from.id);
        self.detector.heard_from(from.id, now);

        // View-change traffic is sent from the view being replaced, so its
        // epoch says nothing about a member lagging behind.
        // A view request says its sender is behind; it gets the view in
        // answer, not a second copy from the lagging-member repair.
        let in_change = matches!(
            msg,
            Message::Propose { .. }
                | Message::Accept { .. }
                | Message::Reject { .. }
                | Message::ViewRequest { .. }
        );
        match msg {
            Message::Ping { .. } => {
                let reply = Message::PingAck {
                    header: self.header(),
                };
                self.send(Dest::Node(from.clone()), reply);
            }
            Message::PingAck { .. } => {
                let successor = self.detector.successor.as_ref().map(|s| s.id);
                if successor == Some(from.id) && header.epoch == self.view.epoch {
                    self.detector.confirmed();
                }
            }
            Message::Probe { .. } => {
                let reply = Message::ProbeAck {
                    header: self.header(),
                    members: self.view.members.clone(),
                };
                self.send(Dest::Node(from.clone()), reply);
            }
            Message::ProbeAck { members, .. } => {
                for member in &members {
                    if member.id != self.me.id {
                        self.known.learn(member, self.view.member(member.id));
                    }
                }
                self.known.set_reported_members(from.id, members);
            }
            Message::Propose {
                header,
                proposal,
                asked,
            } => self.on_propose(now, &from, header.epoch, proposal, &asked),
            Message::Accept {
                header,
                proposal,
                others,
            } => self.on_accept(now, &from, header.epoch, proposal, &others),
            Message::Reject {
                proposal, promised, ..
            } => self.on_reject(now, proposal, promised),
            Message::Commit { delta, .. } => self.on_commit_delta(now, &from, delta),
            Message::CommitView { view, .. } => self.on_commit(now, view),
            Message::ViewRequest { epoch, .. } => self.on_view_request(&from, epoch),
        }

        self.check_sender(now, &header, in_change);
        self.refresh_want(now);
    }

    /// The driver could not deliver a message to `to` (connect refused / timeout).
    ///
    /// A report may be stale (an RPC timeout for a message sent long ago, to
    /// a node that has since come back), so a member is only suspected when a
    /// fresh ping sent because of the first report fails too.
    pub fn handle_unreachable(&mut self, now: Millis, to: &Dest) {
        let Dest::Node(info) = to else {
            // An unidentified seed that is down tells us nothing.
            return;
        };
        if info.id == self.me.id || self.is_outdated(info) {
            return;
        }
        self.wanted.remove(&info.id);
        if let Some(round) = self.round.as_mut() {
            round.give_up_on(info.id);
            if round.complete() {
                self.commit_round(now);
            }
        }
        if self.view.contains(info.id) && !self.suspects.contains(&info.id) {
            if self.doubted.remove(&info.id) {
                self.suspects.insert(info.id);
                if self
                    .detector
                    .successor
                    .as_ref()
                    .is_some_and(|s| s.id == info.id)
                {
                    self.detector.suspected = true;
                }
            } else {
                self.doubted.insert(info.id);
                let msg = Message::Ping {
                    header: self.header(),
                };
                self.send(Dest::Node(self.freshest(info)), msg);
            }
        }
        self.refresh_want(now);
    }

    /// Runs every timer that is due at `now`; spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Millis) {
        let overdue_ms = self.detector.ping_at().map_or(0, |at| now.since_ms(at));
        if overdue_ms > self.config.ping_interval_ms {
            // We were not run for a while (process stopped, machine overloaded):
            // we sent no pings, so the successor's silence proves nothing yet.
            self.detector.last_heard = self.detector.last_heard.max(now);
            self.detector.last_chance_at = None;
        }
        for timer in TIMERS {
            if self.deadline(timer).is_some_and(|at| at <= now) {
                self.fire(timer, now);
            }
        }
    }

    /// Sets the load figure gossiped on every message this node sends.
    pub fn set_local_load(&mut self, load: u32) {
        self.load_local = load;
    }

    /// Forget a node for good (operator `node remove`): it is not probed again.
    ///
    /// It leaves `known_nodes`, its messages are ignored, and if it is in the
    /// view a view change without it follows. The operator command should
    /// reach every node: if another node re-admits the forgotten one (it is
    /// still running and talking to them), this node accepts that decision
    /// and knows it again rather than making views flap. A newer
    /// incarnation of the same id is treated as a new node.
    pub fn forget(&mut self, now: Millis, id: NodeId) {
        if id == self.me.id {
            return;
        }
        let member = self.view.member(id).cloned();
        self.known.forget(id, member.as_ref());
        self.wanted.remove(&id);
        self.mismatch_since.remove(&id);
        if self.view.contains(id) {
            self.suspects.insert(id);
        }
        self.refresh_want(now);
    }

    // ----- outputs ------------------------------------------------------

    /// Next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<(Dest, Message)> {
        self.transmits.pop_front()
    }

    /// Earliest deadline at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Millis> {
        TIMERS.iter().filter_map(|t| self.deadline(*t)).min()
    }

    /// Next event for the driver, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- queries ------------------------------------------------------

    /// The installed view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// This node's own identity.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// The timing settings in force (zero intervals raised to 1 ms).
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Last load figure gossiped by `id` (our own for our id), if ever heard.
    pub fn load_of(&self, id: NodeId) -> Option<u32> {
        if id == self.me.id {
            return Some(self.load_local);
        }
        self.known.get(id).and_then(|k| k.load)
    }

    /// Every node ever heard of, ourselves included, ascending by id
    /// (for status: alive = in view). Forgotten nodes are left out.
    ///
    /// O(N): a driver should copy it only when [`Membership::known_version`]
    /// moved, not after every input.
    pub fn known_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
        for member in &self.view.members {
            if member.id != self.me.id && !self.known.is_forgotten(member) {
                nodes.insert(member.id, self.freshest(member));
            }
        }
        for known in self.known.iter() {
            let keep = nodes
                .get(&known.info.id)
                .is_none_or(|have| have.incarnation <= known.info.incarnation);
            if keep {
                nodes.insert(known.info.id, known.info.clone());
            }
        }
        nodes.insert(self.me.id, self.me.clone());
        nodes.into_values().collect()
    }

    /// Changes whenever [`Membership::known_nodes`] may have changed.
    pub fn known_version(&self) -> u64 {
        self.known.changes().wrapping_add(self.installs)
    }

    /// The load figures gossiped by the nodes we heard from directly, by id
    /// (our own not included).
    pub fn loads(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        self.known
            .iter()
            .filter_map(|k| k.load.map(|load| (k.info.id, load)))
    }

    /// Until when this node may take its view as current for grants that must be
    /// exclusive (POP3 locks): `suspect_after_ms` after the send time of the last
    /// ping its ring successor answered from the same epoch (or after the install).
    /// A node cut off, paused or overloaded lets it run out before the others can
    /// have removed it (they wait `suspect_after_ms` of silence too), and only a
    /// fresh answer in the same epoch renews it, so it stays out until the node has
    /// caught up with a newer view. `None` in a one-node view: nobody to ask, nobody
    /// to conflict with.
    pub fn view_lease_until(&self) -> Option<Millis> {
        self.detector.successor.as_ref()?;
        Some(
            self.detector
                .confirmed_at
                .plus_ms(self.config.suspect_after_ms),
        )
    }

    /// When we last heard directly from `id`, if ever.
    pub fn last_heard(&self, id: NodeId) -> Option<Millis> {
        self.known.get(id).and_then(|k| k.last_heard)
    }

    /// True while this node coordinates a view change.
    pub fn is_coordinating(&self) -> bool {
        self.round.is_some()
    }

    /// Highest epoch this node has promised (accepted, proposed or installed)
    /// and not yet given up at `now`.
    pub fn promised(&self, now: Millis) -> Epoch {
        let mut promised = self.view.epoch;
        if let Some(p) = self.active_promise(now) {
            promised = promised.max(p.epoch);
        }
        if let Some(round) = &self.round {
            promised = promised.max(round.epoch);
        }
        promised
    }

    // ----- protocol -----------------------------------------------------

    fn header(&self) -> Header {
        Header {
            from: self.me.clone(),
            epoch: self.view.epoch,
            load: self.load_local,
        }
    }

    fn send(&mut self, to: Dest, msg: Message) {
        self.transmits.push_back((to, msg));
    }

    fn active_promise(&self, now: Millis) -> Option<Promise> {
        self.promise.filter(|p| now < p.expires_at)
    }

    /// The freshest identity for `info.id`: the table's if not older, else
    /// the view's if not older, else `info`.
    fn freshest(&self, info: &NodeInfo) -> NodeInfo {
        let mut best = info;
        if let Some(member) = self.view.member(info.id)
            && member.incarnation >= best.incarnation
        {
            best = member;
        }
        if let Some(known) = self.known.get(info.id)
            && known.info.incarnation >= best.incarnation
        {
            best = &known.info;
        }
        best.clone()
    }

    /// True if a newer incarnation of `info.id` is known (table or view).
    fn is_outdated(&self, info: &NodeInfo) -> bool {
        self.known.is_outdated(info)
            || self
                .view
                .member(info.id)
                .is_some_and(|m| m.incarnation > info.incarnation)
    }

    /// Members of our view the coordinator did not ask (besides us and it):
    /// O(excluded) when it proposed from our own view, O(N) otherwise.
    fn unasked_mates(&self, from: &NodeInfo, base: Epoch, asked: &Asked) -> Vec<NodeInfo> {
        let mate = |m: &&NodeInfo| m.id != self.me.id && m.id != from.id;
        match asked {
            Asked::ViewWithout(excluded) if base == self.view.epoch => excluded
                .iter()
                .filter_map(|id| self.view.member(*id))
                .filter(mate)
                .cloned()
                .collect(),
            // Another view than ours: we cannot tell who it lacks, so all
            // our mates are named (the coordinator skips those it asked).
            Asked::ViewWithout(_) => self.view.members.iter().filter(mate).cloned().collect(),
            Asked::Ids(ids) => self
                .view
                .members
                .iter()
                .filter(mate)
                .filter(|m| ids.binary_search(&m.id).is_err())
                .cloned()
                .collect(),
        }
    }

    /// Round 2: promise a proposal above everything we promised, or refuse.
    fn on_propose(
        &mut self,
        now: Millis,
        from: &NodeInfo,
        base: Epoch,
        proposal: Epoch,
        asked: &Asked,
    ) {
        if proposal.coordinator != from.id {
            // Only a coordinator proposes its own epochs; anything else is garbage.
            return;
        }
        self.max_seen_counter = self.max_seen_counter.max(proposal.counter);
        let promised = self.promised(now);
        let already_ours = self
            .active_promise(now)
            .is_some_and(|p| p.epoch == proposal);
        if proposal > promised || already_ours {
            // A higher proposal outranks our own open round, if any.
            if self.round.as_ref().is_some_and(|r| r.epoch < proposal) {
                self.round = None;
            }
            self.promise = Some(Promise {
                epoch: proposal,
                expires_at: now.plus_ms(self.config.commit_wait_ms),
            });
            let others = self.unasked_mates(from, base, asked);
            let reply = Message::Accept {
                header: self.header(),
                proposal,
                others,
            };
            self.send(Dest::Node(from.clone()), reply);
        } else {
            let reply = Message::Reject {
                header: self.header(),
                proposal,
                promised,
            };
            self.send(Dest::Node(from.clone()), reply);
        }
    }

    fn on_accept(
        &mut self,
        now: Millis,
        from: &NodeInfo,
        base: Epoch,
        proposal: Epoch,
        others: &[NodeInfo],
    ) {
        if self.round.as_ref().is_none_or(|r| r.epoch != proposal) {
            return;
        }
        // The accepter's view mates we did not ask: ask them now, in the
        // same round, so the merge takes in their whole view.
        let mut extra = Vec::new();
        for other in others {
            if other.id == self.me.id
                || self.suspects.contains(&other.id)
                || self.known.is_forgotten(other)
                || self.is_outdated(other)
            {
                continue;
            }
            self.known.learn(other, self.view.member(other.id));
            extra.push(self.freshest(other));
        }
        let Some(round) = self.round.as_mut() else {
            return;
        };
        round.accept(from, base);
        let added: Vec<NodeInfo> = extra
            .into_iter()
            .filter(|o| round.add_candidate(o))
            .collect();
        for candidate in added {
            let msg = Message::Propose {
                header: self.header(),
                proposal,
                asked: self.asked_for(&candidate),
            };
            self.send(Dest::Node(candidate), msg);
        }
        if self.round.as_ref().is_some_and(Round::complete) {
            self.commit_round(now);
        }
    }

    /// How the open round's proposal names who is asked, for `target`:
    /// members of our view know it, so they get the few exclusions; others
    /// get the shared id list.
    fn asked_for(&mut self, target: &NodeInfo) -> Asked {
        let me = self.me.id;
        let member = self.view.contains_process(target);
        match self.round.as_mut() {
            Some(round) if member => Asked::ViewWithout(round.excluded.clone()),
            Some(round) => Asked::Ids(round.ids(me)),
            None => Asked::Ids(Arc::new(vec![me])),
        }
    }

    /// Someone promised or installed something not lower: give this round up
    /// and let the higher coordinator finish before trying again.
    fn on_reject(&mut self, now: Millis, proposal: Epoch, promised: Epoch) {
        self.max_seen_counter = self.max_seen_counter.max(promised.counter);
        if self.round.as_ref().is_some_and(|r| r.epoch == proposal) {
            self.round = None;
            let wait_ms = self
                .config
                .proposal_wait_ms
                .saturating_add(self.rank_delay_ms());
            self.backoff_until = self.backoff_until.max(now.plus_ms(wait_ms));
        }
    }

    /// Round 3 (receiving side, a change): apply it to our view if it is
    /// its base and the digest agrees, else ask the sender for the view.
    fn on_commit_delta(&mut self, now: Millis, from: &NodeInfo, delta: ViewDelta) {
        self.max_seen_counter = self.max_seen_counter.max(delta.epoch.counter);
        if delta.epoch <= self.view.epoch || delta.epoch < self.promised(now) {
            return;
        }
        match self.view.apply(&delta) {
            // Sorted and unique by construction: no O(N) check needed.
            Some(view) => self.accept_commit(now, view, Some(delta)),
            None => {
                if self.view_requested.is_none_or(|e| e < delta.epoch) {
                    self.view_requested = Some(delta.epoch);
                    let msg = Message::ViewRequest {
                        header: self.header(),
                        epoch: delta.epoch,
                    };
                    self.send(Dest::Node(from.clone()), msg);
                }
            }
        }
    }

    /// A member could not apply our commit: send it the whole view (if it
    /// is in it; it would refuse it otherwise).
    fn on_view_request(&mut self, from: &NodeInfo, epoch: Epoch) {
        if self.view.epoch >= epoch && self.view.contains_process(from) {
            let msg = Message::CommitView {
                header: self.header(),
                view: self.view.clone(),
            };
            self.send(Dest::Node(from.clone()), msg);
        }
    }

    /// Round 3 (receiving side, a whole view): install a committed view that
    /// names us and is not older than what we promised.
    fn on_commit(&mut self, now: Millis, view: View) {
        self.max_seen_counter = self.max_seen_counter.max(view.epoch.counter);
        if !view.members.is_sorted_unique() {
            // Members must be sorted and unique; a malformed view is refused.
            return;
        }
        self.accept_commit(now, view, None);
    }

    fn accept_commit(&mut self, now: Millis, view: View, delta: Option<ViewDelta>) {
        if view.epoch <= self.view.epoch || !view.contains_process(&self.me) {
            return;
        }
        if view.epoch < self.promised(now) {
            return;
        }
        self.install(now, view, delta);
    }

    /// Newcomer and epoch checks on whoever just wrote to us.
    fn check_sender(&mut self, now: Millis, header: &Header, in_change: bool) {
        let from = &header.from;
        if !self.view.contains_process(from) {
            self.wanted.insert(from.id, now);
            return;
        }
        if in_change {
            return;
        }
        if header.epoch == self.view.epoch {
            self.mismatch_since.remove(&from.id);
            return;
        }
        if header.epoch < self.view.epoch {
            // It is in our view, so it accepted our epoch: it missed the
            // commit. Re-sending it is the cheap repair.
            let due = self
                .resend_commit_after
                .get(&from.id)
                .is_none_or(|at| *at <= now);
            if due {
                self.resend_commit_after
                    .insert(from.id, now.plus_ms(self.config.ping_interval_ms));
                let msg = match &self.last_delta {
                    Some(delta) if delta.base == header.epoch => Message::Commit {
                        header: self.header(),
                        delta: delta.clone(),
                    },
                    _ => Message::CommitView {
                        header: self.header(),
                        view: self.view.clone(),
                    },
                };
                self.send(Dest::Node(from.clone()), msg);
            }
        }
        // Disagreement that outlives a commit wait is repaired by a fresh
        // view change (it also covers the case where we are the one behind).
        let since = *self.mismatch_since.entry(from.id).or_insert(now);
        if now.since_ms(since) >= self.config.commit_wait_ms {
            self.forced = true;
        }
    }

    /// Members to exclude: suspected (or forgotten) members of the view.
    fn removals(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.suspects
            .iter()
            .copied()
            .filter(|id| *id != self.me.id && self.view.contains(*id))
    }

    fn has_reasons(&self) -> bool {
        self.removals().next().is_some() || !self.wanted.is_empty() || self.forced
    }

    /// Who a round started now would ask: the view minus suspects, plus the
    /// newcomers and the views they reported (so a merge takes in the whole
    /// other side at once), freshest identities, forgotten ones left out.
    fn candidates(&self) -> BTreeMap<NodeId, NodeInfo> {
        let mut out: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
        self.for_each_candidate(|info| {
            let fresh = self.freshest(info);
            let keep = out
                .get(&fresh.id)
                .is_none_or(|have| have.incarnation < fresh.incarnation);
            if keep {
                out.insert(fresh.id, fresh);
            }
        });
        out
    }

    /// Calls `f` for every identity a round started now would ask (an id
    /// may come more than once); see [`Membership::candidates`].
    fn for_each_candidate<'a>(&'a self, mut f: impl FnMut(&'a NodeInfo)) {
        let mut offer = |info: &'a NodeInfo| {
            if info.id != self.me.id
                && !self.suspects.contains(&info.id)
                && !self.known.is_forgotten(info)
            {
                f(info);
            }
        };
        for member in &self.view.members {
            offer(member);
        }
        for id in self.wanted.keys() {
            if let Some(known) = self.known.get(*id) {
                offer(&known.info);
                for hinted in &known.reported_members {
                    offer(hinted);
                }
            }
        }
    }

    /// Our position among everyone a change would involve, lowest id first
    /// (the number of distinct candidate ids below ours; see
    /// [`Membership::for_each_candidate`]). It runs on every message while a
    /// change is pending, so the view's part is counted in O(log N plus
    /// suspects plus forgotten), not by walking the view; only views
    /// reported by newcomers in probe answers are walked.
    fn rank(&self) -> u64 {
        let me = self.me.id;
        let view = &self.view;
        let passes = |info: &NodeInfo| {
            info.id != me && !self.suspects.contains(&info.id) && !self.known.is_forgotten(info)
        };
        // Members below us that are not candidates.
        let mut failing: BTreeSet<NodeId> = self
            .suspects
            .range(..me)
            .copied()
            .filter(|id| view.contains(*id))
            .collect();
        for id in self.known.forgotten_ids().filter(|id| *id < me) {
            if view.member(id).is_some_and(|m| !passes(m)) {
                failing.insert(id);
            }
        }
        let members_below = view.members.count_below(me) - failing.len();
        // Ids below us that only the newcomers bring in.
        let mut extra: BTreeSet<NodeId> = BTreeSet::new();
        for id in self.wanted.keys() {
            let Some(known) = self.known.get(*id) else {
                continue;
            };
            for info in std::iter::once(&known.info).chain(known.reported_members.iter()) {
                if info.id < me && passes(info) && !view.member(info.id).is_some_and(passes) {
                    extra.insert(info.id);
                }
            }
        }
        (members_below + extra.len()) as u64
    }

    /// Lower-ranked nodes start merges first; the others usually receive
    /// their proposal before their own turn and never start a competing one.
    fn rank_delay_ms(&self) -> u64 {
        let step_ms = self.config.rank_step_ms();
        step_ms / 2 + self.rank().min(RANK_DELAY_CAP) * step_ms
    }

    /// Drops stale newcomers and (re)computes when a change should start.
    fn refresh_want(&mut self, now: Millis) {
        let ttl_ms = self.config.wanted_ttl_ms();
        let view = &self.view;
        let known = &self.known;
        self.wanted.retain(|id, heard| {
            now.since_ms(*heard) < ttl_ms
                && known
                    .get(*id)
                    .is_some_and(|k| !view.contains_process(&k.info))
        });
        if !self.has_reasons() {
            self.want_at = None;
            return;
        }
        // Only the detecting node suspects a silent successor, so there is
        // no crowd to stagger: act at once. Newcomers are seen by many.
        let delay_ms = if self.removals().next().is_some() {
            0
        } else {
            self.rank_delay_ms()
        };
        let at = now.plus_ms(delay_ms);
        self.want_at = Some(self.want_at.map_or(at, |old| old.min(at)));
    }

    /// Round 1: propose an epoch above anything seen to every candidate.
    fn start_round(&mut self, now: Millis) {
        self.max_seen_counter += 1;
        let epoch = Epoch::proposed_by(self.max_seen_counter, &self.me);
        let candidates = self.candidates();
        let resend_at = now.plus_ms(self.resend_interval_ms());
        let targets: Vec<NodeInfo> = candidates.values().cloned().collect();
        let mut round = Round::new(
            epoch,
            candidates,
            now.plus_ms(self.config.proposal_wait_ms),
            Some(resend_at),
        );
        round.excluded = self
            .view
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != self.me.id && !round.candidates.contains_key(id))
            .collect();
        self.round = Some(round);
        for candidate in targets {
            let msg = Message::Propose {
                header: self.header(),
                proposal: epoch,
                asked: self.asked_for(&candidate),
            };
            self.send(Dest::Node(candidate), msg);
        }
        self.want_at = None;
        self.forced = false;
        if self.round.as_ref().is_some_and(Round::complete) {
            self.commit_round(now);
        }
    }

    /// How long the last-chance ping of a silent successor may take.
    fn last_chance_grace_ms(&self) -> u64 {
        (self.config.ping_interval_ms / 2).max(1)
    }

    /// Silent candidates are asked again twice within the collection time.
    fn resend_interval_ms(&self) -> u64 {
        (self.config.proposal_wait_ms / 3).max(1)
    }

    /// Re-sends the proposal to candidates that have not answered.
    fn resend_proposal(&mut self, now: Millis) {
        let interval_ms = self.resend_interval_ms();
        let header = self.header();
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let next = now.plus_ms(interval_ms);
        // No resend so late that its answer could not beat the deadline.
        round.resend_at = (next.plus_ms(interval_ms) <= round.deadline).then_some(next);
        let targets: Vec<NodeInfo> = round.unanswered().cloned().collect();
        let proposal = round.epoch;
        for target in targets {
            let msg = Message::Propose {
                header: header.clone(),
                proposal,
                asked: self.asked_for(&target),
            };
            self.send(Dest::Node(target), msg);
        }
    }

    /// Round 3 (coordinator side): commit to ourselves and every accepter.
    fn commit_round(&mut self, now: Millis) {
        let Some(round) = self.round.take() else {
            return;
        };
        // Asked but silent: it had its chance; only fresh contact brings it back.
        for id in round.silent() {
            self.wanted.remove(&id);
        }
        let (view, delta) = round.view(&self.me, &self.view);
        self.install(now, view, Some(delta.clone()));
        let resend_after = now.plus_ms(self.config.ping_interval_ms);
        for accepter in round.accepted.values() {
            // An accepter that was in our old view gets the change; anyone
            // else (a newcomer, the other side of a merge) the whole view.
            let msg = if round.accepted_from.get(&accepter.id) == Some(&delta.base) {
                Message::Commit {
                    header: self.header(),
                    delta: delta.clone(),
                }
            } else {
                Message::CommitView {
                    header: self.header(),
                    view: self.view.clone(),
                }
            };
            self.send(Dest::Node(accepter.clone()), msg);
            // Just sent: a lagging epoch from it in flight needs no resend.
            self.resend_commit_after.insert(accepter.id, resend_after);
        }
    }

    /// Installs `view`; `delta` is the change from the current view that
    /// produced it, when there is one (O(change) work instead of O(N)).
    fn install(&mut self, now: Millis, view: View, delta: Option<ViewDelta>) {
        self.max_seen_counter = self.max_seen_counter.max(view.epoch.counter);
        if self.promise.is_some_and(|p| p.epoch <= view.epoch) {
            self.promise = None;
        }
        if self.round.as_ref().is_some_and(|r| r.epoch <= view.epoch) {
            self.round = None;
        }
        let delta = delta.filter(|d| d.base == self.view.epoch);
        // Members that leave the view stay known (and are probed) here.
        let departed: Vec<NodeInfo> = match &delta {
            Some(d) => d
                .removed
                .iter()
                .filter_map(|id| self.view.member(*id))
                .cloned()
                .collect(),
            None => self
                .view
                .members
                .iter()
                .filter(|m| !view.contains(m.id))
                .cloned()
                .collect(),
        };
        for gone in departed.iter().filter(|m| m.id != self.me.id) {
            self.known.learn(gone, None);
        }
        // A node we forgot but the cluster re-admitted is alive and wanted
        // by the others: fighting that decision would only make views
        // flap, so it is known again.
        let readmitted: Vec<NodeInfo> = self
            .known
            .forgotten_ids()
            .filter(|id| *id != self.me.id)
            .filter_map(|id| view.member(id))
            .cloned()
            .collect();
        for member in &readmitted {
            self.known.unforget(member);
        }
        // Table entries older than the view's identity give way to it.
        let newer: Vec<NodeInfo> = self
            .known
            .iter()
            .filter_map(|k| {
                view.member(k.info.id)
                    .filter(|m| m.incarnation > k.info.incarnation)
            })
            .cloned()
            .collect();
        for member in &newer {
            self.known.learn(member, None);
        }
        self.seeds_in_view = self.seeds_in(&view, delta.as_ref(), &departed);
        self.last_delta = delta;
        self.installs += 1;
        // Everyone in a fresh view just accepted it, so old suspicions are
        // void.
        self.suspects.clear();
        self.doubted.clear();
        self.mismatch_since.clear();
        self.resend_commit_after.clear();
        self.forced = false;
        self.want_at = None;
        self.detector = Detector::watch(successor(&view, self.me.id).cloned(), now);
        self.view_requested = None;
        self.view = view;
        self.events.push_back(Event::ViewChanged(self.view.clone()));
        self.refresh_want(now);
    }

    /// For each seed, whether a member of `view` has its address: updated
    /// from the change when there is one, else from a walk of the view.
    fn seeds_in(&self, view: &View, delta: Option<&ViewDelta>, departed: &[NodeInfo]) -> Vec<bool> {
        let walk = |seed: &String| view.members.iter().any(|m| m.rpc == *seed);
        let Some(delta) = delta else {
            return self.seeds.iter().map(walk).collect();
        };
        self.seeds
            .iter()
            .zip(&self.seeds_in_view)
            .map(|(seed, was)| {
                let replaced = delta
                    .added
                    .iter()
                    .filter_map(|a| self.view.member(a.id))
                    .chain(departed);
                if replaced.into_iter().any(|m| m.rpc == *seed) {
                    walk(seed)
                } else {
                    *was || delta.added.iter().any(|m| m.rpc == *seed)
                }
            })
            .collect()
    }

    fn probe(&mut self) {
        // Known nodes outside the view, in turn from where the last probe stopped.
        // The members share the work: about PROBES_PER_OUTSIDER probes per outsider
        // per interval in all, at most PROBE_TARGETS_MAX from any one node.
        self.probe_round += 1;
        let members = self.view.members.len().max(1) as u64;
        let outside = |k: &&crate::known::KnownNode| !self.view.contains_process(&k.info);
        // O(known) per interval, as finding the outsiders always was.
        let outsiders = self.known.iter().filter(outside).count() as u64;
        let want_milli = PROBES_PER_OUTSIDER * outsiders * 1000 / members;
        let draw = crate::hash::salted(
            self.me.id ^ self.me.incarnation.rotate_left(17),
            self.probe_round,
        ) % 1000;
        let quota = (want_milli / 1000 + u64::from(draw < want_milli % 1000))
            .min(PROBE_TARGETS_MAX as u64) as usize;
        if self.probe_round == 1 {
            // Members start at different places in the known list.
            self.probe_cursor = crate::hash::salted(self.me.id, self.me.incarnation);
        }
        let mut picked: Vec<NodeInfo> = if quota == 0 {
            Vec::new()
        } else {
            self.known
                .iter_above(self.probe_cursor)
                .chain(self.known.iter())
                .filter(outside)
                .take(quota)
                .map(|k| k.info.clone())
                .collect()
        };
        if let Some(last) = picked.last() {
            self.probe_cursor = last.id;
        }
        // A wrap past the end can meet the same nodes again.
        picked.sort_by_key(|k| k.id);
        picked.dedup_by_key(|k| k.id);
        let mut targets: Vec<Dest> = picked.drain(..).map(Dest::Node).collect();
        for (seed, in_view) in self.seeds.iter().zip(&self.seeds_in_view) {
            let identified = *in_view
                || self.known.iter().any(|k| k.info.rpc == *seed)
                || self.known.is_forgotten_addr(seed);
            if !identified {
                targets.push(Dest::Addr(seed.clone()));
            }
        }
        for target in targets {
            let msg = Message::Probe {
                header: self.header(),
            };
            self.send(target, msg);
        }
    }

    // ----- timers -------------------------------------------------------

    fn deadline(&self, timer: Timer) -> Option<Millis> {
        match timer {
            Timer::RoundEnd => self.round.as_ref().map(|r| r.deadline),
            Timer::RoundResend => self.round.as_ref().and_then(|r| r.resend_at),
            Timer::PromiseExpiry => self.promise.map(|p| p.expires_at),
            Timer::Suspect => self
                .detector
                .suspect_at(self.config.suspect_after_ms, self.last_chance_grace_ms()),
            Timer::Ping => self.detector.ping_at(),
            Timer::Probe => Some(self.next_probe_at),
            Timer::StartChange => {
                if self.round.is_some() || self.promise.is_some() {
                    return None;
                }
                self.want_at.map(|at| at.max(self.backoff_until))
            }
        }
    }

    fn fire(&mut self, timer: Timer, now: Millis) {
        match timer {
            Timer::RoundEnd => self.commit_round(now),
            Timer::RoundResend => self.resend_proposal(now),
            Timer::PromiseExpiry => {
                self.promise = None;
                self.refresh_want(now);
            }
            Timer::Suspect => {
                if self.detector.last_chance_at.is_none() {
                    // Silence ran out: one last ping right now (the Ping
                    // timer fires next), so that a few unlucky losses in a
                    // row, or an answer racing the deadline, do not cost a
                    // healthy node its place.
                    self.detector.last_chance_at = Some(now);
                    self.detector.next_ping_at = now;
                } else {
                    self.detector.suspected = true;
                    if let Some(s) = &self.detector.successor {
                        self.suspects.insert(s.id);
                    }
                    self.refresh_want(now);
                }
            }
            Timer::Ping => {
                self.detector.next_ping_at = now.plus_ms(self.config.ping_interval_ms);
                if let Some(s) = self.detector.successor.clone() {
                    self.detector.ping_sent(now);
                    let target = self.freshest(&s);
                    let msg = Message::Ping {
                        header: self.header(),
                    };
                    self.send(Dest::Node(target), msg);
                }
            }
            Timer::Probe => {
                self.next_probe_at = now.plus_ms(self.config.probe_interval_ms);
                self.probe();
            }
            Timer::StartChange => {
                self.refresh_want(now);
                let due = self
                    .deadline(Timer::StartChange)
                    .is_some_and(|at| at <= now);
                if due && self.has_reasons() {
                    self.start_round(now);
                }
            }
        }
    }
}
