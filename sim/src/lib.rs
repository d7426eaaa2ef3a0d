//! Porcupine's cluster simulator: the real cluster core — `membership` (views,
//! failure detection), `softstate` (mail maps, POP3 locks, reconstruction, placement)
//! — driven in virtual time by one seeded discrete-event loop, with models of the
//! network, each node's CPU and disk, the clients, and faults.
//!
//! The simulator never reimplements a policy: placement is `SoftState::place`, mail
//! maps and locks are `SoftState`'s, views come from `Membership` machines. What is
//! modelled is only what a real node gets from its hardware: service times, queues,
//! latencies. Same seed, same output.
//!
//! Entry point: [`run`] with a [`SimConfig`]; the result is a [`Report`].

pub mod config;
pub mod fault;
pub mod plot;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod vopr;
pub mod workload;
pub mod world;

pub use config::{Model, Policy, SimConfig, SizeDist};
pub use fault::{Fault, FaultKind};
pub use report::Report;
pub use world::run;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A `--fault` specification that does not parse.
    #[error("fault {spec:?}: {why}")]
    Fault {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A configuration value out of range.
    #[error("{0}")]
    Config(String),
}
