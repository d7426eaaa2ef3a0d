//! The segment record format: one message body or one tombstone, self-describing
//! and checksummed, so the segment log alone can rebuild every index.
//!
//! ```text
//! magic u32 BE | kind u8 | bucket u16 BE | user_len u16 BE | user | id [16]
//!   | data_len u32 BE | crc32 u32 BE | data
//! ```
//! The CRC-32 (IEEE) covers every header byte before it and then the data. A
//! tombstone has no data.

use std::io::{self, Read};

use crate::{MessageId, MessageKey};

/// First four bytes of every record ("PCMR": Porcupine mail record).
pub(crate) const MAGIC: u32 = 0x5043_4d52;
/// magic + kind + bucket + user_len.
const PREFIX_LEN: usize = 4 + 1 + 2 + 2;
/// id + data_len + crc.
const SUFFIX_LEN: usize = 16 + 4 + 4;
/// Largest whole record (its length must fit the u32 of an index location).
pub(crate) const RECORD_LEN_MAX: u64 = u32::MAX as u64;

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// A message body.
    Message = 1,
    /// A delete marker that wins over any copy of the message.
    Tombstone = 2,
}

/// Length of the header of a record whose user name has `user_len` bytes.
pub(crate) fn header_len(user_len: usize) -> usize {
    PREFIX_LEN + user_len + SUFFIX_LEN
}

/// Length of a whole record.
pub(crate) fn record_len(user_len: usize, data_len: usize) -> u64 {
    (header_len(user_len) + data_len) as u64
}

/// Build the header (with its CRC) of a record; the caller writes `data` right
/// after it. The caller has checked that the user name is valid and that the
/// record fits [`RECORD_LEN_MAX`].
pub(crate) fn encode_header(kind: RecordKind, key: &MessageKey, data: &[u8]) -> Vec<u8> {
    let user = key.user.as_bytes();
    let mut header = Vec::with_capacity(header_len(user.len()));
    header.extend_from_slice(&MAGIC.to_be_bytes());
    header.push(kind as u8);
    header.extend_from_slice(&key.bucket.to_be_bytes());
    header.extend_from_slice(&(user.len() as u16).to_be_bytes());
    header.extend_from_slice(user);
    header.extend_from_slice(&key.id.0);
    header.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    hasher.update(data);
    header.extend_from_slice(&hasher.finalize().to_be_bytes());
    header
}

/// A decoded record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: RecordKind,
    pub(crate) key: MessageKey,
    pub(crate) data_len: u32,
    crc: u32,
}

impl Header {
    /// Bytes this header takes on disk.
    pub(crate) fn len(&self) -> usize {
        header_len(self.key.user.len())
    }

    /// Bytes the whole record takes on disk.
    pub(crate) fn record_len(&self) -> u64 {
        self.len() as u64 + u64::from(self.data_len)
    }
}

/// Why bytes are not a record.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The bytes end before the record does (a torn write, at a log's tail).
    Incomplete,
    /// The bytes are there but wrong.
    Corrupt(String),
    /// Reading the bytes failed.
    Io(io::Error),
}

/// Decode the fixed prefix: returns (kind, bucket, user_len).
fn parse_prefix(prefix: &[u8]) -> Result<(RecordKind, u16, usize), DecodeError> {
    let magic = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if magic != MAGIC {
        return Err(DecodeError::Corrupt(format!("bad magic {magic:#010x}")));
    }
    let kind = match prefix[4] {
        1 => RecordKind::Message,
        2 => RecordKind::Tombstone,
        other => return Err(DecodeError::Corrupt(format!("unknown record kind {other}"))),
    };
    let bucket = u16::from_be_bytes([prefix[5], prefix[6]]);
    let user_len = usize::from(u16::from_be_bytes([prefix[7], prefix[8]]));
    Ok((kind, bucket, user_len))
}

