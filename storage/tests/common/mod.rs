//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use storage::{MessageId, MessageKey, NewMessage, Store, StoreConfig};

/// A key for `user` in `bucket` with an id made from `seq`.
pub fn key(bucket: u16, user: &str, seq: u32) -> MessageKey {
    MessageKey::new(
        bucket,
        user,
        MessageId::new(1_700_000_000_000_000 + u64::from(seq), 1, seq),
    )
}

/// Deterministic body for a key: its size and bytes follow from the id, and it
/// covers all 256 byte values (8-bit clean, NULs, bare CR/LF).
pub fn body_for(key: &MessageKey) -> Bytes {
    let seq = key.id.seq();
    let node = key.id.node();
    let size = ((seq as usize) * 7919 + (node as usize) * 131 + key.user.len()) % 6000;
    (0..size)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(seq)
                .wrapping_add(node) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A message whose body is `body_for(key)`.
pub fn message(key: MessageKey) -> NewMessage {
    let data = body_for(&key);
    NewMessage { key, data }
}

/// Config with small segments so tests cross segment boundaries.
pub fn small_segments() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 16 * 1024,
        ..StoreConfig::default()
    }
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, StoreConfig::default()).unwrap()
}

/// Ids listed for one user.
pub fn ids(store: &Store, bucket: u16, user: &str) -> Vec<MessageId> {
    store
        .list(bucket, user)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// Check every index view agrees with itself: each listed message reads back as
/// `body_for` with the listed size, `users()` counts equal listing lengths, the
/// stats totals equal what the listings and bucket scans show.
pub async fn assert_consistent(store: &Store) {
    let users = store.users(|_| true).unwrap();
    let mut total = 0;
    for (bucket, user, count) in &users {
        let listed = store.list(*bucket, user).unwrap();
        assert_eq!(listed.len() as u64, *count, "count of {bucket}/{user}");
        assert!(
            listed.windows(2).all(|w| w[0].id < w[1].id),
            "listing sorted, no duplicates"
        );
        for meta in &listed {
            let key = MessageKey::new(*bucket, user.clone(), meta.id);
            let data = store
                .read(&key)
                .await
                .unwrap()
                .expect("listed message is readable");
            assert_eq!(data.len() as u64, meta.size);
            assert_eq!(data, body_for(&key), "body of {key:?}");
            assert!(!store.is_tombstoned(&key).unwrap());
        }
        total += *count;
    }
    let stats = store.stats();
    assert_eq!(stats.messages, total);
    assert_eq!(stats.users, users.len() as u64);
    let mut buckets: Vec<u16> = users.iter().map(|(b, _, _)| *b).collect();
    buckets.dedup();
    let mut bucket_messages = 0;
    for bucket in buckets {
        bucket_messages += store.bucket_entries(bucket).unwrap().messages.len() as u64;
    }
    assert_eq!(bucket_messages, total);
}
