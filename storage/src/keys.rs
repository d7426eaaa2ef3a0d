//! Byte encodings of the sled index: keys are big-endian so that byte order is sort
//! order and one bucket (or one user) is a prefix scan.
//!
//! - message / tombstone key: `bucket u16 BE | user bytes | 0x00 | id [16]`
//! - user key: `bucket u16 BE | user bytes`
//! - location value: `segment u32 BE | offset u64 BE | len u32 BE`
//! - position (checkpoint): `segment u32 BE | offset u64 BE`
//!
//! The 0x00 separator keeps user "bob" from matching the prefix of user "bob2";
//! it is why user names may not contain NUL.

use crate::{MessageId, StorageError};

/// Longest storable user name in bytes (the record header holds a u16 length).
pub(crate) const USER_LEN_MAX: usize = u16::MAX as usize;

/// Check that a user name can be stored and found again by prefix.
pub(crate) fn validate_user(user: &str) -> Result<(), StorageError> {
    if user.len() > USER_LEN_MAX {
        return Err(StorageError::InvalidUser {
            user: user.chars().take(64).collect(),
            reason: "longer than 65535 bytes",
        });
    }
    if user.as_bytes().contains(&0) {
        return Err(StorageError::InvalidUser {
            user: user.to_owned(),
            reason: "contains a NUL byte",
        });
    }
    Ok(())
}

/// Key of one message (or its tombstone).
pub(crate) fn message_key(bucket: u16, user: &str, id: &MessageId) -> Vec<u8> {
    let mut key = user_prefix(bucket, user);
    key.extend_from_slice(&id.0);
    key
}

/// Prefix of every message key of one user (ends with the 0x00 separator).
pub(crate) fn user_prefix(bucket: u16, user: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + user.len() + 1 + 16);
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key
}

/// Prefix of every key of one bucket.
pub(crate) fn bucket_prefix(bucket: u16) -> [u8; 2] {
    bucket.to_be_bytes()
}

/// Split a message key back into (bucket, user, id).
pub(crate) fn decode_message_key(key: &[u8]) -> Result<(u16, String, MessageId), String> {
    if key.len() < 2 + 1 + 16 {
        return Err(format!("message key of {} bytes is too short", key.len()));
    }
    let bucket = u16::from_be_bytes([key[0], key[1]]);
    let (rest, id) = key.split_at(key.len() - 16);
    let (user, sep) = rest[2..].split_at(rest.len() - 3);
    if sep != [0] {
        return Err("message key lacks the 0x00 separator".to_owned());
    }
    let user = std::str::from_utf8(user)
        .map_err(|_| "message key user is not UTF-8".to_owned())?
        .to_owned();
    let mut id_bytes = [0u8; 16];
    id_bytes.copy_from_slice(id);
    Ok((bucket, user, MessageId(id_bytes)))
}

/// Key of one user's live-message counter.
pub(crate) fn user_key(bucket: u16, user: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + user.len());
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key
}

/// Split a user key back into (bucket, user).
pub(crate) fn decode_user_key(key: &[u8]) -> Result<(u16, String), String> {
    if key.len() < 2 {
        return Err(format!("user key of {} bytes is too short", key.len()));
    }
    let bucket = u16::from_be_bytes([key[0], key[1]]);
    let user = std::str::from_utf8(&key[2..])
        .map_err(|_| "user key is not UTF-8".to_owned())?
        .to_owned();
    Ok((bucket, user))
}

/// Encode a u64 counter value.
pub(crate) fn encode_count(count: u64) -> [u8; 8] {
    count.to_be_bytes()
}

