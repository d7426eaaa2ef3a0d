//! The Porcupine node: wires `storage`, `smtp`, `pop`, `membership` and `registry`
//! into one daemon, and holds the operator CLI's client side.
//!
//! Modules:
//! - [`config`]: `node.toml` keys and defaults.
//! - [`service`]: the [`service::Node`] and its calls to other nodes.
//! - [`dispatch`]: the RPC entry point, [`dispatch::NodeRpc`].
//! - [`cluster`]: view, user map, the load table, and the membership driver task.
//! - [`manager`]: the Mutex around the sans-IO `softstate::SoftState` machine.
//! - [`soft`]: the soft-state driver task (views, scans, sends, timer).
//! - [`deliver`] / [`retrieve`]: the SMTP delivery proxy and POP3 retrieval proxy;
//!   [`login`]: POP3 login failure limits and the `auth` log line.
//! - [`fragments`]: the local store as `softstate`'s fragment index.
//! - [`gather`]: one user's mailbox read from every fragment node and merged.
//! - [`lifecycle`]: the store's tuning (segments, compaction), compaction on
//!   request, and removing a deleted user's mail from every node.
//! - [`repair`]: anti-entropy (tombstone spreading, re-replication, collection).
//! - [`stats`]: the repair counters status and metrics read.
//! - [`rpc`]: inter-node RPC over HTTP/2.
//! - [`admin`]: the admin HTTP API; [`token`]: its bearer token; [`cli`]: its client;
//!   [`listen`]: accept loops.
//! - [`serve`]: `porcupine serve`; [`up`]: `porcupine up`.
#![warn(missing_docs)]

pub mod admin;
pub mod advertise;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deliver;
pub mod disk;
pub mod dispatch;
pub mod format;
pub mod formation;
pub mod fragments;
pub mod gather;
pub mod lifecycle;
pub mod listen;
pub mod login;
pub mod manager;
pub mod release;
pub mod repair;
pub mod retrieve;
pub mod rpc;
pub mod serve;
pub mod service;
pub mod simcli;
pub mod soft;
pub mod stats;
pub mod token;
pub mod up;
