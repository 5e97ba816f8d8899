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
    /// `issues.labeled`, `issue_comment.created`, `push`; checked against GitHub's list
    /// of webhook events and actions. At least one.
    pub events: Vec<String>,
    /// For events that carry a person's text (`issue_comment`, `commit_comment`,
    /// `discussion_comment`, `pull_request_review_comment`: the comment;
    /// `pull_request_review`: the review): a regular expression its body must match, e.g.
    /// `@nightshift\b`. Every listed event must carry such text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mention: Option<TextPattern>,
    /// Repositories (`owner/name`) to accept; empty means every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// For events that carry a person's text (see `mention`): its author's
    /// `author_association` must be one of these, so on a public repository a stranger
    /// cannot start runs. Default `[OWNER, MEMBER, COLLABORATOR]`; empty means anyone.
    /// When given, every listed event must carry such text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = ["OWNER", "MEMBER", "COLLABORATOR"]))]
    pub comment_authors: Option<Vec<AuthorAssociation>>,
    /// The largest delivery accepted, in bytes; larger ones get 413. Default 25 MiB,
    /// GitHub's own cap on a payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body: Option<usize>,
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

const DEFAULT_COMMENT_AUTHORS: &[AuthorAssociation] =
    &[AuthorAssociation::Owner, AuthorAssociation::Member, AuthorAssociation::Collaborator];

/// GitHub's default cap on a webhook payload: 25 MB.
pub const DEFAULT_MAX_BODY: usize = 25 << 20;

/// The events whose payload carries a person's text, and the object holding it (with its
/// `body` and `author_association`): what `mention` and `comment_authors` read.
const TEXT_EVENTS: &[(&str, &str)] = &[
    ("commit_comment", "comment"),
    ("discussion_comment", "comment"),
    ("issue_comment", "comment"),
    ("pull_request_review", "review"),
    ("pull_request_review_comment", "comment"),
];

/// The object of `event_name`'s payload that holds a person's text, if it has one.
fn text_holder(event_name: &str) -> Option<&'static str> {
    TEXT_EVENTS.iter().find(|(name, _)| *name == event_name).map(|(_, holder)| *holder)
}

