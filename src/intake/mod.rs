//! Intake: what arrives at `POST /hooks/{name}` becomes events. `HookTable` knows which
//! automation's trigger each hook name serves and holds that trigger's resolved secret;
//! `receive` authenticates the request, answers the sources' handshakes (GitHub `ping`,
//! Slack `url_verification`) and parses the body into events. No HTTP framework here:
//! `http/` turns requests into `Delivery` and `IntakeError` into statuses.

mod credential;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::catalog::Catalog;
use crate::event::Event;
use crate::triggers::alertmanager::{AlertGrouping, AlertmanagerTrigger, split_per_alert};
use crate::triggers::{Trigger, TriggerKind};

pub use credential::{Credential, Precheck};

/// A request's headers by lowercase name.
pub type Headers = BTreeMap<String, String>;

/// One request to a hook: header names lowercased, the body exactly as received.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub headers: &'a Headers,
    pub body: &'a [u8],
}

impl Delivery<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// The trigger a hook name serves.
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub automation: String,
    pub kind: TriggerKind,
    /// The trigger's secret, read when the automations were loaded; `Err` names what is
    /// missing, and every request is refused until it is set and the server reloads.
    credential: Result<Credential, String>,
    alertmanager: Option<AlertmanagerTrigger>,
    /// The trigger's own `max_body`, if it sets one.
    max_body: Option<usize>,
}

impl Hook {
    /// The event of one delivery to this hook. A provider's delivery id names the
    /// delivery to this hook only (`{source}:{hook}:{id}`): one message sent to two
    /// endpoints, as Standard Webhooks senders and Alertmanager receivers may, is a
    /// delivery to each.
    fn event(&self, payload: Value, headers: BTreeMap<String, String>, now: DateTime<Utc>) -> Event {
        let mut event = Event::from_delivery(self.kind, payload, headers, now);
        if let Some(delivery) = &event.delivery_id {
            event.id = format!("{}:{}:{delivery}", self.kind, self.name);
        }
        event
    }

    /// The largest body this hook accepts: the trigger's `max_body`, else `fallback` (the
    /// server's `--max-body`), else the source's default.
    pub fn max_body(&self, fallback: Option<usize>) -> usize {
        self.max_body.or(fallback).unwrap_or_else(|| self.kind.default_max_body())
    }

    /// Why this hook refuses every request (its secret could not be read), or `None`.
    pub fn problem(&self) -> Option<&str> {
        self.credential.as_ref().err().map(String::as_str)
    }

    /// Alertmanager options, for an Alertmanager hook.
    pub fn alertmanager(&self) -> Option<&AlertmanagerTrigger> {
        self.alertmanager.as_ref()
    }
}

/// What a delivery came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Events to ingest for the hook's automation.
    Events(Vec<Event>),
    /// A handshake answered on the spot; nothing is stored.
    Reply(Value),
}

/// Why a delivery was refused. Nothing is stored for any of them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntakeError {
    #[error("no hook named `{0}`: hooks are automation names, or a webhook trigger's `path`")]
    UnknownHook(String),
    #[error("authentication failed: {0}")]
    Unauthorized(AuthError),
    #[error("hook `{hook}` cannot authenticate requests: {why}; provide it and restart the server")]
    NotConfigured { hook: String, why: String },
    #[error("unsupported content type `{0}`: send the body as application/json")]
    UnsupportedMediaType(String),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
}

/// Every hook of a catalog, by name.
#[derive(Debug, Clone, Default)]
pub struct HookTable {
    hooks: HashMap<String, Hook>,
}

impl HookTable {
    /// The hooks of `catalog`, with their secrets read now. The second value lists the
    /// hooks whose secret could not be read, each with the reason.
    pub fn build(catalog: &Catalog) -> (HookTable, Vec<String>) {
        let mut hooks = HashMap::new();
        let mut problems = Vec::new();
        for loaded in &catalog.automations {
            let definition = &loaded.compiled.definition;
            for trigger in definition.all_triggers().filter_map(|t| t.source()) {
                let Some(name) = trigger.hook_name(&definition.name) else { continue };
                let credential = Credential::for_trigger(trigger);
                if let Err(why) = &credential {
                    problems.push(format!("hook `{name}` ({}): {why}", loaded.file.display()));
                }
                let alertmanager = match trigger {
                    Trigger::Alertmanager(options) => Some(options.clone()),
                    _ => None,
                };
                let hook = Hook {
                    name: name.clone(),
                    automation: definition.name.clone(),
                    kind: trigger.kind(),
                    credential,
                    alertmanager,
                    max_body: trigger.max_body(),
                };
                hooks.insert(name, hook);
            }
        }
        (HookTable { hooks }, problems)
    }

