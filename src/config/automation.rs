//! The automation file format: one YAML file per automation. These types are the
//! format's definition: their doc comments become the JSON Schema's descriptions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::parallel::{AttemptsConfig, FanOutConfig, VerifyConfig};
use super::{DurationSpec, SecretRef};
use crate::netpolicy::{Method, NetworkConfig};
use crate::sandbox::limits::LimitsConfig;
use crate::triggers::{TriggerKind, TriggerSpec};

/// An automation: triggers, a rule that decides which events matter, and the task an
/// agent runs for each of them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "nightshift automation")]
pub struct Automation {
    /// Unique name: lowercase letters, digits and dashes. Used in URLs (`/hooks/{name}`),
    /// branch names and the run ledger.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"))]
    pub name: String,
    /// What the automation is for, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Disabled automations are validated but never run. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The one trigger of this automation (use `triggers` for several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerSpec>,
    /// Several triggers; every one of them can start a run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
    /// A rhai expression over `event`, `memory`, `history`, `automation` and `now` that
    /// must be true for an event to start a run. Default: every event the trigger accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// What the agent does for each matching event.
    pub task: TaskTemplate,
    /// Collapse repeat events into one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<Dedupe>,
    /// How many runs may be active at once, and what happens to the next one.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Minimum time between the creation of one run and the next, per concurrency group
    /// (the automation, or each rendered `concurrency.key`). Events inside it are
    /// recorded as skipped runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<DurationSpec>,
    /// How often a failed run is tried again, and how long to wait in between.
    #[serde(default)]
    pub retry: Retry,
    /// Per-automation memory that later runs read.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Where to tell people that a run started and how it ended (docs/notify.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyTarget>,
    /// Follow-ups: a reply in a run's Slack thread, or a comment with `phrase` on its pull
    /// request or issue, starts a run of this automation on the same branch
    /// (docs/notify.md).
    #[serde(default)]
    pub follow_up: FollowUpConfig,
    /// Event fixtures and what rendering them must give; `nightshift test` runs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestCase>,
}

fn yes() -> bool {
    true
}

/// When a reply to a run starts a follow-up run (docs/notify.md, "Follow-ups").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowUpConfig {
    /// Whether replies start follow-up runs. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long after the thread's last run started a reply still follows it up.
    /// Default `7d`.
    #[serde(default = "default_follow_up_window")]
    pub window: DurationSpec,
    /// What a GitHub comment must contain to be a follow-up (a Slack reply in the
    /// thread needs none). Matched without regard to case. Default `@nightshift`.
    #[serde(default = "default_follow_up_phrase")]
    pub phrase: String,
    /// How many follow-ups of one thread may wait while a run of it is going; one more
    /// is refused. Default 3.
    #[serde(default = "default_follow_up_queue")]
    #[schemars(range(min = 1, max = 100))]
    pub queue: u32,
}

impl Default for FollowUpConfig {
    fn default() -> FollowUpConfig {
        FollowUpConfig {
            enabled: true,
            window: default_follow_up_window(),
            phrase: default_follow_up_phrase(),
            queue: default_follow_up_queue(),
        }
    }
}

fn default_follow_up_window() -> DurationSpec {
    DurationSpec::from_secs(7 * 24 * 3600)
}

fn default_follow_up_phrase() -> String {
    "@nightshift".to_string()
}

fn default_follow_up_queue() -> u32 {
    3
}

