//! The writer thread: the only code that appends to segments and changes the
//! message index. It group-commits: it drains every queued request (up to
//! `batch_bytes_max`), writes them all, calls ONE `fdatasync`, indexes the batch,
//! and only then answers each requester. So an acknowledged write is durable and
//! readable.
//!
//! It also advances the checkpoint (how far replay may skip on the next open):
//! when idle, every few seconds under load, and at close. A plain OS thread, not a
//! tokio task, because nearly all it does is blocking file IO.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::index::{Index, IndexOp, Move};
use crate::keys::{Location, Position};
use crate::record::{self, RecordKind};
use crate::reserve::{Reserve, Reserves, free_bytes};
use crate::segment::SegmentWriter;
use crate::stats::Counters;
use crate::{MessageKey, NewMessage, StorageError};

/// Checkpoint after this long without requests (if anything is unchecked).
const CHECKPOINT_IDLE_MS: u64 = 200;
/// Checkpoint at least this often under constant load, so replay stays short.
const CHECKPOINT_INTERVAL_MS: u64 = 5_000;
/// How long to wait for a request when there is nothing to checkpoint.
const IDLE_WAIT_MS: u64 = 60_000;

/// Where a requester waits for its answer.
pub(crate) type Reply = oneshot::Sender<Result<(), StorageError>>;

/// Work for the writer thread.
pub(crate) enum Request {
    /// Store these messages.
    Append {
        messages: Vec<NewMessage>,
        reply: Reply,
    },
    /// Tombstone these keys.
    Delete { keys: Vec<MessageKey>, reply: Reply },
    /// Compaction: append these whole records (already checksummed) and switch
    /// their index entries to the new copies.
    Relocate {
        records: Vec<Relocation>,
        reply: Reply,
    },
    /// Compaction: make the index durable and the durable checkpoint name the
    /// current end of the log (so no earlier segment is needed by replay).
    Checkpoint { reply: Reply },
    /// Finish every earlier request, checkpoint, flush and stop.
    Close { reply: Reply },
}

impl Request {
    /// Bytes this request adds to the segment log.
    fn size_bytes(&self) -> u64 {
        match self {
            Request::Append { messages, .. } => messages
                .iter()
                .map(|m| record::record_len(m.key.user.len(), m.data.len()))
                .sum(),
            Request::Delete { keys, .. } => keys
                .iter()
                .map(|k| record::record_len(k.user.len(), 0))
                .sum(),
            Request::Relocate { records, .. } => records.iter().map(|r| r.bytes.len() as u64).sum(),
            Request::Checkpoint { .. } | Request::Close { .. } => 0,
        }
    }

    fn reply(self, result: Result<(), StorageError>, counters: &Counters) {
        let reply = match self {
            Request::Append { reply, .. } | Request::Delete { reply, .. } => {
                counters.remove_pending();
                reply
            }
            Request::Relocate { reply, .. }
            | Request::Checkpoint { reply }
            | Request::Close { reply } => reply,
        };
        // The requester may have given up waiting; the write stands either way.
        let _ = reply.send(result);
    }
}

/// One record compaction copies: its bytes, what it is, and where it lies now.
pub(crate) struct Relocation {
    pub(crate) kind: RecordKind,
    pub(crate) key: MessageKey,
    pub(crate) from: Location,
    pub(crate) bytes: Vec<u8>,
}

/// How a batch failed.
enum BatchError {
    /// No space; the batch was taken back.
    Full(StorageError),
    /// Anything else: the writer stops.
    Fatal(StorageError),
}

/// State of the writer thread.
pub(crate) struct Writer {
    segments: SegmentWriter,
    index: Index,
    counters: Arc<Counters>,
    batch_bytes_max: u64,
    /// End of the last record that is written, synced and indexed.
    applied: Position,
    /// The last checkpoint recorded.
    checkpointed: Position,
    last_checkpoint: Instant,
    /// Set by the first failed write, sync or index update; see
    /// [`StorageError::WriterFailed`].
    failed: Option<Arc<StorageError>>,
    /// Space held back for deletes and compaction on a full disk.
    reserve: Reserve,
    /// Space held back for `Store::open` on a full disk.
    start_reserve: Reserve,
    /// The data directory (for its free space).
    dir: std::path::PathBuf,
    /// The last batch with new messages found too little free space for them.
    short_of_room: bool,
}

impl Writer {
    /// `segments` is positioned at the end of the replayed log, which the index
    /// covers and whose checkpoint is `checkpointed`.
    pub(crate) fn new(
        segments: SegmentWriter,
        index: Index,
        counters: Arc<Counters>,
        batch_bytes_max: usize,
        checkpointed: Position,
        reserves: Reserves,
    ) -> Writer {
        let Reserves {
            runtime: reserve,
            start: start_reserve,
            dir,
        } = reserves;
        counters.set_indexed_segment(segments.position().segment);
        counters.set_disk_full(!reserve.present());
        Writer {
            applied: segments.position(),
            segments,
            index,
            counters,
            batch_bytes_max: batch_bytes_max.max(1) as u64,
            checkpointed,
            last_checkpoint: Instant::now(),
            failed: None,
            reserve,
            start_reserve,
            dir,
            short_of_room: false,
        }
    }

