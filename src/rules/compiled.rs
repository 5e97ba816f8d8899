//! `CompiledAutomation`: an automation with every expression, template and script
//! compiled once, and `render`, which turns an event into a `Rendered` task.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rhai::{AST, Dynamic, Map, Scope};

use super::engine::{EvalError, RuleEngine};
use super::git_ref::{check_branch_name, check_repo_location};
use super::memory::{MemoryEdits, MemoryView, MemoryWriter};
use super::plan::{CompiledPlan, PlanContext};
use super::template::{Template, TemplateError};
use super::value::{to_dynamic, to_json};
use crate::config::{AgentProfile, Automation, Code, FieldPath, Finding, GithubSettings, InnerPosition, SlackSettings};
use crate::delivery::Target;
use crate::event::Event;
use crate::netpolicy::{AllowRule, AllowRuleConfig, NetworkPolicy, PhasePolicyConfig, RuleOrigin};
use crate::parallel::ParallelLimits;
use crate::task::{AgentCommand, Flow, PhasePolicies, Rendered, Task};
use crate::triggers::TriggerKind;

/// An event converted for rhai once, then used by every automation that sees it.
///
/// Values go into scopes as plain (not shared) constants: rhai refuses to modify those,
/// while a shared value could be changed by one script under the next one's feet.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub event: Event,
    value: Dynamic,
}

impl PreparedEvent {
    pub fn new(event: Event) -> PreparedEvent {
        let view: Map =
            event.rule_entries().into_iter().map(|(name, value)| (name.into(), to_dynamic(&value))).collect();
        let value = Dynamic::from_map(view);
        PreparedEvent { event, value }
    }
}

/// `now` as rules read it.
pub fn now_value(now: DateTime<Utc>) -> Dynamic {
    let mut map = Map::new();
    map.insert("iso".into(), now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into());
    map.insert("unix".into(), Dynamic::from_int(now.timestamp()));
    map.insert("date".into(), now.format("%Y-%m-%d").to_string().into());
    map.insert("weekday".into(), now.format("%a").to_string().into());
    map.insert("hour".into(), Dynamic::from_int(i64::from(now.hour())));
    map.insert("minute".into(), Dynamic::from_int(i64::from(now.minute())));
    map.insert("year".into(), Dynamic::from_int(i64::from(now.year())));
    Dynamic::from_map(map)
}

