//! `PgStore`: the store on PostgreSQL, for several `serve` instances sharing one
//! database (docs/scaling.md). Every method is one transaction; the decisions are the
//! embedded store's (`runs::flow`, `runs::queue`, `parallel::conduct`), taken on rows
//! read under the locks that make them atomic across instances:
//! - a delivery's event row (its primary key admits one delivery, and one cron slot);
//! - a flow-control group's advisory lock, for concurrency, cooldown, coalescing and
//!   dedupe;
//! - the queue's advisory lock for claims, with candidates read `FOR UPDATE SKIP
//!   LOCKED`, and a run's row lock for every change of that run;
//! - lease epochs from one sequence, so no epoch repeats.
//!
//! Listeners (`listen.rs`) turn NOTIFYs into wake-ups and run changes; maintenance
//! (lease sweeps, retention, the outbox) is done by the instance holding its lease row.

mod batch;
pub mod cluster;
mod db;
mod family;
mod import;
mod ingest;
mod leases;
mod listen;
mod maintenance;
mod outbox;
mod reads;
mod retention;
mod rows;
mod schema;
mod shared_reads;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    Claim, Durability, IngestOutcome, LogChunk, NewRun, OutboxDue, OutboxEntry, OutboxKey, QueueStatus,
    RetentionReport, RunFilter, ScheduleState, Store, StoreError, StoredEvent,
};
use crate::config::Retention;
use crate::delivery::{Attempt, Outcome};
use crate::event::Event;
use crate::runs::{Activity, Completion, Epoch, MemoryEntry, MemoryWrite, NewActivity, Run, RunId, SkipReason};
use db::Db;
pub use import::Imported;

/// An automation's memory as read once for every caller that shared the read.
type MemoryRead = Arc<BTreeMap<String, MemoryEntry>>;

/// The store on a PostgreSQL database.
pub struct PgStore {
    db: Arc<Db>,
    /// This instance's name in maintenance leases: host, process and a random part.
    instance: String,
    run_changes: tokio::sync::broadcast::Sender<super::RunChange>,
    outbox_written: Arc<tokio::sync::Notify>,
    /// Rung when another instance queued a run, and after the listener reconnects.
    wakeups: Arc<tokio::sync::Notify>,
    /// Why the database cannot be used now, while it cannot.
    trouble: Arc<Mutex<Option<String>>>,
    listener: Option<listen::Listener>,
    /// Memory reads shared by the deliveries that ask at once.
    memory_reads: shared_reads::SharedReads<MemoryRead>,
    /// Where ingests wait to be decided in batches.
    batcher: batch::Batcher,
}

impl PgStore {
    /// Connects to the database at `url`, applies the embedded migrations and starts
    /// listening for other instances' changes.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let db = Arc::new(Db::new(url)?);
        schema::migrate(&db).map_err(|error| match error {
            StoreError::Unavailable(cause) => StoreError::Open { dir: db.shown.clone().into(), cause },
            other => other,
        })?;
        let (run_changes, _) = tokio::sync::broadcast::channel(super::RUN_CHANGES_BUFFER);
        let trouble = Arc::new(Mutex::new(None));
        let batcher = batch::Batcher::start(Arc::clone(&db), Arc::clone(&trouble))?;
        let mut store = PgStore {
            instance: instance_name(),
            run_changes,
            outbox_written: Arc::new(tokio::sync::Notify::new()),
            wakeups: Arc::new(tokio::sync::Notify::new()),
            trouble,
            listener: None,
            batcher,
            memory_reads: shared_reads::SharedReads::new(),
            db,
        };
        store.listener = Some(listen::Listener::start(&store));
        Ok(store)
    }

    /// Where the database is (without any password).
    pub fn shown(&self) -> &str {
        &self.db.shown
    }

    /// Records whether the database answered: `trouble` says why not while it does not.
    fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        note_trouble(&self.trouble, result.as_ref().err());
        result
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.stop();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("database", &self.db.shown).field("instance", &self.instance).finish()
    }
}

/// Records in `trouble` why the database cannot be used, when `error` says it is away;
/// clears it otherwise.
fn note_trouble(trouble: &Mutex<Option<String>>, error: Option<&StoreError>) {
    let mut trouble = trouble.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *trouble = match error {
        Some(StoreError::Unavailable(why)) => Some(why.clone()),
        _ => None,
    };
}

/// `url` as messages show it: any password replaced by `***`.
pub fn shown_url(url: &str) -> String {
    db::url_without_password(url)
}

