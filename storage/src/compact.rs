//! Segment compaction: reclaim the space of deleted messages.
//!
//! A sealed segment (any but the newest, which the writer appends to) whose
//! indexed records fill less than `live_ratio_min` of it is compacted:
//!
//! 1. its records are read (checksums verified) at most `rate_bytes_per_sec`; each
//!    one the index still uses (a live message, a tombstone not collected) is sent
//!    to the writer, which appends it at the head of the log, fsyncs, and switches
//!    the index entry to the new copy only if it still names the old one (a delete
//!    that raced us wins) — [`CompactStep::ChunkCopied`] after each chunk,
//!    [`CompactStep::Copied`] after the last;
//! 2. the writer makes the index durable and the durable checkpoint name the end of
//!    the log, past this segment ([`CompactStep::IndexDurable`]);
//! 3. the file is removed and the directory fsync'd ([`CompactStep::Removed`]).
//!
//! Crash safety: until step 2 the old file is authoritative (the index names it;
//! the copies are ordinary records at the log head, ignored by replay because the
//! first indexed copy wins, and dead bytes for a later compaction). After step 2
//! the copies are authoritative and the old file holds nothing the index uses, so
//! a crash before step 3 leaves a fully dead segment that the next pass removes.
//! No temporary file is ever made, so nothing else can be left behind. Before the
//! file goes its number is appended (fsync'd) to `segments/REMOVED`, so a replay
//! from scratch (index wiped) tells the gap from a lost segment; a normal replay
//! only reads segments from the checkpoint on.
//!
//! Chunks go through the writer's queue like deliveries, so a pass never holds the
//! writer for longer than one chunk's group commit.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::StorageError;
use crate::index::Index;
use crate::keys::Location;
use crate::record::{self, DecodeError};
use crate::segment::{SegmentReader, list_segments, note_removed, segment_path, sync_dir};
use crate::stats::Counters;
use crate::writer::{Relocation, Request};

/// Records copied per writer request.
const CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// Read-ahead buffer for scanning a segment.
const SCAN_BUFFER_BYTES: usize = 256 * 1024;

/// A point in one segment's compaction, for tests that crash or pause there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactStep {
    /// One chunk of live records is copied, fsync'd and indexed (not yet durably).
    ChunkCopied,
    /// Every live record of the segment is copied (index not yet durable).
    Copied,
    /// The index and the checkpoint past the segment are durable; the old file is
    /// still there.
    IndexDurable,
    /// The old file is removed.
    Removed,
}

impl CompactStep {
    /// Every step, in order.
    pub const ALL: [CompactStep; 4] = [
        CompactStep::ChunkCopied,
        CompactStep::Copied,
        CompactStep::IndexDurable,
        CompactStep::Removed,
    ];

    /// The step's name in configuration and logs (`chunk-copied`, `copied`,
    /// `index-durable`, `removed`).
    pub fn name(self) -> &'static str {
        match self {
            CompactStep::ChunkCopied => "chunk-copied",
            CompactStep::Copied => "copied",
            CompactStep::IndexDurable => "index-durable",
            CompactStep::Removed => "removed",
        }
    }

    /// The step named `name`, if any.
    pub fn from_name(name: &str) -> Option<CompactStep> {
        CompactStep::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Called at every [`CompactStep`] with the segment number (tests crash or pause
/// there; production sets none).
#[derive(Clone)]
pub struct CompactHook(pub Arc<dyn Fn(CompactStep, u32) + Send + Sync>);

impl std::fmt::Debug for CompactHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompactHook(..)")
    }
}

/// What one compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments removed.
    pub segments_removed: u64,
    /// Bytes read from the compacted segments.
    pub bytes_read: u64,
    /// Bytes of live records copied to the log head.
    pub bytes_copied: u64,
    /// Bytes of segment files removed (before the copies are subtracted).
    pub bytes_removed: u64,
    /// Time spent, in milliseconds.
    pub elapsed_ms: u64,
}

/// Tuning of compaction (part of `StoreConfig`).
#[derive(Clone, Debug)]
pub(crate) struct CompactSettings {
    pub(crate) live_ratio_min: f64,
    pub(crate) rate_bytes_per_sec: u64,
    pub(crate) interval_ms: u64,
    pub(crate) hook: Option<CompactHook>,
}

/// Wake-ups of the background thread.
#[derive(Default)]
struct Signal {
    stopped: bool,
    kicked: bool,
}

