//! [`KvTree`]: a small ordered key-value tree for the node's own records (account
//! registry, raft log, node identity), kept in the same sled database as the
//! message index.

use std::sync::Arc;

use crate::StorageError;
use crate::index::IndexDb;

/// A small ordered key-value tree (sled inside) for the node's own records.
///
/// Writes are visible at once and survive a process crash after [`KvTree::flush`].
#[derive(Clone)]
pub struct KvTree {
    name: String,
    tree: sled::Tree,
    db: Arc<IndexDb>,
}

impl std::fmt::Debug for KvTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvTree")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One (key, value) entry of a [`KvTree`].
pub type KvEntry = (Vec<u8>, Vec<u8>);

type Entries = Vec<KvEntry>;

impl KvTree {
    /// Open (or create) the tree called `name`.
    pub(crate) fn open(db: Arc<IndexDb>, name: &str) -> Result<KvTree, StorageError> {
        let tree = db.tree(&format!("kv/{name}"))?;
        Ok(KvTree {
            name: name.to_owned(),
            tree,
            db,
        })
    }

    /// The name this tree was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, action: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
        StorageError::index(&format!("kv/{}", self.name), action)
    }

    fn collect(&self, iter: sled::Iter, action: &'static str) -> Result<Entries, StorageError> {
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(self.err(action))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree
            .get(key)
            .map_err(self.err("get"))?
            .map(|v| v.to_vec()))
    }

    /// Store `value` under `key`, replacing any old value.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.tree.insert(key, value).map_err(self.err("insert"))?;
        Ok(())
    }

    /// Remove `key` (no error if absent).
    pub fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        self.tree.remove(key).map_err(self.err("remove"))?;
        Ok(())
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StorageError> {
        self.collect(self.tree.scan_prefix(prefix), "scan prefix")
    }

    /// Every entry with `from <= key < to_exclusive`, in key order (empty if
    /// `from >= to_exclusive`).
    pub fn range(&self, from: &[u8], to_exclusive: &[u8]) -> Result<Entries, StorageError> {
        if from >= to_exclusive {
            return Ok(Vec::new());
        }
        self.collect(self.tree.range(from..to_exclusive), "scan range")
    }

    /// The entry with the greatest key.
    pub fn last(&self) -> Result<Option<KvEntry>, StorageError> {
        Ok(self
            .tree
            .last()
            .map_err(self.err("read last entry"))?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    /// Remove every entry with `from <= key < to_exclusive`, atomically.
    pub fn remove_range(&self, from: &[u8], to_exclusive: &[u8]) -> Result<(), StorageError> {
        if from >= to_exclusive {
            return Ok(());
        }
        self.remove_all(self.tree.range(from..to_exclusive), "remove range")
    }

    /// Remove every entry, atomically.
    pub fn clear(&self) -> Result<(), StorageError> {
        self.remove_all(self.tree.iter(), "clear")
    }

    fn remove_all(&self, iter: sled::Iter, action: &'static str) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in iter.keys() {
            batch.remove(key.map_err(self.err(action))?);
        }
        self.tree.apply_batch(batch).map_err(self.err(action))
    }

    /// Insert (`Some(value)`) or remove (`None`) several entries atomically, in
    /// order (a later entry for the same key wins).
    pub fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StorageError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.tree
            .apply_batch(sled_batch)
            .map_err(self.err("apply batch"))
    }

    /// Make every change so far (in every tree of this node) survive a process
    /// crash: a sled flush, followed by an `fdatasync` of sled's log file, which also
    /// covers a power loss on a disk that honours it.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.durable_flush())
            .await
            .map_err(|e| StorageError::Task {
                action: "flush index",
                reason: e.to_string(),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &tempfile::TempDir, name: &str) -> KvTree {
        let db = IndexDb::open(&dir.path().join("index")).unwrap();
        KvTree::open(db, name).unwrap()
    }

    #[test]
    fn basic_operations() {
        let dir = tempfile::tempdir().unwrap();
        let t = tree(&dir, "registry");
        assert_eq!(t.name(), "registry");
        assert_eq!(t.get(b"a").unwrap(), None);
        assert_eq!(t.last().unwrap(), None);
        for k in [b"a1", b"a2", b"b1", b"b2", b"c1"] {
            t.insert(k, &k[..1]).unwrap();
        }
        assert_eq!(t.get(b"b1").unwrap(), Some(b"b".to_vec()));
        let keys = |entries: Entries| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(t.scan_prefix(b"b").unwrap()),
            vec![b"b1".to_vec(), b"b2".to_vec()]
        );
        assert_eq!(
            keys(t.range(b"a2", b"b2").unwrap()),
            vec![b"a2".to_vec(), b"b1".to_vec()]
        );
        assert!(t.range(b"b", b"a").unwrap().is_empty());
        assert_eq!(t.last().unwrap(), Some((b"c1".to_vec(), b"c".to_vec())));
        t.remove_range(b"a2", b"b2").unwrap();
        assert_eq!(
            keys(t.scan_prefix(b"").unwrap()),
            vec![b"a1".to_vec(), b"b2".to_vec(), b"c1".to_vec()]
        );
        t.remove(b"c1").unwrap();
        t.remove(b"never").unwrap();
        assert_eq!(t.last().unwrap().map(|(k, _)| k), Some(b"b2".to_vec()));
        t.apply(vec![
            (b"x".to_vec(), Some(b"1".to_vec())),
            (b"a1".to_vec(), None),
            (b"x".to_vec(), Some(b"2".to_vec())),
        ])
        .unwrap();
        assert_eq!(t.get(b"x").unwrap(), Some(b"2".to_vec()));
        assert_eq!(t.get(b"a1").unwrap(), None);
        t.clear().unwrap();
        assert!(t.scan_prefix(b"").unwrap().is_empty());
    }

    #[test]
    fn trees_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(&dir.path().join("index")).unwrap();
        let a = KvTree::open(db.clone(), "a").unwrap();
        let b = KvTree::open(db.clone(), "b").unwrap();
        a.insert(b"k", b"from a").unwrap();
        assert_eq!(b.get(b"k").unwrap(), None);
        // A kv tree named like an internal index tree does not see the index.
        db.tree("messages").unwrap().insert(b"k", b"index").unwrap();
        let messages = KvTree::open(db, "messages").unwrap();
        assert_eq!(messages.get(b"k").unwrap(), None);
        assert_eq!(a.get(b"k").unwrap(), Some(b"from a".to_vec()));
    }
}
