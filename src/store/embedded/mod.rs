//! `SledStore`: the embedded store, on sled. One sled tree holds every record (see `keys`), so
//! each operation is one atomic batch; one mutex orders the operations; group commit
//! makes them durable with one flush per batch of concurrent callers.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

mod codec;
mod group_commit;
mod keys;
mod live;
mod retention;

use super::{
    Claim, Disposition, IngestOutcome, NewRun, RetentionReport, RunFilter, RunOutcome, ScheduleState, Store,
    StoreError, StoredEvent,
};
use crate::config::Retention;
use crate::event::Event;
use crate::runs::flow::{Decision, decide};
use crate::runs::retry::{backoff, may_retry};
use crate::runs::{
    Activity, ActivityKind, Completion, Epoch, Lease, MemoryChange, MemoryEntry, MemoryWrite, NewActivity, Run, RunId,
    RunState,
};
use crate::task::{Flow, Task};
use codec::{decode, encode};
use group_commit::GroupCommit;
use live::{DedupeMark, LastCreated, Live, LiveRun};

/// Memory sled may use for its page cache.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    live: Mutex<Live>,
    commit: GroupCommit,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn io(error: sled::Error) -> StoreError {
    StoreError::Io(error.to_string())
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// A batch of writes, plus the activities it appends, applied at once.
#[derive(Default)]
struct Changes {
    batch: sled::Batch,
}

impl Changes {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.insert(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.batch.remove(key);
    }

    fn put_run(&mut self, run: &Run) {
        self.put(keys::run(run.id), encode(run));
        if run.state.is_finished() {
            self.delete(keys::live(run.id));
        } else {
            self.put(keys::live(run.id), Vec::new());
        }
    }

    fn new_run(&mut self, run: &Run) {
        self.put_run(run);
        self.put(keys::run_of(&run.automation, run.id), Vec::new());
    }

    /// Appends an activity the engine itself records (lease expiry, retries, cancels).
    fn activity(&mut self, live: &mut LiveRun, kind: ActivityKind, text: String, at: DateTime<Utc>) {
        let seq = live.next_activity;
        live.next_activity += 1;
        let activity = Activity { seq, at, kind, text, data: serde_json::Value::Null };
        self.put(keys::activity(live.run.id, seq), encode(&activity));
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. A damaged, foreign or locked store is an
    /// error that says which, never a panic.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let open_error = |cause: String| StoreError::Open { dir: dir.to_path_buf(), cause };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let config = sled::Config::new().path(dir.join("db")).cache_capacity(CACHE_BYTES).flush_every_ms(Some(500));
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| config.open())).map_err(|panic| {
            let what =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            StoreError::Corrupt { what: format!("the files in {}", dir.display()), cause: what.unwrap_or_default() }
        })?;
        let db = opened.map_err(|error| match error {
            sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
                StoreError::Locked { dir: dir.to_path_buf() }
            }
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Corrupt {
                what: format!("the files in {}", dir.display()),
                cause: format!("{error}; move the directory away to start afresh"),
            },
            other => open_error(other.to_string()),
        })?;
        let store =
            SledStore { dir: dir.to_path_buf(), db, live: Mutex::new(Live::default()), commit: GroupCommit::default() };
        store.check_format()?;
        let live = store.load_live()?;
        *store.lock() = live;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes performed so far: concurrent writers share them (group commit).
    pub fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self.db.get(keys::FORMAT).map_err(io)? {
            Some(found) if found.as_ref() == keys::FORMAT_VERSION => Ok(()),
            Some(found) => Err(StoreError::Corrupt {
                what: format!("{}", self.dir.display()),
                cause: format!(
                    "store format `{}`, this nightshift reads `{}`",
                    String::from_utf8_lossy(&found),
                    String::from_utf8_lossy(keys::FORMAT_VERSION)
                ),
            }),
            None if self.db.is_empty() => {
                self.db.insert(keys::FORMAT, keys::FORMAT_VERSION).map_err(io)?;
                Ok(())
            }
            None => Err(StoreError::Corrupt {
                what: format!("{}", self.dir.display()),
                cause: "it holds data but no nightshift format marker: not a nightshift store".into(),
            }),
        }
    }

    /// Rebuilds the index of unfinished runs, dedupe marks and cooldowns, and starts a
    /// new epoch generation so epochs handed out before a crash are never reused.
    fn load_live(&self) -> Result<Live, StoreError> {
        let mut live = Live::default();
        let generation = match self.db.get(keys::GENERATION).map_err(io)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "meta/generation".into(),
                cause: "not an 8-byte number".into(),
            })?),
            None => 0,
        } + 1;
        self.db.insert(keys::GENERATION, &generation.to_be_bytes()).map_err(io)?;
        self.db.flush().map_err(io)?;
        live.epoch_floor = generation << 32;

        if let Some(entry) = self.db.scan_prefix(keys::RUN).next_back() {
            let (key, _) = entry.map_err(io)?;
            live.next_run = keys::number_at_end(&key).map(RunId).map_or(0, |id| id.0);
        }
        for entry in self.db.scan_prefix(keys::LIVE) {
            let (key, _) = entry.map_err(io)?;
            let Some(id) = keys::number_at_end(&key).map(RunId) else { continue };
            let run_key = keys::run(id);
            let bytes = self.db.get(&run_key).map_err(io)?.ok_or_else(|| StoreError::Corrupt {
                what: format!("run {id}"),
                cause: "listed as unfinished but its record is missing".into(),
            })?;
            let run: Run = decode(&run_key, &bytes)?;
            let next_activity = self.next_activity_seq(id)?;
            live.put(run, next_activity);
        }
        for entry in self.db.scan_prefix(keys::DEDUPE) {
            let (key, value) = entry.map_err(io)?;
            let mark: DedupeMark = decode(&key, &value)?;
            let Some(rest) = keys::suffix(&key, keys::DEDUPE) else { continue };
            let Some((automation, dedupe_key)) = rest.split_once('\0') else { continue };
            live.dedupe.insert((automation.to_string(), dedupe_key.to_string()), mark);
        }
        for entry in self.db.scan_prefix(keys::LAST_CREATED) {
            let (key, value) = entry.map_err(io)?;
            let last: LastCreated = decode(&key, &value)?;
            if let Some(group) = keys::suffix(&key, keys::LAST_CREATED) {
                live.last_created.insert(group.to_string(), last);
            }
        }
        Ok(live)
    }

    fn next_activity_seq(&self, run: RunId) -> Result<u64, StoreError> {
        match self.db.scan_prefix(keys::activities_of(run)).next_back() {
            Some(entry) => {
                let (key, _) = entry.map_err(io)?;
                Ok(keys::number_at_end(&key).map_or(0, |seq| seq + 1))
            }
            None => Ok(0),
        }
    }

    /// Applies the batch while the caller still holds the lock (so batches reach sled in
    /// the order their decisions were made), then, with the lock released, waits until
    /// it is on disk when `durable`.
    fn apply(&self, guard: MutexGuard<'_, Live>, changes: Changes, durable: bool) -> Result<(), StoreError> {
        self.db.apply_batch(changes.batch).map_err(io)?;
        let ticket = self.commit.ticket();
        drop(guard);
        if durable { self.wait_durable(ticket) } else { Ok(()) }
    }

    fn wait_durable(&self, ticket: u64) -> Result<(), StoreError> {
        self.commit
            .wait_durable(ticket, || self.db.flush().map(drop).map_err(|e| e.to_string()))
            .map_err(StoreError::Io)
    }

    fn read_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        let key = keys::run(id);
        self.db.get(&key).map_err(io)?.map(|bytes| decode(&key, &bytes)).transpose()
    }

    /// The live run `id`, or the error that says why it is not one.
    fn live_run(&self, live: &Live, id: RunId, action: &'static str) -> Result<LiveRun, StoreError> {
        if let Some(found) = live.get(id) {
            return Ok(found.clone());
        }
        match self.read_run(id)? {
            Some(run) => Err(StoreError::WrongState { run: id, state: run.state, action }),
            None => Err(StoreError::NoSuchRun(id)),
        }
    }

    /// The live run `id` held under `epoch` by a worker.
    fn held_run(&self, live: &Live, id: RunId, epoch: Epoch, action: &'static str) -> Result<LiveRun, StoreError> {
        let held = self.live_run(live, id, action)?;
        if held.run.epoch != epoch {
            return Err(StoreError::StaleLease { run: id, presented: epoch, current: held.run.epoch });
        }
        if !held.run.state.is_active() {
            return Err(StoreError::WrongState { run: id, state: held.run.state, action });
        }
        Ok(held)
    }

    fn finish(run: &mut Run, state: RunState, reason: Option<String>, now: DateTime<Utc>) {
        run.state = state;
        run.reason = reason;
        run.lease = None;
        run.finished_at = Some(now);
        run.updated_at = now;
    }

    fn cancel_live(
        live: &mut Live,
        changes: &mut Changes,
        id: RunId,
        reason: String,
        now: DateTime<Utc>,
    ) -> Option<Run> {
        let mut cancelled = live.remove(id)?;
        Self::finish(&mut cancelled.run, RunState::Cancelled, Some(reason.clone()), now);
        changes.activity(&mut cancelled, ActivityKind::Cancellation, reason, now);
        changes.put_run(&cancelled.run);
        Some(cancelled.run)
    }

    fn memory_entry(write: MemoryWrite, written_by: Option<&Run>, now: DateTime<Utc>) -> Option<(String, MemoryEntry)> {
        match write.change {
            MemoryChange::Set { value, expires_at } => Some((
                write.key,
                MemoryEntry {
                    value,
                    written_by: written_by.map(|run| run.id),
                    written_at: now,
                    untrusted: written_by.is_some_and(Run::untrusted_input),
                    expires_at,
                },
            )),
            MemoryChange::Remove => None,
        }
    }

    fn put_memory(changes: &mut Changes, automation: &str, write: MemoryWrite, by: Option<&Run>, now: DateTime<Utc>) {
        let key = keys::memory(automation, &write.key);
        match Self::memory_entry(write, by, now) {
            Some((_, entry)) => changes.put(key, encode(&entry)),
            None => changes.delete(key),
        }
    }
}

