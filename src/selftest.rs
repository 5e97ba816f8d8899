//! Runs the `tests:` blocks of automations: each fixture is rendered and compared with
//! what the test expects.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::catalog::{Catalog, LoadedAutomation};
use crate::config::{
    Automation, GithubSettings, MessageExpectation, MessageKind, PlanExpectation, PlanShape, RequestSpec,
    SlackSettings, TestCase,
};
use crate::delivery::Kind;
use crate::delivery::preview::{self, Preview};
use crate::event::Event;
use crate::netpolicy::NetworkPolicy;
use crate::parallel::Plan;
use crate::rules::{PreparedEvent, RuleEngine, memory_value};
use crate::task::Rendered;
use crate::triggers::alertmanager::{AlertGrouping, split_per_alert};
use crate::triggers::{Trigger, TriggerKind};

/// The result of one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub automation: String,
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
    /// What the run would send to its `notify:` targets (`Preview::describe`), for
    /// `nightshift test --messages`.
    pub messages: Vec<String>,
    /// The rendered parallel plan (`describe_plan`), for `nightshift test --plan`.
    pub plans: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test case of every automation in the catalog.
pub fn run_all(engine: &RuleEngine, catalog: &Catalog) -> Vec<CaseResult> {
    catalog
        .automations
        .iter()
        .flat_map(|loaded| {
            loaded.compiled.definition.tests.iter().map(move |case| {
                let checked = run_case(engine, loaded, case, (&catalog.slack, &catalog.github));
                CaseResult {
                    automation: loaded.compiled.name().to_string(),
                    name: case.name.clone().unwrap_or_else(|| case.event.clone()),
                    failures: checked.failures,
                    messages: checked.messages,
                    plans: checked.plans,
                }
            })
        })
        .collect()
}

/// Reads a fixture and turns it into the event `source` would have produced.
pub fn fixture_event(
    path: &Path,
    source: TriggerKind,
    headers: &std::collections::BTreeMap<String, String>,
    received_at: DateTime<Utc>,
) -> Result<Event, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read fixture {}: {e}", path.display()))?;
    let payload =
        serde_json::from_str(&text).map_err(|e| format!("fixture {} is not valid JSON: {e}", path.display()))?;
    Ok(Event::from_delivery(source, payload, headers.clone(), received_at))
}

/// The events the automation's hook would make of a fixture from `source`: one, or for an
/// Alertmanager trigger with `per: alert`, one per alert (as `serve` splits a
/// notification).
pub fn fixture_events(
    automation: &Automation,
    path: &Path,
    source: TriggerKind,
    headers: &std::collections::BTreeMap<String, String>,
    received_at: DateTime<Utc>,
) -> Result<Vec<Event>, String> {
    let event = fixture_event(path, source, headers, received_at)?;
    let per_alert = automation
        .all_triggers()
        .filter_map(|t| t.source())
        .any(|t| matches!(t, Trigger::Alertmanager(options) if options.per == AlertGrouping::Alert));
    if source != TriggerKind::Alertmanager || !per_alert {
        return Ok(vec![event]);
    }
    let split = split_per_alert(&event.payload);
    Ok(split.into_iter().map(|one| Event::from_delivery(source, one, headers.clone(), received_at)).collect())
}

/// nightshift.yaml's `slack:` and `github:`, whose API URLs the messages are shown against.
type Settings<'a> = (&'a SlackSettings, &'a GithubSettings);

/// What one case found: its failures, and the messages its runs would send.
#[derive(Default)]
struct Checked {
    failures: Vec<String>,
    messages: Vec<String>,
    plans: Vec<String>,
}

impl Checked {
    fn failed(why: String) -> Checked {
        Checked { failures: vec![why], ..Checked::default() }
    }
}

