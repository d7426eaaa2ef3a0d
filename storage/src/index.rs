//! The sled index: where each live message lies, which messages are tombstoned,
//! how many live messages each user has, and how far the segment log has been
//! indexed (the checkpoint). Everything here can be rebuilt from the segments.
//!
//! Trees: `messages` (message key -> [`Location`]), `tombstones` (message key ->
//! empty), `users` (user key -> live count, removed at 0), `meta` (`checkpoint` ->
//! [`Position`]). Node-owned key-value trees are named `kv/<name>` so they can never
//! collide with these.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::keys::{self, Location, Position};
use crate::record::{self, RecordKind};
use crate::stats::Deltas;
use crate::{BucketEntries, MessageKey, MessageMeta, StorageError};

const MESSAGES: &str = "messages";
const TOMBSTONES: &str = "tombstones";
const USERS: &str = "users";
const META: &str = "meta";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// How long `open` waits for sled's lock before reporting the directory as busy.
const LOCK_WAIT_MS: u64 = 1_000;

/// The sled database plus what makes its flush durable.
pub(crate) struct IndexDb {
    sled: sled::Db,
    /// sled 0.34 keeps its whole log in `<index>/db`.
    log_path: PathBuf,
    log_file: Option<File>,
}

impl IndexDb {
    /// Open (or create) the sled database in `path`. Fails if another process (or
    /// another `Store` in this one) has it open: sled locks its log file.
    pub(crate) fn open(path: &Path) -> Result<Arc<IndexDb>, StorageError> {
        let started = Instant::now();
        let sled = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                // A store that was just dropped in this process may still be
                // releasing the lock (sled finishes IO on background threads).
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < Duration::from_millis(LOCK_WAIT_MS) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(StorageError::Index {
                        tree: path.display().to_string(),
                        action: "open index database",
                        source,
                    });
                }
            }
        };
        let log_path = path.join("db");
        let log_file = match File::open(&log_path) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(path = %log_path.display(), error = %e,
                    "cannot open sled's log for fdatasync; index flushes survive a process crash but maybe not a power loss");
                None
            }
        };
        Ok(Arc::new(IndexDb {
            sled,
            log_path,
            log_file,
        }))
    }

    /// Open a tree by its full name.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        self.sled
            .open_tree(name)
            .map_err(StorageError::index(name, "open tree"))
    }

    /// Make every change so far survive a crash. sled's own flush uses
    /// `sync_file_range`, which survives a process crash but not a power loss
    /// (sled issue #1452); an `fdatasync` of its log file after it closes that gap.
    pub(crate) fn durable_flush(&self) -> Result<(), StorageError> {
        self.sled.flush().map_err(|source| StorageError::Index {
            tree: "*".to_owned(),
            action: "flush index",
            source,
        })?;
        if let Some(file) = &self.log_file {
            file.sync_data()
                .map_err(StorageError::io(&self.log_path, "fdatasync index log"))?;
        }
        Ok(())
    }
}

/// One change to the message index, derived from one segment record.
#[derive(Clone, Debug)]
pub(crate) struct IndexOp {
    key: Vec<u8>,
    user_key: Vec<u8>,
    kind: RecordKind,
    /// Where the record lies.
    location: Location,
}

impl IndexOp {
    pub(crate) fn new(kind: RecordKind, key: &MessageKey, location: Location) -> IndexOp {
        IndexOp {
            key: keys::message_key(key.bucket, &key.user, &key.id),
            user_key: keys::user_key(key.bucket, &key.user),
            kind,
            location,
        }
    }
}

/// One record moved by compaction: the index entry of `key` (a message's location,
/// or a tombstone's) is switched from `from` to `to` only if it still says `from`.
#[derive(Clone, Debug)]
pub(crate) struct Move {
    pub(crate) kind: RecordKind,
    pub(crate) key: MessageKey,
    pub(crate) from: Location,
    pub(crate) to: Location,
}

/// Whether a tombstone entry's value names `location`. An empty value is a
/// tombstone indexed before tombstones carried their location: it matches any
/// copy, so compaction keeps (and then locates) it.
fn tombstone_value_matches(value: &[u8], location: Location) -> bool {
    value.is_empty() || value == location.encode()
}

/// Handles on the index trees of one store.
#[derive(Clone)]
pub(crate) struct Index {
    db: Arc<IndexDb>,
    messages: sled::Tree,
    tombstones: sled::Tree,
    users: sled::Tree,
    meta: sled::Tree,
}

fn corrupt(tree: &str, reason: String) -> StorageError {
    StorageError::IndexCorrupt {
        tree: tree.to_owned(),
        reason,
    }
}

