//! Conformance suite for `Store`: what every storage backend behind this API must do.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use storage::{MessageId, MessageKey, NewMessage, StorageError, Store, StoreConfig};

#[tokio::test]
async fn append_list_read_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let big: Bytes = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let eight_bit = Bytes::from_static(
        b"Subject: \xe9t\xe9\r\n\r\n\x00\x01\xff\xfe\r\n.\r\nlast line without CRLF",
    );
    let empty = Bytes::new();
    // Appended out of id order: listing must still be in id order.
    let k_big = key(7, "alice", 30);
    let k_8bit = key(7, "alice", 10);
    let k_empty = key(7, "alice", 20);
    store
        .append(vec![
            NewMessage {
                key: k_big.clone(),
                data: big.clone(),
            },
            NewMessage {
                key: k_8bit.clone(),
                data: eight_bit.clone(),
            },
        ])
        .await
        .unwrap();
    store
        .append(vec![NewMessage {
            key: k_empty.clone(),
            data: empty.clone(),
        }])
        .await
        .unwrap();

    let listed = store.list(7, "alice").unwrap();
    assert_eq!(
        listed.iter().map(|m| (m.id, m.size)).collect::<Vec<_>>(),
        vec![
            (k_8bit.id, eight_bit.len() as u64),
            (k_empty.id, 0),
            (k_big.id, big.len() as u64)
        ]
    );
    assert_eq!(store.read(&k_big).await.unwrap().unwrap(), big);
    assert_eq!(store.read(&k_8bit).await.unwrap().unwrap(), eight_bit);
    assert_eq!(store.read(&k_empty).await.unwrap().unwrap(), empty);

    // Other users, buckets and ids see nothing.
    assert!(store.list(7, "alic").unwrap().is_empty());
    assert!(store.list(7, "alice2").unwrap().is_empty());
    assert!(store.list(8, "alice").unwrap().is_empty());
    assert_eq!(store.read(&key(7, "alice", 31)).await.unwrap(), None);
    assert_eq!(store.read(&key(8, "alice", 30)).await.unwrap(), None);

    let stats = store.stats();
    assert_eq!((stats.messages, stats.users, stats.tombstones), (3, 1, 0));
    assert!(stats.segment_bytes > big.len() as u64);
    assert!(
        stats.syncs >= 2,
        "each acknowledged append was synced: {stats:?}"
    );
    // Two group commits, each with a 10 MiB or a small append and an fdatasync:
    // the writer's time in them is counted, and its own CPU is part of that time.
    assert!(stats.batches >= 2, "{stats:?}");
    assert!(stats.commit_micros > 0, "{stats:?}");
    assert!(stats.commit_cpu_micros > 0, "{stats:?}");
    assert!(
        stats.commit_cpu_micros <= stats.commit_micros + 1_000,
        "{stats:?}"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn delete_hides_and_tombstone_wins_over_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b, c) = (key(1, "bob", 1), key(1, "bob", 2), key(1, "bob", 3));
    store
        .append(vec![message(a.clone()), message(b.clone())])
        .await
        .unwrap();
    assert!(!store.is_tombstoned(&a).unwrap());

    store.delete(vec![a.clone()]).await.unwrap();
    assert_eq!(ids(&store, 1, "bob"), vec![b.id]);
    assert_eq!(store.read(&a).await.unwrap(), None);
    assert!(store.is_tombstoned(&a).unwrap());
    assert!(!store.is_tombstoned(&b).unwrap());
    assert_eq!(store.tombstones(1, "bob").unwrap(), vec![a.id]);

    assert!(
        store.tombstones(1, "bo").unwrap().is_empty(),
        "prefix of another user"
    );

    // A replica that missed the delete sends the message again: it stays deleted.
    store.append(vec![message(a.clone())]).await.unwrap();
    assert_eq!(ids(&store, 1, "bob"), vec![b.id]);
    assert_eq!(store.read(&a).await.unwrap(), None);

    // A delete that arrives before its message (anti-entropy order) also wins.
    store.delete(vec![c.clone()]).await.unwrap();
    store.append(vec![message(c.clone())]).await.unwrap();
    assert_eq!(ids(&store, 1, "bob"), vec![b.id]);
    assert!(store.is_tombstoned(&c).unwrap());

    // Deleting twice is harmless.
    store.delete(vec![a.clone(), a.clone()]).await.unwrap();
    let stats = store.stats();
    assert_eq!((stats.messages, stats.tombstones, stats.users), (1, 2, 1));

    // Collecting a tombstone keeps its message deleted.
    assert_eq!(store.purge_tombstones(&[c.clone(), c.clone()]).unwrap(), 1);
    assert!(!store.is_tombstoned(&c).unwrap());
    assert_eq!(ids(&store, 1, "bob"), vec![b.id]);
    assert_eq!(store.stats().tombstones, 1);
    store.delete(vec![c.clone()]).await.unwrap();

    // Deleting the last message removes the user.
    store.delete(vec![b.clone()]).await.unwrap();
    assert!(store.users(|_| true).unwrap().is_empty());
    assert_eq!(store.stats().users, 0);
    assert_eq!(store.stats().messages, 0);
    assert_eq!(store.stats().tombstones, 3);
}

