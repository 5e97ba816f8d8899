//! Load tool for the store: durable ingest from many concurrent producers, and
//! claim+complete cycles from several workers. Prints throughput, latency percentiles
//! and how many commits group commit needed.
//!
//! The producers are async tasks on a two-thread tokio runtime, as requests are in the
//! server: each decides its ingest, then awaits its durability without holding a thread.
//!
//! ```text
//! cargo run --release --example store_load -- ingest [PRODUCERS=64] [SECONDS=5] [rules|store]
//! cargo run --release --example store_load -- claims [WORKERS=4] [RUNS=50000]
//! cargo run --release --example store_load -- bytes [EVENTS=20000] [PROFILE=local-audit]
//! cargo run --release --example store_load -- runs [RUNS=100000] [READS=200]
//! cargo run --release --example store_load -- backends [ROUNDS=3] [WORKERS=4] [RUNS=5000] [WAKEUPS=200]
//! ```
//! `backends` measures the embedded store and PostgreSQL side by side, in turns, ROUNDS
//! times (a throwaway PostgreSQL cluster with fsync and synchronous commit on, on a Unix
//! socket; docs/scaling.md): claim+complete cycles from WORKERS threads over RUNS queued
//! runs (each in a repository of its own, so the claim rules hold none back), and the
//! wake-up from a run queued by one instance to its claim by a worker waiting on another
//! (for the embedded store, one process: the server's own wake-up), WAKEUPS times one
//! after another, p50 and p99.
//! `runs` stores RUNS runs (all but one per service skipped by a cooldown, so nearly all
//! are finished and on disk, as in a store that has run a while), then reads the web
//! board's page of 50 runs READS times each way (the newest, one deep in the list through
//! its cursor, one automation's, queued ones, skipped ones) and prints the median and p99.
//! `bytes` ingests EVENTS small deliveries (about 90 bytes of payload, one run each on
//! the agent profile PROFILE) through the rules and the store, in batches of 256 as
//! concurrent requests would, stops the store cleanly, and prints what its directory
//! holds on disk per event (`du`'s allocated blocks, and the files' apparent sizes).
//! Every loop is bounded in time and count. The store lives in a temporary directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use nightshift::event::Event;
use nightshift::pipeline::{Audience, Pipeline};
use nightshift::rules::RuleEngine;
use nightshift::runs::{Completion, RunResult};
use nightshift::store::{NewRun, SledStore, Store};
use nightshift::triggers::TriggerKind;
use serde_json::json;

const AUTOMATION: &str = r#"
name: load
trigger: { manual: {} }
when: event.service != ""
concurrency: { limit: 10000, key: "{{ event.service }}" }
task:
  agent: codex
  # A repository per service, so concurrent claims are not held back by overlapping paths.
  repo: "/srv/git/{{ event.service }}"
  branch: "agent/load-{{ slug(event.id) }}"
  prompt: |
    Investigate {{ untrusted(event.title) }} on {{ event.service }}.
"#;

/// The allocator the `nightshift` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The most events one ingest run stores, whatever the duration.
const MAX_EVENTS: u64 = 5_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize, default: u64| args.get(index).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("ingest") => ingest(number(1, 64), number(2, 5), args.get(3).map(String::as_str) != Some("store")),
        Some("claims") => claims(number(1, 4), number(2, 50_000)),
        Some("bytes") => bytes(number(1, 20_000).min(MAX_EVENTS), args.get(2).map_or("local-audit", String::as_str)),
        Some("runs") => runs_page(number(1, 100_000).min(MAX_EVENTS), number(2, 200).min(100_000)),
        Some("backends") => backends(
            number(1, 3).min(20),
            number(2, 4).min(64),
            number(3, 5_000).min(MAX_EVENTS),
            number(4, 200).min(10_000),
        ),
        _ => eprintln!(
            "usage: store_load ingest [PRODUCERS] [SECONDS] [rules|store] | claims [WORKERS] [RUNS] | bytes [EVENTS] [PROFILE] | runs [RUNS] [READS] | backends [ROUNDS] [WORKERS] [RUNS] [WAKEUPS]"
        ),
    }
}

