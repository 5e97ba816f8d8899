//! The automation's parallel shapes (`task.attempts`, `task.verify`, `task.fan_out`,
//! docs/parallel.md): their format, their built-in prompts, and the load checks that hold
//! them to nightshift.yaml's `parallel:` limits.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Code, FieldPath, Finding, TaskTemplate};
use crate::netpolicy::NetworkConfig;
use crate::parallel::{JoinWhen, NoWinner, ParallelLimits};

/// Best-of-N: `count` attempts at the task at once, round-robin over `profiles`, then one
/// is picked: the ones whose `check` fails are discarded, the smallest change wins, or
/// the `judge` picks among those left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptsConfig {
    /// How many attempts: at least 1, at most `parallel.max_attempts` in nightshift.yaml
    /// (default 4).
    #[schemars(range(min = 1))]
    pub count: u32,
    /// Agent profiles the attempts take in turn (attempt 1 the first, ...). Default: the
    /// task's `agent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// A shell command run in each attempt's workspace after its agent, with no network;
    /// an attempt whose check exits non-zero is discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// An agent that picks among the attempts left when more than one is; without it the
    /// smallest change wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeConfig>,
    /// `fail` (default): no attempt left fails the run; `report_all`: the run succeeds
    /// without a branch and reports every attempt.
    #[serde(default)]
    pub on_no_winner: NoWinner,
}

/// The judge of a best-of-N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Its agent profile.
    pub profile: String,
    /// What it is asked, a `{{ expr }}` template; the candidates are appended as
    /// untrusted text. Default: a prompt that asks for `{"winner": N, "reason": "..."}` in
    /// the file `$NIGHTSHIFT_ANSWER` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// Verification: after each author round a verifier checks the work; `fail` starts
/// another author round with its findings, up to `max_rounds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The verifier's agent profile.
    pub profile: String,
    /// The verifier's egress. Default: the task's `network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Shell commands run in the verifier's workspace before it, with no network; their
    /// outcomes are in its prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// The most author rounds: at least 1, at most `parallel.max_rounds` in
    /// nightshift.yaml (default 3). Default 2.
    #[serde(default = "default_max_rounds")]
    #[schemars(range(min = 1))]
    pub max_rounds: u32,
    /// What the verifier is asked, a `{{ expr }}` template; the author's summary and
    /// change size are appended as untrusted text. Default: a prompt that asks for
    /// `{"verdict": "pass" | "fail", "findings": [...]}` in the file `$NIGHTSHIFT_ANSWER`
    /// names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

fn default_max_rounds() -> u32 {
    2
}

/// Fan-out: sub-tasks from a script, run at once as far as `max_concurrent` and their
/// `paths` allow, then an optional join on their merged branches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOutConfig {
    /// A rhai script over `event`, `memory`, `history`, `automation` and `now` whose value
    /// is an array of maps `#{prompt: "...", paths: ["..."], repo: "..."}`: one sub-task
    /// each. `paths` defaults to the task's, `repo` to the task's. At most
    /// `parallel.max_children` in nightshift.yaml (default 32).
    pub items: String,
    /// The most sub-tasks running at once. Default 4.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1))]
    pub max_concurrent: u32,
    /// An agent run on the children's branches merged into one, after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinConfig>,
}

fn default_max_concurrent() -> u32 {
    4
}

/// The join after a fan-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// `all_succeeded` (default): a failed child fails the run without a join;
    /// `all_ended`: the join runs on the children that succeeded.
    #[serde(default)]
    pub when: JoinWhen,
    /// Its agent profile. Default: the task's `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// What the join agent is asked, a `{{ expr }}` template; merge conflicts and the
    /// children's summaries are appended as untrusted text. Default: a prompt that asks it
    /// to resolve conflicts and make the parts work together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// The judge's prompt when the automation gives none.
