//! The store: events, runs, activity timelines, run logs, memory and schedule state,
//! behind the `Store` trait. `SledStore` is the embedded default; only this module
//! knows sled.

mod embedded;
pub mod postgres;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Retention;
use crate::delivery::{Attempt, Outcome};
use crate::event::Event;
use crate::runs::queue::Wait;
use crate::runs::{
    Activity, Completion, Epoch, Lease, MemoryEntry, MemoryWrite, NewActivity, Run, RunId, RunState, SkipReason,
};
use crate::task::{Flow, Task};

pub use crate::runs::outbox::{Entry as OutboxEntry, EntryState as OutboxState, Key as OutboxKey};
pub use embedded::SledStore;
pub use postgres::PgStore;

/// Opens the store `serve` and the CLI use: the PostgreSQL database at `url` when one
/// is given (`--store postgres://...`, for several instances: docs/scaling.md), else the
/// embedded store in `data`.
pub fn open(data: &std::path::Path, url: Option<&str>) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        Some(url) if is_postgres_url(url) => Ok(Arc::new(PgStore::open(url)?)),
        Some(other) => Err(StoreError::Open {
            dir: postgres::shown_url(other).into(),
            cause: "a store URL starts with postgres:// or postgresql://; leave --store out for the embedded store in --data".into(),
        }),
        None => Ok(Arc::new(SledStore::open(data)?)),
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A new queued run record created by `event` (a follow-up linked to the run it
/// follows), as either backend's ingest writes it.
pub(crate) fn fresh_run(
    id: RunId,
    automation: String,
    definition_hash: String,
    task: Option<Task>,
    flow: Flow,
    event: &Event,
    now: DateTime<Utc>,
) -> Run {
    let parent = task.as_ref().and_then(|task| task.follows).map(|run| crate::parallel::ParentLink {
        run,
        role: crate::parallel::Role::FollowUp,
        index: 0,
    });
    Run::queued(id, automation, definition_hash, vec![event.id.clone()], task, flow, parent, now)
}

/// The entry a memory write stores, with its provenance: the writing run (whose
/// untrusted input taints it) or a person (`None`); `None` for a removal.
pub(crate) fn memory_entry(
    write: MemoryWrite,
    written_by: Option<&Run>,
    now: DateTime<Utc>,
) -> Option<(String, MemoryEntry)> {
    match write.change {
        crate::runs::MemoryChange::Set { value, expires_at } => Some((
            write.key,
            MemoryEntry {
                value,
                written_by: written_by.map(|run| run.id),
                written_at: now,
                untrusted: write.untrusted || written_by.is_some_and(Run::untrusted_input),
                expires_at,
            },
        )),
        crate::runs::MemoryChange::Remove => None,
    }
}

/// The data directory used when none is given: `.nightshift/` beside the automations.
pub fn default_data_dir(automations: &std::path::Path) -> PathBuf {
    let beside = automations.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    beside.join(".nightshift")
}

/// A run the rules rendered for an event, before flow control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    pub automation: String,
    pub definition_hash: String,
    pub rendered: Result<(Task, Flow), String>,
}

/// An event as stored, with the runs it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: Event,
    /// Each automation's rendered dedupe key for this event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dedupe_keys: BTreeMap<String, String>,
    /// What ingest did with it, per automation: the runs it created, joined, or was
    /// recorded as skipped by.
    pub outcomes: Vec<RunOutcome>,
}

/// How `StoredEvent` is written: the event without its derived `fields`, borrowed.
#[derive(Debug, Serialize)]
pub(crate) struct StoredEventRef<'a> {
    pub event: crate::event::EventWithoutFields<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dedupe_keys: &'a BTreeMap<String, String>,
    pub outcomes: &'a [RunOutcome],
}

/// What ingest did for one automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "disposition", rename_all = "snake_case")]
pub enum Disposition {
    /// A new run, queued.
    Created,
    /// Rendering failed: the run is recorded as failed with the error.
    RenderFailed { error: String },
    /// The event joined this pending run (same dedupe key inside its window).
    Coalesced,
    /// A skipped run was recorded; `run` is the skipped record.
    Skipped { reason: SkipReason },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub automation: String,
    pub run: RunId,
    #[serde(flatten)]
    pub disposition: Disposition,
}