#[tokio::test]
async fn racing_append_and_delete_end_deleted_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for seq in 0..20 {
        let k = key(2, "carol", seq);
        let (appended, deleted) = tokio::join!(
            store.append(vec![message(k.clone())]),
            store.delete(vec![k.clone()])
        );
        appended.unwrap();
        deleted.unwrap();
        assert_eq!(store.read(&k).await.unwrap(), None);
        assert!(store.is_tombstoned(&k).unwrap());
    }
    assert!(store.list(2, "carol").unwrap().is_empty());
    assert_eq!(store.stats().messages, 0);
    assert_eq!(store.stats().users, 0);
}

#[tokio::test]
async fn re_append_is_idempotent_and_first_copy_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(3, "dave", 5);
    store.append(vec![message(k.clone())]).await.unwrap();
    store
        .append(vec![NewMessage {
            key: k.clone(),
            data: Bytes::from_static(b"a different copy"),
        }])
        .await
        .unwrap();
    // Duplicates inside one request too.
    let k2 = key(3, "dave", 6);
    store
        .append(vec![message(k2.clone()), message(k2.clone())])
        .await
        .unwrap();
    assert_eq!(ids(&store, 3, "dave"), vec![k.id, k2.id]);
    assert_eq!(store.read(&k).await.unwrap().unwrap(), body_for(&k));
    assert_eq!(
        store.users(|_| true).unwrap(),
        vec![(3, "dave".to_owned(), 2)]
    );
    assert_eq!(store.stats().messages, 2);
    assert_consistent(&store).await;
}

#[tokio::test]
async fn users_counts_and_bucket_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut batch = Vec::new();
    for (bucket, user, n) in [
        (0u16, "zed", 1u32),
        (5, "amy", 3),
        (5, "bea", 2),
        (9, "amy", 4),
        (u16::MAX, "max", 1),
    ] {
        for seq in 0..n {
            batch.push(message(key(bucket, user, seq)));
        }
    }
    store.append(batch).await.unwrap();
    assert_eq!(
        store.users(|_| true).unwrap(),
        vec![
            (0, "zed".to_owned(), 1),
            (5, "amy".to_owned(), 3),
            (5, "bea".to_owned(), 2),
            (9, "amy".to_owned(), 4),
            (u16::MAX, "max".to_owned(), 1),
        ]
    );
    assert_eq!(
        store.users(|b| b % 2 == 1).unwrap(),
        vec![
            (5, "amy".to_owned(), 3),
            (5, "bea".to_owned(), 2),
            (9, "amy".to_owned(), 4),
            (u16::MAX, "max".to_owned(), 1)
        ]
    );
    // The filter is asked once per bucket present, not per user or per bucket number.
    let asked = std::sync::Mutex::new(Vec::new());
    store
        .users(|b| {
            asked.lock().unwrap().push(b);
            false
        })
        .unwrap();
    assert_eq!(asked.into_inner().unwrap(), vec![0, 5, 9, u16::MAX]);

    store.delete(vec![key(5, "amy", 0)]).await.unwrap();
    assert_eq!(
        store.users(|b| b == 5).unwrap(),
        vec![(5, "amy".to_owned(), 2), (5, "bea".to_owned(), 2)]
    );
    assert_eq!(store.stats().users, 5);
    assert_consistent(&store).await;
}