fn setup() -> (tempfile::TempDir, Arc<SledStore>, Pipeline) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("automations")).expect("dir");
    std::fs::write(dir.path().join("automations/load.yaml"), AUTOMATION).expect("write");
    let (catalog, problems) = nightshift::catalog::load(RuleEngine::shared(), &[dir.path().join("automations")], None);
    assert!(problems.is_empty(), "{problems:?}");
    let sled = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
    let store: Arc<dyn Store> = sled.clone();
    (dir, sled, Pipeline::new(Arc::new(catalog), store))
}

fn load_event(n: u64) -> Event {
    let payload = json!({
        "title": format!("error rate above 5% on checkout ({n})"),
        "service": format!("svc-{}", n % 97),
        "details": "x".repeat(700),
    });
    let mut event = Event::from_delivery(TriggerKind::Manual, payload, Default::default(), Utc::now());
    event.id = format!("manual:load-{n}");
    event
}

/// A rendered run to store without the rules, for the store-only figure.
fn template(pipeline: &Pipeline) -> NewRun {
    let report = pipeline.ingest(load_event(u64::MAX), Audience::Everyone, Utc::now()).expect("ingest");
    let run = pipeline.store().run(report.outcome.runs[0].run).expect("read").expect("run");
    NewRun {
        automation: run.automation,
        definition_hash: run.definition_hash,
        rendered: Ok((run.task.expect("task"), run.flow)),
    }
}

/// `template` in a repository and on a branch named `name`.
fn elsewhere(template: &NewRun, name: &str) -> NewRun {
    let mut new = template.clone();
    if let Ok((task, _)) = &mut new.rendered {
        task.repo = format!("/srv/git/{name}");
        task.branch = format!("agent/{name}");
    }
    new
}

fn ingest(producers: u64, seconds: u64, through_rules: bool) {
    let (_dir, sled, pipeline) = setup();
    let pipeline = Arc::new(pipeline);
    let template = template(&pipeline);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let (pipeline, next, stop, template) = (pipeline.clone(), next.clone(), stop.clone(), template.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= MAX_EVENTS {
                            break;
                        }
                        let event = load_event(n);
                        let begun = Instant::now();
                        if through_rules {
                            let pending =
                                pipeline.ingest_queued(event, Audience::Everyone, Utc::now()).expect("ingest");
                            pending.done().await.expect("stored");
                        } else {
                            let pending = pipeline.store().ingest_pending(&event, vec![template.clone()], Utc::now());
                            pending.await.expect("stored");
                        }
                        latencies.push(begun.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("producer"));
        }
        all
    });
    let elapsed = started.elapsed();
    latencies.sort();
    let count = latencies.len();
    let percentile = |p: f64| latencies[((count as f64 * p) as usize).min(count - 1)];
    let mode = if through_rules { "rules+store" } else { "store only" };
    println!(
        "ingest ({mode}), {producers} producers, {seconds}s: {count} events, {:.0} events/s; latency p50 {:?}, p99 {:?}, max {:?}",
        count as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        latencies[count - 1],
    );
    report_commits(&sled, count);
}

fn report_commits(sled: &SledStore, operations: usize) {
    let (logged, synced, applied) = sled.commits();
    println!("  {operations} operations: {logged} log appends, {synced} log syncs, {applied} applier passes");
}

