//! `GET /metrics` on a real `nightshift serve`: `promtool check metrics` accepts the body,
//! and the counters move as things happen: signed, unsigned, duplicate and too-large
//! deliveries each count under their outcome; a manual run claimed and completed by a
//! (remote) worker moves runs by state, queue wait and run duration; its network
//! decisions count; its webhook message to a loopback receiver counts as a notify
//! attempt. With a metrics token, a scrape without it gets 401.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::serving::{Serving, hmac_hex};

const GITHUB_SECRET: &str = "metrics-github-secret";
/// How long a test waits for a counter to move before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A manual automation whose runs tell a webhook at `url`.
fn fixer(url: &str) -> String {
    format!(
        "name: fixer\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  \
         base: main\n  branch: \"agent/fix-{{{{ event.n }}}}\"\n  prompt: \"Fix {{{{ event.n }}}}\"\n\
         notify:\n  - webhook: {{ url: \"{url}\" }}\n"
    )
}

/// A webhook receiver on loopback that answers 200 to every request, on a thread of its
/// own; it counts what it got and stops when dropped.
struct Receiver {
    url: String,
    got: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (got, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (counted, stopped) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        if read_request(&mut stream) {
                            counted.fetch_add(1, Ordering::Relaxed);
                            let _ =
                                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver { url, got, stop, thread: Some(thread) }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request's head and its `content-length` body; false if it broke off.
fn read_request(stream: &mut std::net::TcpStream) -> bool {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(read) = stream.read(&mut buffer) else { return false };
        if read == 0 {
            return false;
        }
        bytes.extend_from_slice(&buffer[..read]);
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        if bytes.len() >= end + 4 + length {
            return true;
        }
    }
}

/// The body of `GET /metrics`, with `token` as the bearer if given; asserts a 200 in the
/// Prometheus text format.
fn scrape(server: &Serving, token: Option<&str>) -> String {
    let client = reqwest::blocking::Client::new();
    let mut request = client.get(format!("{}/metrics", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("a scrape");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    response.text().unwrap()
}

/// The value of `series` (its name and labels exactly as written), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Scrapes until `series` is at least `at_least`; returns that scrape.
fn wait_for_value(server: &Serving, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(server, None);
        if value(&text, series) >= at_least {
            return text;
        }
        assert!(Instant::now() < deadline, "`{series}` never reached {at_least}:\n{text}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` on `text`: it must find no problem. Skipped (loudly) where
/// Debian's `prometheus` is not installed, a failure under `.ci/run`.
fn promtool_accepts(text: &str) {
    let Some(promtool) = crate::requires::program("prometheus", &["promtool"]) else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}\n{}{}\non:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pull_request(number: u32) -> String {
    json!({"action": "opened", "number": number, "pull_request": {"number": number, "title": "t"}}).to_string()
}

#[test]
fn promtool_accepts_the_scrape_and_counters_move_with_deliveries_and_runs() {
    let receiver = Receiver::start();
    let project = tempfile::tempdir().unwrap();
    let settings = project.path().join("nightshift.yaml");
    std::fs::write(&settings, "notify: { allow_private_targets: true }\n").unwrap();
    let files = [("pr-review.yaml", crate::hooks::GITHUB.to_string()), ("fixer.yaml", fixer(&receiver.url))];
    let files: Vec<(&str, &str)> = files.iter().map(|(name, text)| (*name, text.as_str())).collect();
    let args = ["--config", settings.to_str().unwrap(), "--workers", "0", "--worker-token", "t", "--max-body", "4096"];
    let server = Serving::start_with_args(&files, &[("GH_SECRET", GITHUB_SECRET)], &args);

    let idle = scrape(&server, None);
    promtool_accepts(&idle);
    assert_eq!(value(&idle, "nightshift_runs{state=\"queued\"}"), 0.0, "{idle}");

    // A manual run, claimed, started and completed by a worker through the worker API.
    let queued = server.api_post("/api/automations/fixer/run", &json!({"n": 1}));
    assert_eq!(queued.status, 202, "{:?}", queued.body);
    let run = queued.body["runs"][0]["run"].as_str().expect("a run").to_string();
    let before = scrape(&server, None);
    assert_eq!(value(&before, "nightshift_runs{state=\"queued\"}"), 1.0, "{before}");
    assert_eq!(value(&before, "nightshift_queue_depth"), 1.0, "{before}");
    let claim = server.worker_post("t", "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 30}));
    assert_eq!(claim.status, 200, "{:?}", claim.body);
    let epoch = claim.body["lease"]["epoch"].clone();
    let call = |action: &str, body: serde_json::Value| {
        let answer = server.worker_post("t", &format!("/api/worker/runs/{run}/{action}"), &body);
        assert_eq!(answer.status, 204, "{action}: {:?}", answer.body);
    };
    call("started", json!({"epoch": epoch}));
    let running = scrape(&server, None);
    assert_eq!(value(&running, "nightshift_runs{state=\"queued\"}"), 0.0, "{running}");
    assert_eq!(value(&running, "nightshift_runs{state=\"running\"}"), 1.0, "{running}");
    assert_eq!(value(&running, "nightshift_queue_wait_seconds_count"), 1.0, "{running}");
    // Its network decisions, as a sandboxed phase reports them.
    let denied = json!({"phase": "agent", "kind": "connect", "host": "evil.example", "port": 443,
        "allowed": false, "rule": "no rule", "count": 3, "first": "2026-01-01T00:00:00Z",
        "last": "2026-01-01T00:00:00Z", "bytes_up": 0, "bytes_down": 0});
    call("activities", json!({"epoch": epoch, "activities": [{"kind": "policy", "text": "denied", "data": denied}]}));
    call("complete", json!({"epoch": epoch, "completion": {"outcome": "succeeded", "result": {"summary": "done"}}}));
    let done = wait_for_value(&server, "nightshift_notify_attempts_total{target=\"webhook\",outcome=\"sent\"}", 1.0);
    assert!(receiver.got.load(Ordering::Relaxed) >= 1);
    assert_eq!(value(&done, "nightshift_runs{state=\"running\"}"), 0.0, "{done}");
    assert_eq!(value(&done, "nightshift_runs{state=\"succeeded\"}"), 1.0, "{done}");
    assert_eq!(value(&done, "nightshift_run_duration_seconds_count{state=\"succeeded\"}"), 1.0, "{done}");
    assert_eq!(value(&done, "nightshift_egress_decisions_total{outcome=\"denied\",kind=\"connect\"}"), 3.0, "{done}");

    // Deliveries: signed, a replay of it, unsigned, and one over --max-body.
    let body = pull_request(7);
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[body.as_bytes()]));
    let signed = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "pull_request"),
        ("X-GitHub-Delivery", "delivery-7"),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    assert_eq!(server.post("/hooks/pr-review", &signed, body.clone()).status, 202);
    assert_eq!(server.post("/hooks/pr-review", &signed, body.clone()).status, 202);
    assert_eq!(server.post("/hooks/pr-review", &signed[..3], body.clone()).status, 401);
    let large = "x".repeat(10_000);
    assert_eq!(server.post("/hooks/pr-review", &signed, large).status, 413);
    assert_eq!(server.post("/hooks/nobody", &signed, body).status, 404);

    let after = scrape(&server, None);
    for (outcome, source) in
        [("accepted", "github"), ("duplicate", "github"), ("unauthorized", "github"), ("too_large", "github")]
    {
        let series = format!("nightshift_deliveries_total{{source=\"{source}\",outcome=\"{outcome}\"}}");
        assert_eq!(value(&after, &series), 1.0, "{series}:\n{after}");
    }
    assert_eq!(value(&after, "nightshift_deliveries_total{source=\"unknown\",outcome=\"refused\"}"), 1.0, "{after}");
    assert!(value(&after, "nightshift_store_syncs_total") >= 1.0, "{after}");
    assert!(value(&after, "nightshift_store_commit_seconds_count") >= 1.0, "{after}");
    promtool_accepts(&after);
}

#[test]
fn a_metrics_token_is_asked_for_once_configured() {
    let server = Serving::start(
        &[("pr-review.yaml", crate::hooks::GITHUB)],
        &[("GH_SECRET", "s"), ("NIGHTSHIFT_METRICS_TOKEN", "m3tr1cs")],
    );
    let status = |token: Option<&str>| {
        let mut request = reqwest::blocking::Client::new().get(format!("{}/metrics", server.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().expect("a scrape").status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("wrong")), 401);
    // The API's token is not the metrics token.
    assert_eq!(status(Some(&server.token)), 401);
    assert!(scrape(&server, Some("m3tr1cs")).contains("nightshift_queue_depth 0"));
}

/// A lease left to expire counts as an expiry and its run, with attempts left, as a
/// retry, and so does a retryable failure; a cron slot that fires observes its lateness.
#[test]
fn expired_leases_retries_and_cron_lateness_are_counted() {
    let ticking = "name: ticking\ntrigger:\n  cron: { schedule: \"* * * * * *\" }\ntask:\n  agent: codex\n  \
                   repo: https://github.com/acme/shop.git\n  base: main\n  branch: \"agent/tick\"\n  prompt: tick\n";
    let server =
        Serving::start_with_args(&[("ticking.yaml", ticking)], &[], &["--workers", "0", "--worker-token", "t"]);
    let fired = wait_for_value(&server, "nightshift_cron_lateness_seconds_count", 1.0);
    assert!(value(&fired, "nightshift_cron_lateness_seconds_sum") >= 0.0, "{fired}");
    // The shortest lease, never renewed: the sweep (every 5 s) finds it expired.
    let claim = server.worker_post("t", "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 2}));
    assert_eq!(claim.status, 200, "{:?}", claim.body);
    let swept = wait_for_value(&server, "nightshift_lease_expiries_total", 1.0);
    assert_eq!(value(&swept, "nightshift_retries_total{cause=\"lease_expired\"}"), 1.0, "{swept}");
    assert_eq!(value(&swept, "nightshift_retries_total{cause=\"failure\"}"), 0.0, "{swept}");
    // Claimed again, its attempt fails in a way worth retrying: a retry of the other cause.
    let again = server.worker_post("t", "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 30}));
    assert_eq!(again.status, 200, "{:?}", again.body);
    let (run, epoch) = (again.body["run"]["id"].as_str().unwrap().to_string(), again.body["lease"]["epoch"].clone());
    let failed = json!({"epoch": epoch, "completion": {"outcome": "failed", "reason": "flaky", "retryable": true}});
    let answer = server.worker_post("t", &format!("/api/worker/runs/{run}/complete"), &failed);
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    let retried = scrape(&server, None);
    assert_eq!(value(&retried, "nightshift_retries_total{cause=\"failure\"}"), 1.0, "{retried}");
    assert_eq!(value(&retried, "nightshift_queue_wait_seconds_count"), 2.0, "{retried}");
    promtool_accepts(&retried);
}
