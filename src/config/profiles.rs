//! Agent profiles: how to start an agent (argv template, environment, output adapter),
//! from `nightshift.yaml` over built-in defaults for Codex CLI and Claude Code.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Code, FieldPath, Finding};
use crate::netpolicy::{AllowRuleConfig, RuleOrigin};

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
    /// Slack's Web API for `notify:` targets: base URL and default bot token.
    #[serde(default)]
    pub slack: super::SlackSettings,
    /// GitHub's REST API for `notify:` targets: base URL and default token.
    #[serde(default)]
    pub github: super::GithubSettings,
    /// How `notify:` targets are sent.
    #[serde(default)]
    pub notify: super::NotifySettings,
    /// Ceilings of parallel work (docs/parallel.md) that no automation or event can
    /// raise: the most attempts, children and verification rounds of one run.
    #[serde(default)]
    pub parallel: crate::parallel::ParallelLimits,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        ProjectConfig {
            profiles: BTreeMap::new(),
            retention: Retention::default(),
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            slack: super::SlackSettings::default(),
            github: super::GithubSettings::default(),
            notify: super::NotifySettings::default(),
            parallel: crate::parallel::ParallelLimits::default(),
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
    /// `{workspace}`, `{branch}`, `{base}`, `{run_id}`; write `{{` and `}}` for literal
    /// braces (JSON in an argument: `{{"key": 1}}`).
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
    /// What the agent CLI itself needs inside the sandbox: its login state, its model
    /// API, its credential. Trusted config: an event can never add to it.
    #[serde(default, skip_serializing_if = "ProfileSandbox::is_empty")]
    pub sandbox: ProfileSandbox,
}

/// A profile's allowances inside the sandbox. Each one a run used is on its timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSandbox {
    /// Paths the agent phase sees at the same place, such as the CLI's login state
    /// (`~/.codex`). `~/` is the worker's home directory. A path that does not exist on the
    /// worker is left out (and the run's timeline says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<ProfilePath>,
    /// Allow rules added to the agent phase's network policy, such as the model API's
    /// domain; decisions they make are recorded as the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<AllowRuleConfig>,
    /// Names of the worker's environment variables the agent phase gets, such as the
    /// model API key. The agent can read them: name only its own credential here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

impl ProfileSandbox {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.network.is_empty() && self.env.is_empty()
    }
}

/// One path a profile brings into the agent phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePath {
    /// An absolute path, or one under the worker's home directory written `~/...`.
    pub path: String,
    /// Whether the agent may write there. Default false.
    #[serde(default)]
    pub writable: bool,
}

