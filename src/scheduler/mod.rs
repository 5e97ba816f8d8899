//! The cron scheduler: fires every cron trigger of the current catalog at its slots.
//!
//! One task keeps the next slot of every trigger in a heap and sleeps until the earliest,
//! so a slot fires within milliseconds and an idle engine does no work between slots.
//! At start, and whenever the catalog is reloaded, each trigger's stored progress
//! (`ScheduleState`) is compared with the clock: slots missed while the engine was down
//! go through the trigger's misfire policy (`plan`). A slot's event id is
//! `cron:{automation}:{slot}`, and its event is stored before the progress is, so a slot
//! fired twice across a crash or restart is one delivery and makes one run.
//!
//! Time comes from a `Clock`, so tests drive it by hand.

pub mod plan;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::event::Event;
use crate::pipeline::{Audience, PendingReport, Pipeline};
use crate::runs::SkipReason;
use crate::store::{Durability, ScheduleState, Store};
use crate::triggers::TriggerKind;
use crate::triggers::cron::{CronTrigger, slot_payload};

/// Where the scheduler gets the time, and how it waits.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let wait = at.signed_duration_since(Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told (`set`): for tests of slots, misfires and restarts.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock { now: watch::Sender::new(start) }
    }

    /// Moves the clock to `to`; sleepers whose time has come wake.
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut changes = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; `wait_for` fails only without it.
            let _ = changes.wait_for(|now| *now >= at).await;
        })
    }
}

/// One cron trigger of one automation.
#[derive(Debug, Clone)]
struct CronJob {
    automation: String,
    /// The trigger's index among the automation's triggers: its key in the store.
    trigger_id: String,
    trigger: CronTrigger,
    state: ScheduleState,
}

/// Every cron trigger of the pipeline's catalog.
fn cron_jobs(pipeline: &Pipeline) -> Vec<CronJob> {
    let mut jobs = Vec::new();
    for loaded in &pipeline.catalog().automations {
        let definition = &loaded.compiled.definition;
        if !definition.enabled {
            continue;
        }
        for (index, spec) in definition.all_triggers().enumerate() {
            if let Some(trigger) = &spec.cron {
                jobs.push(CronJob {
                    automation: definition.name.clone(),
                    trigger_id: index.to_string(),
                    trigger: trigger.clone(),
                    state: ScheduleState::default(),
                });
            }
        }
    }
    jobs
}

/// Runs until `shutdown` turns true, firing the cron triggers of the pipeline that
/// `pipelines` holds, and starting over with each new one (a reload).
pub async fn run(clock: Arc<dyn Clock>, pipelines: watch::Receiver<Arc<Pipeline>>, shutdown: watch::Receiver<bool>) {
    run_with_metrics(clock, pipelines, shutdown, None).await
}