/// A render that failed: which automation, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("automation `{automation}`, field `{field}`: {cause}")]
pub struct RenderError {
    pub automation: String,
    pub field: String,
    pub cause: String,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledPhase {
    static_policy: NetworkPolicy,
    script: Option<AST>,
    /// What the script may allow at most.
    ceiling: Vec<AllowRule>,
}

/// An automation ready to render.
#[derive(Debug, Clone)]
pub struct CompiledAutomation {
    pub definition: Automation,
    /// Identifies this version of the definition on the runs it creates.
    pub definition_hash: String,
    profile: AgentProfile,
    when: Option<AST>,
    prompt: Template,
    /// The largest rendered prompt (`max_prompt_bytes` in nightshift.yaml).
    max_prompt_bytes: usize,
    branch: Template,
    base: Template,
    repo: Template,
    dedupe_key: Option<Template>,
    concurrency_key: Option<Template>,
    setup_policy: CompiledPhase,
    agent_policy: CompiledPhase,
    after_run: Option<AST>,
    /// Each `notify:` target's compiled `github_pull_request.base`, where it has one.
    notify_bases: Vec<Option<Template>>,
    /// Each `notify:` target's compiled `github_pull_request.repo`, where it has one.
    notify_repos: Vec<Option<Template>>,
    /// nightshift.yaml's `slack:` and `github:`: the tokens of targets that name none.
    slack: SlackSettings,
    github: GithubSettings,
    automation_value: Dynamic,
    /// Whether any rule names `history`; if none does, ingest need not read it.
    reads_history: bool,
    /// `task.attempts`, `task.verify` or `task.fan_out`, when the task has one.
    plan: Option<CompiledPlan>,
    /// nightshift.yaml's `parallel:`: what a rendered plan may hold at most.
    parallel_limits: ParallelLimits,
}

/// Variables rules may use.
const RULE_VARIABLES: &[&str] = &["event", "memory", "history", "automation", "now"];
/// `memory.after_run` also reads the finished run.
const AFTER_RUN_VARIABLES: &[&str] = &["event", "memory", "history", "automation", "now", "run"];

fn syntax_finding(path: FieldPath, error: &rhai::ParseError) -> Finding {
    let inner = InnerPosition { line: error.1.line().unwrap_or(1), col: error.1.position().unwrap_or(1) };
    Finding::new(path, Code::RhaiSyntax, format!("rhai: {}", error.0))
        .hint("rules are rhai expressions over `event`, `memory`, `history`, `automation` and `now`")
        .inner(Some(inner))
}

fn template_finding(path: FieldPath, error: TemplateError) -> Finding {
    Finding::new(path, Code::RhaiSyntax, error.message)
        .hint("templates are text with `{{ rhai expression }}` parts")
        .inner(Some(error.at))
}

/// A compiled `when` expression, or the finding that says why it does not compile.
pub fn compile_when(engine: &RuleEngine, path: FieldPath, text: &str) -> Result<AST, Finding> {
    engine.compile_expression(RULE_VARIABLES, text).map_err(|e| syntax_finding(path, &e))
}

/// A compiled script (`network.*.script`, or `memory.after_run` when `after_run`).
pub fn compile_script(engine: &RuleEngine, path: FieldPath, text: &str, after_run: bool) -> Result<AST, Finding> {
    let variables = if after_run { AFTER_RUN_VARIABLES } else { RULE_VARIABLES };
    engine.compile_script(variables, text).map_err(|e| syntax_finding(path, &e))
}

/// A compiled template.
pub fn compile_template(engine: &RuleEngine, path: FieldPath, text: &str) -> Result<Template, Finding> {
    Template::compile(engine, RULE_VARIABLES, text).map_err(|e| template_finding(path, e))
}

/// A compiled branch template whose fixed text can form a safe git ref, with a fixed
/// namespace (`agent/`) before any expression so event text can never name `main` or a
/// release branch.
pub fn compile_branch(engine: &RuleEngine, path: FieldPath, text: &str) -> Result<Template, Finding> {
    let branch = compile_template(engine, path.clone(), text)?;
    let problem = |message: String| Finding::new(path.clone(), Code::BranchTemplate, message);
    if let Err(why) = check_branch_name(&branch.with_stand_ins("x")) {
        return Err(problem(format!("branch template cannot give a safe name: {why}")).hint(
            "fixed text in a branch may use letters, digits, `/`, `-`, `_`, `.`; wrap event text in `slug(...)`",
        ));
    }
    if branch.has_expressions() && !branch.fixed_prefix().contains('/') {
        return Err(problem("a branch template needs fixed text with a `/` before its first `{{ }}`".into())
            .hint("e.g. `agent/incident-{{ event.incident.number }}`, so event text cannot choose `main`"));
    }
    Ok(branch)
}

/// A compiled `base` template whose fixed text can form a ref or commit.
pub fn compile_base(engine: &RuleEngine, path: FieldPath, text: &str) -> Result<Template, Finding> {
    let base = compile_template(engine, path.clone(), text)?;
    check_branch_name(&base.with_stand_ins("x"))
        .map_err(|why| Finding::new(path, Code::InvalidValue, format!("`base` cannot give a safe ref: {why}")))?;
    Ok(base)
}

/// A compiled `repo` template whose fixed text can form an allowed repository location.
pub fn compile_repo(engine: &RuleEngine, path: FieldPath, text: &str) -> Result<Template, Finding> {
    let repo = compile_template(engine, path.clone(), text)?;
    check_repo_location(&repo.with_stand_ins("x")).map_err(|why| {
        Finding::new(path, Code::InvalidValue, why)
            .hint("e.g. `https://github.com/acme/api.git`, `git@github.com:acme/api.git` or `/srv/git/api`")
    })?;
    Ok(repo)
}

/// A compiled `github_pull_request.repo` template whose fixed text can form `owner/name`.
pub fn compile_github_repo(engine: &RuleEngine, path: FieldPath, text: &str) -> Result<Template, Finding> {
    let repo = compile_template(engine, path.clone(), text)?;
    crate::delivery::github::check_repo(&repo.with_stand_ins("x"))
        .map_err(|why| Finding::new(path, Code::InvalidValue, why).hint("e.g. `acme/api`"))?;
    Ok(repo)
}

/// The agent profile `name`, or a finding that suggests a close one.
pub fn find_profile<'a>(
    profiles: &'a BTreeMap<String, AgentProfile>,
    path: FieldPath,
    name: &str,
) -> Result<&'a AgentProfile, Finding> {
    profiles.get(name).ok_or_else(|| {
        let names: Vec<&str> = profiles.keys().map(String::as_str).collect();
        let hint = match crate::config::did_you_mean(name, names.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("known profiles: {}; define others in nightshift.yaml", names.join(", ")),
        };
        Finding::new(path, Code::UnknownProfile, format!("unknown agent profile `{name}`")).hint(hint)
    })
}