impl Index {
    pub(crate) fn open(db: Arc<IndexDb>) -> Result<Index, StorageError> {
        Ok(Index {
            messages: db.tree(MESSAGES)?,
            tombstones: db.tree(TOMBSTONES)?,
            users: db.tree(USERS)?,
            meta: db.tree(META)?,
            db,
        })
    }

    pub(crate) fn db(&self) -> &Arc<IndexDb> {
        &self.db
    }

    /// The `messages` tree (for `verify`).
    pub(crate) fn messages_tree(&self) -> &sled::Tree {
        &self.messages
    }

    /// Apply records in log order, atomically (one sled transaction over the three
    /// trees, so a crash never leaves a message indexed but uncounted). The rules
    /// make re-applying a record a no-op, which replay and replication rely on:
    /// - a message whose key has a tombstone is ignored;
    /// - a message already indexed is ignored (the first copy wins);
    /// - a tombstone removes the message entry (if any) and records itself.
    pub(crate) fn apply(&self, ops: &[IndexOp]) -> Result<Deltas, StorageError> {
        let outcome = (&self.messages, &self.tombstones, &self.users).transaction(
            |(messages, tombstones, users)| {
                let mut deltas = Deltas::default();
                for op in ops {
                    match op.kind {
                        RecordKind::Message => {
                            let location = op.location;
                            if tombstones.get(&op.key)?.is_some()
                                || messages.get(&op.key)?.is_some()
                            {
                                continue;
                            }
                            messages.insert(op.key.as_slice(), &location.encode()[..])?;
                            deltas.messages += 1;
                            let count = match users.get(&op.user_key)? {
                                Some(v) => keys::decode_count(&v)
                                    .map_err(ConflictableTransactionError::Abort)?,
                                None => 0,
                            };
                            if count == 0 {
                                deltas.users += 1;
                            }
                            users.insert(
                                op.user_key.as_slice(),
                                &keys::encode_count(count + 1)[..],
                            )?;
                        }
                        RecordKind::Tombstone => {
                            if messages.remove(op.key.as_slice())?.is_some() {
                                deltas.messages -= 1;
                                let count = match users.get(&op.user_key)? {
                                    Some(v) => keys::decode_count(&v)
                                        .map_err(ConflictableTransactionError::Abort)?,
                                    None => 0,
                                };
                                if count <= 1 {
                                    if count == 1 {
                                        deltas.users -= 1;
                                    }
                                    users.remove(op.user_key.as_slice())?;
                                } else {
                                    users.insert(
                                        op.user_key.as_slice(),
                                        &keys::encode_count(count - 1)[..],
                                    )?;
                                }
                            }
                            // The first copy of a tombstone is the indexed one (as
                            // for messages), so compaction keeps exactly one.
                            if tombstones.get(&op.key)?.is_none() {
                                tombstones.insert(op.key.as_slice(), &op.location.encode()[..])?;
                                deltas.tombstones += 1;
                            }
                        }
                    }
                }
                Ok(deltas)
            },
        );
        outcome.map_err(|e| match e {
            TransactionError::Abort(reason) => corrupt(USERS, reason),
            TransactionError::Storage(source) => StorageError::Index {
                tree: "messages+tombstones+users".to_owned(),
                action: "apply records",
                source,
            },
        })
    }

    /// Switch index entries to the records' new places (compaction). Each entry
    /// moves only if it still names the old place: a message deleted (or a
    /// tombstone purged) meanwhile stays as it is. One transaction. Returns how many
    /// entries moved.
    pub(crate) fn relocate(&self, moves: &[Move]) -> Result<u64, StorageError> {
        let outcome = (&self.messages, &self.tombstones).transaction(|(messages, tombstones)| {
            let mut moved = 0u64;
            for m in moves {
                let k = keys::message_key(m.key.bucket, &m.key.user, &m.key.id);
                let (tree, matches) = match m.kind {
                    RecordKind::Message => (
                        messages,
                        messages
                            .get(&k)?
                            .is_some_and(|v| v.as_ref() == m.from.encode()),
                    ),
                    RecordKind::Tombstone => (
                        tombstones,
                        tombstones
                            .get(&k)?
                            .is_some_and(|v| tombstone_value_matches(&v, m.from)),
                    ),
                };
                if matches {
                    tree.insert(k, &m.to.encode()[..])?;
                    moved += 1;
                }
            }
            Ok::<u64, ConflictableTransactionError<String>>(moved)
        });
        outcome.map_err(|e| match e {
            TransactionError::Abort(reason) => corrupt(MESSAGES, reason),
            TransactionError::Storage(source) => StorageError::Index {
                tree: "messages+tombstones".to_owned(),
                action: "relocate records",
                source,
            },
        })
    }

