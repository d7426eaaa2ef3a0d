//! The Raft state machine: committed entries applied to the registry state
//! ([`RegistryState`]), with the last applied log id and membership in `raft_meta`,
//! and snapshots (the whole registry tree) in `raft_meta` too.
//!
//! Exactly-once application without cross-tree transactions: each entry's state change
//! is written first, then its `last_applied` pointer, entry by entry. The store
//! recovers a prefix of its writes after a crash, so at most the one entry whose
//! pointer was lost is applied again on restart, and applying the same command twice in
//! a row leaves the same state (see `RegistryState::apply`). Replaying a longer suffix
//! would not be safe: a failed `SetPassword` followed by `AddUser` would change the
//! password when replayed. A snapshot install saves the snapshot before replacing the
//! state, and opening re-imports a stored snapshot newer than `last_applied`, which
//! finishes an install cut short by a crash.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use storage::KvTree;

use super::codec::{
    LAST_APPLIED_KEY, LAST_MEMBERSHIP_KEY, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY, flush, io_error,
    read_json, to_json,
};
use super::types::{Entry, LogId, RaftStorageError, SnapshotMeta, StoredMembership, TypeConfig};
use crate::state::{RegistryOutcome, RegistryState, StateEntries};

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    state: RegistryState,
    meta: KvTree,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl StateMachine {
    /// Load the applied pointers from `meta`, finishing a snapshot install that a crash
    /// cut short.
    pub(crate) async fn open(
        state: RegistryState,
        meta: KvTree,
    ) -> Result<StateMachine, RaftStorageError> {
        let last_applied: Option<LogId> =
            read_json(&meta, LAST_APPLIED_KEY, ErrorSubject::StateMachine)?;
        let last_membership: StoredMembership =
            read_json(&meta, LAST_MEMBERSHIP_KEY, ErrorSubject::StateMachine)?.unwrap_or_default();
        // An older format is upgraded in place (deterministic, so replicas agree); a
        // newer one stops the node here rather than be misread.
        state
            .migrate()
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        let mut machine = StateMachine {
            state,
            meta,
            last_applied,
            last_membership,
        };
        if let Some((snapshot_meta, data)) = read_snapshot(&machine.meta)?
            && snapshot_meta.last_log_id > machine.last_applied
        {
            tracing::info!(
                snapshot = %snapshot_meta.snapshot_id,
                "registry state older than its stored snapshot; importing the snapshot"
            );
            machine.replace_state(&snapshot_meta, &data).await?;
        }
        Ok(machine)
    }

    /// Replace the whole state with a snapshot's data and point `last_applied` at it.
    async fn replace_state(
        &mut self,
        snapshot_meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<(), RaftStorageError> {
        let subject = || ErrorSubject::Snapshot(Some(snapshot_meta.signature()));
        let entries: StateEntries =
            postcard::from_bytes(data).map_err(|e| io_error(subject(), ErrorVerb::Read, &e))?;
        self.state
            .import(entries)
            .map_err(|e| io_error(subject(), ErrorVerb::Write, &e))?;
        self.meta
            .apply(vec![
                (
                    LAST_APPLIED_KEY.to_vec(),
                    Some(to_json(&snapshot_meta.last_log_id, subject())?),
                ),
                (
                    LAST_MEMBERSHIP_KEY.to_vec(),
                    Some(to_json(&snapshot_meta.last_membership, subject())?),
                ),
            ])
            .map_err(|e| io_error(subject(), ErrorVerb::Write, &e))?;
        flush(&self.meta, subject()).await?;
        self.last_applied = snapshot_meta.last_log_id;
        self.last_membership = snapshot_meta.last_membership.clone();
        Ok(())
    }
}

/// The stored snapshot (metadata and data), if any.
fn read_snapshot(meta: &KvTree) -> Result<Option<(SnapshotMeta, Vec<u8>)>, RaftStorageError> {
    let Some(snapshot_meta) =
        read_json::<SnapshotMeta>(meta, SNAPSHOT_META_KEY, ErrorSubject::Snapshot(None))?
    else {
        return Ok(None);
    };
    let subject = || ErrorSubject::Snapshot(Some(snapshot_meta.signature()));
    let data = meta
        .get(SNAPSHOT_DATA_KEY)
        .map_err(|e| io_error(subject(), ErrorVerb::Read, &e))?
        .ok_or_else(|| {
            io_error(
                subject(),
                ErrorVerb::Read,
                &std::io::Error::other("snapshot metadata without data"),
            )
        })?;
    Ok(Some((snapshot_meta, data)))
}

/// Store a snapshot as the current one (metadata and data in one atomic batch), durably.
pub(super) async fn write_snapshot(
    meta: &KvTree,
    snapshot_meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), RaftStorageError> {
    let subject = || ErrorSubject::Snapshot(Some(snapshot_meta.signature()));
    meta.apply(vec![
        (
            SNAPSHOT_META_KEY.to_vec(),
            Some(to_json(snapshot_meta, subject())?),
        ),
        (SNAPSHOT_DATA_KEY.to_vec(), Some(data.to_vec())),
    ])
    .map_err(|e| io_error(subject(), ErrorVerb::Write, &e))?;
    flush(meta, subject()).await
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RegistryOutcome>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let subject = || ErrorSubject::Apply(log_id);
            let mut pointers = vec![(
                LAST_APPLIED_KEY.to_vec(),
                Some(to_json(&Some(log_id), subject())?),
            )];
            let outcome = match entry.payload {
                EntryPayload::Blank => RegistryOutcome::Done,
                EntryPayload::Normal(cmd) => self
                    .state
                    .apply(&cmd)
                    .map_err(|e| io_error(subject(), ErrorVerb::Write, &e))?,
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(log_id), membership);
                    pointers.push((
                        LAST_MEMBERSHIP_KEY.to_vec(),
                        Some(to_json(&self.last_membership, subject())?),
                    ));
                    RegistryOutcome::Done
                }
            };
            self.meta
                .apply(pointers)
                .map_err(|e| io_error(subject(), ErrorVerb::Write, &e))?;
            self.last_applied = Some(log_id);
            outcomes.push(outcome);
        }
        // Registry writes are rare: make an applied write durable before it is answered.
        flush(&self.meta, ErrorSubject::StateMachine).await?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Export here, inside the state machine task, so the data matches
        // `last_applied` exactly: the builder itself runs concurrently with `apply`.
        let data = self
            .state
            .export()
            .map_err(|e| e.to_string())
            .and_then(|entries| postcard::to_allocvec(&entries).map_err(|e| e.to_string()));
        SnapshotBuilder {
            meta: self.meta.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            data,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        snapshot_meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        // Saved first: if the import below is cut short, `open` redoes it.
        write_snapshot(&self.meta, snapshot_meta, &data).await?;
        self.replace_state(snapshot_meta, &data).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        Ok(read_snapshot(&self.meta)?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from data exported when it was created.
pub(crate) struct SnapshotBuilder {
    meta: KvTree,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    data: Result<Vec<u8>, String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let data = self.data.clone().map_err(|reason| {
            io_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                &std::io::Error::other(reason),
            )
        })?;
        // Unique across rebuilds at the same log id (openraft compares ids).
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{micros}", id.leader_id, id.index),
            None => format!("none-{micros}"),
        };
        let snapshot_meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        // An install may have stored a newer snapshot while this one was being built.
        let newer_stored = read_snapshot(&self.meta)?
            .is_some_and(|(stored, _)| stored.last_log_id > snapshot_meta.last_log_id);
        if !newer_stored {
            write_snapshot(&self.meta, &snapshot_meta, &data).await?;
        }
        Ok(Snapshot {
            meta: snapshot_meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