/// Decode a header from the start of `buf` (which may hold more). The CRC is not
/// checked here: it also covers the data.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Header, DecodeError> {
    if buf.len() < PREFIX_LEN {
        return Err(DecodeError::Incomplete);
    }
    let (kind, bucket, user_len) = parse_prefix(&buf[..PREFIX_LEN])?;
    if buf.len() < header_len(user_len) {
        return Err(DecodeError::Incomplete);
    }
    let user = &buf[PREFIX_LEN..PREFIX_LEN + user_len];
    let user = std::str::from_utf8(user)
        .map_err(|_| DecodeError::Corrupt("user name is not UTF-8".to_owned()))?;
    if user.as_bytes().contains(&0) {
        return Err(DecodeError::Corrupt("user name contains NUL".to_owned()));
    }
    let rest = &buf[PREFIX_LEN + user_len..header_len(user_len)];
    let mut id = [0u8; 16];
    id.copy_from_slice(&rest[..16]);
    let data_len = u32::from_be_bytes([rest[16], rest[17], rest[18], rest[19]]);
    let crc = u32::from_be_bytes([rest[20], rest[21], rest[22], rest[23]]);
    if kind == RecordKind::Tombstone && data_len != 0 {
        return Err(DecodeError::Corrupt(format!(
            "tombstone carries {data_len} data bytes"
        )));
    }
    let header = Header {
        kind,
        key: MessageKey {
            bucket,
            user: user.to_owned(),
            id: MessageId(id),
        },
        data_len,
        crc,
    };
    if header.record_len() > RECORD_LEN_MAX {
        return Err(DecodeError::Corrupt("record longer than 4 GiB".to_owned()));
    }
    Ok(header)
}

/// Decode and verify the record at the start of `buf`; its data is
/// `buf[header.len()..header.record_len()]`.
pub(crate) fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
    let header = parse_header(buf)?;
    let end = usize::try_from(header.record_len())
        .map_err(|_| DecodeError::Corrupt("record does not fit in memory".to_owned()))?;
    if buf.len() < end {
        return Err(DecodeError::Incomplete);
    }
    let crc_at = header.len() - 4;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[..crc_at]);
    hasher.update(&buf[header.len()..end]);
    let actual = hasher.finalize();
    if actual != header.crc {
        return Err(DecodeError::Corrupt(format!(
            "checksum mismatch: stored {:#010x}, computed {actual:#010x}",
            header.crc
        )));
    }
    Ok(header)
}

/// Read bytes until `buf` is full or the input ends; returns how many were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Read the next whole record from a stream. `remaining_bytes` is how much the
/// stream still holds, so a damaged length never makes us allocate gigabytes.
/// `Ok(None)` means the stream ended cleanly between records. Returns the header
/// and the record's bytes.
pub(crate) fn read_record(
    input: &mut impl Read,
    remaining_bytes: u64,
) -> Result<Option<(Header, Vec<u8>)>, DecodeError> {
    let mut buf = vec![0u8; PREFIX_LEN];
    let got = read_full(input, &mut buf).map_err(DecodeError::Io)?;
    if got == 0 {
        return Ok(None);
    }
    if got < PREFIX_LEN {
        return Err(DecodeError::Incomplete);
    }
    let (_, _, user_len) = parse_prefix(&buf)?;
    read_more(input, &mut buf, header_len(user_len))?;
    let header = parse_header(&buf)?;
    let total = header.record_len();
    if total > remaining_bytes {
        return Err(DecodeError::Incomplete);
    }
    let total = usize::try_from(total)
        .map_err(|_| DecodeError::Corrupt("record does not fit in memory".to_owned()))?;
    read_more(input, &mut buf, total)?;
    decode(&buf)?;
    Ok(Some((header, buf)))
}

/// A record read by [`read_record_checked`]: header, bytes, and the checksum
/// mismatch if it is damaged.
pub(crate) type CheckedRecord = (Header, Vec<u8>, Option<String>);

/// Like [`read_record`], but a record whose header decodes and whose checksum
/// does not match is returned too (with the mismatch), so a scan can go past it:
/// its length comes from the header. Returns header, bytes and `Some(reason)`
/// for a damaged record.
pub(crate) fn read_record_checked(
    input: &mut impl Read,
    remaining_bytes: u64,
) -> Result<Option<CheckedRecord>, DecodeError> {
    let mut buf = vec![0u8; PREFIX_LEN];
    let got = read_full(input, &mut buf).map_err(DecodeError::Io)?;
    if got == 0 {
        return Ok(None);
    }
    if got < PREFIX_LEN {
        return Err(DecodeError::Incomplete);
    }
    let (_, _, user_len) = parse_prefix(&buf)?;
    read_more(input, &mut buf, header_len(user_len))?;
    let header = parse_header(&buf)?;
    let total = header.record_len();
    if total > remaining_bytes {
        return Err(DecodeError::Incomplete);
    }
    let total = usize::try_from(total)
        .map_err(|_| DecodeError::Corrupt("record does not fit in memory".to_owned()))?;
    read_more(input, &mut buf, total)?;
    let damage = match decode(&buf) {
        Ok(_) => None,
        Err(DecodeError::Corrupt(reason)) => Some(reason),
        Err(e) => return Err(e),
    };
    Ok(Some((header, buf, damage)))
}

