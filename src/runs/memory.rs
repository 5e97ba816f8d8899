//! Per-automation memory: entries with provenance, and the writes an `after_run` script
//! (or a person, through `nightshift memory`) makes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RunId;

/// One remembered value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub value: serde_json::Value,
    /// The run whose `after_run` wrote it; none when a person set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<RunId>,
    pub written_at: DateTime<Utc>,
    /// Whether the writing run read outside text (an event from a webhook or chat, or
    /// memory that was itself untrusted). Rules should treat such values as data.
    pub untrusted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl MemoryEntry {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|expiry| expiry > now)
    }
}

/// A change to one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemoryChange {
    Set { value: serde_json::Value, expires_at: Option<DateTime<Utc>> },
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryWrite {
    pub key: String,
    pub change: MemoryChange,
    /// The value came from outside text even if the writing run's own input did not
    /// (its `after_run` read untrusted memory). The store also marks every write of a
    /// run that read untrusted input.
    #[serde(default)]
    pub untrusted: bool,
}
