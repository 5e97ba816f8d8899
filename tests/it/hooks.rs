//! `POST /hooks/{name}` on a real `nightshift serve`: every source's authentication
//! (right, wrong, rotated secrets; stale and future timestamps), handshakes, dedupe of
//! replayed and concurrent deliveries (exactly one run), filters, refused requests that
//! store nothing, hot reload keeping the last good version, and a clean shutdown.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::serving::{Serving, hmac_hex};

/// A GitHub hook signed with `GH_SECRET` (shared with `full_disk.rs`).
pub const GITHUB: &str = r#"
name: pr-review
trigger:
  github:
    secret: env:GH_SECRET
    events: [pull_request.opened]
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "review/pr-{{ event.number }}"
  prompt: "Review {{ event.number }}"
"#;

const SLACK: &str = r#"
name: slack-bugs
trigger:
  slack:
    signing_secret: env:SLACK_SECRET
    channels: [C1]
    pattern: "^bug:"
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "bugfix/slack-{{ slug(event.ts) }}"
  prompt: "Fix {{ untrusted(event.text) }}"
"#;

const PAGERDUTY: &str = r#"
name: incidents
trigger:
  pagerduty:
    secret: env:PD_SECRET
    events: [incident.triggered]
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/incident-{{ event.incident.number }}"
  prompt: "Investigate {{ event.incident.number }}"
"#;

const STANDARD: &str = r#"
name: deploys
trigger:
  webhook:
    auth: { standard: { secret: env:STD_SECRET } }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/deploy-{{ event.n }}"
  prompt: "Check deploy {{ event.n }}"
"#;

const BEARER: &str = r#"
name: bearer-hook
trigger:
  webhook:
    path: ops-bearer
    auth: { bearer: { token: env:BEARER_TOKEN } }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/ops-{{ event.n }}"
  prompt: "Ops {{ event.n }}"
"#;

const BASIC: &str = r#"
name: basic-hook
trigger:
  webhook:
    auth: { basic: { username: ops, password: env:BASIC_PASSWORD } }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/basic-{{ event.n }}"
  prompt: "Basic {{ event.n }}"
"#;

