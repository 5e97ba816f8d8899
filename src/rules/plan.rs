//! The parallel shape of an automation (`task.attempts`, `task.verify`, `task.fan_out`),
//! compiled once and rendered into the `Plan` a parent run carries (docs/parallel.md):
//! profiles resolved to `RoleAgent`s, prompts rendered, fan-out `items` evaluated.

use std::collections::BTreeMap;

use rhai::{AST, Scope};
use serde_json::Value;

use super::compiled::{CompiledPhase, agent_command, compile_phase, compile_script, compile_template, find_profile};
use super::engine::{EvalError, RuleEngine};
use super::git_ref::check_repo_location;
use super::template::Template;
use super::value::to_json;
use crate::config::parallel::{DEFAULT_JOIN_PROMPT, DEFAULT_JUDGE_PROMPT, DEFAULT_VERIFY_PROMPT};
use crate::config::{AgentProfile, FieldPath, Finding, TaskTemplate};
use crate::netpolicy::{NetworkPolicy, RuleOrigin};
use crate::parallel::{
    AttemptsPlan, FanOutItem, FanOutPlan, JoinPlan, JoinWhen, JudgePlan, NoWinner, ParallelLimits, Plan, RoleAgent,
    VerifyPlan,
};
use crate::task::PhasePolicies;

/// A profile by name, found at load.
#[derive(Debug, Clone)]
pub(super) struct NamedProfile {
    name: String,
    profile: AgentProfile,
}

/// An agent of the plan and the prompt it is asked.
#[derive(Debug, Clone)]
pub(super) struct CompiledRole {
    agent: NamedProfile,
    prompt: Template,
}

/// The compiled parallel shape.
#[derive(Debug, Clone)]
pub(super) enum CompiledPlan {
    Attempts {
        agents: Vec<NamedProfile>,
        check: Option<String>,
        judge: Option<CompiledRole>,
        on_no_winner: NoWinner,
    },
    Verify {
        verifier: CompiledRole,
        /// `verify.network`, when it is not the task's.
        network: Option<(CompiledPhase, CompiledPhase)>,
        checks: Vec<String>,
        max_rounds: u32,
    },
    FanOut {
        items: AST,
        max_concurrent: u32,
        join: Option<(JoinWhen, CompiledRole)>,
    },
}

/// What rendering a plan needs from the render of its task.
pub(super) struct PlanContext<'a> {
    pub base: &'a str,
    pub repo: &'a str,
    pub task: &'a TaskTemplate,
    /// The task's own policies, before its profile's rules are added.
    pub setup_policy: &'a NetworkPolicy,
    pub agent_policy: &'a NetworkPolicy,
    pub max_prompt_bytes: usize,
    pub limits: ParallelLimits,
}

/// A render problem: the field and why.
pub(super) type PlanError = (String, EvalError);

fn role(
    engine: &RuleEngine,
    profiles: &BTreeMap<String, AgentProfile>,
    (profile_path, name): (FieldPath, &str),
    (prompt_path, prompt): (FieldPath, &str),
    findings: &mut Vec<Finding>,
) -> Option<CompiledRole> {
    let agent = keep(find_profile(profiles, profile_path, name), findings);
    let prompt = keep(compile_template(engine, prompt_path, prompt), findings);
    Some(CompiledRole { agent: NamedProfile { name: name.to_string(), profile: agent?.clone() }, prompt: prompt? })
}

fn keep<T>(result: Result<T, Finding>, findings: &mut Vec<Finding>) -> Option<T> {
    result.map_err(|finding| findings.push(finding)).ok()
}

