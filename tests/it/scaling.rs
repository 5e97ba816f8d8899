//! Several `nightshift serve` instances on one PostgreSQL database (docs/scaling.md): a
//! burst of duplicate deliveries spread over three instances makes one run per delivery;
//! a cron schedule fired by all three makes one run per slot; an instance killed with
//! SIGKILL mid-run has its run rescued after the lease by another, which takes over its
//! maintenance; the database stopping gives 503s with Retry-After and `/healthz` saying
//! why, and everything resumes by itself when it returns.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nightshift::store::postgres::cluster::Cluster;
use serde_json::Value;

use super::serving::Serving;

const PATIENCE: Duration = Duration::from_secs(90);
const TOKEN: &str = "scaling-token";

/// One throwaway cluster for this file's tests, a database each.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().expect("a throwaway PostgreSQL cluster starts"))
}

const HOOK: &str = r#"
name: ops
trigger:
  webhook:
    auth: { bearer: { token: env:OPS_TOKEN } }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  prompt: "Look at {{ event.n }}"
"#;

/// `n` instances of `serve` on database `db`, with `args` besides.
fn instances(n: usize, db: &str, files: &[(&str, &str)], args: &[&str]) -> Vec<Serving> {
    let url = cluster().database(db).expect("a database");
    (0..n)
        .map(|_| {
            let mut all = vec!["--store", url.as_str()];
            all.extend_from_slice(args);
            Serving::start_with_args(files, &[("OPS_TOKEN", TOKEN)], &all)
        })
        .collect()
}

