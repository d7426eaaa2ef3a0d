//! How raft records are laid out on disk: keys of the `raft_log` and `raft_meta`
//! trees, JSON values, and the mapping of failures to openraft's storage errors
//! (which say what was touched and what was being done).

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use storage::KvTree;

use super::types::{NodeId, RaftStorageError};

/// `raft_meta` key of the last vote (flushed before `save_vote` returns).
pub(crate) const VOTE_KEY: &[u8] = b"vote";
/// `raft_meta` key of the last known committed log id (a hint; may lag).
pub(crate) const COMMITTED_KEY: &[u8] = b"committed";
/// `raft_meta` key of the last log id removed by a purge.
pub(crate) const LAST_PURGED_KEY: &[u8] = b"last_purged";
/// `raft_meta` key of the last log id applied to the registry state.
pub(crate) const LAST_APPLIED_KEY: &[u8] = b"last_applied";
/// `raft_meta` key of the last membership applied to the registry state.
pub(crate) const LAST_MEMBERSHIP_KEY: &[u8] = b"last_membership";
/// `raft_meta` key of the current snapshot's metadata (JSON).
pub(crate) const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";
/// `raft_meta` key of the current snapshot's data (postcard, see the state machine).
pub(crate) const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot_data";

/// `raft_log` key of a log index: big-endian, so byte order is index order.
pub(crate) fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

/// A key greater than every 8-byte index key: the open end of a log range.
pub(crate) fn key_after_every_index() -> Vec<u8> {
    vec![0xff; 9]
}

/// Wrap any error as an openraft storage error about `subject` while doing `verb`.
pub(crate) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &(impl std::error::Error + 'static),
) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

/// Encode a record as JSON (kept readable on disk: these records are few and small).
pub(crate) fn to_json<T: Serialize>(
    value: &T,
    subject: ErrorSubject<NodeId>,
) -> Result<Vec<u8>, RaftStorageError> {
    serde_json::to_vec(value).map_err(|e| io_error(subject, ErrorVerb::Write, &e))
}

/// Read and decode the JSON record under `key`, if present.
pub(crate) fn read_json<T: DeserializeOwned>(
    tree: &KvTree,
    key: &[u8],
    subject: ErrorSubject<NodeId>,
) -> Result<Option<T>, RaftStorageError> {
    let Some(bytes) = tree
        .get(key)
        .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| io_error(subject, ErrorVerb::Read, &e))
}

/// Make every write so far durable (flushes the whole node store, all trees).
pub(crate) async fn flush(
    tree: &KvTree,
    subject: ErrorSubject<NodeId>,
) -> Result<(), RaftStorageError> {
    tree.flush()
        .await
        .map_err(|e| io_error(subject, ErrorVerb::Write, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_like_indexes() {
        let indexes = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX - 1, u64::MAX];
        for pair in indexes.windows(2) {
            assert!(index_key(pair[0]) < index_key(pair[1]), "{pair:?}");
        }
        assert!(index_key(u64::MAX) < key_after_every_index());
    }
}