impl Store for SledStore {
    fn ingest(&self, event: &Event, runs: Vec<NewRun>, now: DateTime<Utc>) -> Result<IngestOutcome, StoreError> {
        let event_key = keys::event(&event.id);
        let mut live = self.lock();
        if let Some(bytes) = self.db.get(&event_key).map_err(io)? {
            let stored: StoredEvent = decode(&event_key, &bytes)?;
            // The first delivery may not be on disk yet: answer only once it is.
            let ticket = self.commit.ticket();
            drop(live);
            self.wait_durable(ticket)?;
            return Ok(IngestOutcome {
                event_id: event.id.clone(),
                duplicate_delivery: true,
                runs: stored.outcomes,
                cancelled: Vec::new(),
            });
        }

        let mut changes = Changes::default();
        let mut outcomes = Vec::with_capacity(runs.len());
        let mut cancelled = Vec::new();
        let mut dedupe_keys = BTreeMap::new();
        for new in runs {
            let (task, flow) = match new.rendered {
                Ok(rendered) => rendered,
                Err(error) => {
                    let id = live.allocate_id();
                    let mut run =
                        fresh_run(id, new.automation.clone(), new.definition_hash, None, Flow::default(), event, now);
                    Self::finish(&mut run, RunState::Failed, Some(format!("rendering failed: {error}")), now);
                    changes.new_run(&run);
                    outcomes.push(RunOutcome {
                        automation: new.automation,
                        run: id,
                        disposition: Disposition::RenderFailed { error },
                    });
                    continue;
                }
            };
            let group = crate::runs::group_key(&new.automation, flow.concurrency_key.as_deref());
            let dedupe_key = flow.dedupe_key.clone();
            if let Some(key) = &dedupe_key {
                dedupe_keys.insert(new.automation.clone(), key.clone());
            }
            let facts = live.facts(&new.automation, &group, dedupe_key.as_deref(), now, |id| {
                self.read_run(id).ok().flatten().map_or(RunState::Succeeded, |run| run.state)
            });
            let automation = new.automation.clone();
            let (run, disposition) = match decide(&flow, &facts, now) {
                Decision::Coalesce(id) => {
                    let Some(joined) = live.get(id).cloned() else { continue };
                    let mut joined_run = joined.run;
                    joined_run.event_ids.push(event.id.clone());
                    joined_run.updated_at = now;
                    changes.put_run(&joined_run);
                    live.put(joined_run, joined.next_activity);
                    (id, Disposition::Coalesced)
                }
                Decision::Skip(reason) => {
                    let id = live.allocate_id();
                    let mut run = fresh_run(id, automation.clone(), new.definition_hash, Some(task), flow, event, now);
                    Self::finish(&mut run, RunState::Skipped, None, now);
                    run.skip = Some(reason.clone());
                    changes.new_run(&run);
                    (id, Disposition::Skipped { reason })
                }
                Decision::Create { cancel } => {
                    let id = live.allocate_id();
                    for previous in cancel {
                        let why = format!("superseded by {id} (`overlap: cancel_previous`)");
                        if Self::cancel_live(&mut live, &mut changes, previous, why, now).is_some() {
                            cancelled.push(previous);
                        }
                    }
                    let window = flow.dedupe_window;
                    let run = fresh_run(id, automation.clone(), new.definition_hash, Some(task), flow, event, now);
                    if let (Some(key), Some(window)) = (&dedupe_key, window) {
                        let mark = DedupeMark { run: id, expires_at: now + to_chrono(window.as_duration()) };
                        changes.put(keys::dedupe(&automation, key), encode(&mark));
                        live.dedupe.insert((automation.clone(), key.clone()), mark);
                    }
                    let last = LastCreated { run: id, at: now };
                    changes.put(keys::last_created(&group), encode(&last));
                    live.last_created.insert(group, last);
                    changes.new_run(&run);
                    live.put(run, 0);
                    (id, Disposition::Created)
                }
            };
            outcomes.push(RunOutcome { automation, run, disposition });
        }
        let stored = StoredEvent { event: event.clone(), dedupe_keys, outcomes: outcomes.clone() };
        changes.put(event_key, encode(&stored));
        changes.put(keys::event_age(event.received_at.timestamp_millis(), &event.id), Vec::new());
        self.apply(live, changes, true)?;
        Ok(IngestOutcome { event_id: event.id.clone(), duplicate_delivery: false, runs: outcomes, cancelled })
    }