impl CompiledPlan {
    /// Compiles the task's shape; `Some(None)` when it has none, `None` when it has
    /// problems (in `findings`).
    pub(super) fn compile(
        engine: &RuleEngine,
        task: &TaskTemplate,
        profiles: &BTreeMap<String, AgentProfile>,
        path: &FieldPath,
        findings: &mut Vec<Finding>,
    ) -> Option<Option<CompiledPlan>> {
        let before = findings.len();
        let plan = if let Some(attempts) = &task.attempts {
            let at = path.key("attempts");
            let names: Vec<(FieldPath, &str)> = if attempts.profiles.is_empty() {
                vec![(path.key("agent"), task.agent.as_str())]
            } else {
                attempts
                    .profiles
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (at.key("profiles").index(i), name.as_str()))
                    .collect()
            };
            let agents: Vec<NamedProfile> = names
                .into_iter()
                .filter_map(|(at, name)| {
                    let profile = keep(find_profile(profiles, at, name), findings)?;
                    Some(NamedProfile { name: name.to_string(), profile: profile.clone() })
                })
                .collect();
            let judge = attempts.judge.as_ref().and_then(|judge| {
                let at = at.key("judge");
                let prompt = judge.prompt.as_deref().unwrap_or(DEFAULT_JUDGE_PROMPT);
                role(engine, profiles, (at.key("profile"), &judge.profile), (at.key("prompt"), prompt), findings)
            });
            CompiledPlan::Attempts { agents, check: attempts.check.clone(), judge, on_no_winner: attempts.on_no_winner }
        } else if let Some(verify) = &task.verify {
            let at = path.key("verify");
            let prompt = verify.prompt.as_deref().unwrap_or(DEFAULT_VERIFY_PROMPT);
            let verifier =
                role(engine, profiles, (at.key("profile"), &verify.profile), (at.key("prompt"), prompt), findings);
            let network = verify.network.as_ref().and_then(|network| {
                let at = at.key("network");
                let setup = compile_phase(engine, &network.setup, &at.key("setup"), findings);
                let agent = compile_phase(engine, &network.agent, &at.key("agent"), findings);
                Some((setup?, agent?))
            });
            match verifier {
                Some(verifier) => CompiledPlan::Verify {
                    verifier,
                    network,
                    checks: verify.checks.clone(),
                    max_rounds: verify.max_rounds,
                },
                None => return None,
            }
        } else if let Some(fan_out) = &task.fan_out {
            let at = path.key("fan_out");
            let items = keep(compile_script(engine, at.key("items"), &fan_out.items, false), findings);
            let join = fan_out.join.as_ref().and_then(|join| {
                let at = at.key("join");
                let (profile_at, name) = match &join.profile {
                    Some(name) => (at.key("profile"), name.as_str()),
                    None => (path.key("agent"), task.agent.as_str()),
                };
                let prompt = join.prompt.as_deref().unwrap_or(DEFAULT_JOIN_PROMPT);
                Some((join.when, role(engine, profiles, (profile_at, name), (at.key("prompt"), prompt), findings)?))
            });
            CompiledPlan::FanOut { items: items?, max_concurrent: fan_out.max_concurrent, join }
        } else {
            return Some(None);
        };
        (findings.len() == before).then_some(Some(plan))
    }

    /// The plan for one event; `scope` is the render's.
    pub(super) fn render(
        &self,
        engine: &RuleEngine,
        scope: &mut Scope<'_>,
        context: &PlanContext<'_>,
    ) -> Result<Plan, PlanError> {
        let prompt = |role: &CompiledRole, field: &str, scope: &mut Scope<'_>| {
            let limit = "`max_prompt_bytes` in nightshift.yaml";
            role.prompt
                .render_at_most(engine, scope, context.max_prompt_bytes, limit)
                .map_err(|e| (field.to_string(), e))
        };
        let plan = match self {
            CompiledPlan::Attempts { agents, check, judge, on_no_winner } => {
                let count = context.task.attempts.as_ref().map_or(1, |a| a.count) as usize;
                let agents = agents
                    .iter()
                    .cycle()
                    .take(count)
                    .map(|agent| role_agent(agent, context, context.setup_policy, context.agent_policy))
                    .collect();
                let judge = match judge {
                    Some(judge) => Some(JudgePlan {
                        agent: role_agent(&judge.agent, context, context.setup_policy, context.agent_policy),
                        prompt: prompt(judge, "task.attempts.judge.prompt", scope)?,
                    }),
                    None => None,
                };
                Plan::Attempts(AttemptsPlan { agents, check: check.clone(), judge, on_no_winner: *on_no_winner })
            }
            CompiledPlan::Verify { verifier, network, checks, max_rounds } => {
                let (setup, agent) = match network {
                    Some((setup, agent)) => {
                        let setup = setup.render(engine, scope).map_err(at("task.verify.network.setup.script"))?;
                        let agent = agent.render(engine, scope).map_err(at("task.verify.network.agent.script"))?;
                        (setup, agent)
                    }
                    None => (context.setup_policy.clone(), context.agent_policy.clone()),
                };
                Plan::Verify(VerifyPlan {
                    verifier: role_agent(&verifier.agent, context, &setup, &agent),
                    checks: checks.clone(),
                    max_rounds: *max_rounds,
                    prompt: prompt(verifier, "task.verify.prompt", scope)?,
                })
            }
            CompiledPlan::FanOut { items, max_concurrent, join } => {
                let items = eval_items(engine, scope, items, context).map_err(at("task.fan_out.items"))?;
                let join = match join {
                    Some((when, join)) => Some(JoinPlan {
                        when: *when,
                        agent: role_agent(&join.agent, context, context.setup_policy, context.agent_policy),
                        prompt: prompt(join, "task.fan_out.join.prompt", scope)?,
                    }),
                    None => None,
                };
                Plan::FanOut(FanOutPlan { items, max_concurrent: *max_concurrent, join })
            }
        };
        Ok(plan)
    }
}