fn claims(workers: u64, runs: u64) {
    let (_dir, sled, pipeline) = setup();
    let template = template(&pipeline);
    let store = pipeline.store().clone();
    // Queue the runs: 100 per event keeps set-up quick.
    for batch in 0..runs.div_ceil(100) {
        let count = (runs - batch * 100).min(100) as usize;
        store.ingest(&load_event(batch), vec![template.clone(); count], Utc::now()).expect("ingest");
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let name = format!("worker-{worker}");
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let Some(claim) = store.claim(&name, Duration::from_secs(60), Utc::now()).expect("claim") else {
                        break;
                    };
                    let result = RunResult { summary: "ok".into(), ..RunResult::default() };
                    store
                        .complete(
                            claim.run.id,
                            claim.lease.epoch,
                            Completion::Succeeded { result },
                            Vec::new(),
                            Utc::now(),
                        )
                        .expect("complete");
                    latencies.push(begun.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().expect("worker")).collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let count = latencies.len();
    println!(
        "claims, {workers} workers: {count} claim+complete cycles, {:.0} cycles/s; latency p50 {:?}, p99 {:?}",
        count as f64 / elapsed.as_secs_f64(),
        latencies[count / 2],
        latencies[(count * 99 / 100).min(count - 1)],
    );
    report_commits(&sled, count);
}

/// A small automation on `profile`, as most real ones are.
const SMALL: &str = r#"
name: small
trigger: { manual: {} }
task:
  agent: PROFILE
  repo: "/srv/git/shop"
  branch: "agent/disk-{{ event.n }}"
  prompt: "Check {{ untrusted(event.title) }} on {{ event.host }}."
"#;

fn bytes(events: u64, profile: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("automations")).expect("dir");
    std::fs::write(dir.path().join("automations/small.yaml"), SMALL.replace("PROFILE", profile)).expect("write");
    let (catalog, problems) = nightshift::catalog::load(RuleEngine::shared(), &[dir.path().join("automations")], None);
    assert!(problems.is_empty(), "{problems:?}");
    let data = dir.path().join("data");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data).expect("store"));
    let pipeline = Pipeline::new(Arc::new(catalog), store);
    let started = Instant::now();
    let mut payload_bytes = 0;
    for batch in 0..events.div_ceil(256) {
        let pending: Vec<_> = (batch * 256..((batch + 1) * 256).min(events))
            .map(|n| {
                let payload = json!({"title": "disk usage above 90% on /var/lib/postgresql", "host": format!("db-{}", n % 13), "n": n});
                payload_bytes += payload.to_string().len();
                let event = Event::from_delivery(TriggerKind::Manual, payload, Default::default(), Utc::now());
                pipeline.ingest_queued(event, Audience::Everyone, Utc::now()).expect("ingest")
            })
            .collect();
        for ingest in pending {
            ingest.wait().expect("stored");
        }
    }
    let ingested = started.elapsed();
    // A clean stop: the store checkpoints when its last handle goes.
    drop(pipeline);
    let (mut allocated, mut apparent) = (0u64, 0u64);
    let mut by_part: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for entry in walk(&data) {
        use std::os::unix::fs::MetadataExt;
        let meta = entry.1;
        let part = entry
            .0
            .strip_prefix(&data)
            .ok()
            .and_then(|p| p.components().next())
            .map_or_else(|| "?".to_string(), |c| c.as_os_str().to_string_lossy().into_owned());
        let sizes = by_part.entry(part).or_default();
        sizes.0 += meta.blocks() * 512;
        sizes.1 += meta.len();
        allocated += meta.blocks() * 512;
        apparent += meta.len();
    }
    println!(
        "bytes ({profile}): {events} events of {} payload bytes on average, ingested in {ingested:.1?}; \
         on disk after a clean stop: {allocated} bytes allocated ({} per event), {apparent} apparent ({} per event)",
        payload_bytes / events.max(1) as usize,
        allocated / events.max(1),
        apparent / events.max(1),
    );
    for (part, (allocated, apparent)) in by_part {
        println!("  {part}: {allocated} allocated, {apparent} apparent");
    }
}

const COOLED: &str = r#"
name: cooled
trigger: { manual: {} }
concurrency: { key: "{{ event.service }}" }
cooldown: 1000h
task:
  agent: codex
  repo: "/srv/git/{{ event.service }}"
  prompt: "Check {{ untrusted(event.title) }} on {{ event.service }}."
"#;