/// The task template: rendered into a concrete task for each run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// Agent profile: `codex`, `claude`, `local-audit`, or one defined in `nightshift.yaml`.
    pub agent: String,
    /// The repository: a URL (`https://...`, `ssh://...`, `git@host:path`) or a local
    /// path. A `{{ expr }}` template, e.g. `{{ event.repository.clone_url }}`.
    pub repo: String,
    /// The branch or commit the work starts from. Default `main`. A `{{ expr }}` template.
    #[serde(default = "default_base")]
    pub base: String,
    /// The new branch, a `{{ expr }}` template. The rendered name must be a safe git ref;
    /// use `slug(text)` for event text. Default `nightshift/{{ automation.name }}/{{ slug(event.id) }}`.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The agent's prompt, a `{{ expr }}` template. Wrap event text in `untrusted(...)`.
    pub prompt: String,
    /// Shell commands run in the workspace before the agent, with `secrets` set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    /// Environment variables for the setup phase only, by name. The agent never sees them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Egress of the setup and agent phases; everything else is denied.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Globs of the files this task may change (e.g. `services/api/**`). Changes outside
    /// them mark the run `out_of_scope`. Default: everything.
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Time limit of the agent phase. Default `30m`.
    #[serde(default = "default_timeout")]
    pub timeout: DurationSpec,
    /// Time limit of the setup phase. Default `10m`.
    #[serde(default = "default_setup_timeout")]
    pub setup_timeout: DurationSpec,
    /// `plan`: the agent first proposes a plan and the run waits for approval. Default `none`.
    #[serde(default)]
    pub approval: Approval,
    /// Push the branch to the repository's remote when the run succeeds. Default false.
    #[serde(default)]
    pub push: bool,
    /// What each phase (every setup command, the agent) may use: `memory`, `processes`,
    /// `cpu` and `tmpfs`. A limit set here is enforced or the run is refused; one left out
    /// takes the worker's default (see docs/sandbox.md).
    #[serde(default, skip_serializing_if = "LimitsConfig::is_empty")]
    pub limits: LimitsConfig,
    /// Best-of-N: several attempts at the task at once, one of them picked
    /// (docs/parallel.md). A task has at most one of `attempts`, `verify` and `fan_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<AttemptsConfig>,
    /// A verifier checks each author round; on `fail` the author tries again with its
    /// findings (docs/parallel.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyConfig>,
    /// Sub-tasks from a script, run at once, then an optional join (docs/parallel.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOutConfig>,
}

fn default_base() -> String {
    "main".into()
}

pub const DEFAULT_BRANCH: &str = "nightshift/{{ automation.name }}/{{ slug(event.id) }}";

fn default_branch() -> String {
    DEFAULT_BRANCH.into()
}

fn default_paths() -> Vec<String> {
    vec!["**".into()]
}

fn default_timeout() -> DurationSpec {
    DurationSpec::from_secs(30 * 60)
}

fn default_setup_timeout() -> DurationSpec {
    DurationSpec::from_secs(10 * 60)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Run straight away.
    #[default]
    None,
    /// Ask the agent for a plan and wait for `nightshift approve`.
    Plan,
}

/// Deduplication: events with the same rendered key inside the window join one run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dedupe {
    /// A `{{ expr }}` template, e.g. `{{ event.incident.id }}`.
    pub key: String,
    /// How long a key holds. Default `1h`.
    #[serde(default = "default_dedupe_window")]
    pub window: DurationSpec,
}

fn default_dedupe_window() -> DurationSpec {
    DurationSpec::from_secs(3600)
}

/// Concurrency limits.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Most runs active at once (per `key` when set). Default 1.
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 10_000))]
    pub limit: u32,
    /// A `{{ expr }}` template; the limit applies per rendered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What a run does when the limit is reached. Default `queue`.
    #[serde(default)]
    pub overlap: Overlap,
}

fn default_limit() -> u32 {
    1
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency { limit: default_limit(), key: None, overlap: Overlap::default() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Record the new run as skipped.
    Skip,
    /// Wait until a slot frees up.
    #[default]
    Queue,
    /// Cancel the oldest active run and start the new one.
    CancelPrevious,
}

/// Retries of failed runs: exponential backoff with jitter, then `failed` with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included (1 = never retry). Default 3.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub attempts: u32,
    /// The wait before the first retry; it doubles with each retry after. Default `30s`.
    #[serde(default = "default_backoff")]
    pub backoff: DurationSpec,
    /// The longest wait between attempts. Default `10m`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: DurationSpec,
}

fn default_attempts() -> u32 {
    3
}

fn default_backoff() -> DurationSpec {
    DurationSpec::from_secs(30)
}

fn default_max_backoff() -> DurationSpec {
    DurationSpec::from_secs(600)
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: default_attempts(), backoff: default_backoff(), max_backoff: default_max_backoff() }
    }
}

/// Memory: what this automation remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// A rhai script run after each run; it reads `run` (the result) and `event`, and
    /// writes with `memory.set(key, value)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_run: Option<String>,
    /// How long entries live unless a script says otherwise (applied by the store).
    /// Default: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<DurationSpec>,
    /// How many earlier finished runs rules read as `history` (newest first). Default 5.
    #[serde(default = "default_history")]
    #[schemars(range(max = 100))]
    pub history: u32,
}

fn default_history() -> u32 {
    5
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { after_run: None, ttl: None, history: default_history() }
    }
}

