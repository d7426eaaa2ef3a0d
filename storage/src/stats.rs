//! Live totals of a store: kept in atomics by the writer thread so that
//! [`crate::Store::stats`] costs nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// Totals for status pages and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    /// Live (indexed, not tombstoned) messages.
    pub messages: u64,
    /// Tombstones recorded.
    pub tombstones: u64,
    /// Users holding at least one live message.
    pub users: u64,
    /// Bytes in all segment files (including deleted messages not compacted yet).
    pub segment_bytes: u64,
    /// `fdatasync` calls on segments since open (one per group commit, plus one per
    /// segment roll).
    pub syncs: u64,
    /// Group commits since open.
    pub batches: u64,
    /// `append`/`delete` calls served since open.
    pub write_requests: u64,
    /// Time the writer spent in group commits since open (from taking a batch to
    /// answering it: appends, fdatasync, index update), microseconds.
    #[serde(default)]
    pub commit_micros: u64,
    /// CPU the writer thread itself spent in those group commits, microseconds
    /// (sled's own threads not included).
    #[serde(default)]
    pub commit_cpu_micros: u64,
    /// `append`/`delete` calls queued for the writer and not yet answered (a
    /// measure of disk load).
    pub pending_write_requests: u64,
    /// Segments removed by compaction since open.
    #[serde(default)]
    pub compacted_segments: u64,
    /// Bytes of segment files removed by compaction since open.
    #[serde(default)]
    pub compacted_bytes: u64,
    /// The data disk filled: new messages are refused (deletes, reads and
    /// compaction go on) until the store's reserve could be written again.
    #[serde(default)]
    pub disk_full: bool,
}

/// The atomics behind [`StoreStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    messages: AtomicU64,
    tombstones: AtomicU64,
    users: AtomicU64,
    segment_bytes: AtomicU64,
    syncs: AtomicU64,
    batches: AtomicU64,
    write_requests: AtomicU64,
    commit_micros: AtomicU64,
    commit_cpu_micros: AtomicU64,
    pending_write_requests: AtomicU64,
    compacted_segments: AtomicU64,
    compacted_bytes: AtomicU64,
    /// Segment of the end of the indexed log: compaction leaves it (and later ones,
    /// which may hold records of a batch not indexed yet) alone.
    indexed_segment: AtomicU64,
    /// 1 while the reserve file is released (disk full: new messages refused).
    disk_full: AtomicU64,
}

/// Changes that one index update made to the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Deltas {
    pub(crate) messages: i64,
    pub(crate) tombstones: i64,
    pub(crate) users: i64,
}

fn add_signed(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

impl Counters {
    /// Start from totals counted at open.
    pub(crate) fn new(messages: u64, tombstones: u64, users: u64, segment_bytes: u64) -> Counters {
        Counters {
            messages: AtomicU64::new(messages),
            tombstones: AtomicU64::new(tombstones),
            users: AtomicU64::new(users),
            segment_bytes: AtomicU64::new(segment_bytes),
            ..Counters::default()
        }
    }

    pub(crate) fn apply(&self, deltas: Deltas) {
        add_signed(&self.messages, deltas.messages);
        add_signed(&self.tombstones, deltas.tombstones);
        add_signed(&self.users, deltas.users);
    }

    pub(crate) fn add_segment_bytes(&self, len_bytes: u64) {
        self.segment_bytes.fetch_add(len_bytes, Ordering::Relaxed);
    }

    /// The writer indexed everything up to segment `segment`.
    pub(crate) fn set_indexed_segment(&self, segment: u32) {
        self.indexed_segment
            .store(u64::from(segment), Ordering::Release);
    }

    /// See [`Counters::set_indexed_segment`].
    pub(crate) fn indexed_segment(&self) -> u32 {
        self.indexed_segment.load(Ordering::Acquire) as u32
    }

    /// Record whether the store refuses new messages for want of space.
    pub(crate) fn set_disk_full(&self, full: bool) {
        self.disk_full.store(u64::from(full), Ordering::Relaxed);
    }

    /// A segment file of `len_bytes` was removed.
    pub(crate) fn remove_segment_bytes(&self, len_bytes: u64) {
        self.segment_bytes.fetch_sub(len_bytes, Ordering::Relaxed);
    }

    /// Compaction removed a segment of `len_bytes`.
    pub(crate) fn add_compacted(&self, len_bytes: u64) {
        self.compacted_segments.fetch_add(1, Ordering::Relaxed);
        self.compacted_bytes.fetch_add(len_bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_sync(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_batch(&self, requests: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.write_requests.fetch_add(requests, Ordering::Relaxed);
    }

    /// One group commit took `wall_micros`, `cpu_micros` of them on the writer's CPU.
    pub(crate) fn add_commit_time(&self, wall_micros: u64, cpu_micros: u64) {
        self.commit_micros.fetch_add(wall_micros, Ordering::Relaxed);
        self.commit_cpu_micros
            .fetch_add(cpu_micros, Ordering::Relaxed);
    }

    /// A write request was queued for the writer.
    pub(crate) fn add_pending(&self) {
        self.pending_write_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued write request was answered.
    pub(crate) fn remove_pending(&self) {
        self.pending_write_requests.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            messages: self.messages.load(Ordering::Relaxed),
            tombstones: self.tombstones.load(Ordering::Relaxed),
            users: self.users.load(Ordering::Relaxed),
            segment_bytes: self.segment_bytes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            write_requests: self.write_requests.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
            commit_cpu_micros: self.commit_cpu_micros.load(Ordering::Relaxed),
            pending_write_requests: self.pending_write_requests.load(Ordering::Relaxed),
            compacted_segments: self.compacted_segments.load(Ordering::Relaxed),
            compacted_bytes: self.compacted_bytes.load(Ordering::Relaxed),
            disk_full: self.disk_full.load(Ordering::Relaxed) == 1,
        }
    }
}
