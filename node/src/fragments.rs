//! This node's fragments as the soft-state core reads them: `softstate`'s
//! [`FragmentIndex`] over the local store (the simulator uses `MemFragments`).

use softstate::fragments::FragmentIndex;
use softstate::listing::FragmentListing;
use storage::{MessageId, StorageError, Store};

/// The local store seen as a fragment index.
pub struct StoreFragments<'a>(pub &'a Store);

impl FragmentIndex for StoreFragments<'_> {
    type Id = MessageId;
    type Error = StorageError;

    /// Users with live mail here, and users with only tombstones here: a node that
    /// recorded a delete must stay in the mail map, or a replica that missed the
    /// delete would bring the message back.
    fn users(&self, filter: &dyn Fn(u16) -> bool) -> Result<Vec<(u16, String)>, StorageError> {
        let mut all: Vec<(u16, String)> = self
            .0
            .users(filter)?
            .into_iter()
            .map(|(bucket, user, _)| (bucket, user))
            .collect();
        all.extend(
            self.0
                .tombstone_users()?
                .into_iter()
                .filter(|(bucket, _)| filter(*bucket)),
        );
        all.sort();
        all.dedup();
        Ok(all)
    }

    fn listing(&self, bucket: u16, user: &str) -> Result<FragmentListing<MessageId>, StorageError> {
        let messages = self
            .0
            .list(bucket, user)?
            .into_iter()
            .map(|m| (m.id, m.size))
            .collect();
        let tombstones = self.0.tombstones(bucket, user)?;
        Ok(FragmentListing {
            messages,
            tombstones,
        })
    }
}
