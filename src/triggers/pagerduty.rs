//! PagerDuty v3 webhook triggers: event type and service filters; `incident` is the
//! incident the event is about.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Normalized, check_event_names, str_at};
use crate::config::{Code, FieldPath, Finding, SecretRef};
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
    /// `service.*` events. Empty means every service. Only event types whose payload names
    /// the service may be listed with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The largest delivery accepted, in bytes; larger ones get 413. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body: Option<usize>,
}

fn default_events() -> Vec<String> {
    vec!["incident.triggered".into()]
}

/// PagerDuty's v3 webhook event types, each with the type of its `event.data`
/// (PagerDuty's developer docs, webhooks overview: "Event Types" and "Event Data Types").
pub const EVENT_TYPES: &[(&str, &str)] = &[
    ("incident.acknowledged", "incident"),
    ("incident.action_invocation.created", "incident_action_invocation"),
    ("incident.action_invocation.terminated", "incident_action_invocation"),
    ("incident.action_invocation.updated", "incident_action_invocation"),
    ("incident.annotated", "incident_note"),
    ("incident.conference_bridge.updated", "incident_conference_bridge"),
    ("incident.custom_field_values.updated", "incident_field_values"),
    ("incident.delegated", "incident"),
    ("incident.escalated", "incident"),
    ("incident.incident_type.changed", "incident"),
    ("incident.priority_updated", "incident"),
    ("incident.reassigned", "incident"),
    ("incident.reopened", "incident"),
    ("incident.resolved", "incident"),
    ("incident.responder.added", "incident_responder"),
    ("incident.responder.replied", "incident_responder"),
    ("incident.role.assigned", "incident_role_assignment"),
    ("incident.service_updated", "incident"),
    ("incident.status_update_published", "incident_status_update"),
    ("incident.task.completed", "incident_task"),
    ("incident.task.created", "incident_task"),
    ("incident.task.updated", "incident_task"),
    ("incident.triggered", "incident"),
    ("incident.unacknowledged", "incident"),
    ("incident.workflow.completed", "incident_workflow_instance"),
    ("incident.workflow.started", "incident_workflow_instance"),
    ("pagey.ping", "ping"),
    ("service.created", "service"),
    ("service.custom_field_values.updated", "service_field_values"),
    ("service.deleted", "service"),
    ("service.updated", "service"),
];

/// The data types whose payload names a service: the whole incident or service, a
/// workflow instance (`service`), and a service's field values (`service`).
const NAMES_A_SERVICE: &[&str] = &["incident", "incident_workflow_instance", "service", "service_field_values"];

/// The largest delivery a PagerDuty hook accepts unless told otherwise.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

fn data_type(event_type: &str) -> Option<&'static str> {
    EVENT_TYPES.iter().find(|(name, _)| *name == event_type).map(|(_, data)| *data)
}

impl PagerDutyTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        let names: Vec<&str> = EVENT_TYPES.iter().map(|(name, _)| *name).collect();
        check_event_names(&self.events, &names, &path.key("events"), findings);
        if self.services.is_empty() {
            return;
        }
        for (index, name) in self.events.iter().enumerate() {
            if let Some(data) = data_type(name)
                && !NAMES_A_SERVICE.contains(&data)
            {
                findings.push(
                    Finding::new(
                        path.key("events").index(index),
                        Code::InvalidValue,
                        format!("`services` cannot apply to `{name}`: its payload ({data}) names no service"),
                    )
                    .hint("filter by service in the PagerDuty webhook subscription, or put this type in a trigger without `services`"),
                );
            }
        }
    }

    pub(super) fn accepts(&self, event: &Event) -> Result<(), String> {
        if !self.events.contains(&event.kind) {
            return Err(format!("PagerDuty event type `{}` is not in `events`", event.kind));
        }
        if !self.services.is_empty() {
            let service = ["incident", "workflow_instance", "service"]
                .iter()
                .find_map(|name| event.fields.get(*name).and_then(|object| str_at(object, "/service/id")))
                .or_else(|| event.fields.get("service").and_then(|s| str_at(s, "/id")))
                .unwrap_or_default();
            if !self.services.iter().any(|s| s == service) {
                return Err(format!("service `{service}` is not in `services`"));
            }
        }
        Ok(())
    }
}

