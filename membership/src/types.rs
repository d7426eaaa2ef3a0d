//! Plain data shared by every part of the crate: node identities, time, epochs,
//! views and message destinations.

use serde::{Deserialize, Serialize};

/// A node's cluster-wide identifier, fixed in its configuration.
pub type NodeId = u64;

/// Milliseconds on the driver's monotonic clock.
///
/// The state machine never reads a clock: every `handle_*` call carries `now`,
/// and deadlines come back out of `poll_timeout` in the same unit.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// This instant moved `delta_ms` later, saturating instead of overflowing.
    pub fn plus_ms(self, delta_ms: u64) -> Millis {
        Millis(self.0.saturating_add(delta_ms))
    }

    /// Milliseconds elapsed from `earlier` to `self` (0 if `earlier` is later).
    pub fn since_ms(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A node's identity and endpoints, gossiped so every node can print the cluster table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Cluster-wide node id (stable across restarts).
    pub id: NodeId,
    /// Which life of this node id this is: the driver passes the process start
    /// time (wall-clock ms), so a restarted node outranks its former self and
    /// late messages from the old process are ignored.
    #[serde(default)]
    pub incarnation: u64,
    /// Address of the inter-node RPC endpoint (where membership messages go).
    pub rpc: String,
    /// Address of the SMTP listener.
    pub smtp: String,
    /// Address of the POP3 listener.
    pub pop: String,
    /// Address of the admin HTTP API.
    pub admin: String,
}

impl NodeInfo {
    /// True when `other` is the same process: same id and same incarnation.
    pub fn same_process(&self, other: &NodeInfo) -> bool {
        self.id == other.id && self.incarnation == other.incarnation
    }
}

/// Totally ordered view epoch: a counter, ties broken by coordinator id, then by the
/// coordinator's incarnation.
///
/// The incarnation makes an epoch name one coordinator *process*: a restarted node
/// has forgotten the counters its former self used, and without it could commit
/// `{2, node 1}` again with other members (found by `porcupine sim vopr`, seed 508
/// at `--nodes-max 12`: nodes 1, 6, 7 restarted together and merged before hearing
/// the rest of the cluster).
///
/// Field order matters: the derived `Ord` compares `counter` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Grows by one with every view change a coordinator proposes.
    pub counter: u64,
    /// The node that proposed this epoch; breaks ties between concurrent coordinators.
    pub coordinator: NodeId,
    /// The proposing process's incarnation (see above).
    pub incarnation: u64,
}

impl Epoch {
    /// The epoch of the one-node view process `me` starts in.
    pub fn initial(me: NodeId) -> Epoch {
        Epoch {
            counter: 1,
            coordinator: me,
            incarnation: 0,
        }
    }

    /// Epoch `counter` proposed by process `coordinator`.
    pub fn proposed_by(counter: u64, coordinator: &NodeInfo) -> Epoch {
        Epoch {
            counter,
            coordinator: coordinator.id,
            incarnation: coordinator.incarnation,
        }
    }
}

/// Members per chunk of a [`Members`] list once it is split; a chunk that
/// grows to twice this is halved.
const CHUNK_LEN: usize = 64;

/// A stable 64-bit hash of one identity (id, incarnation and endpoints).
/// A view's digest is the wrapping sum of its members' hashes, so adding or
/// removing one member updates it in O(1).
pub fn identity_hash(info: &NodeInfo) -> u64 {
    let mut hash = crate::hash::fnv1a64(&info.id.to_le_bytes());
    for part in [
        &info.incarnation.to_le_bytes()[..],
        info.rpc.as_bytes(),
        info.smtp.as_bytes(),
        info.pop.as_bytes(),
        info.admin.as_bytes(),
    ] {
        // Length-prefixed, so moving bytes between fields changes the hash.
        hash = crate::hash::fnv1a64_extend(hash, &(part.len() as u64).to_le_bytes());
        hash = crate::hash::fnv1a64_extend(hash, part);
    }
    crate::hash::fmix64(hash)
}

/// The members of a view, sorted by id: a persistent list of shared chunks.
///
/// Cloning is O(1) (views travel in events, messages and simulator logs
/// without copies), lookups by id are O(log N), and [`Members::apply`]
/// copies only the chunks a change touches, so nodes that derive the same
/// view from the same base share all the rest. The digest (wrapping sum of
/// [`identity_hash`]) is kept up to date on every change.
///
/// On the wire it is a plain sequence of `NodeInfo`, as `Vec<NodeInfo>` was.
#[derive(Clone, Default)]
pub struct Members {
    chunks: std::sync::Arc<Vec<Chunk>>,
    len: usize,
    digest: u64,
}

