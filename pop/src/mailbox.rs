//! The maildrop the session reads and deletes from; the `node` crate implements it
//! on top of the cluster (merged fragment listings, tombstones on commit).

use std::future::Future;

/// One message as the maildrop lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEntry {
    /// Stable unique id of the message, shown by UIDL (1 to 70 printable ASCII
    /// characters, 0x21 to 0x7E, per RFC 1939).
    pub uid: String,
    /// Exact stored size in bytes, shown by STAT, LIST and RETR.
    pub size: u64,
}

/// Why a maildrop operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// Another session holds this maildrop's lock; answered `-ERR [IN-USE] ...`.
    #[error("mailbox in use")]
    InUse,
    /// The maildrop cannot be reached now; answered `-ERR [SYS/TEMP] ...`.
    #[error("temporary failure: {0}")]
    TempFail(String),
    /// The message vanished between listing and fetching; answered
    /// `-ERR no such message`.
    #[error("no such message")]
    NoSuchMessage,
}

/// Opens maildrops.
pub trait Mailbox: Send + Sync + 'static {
    /// One open, locked maildrop.
    type Session: MailboxSession;
    /// Lock and open `user`'s maildrop (exclusive); the lock is held until the session is
    /// committed or dropped.
    fn open(&self, user: &str) -> impl Future<Output = Result<Self::Session, MailboxError>> + Send;
}

/// One open maildrop, locked for one POP3 session.
///
/// Implementors: dropping a `MailboxSession` without calling [`commit`](Self::commit)
/// MUST release the lock and delete nothing. The POP3 session drops it when the client
/// disconnects, times out, is shut down, or leaves without `QUIT`.
pub trait MailboxSession: Send + 'static {
    /// The messages in the maildrop as of open, in order (message number = index + 1).
    fn messages(&self) -> &[MessageEntry];
    /// The exact stored bytes of message `index` (0-based).
    fn fetch(
        &mut self,
        index: usize,
    ) -> impl Future<Output = Result<bytes::Bytes, MailboxError>> + Send;
    /// UPDATE state: remove these messages (0-based indexes) durably, then release the lock.
    ///
    /// Called on `QUIT` in TRANSACTION state, with an empty list when nothing was
    /// deleted. On error the session tells the client nothing was deleted, so an
    /// implementation should delete all or none.
    fn commit(self, deleted: Vec<usize>) -> impl Future<Output = Result<(), MailboxError>> + Send;
}
