//! A store on a small tmpfs that fills up: a message the disk had no room for is
//! refused (never acknowledged and lost), reads, deletes and compaction go on,
//! writes come back by themselves once space is freed, and the store opens on a
//! full disk. Needs root (to mount the tmpfs); skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::*;
use storage::{MessageKey, NewMessage, StorageError, Store, StoreConfig};

/// A tmpfs of `size_mb` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u64) -> Option<Tmpfs> {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !is_root {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?;
        if !status.success() {
            eprintln!("skipped: mount failed");
            return None;
        }
        Some(Tmpfs {
            dir,
            _parent: parent,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 1024 * 1024,
        compact_live_ratio_min: 0.0,
        compact_rate_bytes_per_sec: 0,
        reserve_bytes: 2 * 1024 * 1024,
        ..StoreConfig::default()
    }
}

fn big(k: &MessageKey) -> NewMessage {
    let seq = k.id.seq();
    let data: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(seq)) as u8)
        .collect();
    NewMessage {
        key: k.clone(),
        data: Bytes::from(data),
    }
}

/// Append one message at a time until the store refuses; returns the stored keys
/// and the first refused one.
async fn fill_until_full(store: &Store, user: &str, from: u32) -> (Vec<MessageKey>, MessageKey) {
    let mut stored = Vec::new();
    for seq in from..from + 10_000 {
        let k = key(0, user, seq);
        match store.append(vec![big(&k)]).await {
            Ok(()) => stored.push(k),
            Err(e) => {
                assert!(
                    matches!(e, StorageError::DiskFull { .. }),
                    "refused for want of space, got {e:?}"
                );
                return (stored, k);
            }
        }
    }
    panic!("the tmpfs never filled");
}

async fn check_readable(store: &Store, keys: &[MessageKey]) {
    for k in keys {
        assert_eq!(
            store.read(k).await.unwrap(),
            Some(big(k).data),
            "acknowledged {k:?}"
        );
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_messages_keeps_deletes_and_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount(24) else { return };
    let store = Store::open(&fs.dir, config()).unwrap();
    let (stored, refused) = fill_until_full(&store, "alice", 0).await;
    assert!(stored.len() > 50, "stored {}", stored.len());
    assert!(store.stats().disk_full);
    // Never acknowledged, never there.
    assert_eq!(store.read(&refused).await.unwrap(), None);
    // Further messages are refused at once, the store is not broken.
    match store.append(vec![big(&key(0, "alice", 99_999))]).await {
        Err(StorageError::DiskFull { .. }) => {}
        other => panic!("expected DiskFull, got {other:?}"),
    }
    check_readable(&store, &stored).await;
    // Deletes work on the full disk (from the reserve).
    let (doomed, kept) = stored.split_at(stored.len() * 9 / 10);
    for chunk in doomed.chunks(10) {
        store.delete(chunk.to_vec()).await.unwrap();
    }
    // Compaction works on the full disk and gives the space back.
    let report = store.compact(0.5).await.unwrap();
    assert!(report.segments_removed > 0, "{report:?}");
    check_readable(&store, kept).await;
    for k in doomed {
        assert_eq!(store.read(k).await.unwrap(), None);
    }
    // The writer takes messages again by itself (once its reserve is back).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let k = key(0, "alice", 50_000);
    loop {
        match store.append(vec![big(&k)]).await {
            Ok(()) => break,
            Err(e) if e.is_disk_full() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("writes never came back: {e:?}"),
        }
    }
    assert!(!store.stats().disk_full);
    check_readable(&store, &[k]).await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_opens_and_serves_reads_on_a_full_disk() {
    let Some(fs) = Tmpfs::mount(24) else { return };
    let stored = {
        let store = Store::open(&fs.dir, config()).unwrap();
        let mut stored = Vec::new();
        for seq in 0..40 {
            let k = key(0, "bob", seq);
            store.append(vec![big(&k)]).await.unwrap();
            stored.push(k);
        }
        store.close().await.unwrap();
        stored
    };
    // Something else fills the disk to the last byte.
    let ballast = fs.dir.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let small = [1u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }
    assert!(free_bytes(&fs.dir) < 64 * 1024);
    let store = Store::open(&fs.dir, config()).unwrap();
    check_readable(&store, &stored).await;
    // Deletes still work.
    store.delete(stored[..5].to_vec()).await.unwrap();
    assert_eq!(store.read(&stored[0]).await.unwrap(), None);
    // New mail is refused, not lost.
    let k = key(0, "bob", 1000);
    assert!(
        store
            .append(vec![big(&k)])
            .await
            .unwrap_err()
            .is_disk_full()
    );
    // Space back: writes resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store.append(vec![big(&k)]).await {
            Ok(()) => break,
            Err(e) if e.is_disk_full() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("writes never came back: {e:?}"),
        }
    }
    check_readable(&store, &stored[5..]).await;
    check_readable(&store, &[k]).await;
}
