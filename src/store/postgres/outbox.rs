//! The outbox on PostgreSQL: messages written by the change that makes them, marked in
//! flight and settled each in one transaction.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::delivery::{Attempt, Outcome};
use crate::runs::RunId;
use crate::store::{OutboxDue, OutboxEntry, OutboxKey, StoreError};

impl PgStore {
    pub(super) fn outbox_due_now(&self, now: DateTime<Utc>, limit: usize) -> Result<OutboxDue, StoreError> {
        Err(StoreError::Io("not built yet: outbox_due_now".into()))
    }

    pub(super) fn outbox_now(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        Err(StoreError::Io("not built yet: outbox_now".into()))
    }

    pub(super) fn outbox_begin_now(
        &self,
        key: OutboxKey,
        now: DateTime<Utc>,
    ) -> Result<Option<(OutboxEntry, Attempt)>, StoreError> {
        Err(StoreError::Io("not built yet: outbox_begin_now".into()))
    }

    pub(super) fn outbox_finish_now(
        &self,
        key: OutboxKey,
        outcome: &Outcome,
        now: DateTime<Utc>,
        random_unit: f64,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        Err(StoreError::Io("not built yet: outbox_finish_now".into()))
    }
}
