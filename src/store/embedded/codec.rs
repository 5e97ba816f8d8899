//! Record encoding: JSON, so a damaged record names itself in the error. A run record
//! does not carry its agent command (argv, plan argv, environment, output format), which
//! is the same for every run of a profile (the `local-audit` script alone is 1.5 KB):
//! that is stored once, under its profile's name and hash (`keys::agent`), and the run
//! names the hash (`agent_hash`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runs::Run;
use crate::store::StoreError;

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

/// An agent command kept apart from the runs that use it.
pub struct StoredAgent {
    pub profile: String,
    pub hash: String,
    pub bytes: Vec<u8>,
}

/// The agent commands a store holds, by profile name and hash.
pub type Agents = std::collections::HashMap<(String, String), serde_json::Value>;

const AGENT_HASH: &str = "agent_hash";

/// Encodes a run record: a run with a task is written with its agent command's hash
/// instead of the command, which is returned to be stored once.
pub fn encode_run(run: &Run) -> (Vec<u8>, Option<StoredAgent>) {
    let Some(agent) = run.task.as_ref().map(|task| &task.agent) else { return (encode(run), None) };
    let bytes = encode(agent);
    let hash = crate::event::short_hash(&[&String::from_utf8_lossy(&bytes)]);
    let mut value = serde_json::to_value(run).unwrap_or_default();
    if let Some(task) = value.get_mut("task").and_then(serde_json::Value::as_object_mut) {
        let reference = serde_json::json!({"profile": agent.profile, AGENT_HASH: hash});
        task.insert("agent".into(), reference);
    }
    (encode(&value), Some(StoredAgent { profile: agent.profile.clone(), hash, bytes }))
}

/// Decodes a run record, putting back its agent command from `agents`. Records written
/// before commands were kept apart carry theirs and are read as they are.
pub fn decode_run(key: &[u8], bytes: &[u8], agents: &Agents) -> Result<Run, StoreError> {
    // Only the key itself is written `"agent_hash":`; inside a string its quotes are escaped.
    if !bytes.windows(AGENT_HASH.len() + 3).any(|w| w == b"\"agent_hash\":") {
        return decode(key, bytes);
    }
    let corrupt = |cause: String| StoreError::Corrupt {
        what: format!("record `{}`", String::from_utf8_lossy(key).escape_debug()),
        cause,
    };
    let mut value: serde_json::Value = decode(key, bytes)?;
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

/// A queued run of a `local-audit` task whose agent has `env`, for tests.
#[cfg(test)]
pub fn run_with_env(env: &[(&str, &str)], prompt: &str) -> Run {
    tests::run_with_env(env, prompt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::RunId;

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

    #[test]
    fn a_runs_agent_command_is_stored_once_by_hash_and_put_back_on_reading() {
        let run = run_with_env(&[("SCRIPT", &"echo audit; ".repeat(100))], "say \"agent_hash\": no");
        let (bytes, agent) = encode_run(&run);
        let agent = agent.expect("kept apart");
        assert!(bytes.len() < 1000, "{} bytes", bytes.len());
        let mut agents = Agents::new();
        let missing = decode_run(b"live/7", &bytes, &agents).unwrap_err();
        assert!(missing.to_string().contains(&agent.hash), "{missing}");
        agents.insert((agent.profile.clone(), agent.hash.clone()), decode(b"agent", &agent.bytes).expect("agent"));
        assert_eq!(decode_run(b"live/7", &bytes, &agents).expect("read"), run);
    }

    #[test]
    fn runs_without_a_task_and_old_records_read_as_they_are() {
        let mut plain = run_with_env(&[], "say \"agent_hash\": no");
        plain.task = None;
        let (bytes, agent) = encode_run(&plain);
        assert!(agent.is_none());
        assert_eq!(decode_run(b"live/7", &bytes, &Agents::new()).expect("read"), plain);
        let old = run_with_env(&[("SCRIPT", "echo")], "say \"agent_hash\": no");
        assert_eq!(decode_run(b"live/7", &encode(&old), &Agents::new()).expect("read"), old);
    }
}