/// A static allow rule, expanded, or the finding that says what is wrong with it.
pub fn expand_rule(path: FieldPath, rule: &AllowRuleConfig) -> Result<Vec<AllowRule>, Finding> {
    rule.expand(RuleOrigin::Static).map_err(|error| {
        Finding::new(path, Code::NetworkRule, error.to_string())
            .hint("e.g. `{ domain: api.github.com }`, `{ domain: mirror.example.com, ports: [80], methods: [GET] }` or `{ preset: rust }`")
    })
}

/// Every text of an automation that rules are compiled from.
fn rule_texts(automation: &Automation) -> impl Iterator<Item = &str> {
    let task = &automation.task;
    let pull_requests = automation.notify.iter().filter_map(|target| target.github_pull_request.as_ref());
    let notify = pull_requests.flat_map(|pull| [pull.repo.as_deref(), pull.base.as_deref()]).flatten();
    let fixed = [task.prompt.as_str(), task.branch.as_str(), task.base.as_str(), task.repo.as_str()];
    let optional = [
        automation.when.as_deref(),
        automation.dedupe.as_ref().map(|d| d.key.as_str()),
        automation.concurrency.key.as_deref(),
        task.network.setup.script.as_deref(),
        task.network.agent.script.as_deref(),
        automation.memory.after_run.as_deref(),
        task.fan_out.as_ref().map(|f| f.items.as_str()),
        task.fan_out.as_ref().and_then(|f| f.join.as_ref()?.prompt.as_deref()),
        task.attempts.as_ref().and_then(|a| a.judge.as_ref()?.prompt.as_deref()),
        task.verify.as_ref().and_then(|v| v.prompt.as_deref()),
        task.verify.as_ref().and_then(|v| v.network.as_ref()?.setup.script.as_deref()),
        task.verify.as_ref().and_then(|v| v.network.as_ref()?.agent.script.as_deref()),
    ];
    fixed.into_iter().chain(optional.into_iter().flatten()).chain(notify)
}

/// Whether `text` has `name` as a whole identifier (possibly inside a string too, which
/// only errs towards reading it).
fn names_variable(text: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name)
        .any(|(at, _)| !text[..at].ends_with(is_ident) && !text[at + name.len()..].starts_with(is_ident))
}

/// Keeps the value, or records its finding.
fn keep<T>(result: Result<T, Finding>, findings: &mut Vec<Finding>) -> Option<T> {
    result.map_err(|finding| findings.push(finding)).ok()
}

impl CompiledAutomation {
    /// Sets the largest prompt a render may produce (default 256 KiB).
    pub fn set_max_prompt_bytes(&mut self, limit: usize) {
        self.max_prompt_bytes = limit;
    }

    /// Sets nightshift.yaml's `slack:` and `github:`, whose tokens targets that name none
    /// use (default: `env:SLACK_BOT_TOKEN`, `env:GITHUB_TOKEN`).
    pub fn set_notify_settings(&mut self, slack: SlackSettings, github: GithubSettings) {
        (self.slack, self.github) = (slack, github);
    }

    /// Sets nightshift.yaml's `parallel:` limits, which bound a rendered plan (default
    /// `ParallelLimits::default()`).
    pub fn set_parallel_limits(&mut self, limits: ParallelLimits) {
        self.parallel_limits = limits;
    }

