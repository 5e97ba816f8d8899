//! Benchmarks of `/metrics`: what counting one delivery costs on the ingest path, and
//! what a scrape costs with 0 and with 10,000 runs waiting in the store (the gauges are
//! counted from the store's index of unfinished runs at each scrape).

use std::hint::black_box;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use nightshift::event::Event;
use nightshift::metrics::{DeliveryOutcome, Metrics};
use nightshift::pipeline::{Audience, Pipeline};
use nightshift::store::{SledStore, Store};
use nightshift::triggers::TriggerKind;

const AUTOMATION: &str = "name: queued\ntrigger: { manual: {} }\nconcurrency: { limit: 1, overlap: queue }\n\
task:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  base: main\n  \
branch: \"agent/q-{{ event.n }}\"\n  prompt: \"Run {{ event.n }}\"\n";

/// A store in `dir` with `runs` runs queued, and the metrics over it.
fn metrics_over(dir: &std::path::Path, runs: u32) -> (Arc<Metrics>, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("data")).expect("the store opens"));
    let automations = dir.join("automations");
    std::fs::create_dir_all(&automations).expect("a directory");
    std::fs::write(automations.join("queued.yaml"), AUTOMATION).expect("written");
    let (catalog, diagnostics) =
        nightshift::catalog::load(nightshift::rules::RuleEngine::shared(), &[automations], None);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let pipeline = Pipeline::new(Arc::new(catalog), Arc::clone(&store));
    let at = Utc.with_ymd_and_hms(2026, 12, 5, 9, 0, 0).single().expect("a time");
    let mut pending = Vec::new();
    for n in 0..runs {
        let event = Event::from_delivery(TriggerKind::Manual, serde_json::json!({ "n": n }), Default::default(), at);
        pending.push(pipeline.ingest_queued(event, Audience::Named("queued"), at).expect("ingested"));
    }
    for ingest in pending {
        ingest.wait().expect("stored");
    }
    (Metrics::new(Arc::clone(&store)), store)
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a directory");
    let (idle, _idle_store) = metrics_over(&dir.path().join("idle"), 0);
    c.bench_function("metrics/count_one_delivery", |b| {
        b.iter(|| idle.delivery(black_box(Some(TriggerKind::Github)), black_box(DeliveryOutcome::Accepted)))
    });
    c.bench_function("metrics/scrape_0_runs", |b| b.iter(|| black_box(idle.render())));
    let (busy, _busy_store) = metrics_over(&dir.path().join("busy"), 10_000);
    assert!(busy.render().contains("nightshift_runs{state=\"queued\"} 10000"));
    c.bench_function("metrics/scrape_10000_queued_runs", |b| b.iter(|| black_box(busy.render())));
}

criterion_group!(metrics, benches);
criterion_main!(metrics);
