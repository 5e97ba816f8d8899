//! The run record and its state machine: what a run is, which states it passes through,
//! and what a worker reports when an attempt ends.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::task::{Flow, Task};

/// A run's number: unique in one store, increasing in creation order. Written `r42`
/// everywhere, JSON included; `42` and the JSON number `42` are read as well (records
/// stored before run ids were strings in JSON, and people who drop the `r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub u64);

impl Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RunId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(number) => Ok(RunId(number)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl FromStr for RunId {
    type Err = String;

    /// Accepts `r42` and `42`.
    fn from_str(text: &str) -> Result<RunId, String> {
        let digits = text.strip_prefix('r').unwrap_or(text);
        digits.parse().map(RunId).map_err(|_| format!("`{text}` is not a run id; run ids look like `r42`"))
    }
}

/// A lease's fencing token. Every claim gets a larger one than any lease the run had
/// before, across restarts, so a worker that lost its lease is always recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a run is in its life.
///
/// ```text
/// queued ──claim──► leased ──start──► running ──► succeeded | failed | timed_out
///   ▲   ▲             │                 │  └──plan──► awaiting_approval ──approve──┐
///   │   └─lease expired or retry────────┘                                           │
///   └───────────────────────────────────────────────────────────────────────────────┘
/// every state that is not finished ──cancel──► cancelled;  skipped is recorded at ingest
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    AwaitingApproval,
    Queued,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Skipped,
}

impl RunState {
    pub const ALL: [RunState; 9] = [
        RunState::AwaitingApproval,
        RunState::Queued,
        RunState::Leased,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::TimedOut,
        RunState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Queued => "queued",
            RunState::Leased => "leased",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed_out",
            RunState::Skipped => "skipped",
        }
    }

    /// Finished: nothing will change the run again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::TimedOut | RunState::Skipped
        )
    }

    /// A worker holds it.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Leased | RunState::Running)
    }

    /// Waiting to start (or to continue after approval); repeat events may join it.
    pub fn is_pending(self) -> bool {
        matches!(self, RunState::Queued | RunState::AwaitingApproval)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(text: &str) -> Result<RunState, String> {
        RunState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| {
            format!("unknown run state `{text}`; one of {}", RunState::ALL.map(RunState::as_str).join(", "))
        })
    }
}

/// A worker's claim on a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub worker: String,
    pub epoch: Epoch,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Why a run was recorded without running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The dedupe key was taken inside its window by a run that had already started.
    Dedupe { key: String, duplicate_of: RunId },
    /// The previous run started less than `cooldown` ago.
    Cooldown { last_run: RunId, until: DateTime<Utc> },
    /// The concurrency limit was reached and `overlap: skip`.
    Overlap { limit: u32, busy: Vec<RunId> },
    /// A cron slot missed while the engine was down, skipped by the misfire policy.
    Misfire { slot: DateTime<Utc>, policy: String },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Dedupe { key, duplicate_of } => write!(f, "dedupe: key `{key}` is already {duplicate_of}'s"),
            SkipReason::Cooldown { last_run, until } => {
                write!(f, "cooldown: {last_run} was created recently; the next run may start at {}", until.to_rfc3339())
            }
            SkipReason::Overlap { limit, busy } => {
                let busy: Vec<String> = busy.iter().map(RunId::to_string).collect();
                write!(f, "overlap: the limit of {limit} is reached by {}", busy.join(", "))
            }
            SkipReason::Misfire { slot, policy } => write!(f, "misfire: slot {} missed ({policy})", slot.to_rfc3339()),
        }
    }
}

/// What a finished attempt produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The agent's final message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Anything else the worker reports (commits, diff stat, changed files, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// How a worker ends an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Completion {
    Succeeded {
        result: RunResult,
    },
    /// `retryable` failures are tried again while attempts remain.
    Failed {
        reason: String,
        retryable: bool,
        result: Option<RunResult>,
    },
    TimedOut {
        reason: String,
    },
    /// The agent proposed a plan: the run waits for `approve`.
    PlanReady {
        plan: String,
    },
}

impl Completion {
    /// Whether the run is queued again instead of ending: a retryable failure while
    /// attempts remain. The store and `after_run` both go by this.
    pub fn retries(&self, run: &Run) -> bool {
        matches!(self, Completion::Failed { retryable: true, .. })
            && super::retry::may_retry(&run.flow.retry, run.attempt)
    }

    /// Whether this attempt is the run's last: it succeeds, times out, or fails for good.
    pub fn ends_run(&self, run: &Run) -> bool {
        !matches!(self, Completion::PlanReady { .. }) && !self.retries(run)
    }
}

/// One run: an automation's rendered task for one event (or a coalesced group of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub automation: String,
    /// Hash of the automation's definition when the run was created.
    pub definition_hash: String,
    /// The event that created the run first, then every event coalesced into it.
    pub event_ids: Vec<String>,
    /// None when rendering failed: the run is recorded as failed with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    pub flow: Flow,
    pub state: RunState,
    /// Attempts started so far.
    pub attempt: u32,
    /// The newest lease epoch handed out for this run.
    pub epoch: Epoch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// A retry waits until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Set once a plan has been approved: the next attempt runs the agent.
    #[serde(default)]
    pub approved: bool,
    /// The plan the agent proposed (`approval: plan`); once approved, the agent is given
    /// it to carry out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<SkipReason>,
    /// Why the run failed, timed out or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The run this one is part of or follows up, and as what (docs/parallel.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::parallel::ParentLink>,
}

impl Run {
    /// A run just created, queued, with nothing tried yet.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        id: RunId,
        automation: String,
        definition_hash: String,
        event_ids: Vec<String>,
        task: Option<Task>,
        flow: Flow,
        parent: Option<crate::parallel::ParentLink>,
        now: DateTime<Utc>,
    ) -> Run {
        Run {
            id,
            automation,
            definition_hash,
            event_ids,
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
            plan: None,
            result: None,
            skip: None,
            reason: None,
            parent,
        }
    }

    /// Whether the run read outside text (its event or memory), for memory provenance.
    pub fn untrusted_input(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.untrusted_input)
    }

    /// The flow-control group: the automation and its rendered concurrency key.
    pub fn group(&self) -> String {
        group_key(&self.automation, self.flow.concurrency_key.as_deref())
    }
}

/// `automation` or `automation/key`: runs in one group share a concurrency limit.
pub fn group_key(automation: &str, concurrency_key: Option<&str>) -> String {
    match concurrency_key {
        Some(key) => format!("{automation}/{key}"),
        None => automation.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_is_written_one_way_and_read_either_way() {
        assert_eq!(serde_json::to_string(&RunId(42)).unwrap(), r#""r42""#);
        for written in [r#""r42""#, r#""42""#, "42"] {
            assert_eq!(serde_json::from_str::<RunId>(written).unwrap(), RunId(42), "{written}");
        }
        assert!(serde_json::from_str::<RunId>(r#""run 42""#).is_err());
        assert_eq!("r42".parse::<RunId>(), Ok(RunId(42)));
    }
}
