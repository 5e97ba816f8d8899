//! Agent profiles: how to start an agent (argv template, environment, output adapter),
//! from `nightshift.yaml` over built-in defaults for Codex CLI and Claude Code.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Code, FieldPath, Finding};

/// `nightshift.yaml`: settings shared by every automation in a project.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Agent profiles by name; they add to and override the built-ins (`codex`, `claude`).
    #[serde(default)]
    pub profiles: BTreeMap<String, AgentProfile>,
    /// How much run history the store keeps.
    #[serde(default)]
    pub retention: Retention,
    /// The largest rendered prompt, in bytes. A render that would make a bigger one
    /// fails, and the run is recorded as failed with that reason. Default 262144 (256 KiB).
    #[serde(default = "default_max_prompt_bytes")]
    #[schemars(range(min = 1))]
    pub max_prompt_bytes: usize,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        ProjectConfig {
            profiles: BTreeMap::new(),
            retention: Retention::default(),
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
        }
    }
}

/// The default `max_prompt_bytes`: 256 KiB.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 256 * 1024;

fn default_max_prompt_bytes() -> usize {
    DEFAULT_MAX_PROMPT_BYTES
}

/// Run history kept per automation; older finished runs are deleted with their events
/// and activities. Runs that are still active are never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Finished runs kept per automation. Default 1000.
    #[serde(default = "default_retained_runs")]
    #[schemars(range(min = 1))]
    pub runs: u32,
    /// Days a finished run is kept. Default 30.
    #[serde(default = "default_retained_days")]
    #[schemars(range(min = 1))]
    pub days: u32,
}

fn default_retained_runs() -> u32 {
    1000
}

fn default_retained_days() -> u32 {
    30
}

impl Default for Retention {
    fn default() -> Self {
        Retention { runs: default_retained_runs(), days: default_retained_days() }
    }
}

/// How to start one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// The argv (not a shell string). Placeholders: `{prompt}`, `{prompt_file}`,
    /// `{workspace}`, `{branch}`, `{base}`, `{run_id}`.
    pub command: Vec<String>,
    /// The argv that asks for a plan only, used by `approval: plan`. Same placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_command: Option<Vec<String>>,
    /// Extra environment variables for the agent (never secrets: the agent phase has none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How to read the agent's output. Default `generic`.
    #[serde(default)]
    pub output: OutputFormat,
}

/// Output adapters that turn an agent's stdout into activities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// JSON lines such as `{"type":"plan","text":...}`; other lines are kept as the log.
    #[default]
    Generic,
    /// `codex exec --json` events.
    CodexJsonl,
    /// `claude -p --output-format stream-json` events.
    ClaudeStreamJson,
}

pub const PLACEHOLDERS: [&str; 6] = ["prompt", "prompt_file", "workspace", "branch", "base", "run_id"];

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_string()).collect()
}

/// The `local-audit` profile's script (`sh -c`): git and grep, no LLM.
const LOCAL_AUDIT: &str = include_str!("local_audit.sh");

/// The profiles every installation has: `codex` and `claude`, and `local-audit`, a
/// deterministic audit with git and grep that runs anywhere (the example automations
/// use it, so they run end to end without an LLM tool).
pub fn builtin_profiles() -> BTreeMap<String, AgentProfile> {
    let codex = AgentProfile {
        // `--` ends the options: a prompt that starts with `-` stays a prompt.
        command: argv(&["codex", "exec", "--json", "--cd", "{workspace}", "--", "{prompt}"]),
        plan_command: Some(argv(&[
            "codex",
            "exec",
            "--json",
            "--sandbox",
            "read-only",
            "--cd",
            "{workspace}",
            "--",
            "Plan only, change nothing: {prompt}",
        ])),
        env: BTreeMap::new(),
        output: OutputFormat::CodexJsonl,
    };
    let claude = AgentProfile {
        command: argv(&["claude", "-p", "--output-format", "stream-json", "--verbose", "--", "{prompt}"]),
        plan_command: Some(argv(&[
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "plan",
            "--",
            "{prompt}",
        ])),
        env: BTreeMap::new(),
        output: OutputFormat::ClaudeStreamJson,
    };
    // The script comes through the environment: its braces are shell and JSON, not
    // placeholders.
    let local_audit = AgentProfile {
        command: argv(&["sh", "-c", "eval \"$NIGHTSHIFT_LOCAL_AUDIT\"", "local-audit", "{prompt_file}"]),
        // Planning runs the audit itself: what it reports is the plan.
        plan_command: None,
        env: BTreeMap::from([("NIGHTSHIFT_LOCAL_AUDIT".to_string(), LOCAL_AUDIT.to_string())]),
        output: OutputFormat::Generic,
    };
    BTreeMap::from([
        ("codex".to_string(), codex),
        ("claude".to_string(), claude),
        ("local-audit".to_string(), local_audit),
    ])
}