#[derive(Clone, Debug)]
struct Chunk {
    items: std::sync::Arc<Vec<NodeInfo>>,
    /// Members in the chunks before this one.
    before: usize,
}

impl Members {
    /// How many members.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Wrapping sum of the members' [`identity_hash`]es.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The members in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &NodeInfo> + '_ {
        self.chunks.iter().flat_map(|c| c.items.iter())
    }

    /// The member with the lowest id.
    pub fn first(&self) -> Option<&NodeInfo> {
        self.chunks.first().and_then(|c| c.items.first())
    }

    /// The chunk that holds `id` if it is a member (or where it would go).
    fn chunk_of(&self, id: NodeId) -> usize {
        self.chunks
            .partition_point(|c| c.items.last().is_some_and(|m| m.id < id))
    }

    /// The member with this id, if any.
    pub fn get(&self, id: NodeId) -> Option<&NodeInfo> {
        let chunk = self.chunks.get(self.chunk_of(id))?;
        let i = chunk.items.binary_search_by_key(&id, |m| m.id).ok()?;
        chunk.items.get(i)
    }

    /// How many members have an id below `id`.
    pub fn count_below(&self, id: NodeId) -> usize {
        match self.chunks.get(self.chunk_of(id)) {
            Some(chunk) => chunk.before + chunk.items.partition_point(|m| m.id < id),
            None => self.len,
        }
    }

    /// The first member with an id above `id`, if any.
    pub fn next_above(&self, id: NodeId) -> Option<&NodeInfo> {
        let mut c = self.chunk_of(id);
        while let Some(chunk) = self.chunks.get(c) {
            let i = chunk.items.partition_point(|m| m.id <= id);
            if let Some(m) = chunk.items.get(i) {
                return Some(m);
            }
            c += 1;
        }
        None
    }

    /// True when ids strictly ascend (sorted, no duplicates).
    pub fn is_sorted_unique(&self) -> bool {
        let mut last: Option<NodeId> = None;
        self.iter().all(|m| {
            let ok = last.is_none_or(|l| l < m.id);
            last = Some(m.id);
            ok
        })
    }

    /// True when both share the same storage (hence are equal).
    pub fn ptr_eq(&self, other: &Members) -> bool {
        std::sync::Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// These members without `removed` (ids) and with `added` (each
    /// replacing a member with its id, if any). Copies only the chunks it
    /// touches; the result shares the rest with `self`.
    pub fn apply(&self, removed: &[NodeId], added: &[NodeInfo]) -> Members {
        let mut out = self.clone();
        if removed.is_empty() && added.is_empty() {
            return out;
        }
        let chunks = std::sync::Arc::make_mut(&mut out.chunks);
        let find = |chunks: &Vec<Chunk>, id: NodeId| {
            chunks
                .partition_point(|c| c.items.last().is_some_and(|m| m.id < id))
                .min(chunks.len().saturating_sub(1))
        };
        for id in removed {
            let c = find(chunks, *id);
            let Some(chunk) = chunks.get_mut(c) else {
                continue;
            };
            if let Ok(i) = chunk.items.binary_search_by_key(id, |m| m.id) {
                let gone = std::sync::Arc::make_mut(&mut chunk.items).remove(i);
                out.digest = out.digest.wrapping_sub(identity_hash(&gone));
                out.len -= 1;
                if chunk.items.is_empty() && chunks.len() > 1 {
                    chunks.remove(c);
                }
            }
        }
        for info in added {
            if chunks.is_empty() {
                chunks.push(Chunk {
                    items: std::sync::Arc::new(Vec::new()),
                    before: 0,
                });
            }
            let c = find(chunks, info.id);
            let Some(chunk) = chunks.get_mut(c) else {
                continue;
            };
            let items = std::sync::Arc::make_mut(&mut chunk.items);
            match items.binary_search_by_key(&info.id, |m| m.id) {
                Ok(i) => {
                    let old = std::mem::replace(&mut items[i], info.clone());
                    out.digest = out.digest.wrapping_sub(identity_hash(&old));
                }
                Err(i) => {
                    items.insert(i, info.clone());
                    out.len += 1;
                }
            }
            out.digest = out.digest.wrapping_add(identity_hash(info));
            if items.len() >= 2 * CHUNK_LEN {
                let tail = items.split_off(CHUNK_LEN);
                chunks.insert(
                    c + 1,
                    Chunk {
                        items: std::sync::Arc::new(tail),
                        before: 0,
                    },
                );
            }
        }
        let mut before = 0;
        for chunk in chunks.iter_mut() {
            chunk.before = before;
            before += chunk.items.len();
        }
        out
    }
}