impl ProfilePath {
    /// The path on this machine: `~/` taken from `home`.
    pub fn resolve(&self, home: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
        match self.path.strip_prefix("~/") {
            Some(rest) => home.map(|home| home.join(rest)),
            None => Some(std::path::PathBuf::from(&self.path)),
        }
    }
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

fn domain(host: &str) -> AllowRuleConfig {
    AllowRuleConfig { domain: Some(host.to_string()), ..AllowRuleConfig::default() }
}

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
        sandbox: ProfileSandbox {
            paths: vec![ProfilePath { path: "~/.codex".into(), writable: true }],
            network: vec![domain("api.openai.com"), domain("chatgpt.com")],
            env: vec!["OPENAI_API_KEY".into(), "CODEX_API_KEY".into()],
        },
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
        sandbox: ProfileSandbox {
            paths: vec![
                ProfilePath { path: "~/.claude".into(), writable: true },
                ProfilePath { path: "~/.claude.json".into(), writable: true },
            ],
            network: vec![domain("api.anthropic.com")],
            env: vec!["ANTHROPIC_API_KEY".into(), "CLAUDE_CODE_OAUTH_TOKEN".into()],
        },
    };
    // The script comes through the environment: its braces are shell and JSON, not
    // placeholders.
    let local_audit = AgentProfile {
        command: argv(&["sh", "-c", "eval \"$NIGHTSHIFT_LOCAL_AUDIT\"", "local-audit", "{prompt_file}"]),
        // Planning runs the audit itself: what it reports is the plan.
        plan_command: None,
        env: BTreeMap::from([("NIGHTSHIFT_LOCAL_AUDIT".to_string(), LOCAL_AUDIT.to_string())]),
        output: OutputFormat::Generic,
        sandbox: ProfileSandbox::default(),
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
        self.check_sandbox(&path.key("sandbox"), findings);
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

    fn check_sandbox(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        for (index, entry) in self.sandbox.paths.iter().enumerate() {
            let text = entry.path.as_str();
            let home_relative = text.strip_prefix("~/").is_some_and(|rest| !rest.is_empty());
            if !(home_relative || text.starts_with('/')) || text.split('/').any(|part| part == "..") {
                findings.push(
                    Finding::new(
                        path.key("paths").index(index).key("path"),
                        Code::InvalidValue,
                        format!("`{text}` is not an absolute path"),
                    )
                    .hint("write an absolute path, or `~/` and a path under the worker's home, without `..`"),
                );
            }
        }
        for (index, rule) in self.sandbox.network.iter().enumerate() {
            if let Err(error) = rule.expand(RuleOrigin::Static) {
                findings.push(Finding::new(path.key("network").index(index), Code::InvalidValue, error.to_string()));
            }
        }
        for (index, name) in self.sandbox.env.iter().enumerate() {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                findings.push(
                    Finding::new(
                        path.key("env").index(index),
                        Code::InvalidValue,
                        format!("`{name}` is not an environment variable name"),
                    )
                    .hint("letters, digits and `_`, not starting with a digit"),
                );
            }
        }
    }

    /// The argv with the placeholders that `values` names filled in, still a template:
    /// other placeholders and the escapes `{{` and `}}` stay, and the braces of a value
    /// are escaped, so a later `fill` or `finish` never reads them as placeholders.
    pub fn fill(argv: &[String], values: &[(&str, &str)]) -> Vec<String> {
        substitute(argv, values, |text, filled| filled.push_str(&escape(text)))
    }

    /// The argv as the agent gets it: the placeholders that `values` names filled in, the
    /// escapes `{{` and `}}` turned into `{` and `}`, and other placeholders left as
    /// written. One pass: text that is filled in (a prompt quoting `{base}`) is never
    /// re-read.
    pub fn finish(argv: &[String], values: &[(&str, &str)]) -> Vec<String> {
        substitute(argv, values, |text, filled| filled.push_str(text))
    }
}

/// Each argv element with the placeholders that `values` names replaced by their value,
/// other placeholders written back as `{name}`, and every value and piece of text
/// written by `write` (as it is, or escaped again).
fn substitute(argv: &[String], values: &[(&str, &str)], write: impl Fn(&str, &mut String)) -> Vec<String> {
    argv.iter()
        .map(|arg| {
            let mut filled = String::with_capacity(arg.len());
            for piece in pieces(arg) {
                match piece {
                    Piece::Placeholder(name) => match lookup(values, name) {
                        Some(value) => write(value, &mut filled),
                        None => {
                            filled.push('{');
                            filled.push_str(name);
                            filled.push('}');
                        }
                    },
                    Piece::Text(text) => write(text, &mut filled),
                }
            }
            filled
        })
        .collect()
}

