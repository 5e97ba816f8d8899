//! `Event`: what a trigger source received, in the one shape the rules and the store use.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::triggers::TriggerKind;

/// One received event. `payload` is the body exactly as delivered; `fields` is the
/// source's normalized view of it (e.g. `incident` for PagerDuty, `text` for Slack),
/// which rules read as top-level properties of `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: the provider's delivery id when there is one, else a content hash.
    pub id: String,
    pub source: TriggerKind,
    /// Source-specific type, e.g. `incident.triggered`, `pull_request.opened`, `message`.
    #[serde(rename = "type")]
    pub kind: String,
    pub received_at: DateTime<Utc>,
    /// The provider's delivery id (X-GitHub-Delivery, Slack event_id, X-Webhook-Id, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// Selected request headers, names lowercased.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// Names of the properties every `event` has in rules; source fields never replace them.
pub const STANDARD_FIELDS: [&str; 6] = ["id", "source", "type", "received_at", "headers", "payload"];

impl Event {
    /// Builds an event from a delivery, letting the source normalize the payload.
    pub fn from_delivery(
        source: TriggerKind,
        payload: Value,
        headers: BTreeMap<String, String>,
        received_at: DateTime<Utc>,
    ) -> Event {
        let headers: BTreeMap<String, String> =
            headers.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect();
        let normalized = crate::triggers::normalize(source, &payload, &headers);
        let id = match &normalized.delivery_id {
            Some(delivery) => format!("{}:{delivery}", source.as_str()),
            None => format!("{}:{}", source.as_str(), content_hash(&payload)),
        };
        Event {
            id,
            source,
            kind: normalized.kind,
            received_at,
            delivery_id: normalized.delivery_id,
            headers,
            payload,
            fields: normalized.fields,
        }
    }

    /// The view rules see: the standard properties plus the source's fields.
    pub fn rule_view(&self) -> Value {
        let mut view = self.fields.clone();
        view.insert("id".into(), Value::String(self.id.clone()));
        view.insert("source".into(), Value::String(self.source.as_str().into()));
        view.insert("type".into(), Value::String(self.kind.clone()));
        view.insert(
            "received_at".into(),
            Value::String(self.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
        view.insert(
            "headers".into(),
            Value::Object(self.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
        );
        view.insert("payload".into(), self.payload.clone());
        Value::Object(view)
    }
}

/// First 16 hex digits of the SHA-256 of the payload's canonical JSON.
pub fn content_hash(payload: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(payload.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