    fn claim(&self, worker: &str, lease_for: Duration, now: DateTime<Utc>) -> Result<Option<Claim>, StoreError> {
        let mut live = self.lock();
        let Some(id) = live.next_claimable(now) else { return Ok(None) };
        let Some(mut claimed) = live.get(id).cloned() else { return Ok(None) };
        let run = &mut claimed.run;
        run.epoch = Epoch(run.epoch.0.max(live.epoch_floor) + 1);
        run.attempt += 1;
        run.state = RunState::Leased;
        run.not_before = None;
        run.updated_at = now;
        let lease = Lease {
            worker: worker.to_string(),
            epoch: run.epoch,
            acquired_at: now,
            expires_at: now + to_chrono(lease_for),
        };
        run.lease = Some(lease.clone());
        let mut changes = Changes::default();
        changes.put_run(run);
        let claim = Claim { run: run.clone(), lease };
        live.put(claimed.run, claimed.next_activity);
        self.apply(live, changes, false)?;
        Ok(Some(claim))
    }

    fn mark_running(&self, id: RunId, epoch: Epoch, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let mut live = self.lock();
        let mut held = self.held_run(&live, id, epoch, "started")?;
        held.run.state = RunState::Running;
        held.run.started_at.get_or_insert(now);
        held.run.updated_at = now;
        let mut changes = Changes::default();
        changes.put_run(&held.run);
        let run = held.run.clone();
        live.put(held.run, held.next_activity);
        self.apply(live, changes, false)?;
        Ok(run)
    }

