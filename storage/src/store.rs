//! [`Store`]: the public face of a node's disk. Reads go straight to the index and
//! segment files; writes go through the single writer thread (see `writer`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::compact::{CompactHook, CompactReport, CompactSettings, Compactor};
use crate::index::{Index, IndexDb};
use crate::keys::{Location, validate_user};
use crate::record::{self, RecordKind};
use crate::reserve::{RESERVE_FILE, Reserves, START_RESERVE_FILE};
use crate::segment::{SegmentReader, SegmentWriter, list_segments, sync_dir};
use crate::stats::Counters;
use crate::writer::{Request, Writer};
use crate::{
    BucketEntries, KvTree, MessageId, MessageKey, MessageMeta, NewMessage, StorageError,
    StoreStats, VerifyReport,
};

/// Records up to this size are read inline; larger ones on a blocking thread so a
/// cold multi-megabyte read does not stall the async runtime.
const INLINE_READ_BYTES_MAX: u32 = 64 * 1024;

/// Tuning of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Start a new segment file once the current one would pass this size (a
    /// single record larger than this gets a segment of its own).
    pub segment_size_bytes_max: u64,
    /// Cap on the bytes written by one group commit.
    pub batch_bytes_max: usize,
    /// A sealed segment whose live records fill less than this fraction of it is
    /// compacted in the background (0 disables background compaction;
    /// [`Store::compact`] still works).
    pub compact_live_ratio_min: f64,
    /// Most bytes per second compaction reads (0: no limit), so deliveries keep
    /// the disk.
    pub compact_rate_bytes_per_sec: u64,
    /// Time between background compaction passes, in milliseconds.
    pub compact_interval_ms: u64,
    /// Called at every step of a segment's compaction (tests crash or pause there).
    pub compact_hook: Option<CompactHook>,
    /// Size of the `RESERVE` file kept in the data directory: released when the
    /// disk fills, so deletes, compaction and the index keep working; a second one
    /// of a quarter of it (`RESERVE.start`) lets the store open on a full disk
    /// (0: no reserves).
    pub reserve_bytes: u64,
}

impl Default for StoreConfig {
    /// 256 MiB segments, 64 MiB per group commit, compaction below half live at
    /// 32 MiB/s every 30 s, an 8 MiB reserve.
    fn default() -> StoreConfig {
        StoreConfig {
            segment_size_bytes_max: 256 * 1024 * 1024,
            batch_bytes_max: 64 * 1024 * 1024,
            compact_live_ratio_min: 0.5,
            compact_rate_bytes_per_sec: 32 * 1024 * 1024,
            compact_interval_ms: 30_000,
            compact_hook: None,
            reserve_bytes: 8 * 1024 * 1024,
        }
    }
}

struct Inner {
    dir: PathBuf,
    index: Index,
    reader: Arc<SegmentReader>,
    counters: Arc<Counters>,
    /// `None` only while dropping.
    requests: Option<mpsc::Sender<Request>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    compactor: Arc<Compactor>,
    compactor_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn send(&self, request: Request) -> Result<(), StorageError> {
        let Some(requests) = self.requests.as_ref() else {
            return Err(StorageError::Closed);
        };
        let is_write = matches!(request, Request::Append { .. } | Request::Delete { .. });
        if is_write {
            // Counted before sending: the writer may answer (and uncount) at once.
            self.counters.add_pending();
        }
        requests.send(request).map_err(|_| {
            if is_write {
                self.counters.remove_pending();
            }
            StorageError::Closed
        })
    }