pub const DEFAULT_JUDGE_PROMPT: &str = "\
You are the judge of several attempts at the same task. Each candidate below is an \
attempt whose check passed, with its summary and the size of its change. Read their \
branches' changes, and pick the one that does the task best: correct first, then \
smallest and clearest.
Write your answer to the file named in the environment variable NIGHTSHIFT_ANSWER, as \
JSON and nothing else: {\"winner\": N, \"reason\": \"why, in a sentence\"}, where N is \
the candidate's attempt number. Change no files.";

/// The verifier's prompt when the automation gives none.
pub const DEFAULT_VERIFY_PROMPT: &str = "\
You are a reviewer. Another agent made the changes on this branch for the task below. \
Check that they do what the task asks, are correct, and break nothing; the results of \
the checks, if any, are below. Do not fix anything yourself.
Write your verdict to the file named in the environment variable NIGHTSHIFT_ANSWER, as \
JSON and nothing else: {\"verdict\": \"pass\", \"findings\": []} when the work is right, \
or {\"verdict\": \"fail\", \"findings\": [\"what is wrong and where\", ...]} when it is not.";

/// The join's prompt when the automation gives none.
pub const DEFAULT_JOIN_PROMPT: &str = "\
Several agents worked on parts of one task in parallel; their branches are merged into \
this one. Resolve every merge conflict listed below (the files still hold conflict \
markers), make the parts work together, and commit. Keep each part's intent; change no \
more than needed.";

impl TaskTemplate {
    /// The names of the parallel shapes the task has, in the order of the schema.
    fn shapes(&self) -> impl Iterator<Item = &'static str> {
        [(self.attempts.is_some(), "attempts"), (self.verify.is_some(), "verify"), (self.fan_out.is_some(), "fan_out")]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name)
    }
}

/// Load checks of a task's parallel shape: at most one, and each number within
/// nightshift.yaml's `parallel:` limits. (Profiles are found when the automation
/// compiles.)
pub fn check(task: &TaskTemplate, limits: &ParallelLimits, path: &FieldPath, findings: &mut Vec<Finding>) {
    for extra in task.shapes().skip(1) {
        findings.push(
            Finding::new(
                path.key(extra),
                Code::InvalidValue,
                "a task has at most one of `attempts`, `verify` and `fan_out`",
            )
            .hint("split the work into two automations, or keep one shape"),
        );
    }
    if let Some(shape) = task.shapes().next()
        && task.approval != crate::config::Approval::None
    {
        findings.push(
            Finding::new(
                path.key("approval"),
                Code::InvalidValue,
                format!("`approval: plan` cannot be used with `{shape}`: every child would wait for its own approval"),
            )
            .hint("approve the result instead: give the parallel work `push: false` and review what it reports"),
        );
    }
    if let Some(attempts) = &task.attempts {
        let at = path.key("attempts");
        check_bound(at.key("count"), "count", attempts.count, limits.max_attempts, "max_attempts", findings);
        if let Some(check) = &attempts.check {
            check_command(at.key("check"), check, findings);
        }
    }
    if let Some(verify) = &task.verify {
        let at = path.key("verify");
        check_bound(at.key("max_rounds"), "max_rounds", verify.max_rounds, limits.max_rounds, "max_rounds", findings);
        for (index, command) in verify.checks.iter().enumerate() {
            check_command(at.key("checks").index(index), command, findings);
        }
    }
    if let Some(fan_out) = &task.fan_out
        && fan_out.max_concurrent == 0
    {
        findings.push(Finding::new(
            path.key("fan_out").key("max_concurrent"),
            Code::InvalidValue,
            "`max_concurrent` is 0, so no sub-task would ever run",
        ));
    }
}

/// `value` is at least 1 and at most the limit `limit_name` of nightshift.yaml.
fn check_bound(path: FieldPath, field: &str, value: u32, limit: u32, limit_name: &str, findings: &mut Vec<Finding>) {
    if value == 0 {
        findings.push(Finding::new(path, Code::InvalidValue, format!("`{field}` is 0; it must be at least 1")));
    } else if value > limit {
        findings.push(
            Finding::new(
                path,
                Code::InvalidValue,
                format!("`{field}` is {value}, more than `parallel.{limit_name}` ({limit}) allows"),
            )
            .hint(format!("lower it, or raise `parallel.{limit_name}` in nightshift.yaml")),
        );
    }
}

