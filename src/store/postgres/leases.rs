//! Claims, leases and a run's changes on PostgreSQL: claims take turns under the
//! queue's advisory lock over candidates read `FOR UPDATE SKIP LOCKED`; every change of
//! a run locks its row and checks the caller's epoch.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::runs::{Completion, Epoch, MemoryWrite, NewActivity, Run, RunId};
use crate::store::{Claim, StoreError};

impl PgStore {
    pub(super) fn claim_now(
        &self,
        worker: &str,
        lease_for: Duration,
        now: DateTime<Utc>,
        staged: bool,
    ) -> Result<Option<Claim>, StoreError> {
        Err(StoreError::Io("not built yet: claim_now".into()))
    }

    pub(super) fn mark_running_now(&self, run: RunId, epoch: Epoch, now: DateTime<Utc>) -> Result<Run, StoreError> {
        Err(StoreError::Io("not built yet: mark_running_now".into()))
    }

    pub(super) fn heartbeat_now(
        &self,
        run: RunId,
        epoch: Epoch,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        Err(StoreError::Io("not built yet: heartbeat_now".into()))
    }

    pub(super) fn append_activity_now(
        &self,
        run: RunId,
        epoch: Epoch,
        activity: NewActivity,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Err(StoreError::Io("not built yet: append_activity_now".into()))
    }

    pub(super) fn append_log_now(
        &self,
        run: RunId,
        epoch: Epoch,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Err(StoreError::Io("not built yet: append_log_now".into()))
    }

    pub(super) fn complete_now(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Vec<MemoryWrite>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        Err(StoreError::Io("not built yet: complete_now".into()))
    }

    pub(super) fn cancel_now(&self, run: RunId, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        Err(StoreError::Io("not built yet: cancel_now".into()))
    }

    pub(super) fn release_now(
        &self,
        run: RunId,
        epoch: Epoch,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        Err(StoreError::Io("not built yet: release_now".into()))
    }

    pub(super) fn cancel_unstarted_now(
        &self,
        run: RunId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, StoreError> {
        Err(StoreError::Io("not built yet: cancel_unstarted_now".into()))
    }

    pub(super) fn approve_now(&self, run: RunId, now: DateTime<Utc>) -> Result<Run, StoreError> {
        Err(StoreError::Io("not built yet: approve_now".into()))
    }

    pub(super) fn sweep_now(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StoreError> {
        Err(StoreError::Io("not built yet: sweep_now".into()))
    }
}

/// Cancels unfinished run `id` in `tx` (its row locked here): a worker holding it is
/// fenced, its outbox end is written, a parent's unfinished children are cancelled with
/// it, and a child's parent is told (`family`). `None` when it had already finished. As
/// the embedded store's `Inner::cancel_live`.
pub(super) fn cancel_in(
    _tx: &mut super::db::Tx<'_>,
    _id: RunId,
    _reason: String,
    _now: DateTime<Utc>,
) -> Result<Option<Run>, StoreError> {
    Err(StoreError::Io("not built yet: cancel_in".into()))
}