const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn start() -> Serving {
    Serving::start(
        &[
            ("github.yaml", GITHUB),
            ("slack.yaml", SLACK),
            ("pagerduty.yaml", PAGERDUTY),
            ("standard.yaml", STANDARD),
            ("mirror.yaml", &STANDARD.replace("name: deploys", "name: deploys-mirror")),
            ("bearer.yaml", BEARER),
            ("basic.yaml", BASIC),
        ],
        &[
            ("GH_SECRET", "gh-secret"),
            ("SLACK_SECRET", "slack-secret"),
            ("PD_SECRET", "pd-new"),
            ("STD_SECRET", STD_SECRET),
            ("BEARER_TOKEN", "t0ken"),
            ("BASIC_PASSWORD", "pa55"),
        ],
    )
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn github_post(server: &Serving, secret: &str, event: &str, delivery: &str, body: &str) -> crate::serving::Answer {
    let signature = format!("sha256={}", hmac_hex(secret, &[body.as_bytes()]));
    server.post(
        "/hooks/pr-review",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    )
}

fn pull_request(number: u64) -> String {
    json!({"action": "opened", "number": number, "pull_request": {"draft": false}}).to_string()
}

fn run_ids(answer: &crate::serving::Answer) -> Vec<Value> {
    answer.body["run_ids"].as_array().cloned().unwrap_or_default()
}

#[test]
fn github_deliveries_are_authenticated_deduplicated_and_filtered() {
    let server = start();
    let first = github_post(&server, "gh-secret", "pull_request", "d-1", &pull_request(7));
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(run_ids(&first).len(), 1);

    // A retried delivery gets the first answer and stores nothing.
    let again = github_post(&server, "gh-secret", "pull_request", "d-1", &pull_request(7));
    assert_eq!(again.status, 202);
    assert_eq!(again.body["events"][0]["duplicate_delivery"], true);
    assert_eq!(run_ids(&again), run_ids(&first));

    let forged = github_post(&server, "not-the-secret", "pull_request", "d-2", &pull_request(8));
    assert_eq!(forged.status, 401, "{:?}", forged.body);
    assert!(forged.body["error"].as_str().unwrap().contains("signature"));

    let ping = github_post(&server, "gh-secret", "ping", "d-3", r#"{"zen": "Keep it simple.", "hook_id": 1}"#);
    assert_eq!((ping.status, ping.body["ok"].clone()), (200, json!(true)));

    // An event the trigger does not take is acknowledged and not stored.
    let closed = json!({"action": "closed", "number": 9}).to_string();
    let filtered = github_post(&server, "gh-secret", "pull_request", "d-4", &closed);
    assert_eq!(filtered.status, 202);
    assert!(run_ids(&filtered).is_empty());
    assert!(filtered.body["events"][0]["not_matched"][0]["reason"].as_str().unwrap().contains("events"));

    assert_eq!(server.runs().len(), 1);
}

#[test]
fn concurrent_duplicate_deliveries_make_exactly_one_run() {
    let server = start();
    let body = pull_request(42);
    let answers: Vec<crate::serving::Answer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| github_post(&server, "gh-secret", "pull_request", "same-delivery", &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a.status == 202), "{answers:?}");
    let ids: std::collections::BTreeSet<String> = answers.iter().map(|a| run_ids(a)[0].to_string()).collect();
    assert_eq!(ids.len(), 1, "every answer names the one run: {ids:?}");
    assert_eq!(answers.iter().filter(|a| a.body["events"][0]["duplicate_delivery"] == false).count(), 1);
    assert_eq!(server.runs().len(), 1);
}

fn slack_post(server: &Serving, timestamp: i64, body: &str, extra: &[(&str, &str)]) -> crate::serving::Answer {
    let timestamp = timestamp.to_string();
    let basestring = format!("v0:{timestamp}:{body}");
    let signature = format!("v0={}", hmac_hex("slack-secret", &[basestring.as_bytes()]));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Slack-Request-Timestamp", timestamp.as_str()),
        ("X-Slack-Signature", signature.as_str()),
    ];
    headers.extend_from_slice(extra);
    server.post("/hooks/slack-bugs", &headers, body)
}

fn slack_message(event_id: &str, text: &str, bot: bool) -> String {
    let mut inner = json!({"type": "message", "channel": "C1", "user": "U1", "text": text, "ts": "1763852000.000200"});
    if bot {
        inner["bot_id"] = json!("B1");
    }
    json!({"type": "event_callback", "event_id": event_id, "team_id": "T1", "event": inner}).to_string()
}

#[test]
fn slack_handshake_signatures_retries_and_bots() {
    let server = start();
    let challenge = json!({"type": "url_verification", "challenge": "3eZbrw1aB"}).to_string();
    let answer = slack_post(&server, now_secs(), &challenge, &[]);
    assert_eq!((answer.status, answer.body["challenge"].clone()), (200, json!("3eZbrw1aB")));

    let message = slack_message("Ev1", "bug: checkout is broken", false);
    let started = Instant::now();
    let first = slack_post(&server, now_secs(), &message, &[]);
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert!(started.elapsed() < Duration::from_secs(3), "Slack wants an answer within 3 s");
    assert_eq!(run_ids(&first).len(), 1);
    // Slack retries with the same event_id: no second run.
    let retry = slack_post(
        &server,
        now_secs(),
        &message,
        &[("X-Slack-Retry-Num", "1"), ("X-Slack-Retry-Reason", "http_timeout")],
    );
    assert_eq!((retry.status, retry.body["events"][0]["duplicate_delivery"].clone()), (202, json!(true)));

    // Five minutes and one second either way is refused.
    let stale = slack_post(&server, now_secs() - 400, &slack_message("Ev2", "bug: x", false), &[]);
    let future = slack_post(&server, now_secs() + 400, &slack_message("Ev3", "bug: x", false), &[]);
    assert_eq!((stale.status, future.status), (401, 401));
    assert!(stale.body["error"].as_str().unwrap().contains("timestamp"));

    let bot = slack_post(&server, now_secs(), &slack_message("Ev4", "bug: loop", true), &[]);
    assert_eq!(bot.status, 202);
    assert!(run_ids(&bot).is_empty(), "the bot's own messages never start runs");
    assert_eq!(server.runs().len(), 1);
}