/// A notification target: set exactly one field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// Post to Slack: a channel id, or the thread of the message that started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackNotify>,
    /// POST the run's result as JSON to a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookNotify>,
    /// Comment on the pull request or issue that started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_comment: Option<GithubCommentNotify>,
    /// Open a pull request from the run's pushed branch when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_pull_request: Option<GithubPullRequestNotify>,
}

impl NotifyTarget {
    /// The kind of target, as written (`slack`, `webhook`, ...), when exactly one is set.
    pub fn kind(&self) -> Option<NotifyKind> {
        let set = [
            (self.slack.is_some(), NotifyKind::Slack),
            (self.webhook.is_some(), NotifyKind::Webhook),
            (self.github_comment.is_some(), NotifyKind::GithubComment),
            (self.github_pull_request.is_some(), NotifyKind::GithubPullRequest),
        ];
        let mut kinds = set.into_iter().filter(|(on, _)| *on).map(|(_, kind)| kind);
        match (kinds.next(), kinds.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackNotify {
    /// Channel id or `#name`; default: reply in the thread of the triggering message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Bot token used to post; default: `slack.token` in nightshift.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookNotify {
    /// Where to POST: an `http://` or `https://` URL. Private and loopback addresses are
    /// refused unless nightshift.yaml says `notify: { allow_private_targets: true }`.
    pub url: String,
    /// Signs the body (Standard Webhooks) when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubCommentNotify {
    /// Token with permission to comment; default: `github.token` in nightshift.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubPullRequestNotify {
    /// The repository to open it in, `owner/name`, a `{{ expr }}` template (e.g.
    /// `acme/api`). Default: the repository of the GitHub event that started the run;
    /// required when the automation has other than GitHub triggers (a Slack message
    /// that asks for a fix, a cron job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The branch the pull request asks to merge into, a `{{ expr }}` template. Default:
    /// the task's rendered `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Open it as a draft. Default true.
    #[serde(default = "yes")]
    pub draft: bool,
    /// Token with permission to open pull requests; default: `github.token` in
    /// nightshift.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
}

impl Default for GithubPullRequestNotify {
    fn default() -> Self {
        GithubPullRequestNotify { repo: None, base: None, draft: true, token: None }
    }
}

/// One test: an event fixture and what rendering it must give.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// A name for the pass/fail line; default: the fixture's file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path of the event payload (JSON, as the source delivers it), relative to this file.
    pub event: String,
    /// Which trigger source receives the event; default: the automation's first trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TriggerKind>,
    /// Request headers of the delivery, e.g. `X-GitHub-Event: pull_request`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Memory as earlier runs left it.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub memory: serde_json::Map<String, serde_json::Value>,
    /// The time of the render and of the event's arrival (RFC 3339); default: the present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// How the run ends, for the end messages `expect.notify` checks. Default: it succeeds
    /// with a placeholder summary (`nightshift render` and `test` say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TestResult>,
    /// What must hold.
    pub expect: Expectation,
}

/// How a test's run ends: what its end messages report. Only the fields given replace the
/// placeholder's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestResult {
    /// How the run ended. Default `succeeded`.
    #[serde(default)]
    pub state: EndState,
    /// The agent's summary. Default: a placeholder that says it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Why the run did not succeed (ignored when it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the run's branch was pushed. Default: the task's `push`, when the run
    /// succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<bool>,
    /// The link of the pull request the run opened. Default: a placeholder when a
    /// `github_pull_request` target opens one (the branch was pushed), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<String>,
}

/// The state a run ends in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    #[default]
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl EndState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Succeeded => "succeeded",
            EndState::Failed => "failed",
            EndState::TimedOut => "timed_out",
            EndState::Cancelled => "cancelled",
        }
    }
}

/// Expectations of a test; only the fields given are checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Whether the event starts a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<bool>,
    /// Text the prompt must contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_contains: Vec<String>,
    /// Text the prompt must not contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_excludes: Vec<String>,
    /// The exact rendered branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The rendered dedupe key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    /// The rendered concurrency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Requests the rendered policies must allow or deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkExpectation>,
    /// Rendering must fail with an error containing this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_contains: Option<String>,
    /// The messages the run would send to its `notify:` targets, at its start and its
    /// end (with the test's `result`). Each entry matches one message, and every message
    /// must be matched by an entry: `[]` says nothing is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<MessageExpectation>>,
    /// The parallel plan the render must give (docs/parallel.md); only the fields given
    /// are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanExpectation>,
}

