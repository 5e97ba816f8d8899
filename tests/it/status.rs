//! `GET /api/status` and `nightshift status` against a real `serve`: queued runs waiting
//! for different reasons (concurrency, overlapping paths, backoff, approval, next in
//! line) say so, with the workers holding leases and each automation's triggers, hook
//! readiness, next cron fires, recent runs and memory.

use serde_json::{Value, json};

use crate::serving::Serving;
use crate::workers::trigger;

/// A manual automation on repository `/srv/git/{repo}` that may change `paths`, with
/// `extra` YAML at the top level.
fn automation(name: &str, repo: &str, paths: &str, extra: &str) -> String {
    format!(
        "name: {name}\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: codex\n  repo: /srv/git/{repo}\n  base: main\n  \
         branch: \"nightshift/{name}-{{{{ event.n }}}}\"\n  paths: {paths}\n  prompt: go\n{extra}"
    )
}

const NIGHTLY: &str = "name: nightly\ntrigger:\n  cron: { schedule: \"0 3 * * *\" }\ntask:\n  agent: codex\n  \
                       repo: /srv/git/nightly\n  base: main\n  branch: nightshift/nightly\n  prompt: sweep\n";

const GUARDED: &str = "name: guarded\ntrigger:\n  webhook:\n    auth: { bearer: { token: env:STATUS_TEST_UNSET_TOKEN } }\n\
                       task:\n  agent: codex\n  repo: /srv/git/guarded\n  base: main\n  branch: nightshift/guarded\n  \
                       prompt: go\n";

