//! `Event`: what a trigger source received, in the one shape the rules and the store use.

use std::borrow::Cow;
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
    /// `source:delivery-id` when the provider sends one (so retries share an id), else a
    /// hash of the arrival time and body.
    pub id: String,
    pub source: TriggerKind,
    /// Source-specific type, e.g. `incident.triggered`, `pull_request.opened`, `message`.
    #[serde(rename = "type")]
    pub kind: String,
    pub received_at: DateTime<Utc>,
    /// The provider's delivery id (X-GitHub-Delivery, Slack event_id, X-Webhook-Id, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// The request headers rules may read (`KEPT_HEADERS`), names lowercased. Credentials
    /// and signatures are never kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// A borrowed view of an `Event` that serializes without its `fields`.
#[derive(Debug, Serialize)]
pub struct EventWithoutFields<'a> {
    id: &'a str,
    source: TriggerKind,
    #[serde(rename = "type")]
    kind: &'a str,
    received_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_id: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    payload: &'a Value,
}

/// Headers kept on an event: what identifies the delivery and its type. Everything else
/// (notably `authorization`, signatures and cookies) is dropped on arrival, so no
/// template can put a credential into a prompt or the store.
pub const KEPT_HEADERS: [&str; 13] = [
    "content-type",
    "user-agent",
    "x-request-id",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-type",
    "x-slack-retry-num",
    "x-slack-retry-reason",
    "x-webhook-id",
    "x-webhook-subscription",
    "webhook-id",
    "webhook-timestamp",
];

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
        let headers: BTreeMap<String, String> = headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .filter(|(name, _)| KEPT_HEADERS.contains(&name.as_str()))
            .collect();
        let normalized = crate::triggers::normalize(source, &payload, &headers);
        let id = match &normalized.delivery_id {
            Some(delivery) => format!("{}:{delivery}", source.as_str()),
            // No delivery id: two identical bodies are still two events.
            None => {
                let arrival = received_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                format!("{}:{}", source.as_str(), short_hash(&[&arrival, &payload.to_string()]))
            }
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

    /// The event without `fields` (they can be derived again from the payload), for
    /// storing: it serializes like an `Event` whose `fields` are empty, with no copy.
    pub fn without_fields(&self) -> EventWithoutFields<'_> {
        EventWithoutFields {
            id: &self.id,
            source: self.source,
            kind: &self.kind,
            received_at: self.received_at,
            delivery_id: self.delivery_id.as_deref(),
            headers: &self.headers,
            payload: &self.payload,
        }
    }

    /// The properties rules see as `event`: the source's fields, then the standard ones
    /// (which a field of the same name never replaces). Borrowed, so converting them for
    /// rhai needs no intermediate JSON copy.
    pub fn rule_entries(&self) -> Vec<(&str, Cow<'_, Value>)> {
        let mut entries: Vec<(&str, Cow<'_, Value>)> = self
            .fields
            .iter()
            .filter(|(name, _)| !STANDARD_FIELDS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), Cow::Borrowed(value)))
            .collect();
        let text = |s: String| Cow::Owned(Value::String(s));
        let headers = self.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        entries.extend([
            ("id", text(self.id.clone())),
            ("source", text(self.source.as_str().to_string())),
            ("type", text(self.kind.clone())),
            ("received_at", text(self.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))),
            ("headers", Cow::Owned(Value::Object(headers))),
            ("payload", Cow::Borrowed(&self.payload)),
        ]);
        entries
    }
}

/// First 16 hex digits of the SHA-256 of `parts`, each ended by a newline.
pub fn short_hash(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_signatures_are_not_kept() {
        let headers = BTreeMap::from([
            ("Authorization".to_string(), "Bearer hunter2".to_string()),
            ("X-Hub-Signature-256".to_string(), "sha256=00".to_string()),
            ("Cookie".to_string(), "session=1".to_string()),
            ("X-GitHub-Event".to_string(), "pull_request".to_string()),
        ]);
        let event = Event::from_delivery(TriggerKind::Github, serde_json::json!({}), headers, Utc::now());
        assert_eq!(event.headers.keys().collect::<Vec<_>>(), ["x-github-event"]);
    }

    #[test]
    fn ids_come_from_delivery_ids_else_arrival_and_body() {
        let headers = BTreeMap::from([("X-GitHub-Delivery".to_string(), "abc".to_string())]);
        let retried = Event::from_delivery(TriggerKind::Github, serde_json::json!({}), headers, Utc::now());
        assert_eq!(retried.id, "github:abc");
        let at = Utc::now();
        let first = Event::from_delivery(TriggerKind::Manual, serde_json::json!({}), BTreeMap::new(), at);
        let second = Event::from_delivery(
            TriggerKind::Manual,
            serde_json::json!({}),
            BTreeMap::new(),
            at + chrono::Duration::milliseconds(1),
        );
        assert_ne!(first.id, second.id);
    }
}
