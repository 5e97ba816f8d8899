//! Prometheus Alertmanager triggers (webhook payload version 4): status filters, one run
//! per group or per alert, and cancellation on `resolved`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Normalized, str_at};
use crate::config::{Code, FieldPath, Finding};
use crate::event::Event;
use crate::triggers::webhook::WebhookAuth;

/// Alertmanager webhook receivers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerTrigger {
    /// How Alertmanager authenticates: `bearer` or `basic` (its `http_config`), or `none`.
    pub auth: WebhookAuth,
    /// One run per notification (`group`) or per alert in it (`alert`). Default `group`.
    #[serde(default)]
    pub per: AlertGrouping,
    /// Notification statuses that start runs. Default `[firing]`.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<AlertStatus>,
    /// A `resolved` notification cancels the group's run if it has not started. Default true.
    #[serde(default = "yes")]
    pub cancel_on_resolved: bool,
    /// The largest notification accepted, in bytes; larger ones get 413. Default 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body: Option<usize>,
}

/// The largest notification an Alertmanager hook accepts unless told otherwise.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

fn yes() -> bool {
    true
}

fn default_statuses() -> Vec<AlertStatus> {
    vec![AlertStatus::Firing]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertGrouping {
    #[default]
    Group,
    Alert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

impl AlertmanagerTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        if self.statuses.is_empty() {
            findings.push(
                Finding::new(
                    path.key("statuses"),
                    Code::InvalidValue,
                    "`statuses` is empty, so nothing would ever match",
                )
                .hint("list `firing`, `resolved` or both, or leave `statuses` out for `[firing]`"),
            );
        }
        self.auth.check(&path.key("auth"), findings);
        if self.auth.hmac.is_some() || self.auth.standard.is_some() {
            findings.push(
                Finding::new(path.key("auth"), Code::InvalidValue, "Alertmanager cannot sign its notifications")
                    .hint("use `bearer` or `basic`, as set in the receiver's `http_config`"),
            );
        }
    }

    pub(super) fn accepts(&self, event: &Event) -> Result<(), String> {
        let status = event.fields.get("status").and_then(Value::as_str).unwrap_or_default();
        if !self.statuses.iter().any(|s| s.as_str() == status) {
            return Err(format!("alert status `{status}` is not in `statuses`"));
        }
        Ok(())
    }
}

/// Fields keep Alertmanager's names in snake_case: `status`, `receiver`, `group_key`,
/// `group_labels`, `common_labels`, `common_annotations`, `external_url`, `alerts`.
pub(super) fn normalize(payload: &Value) -> Normalized {
    let mut fields = Map::new();
    for (wire, name) in [
        ("status", "status"),
        ("receiver", "receiver"),
        ("groupKey", "group_key"),
        ("groupLabels", "group_labels"),
        ("commonLabels", "common_labels"),
        ("commonAnnotations", "common_annotations"),
        ("externalURL", "external_url"),
        ("alerts", "alerts"),
        ("truncatedAlerts", "truncated_alerts"),
    ] {
        if let Some(value) = payload.get(wire) {
            fields.insert(name.into(), value.clone());
        }
    }
    // A notification split per alert carries one: name it for rules and flow control.
    if let Some([alert]) = payload.get("alerts").and_then(Value::as_array).map(Vec::as_slice) {
        fields.insert("alert".into(), alert.clone());
        fields.insert("fingerprint".into(), Value::String(fingerprint(alert)));
    }
    let status = str_at(payload, "/status").unwrap_or("unknown");
    Normalized { kind: format!("alert.{status}"), delivery_id: group_delivery_id(payload), fields }
}

/// A notification as one notification per alert (`per: alert`): each keeps the group's
/// fields, carries one alert, and takes that alert's status, so each has its own
/// delivery id (group key + status + fingerprint).
pub fn split_per_alert(payload: &Value) -> Vec<Value> {
    let Some(alerts) = payload.get("alerts").and_then(Value::as_array).filter(|a| !a.is_empty()) else {
        return vec![payload.clone()];
    };
    alerts
        .iter()
        .map(|alert| {
            let mut one = payload.clone();
            one["alerts"] = Value::Array(vec![alert.clone()]);
            if let Some(status) = alert.get("status") {
                one["status"] = status.clone();
            }
            one
        })
        .collect()
}

/// What names an alert: its `fingerprint`, or for a sender that leaves it out, a hash of
/// its labels (the same labels, the same alert, as Alertmanager's own fingerprint).
pub fn fingerprint(alert: &Value) -> String {
    if let Some(fingerprint) = str_at(alert, "/fingerprint").filter(|f| !f.is_empty()) {
        return fingerprint.to_string();
    }
    let mut labels: Vec<(&String, &Value)> =
        alert.get("labels").and_then(Value::as_object).map(|l| l.iter().collect()).unwrap_or_default();
    labels.sort_unstable_by_key(|(name, _)| *name);
    let pairs: Vec<String> = labels.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let parts: Vec<&str> = pairs.iter().map(String::as_str).collect();
    format!("labels:{}", crate::event::short_hash(&parts))
}

