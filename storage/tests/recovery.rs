//! Crash recovery: what is acknowledged survives process death, a stale or wiped
//! index, and a torn segment tail; real damage is reported with file and offset.

mod common;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use storage::{BucketEntries, MessageId, MessageKey, NewMessage, StorageError, Store, StoreConfig};

/// Everything a store shows about its mail, for before/after comparisons.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    users: Vec<(u16, String, u64)>,
    buckets: Vec<BucketEntries>,
    totals: (u64, u64, u64),
}

fn snapshot(store: &Store, buckets: &[u16]) -> Snapshot {
    let stats = store.stats();
    Snapshot {
        users: store.users(|_| true).unwrap(),
        buckets: buckets
            .iter()
            .map(|b| store.bucket_entries(*b).unwrap())
            .collect(),
        totals: (stats.messages, stats.tombstones, stats.users),
    }
}

const BUCKETS: [u16; 3] = [0, 1, 2];

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn replace_index(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    copy_dir(with, &dir.join("index"));
}

/// Append 30 messages over 3 buckets and 5 users, in 3 requests.
async fn fill(store: &Store, first_seq: u32) -> Vec<MessageKey> {
    let mut keys = Vec::new();
    for round in 0..3u32 {
        let batch: Vec<MessageKey> = (0..10)
            .map(|i| {
                let seq = first_seq + round * 10 + i;
                key((seq % 3) as u16, &format!("user{}", seq % 5), seq)
            })
            .collect();
        store
            .append(batch.iter().cloned().map(message).collect())
            .await
            .unwrap();
        keys.extend(batch);
    }
    keys
}

#[tokio::test]
async fn drop_without_close_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, before) = {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        let clone = store.clone();
        let keys = fill(&clone, 0).await;
        store.delete(keys[..4].to_vec()).await.unwrap();
        let before = snapshot(&store, &BUCKETS);
        drop(clone);
        drop(store);
        (keys, before)
    };
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert_eq!(snapshot(&store, &BUCKETS), before);
    for k in &keys[4..] {
        assert_eq!(store.read(k).await.unwrap().unwrap(), body_for(k));
    }
    assert_consistent(&store).await;
}

#[tokio::test]
async fn wiped_index_is_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        let keys = fill(&store, 0).await;
        store
            .delete(vec![
                keys[0].clone(),
                keys[7].clone(),
                key(1, "nobody", 500),
            ])
            .await
            .unwrap();
        store.append(vec![message(keys[0].clone())]).await.unwrap(); // stays deleted
        let before = snapshot(&store, &BUCKETS);
        store.close().await.unwrap();
        before
    };
    assert!(
        segments(dir.path()).len() > 2,
        "the log spans several segments"
    );
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert_eq!(snapshot(&store, &BUCKETS), before);
    assert_eq!(before.totals, (28, 3, 15)); // users are (bucket, name) pairs
    assert_consistent(&store).await;
}

#[tokio::test]
async fn stale_index_replays_everything_after_its_checkpoint_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let first = {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        let first = fill(&store, 0).await;
        store.delete(vec![first[1].clone()]).await.unwrap();
        store.close().await.unwrap();
        first
    };
    copy_dir(&dir.path().join("index"), backup.path());
    let after = {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        let second = fill(&store, 100).await;
        store
            .delete(vec![first[2].clone(), second[3].clone()])
            .await
            .unwrap();
        store
            .append(vec![message(first[2].clone()), message(second[0].clone())])
            .await
            .unwrap();
        let after = snapshot(&store, &BUCKETS);
        store.close().await.unwrap();
        after
    };
    assert_eq!(after.totals, (57, 3, 15)); // users are (bucket, name) pairs
    // The index loses every change since the backup, checkpoint included.
    replace_index(dir.path(), backup.path());
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert_eq!(snapshot(&store, &BUCKETS), after);
    assert_consistent(&store).await;
}

#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    for garbage in [
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec(),
        (0..5000u32).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>(),
        // Looks like the start of a record (right magic and kind), then stops.
        vec![0x50, 0x43, 0x4d, 0x52, 1, 0, 1, 0, 3, b'a', b'b'],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = open(dir.path());
            fill(&store, 0).await;
            let before = snapshot(&store, &BUCKETS);
            store.close().await.unwrap();
            before
        };
        let last = segments(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(&garbage)
            .unwrap();

        let store = open(dir.path());
        assert_eq!(snapshot(&store, &BUCKETS), before);
        assert_eq!(
            std::fs::metadata(&last).unwrap().len(),
            len,
            "torn tail cut off"
        );
        // New records go where the garbage was, and survive another reopen.
        let late = key(1, "late", 900);
        store.append(vec![message(late.clone())]).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.read(&late).await.unwrap().unwrap(), body_for(&late));
        assert_consistent(&store).await;
    }
}

#[tokio::test]
async fn torn_last_record_is_dropped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let first = {
        let store = open(dir.path());
        let keys = fill(&store, 0).await;
        store.close().await.unwrap();
        keys
    };
    copy_dir(&dir.path().join("index"), backup.path());
    let (kept, torn) = {
        let store = open(dir.path());
        let kept = key(2, "tail", 200);
        let torn = key(2, "tail", 201);
        store.append(vec![message(kept.clone())]).await.unwrap();
        store.append(vec![message(torn.clone())]).await.unwrap();
        store.close().await.unwrap();
        (kept, torn)
    };
    // As if the process died mid-write and sled had not yet recorded either append.
    replace_index(dir.path(), backup.path());
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let store = open(dir.path());
    assert_eq!(store.read(&kept).await.unwrap().unwrap(), body_for(&kept));
    assert_eq!(store.read(&torn).await.unwrap(), None);
    for k in &first {
        assert_eq!(store.read(k).await.unwrap().unwrap(), body_for(k));
    }
    assert_eq!(store.stats().messages, 31);
    assert_consistent(&store).await;
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset).unwrap();
}

