//! Benchmarks of the rule engine: converting an event for rhai, evaluating a compiled
//! `when`, rendering a prompt template, and validating 1,000 automation files.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use nightshift::event::Event;
use nightshift::rules::{PreparedEvent, RuleEngine, memory_value};
use nightshift::triggers::TriggerKind;

/// The PagerDuty P1 fixture padded with custom details to 4 KB of JSON.
fn four_kb_event() -> Event {
    let text = std::fs::read_to_string("tests/data/pagerduty/incident_triggered_p1.json").expect("fixture");
    let mut payload: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let mut details = serde_json::Map::new();
    let mut n = 0;
    while payload.to_string().len() < 4096 {
        details.insert(format!("detail_{n}"), format!("value number {n} of the alert body").into());
        payload["event"]["data"]["custom_details"] = serde_json::Value::Object(details.clone());
        n += 1;
    }
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).single().expect("valid time");
    Event::from_delivery(TriggerKind::Pagerduty, payload, Default::default(), at)
}

fn prompt_automation() -> String {
    let expressions = [
        "event.incident.title",
        "event.incident.service.summary",
        "event.incident.number",
        "event.incident.html_url",
        "event.incident.urgency",
        "event.incident.priority.summary",
        "memory.get(event.incident.service.id) ?? \"none\"",
        "event.incident.assignees[0].summary",
        "now.date",
        "untrusted(event.incident.title)",
    ];
    let filler = "Investigate the failure, reproduce it in a test and propose the smallest fix. ";
    let mut prompt = String::new();
    for expression in expressions {
        prompt.push_str(&filler.repeat(2));
        prompt.push_str(&format!("{{{{ {expression} }}}}\n"));
    }
    while prompt.len() < 2048 {
        prompt.push_str(filler);
    }
    let indented: String = prompt.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "name: bench\ntrigger:\n  pagerduty: {{ secret: \"env:X\" }}\nwhen: event.incident.priority?.summary == \"P1\" && event.incident.urgency == \"high\"\ntask:\n  agent: codex\n  repo: /srv/git/api\n  prompt: |\n{indented}"
    )
}

fn rules(c: &mut Criterion) {
    let engine = RuleEngine::shared();
    let event = four_kb_event();
    assert!(event.payload.to_string().len() >= 4096);
    c.bench_function("convert 4 KB event for rhai", |b| b.iter(|| PreparedEvent::new(black_box(event.clone()))));
    c.bench_function("clone 4 KB event (baseline of the conversion)", |b| b.iter(|| black_box(event.clone())));

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bench.yaml"), prompt_automation()).expect("write");
    let (catalog, problems) = nightshift::catalog::load(engine, &[dir.path().to_path_buf()], None);
    assert!(problems.is_empty(), "{problems:?}");
    let compiled = &catalog.automations[0].compiled;
    let prepared = PreparedEvent::new(event);
    let memory = memory_value(&serde_json::Map::new());
    let now = nightshift::rules::now_value(Utc::now());
    let mut scope = compiled.scope(&prepared, &memory, &now);
    assert!(compiled.eval_when(engine, &mut scope).expect("when evaluates"));
    c.bench_function("eval compiled when on 4 KB event", |b| {
        b.iter(|| compiled.eval_when(engine, black_box(&mut scope)).expect("when evaluates"))
    });

    let prompt = nightshift::rules::compile_template(
        engine,
        nightshift::config::FieldPath::root(),
        &compiled.definition.task.prompt,
    )
    .expect("compiles");
    assert!(compiled.definition.task.prompt.len() >= 2048);
    c.bench_function("render 2 KB prompt with 10 expressions", |b| {
        b.iter(|| prompt.render(engine, black_box(&mut scope)).expect("renders"))
    });
    c.bench_function("render whole task (when, prompt, branch, policies)", |b| {
        b.iter(|| compiled.render(engine, black_box(&prepared), &memory, Utc::now()).expect("renders"))
    });
}

fn validate(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let count = nightshift_bench_support::generate(dir.path(), 1000);
    let mut group = c.benchmark_group("validate");
    group.sample_size(10);
    group.bench_function("load and check 1,000 automation files", |b| {
        b.iter(|| {
            let (catalog, problems) =
                nightshift::catalog::load(RuleEngine::shared(), &[dir.path().to_path_buf()], None);
            assert!(problems.is_empty());
            assert_eq!(catalog.automations.len(), count);
        })
    });
    group.finish();
}

#[path = "../examples/generate_automations.rs"]
#[allow(dead_code)]
mod nightshift_bench_support;

criterion_group!(benches, rules, validate);
criterion_main!(benches);
