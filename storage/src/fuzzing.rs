//! Entry points for the `cargo fuzz` targets in `fuzz/` (not a stable API): the
//! record decoder fed arbitrary bytes, with the properties a fuzzer checks.

use crate::record;

/// Decode `bytes` as one record, as from a buffer (`decode`) and as from a stream
/// (`read_record`), and check what must hold for any input: both agree, nothing
/// panics or allocates beyond the input, and a record that decodes re-encodes to
/// exactly its own bytes. Returns whether a record decoded.
pub fn decode_record(bytes: &[u8]) -> bool {
    let from_buffer = record::decode(bytes).ok();
    let mut input = bytes;
    let from_stream = record::read_record(&mut input, bytes.len() as u64);
    let streamed = match &from_stream {
        Ok(Some((header, raw))) => {
            assert_eq!(raw.len() as u64, header.record_len(), "whole record read");
            assert_eq!(&bytes[..raw.len()], &raw[..], "read what was there");
            Some(header.clone())
        }
        _ => None,
    };
    assert_eq!(from_buffer, streamed, "buffer and stream decoders agree");
    let Some(header) = from_buffer else {
        return false;
    };
    let end = header.record_len() as usize;
    let data = &bytes[header.len()..end];
    let again = record::encode_header(header.kind, &header.key, data);
    assert_eq!(&again[..], &bytes[..header.len()], "re-encodes to itself");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use crate::{MessageId, MessageKey};

    #[test]
    fn a_real_record_decodes_and_its_damage_does_not() {
        let key = MessageKey {
            bucket: 7,
            user: "alice".into(),
            id: MessageId([3; 16]),
        };
        let data = b"Subject: x\r\n\r\nbody\r\n";
        let mut bytes = record::encode_header(RecordKind::Message, &key, data);
        bytes.extend_from_slice(data);
        assert!(decode_record(&bytes));
        for cut in 0..bytes.len() {
            assert!(!decode_record(&bytes[..cut]), "torn at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(!decode_record(&flipped), "checksum");
    }
}
