//! Reads on PostgreSQL: runs, timelines, logs, events, memory and the queue as it
//! stands; and a person's memory writes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::runs::{Activity, MemoryEntry, MemoryWrite, Run, RunId};
use crate::store::{LogChunk, QueueStatus, RunFilter, StoreError, StoredEvent};

impl PgStore {
    pub(super) fn stats_now(&self) -> Result<crate::store::StoreStats, StoreError> {
        Err(StoreError::Io("not built yet: stats_now".into()))
    }

    pub(super) fn queue_status_now(&self, now: DateTime<Utc>) -> Result<QueueStatus, StoreError> {
        Err(StoreError::Io("not built yet: queue_status_now".into()))
    }

    pub(super) fn run_now(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        Err(StoreError::Io("not built yet: run_now".into()))
    }

    pub(super) fn children_now(&self, parent: RunId) -> Result<Vec<Run>, StoreError> {
        Err(StoreError::Io("not built yet: children_now".into()))
    }

    pub(super) fn runs_now(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        Err(StoreError::Io("not built yet: runs_now".into()))
    }

    pub(super) fn activities_now(&self, run: RunId) -> Result<Vec<Activity>, StoreError> {
        Err(StoreError::Io("not built yet: activities_now".into()))
    }

    pub(super) fn log_now(&self, run: RunId, from: u64) -> Result<Vec<LogChunk>, StoreError> {
        Err(StoreError::Io("not built yet: log_now".into()))
    }

    pub(super) fn event_now(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        Err(StoreError::Io("not built yet: event_now".into()))
    }

    pub(super) fn history_now(&self, automation: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        Err(StoreError::Io("not built yet: history_now".into()))
    }

    pub(super) fn memory_now(
        &self,
        automation: &str,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, MemoryEntry>, StoreError> {
        Err(StoreError::Io("not built yet: memory_now".into()))
    }

    pub(super) fn write_memory_now(
        &self,
        automation: &str,
        write: MemoryWrite,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Io("not built yet: write_memory_now".into()))
    }

    pub(super) fn thread_run_now(&self, thread: &str) -> Result<Option<RunId>, StoreError> {
        Err(StoreError::Io("not built yet: thread_run_now".into()))
    }
}
