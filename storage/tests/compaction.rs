//! Segment compaction: space comes back, nothing acknowledged is lost, and a
//! crash (a real process abort) at every step of a segment's compaction loses
//! nothing and leaves nothing behind after a restart.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use storage::{CompactHook, CompactStep, MessageKey, Store, StoreConfig};

const CHILD_DIR_ENV: &str = "PORCUPINE_COMPACT_CHILD_DIR";
const CHILD_STEP_ENV: &str = "PORCUPINE_COMPACT_CHILD_STEP";
const MESSAGES: u32 = 400;

/// Small segments, no background compaction (the tests call `compact`).
fn config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 16 * 1024,
        compact_live_ratio_min: 0.0,
        compact_rate_bytes_per_sec: 0,
        ..StoreConfig::default()
    }
}

fn all_keys() -> Vec<MessageKey> {
    (0..MESSAGES)
        .map(|seq| key((seq % 3) as u16, &format!("user{}", seq % 5), seq))
        .collect()
}

/// Nine in ten messages are deleted.
fn is_kept(k: &MessageKey) -> bool {
    k.id.seq().is_multiple_of(10)
}

/// Store every message, then delete nine in ten.
async fn fill_and_delete(store: &Store) {
    for chunk in all_keys().chunks(20) {
        store
            .append(chunk.iter().cloned().map(message).collect())
            .await
            .unwrap();
    }
    let doomed: Vec<MessageKey> = all_keys().into_iter().filter(|k| !is_kept(k)).collect();
    for chunk in doomed.chunks(25) {
        store.delete(chunk.to_vec()).await.unwrap();
    }
}

/// Every kept message reads back byte-exact and is listed once; every deleted one
/// is gone and tombstoned.
async fn check_contents(store: &Store, context: &str) {
    for k in all_keys() {
        if is_kept(&k) {
            assert_eq!(
                store.read(&k).await.unwrap(),
                Some(body_for(&k)),
                "{context}: kept {k:?}"
            );
        } else {
            assert_eq!(
                store.read(&k).await.unwrap(),
                None,
                "{context}: deleted {k:?}"
            );
            assert!(
                store.is_tombstoned(&k).unwrap(),
                "{context}: tombstone {k:?}"
            );
        }
    }
    let listed: usize = (0..3u16)
        .flat_map(|b| (0..5).map(move |u| (b, format!("user{u}"))))
        .map(|(b, u)| store.list(b, &u).unwrap().len())
        .sum();
    let kept = all_keys().iter().filter(|k| is_kept(k)).count();
    assert_eq!(listed, kept, "{context}: listed once each");
    let stats = store.stats();
    assert_eq!(stats.messages, kept as u64, "{context}: live count");
}

/// Bytes of the segment files, and the names of anything else in the directory
/// besides the removed-segment list.
fn segment_dir_usage(dir: &Path) -> (u64, Vec<String>) {
    let mut bytes = 0;
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir.join("segments")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".seg") {
            bytes += entry.metadata().unwrap().len();
        } else if name != "REMOVED" {
            others.push(name);
        }
    }
    (bytes, others)
}

/// Live bytes: every kept message's whole record.
fn live_bytes() -> u64 {
    all_keys()
        .iter()
        .filter(|k| is_kept(k))
        .map(|k| (9 + k.user.len() + 24 + body_for(k).len()) as u64)
        .sum()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_most_mail_returns_disk_use_close_to_live_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    fill_and_delete(&store).await;
    let (before, _) = segment_dir_usage(dir.path());
    let report = store.compact(0.5).await.unwrap();
    let (after, others) = segment_dir_usage(dir.path());
    assert!(others.is_empty(), "stray files {others:?}");
    assert!(report.segments_removed > 10, "{report:?}");
    assert_eq!(store.stats().segment_bytes, after);
    check_contents(&store, "after compaction").await;
    // Every sealed segment left is at least half live; the tombstones and the
    // newest segment (never compacted) come on top of the live bytes.
    let tombstones_bytes = u64::from(MESSAGES) * 40;
    assert!(
        after < live_bytes() * 2 + tombstones_bytes + 2 * 16 * 1024,
        "before {before} after {after} live {}",
        live_bytes()
    );
    assert!(after * 3 < before, "before {before} after {after}");
    // A second full pass at ratio 1.0 keeps everything readable too.
    store.compact(1.0).await.unwrap();
    check_contents(&store, "after a full pass").await;
    store.close().await.unwrap();
    drop(store);

    let store = Store::open(dir.path(), config()).unwrap();
    check_contents(&store, "reopened").await;
    store.close().await.unwrap();
    drop(store);
    // A replay from scratch tells compacted gaps from lost segments.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    check_contents(&store, "index rebuilt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_deletes_racing_compaction_keep_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            compact_live_ratio_min: 0.9,
            compact_interval_ms: 10,
            ..config()
        },
    )
    .unwrap();
    // Background passes every 10 ms while a writer stores and deletes.
    let mut kept = Vec::new();
    for seq in 0..600u32 {
        let k = key(1, "racer", seq);
        store.append(vec![message(k.clone())]).await.unwrap();
        if !seq.is_multiple_of(3) {
            store.delete(vec![k.clone()]).await.unwrap();
        } else {
            kept.push(k);
        }
    }
    for _ in 0..3 {
        store.compact(0.9).await.unwrap();
    }
    for seq in 0..600u32 {
        let k = key(1, "racer", seq);
        let got = store.read(&k).await.unwrap();
        if seq.is_multiple_of(3) {
            assert_eq!(got, Some(body_for(&k)), "{k:?}");
        } else {
            assert_eq!(got, None, "{k:?}");
        }
    }
    assert!(store.stats().compacted_segments > 0);
    assert_eq!(store.list(1, "racer").unwrap().len(), kept.len());
}