/// What a test expects of the rendered plan; only the fields given are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanExpectation {
    /// `attempts`, `verify`, `fan_out`, or `none` (the task has no plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<PlanShape>,
    /// How many attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Each attempt's profile, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<String>>,
    /// The attempts' check command (`""`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The judge's profile (`""`: no judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// The verifier's profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// The verifier's check commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    /// The most author rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// How many fan-out children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<u32>,
    /// Each child's `paths`, in order (as many children as given are checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_paths: Option<Vec<Vec<String>>>,
    /// Text each child's prompt must contain, in order (as many children as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_prompts_contain: Option<Vec<String>>,
    /// The most children running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Whether the fan-out has a join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<bool>,
}

/// The shape of a rendered plan, as a test names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanShape {
    None,
    Attempts,
    Verify,
    FanOut,
}

impl PlanShape {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanShape::None => "none",
            PlanShape::Attempts => "attempts",
            PlanShape::Verify => "verify",
            PlanShape::FanOut => "fan_out",
        }
    }

    pub fn of(plan: Option<&crate::parallel::Plan>) -> PlanShape {
        match plan {
            None => PlanShape::None,
            Some(crate::parallel::Plan::Attempts(_)) => PlanShape::Attempts,
            Some(crate::parallel::Plan::Verify(_)) => PlanShape::Verify,
            Some(crate::parallel::Plan::FanOut(_)) => PlanShape::FanOut,
        }
    }
}

/// One message a test expects: to a target of kind `target`, at the run's `start` or
/// `end`, saying what `contains` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageExpectation {
    /// The kind of target: `slack`, `github_comment`, `github_pull_request`, `webhook`.
    pub target: NotifyKind,
    /// `start` (when the run starts) or `end` (when it ends).
    pub kind: MessageKind,
    /// Text where it goes must contain: the Slack channel (and `thread TS`), the
    /// `owner/name#number` of a comment, the `owner/name` of a pull request, the webhook's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Text the message must contain: Slack's text, the comment's body, the pull
    /// request's title and body, the webhook's JSON (pretty-printed), or `not sent: WHY`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
    /// Text the message must not contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
}

/// The kind of a `notify:` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Slack,
    GithubComment,
    GithubPullRequest,
    Webhook,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Slack => "slack",
            NotifyKind::GithubComment => "github_comment",
            NotifyKind::GithubPullRequest => "github_pull_request",
            NotifyKind::Webhook => "webhook",
        }
    }

    /// Whether a target of this kind is told of the start: Slack and GitHub comments post
    /// at the start and edit at the end; a pull request and a webhook hear of the end only.
    pub fn told_at_start(self) -> bool {
        matches!(self, NotifyKind::Slack | NotifyKind::GithubComment)
    }
}

/// Which of a run's messages: at its start or its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Start,
    End,
}

/// Requests written as `host`, `host:port`, `METHOD host` or `METHOD host:port`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkExpectation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup_allows: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup_denies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_allows: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_denies: Vec<String>,
}

/// A request in a network expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: Option<Method>,
    pub host: String,
    pub port: u16,
}

impl RequestSpec {
    pub fn parse(text: &str) -> Result<RequestSpec, String> {
        let (method, target) = match text.trim().split_once(' ') {
            Some((method, target)) => {
                let method = Method::parse(method)
                    .ok_or_else(|| format!("unknown method `{method}` in `{text}`; use GET, POST, ..."))?;
                (Some(method), target.trim())
            }
            None => (None, text.trim()),
        };
        let (host, port) = match target.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| format!("invalid port in `{text}`"))?),
            None => (target, 443),
        };
        if host.is_empty() {
            return Err(format!("no host in `{text}`"));
        }
        Ok(RequestSpec { method, host: host.to_string(), port })
    }
}

impl Automation {
    /// Every trigger, whether written as `trigger` or `triggers`.
    pub fn all_triggers(&self) -> impl Iterator<Item = &TriggerSpec> {
        self.trigger.iter().chain(self.triggers.iter())
    }

    /// The source of its first trigger: what a fixture or a manual run is taken to have
    /// come from when nobody says.
    pub fn first_source(&self) -> Option<crate::triggers::TriggerKind> {
        self.all_triggers().find_map(|t| t.source()).map(|t| t.kind())
    }
}
