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
//! - [`load`]: `LoadTable`, load figures from replies and gossip, newest wins.
#![warn(missing_docs)]

pub mod load;

pub use load::{Figure, LoadTable};