/// The answer to an ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestOutcome {
    pub event_id: String,
    /// The delivery was seen before: nothing was stored, `runs` are the first time's.
    pub duplicate_delivery: bool,
    pub runs: Vec<RunOutcome>,
    /// Runs cancelled to make room (`overlap: cancel_previous`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<RunId>,
}

/// One run with everything recorded about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: Run,
    pub activities: Vec<Activity>,
    /// The run's events that are still stored, in the run's order.
    pub events: Vec<StoredEvent>,
    /// The runs linked to it (docs/parallel.md): its children when it is a parent, and
    /// the runs that followed it up, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildSummary>,
}

/// One of a parent's children, as a parent's record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSummary {
    pub id: RunId,
    pub role: crate::parallel::Role,
    pub index: u32,
    pub state: RunState,
}

impl ChildSummary {
    pub fn of(run: &Run) -> Option<ChildSummary> {
        let link = run.parent?;
        Some(ChildSummary { id: run.id, role: link.role, index: link.index, state: run.state })
    }
}

impl RunRecord {
    /// Reads run `id`, its activity timeline and its events; `None` if there is no such run.
    pub fn read(store: &dyn Store, id: RunId) -> Result<Option<RunRecord>, StoreError> {
        let Some(run) = store.run(id)? else { return Ok(None) };
        let activities = store.activities(id)?;
        let mut events = Vec::new();
        for event_id in &run.event_ids {
            events.extend(store.event(event_id)?);
        }
        let children = store.children(id)?.iter().filter_map(ChildSummary::of).collect();
        Ok(Some(RunRecord { run, activities, events, children }))
    }
}

/// A piece of a run's log, numbered from 0 in the order it was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// Masked output of the run's phases, as the worker sent it.
    pub text: String,
}

/// A granted claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub run: Run,
    pub lease: Lease,
}

/// What `/metrics` reads of a store at each scrape: counts it keeps anyway, nothing
/// decoded from disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored runs by state, every state listed (zeros too): unfinished ones counted
    /// from the index in memory, finished ones from the store's counter of them.
    pub by_state: Vec<(RunState, u64)>,
    /// Group commit's work so far, for a store that commits in groups.
    pub commits: Option<CommitCounts>,
}

/// Group commit's work since the store opened: concurrent writers share each of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Write-ahead log appends.
    pub logs: u64,
    /// Log syncs (fsync).
    pub syncs: u64,
    /// Applier passes into the database.
    pub applies: u64,
}

/// Told of every group commit's log append (and its sync, when it had one), with how
/// long it took: the store's commit latency (`metrics`).
pub trait CommitObserver: Send + Sync {
    fn committed(&self, took: Duration, synced: bool);
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub automation: Option<String>,
    pub state: Option<RunState>,
    /// At most this many, newest first; 0 means no limit.
    pub limit: usize,
    /// Only runs older than this one (ids grow with creation): the cursor of a page,
    /// the last id of the page before.
    pub before: Option<RunId>,
}

/// A run was queued, changed state or ended (`Store::run_changes`): what a live board
/// needs to update its row or fetch the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunChange {
    pub id: RunId,
    pub state: RunState,
    pub automation: String,
    pub updated_at: DateTime<Utc>,
}

/// Changes a `run_changes` receiver may fall behind by before it misses some (it is told
/// it lagged, and a board reloads).
pub const RUN_CHANGES_BUFFER: usize = 1024;

/// The runs waiting and working at one moment (`Store::queue_status`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStatus {
    /// How many stored runs each state holds, every state listed, in `RunState::ALL`'s
    /// order.
    pub counts: Vec<(RunState, u64)>,
    /// Leased and running runs, oldest first.
    pub active: Vec<Run>,
    /// Queued runs, oldest first (the order claims consider them in), each with why it
    /// waits (`runs::queue`); `None` means a worker asking now would get it, or the one
    /// before it that is also ready.
    pub queued: Vec<(Run, Option<Wait>)>,
    /// Runs whose plan waits for a person's approval, oldest first.
    pub awaiting_approval: Vec<Run>,
}

/// A cron trigger's progress, so restarts neither repeat nor forget slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The latest slot that was fired or recorded as skipped.
    pub last_slot: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The latest slot that started a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<DateTime<Utc>>,
    /// The most recent slots skipped by the misfire policy (at most `RECENT_SKIPS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<DateTime<Utc>>,
    /// Every slot ever skipped, counted.
    #[serde(default)]
    pub skipped_total: u64,
}