    /// The thread body: serve requests until `Close` or until every sender is gone.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => {
                    let wait_ms = if self.applied != self.checkpointed {
                        CHECKPOINT_IDLE_MS
                    } else {
                        IDLE_WAIT_MS
                    };
                    match requests.recv_timeout(Duration::from_millis(wait_ms)) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => {
                            self.checkpoint_logged();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            if let Err(e) = self.shutdown() {
                                tracing::error!(error = %e, "storage writer: final flush failed");
                            }
                            return;
                        }
                    }
                }
            };
            if let Request::Close { .. } = first {
                let result = self.shutdown();
                first.reply(result, &self.counters);
                return;
            }
            if let Request::Checkpoint { .. } = first {
                let result = self.durable_checkpoint();
                first.reply(result, &self.counters);
                continue;
            }
            let mut batch_bytes = first.size_bytes();
            let mut batch = vec![first];
            while batch_bytes < self.batch_bytes_max {
                match requests.try_recv() {
                    Ok(request) => {
                        let size = request.size_bytes();
                        let is_close =
                            matches!(request, Request::Close { .. } | Request::Checkpoint { .. });
                        if is_close || batch_bytes + size > self.batch_bytes_max {
                            carried = Some(request);
                            break;
                        }
                        batch_bytes += size;
                        batch.push(request);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit(batch);
            if self.last_checkpoint.elapsed() >= Duration::from_millis(CHECKPOINT_INTERVAL_MS) {
                self.checkpoint_logged();
            }
        }
    }

    /// Write, sync and index one batch, then answer every request in it. On a
    /// full disk the batch is taken back, the reserve released, and what must
    /// work on a full disk (deletes, compaction) written again without the new
    /// messages, which are refused with [`StorageError::DiskFull`].
    fn commit(&mut self, batch: Vec<Request>) {
        let started = Instant::now();
        let cpu_started = thread_cpu_micros();
        self.commit_untimed(batch);
        let wall = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let cpu = thread_cpu_micros().saturating_sub(cpu_started);
        self.counters.add_commit_time(wall, cpu);
    }

    /// [`Writer::commit`] without its timing.
    fn commit_untimed(&mut self, batch: Vec<Request>) {
        if let Some(failure) = &self.failed {
            for request in batch {
                request.reply(
                    Err(StorageError::WriterFailed {
                        source: failure.clone(),
                    }),
                    &self.counters,
                );
            }
            return;
        }
        self.counters.add_batch(batch.len() as u64);
        let mut batch = batch;
        if let Some(room) = self.room_for(&batch) {
            self.short_of_room = !room;
        }
        let refuse = !self.reserve.try_restore() || self.short_of_room;
        if !refuse {
            self.start_reserve.try_restore();
        }
        // The flag is set before any refusal is answered: whoever got `DiskFull`
        // finds the store flagged full.
        self.counters
            .set_disk_full(!self.reserve.present() || self.short_of_room);
        if refuse {
            batch = self.refuse_appends(batch);
        }
        if batch.is_empty() {
            return;
        }
        let outcome = match self.try_batch(&batch) {
            Err(BatchError::Full(e)) => {
                tracing::warn!(error = %e, "storage writer: disk full; batch taken back");
                self.reserve.release();
                self.counters.set_disk_full(true);
                batch = self.refuse_appends(batch);
                if batch.is_empty() {
                    return;
                }
                match self.try_batch(&batch) {
                    Err(BatchError::Full(_)) => Err(None),
                    other => other.map_err(|e| match e {
                        BatchError::Fatal(e) => Some(e),
                        BatchError::Full(_) => None,
                    }),
                }
            }
            other => other.map_err(|e| match e {
                BatchError::Fatal(e) => Some(e),
                BatchError::Full(_) => None,
            }),
        };
        match outcome {
            Ok(()) => {
                for request in batch {
                    request.reply(Ok(()), &self.counters);
                }
            }
            // Full even without the new messages: nothing written, nothing broken.
            Err(None) => {
                for request in batch {
                    request.reply(
                        Err(StorageError::DiskFull {
                            action: "write to the segment log",
                        }),
                        &self.counters,
                    );
                }
            }
            Err(Some(e)) => {
                tracing::error!(error = %e, "storage writer failed; refusing further writes until restart");
                let failure = Arc::new(e);
                self.failed = Some(failure.clone());
                for request in batch {
                    request.reply(
                        Err(StorageError::WriterFailed {
                            source: failure.clone(),
                        }),
                        &self.counters,
                    );
                }
            }
        }
    }

    /// Whether the new messages of `batch` leave at least the reserve's size free
    /// (headroom for the index and for tombstones); `None` for a batch without
    /// new messages. Unknown free space: yes.
    fn room_for(&self, batch: &[Request]) -> Option<bool> {
        let appended: u64 = batch
            .iter()
            .filter(|r| matches!(r, Request::Append { .. }))
            .map(Request::size_bytes)
            .sum();
        if appended == 0 {
            return None;
        }
        if self.reserve.size_bytes() == 0 {
            return Some(true);
        }
        Some(match free_bytes(&self.dir) {
            Some(free) => free >= appended.saturating_add(self.reserve.size_bytes()),
            None => true,
        })
    }

    /// Answer every `Append` of `batch` with [`StorageError::DiskFull`]; return the rest.
    fn refuse_appends(&self, batch: Vec<Request>) -> Vec<Request> {
        let mut rest = Vec::with_capacity(batch.len());
        for request in batch {
            if matches!(request, Request::Append { .. }) {
                request.reply(
                    Err(StorageError::DiskFull {
                        action: "store message",
                    }),
                    &self.counters,
                );
            } else {
                rest.push(request);
            }
        }
        rest
    }

    /// Write and index `batch`. A write that fails for want of space is taken back
    /// (the log ends where it did, nothing acknowledged): `Full`. Anything else,
    /// or a failure to take it back, is `Fatal`.
    fn try_batch(&mut self, batch: &[Request]) -> Result<(), BatchError> {
        let mark = self.segments.mark();
        match self.write_and_index(batch) {
            Ok(()) => Ok(()),
            Err((true, e)) if e.is_disk_full() => match self.segments.rewind(mark) {
                Ok(()) => Err(BatchError::Full(e)),
                Err(rewind) => {
                    tracing::error!(error = %rewind, "taking back a batch the disk had no room for");
                    Err(BatchError::Fatal(e))
                }
            },
            Err((_, e)) => Err(BatchError::Fatal(e)),
        }
    }

    /// Errors say whether they came from the segment phase (`true`: nothing of the
    /// batch is indexed yet, so it can be taken back).
    fn write_and_index(&mut self, batch: &[Request]) -> Result<(), (bool, StorageError)> {
        let (ops, moves) = self.write_records(batch).map_err(|e| (true, e))?;
        self.segments.sync().map_err(|e| (true, e))?;
        let deltas = self.index.apply(&ops).map_err(|e| (false, e))?;
        self.counters.apply(deltas);
        if !moves.is_empty() {
            self.index.relocate(&moves).map_err(|e| (false, e))?;
        }
        self.applied = self.segments.position();
        self.counters.set_indexed_segment(self.applied.segment);
        Ok(())
    }

    fn write_records(
        &mut self,
        batch: &[Request],
    ) -> Result<(Vec<IndexOp>, Vec<Move>), StorageError> {
        let mut ops = Vec::new();
        let mut moves = Vec::new();
        for request in batch {
            match request {
                Request::Append { messages, .. } => {
                    for message in messages {
                        let header =
                            record::encode_header(RecordKind::Message, &message.key, &message.data);
                        let location = self.segments.append(&header, &message.data)?;
                        ops.push(IndexOp::new(RecordKind::Message, &message.key, location));
                    }
                }
                Request::Delete { keys, .. } => {
                    for key in keys {
                        let header = record::encode_header(RecordKind::Tombstone, key, &[]);
                        let location = self.segments.append(&header, &[])?;
                        ops.push(IndexOp::new(RecordKind::Tombstone, key, location));
                    }
                }
                Request::Relocate { records, .. } => {
                    for r in records {
                        let to = self.segments.append(&r.bytes, &[])?;
                        moves.push(Move {
                            kind: r.kind,
                            key: r.key.clone(),
                            from: r.from,
                            to,
                        });
                    }
                }
                Request::Checkpoint { .. } | Request::Close { .. } => {}
            }
        }
        Ok((ops, moves))
    }

    /// Advance the checkpoint to everything indexed so far. Never past a failed
    /// batch: its records may be on disk but unindexed, and replay must see them.
    fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.last_checkpoint = Instant::now();
        if self.applied == self.checkpointed {
            return Ok(());
        }
        self.index.checkpoint_at(self.applied)?;
        self.checkpointed = self.applied;
        Ok(())
    }

    /// Flush the index, checkpoint at the end of the log, and flush again so the
    /// checkpoint itself is durable: after this, replay never reads a segment
    /// before the current one, so compaction may remove it.
    fn durable_checkpoint(&mut self) -> Result<(), StorageError> {
        if let Some(failure) = &self.failed {
            return Err(StorageError::WriterFailed {
                source: failure.clone(),
            });
        }
        self.last_checkpoint = Instant::now();
        self.index.checkpoint_at(self.applied)?;
        self.checkpointed = self.applied;
        self.index.db().durable_flush()
    }

    /// A failed checkpoint only means a longer replay next time: log and go on.
    fn checkpoint_logged(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "storage writer: checkpoint failed");
        }
    }

    /// Final checkpoint, then a flush that makes it (and every kv tree) durable.
    fn shutdown(&mut self) -> Result<(), StorageError> {
        self.checkpoint()?;
        self.index.db().durable_flush()
    }
}

/// CPU time of the calling thread, microseconds (0 where it cannot be read).
fn thread_cpu_micros() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}