/// GitHub's webhook events with their actions (none: the event has no `action`), from
/// the schemas of octokit/webhooks and octokit/openapi-webhooks (api.github.com).
/// `repository_dispatch` takes any action: it is the sender's `event_type`.
pub const WEBHOOK_EVENTS: &[(&str, &[&str])] = &[
    ("branch_protection_configuration", &["disabled", "enabled"]),
    ("branch_protection_rule", &["created", "deleted", "edited"]),
    ("check_run", &["completed", "created", "requested_action", "rerequested"]),
    ("check_suite", &["completed", "requested", "rerequested"]),
    (
        "code_scanning_alert",
        &["appeared_in_branch", "closed_by_user", "created", "fixed", "reopened", "reopened_by_user"],
    ),
    ("commit_comment", &["created"]),
    ("create", &[]),
    ("custom_property", &["created", "deleted", "promote_to_enterprise", "updated"]),
    ("custom_property_values", &["updated"]),
    ("delete", &[]),
    (
        "dependabot_alert",
        &["auto_dismissed", "auto_reopened", "created", "dismissed", "fixed", "reintroduced", "reopened"],
    ),
    ("deploy_key", &["created", "deleted"]),
    ("deployment", &["created"]),
    ("deployment_protection_rule", &["requested"]),
    ("deployment_review", &["approved", "rejected", "requested"]),
    ("deployment_status", &["created"]),
    (
        "discussion",
        &[
            "answered",
            "category_changed",
            "closed",
            "created",
            "deleted",
            "edited",
            "labeled",
            "locked",
            "pinned",
            "reopened",
            "transferred",
            "unanswered",
            "unlabeled",
            "unlocked",
            "unpinned",
        ],
    ),
    ("discussion_comment", &["created", "deleted", "edited"]),
    ("fork", &[]),
    ("github_app_authorization", &["revoked"]),
    ("gollum", &[]),
    ("installation", &["created", "deleted", "new_permissions_accepted", "suspend", "unsuspend"]),
    ("installation_repositories", &["added", "removed"]),
    ("installation_target", &["renamed"]),
    ("issue_comment", &["created", "deleted", "edited"]),
    ("issue_dependencies", &["blocked_by_added", "blocked_by_removed", "blocking_added", "blocking_removed"]),
    (
        "issues",
        &[
            "assigned",
            "closed",
            "deleted",
            "demilestoned",
            "edited",
            "labeled",
            "locked",
            "milestoned",
            "opened",
            "pinned",
            "reopened",
            "transferred",
            "typed",
            "unassigned",
            "unlabeled",
            "unlocked",
            "unpinned",
            "untyped",
        ],
    ),
    ("label", &["created", "deleted", "edited"]),
    ("marketplace_purchase", &["cancelled", "changed", "pending_change", "pending_change_cancelled", "purchased"]),
    ("member", &["added", "edited", "removed"]),
    ("membership", &["added", "removed"]),
    ("merge_group", &["checks_requested", "destroyed"]),
    ("meta", &["deleted"]),
    ("milestone", &["closed", "created", "deleted", "edited", "opened"]),
    ("org_block", &["blocked", "unblocked"]),
    ("organization", &["deleted", "member_added", "member_invited", "member_removed", "renamed"]),
    ("package", &["published", "updated"]),
    ("page_build", &[]),
    ("personal_access_token_request", &["approved", "cancelled", "created", "denied"]),
    ("ping", &[]),
    ("project", &["closed", "created", "deleted", "edited", "reopened"]),
    ("project_card", &["converted", "created", "deleted", "edited", "moved"]),
    ("project_column", &["created", "deleted", "edited", "moved"]),
    ("projects_v2", &["closed", "created", "deleted", "edited", "reopened"]),
    ("projects_v2_item", &["archived", "converted", "created", "deleted", "edited", "reordered", "restored"]),
    ("projects_v2_status_update", &["created", "deleted", "edited"]),
    ("public", &[]),
    (
        "pull_request",
        &[
            "assigned",
            "auto_merge_disabled",
            "auto_merge_enabled",
            "closed",
            "converted_to_draft",
            "demilestoned",
            "dequeued",
            "edited",
            "enqueued",
            "labeled",
            "locked",
            "milestoned",
            "opened",
            "ready_for_review",
            "reopened",
            "review_request_removed",
            "review_requested",
            "synchronize",
            "unassigned",
            "unlabeled",
            "unlocked",
        ],
    ),
    ("pull_request_review", &["dismissed", "edited", "submitted"]),
    ("pull_request_review_comment", &["created", "deleted", "edited"]),
    ("pull_request_review_thread", &["resolved", "unresolved"]),
    ("push", &[]),
    ("registry_package", &["published", "updated"]),
    ("release", &["created", "deleted", "edited", "prereleased", "published", "released", "unpublished"]),
    (
        "repository",
        &[
            "archived",
            "created",
            "deleted",
            "edited",
            "privatized",
            "publicized",
            "renamed",
            "transferred",
            "unarchived",
        ],
    ),
    ("repository_advisory", &["published", "reported"]),
    ("repository_dispatch", &[]),
    ("repository_import", &[]),
    ("repository_ruleset", &["created", "deleted", "edited"]),
    ("repository_vulnerability_alert", &["create", "dismiss", "reopen", "resolve"]),
    (
        "secret_scanning_alert",
        &["assigned", "created", "publicly_leaked", "reopened", "resolved", "revoked", "unassigned", "validated"],
    ),
    ("secret_scanning_alert_location", &["created"]),
    ("secret_scanning_scan", &["completed"]),
    ("security_advisory", &["performed", "published", "updated", "withdrawn"]),
    ("security_and_analysis", &[]),
    ("sponsorship", &["cancelled", "created", "edited", "pending_cancellation", "pending_tier_change", "tier_changed"]),
    ("star", &["created", "deleted"]),
    ("status", &[]),
    ("sub_issues", &["parent_issue_added", "parent_issue_removed", "sub_issue_added", "sub_issue_removed"]),
    ("team", &["added_to_repository", "created", "deleted", "edited", "removed_from_repository"]),
    ("team_add", &[]),
    ("watch", &["started"]),
    ("workflow_dispatch", &[]),
    ("workflow_job", &["completed", "in_progress", "queued", "waiting"]),
    ("workflow_run", &["completed", "in_progress", "requested"]),
];

