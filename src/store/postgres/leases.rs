//! Claims, leases and a run's changes on PostgreSQL: claims take turns under the
//! queue's advisory lock, reading queued runs oldest first a page at a time and locking
//! the one that may start `FOR UPDATE SKIP LOCKED`; every change of a run locks its row
//! (a child's parent first: rows are locked in ascending id) and checks the caller's
//! epoch, with the embedded store's errors.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PgStore;
use super::db::{LOCK_SQL, Tx};
use super::family;
use super::rows::{add_activity, decode_run, load_run, runs_of, update_run};
use crate::runs::clock::later;
use crate::runs::queue::{self, Active};
use crate::runs::retry::{backoff, may_retry};
use crate::runs::scope::paths_overlap;
use crate::runs::{ActivityKind, Completion, Epoch, Lease, MemoryWrite, NewActivity, Run, RunId, RunState};
use crate::store::{Claim, QueueStatus, StoreError};

/// How many queued runs a claim reads first, oldest first: the next page, twice as
/// long (up to `CLAIM_PAGE_MAX`), is read only while none of those read so far may
/// start. Most claims take a run of the first page, and decoding runs is what a claim
/// spends most on.
const CLAIM_PAGE: i64 = 16;
const CLAIM_PAGE_MAX: i64 = 1024;

impl PgStore {
    pub(super) fn claim_now(
        &self,
        worker: &str,
        lease_for: Duration,
        now: DateTime<Utc>,
        staged: bool,
    ) -> Result<Option<Claim>, StoreError> {
        self.db.transaction_unsynced(|tx| {
            // The queue's lock is taken with the first page's read (`next_claimable`).
            let Some(before) = next_claimable(tx, now, staged)? else { return Ok(None) };
            let mut run = before.clone();
            run.epoch = crash_proof_epoch(tx)?;
            run.attempt += 1;
            run.state = RunState::Leased;
            run.not_before = None;
            run.updated_at = now;
            let lease = Lease {
                worker: worker.to_string(),
                epoch: run.epoch,
                acquired_at: now,
                expires_at: later(now, lease_for),
            };
            run.lease = Some(lease.clone());
            update_run(tx, &before, &run)?;
            Ok(Some(Claim { run, lease }))
        })
    }

    pub(super) fn mark_running_now(&self, id: RunId, epoch: Epoch, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.db.transaction(|tx| {
            let before = held_run(tx, id, epoch, "started")?;
            let mut run = before.clone();
            run.state = RunState::Running;
            run.started_at.get_or_insert(now);
            run.updated_at = now;
            update_run(tx, &before, &run)?;
            Ok(run)
        })
    }

    pub(super) fn heartbeat_now(
        &self,
        id: RunId,
        epoch: Epoch,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        self.db.transaction_unsynced(|tx| {
            let before = held_run(tx, id, epoch, "heartbeat")?;
            let expires_at = later(now, lease_for);
            let mut run = before.clone();
            if let Some(lease) = run.lease.as_mut() {
                lease.expires_at = expires_at;
            }
            update_run(tx, &before, &run)?;
            Ok(expires_at)
        })
    }

    pub(super) fn append_activity_now(
        &self,
        id: RunId,
        epoch: Epoch,
        activity: NewActivity,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.db.transaction(|tx| {
            held_run(tx, id, epoch, "given activities")?;
            let activity = activity.clone();
            add_activity(tx, id, activity.kind, activity.text, activity.data, now)
        })
    }