    /// Stop the compaction thread and wait for it (it finishes its current step).
    fn stop_compactor(&self) -> Option<JoinHandle<()>> {
        self.compactor.stop();
        self.compactor_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn take_writer(&self) -> Option<JoinHandle<()>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Read one record and check that it is the message the index says it is.
    fn read_message(&self, location: Location, key: &MessageKey) -> Result<Bytes, StorageError> {
        let bytes = self.reader.read(location)?;
        let corrupt = |reason: String| StorageError::Corrupt {
            path: self.reader.path(location.segment),
            offset: location.offset,
            reason,
        };
        let header = record::decode(&bytes).map_err(|e| {
            corrupt(match e {
                record::DecodeError::Corrupt(reason) => reason,
                record::DecodeError::Incomplete => "record longer than the index says".to_owned(),
                record::DecodeError::Io(e) => e.to_string(),
            })
        })?;
        if header.kind != RecordKind::Message
            || header.key != *key
            || header.record_len() != u64::from(location.len)
        {
            return Err(corrupt(format!(
                "index entry for {}/{}/{} points at a different record",
                key.bucket, key.user, key.id
            )));
        }
        Ok(Bytes::from(bytes).slice(header.len()..))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = self.stop_compactor()
            && handle.join().is_err()
        {
            tracing::error!("storage compaction thread panicked");
        }
        // Closing the channel makes the writer finish queued work, checkpoint and
        // exit; waiting for it releases sled's lock before a reopen.
        self.requests = None;
        if let Some(handle) = self.take_writer()
            && handle.join().is_err()
        {
            tracing::error!("storage writer thread panicked");
        }
    }
}

/// A node's local store: message bodies in segment files, indexes and the node's
/// key-value trees in sled. Cheap to clone (an `Arc` inside). The last clone to be
/// dropped stops the writer thread (after finishing queued writes) and waits for it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store in `dir`: replays the segment log past the last
    /// checkpoint into the index, truncates a torn tail, and starts the writer
    /// thread. Blocking (replay reads files): call it before serving, or from
    /// `spawn_blocking`. Fails if another store has `dir` open.
    ///
    /// On a full disk (the index cannot be opened or written for want of space)
    /// the reserve file is removed and the open tried again, so the node starts
    /// and serves reads; new messages are refused until space is back.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StorageError> {
        let mut attempt = Store::open_once(dir, &config);
        for name in [START_RESERVE_FILE, RESERVE_FILE] {
            match &attempt {
                Err(e) if e.is_disk_full() && dir.join(name).exists() => {
                    tracing::warn!(error = %e, dir = %dir.display(), reserve = name,
                        "data disk full at open: releasing a reserve and trying again");
                    std::fs::remove_file(dir.join(name))
                        .map_err(StorageError::io(dir.join(name), "remove reserve file"))?;
                    attempt = Store::open_once(dir, &config);
                }
                _ => break,
            }
        }
        attempt
    }

    fn open_once(dir: &Path, config: &StoreConfig) -> Result<Store, StorageError> {
        let segments_dir = dir.join("segments");
        std::fs::create_dir_all(&segments_dir)
            .map_err(StorageError::io(&segments_dir, "create directory"))?;
        sync_dir(dir)?;
        // sled first: its lock keeps a second opener from truncating our segments.
        let db = IndexDb::open(&dir.join("index"))?;
        let index = Index::open(db.clone())?;
        let checkpoint = index.checkpoint()?;
        let end = crate::replay::replay(&segments_dir, checkpoint, &index)?;

        let (messages, tombstones, users) = index.count_all();
        let mut segment_bytes = 0;
        for (_, path) in list_segments(&segments_dir)? {
            segment_bytes += std::fs::metadata(&path)
                .map_err(StorageError::io(&path, "stat segment"))?
                .len();
        }
        let counters = Arc::new(Counters::new(messages, tombstones, users, segment_bytes));
        let segments = SegmentWriter::open(
            &segments_dir,
            end,
            config.segment_size_bytes_max,
            counters.clone(),
        )?;
        if checkpoint != Some(end) {
            index.checkpoint_at(end)?;
            db.durable_flush()?;
        }

        let (requests, receiver) = mpsc::channel();
        let writer = Writer::new(
            segments,
            index.clone(),
            counters.clone(),
            config.batch_bytes_max,
            end,
            Reserves::open(dir, config.reserve_bytes),
        );
        let handle = std::thread::Builder::new()
            .name("storage-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(StorageError::io(dir, "spawn storage writer thread"))?;
        let reader = Arc::new(SegmentReader::new(&segments_dir));
        let compactor = Arc::new(Compactor::new(
            dir,
            index.clone(),
            reader.clone(),
            counters.clone(),
            CompactSettings {
                live_ratio_min: config.compact_live_ratio_min,
                rate_bytes_per_sec: config.compact_rate_bytes_per_sec,
                interval_ms: config.compact_interval_ms,
                hook: config.compact_hook.clone(),
            },
            requests.clone(),
        ));
        let compactor_thread = if config.compact_live_ratio_min > 0.0 {
            let background = compactor.clone();
            // A leftover of a compaction cut short (a segment with nothing live)
            // goes at once, not one interval later.
            compactor.kick();
            Some(
                std::thread::Builder::new()
                    .name("storage-compact".to_owned())
                    .spawn(move || background.run())
                    .map_err(StorageError::io(dir, "spawn storage compaction thread"))?,
            )
        } else {
            None
        };
        tracing::info!(dir = %dir.display(), messages, tombstones, users, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                index,
                reader,
                counters,
                requests: Some(requests),
                writer: Mutex::new(Some(handle)),
                compactor,
                compactor_thread: Mutex::new(compactor_thread),
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Durably store messages (group-committed with concurrent callers). `Ok` means
    /// fsync'd and readable. Re-appending a stored key is a no-op (the first copy
    /// wins); appending a tombstoned key is ignored.
    pub async fn append(&self, messages: Vec<NewMessage>) -> Result<(), StorageError> {
        if messages.is_empty() {
            return Ok(());
        }
        for message in &messages {
            validate_user(&message.key.user)?;
            let len = record::record_len(message.key.user.len(), message.data.len());
            if len > record::RECORD_LEN_MAX {
                return Err(StorageError::TooLarge {
                    size_bytes: message.data.len() as u64,
                    size_bytes_max: record::RECORD_LEN_MAX
                        - record::header_len(message.key.user.len()) as u64,
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        self.inner.send(Request::Append { messages, reply })?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Durably tombstone messages (same writer, same group commit). The message
    /// disappears from `list`/`read`, and any later copy of it is ignored.
    pub async fn delete(&self, keys: Vec<MessageKey>) -> Result<(), StorageError> {
        if keys.is_empty() {
            return Ok(());
        }
        for key in &keys {
            validate_user(&key.user)?;
        }
        let (reply, answer) = oneshot::channel();
        self.inner.send(Request::Delete { keys, reply })?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Live messages of one user, ordered by id.
    pub fn list(&self, bucket: u16, user: &str) -> Result<Vec<MessageMeta>, StorageError> {
        validate_user(user)?;
        self.inner.index.list(bucket, user)
    }

    /// The exact bytes of one live message, None if absent or tombstoned. The
    /// record's checksum is verified on every read.
    pub async fn read(&self, key: &MessageKey) -> Result<Option<Bytes>, StorageError> {
        validate_user(&key.user)?;
        // Compaction may move the record between the index lookup and the read
        // (and remove the old file): then the index names the new copy.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(location) = self.inner.index.location(key)? else {
                return Ok(None);
            };
            let result = if location.len <= INLINE_READ_BYTES_MAX {
                self.inner.read_message(location, key)
            } else {
                let inner = self.inner.clone();
                let key = key.clone();
                tokio::task::spawn_blocking(move || inner.read_message(location, &key))
                    .await
                    .map_err(|e| StorageError::Task {
                        action: "read message",
                        reason: e.to_string(),
                    })?
            };
            match result {
                Err(e) if attempt < 3 && self.inner.index.location(key)? != Some(location) => {
                    tracing::debug!(error = %e, "record moved by compaction during a read; retrying");
                }
                other => return other.map(Some),
            }
        }
    }

    /// Run one compaction pass now (blocking work on tokio's blocking pool):
    /// every sealed segment whose live fraction is below `live_ratio_min` is
    /// rewritten and removed (1.0: every sealed segment with any dead byte). Works
    /// with background compaction off; never runs beside a background pass.
    pub async fn compact(&self, live_ratio_min: f64) -> Result<CompactReport, StorageError> {
        let compactor = self.inner.compactor.clone();
        tokio::task::spawn_blocking(move || compactor.pass(live_ratio_min))
            .await
            .map_err(|e| StorageError::Task {
                action: "compact segments",
                reason: e.to_string(),
            })?
    }

    /// Read every segment record and every live message and check their
    /// checksums (blocking work on tokio's blocking pool). Reports damage; changes
    /// nothing.
    pub async fn verify(&self) -> Result<VerifyReport, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            crate::verify::verify(&inner.dir.join("segments"), &inner.index, &inner.reader)
        })
        .await
        .map_err(|e| StorageError::Task {
            action: "verify segments",
            reason: e.to_string(),
        })?
    }

    /// Replace the damaged record of live message `key` with `data` (a good copy
    /// from a replica): the copy is appended like compaction's and the index
    /// switched to it. Refused (`Ok(false)`) unless the record the index names
    /// really is damaged, so a good message is never overwritten.
    pub async fn replace_damaged(
        &self,
        key: &MessageKey,
        data: Bytes,
    ) -> Result<bool, StorageError> {
        validate_user(&key.user)?;
        let Some(location) = self.inner.index.location(key)? else {
            return Ok(false);
        };
        if self.inner.read_message(location, key).is_ok() {
            return Ok(false);
        }
        let mut bytes = record::encode_header(RecordKind::Message, key, &data);
        bytes.extend_from_slice(&data);
        let (reply, answer) = oneshot::channel();
        self.inner.send(Request::Relocate {
            records: vec![crate::writer::Relocation {
                kind: RecordKind::Message,
                key: key.clone(),
                from: location,
                bytes,
            }],
            reply,
        })?;
        answer.await.map_err(|_| StorageError::Closed)??;
        Ok(self.inner.index.location(key)? != Some(location))
    }

    /// Ask the background compaction thread for a pass soon (no-op when
    /// background compaction is off).
    pub fn kick_compaction(&self) {
        self.inner.compactor.kick();
    }

    /// Whether `key` has been deleted (tombstones are kept; no collection yet).
    pub fn is_tombstoned(&self, key: &MessageKey) -> Result<bool, StorageError> {
        validate_user(&key.user)?;
        self.inner.index.is_tombstoned(key)
    }

    /// Collect tombstones once every replica has them and no copy of their message is
    /// left anywhere (decided by the caller's anti-entropy pass). Not written to the
    /// segment log: a replay may bring a purged tombstone back, which is harmless.
    /// Returns how many tombstones were removed.
    pub fn purge_tombstones(&self, keys: &[MessageKey]) -> Result<u64, StorageError> {
        for key in keys {
            validate_user(&key.user)?;
        }
        let removed = self.inner.index.purge_tombstones(keys)?;
        self.inner.counters.apply(crate::stats::Deltas {
            tombstones: -(removed as i64),
            ..Default::default()
        });
        Ok(removed)
    }

    /// Ids of one user's messages deleted here, ordered by id.
    pub fn tombstones(&self, bucket: u16, user: &str) -> Result<Vec<MessageId>, StorageError> {
        validate_user(user)?;
        self.inner.index.tombstones(bucket, user)
    }

    /// (bucket, user) of every user with at least one tombstone here, sorted: such a
    /// node must stay in the user's mail map, or a replica that missed the delete
    /// could bring the message back.
    pub fn tombstone_users(&self) -> Result<Vec<(u16, String)>, StorageError> {
        self.inner.index.tombstone_users()
    }

    /// Users holding at least one live message in the buckets accepted by `filter`,
    /// with counts, as (bucket, user, live messages) sorted by bucket then user.
    pub fn users(
        &self,
        filter: impl Fn(u16) -> bool,
    ) -> Result<Vec<(u16, String, u64)>, StorageError> {
        self.inner.index.users(filter)
    }

    /// Every live message key and every tombstone key in one bucket (for anti-entropy).
    pub fn bucket_entries(&self, bucket: u16) -> Result<BucketEntries, StorageError> {
        self.inner.index.bucket_entries(bucket)
    }

    /// Totals for status/metrics.
    pub fn stats(&self) -> StoreStats {
        self.inner.counters.snapshot()
    }

    /// A named key-value tree (registry, raft log, node identity...). Trees share
    /// the index database but never its keys.
    pub fn kv(&self, name: &str) -> Result<KvTree, StorageError> {
        KvTree::open(self.inner.index.db().clone(), name)
    }

    /// Stop the writer thread after draining; flush sled. Later writes fail with
    /// [`StorageError::Closed`]; reads keep working. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), StorageError> {
        if let Some(handle) = self.inner.stop_compactor() {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("storage compaction thread panicked");
            }
        }
        let (reply, answer) = oneshot::channel();
        let result = match self.inner.send(Request::Close { reply }) {
            Ok(()) => answer.await.unwrap_or(Ok(())),
            // Already closed by an earlier call.
            Err(StorageError::Closed) => Ok(()),
            Err(e) => Err(e),
        };
        if let Some(handle) = self.inner.take_writer() {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("storage writer thread panicked");
            }
        }
        result
    }
}
