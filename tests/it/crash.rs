//! Crash safety: a child process ingests events through the rules into the store and is
//! killed with SIGKILL at random moments; after each reopen every acknowledged event is
//! there and no event has two runs. The same test runs on PostgreSQL (a database that
//! commits to disk), with the child's store a `PgStore`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nightshift::pipeline::Audience;
use nightshift::runs::RunId;
use nightshift::store::postgres::cluster::Cluster;
use nightshift::store::{PgStore, RunFilter, SledStore, Store};
use serde_json::json;

use crate::store::{at, event, pipeline_over};

const DATA_ENV: &str = "NIGHTSHIFT_CRASH_DATA";
const FROM_ENV: &str = "NIGHTSHIFT_CRASH_FROM";
/// A PostgreSQL URL: the child ingests into that database instead of `DATA_ENV`.
const URL_ENV: &str = "NIGHTSHIFT_CRASH_URL";
const PRODUCERS: u64 = 4;
const KILLS: usize = 50;
const LOG_SEGMENT_BYTES: u64 = 8 * 1024;

/// The child's work, started by `acknowledged_events_survive_sigkill`: ingests event
/// ids `FROM`, `FROM+1`, ... from four threads until it is killed, printing each id once
/// its ingest has returned. `FROM` overlaps ids acknowledged before, so deliveries are
/// repeated across crashes.
#[test]
#[ignore = "run as a child process by acknowledged_events_survive_sigkill"]
fn crash_child_ingests_until_killed() {
    let from: u64 = std::env::var(FROM_ENV).expect("first id").parse().expect("number");
    let store: Arc<dyn Store> = match std::env::var(URL_ENV) {
        Ok(url) => Arc::new(PgStore::open(&url).expect("the database opens")),
        Err(_) => {
            let data = std::env::var(DATA_ENV).expect("data dir");
            // Small log segments: the kills also land in rotations and checkpoints.
            Arc::new(SledStore::open_with_log_segment(data.as_ref(), LOG_SEGMENT_BYTES).expect("store opens"))
        }
    };
    let pipeline = Arc::new(pipeline_over("{{ event.title }}", "concurrency: { limit: 10000 }", store));
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|thread| {
            let pipeline = pipeline.clone();
            std::thread::spawn(move || {
                for n in (from + thread..).step_by(PRODUCERS as usize) {
                    let id = format!("d{n}");
                    let report = pipeline
                        .ingest(event(&id, json!({"title": "t"}), 0), Audience::Everyone, at(0))
                        .expect("ingest");
                    let runs: Vec<String> = report.outcome.runs.iter().map(|o| o.run.to_string()).collect();
                    println!("ack {n} {}", runs.join(","));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("producer");
    }
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let deadline = Instant::now() + Duration::from_secs(240);
    // Rounds whose kill left write-ahead log to replay, and more than one segment of it.
    let (mut left_log, mut left_segments) = (0, 0);
    for round in 0..KILLS {
        assert!(Instant::now() < deadline, "50 crash rounds took over 4 minutes (stopped at round {round})");
        let dir = data.path().display().to_string();
        // Kill at a random moment once ingesting is under way.
        kill_round((DATA_ENV, &dir), &mut acknowledged, 1, rng.u64(0..40_000), round);
        let segments = std::fs::read_dir(data.path().join("wal")).map_or(0, |dir| dir.count());
        left_log += usize::from(segments > 0);
        left_segments += usize::from(segments > 1);
        check_store(&data, &acknowledged, round);
    }
    assert!(left_log > KILLS / 2, "only {left_log} kills left a write-ahead log to replay");
    assert!(left_segments > 0, "no kill left more than one log segment ({left_log} left one)");
    eprintln!("kills leaving a log: {left_log}, leaving several segments: {left_segments}");
}

/// Every acknowledged event is stored with the runs it was answered with, and no event
/// has two runs.
fn check_store(data: &tempfile::TempDir, acknowledged: &BTreeMap<u64, String>, round: usize) {
    let store = SledStore::open(data.path()).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    check(&store, acknowledged, round);
}

fn check(store: &dyn Store, acknowledged: &BTreeMap<u64, String>, round: usize) {
    for (n, runs) in acknowledged {
        let stored = store.event(&format!("manual:d{n}")).unwrap();
        let stored = stored.unwrap_or_else(|| panic!("round {round}: acknowledged event d{n} is missing"));
        let ids: Vec<String> = stored.outcomes.iter().map(|o| o.run.to_string()).collect();
        assert_eq!(&ids.join(","), runs, "round {round}: d{n}");
    }
    let mut seen_events = BTreeSet::new();
    let mut run_ids: BTreeSet<RunId> = BTreeSet::new();
    for run in store.runs(&RunFilter::default()).unwrap() {
        assert!(run_ids.insert(run.id));
        for event in &run.event_ids {
            assert!(seen_events.insert(event.clone()), "round {round}: event {event} has two runs");
        }
    }
}

/// Kills on PostgreSQL: fewer rounds (a database survives its client's death by design;
/// what is tested is that nightshift answers only after the commit, and a repeated
/// delivery after a kill is answered with the first outcome).
const PG_KILLS: usize = 10;

#[test]
fn acknowledged_events_survive_sigkill_on_postgres() {
    let cluster = Cluster::start_with(true).expect("a cluster that commits to disk");
    let url = cluster.database("crash").expect("a database");
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(11);
    let deadline = Instant::now() + Duration::from_secs(240);
    for round in 0..PG_KILLS {
        assert!(Instant::now() < deadline, "{PG_KILLS} crash rounds took over 4 minutes (stopped at round {round})");
        kill_round((URL_ENV, &url), &mut acknowledged, 21, rng.u64(0..200_000), round);
        let store = PgStore::open(&url).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        check(&store, &acknowledged, round);
    }
}

/// One crash round: starts the child on the store `store` names (an environment
/// variable and its value), from just before the last acknowledged delivery so some are
/// repeated; kills it `delay_micros` after it acknowledged `acks` deliveries; records
/// what it acknowledged, checking that a repeated delivery got the same runs.
fn kill_round(
    store: (&str, &str),
    acknowledged: &mut BTreeMap<u64, String>,
    acks: usize,
    delay_micros: u64,
    round: usize,
) {
    let from = acknowledged.keys().next_back().map_or(0, |last| last.saturating_sub(10));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::crash_child_ingests_until_killed", "--exact", "--ignored", "--nocapture", "--quiet"])
        .env(store.0, store.1)
        .env(FROM_ENV, from.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (stdout, lines) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let started = Instant::now();
    let acked = || lines.lock().unwrap().iter().filter(|line| line.starts_with("ack ")).count() >= acks;
    while !acked() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_micros(delay_micros));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let mut count = 0;
    for line in lines.iter() {
        let Some(ack) = line.strip_prefix("ack ") else { continue };
        let mut parts = ack.split(' ');
        let (Some(n), Some(runs)) = (parts.next().and_then(|n| n.parse().ok()), parts.next()) else { continue };
        count += 1;
        if let Some(before) = acknowledged.insert(n, runs.to_string()) {
            assert_eq!(before, runs, "round {round}: delivery d{n} was answered with other runs after a crash");
        }
    }
    assert!(count > 0, "round {round}: the child acknowledged nothing:\n{}", lines.join("\n"));
}
