//! GitHub webhook triggers: event/action filters (`pull_request.opened`) and an optional
//! mention pattern for comments.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Normalized, TextPattern, object_fields, str_at};
use crate::config::{Code, FieldPath, Finding, SecretRef};
use crate::event::Event;

/// GitHub webhooks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubTrigger {
    /// The webhook secret (X-Hub-Signature-256).
    pub secret: SecretRef,
    /// `event` or `event.action` names to accept, e.g. `pull_request.opened`,
    /// `issues.labeled`, `issue_comment.created`, `push`.
    pub events: Vec<String>,
    /// For events that carry a comment (`issue_comment`, `pull_request_review_comment`,
    /// `commit_comment`): a regular expression its body must match, e.g. `@nightshift\b`.
    /// Other events are not affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mention: Option<TextPattern>,
    /// Repositories (`owner/name`) to accept; empty means every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

impl GithubTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        for (index, name) in self.events.iter().enumerate() {
            let well_formed = !name.is_empty()
                && name.split('.').count() <= 2
                && name
                    .split('.')
                    .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if !well_formed {
                findings.push(
                    Finding::new(
                        path.key("events").index(index),
                        Code::InvalidValue,
                        format!("invalid GitHub event `{name}`"),
                    )
                    .hint("write `event` or `event.action` in lowercase, e.g. `pull_request.opened`"),
                );
            }
        }
        if let Some(mention) = &self.mention {
            mention.check(&path.key("mention"), findings);
        }
    }

    pub(super) fn accepts(&self, event: &Event) -> Result<(), String> {
        let event_name = event.kind.split('.').next().unwrap_or_default();
        if !self.events.iter().any(|e| *e == event.kind || e == event_name) {
            return Err(format!("GitHub event `{}` is not in `events`", event.kind));
        }
        if !self.repositories.is_empty() {
            let repo = str_at(&event.payload, "/repository/full_name").unwrap_or_default();
            if !self.repositories.iter().any(|r| r.eq_ignore_ascii_case(repo)) {
                return Err(format!("repository `{repo}` is not in `repositories`"));
            }
        }
        if let (Some(mention), Some(body)) = (&self.mention, str_at(&event.payload, "/comment/body")) {
            if !mention.is_match(body) {
                return Err(format!("comment does not match `{}`", mention.source));
            }
        }
        Ok(())
    }
}

/// The event name comes from `X-GitHub-Event`, the action from the body.
pub(super) fn normalize(payload: &Value, headers: &BTreeMap<String, String>) -> Normalized {
    let event_name = headers.get("x-github-event").map(String::as_str).unwrap_or("unknown");
    let kind = match str_at(payload, "/action") {
        Some(action) => format!("{event_name}.{action}"),
        None => event_name.to_string(),
    };
    Normalized { kind, delivery_id: headers.get("x-github-delivery").cloned(), fields: object_fields(payload) }
}