impl ScheduleState {
    /// How many skipped slots are kept by time.
    pub const RECENT_SKIPS: usize = 20;
}

/// The outbox messages whose turn has come, and when to look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxDue {
    /// Pending, due, and not waiting for another message of their run; soonest due first.
    pub entries: Vec<OutboxEntry>,
    /// When the next pending message not in `entries` is due (or stops waiting for
    /// others); `None` when no other is pending. A message written or settled later
    /// rings `Store::outbox_written` instead.
    pub next_at: Option<DateTime<Utc>>,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub runs: usize,
    pub events: usize,
    pub activities: usize,
    /// The deleted runs' log chunks (0 when absent, in answers from servers that
    /// predate run logs).
    #[serde(default)]
    pub log_chunks: usize,
    pub memory_entries: usize,
    pub dedupe_marks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {dir}: {cause}")]
    Open { dir: PathBuf, cause: String },
    #[error(
        "the store in {dir} is in use by another nightshift process (e.g. `nightshift serve`); \
         stop that process, or point --data at another directory"
    )]
    Locked { dir: PathBuf },
    #[error("the store is damaged: {what}: {cause}")]
    Corrupt { what: String, cause: String },
    #[error("store I/O failed: {0}")]
    Io(String),
    /// The database cannot be reached (a networked backend): retried until it can.
    #[error("{0}")]
    Unavailable(String),
    #[error("no run {0}")]
    NoSuchRun(RunId),
    #[error("{run}'s lease epoch is {current}, not {presented}: this worker no longer holds the run")]
    StaleLease { run: RunId, presented: Epoch, current: Epoch },
    #[error("{run} is {state}, so it cannot be {action}")]
    WrongState { run: RunId, state: RunState, action: &'static str },
}

/// A queued write's way to disk: `wait` blocks the thread, `.await` suspends the task.
/// Async callers (the server) must not hold a thread per request while a flush runs.
#[must_use = "the write is not durable until this resolves"]
pub struct Durability(Option<Box<dyn PendingWrite>>);

/// How a backend reports that a queued write reached the disk.
pub trait PendingWrite: Send + Sync {
    fn wait(&self) -> Result<(), StoreError>;
    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), StoreError>>;
}

impl Durability {
    /// A write that is already on disk.
    pub fn done() -> Durability {
        Durability(None)
    }

    pub fn pending(write: Box<dyn PendingWrite>) -> Durability {
        Durability(Some(write))
    }

    pub fn wait(self) -> Result<(), StoreError> {
        self.0.map_or(Ok(()), |write| write.wait())
    }
}

impl std::future::Future for Durability {
    type Output = Result<(), StoreError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match &self.0 {
            Some(write) => write.poll(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// An ingest whose outcome may still be on its way: decided at once by a backend that
/// decides on the caller's thread (its write may still be syncing), or later by one
/// that decides many deliveries in one transaction. `wait` blocks the thread, `.await`
/// suspends the task.
#[must_use = "the ingest is not stored until this resolves"]
pub struct PendingIngest(Pending);

enum Pending {
    Decided(Option<Result<IngestOutcome, StoreError>>, Durability),
    Later(Box<dyn PendingOutcome>),
}

/// How a backend that decides later reports the outcome, once it is committed.
pub trait PendingOutcome: Send + Sync {
    fn wait(&self) -> Result<IngestOutcome, StoreError>;
    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<IngestOutcome, StoreError>>;
}

impl PendingIngest {
    /// An outcome already decided, stored once `durability` resolves.
    pub fn decided(outcome: Result<(IngestOutcome, Durability), StoreError>) -> PendingIngest {
        PendingIngest(match outcome {
            Ok((outcome, durability)) => Pending::Decided(Some(Ok(outcome)), durability),
            Err(error) => Pending::Decided(Some(Err(error)), Durability::done()),
        })
    }

    pub fn later(outcome: Box<dyn PendingOutcome>) -> PendingIngest {
        PendingIngest(Pending::Later(outcome))
    }

    /// Blocks until the outcome is decided; returns it with the write still to await.
    pub fn decide(self) -> Result<(IngestOutcome, Durability), StoreError> {
        match self.0 {
            Pending::Decided(outcome, durability) => {
                Ok((outcome.expect("a pending ingest resolves once")?, durability))
            }
            Pending::Later(pending) => Ok((pending.wait()?, Durability::done())),
        }
    }

    pub fn wait(self) -> Result<IngestOutcome, StoreError> {
        let (outcome, durability) = self.decide()?;
        durability.wait()?;
        Ok(outcome)
    }
}

impl std::future::Future for PendingIngest {
    type Output = Result<IngestOutcome, StoreError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match &mut self.0 {
            Pending::Decided(outcome, durability) => {
                if matches!(outcome, Some(Ok(_))) {
                    match std::pin::Pin::new(durability).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Ready(Ok(())) => {}
                    }
                }
                Poll::Ready(outcome.take().expect("a pending ingest resolves once"))
            }
            Pending::Later(pending) => pending.poll(cx),
        }
    }
}

impl std::fmt::Debug for PendingIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            Pending::Decided(..) => "PendingIngest(decided)",
            Pending::Later(_) => "PendingIngest(later)",
        })
    }
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Durability(pending)" } else { "Durability(done)" })
    }
}