/// `run`, observing how late each slot fires in `metrics` (`serve`'s scheduler).
pub async fn run_with_metrics(
    clock: Arc<dyn Clock>,
    mut pipelines: watch::Receiver<Arc<Pipeline>>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    // Shared across reloads: a firing of the old catalog may still be recording.
    let mut recorder = Recorder { metrics, ..Recorder::default() };
    'catalogs: loop {
        let pipeline = pipelines.borrow_and_update().clone();
        let mut schedule = Schedule::start(&pipeline, &mut recorder, clock.now());
        tracing::info!(triggers = schedule.jobs.len(), "cron schedule loaded");
        loop {
            let next = schedule.heap.peek().map(|Reverse((at, _, _))| *at);
            let sleep = async {
                match next {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            recorder.reap();
            tokio::select! {
                () = sleep => schedule.fire_due(&pipeline, &mut recorder, clock.now()),
                changed = pipelines.changed() => match changed {
                    Ok(()) => continue 'catalogs,
                    Err(_) => break 'catalogs,
                },
                _ = shutdown.wait_for(|stop| *stop) => break 'catalogs,
            }
        }
    }
    // Progress that is on its way is stored before the store closes.
    while recorder.writes.join_next().await.is_some() {}
}

/// A slot whose event could not be stored is tried again this much later.
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(5);

/// A queued firing: (when, the job's index, the slot). When differs from the slot only
/// for a retry.
type Firing = (DateTime<Utc>, usize, DateTime<Utc>);

/// The jobs of one catalog and the heap of their next firings.
struct Schedule {
    jobs: Vec<CronJob>,
    heap: BinaryHeap<Reverse<Firing>>,
}

/// Where fired slots' progress goes: the ordered writer, and the tasks waiting for the
/// slots' events to be durable before writing it.
#[derive(Default)]
struct Recorder {
    progress: Arc<Progress>,
    writes: tokio::task::JoinSet<()>,
    /// Where each fired slot's lateness is observed.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Recorder {
    /// Forgets the writes that are done.
    fn reap(&mut self) {
        while self.writes.try_join_next().is_some() {}
    }
}

/// Stores progress in order: each firing records it once its events are durable, and
/// those waits finish in any order, so an older state must never overwrite a newer one.
#[derive(Default)]
struct Progress {
    recorded: std::sync::Mutex<std::collections::HashMap<(String, String), DateTime<Utc>>>,
}

impl Progress {
    fn record(&self, store: &dyn Store, automation: &str, trigger_id: &str, state: &ScheduleState) {
        let Ok(mut recorded) = self.recorded.lock() else { return };
        let key = (automation.to_string(), trigger_id.to_string());
        if recorded.get(&key).is_some_and(|newest| *newest >= state.last_slot) {
            return;
        }
        // Written under the lock, so writes reach the store in slot order.
        match store.set_schedule(automation, trigger_id, state) {
            Ok(()) => {
                recorded.insert(key, state.last_slot);
            }
            Err(error) => tracing::error!(%automation, %error, "cannot store the cron progress"),
        }
    }
}

impl Schedule {
    /// Reads each job's progress, handles slots due since (misfires included), and
    /// queues each job's next slot.
    fn start(pipeline: &Arc<Pipeline>, recorder: &mut Recorder, now: DateTime<Utc>) -> Schedule {
        let store = pipeline.store();
        let mut jobs = cron_jobs(pipeline);
        let mut heap = BinaryHeap::with_capacity(jobs.len());
        let mut new_triggers = Vec::new();
        for (index, job) in jobs.iter_mut().enumerate() {
            let stored = store.schedule(&job.automation, &job.trigger_id);
            let plan = match stored {
                Ok(Some(state)) => {
                    job.state = state;
                    plan::plan(&job.trigger, job.state.last_slot, now)
                }
                Ok(None) => {
                    // A new trigger starts now; it has missed nothing. Its start is
                    // stored, so slots missed from here on count as missed.
                    job.state = ScheduleState { last_slot: now, updated_at: now, ..ScheduleState::default() };
                    new_triggers.push(index);
                    Ok(plan::SlotPlan::default())
                }
                Err(error) => {
                    tracing::error!(automation = %job.automation, %error, "cannot read the cron progress; starting from now");
                    job.state.last_slot = now;
                    Ok(plan::SlotPlan::default())
                }
            };
            match plan {
                Ok(plan) => {
                    for failed in handle_plan(pipeline, recorder, job, plan, now) {
                        heap.push(Reverse((now + RETRY_AFTER, index, failed)));
                    }
                }
                Err(error) => tracing::error!(automation = %job.automation, %error, "cannot plan cron slots"),
            }
            if let Some(next) = plan::next_slot(&job.trigger, now) {
                heap.push(Reverse((next, index, next)));
            }
        }
        let starts: Vec<(&str, &str, &ScheduleState)> = new_triggers
            .iter()
            .map(|index| {
                let job = &jobs[*index];
                (job.automation.as_str(), job.trigger_id.as_str(), &job.state)
            })
            .collect();
        if let Err(error) = store.set_schedules(&starts) {
            tracing::error!(%error, "cannot store where new cron triggers start");
        }
        Schedule { jobs, heap }
    }

    /// Fires every slot whose time has come and queues each job's next one.
    fn fire_due(&mut self, pipeline: &Arc<Pipeline>, recorder: &mut Recorder, now: DateTime<Utc>) {
        while let Some(Reverse((due, index, at))) = self.heap.peek().copied() {
            if due > now {
                break;
            }
            self.heap.pop();
            let job = &mut self.jobs[index];
            // Woken long after the slot (the machine slept, the clock jumped): the slots
            // since are missed ones, and the misfire policy decides, as after a restart.
            let late = !plan::is_on_time(&job.trigger, at, now);
            let plan = if late {
                plan::plan(&job.trigger, job.state.last_slot, now).unwrap_or_default()
            } else {
                plan::SlotPlan { fire: vec![at], newest: Some(at), ..plan::SlotPlan::default() }
            };
            let retrying = due != at;
            for failed in handle_plan(pipeline, recorder, job, plan, now) {
                self.heap.push(Reverse((now + RETRY_AFTER, index, failed)));
            }
            // A retry's job already has its next slot queued.
            if retrying {
                continue;
            }
            let after = if late { job.state.last_slot.max(now) } else { at };
            if let Some(next) = plan::next_slot(&job.trigger, after) {
                self.heap.push(Reverse((next, index, next)));
            }
        }
    }
}

/// Fires the plan's slots, records its skipped ones, and stores the job's progress once
/// the fired slots' events are durable. Returns the slots whose events could not be
/// stored, to be tried again; the progress then stays where it was.
fn handle_plan(
    pipeline: &Arc<Pipeline>,
    recorder: &mut Recorder,
    job: &mut CronJob,
    plan: plan::SlotPlan,
    now: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let Some(newest) = plan.newest else { return Vec::new() };
    let mut pending = Vec::with_capacity(plan.fire.len());
    let mut failed = Vec::new();
    for slot in &plan.fire {
        match fire(pipeline, job, *slot, now) {
            Some(durability) => {
                if let Some(metrics) = &recorder.metrics {
                    metrics.cron_fired(*slot, now);
                }
                pending.push(durability);
            }
            None => failed.push(*slot),
        }
    }
    if !failed.is_empty() {
        return failed;
    }
    if !plan.skipped.is_empty() || plan.skipped_unlisted > 0 {
        let count = plan.skipped.len() as u64 + plan.skipped_unlisted;
        tracing::warn!(
            automation = %job.automation,
            skipped = count,
            policy = ?job.trigger.misfire,
            "cron slots missed while the engine was down were skipped"
        );
        record_skips(pipeline, job, &plan.skipped, now);
        job.state.skipped_total += count;
        job.state.skipped.extend(plan.skipped.iter().copied());
        let excess = job.state.skipped.len().saturating_sub(ScheduleState::RECENT_SKIPS);
        job.state.skipped.drain(..excess);
    }
    job.state.last_fired = plan.fire.last().copied().or(job.state.last_fired);
    job.state.last_slot = newest;
    job.state.updated_at = now;
    let (store, state, progress) = (Arc::clone(pipeline.store()), job.state.clone(), Arc::clone(&recorder.progress));
    let (automation, trigger_id) = (job.automation.clone(), job.trigger_id.clone());
    let record = move |store: &dyn Store| progress.record(store, &automation, &trigger_id, &state);
    if pending.is_empty() {
        record(store.as_ref());
        return failed;
    }
    recorder.writes.spawn(async move {
        for durability in pending {
            if let Err(error) = durability.await {
                // Without a durable event the progress must not move past the slot.
                tracing::error!(%error, "a cron slot's event did not reach the disk");
                return;
            }
        }
        record(store.as_ref());
    });
    failed
}

/// Records the newest skipped slots (at most `ScheduleState::RECENT_SKIPS`) as skipped
/// runs, so `nightshift runs` shows them with the reason; older ones are only counted.
fn record_skips(pipeline: &Pipeline, job: &CronJob, skipped: &[DateTime<Utc>], now: DateTime<Utc>) {
    let Some(loaded) = pipeline.catalog().get(&job.automation) else { return };
    let newest = &skipped[skipped.len().saturating_sub(ScheduleState::RECENT_SKIPS)..];
    let records: Vec<(Event, SkipReason)> = newest
        .iter()
        .map(|slot| {
            let payload = slot_payload(&job.automation, *slot, &job.trigger.timezone);
            let event = Event::from_delivery(TriggerKind::Cron, payload, Default::default(), now);
            (event, SkipReason::Misfire { slot: *slot, policy: job.trigger.misfire.as_str().to_string() })
        })
        .collect();
    let hash = &loaded.compiled.definition_hash;
    if let Err(error) = pipeline.store().record_skipped_slots(&job.automation, hash, &records, now) {
        tracing::error!(automation = %job.automation, %error, "cannot record skipped cron slots");
    }
}

/// Ingests the event of one slot for its automation.
fn fire(pipeline: &Pipeline, job: &CronJob, slot: DateTime<Utc>, now: DateTime<Utc>) -> Option<Durability> {
    let payload = slot_payload(&job.automation, slot, &job.trigger.timezone);
    let event = Event::from_delivery(TriggerKind::Cron, payload, Default::default(), now);
    // A slot counts as fired once its outcome is decided; one whose store could not
    // decide (a database away) is tried again.
    match pipeline.ingest_queued(event, Audience::Subscriber(&job.automation), now).and_then(PendingReport::decide) {
        Ok((report, durability)) => {
            let runs: Vec<String> = report.outcome.runs.iter().map(|r| r.run.to_string()).collect();
            tracing::info!(automation = %job.automation, %slot, runs = ?runs, duplicate = report.outcome.duplicate_delivery, "cron slot fired");
            Some(durability)
        }
        Err(error) => {
            tracing::error!(automation = %job.automation, %slot, %error, "cannot store a cron slot's event");
            None
        }
    }
}