#[tokio::test]
async fn bucket_entries_lists_messages_and_tombstones_of_one_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .append(vec![
            message(key(4, "a", 1)),
            message(key(4, "b", 2)),
            message(key(4, "a", 3)),
            message(key(5, "a", 4)),
        ])
        .await
        .unwrap();
    store
        .delete(vec![key(4, "a", 1), key(4, "c", 9), key(5, "a", 4)])
        .await
        .unwrap();
    let entries = store.bucket_entries(4).unwrap();
    assert_eq!(
        entries.messages,
        vec![
            ("a".to_owned(), key(4, "a", 3).id),
            ("b".to_owned(), key(4, "b", 2).id)
        ]
    );
    assert_eq!(
        entries.tombstones,
        vec![
            ("a".to_owned(), key(4, "a", 1).id),
            ("c".to_owned(), key(4, "c", 9).id)
        ]
    );
    let five = store.bucket_entries(5).unwrap();
    assert!(five.messages.is_empty());
    assert_eq!(five.tombstones, vec![("a".to_owned(), key(5, "a", 4).id)]);
    assert_eq!(
        store.bucket_entries(6).unwrap(),
        storage::BucketEntries::default()
    );
}

#[tokio::test]
async fn reopen_after_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let mut keys = Vec::new();
    {
        let store = Store::open(dir.path(), config.clone()).unwrap();
        for round in 0..10u32 {
            let batch: Vec<_> = (0..10)
                .map(|i| key((round % 3) as u16, &format!("u{}", i % 4), round * 10 + i))
                .collect();
            keys.extend(batch.clone());
            store
                .append(batch.into_iter().map(message).collect())
                .await
                .unwrap();
        }
        store.delete(keys[..15].to_vec()).await.unwrap();
        let registry = store.kv("registry").unwrap();
        registry.insert(b"user/alice", b"hash").unwrap();
        registry.flush().await.unwrap();
        store.close().await.unwrap();
        // Writes after close are refused; reads still work; closing again is fine.
        assert!(matches!(
            store.append(vec![message(key(0, "x", 999))]).await,
            Err(StorageError::Closed)
        ));
        assert!(matches!(
            store.delete(vec![key(0, "x", 999)]).await,
            Err(StorageError::Closed)
        ));
        assert_eq!(
            store.read(&keys[20]).await.unwrap().unwrap(),
            body_for(&keys[20])
        );
        store.close().await.unwrap();
    }
    let segment_files = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert!(segment_files > 3, "small segments rolled: {segment_files}");

    let store = Store::open(dir.path(), config).unwrap();
    for (i, k) in keys.iter().enumerate() {
        if i < 15 {
            assert_eq!(store.read(k).await.unwrap(), None);
            assert!(store.is_tombstoned(k).unwrap());
        } else {
            assert_eq!(store.read(k).await.unwrap().unwrap(), body_for(k));
        }
    }
    let stats = store.stats();
    assert_eq!((stats.messages, stats.tombstones), (85, 15));
    assert_eq!(
        store.kv("registry").unwrap().get(b"user/alice").unwrap(),
        Some(b"hash".to_vec())
    );
    assert_consistent(&store).await;
    // And the reopened store keeps accepting writes.
    let k = key(1, "late", 1000);
    store.append(vec![message(k.clone())]).await.unwrap();
    assert_eq!(store.read(&k).await.unwrap().unwrap(), body_for(&k));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_all_land_and_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = store.stats();
    let tasks = 200u32;
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks as usize));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let store = store.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let k = key((i % 7) as u16, &format!("user{}", i % 13), i);
            store.append(vec![message(k.clone())]).await.unwrap();
            // Acknowledged means readable at once.
            assert_eq!(store.read(&k).await.unwrap().unwrap(), body_for(&k));
            k
        }));
    }
    let mut landed = BTreeSet::new();
    for handle in handles {
        landed.insert(handle.await.unwrap());
    }
    assert_eq!(landed.len(), tasks as usize);
    let stats = store.stats();
    assert_eq!(stats.messages, u64::from(tasks));
    assert_eq!(
        stats.write_requests - before.write_requests,
        u64::from(tasks)
    );
    let syncs = stats.syncs - before.syncs;
    assert!(syncs >= 1);
    assert!(
        syncs < u64::from(tasks),
        "group commit shared fdatasyncs: {syncs} syncs for {tasks} appends"
    );
    assert_eq!(stats.batches - before.batches, syncs, "one sync per batch");
    assert_eq!(stats.pending_write_requests, 0, "every request answered");
    assert_consistent(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_cap_splits_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            batch_bytes_max: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let before = store.stats();
    // A large write keeps the writer busy while the small ones queue up behind it.
    let big = NewMessage {
        key: key(0, "cap", 1000),
        data: vec![0xa5u8; 8 << 20].into(),
    };
    let mut handles = vec![tokio::spawn({
        let store = store.clone();
        async move { store.append(vec![big]).await }
    })];
    for i in 0..20u32 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store.append(vec![message(key(0, "cap", i))]).await
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let stats = store.stats();
    // With a 1-byte cap every request is its own group commit.
    assert_eq!(stats.batches - before.batches, 21);
    assert_eq!(stats.messages, 21);
}