/// The board's runs page (`GET /api/runs?limit=50`) over a store of `total` runs.
fn runs_page(total: u64, reads: u64) {
    use nightshift::runs::{RunId, RunState};
    use nightshift::store::RunFilter;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("automations")).expect("dir");
    std::fs::write(dir.path().join("automations/cooled.yaml"), COOLED).expect("write");
    let (catalog, problems) = nightshift::catalog::load(RuleEngine::shared(), &[dir.path().join("automations")], None);
    assert!(problems.is_empty(), "{problems:?}");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
    let pipeline = Pipeline::new(Arc::new(catalog), Arc::clone(&store));
    let started = Instant::now();
    for batch in 0..total.div_ceil(256) {
        let pending: Vec<_> = (batch * 256..((batch + 1) * 256).min(total))
            .map(|n| {
                let payload = json!({"title": "disk usage above 90%", "service": format!("svc-{}", n % 20)});
                let event = Event::from_delivery(TriggerKind::Manual, payload, Default::default(), Utc::now());
                pipeline.ingest_queued(event, Audience::Everyone, Utc::now()).expect("ingest")
            })
            .collect();
        for ingest in pending {
            ingest.wait().expect("stored");
        }
    }
    println!("runs: {total} runs stored in {:.1?}", started.elapsed());
    let page = |filter: RunFilter| RunFilter { limit: 50, ..filter };
    let ways = [
        ("newest 50", page(RunFilter::default())),
        ("50 before the middle", page(RunFilter { before: Some(RunId(total / 2)), ..RunFilter::default() })),
        ("50 of one automation", page(RunFilter { automation: Some("cooled".into()), ..RunFilter::default() })),
        ("50 queued", page(RunFilter { state: Some(RunState::Queued), ..RunFilter::default() })),
        ("50 skipped", page(RunFilter { state: Some(RunState::Skipped), ..RunFilter::default() })),
    ];
    for (name, filter) in ways {
        let mut times: Vec<Duration> = (0..reads)
            .map(|_| {
                let started = Instant::now();
                let runs = store.runs(&filter).expect("runs");
                let took = started.elapsed();
                assert!(!runs.is_empty(), "{name}: no runs");
                // What the API does with them: JSON.
                std::hint::black_box(serde_json::to_vec(&runs).expect("json"));
                took
            })
            .collect();
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!("  {name}: p50 {:.2?}, p99 {:.2?} (store read; {reads} reads)", at(0.5), at(0.99));
    }
}

/// Every file under `dir`, with its metadata.
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                found.push((entry.path(), meta));
            }
        }
    }
    found
}

/// A pipeline over `store` with the load automation, in `dir`.
fn pipeline_over(dir: &std::path::Path, store: Arc<dyn Store>) -> Pipeline {
    std::fs::create_dir_all(dir.join("automations")).expect("dir");
    std::fs::write(dir.join("automations/load.yaml"), AUTOMATION).expect("write");
    let (catalog, problems) = nightshift::catalog::load(RuleEngine::shared(), &[dir.join("automations")], None);
    assert!(problems.is_empty(), "{problems:?}");
    Pipeline::new(Arc::new(catalog), store)
}

/// Claim+complete cycles per second of `workers` threads over `runs` queued runs.
fn cycles(store: &Arc<dyn Store>, template: &NewRun, workers: u64, runs: u64, tag: &str) -> f64 {
    for batch in 0..runs.div_ceil(100) {
        let count = (runs - batch * 100).min(100) as usize;
        let mut event = load_event(batch);
        event.id = format!("manual:{tag}-{batch}");
        // A repository each: runs on one branch, or with overlapping paths in one
        // repository, never run at once, and the workers would take turns.
        let fleet: Vec<NewRun> = (0..count).map(|n| elsewhere(template, &format!("{tag}-{batch}-{n}"))).collect();
        store.ingest(&event, fleet, Utc::now()).expect("ingest");
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let Some(claim) =
                        store.claim(&format!("w{worker}"), Duration::from_secs(60), Utc::now()).expect("claim")
                    else {
                        break;
                    };
                    let result = RunResult { summary: "ok".into(), ..RunResult::default() };
                    let completion = Completion::Succeeded { result };
                    store
                        .complete(claim.run.id, claim.lease.epoch, completion, Vec::new(), Utc::now())
                        .expect("complete");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: u64 = threads.into_iter().map(|thread| thread.join().expect("worker")).sum();
    done as f64 / started.elapsed().as_secs_f64()
}

/// From a run queued through `producer` to its claim through `waiter` by a worker that
/// waits on `wakeup` (and polls every second, as the server's workers do), `samples`
/// times, one after another.
fn wakeups(
    producer: &Arc<dyn Store>,
    waiter: &Arc<dyn Store>,
    wakeup: Arc<tokio::sync::Notify>,
    ring_after_ingest: bool,
    template: &NewRun,
    samples: u64,
    tag: &str,
) -> Vec<Duration> {
    let (claimed, claims) = std::sync::mpsc::channel::<Instant>();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (waiter, wakeup, stop) = (waiter.clone(), wakeup.clone(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            while !stop.load(Ordering::Relaxed) {
                while let Some(claim) = waiter.claim("waiter", Duration::from_secs(60), Utc::now()).expect("claim") {
                    let _ = claimed.send(Instant::now());
                    let result = RunResult { summary: "ok".into(), ..RunResult::default() };
                    let completion = Completion::Succeeded { result };
                    waiter
                        .complete(claim.run.id, claim.lease.epoch, completion, Vec::new(), Utc::now())
                        .expect("complete");
                }
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(1), wakeup.notified()).await;
                });
            }
        })
    };
    let mut latencies = Vec::new();
    // The waiter is idle and waiting before each run is queued.
    std::thread::sleep(Duration::from_millis(200));
    for n in 0..samples {
        let mut event = load_event(n);
        event.id = format!("manual:{tag}-wake-{n}");
        producer.ingest(&event, vec![template.clone()], Utc::now()).expect("ingest");
        let queued = Instant::now();
        if ring_after_ingest {
            wakeup.notify_one();
        }
        let claimed_at = claims.recv_timeout(Duration::from_secs(10)).expect("the waiter claims the run");
        latencies.push(claimed_at.saturating_duration_since(queued));
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    wakeup.notify_one();
    worker.join().expect("the waiter");
    latencies.sort();
    latencies
}

