//! `fsck` for one store: read every segment record and every indexed message,
//! check checksums, and say which records are damaged (and, for a live message,
//! which key, so repair can fetch a good copy from a replica and
//! [`crate::Store::replace_damaged`] it).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;

use serde::Serialize;

use crate::index::Index;
use crate::keys::{self, Location};
use crate::record::{self, DecodeError};
use crate::segment::{SegmentReader, list_segments};
use crate::{MessageKey, StorageError};

/// One damaged record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedRecord {
    /// The live message stored there, when the index names this record (repair
    /// can replace it from a replica); `None` for a record nothing uses any more
    /// (compaction drops it) or whose header is unreadable.
    pub key: Option<MessageKey>,
    /// Segment file number.
    pub segment: u32,
    /// Byte offset of the record in it.
    pub offset: u64,
    /// What did not check out.
    pub reason: String,
}

/// What [`crate::Store::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Segment files read.
    pub segments: u64,
    /// Records whose checksum was checked.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Damaged records, by segment and offset.
    pub damaged: Vec<DamagedRecord>,
}

/// Read every segment front to back (a record with a bad checksum is reported and
/// skipped by the length in its header; one whose header is damaged ends the scan
/// of its segment: its length cannot be trusted), then every indexed message at its
/// location (so a damaged live message is found with its key even past such a
/// point). Blocking.
pub(crate) fn verify(
    segments_dir: &std::path::Path,
    index: &Index,
    reader: &SegmentReader,
) -> Result<VerifyReport, StorageError> {
    let mut report = VerifyReport::default();
    let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    for (id, path) in list_segments(segments_dir)? {
        report.segments += 1;
        let file = match File::open(&path) {
            Ok(f) => f,
            // Removed by compaction meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(&path, "open segment for verify")(e)),
        };
        let len_bytes = file
            .metadata()
            .map_err(StorageError::io(&path, "stat segment"))?
            .len();
        let mut input = BufReader::with_capacity(256 * 1024, file);
        let mut offset = 0u64;
        loop {
            match record::read_record_checked(&mut input, len_bytes - offset) {
                Ok(None) => break,
                Ok(Some((header, bytes, damage))) => {
                    let location = Location {
                        segment: id,
                        offset,
                        len: bytes.len() as u32,
                    };
                    report.records += 1;
                    report.bytes += bytes.len() as u64;
                    offset += bytes.len() as u64;
                    if let Some(reason) = damage {
                        let used = index.is_indexed_copy(header.kind, &header.key, location)?;
                        seen.insert((id, location.offset));
                        report.damaged.push(DamagedRecord {
                            key: (used && header.kind == crate::record::RecordKind::Message)
                                .then_some(header.key),
                            segment: id,
                            offset: location.offset,
                            reason,
                        });
                    }
                }
                Err(DecodeError::Io(source)) => {
                    return Err(StorageError::Io {
                        path: path.clone(),
                        action: "read segment for verify",
                        source,
                    });
                }
                Err(e) => {
                    let reason = match e {
                        DecodeError::Corrupt(r) => r,
                        _ => "segment ends inside a record".to_owned(),
                    };
                    seen.insert((id, offset));
                    report.damaged.push(DamagedRecord {
                        key: None,
                        segment: id,
                        offset,
                        reason: format!("{reason} (rest of the segment not scanned)"),
                    });
                    break;
                }
            }
        }
    }
    // Every live message at the place the index names.
    for (key, location) in index.all_locations()? {
        let found = reader
            .read(location)
            .map_err(|e| e.to_string())
            .and_then(|bytes| check(&bytes, &key, location));
        if let Err(reason) = found {
            match report
                .damaged
                .iter_mut()
                .find(|d| (d.segment, d.offset) == (location.segment, location.offset))
            {
                Some(d) => d.key = Some(key),
                None => {
                    seen.insert((location.segment, location.offset));
                    report.damaged.push(DamagedRecord {
                        key: Some(key),
                        segment: location.segment,
                        offset: location.offset,
                        reason,
                    });
                }
            }
        }
    }
    report.damaged.sort_by_key(|d| (d.segment, d.offset));
    Ok(report)
}

/// Whether `bytes` is the whole, intact record of message `key`.
fn check(bytes: &[u8], key: &MessageKey, location: Location) -> Result<(), String> {
    let header = record::decode(bytes).map_err(|e| match e {
        DecodeError::Corrupt(r) => r,
        DecodeError::Incomplete => "record longer than the index says".to_owned(),
        DecodeError::Io(e) => e.to_string(),
    })?;
    if header.key != *key || header.record_len() != u64::from(location.len) {
        return Err("the index points at a different record".to_owned());
    }
    Ok(())
}

impl Index {
    /// Every live message key with its location, in key order.
    pub(crate) fn all_locations(&self) -> Result<Vec<(MessageKey, Location)>, StorageError> {
        let mut out = Vec::new();
        for item in self.messages_tree().iter() {
            let (k, v) = item.map_err(StorageError::index("messages", "scan for verify"))?;
            let (bucket, user, id) =
                keys::decode_message_key(&k).map_err(|reason| StorageError::IndexCorrupt {
                    tree: "messages".to_owned(),
                    reason,
                })?;
            let location = Location::decode(&v).map_err(|reason| StorageError::IndexCorrupt {
                tree: "messages".to_owned(),
                reason,
            })?;
            out.push((MessageKey::new(bucket, user, id), location));
        }
        Ok(out)
    }
}
