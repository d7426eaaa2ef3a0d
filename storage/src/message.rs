//! The plain data types of the mailbox API: message keys, new messages, listing
//! entries and per-bucket inventories.

use crate::MessageId;

/// Where a message belongs: its bucket, its owner and its id.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct MessageKey {
    /// `hash(user) mod B`, the unit of placement in the user map.
    pub bucket: u16,
    /// The mailbox owner (no NUL bytes, at most 65535 bytes).
    pub user: String,
    /// The message's cluster-unique id.
    pub id: MessageId,
}

impl MessageKey {
    /// Convenience constructor.
    pub fn new(bucket: u16, user: impl Into<String>, id: MessageId) -> MessageKey {
        MessageKey {
            bucket,
            user: user.into(),
            id,
        }
    }
}

/// A message to store: its key and its exact bytes.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Where the message belongs.
    pub key: MessageKey,
    /// The message as received (stored and returned byte for byte).
    pub data: bytes::Bytes,
}

/// One entry of a mailbox listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    /// The message id (POP3 UIDL).
    pub id: MessageId,
    /// Size of the stored bytes.
    pub size: u64,
}

/// Every live message key and every tombstone key in one bucket (for anti-entropy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketEntries {
    /// Live messages as (user, id), sorted by user then id.
    pub messages: Vec<(String, MessageId)>,
    /// Tombstones as (user, id), sorted by user then id.
    pub tombstones: Vec<(String, MessageId)>,
}