/// Grow `buf` to `len` bytes read from `input`; a short read is `Incomplete`.
fn read_more(input: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> Result<(), DecodeError> {
    let start = buf.len();
    buf.resize(len, 0);
    let got = read_full(input, &mut buf[start..]).map_err(DecodeError::Io)?;
    if got < len - start {
        return Err(DecodeError::Incomplete);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(kind: RecordKind, key: &MessageKey, data: &[u8]) -> Vec<u8> {
        let mut out = encode_header(kind, key, data);
        out.extend_from_slice(data);
        out
    }

    fn key(user: &str) -> MessageKey {
        MessageKey::new(513, user, MessageId::new(1_700_000_000_000_000, 3, 9))
    }

    #[test]
    fn message_round_trip() {
        let data = b"Subject: hi\r\n\r\n\x00\xff8-bit body\r\n";
        let rec = encode(RecordKind::Message, &key("alice"), data);
        assert_eq!(rec.len() as u64, record_len(5, data.len()));
        let header = decode(&rec).unwrap();
        assert_eq!(header.kind, RecordKind::Message);
        assert_eq!(header.key, key("alice"));
        assert_eq!(&rec[header.len()..], data);
        // The stream reader agrees and then sees a clean end.
        let mut two = rec.clone();
        two.extend_from_slice(&rec);
        let mut input = &two[..];
        let (h1, bytes1) = read_record(&mut input, two.len() as u64).unwrap().unwrap();
        assert_eq!(h1, header);
        assert_eq!(bytes1, rec);
        let (h2, _) = read_record(&mut input, rec.len() as u64).unwrap().unwrap();
        assert_eq!(h2, header);
        assert!(read_record(&mut input, 0).unwrap().is_none());
    }

    #[test]
    fn tombstone_round_trip_and_tombstone_with_data_is_corrupt() {
        let rec = encode(RecordKind::Tombstone, &key("bob"), b"");
        let header = decode(&rec).unwrap();
        assert_eq!(header.kind, RecordKind::Tombstone);
        assert_eq!(header.data_len, 0);
        let bad = encode(RecordKind::Tombstone, &key("bob"), b"x");
        assert!(matches!(decode(&bad), Err(DecodeError::Corrupt(_))));
    }

    #[test]
    fn garbage_is_corrupt_and_short_is_incomplete() {
        assert!(matches!(
            decode(b"hello world, this is not a record at all"),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            decode(&MAGIC.to_be_bytes()),
            Err(DecodeError::Incomplete)
        ));
        let mut input: &[u8] = &[0x50, 0x43];
        assert!(matches!(
            read_record(&mut input, 2),
            Err(DecodeError::Incomplete)
        ));
    }

    #[test]
    fn huge_claimed_length_is_incomplete_without_allocating() {
        let mut rec = encode(RecordKind::Message, &key("a"), b"abc");
        let len_at = header_len(1) - 8;
        rec[len_at..len_at + 4].copy_from_slice(&0xffff_0000u32.to_be_bytes());
        let mut input = &rec[..];
        assert!(matches!(
            read_record(&mut input, rec.len() as u64),
            Err(DecodeError::Incomplete)
        ));
    }

    proptest! {
        #[test]
        fn every_truncation_is_incomplete(
            user in "[a-z\u{e9}]{0,8}",
            data in proptest::collection::vec(any::<u8>(), 0..200),
            cut in any::<proptest::sample::Index>(),
        ) {
            let rec = encode(RecordKind::Message, &key(&user), &data);
            let cut = cut.index(rec.len()); // 0..len: always drops at least one byte
            prop_assert!(matches!(decode(&rec[..cut]), Err(DecodeError::Incomplete)));
            let mut input = &rec[..cut];
            let outcome = read_record(&mut input, cut as u64);
            if cut == 0 {
                prop_assert!(matches!(outcome, Ok(None)));
            } else {
                prop_assert!(matches!(outcome, Err(DecodeError::Incomplete)));
            }
        }

        #[test]
        fn every_byte_flip_is_detected(
            user in "[a-z]{0,8}",
            data in proptest::collection::vec(any::<u8>(), 0..200),
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let rec = encode(RecordKind::Message, &key(&user), &data);
            let mut bad = rec.clone();
            let at = at.index(bad.len());
            bad[at] ^= flip;
            prop_assert!(decode(&bad).is_err());
            let mut input = &bad[..];
            prop_assert!(read_record(&mut input, bad.len() as u64).is_err());
        }
    }
}