/// Everything nightshift keeps. Every method is atomic; every method that changes state
/// returns only once the change is on disk, except `claim` and `heartbeat`, whose loss
/// in a crash only re-queues the run (epochs stay unique across restarts), and
/// `append_log`, whose loss only shortens the log of a run that did not complete.
pub trait Store: Send + Sync {
    /// Why the store cannot take changes now (its disk is full, say), or `None`. Every
    /// change is refused with `StoreError::Io` while this says why; a backend that
    /// recovers by itself (the embedded one, once its log can be written again) clears
    /// it.
    fn trouble(&self) -> Option<String> {
        None
    }

    /// Counts for `/metrics`, cheap enough for every scrape (`StoreStats`).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Whether a read waits on a round trip to another process (a database server):
    /// a hook then reads its automation's memory before its turn at the rules, not
    /// during it.
    fn reads_are_remote(&self) -> bool {
        false
    }

    /// Has `observer` told of every commit from now on; a store that does not commit in
    /// groups tells it nothing.
    fn observe_commits(&self, _observer: Arc<dyn CommitObserver>) {}

    /// Stores `event` and the runs the rules rendered for it, applying dedupe,
    /// coalescing, cooldown and overlap, and returns once they are on disk. A delivery
    /// seen before stores nothing and returns the first outcome.
    fn ingest(&self, event: &Event, runs: Vec<NewRun>, now: DateTime<Utc>) -> Result<IngestOutcome, StoreError> {
        let (outcome, durability) = self.ingest_queued(event, runs, now)?;
        durability.wait()?;
        Ok(outcome)
    }

    /// `ingest` that returns as soon as the outcome is decided; the answer may be given
    /// once the `Durability` resolves.
    fn ingest_queued(
        &self,
        event: &Event,
        runs: Vec<NewRun>,
        now: DateTime<Utc>,
    ) -> Result<(IngestOutcome, Durability), StoreError>;

    /// `ingest` that returns at once, before the outcome may be decided: the caller's
    /// thread (a rule evaluation thread) is free for the next delivery while the backend
    /// decides and commits.
    fn ingest_pending(&self, event: &Event, runs: Vec<NewRun>, now: DateTime<Utc>) -> PendingIngest {
        PendingIngest::decided(self.ingest_queued(event, runs, now))
    }

