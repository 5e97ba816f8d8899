//! PagerDuty v3 webhook triggers: event type and service filters; `incident` is the
//! incident the event is about.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Normalized, check_event_names, str_at};
use crate::config::{FieldPath, Finding, SecretRef};
use crate::event::Event;

/// PagerDuty v3 webhook subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyTrigger {
    /// The subscription's signing secret (X-PagerDuty-Signature).
    pub secret: SecretRef,
    /// Event types to accept. Default `[incident.triggered]`.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Service ids (`PXXXXXX`) to accept: the incident's service, or the service itself for
    /// `service.*` events. Empty means every service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

fn default_events() -> Vec<String> {
    vec!["incident.triggered".into()]
}

/// PagerDuty's v3 webhook event types.
pub const EVENT_TYPES: &[&str] = &[
    "incident.acknowledged",
    "incident.annotated",
    "incident.conference_bridge.updated",
    "incident.custom_field_values.updated",
    "incident.delegated",
    "incident.escalated",
    "incident.incident_type.changed",
    "incident.priority_updated",
    "incident.reassigned",
    "incident.reopened",
    "incident.resolved",
    "incident.responder.added",
    "incident.responder.replied",
    "incident.status_update_published",
    "incident.triggered",
    "incident.unacknowledged",
    "incident.workflow.completed",
    "incident.workflow.started",
    "pagey.ping",
    "service.created",
    "service.deleted",
    "service.updated",
];

impl PagerDutyTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        check_event_names(&self.events, EVENT_TYPES, &path.key("events"), findings);
    }

    pub(super) fn accepts(&self, event: &Event) -> Result<(), String> {
        if !self.events.contains(&event.kind) {
            return Err(format!("PagerDuty event type `{}` is not in `events`", event.kind));
        }
        if !self.services.is_empty() {
            let incident_service = event.fields.get("incident").and_then(|i| str_at(i, "/service/id"));
            let service = incident_service
                .or_else(|| event.fields.get("service").and_then(|s| str_at(s, "/id")))
                .unwrap_or_default();
            if !self.services.iter().any(|s| s == service) {
                return Err(format!("service `{service}` is not in `services`"));
            }
        }
        Ok(())
    }
}

/// The body is `{"event": {"id", "event_type", "resource_type", "occurred_at", "agent", "data"}}`.
pub(super) fn normalize(payload: &Value, headers: &BTreeMap<String, String>) -> Normalized {
    let envelope = payload.get("event").cloned().unwrap_or(Value::Null);
    let mut fields = Map::new();
    if let Some(data) = envelope.get("data") {
        let resource = str_at(&envelope, "/resource_type").unwrap_or("incident");
        fields.insert(resource.to_string(), data.clone());
    }
    for name in ["occurred_at", "agent", "client"] {
        if let Some(value) = envelope.get(name) {
            fields.insert(name.into(), value.clone());
        }
    }
    Normalized {
        kind: str_at(&envelope, "/event_type").unwrap_or("unknown").to_string(),
        delivery_id: headers.get("x-webhook-id").cloned().or_else(|| str_at(&envelope, "/id").map(str::to_string)),
        fields,
    }
}
