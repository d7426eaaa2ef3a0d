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

#![warn(missing_docs)]

pub mod fragments;
pub mod listing;
pub mod repair;
