//! [`MessageId`]: the cluster-unique, time-ordered id of a stored message, and its
//! 32-hex-digit text form (the POP3 UIDL).

use std::fmt;
use std::str::FromStr;

/// Stable, cluster-unique id of a stored message; sorts by creation time.
///
/// Layout: `time_micros` (u64 BE) | `node` (u32 BE) | `seq` (u32 BE), so the
/// derived byte-wise ordering is creation time first, then node, then sequence.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// Number of characters in the text form.
    pub const TEXT_LEN: usize = 32;

    /// Build an id from creation time (µs since the Unix epoch), the creating
    /// node and a per-node sequence number.
    pub fn new(time_micros: u64, node: u32, seq: u32) -> MessageId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&time_micros.to_be_bytes());
        bytes[8..12].copy_from_slice(&node.to_be_bytes());
        bytes[12..].copy_from_slice(&seq.to_be_bytes());
        MessageId(bytes)
    }

    /// Creation time in µs since the Unix epoch.
    pub fn time_micros(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    /// The node that created the id.
    pub fn node(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[8..12]);
        u32::from_be_bytes(b)
    }

    /// The creating node's sequence number.
    pub fn seq(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[12..]);
        u32::from_be_bytes(b)
    }
}

impl fmt::Display for MessageId {
    /// 32 lowercase hex characters (the POP3 UIDL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Why a string is not a [`MessageId`] text form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseMessageIdError {
    /// The string is not exactly 32 bytes long.
    #[error("message id must be 32 hex characters, got {len} bytes")]
    BadLength {
        /// Length of the rejected string in bytes.
        len: usize,
    },
    /// A character is not a hex digit.
    #[error("message id has a non-hex character at position {position}")]
    BadDigit {
        /// Byte position of the first bad character.
        position: usize,
    },
}

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    /// Parse the 32-hex-digit form written by `Display`; upper-case digits are
    /// accepted too, so a client that changed case still finds its message.
    fn from_str(s: &str) -> Result<MessageId, ParseMessageIdError> {
        let text = s.as_bytes();
        if text.len() != Self::TEXT_LEN {
            return Err(ParseMessageIdError::BadLength { len: text.len() });
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let hi =
                hex_value(text[2 * i]).ok_or(ParseMessageIdError::BadDigit { position: 2 * i })?;
            let lo = hex_value(text[2 * i + 1]).ok_or(ParseMessageIdError::BadDigit {
                position: 2 * i + 1,
            })?;
            *byte = (hi << 4) | lo;
        }
        Ok(MessageId(bytes))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip_and_text_is_lowercase_hex() {
        let id = MessageId::new(0x0123_4567_89ab_cdef, 0xdead_beef, 7);
        assert_eq!(id.time_micros(), 0x0123_4567_89ab_cdef);
        assert_eq!(id.node(), 0xdead_beef);
        assert_eq!(id.seq(), 7);
        assert_eq!(id.to_string(), "0123456789abcdefdeadbeef00000007");
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(
            "abc".parse::<MessageId>(),
            Err(ParseMessageIdError::BadLength { len: 3 })
        );
        let mut s = "0".repeat(32);
        s.replace_range(5..6, "g");
        assert_eq!(
            s.parse::<MessageId>(),
            Err(ParseMessageIdError::BadDigit { position: 5 })
        );
        // A multi-byte character makes the byte length wrong or hits a non-digit.
        let s = format!("{}é", "0".repeat(30));
        assert_eq!(
            s.parse::<MessageId>(),
            Err(ParseMessageIdError::BadDigit { position: 30 })
        );
    }

    #[test]
    fn parse_accepts_upper_case() {
        let id: MessageId = "0123456789ABCDEFDEADBEEF00000007".parse().unwrap();
        assert_eq!(id, MessageId::new(0x0123_4567_89ab_cdef, 0xdead_beef, 7));
    }

    proptest! {
        #[test]
        fn hex_round_trip(bytes in any::<[u8; 16]>()) {
            let id = MessageId(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 32);
            prop_assert!(text.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            prop_assert_eq!(text.parse::<MessageId>().unwrap(), id);
        }

        #[test]
        fn order_is_time_then_node_then_seq(
            a in (any::<u64>(), any::<u32>(), any::<u32>()),
            b in (any::<u64>(), any::<u32>(), any::<u32>()),
        ) {
            let ia = MessageId::new(a.0, a.1, a.2);
            let ib = MessageId::new(b.0, b.1, b.2);
            prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
            // The text form sorts the same way, so UIDL order is id order.
            prop_assert_eq!(ia.to_string().cmp(&ib.to_string()), a.cmp(&b));
        }
    }
}