/// Group key + status + sorted alert fingerprints: one id per distinct notification.
/// Each fingerprint goes with its alert's `startsAt`, so an alert that fires again
/// after resolving (same labels, same fingerprint) is a new delivery, while
/// Alertmanager's repeats of one notification are not.
fn group_delivery_id(payload: &Value) -> Option<String> {
    let group_key = str_at(payload, "/groupKey")?;
    let status = str_at(payload, "/status").unwrap_or_default();
    let mut fingerprints: Vec<String> = payload
        .get("alerts")
        .and_then(Value::as_array)
        .map(|alerts| {
            alerts
                .iter()
                .map(|a| format!("{}@{}", fingerprint(a), str_at(a, "/startsAt").unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    fingerprints.sort_unstable();
    Some(crate::event::short_hash(&[group_key, status, &fingerprints.join(",")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(status: &str, alerts: &[(&str, &str, &str)]) -> Value {
        let alerts: Vec<Value> = alerts
            .iter()
            .map(|(fingerprint, alert_status, starts)| {
                serde_json::json!({"status": alert_status, "fingerprint": fingerprint, "startsAt": starts,
                    "labels": {"alertname": "DiskFull", "instance": fingerprint}})
            })
            .collect();
        serde_json::json!({"version": "4", "status": status, "groupKey": "{}:{alertname=\"DiskFull\"}",
            "groupLabels": {"alertname": "DiskFull"}, "alerts": alerts})
    }

    #[test]
    fn per_alert_splits_into_one_delivery_per_alert_with_its_own_status() {
        let group = notification(
            "firing",
            &[("a1", "firing", "2026-11-22T10:00:00Z"), ("b2", "resolved", "2026-11-22T09:00:00Z")],
        );
        let split = split_per_alert(&group);
        assert_eq!(split.len(), 2);
        let normalized: Vec<Normalized> = split.iter().map(normalize).collect();
        assert_eq!(normalized[0].kind, "alert.firing");
        assert_eq!(normalized[1].kind, "alert.resolved");
        assert_eq!(normalized[1].fields["alert"]["fingerprint"], "b2");
        assert_ne!(normalized[0].delivery_id, normalized[1].delivery_id);
        assert_ne!(normalized[0].delivery_id, normalize(&group).delivery_id);
    }

    #[test]
    fn an_empty_status_list_is_refused_at_load() {
        let empty: AlertmanagerTrigger =
            serde_json::from_value(serde_json::json!({"auth": {"none": true}, "statuses": []})).unwrap();
        let mut findings = Vec::new();
        empty.check(&FieldPath::root(), &mut findings);
        assert!(findings.iter().any(|f| f.message.contains("`statuses` is empty")), "{findings:?}");
    }

    #[test]
    fn alerts_without_a_fingerprint_are_told_apart_by_their_labels() {
        let mut group = notification(
            "firing",
            &[("a1", "firing", "2026-11-22T10:00:00Z"), ("b2", "firing", "2026-11-22T10:00:00Z")],
        );
        for alert in group["alerts"].as_array_mut().unwrap() {
            alert.as_object_mut().unwrap().remove("fingerprint");
        }
        let ids: Vec<Option<String>> = split_per_alert(&group).iter().map(|one| normalize(one).delivery_id).collect();
        assert_ne!(ids[0], ids[1], "each alert is its own delivery");
        let reordered = serde_json::json!({"labels": {"instance": "a1", "alertname": "DiskFull"}});
        assert_eq!(fingerprint(&group["alerts"][0]), fingerprint(&reordered));
        assert_eq!(fingerprint(&serde_json::json!({"fingerprint": "f00d", "labels": {}})), "f00d");
    }

    #[test]
    fn repeats_share_a_delivery_id_and_a_new_firing_does_not() {
        let first = notification("firing", &[("a1", "firing", "2026-11-22T10:00:00Z")]);
        let repeat = notification("firing", &[("a1", "firing", "2026-11-22T10:00:00Z")]);
        let resolved = notification("resolved", &[("a1", "resolved", "2026-11-22T10:00:00Z")]);
        let fired_again = notification("firing", &[("a1", "firing", "2026-11-23T08:00:00Z")]);
        let id = |payload: &Value| normalize(payload).delivery_id.unwrap();
        assert_eq!(id(&first), id(&repeat));
        assert_ne!(id(&first), id(&resolved));
        assert_ne!(id(&first), id(&fired_again), "the same alert firing again is a new delivery");
    }
}
