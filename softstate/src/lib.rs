//! # softstate — the cluster's soft state, as pure state machines
//!
//! Everything a node keeps in memory only and rebuilds after a membership change,
//! written sans-IO like `membership`: no clock reads (time arrives as
//! `membership::Millis` or message-id microseconds), no tokio, no sockets, no storage,
//! no unseeded randomness, ordered maps only. `node` drives it with real time, RPC and
//! its store; the cluster simulator drives the same code with virtual time and an
//! in-memory fragment index.
//!
//! ## Module map
//!
//! - [`listing`]: the merge of fragment listings into one mailbox (dedup by message
//!   id, tombstones win) that retrieval, repair and the admin mailbox view share.
//! - [`repair`]: the pure repair plan: tombstones to spread, copies to make,
//!   tombstones to collect.
//! - [`fragments`]: the fragment-index trait the scans use, with an in-memory
//!   implementation for tests and the simulator.
//! - [`load`]: `LoadTable`, load figures from replies and gossip, newest wins.
//! - [`view`]: `ViewInfo` (a view with incarnations and user map) and `Transition`
//!   (what changed between two views: buckets that changed hands, fresh and stale
//!   processes).
//! - [`message`]: `Report`, `Handoff`, `Announce`, `Ask`, `SessionId`, `Transmit`.
//! - [`machine`]: `SoftState`, the machine — mail maps and POP3 locks with per-bucket
//!   completeness, reconstruction (reports, handovers, announces, asks, retries as
//!   deadlines), sessions, placement.
//! - `waits` (private): whom a manager still waits for, per bucket, kept as groups
//!   (one bucket list and its nodes per view change) instead of a set per bucket.
//! - `sorted` (private): bucket sets as sorted `Vec<u16>`s.
//! - [`place`]: placement cost flat in N (mail map + power-of-two-choices samples).
//! - [`hint`]: cache prefetch hints for drivers that know their next requests.
//! - [`sim`]: the seeded in-process cluster of machines with an in-memory fragment
//!   model and the ground-truth checker (tests, `corebench`, the simulator).
#![warn(missing_docs)]

pub mod fragments;
pub mod hint;
pub mod listing;
pub mod load;
pub mod machine;
pub mod message;
pub mod nodeset;
pub mod place;
pub mod repair;
pub mod sim;
mod sorted;
pub mod vecmap;
pub mod view;
mod waits;

pub use load::{Figure, LoadTable, NEARLY_FULL_FLAG, encode_figure, is_nearly_full, queue_of};
pub use machine::{Placement, Refused, Scan, SoftState, SoftStateConfig, Stats};
pub use message::{Announce, Ask, HandedBucket, Handoff, Note, Report, Scope, SessionId, Transmit};
pub use view::{Transition, ViewInfo};
