//! Free space on the data directory's file system: a node whose free space falls below
//! its reserve flags itself nearly full (in its load figure), so placement stops
//! sending it new mail before a write can fail; it keeps serving reads and deletes.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often the free space is read.
pub const DISK_CHECK_INTERVAL_MS: u64 = 1000;

/// Why the free space could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The path holds a NUL byte.
    #[error("data dir path {0} holds a NUL byte")]
    BadPath(PathBuf),
    /// `statvfs` failed.
    #[error("statvfs {path}: {source}")]
    Stat {
        /// The path asked about.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Bytes available to this (unprivileged) process on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, DiskError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| DiskError::BadPath(path.to_path_buf()))?;
    // SAFETY: `c` is a valid NUL-terminated string; `st` is plain data written by the
    // call and read only when it returns 0.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(DiskError::Stat {
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// This node's view of its own disk, shared by the load figure and status.
#[derive(Debug)]
pub struct DiskWatch {
    path: PathBuf,
    reserve_bytes: u64,
    nearly_full: AtomicBool,
    free_bytes: AtomicU64,
}

impl DiskWatch {
    /// A watch of the file system holding `path`, nearly full below `reserve_bytes`
    /// free (0 never flags). Reads the free space once now.
    pub fn new(path: &Path, reserve_bytes: u64) -> Self {
        let w = DiskWatch {
            path: path.to_path_buf(),
            reserve_bytes,
            nearly_full: AtomicBool::new(false),
            free_bytes: AtomicU64::new(u64::MAX),
        };
        w.check();
        w
    }

    /// Whether the free space was below the reserve at the last check.
    pub fn nearly_full(&self) -> bool {
        self.nearly_full.load(Ordering::Relaxed)
    }

    /// Free bytes at the last check (`u64::MAX` if it could not be read yet).
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// The configured reserve, in bytes.
    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Read the free space now; log when the node becomes or stops being nearly full.
    /// A failed read keeps the previous state (and says so).
    pub fn check(&self) {
        let free = match free_bytes(&self.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read free disk space; keeping the last figure");
                return;
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        let full = free < self.reserve_bytes;
        let was = self.nearly_full.swap(full, Ordering::Relaxed);
        match (was, full) {
            (false, true) => tracing::warn!(
                free_bytes = free,
                reserve_bytes = self.reserve_bytes,
                data = %self.path.display(),
                "disk nearly full: this node takes no new mail (reads and deletes go on)"
            ),
            (true, false) => tracing::info!(
                free_bytes = free,
                reserve_bytes = self.reserve_bytes,
                "disk space back above the reserve: taking new mail again"
            ),
            _ => {}
        }
    }
}

/// Check `watch` every [`DISK_CHECK_INTERVAL_MS`] until shutdown.
pub async fn run(watch: Arc<DiskWatch>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(DISK_CHECK_INTERVAL_MS)) => {}
        }
        let w = watch.clone();
        // statvfs can block on a sick file system: keep it off the async workers.
        if tokio::task::spawn_blocking(move || w.check())
            .await
            .is_err()
        {
            tracing::warn!("disk space check panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_compared_with_the_reserve() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs of the temp dir");
        assert!(free > 0);
        assert!(!DiskWatch::new(&dir, 0).nearly_full());
        let w = DiskWatch::new(&dir, u64::MAX);
        assert!(w.nearly_full());
        assert!(w.free_bytes() <= free.saturating_mul(2));
        assert!(free_bytes(Path::new("/no/such/dir/here")).is_err());
    }
}