#[tokio::test]
async fn damage_in_an_earlier_segment_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        fill(&store, 0).await;
        store.close().await.unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    let damaged = &files[1];
    let len = std::fs::metadata(damaged).unwrap().len();
    flip_byte(damaged, len / 2);
    match Store::open(dir.path(), small_segments()) {
        Err(StorageError::Corrupt { path, offset, .. }) => {
            assert_eq!(&path, damaged);
            assert!(
                offset <= len / 2,
                "offset {offset} is the start of the damaged record"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        fill(&store, 0).await;
        store.close().await.unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let files = segments(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    match Store::open(dir.path(), small_segments()) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, files[1]),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn segment_shorter_than_the_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        fill(&store, 0).await;
        store.close().await.unwrap();
    }
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    match Store::open(dir.path(), StoreConfig::default()) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, last),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn bit_rot_in_a_body_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let marker = b"UNIQUE-MARKER-0123456789-UNIQUE-MARKER".to_vec();
    let rotten = key(0, "rot", 1);
    let healthy = key(0, "rot", 2);
    {
        let store = open(dir.path());
        store
            .append(vec![
                NewMessage {
                    key: rotten.clone(),
                    data: marker.clone().into(),
                },
                message(healthy.clone()),
            ])
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let last = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    flip_byte(&last, (at + 5) as u64);

    let store = open(dir.path());
    match store.read(&rotten).await {
        Err(StorageError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, last);
            assert!(offset < at as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        store.read(&healthy).await.unwrap().unwrap(),
        body_for(&healthy)
    );
}

/// Set in the child process of `killed_writer_loses_nothing_acknowledged`.
const CHILD_DIR_ENV: &str = "PORCUPINE_STORAGE_CRASH_CHILD_DIR";
const CHILD_TASKS: u32 = 8;

fn crash_config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 64 * 1024,
        ..StoreConfig::default()
    }
}

fn line_for(tag: &str, k: &MessageKey) -> String {
    format!("{tag} {} {} {}", k.bucket, k.user, k.id)
}

/// The child: write and delete from several tasks until killed, printing each key
/// once its write is acknowledged. Stops by itself after a while.
fn crash_child(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(dir, crash_config()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..CHILD_TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut previous: Option<MessageKey> = None;
                for i in 0..20_000u32 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let keys: Vec<MessageKey> = (0..(i % 3 + 1))
                        .map(|j| key((t % 3) as u16, &format!("task{t}"), i * 4 + j))
                        .collect();
                    store
                        .append(keys.iter().cloned().map(message).collect())
                        .await
                        .unwrap();
                    for k in &keys {
                        println!("{}", line_for("ACKED", k));
                    }
                    if i % 4 == 3
                        && let Some(victim) = previous.take()
                    {
                        println!("{}", line_for("DELETING", &victim));
                        store.delete(vec![victim.clone()]).await.unwrap();
                        println!("{}", line_for("DELETED", &victim));
                    }
                    previous = Some(keys[0].clone());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    // Leave without closing, as a crash would.
    std::process::exit(0);
}

fn parse_line(line: &str) -> Option<(String, MessageKey)> {
    let mut parts = line.split(' ');
    let tag = parts.next()?.to_owned();
    let bucket = parts.next()?.parse().ok()?;
    let user = parts.next()?.to_owned();
    let id: MessageId = parts.next()?.parse().ok()?;
    Some((tag, MessageKey::new(bucket, user, id)))
}

#[test]
fn killed_writer_loses_nothing_acknowledged() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        crash_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "killed_writer_loses_nothing_acknowledged",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut acked = BTreeSet::new();
    let mut deleting = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut record = |line: &str| {
        if let Some((tag, k)) = parse_line(line) {
            match tag.as_str() {
                "ACKED" => assert!(acked.insert(k)),
                "DELETING" => assert!(deleting.insert(k)),
                "DELETED" => assert!(deleted.insert(k)),
                _ => {}
            }
        }
    };
    // Kill the child (SIGKILL) in the middle of its writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked_lines = 0;
    while acked_lines < 600 {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx
            .recv_timeout(wait)
            .expect("child kept acknowledging writes");
        acked_lines += usize::from(line.starts_with("ACKED"));
        record(&line);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Lines already in the pipe were printed before the kill: they count too.
    reader.join().unwrap();
    for line in lines_rx.try_iter() {
        record(&line);
    }
    assert!(
        deleted.len() > 10,
        "the child got to delete: {}",
        deleted.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 0..2 {
            let store = Store::open(dir.path(), crash_config()).unwrap();
            for k in &acked {
                if deleted.contains(k) {
                    assert_eq!(
                        store.read(k).await.unwrap(),
                        None,
                        "deleted {k:?} (round {round})"
                    );
                    assert!(store.is_tombstoned(k).unwrap());
                } else if !deleting.contains(k) {
                    assert_eq!(
                        store.read(k).await.unwrap().unwrap(),
                        body_for(k),
                        "acked {k:?} (round {round})"
                    );
                }
            }
            // Everything present (acknowledged or not) is whole and listed once.
            assert_consistent(&store).await;
            let listed: usize = (0..CHILD_TASKS)
                .map(|t| {
                    store
                        .list((t % 3) as u16, &format!("task{t}"))
                        .unwrap()
                        .len()
                })
                .sum();
            assert!(listed >= acked.len() - deleting.len());
            store.close().await.unwrap();
        }
    });
}
