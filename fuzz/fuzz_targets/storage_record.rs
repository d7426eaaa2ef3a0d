//! Segment record decoding (`storage`'s record format): arbitrary bytes as one
//! record, through the buffer and the stream decoder. See
//! `storage::fuzzing::decode_record` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage::fuzzing::decode_record(data);
});
