//! Segment files: the append-only log of records under `<dir>/segments/`.
//!
//! [`SegmentWriter`] appends records to the newest segment, rolls to a new file at
//! the size limit and makes writes durable with `fdatasync`; [`SegmentReader`] does
//! positional reads through a cache of open files. Space is reclaimed by
//! `compact`, which copies a sealed segment's live records to the log head and
//! removes the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::StorageError;
use crate::keys::{Location, Position};
use crate::stats::Counters;

/// Records smaller than this are copied into the write buffer; larger bodies are
/// written straight from their `Bytes` to avoid a copy.
const COPY_LEN_MAX: usize = 64 * 1024;
/// Write the buffer out once it holds this much.
const BUFFER_LEN_MAX: usize = 1024 * 1024;

/// Path of segment number `id`.
pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.seg"))
}

/// Every segment file in `dir` as (number, path), in log order. Other files are
/// ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, StorageError> {
    let mut segments = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(StorageError::io(dir, "list segment directory"))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io(dir, "list segment directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.is_empty() || !stem.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(id) = stem.parse::<u32>() else {
            continue;
        };
        segments.push((id, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Name of the file (in the segment directory) listing the segments compaction
/// removed, one number per line: replay from scratch tells such a gap from a lost
/// segment by it.
pub(crate) const REMOVED_FILE: &str = "REMOVED";

/// Segment numbers listed in the `REMOVED` file (empty if there is none). A torn
/// last line (a crash while appending) is ignored: its segment was not removed yet.
pub(crate) fn removed_segments(
    dir: &Path,
) -> Result<std::collections::BTreeSet<u32>, StorageError> {
    let path = dir.join(REMOVED_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(StorageError::io(&path, "read removed-segment list")(e)),
    };
    Ok(text
        .split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok()?.trim().parse().ok())
        .collect())
}

/// Durably add segment `id` to the `REMOVED` file (before the file goes).
pub(crate) fn note_removed(dir: &Path, id: u32) -> Result<(), StorageError> {
    let path = dir.join(REMOVED_FILE);
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(StorageError::io(&path, "open removed-segment list"))?;
    file.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(StorageError::io(&path, "append to removed-segment list"))?;
    if !existed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsync a directory so that a file created (or removed) in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(dir, "fsync directory"))
}

/// Appends records to the newest segment. Owned by the writer thread alone. The
/// file is opened in append mode, so every write lands at the end of the file.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    id: u32,
    path: PathBuf,
    file: File,
    /// Logical length: bytes on disk plus bytes still in `buffer`.
    len_bytes: u64,
    /// Records not yet handed to the kernel.
    buffer: Vec<u8>,
    size_bytes_max: u64,
    counters: Arc<Counters>,
}

/// Where the log stood before a batch, so a batch the disk had no room for can be
/// taken back ([`SegmentWriter::rewind`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    position: Position,
}