fn backends(rounds: u64, workers: u64, runs: u64, samples: u64) {
    use nightshift::store::PgStore;
    use nightshift::store::postgres::cluster::Cluster;
    let cluster =
        Cluster::start_with(true).expect("a throwaway PostgreSQL cluster (is Debian's postgresql installed?)");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut waits: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        // The embedded store: one process, its wake-up rung by the server after ingest.
        let dir = tempfile::tempdir().expect("temp dir");
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let pipeline = pipeline_over(dir.path(), sled.clone());
        let made = template(&pipeline);
        let rate = cycles(&sled, &made, workers, runs, "c");
        let wait = wakeups(&sled, &sled, Arc::new(tokio::sync::Notify::new()), true, &made, samples, "w");
        println!("round {round} embedded:   {rate:>7.0} claim+complete cycles/s; wake-up {}", spread(&wait));
        rates[0].push(rate);
        waits[0].extend(wait);
        drop(pipeline);

        // PostgreSQL: two instances on one database; the waiter is woken by NOTIFY.
        let url = cluster.database(&format!("load{round}")).expect("a database");
        let first: Arc<dyn Store> = Arc::new(PgStore::open(&url).expect("the database opens"));
        let second: Arc<dyn Store> = Arc::new(PgStore::open(&url).expect("the database opens"));
        let dir = tempfile::tempdir().expect("temp dir");
        let pipeline = pipeline_over(dir.path(), first.clone());
        let made = template(&pipeline);
        let rate = cycles(&first, &made, workers, runs, "c");
        let wakeup = second.wakeups().expect("a shared store wakes other instances");
        let wait = wakeups(&first, &second, wakeup, false, &made, samples, "w");
        println!("round {round} postgresql: {rate:>7.0} claim+complete cycles/s; wake-up {}", spread(&wait));
        rates[1].push(rate);
        waits[1].extend(wait);
    }
    for (name, (rates, waits)) in ["embedded", "postgresql"].iter().zip(rates.iter_mut().zip(waits.iter_mut())) {
        rates.sort_by(f64::total_cmp);
        waits.sort();
        println!(
            "{name}: claim+complete median {:.0}/s over {rounds} rounds; wake-up {}",
            rates[rates.len() / 2],
            spread(waits)
        );
    }
}

/// p50 and p99 of sorted durations.
fn spread(sorted: &[Duration]) -> String {
    let at = |q: usize| {
        sorted.get((sorted.len() * q / 100).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    format!("p50 {:.2} ms, p99 {:.2} ms", at(50).as_secs_f64() * 1e3, at(99).as_secs_f64() * 1e3)
}