fn instance_name() -> String {
    let host = nix::unistd::gethostname().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

impl Store for PgStore {
    fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn stats(&self) -> super::StoreStats {
        self.noted(self.stats_now()).unwrap_or_default()
    }

    fn reads_are_remote(&self) -> bool {
        true
    }

    fn ingest_queued(
        &self,
        event: &Event,
        runs: Vec<NewRun>,
        now: DateTime<Utc>,
    ) -> Result<(IngestOutcome, Durability), StoreError> {
        self.ingest_pending(event, runs, now).decide()
    }

    fn ingest_pending(&self, event: &Event, runs: Vec<NewRun>, now: DateTime<Utc>) -> super::PendingIngest {
        self.batcher.submit(event, runs, now)
    }

    fn claim_for(
        &self,
        worker: &str,
        lease_for: Duration,
        now: DateTime<Utc>,
        staged: bool,
    ) -> Result<Option<Claim>, StoreError> {
        self.noted(self.claim_now(worker, lease_for, now, staged))
    }

    fn mark_running(&self, run: RunId, epoch: Epoch, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.noted(self.mark_running_now(run, epoch, now))
    }

    fn heartbeat(
        &self,
        run: RunId,
        epoch: Epoch,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        self.noted(self.heartbeat_now(run, epoch, lease_for, now))
    }

    fn append_activity(
        &self,
        run: RunId,
        epoch: Epoch,
        activity: NewActivity,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.noted(self.append_activity_now(run, epoch, activity, now))
    }

    fn append_log(&self, run: RunId, epoch: Epoch, text: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.noted(self.append_log_now(run, epoch, text, now))
    }

    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Vec<MemoryWrite>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        self.noted(self.complete_now(run, epoch, completion, memory, now))
    }

    fn cancel(&self, run: RunId, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.noted(self.cancel_now(run, reason, now))
    }

    fn record_skipped_slots(
        &self,
        automation: &str,
        definition_hash: &str,
        skipped: &[(Event, SkipReason)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>, StoreError> {
        self.noted(self.record_skipped_slots_now(automation, definition_hash, skipped, now))
    }

    fn release(&self, run: RunId, epoch: Epoch, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.noted(self.release_now(run, epoch, reason, now))
    }

    fn cancel_unstarted(&self, run: RunId, reason: &str, now: DateTime<Utc>) -> Result<Option<Run>, StoreError> {
        self.noted(self.cancel_unstarted_now(run, reason, now))
    }

    fn approve(&self, run: RunId, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.noted(self.approve_now(run, now))
    }

    fn sweep_expired_leases(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StoreError> {
        self.noted(self.sweep_now(now))
    }

    fn queue_status(&self, now: DateTime<Utc>) -> Result<QueueStatus, StoreError> {
        self.noted(self.queue_status_now(now))
    }

    fn run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        self.noted(self.run_now(id))
    }

    fn children(&self, parent: RunId) -> Result<Vec<Run>, StoreError> {
        self.noted(self.children_now(parent))
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        self.noted(self.runs_now(filter))
    }

    fn activities(&self, run: RunId) -> Result<Vec<Activity>, StoreError> {
        self.noted(self.activities_now(run))
    }

    fn log(&self, run: RunId, from: u64) -> Result<Vec<LogChunk>, StoreError> {
        self.noted(self.log_now(run, from))
    }

    fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.noted(self.event_now(id))
    }

    fn history(&self, automation: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.noted(self.history_now(automation, limit))
    }

    fn memory(&self, automation: &str, now: DateTime<Utc>) -> Result<BTreeMap<String, MemoryEntry>, StoreError> {
        self.noted(self.memory_now(automation, now))
    }

    fn write_memory(&self, automation: &str, write: MemoryWrite, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.noted(self.write_memory_now(automation, write, now))
    }

    fn schedule(&self, automation: &str, trigger: &str) -> Result<Option<ScheduleState>, StoreError> {
        self.noted(self.schedule_now(automation, trigger))
    }

    fn set_schedules(&self, states: &[(&str, &str, &ScheduleState)]) -> Result<(), StoreError> {
        self.noted(self.set_schedules_now(states))
    }

    fn outbox_due(&self, now: DateTime<Utc>, limit: usize) -> Result<OutboxDue, StoreError> {
        self.noted(self.outbox_due_now(now, limit))
    }

    fn outbox(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        self.noted(self.outbox_now(run))
    }

    fn outbox_begin(&self, key: OutboxKey, now: DateTime<Utc>) -> Result<Option<(OutboxEntry, Attempt)>, StoreError> {
        self.noted(self.outbox_begin_now(key, now))
    }

    fn outbox_finish(
        &self,
        key: OutboxKey,
        outcome: &Outcome,
        now: DateTime<Utc>,
        random_unit: f64,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        self.noted(self.outbox_finish_now(key, outcome, now, random_unit))
    }

    fn thread_run(&self, thread: &str) -> Result<Option<RunId>, StoreError> {
        self.noted(self.thread_run_now(thread))
    }

    fn outbox_written(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.outbox_written)
    }

    fn run_changes(&self) -> tokio::sync::broadcast::Receiver<super::RunChange> {
        self.run_changes.subscribe()
    }

    fn apply_retention(&self, retention: &Retention, now: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
        self.noted(self.retention_now(retention, now))
    }

    fn maintains(&self, duty: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.noted(self.maintains_now(duty, now))
    }

    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.wakeups))
    }
}