    /// Leases the oldest queued run whose group has room, whose retry wait is over, and
    /// whose branch and `paths` are those of no leased or running run of its repository
    /// (the same branch, or `paths` that overlap: `runs::scope`).
    /// Runs whose `task.staging` is not plain (parallel work, docs/parallel.md) are
    /// offered too: the claimant is a local worker.
    fn claim(&self, worker: &str, lease_for: Duration, now: DateTime<Utc>) -> Result<Option<Claim>, StoreError> {
        self.claim_for(worker, lease_for, now, true)
    }
    /// `claim`, offering runs with staging only when `staged`: a remote worker's mirror
    /// lacks the held commits they start from, so it is offered plain runs alone.
    fn claim_for(
        &self,
        worker: &str,
        lease_for: Duration,
        now: DateTime<Utc>,
        staged: bool,
    ) -> Result<Option<Claim>, StoreError>;
    /// The leased run's workspace is ready and its agent is starting.
    fn mark_running(&self, run: RunId, epoch: Epoch, now: DateTime<Utc>) -> Result<Run, StoreError>;
    /// Extends the lease; fails with `StaleLease` or `WrongState` (e.g. cancelled).
    fn heartbeat(
        &self,
        run: RunId,
        epoch: Epoch,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError>;
    /// Appends to the timeline of a run the caller holds.
    fn append_activity(
        &self,
        run: RunId,
        epoch: Epoch,
        activity: NewActivity,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Appends to the log of a run the caller holds (same lease/epoch check as
    /// `append_activity`: `StaleLease`, `WrongState`, `NoSuchRun`). Like a heartbeat, it
    /// is queued, not waited for on disk: the run's completion, which is durable, comes
    /// after it. Returns the chunk's sequence number.
    fn append_log(&self, run: RunId, epoch: Epoch, text: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Ends an attempt. Memory writes are stored in the same atomic step, with the run
    /// as their provenance. A retryable failure re-queues with backoff while attempts
    /// remain.
    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Vec<MemoryWrite>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError>;
    /// Cancels a run in any unfinished state; a parent's unfinished children are
    /// cancelled with it, in the same step.
    fn cancel(&self, run: RunId, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError>;
    /// Records cron slots a misfire policy skipped: each slot's event (unless stored
    /// before) with a `skipped` run giving the reason, durably.
    fn record_skipped_slots(
        &self,
        automation: &str,
        definition_hash: &str,
        skipped: &[(Event, SkipReason)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>, StoreError>;
    /// Gives back a run its worker holds but will not finish (the worker is stopping): it
    /// is queued again at once, and the attempt does not count against `retry.attempts`.
    fn release(&self, run: RunId, epoch: Epoch, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError>;
    /// Cancels a run only if no worker has started it (it is queued, waiting for a
    /// retry, or awaiting approval); `None` when it has started or ended, which is left
    /// alone. A run cancelled this way never did its work, so it gives up the dedupe key
    /// it holds: the next event with that key makes a run of its own.
    fn cancel_unstarted(&self, run: RunId, reason: &str, now: DateTime<Utc>) -> Result<Option<Run>, StoreError>;
    /// Lets a run waiting for approval continue.
    fn approve(&self, run: RunId, now: DateTime<Utc>) -> Result<Run, StoreError>;
    /// Re-queues runs whose lease expired (with a new epoch on the next claim), or fails
    /// them once their attempts are used up. Returns the runs it touched.
    fn sweep_expired_leases(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StoreError>;

    /// Counts by state and the unfinished runs, queued ones with why they wait, without
    /// reading finished runs: answered from memory.
    fn queue_status(&self, now: DateTime<Utc>) -> Result<QueueStatus, StoreError>;

    fn run(&self, id: RunId) -> Result<Option<Run>, StoreError>;
    /// The runs linked to `parent` (attempts, rounds, children, judge and join, which
    /// are part of it, and follow-ups, which are not), oldest first, from the index
    /// written with each child.
    fn children(&self, parent: RunId) -> Result<Vec<Run>, StoreError>;
    /// Runs, newest first.
    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError>;
    fn activities(&self, run: RunId) -> Result<Vec<Activity>, StoreError>;
    /// The run's log chunks with `seq >= from`, in order (empty for a run with no log;
    /// `NoSuchRun` if the run does not exist).
    fn log(&self, run: RunId, from: u64) -> Result<Vec<LogChunk>, StoreError>;
    fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError>;
    /// The last `limit` finished runs of an automation (not skipped ones), newest first.
    fn history(&self, automation: &str, limit: usize) -> Result<Vec<Run>, StoreError>;

    /// Live (unexpired) memory of an automation.
    fn memory(&self, automation: &str, now: DateTime<Utc>) -> Result<BTreeMap<String, MemoryEntry>, StoreError>;
    /// A person's change to memory (`nightshift memory set|rm`).
    fn write_memory(&self, automation: &str, write: MemoryWrite, now: DateTime<Utc>) -> Result<(), StoreError>;

    fn schedule(&self, automation: &str, trigger: &str) -> Result<Option<ScheduleState>, StoreError>;
    /// Records a cron trigger's progress. Like a claim, it is not waited for on disk:
    /// the slot's event is stored first, so a lost update only re-fires a slot that
    /// then counts as a duplicate delivery.
    fn set_schedule(&self, automation: &str, trigger: &str, state: &ScheduleState) -> Result<(), StoreError> {
        self.set_schedules(&[(automation, trigger, state)])
    }
    /// `set_schedule` for many triggers in one step (a scheduler starting with
    /// thousands of new triggers).
    fn set_schedules(&self, states: &[(&str, &str, &ScheduleState)]) -> Result<(), StoreError>;

    /// The outbox messages to send at `now`, at most `limit` (`runs::outbox` decides the
    /// order). Answered from memory: the store keeps every unsettled message there.
    fn outbox_due(&self, now: DateTime<Utc>, limit: usize) -> Result<OutboxDue, StoreError>;
    /// Every outbox message of run `run`, in key order (the start and end of each target).
    fn outbox(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Marks a pending message in flight, durably, before the sender sends it, and
    /// returns it with the attempt to make; `None` if it is not pending (settled,
    /// deleted, or in flight already). An attempt of a message found in flight at open is
    /// `unsure`: it may have reached the target.
    fn outbox_begin(&self, key: OutboxKey, now: DateTime<Utc>) -> Result<Option<(OutboxEntry, Attempt)>, StoreError>;
    /// Records how an attempt went, in one step: the message's state (sent, failed, or
    /// pending again at its next time, `runs::outbox::settle` with `random_unit` as the
    /// jitter), a `notify` activity on the run, and for a pull request's end that was
    /// sent, its link on the run (`result.details.pull_request`). `None` if the message
    /// is no longer in flight.
    fn outbox_finish(
        &self,
        key: OutboxKey,
        outcome: &Outcome,
        now: DateTime<Utc>,
        random_unit: f64,
    ) -> Result<Option<OutboxEntry>, StoreError>;
    /// The newest run that told thread `thread` (a key `runs::followup` makes: a Slack
    /// thread, a pull request or issue): written with a run whose targets name it, and
    /// when a start posted in a channel or an opened pull request starts one. `None` if
    /// no run did.
    fn thread_run(&self, thread: &str) -> Result<Option<RunId>, StoreError>;
    /// Rung after a change wrote outbox messages or settled one: the sender's wakeup.
    fn outbox_written(&self) -> Arc<tokio::sync::Notify>;
    /// Every run written (queued, changed, ended), once its change is queued for the
    /// disk. Sending never waits: a receiver that falls `RUN_CHANGES_BUFFER` behind is
    /// told it lagged.
    fn run_changes(&self) -> tokio::sync::broadcast::Receiver<RunChange>;

    /// Deletes finished runs beyond `retention` with their activities, logs, outbox
    /// messages and events, and expired memory and dedupe marks.
    fn apply_retention(&self, retention: &Retention, now: DateTime<Utc>) -> Result<RetentionReport, StoreError>;
    /// Whether this instance does maintenance `duty` (`DUTY_*`) now. Several instances
    /// may share a database: one does each duty at a time, and another takes it over
    /// when that one dies. A store only one process opens always does.
    fn maintains(&self, _duty: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Rung when another instance queued a run, or when runs may have been queued unseen
    /// (the store reconnected): local workers should look. `None` for a store only one
    /// process opens, whose server rings its workers itself.
    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// One stored record, as `nightshift migrate-store` carries it from one backend to
/// another (`SledStore::export`, `PgStore::import`).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(StoredEvent),
    Run(Box<Run>),
    Activity(RunId, Activity),
    Log(RunId, LogChunk),
    Memory {
        automation: String,
        key: String,
        entry: MemoryEntry,
    },
    Schedule {
        automation: String,
        trigger: String,
        state: ScheduleState,
    },
    Outbox(OutboxEntry),
    Thread {
        thread: String,
        run: RunId,
    },
    /// Who holds an automation's dedupe key, until when.
    Dedupe {
        automation: String,
        key: String,
        run: RunId,
        expires_at: DateTime<Utc>,
    },
    /// The latest run created in a flow-control group, and when its cooldown ends.
    Cooldown {
        group: String,
        run: RunId,
        at: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

/// The maintenance duties `Store::maintains` gives out.
pub const DUTY_LEASES: &str = "lease sweep";
pub const DUTY_RETENTION: &str = "retention";
pub const DUTY_OUTBOX: &str = "outbox";
