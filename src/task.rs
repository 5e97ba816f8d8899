//! The rendered, fully concrete result of applying an automation to an event: `Task`
//! (what a worker runs) and `Rendered` (matched or not, why, and the flow-control keys).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Approval, DurationSpec, OutputFormat, Overlap, ProfilePath, Retry, SecretRef};
use crate::netpolicy::NetworkPolicy;
use crate::sandbox::limits::LimitsConfig;

/// How to start the agent for this run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCommand {
    pub profile: String,
    /// The argv with `{branch}` and `{base}` filled; `{prompt}`, `{prompt_file}`,
    /// `{workspace}` and `{run_id}` are filled by the worker, in one pass.
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub output: OutputFormat,
    /// Paths the profile brings into the agent phase's sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<ProfilePath>,
    /// The worker's environment variables the agent phase gets (the agent CLI's own
    /// credential), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
}

/// Network policies of both phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhasePolicies {
    pub setup: NetworkPolicy,
    pub agent: NetworkPolicy,
}

/// Everything a worker needs to run the agent once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub automation: String,
    pub agent: AgentCommand,
    pub repo: String,
    pub base: String,
    pub branch: String,
    pub prompt: String,
    pub setup: Vec<String>,
    /// References only; values are resolved by the worker for the setup phase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    pub network: PhasePolicies,
    pub paths: Vec<String>,
    pub timeout: DurationSpec,
    pub setup_timeout: DurationSpec,
    pub approval: Approval,
    pub push: bool,
    /// Whether the event that produced this task carries outside text (memory provenance).
    pub untrusted_input: bool,
    /// What each phase may use; empty: the worker's defaults.
    #[serde(default, skip_serializing_if = "LimitsConfig::is_empty")]
    pub limits: LimitsConfig,
    /// Where the run's start and end are told (docs/notify.md), filled in from the event
    /// at render: it differs from run to run, so the store keeps it with each run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::delivery::Target>,
    /// The run this one follows up (a reply in its thread, `nightshift follow-up`): its
    /// workspace starts at the tip of `branch` as the repository has it, and its push
    /// adds commits there (docs/notify.md, "Follow-ups").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<crate::runs::RunId>,
    /// Attempts, verification rounds or a fan-out this run is the parent of
    /// (docs/parallel.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::parallel::Plan>,
    /// What the worker does besides the agent when the run is part of a parent's plan.
    #[serde(default, skip_serializing_if = "crate::parallel::Staging::is_plain")]
    pub staging: crate::parallel::Staging,
}

/// Flow control for the run, with its keys rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_window: Option<DurationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    pub concurrency_limit: u32,
    pub overlap: Overlap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<DurationSpec>,
    pub retry: Retry,
}

/// The outcome of applying one automation to one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub automation: String,
    pub event_id: String,
    pub matched: bool,
    /// Why the event did or did not match.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
}

impl Default for Flow {
    /// No dedupe, no cooldown, one run at a time, queued.
    fn default() -> Flow {
        Flow {
            dedupe_key: None,
            dedupe_window: None,
            concurrency_key: None,
            concurrency_limit: 1,
            overlap: Overlap::default(),
            cooldown: None,
            retry: Retry::default(),
        }
    }
}
