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
                // A join merges its children's commits into one branch of one repository.
                if join.is_some()
                    && let Some((index, item)) = items.iter().enumerate().find(|(_, item)| item.repo.is_some())
                {
                    let why = format!(
                        "item {} names another repository ({}); a fan-out with a join merges its children \
                         into one branch, so they all work on the task's repository",
                        index + 1,
                        item.repo.as_deref().unwrap_or_default()
                    );
                    return Err(("task.fan_out.items".to_string(), EvalError(why)));
                }
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::config::Automation;
    use crate::config::profiles::builtin_profiles;
    use crate::event::Event;
    use crate::rules::{CompiledAutomation, PreparedEvent, RenderError, memory_value};
    use crate::triggers::TriggerKind;

    /// A manual automation with `task_extra` YAML appended to its task, compiled.
    fn compiled(task_extra: &str) -> CompiledAutomation {
        let yaml = format!(
            "name: probe\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: codex\n  repo: /srv/git/api\n  prompt: fix it\n  paths: [\"src/**\"]\n{task_extra}"
        );
        let automation: Automation = serde_yaml::from_str(&yaml).unwrap();
        CompiledAutomation::compile(RuleEngine::shared(), &automation, &builtin_profiles())
            .unwrap_or_else(|findings| panic!("{yaml}\n{findings:#?}"))
    }

    fn render(automation: &CompiledAutomation, payload: serde_json::Value) -> Result<Plan, RenderError> {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
        let event = PreparedEvent::new(Event::from_delivery(TriggerKind::Manual, payload, Default::default(), at));
        let rendered = automation.render(RuleEngine::shared(), &event, &memory_value(&Default::default()), at)?;
        Ok(rendered.task.unwrap().plan.expect("a plan"))
    }

    /// Which of the hosts these tests name the policy allows, in this order.
    fn allowed(policy: &NetworkPolicy) -> Vec<&'static str> {
        let hosts = ["docs.rs", "crates.io", "api.openai.com", "chatgpt.com", "api.anthropic.com"];
        hosts.into_iter().filter(|host| policy.decide(host, 443, None).allowed).collect()
    }

    fn fan_out(items: &str) -> CompiledAutomation {
        compiled(&format!("  fan_out:\n    items: {items:?}\n"))
    }

    fn items(items: &str, payload: serde_json::Value) -> Result<Vec<FanOutItem>, String> {
        match render(&fan_out(items), payload) {
            Ok(Plan::FanOut(plan)) => Ok(plan.items),
            Ok(other) => panic!("{other:?}"),
            Err(error) => {
                assert_eq!(error.field, "task.fan_out.items", "{error}");
                Err(error.cause)
            }
        }
    }

    #[test]
    fn items_become_children_with_the_tasks_paths_and_repo_by_default() {
        let script = r#"event.parts.map(|p| if p == "web" { #{prompt: "do " + p, paths: ["web/**"], repo: "/srv/git/web"} } else { #{prompt: "do " + p} })"#;
        let found = items(script, json!({"parts": ["api", "web"]})).unwrap();
        assert_eq!(
            found,
            [
                FanOutItem { prompt: "do api".into(), paths: vec!["src/**".into()], repo: None },
                FanOutItem { prompt: "do web".into(), paths: vec!["web/**".into()], repo: Some("/srv/git/web".into()) },
            ]
        );
        // The task's own repository is no other repository.
        let same = items(r#"[#{prompt: "x", repo: "/srv/git/api"}]"#, json!({})).unwrap();
        assert_eq!(same[0].repo, None);
        assert_eq!(items("[]", json!({})).unwrap(), []);
    }

    #[test]
    fn a_fan_out_with_a_join_keeps_its_children_in_the_tasks_repository() {
        let script = r#"[#{prompt: "a"}, #{prompt: "b", repo: "/srv/git/web"}]"#;
        let joined = compiled(&format!("  fan_out:\n    items: {script:?}\n    join: {{ profile: codex }}\n"));
        let error = render(&joined, json!({})).unwrap_err();
        assert_eq!(error.field, "task.fan_out.items");
        assert!(error.cause.starts_with("item 2 names another repository (/srv/git/web)"), "{}", error.cause);
        assert!(items(script, json!({})).is_ok(), "without a join, children may work anywhere");
    }

    #[test]
    fn more_items_than_max_children_is_a_render_error() {
        let script = r#"let a = []; for i in 0..event.n { a.push(#{prompt: "p" + i}) } a"#;
        let mut automation = fan_out(script);
        assert!(render(&automation, json!({"n": 32})).is_ok());
        let error = render(&automation, json!({"n": 33})).unwrap_err();
        assert_eq!(error.cause, "the script returned 33 items; `parallel.max_children` in nightshift.yaml allows 32");
        automation.set_parallel_limits(ParallelLimits { max_children: 2, ..ParallelLimits::default() });
        assert!(render(&automation, json!({"n": 3})).unwrap_err().cause.contains("returned 3 items"));
    }

    #[test]
    fn a_huge_list_is_stopped_by_the_engine_limits() {
        let cause = items(r#"let a = []; for i in 0..1000000 { a.push(#{prompt: "p"}) } a"#, json!({})).unwrap_err();
        assert!(cause.contains("exceeds its limit") || cause.contains("stopped"), "{cause}");
        let forever = items("let a = []; loop { a.push(1); a.pop(); } a", json!({})).unwrap_err();
        assert!(forever.contains("stopped"), "{forever}");
    }

    #[test]
    fn a_bad_item_is_named_with_why() {
        let cases = [
            ("#{prompt: \"x\"}", "the script must return an array of maps `#{prompt, paths, repo}`, it returned a map"),
            ("()", "the script must return an array of maps `#{prompt, paths, repo}`, it returned nothing (`()`)"),
            ("[#{prompt: \"a\"}, #{prompt: 3}]", "item 2 (index 1) is invalid: `prompt` is a number (3), not a string"),
            ("[\"do it\"]", "item 1 (index 0) is invalid: it is a string, not a map `#{prompt, paths, repo}`"),
            ("[#{paths: [\"a\"]}]", "item 1 (index 0) is invalid: it has no `prompt`"),
            ("[#{prompt: \"  \"}]", "item 1 (index 0) is invalid: `prompt` is empty"),
            (
                "[#{prompt: \"a\", paths: []}]",
                "item 1 (index 0) is invalid: `paths` is empty; leave it out for the task's paths",
            ),
            (
                "[#{prompt: \"a\", paths: \"src\"}]",
                "item 1 (index 0) is invalid: `paths` is a string, not an array of globs",
            ),
            ("[#{prompt: \"a\", paths: [1]}]", "item 1 (index 0) is invalid: `paths` holds a number (1), not a string"),
            (
                "[#{prompt: \"a\", owner: \"me\"}]",
                "item 1 (index 0) is invalid: unknown key `owner`; an item has `prompt`, `paths` and `repo`",
            ),
        ];
        for (script, wanted) in cases {
            assert_eq!(items(script, json!({})).unwrap_err(), wanted, "{script}");
        }
        let glob = items("[#{prompt: \"a\", paths: [\"src/[\"]}]", json!({})).unwrap_err();
        assert!(glob.starts_with("item 1 (index 0) is invalid: `paths` has an invalid glob `src/[`"), "{glob}");
        let repo = items("[#{prompt: \"a\", repo: \"-oProxyCommand=x\"}]", json!({})).unwrap_err();
        assert!(repo.starts_with("item 1 (index 0) is invalid: `repo`:"), "{repo}");
        assert!(repo.contains("not an allowed repository location"), "{repo}");
    }

    #[test]
    fn a_script_error_is_a_render_error_of_items() {
        assert!(items(r#"throw "no parts""#, json!({})).unwrap_err().contains("no parts"));
        assert!(items("event.parts", json!({})).unwrap_err().contains("property `parts` not found"));
    }

    #[test]
    fn an_item_prompt_is_held_to_max_prompt_bytes() {
        let mut automation = fan_out(r#"let s = ""; for i in 0..100 { s += "x" } [#{prompt: s}]"#);
        automation.set_max_prompt_bytes(50);
        // The task's own prompt fits; the item's does not.
        let error = render(&automation, json!({})).unwrap_err();
        assert_eq!(
            error.cause,
            "item 1 (index 0) is invalid: `prompt` is 100 bytes, more than `max_prompt_bytes` in nightshift.yaml (50)"
        );
    }

    #[test]
    fn an_item_prompt_of_exactly_max_prompt_bytes_fits() {
        let mut automation = fan_out(r#"let s = ""; for i in 0..50 { s += "x" } [#{prompt: s}]"#);
        automation.set_max_prompt_bytes(50);
        let Plan::FanOut(plan) = render(&automation, json!({})).unwrap() else { panic!("a fan-out") };
        assert_eq!(plan.items[0].prompt.len(), 50);
    }

    #[test]
    fn a_shown_prompt_is_its_first_line_up_to_72_characters() {
        let exact = "x".repeat(72);
        assert_eq!(head(&exact), format!("{exact:?}"), "72 characters are shown whole");
        assert_eq!(head(&"x".repeat(73)), format!("{:?}", format!("{exact}…")));
        assert_eq!(head("  fix the bug  "), "\"fix the bug\"");
        assert_eq!(head("first\nsecond"), "\"first…\"", "a second line is cut");
    }

    #[test]
    fn attempts_take_profiles_round_robin_with_each_profiles_network() {
        let automation = compiled(
            "  network: { agent: { allow: [{ domain: docs.rs }] } }\n  attempts:\n    count: 3\n    profiles: [codex, claude]\n    check: cargo test\n    judge: { profile: claude, prompt: \"pick for {{ event.who }}\" }\n",
        );
        let Plan::Attempts(plan) = render(&automation, json!({"who": "ann"})).unwrap() else { panic!() };
        let profiles: Vec<&str> = plan.agents.iter().map(|a| a.agent.profile.as_str()).collect();
        assert_eq!(profiles, ["codex", "claude", "codex"]);
        let allowed = |agent: &RoleAgent| allowed(&agent.network.agent);
        assert_eq!(allowed(&plan.agents[1]), ["docs.rs", "api.anthropic.com"]);
        assert_eq!(allowed(&plan.agents[0]), ["docs.rs", "api.openai.com", "chatgpt.com"]);
        // `{branch}` is the worker's to fill: each attempt has a branch of its own.
        assert!(plan.agents[0].agent.argv.iter().all(|arg| !arg.contains("nightshift/")), "{:?}", plan.agents[0]);
        assert_eq!(plan.check.as_deref(), Some("cargo test"));
        let judge = plan.judge.unwrap();
        assert_eq!((judge.agent.agent.profile.as_str(), judge.prompt.as_str()), ("claude", "pick for ann"));
        assert_eq!(plan.on_no_winner, NoWinner::Fail);
    }

    #[test]
    fn attempts_default_to_the_tasks_agent_and_the_judge_to_the_built_in_prompt() {
        let automation = compiled("  attempts: { count: 2, judge: { profile: codex } }\n");
        let Plan::Attempts(plan) = render(&automation, json!({})).unwrap() else { panic!() };
        assert_eq!(plan.agents.iter().map(|a| a.agent.profile.as_str()).collect::<Vec<_>>(), ["codex", "codex"]);
        assert_eq!(plan.judge.unwrap().prompt, DEFAULT_JUDGE_PROMPT);
    }

    #[test]
    fn a_verifier_has_its_own_network_when_given_else_the_tasks() {
        let task_network = "  network: { agent: { allow: [{ domain: docs.rs }] } }\n";
        let own = compiled(&format!(
            "{task_network}  verify:\n    profile: claude\n    checks: [make test]\n    max_rounds: 3\n    network: {{ agent: {{ allow: [{{ domain: crates.io }}] }} }}\n"
        ));
        let Plan::Verify(plan) = render(&own, json!({})).unwrap() else { panic!() };
        assert_eq!(allowed(&plan.verifier.network.agent), ["crates.io", "api.anthropic.com"]);
        assert_eq!((plan.max_rounds, plan.checks.as_slice()), (3, &["make test".to_string()][..]));
        assert_eq!(plan.prompt, DEFAULT_VERIFY_PROMPT);
        let inherited = compiled(&format!("{task_network}  verify: {{ profile: claude }}\n"));
        let Plan::Verify(plan) = render(&inherited, json!({})).unwrap() else { panic!() };
        assert_eq!(allowed(&plan.verifier.network.agent), ["docs.rs", "api.anthropic.com"]);
        assert_eq!(plan.max_rounds, 2);
    }

    #[test]
    fn unknown_profiles_and_bad_scripts_are_load_findings_at_their_field() {
        let yaml = "name: probe\ntrigger: { manual: {} }\ntask:\n  agent: codex\n  repo: /r\n  prompt: p\n  attempts: { count: 2, profiles: [codex, cluade], judge: { profile: nobody } }\n";
        let automation: Automation = serde_yaml::from_str(yaml).unwrap();
        let findings = CompiledAutomation::compile(RuleEngine::shared(), &automation, &builtin_profiles()).unwrap_err();
        let paths: Vec<String> = findings.iter().map(|f| format!("{}: {}", f.path, f.message)).collect();
        assert_eq!(
            paths,
            [
                "task.attempts.profiles[1]: unknown agent profile `cluade`",
                "task.attempts.judge.profile: unknown agent profile `nobody`",
            ]
        );
        let yaml = "name: probe\ntrigger: { manual: {} }\ntask:\n  agent: codex\n  repo: /r\n  prompt: p\n  fan_out: { items: '[#{prompt: }', join: { profile: nope } }\n";
        let automation: Automation = serde_yaml::from_str(yaml).unwrap();
        let findings = CompiledAutomation::compile(RuleEngine::shared(), &automation, &builtin_profiles()).unwrap_err();
        let paths: Vec<String> = findings.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(paths, ["task.fan_out.items", "task.fan_out.join.profile"]);
    }

    #[test]
    fn the_description_shows_each_part_of_the_plan() {
        let automation = compiled("  attempts: { count: 2, profiles: [codex, claude], check: make }\n");
        let text = describe_plan(&render(&automation, json!({})).unwrap());
        assert_eq!(
            text,
            "plan: attempts (2), each picked by check, then smallest change\n  attempt 1: codex\n  attempt 2: claude\n  check: make\n  judge: (none: the smallest change wins)\n  no winner: the run fails"
        );
        let automation = fan_out(r#"[#{prompt: "one\ntwo", paths: ["a/**", "b/**"], repo: "/srv/git/b"}]"#);
        let text = describe_plan(&render(&automation, json!({})).unwrap());
        assert_eq!(
            text,
            "plan: fan_out, 1 children, at most 4 at once\n  child 1: \"one…\" (paths a/**, b/**, repo /srv/git/b)\n  join: (none)"
        );
    }
}
