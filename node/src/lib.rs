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
//! - [`recipients`]: RCPT address to final mailboxes (aliases, subaddresses,
//!   postmaster, catch-all); [`quota`]: mailbox usage against quotas.
//! - [`lifecycle`]: the store's tuning (segments, compaction), compaction on
//!   request, and removing a deleted user's mail from every node.
//! - [`repair`]: anti-entropy (tombstone spreading, re-replication, collection).
//! - [`stats`]: the repair counters status and metrics read.
//! - [`rpc`]: inter-node RPC over HTTP/2.
//! - [`admin`]: the admin HTTP API ([`accounts_api`]: its domain, alias and quota
//!   routes; [`accounts_cli`]: their CLI side); [`token`]: its bearer token; [`cli`]: its client;
//!   [`listen`]: accept loops.
//! - [`serve`]: `porcupine serve`; [`up`]: `porcupine up`; [`existing`]: the node
//!   directories `up` finds in a data dir.
//! - [`overview`]: the cluster-wide status (every live node's figures, summed);
//!   [`dashboard`]: the browser page and its login; [`telemetry`]: Prometheus series;
//!   [`drain`]: draining nodes; [`out`]: CLI output that exits quietly on a closed pipe;
//!   [`viewlog`]: the last views installed; [`logfilter`]: what the log leaves out.
#![warn(missing_docs)]

pub mod accounts_api;
pub mod accounts_cli;
pub mod admin;
pub mod advertise;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod deliver;
pub mod disk;
pub mod dispatch;
pub mod drain;
pub mod existing;
pub mod format;
pub mod formation;
pub mod fragments;
pub mod gather;
pub mod lifecycle;
pub mod listen;
pub mod logfilter;
pub mod login;
pub mod manager;
pub mod out;
pub mod overview;
pub mod quota;
pub mod recipients;
pub mod release;
pub mod repair;
pub mod retrieve;
pub mod rpc;
pub mod serve;
pub mod service;
pub mod simcli;
pub mod soft;
pub mod stats;
pub mod telemetry;
pub mod token;
pub mod up;
pub mod viewlog;
