//! Activities: the append-only, ordered timeline of what happened in a run.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    Plan,
    Thought,
    Action,
    Progress,
    Url,
    /// A network policy decision.
    Policy,
    Completion,
    Failure,
    Cancellation,
    /// A message to a run's `notify` target: sent, retried or given up (the outbox).
    Notify,
}

impl ActivityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Plan => "plan",
            ActivityKind::Thought => "thought",
            ActivityKind::Action => "action",
            ActivityKind::Progress => "progress",
            ActivityKind::Url => "url",
            ActivityKind::Policy => "policy",
            ActivityKind::Completion => "completion",
            ActivityKind::Failure => "failure",
            ActivityKind::Cancellation => "cancellation",
            ActivityKind::Notify => "notify",
        }
    }
}

impl fmt::Display for ActivityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker (or the engine) adds to a run's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewActivity {
    pub kind: ActivityKind,
    pub text: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl NewActivity {
    pub fn new(kind: ActivityKind, text: impl Into<String>) -> NewActivity {
        NewActivity { kind, text: text.into(), data: serde_json::Value::Null }
    }
}

/// An activity as stored: numbered from 0 in the order it was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub kind: ActivityKind,
    pub text: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}
