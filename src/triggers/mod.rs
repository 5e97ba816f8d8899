//! Trigger sources: each file owns one source's config, checks, payload normalization and
//! filters. Adding a source means one new file and one new field of `TriggerSpec`.

pub mod alertmanager;
pub mod cron;
pub mod github;
pub mod manual;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Code, FieldPath, Finding};
use crate::event::Event;

/// One trigger: exactly one of the fields is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Fire on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<cron::CronTrigger>,
    /// Fire on an authenticated `POST /hooks/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<webhook::WebhookTrigger>,
    /// Fire on Slack Events API messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<slack::SlackTrigger>,
    /// Fire on PagerDuty v3 webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<pagerduty::PagerDutyTrigger>,
    /// Fire on Prometheus Alertmanager notifications (webhook payload version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<alertmanager::AlertmanagerTrigger>,
    /// Fire on GitHub webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<github::GithubTrigger>,
    /// Fire only when asked: `nightshift trigger` or `POST /api/automations/{name}/run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<manual::ManualTrigger>,
}

/// The source of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    Cron,
    Webhook,
    Slack,
    Pagerduty,
    Alertmanager,
    Github,
    Manual,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 7] = [
        TriggerKind::Cron,
        TriggerKind::Webhook,
        TriggerKind::Slack,
        TriggerKind::Pagerduty,
        TriggerKind::Alertmanager,
        TriggerKind::Github,
        TriggerKind::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Cron => "cron",
            TriggerKind::Webhook => "webhook",
            TriggerKind::Slack => "slack",
            TriggerKind::Pagerduty => "pagerduty",
            TriggerKind::Alertmanager => "alertmanager",
            TriggerKind::Github => "github",
            TriggerKind::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<TriggerKind> {
        TriggerKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The largest delivery a hook of this source accepts unless told otherwise: what the
    /// provider may send. GitHub caps a payload at 25 MB; an Alertmanager notification
    /// carries every alert of its group; 1 MiB for the rest.
    pub fn default_max_body(self) -> usize {
        match self {
            TriggerKind::Github => github::DEFAULT_MAX_BODY,
            TriggerKind::Alertmanager => alertmanager::DEFAULT_MAX_BODY,
            TriggerKind::Slack => slack::DEFAULT_MAX_BODY,
            TriggerKind::Pagerduty => pagerduty::DEFAULT_MAX_BODY,
            TriggerKind::Cron | TriggerKind::Webhook | TriggerKind::Manual => webhook::DEFAULT_MAX_BODY,
        }
    }

    /// Whether events of this source carry text from outside the organisation.
    pub fn is_untrusted(self) -> bool {
        !matches!(self, TriggerKind::Cron | TriggerKind::Manual)
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trigger with its one source chosen.
#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    Cron(&'a cron::CronTrigger),
    Webhook(&'a webhook::WebhookTrigger),
    Slack(&'a slack::SlackTrigger),
    Pagerduty(&'a pagerduty::PagerDutyTrigger),
    Alertmanager(&'a alertmanager::AlertmanagerTrigger),
    Github(&'a github::GithubTrigger),
    Manual(&'a manual::ManualTrigger),
}

impl TriggerSpec {
    /// Every source set on this spec (valid specs have exactly one).
    pub fn sources(&self) -> Vec<Trigger<'_>> {
        let mut sources = Vec::new();
        if let Some(c) = &self.cron {
            sources.push(Trigger::Cron(c));
        }
        if let Some(c) = &self.webhook {
            sources.push(Trigger::Webhook(c));
        }
        if let Some(c) = &self.slack {
            sources.push(Trigger::Slack(c));
        }
        if let Some(c) = &self.pagerduty {
            sources.push(Trigger::Pagerduty(c));
        }
        if let Some(c) = &self.alertmanager {
            sources.push(Trigger::Alertmanager(c));
        }
        if let Some(c) = &self.github {
            sources.push(Trigger::Github(c));
        }
        if let Some(c) = &self.manual {
            sources.push(Trigger::Manual(c));
        }
        sources
    }

    /// The source of a valid spec.
    pub fn source(&self) -> Option<Trigger<'_>> {
        match self.sources().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Load-time checks of the spec at `path`.
    pub fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        let sources = self.sources();
        if sources.len() != 1 {
            let names = TriggerKind::ALL.map(TriggerKind::as_str).join(", ");
            let message = if sources.is_empty() {
                "a trigger needs a source".to_string()
            } else {
                let set: Vec<&str> = sources.iter().map(|s| s.kind().as_str()).collect();
                format!("a trigger has exactly one source, this one has {}", set.join(" and "))
            };
            findings.push(
                Finding::new(path.clone(), Code::InvalidValue, message)
                    .hint(format!("write one of {names}; list several triggers for several sources")),
            );
            return;
        }
        let source = sources[0];
        let path = path.key(source.kind().as_str());
        match source {
            Trigger::Cron(c) => c.check(&path, findings),
            Trigger::Webhook(c) => c.check(&path, findings),
            Trigger::Slack(c) => c.check(&path, findings),
            Trigger::Pagerduty(c) => c.check(&path, findings),
            Trigger::Alertmanager(c) => c.check(&path, findings),
            Trigger::Github(c) => c.check(&path, findings),
            Trigger::Manual(_) => {}
        }
    }
}

impl Trigger<'_> {
    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::Cron(_) => TriggerKind::Cron,
            Trigger::Webhook(_) => TriggerKind::Webhook,
            Trigger::Slack(_) => TriggerKind::Slack,
            Trigger::Pagerduty(_) => TriggerKind::Pagerduty,
            Trigger::Alertmanager(_) => TriggerKind::Alertmanager,
            Trigger::Github(_) => TriggerKind::Github,
            Trigger::Manual(_) => TriggerKind::Manual,
        }
    }

    /// The `{name}` in `/hooks/{name}` this trigger is served at: a webhook's `path`,
    /// else the automation's name. Cron and manual triggers have none.
    pub fn hook_name(&self, automation: &str) -> Option<String> {
        match self {
            Trigger::Cron(_) | Trigger::Manual(_) => None,
            Trigger::Webhook(webhook) => Some(webhook.path.clone().unwrap_or_else(|| automation.to_string())),
            _ => Some(automation.to_string()),
        }
    }

    /// The body limit the trigger sets itself (`max_body`), if any.
    pub fn max_body(&self) -> Option<usize> {
        match self {
            Trigger::Cron(_) | Trigger::Manual(_) => None,
            Trigger::Webhook(c) => c.max_body,
            Trigger::Slack(c) => c.max_body,
            Trigger::Pagerduty(c) => c.max_body,
            Trigger::Alertmanager(c) => c.max_body,
            Trigger::Github(c) => c.max_body,
        }
    }

    /// Whether this trigger's filters let the event through; `Err` says why not.
    pub fn accepts(&self, event: &Event) -> Result<(), String> {
        if event.source != self.kind() {
            return Err(format!("event from {} does not reach a {} trigger", event.source, self.kind()));
        }
        match self {
            Trigger::Cron(_) | Trigger::Webhook(_) | Trigger::Manual(_) => Ok(()),
            Trigger::Slack(c) => c.accepts(event),
            Trigger::Pagerduty(c) => c.accepts(event),
            Trigger::Alertmanager(c) => c.accepts(event),
            Trigger::Github(c) => c.accepts(event),
        }
    }
}

/// What a source makes of a payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    pub kind: String,
    pub delivery_id: Option<String>,
    pub fields: Map<String, Value>,
}

/// Normalizes a payload of `source` into an event type, delivery id and fields.
pub fn normalize(source: TriggerKind, payload: &Value, headers: &BTreeMap<String, String>) -> Normalized {
    match source {
        TriggerKind::Cron => cron::normalize(payload),
        TriggerKind::Webhook => webhook::normalize(payload, headers),
        TriggerKind::Slack => slack::normalize(payload),
        TriggerKind::Pagerduty => pagerduty::normalize(payload, headers),
        TriggerKind::Alertmanager => alertmanager::normalize(payload),
        TriggerKind::Github => github::normalize(payload, headers),
        TriggerKind::Manual => manual::normalize(payload),
    }
}

/// A payload's top-level object, as fields.
fn object_fields(payload: &Value) -> Map<String, Value> {
    payload.as_object().cloned().unwrap_or_default()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// A regular expression from a config file, compiled on first use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct TextPattern {
    pub source: String,
    #[serde(skip)]
    #[schemars(skip)]
    compiled: OnceLock<Result<Regex, String>>,
}

impl TextPattern {
    fn compiled(&self) -> &Result<Regex, String> {
        self.compiled.get_or_init(|| Regex::new(&self.source).map_err(|e| e.to_string()))
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.compiled().as_ref().is_ok_and(|re| re.is_match(text))
    }

    pub fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        if let Err(error) = self.compiled() {
            let first_line = error.lines().last().unwrap_or(error).trim();
            findings.push(
                Finding::new(path.clone(), Code::InvalidValue, format!("invalid regular expression: {first_line}"))
                    .hint("patterns use Rust regex syntax, e.g. `^bug:`"),
            );
        }
    }
}

/// Reports an event name that is not among `known`, with a suggestion.
fn check_event_names(names: &[String], known: &[&str], path: &FieldPath, findings: &mut Vec<Finding>) {
    if names.is_empty() {
        findings.push(
            Finding::new(path.clone(), Code::InvalidValue, "`events` is empty, so nothing would ever match").hint(
                format!("list the event types to accept, e.g. `[{}]`", known.first().copied().unwrap_or_default()),
            ),
        );
    }
    for (index, name) in names.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            let mut finding =
                Finding::new(path.index(index), Code::InvalidValue, format!("unknown event type `{name}`"));
            finding = match crate::config::did_you_mean(name, known.iter().copied()) {
                Some(close) => finding.hint(format!("did you mean `{close}`?")),
                None => finding.hint(format!("known types: {}", known.join(", "))),
            };
            findings.push(finding);
        }
    }
}
