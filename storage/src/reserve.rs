//! New messages are refused before the disk is full: once a batch would leave
//! less than the reserve's size free (so sled, whose background flush fails for
//! good on ENOSPC, and tombstones always have room). The reserve file is the
//! second line, for when something else fills the disk anyway.
//!
//! The reserve file: `RESERVE` in the data directory, a few MiB of zeros that hold
//! space back for when the disk fills. When a write fails for want of space the
//! writer removes it and goes on with what must keep working on a full disk —
//! tombstones (POP3 deletes), compaction's copies (which then free whole
//! segments), the index — while new messages are refused
//! ([`crate::StorageError::DiskFull`]). The file is written again once there is
//! room for it, and only then are messages taken again. `Store::open` removes it
//! too if the index cannot be opened for want of space, so a node starts (and
//! serves reads) on a full disk: first `RESERVE.start`, a smaller second reserve
//! kept for that alone (the first may be gone already when a full node is
//! restarted), then `RESERVE`. Both are written again once there is room,
//! `RESERVE` first.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::StorageError;
use crate::error::io_is_full;
use crate::segment::sync_dir;

/// Name of the reserve file in the data directory.
pub(crate) const RESERVE_FILE: &str = "RESERVE";
/// Name of the reserve only `Store::open` uses.
pub(crate) const START_RESERVE_FILE: &str = "RESERVE.start";
/// Shortest time between two attempts to write the reserve again.
const RESTORE_INTERVAL_MS: u64 = 1_000;

/// Bytes available to this process on the file system holding `path` (`None` if
/// it cannot be read).
pub(crate) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string; `st` is plain data written by
    // the call and read only when it returns 0.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The two reserves of a store and its data directory, as the writer keeps them.
pub(crate) struct Reserves {
    /// `RESERVE`: for deletes and compaction on a full disk.
    pub(crate) runtime: Reserve,
    /// `RESERVE.start`: for `Store::open` on a full disk.
    pub(crate) start: Reserve,
    /// The data directory (for its free space).
    pub(crate) dir: PathBuf,
}

impl Reserves {
    /// Both reserves of data directory `dir`, `RESERVE` of `size_bytes`.
    pub(crate) fn open(dir: &Path, size_bytes: u64) -> Reserves {
        Reserves {
            runtime: Reserve::open(dir, RESERVE_FILE, size_bytes),
            start: Reserve::open(dir, START_RESERVE_FILE, size_bytes / 4),
            dir: dir.to_owned(),
        }
    }
}

/// The reserve file and whether it is in place.
pub(crate) struct Reserve {
    dir: PathBuf,
    path: PathBuf,
    size_bytes: u64,
    present: bool,
    last_attempt: Option<Instant>,
}

impl Reserve {
    /// The reserve file `name` of `size_bytes` in data directory `dir` (0: none,
    /// never full mode). Writes it if it is missing and there is room.
    pub(crate) fn open(dir: &Path, name: &str, size_bytes: u64) -> Reserve {
        let path = dir.join(name);
        let present =
            size_bytes == 0 || std::fs::metadata(&path).is_ok_and(|m| m.len() >= size_bytes);
        let mut reserve = Reserve {
            dir: dir.to_owned(),
            path,
            size_bytes,
            present,
            last_attempt: None,
        };
        if !reserve.present {
            reserve.restore();
        }
        reserve
    }

    /// Size of the reserve.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Whether the reserve is in place (so new messages may be taken).
    pub(crate) fn present(&self) -> bool {
        self.present
    }

    /// Remove the reserve to free its space; returns whether it was there.
    pub(crate) fn release(&mut self) -> bool {
        if self.size_bytes == 0 {
            return false;
        }
        let was = self.present;
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::warn!(path = %self.path.display(), size_bytes = self.size_bytes,
                "data disk full: reserve released; refusing new messages, deletes and compaction go on"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "removing the reserve file")
            }
        }
        self.present = false;
        self.last_attempt = Some(Instant::now());
        was
    }

    /// Try (at most once a second) to write the reserve again; true once it is
    /// in place.
    pub(crate) fn try_restore(&mut self) -> bool {
        if self.present {
            return true;
        }
        if self
            .last_attempt
            .is_some_and(|t| t.elapsed() < Duration::from_millis(RESTORE_INTERVAL_MS))
        {
            return false;
        }
        self.restore();
        self.present
    }

    fn restore(&mut self) {
        self.last_attempt = Some(Instant::now());
        match self.write() {
            Ok(()) => {
                if self.size_bytes > 0 {
                    tracing::info!(path = %self.path.display(), "reserve in place; taking new messages");
                }
                self.present = true;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                if !matches!(&e, StorageError::Io { source, .. } if io_is_full(source)) {
                    tracing::warn!(error = %e, "writing the reserve file");
                }
                self.present = false;
            }
        }
    }

    fn write(&self) -> Result<(), StorageError> {
        let mut file: File = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)
            .map_err(StorageError::io(&self.path, "create reserve file"))?;
        // Real blocks (not a sparse set_len), so removing it frees them.
        let chunk = vec![0u8; 1024 * 1024];
        let mut left = self.size_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])
                .map_err(StorageError::io(&self.path, "write reserve file"))?;
            left -= n as u64;
        }
        file.sync_all()
            .map_err(StorageError::io(&self.path, "fsync reserve file"))?;
        sync_dir(&self.dir)
    }
}
