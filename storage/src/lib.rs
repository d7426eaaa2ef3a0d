//! `storage` owns every byte on a Porcupine node's disk: mailbox fragments
//! (message bodies and their indexes), tombstones, and the generic key-value trees
//! the node keeps its account registry and Raft log in. Nothing else opens files in
//! the data directory.
//!
//! # Layout of a data directory
//! - `segments/NNNNNNNN.seg`: the append-only segment log, the record of truth.
//!   Each record is one message body or one tombstone, checksummed (see `record`).
//! - `index/`: a sled database holding only what can be rebuilt from the segments
//!   (where each message lies, tombstones, per-user counts, the replay checkpoint),
//!   plus the node's key-value trees ([`KvTree`]).
//!
//! # Durability
//! One writer thread group-commits: it writes every queued request, calls one
//! `fdatasync`, indexes the batch, then answers. So `append().await == Ok` means
//! durable and readable. sled's flush is not an fsync, so `open` replays every
//! record after the last checkpoint (re-applying a record is a no-op) and
//! truncates a torn tail in the last segment.
//!
//! # Space reclamation
//! `compact` rewrites sealed segments whose live fraction fell below
//! `StoreConfig::compact_live_ratio_min` (live records copied to the log head,
//! index switched, old file removed; crash-safe at every step) in a background
//! thread, rate-limited. Tombstones are kept (copied) until purged.
//!
//! # Modules
//! - `id`: [`MessageId`] and its hex text form (the POP3 UIDL).
//! - `message`: [`MessageKey`], [`NewMessage`], [`MessageMeta`], [`BucketEntries`].
//! - `error`: [`StorageError`].
//! - `keys`: big-endian sled key/value encodings.
//! - `record`: the segment record format (encode, decode, torn-tail detection).
//! - `segment`: segment files: appending, rolling, syncing, positional reads.
//! - `index`: the sled trees and the apply rules shared by writer and replay.
//! - `replay`: recovery at open.
//! - `writer`: the group-commit writer thread.
//! - `reserve`: the `RESERVE` file that keeps deletes and compaction working on
//!   a full disk.
//! - `verify`: fsck ([`VerifyReport`]); damaged live messages are replaced from a
//!   replica by the node (`Store::replace_damaged`).
//! - `compact`: segment compaction ([`CompactStep`], [`CompactReport`]).
//! - `stats`: [`StoreStats`] and the counters behind it.
//! - `kv`: [`KvTree`].
//! - `store`: [`Store`] and [`StoreConfig`].
//! - `fuzzing` (hidden): entry points for the `cargo fuzz` targets in `fuzz/`.

#![warn(missing_docs)]

mod compact;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod id;
mod index;
mod keys;
mod kv;
mod message;
mod record;
mod replay;
mod reserve;
mod segment;
mod stats;
mod store;
mod verify;
mod writer;

pub use compact::{CompactHook, CompactReport, CompactStep};
pub use error::StorageError;
pub use id::{MessageId, ParseMessageIdError};
pub use kv::{KvEntry, KvTree};
pub use message::{BucketEntries, MessageKey, MessageMeta, NewMessage};
pub use stats::StoreStats;
pub use store::{Store, StoreConfig};
pub use verify::{DamagedRecord, VerifyReport};
