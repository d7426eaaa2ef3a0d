//! The Raft log and vote on disk: entries in the `raft_log` tree (key = index, big
//! endian), vote / committed / last purged in `raft_meta`.
//!
//! Durability rules (openraft's `RaftLogStorage` contract): `append` calls its flush
//! callback only after the store's flush has completed, and `save_vote` flushes before
//! it returns. Truncate and purge are each one atomic batch, so a crash never leaves a
//! hole in the log.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Vote};
use storage::KvTree;

use super::codec::{
    COMMITTED_KEY, LAST_PURGED_KEY, VOTE_KEY, flush, index_key, io_error, key_after_every_index,
    read_json, to_json,
};
use super::types::{Entry, LogId, NodeId, RaftStorageError, TypeConfig};

/// The log store handed to openraft; clones share the same trees (one is the reader
/// used by replication tasks).
#[derive(Clone)]
pub(crate) struct LogStore {
    log: KvTree,
    meta: KvTree,
}

impl LogStore {
    /// A log over `log` (entries) and `meta` (vote and pointers).
    pub(crate) fn new(log: KvTree, meta: KvTree) -> LogStore {
        LogStore { log, meta }
    }

    fn decode(bytes: &[u8], subject: ErrorSubject<NodeId>) -> Result<Entry, RaftStorageError> {
        serde_json::from_slice(bytes).map_err(|e| io_error(subject, ErrorVerb::Read, &e))
    }

    fn last_log_id(&self) -> Result<Option<LogId>, RaftStorageError> {
        let last = self
            .log
            .last()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        match last {
            Some((_, bytes)) => Ok(Some(Self::decode(&bytes, ErrorSubject::Logs)?.log_id)),
            None => Ok(None),
        }
    }
}

/// First key of a range of indexes, or `None` when the range is empty by construction.
fn start_key(bound: Bound<&u64>) -> Option<Vec<u8>> {
    match bound {
        Bound::Included(i) => Some(index_key(*i)),
        Bound::Excluded(i) => i.checked_add(1).map(index_key),
        Bound::Unbounded => Some(index_key(0)),
    }
}

/// Exclusive end key of a range of indexes.
fn end_key(bound: Bound<&u64>) -> Vec<u8> {
    match bound {
        Bound::Included(i) => i
            .checked_add(1)
            .map(index_key)
            .unwrap_or_else(key_after_every_index),
        Bound::Excluded(i) => index_key(*i),
        Bound::Unbounded => key_after_every_index(),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let Some(from) = start_key(range.start_bound()) else {
            return Ok(Vec::new());
        };
        let to = end_key(range.end_bound());
        let rows = self
            .log
            .range(&from, &to)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        rows.iter()
            .map(|(key, bytes)| {
                let entry = Self::decode(bytes, ErrorSubject::Logs)?;
                // A record stored under the wrong key would silently reorder the log.
                if key.as_slice() != index_key(entry.log_id.index).as_slice() {
                    return Err(io_error(
                        ErrorSubject::Log(entry.log_id),
                        ErrorVerb::Read,
                        &std::io::Error::other(format!("stored under key {key:02x?}")),
                    ));
                }
                Ok(entry)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> =
            read_json(&self.meta, LAST_PURGED_KEY, ErrorSubject::Logs)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let bytes = to_json(vote, ErrorSubject::Vote)?;
        self.meta
            .insert(VOTE_KEY, &bytes)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        flush(&self.meta, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        read_json(&self.meta, VOTE_KEY, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Not flushed on purpose: a lost `committed` only means that after a crash the
        // node re-learns the commit point from the leader before applying further.
        let bytes = to_json(&committed, ErrorSubject::Store)?;
        self.meta
            .insert(COMMITTED_KEY, &bytes)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(read_json::<Option<LogId>>(&self.meta, COMMITTED_KEY, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for entry in entries {
            let bytes = to_json(&entry, ErrorSubject::Log(entry.log_id))?;
            batch.push((index_key(entry.log_id.index), Some(bytes)));
        }
        self.log
            .apply(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        // Readable now; acknowledged as persisted only once the flush is done.
        match self.log.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.log
            .remove_range(&index_key(log_id.index), &key_after_every_index())
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // Record the purge point first: should the removal survive a crash and the
        // pointer not, the log would look like it starts after a gap.
        let bytes = to_json(&log_id, ErrorSubject::Logs)?;
        self.meta
            .insert(LAST_PURGED_KEY, &bytes)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        flush(&self.meta, ErrorSubject::Logs).await?;
        let to = log_id
            .index
            .checked_add(1)
            .map(index_key)
            .unwrap_or_else(key_after_every_index);
        self.log
            .remove_range(&index_key(0), &to)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_keys() {
        assert_eq!(start_key(Bound::Unbounded), Some(index_key(0)));
        assert_eq!(start_key(Bound::Included(&7)), Some(index_key(7)));
        assert_eq!(start_key(Bound::Excluded(&7)), Some(index_key(8)));
        assert_eq!(start_key(Bound::Excluded(&u64::MAX)), None);
        assert_eq!(end_key(Bound::Included(&7)), index_key(8));
        assert_eq!(end_key(Bound::Excluded(&7)), index_key(7));
        assert_eq!(end_key(Bound::Included(&u64::MAX)), key_after_every_index());
        assert_eq!(end_key(Bound::Unbounded), key_after_every_index());
    }
}