fn run_case(engine: &RuleEngine, loaded: &LoadedAutomation, case: &TestCase, settings: Settings<'_>) -> Checked {
    let automation = &loaded.compiled.definition;
    let Some(source) = case.source.or_else(|| automation.first_source()) else {
        return Checked::failed("the automation has no trigger".into());
    };
    let now = case
        .now
        .as_deref()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let fixture = loaded.file.parent().unwrap_or(Path::new(".")).join(&case.event);
    let events = match fixture_events(automation, &fixture, source, &case.headers, now) {
        Ok(events) => events,
        Err(why) => return Checked::failed(why),
    };
    // With `per: alert` every alert's render is held to the expectations.
    let split = events.len() > 1;
    let mut checked = Checked::default();
    for (index, event) in events.into_iter().enumerate() {
        let which = match event.fields.get("fingerprint").and_then(serde_json::Value::as_str) {
            Some(fingerprint) if split => format!("alert {} ({fingerprint}): ", index + 1),
            _ => String::new(),
        };
        let found = check_event(engine, loaded, case, event, now, settings);
        checked.failures.extend(found.failures.into_iter().map(|failure| format!("{which}{failure}")));
        checked.messages.extend(found.messages.into_iter().map(|message| format!("{which}{message}")));
        checked.plans.extend(found.plans.into_iter().map(|plan| format!("{which}{plan}")));
    }
    checked
}

fn check_event(
    engine: &RuleEngine,
    loaded: &LoadedAutomation,
    case: &TestCase,
    event: Event,
    now: DateTime<Utc>,
    (slack, github): Settings<'_>,
) -> Checked {
    let rendered =
        loaded.compiled.render_even_if_disabled(engine, &PreparedEvent::new(event), &memory_value(&case.memory), now);
    let expect = &case.expect;
    let rendered = match (rendered, &expect.error_contains) {
        (Err(error), Some(wanted)) if error.to_string().contains(wanted.as_str()) => return Checked::default(),
        (Err(error), _) => return Checked::failed(format!("render failed: {error}")),
        (Ok(_), Some(wanted)) => {
            return Checked::failed(format!("expected a render error containing {wanted:?}, but rendering succeeded"));
        }
        (Ok(rendered), None) => rendered,
    };
    let mut failures = compare(expect, &rendered);
    let Some(task) = &rendered.task else { return Checked { failures, ..Checked::default() } };
    let plans = task.plan.iter().map(crate::rules::describe_plan).collect();
    let previews = preview::messages(task, case.result.as_ref(), slack, github, now);
    let mut messages: Vec<String> = previews.messages.iter().map(Preview::describe).collect();
    if !previews.result.placeholders.is_empty() && !previews.messages.is_empty() {
        let which = previews.result.placeholders.join(" and ");
        messages.push(format!("(the end messages use a placeholder {which}: give the test a `result` to set them)"));
    }
    if let Some(expected) = &expect.notify {
        failures.extend(check_messages(expected, &previews.messages));
    }
    Checked { failures, messages, plans }
}

/// Matches each expected message, in order, to the first message not yet matched that
/// fits it; then every message must have been matched. Each failure says what differed
/// and what the nearest message says.
pub fn check_messages(expected: &[MessageExpectation], messages: &[Preview]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut matched = vec![false; messages.len()];
    for (n, wanted) in expected.iter().enumerate() {
        let kind = match wanted.kind {
            MessageKind::Start => Kind::Start,
            MessageKind::End => Kind::End,
        };
        let label = format!("expect.notify[{n}] ({} {})", wanted.target.as_str(), crate::runs::outbox::kind_name(kind));
        let same: Vec<usize> = (0..messages.len())
            .filter(|&i| !matched[i] && messages[i].target == wanted.target && messages[i].kind == kind)
            .collect();
        let differences = |message: &Preview| -> Vec<String> {
            let mut found = Vec::new();
            if let Some(to) = &wanted.to
                && !message.to.contains(to.as_str())
            {
                found.push(format!("goes to {:?}, not {to:?}", message.to));
            }
            for text in &wanted.contains {
                if !message.text.contains(text.as_str()) {
                    found.push(format!("does not contain {text:?}"));
                }
            }
            for text in &wanted.excludes {
                if message.text.contains(text.as_str()) {
                    found.push(format!("contains {text:?}"));
                }
            }
            found
        };
        match same.iter().find(|&&i| differences(&messages[i]).is_empty()) {
            Some(&i) => matched[i] = true,
            None => match same.first() {
                // Held to this entry: its differences are the failure, not that it is unlisted.
                Some(&i) => {
                    matched[i] = true;
                    failures.push(format!(
                        "{label}: the message {}\n{}",
                        differences(&messages[i]).join(", "),
                        messages[i].describe()
                    ));
                }
                None => failures.push(format!(
                    "{label}: no such message is sent{}",
                    if messages.is_empty() {
                        String::new()
                    } else {
                        let sent: Vec<String> = messages
                            .iter()
                            .map(|m| format!("{} {}", m.target.as_str(), crate::runs::outbox::kind_name(m.kind)))
                            .collect();
                        format!(" (sent: {})", sent.join(", "))
                    }
                )),
            },
        }
    }
    for (message, _) in messages.iter().zip(&matched).filter(|(_, matched)| !**matched) {
        failures.push(format!("a message expect.notify does not list is sent: {}", message.describe()));
    }
    failures
}