impl SegmentWriter {
    /// Continue segment `at.segment` from byte `at.offset` (creating the file, and
    /// making its directory entry durable, if it does not exist).
    pub(crate) fn open(
        dir: &Path,
        at: Position,
        size_bytes_max: u64,
        counters: Arc<Counters>,
    ) -> Result<SegmentWriter, StorageError> {
        let path = segment_path(dir, at.segment);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(StorageError::io(&path, "open segment for writing"))?;
        if !existed {
            sync_dir(dir)?;
        }
        let on_disk = file
            .metadata()
            .map_err(StorageError::io(&path, "stat segment"))?
            .len();
        if on_disk != at.offset {
            // Anything past the replayed end was torn or never acknowledged.
            file.set_len(at.offset)
                .and_then(|()| file.sync_all())
                .map_err(StorageError::io(
                    &path,
                    "truncate segment to its last whole record",
                ))?;
        }
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            id: at.segment,
            path,
            file,
            len_bytes: at.offset,
            buffer: Vec::with_capacity(BUFFER_LEN_MAX),
            size_bytes_max: size_bytes_max.max(1),
            counters,
        })
    }

    /// A mark at the end of the log, for [`SegmentWriter::rewind`].
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            position: self.position(),
        }
    }

    /// Take back everything appended since `mark` (a batch that failed for want of
    /// space, never acknowledged): segments started since are removed and the
    /// marked one is truncated to its old length, so the log ends where it did.
    pub(crate) fn rewind(&mut self, mark: Mark) -> Result<(), StorageError> {
        self.buffer.clear();
        let to = mark.position;
        let mut dropped_bytes = 0;
        if self.id != to.segment {
            dropped_bytes += self.len_bytes;
            for id in (to.segment + 1..=self.id).rev() {
                let path = segment_path(&self.dir, id);
                if id != self.id {
                    dropped_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StorageError::io(&path, "remove segment of a failed batch")(
                            e,
                        ));
                    }
                }
            }
            sync_dir(&self.dir)?;
            let path = segment_path(&self.dir, to.segment);
            self.file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(StorageError::io(&path, "reopen segment for writing"))?;
            self.path = path;
            self.id = to.segment;
            let on_disk = self
                .file
                .metadata()
                .map_err(StorageError::io(&self.path, "stat segment"))?
                .len();
            dropped_bytes += on_disk.saturating_sub(to.offset);
        } else {
            dropped_bytes += self.len_bytes.saturating_sub(to.offset);
        }
        self.file
            .set_len(to.offset)
            .and_then(|()| self.file.sync_all())
            .map_err(StorageError::io(&self.path, "truncate a failed batch"))?;
        self.len_bytes = to.offset;
        self.counters.remove_segment_bytes(dropped_bytes);
        Ok(())
    }

    /// The end of the log (where the next record goes).
    pub(crate) fn position(&self) -> Position {
        Position {
            segment: self.id,
            offset: self.len_bytes,
        }
    }

    /// Append one record (`header` then `data`); rolls to a new segment first if
    /// this one is not empty and the record would pass the size limit. The bytes
    /// are durable only after [`SegmentWriter::sync`].
    pub(crate) fn append(&mut self, header: &[u8], data: &[u8]) -> Result<Location, StorageError> {
        let len = (header.len() + data.len()) as u64;
        if self.len_bytes > 0 && self.len_bytes + len > self.size_bytes_max {
            self.roll()?;
        }
        let location = Location {
            segment: self.id,
            offset: self.len_bytes,
            len: u32::try_from(len).map_err(|_| StorageError::TooLarge {
                size_bytes: data.len() as u64,
                size_bytes_max: crate::record::RECORD_LEN_MAX - header.len() as u64,
            })?,
        };
        self.buffer.extend_from_slice(header);
        if data.len() <= COPY_LEN_MAX {
            self.buffer.extend_from_slice(data);
        } else {
            self.write_buffer()?;
            self.file
                .write_all(data)
                .map_err(StorageError::io(&self.path, "write segment"))?;
        }
        if self.buffer.len() >= BUFFER_LEN_MAX {
            self.write_buffer()?;
        }
        self.len_bytes += len;
        self.counters.add_segment_bytes(len);
        Ok(location)
    }

    /// Make everything appended so far durable: one `fdatasync`.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        self.write_buffer()?;
        self.file
            .sync_data()
            .map_err(StorageError::io(&self.path, "fdatasync segment"))?;
        self.counters.add_sync();
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), StorageError> {
        if !self.buffer.is_empty() {
            self.file
                .write_all(&self.buffer)
                .map_err(StorageError::io(&self.path, "write segment"))?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Close the full segment (durably: the log must never have a gap) and start
    /// the next one, whose directory entry is made durable before any record in it
    /// is acknowledged.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.sync()?;
        let next = self
            .id
            .checked_add(1)
            .ok_or_else(|| StorageError::Corrupt {
                path: self.path.clone(),
                offset: self.len_bytes,
                reason: "segment numbers exhausted".to_owned(),
            })?;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(StorageError::io(&path, "create segment"))?;
        sync_dir(&self.dir)?;
        self.id = next;
        self.path = path;
        self.file = file;
        self.len_bytes = 0;
        Ok(())
    }
}

/// Positional reads of records, through a cache of open segment files.
pub(crate) struct SegmentReader {
    dir: PathBuf,
    files: Mutex<HashMap<u32, Arc<File>>>,
}

impl SegmentReader {
    pub(crate) fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            dir: dir.to_owned(),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Path of segment `id` (for error messages).
    pub(crate) fn path(&self, id: u32) -> PathBuf {
        segment_path(&self.dir, id)
    }

    fn file(&self, id: u32) -> Result<Arc<File>, StorageError> {
        // A poisoned lock only means another reader panicked; the map is still valid.
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = files.get(&id) {
            return Ok(file.clone());
        }
        let path = self.path(id);
        let file = Arc::new(
            File::open(&path).map_err(StorageError::io(&path, "open segment for reading"))?,
        );
        files.insert(id, file.clone());
        Ok(file)
    }

    /// Forget the open file of segment `id` (it was removed), so its space is freed.
    pub(crate) fn evict(&self, id: u32) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.remove(&id);
    }

    /// Forget every open file whose segment is not in `present` (a reader that
    /// raced a removal may have cached one).
    pub(crate) fn retain(&self, present: &std::collections::BTreeSet<u32>) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|id, _| present.contains(id));
    }

    /// The bytes of the whole record at `location`.
    pub(crate) fn read(&self, location: Location) -> Result<Vec<u8>, StorageError> {
        let file = self.file(location.segment)?;
        let mut buf = vec![0u8; location.len as usize];
        file.read_exact_at(&mut buf, location.offset)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    StorageError::Corrupt {
                        path: self.path(location.segment),
                        offset: location.offset,
                        reason: format!(
                            "segment ends inside a {}-byte record the index points at",
                            location.len
                        ),
                    }
                } else {
                    StorageError::Io {
                        path: self.path(location.segment),
                        action: "read segment",
                        source,
                    }
                }
            })?;
        Ok(buf)
    }
}
