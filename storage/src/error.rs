//! The one error type of the crate: every variant says what was touched and what
//! was being done to it.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file or directory operation failed (`action` on `path`).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// The file or directory that was touched.
        path: PathBuf,
        /// What was being done, e.g. "fdatasync segment".
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk do not decode: a damaged record or a file that is shorter
    /// than the index says.
    #[error("corrupt data in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The file holding the damaged bytes.
        path: PathBuf,
        /// Byte offset in that file where the damage starts.
        offset: u64,
        /// What did not check out.
        reason: String,
    },
    /// The sled index failed (`action` on tree `tree`).
    #[error("index tree {tree:?}: {action}: {source}")]
    Index {
        /// The sled tree that was touched.
        tree: String,
        /// What was being done, e.g. "look up message".
        action: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A value in the sled index does not decode (the index is damaged; wiping the
    /// index directory makes `open` rebuild it from the segments).
    #[error("index tree {tree:?} holds an undecodable entry: {reason}")]
    IndexCorrupt {
        /// The sled tree that holds the bad entry.
        tree: String,
        /// What did not check out.
        reason: String,
    },
    /// A user name that cannot be stored (contains NUL, or longer than 65535 bytes).
    #[error("user name {user:?} cannot be stored: {reason}")]
    InvalidUser {
        /// The rejected user name.
        user: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A message body too large for one segment record (4 GiB minus the header).
    #[error("message of {size_bytes} bytes exceeds the record limit of {size_bytes_max} bytes")]
    TooLarge {
        /// Size of the rejected body.
        size_bytes: u64,
        /// Largest body that fits in a record for this user name.
        size_bytes_max: u64,
    },
    /// The store was closed (or its writer thread is gone); no more writes.
    #[error("the store is closed")]
    Closed,
    /// An earlier write or fdatasync failed, so the segment writer refuses all
    /// further writes until the node restarts and replays its log (after a failed
    /// fsync the page cache cannot be trusted).
    #[error("the segment writer stopped after an earlier failure")]
    WriterFailed {
        /// The failure that stopped the writer.
        #[source]
        source: Arc<StorageError>,
    },
    /// The disk is full: this message was not stored. Deletes and compaction go
    /// on (from the store's reserve file); writes are taken again by themselves
    /// once space is back.
    #[error("no space left on the data disk: {action} refused")]
    DiskFull {
        /// What was refused, e.g. "store message".
        action: &'static str,
    },
    /// A blocking task that served the request panicked or was cancelled.
    #[error("background task for {action} failed: {reason}")]
    Task {
        /// What the task was doing.
        action: &'static str,
        /// Why it did not finish.
        reason: String,
    },
}

/// Whether an OS error means "no space" (ENOSPC, or a quota: EDQUOT).
pub(crate) fn io_is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl StorageError {
    /// Whether this failure is the disk being full (now or when the writer
    /// stopped): the caller should answer "insufficient storage" (SMTP `452 4.3.1`)
    /// rather than a generic temporary failure.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::DiskFull { .. } => true,
            StorageError::Io { source, .. } => io_is_full(source),
            StorageError::Index {
                source: sled::Error::Io(e),
                ..
            } => io_is_full(e),
            StorageError::WriterFailed { source } => source.is_disk_full(),
            _ => false,
        }
    }

    /// Build an [`StorageError::Io`] from its parts (a helper for `map_err`).
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io {
            path,
            action,
            source,
        }
    }

    /// Build an [`StorageError::Index`] from its parts (a helper for `map_err`).
    pub(crate) fn index(
        tree: &str,
        action: &'static str,
    ) -> impl FnOnce(sled::Error) -> StorageError + use<> {
        let tree = tree.to_owned();
        move |source| StorageError::Index {
            tree,
            action,
            source,
        }
    }
}
