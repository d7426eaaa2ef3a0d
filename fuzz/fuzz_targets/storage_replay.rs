//! Segment replay at open: arbitrary bytes as the segment files of a fresh data
//! directory (0xFF 0xFE 0xFD splits them into consecutive segments), then
//! `Store::open`, which replays and truncates a torn tail. Checks: no panic; open
//! either fails with an error or yields a store whose every listed message reads
//! back with its listed size, and which opens again to the same listing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage::{Store, StoreConfig};

fn listing(store: &Store) -> Vec<(u16, String, Vec<storage::MessageMeta>)> {
    let users = store.users(|_| true).expect("users of an open store");
    users
        .into_iter()
        .map(|(b, u, _)| {
            let list = store.list(b, &u).expect("list");
            (b, u, list)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let segments = dir.path().join("segments");
    if std::fs::create_dir_all(&segments).is_err() {
        return;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(3).position(|w| w == [0xFF, 0xFE, 0xFD]) {
        parts.push(&rest[..at]);
        rest = &rest[at + 3..];
    }
    parts.push(rest);
    for (i, part) in parts.iter().take(4).enumerate() {
        let path = segments.join(format!("{:08}.seg", i + 1));
        if std::fs::write(&path, part).is_err() {
            return;
        }
    }
    let rt = porcupine_fuzz::runtime();
    let first = match Store::open(dir.path(), StoreConfig::default()) {
        Ok(store) => {
            let first = listing(&store);
            for (b, u, list) in &first {
                for meta in list {
                    let key = storage::MessageKey {
                        bucket: *b,
                        user: u.clone(),
                        id: meta.id,
                    };
                    let body = rt
                        .block_on(store.read(&key))
                        .expect("read a listed message");
                    let body = body.expect("a listed message is there");
                    assert_eq!(body.len() as u64, meta.size, "listed size");
                }
            }
            first
        }
        Err(_) => return,
    };
    let store =
        Store::open(dir.path(), StoreConfig::default()).expect("a store that opened reopens");
    assert_eq!(listing(&store), first, "the same log after a reopen");
});
