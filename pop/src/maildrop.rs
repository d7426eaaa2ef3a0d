//! TRANSACTION-state bookkeeping over one open [`MailboxSession`]: message numbers,
//! the session's delete marks, and what STAT/LIST/UIDL see. No I/O of its own
//! except passing `fetch` and `commit` through.

use bytes::Bytes;

use crate::command::MessageNumber;
use crate::mailbox::{MailboxError, MailboxSession, MessageEntry};

/// Why a message number cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// No message has this number, or it is marked deleted.
    NoSuchMessage,
    /// DELE of a message already marked deleted in this session.
    AlreadyDeleted,
}

/// An open maildrop plus the delete marks of this POP3 session.
pub struct Maildrop<S> {
    session: S,
    deleted: Vec<bool>,
}

impl<S: MailboxSession> Maildrop<S> {
    /// Wrap a freshly opened mailbox session; nothing is marked deleted.
    pub fn new(session: S) -> Self {
        let deleted = vec![false; session.messages().len()];
        Maildrop { session, deleted }
    }

    /// The 0-based index of visible message `number`.
    pub fn index(&self, number: MessageNumber) -> Result<usize, Unusable> {
        let index = number.checked_sub(1).ok_or(Unusable::NoSuchMessage)?;
        match self.deleted.get(index) {
            Some(false) => Ok(index),
            _ => Err(Unusable::NoSuchMessage),
        }
    }

    /// The entry of visible message `number`.
    pub fn entry(&self, number: MessageNumber) -> Result<&MessageEntry, Unusable> {
        let index = self.index(number)?;
        Ok(&self.session.messages()[index])
    }

    /// Visible messages with their numbers, in order.
    pub fn visible(&self) -> impl Iterator<Item = (MessageNumber, &MessageEntry)> {
        self.session
            .messages()
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, deleted))| !**deleted)
            .map(|(index, (entry, _))| (index + 1, entry))
    }

    /// Count and total size in bytes of the visible messages (STAT).
    pub fn stat(&self) -> (usize, u64) {
        self.visible()
            .fold((0, 0), |(count, size_bytes), (_, entry)| {
                (count + 1, size_bytes.saturating_add(entry.size))
            })
    }

    /// Mark message `number` deleted (DELE).
    pub fn delete(&mut self, number: MessageNumber) -> Result<(), Unusable> {
        let index = number.checked_sub(1).ok_or(Unusable::NoSuchMessage)?;
        match self.deleted.get_mut(index) {
            Some(mark @ false) => {
                *mark = true;
                Ok(())
            }
            Some(true) => Err(Unusable::AlreadyDeleted),
            None => Err(Unusable::NoSuchMessage),
        }
    }

    /// Clear every delete mark (RSET).
    pub fn reset(&mut self) {
        self.deleted.fill(false);
    }

    /// The stored bytes of visible message `number`.
    pub async fn fetch(&mut self, number: MessageNumber) -> Result<Bytes, MailboxError> {
        let index = self
            .index(number)
            .map_err(|_| MailboxError::NoSuchMessage)?;
        self.session.fetch(index).await
    }

    /// UPDATE state: remove the marked messages and release the maildrop.
    /// Returns how many were removed.
    pub async fn commit(self) -> Result<usize, MailboxError> {
        let marked: Vec<usize> = self
            .deleted
            .iter()
            .enumerate()
            .filter(|(_, deleted)| **deleted)
            .map(|(index, _)| index)
            .collect();
        let count = marked.len();
        self.session.commit(marked).await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Fake {
        messages: Vec<MessageEntry>,
        committed: Committed,
    }

    impl MailboxSession for Fake {
        fn messages(&self) -> &[MessageEntry] {
            &self.messages
        }
        async fn fetch(&mut self, index: usize) -> Result<Bytes, MailboxError> {
            Ok(Bytes::from(format!("message {index}")))
        }
        async fn commit(self, deleted: Vec<usize>) -> Result<(), MailboxError> {
            *self.committed.lock().unwrap() = Some(deleted);
            Ok(())
        }
    }

    /// What the fake saw committed, if anything.
    type Committed = Arc<Mutex<Option<Vec<usize>>>>;

    fn drop_of(sizes: &[u64]) -> (Maildrop<Fake>, Committed) {
        let committed = Arc::new(Mutex::new(None));
        let messages = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| MessageEntry {
                uid: format!("u{i}"),
                size,
            })
            .collect();
        let fake = Fake {
            messages,
            committed: committed.clone(),
        };
        (Maildrop::new(fake), committed)
    }

    #[test]
    fn numbers_are_one_based_and_bounded() {
        let (drop, _) = drop_of(&[10, 20]);
        assert_eq!(drop.index(0), Err(Unusable::NoSuchMessage));
        assert_eq!(drop.index(1), Ok(0));
        assert_eq!(drop.index(2), Ok(1));
        assert_eq!(drop.index(3), Err(Unusable::NoSuchMessage));
        assert_eq!(drop.index(usize::MAX), Err(Unusable::NoSuchMessage));
        assert_eq!(drop.entry(2).unwrap().uid, "u1");
    }

    #[test]
    fn delete_hides_and_reset_restores() {
        let (mut drop, _) = drop_of(&[10, 20, 30]);
        assert_eq!(drop.stat(), (3, 60));
        drop.delete(2).unwrap();
        assert_eq!(drop.delete(2), Err(Unusable::AlreadyDeleted));
        assert_eq!(drop.delete(4), Err(Unusable::NoSuchMessage));
        assert_eq!(drop.delete(0), Err(Unusable::NoSuchMessage));
        assert_eq!(drop.stat(), (2, 40));
        assert_eq!(drop.index(2), Err(Unusable::NoSuchMessage));
        let numbers: Vec<_> = drop.visible().map(|(n, e)| (n, e.size)).collect();
        assert_eq!(numbers, vec![(1, 10), (3, 30)]);
        drop.reset();
        assert_eq!(drop.stat(), (3, 60));
        assert_eq!(drop.index(2), Ok(1));
    }

    #[tokio::test]
    async fn fetch_refuses_deleted_and_commit_passes_marks() {
        let (mut drop, committed) = drop_of(&[1, 2, 3]);
        assert_eq!(&drop.fetch(3).await.unwrap()[..], b"message 2");
        drop.delete(1).unwrap();
        drop.delete(3).unwrap();
        assert!(matches!(
            drop.fetch(1).await,
            Err(MailboxError::NoSuchMessage)
        ));
        assert_eq!(drop.commit().await.unwrap(), 2);
        assert_eq!(*committed.lock().unwrap(), Some(vec![0, 2]));
    }
}