/// Decode a u64 counter value.
pub(crate) fn decode_count(value: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| format!("counter of {} bytes, expected 8", value.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A place in the segment log: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Position {
    /// Segment file number.
    pub(crate) segment: u32,
    /// Byte offset inside that segment.
    pub(crate) offset: u64,
}

impl Position {
    pub(crate) fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.segment.to_be_bytes());
        out[4..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    pub(crate) fn decode(value: &[u8]) -> Result<Position, String> {
        if value.len() != 12 {
            return Err(format!("position of {} bytes, expected 12", value.len()));
        }
        let mut segment = [0u8; 4];
        segment.copy_from_slice(&value[..4]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&value[4..]);
        Ok(Position {
            segment: u32::from_be_bytes(segment),
            offset: u64::from_be_bytes(offset),
        })
    }
}

/// Where one whole record (header + body) lies in the segment log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// Segment file number.
    pub(crate) segment: u32,
    /// Offset of the record's first byte.
    pub(crate) offset: u64,
    /// Length of the whole record in bytes.
    pub(crate) len: u32,
}

impl Location {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.segment.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub(crate) fn decode(value: &[u8]) -> Result<Location, String> {
        if value.len() != 16 {
            return Err(format!("location of {} bytes, expected 16", value.len()));
        }
        let position = Position::decode(&value[..12])?;
        let mut len = [0u8; 4];
        len.copy_from_slice(&value[12..]);
        Ok(Location {
            segment: position.segment,
            offset: position.offset,
            len: u32::from_be_bytes(len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user_strategy() -> impl Strategy<Value = String> {
        // Short names over a small alphabet (with 8-bit and control characters) so
        // that shared prefixes such as "a" / "a\u{1}" / "ab" are common.
        proptest::collection::vec(
            prop_oneof![Just('a'), Just('b'), Just('\u{1}'), Just('é'), Just('z')],
            0..5,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn key_strategy() -> impl Strategy<Value = (u16, String, [u8; 16])> {
        (
            prop_oneof![Just(0u16), Just(1), Just(256), Just(u16::MAX), any::<u16>()],
            user_strategy(),
            prop_oneof![Just([0u8; 16]), Just([0xffu8; 16]), any::<[u8; 16]>()],
        )
    }

    proptest! {
        #[test]
        fn key_byte_order_is_tuple_order(a in key_strategy(), b in key_strategy()) {
            let ka = message_key(a.0, &a.1, &MessageId(a.2));
            let kb = message_key(b.0, &b.1, &MessageId(b.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn user_key_order_is_tuple_order(a in key_strategy(), b in key_strategy()) {
            let ka = user_key(a.0, &a.1);
            let kb = user_key(b.0, &b.1);
            prop_assert_eq!(ka.cmp(&kb), (a.0, &a.1).cmp(&(b.0, &b.1)));
        }

        #[test]
        fn message_key_round_trips(a in key_strategy()) {
            let key = message_key(a.0, &a.1, &MessageId(a.2));
            prop_assert_eq!(decode_message_key(&key).unwrap(), (a.0, a.1.clone(), MessageId(a.2)));
            prop_assert!(key.starts_with(&user_prefix(a.0, &a.1)));
            prop_assert!(key.starts_with(&bucket_prefix(a.0)));
            let ukey = user_key(a.0, &a.1);
            prop_assert_eq!(decode_user_key(&ukey).unwrap(), (a.0, a.1));
        }

        #[test]
        fn user_prefix_selects_only_that_user(a in key_strategy(), b in key_strategy()) {
            let kb = message_key(b.0, &b.1, &MessageId(b.2));
            let same_owner = (a.0, &a.1) == (b.0, &b.1);
            prop_assert_eq!(kb.starts_with(&user_prefix(a.0, &a.1)), same_owner);
        }

        #[test]
        fn location_and_position_round_trip(segment in any::<u32>(), offset in any::<u64>(), len in any::<u32>()) {
            let loc = Location { segment, offset, len };
            prop_assert_eq!(Location::decode(&loc.encode()).unwrap(), loc);
            let pos = Position { segment, offset };
            prop_assert_eq!(Position::decode(&pos.encode()).unwrap(), pos);
        }
    }

    #[test]
    fn position_order_is_segment_then_offset() {
        let a = Position {
            segment: 1,
            offset: 900,
        };
        let b = Position {
            segment: 2,
            offset: 0,
        };
        assert!(a < b);
        assert!(a.encode() < b.encode());
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Location::decode(&[0; 15]).is_err());
        assert!(Position::decode(&[0; 13]).is_err());
        assert!(decode_count(&[0; 7]).is_err());
        assert_eq!(decode_count(&encode_count(42)).unwrap(), 42);
        assert!(decode_message_key(&[0; 18]).is_err());
        let mut key = message_key(3, "bob", &MessageId([1; 16]));
        key[5] = 1; // the separator
        assert!(decode_message_key(&key).is_err());
    }

    #[test]
    fn user_validation() {
        assert!(validate_user("alice@example.org").is_ok());
        assert!(validate_user("").is_ok());
        assert!(matches!(
            validate_user("a\0b"),
            Err(StorageError::InvalidUser { .. })
        ));
        assert!(validate_user(&"x".repeat(USER_LEN_MAX)).is_ok());
        assert!(validate_user(&"x".repeat(USER_LEN_MAX + 1)).is_err());
    }
}
