//! Follow-ups end to end: a real `nightshift serve` with its local workers, a real git
//! repository as the remote, a loopback Slack Web API, and signed Slack events to the
//! server's hook. A reply in a run's thread starts a run on the same branch, from its
//! tip, whose push adds commits; `nightshift follow-up` does the same by hand.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::git::{commit_all, git};
use super::serving::{Serving, hmac_hex};
use super::workers::{record, wait_for};

/// The fixture agent: appends its prompt to `notes.txt`, commits, and reports a summary.
const AGENT: &str = r#"#!/bin/sh
set -e
cat "$1" >> notes.txt
git add -A
git -c user.name=Agent -c user.email=agent@example.com commit -qm "agent: $NIGHTSHIFT_RUN_ID"
echo '{"type":"summary","text":"appended the prompt for '"$NIGHTSHIFT_RUN_ID"'"}'
"#;

/// The thread's first message: the bug report that starts the first run.
const THREAD_TS: &str = "1763852000.000200";

/// One request the fake Slack got: its path and JSON body.
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// A loopback Slack Web API: `chat.postMessage` answers a new `ts` each time, the other
/// methods `ok`. Keeps what arrived.
fn slack_api() -> (u16, Calls) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls: Calls = Arc::default();
    let kept = calls.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().take(200).enumerate() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap_or_default();
                let Some((name, value)) = header.trim_end().split_once(':') else { break };
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let path = line.split(' ').nth(1).unwrap_or_default().to_string();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answer = if path.contains("chat.postMessage") {
                json!({"ok": true, "channel": "C1", "ts": format!("1763853000.{n:06}")})
            } else if path.contains("chat.update") {
                json!({"ok": true, "channel": "C1", "ts": body["ts"]})
            } else {
                json!({"ok": true, "messages": []})
            };
            kept.lock().unwrap().push((path, body));
            let answer = answer.to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                answer.len()
            );
            let _ = (&stream).write_all(format!("{head}{answer}").as_bytes());
        }
    });
    (port, calls)
}

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        std::fs::write(upstream.join("notes.txt"), "notes\n").unwrap();
        git(&upstream, &["init", "-q"]);
        commit_all(&upstream, "initial");
        std::fs::write(dir.path().join("agent.sh"), AGENT).unwrap();
        World { dir }
    }

    fn upstream(&self) -> PathBuf {
        self.dir.path().join("upstream")
    }

    fn project(&self, slack_port: u16) -> PathBuf {
        let project = json!({
            "profiles": {
                "fixture": {
                    "command": ["sh", self.dir.path().join("agent.sh"), "{prompt_file}"],
                    "output": "generic",
                    "sandbox": { "paths": [{ "path": self.dir.path(), "writable": true }] },
                }
            },
            "slack": { "api_url": format!("http://127.0.0.1:{slack_port}/api/"), "token": "env:SLACK_BOT_TOKEN" },
        });
        let path = self.dir.path().join("nightshift.yaml");
        std::fs::write(&path, serde_yaml::to_string(&project).unwrap()).unwrap();
        path
    }

    fn automation(&self) -> String {
        format!(
            r#"name: slack-fix
trigger:
  slack:
    signing_secret: env:SLACK_SECRET
    channels: [C1]
    pattern: "^bug:"
task:
  agent: fixture
  repo: {repo}
  base: main
  branch: "nightshift/slack-{{{{ slug(event.ts) }}}}"
  push: true
  prompt: "Fix {{{{ untrusted(event.text) }}}}"
notify:
  - slack: {{}}
follow_up: {{ window: 1d, queue: 2 }}
"#,
            repo = self.upstream().display()
        )
    }
}

/// POSTs a Slack `message` event, signed with the app's signing secret, to the hook.
fn slack_event(server: &Serving, event_id: &str, inner: Value) -> Value {
    let body = json!({"type": "event_callback", "event_id": event_id, "team_id": "T1", "event": inner}).to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = format!("v0={}", hmac_hex("slack-secret", &[format!("v0:{timestamp}:{body}").as_bytes()]));
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Slack-Request-Timestamp", timestamp.as_str()),
        ("X-Slack-Signature", signature.as_str()),
    ];
    let answer = server.post("/hooks/slack-fix", &headers, body);
    assert!(matches!(answer.status, 200 | 202), "{}: {:?}\n{}", answer.status, answer.body, server.log());
    answer.body
}

