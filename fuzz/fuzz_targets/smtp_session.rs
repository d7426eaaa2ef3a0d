//! The real SMTP session (`smtp::serve`) fed arbitrary client bytes over a duplex
//! pipe, with an in-memory store. 0xFF bytes split the input into separate writes.
//! Checks: no panic, the session ends, every reply line is `NNN[ -]text` CRLF, and
//! nothing is stored that exceeds the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let rt = porcupine_fuzz::runtime();
    let config = porcupine_fuzz::smtp_config();
    let deliver = Arc::new(porcupine_fuzz::FakeDeliver::default());
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let out = rt.block_on(async {
        let peer = "192.0.2.1:4000".parse().ok();
        let session = smtp::serve(server, peer, config.clone(), deliver.clone(), shutdown);
        let (_, out) = tokio::join!(
            session,
            porcupine_fuzz::exchange(client, porcupine_fuzz::chunks(data))
        );
        out
    });
    assert!(
        out.starts_with(b"220 "),
        "greeting first: {:?}",
        String::from_utf8_lossy(&out)
    );
    for line in out.split_inclusive(|b| *b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "CRLF: {line:?}");
        assert!(
            line.len() >= 5
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-'),
            "reply line: {:?}",
            String::from_utf8_lossy(line)
        );
    }
    if let Ok(stored) = deliver.stored.lock() {
        for (envelope, message) in stored.iter() {
            assert!(!envelope.rcpt_to.is_empty(), "a message without recipients");
            assert!(
                message.len() <= config.message_size_max + 1024,
                "{} bytes stored",
                message.len()
            );
        }
    }
});