/// Shared by the background thread and `Store::compact`.
pub(crate) struct Compactor {
    dir: PathBuf,
    index: Index,
    reader: Arc<SegmentReader>,
    counters: Arc<Counters>,
    settings: CompactSettings,
    /// `None` once stopped, so the writer can exit when the store drops.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    /// One pass at a time.
    pass_lock: Mutex<()>,
    signal: Mutex<Signal>,
    wake: Condvar,
}

impl Compactor {
    pub(crate) fn new(
        dir: &Path,
        index: Index,
        reader: Arc<SegmentReader>,
        counters: Arc<Counters>,
        settings: CompactSettings,
        requests: mpsc::Sender<Request>,
    ) -> Compactor {
        Compactor {
            dir: dir.to_owned(),
            index,
            reader,
            counters,
            settings,
            requests: Mutex::new(Some(requests)),
            pass_lock: Mutex::new(()),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
        }
    }

    /// Stop the background thread and drop our handle on the writer.
    pub(crate) fn stop(&self) {
        let mut signal = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        signal.stopped = true;
        self.wake.notify_all();
        drop(signal);
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Ask the background thread for a pass now.
    pub(crate) fn kick(&self) {
        let mut signal = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        signal.kicked = true;
        self.wake.notify_all();
    }

    /// The background thread: a pass every `interval_ms` (or when kicked) until
    /// stopped. A failed pass is logged and retried at the next interval.
    pub(crate) fn run(self: Arc<Self>) {
        let interval = Duration::from_millis(self.settings.interval_ms.max(10));
        loop {
            {
                let mut signal = self.signal.lock().unwrap_or_else(|p| p.into_inner());
                let deadline = Instant::now() + interval;
                while !signal.stopped && !signal.kicked {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    signal = self
                        .wake
                        .wait_timeout(signal, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if signal.stopped {
                    return;
                }
                signal.kicked = false;
            }
            match self.pass(self.settings.live_ratio_min) {
                Ok(report) if report.segments_removed > 0 => {
                    tracing::info!(
                        segments = report.segments_removed,
                        read_bytes = report.bytes_read,
                        copied_bytes = report.bytes_copied,
                        removed_bytes = report.bytes_removed,
                        elapsed_ms = report.elapsed_ms,
                        "segment compaction pass"
                    );
                }
                Ok(_) => {}
                Err(StorageError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "segment compaction pass failed"),
            }
        }
    }

    fn hook(&self, step: CompactStep, segment: u32) {
        if let Some(hook) = &self.settings.hook {
            (hook.0)(step, segment);
        }
    }

    /// Send a request to the writer and wait for its answer (blocking).
    fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), StorageError>>) -> Request,
    ) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let Some(requests) = requests.as_ref() else {
                return Err(StorageError::Closed);
            };
            requests
                .send(make(reply))
                .map_err(|_| StorageError::Closed)?;
        }
        answer.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// One pass: compact every sealed segment whose live fraction is below
    /// `live_ratio_min` (1.0 or more: every sealed segment with any dead byte).
    pub(crate) fn pass(&self, live_ratio_min: f64) -> Result<CompactReport, StorageError> {
        let _pass = self.pass_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let segments_dir = self.dir.join("segments");
        let segments = list_segments(&segments_dir)?;
        let present: BTreeSet<u32> = segments.iter().map(|(id, _)| *id).collect();
        self.reader.retain(&present);
        let mut report = CompactReport::default();
        // The writer appends to the newest segment, and a batch that rolled holds
        // records not indexed yet in the segment the indexed log ends in: only
        // segments before that one are sealed and fully indexed. Read the mark
        // before the index, so every record before it is in the scan below.
        let indexed_segment = self.counters.indexed_segment();
        let Some((_, sealed)) = segments.split_last() else {
            return Ok(report);
        };
        let live = self.index.live_bytes_by_segment()?;
        let mut limiter = RateLimiter::new(self.settings.rate_bytes_per_sec);
        for (id, path) in sealed.iter().filter(|(id, _)| *id < indexed_segment) {
            let size_bytes = std::fs::metadata(path)
                .map_err(StorageError::io(path, "stat segment"))?
                .len();
            let live_bytes = live.get(id).copied().unwrap_or(0);
            let dead = size_bytes > live_bytes;
            let below = size_bytes == 0
                || (live_bytes as f64) < live_ratio_min * (size_bytes as f64)
                || (live_ratio_min >= 1.0 && dead);
            if !below {
                continue;
            }
            match self.compact_segment(*id, path, size_bytes, &mut limiter, &mut report) {
                Ok(()) => {}
                // Damage stays for fsck and repair; the other segments go on.
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "segment left uncompacted");
                }
                Err(e) => return Err(e),
            }
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    fn compact_segment(
        &self,
        id: u32,
        path: &Path,
        size_bytes: u64,
        limiter: &mut RateLimiter,
        report: &mut CompactReport,
    ) -> Result<(), StorageError> {
        let file =
            File::open(path).map_err(StorageError::io(path, "open segment for compaction"))?;
        let mut input = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
        let mut offset = 0u64;
        let mut chunk: Vec<Relocation> = Vec::new();
        let mut chunk_bytes = 0u64;
        loop {
            let next = record::read_record_checked(&mut input, size_bytes - offset);
            let (header, bytes, damage) = match next {
                Ok(None) => break,
                Ok(Some(record)) => record,
                Err(DecodeError::Io(source)) => {
                    return Err(StorageError::Io {
                        path: path.to_owned(),
                        action: "read segment for compaction",
                        source,
                    });
                }
                // A sealed segment holds acknowledged records: damage is for fsck
                // and repair, and the file must stay.
                Err(DecodeError::Corrupt(reason)) => {
                    return Err(StorageError::Corrupt {
                        path: path.to_owned(),
                        offset,
                        reason: format!("compaction stopped: {reason}"),
                    });
                }
                Err(DecodeError::Incomplete) => {
                    return Err(StorageError::Corrupt {
                        path: path.to_owned(),
                        offset,
                        reason: "compaction stopped: segment ends inside a record".to_owned(),
                    });
                }
            };
            let len = bytes.len() as u64;
            let location = Location {
                segment: id,
                offset,
                len: len as u32,
            };
            offset += len;
            report.bytes_read += len;
            limiter.take(len);
            let indexed = self
                .index
                .is_indexed_copy(header.kind, &header.key, location)?;
            if let Some(reason) = damage {
                // A damaged record the index still uses waits for repair; one
                // nothing uses (replaced by repair, or deleted) is simply dropped.
                if indexed {
                    return Err(StorageError::Corrupt {
                        path: path.to_owned(),
                        offset: location.offset,
                        reason: format!("compaction stopped at a damaged live record: {reason}"),
                    });
                }
                continue;
            }
            if indexed {
                chunk_bytes += len;
                chunk.push(Relocation {
                    kind: header.kind,
                    key: header.key,
                    from: location,
                    bytes,
                });
                if chunk_bytes >= CHUNK_BYTES_MAX {
                    report.bytes_copied += chunk_bytes;
                    let records = std::mem::take(&mut chunk);
                    self.ask(|reply| Request::Relocate { records, reply })?;
                    chunk_bytes = 0;
                    self.hook(CompactStep::ChunkCopied, id);
                }
            }
        }
        if !chunk.is_empty() {
            report.bytes_copied += chunk_bytes;
            self.ask(|reply| Request::Relocate {
                records: chunk,
                reply,
            })?;
            self.hook(CompactStep::ChunkCopied, id);
        }
        self.hook(CompactStep::Copied, id);
        self.ask(|reply| Request::Checkpoint { reply })?;
        self.hook(CompactStep::IndexDurable, id);
        note_removed(&self.dir.join("segments"), id)?;
        std::fs::remove_file(path).map_err(StorageError::io(path, "remove compacted segment"))?;
        sync_dir(&self.dir.join("segments"))?;
        self.reader.evict(id);
        self.counters.remove_segment_bytes(size_bytes);
        self.counters.add_compacted(size_bytes);
        report.segments_removed += 1;
        report.bytes_removed += size_bytes;
        tracing::debug!(segment = %segment_path(&self.dir.join("segments"), id).display(), size_bytes, "compacted segment removed");
        self.hook(CompactStep::Removed, id);
        Ok(())
    }
}

/// Sleeps so that bytes taken average at most `rate_bytes_per_sec` (0: no limit).
struct RateLimiter {
    rate_bytes_per_sec: u64,
    started: Instant,
    taken_bytes: u64,
}

impl RateLimiter {
    fn new(rate_bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            rate_bytes_per_sec,
            started: Instant::now(),
            taken_bytes: 0,
        }
    }

    fn take(&mut self, len_bytes: u64) {
        if self.rate_bytes_per_sec == 0 {
            return;
        }
        self.taken_bytes += len_bytes;
        let due = Duration::from_secs_f64(self.taken_bytes as f64 / self.rate_bytes_per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}