/// A part of an argv element: text as the agent sees it (an escape already read), or a
/// placeholder's name.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// The pieces of an argv element. `{{` is a literal `{` and `}}` a literal `}` (so JSON
/// in an argument is written `{{"key": 1}}`); `{name}` is a placeholder; a `{` without
/// a closing `}` and a lone `}` are literal.
fn pieces(arg: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = arg;
    while let Some(at) = rest.find(['{', '}']) {
        if at > 0 {
            pieces.push(Piece::Text(&rest[..at]));
        }
        let after = &rest[at + 1..];
        if rest[at..].starts_with("{{") {
            pieces.push(Piece::Text("{"));
            rest = &rest[at + 2..];
        } else if rest[at..].starts_with("}}") {
            pieces.push(Piece::Text("}"));
            rest = &rest[at + 2..];
        } else if rest[at..].starts_with('}') {
            pieces.push(Piece::Text("}"));
            rest = after;
        } else if let Some(close) = after.find('}') {
            pieces.push(Piece::Placeholder(&after[..close]));
            rest = &after[close + 1..];
        } else {
            pieces.push(Piece::Text("{"));
            rest = after;
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

fn lookup<'a>(values: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// `text` with its braces written as escapes.
fn escape(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// Names inside `{...}` in an argv element (escapes are not placeholders).
fn placeholders_in(arg: &str) -> impl Iterator<Item = &str> {
    pieces(arg).into_iter().filter_map(|piece| match piece {
        Piece::Placeholder(name) => Some(name),
        Piece::Text(_) => None,
    })
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
            sandbox: ProfileSandbox::default(),
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
        let filled = AgentProfile::finish(&argv, &[("prompt", "title {base} {x"), ("base", "main")]);
        assert_eq!(filled, ["title {base} {x on main"]);
        // Filled in two steps (at render, then by the worker), a value is still never re-read.
        let rendered = AgentProfile::fill(&argv, &[("base", "{prompt}}")]);
        assert_eq!(AgentProfile::finish(&rendered, &[("prompt", "hi")]), ["hi on {prompt}}"]);
    }

    #[track_caller]
    fn check_fill(arg: &str, placeholders: &[&str], finished: &str) {
        let argv = vec![arg.to_string()];
        assert_eq!(placeholders_in(arg).collect::<Vec<_>>(), placeholders, "{arg}");
        let values = [("prompt", "P"), ("branch", "{b}")];
        assert_eq!(AgentProfile::finish(&argv, &values), [finished], "{arg}");
        // Filling some values first (as rendering does) changes nothing in the end.
        let rendered = AgentProfile::fill(&argv, &values[1..]);
        assert_eq!(AgentProfile::finish(&rendered, &values[..1]), [finished], "{arg}");
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        check_fill(r#"{{"prompt": {prompt}}}"#, &["prompt"], r#"{"prompt": P}"#);
        check_fill(r#"--json={{"a":{{"b":1}}}}"#, &[], r#"--json={"a":{"b":1}}"#);
        check_fill("{{prompt}} {branch}", &["branch"], "{prompt} {b}");
        check_fill("a } b { c", &[], "a } b { c");
        check_fill("{unknown} {prompt}", &["unknown", "prompt"], "{unknown} P");
    }

    #[test]
    fn sandbox_allowances_are_checked_at_load() {
        let yaml = r#"
command: [agent, "{prompt}"]
sandbox:
  paths: [{ path: "~/.agent", writable: true }, { path: relative/dir }, { path: "/x/../etc" }, { path: "~/" }]
  network: [{ domain: api.agent.example }, { domain: "https://bad.example" }]
  env: [AGENT_KEY, "1BAD", "A-B"]
"#;
        let profile: AgentProfile = serde_yaml::from_str(yaml).unwrap();
        let mut findings = Vec::new();
        profile.check(&FieldPath::root(), &mut findings);
        let fields: Vec<String> = findings.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(
            fields,
            [
                "sandbox.paths[1].path",
                "sandbox.paths[2].path",
                "sandbox.paths[3].path",
                "sandbox.network[1]",
                "sandbox.env[1]",
                "sandbox.env[2]"
            ],
            "{findings:?}"
        );
        let home = std::path::Path::new("/home/ops");
        assert_eq!(profile.sandbox.paths[0].resolve(Some(home)), Some(home.join(".agent")));
        assert_eq!(profile.sandbox.paths[0].resolve(None), None);
        assert!(builtin_profiles().values().all(|p| {
            let mut findings = Vec::new();
            p.check(&FieldPath::root(), &mut findings);
            findings.is_empty()
        }));
    }

    #[test]
    fn json_written_with_escapes_loads() {
        let profile = AgentProfile {
            command: vec!["agent".into(), r#"--config={{"model": "x"}}"#.into(), "{prompt}".into()],
            plan_command: None,
            env: BTreeMap::new(),
            output: OutputFormat::Generic,
            sandbox: ProfileSandbox::default(),
        };
        let mut findings = Vec::new();
        profile.check(&FieldPath::root(), &mut findings);
        assert!(findings.is_empty(), "{findings:?}");
    }
}