fn at(field: &str) -> impl Fn(EvalError) -> PlanError + '_ {
    move |error| (field.to_string(), error)
}

/// A profile as one role of the plan: its command, as the task's own agent's is built
/// (`{branch}` is left for the worker, which fills in the role's own branch), and the
/// policies the task would have with it: `setup` and `agent` plus the profile's rules.
fn role_agent(
    named: &NamedProfile,
    context: &PlanContext<'_>,
    setup: &NetworkPolicy,
    agent: &NetworkPolicy,
) -> RoleAgent {
    let mut agent_policy = agent.clone();
    let origin = RuleOrigin::Profile(named.name.clone());
    // Checked at load (`AgentProfile::check`): a rule that does not expand is skipped.
    agent_policy
        .allow
        .extend(named.profile.sandbox.network.iter().filter_map(|rule| rule.expand(origin.clone()).ok()).flatten());
    RoleAgent {
        agent: agent_command(&named.name, &named.profile, &[("base", context.base)]),
        network: PhasePolicies { setup: setup.clone(), agent: agent_policy },
    }
}

/// Runs the `items` script and checks what it returned: an array of at most
/// `max_children` maps with a non-empty string `prompt` (within `max_prompt_bytes`),
/// optional `paths` (a non-empty list of globs) and `repo` (a repository location).
fn eval_items(
    engine: &RuleEngine,
    scope: &mut Scope<'_>,
    script: &AST,
    context: &PlanContext<'_>,
) -> Result<Vec<FanOutItem>, EvalError> {
    let before = scope.len();
    let result = engine.eval(scope, script);
    scope.rewind(before);
    let value = to_json(&result?).map_err(|why| EvalError(format!("the script's result {why}")))?;
    let Value::Array(values) = value else {
        return Err(EvalError(format!(
            "the script must return an array of maps `#{{prompt, paths, repo}}`, it returned {}",
            kind_of(&value)
        )));
    };
    let limit = context.limits.max_children as usize;
    if values.len() > limit {
        return Err(EvalError(format!(
            "the script returned {} items; `parallel.max_children` in nightshift.yaml allows {limit}",
            values.len()
        )));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            item(value, context)
                .map_err(|why| EvalError(format!("item {} (index {index}) is invalid: {why}", index + 1)))
        })
        .collect()
}