    fn heartbeat(
        &self,
        id: RunId,
        epoch: Epoch,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut live = self.lock();
        let mut held = self.held_run(&live, id, epoch, "heartbeat")?;
        let expires_at = now + to_chrono(lease_for);
        if let Some(lease) = held.run.lease.as_mut() {
            lease.expires_at = expires_at;
        }
        let mut changes = Changes::default();
        changes.put_run(&held.run);
        live.put(held.run, held.next_activity);
        self.apply(live, changes, false)?;
        Ok(expires_at)
    }

    fn append_activity(
        &self,
        id: RunId,
        epoch: Epoch,
        activity: NewActivity,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut live = self.lock();
        let held = self.held_run(&live, id, epoch, "given activities")?;
        let seq = held.next_activity;
        let stored = Activity { seq, at: now, kind: activity.kind, text: activity.text, data: activity.data };
        let mut changes = Changes::default();
        changes.put(keys::activity(id, seq), encode(&stored));
        live.put(held.run, seq + 1);
        self.apply(live, changes, true)?;
        Ok(seq)
    }

    fn complete(
        &self,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Vec<MemoryWrite>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        let mut live = self.lock();
        let mut held = self.held_run(&live, id, epoch, "completed")?;
        let mut changes = Changes::default();
        let run = &mut held.run;
        let (kind, text) = match completion {
            Completion::Succeeded { result } => {
                let text = format!("succeeded: {}", result.summary);
                run.result = Some(result);
                Self::finish(run, RunState::Succeeded, None, now);
                (ActivityKind::Completion, text)
            }
            Completion::Failed { reason, retryable, result } => {
                run.result = result;
                if retryable && may_retry(&run.flow.retry, run.attempt) {
                    let wait = backoff(&run.flow.retry, run.attempt, fastrand::f64());
                    let at = now + to_chrono(wait);
                    run.state = RunState::Queued;
                    run.lease = None;
                    run.not_before = Some(at);
                    run.updated_at = now;
                    let text = format!("attempt {} failed: {reason}; retrying at {}", run.attempt, at.to_rfc3339());
                    run.reason = Some(reason);
                    (ActivityKind::Failure, text)
                } else {
                    let text = format!("failed after {} attempt(s): {reason}", run.attempt);
                    Self::finish(run, RunState::Failed, Some(reason), now);
                    (ActivityKind::Failure, text)
                }
            }
            Completion::TimedOut { reason } => {
                let text = format!("timed out: {reason}");
                Self::finish(run, RunState::TimedOut, Some(reason), now);
                (ActivityKind::Failure, text)
            }
            Completion::PlanReady { plan } => {
                run.state = RunState::AwaitingApproval;
                run.lease = None;
                run.updated_at = now;
                (ActivityKind::Plan, plan)
            }
        };
        changes.activity(&mut held, kind, text, now);
        for write in memory {
            Self::put_memory(&mut changes, &held.run.automation, write, Some(&held.run), now);
        }
        changes.put_run(&held.run);
        let run = held.run.clone();
        live.put(held.run, held.next_activity);
        self.apply(live, changes, true)?;
        Ok(run)
    }

