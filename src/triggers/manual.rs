//! Manual triggers: runs started by `nightshift trigger` or the HTTP API.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Normalized, object_fields};

/// Manual runs; the JSON body becomes the event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTrigger {}

pub(super) fn normalize(payload: &Value) -> Normalized {
    Normalized { kind: "manual".into(), delivery_id: None, fields: object_fields(payload) }
}