fn deliver(server: &Serving, id: &str, n: u32) -> super::serving::Answer {
    let body = format!(r#"{{"n": {n}}}"#);
    let auth = format!("Bearer {TOKEN}");
    server.post(
        "/hooks/ops",
        &[("Content-Type", "application/json"), ("Authorization", &auth), ("webhook-id", id)],
        body,
    )
}

/// The run ids an ingest answer names.
fn runs_of(body: &Value) -> Vec<String> {
    body["events"][0]["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|run| run["run"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_burst_of_duplicate_deliveries_over_three_instances_makes_one_run_per_delivery() {
    let servers = instances(3, "burst", &[("ops.yaml", HOOK)], &["--workers", "0"]);
    const DELIVERIES: u32 = 30;
    // Every instance gets every delivery, all at once: each delivery is sent three times.
    let answers: Vec<Vec<(String, u16, Vec<String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = servers
            .iter()
            .map(|server| {
                scope.spawn(move || {
                    (0..DELIVERIES)
                        .map(|n| {
                            let id = format!("msg_{n}");
                            let answer = deliver(server, &id, n);
                            (id, answer.status, runs_of(&answer.body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a sender")).collect()
    });
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, status, runs) in answers.into_iter().flatten() {
        assert_eq!(status, 202, "{id}");
        assert_eq!(runs.len(), 1, "{id} made or names one run");
        let earlier = first.entry(id.clone()).or_insert_with(|| runs.clone());
        assert_eq!(*earlier, runs, "{id} was answered with another run by another instance");
    }
    // Every instance lists the same runs: one per delivery.
    for server in &servers {
        let runs = server.api_get("/api/runs?limit=1000");
        let runs = runs.as_array().expect("a list");
        assert_eq!(runs.len(), DELIVERIES as usize, "one run per delivery, seen from {}", server.url);
    }
}

#[test]
fn a_cron_schedule_fired_by_three_instances_makes_one_run_per_slot() {
    // Every second, so several slots pass in seconds; the slot's event id is what admits
    // one run, whatever the period.
    let tick = r#"
name: tick
trigger:
  cron: { schedule: "* * * * * *" }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  prompt: "Tick"
"#;
    let mut servers = instances(3, "cron", &[("tick.yaml", tick)], &["--workers", "0"]);
    let started = Instant::now();
    loop {
        let runs = servers[0].api_get("/api/runs?limit=1000");
        if runs.as_array().expect("a list").len() >= 8 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "too few runs after {PATIENCE:?}:\n{}", servers[0].log());
        std::thread::sleep(Duration::from_millis(200));
    }
    for server in &mut servers {
        assert!(server.stop(), "{}", server.log());
    }
    // Read after every instance stopped: no later run can join the count.
    let rows = cluster()
        .psql("cron", "SELECT e FROM nightshift_runs, jsonb_array_elements_text(convert_from(doc, 'UTF8')::jsonb->'event_ids') AS e")
        .expect("the runs' events");
    let mut per_slot: BTreeMap<&str, usize> = BTreeMap::new();
    for event in rows.lines() {
        *per_slot.entry(event).or_default() += 1;
    }
    assert!(per_slot.len() >= 8, "{per_slot:?}");
    for (slot, count) in &per_slot {
        assert!(slot.starts_with("cron:"), "{slot}");
        assert_eq!(*count, 1, "slot {slot} made {count} runs");
    }
}

/// `dir/upstream`: a repository with one commit on `main`.
fn upstream_in(dir: &std::path::Path) -> std::path::PathBuf {
    let upstream = dir.join("upstream");
    std::fs::create_dir_all(&upstream).expect("mkdir");
    std::fs::write(upstream.join("README"), "hello\n").expect("write");
    super::git::git(&upstream, &["init", "-q", "--initial-branch=main"]);
    super::git::commit_all(&upstream, "initial");
    upstream
}

/// A repository to work on and a project whose `sleeper` agent sleeps until killed.
fn sleeper_world() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("a directory");
    let upstream = upstream_in(dir.path());
    let project = dir.path().join("nightshift.yaml");
    std::fs::write(
        &project,
        "profiles:\n  sleeper:\n    command: [\"sh\", \"-c\", \"exec sleep 6029\"]\n    output: generic\n",
    )
    .expect("write");
    let automation = format!(
        "name: slow\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: sleeper\n  repo: {}\n  base: main\n  prompt: \"Take your time\"\n",
        upstream.display()
    );
    (dir, project.display().to_string(), automation)
}

fn duty_holder(db: &str) -> String {
    cluster().psql(db, "SELECT holder FROM nightshift_maintenance WHERE name = 'lease sweep'").expect("the duty's row")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "{what} did not happen in {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_instance_killed_mid_run_has_its_run_rescued_and_its_maintenance_taken_over() {
    let (world, project, automation) = sleeper_world();
    let work = world.path().join("work").display().to_string();
    let files = [("slow.yaml", automation.as_str())];
    let runner_args =
        ["--config", &project, "--work-dir", &work, "--workers", "1", "--lease", "3s", "--sandbox", "off"];
    let mut first = instances(1, "rescue", &files, &runner_args).remove(0);
    let run = super::workers::trigger(&first, "slow", 1);
    super::workers::wait_for(&first, &run, &["running"]);
    // Alone, the first instance sweeps leases.
    wait_until("the first instance taking the lease sweep", || !duty_holder("rescue").is_empty());
    let first_holder = duty_holder("rescue");
    let second =
        instances(1, "rescue", &[("slow.yaml", automation.as_str())], &["--config", &project, "--workers", "0"])
            .remove(0);

    first.kill();
    // The lease (3 s) ends, the duty's row (15 s) expires, the second instance sweeps.
    let record = super::workers::wait_for(&second, &run, &["queued"]);
    assert_eq!(record["run"]["attempt"], 1, "{record:#}");
    let timeline = record["activities"].to_string();
    assert!(timeline.contains("lease"), "the timeline says the lease ended: {timeline}");
    let holder = duty_holder("rescue");
    assert!(!holder.is_empty() && holder != first_holder, "the sweep moved from {first_holder} to {holder}");
    let _ = std::process::Command::new("pkill").args(["-f", "sleep 6029"]).status();
}

#[test]
fn the_database_stopping_under_load_gives_503s_then_everything_resumes_with_nothing_lost() {
    // A cluster of its own, which the others' tests keep running; committing to disk, as
    // a production database does, since stopping it `immediate` loses what only sat in
    // its memory.
    let own = Cluster::start_with(true).expect("a cluster");
    let url = own.database("outage").expect("a database");
    let server =
        Serving::start_with_args(&[("ops.yaml", HOOK)], &[("OPS_TOKEN", TOKEN)], &["--store", &url, "--workers", "0"]);
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let refusals = std::sync::Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let started = Instant::now();
            for n in 0..100_000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() > Duration::from_secs(150) {
                    break;
                }
                let id = format!("load_{n}");
                let answer = deliver(&server, &id, n);
                match answer.status {
                    202 => acknowledged
                        .lock()
                        .unwrap()
                        .push(answer.body["events"][0]["event_id"].as_str().expect("an id").to_string()),
                    other => refusals.lock().unwrap().push((other, answer.retry_after, answer.body.to_string())),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        wait_until("deliveries acknowledged", || acknowledged.lock().unwrap().len() >= 20);
        own.stop_server().expect("the database stops");
        let down_at = Instant::now();
        wait_until("/healthz saying the database is unreachable", || {
            let health = server.get("/healthz");
            health.status == 503 && health.body["problem"].as_str().is_some_and(|why| why.contains("unreachable"))
        });
        while down_at.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let during = acknowledged.lock().unwrap().len();
        own.start_server().expect("the database starts again");
        wait_until("deliveries acknowledged again", || acknowledged.lock().unwrap().len() > during + 20);
        wait_until("/healthz ok again", || server.get("/healthz").status == 200);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().expect("the sender");
    });
    let refusals = refusals.into_inner().unwrap();
    assert!(!refusals.is_empty(), "the outage refused some deliveries");
    for (status, retry_after, body) in &refusals {
        assert_eq!(*status, 503, "an outage is never a 4xx: {body}");
        assert!(retry_after.is_some(), "a 503 says when to retry: {body}");
    }
    let stored = own.psql("outage", "SELECT id FROM nightshift_events").expect("the events");
    let stored: std::collections::BTreeSet<&str> = stored.lines().collect();
    for id in acknowledged.into_inner().unwrap() {
        assert!(stored.contains(id.as_str()), "acknowledged {id} is missing");
    }
}

#[test]
fn on_postgres_a_run_is_worked_and_the_board_metrics_and_cli_see_it() {
    let dir = tempfile::tempdir().expect("a directory");
    let upstream = upstream_in(dir.path());
    let script = dir.path().join("writer.sh");
    std::fs::write(
        &script,
        "echo done > DONE && git add DONE && git -c user.name=A -c user.email=a@example.com commit -qm done\n\
         echo '{\"type\":\"summary\",\"text\":\"wrote it\"}'\n",
    )
    .expect("write");
    let project = dir.path().join("nightshift.yaml");
    let agent = format!("profiles:\n  writer:\n    command: [\"sh\", \"{}\"]\n    output: generic\n", script.display());
    std::fs::write(&project, agent).expect("write");
    let automation = format!(
        "name: write\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: writer\n  repo: {}\n  base: main\n  branch: \"nightshift/write-{{{{ event.n }}}}\"\n  push: true\n  prompt: \"Write it\"\nmemory:\n  after_run: 'memory.set(\"last\", \"seen\")'\n",
        upstream.display()
    );
    let work = dir.path().join("work").display().to_string();
    let project = project.display().to_string();
    let server = instances(
        1,
        "whole",
        &[("write.yaml", automation.as_str())],
        &["--config", &project, "--work-dir", &work, "--workers", "1", "--sandbox", "off"],
    )
    .remove(0);
    let run = super::workers::trigger(&server, "write", 1);
    let record = super::workers::wait_for(&server, &run, &["succeeded", "failed"]);
    assert_eq!(record["run"]["state"], "succeeded", "{record:#}\n{}", server.log());
    assert_eq!(super::git::git(&upstream, &["show", "nightshift/write-1:DONE"]).trim(), "done");
    assert!(record["activities"].as_array().is_some_and(|a| !a.is_empty()), "a timeline");
    let memory = server.api_get("/api/automations/write/memory");
    assert_eq!(memory["last"]["value"], "seen", "memory written with the run's completion: {memory:#}");
    // The board's page and its list, the metrics, and the CLI through the API.
    assert_eq!(server.get("/").status, 200);
    let summary = server.api_get("/api/runs?view=summary");
    assert_eq!(summary[0]["id"], run.as_str(), "{summary:#}");
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.url)).expect("metrics").text().expect("text");
    assert!(metrics.contains("succeeded"), "{metrics}");
    let listed = super::follow_ups::nightshift(&server, &["runs"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&run), "`nightshift runs` lists the run through the API:\n{listed}");
    let logs = super::follow_ups::nightshift(&server, &["logs", &run]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
}

#[test]
fn migrate_store_copies_an_embedded_store_into_an_empty_database_and_refuses_a_full_one() {
    use nightshift::pipeline::Audience;
    use nightshift::runs::{ActivityKind, Completion, MemoryChange, MemoryWrite, NewActivity, RunResult};
    use nightshift::store::{PgStore, RunFilter, SledStore, Store};
    let data = tempfile::tempdir().expect("a directory");
    let (first, second) = {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(SledStore::open(data.path()).expect("open"));
        let pipeline = super::store::pipeline_over("{{ event.title }}", "", store.clone());
        let ingest = |id: &str, secs| {
            let event = super::store::event(id, serde_json::json!({"title": id}), secs);
            pipeline.ingest(event, Audience::Everyone, super::store::at(secs)).expect("ingest").outcome.runs[0].run
        };
        let first = ingest("a", 0);
        let claim = store.claim("w", Duration::from_secs(60), super::store::at(1)).expect("claim").expect("a run");
        let note = NewActivity { kind: ActivityKind::Progress, text: "looked".into(), data: Value::Null };
        store.append_activity(first, claim.lease.epoch, note, super::store::at(2)).expect("activity");
        store.append_log(first, claim.lease.epoch, "some output\n", super::store::at(2)).expect("log");
        let write = MemoryWrite {
            key: "k".into(),
            change: MemoryChange::Set { value: "v".into(), expires_at: None },
            untrusted: false,
        };
        let done = Completion::Succeeded { result: RunResult { summary: "ok".into(), ..RunResult::default() } };
        store.complete(first, claim.lease.epoch, done, vec![write], super::store::at(3)).expect("complete");
        (first, ingest("b", 4))
    };
    let url = cluster().database("migrated").expect("a database");
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .args(["migrate-store", "--from"])
            .arg(data.path())
            .args(["--to", &url])
            .output()
            .expect("migrate-store runs")
    };
    // sled's background flusher lets go of the directory's lock a moment after the store
    // is dropped.
    let started = Instant::now();
    let unlocked = || loop {
        let out = migrate();
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("in use") {
            break out;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the store stayed locked");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = unlocked();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("copied 2 runs, 2 events"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let sled = SledStore::open(data.path()).expect("open");
    let pg = PgStore::open(&url).expect("open");
    assert_eq!(pg.runs(&RunFilter::default()).expect("runs"), sled.runs(&RunFilter::default()).expect("runs"));
    assert_eq!(pg.activities(first).expect("activities"), sled.activities(first).expect("activities"));
    assert_eq!(pg.log(first, 0).expect("log"), sled.log(first, 0).expect("log"));
    assert_eq!(pg.event("manual:a").expect("event"), sled.event("manual:a").expect("event"));
    let now = super::store::at(5);
    assert_eq!(pg.memory("probe", now).expect("memory"), sled.memory("probe", now).expect("memory"));
    // Ids go on after the copied ones; the queued run is claimed from the database.
    let claim = pg.claim("w", Duration::from_secs(60), now).expect("claim").expect("the queued run");
    assert_eq!(claim.run.id, second);
    assert!(claim.lease.epoch > sled.run(first).expect("read").expect("the run").epoch);

    drop(sled);
    let again = unlocked();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds runs"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
