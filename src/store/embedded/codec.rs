//! Record encoding: JSON, so a damaged record names itself in the error. A run record
//! does not carry its agent command (argv, plan argv, environment, output format), which
//! is the same for every run of a profile (the `local-audit` script alone is 1.5 KB):
//! that is stored once, under its profile's name and hash (`keys::agent`), and the run
//! names the hash (`agent_hash`). Since store format 3 a run record does not carry the
//! parts of its task and flow that come from its automation's definition either (its
//! shape: setup, network, paths, timeouts, retry, ...): the shape is stored once by hash
//! like an agent command, under the empty profile name, and the run names it (`shape`).
//! A run in that form also leaves out fields it can do without: its id (its key ends
//! with it), `updated_at` while it equals `created_at`, a zero `attempt` or `epoch`,
//! `approved` while false and `state` while queued; an
//! event record leaves out the id its key ends with, and its type where it is the source.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys;
use crate::runs::{Run, RunId};
use crate::store::{StoreError, StoredEvent, StoredEventRef};

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data (strings, numbers, maps with string keys): encoding cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("record `{}`", String::from_utf8_lossy(key).escape_debug()),
        cause: e.to_string(),
    })
}

/// An agent command, or a run's shape (under the empty profile name), kept apart from
/// the runs that use it.
pub struct StoredAgent {
    pub profile: String,
    pub hash: String,
    pub bytes: Vec<u8>,
}

/// The agent commands and shapes a store holds, by profile name and hash.
pub type Agents = std::collections::HashMap<(String, String), serde_json::Value>;

const AGENT_HASH: &str = "agent_hash";
/// The key of a run record that names its shape.
const SHAPE: &str = "shape";
/// Fields of a run's task and flow that come from its automation's definition, not from
/// the event: they go to the shape. Templated fields (repo, base, branch, prompt, dedupe
/// and concurrency keys) stay in the run, so runs of a definition share one shape.
const TASK_SHAPE: &[&str] = &[
    "automation",
    "agent",
    "setup",
    "secrets",
    "network",
    "paths",
    "timeout",
    "setup_timeout",
    "approval",
    "push",
    "untrusted_input",
];
const FLOW_SHAPE: &[&str] = &["dedupe_window", "concurrency_limit", "overlap", "cooldown", "retry"];

/// Encodes a run record: a run with a task is written with its agent command's hash
/// instead of the command, and its shape's hash instead of its shape; the command and
/// the shape are returned to be stored once.
pub fn encode_run(run: &Run) -> (Vec<u8>, Vec<StoredAgent>) {
    let Some(agent) = run.task.as_ref().map(|task| &task.agent) else { return (encode(run), Vec::new()) };
    let bytes = encode(agent);
    let hash = crate::event::short_hash(&[&String::from_utf8_lossy(&bytes)]);
    let mut value = serde_json::to_value(run).unwrap_or_default();
    let Some(record) = value.as_object_mut() else { return (encode(run), Vec::new()) };
    let mut shape = serde_json::Map::new();
    if let Some(task) = record.get_mut("task").and_then(serde_json::Value::as_object_mut) {
        let reference = serde_json::json!({"profile": agent.profile, AGENT_HASH: hash});
        task.insert("agent".into(), reference);
        shape.insert("task".into(), take_fields(task, TASK_SHAPE).into());
    }
    if let Some(flow) = record.get_mut("flow").and_then(serde_json::Value::as_object_mut) {
        shape.insert("flow".into(), take_fields(flow, FLOW_SHAPE).into());
        if flow.is_empty() {
            record.remove("flow");
        }
    }
    for field in ["automation", "definition_hash"] {
        if let Some(value) = record.remove(field) {
            shape.insert(field.into(), value);
        }
    }
    if record.get("updated_at") == record.get("created_at") {
        record.remove("updated_at");
    }
    for (field, default) in defaults() {
        if record.get(field) == Some(&default) {
            record.remove(field);
        }
    }
    // The key ends with the id (`keys::live`, `keys::run`).
    record.remove("id");
    let shape_bytes = encode(&shape);
    let shape_hash = crate::event::short_hash(&[&String::from_utf8_lossy(&shape_bytes)]);
    record.insert(SHAPE.into(), shape_hash.clone().into());
    let agent = StoredAgent { profile: agent.profile.clone(), hash, bytes };
    let shape = StoredAgent { profile: String::new(), hash: shape_hash, bytes: shape_bytes };
    (encode(&value), vec![agent, shape])
}