fn message(ts: &str, text: &str, thread: Option<&str>) -> Value {
    let mut inner = json!({"type": "message", "channel": "C1", "user": "U1", "text": text, "ts": ts});
    if let Some(thread) = thread {
        inner["thread_ts"] = json!(thread);
    }
    inner
}

/// The run the hook's answer created, if any.
fn created(answer: &Value) -> Option<String> {
    answer["events"][0]["runs"][0]["run"].as_str().map(str::to_string)
}

fn tip(upstream: &Path, branch: &str) -> String {
    git(upstream, &["rev-parse", &format!("refs/heads/{branch}")])
}

fn is_ancestor(upstream: &Path, older: &str, newer: &str) -> bool {
    let status =
        super::git::git_command(upstream, Path::new("/dev/null"), &["merge-base", "--is-ancestor", older, newer])
            .status()
            .unwrap();
    status.success()
}

pub(crate) fn nightshift(server: &Serving, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(args)
        .arg("--data")
        .arg(&server.data)
        .arg("--dir")
        .arg(&server.automations)
        .output()
        .unwrap()
}

#[test]
fn a_thread_reply_follows_up_on_the_same_branch_and_its_push_adds_commits() {
    let world = World::new();
    let (slack_port, calls) = slack_api();
    let project = world.project(slack_port);
    let automation = world.automation();
    let args = ["--config", project.to_str().unwrap(), "--work-dir", "work"];
    let env = [("SLACK_SECRET", "slack-secret"), ("SLACK_BOT_TOKEN", "xoxb-test")];
    let server = Serving::start_with_args(&[("slack-fix.yaml", automation.as_str())], &env, &args);

    // The bug report starts the first run, which pushes its branch.
    let first = slack_event(&server, "Ev1", message(THREAD_TS, "bug: the cart is empty", None));
    let first = created(&first).expect("the bug report starts a run");
    let done = wait_for(&server, &first, &["succeeded"]);
    let branch = done["run"]["task"]["branch"].as_str().unwrap().to_string();
    let upstream = world.upstream();
    let first_tip = tip(&upstream, &branch);

    // A person's reply in its thread starts a follow-up; the same delivery again, and the
    // bot's own reply, start nothing more.
    let reply = message("1763852100.000300", "also fix the footer", Some(THREAD_TS));
    let answer = slack_event(&server, "Ev2", reply.clone());
    let second = created(&answer).unwrap_or_else(|| panic!("the reply starts a follow-up: {answer:#}"));
    let again = slack_event(&server, "Ev2", reply);
    assert_eq!(again["events"][0]["duplicate_delivery"], true, "{again:#}");
    assert_eq!(created(&again).as_deref(), Some(second.as_str()), "one run for one reply");
    let mut bot = message("1763852150.000400", "nightshift is working on this", Some(THREAD_TS));
    bot["bot_id"] = json!("B1");
    assert_eq!(created(&slack_event(&server, "Ev3", bot)), None, "the bot's own message");

    let followed = wait_for(&server, &second, &["succeeded"]);
    let task = &followed["run"]["task"];
    assert_eq!(task["follows"], first.as_str());
    assert_eq!(task["branch"], branch.as_str(), "the same branch");
    let prompt = task["prompt"].as_str().unwrap();
    assert!(prompt.contains(&nightshift::rules::helpers::untrusted(&format!("appended the prompt for {first}"))));
    assert!(prompt.contains(&nightshift::rules::helpers::untrusted("also fix the footer")), "{prompt}");

    // Its workspace started at the first run's tip and its push was a fast-forward: the
    // first run's commit is still on the branch, under the follow-up's.
    let second_tip = tip(&upstream, &branch);
    assert_ne!(second_tip, first_tip);
    assert!(is_ancestor(&upstream, &first_tip, &second_tip), "the first run's commit is kept");
    assert_eq!(git(&upstream, &["rev-parse", &format!("{second_tip}^")]), first_tip, "one commit on top");
    let notes = git(&upstream, &["show", &format!("{second_tip}:notes.txt")]);
    assert!(notes.contains("the cart is empty") && notes.contains("also fix the footer"), "{notes}");

    // The follow-up told the same Slack thread.
    let posts: Vec<Value> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.contains("chat.postMessage"))
        .map(|(_, b)| b.clone())
        .collect();
    assert!(posts.iter().any(|post| post["thread_ts"] == THREAD_TS && post["text"].to_string().contains(&second)));

    // By hand: `nightshift follow-up` through the server's API, and `show` links it.
    let help = nightshift(&server, &["follow-up", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("follow_up.queue"));
    let out = nightshift(&server, &["follow-up", &second, "and the header"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let third = said.split_whitespace().next().unwrap().to_string();
    assert!(said.contains(&format!("a follow-up of {second}")), "{said}");
    wait_for(&server, &third, &["succeeded"]);
    assert_eq!(git(&upstream, &["rev-parse", &format!("{}^", tip(&upstream, &branch))]), second_tip);
    let shown = String::from_utf8_lossy(&nightshift(&server, &["show", &third]).stdout).to_string();
    assert!(shown.contains(&format!("follows     {second}")), "{shown}");
    let missing = nightshift(&server, &["follow-up", "r999", "anything"]);
    assert!(!missing.status.success());
    assert_eq!(record(&server, &third)["run"]["task"]["follows"], second.as_str());
    // The run followed up lists its follow-up among its children (the board shows them).
    let children = record(&server, &second)["children"].clone();
    assert_eq!(children, json!([{"id": third, "role": "follow_up", "index": 0, "state": "succeeded"}]));
}

#[test]
fn follow_ups_past_the_queue_are_refused_with_the_reason() {
    let world = World::new();
    let (slack_port, _calls) = slack_api();
    let project = world.project(slack_port);
    // No workers: every run stays queued.
    let automation = world.automation();
    let args = ["--config", project.to_str().unwrap(), "--work-dir", "work", "--workers", "0"];
    let env = [("SLACK_SECRET", "slack-secret"), ("SLACK_BOT_TOKEN", "xoxb-test")];
    let server = Serving::start_with_args(&[("slack-fix.yaml", automation.as_str())], &env, &args);
    let first = created(&slack_event(&server, "Ev1", message(THREAD_TS, "bug: the cart", None))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answers = Vec::new();
    for n in 0..3 {
        let reply = message(&format!("1763852100.00030{n}"), "more", Some(THREAD_TS));
        answers.push(slack_event(&server, &format!("EvR{n}"), reply));
        assert!(Instant::now() < deadline);
    }
    assert!(created(&answers[0]).is_some() && created(&answers[1]).is_some(), "two may wait: {answers:#?}");
    assert_eq!(created(&answers[2]), None, "the third is refused");
    let reason = answers[2]["events"][0]["not_matched"][0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("follow_up.queue: 2"), "{:#}", answers[2]);
    let by_hand = server.api_post(&format!("/api/runs/{first}/follow-up"), &json!({"text": "one more"}));
    assert_eq!(by_hand.status, 409, "{:?}", by_hand.body);
    assert!(by_hand.body["error"].as_str().unwrap_or_default().contains("follow_up.queue"), "{:?}", by_hand.body);
}

/// The store and pipeline alone, on a fixed clock: a follow-up by hand is a run on its
/// parent's branch that no claim hands out while the parent holds the branch, though
/// its group has room and its `paths` overlap nothing; a run of another branch passes it.
#[test]
fn a_follow_up_waits_while_a_run_of_its_branch_is_going() {
    use nightshift::runs::{Completion, RunResult};
    use nightshift::store::Store;

    use crate::store::{at, event, pipeline_over};

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(nightshift::store::SledStore::open(dir.path()).unwrap());
    let extra = "  paths: []\n  branch: 'nightshift/probe-{{ event.n }}'\nconcurrency: { limit: 5 }\n";
    let pipeline = pipeline_over("{{ event.n }}", extra, Arc::clone(&store));
    let ingest = |id: &str, n: u32, secs: i64| {
        let report =
            pipeline.ingest(event(id, json!({ "n": n }), secs), nightshift::pipeline::Audience::Everyone, at(secs));
        report.unwrap().outcome.runs[0].run
    };
    let first = ingest("1", 1, 0);
    let lease = Duration::from_secs(30);
    let claim = store.claim("w", lease, at(1)).unwrap().expect("the first run");
    assert_eq!(claim.run.id, first);

    let asked = event("f1", json!({"follow_up": first, "text": "more"}), 2);
    let report = pipeline.follow_up_by_hand(first, asked, "more", at(2)).unwrap().expect("a follow-up");
    let follow_up = report.outcome.runs[0].run;
    let task = store.run(follow_up).unwrap().unwrap().task.unwrap();
    assert_eq!((task.follows, task.branch.as_str()), (Some(first), "nightshift/probe-1"));
    assert_eq!(store.claim("w", lease, at(3)).unwrap(), None, "the branch is busy");

    let other = ingest("2", 2, 4);
    assert_eq!(store.claim("w", lease, at(5)).unwrap().map(|c| c.run.id), Some(other), "another branch goes by");
    let done = Completion::Succeeded { result: RunResult { summary: "done".into(), ..Default::default() } };
    store.complete(first, claim.lease.epoch, done, Vec::new(), at(6)).unwrap();
    assert_eq!(store.claim("w", lease, at(7)).unwrap().map(|c| c.run.id), Some(follow_up), "then the follow-up");
}

/// A GitHub comment with the phrase, by someone who can push, on the pull request a run
/// commented on, is a follow-up on the run's branch, though the trigger does not take
/// `issue_comment` events; without the phrase, or by a bot, it is any other event.
#[test]
fn a_pull_request_comment_with_the_phrase_follows_up_the_run_that_commented() {
    use nightshift::pipeline::{Audience, Pipeline};
    use nightshift::store::Store;
    use nightshift::triggers::TriggerKind;

    let automation = r#"name: pr-fix
trigger:
  github:
    secret: env:GH_SECRET
    events: [pull_request.opened]
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "fix/pr-{{ event.number }}"
  push: true
  prompt: "Fix {{ event.number }}"
notify:
  - github_comment: {}
follow_up: { phrase: "@nightshift please" }
"#;
    let automations = crate::temp_dir_with(&[("pr-fix.yaml", automation)]);
    let (catalog, diagnostics) = crate::load(automations.path());
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let data = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(nightshift::store::SledStore::open(data.path()).unwrap());
    let pipeline = Pipeline::new(Arc::new(catalog), Arc::clone(&store));
    let now = crate::store::at(0);
    let github = |kind: &str, delivery: &str, payload: Value| {
        let headers =
            [("x-github-event".to_string(), kind.to_string()), ("x-github-delivery".to_string(), delivery.to_string())];
        let event = nightshift::event::Event::from_delivery(TriggerKind::Github, payload, headers.into(), now);
        pipeline.ingest(event, Audience::Subscriber("pr-fix"), now).unwrap()
    };
    let opened = json!({"action": "opened", "number": 7, "pull_request": {"number": 7},
                        "repository": {"full_name": "acme/shop"}});
    let first = github("pull_request", "d1", opened).outcome.runs[0].run;
    assert_eq!(store.thread_run("github:acme/shop#7").unwrap(), Some(first));

    let comment = |body: &str, user_type: &str| {
        json!({"action": "created", "issue": {"number": 7, "pull_request": {}}, "repository": {"full_name": "Acme/Shop"},
               "comment": {"body": body, "author_association": "MEMBER", "user": {"login": "x", "type": user_type}}})
    };
    let asked = github("issue_comment", "d2", comment("@NightShift please rename it too", "User"));
    let second = asked.outcome.runs.first().map(|outcome| outcome.run).expect("a follow-up");
    let task = store.run(second).unwrap().unwrap().task.unwrap();
    assert_eq!((task.follows, task.branch.as_str()), (Some(first), "fix/pr-7"));
    assert!(task.prompt.contains(&nightshift::rules::helpers::untrusted("@NightShift please rename it too")));
    assert_eq!(store.thread_run("github:acme/shop#7").unwrap(), Some(second), "the thread's newest run");

    for (delivery, payload) in [("d3", comment("looks good", "User")), ("d4", comment("@nightshift please", "Bot"))] {
        let other = github("issue_comment", delivery, payload);
        assert!(other.outcome.runs.is_empty(), "{other:?}");
        assert!(other.not_matched[0].reason.contains("not in `events`"), "{other:?}");
    }

    // Retention that deletes the thread's runs forgets the thread.
    for run in [first, second] {
        store.cancel(run, "done with", now).unwrap();
    }
    store.apply_retention(&nightshift::config::Retention { runs: 0, days: 30 }, now).unwrap();
    assert_eq!(store.thread_run("github:acme/shop#7").unwrap(), None);
}