    fn cancel(&self, id: RunId, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let mut live = self.lock();
        self.live_run(&live, id, "cancelled")?;
        let mut changes = Changes::default();
        let run =
            Self::cancel_live(&mut live, &mut changes, id, reason.to_string(), now).ok_or(StoreError::NoSuchRun(id))?;
        self.apply(live, changes, true)?;
        Ok(run)
    }

    fn approve(&self, id: RunId, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let mut live = self.lock();
        let mut pending = self.live_run(&live, id, "approved")?;
        if pending.run.state != RunState::AwaitingApproval {
            return Err(StoreError::WrongState { run: id, state: pending.run.state, action: "approved" });
        }
        pending.run.state = RunState::Queued;
        pending.run.approved = true;
        pending.run.updated_at = now;
        let mut changes = Changes::default();
        changes.activity(&mut pending, ActivityKind::Progress, "plan approved".into(), now);
        changes.put_run(&pending.run);
        let run = pending.run.clone();
        live.put(pending.run, pending.next_activity);
        self.apply(live, changes, true)?;
        Ok(run)
    }

    fn sweep_expired_leases(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StoreError> {
        let mut live = self.lock();
        let expired = live.expired_leases(now);
        if expired.is_empty() {
            return Ok(expired);
        }
        let mut changes = Changes::default();
        for id in &expired {
            let Some(mut held) = live.get(*id).cloned() else { continue };
            let holder =
                held.run.lease.as_ref().map(|l| format!("{} (epoch {})", l.worker, l.epoch)).unwrap_or_default();
            let run = &mut held.run;
            let text = if may_retry(&run.flow.retry, run.attempt) {
                run.state = RunState::Queued;
                run.lease = None;
                run.updated_at = now;
                format!("the lease of worker {holder} expired on attempt {}; queued again", run.attempt)
            } else {
                let reason = format!("the lease of worker {holder} expired, and all {} attempts are used", run.attempt);
                Self::finish(run, RunState::Failed, Some(reason.clone()), now);
                reason
            };
            changes.activity(&mut held, ActivityKind::Failure, text, now);
            changes.put_run(&held.run);
            live.put(held.run, held.next_activity);
        }
        self.apply(live, changes, true)?;
        Ok(expired)
    }

    fn run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        if let Some(live) = self.lock().get(id) {
            return Ok(Some(live.run.clone()));
        }
        self.read_run(id)
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let limit = if filter.limit == 0 { usize::MAX } else { filter.limit };
        let mut found = Vec::new();
        let mut keep = |run: Run| {
            if filter.state.is_none_or(|state| state == run.state) {
                found.push(run);
            }
            found.len() < limit
        };
        match &filter.automation {
            Some(automation) => {
                for entry in self.db.scan_prefix(keys::runs_of(automation)).rev() {
                    let (key, _) = entry.map_err(io)?;
                    let Some(id) = keys::number_at_end(&key).map(RunId) else { continue };
                    if let Some(run) = self.read_run(id)?
                        && !keep(run)
                    {
                        break;
                    }
                }
            }
            None => {
                for entry in self.db.scan_prefix(keys::RUN).rev() {
                    let (key, value) = entry.map_err(io)?;
                    if !keep(decode(&key, &value)?) {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    fn activities(&self, run: RunId) -> Result<Vec<Activity>, StoreError> {
        self.db
            .scan_prefix(keys::activities_of(run))
            .map(|entry| {
                let (key, value) = entry.map_err(io)?;
                decode(&key, &value)
            })
            .collect()
    }

    fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let key = keys::event(id);
        self.db.get(&key).map_err(io)?.map(|bytes| decode(&key, &bytes)).transpose()
    }

    fn history(&self, automation: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        for entry in self.db.scan_prefix(keys::runs_of(automation)).rev() {
            let (key, _) = entry.map_err(io)?;
            let Some(id) = keys::number_at_end(&key).map(RunId) else { continue };
            if let Some(run) = self.read_run(id)?
                && run.state.is_finished()
                && run.state != RunState::Skipped
            {
                found.push(run);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    fn memory(&self, automation: &str, now: DateTime<Utc>) -> Result<BTreeMap<String, MemoryEntry>, StoreError> {
        let prefix = keys::memory_of(automation);
        let mut entries = BTreeMap::new();
        for entry in self.db.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(io)?;
            let memory: MemoryEntry = decode(&key, &value)?;
            if memory.is_live(now)
                && let Some(name) = keys::suffix(&key, &prefix)
            {
                entries.insert(name.to_string(), memory);
            }
        }
        Ok(entries)
    }

    fn write_memory(&self, automation: &str, write: MemoryWrite, now: DateTime<Utc>) -> Result<(), StoreError> {
        let live = self.lock();
        let mut changes = Changes::default();
        Self::put_memory(&mut changes, automation, write, None, now);
        self.apply(live, changes, true)
    }

    fn schedule(&self, automation: &str, trigger: &str) -> Result<Option<ScheduleState>, StoreError> {
        let key = keys::schedule(automation, trigger);
        self.db.get(&key).map_err(io)?.map(|bytes| decode(&key, &bytes)).transpose()
    }

    fn set_schedule(&self, automation: &str, trigger: &str, state: &ScheduleState) -> Result<(), StoreError> {
        let live = self.lock();
        let mut changes = Changes::default();
        changes.put(keys::schedule(automation, trigger), encode(state));
        self.apply(live, changes, true)
    }

    fn apply_retention(&self, retention: &Retention, now: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
        self.retain(retention, now)
    }
}

/// A new queued run record, created by `event`.
fn fresh_run(
    id: RunId,
    automation: String,
    definition_hash: String,
    task: Option<Task>,
    flow: Flow,
    event: &Event,
    now: DateTime<Utc>,
) -> Run {
    Run {
        id,
        automation,
        definition_hash,
        event_ids: vec![event.id.clone()],
        task,
        flow,
        state: RunState::Queued,
        attempt: 0,
        epoch: Epoch::default(),
        lease: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        not_before: None,
        approved: false,
        result: None,
        skip: None,
        reason: None,
    }
}