fn item(value: Value, context: &PlanContext<'_>) -> Result<FanOutItem, String> {
    let Value::Object(mut fields) = value else {
        return Err(format!("it is {}, not a map `#{{prompt, paths, repo}}`", kind_of(&value)));
    };
    let prompt = match fields.remove("prompt") {
        Some(Value::String(prompt)) if !prompt.trim().is_empty() => prompt,
        Some(Value::String(_)) => return Err("`prompt` is empty".into()),
        Some(other) => return Err(format!("`prompt` is {}, not a string", kind_of(&other))),
        None => return Err("it has no `prompt`".into()),
    };
    if prompt.len() > context.max_prompt_bytes {
        return Err(format!(
            "`prompt` is {} bytes, more than `max_prompt_bytes` in nightshift.yaml ({})",
            prompt.len(),
            context.max_prompt_bytes
        ));
    }
    let paths = match fields.remove("paths") {
        None => context.task.paths.clone(),
        Some(Value::Array(globs)) if globs.is_empty() => {
            return Err("`paths` is empty; leave it out for the task's paths".into());
        }
        Some(Value::Array(globs)) => globs
            .into_iter()
            .map(|glob| match glob {
                Value::String(glob) => match globset::Glob::new(&glob) {
                    Ok(_) => Ok(glob),
                    Err(error) => Err(format!("`paths` has an invalid glob `{glob}`: {}", error.kind())),
                },
                other => Err(format!("`paths` holds {}, not a string", kind_of(&other))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("`paths` is {}, not an array of globs", kind_of(&other))),
    };
    let repo = match fields.remove("repo") {
        None => None,
        Some(Value::String(repo)) if repo == context.repo => None,
        Some(Value::String(repo)) => {
            check_repo_location(&repo).map_err(|why| format!("`repo`: {why}"))?;
            Some(repo)
        }
        Some(other) => return Err(format!("`repo` is {}, not a string", kind_of(&other))),
    };
    if let Some(unknown) = fields.keys().next() {
        return Err(format!("unknown key `{unknown}`; an item has `prompt`, `paths` and `repo`"));
    }
    Ok(FanOutItem { prompt, paths, repo })
}

/// What a JSON value is, for messages.
fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "nothing (`()`)".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(_) => "a string".into(),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(_) => "a map".into(),
    }
}

/// The plan as `nightshift render --plan` and `nightshift test --plan` print it: the
/// shape, each agent's profile, the checks, the rounds, each child's prompt head, paths
/// and repository, and the join.
pub fn describe_plan(plan: &Plan) -> String {
    let mut lines = Vec::new();
    match plan {
        Plan::Attempts(attempts) => {
            lines.push(format!(
                "plan: attempts ({}), each picked by check, then smallest change",
                attempts.agents.len()
            ));
            for (n, agent) in attempts.agents.iter().enumerate() {
                lines.push(format!("  attempt {}: {}", n + 1, agent.agent.profile));
            }
            lines.push(format!("  check: {}", attempts.check.as_deref().unwrap_or("(none)")));
            match &attempts.judge {
                Some(judge) => lines.push(format!("  judge: {}: {}", judge.agent.agent.profile, head(&judge.prompt))),
                None => lines.push("  judge: (none: the smallest change wins)".into()),
            }
            let no_winner = match attempts.on_no_winner {
                NoWinner::Fail => "the run fails",
                NoWinner::ReportAll => "the run reports every attempt",
            };
            lines.push(format!("  no winner: {no_winner}"));
        }
        Plan::Verify(verify) => {
            lines.push(format!("plan: verify, up to {} author rounds", verify.max_rounds));
            lines.push(format!("  verifier: {}: {}", verify.verifier.agent.profile, head(&verify.prompt)));
            let checks = if verify.checks.is_empty() { "(none)".to_string() } else { verify.checks.join("; ") };
            lines.push(format!("  checks: {checks}"));
        }
        Plan::FanOut(fan_out) => {
            lines.push(format!(
                "plan: fan_out, {} children, at most {} at once",
                fan_out.items.len(),
                fan_out.max_concurrent
            ));
            for (n, item) in fan_out.items.iter().enumerate() {
                let repo = item.repo.as_deref().map(|repo| format!(", repo {repo}")).unwrap_or_default();
                lines.push(format!(
                    "  child {}: {} (paths {}{repo})",
                    n + 1,
                    head(&item.prompt),
                    item.paths.join(", ")
                ));
            }
            match &fan_out.join {
                Some(join) => {
                    let when = match join.when {
                        JoinWhen::AllSucceeded => "when all succeeded",
                        JoinWhen::AllEnded => "when all ended",
                    };
                    lines.push(format!("  join, {when}: {}: {}", join.agent.agent.profile, head(&join.prompt)));
                }
                None => lines.push("  join: (none)".into()),
            }
        }
    }
    lines.join("\n")
}

/// The first line of a prompt, at most 72 characters, quoted.
fn head(prompt: &str) -> String {
    const MOST: usize = 72;
    let line = prompt.trim().lines().next().unwrap_or_default();
    if line.chars().count() > MOST || prompt.trim().lines().nth(1).is_some() {
        let cut: String = line.chars().take(MOST).collect();
        format!("{:?}", format!("{cut}…"))
    } else {
        format!("{line:?}")
    }
}
