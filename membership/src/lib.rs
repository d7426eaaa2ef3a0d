//! # membership — who is in the cluster, and who does what
//!
//! Sans-IO cluster membership for Porcupine: a failure detector, a
//! three-round view change (after Porcupine, TOCS 2000), load gossip, the user
//! map (bucket → user manager) and the balancing policy that picks where new
//! mail is stored. Nothing here opens a socket, reads a clock, arms a timer or
//! draws an unseeded random number: time comes in as [`Millis`], messages
//! leave through [`Membership::poll_transmit`], so the node daemon (real time,
//! HTTP RPC) and the simulator (virtual time) drive exactly the same code.
//!
//! ## Protocol in brief
//!
//! - **Failure detection.** Members form a ring sorted by id; each pings its
//!   successor every `ping_interval_ms`. Silence for `suspect_after_ms`
//!   earns one last ping; unanswered within `ping_interval_ms / 2`, it makes
//!   the pinger coordinate a view change without the suspect. A driver
//!   report that a member is unreachable is confirmed first (one more ping;
//!   a second report before any answer makes it a suspect), because an RPC
//!   timeout can arrive long after the node came back.
//! - **Discovery.** Every `probe_interval_ms` a node probes its unidentified
//!   seeds and up to 4 known nodes outside its view (in turn, when there
//!   are more). Any message from a node outside the view
//!   starts a change that takes it in; a `ProbeAck` carries the sender's view
//!   and an `Accept` names the accepter's view mates the proposal missed, so
//!   a merge takes in both sides whole instead of stealing single nodes.
//! - **Epoch repair.** A member that reports an older epoch missed a commit:
//!   it is sent the commit again. Disagreement lasting `commit_wait_ms`
//!   forces a fresh view change.
//! - **View change.** Round 1: the coordinator proposes epoch
//!   `{max counter seen + 1, me}` to the candidates (view minus suspects plus
//!   newcomers), re-asking silent ones twice. Round 2: a node accepts a
//!   proposal above everything it has promised or installed, else rejects it
//!   naming its higher epoch (the coordinator gives up and backs off).
//!   Round 3: once all answered or after `proposal_wait_ms`, the coordinator
//!   commits "itself + accepters" to them. A commit is installed only if it
//!   names this node and is not below its promise.
//! - **Cost of a change: O(N) messages and bytes in all.** A `Propose` to a
//!   member of the coordinator's view names only who it leaves out
//!   (`Asked::ViewWithout`; nodes from outside get the id list, one shared
//!   `Arc`). A `Commit` to an accepter that was in the coordinator's view is
//!   the change against that view (`ViewDelta`: removed ids, added
//!   identities, size and a digest, the wrapping sum of a stable 64-bit hash
//!   of every identity); anyone else — a newcomer, the other side of a
//!   merge — gets the whole view (`CommitView`), and so does a node whose
//!   base or digest does not match, after a `ViewRequest`. Views are
//!   persistent chunked lists (`Members`): a change copies only the chunks it
//!   touches, events and messages share the rest, and the known-node table
//!   holds only nodes outside the view or heard from directly, so the work
//!   per message stays O(log N). Measured with `viewbench` (below).
//! - **Livelock.** Merges are started first by the lowest-ranked node among
//!   the candidates (deterministic delay of half a step plus `rank` steps of
//!   `ping_interval_ms / 5`, rank capped at 8); a node bound by a promise
//!   starts nothing until the commit arrives or `commit_wait_ms` passes; a
//!   higher proposal makes a coordinator abandon its own round.
//! - **Identity.** `NodeInfo::incarnation` (the driver's process start
//!   time) orders lives of one node id: a newer one replaces the old entry
//!   everywhere, messages from an older one are dropped.
//!
//! ## Module map
//!
//! - [`types`]: `NodeId`, `Millis`, `NodeInfo`, `Epoch`, `View`, `Dest`.
//! - [`message`]: wire `Message`s with their `Header`, and `Event`s.
//! - [`config`]: `MembershipConfig` (timings) and its validation.
//! - `machine`: the `Membership` state machine (inputs, outputs, timers).
//! - `ring`: ring successor and the silence detector.
//! - `round`: a coordinator's open proposal.
//! - `known`: every node heard of, incarnations, forgotten nodes.
//! - [`user_map`]: `bucket_of` and the Maglev `UserMap`.
//! - [`balance`]: `pick_targets`, where a new fragment goes.
//! - `hash`: the stable hash functions both of the above rely on.
//! - [`sim`]: the seeded in-process cluster simulator with its invariant
//!   checkers (cluster tests, `viewbench`, the cluster simulator).
//!
//! ## Benchmark
//!
//! `cargo run --release -p membership --example viewbench -- 100 1000 10000`
//! starts N agreed nodes on an instant network, kills one, then adds one,
//! and prints per change the messages, bytes (postcard, as the node sends
//! them), bytes per member and CPU seconds.
#![warn(missing_docs)]

pub mod balance;
pub mod config;
mod hash;
mod known;
mod machine;
pub mod message;
mod ring;
mod round;
pub mod sim;
pub mod types;
pub mod user_map;

pub use balance::pick_targets;
pub use config::{ConfigError, MembershipConfig};
pub use machine::Membership;
pub use message::{Asked, Event, Header, Message};
pub use types::{Dest, Epoch, Members, Millis, NodeId, NodeInfo, View, ViewDelta, identity_hash};
pub use user_map::{BUCKETS_MAX, DEFAULT_BUCKETS, UserMap, UserMapError, bucket_of};
