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
    /// For events that carry a comment: the commenter's `author_association` must be one
    /// of these, so on a public repository a stranger cannot start runs. Default
    /// `[OWNER, MEMBER, COLLABORATOR]`; empty means anyone.
    #[serde(default = "default_comment_authors")]
    pub comment_authors: Vec<AuthorAssociation>,
}

/// GitHub's `author_association` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorAssociation {
    Owner,
    Member,
    Collaborator,
    Contributor,
    FirstTimeContributor,
    FirstTimer,
    Mannequin,
    None,
}

fn default_comment_authors() -> Vec<AuthorAssociation> {
    vec![AuthorAssociation::Owner, AuthorAssociation::Member, AuthorAssociation::Collaborator]
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
        let Some(comment) = event.payload.get("comment") else { return Ok(()) };
        if let Some(mention) = &self.mention
            && !mention.is_match(str_at(comment, "/body").unwrap_or_default())
        {
            return Err(format!("comment does not match `{}`", mention.source));
        }
        let association = comment.get("author_association").cloned().unwrap_or(Value::Null);
        let allowed = serde_json::from_value::<AuthorAssociation>(association.clone())
            .is_ok_and(|a| self.comment_authors.contains(&a));
        if !self.comment_authors.is_empty() && !allowed {
            return Err(format!("commenter's association {association} is not in `comment_authors`"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(trigger: serde_json::Value, event_name: &str, payload: serde_json::Value) -> Result<(), String> {
        let trigger: GithubTrigger = serde_json::from_value(trigger).unwrap();
        let headers = BTreeMap::from([("x-github-event".to_string(), event_name.to_string())]);
        let event = Event::from_delivery(crate::triggers::TriggerKind::Github, payload, headers, chrono::Utc::now());
        trigger.accepts(&event)
    }

    #[test]
    fn comment_commands_need_a_mention_from_a_member() {
        let trigger =
            serde_json::json!({"secret": "env:S", "events": ["issue_comment.created"], "mention": "@nightshift\\b"});
        let comment = |body: &str, association: &str| serde_json::json!({"action": "created", "comment": {"body": body, "author_association": association}});
        assert_eq!(accepts(trigger.clone(), "issue_comment", comment("@nightshift fix it", "MEMBER")), Ok(()));
        assert!(accepts(trigger.clone(), "issue_comment", comment("fix it", "MEMBER")).is_err());
        let stranger = accepts(trigger.clone(), "issue_comment", comment("@nightshift fix it", "NONE"));
        assert!(stranger.unwrap_err().contains("comment_authors"));
        let mut open = trigger;
        open["comment_authors"] = serde_json::json!([]);
        assert_eq!(accepts(open, "issue_comment", comment("@nightshift fix it", "NONE")), Ok(()));
    }

    #[test]
    fn event_and_action_filters() {
        let trigger = serde_json::json!({"secret": "env:S", "events": ["pull_request.opened", "push"]});
        assert_eq!(accepts(trigger.clone(), "pull_request", serde_json::json!({"action": "opened"})), Ok(()));
        assert!(accepts(trigger.clone(), "pull_request", serde_json::json!({"action": "closed"})).is_err());
        assert_eq!(accepts(trigger, "push", serde_json::json!({"ref": "refs/heads/main"})), Ok(()));
    }
}