fn actions_of(event_name: &str) -> Option<&'static [&'static str]> {
    WEBHOOK_EVENTS.iter().find(|(name, _)| *name == event_name).map(|(_, actions)| *actions)
}

/// Why `name` is not a GitHub webhook event or `event.action`, with a suggestion.
fn unknown_event(name: &str) -> Option<(String, String)> {
    let (event_name, action) = match name.split_once('.') {
        Some((event_name, action)) => (event_name, Some(action)),
        None => (name, None),
    };
    let Some(actions) = actions_of(event_name) else {
        let known = WEBHOOK_EVENTS.iter().flat_map(|(event_name, actions)| {
            std::iter::once(event_name.to_string()).chain(actions.iter().map(move |a| format!("{event_name}.{a}")))
        });
        let known: Vec<String> = known.collect();
        let hint = match crate::config::did_you_mean(name, known.iter().map(String::as_str)) {
            Some(close) => format!("did you mean `{close}`?"),
            None => "see GitHub's list of webhook events; names are lowercase with underscores, e.g. `pull_request`"
                .to_string(),
        };
        return Some((format!("unknown GitHub event `{event_name}`"), hint));
    };
    let action = action?;
    if event_name == "repository_dispatch" || actions.contains(&action) {
        return None;
    }
    if actions.is_empty() {
        return Some((format!("GitHub event `{event_name}` has no actions"), format!("write `{event_name}`")));
    }
    let hint = match crate::config::did_you_mean(action, actions.iter().copied()) {
        Some(close) => format!("did you mean `{event_name}.{close}`?"),
        None => format!("its actions: {}", actions.join(", ")),
    };
    Some((format!("GitHub event `{event_name}` has no action `{action}`"), hint))
}