/// Fields a run record in the shape form leaves out while they hold these values.
fn defaults() -> [(&'static str, serde_json::Value); 4] {
    [("attempt", 0.into()), ("epoch", 0.into()), ("approved", false.into()), ("state", "queued".into())]
}

/// Moves `fields` out of `from`, into a new map.
fn take_fields(
    from: &mut serde_json::Map<String, serde_json::Value>,
    fields: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    fields.iter().filter_map(|field| Some((field.to_string(), from.remove(*field)?))).collect()
}

/// Puts a shape's fields back into a run record: objects field by field, the rest whole.
fn merge(into: &mut serde_json::Map<String, serde_json::Value>, from: &serde_json::Map<String, serde_json::Value>) {
    for (field, value) in from {
        match (into.get_mut(field), value) {
            (Some(serde_json::Value::Object(inner)), serde_json::Value::Object(from)) => merge(inner, from),
            _ => {
                into.insert(field.clone(), value.clone());
            }
        }
    }
}

/// Decodes a run record, putting back its shape and its agent command from `agents`.
/// Records written before shapes (store format 2) or before commands were kept apart
/// (format 1) carry theirs and are read as they are.
pub fn decode_run(key: &[u8], bytes: &[u8], agents: &Agents) -> Result<Run, StoreError> {
    // Only a key itself is written `"agent_hash":` or `"shape":`; inside a string its
    // quotes are escaped.
    let names = |name: &str| bytes.windows(name.len() + 3).any(|w| w == format!("\"{name}\":").as_bytes());
    if !names(AGENT_HASH) && !names(SHAPE) {
        return decode(key, bytes);
    }
    let corrupt = |cause: String| StoreError::Corrupt {
        what: format!("record `{}`", String::from_utf8_lossy(key).escape_debug()),
        cause,
    };
    let mut value: serde_json::Value = decode(key, bytes)?;
    if let Some(record) = value.as_object_mut()
        && let Some(shape) = record.remove(SHAPE)
    {
        let hash = shape.as_str().unwrap_or_default().to_string();
        let shape = agents
            .get(&(String::new(), hash.clone()))
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| corrupt(format!("its shape `{hash}` is not in the store (no `agent/` record for it)")))?;
        merge(record, shape);
        if let Some(created) = record.get("created_at").filter(|_| !record.contains_key("updated_at")).cloned() {
            record.insert("updated_at".into(), created);
        }
        for (field, default) in defaults() {
            record.entry(field).or_insert(default);
        }
        if let Some(id) = keys::number_at_end(key).filter(|_| !record.contains_key("id")) {
            record.insert("id".into(), RunId(id).to_string().into());
        }
    }
    if let Some(task) = value.get_mut("task").and_then(serde_json::Value::as_object_mut)
        && let Some(reference) = task.get("agent").filter(|agent| agent.get(AGENT_HASH).is_some())
    {
        let text =
            |field: &str| reference.get(field).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let (profile, hash) = (text("profile"), text(AGENT_HASH));
        let agent = agents.get(&(profile, hash.clone())).ok_or_else(|| {
            corrupt(format!("its agent command `{hash}` is not in the store (no `agent/` record for it)"))
        })?;
        task.insert("agent".into(), agent.clone());
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// Encodes an event record without what its key and its source say: the event's id
/// (the key ends with it) and its type where it is the source's name. Records that
/// carry them (store formats 1 and 2) read as they are.
pub fn encode_event(stored: &StoredEventRef<'_>) -> Vec<u8> {
    let mut value = serde_json::to_value(stored).unwrap_or_default();
    if let Some(event) = value.get_mut("event").and_then(serde_json::Value::as_object_mut) {
        event.remove("id");
        if event.get("type") == event.get("source") {
            event.remove("type");
        }
    }
    encode(&value)
}

/// Decodes an event record stored under `key` (`keys::event`), putting back its id and
/// type.
pub fn decode_event(key: &[u8], bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let mut value: serde_json::Value = decode(key, bytes)?;
    if let Some(event) = value.get_mut("event").and_then(serde_json::Value::as_object_mut) {
        if !event.contains_key("id")
            && let Some(id) = keys::suffix(key, keys::EVENT)
        {
            event.insert("id".into(), id.into());
        }
        if let Some(source) = event.get("source").filter(|_| !event.contains_key("type")).cloned() {
            event.insert("type".into(), source);
        }
    }
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
        what: format!("record `{}`", String::from_utf8_lossy(key).escape_debug()),
        cause: e.to_string(),
    })
}

