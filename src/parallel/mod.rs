//! Parallel agent work (docs/parallel.md): best-of-N attempts, verification rounds and
//! fan-out with a join, each made of ordinary runs linked to a parent run with a role.
//!
//! This file is the contract between the halves: the rendered `Plan` a parent run
//! carries (from config and rules), the `Staging` a child's task carries (what its worker
//! does besides the agent), and the `StagingReport` the worker sends back, which the
//! parent's decisions read.

pub mod answer;
pub mod conduct;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::runs::RunId;
use crate::task::{AgentCommand, PhasePolicies};

/// What a run is to the run it is linked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A follow-up on the parent's branch (a reply in its thread); the parent does not
    /// wait for it.
    FollowUp,
    /// One of a best-of-N's attempts.
    Attempt,
    /// An author round of a verified task (round 1 is the first try).
    Author,
    /// A verifier checking the author round before it.
    Verify,
    /// The judge picking among attempts that passed their check.
    Judge,
    /// One sub-task of a fan-out.
    Child,
    /// The join after a fan-out's children, on their merged branches.
    Join,
}

impl Role {
    pub const ALL: [Role; 7] =
        [Role::FollowUp, Role::Attempt, Role::Author, Role::Verify, Role::Judge, Role::Child, Role::Join];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::FollowUp => "follow_up",
            Role::Attempt => "attempt",
            Role::Author => "author",
            Role::Verify => "verify",
            Role::Judge => "judge",
            Role::Child => "child",
            Role::Join => "join",
        }
    }

    /// Whether the parent waits for runs of this role: its state follows them and
    /// cancelling it cancels them. A follow-up is a later run of its own.
    pub fn is_part_of_parent(self) -> bool {
        self != Role::FollowUp
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's link to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub run: RunId,
    pub role: Role,
    /// The attempt, round or item number, from 1; 0 for the judge and the join.
    #[serde(default)]
    pub index: u32,
}

/// The rendered plan of a parent run: at most one of the three shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "snake_case")]
pub enum Plan {
    Attempts(AttemptsPlan),
    Verify(VerifyPlan),
    FanOut(FanOutPlan),
}

/// An agent profile resolved for one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleAgent {
    pub agent: AgentCommand,
    /// The setup and agent phases' egress for this role.
    pub network: PhasePolicies,
}

/// `task.attempts`: N attempts round-robin over profiles, then a pick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptsPlan {
    /// One entry per attempt, in order (profiles already taken round-robin).
    pub agents: Vec<RoleAgent>,
    /// Run in each attempt's workspace after its agent, with no network; a non-zero exit
    /// discards the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Picks among the attempts that passed the check when more than one did (they are
    /// listed smallest change first); without it the smallest change wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgePlan>,
    #[serde(default)]
    pub on_no_winner: NoWinner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgePlan {
    pub agent: RoleAgent,
    /// What the judge is asked; the candidates are appended as untrusted text.
    pub prompt: String,
}

/// What a best-of-N does when no attempt is left to pick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoWinner {
    /// The parent fails, every attempt's reason recorded.
    #[default]
    Fail,
    /// The parent succeeds without a branch and reports every attempt.
    ReportAll,
}

/// `task.verify`: author rounds checked by a verifier, up to `max_rounds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyPlan {
    pub verifier: RoleAgent,
    /// Run in the verifier's workspace (the author's tip) before the verifier, with no
    /// network; their outcomes are in the verifier's prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    pub max_rounds: u32,
    /// What the verifier is asked; the author's summary and diff stat are appended.
    pub prompt: String,
}

/// `task.fan_out`: sub-tasks run concurrently, then an optional join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanOutPlan {
    pub items: Vec<FanOutItem>,
    pub max_concurrent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinPlan>,
}