    /// Compiles everything in `automation`, reporting every problem found.
    pub fn compile(
        engine: &RuleEngine,
        automation: &Automation,
        profiles: &BTreeMap<String, AgentProfile>,
    ) -> Result<CompiledAutomation, Vec<Finding>> {
        let mut findings = Vec::new();
        let root = FieldPath::root();
        let task_path = root.key("task");
        let task = &automation.task;
        let findings = &mut findings;

        let profile = keep(find_profile(profiles, task_path.key("agent"), &task.agent).cloned(), findings);
        let when = match &automation.when {
            Some(text) => keep(compile_when(engine, root.key("when"), text), findings).map(Some),
            None => Some(None),
        };
        let prompt = keep(compile_template(engine, task_path.key("prompt"), &task.prompt), findings);
        let branch = keep(compile_branch(engine, task_path.key("branch"), &task.branch), findings);
        let base = keep(compile_base(engine, task_path.key("base"), &task.base), findings);
        let repo = keep(compile_repo(engine, task_path.key("repo"), &task.repo), findings);
        let dedupe_key = match &automation.dedupe {
            Some(dedupe) => {
                keep(compile_template(engine, root.key("dedupe").key("key"), &dedupe.key), findings).map(Some)
            }
            None => Some(None),
        };
        let concurrency_key = match &automation.concurrency.key {
            Some(key) => keep(compile_template(engine, root.key("concurrency").key("key"), key), findings).map(Some),
            None => Some(None),
        };
        let network_path = task_path.key("network");
        let setup_policy = compile_phase(engine, &task.network.setup, &network_path.key("setup"), findings);
        let agent_policy = compile_phase(engine, &task.network.agent, &network_path.key("agent"), findings);
        let after_run = match &automation.memory.after_run {
            Some(text) => {
                keep(compile_script(engine, root.key("memory").key("after_run"), text, true), findings).map(Some)
            }
            None => Some(None),
        };
        let notify_bases: Option<Vec<Option<Template>>> = automation
            .notify
            .iter()
            .enumerate()
            .map(|(index, target)| match target.github_pull_request.as_ref().and_then(|pr| pr.base.as_ref()) {
                Some(text) => {
                    let at = root.key("notify").index(index).key("github_pull_request").key("base");
                    keep(compile_base(engine, at, text), findings).map(Some)
                }
                None => Some(None),
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        let notify_repos: Option<Vec<Option<Template>>> = automation
            .notify
            .iter()
            .enumerate()
            .map(|(index, target)| match target.github_pull_request.as_ref().and_then(|pr| pr.repo.as_ref()) {
                Some(text) => {
                    let at = root.key("notify").index(index).key("github_pull_request").key("repo");
                    keep(compile_github_repo(engine, at, text), findings).map(Some)
                }
                None => Some(None),
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect();

        let plan = CompiledPlan::compile(engine, task, profiles, &task_path, findings);

        let automation_map: Map = [
            ("name".into(), automation.name.clone().into()),
            ("description".into(), automation.description.clone().into()),
        ]
        .into_iter()
        .collect();
        let compiled = (|| {
            Some(CompiledAutomation {
                definition: automation.clone(),
                definition_hash: crate::event::short_hash(&[&serde_json::to_string(automation).unwrap_or_default()]),
                profile: profile?,
                when: when?,
                prompt: prompt?,
                max_prompt_bytes: crate::config::DEFAULT_MAX_PROMPT_BYTES,
                branch: branch?,
                base: base?,
                repo: repo?,
                dedupe_key: dedupe_key?,
                concurrency_key: concurrency_key?,
                setup_policy: setup_policy?,
                agent_policy: agent_policy?,
                after_run: after_run?,
                notify_bases: notify_bases?,
                notify_repos: notify_repos?,
                slack: SlackSettings::default(),
                github: GithubSettings::default(),
                automation_value: Dynamic::from_map(automation_map),
                reads_history: rule_texts(automation).any(|text| names_variable(text, "history")),
                plan: plan?,
                parallel_limits: ParallelLimits::default(),
            })
        })();
        match compiled {
            Some(compiled) if findings.is_empty() => Ok(compiled),
            _ => Err(std::mem::take(findings)),
        }
    }

    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// Whether any of its rules reads `history`.
    pub fn reads_history(&self) -> bool {
        self.reads_history
    }

    /// Whether the automation is enabled and one of its triggers accepts the event: a
    /// cheap check before reading memory and rendering.
    pub fn accepts(&self, event: &Event) -> bool {
        self.definition.enabled
            && self.definition.all_triggers().filter_map(|t| t.source()).any(|t| t.accepts(event).is_ok())
    }

    /// `accepts`, saying why not: for one automation's own hook, where the reason is
    /// the answer.
    pub fn check_accepts(&self, event: &Event) -> Result<(), String> {
        if !self.definition.enabled {
            return Err("the automation is disabled (`enabled: false`)".into());
        }
        let mut why = format!("no trigger of `{}` takes {} events", self.name(), event.source);
        for trigger in self.definition.all_triggers().filter_map(|t| t.source()) {
            match trigger.accepts(event) {
                Ok(()) => return Ok(()),
                Err(reason) => why = reason,
            }
        }
        Err(why)
    }

    /// Runs `memory.after_run` for a finished run: `run` is the run as rules see it,
    /// `memory` is writable. Returns the script's edits (none without a script).
    pub fn after_run(
        &self,
        engine: &RuleEngine,
        event: &PreparedEvent,
        view: &MemoryView,
        current: serde_json::Map<String, serde_json::Value>,
        run: Dynamic,
        now: DateTime<Utc>,
    ) -> Result<MemoryEdits, EvalError> {
        let Some(script) = &self.after_run else { return Ok(MemoryEdits::new()) };
        let writer = MemoryWriter::new(current);
        let mut scope = Scope::new();
        scope.push_constant_dynamic("event", event.value.clone());
        // Not a constant: methods that change the object may not be called on one.
        scope.push("memory", writer.clone());
        scope.push_constant_dynamic("history", view.history.clone());
        scope.push_constant_dynamic("automation", self.automation_value.clone());
        scope.push_constant_dynamic("now", now_value(now));
        scope.push_constant_dynamic("run", run);
        // The script's own value means nothing; only its memory edits count.
        let _value = engine.eval(&mut scope, script)?;
        Ok(writer.edits())
    }

    /// The scope every rule of one render shares.
    pub fn scope(&self, event: &PreparedEvent, memory: &MemoryView, now: &Dynamic) -> Scope<'static> {
        let mut scope = Scope::new();
        scope.push_constant_dynamic("event", event.value.clone());
        scope.push_constant_dynamic("memory", memory.memory.clone());
        scope.push_constant_dynamic("history", memory.history.clone());
        scope.push_constant_dynamic("automation", self.automation_value.clone());
        scope.push_constant_dynamic("now", now.clone());
        scope
    }

    /// Evaluates `when`: true when it is absent.
    pub fn eval_when(&self, engine: &RuleEngine, scope: &mut Scope<'_>) -> Result<bool, EvalError> {
        let Some(when) = &self.when else { return Ok(true) };
        let value = engine.eval(scope, when)?;
        value.as_bool().map_err(|type_name| EvalError(format!("`when` must give true or false, it gave a {type_name}")))
    }

    /// Applies the automation to an event: `enabled`, trigger filters, `when`, then every
    /// template.
    pub fn render(
        &self,
        engine: &RuleEngine,
        event: &PreparedEvent,
        memory: &MemoryView,
        now: DateTime<Utc>,
    ) -> Result<Rendered, RenderError> {
        if !self.definition.enabled {
            return Ok(self.not_matched(event, "the automation is disabled (`enabled: false`)".into()));
        }
        self.render_even_if_disabled(engine, event, memory, now)
    }

    fn not_matched(&self, event: &PreparedEvent, reason: String) -> Rendered {
        Rendered {
            automation: self.name().to_string(),
            event_id: event.event.id.clone(),
            matched: false,
            reason,
            task: None,
            flow: None,
        }
    }

    /// `render` for an automation's own tests, which keep working while it is disabled.
    pub fn render_even_if_disabled(
        &self,
        engine: &RuleEngine,
        event: &PreparedEvent,
        memory: &MemoryView,
        now: DateTime<Utc>,
    ) -> Result<Rendered, RenderError> {
        let not_matched = |reason: String| self.not_matched(event, reason);
        let triggers: Vec<_> = self.definition.all_triggers().filter_map(|t| t.source()).collect();
        let mut refusals = Vec::new();
        if !triggers.iter().any(|trigger| trigger.accepts(&event.event).map_err(|why| refusals.push(why)).is_ok()) {
            return Ok(not_matched(format!("no trigger accepts the event: {}", refusals.join("; "))));
        }

        let fail = |field: &str| {
            let automation = self.name().to_string();
            let field = field.to_string();
            move |e: EvalError| RenderError { automation, field, cause: e.0 }
        };
        let now = now_value(now);
        let mut scope = self.scope(event, memory, &now);
        if !self.eval_when(engine, &mut scope).map_err(fail("when"))? {
            return Ok(not_matched(format!(
                "`when` is false: {}",
                self.definition.when.as_deref().unwrap_or_default().trim()
            )));
        }

        let task = &self.definition.task;
        let prompt = self
            .prompt
            .render_at_most(engine, &mut scope, self.max_prompt_bytes, "`max_prompt_bytes` in nightshift.yaml")
            .map_err(fail("task.prompt"))?;
        let branch = self.branch.render(engine, &mut scope).map_err(fail("task.branch"))?;
        check_branch_name(&branch).map_err(EvalError).map_err(fail("task.branch"))?;
        let base = self.base.render(engine, &mut scope).map_err(fail("task.base"))?;
        check_branch_name(&base).map_err(EvalError).map_err(fail("task.base"))?;
        if base == branch {
            return Err(fail("task.branch")(EvalError(format!("the branch `{branch}` is the base itself"))));
        }
        let repo = self.repo.render(engine, &mut scope).map_err(fail("task.repo"))?;
        check_repo_location(&repo).map_err(EvalError).map_err(fail("task.repo"))?;
        let setup_policy = self.setup_policy.render(engine, &mut scope).map_err(fail("task.network.setup.script"))?;
        let task_agent_policy =
            self.agent_policy.render(engine, &mut scope).map_err(fail("task.network.agent.script"))?;
        let plan = match &self.plan {
            Some(plan) => {
                let context = PlanContext {
                    base: &base,
                    repo: &repo,
                    task,
                    setup_policy: &setup_policy,
                    agent_policy: &task_agent_policy,
                    max_prompt_bytes: self.max_prompt_bytes,
                    limits: self.parallel_limits,
                };
                Some(plan.render(engine, &mut scope, &context).map_err(|(field, e)| fail(&field)(e))?)
            }
            None => None,
        };
        let mut agent_policy = task_agent_policy;
        let profile_origin = RuleOrigin::Profile(task.agent.clone());
        // Checked at load (`AgentProfile::check`): a rule that does not expand is skipped.
        agent_policy.allow.extend(
            self.profile.sandbox.network.iter().filter_map(|rule| rule.expand(profile_origin.clone()).ok()).flatten(),
        );
        let notify =
            self.render_notify(engine, &mut scope, &event.event, &base).map_err(|(field, e)| fail(&field)(e))?;
        let dedupe_key = render_optional(engine, &mut scope, self.dedupe_key.as_ref()).map_err(fail("dedupe.key"))?;
        let concurrency_key =
            render_optional(engine, &mut scope, self.concurrency_key.as_ref()).map_err(fail("concurrency.key"))?;

        // `{prompt}` stays for the worker to fill with `{workspace}` and the rest: the prompt
        // is stored once, in `prompt`, not again in every argv.
        let fill = [("branch", branch.as_str()), ("base", base.as_str())];
        let agent = agent_command(&task.agent, &self.profile, &fill);
        let flow = Flow {
            dedupe_key,
            dedupe_window: self.definition.dedupe.as_ref().map(|d| d.window),
            concurrency_key,
            concurrency_limit: self.definition.concurrency.limit,
            overlap: self.definition.concurrency.overlap,
            cooldown: self.definition.cooldown,
            retry: self.definition.retry,
        };
        let reason = match &self.definition.when {
            Some(when) => format!("`when` is true: {}", when.trim()),
            None => "the trigger accepts the event and there is no `when`".to_string(),
        };
        Ok(Rendered {
            automation: self.name().to_string(),
            event_id: event.event.id.clone(),
            matched: true,
            reason,
            task: Some(Task {
                automation: self.name().to_string(),
                agent,
                repo,
                base,
                branch,
                prompt,
                setup: task.setup.clone(),
                secrets: task.secrets.clone(),
                network: PhasePolicies { setup: setup_policy, agent: agent_policy },
                paths: task.paths.clone(),
                timeout: task.timeout,
                setup_timeout: task.setup_timeout,
                approval: task.approval,
                push: task.push,
                untrusted_input: event.event.source.is_untrusted(),
                limits: task.limits,
                notify,
                follows: None,
                plan,
                staging: Default::default(),
            }),
            flow: Some(flow),
        })
    }
}

impl CompiledAutomation {
    /// The `notify:` targets filled in from the event: where a Slack message goes (the
    /// target's channel, else the triggering message's, in its thread), which GitHub
    /// repository and number, and the token each will use (a reference, never a value).
    /// A target the event cannot fill fails with the field that needs it.
    fn render_notify(
        &self,
        engine: &RuleEngine,
        scope: &mut Scope<'_>,
        event: &Event,
        base: &str,
    ) -> Result<Vec<Target>, (String, EvalError)> {
        let mut targets = Vec::with_capacity(self.definition.notify.len());
        for (index, target) in self.definition.notify.iter().enumerate() {
            let at = |field: &str| format!("notify[{index}].{field}");
            let missing = |field: &str, why: String| (at(field), EvalError(why));
            let rendered = if let Some(slack) = &target.slack {
                let from_slack = event.source == TriggerKind::Slack;
                let event_channel = from_slack.then(|| slack_field(event, "channel")).flatten();
                let channel = slack.channel.clone().or_else(|| event_channel.clone()).ok_or_else(|| {
                    missing("slack.channel", "the target has no `channel` and the event is no Slack message".into())
                })?;
                // The triggering message's thread, when the message goes to its channel.
                let thread_ts = (event_channel.as_deref() == Some(channel.as_str()))
                    .then(|| slack_field(event, "thread_ts").or_else(|| slack_field(event, "ts")))
                    .flatten();
                Target::Slack { channel, thread_ts, token: self.slack.token_for(slack.token.as_ref()) }
            } else if let Some(comment) = &target.github_comment {
                let repo = github_repo(event).map_err(|why| missing("github_comment", why))?;
                let number = github_number(event).ok_or_else(|| {
                    missing("github_comment", "the event has no pull request or issue number to comment on".into())
                })?;
                Target::GithubComment { repo, number, token: self.github.token_for(comment.token.as_ref()) }
            } else if let Some(pull) = &target.github_pull_request {
                let repo = match self.notify_repos.get(index).and_then(Option::as_ref) {
                    Some(template) => {
                        let field = at("github_pull_request.repo");
                        let rendered = template.render(engine, scope).map_err(|e| (field.clone(), e))?;
                        crate::delivery::github::check_repo(&rendered).map_err(|why| (field, EvalError(why)))?;
                        rendered
                    }
                    None => github_repo(event).map_err(|why| missing("github_pull_request", why))?,
                };
                let base = match self.notify_bases.get(index).and_then(Option::as_ref) {
                    Some(template) => {
                        let field = at("github_pull_request.base");
                        let rendered = template.render(engine, scope).map_err(|e| (field.clone(), e))?;
                        check_branch_name(&rendered).map_err(|why| (field, EvalError(why)))?;
                        rendered
                    }
                    None => base.to_string(),
                };
                Target::GithubPullRequest {
                    repo,
                    base,
                    draft: pull.draft,
                    token: self.github.token_for(pull.token.as_ref()),
                }
            } else if let Some(webhook) = &target.webhook {
                Target::Webhook { url: webhook.url.clone(), secret: webhook.secret.clone() }
            } else {
                // A target without exactly one kind does not load (`check_notify`).
                continue;
            };
            targets.push(rendered);
        }
        Ok(targets)
    }
}

/// A Slack message's field as the trigger normalised it, else from the payload.
fn slack_field(event: &Event, name: &str) -> Option<String> {
    let text = |value: &serde_json::Value| value.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    event.fields.get(name).and_then(text).or_else(|| event.payload.get("event")?.get(name).and_then(text))
}

/// `owner/name` of a GitHub event's repository.
fn github_repo(event: &Event) -> Result<String, String> {
    if event.source != TriggerKind::Github {
        return Err(format!("the event came from {}, not GitHub, so there is no repository", event.source.as_str()));
    }
    event
        .payload
        .pointer("/repository/full_name")
        .and_then(serde_json::Value::as_str)
        .filter(|name| name.contains('/'))
        .map(str::to_string)
        .ok_or_else(|| "the event has no `repository.full_name`".to_string())
}

/// The pull request's or issue's number of a GitHub event.
fn github_number(event: &Event) -> Option<u64> {
    ["/pull_request/number", "/issue/number", "/number"]
        .iter()
        .find_map(|pointer| event.payload.pointer(pointer).and_then(serde_json::Value::as_u64))
}

fn render_optional(
    engine: &RuleEngine,
    scope: &mut Scope<'_>,
    template: Option<&Template>,
) -> Result<Option<String>, EvalError> {
    template.map(|t| t.render(engine, scope)).transpose()
}

/// How to start the agent of profile `name`, with the placeholders `fill` names filled in.
pub(super) fn agent_command(name: &str, profile: &AgentProfile, fill: &[(&str, &str)]) -> AgentCommand {
    AgentCommand {
        profile: name.to_string(),
        argv: AgentProfile::fill(&profile.command, fill),
        plan_argv: profile.plan_command.as_ref().map(|argv| AgentProfile::fill(argv, fill)),
        env: profile.env.clone(),
        output: profile.output,
        paths: profile.sandbox.paths.clone(),
        pass_env: profile.sandbox.env.clone(),
    }
}

pub(super) fn compile_phase(
    engine: &RuleEngine,
    config: &PhasePolicyConfig,
    path: &FieldPath,
    findings: &mut Vec<Finding>,
) -> Option<CompiledPhase> {
    let before = findings.len();
    let mut expand_all = |field: &str, rules: &[AllowRuleConfig]| {
        let mut expanded = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            if let Some(rules) = keep(expand_rule(path.key(field).index(index), rule), findings) {
                expanded.extend(rules);
            }
        }
        expanded
    };
    let static_policy = NetworkPolicy { allow: expand_all("allow", &config.allow), ..NetworkPolicy::default() };
    let ceiling = expand_all("script_may_allow", &config.script_may_allow);
    let script = match &config.script {
        Some(text) => keep(compile_script(engine, path.key("script"), text, false), findings),
        None => None,
    };
    if let Some(finding) = check_script_ceiling(config, path) {
        findings.push(finding);
    }
    (findings.len() == before).then_some(CompiledPhase { static_policy, script, ceiling })
}

/// A phase's `script` and `script_may_allow` come together.
pub fn check_script_ceiling(config: &PhasePolicyConfig, path: &FieldPath) -> Option<Finding> {
    match (config.script.is_some(), config.script_may_allow.is_empty()) {
        (true, true) => Some(
            Finding::new(path.key("script"), Code::NetworkRule, "a policy script needs `script_may_allow`")
                .hint("list the rules the script may choose from; its results must fall within them"),
        ),
        (false, false) => Some(Finding::new(
            path.key("script_may_allow"),
            Code::NetworkRule,
            "`script_may_allow` limits a `script`, and this phase has none",
        )),
        _ => None,
    }
}

impl CompiledPhase {
    /// The static rules plus what the script returns, each validated like a static rule
    /// and required to fall within `script_may_allow`.
    pub(super) fn render(&self, engine: &RuleEngine, scope: &mut Scope<'_>) -> Result<NetworkPolicy, EvalError> {
        let mut policy = self.static_policy.clone();
        let Some(script) = &self.script else { return Ok(policy) };
        let before = scope.len();
        let result = engine.eval(scope, script);
        scope.rewind(before);
        let value = to_json(&result?).map_err(|why| EvalError(format!("the script's result {why}")))?;
        let items = match value {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(items) => items,
            other => return Err(EvalError(format!("the script must return an array of rules, it returned {other}"))),
        };
        for (index, item) in items.into_iter().enumerate() {
            let invalid = |why: String| EvalError(format!("rule #{index} returned by the script is invalid: {why}"));
            let rule: AllowRuleConfig = serde_json::from_value(item).map_err(|e| invalid(e.to_string()))?;
            for rule in rule.expand(RuleOrigin::Script).map_err(|e| invalid(e.to_string()))? {
                if !self.ceiling.iter().any(|allowed| allowed.covers(&rule)) {
                    return Err(invalid(format!("`{}` is outside `script_may_allow`", rule.host)));
                }
                policy.allow.push(rule);
            }
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::{names_variable, rule_texts};

    #[test]
    fn a_pull_requests_repo_and_base_templates_are_rules_too() {
        let yaml = "name: a\ntrigger: { manual: {} }\ntask: { agent: codex, repo: r, base: main, branch: b, prompt: p }\n\
                    notify:\n  - github_pull_request: { repo: '{{ history[0].repo }}', base: '{{ event.base }}' }\n";
        let automation: crate::config::Automation = serde_yaml::from_str(yaml).expect("an automation");
        let texts: Vec<&str> = rule_texts(&automation).collect();
        assert!(texts.contains(&"{{ history[0].repo }}") && texts.contains(&"{{ event.base }}"), "{texts:?}");
        assert!(texts.iter().any(|text| names_variable(text, "history")), "so ingest reads history for it");
    }

    #[test]
    fn a_variable_is_named_only_as_a_whole_identifier() {
        assert!(names_variable("{{ history.len() }}", "history"));
        assert!(names_variable("history[0].summary", "history"));
        assert!(!names_variable("{{ event.histories }}", "history"));
        assert!(!names_variable("my_history + 1", "history"));
        assert!(!names_variable("{{ event.title }}", "history"));
    }
}