#[test]
fn a_slack_mention_delivered_as_message_and_as_app_mention_starts_one_run() {
    let server = start();
    let inner = |kind: &str| {
        json!({"type": kind, "channel": "C1", "user": "U1", "ts": "1763852999.000100",
        "text": "<@U0NIGHTBOT> bug: the cart forgets gift cards"})
    };
    let envelope = |kind: &str, event_id: &str| {
        json!({"type": "event_callback", "event_id": event_id, "team_id": "T1", "event": inner(kind)}).to_string()
    };
    let as_message = slack_post(&server, now_secs(), &envelope("message", "EvM1"), &[]);
    assert_eq!((as_message.status, run_ids(&as_message).len()), (202, 1), "{:?}", as_message.body);
    let as_mention = slack_post(&server, now_secs(), &envelope("app_mention", "EvA1"), &[]);
    assert_eq!(as_mention.status, 202);
    assert_eq!(as_mention.body["events"][0]["duplicate_delivery"], json!(true), "{:?}", as_mention.body);
    assert_eq!(server.runs().len(), 1);
}

fn incident(number: u64) -> String {
    json!({"event": {"id": format!("E{number}"), "event_type": "incident.triggered", "resource_type": "incident",
        "occurred_at": "2026-11-22T10:00:00Z", "data": {"id": format!("Q{number}"), "number": number}}})
    .to_string()
}

#[test]
fn pagerduty_accepts_any_signature_during_rotation_and_dedupes_on_webhook_id() {
    let server = start();
    let body = incident(1);
    let old = hmac_hex("pd-old", &[body.as_bytes()]);
    let new = hmac_hex("pd-new", &[body.as_bytes()]);
    let rotating = format!("v1={old},v1={new}");
    let post = |signatures: &str, webhook_id: &str, body: &str| {
        server.post(
            "/hooks/incidents",
            &[
                ("Content-Type", "application/json"),
                ("X-PagerDuty-Signature", signatures),
                ("X-Webhook-Id", webhook_id),
            ],
            body.to_string(),
        )
    };
    let first = post(&rotating, "wh-1", &body);
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(run_ids(&first).len(), 1);
    assert_eq!(post(&rotating, "wh-1", &body).body["events"][0]["duplicate_delivery"], true);
    assert_eq!(post(&format!("v1={old}"), "wh-2", &incident(2)).status, 401);
    assert_eq!(server.runs().len(), 1);
}