fn check_command(path: FieldPath, command: &str, findings: &mut Vec<Finding>) {
    if command.trim().is_empty() {
        findings.push(
            Finding::new(path, Code::InvalidValue, "the command is empty")
                .hint("give a shell command, e.g. `cargo test`"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: &str) -> TaskTemplate {
        let text = format!("agent: local-audit\nrepo: .\nprompt: fix it\n{extra}");
        serde_yaml::from_str(&text).unwrap()
    }

    /// Each finding as `path: message`.
    fn problems(extra: &str, limits: ParallelLimits) -> Vec<String> {
        let mut findings = Vec::new();
        check(&task(extra), &limits, &FieldPath::root().key("task"), &mut findings);
        findings.iter().map(|f| format!("{}: {}", f.path, f.message)).collect()
    }

    fn check_default(extra: &str) -> Vec<String> {
        problems(extra, ParallelLimits::default())
    }

    #[test]
    fn a_task_without_a_shape_or_with_one_in_bounds_passes() {
        assert_eq!(check_default(""), Vec::<String>::new());
        assert_eq!(check_default("attempts: { count: 4, check: cargo test }"), Vec::<String>::new());
        assert_eq!(check_default("verify: { profile: claude, max_rounds: 3 }"), Vec::<String>::new());
        assert_eq!(check_default("fan_out: { items: '[]', max_concurrent: 1 }"), Vec::<String>::new());
    }

    #[test]
    fn approval_of_a_plan_is_refused_beside_a_shape() {
        assert_eq!(
            check_default("approval: plan\nattempts: { count: 2 }"),
            [
                "task.approval: `approval: plan` cannot be used with `attempts`: every child would wait for its own approval"
            ]
        );
        assert_eq!(check_default("approval: plan"), Vec::<String>::new(), "a plain task may ask for approval");
    }

    #[test]
    fn two_shapes_are_refused_at_the_second_and_third() {
        let found = check_default("attempts: { count: 2 }\nverify: { profile: codex }\nfan_out: { items: '[]' }");
        assert_eq!(
            found,
            [
                "task.verify: a task has at most one of `attempts`, `verify` and `fan_out`",
                "task.fan_out: a task has at most one of `attempts`, `verify` and `fan_out`",
            ]
        );
    }

    #[test]
    fn counts_and_rounds_are_held_to_the_limits_of_nightshift_yaml() {
        let limits = ParallelLimits { max_attempts: 2, max_children: 32, max_rounds: 1 };
        assert_eq!(
            problems("attempts: { count: 3 }", limits),
            ["task.attempts.count: `count` is 3, more than `parallel.max_attempts` (2) allows"]
        );
        assert_eq!(problems("attempts: { count: 2 }", limits), Vec::<String>::new());
        assert_eq!(
            problems("verify: { profile: codex, max_rounds: 2 }", limits),
            ["task.verify.max_rounds: `max_rounds` is 2, more than `parallel.max_rounds` (1) allows"]
        );
        assert_eq!(problems("verify: { profile: codex, max_rounds: 1 }", limits), Vec::<String>::new());
        // The default of 2 rounds is over a limit of 1 too.
        assert_eq!(problems("verify: { profile: codex }", limits).len(), 1);
    }

    #[test]
    fn zero_counts_rounds_and_concurrency_are_refused() {
        assert_eq!(
            check_default("attempts: { count: 0 }"),
            ["task.attempts.count: `count` is 0; it must be at least 1"]
        );
        assert_eq!(
            check_default("verify: { profile: codex, max_rounds: 0 }"),
            ["task.verify.max_rounds: `max_rounds` is 0; it must be at least 1"]
        );
        assert_eq!(
            check_default("fan_out: { items: '[]', max_concurrent: 0 }"),
            ["task.fan_out.max_concurrent: `max_concurrent` is 0, so no sub-task would ever run"]
        );
    }

    #[test]
    fn empty_check_commands_are_refused_where_they_are() {
        assert_eq!(check_default("attempts: { count: 2, check: ' ' }"), ["task.attempts.check: the command is empty"]);
        assert_eq!(
            check_default("verify: { profile: codex, checks: [make, ''] }"),
            ["task.verify.checks[1]: the command is empty"]
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let verify = task("verify: { profile: codex }").verify.unwrap();
        assert_eq!((verify.max_rounds, verify.network, verify.prompt), (2, None, None));
        let fan_out = task("fan_out: { items: '[]', join: {} }").fan_out.unwrap();
        assert_eq!(fan_out.max_concurrent, 4);
        assert_eq!(fan_out.join.unwrap().when, JoinWhen::AllSucceeded);
        let attempts = task("attempts: { count: 2 }").attempts.unwrap();
        assert_eq!((attempts.on_no_winner, attempts.profiles.len()), (NoWinner::Fail, 0));
    }

    #[test]
    fn the_built_in_prompts_say_what_to_write_where() {
        for prompt in [DEFAULT_JUDGE_PROMPT, DEFAULT_VERIFY_PROMPT] {
            assert!(prompt.contains("NIGHTSHIFT_ANSWER"), "{prompt}");
            assert!(!prompt.contains("{{"), "a built-in prompt is a template without expressions");
        }
        assert!(DEFAULT_JUDGE_PROMPT.contains(r#"{"winner": N, "reason""#));
        assert!(DEFAULT_VERIFY_PROMPT.contains(r#"{"verdict": "pass", "findings": []}"#));
        assert!(!DEFAULT_JOIN_PROMPT.contains("{{"));
    }
}