    pub fn get(&self, name: &str) -> Option<&Hook> {
        self.hooks.get(name)
    }

    /// Every hook's secret values that could be read, for masking.
    pub fn secret_values(&self) -> impl Iterator<Item = String> + '_ {
        self.hooks.values().filter_map(|hook| hook.credential.as_ref().ok()).flat_map(Credential::secret_values)
    }

    pub fn len(&self) -> usize {
        self.hooks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// What the headers of a request to hook `name` settle before its body is read
    /// (`Credential::precheck`); an error refuses it as `receive` would.
    pub fn precheck(&self, name: &str, headers: &Headers, now: DateTime<Utc>) -> Result<Precheck, IntakeError> {
        let hook = self.get(name).ok_or_else(|| IntakeError::UnknownHook(name.to_string()))?;
        let credential = hook
            .credential
            .as_ref()
            .map_err(|why| IntakeError::NotConfigured { hook: name.to_string(), why: why.clone() })?;
        credential.precheck(headers, now).map_err(IntakeError::Unauthorized)
    }

    /// Authenticates a delivery to hook `name` and turns it into events (or a handshake
    /// reply). `now` judges signed timestamps and stamps the events.
    pub fn receive(
        &self,
        name: &str,
        delivery: Delivery<'_>,
        now: DateTime<Utc>,
    ) -> Result<(&Hook, Accepted), IntakeError> {
        let hook = self.get(name).ok_or_else(|| IntakeError::UnknownHook(name.to_string()))?;
        let credential = hook
            .credential
            .as_ref()
            .map_err(|why| IntakeError::NotConfigured { hook: name.to_string(), why: why.clone() })?;
        credential.verify(&delivery, now).map_err(IntakeError::Unauthorized)?;
        let payload = parse_body(hook.kind, &delivery)?;
        match hook.kind {
            TriggerKind::Github if delivery.header("x-github-event") == Some("ping") => {
                let pong = json!({"ok": true, "zen": payload.get("zen"), "hook_id": payload.get("hook_id")});
                return Ok((hook, Accepted::Reply(pong)));
            }
            TriggerKind::Slack => match payload.get("type").and_then(Value::as_str) {
                Some("url_verification") => {
                    return Ok((hook, Accepted::Reply(json!({"challenge": payload.get("challenge")}))));
                }
                Some("event_callback") => {}
                other => return Ok((hook, Accepted::Reply(json!({"ok": true, "ignored": other})))),
            },
            _ => {}
        }
        let payloads = match &hook.alertmanager {
            Some(options) if options.per == AlertGrouping::Alert => split_per_alert(&payload),
            _ => vec![payload],
        };
        let events = payloads.into_iter().map(|one| hook.event(one, delivery.headers.clone(), now)).collect();
        Ok((hook, Accepted::Events(events)))
    }
}

/// The body as JSON. GitHub may also send `application/x-www-form-urlencoded` with the
/// JSON in a `payload` field (its form default); every other source sends JSON.
fn parse_body(kind: TriggerKind, delivery: &Delivery<'_>) -> Result<Value, IntakeError> {
    let content_type = delivery.header("content-type").unwrap_or("application/json");
    let media_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let json_text: std::borrow::Cow<'_, [u8]> = match media_type.as_str() {
        "application/json" => delivery.body.into(),
        "application/x-www-form-urlencoded" if kind == TriggerKind::Github => {
            let payload = form_urlencoded::parse(delivery.body)
                .find(|(key, _)| key == "payload")
                .ok_or_else(|| IntakeError::MalformedJson("the form has no `payload` field".into()))?;
            payload.1.into_owned().into_bytes().into()
        }
        _ => return Err(IntakeError::UnsupportedMediaType(content_type.to_string())),
    };
    serde_json::from_slice(&json_text).map_err(|e| IntakeError::MalformedJson(e.to_string()))
}
