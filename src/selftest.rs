//! Runs the `tests:` blocks of automations: each fixture is rendered and compared with
//! what the test expects.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::catalog::{Catalog, LoadedAutomation};
use crate::config::{Automation, RequestSpec, TestCase};
use crate::event::Event;
use crate::netpolicy::NetworkPolicy;
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
            loaded.compiled.definition.tests.iter().map(move |case| CaseResult {
                automation: loaded.compiled.name().to_string(),
                name: case.name.clone().unwrap_or_else(|| case.event.clone()),
                failures: run_case(engine, loaded, case),
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

fn run_case(engine: &RuleEngine, loaded: &LoadedAutomation, case: &TestCase) -> Vec<String> {
    let automation = &loaded.compiled.definition;
    let Some(source) = case.source.or_else(|| automation.first_source()) else {
        return vec!["the automation has no trigger".into()];
    };
    let now = case
        .now
        .as_deref()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let fixture = loaded.file.parent().unwrap_or(Path::new(".")).join(&case.event);
    let events = match fixture_events(automation, &fixture, source, &case.headers, now) {
        Ok(events) => events,
        Err(why) => return vec![why],
    };
    // With `per: alert` every alert's render is held to the expectations.
    let split = events.len() > 1;
    let mut failures = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        let which = match event.fields.get("fingerprint").and_then(serde_json::Value::as_str) {
            Some(fingerprint) if split => format!("alert {} ({fingerprint}): ", index + 1),
            _ => String::new(),
        };
        let found = check_event(engine, loaded, case, event, now);
        failures.extend(found.into_iter().map(|failure| format!("{which}{failure}")));
    }
    failures
}

fn check_event(
    engine: &RuleEngine,
    loaded: &LoadedAutomation,
    case: &TestCase,
    event: Event,
    now: DateTime<Utc>,
) -> Vec<String> {
    let rendered =
        loaded.compiled.render_even_if_disabled(engine, &PreparedEvent::new(event), &memory_value(&case.memory), now);
    let expect = &case.expect;
    let rendered = match (rendered, &expect.error_contains) {
        (Err(error), Some(wanted)) if error.to_string().contains(wanted.as_str()) => return Vec::new(),
        (Err(error), _) => return vec![format!("render failed: {error}")],
        (Ok(_), Some(wanted)) => {
            return vec![format!("expected a render error containing {wanted:?}, but rendering succeeded")];
        }
        (Ok(rendered), None) => rendered,
    };
    compare(expect, &rendered)
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
        || expect.network.is_some();
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
    failures
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