/// A queued run of a `local-audit` task whose agent has `env`, for tests.
#[cfg(test)]
pub fn run_with_env(env: &[(&str, &str)], prompt: &str) -> Run {
    tests::run_with_env(env, prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn run_with_env(env: &[(&str, &str)], prompt: &str) -> Run {
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": 7, "automation": "a", "definition_hash": "h", "event_ids": ["manual:1"],
            "flow": {"concurrency_limit": 1, "overlap": "queue", "retry": {"attempts": 3, "backoff": "30s", "max_backoff": "10m"}},
            "state": "queued", "attempt": 0, "epoch": 0,
            "created_at": "2026-11-22T09:00:00Z", "updated_at": "2026-11-22T09:00:00Z", "approved": false,
            "task": {
                "automation": "a", "repo": "/srv/git/a", "base": "main", "branch": "agent/x", "prompt": prompt,
                "agent": {"profile": "local-audit", "argv": ["sh"], "output": "generic"},
                "setup": [], "network": {"setup": {"allow": [], "default": "deny"}, "agent": {"allow": [], "default": "deny"}},
                "paths": ["**"], "timeout": "30m", "setup_timeout": "10m", "approval": "none", "push": false,
                "untrusted_input": false
            }
        }))
        .expect("a run");
        run.id = RunId(7);
        if let Some(task) = run.task.as_mut() {
            task.agent.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        }
        run
    }

    /// The records `encode_run` returns to be stored once, as a store would hold them.
    fn stored(shared: &[StoredAgent]) -> Agents {
        let decoded = |part: &StoredAgent| decode(b"agent", &part.bytes).expect("shared part");
        shared.iter().map(|part| ((part.profile.clone(), part.hash.clone()), decoded(part))).collect()
    }

    #[test]
    fn a_runs_agent_command_and_shape_are_stored_once_by_hash_and_put_back_on_reading() {
        let run = run_with_env(&[("SCRIPT", &"echo audit; ".repeat(100))], "say \"agent_hash\": \"shape\": no");
        let (bytes, shared) = encode_run(&run);
        assert_eq!(shared.len(), 2, "the agent command and the shape");
        assert!(bytes.len() < 400, "{} bytes: {}", bytes.len(), String::from_utf8_lossy(&bytes));
        let agents = stored(&shared);
        for part in &shared {
            let mut missing = agents.clone();
            missing.remove(&(part.profile.clone(), part.hash.clone()));
            let error = decode_run(&keys::live(RunId(7)), &bytes, &missing).unwrap_err();
            assert!(error.to_string().contains(&part.hash), "{error}");
        }
        assert_eq!(decode_run(&keys::live(RunId(7)), &bytes, &agents).expect("read"), run);
    }

    #[test]
    fn runs_of_one_definition_share_their_shape_and_keep_what_differs() {
        let first = run_with_env(&[], "first");
        let mut second = run_with_env(&[], "second");
        second.attempt = 2;
        second.state = crate::runs::RunState::Leased;
        second.epoch = crate::runs::Epoch(9);
        second.approved = true;
        second.updated_at = second.created_at + chrono::Duration::seconds(5);
        let flow = &mut second.flow;
        (flow.dedupe_key, flow.concurrency_key) = (Some("dk".into()), Some("ck".into()));
        second.task.as_mut().expect("task").branch = "agent/other".into();
        let (one, first_shared) = encode_run(&first);
        let (two, second_shared) = encode_run(&second);
        assert_eq!(first_shared[1].hash, second_shared[1].hash, "one shape");
        let agents = stored(&first_shared);
        assert_eq!(decode_run(&keys::live(RunId(7)), &one, &agents).expect("read"), first);
        assert_eq!(decode_run(&keys::run(RunId(7)), &two, &agents).expect("read"), second);
        // Another definition's runs have their own shape.
        let mut other = first.clone();
        other.flow.concurrency_limit = 4;
        assert_ne!(encode_run(&other).1[1].hash, first_shared[1].hash);
    }

    #[test]
    fn notify_targets_are_the_events_so_they_stay_with_each_run_not_in_the_shared_shape() {
        use crate::delivery::Target;
        let token: crate::config::SecretRef = "env:SLACK_BOT_TOKEN".parse().expect("ref");
        let in_thread =
            |ts: &str| Target::Slack { channel: "C1".into(), thread_ts: Some(ts.into()), token: token.clone() };
        let mut first = run_with_env(&[], "first");
        first.task.as_mut().expect("task").notify = vec![in_thread("1.1")];
        let mut second = run_with_env(&[], "second");
        second.task.as_mut().expect("task").notify =
            vec![in_thread("2.2"), Target::Webhook { url: "https://hooks.example.com/r".into(), secret: None }];
        let (one, first_shared) = encode_run(&first);
        let (two, second_shared) = encode_run(&second);
        assert_eq!(first_shared[1].hash, second_shared[1].hash, "one shape for both runs");
        assert!(String::from_utf8_lossy(&two).contains("hooks.example.com"), "the targets are in the run record");
        let agents = stored(&first_shared);
        assert_eq!(decode_run(&keys::live(RunId(7)), &one, &agents).expect("read"), first);
        assert_eq!(decode_run(&keys::live(RunId(7)), &two, &agents).expect("read"), second);
    }

    #[test]
    fn runs_without_a_task_and_records_of_older_formats_read_as_they_are() {
        let mut plain = run_with_env(&[], "say \"agent_hash\": no");
        plain.task = None;
        let (bytes, shared) = encode_run(&plain);
        assert!(shared.is_empty());
        assert_eq!(decode_run(b"live/7", &bytes, &Agents::new()).expect("read"), plain);
        // Format 1: the command and the shape inside the record.
        let old = run_with_env(&[("SCRIPT", "echo")], "say \"agent_hash\": no");
        assert_eq!(decode_run(b"live/7", &encode(&old), &Agents::new()).expect("read"), old);
        // Format 2: the command kept apart, the shape inside the record.
        let agent = old.task.as_ref().expect("task").agent.clone();
        let mut format_2 = serde_json::to_value(&old).expect("value");
        format_2["task"]["agent"] = serde_json::json!({"profile": agent.profile, "agent_hash": "h2"});
        let agents =
            Agents::from([((agent.profile.clone(), "h2".to_string()), serde_json::to_value(&agent).expect("agent"))]);
        assert_eq!(decode_run(b"live/7", &encode(&format_2), &agents).expect("read"), old);
    }

    #[test]
    fn an_event_record_leaves_out_its_id_and_type_and_reads_back_whole() {
        use crate::store::{Disposition, RunOutcome};
        use crate::triggers::TriggerKind;
        let received = chrono::DateTime::parse_from_rfc3339("2026-11-22T09:00:00Z").expect("time").to_utc();
        let payload = serde_json::json!({"id": "payload's own", "type": "its own"});
        let check = |source: TriggerKind, kind: &str| {
            let mut event = crate::event::Event::from_delivery(source, payload.clone(), Default::default(), received);
            (event.id, event.kind, event.fields) = ("manual:e1".into(), kind.into(), Default::default());
            let dedupe_keys = std::collections::BTreeMap::from([("a".to_string(), "k".to_string())]);
            let outcomes =
                vec![RunOutcome { automation: "a".into(), run: RunId(3), disposition: Disposition::Created }];
            let key = keys::event(&event.id);
            let stored =
                StoredEventRef { event: event.without_fields(), dedupe_keys: &dedupe_keys, outcomes: &outcomes };
            let bytes = encode_event(&stored);
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("manual:e1"), "{text}");
            assert_eq!(text.contains(&format!("\"type\":\"{kind}\"")), kind != "manual", "{text}");
            let expected =
                StoredEvent { event: event.clone(), dedupe_keys: dedupe_keys.clone(), outcomes: outcomes.clone() };
            assert_eq!(decode_event(&key, &bytes).expect("read"), expected);
            // Formats 1 and 2 wrote the event whole.
            assert_eq!(decode_event(&key, &encode(&stored)).expect("read"), expected);
        };
        check(TriggerKind::Manual, "manual");
        check(TriggerKind::Manual, "retry");
    }
}