impl AgentProfile {
    /// Load-time checks: a non-empty argv whose placeholders are all known.
    pub fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        if self.command.is_empty() {
            findings.push(
                Finding::new(path.key("command"), Code::InvalidValue, "`command` is empty")
                    .hint("give the argv, e.g. [\"my-agent\", \"--prompt\", \"{prompt}\"]"),
            );
        }
        let argvs = [("command", Some(&self.command)), ("plan_command", self.plan_command.as_ref())];
        for (field, argv) in argvs {
            for (index, arg) in argv.into_iter().flatten().enumerate() {
                for name in placeholders_in(arg) {
                    if !PLACEHOLDERS.contains(&name) {
                        findings.push(
                            Finding::new(
                                path.key(field).index(index),
                                Code::InvalidValue,
                                format!("unknown placeholder `{{{name}}}`"),
                            )
                            .hint(format!("placeholders: {}", PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", "))),
                        );
                    }
                }
            }
        }
    }

    /// The argv with the placeholders that `values` names filled in; others stay as they
    /// are. One pass: text that is filled in (a prompt quoting `{base}`) is never re-read.
    pub fn fill(argv: &[String], values: &[(&str, &str)]) -> Vec<String> {
        argv.iter()
            .map(|arg| {
                let mut filled = String::with_capacity(arg.len());
                let mut rest = arg.as_str();
                while let Some(open) = rest.find('{') {
                    filled.push_str(&rest[..open]);
                    let after = &rest[open + 1..];
                    let value = after
                        .split_once('}')
                        .and_then(|(name, tail)| values.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v, tail)));
                    match value {
                        Some((value, tail)) => {
                            filled.push_str(value);
                            rest = tail;
                        }
                        None => {
                            filled.push('{');
                            rest = after;
                        }
                    }
                }
                filled.push_str(rest);
                filled
            })
            .collect()
    }
}

/// Names inside `{...}` in an argv element.
fn placeholders_in(arg: &str) -> impl Iterator<Item = &str> {
    arg.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_use_known_placeholders_only() {
        for (name, profile) in builtin_profiles() {
            let mut findings = Vec::new();
            profile.check(&FieldPath::root().key(&name), &mut findings);
            assert!(findings.is_empty(), "{name}: {findings:?}");
        }
    }

    #[test]
    fn unknown_placeholders_are_reported() {
        let profile = AgentProfile {
            command: vec!["x".into(), "{promt}".into()],
            plan_command: None,
            env: BTreeMap::new(),
            output: OutputFormat::Generic,
        };
        let mut findings = Vec::new();
        profile.check(&FieldPath::root(), &mut findings);
        assert_eq!(findings.len(), 1);
        assert!(findings[0].message.contains("{promt}"));
    }

    #[test]
    fn fill_leaves_unknown_values_in_place() {
        let argv = vec!["--cd".to_string(), "{workspace}".to_string(), "say {prompt}".to_string()];
        assert_eq!(AgentProfile::fill(&argv, &[("prompt", "hi")]), ["--cd", "{workspace}", "say hi"]);
    }

    #[test]
    fn filled_text_is_never_read_as_placeholders() {
        let argv = vec!["{prompt} on {base}".to_string()];
        let filled = AgentProfile::fill(&argv, &[("prompt", "title {base} {x"), ("base", "main")]);
        assert_eq!(filled, ["title {base} {x on main"]);
    }
}