impl FromIterator<NodeInfo> for Members {
    /// Members in the order given (a view's are sorted by id; see
    /// [`Members::is_sorted_unique`]).
    fn from_iter<I: IntoIterator<Item = NodeInfo>>(iter: I) -> Self {
        let mut chunks = Vec::new();
        let mut len = 0;
        let mut digest = 0u64;
        let mut items = Vec::with_capacity(CHUNK_LEN);
        for info in iter {
            digest = digest.wrapping_add(identity_hash(&info));
            items.push(info);
            if items.len() == CHUNK_LEN {
                let full = std::mem::replace(&mut items, Vec::with_capacity(CHUNK_LEN));
                chunks.push(Chunk {
                    items: std::sync::Arc::new(full),
                    before: len,
                });
                len += CHUNK_LEN;
            }
        }
        if !items.is_empty() {
            let rest = items.len();
            chunks.push(Chunk {
                items: std::sync::Arc::new(items),
                before: len,
            });
            len += rest;
        }
        Members {
            chunks: std::sync::Arc::new(chunks),
            len,
            digest,
        }
    }
}

impl<'a> IntoIterator for &'a Members {
    type Item = &'a NodeInfo;
    type IntoIter = Box<dyn DoubleEndedIterator<Item = &'a NodeInfo> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl PartialEq for Members {
    fn eq(&self, other: &Members) -> bool {
        self.ptr_eq(other)
            || (self.len == other.len
                && self.digest == other.digest
                && self.iter().eq(other.iter()))
    }
}

impl Eq for Members {}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Length first: postcard (the node's encoding) needs it up front.
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for member in self.iter() {
            seq.serialize_element(member)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<NodeInfo>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// An agreed membership: the live nodes and the epoch that named them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The epoch this view was committed under.
    pub epoch: Epoch,
    /// The live nodes, sorted by id, no duplicate ids.
    pub members: Members,
}

impl View {
    /// The one-node view a fresh node starts with.
    pub fn single(me: NodeInfo) -> View {
        View {
            epoch: Epoch::proposed_by(1, &me),
            members: std::iter::once(me).collect(),
        }
    }

    /// The member with this id, if any.
    pub fn member(&self, id: NodeId) -> Option<&NodeInfo> {
        self.members.get(id)
    }

    /// True when a node with this id is a member (any incarnation).
    pub fn contains(&self, id: NodeId) -> bool {
        self.member(id).is_some()
    }

    /// True when exactly this process (id and incarnation) is a member.
    pub fn contains_process(&self, info: &NodeInfo) -> bool {
        self.member(info.id).is_some_and(|m| m.same_process(info))
    }

    /// Member ids in ascending order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// What turns `base` into this view: O(N) walk of both member lists.
    pub fn delta_from(&self, base: &View) -> ViewDelta {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        let mut old = base.members.iter().peekable();
        let mut new = self.members.iter().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (Some(o), Some(n)) if o.id == n.id => {
                    if o != n {
                        added.push((*n).clone());
                    }
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o.id < n.id => {
                    removed.push(o.id);
                    old.next();
                }
                (Some(_), Some(n)) => {
                    added.push((*n).clone());
                    new.next();
                }
                (Some(o), None) => {
                    removed.push(o.id);
                    old.next();
                }
                (None, Some(n)) => {
                    added.push((*n).clone());
                    new.next();
                }
                (None, None) => break,
            }
        }
        ViewDelta {
            epoch: self.epoch,
            base: base.epoch,
            removed,
            added,
            len: self.members.len() as u64,
            digest: self.members.digest(),
        }
    }

    /// The view `delta` describes, if it applies to this one: the base
    /// epoch matches and the result has the announced size and digest.
    pub fn apply(&self, delta: &ViewDelta) -> Option<View> {
        if delta.base != self.epoch {
            return None;
        }
        let members = self.members.apply(&delta.removed, &delta.added);
        (members.len() as u64 == delta.len && members.digest() == delta.digest).then_some(View {
            epoch: delta.epoch,
            members,
        })
    }
}

