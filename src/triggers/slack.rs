//! Slack Events API triggers: `message` and `app_mention` events with channel and text
//! filters; the bot's own messages are ignored so replies never loop.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Normalized, TextPattern, str_at};
use crate::config::{Code, FieldPath, Finding, SecretRef};
use crate::event::Event;

/// Slack messages.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackTrigger {
    /// The app's signing secret (v0 signatures).
    pub signing_secret: SecretRef,
    /// Event types to accept. Default: `message` and `app_mention`.
    #[serde(default = "default_events")]
    pub events: Vec<SlackEventType>,
    /// Channel ids (`C0123ABC`) to listen in; empty means every channel the app is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// A regular expression the message text must match, e.g. `^bug:`. It is matched
    /// against the text without a leading mention (`<@U0BOT> bug: x` is read as `bug: x`),
    /// so a pattern works the same for `message` and `app_mention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<TextPattern>,
    /// Accept messages posted by bots. Default false, so nightshift's replies never loop.
    #[serde(default)]
    pub include_bots: bool,
    /// The largest delivery accepted, in bytes; larger ones get 413. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body: Option<usize>,
}

/// The largest delivery a Slack hook accepts unless told otherwise.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlackEventType {
    Message,
    AppMention,
}

impl SlackEventType {
    fn as_str(self) -> &'static str {
        match self {
            SlackEventType::Message => "message",
            SlackEventType::AppMention => "app_mention",
        }
    }
}

fn default_events() -> Vec<SlackEventType> {
    vec![SlackEventType::Message, SlackEventType::AppMention]
}

impl SlackTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        if self.events.is_empty() {
            findings.push(
                Finding::new(path.key("events"), Code::InvalidValue, "`events` is empty, so nothing would ever match")
                    .hint("list `message`, `app_mention` or both, or leave `events` out for both"),
            );
        }
        if let Some(pattern) = &self.pattern {
            pattern.check(&path.key("pattern"), findings);
        }
    }

    pub(super) fn accepts(&self, event: &Event) -> Result<(), String> {
        if !self.events.iter().any(|t| t.as_str() == event.kind) {
            return Err(format!("slack event type `{}` is not in `events`", event.kind));
        }
        let field = |name: &str| event.fields.get(name).and_then(Value::as_str);
        let from_bot = field("bot_id").is_some() || field("subtype") == Some("bot_message");
        if from_bot && !self.include_bots {
            return Err("message posted by a bot (set `include_bots: true` to accept)".into());
        }
        // Edits, deletions, joins and topic changes are message events too; only new
        // messages (plain, with files, or sent from a thread to the channel) count.
        if let Some(subtype) = field("subtype")
            && !matches!(subtype, "bot_message" | "file_share" | "thread_broadcast")
        {
            return Err(format!("message subtype `{subtype}` is not a new message"));
        }
        // Notices such as `message_replied` (a thread got a reply) are hidden, and may
        // arrive without a subtype.
        if event.fields.get("message").and_then(|m| m.get("hidden")).and_then(Value::as_bool) == Some(true) {
            return Err("hidden message (a notice, not a new message)".into());
        }
        let channel = field("channel").unwrap_or_default();
        if !self.channels.is_empty() && !self.channels.iter().any(|c| c == channel) {
            return Err(format!("channel `{channel}` is not in `channels`"));
        }
        if let Some(pattern) = &self.pattern
            && !pattern.is_match(without_leading_mention(field("text").unwrap_or_default()))
        {
            return Err(format!("text does not match `{}`", pattern.source));
        }
        Ok(())
    }
}

/// The text after a leading user mention (`<@U0BOT>` or `<@U0BOT|name>`) and the spaces
/// after it; other text as it is.
pub fn without_leading_mention(text: &str) -> &str {
    let trimmed = text.trim_start();
    let Some(rest) = trimmed.strip_prefix("<@") else { return text };
    match rest.split_once('>') {
        Some((user, after)) if !user.is_empty() && !user.contains(char::is_whitespace) => after.trim_start(),
        _ => text,
    }
}

/// An `event_callback` envelope: the inner event's fields become the event's fields.
/// The delivery id is the message's channel and `ts` when it has both, so one message
/// that arrives as both `message` and `app_mention` (two `event_id`s) is one delivery;
/// else the `event_id`.
pub(super) fn normalize(payload: &Value) -> Normalized {
    let inner = payload.get("event").cloned().unwrap_or(Value::Null);
    let mut fields = Map::new();
    for name in ["text", "channel", "channel_type", "user", "ts", "bot_id", "subtype"] {
        if let Some(value) = inner.get(name) {
            fields.insert(name.into(), value.clone());
        }
    }
    // Replies go to the thread the message is in, or start one under it.
    if let Some(thread) = str_at(&inner, "/thread_ts").or_else(|| str_at(&inner, "/ts")) {
        fields.insert("thread_ts".into(), Value::String(thread.into()));
    }
    if let Some(team) = payload.get("team_id") {
        fields.insert("team".into(), team.clone());
    }
    fields.insert("message".into(), inner.clone());
    Normalized {
        kind: str_at(payload, "/event/type").unwrap_or("unknown").to_string(),
        delivery_id: message_id(&inner).or_else(|| str_at(payload, "/event_id").map(str::to_string)),
        fields,
    }
}