    /// Whether the record of `kind` for `key` at `location` is the copy the index
    /// uses (so compaction must keep it).
    pub(crate) fn is_indexed_copy(
        &self,
        kind: RecordKind,
        key: &MessageKey,
        location: Location,
    ) -> Result<bool, StorageError> {
        let k = keys::message_key(key.bucket, &key.user, &key.id);
        Ok(match kind {
            RecordKind::Message => self
                .messages
                .get(k)
                .map_err(StorageError::index(MESSAGES, "look up message"))?
                .is_some_and(|v| v.as_ref() == location.encode()),
            RecordKind::Tombstone => self
                .tombstones
                .get(k)
                .map_err(StorageError::index(TOMBSTONES, "look up tombstone"))?
                .is_some_and(|v| tombstone_value_matches(&v, location)),
        })
    }

    /// Bytes of indexed records per segment (live messages and located
    /// tombstones): what compaction would keep of each segment.
    pub(crate) fn live_bytes_by_segment(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, u64>, StorageError> {
        let mut out = std::collections::BTreeMap::new();
        for (tree, name) in [(&self.messages, MESSAGES), (&self.tombstones, TOMBSTONES)] {
            for item in tree.iter() {
                let (_, v) = item.map_err(StorageError::index(name, "scan locations"))?;
                if v.is_empty() {
                    continue;
                }
                let location = Location::decode(&v).map_err(|r| corrupt(name, r))?;
                *out.entry(location.segment).or_insert(0) += u64::from(location.len);
            }
        }
        Ok(out)
    }

    /// Where the live message `key` lies, if it is live.
    pub(crate) fn location(&self, key: &MessageKey) -> Result<Option<Location>, StorageError> {
        let k = keys::message_key(key.bucket, &key.user, &key.id);
        match self
            .messages
            .get(k)
            .map_err(StorageError::index(MESSAGES, "look up message"))?
        {
            Some(v) => Location::decode(&v)
                .map(Some)
                .map_err(|r| corrupt(MESSAGES, r)),
            None => Ok(None),
        }
    }

    pub(crate) fn is_tombstoned(&self, key: &MessageKey) -> Result<bool, StorageError> {
        self.tombstones
            .contains_key(keys::message_key(key.bucket, &key.user, &key.id))
            .map_err(StorageError::index(TOMBSTONES, "look up tombstone"))
    }

    /// Live messages of one user, in id order (key order).
    pub(crate) fn list(&self, bucket: u16, user: &str) -> Result<Vec<MessageMeta>, StorageError> {
        let prefix = keys::user_prefix(bucket, user);
        let header_len = record::header_len(user.len()) as u64;
        let mut out = Vec::new();
        for item in self.messages.scan_prefix(&prefix) {
            let (k, v) = item.map_err(StorageError::index(MESSAGES, "scan user's messages"))?;
            let (_, _, id) = keys::decode_message_key(&k).map_err(|r| corrupt(MESSAGES, r))?;
            let location = Location::decode(&v).map_err(|r| corrupt(MESSAGES, r))?;
            let size = u64::from(location.len)
                .checked_sub(header_len)
                .ok_or_else(|| {
                    corrupt(
                        MESSAGES,
                        format!("location of {id} shorter than its header"),
                    )
                })?;
            out.push(MessageMeta { id, size });
        }
        Ok(out)
    }

    /// Remove these tombstones; returns how many existed. Only for tombstones that
    /// every replica has and whose message no node holds any more (the caller's
    /// judgement): the message record itself stays deleted, since removing its
    /// tombstone does not bring back its index entry.
    pub(crate) fn purge_tombstones(&self, keys: &[MessageKey]) -> Result<u64, StorageError> {
        let mut removed = 0;
        for key in keys {
            let k = keys::message_key(key.bucket, &key.user, &key.id);
            if self
                .tombstones
                .remove(k)
                .map_err(StorageError::index(TOMBSTONES, "purge tombstone"))?
                .is_some()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// (bucket, user) of every user with at least one tombstone, one seek per user.
    pub(crate) fn tombstone_users(&self) -> Result<Vec<(u16, String)>, StorageError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(first) = self.tombstones.range(from.as_slice()..).next() else {
                break;
            };
            let (k, _) = first.map_err(StorageError::index(TOMBSTONES, "scan tombstone users"))?;
            let (bucket, user, _) =
                keys::decode_message_key(&k).map_err(|r| corrupt(TOMBSTONES, r))?;
            // Keys are bucket | user | 0 | id: the next user starts after bucket | user | 1.
            from = keys::user_prefix(bucket, &user);
            if let Some(last) = from.last_mut() {
                *last = 1;
            }
            out.push((bucket, user));
        }
        Ok(out)
    }

    /// Tombstoned ids of one user, in id order.
    pub(crate) fn tombstones(
        &self,
        bucket: u16,
        user: &str,
    ) -> Result<Vec<crate::MessageId>, StorageError> {
        let mut out = Vec::new();
        for item in self.tombstones.scan_prefix(keys::user_prefix(bucket, user)) {
            let (k, _) = item.map_err(StorageError::index(TOMBSTONES, "scan user's tombstones"))?;
            let (_, _, id) = keys::decode_message_key(&k).map_err(|r| corrupt(TOMBSTONES, r))?;
            out.push(id);
        }
        Ok(out)
    }

    /// (bucket, user, live count) of every user in the buckets `filter` accepts.
    /// Rejected buckets are skipped with one seek each, not scanned.
    pub(crate) fn users(
        &self,
        filter: impl Fn(u16) -> bool,
    ) -> Result<Vec<(u16, String, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut from = keys::bucket_prefix(0).to_vec();
        loop {
            let Some(first) = self.users.range(from.as_slice()..).next() else {
                break;
            };
            let (k, _) = first.map_err(StorageError::index(USERS, "scan users"))?;
            let (bucket, _) = keys::decode_user_key(&k).map_err(|r| corrupt(USERS, r))?;
            if filter(bucket) {
                for item in self.users.scan_prefix(keys::bucket_prefix(bucket)) {
                    let (k, v) = item.map_err(StorageError::index(USERS, "scan users"))?;
                    let (bucket, user) =
                        keys::decode_user_key(&k).map_err(|r| corrupt(USERS, r))?;
                    let count = keys::decode_count(&v).map_err(|r| corrupt(USERS, r))?;
                    out.push((bucket, user, count));
                }
            }
            match bucket.checked_add(1) {
                Some(next) => from = keys::bucket_prefix(next).to_vec(),
                None => break,
            }
        }
        Ok(out)
    }

    /// Every live message key and tombstone key in one bucket.
    pub(crate) fn bucket_entries(&self, bucket: u16) -> Result<BucketEntries, StorageError> {
        let scan = |tree: &sled::Tree,
                    name: &str|
         -> Result<Vec<(String, crate::MessageId)>, StorageError> {
            let mut out = Vec::new();
            for item in tree.scan_prefix(keys::bucket_prefix(bucket)) {
                let (k, _) = item.map_err(|source| StorageError::Index {
                    tree: name.to_owned(),
                    action: "scan bucket",
                    source,
                })?;
                let (_, user, id) = keys::decode_message_key(&k).map_err(|r| corrupt(name, r))?;
                out.push((user, id));
            }
            Ok(out)
        };
        Ok(BucketEntries {
            messages: scan(&self.messages, MESSAGES)?,
            tombstones: scan(&self.tombstones, TOMBSTONES)?,
        })
    }

    /// (messages, tombstones, users): counted by a full scan, once at open.
    pub(crate) fn count_all(&self) -> (u64, u64, u64) {
        (
            self.messages.len() as u64,
            self.tombstones.len() as u64,
            self.users.len() as u64,
        )
    }

    /// How far the log is known to be indexed and flushed, if ever recorded.
    pub(crate) fn checkpoint(&self) -> Result<Option<Position>, StorageError> {
        match self
            .meta
            .get(CHECKPOINT_KEY)
            .map_err(StorageError::index(META, "read checkpoint"))?
        {
            Some(v) => Position::decode(&v).map(Some).map_err(|r| corrupt(META, r)),
            None => Ok(None),
        }
    }

    /// Record a checkpoint. Call only after a [`IndexDb::durable_flush`] that
    /// followed the indexing of every record before `position`.
    pub(crate) fn set_checkpoint(&self, position: Position) -> Result<(), StorageError> {
        self.meta
            .insert(CHECKPOINT_KEY, &position.encode()[..])
            .map_err(StorageError::index(META, "write checkpoint"))?;
        Ok(())
    }

    /// Flush the index durably, then advance the checkpoint to `position` (the
    /// checkpoint itself becomes durable with the next flush).
    pub(crate) fn checkpoint_at(&self, position: Position) -> Result<(), StorageError> {
        self.db.durable_flush()?;
        self.set_checkpoint(position)
    }
}