/// Claims the next run as remote worker `w` and returns its id and epoch.
fn claim(server: &Serving) -> (String, Value) {
    let claim = server.worker_post("t", "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 600}));
    assert_eq!(claim.status, 200, "{:?}", claim.body);
    (claim.body["run"]["id"].as_str().unwrap().to_string(), claim.body["lease"]["epoch"].clone())
}

fn complete(server: &Serving, run: &str, epoch: &Value, completion: Value) {
    let body = json!({"epoch": epoch, "completion": completion});
    let answer = server.worker_post("t", &format!("/api/worker/runs/{run}/complete"), &body);
    assert_eq!(answer.status, 204, "{:?}", answer.body);
}

/// A server with a run awaiting approval, one in backoff, one running (solo) and three
/// queued behind or beside it; returns the server and the runs by role.
fn busy_server() -> (Serving, Vec<(&'static str, String)>) {
    let files = [
        ("solo.yaml", automation("solo", "shop", "['src/**']", "concurrency: { limit: 1 }\n")),
        ("docs.yaml", automation("docs", "shop", "['src/lib.rs']", "")),
        ("planner.yaml", automation("planner", "plans", "[]", "")),
        ("flaky.yaml", automation("flaky", "flaky", "[]", "retry: { attempts: 3, backoff: 1h }\n")),
        ("free.yaml", automation("free", "free", "[]", "")),
        ("nightly.yaml", NIGHTLY.to_string()),
        ("guarded.yaml", GUARDED.to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(name, text)| (*name, text.as_str())).collect();
    let server = Serving::start_with_args(&files, &[], &["--workers", "0", "--worker-token", "t"]);

    let planner = trigger(&server, "planner", 1);
    let (claimed, epoch) = claim(&server);
    assert_eq!(claimed, planner);
    complete(&server, &planner, &epoch, json!({"outcome": "plan_ready", "plan": "1. fix"}));

    let flaky = trigger(&server, "flaky", 1);
    let (claimed, epoch) = claim(&server);
    assert_eq!(claimed, flaky);
    complete(&server, &flaky, &epoch, json!({"outcome": "failed", "reason": "exit 1", "retryable": true}));

    let solo = trigger(&server, "solo", 1);
    assert_eq!(claim(&server).0, solo);
    let solo_again = trigger(&server, "solo", 2);
    let docs = trigger(&server, "docs", 1);
    let free = trigger(&server, "free", 1);
    let runs = vec![
        ("planner", planner),
        ("flaky", flaky),
        ("solo", solo),
        ("solo_again", solo_again),
        ("docs", docs),
        ("free", free),
    ];
    (server, runs)
}

fn run<'a>(runs: &'a [(&str, String)], role: &str) -> &'a str {
    &runs.iter().find(|(name, _)| *name == role).unwrap().1
}

#[test]
fn api_status_says_why_each_run_waits_and_who_holds_what() {
    let (server, runs) = busy_server();
    let status = server.api_get("/api/status");

    assert_eq!(status["counts"]["queued"], 4, "{status:#}");
    assert_eq!(status["counts"]["leased"], 1);
    assert_eq!(status["counts"]["awaiting_approval"], 1);
    assert_eq!(status["counts"]["succeeded"], 0);
    assert_eq!(status["queue_depth"], 4);

    let active = status["active"].as_array().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["id"], run(&runs, "solo"));
    assert_eq!(active[0]["branch"], "nightshift/solo-1");
    assert!(active[0]["worker"].as_str().unwrap().starts_with("w@"), "{active:#?}");
    assert!(active[0]["lease_expires_at"].is_string());

    let why: Vec<(String, String)> = status["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| (run["id"].as_str().unwrap().to_string(), run["why"]["reason"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("flaky", "backoff"),
        ("solo_again", "concurrency"),
        ("docs", "paths_overlap"),
        ("free", "next_in_line"),
        ("planner", "awaiting_approval"),
    ]
    .iter()
    .map(|(role, reason)| (run(&runs, role).to_string(), reason.to_string()))
    .collect();
    assert_eq!(why, expected, "{status:#}");
    let docs = status["waiting"].as_array().unwrap().iter().find(|r| r["id"] == run(&runs, "docs")).unwrap();
    assert_eq!(docs["why"]["run"], run(&runs, "solo"));
    assert_eq!(docs["why"]["text"], format!("paths overlap with {}", run(&runs, "solo")));

    let workers = &status["workers"];
    assert_eq!(workers["local"], 0);
    let seen = workers["seen"].as_array().unwrap();
    assert_eq!(seen.len(), 1, "{workers:#}");
    assert_eq!(seen[0]["remote"], true);
    assert!(
        seen[0]["last_claim_at"].as_str().is_some_and(|at| at.parse::<chrono::DateTime<chrono::Utc>>().is_ok()),
        "{workers:#}"
    );
    assert_eq!(seen[0]["leases"][0]["run"], run(&runs, "solo"));

    let automation = |name: &str| -> Value {
        status["automations"].as_array().unwrap().iter().find(|a| a["name"] == name).cloned().unwrap()
    };
    let nightly = automation("nightly");
    assert_eq!(nightly["triggers"][0]["kind"], "cron");
    assert_eq!(nightly["triggers"][0]["schedule"], "0 3 * * *");
    assert_eq!(nightly["triggers"][0]["next_fires"].as_array().unwrap().len(), 3);
    let guarded = automation("guarded");
    assert_eq!(guarded["triggers"][0]["hook"], "guarded");
    assert!(
        guarded["triggers"][0]["hook_problem"].as_str().unwrap().contains("STATUS_TEST_UNSET_TOKEN"),
        "{guarded:#}"
    );
    assert_eq!(automation("solo")["recent_runs"].as_array().unwrap().len(), 2);
    assert!(automation("free")["triggers"][0].get("hook_problem").is_none());

    // A long queue is counted whole but listed only as far as asked (default 100).
    let all = status["waiting"].as_array().unwrap().len();
    assert_eq!(status["waiting_total"], all, "{status:#}");
    let first = server.api_get("/api/status?waiting=1");
    assert_eq!(first["waiting"].as_array().unwrap().len(), 1);
    assert_eq!(first["waiting"][0]["id"], status["waiting"][0]["id"], "the first in claim order");
    assert_eq!(first["waiting_total"], all);

    // An automation lists only its newest RECENT_RUNS runs, newest first.
    let newer: Vec<String> = (2..=7).map(|n| trigger(&server, "free", n)).collect();
    let status = server.api_get("/api/status");
    let free = status["automations"].as_array().unwrap().iter().find(|a| a["name"] == "free").unwrap().clone();
    let recent: Vec<&str> = free["recent_runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> =
        newer.iter().rev().take(nightshift::server::status::RECENT_RUNS).map(String::as_str).collect();
    assert_eq!(recent, expected);
}

#[test]
fn api_status_needs_the_token_and_judges_backoff_at_the_given_time() {
    let (server, runs) = busy_server();
    let refused = server.get("/api/status");
    assert_eq!(refused.status, 401);
    // Two hours on, the retry's backoff is over: it is next in line (the oldest).
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = server.api_get(&format!("/api/status?now={later}"));
    let flaky = status["waiting"].as_array().unwrap().iter().find(|r| r["id"] == run(&runs, "flaky")).unwrap();
    assert_eq!(flaky["why"]["reason"], "next_in_line", "{status:#}");
}

fn nightshift_status(server: &Serving, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("status")
        .arg("--data")
        .arg(&server.data)
        .args(args)
        .env_remove("NIGHTSHIFT_API_TOKEN")
        .output()
        .expect("run nightshift status")
}

#[test]
fn nightshift_status_prints_a_line_per_run_with_its_worker_or_why_it_waits() {
    let (server, runs) = busy_server();
    let out = nightshift_status(&server, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("1 awaiting_approval, 4 queued, 1 leased  queue depth 4"), "{text}");
    let line = |role: &str| -> String {
        let id = run(&runs, role);
        text.lines().find(|line| line.split_whitespace().next() == Some(id)).unwrap_or_default().to_string()
    };
    assert!(line("solo").contains("nightshift/solo-1") && line("solo").contains("w@"), "{text}");
    assert!(line("solo").contains("lease ends in"), "{text}");
    assert!(line("flaky").contains("backoff until"), "{text}");
    assert!(line("solo_again").contains("concurrency: 1 of 1 running in group solo"), "{text}");
    assert!(line("docs").contains(&format!("paths overlap with {}", run(&runs, "solo"))), "{text}");
    assert!(line("free").contains("next in line"), "{text}");
    assert!(line("planner").contains("awaits approval"), "{text}");
    assert!(text.contains("workers: 0 local\n  w"), "{text}");

    let out = nightshift_status(&server, &["--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("--json prints the API's answer");
    assert_eq!(json["queue_depth"], 4);

    // Another way to name the server: its URL and token.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["status", "--json", "--server", &server.url])
        .env("NIGHTSHIFT_API_TOKEN", &server.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["status", "--server", &server.url, "--token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn nightshift_status_without_a_server_says_how_to_start_one() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("status")
        .arg("--data")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no running nightshift serve found") && stderr.contains("serve.json"), "{stderr}");
}

#[test]
fn nightshift_status_watch_redraws_until_stopped() {
    use std::io::Read;
    let (server, runs) = busy_server();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("status")
        .arg("--data")
        .arg(&server.data)
        .args(["--watch", "--interval", "0.1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // Read until three frames came (or the pipe closes).
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while String::from_utf8_lossy(&seen).matches("\x1b[2J").count() < 3 {
            match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    // The frames come within a generous bound, or the child is stopped and the test fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = reader.join().unwrap();
    let frames: Vec<&str> = text.split("\x1b[2J\x1b[H").filter(|frame| !frame.is_empty()).collect();
    assert!(frames.len() >= 3, "{text}");
    assert!(frames.iter().all(|frame| frame.contains(run(&runs, "docs"))), "{text}");
}