/// `{channel}:{ts}`: what names one message in Slack.
fn message_id(inner: &Value) -> Option<String> {
    Some(format!("{}:{}", str_at(inner, "/channel")?, str_at(inner, "/ts")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(inner: serde_json::Value) -> Result<(), String> {
        let trigger: SlackTrigger =
            serde_json::from_value(serde_json::json!({"signing_secret": "env:S", "pattern": "^bug:"})).unwrap();
        let payload = serde_json::json!({"type": "event_callback", "event_id": "Ev1", "event": inner});
        let event =
            Event::from_delivery(crate::triggers::TriggerKind::Slack, payload, Default::default(), chrono::Utc::now());
        trigger.accepts(&event)
    }

    #[test]
    fn only_new_human_messages_that_match_start_runs() {
        let message = |extra: serde_json::Value| {
            let mut inner =
                serde_json::json!({"type": "message", "channel": "C1", "user": "U1", "text": "bug: x", "ts": "1.2"});
            inner.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            accepts(inner)
        };
        assert_eq!(message(serde_json::json!({})), Ok(()));
        assert_eq!(message(serde_json::json!({"subtype": "thread_broadcast"})), Ok(()));
        assert!(message(serde_json::json!({"text": "lunch?"})).is_err());
        assert!(message(serde_json::json!({"subtype": "message_changed"})).unwrap_err().contains("not a new message"));
        assert!(message(serde_json::json!({"subtype": "channel_join"})).is_err());
        assert!(message(serde_json::json!({"bot_id": "B1"})).unwrap_err().contains("bot"));
    }

    fn fixture(name: &str) -> Event {
        let path = format!("{}/tests/data/slack/{name}", env!("CARGO_MANIFEST_DIR"));
        let payload = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        Event::from_delivery(crate::triggers::TriggerKind::Slack, payload, Default::default(), chrono::Utc::now())
    }

    fn trigger(pattern: &str) -> SlackTrigger {
        serde_json::from_value(serde_json::json!({"signing_secret": "env:S", "pattern": pattern})).unwrap()
    }

    #[test]
    fn a_hidden_notice_without_a_subtype_is_not_a_new_message() {
        let replied = fixture("message_replied_without_subtype.json");
        assert!(trigger(".").accepts(&replied).unwrap_err().contains("hidden"));
        assert!(trigger(".").accepts(&fixture("message_changed.json")).is_err());
        assert_eq!(trigger(".").accepts(&fixture("message.json")), Ok(()));
        assert_eq!(trigger(".").accepts(&fixture("thread_broadcast.json")), Ok(()));
        assert!(trigger(".").accepts(&fixture("bot_message.json")).unwrap_err().contains("bot"));
    }

    #[test]
    fn patterns_read_a_mention_without_the_leading_mention() {
        let anchored = trigger("^bug: the cart");
        assert_eq!(anchored.accepts(&fixture("app_mention.json")), Ok(()));
        assert_eq!(anchored.accepts(&fixture("app_mention_as_message.json")), Ok(()));
        assert_eq!(without_leading_mention("  <@U0BOT|nightshift>  bug: x"), "bug: x");
        assert_eq!(without_leading_mention("bug: <@U0BOT>"), "bug: <@U0BOT>");
        assert_eq!(without_leading_mention("<@ not a mention"), "<@ not a mention");
    }

    #[test]
    fn an_empty_event_list_is_refused_at_load() {
        let empty: SlackTrigger =
            serde_json::from_value(serde_json::json!({"signing_secret": "env:S", "events": []})).unwrap();
        let mut findings = Vec::new();
        empty.check(&FieldPath::root(), &mut findings);
        assert_eq!(findings.len(), 1);
        assert!(findings[0].message.contains("`events` is empty"));
    }

    #[test]
    fn one_mention_delivered_as_message_and_app_mention_is_one_delivery() {
        let mention = fixture("app_mention.json");
        let message = fixture("app_mention_as_message.json");
        assert_ne!(mention.kind, message.kind);
        assert_eq!(mention.id, message.id);
        assert_ne!(fixture("message.json").id, mention.id);
    }
}