fn compare(expect: &crate::config::Expectation, rendered: &Rendered) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(matched) = expect.matched
        && matched != rendered.matched
    {
        failures.push(format!("expected matched: {matched}, got {} ({})", rendered.matched, rendered.reason));
    }
    let wants_task = !expect.prompt_contains.is_empty()
        || !expect.prompt_excludes.is_empty()
        || expect.branch.is_some()
        || expect.dedupe_key.is_some()
        || expect.concurrency_key.is_some()
        || expect.network.is_some()
        || expect.notify.is_some()
        || expect.plan.is_some();
    let (Some(task), Some(flow)) = (&rendered.task, &rendered.flow) else {
        if wants_task {
            failures.push(format!("nothing rendered to check: the event did not match ({})", rendered.reason));
        }
        return failures;
    };
    for fragment in &expect.prompt_contains {
        if !task.prompt.contains(fragment.as_str()) {
            failures.push(format!("prompt does not contain {fragment:?}"));
        }
    }
    for fragment in &expect.prompt_excludes {
        if task.prompt.contains(fragment.as_str()) {
            failures.push(format!("prompt contains {fragment:?}"));
        }
    }
    let exact = [
        ("branch", expect.branch.as_ref(), Some(&task.branch)),
        ("dedupe_key", expect.dedupe_key.as_ref(), flow.dedupe_key.as_ref()),
        ("concurrency_key", expect.concurrency_key.as_ref(), flow.concurrency_key.as_ref()),
    ];
    for (field, wanted, got) in exact {
        if let Some(wanted) = wanted
            && Some(wanted) != got
        {
            let got = got.map_or_else(|| "nothing".to_string(), |g| format!("{g:?}"));
            failures.push(format!("expected {field} {wanted:?}, got {got}"));
        }
    }
    if let Some(network) = &expect.network {
        let checks = [
            ("setup", &task.network.setup, &network.setup_allows, true),
            ("setup", &task.network.setup, &network.setup_denies, false),
            ("agent", &task.network.agent, &network.agent_allows, true),
            ("agent", &task.network.agent, &network.agent_denies, false),
        ];
        for (phase, policy, requests, should_allow) in checks {
            failures.extend(requests.iter().filter_map(|request| check_request(phase, policy, request, should_allow)));
        }
    }
    if let Some(expected) = &expect.plan {
        failures.extend(check_plan(expected, task.plan.as_ref()));
    }
    failures
}

