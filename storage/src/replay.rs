//! Recovery at open: re-index every segment record after the checkpoint, so the
//! index again covers the whole log even if sled lost its latest changes.
//!
//! Rules: a torn or corrupt record in the LAST segment, after the checkpoint, is
//! the end of the log (a write that was never acknowledged): the file is truncated
//! there. Damage anywhere else (an earlier segment, a missing segment, a file
//! shorter than the checkpoint) is an error naming the file and offset: those
//! bytes were acknowledged, so the node must not silently carry on without them.
//! A segment listed in `segments/REMOVED` was removed by compaction (its live
//! records live on later in the log): its gap is no error.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use crate::StorageError;
use crate::index::{Index, IndexOp};
use crate::keys::{Location, Position};
use crate::record::{self, DecodeError};
use crate::segment::{list_segments, removed_segments, segment_path};

/// Records indexed per sled transaction during replay.
const OPS_PER_APPLY: usize = 4096;
/// Read-ahead buffer for scanning segments.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;

/// Index every record after `checkpoint` (everything if `None`) and return the end
/// of the log: where the next record goes.
pub(crate) fn replay(
    dir: &Path,
    checkpoint: Option<Position>,
    index: &Index,
) -> Result<Position, StorageError> {
    let segments = list_segments(dir)?;
    let Some(&(last_id, _)) = segments.last() else {
        if let Some(position) = checkpoint {
            return Err(StorageError::Corrupt {
                path: segment_path(dir, position.segment),
                offset: position.offset,
                reason: "the index checkpoint names this segment but no segment files exist"
                    .to_owned(),
            });
        }
        return Ok(Position::default());
    };
    let start = checkpoint.unwrap_or(Position {
        segment: segments[0].0,
        offset: 0,
    });
    if !segments.iter().any(|(id, _)| *id == start.segment) {
        return Err(StorageError::Corrupt {
            path: segment_path(dir, start.segment),
            offset: start.offset,
            reason: "the index checkpoint names this segment but it does not exist".to_owned(),
        });
    }
    let removed = removed_segments(dir)?;
    let mut ops = Vec::new();
    let mut end = start;
    let mut expected_id = start.segment;
    for (id, path) in segments.iter().filter(|(id, _)| *id >= start.segment) {
        // Segments compaction removed are gaps, not losses.
        while expected_id < *id && removed.contains(&expected_id) {
            expected_id += 1;
        }
        if *id != expected_id {
            return Err(StorageError::Corrupt {
                path: segment_path(dir, expected_id),
                offset: 0,
                reason: "segment missing from the middle of the log".to_owned(),
            });
        }
        let from = if *id == start.segment {
            start.offset
        } else {
            0
        };
        let end_offset = scan_segment(path, *id, from, *id == last_id, index, &mut ops)?;
        end = Position {
            segment: *id,
            offset: end_offset,
        };
        expected_id = id.wrapping_add(1);
    }
    if !ops.is_empty() {
        index.apply(&ops)?;
    }
    Ok(end)
}

/// Index the records of one segment from byte `from`; returns the offset just past
/// the last whole record.
fn scan_segment(
    path: &Path,
    id: u32,
    from: u64,
    is_last: bool,
    index: &Index,
    ops: &mut Vec<IndexOp>,
) -> Result<u64, StorageError> {
    let file = File::open(path).map_err(StorageError::io(path, "open segment for replay"))?;
    let len_bytes = file
        .metadata()
        .map_err(StorageError::io(path, "stat segment"))?
        .len();
    if len_bytes < from {
        return Err(StorageError::Corrupt {
            path: path.to_owned(),
            offset: len_bytes,
            reason: format!("segment is shorter than the index checkpoint at offset {from}"),
        });
    }
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    reader
        .seek(SeekFrom::Start(from))
        .map_err(StorageError::io(path, "seek segment"))?;
    let mut offset = from;
    let mut records = 0u64;
    loop {
        match record::read_record(&mut reader, len_bytes - offset) {
            Ok(None) => break,
            Ok(Some((header, _))) => {
                let record_len = header.record_len();
                let location = Location {
                    segment: id,
                    offset,
                    // parse_header rejects records longer than u32::MAX.
                    len: record_len as u32,
                };
                ops.push(IndexOp::new(header.kind, &header.key, location));
                offset += record_len;
                records += 1;
                if ops.len() >= OPS_PER_APPLY {
                    index.apply(ops)?;
                    ops.clear();
                }
            }
            Err(DecodeError::Io(source)) => {
                return Err(StorageError::Io {
                    path: path.to_owned(),
                    action: "read segment for replay",
                    source,
                });
            }
            Err(e) => {
                let reason = match e {
                    DecodeError::Corrupt(reason) => reason,
                    _ => "log ends inside a record".to_owned(),
                };
                if !is_last {
                    return Err(StorageError::Corrupt {
                        path: path.to_owned(),
                        offset,
                        reason,
                    });
                }
                tracing::warn!(path = %path.display(), offset, discarded_bytes = len_bytes - offset, %reason,
                    "torn tail at the end of the segment log: truncating (these writes were never acknowledged)");
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| {
                        f.set_len(offset)?;
                        f.sync_all()
                    })
                    .map_err(StorageError::io(path, "truncate torn segment tail"))?;
                break;
            }
        }
    }
    if records > 0 {
        tracing::info!(path = %path.display(), records, from, "replayed segment records into the index");
    }
    Ok(offset)
}