#[tokio::test]
async fn invalid_input_is_rejected_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bad = MessageKey::new(0, "a\0b", MessageId::new(1, 1, 1));
    assert!(matches!(
        store.append(vec![message(bad.clone())]).await,
        Err(StorageError::InvalidUser { .. })
    ));
    assert!(matches!(
        store.delete(vec![bad.clone()]).await,
        Err(StorageError::InvalidUser { .. })
    ));
    assert!(matches!(
        store.list(0, "a\0b"),
        Err(StorageError::InvalidUser { .. })
    ));
    assert!(matches!(
        store.read(&bad).await,
        Err(StorageError::InvalidUser { .. })
    ));
    // Nothing was written and the writer is healthy.
    assert_eq!(store.stats().write_requests, 0);
    store.append(vec![message(key(0, "ok", 1))]).await.unwrap();
    assert_eq!(store.stats().messages, 1);
    // Empty requests are no-ops.
    store.append(Vec::new()).await.unwrap();
    store.delete(Vec::new()).await.unwrap();
    assert_eq!(store.stats().write_requests, 1);
}

#[tokio::test]
async fn second_open_of_the_same_dir_fails_and_leaves_data_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(vec![message(key(0, "x", 1))]).await.unwrap();
    let second = Store::open(dir.path(), StoreConfig::default());
    assert!(
        matches!(second, Err(StorageError::Index { .. })),
        "{second:?}"
    );
    assert_eq!(
        store.read(&key(0, "x", 1)).await.unwrap().unwrap(),
        body_for(&key(0, "x", 1))
    );
    // Dropping the last handle releases the directory.
    drop(store);
    let store = open(dir.path());
    assert_eq!(ids(&store, 0, "x"), vec![key(0, "x", 1).id]);
}

#[tokio::test]
async fn kv_trees_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let raft = store.kv("raft-log").unwrap();
        for i in 0u64..100 {
            raft.insert(&i.to_be_bytes(), format!("entry {i}").as_bytes())
                .unwrap();
        }
        raft.remove_range(&10u64.to_be_bytes(), &20u64.to_be_bytes())
            .unwrap();
        raft.apply(vec![(b"vote".to_vec(), Some(b"term 3".to_vec()))])
            .unwrap();
        raft.flush().await.unwrap();
        // The kv tree never shows up as mail.
        assert!(store.users(|_| true).unwrap().is_empty());
        drop(raft);
        store.close().await.unwrap();
    }
    let store = open(dir.path());
    let raft = store.kv("raft-log").unwrap();
    assert_eq!(
        raft.get(&5u64.to_be_bytes()).unwrap(),
        Some(b"entry 5".to_vec())
    );
    assert_eq!(raft.get(&15u64.to_be_bytes()).unwrap(), None);
    assert_eq!(
        raft.range(&0u64.to_be_bytes(), &100u64.to_be_bytes())
            .unwrap()
            .len(),
        90
    );
    assert_eq!(raft.last().unwrap().unwrap().0, b"vote".to_vec());
    assert_eq!(store.kv("other").unwrap().last().unwrap(), None);
}

#[tokio::test]
async fn message_id_text_is_the_uidl() {
    // The UIDL form a POP3 client sends back finds the message.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key(3, "pop", 77);
    store.append(vec![message(k.clone())]).await.unwrap();
    let uidl = store.list(3, "pop").unwrap()[0].id.to_string();
    let id: MessageId = uidl.parse().unwrap();
    assert_eq!(
        store
            .read(&MessageKey::new(3, "pop", id))
            .await
            .unwrap()
            .unwrap(),
        body_for(&k)
    );
}

#[tokio::test]
async fn tombstone_users_lists_each_user_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.tombstone_users().unwrap().is_empty());
    store
        .delete(vec![
            key(1, "bob", 1),
            key(1, "bob", 2),
            key(1, "bo", 9),
            key(0, "zed", 9),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.tombstone_users().unwrap(),
        vec![
            (0, "zed".to_string()),
            (1, "bo".to_string()),
            (1, "bob".to_string())
        ]
    );
}