#[test]
fn standard_webhooks_bearer_and_basic() {
    let server = start();
    let key = base64::engine::general_purpose::STANDARD.decode(&STD_SECRET["whsec_".len()..]).unwrap();
    let sign = |id: &str, timestamp: i64, body: &str| {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    };
    let post = |id: &str, timestamp: i64, signature: &str, body: &str| {
        let timestamp = timestamp.to_string();
        server.post(
            "/hooks/deploys",
            &[
                ("Content-Type", "application/json"),
                ("webhook-id", id),
                ("webhook-timestamp", &timestamp),
                ("webhook-signature", signature),
            ],
            body.to_string(),
        )
    };
    let body = r#"{"n": 1}"#;
    let now = now_secs();
    let rotated = format!("v1,b2xkc2lnbmF0dXJl {}", sign("msg_1", now, body));
    assert_eq!(post("msg_1", now, &rotated, body).status, 202);
    assert_eq!(post("msg_1", now, &rotated, body).body["events"][0]["duplicate_delivery"], true, "replayed id");
    // One message sent to two endpoints is a delivery to each.
    let mirrored = server.post(
        "/hooks/deploys-mirror",
        &[
            ("Content-Type", "application/json"),
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &now.to_string()),
            ("webhook-signature", &rotated),
        ],
        body.to_string(),
    );
    assert_eq!((mirrored.status, mirrored.body["events"][0]["duplicate_delivery"].clone()), (202, json!(false)));
    // Well past the 300 s window either way: the server reads its clock a moment later,
    // and the exact boundary is auth.rs's unit tests' business.
    let stale = now - 400;
    assert_eq!(post("msg_2", stale, &sign("msg_2", stale, body), body).status, 401);
    let future = now + 400;
    assert_eq!(post("msg_3", future, &sign("msg_3", future, body), body).status, 401);

    let json_type = ("Content-Type", "application/json");
    assert_eq!(
        server.post("/hooks/ops-bearer", &[json_type, ("Authorization", "Bearer t0ken")], r#"{"n": 2}"#).status,
        202
    );
    assert_eq!(
        server.post("/hooks/ops-bearer", &[json_type, ("Authorization", "Bearer nope")], r#"{"n": 3}"#).status,
        401
    );
    assert_eq!(server.post("/hooks/ops-bearer", &[json_type], r#"{"n": 3}"#).status, 401);
    // The scheme is case-insensitive: Alertmanager sends `type: bearer` as written.
    let lowercase = server.post("/hooks/ops-bearer", &[json_type, ("Authorization", "bearer t0ken")], r#"{"n": 6}"#);
    assert_eq!(lowercase.status, 202);
    let basic = |user: &str, password: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    };
    assert_eq!(
        server.post("/hooks/basic-hook", &[json_type, ("Authorization", &basic("ops", "pa55"))], r#"{"n": 4}"#).status,
        202
    );
    assert_eq!(
        server.post("/hooks/basic-hook", &[json_type, ("Authorization", &basic("ops", "wrong"))], r#"{"n": 5}"#).status,
        401
    );
    assert_eq!(server.runs().len(), 5);
}

#[test]
fn refused_requests_store_nothing_and_the_server_keeps_serving() {
    let server = start();
    let bearer = ("Authorization", "Bearer t0ken");
    let json_type = ("Content-Type", "application/json");

    let oversize = format!(r#"{{"n": "{}"}}"#, "x".repeat(1 << 20));
    let answer = server.post("/hooks/ops-bearer", &[json_type, bearer], oversize);
    assert_eq!(answer.status, 413, "{:?}", answer.body);
    assert!(answer.body["error"].as_str().unwrap().contains("larger than 1048576 bytes"));

    let malformed = server.post("/hooks/ops-bearer", &[json_type, bearer], r#"{"n": "#);
    assert_eq!(malformed.status, 400);
    assert!(malformed.body["error"].as_str().unwrap().contains("not valid JSON"));

    let form = server.post("/hooks/ops-bearer", &[("Content-Type", "text/plain"), bearer], "n=1");
    assert_eq!(form.status, 415);
    assert!(form.body["error"].as_str().unwrap().contains("application/json"));

    let unknown = server.post("/hooks/no-such-hook", &[json_type, bearer], "{}");
    assert_eq!(unknown.status, 404);
    assert!(unknown.body["error"].as_str().unwrap().contains("no hook named `no-such-hook`"));

    assert!(server.runs().is_empty(), "nothing was stored");
    let fine = server.post("/hooks/ops-bearer", &[json_type, bearer], r#"{"n": 1}"#);
    assert_eq!(fine.status, 202);
    assert_eq!(server.runs().len(), 1);
}

fn wait_for(what: &str, server: &Serving, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hot_reload_applies_good_edits_and_keeps_the_last_good_version_on_a_broken_one() {
    let mut server = start();
    let bearer = [("Content-Type", "application/json"), ("Authorization", "Bearer t0ken")];
    let path = server.automations_dir().join("bearer.yaml");

    // A broken edit: the hook keeps working as before, and the problem is logged.
    std::fs::write(&path, BEARER.replace("prompt: \"Ops {{ event.n }}\"", "prompt: \"Ops {{ event.n \"")).unwrap();
    wait_for("the broken edit to be logged", &server, || server.log().contains("last good version keeps running"));
    assert!(server.log().contains("bearer.yaml:"), "the problem names the file:\n{}", server.log());
    assert_eq!(server.post("/hooks/ops-bearer", &bearer, r#"{"n": 1}"#).status, 202);

    // A good edit moves the hook to a new path.
    std::fs::write(&path, BEARER.replace("path: ops-bearer", "path: ops-moved")).unwrap();
    wait_for("the new hook", &server, || server.post("/hooks/ops-moved", &bearer, r#"{"n": 2}"#).status == 202);
    assert_eq!(server.post("/hooks/ops-bearer", &bearer, r#"{"n": 3}"#).status, 404);
    assert!(server.stop(), "SIGTERM ends serve with exit 0:\n{}", server.log());
}

/// A manual automation named `name`.
fn manual(name: &str) -> String {
    format!("name: {name}\ntrigger: {{ manual: {{}} }}\ntask: {{ agent: codex, repo: /srv/x, prompt: hi }}\n")
}

/// The reloads the server has logged, with how many automations each loaded.
fn reloads(server: &Serving) -> Vec<String> {
    server.log().lines().filter(|line| line.contains("automations reloaded")).map(str::to_string).collect()
}

#[test]
fn hot_reload_ignores_other_files_and_coalesces_a_burst() {
    let project_dir = tempfile::tempdir().unwrap();
    let project = project_dir.path().join("nightshift.yaml");
    std::fs::write(&project, "").unwrap();
    let server = Serving::start_with_args(
        &[("one.yaml", &manual("one"))],
        &[],
        &["--workers", "0", "--config", project.to_str().unwrap()],
    );
    let automations = server.automations_dir().to_path_buf();

    // Files beside the automations and the project file that are neither.
    for i in 0..20 {
        std::fs::write(project_dir.path().join("agent.log"), format!("line {i}\n")).unwrap();
        std::fs::write(project_dir.path().join(".nightshift.yaml.swp"), format!("{i}")).unwrap();
        std::fs::write(automations.join("notes.txt"), format!("{i}")).unwrap();
        std::fs::write(automations.join(".two.yaml.swp"), format!("{i}")).unwrap();
    }
    for name in ["agent.log", ".nightshift.yaml.swp", "notes.txt", ".two.yaml.swp"] {
        wait_for("the watcher to see the other files", &server, || {
            server.log().lines().any(|line| line.contains("its changes are ignored") && line.contains(name))
        });
    }
    assert_eq!(reloads(&server), Vec::<String>::new(), "nothing reloaded");
    // Then one automation file, moved into place: exactly one change that matters.
    std::fs::write(automations.join(".two.tmp"), manual("two")).unwrap();
    std::fs::rename(automations.join(".two.tmp"), automations.join("two.yaml")).unwrap();
    wait_for("the new automation to load", &server, || reloads(&server).iter().any(|l| l.contains("automations=2")));
    assert_eq!(reloads(&server).len(), 1, "only the automation file reloads:\n{}", server.log());

    // A burst of writes to automation files loads a bounded number of times.
    for i in 0..30 {
        std::fs::write(automations.join(format!("burst-{i}.yaml")), manual(&format!("burst-{i}"))).unwrap();
    }
    wait_for("the burst to load", &server, || reloads(&server).iter().any(|l| l.contains("automations=32")));
    let count = reloads(&server).len();
    assert!(count <= 6, "{count} reloads for one burst:\n{}", server.log());
}

#[test]
fn the_command_line_reaches_the_store_through_a_running_server() {
    let server = start();
    let nightshift = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .args(args)
            .arg("--data")
            .arg(&server.data)
            .arg("--dir")
            .arg(&server.automations)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fixture = crate::repo_root().join("tests/data/pagerduty/incident_triggered_p1.json");
    let fixture = fixture.to_str().unwrap();
    assert!(nightshift(&["trigger", "incidents", "--event", fixture]).contains("r1 queued  incidents"));
    assert!(nightshift(&["runs"]).contains("incidents"));
    assert!(nightshift(&["show", "r1"]).contains("queued"));
    nightshift(&["memory", "incidents", "set", "last", "\"db pool\""]);
    assert!(nightshift(&["memory", "incidents", "get", "last"]).contains("db pool"));
    let manual = server.post(
        "/api/automations/incidents/run",
        &[("Authorization", &format!("Bearer {}", server.token)), ("Content-Type", "application/json")],
        std::fs::read(fixture).unwrap(),
    );
    assert_eq!(manual.status, 202, "{:?}", manual.body);
    assert_eq!(manual.body["duplicate_delivery"], true, "the same PagerDuty event id");
    let no_token = server.post("/api/automations/incidents/run", &[], "{}");
    assert_eq!(no_token.status, 401);
}

#[test]
fn a_hook_without_its_secret_answers_503_until_a_restart_provides_it() {
    // Set but empty counts as missing: an empty key is one anyone can sign with.
    let server = Serving::start(&[("bearer.yaml", BEARER)], &[("BEARER_TOKEN", "")]);
    let request = [("Content-Type", "application/json"), ("Authorization", "Bearer t0ken")];
    let refused = server.post("/hooks/ops-bearer", &request, r#"{"n": 1}"#);
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.retry_after.is_some());
    assert!(refused.body["error"].as_str().unwrap().contains("env:BEARER_TOKEN is empty"));
    assert!(server.log().contains("env:BEARER_TOKEN is empty"), "the problem is logged at start");

    let server = server.restart(&[("BEARER_TOKEN", "t0ken")]);
    assert_eq!(server.post("/hooks/ops-bearer", &request, r#"{"n": 1}"#).status, 202);
    let server = server.restart(&[("BEARER_TOKEN", "t0ken")]);
    assert_eq!(server.runs().len(), 1, "runs outlive a restart");
}

const ALERTS_BOTH_WAYS: &str = r#"
name: alert-both-ways
trigger:
  alertmanager:
    auth: { bearer: { token: env:AM_TOKEN } }
    statuses: [firing, resolved]
dedupe:
  key: "{{ event.group_key }}"
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/alert-{{ event.status }}"
  prompt: "Alert {{ event.status }}"
"#;

const ALERTS_PER_ALERT: &str = r#"
name: alert-each
trigger:
  alertmanager:
    auth: { bearer: { token: env:AM_TOKEN } }
    per: alert
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/alert-{{ slug(event.alert.labels.instance) }}"
  prompt: "Alert on {{ event.alert.labels.instance }}"
"#;

fn alert_notification(status: &str, instances: &[&str], fingerprints: bool) -> String {
    let alerts: Vec<Value> = instances
        .iter()
        .map(|instance| {
            let mut alert = json!({"status": status, "labels": {"alertname": "DiskFull", "instance": instance},
                "annotations": {}, "startsAt": "2026-11-22T10:00:00Z"});
            if fingerprints {
                alert["fingerprint"] = json!(format!("fp-{instance}"));
            }
            alert
        })
        .collect();
    json!({"version": "4", "groupKey": "{}:{alertname=\"DiskFull\"}", "status": status, "receiver": "nightshift",
        "groupLabels": {"alertname": "DiskFull"}, "commonLabels": {"alertname": "DiskFull"}, "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0, "alerts": alerts})
    .to_string()
}

#[test]
fn a_resolution_deduped_with_its_firing_run_cancels_that_run_and_gets_its_own() {
    let server = Serving::start(
        &[("both.yaml", ALERTS_BOTH_WAYS), ("each.yaml", ALERTS_PER_ALERT)],
        &[("AM_TOKEN", "am-token")],
    );
    let headers = [("Content-Type", "application/json"), ("Authorization", "Bearer am-token")];
    let firing = server.post("/hooks/alert-both-ways", &headers, alert_notification("firing", &["db-1"], true));
    let firing_run = run_ids(&firing);
    assert_eq!(firing_run.len(), 1, "{:?}", firing.body);
    let resolved = server.post("/hooks/alert-both-ways", &headers, alert_notification("resolved", &["db-1"], true));
    assert_eq!(resolved.status, 202, "{:?}", resolved.body);
    assert_eq!(resolved.body["cancelled"], json!(firing_run), "{:?}", resolved.body);
    let resolution_run = run_ids(&resolved);
    assert_eq!(resolution_run.len(), 1, "the resolution has a run of its own: {:?}", resolved.body);
    assert_ne!(resolution_run, firing_run);
    let runs = server.runs();
    let state = |id: &Value| runs.iter().find(|run| run["id"] == *id).map(|run| run["state"].clone());
    assert_eq!(state(&firing_run[0]), Some(json!("cancelled")));
    assert_eq!(state(&resolution_run[0]), Some(json!("queued")));
}

#[test]
fn alerts_without_fingerprints_each_start_a_run_per_alert() {
    let server = Serving::start(&[("each.yaml", ALERTS_PER_ALERT)], &[("AM_TOKEN", "am-token")]);
    let headers = [("Content-Type", "application/json"), ("Authorization", "Bearer am-token")];
    let body = alert_notification("firing", &["db-1", "db-2", "db-3"], false);
    let answer = server.post("/hooks/alert-each", &headers, body.clone());
    assert_eq!(run_ids(&answer).len(), 3, "{:?}", answer.body);
    let repeat = server.post("/hooks/alert-each", &headers, body);
    let duplicates = repeat.body["events"].as_array().unwrap().iter().filter(|e| e["duplicate_delivery"] == true);
    assert_eq!(duplicates.count(), 3, "a repeated notification is a duplicate: {:?}", repeat.body);
    assert_eq!(server.runs().len(), 3);
}

#[test]
fn each_trigger_has_its_own_body_limit_and_github_takes_big_pushes() {
    let small = BEARER.replace("name: bearer-hook", "name: small-hook").replace(
        "auth: { bearer: { token: env:BEARER_TOKEN } }",
        "auth: { bearer: { token: env:BEARER_TOKEN } }\n    max_body: 1000",
    );
    let small = small.replace("path: ops-bearer", "path: small");
    let server = Serving::start(
        &[("github.yaml", GITHUB), ("small.yaml", &small)],
        &[("GH_SECRET", "gh-secret"), ("BEARER_TOKEN", "t0ken")],
    );
    // 1.2 MB: over the old server-wide 1 MiB, well under GitHub's 25 MB.
    let padding = "x".repeat(1_200_000);
    let big = json!({"action": "opened", "number": 7, "pull_request": {"draft": false, "body": padding}}).to_string();
    let answer = github_post(&server, "gh-secret", "pull_request", "big-1", &big);
    assert_eq!(answer.status, 202, "{:?}", answer.body["error"]);
    assert_eq!(run_ids(&answer).len(), 1);

    let headers = [("Content-Type", "application/json"), ("Authorization", "Bearer t0ken")];
    let over = server.post("/hooks/small", &headers, format!(r#"{{"n": "{}"}}"#, "y".repeat(1000)));
    assert_eq!(over.status, 413, "{:?}", over.body);
    assert!(over.body["error"].as_str().unwrap().contains("larger than 1000 bytes"), "{:?}", over.body);
    let fits = server.post("/hooks/small", &headers, r#"{"n": 1}"#);
    assert_eq!(fits.status, 202, "{:?}", fits.body);
    assert_eq!(server.runs().len(), 2);
}