/// A committed view as a change to the view before it: what a `Commit`
/// carries, O(change) bytes instead of O(N).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDelta {
    /// The committed epoch.
    pub epoch: Epoch,
    /// The epoch of the view the change applies to.
    pub base: Epoch,
    /// Ids of base members that are not in the new view.
    pub removed: Vec<NodeId>,
    /// Members new to the view, or whose identity changed (a restart).
    pub added: Vec<NodeInfo>,
    /// Members in the new view.
    pub len: u64,
    /// [`Members::digest`] of the new view; a mismatch after applying the
    /// change means the receiver's base differs, and it asks for the view.
    pub digest: u64,
}

/// Where a message goes: a known node, or a bare address (seed not yet identified).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A node we know by identity; send to its `rpc` address.
    Node(NodeInfo),
    /// An RPC address whose node we do not know yet (a seed).
    Addr(String),
}

impl Dest {
    /// The RPC address the driver should deliver to.
    pub fn rpc_addr(&self) -> &str {
        match self {
            Dest::Node(info) => &info.rpc,
            Dest::Addr(addr) => addr,
        }
    }

    /// The node id, when the destination is a known node.
    pub fn node_id(&self) -> Option<NodeId> {
        match self {
            Dest::Node(info) => Some(info.id),
            Dest::Addr(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn info(id: NodeId, incarnation: u64) -> NodeInfo {
        NodeInfo {
            id,
            incarnation,
            rpc: format!("r{id}"),
            smtp: String::new(),
            pop: String::new(),
            admin: String::new(),
        }
    }

    /// A tiny deterministic generator (no RNG crate needed here).
    fn next(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn members_match_a_sorted_map_through_many_changes() {
        let mut model: BTreeMap<NodeId, NodeInfo> =
            (0..500).map(|i| (i * 3, info(i * 3, 1))).collect();
        let mut members: Members = model.values().cloned().collect();
        let original = members.clone();
        let mut state = 7;
        for round in 0..300 {
            let mut removed = Vec::new();
            let mut added = Vec::new();
            for _ in 0..(next(&mut state) % 4) {
                removed.push(next(&mut state) % 1_600);
            }
            for _ in 0..(next(&mut state) % 4) {
                let id = next(&mut state) % 1_600;
                added.push(info(id, round));
            }
            added.sort_by_key(|m| m.id);
            added.dedup_by_key(|m| m.id);
            for id in &removed {
                model.remove(id);
            }
            for a in &added {
                model.insert(a.id, a.clone());
            }
            members = members.apply(&removed, &added);
            let expected: Members = model.values().cloned().collect();
            assert_eq!(members.len(), model.len());
            assert_eq!(members.digest(), expected.digest());
            assert!(members.iter().eq(model.values()));
            assert!(members.is_sorted_unique());
            for probe in [0, 1, 2, 3, 700, 1_499, 1_600] {
                assert_eq!(members.get(probe), model.get(&probe));
                assert_eq!(members.count_below(probe), model.range(..probe).count());
                assert_eq!(
                    members.next_above(probe),
                    model.range(probe + 1..).next().map(|(_, v)| v)
                );
            }
        }
        // The original is untouched (persistent).
        assert_eq!(original.len(), 500);
        assert!(original.iter().map(|m| m.id).eq((0..500).map(|i| i * 3)));
    }

    #[test]
    fn a_delta_round_trips_and_a_wrong_base_or_digest_does_not_apply() {
        let view = |counter, ids: &[NodeId]| View {
            epoch: Epoch {
                counter,
                coordinator: 1,
                incarnation: 0,
            },
            members: ids.iter().map(|id| info(*id, 1)).collect(),
        };
        let base = view(2, &[1, 2, 3, 5]);
        let mut next = view(3, &[1, 3, 4, 5]);
        next.members = next.members.apply(&[], &[info(5, 2)]);
        let delta = next.delta_from(&base);
        assert_eq!(delta.removed, vec![2]);
        assert_eq!(delta.added, vec![info(4, 1), info(5, 2)]);
        assert_eq!(base.apply(&delta), Some(next.clone()));
        assert_eq!(view(1, &[1, 2, 3, 5]).apply(&delta), None, "other base");
        let other = View {
            epoch: base.epoch,
            members: [1, 2, 3, 6].into_iter().map(|id| info(id, 1)).collect(),
        };
        assert_eq!(other.apply(&delta), None, "same epoch, other members");
        let empty: Members = std::iter::empty().collect();
        assert_eq!(empty.apply(&[], &[info(9, 1)]).len(), 1);
        assert_eq!(empty.get(3), None);
        assert_eq!(empty.next_above(3), None);
    }
}
