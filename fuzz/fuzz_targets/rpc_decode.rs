//! Inter-node RPC decoding: arbitrary bytes as a postcard `Request` and `Reply`
//! (what `node::rpc` does with every body it receives). Checks: no panic, no
//! runaway allocation, and whatever decodes re-encodes and decodes to the same
//! bytes again (the wire format is canonical for what we accept).
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::rpc::proto::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = postcard::from_bytes::<Request>(data) {
        let bytes = postcard::to_allocvec(&req).expect("a decoded request encodes");
        let again: Request = postcard::from_bytes(&bytes).expect("its encoding decodes");
        assert_eq!(
            postcard::to_allocvec(&again).ok(),
            Some(bytes),
            "stable encoding"
        );
    }
    if let Ok(reply) = postcard::from_bytes::<Reply>(data) {
        let bytes = postcard::to_allocvec(&reply).expect("a decoded reply encodes");
        let again: Reply = postcard::from_bytes(&bytes).expect("its encoding decodes");
        assert_eq!(
            postcard::to_allocvec(&again).ok(),
            Some(bytes),
            "stable encoding"
        );
    }
});