    pub(super) fn append_log_now(
        &self,
        id: RunId,
        epoch: Epoch,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // Not waited for on disk, like a heartbeat: the durable completion comes after.
        self.db.transaction_unsynced(|tx| {
            held_run(tx, id, epoch, "given log output")?;
            // The run's row lock orders the sequence numbers.
            let row = tx.query_one(
                "INSERT INTO nightshift_logs (run, seq, at, text) \
                 SELECT $1, coalesce(max(seq) + 1, 0), $2, $3 FROM nightshift_logs WHERE run = $1 RETURNING seq",
                &[&(id.0 as i64), &now, &text],
            )?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    pub(super) fn complete_now(
        &self,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Vec<MemoryWrite>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        // The jitter is drawn once: a transaction run again decides the same.
        let jitter = fastrand::f64();
        self.db.transaction(|tx| {
            lock_parent(tx, id)?;
            let before = held_run(tx, id, epoch, "completed")?;
            let mut run = before.clone();
            let retries = completion.retries(&run);
            let is_parent = run.task.as_ref().is_some_and(|task| task.plan.is_some());
            let (kind, text) = match completion.clone() {
                Completion::Succeeded { result } => {
                    let text = format!("succeeded: {}", result.summary);
                    run.result = Some(if is_parent { with_earlier_details(run.result.take(), result) } else { result });
                    finish(&mut run, RunState::Succeeded, None, now);
                    (ActivityKind::Completion, text)
                }
                Completion::Failed { reason, result, .. } => {
                    run.result = match result {
                        Some(result) if is_parent => Some(with_earlier_details(run.result.take(), result)),
                        other if is_parent => run.result.take().or(other),
                        other => other,
                    };
                    if retries {
                        let at = later(now, backoff(&run.flow.retry, run.attempt, jitter));
                        run.state = RunState::Queued;
                        run.lease = None;
                        run.not_before = Some(at);
                        run.updated_at = now;
                        let text = format!("attempt {} failed: {reason}; retrying at {}", run.attempt, at.to_rfc3339());
                        run.reason = Some(reason);
                        (ActivityKind::Failure, text)
                    } else {
                        let text = format!("failed after {} attempt(s): {reason}", run.attempt);
                        finish(&mut run, RunState::Failed, Some(reason), now);
                        (ActivityKind::Failure, text)
                    }
                }
                Completion::TimedOut { reason } => {
                    let text = format!("timed out: {reason}");
                    finish(&mut run, RunState::TimedOut, Some(reason), now);
                    (ActivityKind::Failure, text)
                }
                Completion::PlanReady { plan } => {
                    run.plan = Some(plan.clone());
                    run.state = RunState::AwaitingApproval;
                    run.lease = None;
                    run.updated_at = now;
                    (ActivityKind::Plan, plan)
                }
            };
            add_activity(tx, id, kind, text, serde_json::Value::Null, now)?;
            for write in &memory {
                super::reads::put_memory(tx, &run.automation, write.clone(), Some(&run), now)?;
            }
            update_run(tx, &before, &run)?;
            family::child_ended(tx, &run, now)?;
            Ok(run)
        })
    }

    pub(super) fn cancel_now(&self, id: RunId, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.db.transaction(|tx| {
            lock_parent(tx, id)?;
            live_run(tx, id, "cancelled")?;
            cancel_in(tx, id, reason.to_string(), now)?.ok_or(StoreError::NoSuchRun(id))
        })
    }

    pub(super) fn release_now(
        &self,
        id: RunId,
        epoch: Epoch,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        self.db.transaction(|tx| {
            let before = held_run(tx, id, epoch, "released")?;
            let mut run = before.clone();
            run.state = RunState::Queued;
            run.lease = None;
            run.attempt = run.attempt.saturating_sub(1);
            run.updated_at = now;
            let text = format!("given back by its worker ({reason}); queued again, the attempt not counted");
            add_activity(tx, id, ActivityKind::Progress, text, serde_json::Value::Null, now)?;
            update_run(tx, &before, &run)?;
            Ok(run)
        })
    }

    pub(super) fn cancel_unstarted_now(
        &self,
        id: RunId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, StoreError> {
        self.db.transaction(|tx| {
            // Its dedupe key's lock comes before its row (the lock order); a run's flow
            // never changes, so the key read before the row lock is the key.
            let Some(unlocked) = load_run(tx, id, false)? else { return Ok(None) };
            let dedupe_key = unlocked.flow.dedupe_key.clone();
            if let Some(key) = &dedupe_key {
                tx.lock(&format!("dedupe:{}:{key}", unlocked.automation))?;
            }
            lock_parent(tx, id)?;
            let Some(pending) = load_run(tx, id, true)? else { return Ok(None) };
            if !matches!(pending.state, RunState::Queued | RunState::AwaitingApproval) {
                return Ok(None);
            }
            let run = cancel_in(tx, id, reason.to_string(), now)?;
            if let (Some(run), Some(key)) = (&run, &dedupe_key) {
                tx.execute(
                    "DELETE FROM nightshift_dedupe WHERE automation = $1 AND key = $2 AND run = $3",
                    &[&run.automation, key, &(id.0 as i64)],
                )?;
            }
            Ok(run)
        })
    }

    pub(super) fn approve_now(&self, id: RunId, now: DateTime<Utc>) -> Result<Run, StoreError> {
        self.db.transaction(|tx| {
            let before = live_run(tx, id, "approved")?;
            if before.state != RunState::AwaitingApproval {
                return Err(StoreError::WrongState { run: id, state: before.state, action: "approved" });
            }
            let mut run = before.clone();
            run.state = RunState::Queued;
            run.approved = true;
            run.updated_at = now;
            add_activity(tx, id, ActivityKind::Progress, "plan approved".into(), serde_json::Value::Null, now)?;
            update_run(tx, &before, &run)?;
            Ok(run)
        })
    }

    /// `Store::queue_status` (`queue_view`), in one snapshot of the rows.
    pub(super) fn queue_status_now(&self, now: DateTime<Utc>) -> Result<QueueStatus, StoreError> {
        self.db.transaction(|tx| {
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY", &[])?;
            queue_view(tx, now)
        })
    }

    pub(super) fn sweep_now(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StoreError> {
        self.db.transaction(|tx| {
            let rows = tx.query(
                "SELECT id, parent FROM nightshift_runs WHERE lease_expires_at <= $1 AND NOT finished ORDER BY id",
                &[&now],
            )?;
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            // The runs and their parents, locked in ascending id (the lock order).
            let mut locking: Vec<i64> = rows.iter().flat_map(|row| [Some(row.get(0)), row.get(1)]).flatten().collect();
            locking.sort_unstable();
            locking.dedup();
            tx.query("SELECT id FROM nightshift_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&locking])?;
            let mut swept = Vec::new();
            for row in &rows {
                let id = RunId(row.get::<_, i64>(0) as u64);
                let Some(before) = load_run(tx, id, true)? else { continue };
                // Another instance may have swept it, or its worker renewed the lease.
                let expired = before.lease.as_ref().is_some_and(|lease| lease.expires_at <= now);
                if !before.state.is_active() || !expired {
                    continue;
                }
                let holder =
                    before.lease.as_ref().map(|l| format!("{} (epoch {})", l.worker, l.epoch)).unwrap_or_default();
                let mut run = before.clone();
                let text = if may_retry(&run.flow.retry, run.attempt) {
                    run.state = RunState::Queued;
                    run.lease = None;
                    run.updated_at = now;
                    format!("the lease of worker {holder} expired on attempt {}; queued again", run.attempt)
                } else {
                    let reason =
                        format!("the lease of worker {holder} expired, and all {} attempts are used", run.attempt);
                    finish(&mut run, RunState::Failed, Some(reason.clone()), now);
                    reason
                };
                add_activity(tx, id, ActivityKind::Failure, text, serde_json::Value::Null, now)?;
                update_run(tx, &before, &run)?;
                family::child_ended(tx, &run, now)?;
                swept.push(id);
            }
            Ok(swept)
        })
    }
}

/// `nextval('nightshift_epochs')`, such that no claim after a crash of the database is
/// handed it again, although a claim's commit is not waited for on disk. PostgreSQL
/// writes a sequence's progress to its log ahead, once every so many values (and after
/// each checkpoint); values after the last logged one that reached the disk are handed
/// out again after a crash. A claim lost in a crash is harmless (the run is queued again),
/// but its worker may live on with the epoch: the claim that logs the sequence ahead
/// therefore commits synchronously, which puts every epoch up to the logged one beyond
/// reuse. Claims hold the queue's lock, so none moves the sequence between the reads.
fn crash_proof_epoch(tx: &mut Tx<'_>) -> Result<Epoch, StoreError> {
    // The three in this order, sent together.
    let unlogged = "SELECT log_cnt FROM nightshift_epochs";
    let read = tx.pipeline(&[(unlogged, &[]), ("SELECT nextval('nightshift_epochs')", &[]), (unlogged, &[])])?;
    let first = |rows: &Vec<tokio_postgres::Row>| -> Result<i64, StoreError> {
        rows.first().map(|row| row.get(0)).ok_or_else(|| StoreError::Io("the epoch sequence read no row".into()))
    };
    let (before, epoch, after) = (first(&read[0])?, first(&read[1])?, first(&read[2])?);
    let epoch = Epoch(epoch as u64);
    if after >= before {
        tx.execute("SET LOCAL synchronous_commit = on", &[])?;
    }
    Ok(epoch)
}

/// The oldest queued run that may start now (`runs::queue::turns` on the rows), its row
/// locked; the caller holds the queue's lock, so no other claim decides meanwhile.
/// Queued runs are read a page at a time, as far as needed: a long queue of runs that
/// wait (a group at its limit) holds back none behind it. A run whose row another
/// transaction holds (it is being cancelled, say) is passed over, as if it waited.
/// The queue's lock is taken first, sent with the first page's read.
fn next_claimable(tx: &mut Tx<'_>, now: DateTime<Utc>, staged: bool) -> Result<Option<Run>, StoreError> {
    let mut working = Working::empty();
    let mut known_repos = HashSet::new();
    let mut queued: Vec<Run> = Vec::new();
    let mut passed_over: Vec<RunId> = Vec::new();
    let mut read_all = false;
    let mut page_size = CLAIM_PAGE;
    let mut unlocked = true;
    loop {
        let offered = queued.iter().filter(|run| (staged || queue::plain(run)) && !passed_over.contains(&run.id));
        let turns = queue::turns(offered, &working, now, true);
        match turns.last().filter(|(_, wait)| wait.is_none()).map(|(run, _)| run.id) {
            Some(id) => {
                let row = tx.query_opt(
                    "SELECT doc FROM nightshift_runs WHERE id = $1 AND state = 'queued' FOR UPDATE SKIP LOCKED",
                    &[&(id.0 as i64)],
                )?;
                match row {
                    Some(row) => return decode_run(&row.get::<_, Vec<u8>>(0)).map(Some),
                    None => passed_over.push(id),
                }
            }
            None if read_all => return Ok(None),
            None => {
                let after = queued.last().map_or(0, |run| run.id.0 as i64);
                let page = "SELECT doc FROM nightshift_runs WHERE state = 'queued' AND id > $1 ORDER BY id LIMIT $2";
                let rows = if std::mem::take(&mut unlocked) {
                    let mut read = tx.pipeline(&[(LOCK_SQL, &[&"queue"]), (page, &[&after, &page_size])])?;
                    read.pop().unwrap_or_default()
                } else {
                    tx.query(page, &[&after, &page_size])?
                };
                read_all = (rows.len() as i64) < page_size;
                page_size = (page_size * 2).min(CLAIM_PAGE_MAX);
                let page = runs_of(&rows)?;
                working.learn(tx, &page, &mut known_repos)?;
                queued.extend(page);
            }
        }
    }
}

/// The queue as it stands (`Store::queue_status`): counts by state, the active runs,
/// the queued ones with why each waits (the claim rules on the rows, as `claim_now`
/// applies them), and the runs awaiting approval, read in `tx`.
pub(super) fn queue_view(tx: &mut Tx<'_>, now: DateTime<Utc>) -> Result<QueueStatus, StoreError> {
    let mut by_state: HashMap<String, u64> = HashMap::new();
    for row in tx.query("SELECT state, count(*) FROM nightshift_runs GROUP BY state", &[])? {
        by_state.insert(row.get(0), row.get::<_, i64>(1) as u64);
    }
    let counts =
        RunState::ALL.into_iter().map(|state| (state, by_state.get(state.as_str()).copied().unwrap_or(0))).collect();
    let rows = tx.query(
        "SELECT doc FROM nightshift_runs WHERE state IN ('leased', 'running', 'awaiting_approval', 'queued') ORDER BY id",
        &[],
    )?;
    let unfinished = runs_of(&rows)?;
    let working = Working::read(tx)?;
    let active = unfinished.iter().filter(|run| run.state.is_active()).cloned().collect();
    let awaiting_approval = unfinished.iter().filter(|run| run.state == RunState::AwaitingApproval).cloned().collect();
    let queued = unfinished.iter().filter(|run| run.state == RunState::Queued);
    let queued =
        queue::turns(queued, &working, now, false).into_iter().map(|(run, wait)| (run.clone(), wait)).collect();
    Ok(QueueStatus { counts, active, queued, awaiting_approval })
}

/// The runs holding a worker, as the claim rules ask about them (`runs::queue::Active`).
struct Working {
    /// Oldest first.
    runs: Vec<Run>,
    in_group: HashMap<String, u32>,
}

impl Working {
    /// Every run holding a worker (the status picture asks about every queued run).
    fn read(tx: &mut Tx<'_>) -> Result<Working, StoreError> {
        let rows = tx.query("SELECT doc FROM nightshift_runs WHERE holds_worker ORDER BY id", &[])?;
        let runs = runs_of(&rows)?;
        let mut in_group: HashMap<String, u32> = HashMap::new();
        for run in &runs {
            *in_group.entry(run.group()).or_default() += 1;
        }
        Ok(Working { runs, in_group })
    }

    /// Nothing read yet: a claim reads only what the queued runs it considers ask about
    /// (`learn`), so its cost follows the page, not how many runs are working.
    fn empty() -> Working {
        Working { runs: Vec::new(), in_group: HashMap::new() }
    }

    /// Reads the working runs' counts in the groups of `queued`, and the working runs
    /// in their repositories, that are not read yet.
    fn learn(&mut self, tx: &mut Tx<'_>, queued: &[Run], known_repos: &mut HashSet<String>) -> Result<(), StoreError> {
        let groups: Vec<String> = queued
            .iter()
            .map(Run::group)
            .filter(|group| !self.in_group.contains_key(group))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for group in &groups {
            self.in_group.insert(group.clone(), 0);
        }
        let repos: Vec<String> = queued
            .iter()
            .filter_map(|run| run.task.as_ref().map(|task| task.repo.clone()))
            .filter(|repo| known_repos.insert(repo.clone()))
            .collect();
        if groups.is_empty() && repos.is_empty() {
            return Ok(());
        }
        // Both reads sent together.
        let counts = "SELECT group_key, count(*) FROM nightshift_runs WHERE holds_worker AND group_key = ANY($1) \
                      GROUP BY group_key";
        let working = "SELECT doc FROM nightshift_runs WHERE holds_worker AND repo = ANY($1) ORDER BY id";
        let [counted, at_work] = <[_; 2]>::try_from(tx.pipeline(&[(counts, &[&groups]), (working, &[&repos])])?)
            .map_err(|_| StoreError::Io("the database answered two reads with a different number".into()))?;
        for row in counted {
            self.in_group.insert(row.get(0), row.get::<_, i64>(1) as u32);
        }
        if !at_work.is_empty() {
            self.runs.extend(runs_of(&at_work)?);
            self.runs.sort_by_key(|run| run.id);
        }
        Ok(())
    }

    fn conflict_among(
        &self,
        repo: &str,
        branch: &str,
        paths: &[String],
        counts: impl Fn(&Run) -> bool,
    ) -> Option<(RunId, bool)> {
        self.runs.iter().find_map(|run| {
            let task = run.task.as_ref().filter(|task| task.repo == repo)?;
            let conflicts = task.branch == branch || (paths_overlap(paths, &task.paths) && counts(run));
            conflicts.then_some((run.id, task.branch == branch))
        })
    }
}

impl Active for Working {
    fn in_group(&self, group: &str) -> u32 {
        self.in_group.get(group).copied().unwrap_or(0)
    }

    /// A leased or running run of `repo` on `branch` (a follow-up waits for the run it
    /// follows) or that may change a file in `paths`.
    fn conflict(&self, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)> {
        self.conflict_among(repo, branch, paths, |_| true)
    }

    /// Attempts of one best-of-N do not wait for each other's `paths`.
    fn conflict_for(&self, asking: &Run, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)> {
        self.conflict_among(repo, branch, paths, |other| !queue::alternatives(asking, other))
    }
}

/// Locks the row of the parent run `id` is part of or follows, if any, before the
/// caller locks `id`'s: a child's end changes its parent, and rows are locked in
/// ascending id (a parent is older than its children).
pub(super) fn lock_parent(tx: &mut Tx<'_>, id: RunId) -> Result<(), StoreError> {
    let row = tx.query_opt("SELECT parent FROM nightshift_runs WHERE id = $1", &[&(id.0 as i64)])?;
    if let Some(parent) = row.and_then(|row| row.get::<_, Option<i64>>(0)) {
        tx.query("SELECT 1 FROM nightshift_runs WHERE id = $1 FOR UPDATE", &[&parent])?;
    }
    Ok(())
}

/// Unfinished run `id`, its row locked, or the error that says why it is not one.
fn live_run(tx: &mut Tx<'_>, id: RunId, action: &'static str) -> Result<Run, StoreError> {
    match load_run(tx, id, true)? {
        Some(run) if run.state.is_finished() => Err(StoreError::WrongState { run: id, state: run.state, action }),
        Some(run) => Ok(run),
        None => Err(StoreError::NoSuchRun(id)),
    }
}

/// Unfinished run `id` held under `epoch` by a worker, its row locked.
fn held_run(tx: &mut Tx<'_>, id: RunId, epoch: Epoch, action: &'static str) -> Result<Run, StoreError> {
    let held = live_run(tx, id, action)?;
    if held.epoch != epoch {
        return Err(StoreError::StaleLease { run: id, presented: epoch, current: held.epoch });
    }
    if !held.state.is_active() {
        return Err(StoreError::WrongState { run: id, state: held.state, action });
    }
    Ok(held)
}

/// Ends `run` in `state`: no lease, finished now.
pub(super) fn finish(run: &mut Run, state: RunState, reason: Option<String>, now: DateTime<Utc>) {
    run.state = state;
    run.reason = reason;
    run.lease = None;
    run.finished_at = Some(now);
    run.updated_at = now;
}

/// Cancels unfinished run `id` in `tx` (its row locked here): a worker holding it is
/// fenced, its outbox end is written, a parent's unfinished children are cancelled with
/// it, and a child's parent is told (`family`). `None` when it had already finished. As
/// the embedded store's `Inner::cancel_live` followed by `child_ended`. A caller that
/// may cancel a child locks its parent first (`lock_parent`).
pub(super) fn cancel_in(
    tx: &mut Tx<'_>,
    id: RunId,
    reason: String,
    now: DateTime<Utc>,
) -> Result<Option<Run>, StoreError> {
    let Some(run) = cancel_tree(tx, id, reason, now)? else { return Ok(None) };
    family::child_ended(tx, &run, now)?;
    Ok(Some(run))
}

/// Cancels unfinished run `id` and, with it, its unfinished children, whose parent is
/// not told (it is this run, or it is ending).
pub(super) fn cancel_tree(
    tx: &mut Tx<'_>,
    id: RunId,
    reason: String,
    now: DateTime<Utc>,
) -> Result<Option<Run>, StoreError> {
    let Some(before) = load_run(tx, id, true)?.filter(|run| !run.state.is_finished()) else { return Ok(None) };
    let mut run = before.clone();
    finish(&mut run, RunState::Cancelled, Some(reason.clone()), now);
    add_activity(tx, id, ActivityKind::Cancellation, reason, serde_json::Value::Null, now)?;
    update_run(tx, &before, &run)?;
    for child in family::unfinished_children(tx, id)? {
        cancel_tree(tx, child, format!("its parent {id} was cancelled"), now)?;
    }
    Ok(Some(run))
}

/// A parent's result after its publishing attempt: the worker's, with what the parent
/// recorded before (the pick, the findings) under the keys the worker did not set.
fn with_earlier_details(
    earlier: Option<crate::runs::RunResult>,
    mut result: crate::runs::RunResult,
) -> crate::runs::RunResult {
    for (key, value) in earlier.map(|earlier| earlier.details).unwrap_or_default() {
        result.details.entry(key).or_insert(value);
    }
    result
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeSet;

    use chrono::TimeZone;

    use super::super::cluster::Cluster;
    use super::super::rows::{next_run_id, save_run};
    use super::*;
    use crate::runs::RunResult;
    use crate::runs::queue::Wait;

    pub const LEASE: Duration = Duration::from_secs(600);

    pub fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    /// A throwaway cluster and a store on a fresh database of it.
    pub fn open() -> (Cluster, PgStore) {
        let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
        let store = PgStore::open(&cluster.database("leases").expect("a database")).expect("the store opens");
        (cluster, store)
    }

    /// A queued run of `automation` on `repo`'s `branch` that may change `paths`; three
    /// attempts, 30 s backoff.
    pub fn queued(automation: &str, branch: &str, paths: &[&str]) -> Run {
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": 0, "automation": automation, "definition_hash": "h", "event_ids": ["manual:1"],
            "flow": {"concurrency_limit": 1, "overlap": "queue", "retry": {"attempts": 3, "backoff": "30s", "max_backoff": "10m"}},
            "state": "queued", "attempt": 0, "epoch": 0,
            "created_at": at(0), "updated_at": at(0), "approved": false,
            "task": {
                "automation": automation, "repo": "/srv/git/api", "base": "main", "branch": branch, "prompt": "fix it",
                "agent": {"profile": "codex", "argv": ["codex"], "output": "generic"},
                "setup": [], "network": {"setup": {"allow": [], "default": "deny"}, "agent": {"allow": [], "default": "deny"}},
                "paths": paths, "timeout": "30m", "setup_timeout": "10m", "approval": "none", "push": true,
                "untrusted_input": false
            }
        }))
        .expect("a run");
        run.task.as_mut().expect("task").paths = paths.iter().map(|path| path.to_string()).collect();
        run
    }

    /// Stores `run` as new, with the next id, and returns its id.
    pub fn put(store: &PgStore, run: &Run) -> RunId {
        store
            .db
            .transaction(|tx| {
                let mut run = run.clone();
                run.id = next_run_id(tx)?;
                save_run(tx, &run)?;
                Ok(run.id)
            })
            .expect("stored")
    }

    pub fn get(store: &PgStore, id: RunId) -> Run {
        store.db.transaction(|tx| load_run(tx, id, false)).expect("read").expect("the run exists")
    }

    pub fn claim(store: &PgStore, secs: i64) -> Option<Claim> {
        store.claim_now("local-1", LEASE, at(secs), true).expect("claim")
    }

    fn fail(store: &PgStore, claim: &Claim, secs: i64) -> Run {
        let failed = Completion::Failed { reason: "tests failed".into(), retryable: true, result: None };
        store.complete_now(claim.run.id, claim.lease.epoch, failed, Vec::new(), at(secs)).expect("complete")
    }

    fn activities(store: &PgStore, id: RunId) -> Vec<String> {
        let rows = store
            .db
            .transaction(|tx| {
                tx.query("SELECT doc FROM nightshift_activities WHERE run = $1 ORDER BY seq", &[&(id.0 as i64)])
            })
            .expect("read");
        rows.iter()
            .map(|row| {
                super::super::rows::decode::<crate::runs::Activity>("an activity", &row.get::<_, Vec<u8>>(0))
                    .unwrap()
                    .text
            })
            .collect()
    }

    fn waits(store: &PgStore, secs: i64) -> Vec<(RunId, Option<Wait>)> {
        let status = store.queue_status_now(at(secs)).expect("status");
        status.queued.into_iter().map(|(run, wait)| (run.id, wait)).collect()
    }

    #[test]
    fn claims_go_oldest_first_and_a_group_never_runs_more_than_its_limit() {
        let (_cluster, store) = open();
        let a1 = put(&store, &queued("a", "ns/a1", &["a/**"]));
        let a2 = put(&store, &queued("a", "ns/a2", &["b/**"]));
        let b1 = put(&store, &queued("b", "ns/b1", &["c/**"]));
        assert_eq!(claim(&store, 1).expect("a1").run.id, a1);
        let first_b = claim(&store, 2).expect("b1");
        assert_eq!((first_b.run.id, first_b.run.state, first_b.run.attempt), (b1, RunState::Leased, 1));
        assert!(claim(&store, 3).is_none(), "a's limit of one is reached");
        let wait = Wait::Concurrency { group: "a".into(), limit: 1, active: 1 };
        assert_eq!(waits(&store, 3), [(a2, Some(wait))]);
        let status = store.db.transaction(|tx| queue_view(tx, at(3))).expect("status");
        assert_eq!(status.active.iter().map(|run| run.id).collect::<Vec<_>>(), [a1, b1]);
        let leased = status.counts.iter().find(|(state, _)| *state == RunState::Leased).expect("listed").1;
        assert_eq!((status.counts.len(), leased), (RunState::ALL.len(), 2));

        let held = get(&store, a1);
        let done = Completion::Succeeded { result: RunResult { summary: "fixed".into(), ..RunResult::default() } };
        store.complete_now(a1, held.epoch, done, Vec::new(), at(4)).expect("complete");
        assert_eq!(claim(&store, 5).expect("a2 now").run.id, a2);
    }

    #[test]
    fn a_long_queue_of_waiting_runs_holds_back_no_ready_run_behind_it() {
        let (_cluster, store) = open();
        let count = CLAIM_PAGE as usize + 20;
        store
            .db
            .transaction(|tx| {
                for i in 0..count {
                    let mut run = queued("busy", &format!("ns/{i}"), &[]);
                    run.id = next_run_id(tx)?;
                    save_run(tx, &run)?;
                }
                Ok(())
            })
            .expect("a backlog");
        let other = put(&store, &queued("other", "ns/other", &[]));
        assert_eq!(claim(&store, 1).expect("the oldest").run.id, RunId(1));
        assert_eq!(claim(&store, 2).expect("past a page of waiting runs").run.id, other);
        assert!(claim(&store, 3).is_none());
    }

    #[test]
    fn a_run_whose_paths_overlap_a_working_run_waits_and_a_later_one_goes_first() {
        let (_cluster, store) = open();
        let wide = put(&store, &queued("a", "ns/a", &["src/**"]));
        let narrow = put(&store, &queued("b", "ns/b", &["src/lib.rs"]));
        let same_branch = put(&store, &queued("c", "ns/a", &["docs/**"]));
        let apart = put(&store, &queued("d", "ns/d", &["other/**"]));
        assert_eq!(claim(&store, 1).expect("wide").run.id, wide);
        assert_eq!(claim(&store, 2).expect("apart").run.id, apart, "the overlapping ones are passed over");
        assert_eq!(
            waits(&store, 3),
            [
                (narrow, Some(Wait::PathsOverlap { run: wide })),
                (same_branch, Some(Wait::SameBranch { run: wide, branch: "ns/a".into() })),
            ]
        );
        assert!(claim(&store, 3).is_none());
        // Staged runs go to local workers alone.
        let mut staged = queued("e", "ns/e", &["e/**"]);
        staged.task.as_mut().expect("task").staging.skip_agent = true;
        let staged = put(&store, &staged);
        assert!(store.claim_now("w@remote", LEASE, at(4), false).expect("claim").is_none());
        assert_eq!(claim(&store, 5).expect("a local worker gets it").run.id, staged);
    }

    #[test]
    fn the_claim_that_logs_the_epoch_sequence_ahead_commits_synchronously_and_no_other_waits() {
        let (_cluster, store) = open();
        let synced = |store: &PgStore| {
            store
                .db
                .transaction_unsynced(|tx| {
                    crash_proof_epoch(tx)?;
                    Ok(tx.query_one("SHOW synchronous_commit", &[])?.get::<_, String>(0) == "on")
                })
                .expect("an epoch")
        };
        let first: Vec<bool> = (0..70).map(|_| synced(&store)).collect();
        let logged: Vec<usize> = first.iter().enumerate().filter(|(_, on)| **on).map(|(i, _)| i).collect();
        assert!(logged.first() == Some(&0) && (2..=4).contains(&logged.len()), "{logged:?}");
        // After a checkpoint the next value is logged again.
        store.db.transaction(|tx| tx.batch("CHECKPOINT")).expect("checkpoint");
        assert!(synced(&store));
        assert!(!synced(&store));
    }

    #[test]
    fn epochs_strictly_grow_across_two_stores_on_one_database() {
        let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
        let url = cluster.database("shared").expect("a database");
        let stores = [PgStore::open(&url).expect("one"), PgStore::open(&url).expect("two")];
        for i in 0..6 {
            put(&stores[0], &queued(&format!("a{i}"), &format!("ns/{i}"), &[]));
        }
        let mut epochs = Vec::new();
        for i in 0..6 {
            let claim = stores[i % 2].claim_now("w", LEASE, at(i as i64), true).expect("claim").expect("a run");
            epochs.push(claim.lease.epoch);
            if i == 2 {
                // Given back and claimed again: still a new epoch.
                stores[1].release_now(claim.run.id, claim.lease.epoch, "stopping", at(3)).expect("release");
                let again = stores[0].claim_now("w", LEASE, at(3), true).expect("claim").expect("the run");
                assert_eq!((again.run.id, again.run.attempt), (claim.run.id, 1), "a release does not count");
                epochs.push(again.lease.epoch);
            }
        }
        assert!(epochs.windows(2).all(|pair| pair[0] < pair[1]), "{epochs:?}");
    }

    #[test]
    fn a_sweep_requeues_an_expired_lease_and_the_old_worker_is_fenced_with_a_stale_epoch() {
        let (_cluster, store) = open();
        let id = put(&store, &queued("a", "ns/a", &[]));
        let old = claim(&store, 0).expect("a run");
        store.mark_running_now(id, old.lease.epoch, at(1)).expect("running");
        let renewed = store.heartbeat_now(id, old.lease.epoch, LEASE, at(100)).expect("heartbeat");
        assert_eq!(renewed, at(700));
        assert!(store.sweep_now(at(699)).expect("sweep").is_empty(), "the heartbeat renewed it");
        assert_eq!(store.sweep_now(at(700)).expect("sweep"), [id]);
        let requeued = get(&store, id);
        assert_eq!((requeued.state, requeued.lease.is_none()), (RunState::Queued, true));
        let new = claim(&store, 701).expect("claimed again");
        assert!(new.lease.epoch > old.lease.epoch);
        assert_eq!(new.run.attempt, 2);

        let stale = StoreError::StaleLease { run: id, presented: old.lease.epoch, current: new.lease.epoch };
        assert_eq!(store.heartbeat_now(id, old.lease.epoch, LEASE, at(702)), Err(stale.clone()));
        assert_eq!(store.mark_running_now(id, old.lease.epoch, at(702)), Err(stale.clone()));
        assert_eq!(store.append_log_now(id, old.lease.epoch, "late", at(702)), Err(stale.clone()));
        let late = NewActivity::new(ActivityKind::Progress, "late");
        assert_eq!(store.append_activity_now(id, old.lease.epoch, late, at(702)), Err(stale.clone()));
        let done = Completion::Succeeded { result: RunResult::default() };
        assert_eq!(store.complete_now(id, old.lease.epoch, done, Vec::new(), at(702)), Err(stale.clone()));
        assert_eq!(store.release_now(id, old.lease.epoch, "stop", at(702)), Err(stale));
        assert!(
            activities(&store, id)[0].starts_with("the lease of worker local-1 (epoch"),
            "{:?}",
            activities(&store, id)
        );

        // With no attempt left, an expired lease fails the run.
        assert_eq!(store.sweep_now(at(2000)).expect("sweep"), [id]);
        let third = claim(&store, 2001).expect("the last attempt");
        assert_eq!(store.sweep_now(at(5000)).expect("sweep"), [id]);
        let failed = get(&store, id);
        assert_eq!(failed.state, RunState::Failed);
        assert_eq!(
            failed.reason.as_deref(),
            Some(
                format!(
                    "the lease of worker local-1 (epoch {}) expired, and all 3 attempts are used",
                    third.lease.epoch
                )
                .as_str()
            )
        );
    }

    #[test]
    fn a_retryable_failure_waits_its_backoff_then_the_last_one_fails_the_run_and_memory_is_written_with_it() {
        let (_cluster, store) = open();
        let mut two = queued("a", "ns/a", &[]);
        two.flow.retry.attempts = 2;
        let id = put(&store, &two);
        let first = claim(&store, 0).expect("a run");
        let retrying = fail(&store, &first, 10);
        assert_eq!((retrying.state, retrying.attempt), (RunState::Queued, 1));
        let until = retrying.not_before.expect("a backoff");
        assert!(until >= at(25) && until <= at(40), "half to all of 30 s: {until}");
        assert!(claim(&store, 24).is_none(), "the backoff lasts");
        assert_eq!(waits(&store, 24), [(id, Some(Wait::Backoff { until }))]);
        let second = claim(&store, 41).expect("the retry");
        assert_eq!(second.run.attempt, 2);
        let memory = vec![MemoryWrite {
            key: "seen".into(),
            change: crate::runs::MemoryChange::Set { value: serde_json::json!(2), expires_at: None },
            untrusted: false,
        }];
        let failed = Completion::Failed { reason: "tests failed".into(), retryable: true, result: None };
        let ended = store.complete_now(id, second.lease.epoch, failed, memory, at(50)).expect("complete");
        assert_eq!(
            (ended.state, ended.reason.as_deref(), ended.finished_at),
            (RunState::Failed, Some("tests failed"), Some(at(50)))
        );
        assert!(claim(&store, 60).is_none());
        let texts = activities(&store, id);
        assert!(texts[0].starts_with("attempt 1 failed: tests failed; retrying at "), "{texts:?}");
        assert_eq!(texts[1], "failed after 2 attempt(s): tests failed");
        let row = store
            .db
            .transaction(|tx| {
                tx.query_one("SELECT doc FROM nightshift_memory WHERE automation = 'a' AND key = 'seen'", &[])
            })
            .expect("the memory entry");
        let entry: crate::runs::MemoryEntry =
            super::super::rows::decode("memory", &row.get::<_, Vec<u8>>(0)).expect("entry");
        assert_eq!((entry.value, entry.written_by, entry.untrusted), (serde_json::json!(2), Some(id), false));
        let again = Completion::Succeeded { result: RunResult::default() };
        let refused = store.complete_now(id, second.lease.epoch, again, Vec::new(), at(61));
        assert_eq!(refused, Err(StoreError::WrongState { run: id, state: RunState::Failed, action: "completed" }));
    }

    #[test]
    fn logs_activities_release_approval_and_cancels_keep_the_embedded_rules() {
        let (_cluster, store) = open();
        let id = put(&store, &queued("a", "ns/a", &[]));
        assert_eq!(
            store.mark_running_now(id, Epoch(0), at(0)),
            Err(StoreError::WrongState { run: id, state: RunState::Queued, action: "started" })
        );
        assert_eq!(store.mark_running_now(RunId(999), Epoch(0), at(0)), Err(StoreError::NoSuchRun(RunId(999))));
        let held = claim(&store, 0).expect("a run");
        let epoch = held.lease.epoch;
        assert_eq!(store.append_log_now(id, epoch, "one", at(1)), Ok(0));
        assert_eq!(store.append_log_now(id, epoch, "two", at(2)), Ok(1));
        assert_eq!(
            store.append_activity_now(id, epoch, NewActivity::new(ActivityKind::Progress, "cloned"), at(3)),
            Ok(0)
        );
        let running = store.mark_running_now(id, epoch, at(4)).expect("running");
        assert_eq!((running.state, running.started_at), (RunState::Running, Some(at(4))));
        let plan = Completion::PlanReady { plan: "do it".into() };
        let waiting = store.complete_now(id, epoch, plan, Vec::new(), at(5)).expect("plan");
        assert_eq!((waiting.state, waiting.plan.as_deref()), (RunState::AwaitingApproval, Some("do it")));
        assert!(claim(&store, 6).is_none(), "it waits for a person");
        let approved = store.approve_now(id, at(7)).expect("approve");
        assert_eq!((approved.state, approved.approved), (RunState::Queued, true));
        assert_eq!(
            store.approve_now(id, at(7)),
            Err(StoreError::WrongState { run: id, state: RunState::Queued, action: "approved" })
        );
        let second = claim(&store, 8).expect("again");
        let given_back = store.release_now(id, second.lease.epoch, "shutting down", at(9)).expect("release");
        assert_eq!((given_back.state, given_back.attempt, given_back.lease), (RunState::Queued, 1, None));
        let texts = activities(&store, id);
        assert_eq!(
            texts,
            [
                "cloned",
                "do it",
                "plan approved",
                "given back by its worker (shutting down); queued again, the attempt not counted"
            ]
        );

        let third = claim(&store, 10).expect("again");
        assert_eq!(store.cancel_unstarted_now(id, "no", at(11)), Ok(None), "a started run is left alone");
        let cancelled = store.cancel_now(id, "not needed", at(12)).expect("cancel");
        assert_eq!((cancelled.state, cancelled.reason.as_deref()), (RunState::Cancelled, Some("not needed")));
        let fenced = store.heartbeat_now(id, third.lease.epoch, LEASE, at(13));
        assert_eq!(fenced, Err(StoreError::WrongState { run: id, state: RunState::Cancelled, action: "heartbeat" }));
        assert_eq!(
            store.cancel_now(id, "again", at(14)),
            Err(StoreError::WrongState { run: id, state: RunState::Cancelled, action: "cancelled" })
        );
        assert_eq!(store.cancel_now(RunId(999), "no", at(14)), Err(StoreError::NoSuchRun(RunId(999))));
    }

    #[test]
    fn a_run_cancelled_before_it_started_gives_up_its_dedupe_key() {
        let (_cluster, store) = open();
        let mut keyed = queued("a", "ns/a", &[]);
        keyed.flow.dedupe_key = Some("pr-7".into());
        let id = put(&store, &keyed);
        let other = put(&store, &keyed);
        store
            .db
            .transaction(|tx| {
                tx.execute(
                    "INSERT INTO nightshift_dedupe (automation, key, run, expires_at) VALUES ('a', 'pr-7', $1, $2)",
                    &[&(id.0 as i64), &at(3600)],
                )
            })
            .expect("the key's mark");
        let cancelled =
            store.cancel_unstarted_now(other, "superseded", at(1)).expect("cancel").expect("it had not started");
        assert_eq!(cancelled.state, RunState::Cancelled);
        let marks = |store: &PgStore| {
            store.db.transaction(|tx| tx.query("SELECT run FROM nightshift_dedupe", &[])).expect("read").len()
        };
        assert_eq!(marks(&store), 1, "another run's mark is kept");
        assert!(store.cancel_unstarted_now(id, "not wanted", at(2)).expect("cancel").is_some());
        assert_eq!(marks(&store), 0);
        assert_eq!(store.cancel_unstarted_now(id, "again", at(3)), Ok(None));
    }

    #[test]
    fn two_stores_racing_200_claims_on_100_runs_never_lease_one_run_twice() {
        let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
        let url = cluster.database("race").expect("a database");
        let stores = [PgStore::open(&url).expect("one"), PgStore::open(&url).expect("two")];
        store_runs(&stores[0], 100);
        let claimed: Vec<Vec<(RunId, Epoch)>> = std::thread::scope(|scope| {
            let racers: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(n, store)| {
                    scope.spawn(move || {
                        let mut got = Vec::new();
                        for _ in 0..100 {
                            if let Some(claim) = store.claim_now(&format!("w{n}"), LEASE, at(1), true).expect("claim") {
                                got.push((claim.run.id, claim.lease.epoch));
                            }
                        }
                        got
                    })
                })
                .collect();
            racers.into_iter().map(|racer| racer.join().expect("a racer")).collect()
        });
        let all: Vec<(RunId, Epoch)> = claimed.into_iter().flatten().collect();
        let runs: BTreeSet<RunId> = all.iter().map(|(id, _)| *id).collect();
        let epochs: BTreeSet<Epoch> = all.iter().map(|(_, epoch)| *epoch).collect();
        assert_eq!((all.len(), runs.len(), epochs.len()), (100, 100, 100), "every run leased exactly once");
        for (id, epoch) in all {
            assert_eq!(get(&stores[1], id).epoch, epoch);
        }
    }

    fn store_runs(store: &PgStore, count: usize) {
        for i in 0..count {
            put(store, &queued(&format!("a{i}"), &format!("ns/{i}"), &[&format!("p{i}/**")]));
        }
    }
}
