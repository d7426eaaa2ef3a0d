//! The real POP3 session (`pop::serve`) fed arbitrary client bytes over a duplex
//! pipe, with an in-memory maildrop. 0xFF bytes split the input into writes.
//! Checks: no panic, the session ends, the greeting comes first, status lines end
//! in CRLF, and deletes happen only for real message numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let rt = porcupine_fuzz::runtime();
    let mailbox = Arc::new(porcupine_fuzz::FakeMailbox::default());
    let deleted = mailbox.deleted.clone();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let out = rt.block_on(async {
        let session = pop::serve(
            server,
            porcupine_fuzz::pop_config(),
            Arc::new(porcupine_fuzz::FakeAuth),
            mailbox,
            shutdown,
        );
        let (_, out) = tokio::join!(
            session,
            porcupine_fuzz::exchange(client, porcupine_fuzz::chunks(data))
        );
        out
    });
    assert!(
        out.starts_with(b"+OK"),
        "greeting first: {:?}",
        String::from_utf8_lossy(&out)
    );
    // Stored bytes go out as they are (a bare LF in a message stays one: see
    // pop::multiline), so only status lines must end in CRLF.
    assert!(out.ends_with(b"\r\n"), "ends with a whole line");
    for line in out.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"+OK") || line.starts_with(b"-ERR") {
            assert!(line.ends_with(b"\r\n"), "status line in CRLF: {line:?}");
        }
    }
    let total = porcupine_fuzz::messages().len();
    if let Ok(d) = deleted.lock() {
        assert!(d.iter().all(|i| *i < total), "deleted {d:?} of {total}");
    }
});
