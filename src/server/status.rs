//! The status picture (`GET /api/status`, `nightshift status`, the board's workers and
//! automations pages): runs counted by state, the runs workers hold, the queued runs
//! with why each waits (`runs::queue`, the rules claims follow), the workers seen
//! claiming, and each automation's triggers, next cron fires, hook readiness, recent
//! runs and memory. `picture` puts it together from what it is given, without I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Server;
use crate::runs::queue::Wait;
use crate::runs::{MemoryEntry, Run, RunId, RunState};
use crate::store::{QueueStatus, RunFilter, StoreError};
use crate::triggers::Trigger;

/// How many of an automation's newest runs the picture lists.
pub const RECENT_RUNS: usize = 5;
/// How many coming cron fires of each trigger the picture lists.
pub const NEXT_FIRES: usize = 3;
/// How many waiting runs the picture lists unless asked for another number: a long
/// queue is counted in `waiting_total`, not sent whole to every board.
pub const WAITING_SHOWN: usize = 100;

/// The whole picture, as `GET /api/status` answers it (docs/serving.md, "Status").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub now: DateTime<Utc>,
    /// Stored runs by state, every state present.
    pub counts: BTreeMap<RunState, u64>,
    /// Queued runs (awaiting approval not included).
    pub queue_depth: usize,
    /// Leased and running runs a worker holds, oldest first.
    pub active: Vec<ActiveRun>,
    /// Queued runs in the order claims consider them, then the runs awaiting approval,
    /// then parents waiting for their children (docs/parallel.md): the first
    /// `WAITING_SHOWN`, or as many as asked for.
    pub waiting: Vec<WaitingRun>,
    /// How many runs wait in all, listed or not.
    #[serde(default)]
    pub waiting_total: usize,
    pub workers: Workers,
    pub automations: Vec<AutomationStatus>,
}

/// A run a worker holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRun {
    pub id: RunId,
    pub automation: String,
    pub state: RunState,
    pub attempt: u32,
    pub worker: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub repo: Option<String>,
    pub branch: Option<String>,
}

/// A run waiting to start, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingRun {
    pub id: RunId,
    pub automation: String,
    pub state: RunState,
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub why: Why,
}

/// Why a run waits: `reason` is a fixed word, the other fields depend on it, `text`
/// says it in a sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Why {
    #[serde(flatten)]
    pub reason: Reason,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reason {
    /// One of the claim rules' reasons (`backoff`, `concurrency`, `same_branch`,
    /// `paths_overlap`, `behind_older`).
    Claim(Wait),
    /// `next_in_line` (no rule holds it: the next free worker takes it, oldest first)
    /// or `awaiting_approval`.
    Other { reason: String },
}

/// Why run `id`, in `state`, waits, given its turn (`None`: nothing holds it back).
pub fn why(id: RunId, state: RunState, turn: Option<Wait>) -> Why {
    match (state, turn) {
        (RunState::AwaitingApproval, _) => Why {
            text: format!("its plan awaits approval: nightshift approve {id}"),
            reason: Reason::Other { reason: "awaiting_approval".into() },
        },
        (_, Some(wait)) => Why { text: wait.to_string(), reason: Reason::Claim(wait) },
        (_, None) => Why {
            text: "next in line: the next free worker takes it".into(),
            reason: Reason::Other { reason: "next_in_line".into() },
        },
    }
}