impl GithubTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        let events = path.key("events");
        if self.events.is_empty() {
            findings.push(
                Finding::new(events.clone(), Code::InvalidValue, "`events` is empty, so nothing would ever match")
                    .hint("list the events to accept, e.g. `[pull_request.opened]`"),
            );
        }
        for (index, name) in self.events.iter().enumerate() {
            if let Some((message, hint)) = unknown_event(name) {
                findings.push(Finding::new(events.index(index), Code::InvalidValue, message).hint(hint));
            }
        }
        let text_filters = [("mention", self.mention.is_some()), ("comment_authors", self.comment_authors.is_some())];
        for (filter, set) in text_filters {
            if !set {
                continue;
            }
            for (index, name) in self.events.iter().enumerate() {
                let event_name = name.split('.').next().unwrap_or_default();
                if text_holder(event_name).is_none() && unknown_event(name).is_none() {
                    findings.push(
                        Finding::new(
                            events.index(index),
                            Code::InvalidValue,
                            format!("`{filter}` cannot apply to `{name}`: its payload carries no comment or review"),
                        )
                        .hint(format!(
                            "`{filter}` reads the text of {}; put `{name}` in a trigger of its own",
                            TEXT_EVENTS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
                        )),
                    );
                }
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
        // A missing comment or review counts as empty text by nobody: refused.
        let Some(holder) = text_holder(event_name) else { return Ok(()) };
        let text = event.payload.get(holder).unwrap_or(&Value::Null);
        if let Some(mention) = &self.mention
            && !mention.is_match(str_at(text, "/body").unwrap_or_default())
        {
            return Err(format!("the {holder} does not match `{}`", mention.source));
        }
        let authors = self.comment_authors.as_deref().unwrap_or(DEFAULT_COMMENT_AUTHORS);
        let association = text.get("author_association").cloned().unwrap_or(Value::Null);
        let allowed =
            serde_json::from_value::<AuthorAssociation>(association.clone()).is_ok_and(|a| authors.contains(&a));
        if !authors.is_empty() && !allowed {
            return Err(format!("the {holder} author's association {association} is not in `comment_authors`"));
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

    #[test]
    fn a_review_is_held_to_the_mention_and_its_authors_association() {
        let trigger = serde_json::json!({"secret": "env:S", "events": ["pull_request_review.submitted"],
            "mention": "@nightshift\\b"});
        let review = |body: Value, association: &str| {
            serde_json::json!({"action": "submitted",
            "review": {"body": body, "author_association": association, "state": "commented"}})
        };
        let member = accepts(trigger.clone(), "pull_request_review", review("@nightshift fix it".into(), "MEMBER"));
        assert_eq!(member, Ok(()));
        let stranger = accepts(trigger.clone(), "pull_request_review", review("@nightshift fix it".into(), "NONE"));
        assert!(stranger.unwrap_err().contains("comment_authors"));
        let unmentioned = accepts(trigger.clone(), "pull_request_review", review("looks good".into(), "MEMBER"));
        assert!(unmentioned.unwrap_err().contains("review does not match"));
        // An approval without a body has no mention either.
        assert!(accepts(trigger, "pull_request_review", review(Value::Null, "OWNER")).is_err());
    }

    fn findings(trigger: serde_json::Value) -> Vec<(String, Option<String>)> {
        let trigger: GithubTrigger = serde_json::from_value(trigger).unwrap();
        let mut findings = Vec::new();
        trigger.check(&FieldPath::root(), &mut findings);
        findings.into_iter().map(|f| (f.message, f.hint)).collect()
    }

    #[test]
    fn event_names_are_checked_against_githubs_list_with_a_suggestion() {
        let check = |events: serde_json::Value| findings(serde_json::json!({"secret": "env:S", "events": events}));
        let known = ["projects_v2_item.edited", "push", "pull_request", "repository_dispatch.deploy"];
        assert_eq!(check(serde_json::json!(known)), []);
        let typo = check(serde_json::json!(["issue.opened"]));
        assert_eq!(typo[0].0, "unknown GitHub event `issue`");
        assert_eq!(typo[0].1.as_deref(), Some("did you mean `issues.opened`?"));
        let action = check(serde_json::json!(["pull_request.open"]));
        assert_eq!(action[0].0, "GitHub event `pull_request` has no action `open`");
        assert_eq!(action[0].1.as_deref(), Some("did you mean `pull_request.opened`?"));
        assert_eq!(check(serde_json::json!(["push.created"]))[0].0, "GitHub event `push` has no actions");
        assert!(check(serde_json::json!([]))[0].0.contains("`events` is empty"));
    }

    #[test]
    fn comment_filters_are_refused_beside_events_without_a_comment_or_review() {
        let with = |extra: serde_json::Value| {
            let mut trigger = serde_json::json!({"secret": "env:S",
                "events": ["issue_comment.created", "pull_request_review", "pull_request.opened"]});
            trigger.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            findings(trigger)
        };
        assert_eq!(with(serde_json::json!({})), [], "the default comment_authors applies where it can");
        let mention = with(serde_json::json!({"mention": "@nightshift"}));
        assert_eq!(mention.len(), 1);
        assert!(mention[0].0.contains("`mention` cannot apply to `pull_request.opened`"), "{mention:?}");
        let authors = with(serde_json::json!({"comment_authors": ["OWNER"]}));
        assert!(authors[0].0.contains("`comment_authors` cannot apply"), "{authors:?}");
    }
}