/// The child: fill, delete, then compact with a hook that aborts the process at
/// `step` (the first time it is reached).
fn crash_child(dir: &Path, step: CompactStep) {
    runtime().block_on(async {
        let store = Store::open(
            dir,
            StoreConfig {
                compact_hook: Some(CompactHook(Arc::new(move |at, _segment| {
                    if at == step {
                        std::process::abort();
                    }
                }))),
                ..config()
            },
        )
        .unwrap();
        fill_and_delete(&store).await;
        let _ = store.compact(0.5).await;
    });
    // The hook did not fire: the parent sees a clean exit and fails.
    std::process::exit(0);
}

#[test]
fn crash_at_every_compaction_step_loses_nothing_and_leaks_nothing() {
    if let (Some(dir), Some(step)) = (
        std::env::var_os(CHILD_DIR_ENV),
        std::env::var(CHILD_STEP_ENV).ok(),
    ) {
        let step = CompactStep::from_name(&step).unwrap();
        crash_child(Path::new(&dir), step);
        return;
    }
    for step in CompactStep::ALL {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_at_every_compaction_step_loses_nothing_and_leaks_nothing",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_STEP_ENV, step.name())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "{step:?}: the child must die at the step"
        );
        let (before, _) = segment_dir_usage(dir.path());
        runtime().block_on(async {
            let context = format!("restart after a crash at {}", step.name());
            // Background compaction on, as a node runs: it finishes the job.
            let store = Store::open(
                dir.path(),
                StoreConfig {
                    compact_live_ratio_min: 0.5,
                    ..config()
                },
            )
            .unwrap();
            check_contents(&store, &context).await;
            store.compact(0.5).await.unwrap();
            check_contents(&store, &context).await;
            let (after, others) = segment_dir_usage(dir.path());
            assert!(others.is_empty(), "{context}: stray files {others:?}");
            assert!(
                after * 3 < before,
                "{context}: before {before} after {after}"
            );
            // Nothing left that a later pass could still remove.
            let again = store.compact(0.5).await.unwrap();
            assert_eq!(again.segments_removed, 0, "{context}: {again:?}");
            store.close().await.unwrap();
            drop(store);
            std::fs::remove_dir_all(dir.path().join("index")).unwrap();
            let store = Store::open(dir.path(), config()).unwrap();
            check_contents(&store, &format!("{context}, index rebuilt")).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_flipped_byte_and_replace_damaged_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let keys: Vec<MessageKey> = (0..30).map(|seq| key(2, "carol", seq)).collect();
    store
        .append(keys.iter().cloned().map(message).collect())
        .await
        .unwrap();
    assert!(store.verify().await.unwrap().damaged.is_empty());
    // One message with a body found nowhere else; flip a byte inside it.
    let victim = key(2, "carol", 999);
    let body = bytes::Bytes::from(b"UNIQUE-BODY-FOR-VERIFY ".repeat(200));
    store
        .append(vec![storage::NewMessage {
            key: victim.clone(),
            data: body.clone(),
        }])
        .await
        .unwrap();
    let mut hit = None;
    for entry in std::fs::read_dir(dir.path().join("segments")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Some(at) = data
            .windows(23)
            .position(|w| w == b"UNIQUE-BODY-FOR-VERIFY ")
        {
            hit = Some((path, at + 500));
        }
    }
    let (path, at) = hit.expect("body found on disk");
    let mut data = std::fs::read(&path).unwrap();
    data[at] ^= 0x01;
    std::fs::write(&path, &data).unwrap();

    let report = store.verify().await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].key.as_ref(), Some(&victim));
    assert!(report.damaged[0].reason.contains("checksum"), "{report:?}");
    assert!(store.read(&victim).await.is_err());
    // A good message is never replaced; the damaged one is.
    let other = &keys[0];
    assert!(!store.replace_damaged(other, body_for(other)).await.unwrap());
    assert!(store.replace_damaged(&victim, body.clone()).await.unwrap());
    assert_eq!(store.read(&victim).await.unwrap(), Some(body.clone()));
    let report = store.verify().await.unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(
        report.damaged[0].key, None,
        "the damaged copy is unused now"
    );
    // Compaction drops the unused damaged record (once its segment is sealed).
    store
        .append(
            (100..140)
                .map(|seq| message(key(2, "filler", seq)))
                .collect(),
        )
        .await
        .unwrap();
    store.compact(1.0).await.unwrap();
    assert!(store.verify().await.unwrap().damaged.is_empty());
    assert_eq!(store.read(&victim).await.unwrap(), Some(body.clone()));
    store.close().await.unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    for k in &keys {
        assert_eq!(store.read(k).await.unwrap(), Some(body_for(k)), "{k:?}");
    }
    assert_eq!(store.read(&victim).await.unwrap(), Some(body));
}