/// Each way the rendered plan differs from `expect.plan`, as `expected X, got Y` lines.
pub fn check_plan(expected: &PlanExpectation, plan: Option<&Plan>) -> Vec<String> {
    let mut failures = Vec::new();
    let shape = PlanShape::of(plan);
    let mut differs = |field: &str, wanted: String, got: String| {
        if wanted != got {
            failures.push(format!("expected plan.{field} {wanted}, got {got}"));
        }
    };
    if let Some(wanted) = expected.shape {
        differs("shape", wanted.as_str().into(), shape.as_str().into());
    }
    let attempts = match plan {
        Some(Plan::Attempts(attempts)) => Some(attempts),
        _ => None,
    };
    let verify = match plan {
        Some(Plan::Verify(verify)) => Some(verify),
        _ => None,
    };
    let fan_out = match plan {
        Some(Plan::FanOut(fan_out)) => Some(fan_out),
        _ => None,
    };
    let not_a = |what: &str| format!("no {what} (the plan is {})", shape.as_str());
    let shown = |value: Option<String>, what: &str| value.unwrap_or_else(|| not_a(what));
    if let Some(wanted) = expected.attempts {
        differs("attempts", wanted.to_string(), shown(attempts.map(|a| a.agents.len().to_string()), "attempts"));
    }
    if let Some(wanted) = &expected.profiles {
        let got = attempts.map(|a| format!("{:?}", a.agents.iter().map(|r| &r.agent.profile).collect::<Vec<_>>()));
        differs("profiles", format!("{wanted:?}"), shown(got, "attempts"));
    }
    if let Some(wanted) = &expected.check {
        let got = attempts.map(|a| format!("{:?}", a.check.as_deref().unwrap_or_default()));
        differs("check", format!("{wanted:?}"), shown(got, "attempts"));
    }
    if let Some(wanted) = &expected.judge {
        let got = attempts
            .map(|a| format!("{:?}", a.judge.as_ref().map(|j| j.agent.agent.profile.as_str()).unwrap_or_default()));
        differs("judge", format!("{wanted:?}"), shown(got, "attempts"));
    }
    if let Some(wanted) = &expected.verifier {
        let got = verify.map(|v| format!("{:?}", v.verifier.agent.profile));
        differs("verifier", format!("{wanted:?}"), shown(got, "verifier"));
    }
    if let Some(wanted) = &expected.checks {
        differs("checks", format!("{wanted:?}"), shown(verify.map(|v| format!("{:?}", v.checks)), "verifier"));
    }
    if let Some(wanted) = expected.max_rounds {
        differs("max_rounds", wanted.to_string(), shown(verify.map(|v| v.max_rounds.to_string()), "verifier"));
    }
    if let Some(wanted) = expected.children {
        differs("children", wanted.to_string(), shown(fan_out.map(|f| f.items.len().to_string()), "children"));
    }
    if let Some(wanted) = expected.max_concurrent {
        let got = fan_out.map(|f| f.max_concurrent.to_string());
        differs("max_concurrent", wanted.to_string(), shown(got, "children"));
    }
    if let Some(wanted) = expected.join {
        differs("join", wanted.to_string(), shown(fan_out.map(|f| f.join.is_some().to_string()), "children"));
    }
    let items = fan_out.map_or(&[][..], |f| f.items.as_slice());
    if let Some(wanted) = &expected.child_paths {
        for (n, paths) in wanted.iter().enumerate() {
            let got = items.get(n).map(|item| format!("{:?}", item.paths));
            differs(
                &format!("child_paths[{n}]"),
                format!("{paths:?}"),
                got.unwrap_or_else(|| no_child(n, items.len())),
            );
        }
    }
    if let Some(wanted) = &expected.child_prompts_contain {
        for (n, text) in wanted.iter().enumerate() {
            match items.get(n) {
                Some(item) if item.prompt.contains(text.as_str()) => {}
                Some(item) => failures.push(format!(
                    "expected child {}'s prompt to contain {text:?}, it is {:?}",
                    n + 1,
                    item.prompt
                )),
                None => failures.push(format!(
                    "expected plan.child_prompts_contain[{n}] {text:?}, got {}",
                    no_child(n, items.len())
                )),
            }
        }
    }
    failures
}

fn no_child(index: usize, children: usize) -> String {
    format!("no child {} (there are {children})", index + 1)
}

fn check_request(phase: &str, policy: &NetworkPolicy, request: &str, should_allow: bool) -> Option<String> {
    let spec = match RequestSpec::parse(request) {
        Ok(spec) => spec,
        Err(why) => return Some(why),
    };
    let decision = policy.decide(&spec.host, spec.port, spec.method);
    (decision.allowed != should_allow).then(|| {
        let (got, wanted) = if should_allow { ("denies", "allow") } else { ("allows", "deny") };
        format!("the {phase} policy {got} `{request}`; the test expects {wanted}")
    })
}