/// One sub-task, as the `items` script returned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanOutItem {
    pub prompt: String,
    /// The files it owns; items whose paths overlap do not run at once.
    pub paths: Vec<String>,
    /// Another repository than the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinPlan {
    pub when: JoinWhen,
    pub agent: RoleAgent,
    /// What the join agent is asked; conflicts and the children's summaries are appended.
    pub prompt: String,
}

/// When a fan-out's join runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinWhen {
    /// Every child succeeded; a failed child fails the parent without a join.
    #[default]
    AllSucceeded,
    /// Every child ended, whatever its outcome; the join gets the successful ones.
    AllEnded,
}

/// What the worker of a run that is part of parallel work does besides the agent.
/// Everything defaults to a plain run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staging {
    /// Start at this held commit instead of `base` (a later author round, a verifier, the
    /// parent publishing its pick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<Held>,
    /// Merge these held commits into the new branch, in order, before the agent; a
    /// conflict is committed with its markers and listed to the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merge: Vec<Held>,
    /// Keep the branch's tip as a held ref in the worker's mirror and never push it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// Commands run in the workspace with no network; after the agent for an attempt,
    /// before it for a verifier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// The agent must write a JSON answer of this kind to the file in
    /// `$NIGHTSHIFT_ANSWER`; anything else fails the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerKind>,
    /// No agent: the run only pushes `start_from` (the parent publishing its pick).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_agent: bool,
}

impl Staging {
    pub fn is_plain(&self) -> bool {
        self == &Staging::default()
    }
}

/// A commit a run of the same parent kept: `refs/nightshift/held/r{run}` in the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub run: RunId,
    pub commit: String,
}

impl Held {
    /// The ref the commit is kept under in the worker's mirror of the repository.
    pub fn reference(run: RunId) -> String {
        format!("refs/nightshift/held/{run}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnswerKind {
    /// `{"verdict": "pass" | "fail", "findings": ["..."]}`.
    Verdict,
    /// `{"winner": N, "reason": "..."}`, N one of `candidates` (attempt numbers).
    Pick { candidates: Vec<u32> },
}

/// An agent's validated answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Verdict { pass: bool, findings: Vec<String> },
    Pick { winner: u32, reason: String },
}

/// What the worker reports of the staging, in the result's `details.staging`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingReport {
    /// The held commit (`hold`), when the run made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Each check command's outcome, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckOutcome>,
    /// Lines inserted plus deleted since the run's start, and files touched.
    #[serde(default)]
    pub lines_changed: u64,
    #[serde(default)]
    pub files_changed: u64,
    /// Files left with conflict markers by `merge`, with the run they came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
}

impl StagingReport {
    pub const DETAILS_KEY: &'static str = "staging";

    /// The report in a run's result, if its worker made one.
    pub fn of(result: &crate::runs::RunResult) -> Option<StagingReport> {
        serde_json::from_value(result.details.get(Self::DETAILS_KEY)?.clone()).ok()
    }

    pub fn checks_passed(&self) -> bool {
        self.checks.iter().all(|check| check.exit_code == Some(0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub command: String,
    /// None: killed (time limit) or not started.
    pub exit_code: Option<i32>,
    /// The end of its output, for the next prompt and the record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub from: RunId,
    pub files: Vec<String>,
}

/// Bounds from nightshift.yaml (`parallel:`); nothing an event or script says raises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParallelLimits {
    /// The most attempts of one best-of-N. Default 4.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The most children of one fan-out. Default 32.
    #[serde(default = "default_children")]
    pub max_children: u32,
    /// The most author rounds of one verified task. Default 3.
    #[serde(default = "default_rounds")]
    pub max_rounds: u32,
}

impl Default for ParallelLimits {
    fn default() -> ParallelLimits {
        ParallelLimits {
            max_attempts: default_attempts(),
            max_children: default_children(),
            max_rounds: default_rounds(),
        }
    }
}

fn default_attempts() -> u32 {
    4
}

fn default_children() -> u32 {
    32
}

fn default_rounds() -> u32 {
    3
}