/// The body is `{"event": {"id", "event_type", "resource_type", "occurred_at", "agent",
/// "client", "data"}}`. `data` is the incident or service itself, or an object about one
/// (a note, a responder, a task, ...) that refers to it: then `incident` (or `service`)
/// is that reference and the object sits beside it under its type without the
/// resource's prefix (`note`, `responder`, `status_update`, `field_values`, ...). An `incident.*` event
/// always has `incident`, with at least its `id`.
pub(super) fn normalize(payload: &Value, headers: &BTreeMap<String, String>) -> Normalized {
    let envelope = payload.get("event").cloned().unwrap_or(Value::Null);
    let mut fields = Map::new();
    if let Some(data) = envelope.get("data") {
        let resource = str_at(&envelope, "/resource_type").unwrap_or("incident");
        let kind = str_at(data, "/type").unwrap_or(resource);
        if kind == resource || kind == "ping" {
            fields.insert(resource.to_string(), data.clone());
        } else {
            let name = kind.strip_prefix(resource).and_then(|k| k.strip_prefix('_')).unwrap_or(kind);
            fields.insert(name.to_string(), data.clone());
            // A role assignment names its incident in each assignment.
            let reference =
                data.get(resource).or_else(|| data.pointer(&format!("/incident_role_assignments/0/{resource}")));
            if let Some(reference) = reference {
                fields.insert(resource.to_string(), reference.clone());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fixture: &str) -> Event {
        let path = format!("{}/tests/data/pagerduty/{fixture}", env!("CARGO_MANIFEST_DIR"));
        let payload = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        Event::from_delivery(crate::triggers::TriggerKind::Pagerduty, payload, BTreeMap::new(), chrono::Utc::now())
    }

    fn trigger(events: &[&str], services: &[&str]) -> PagerDutyTrigger {
        serde_json::from_value(serde_json::json!({"secret": "env:S", "events": events, "services": services})).unwrap()
    }

    #[test]
    fn every_incident_event_names_the_incident_with_the_other_object_beside_it() {
        let cases = [
            ("incident_priority_updated.json", None),
            ("incident_annotated.json", Some(("note", "incident_note"))),
            ("incident_responder_added.json", Some(("responder", "incident_responder"))),
            ("incident_status_update_published.json", Some(("status_update", "incident_status_update"))),
            ("incident_conference_bridge_updated.json", Some(("conference_bridge", "incident_conference_bridge"))),
            ("incident_custom_field_values_updated.json", Some(("field_values", "incident_field_values"))),
            ("incident_workflow_started.json", Some(("workflow_instance", "incident_workflow_instance"))),
            ("incident_role_assigned.json", Some(("role_assignment", "incident_role_assignment"))),
            ("incident_task_created.json", Some(("task", "incident_task"))),
            ("incident_action_invocation_created.json", Some(("action_invocation", "incident_action_invocation"))),
        ];
        for (fixture, beside) in cases {
            let event = event(fixture);
            assert_eq!(event.fields["incident"]["id"], "Q2A8KZ3F0XRM1Y", "{fixture}");
            if let Some((name, data_type)) = beside {
                assert_eq!(event.fields[name]["type"], data_type, "{fixture}");
            }
            assert!(trigger(&[&event.kind], &[]).accepts(&event).is_ok(), "{fixture}");
        }
        let note = event("incident_annotated.json");
        assert_eq!(note.fields["note"]["content"], "Rolled back payments-api to v2.14.1; error rate falling.");
    }

    #[test]
    fn services_filter_reads_the_incident_workflow_or_service() {
        for fixture in [
            "incident_priority_updated.json",
            "incident_workflow_started.json",
            "service_updated.json",
            "service_custom_field_values_updated.json",
        ] {
            let event = event(fixture);
            assert_eq!(trigger(&[&event.kind], &["PSVC7PAY"]).accepts(&event), Ok(()), "{fixture}");
            assert!(trigger(&[&event.kind], &["POTHER1"]).accepts(&event).is_err(), "{fixture}");
        }
    }

    fn findings(events: &[&str], services: &[&str]) -> Vec<String> {
        let mut findings = Vec::new();
        trigger(events, services).check(&FieldPath::root(), &mut findings);
        findings.into_iter().map(|f| f.message).collect()
    }

    #[test]
    fn current_event_types_load_and_services_only_beside_types_that_name_one() {
        let new_types = [
            "incident.service_updated",
            "incident.role.assigned",
            "incident.task.created",
            "incident.action_invocation.terminated",
            "service.custom_field_values.updated",
        ];
        assert_eq!(findings(&new_types, &[]), Vec::<String>::new());
        assert_eq!(findings(&["incident.triggered", "incident.workflow.started"], &["P1"]), Vec::<String>::new());
        let refused = findings(&["incident.triggered", "incident.annotated"], &["P1"]);
        assert_eq!(
            refused,
            ["`services` cannot apply to `incident.annotated`: its payload (incident_note) names no service"]
        );
        assert!(findings(&[], &[])[0].contains("`events` is empty"));
    }
}