/// Workers: the local pool's size and every worker seen claiming or holding a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workers {
    /// Threads of `serve`'s own pool (`--workers`).
    pub local: usize,
    pub seen: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The name its leases carry: `local-N` for the pool's threads, `{name}@{token id}`
    /// for a remote worker.
    pub name: String,
    pub remote: bool,
    /// When it last asked for a run, since the server started.
    pub last_claim_at: Option<DateTime<Utc>>,
    pub leases: Vec<LeaseStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub run: RunId,
    pub epoch: u64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutomationStatus {
    pub name: String,
    pub file: String,
    pub enabled: bool,
    pub triggers: Vec<TriggerStatus>,
    /// The newest runs, newest first.
    pub recent_runs: Vec<RecentRun>,
    /// Live memory entries by key.
    pub memory: BTreeMap<String, MemoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerStatus {
    pub kind: String,
    /// The `{name}` of `/hooks/{name}`, for sources that deliver to a hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// Why the hook refuses every request (its secret is missing, say); `None` when it
    /// is ready or there is no hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_problem: Option<String>,
    /// A cron trigger's schedule and timezone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A cron trigger's next slots (none while the automation is disabled).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub next_fires: Vec<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentRun {
    pub id: RunId,
    pub state: RunState,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RecentRun {
    fn of(run: &Run) -> RecentRun {
        RecentRun { id: run.id, state: run.state, created_at: run.created_at, finished_at: run.finished_at }
    }
}

/// The workers that asked for runs since the server started, with when each last did.
#[derive(Debug, Default)]
pub struct Claimers(Mutex<HashMap<String, DateTime<Utc>>>);

impl Claimers {
    pub fn saw(&self, worker: &str, at: DateTime<Utc>) {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get_mut(worker) {
            Some(last) => *last = at,
            None => {
                seen.insert(worker.to_string(), at);
            }
        }
    }

    fn snapshot(&self) -> HashMap<String, DateTime<Utc>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The runs, workers and queue part of the picture, from the store's `QueueStatus`,
/// the claimers seen and the local pool's size.
pub fn picture(
    queue: QueueStatus,
    claimers: HashMap<String, DateTime<Utc>>,
    local: usize,
    automations: Vec<AutomationStatus>,
    now: DateTime<Utc>,
    shown: usize,
) -> Status {
    let counts = queue.counts.into_iter().collect();
    let queue_depth = queue.queued.len();
    let mut workers: BTreeMap<String, WorkerStatus> = claimers
        .into_iter()
        .map(|(name, at)| {
            let remote = name.contains('@');
            (name.clone(), WorkerStatus { name, remote, last_claim_at: Some(at), leases: Vec::new() })
        })
        .collect();
    let task_of = |run: &Run| run.task.as_ref().map(|task| (task.repo.clone(), task.branch.clone())).unzip();
    let mut active = Vec::new();
    let mut coordinating = Vec::new();
    for run in &queue.active {
        if run.lease.is_none() && run.task.as_ref().is_some_and(|task| task.plan.is_some()) {
            // A parent holds no worker: it waits for its children (docs/parallel.md).
            let (repo, branch) = task_of(run);
            coordinating.push(WaitingRun {
                id: run.id,
                automation: run.automation.clone(),
                state: run.state,
                attempt: run.attempt,
                created_at: run.created_at,
                repo,
                branch,
                why: Why {
                    text: "waiting for its children".into(),
                    reason: Reason::Other { reason: "waiting_for_children".into() },
                },
            });
            continue;
        }
        if let Some(lease) = &run.lease {
            let worker = workers.entry(lease.worker.clone()).or_insert_with(|| WorkerStatus {
                name: lease.worker.clone(),
                remote: lease.worker.contains('@'),
                last_claim_at: None,
                leases: Vec::new(),
            });
            worker.leases.push(LeaseStatus {
                run: run.id,
                epoch: lease.epoch.0,
                acquired_at: lease.acquired_at,
                expires_at: lease.expires_at,
            });
        }
        let (repo, branch) = task_of(run);
        active.push(ActiveRun {
            id: run.id,
            automation: run.automation.clone(),
            state: run.state,
            attempt: run.attempt,
            worker: run.lease.as_ref().map(|lease| lease.worker.clone()),
            lease_expires_at: run.lease.as_ref().map(|lease| lease.expires_at),
            created_at: run.created_at,
            started_at: run.started_at,
            repo,
            branch,
        });
    }
    let waiting_total = queue.queued.len() + queue.awaiting_approval.len() + coordinating.len();
    let pending = queue.queued.into_iter().chain(queue.awaiting_approval.into_iter().map(|run| (run, None)));
    let waiting = pending
        .map(|(run, turn)| {
            let (repo, branch) = task_of(&run);
            WaitingRun {
                id: run.id,
                automation: run.automation.clone(),
                state: run.state,
                attempt: run.attempt,
                created_at: run.created_at,
                repo,
                branch,
                why: why(run.id, run.state, turn),
            }
        })
        .chain(coordinating)
        .take(shown)
        .collect();
    let workers = Workers { local, seen: workers.into_values().collect() };
    Status { now, counts, queue_depth, active, waiting, waiting_total, workers, automations }
}

impl Server {
    /// Records that `worker` asked for a run at `at`.
    pub fn saw_claimer(&self, worker: &str, at: DateTime<Utc>) {
        self.claimers.saw(worker, at);
    }

    /// The status picture at `now`, listing at most `shown` waiting runs. Reads the
    /// store's in-memory queue, and for each automation its newest `RECENT_RUNS` runs and
    /// its memory.
    pub fn status(&self, now: DateTime<Utc>, shown: usize) -> Result<Status, StoreError> {
        let queue = self.store.queue_status(now)?;
        let automations = self.automation_statuses(now)?;
        Ok(picture(queue, self.claimers.snapshot(), self.options.workers, automations, now, shown))
    }

    fn automation_statuses(&self, now: DateTime<Utc>) -> Result<Vec<AutomationStatus>, StoreError> {
        let generation = self.current();
        let mut statuses = Vec::new();
        for loaded in &generation.pipeline.catalog().automations {
            let definition = &loaded.compiled.definition;
            let name = definition.name.clone();
            let triggers = definition
                .all_triggers()
                .filter_map(|spec| spec.source())
                .map(|trigger| {
                    let hook = trigger.hook_name(&name);
                    let hook_problem =
                        hook.as_deref().and_then(|hook| generation.hooks.get(hook)?.problem().map(str::to_string));
                    let mut status = TriggerStatus {
                        kind: trigger.kind().to_string(),
                        hook,
                        hook_problem,
                        schedule: None,
                        timezone: None,
                        next_fires: Vec::new(),
                    };
                    if let Trigger::Cron(cron) = trigger {
                        status.schedule = Some(cron.schedule.clone());
                        status.timezone = Some(cron.timezone.clone());
                        if definition.enabled {
                            status.next_fires =
                                cron.slots_after(now).map(|slots| slots.take(NEXT_FIRES).collect()).unwrap_or_default();
                        }
                    }
                    status
                })
                .collect();
            let filter = RunFilter { automation: Some(name.clone()), limit: RECENT_RUNS, ..RunFilter::default() };
            let recent_runs = self.store.runs(&filter)?.iter().map(RecentRun::of).collect();
            let memory = self.store.memory(&name, now)?;
            statuses.push(AutomationStatus {
                name,
                file: loaded.file.display().to_string(),
                enabled: definition.enabled,
                triggers,
                recent_runs,
                memory,
            });
        }
        Ok(statuses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_waiting_run_reads_as_a_reason_word_and_a_sentence() {
        let check = |wait: Option<Wait>, state: RunState, expected: serde_json::Value| {
            assert_eq!(serde_json::to_value(why(RunId(7), state, wait)).unwrap(), expected);
        };
        check(
            Some(Wait::PathsOverlap { run: RunId(3) }),
            RunState::Queued,
            serde_json::json!({"reason": "paths_overlap", "run": "r3", "text": "paths overlap with r3"}),
        );
        check(
            Some(Wait::Concurrency { group: "a".into(), limit: 1, active: 1 }),
            RunState::Queued,
            serde_json::json!({"reason": "concurrency", "group": "a", "limit": 1, "active": 1,
                "text": "concurrency: 1 of 1 running in group a"}),
        );
        check(
            None,
            RunState::Queued,
            serde_json::json!({"reason": "next_in_line", "text": "next in line: the next free worker takes it"}),
        );
        check(
            None,
            RunState::AwaitingApproval,
            serde_json::json!({"reason": "awaiting_approval", "text": "its plan awaits approval: nightshift approve r7"}),
        );
    }

    #[test]
    fn workers_are_those_seen_claiming_with_their_newest_claim_and_those_holding_leases() {
        let at = |second: i64| DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap();
        let claimers = Claimers::default();
        claimers.saw("local-1", at(1));
        claimers.saw("builder@t1", at(2));
        claimers.saw("local-1", at(5));
        assert_eq!(claimers.snapshot(), HashMap::from([("local-1".into(), at(5)), ("builder@t1".into(), at(2))]));

        let mut held = Run::queued(RunId(9), "a".into(), "h".into(), Vec::new(), None, Default::default(), None, at(0));
        held.state = RunState::Running;
        held.lease = Some(crate::runs::Lease {
            worker: "gone@t2".into(),
            epoch: crate::runs::Epoch(3),
            acquired_at: at(3),
            expires_at: at(63),
        });
        let queue = QueueStatus { active: vec![held], ..QueueStatus::default() };
        let status = picture(queue, claimers.snapshot(), 2, Vec::new(), at(10), WAITING_SHOWN);
        let seen: Vec<(&str, bool, Option<DateTime<Utc>>, usize)> = status
            .workers
            .seen
            .iter()
            .map(|worker| (worker.name.as_str(), worker.remote, worker.last_claim_at, worker.leases.len()))
            .collect();
        assert_eq!(
            seen,
            [("builder@t1", true, Some(at(2)), 0), ("gone@t2", true, None, 1), ("local-1", false, Some(at(5)), 0)]
        );
        assert_eq!(status.workers.local, 2);
        assert_eq!(status.active[0].worker.as_deref(), Some("gone@t2"));
        assert_eq!(status.active[0].lease_expires_at, Some(at(63)));
    }
}
