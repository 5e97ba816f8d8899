//! Ingest on PostgreSQL: a delivery's event row admits it once; flow control is decided
//! under its group's advisory lock on the group's unfinished runs, as the embedded store
//! decides it on its index; cron progress.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::event::Event;
use crate::runs::{RunId, SkipReason};
use crate::store::{IngestOutcome, NewRun, ScheduleState, StoreError};

impl PgStore {
    pub(super) fn ingest_now(
        &self,
        event: &Event,
        runs: Vec<NewRun>,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        Err(StoreError::Io("not built yet: ingest_now".into()))
    }

    pub(super) fn record_skipped_slots_now(
        &self,
        automation: &str,
        definition_hash: &str,
        skipped: &[(Event, SkipReason)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>, StoreError> {
        Err(StoreError::Io("not built yet: record_skipped_slots_now".into()))
    }

    pub(super) fn schedule_now(&self, automation: &str, trigger: &str) -> Result<Option<ScheduleState>, StoreError> {
        Err(StoreError::Io("not built yet: schedule_now".into()))
    }

    pub(super) fn set_schedules_now(&self, states: &[(&str, &str, &ScheduleState)]) -> Result<(), StoreError> {
        Err(StoreError::Io("not built yet: set_schedules_now".into()))
    }
}
