//! Delivery through a real `nightshift serve`: a Slack message's run replies in its thread
//! and edits that reply at the end with the pull request it opened; a GitHub pull
//! request's run comments, edits the comment and opens a draft pull request; and with the
//! receivers down, serve killed with SIGKILL and restarted, each message arrives once.
//! One loopback fake plays Slack's Web API, GitHub's REST API and a webhook receiver: it
//! checks each request's shape (method, path, headers, token, JSON body), answers as they
//! do, and records what arrives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::git::{commit_all, git};
use super::serving::{Serving, hmac_hex};
use super::workers::{record, wait_for};

const SLACK_TOKEN: &str = "xoxb-serve-test";
const GITHUB_TOKEN: &str = "ghp_serve-test";
const SLACK_SIGNING: &str = "slack-signing-secret";
const GITHUB_SECRET: &str = "github-hook-secret";
const PUBLIC_URL: &str = "http://nightshift.test";
/// How long a test waits for messages to arrive before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The path under the fake's `/slack`, `/github` or `/hook`.
    path: String,
    body: Value,
    webhook_id: Option<String>,
    /// What the fake answered.
    status: u16,
}

/// A message the fake Slack holds.
#[derive(Debug, Clone)]
struct SlackMessage {
    ts: String,
    channel: String,
    thread_ts: Option<String>,
    text: String,
    /// `metadata.event_payload.message_id`, as nightshift sets it.
    message_id: String,
}

/// A comment or pull request the fake GitHub holds.
#[derive(Debug, Clone)]
struct Item {
    id: u64,
    repo: String,
    body: String,
    html_url: String,
    head: String,
}

#[derive(Default)]
struct State {
    /// Down: every request is answered 503.
    down: bool,
    seen: Vec<Seen>,
    /// Requests whose shape was wrong (answered 400).
    problems: Vec<String>,
    slack: Vec<SlackMessage>,
    comments: Vec<Item>,
    pulls: Vec<Item>,
}

/// The fake on a loopback port, served from a thread of its own.
struct Fake {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fake {
    fn start(down: bool) -> Fake {
        let state = Arc::new(Mutex::new(State { down, ..State::default() }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, address) = std::sync::mpsc::channel();
        let shared = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(move |request: Request| {
                    let state = Arc::clone(&shared);
                    async move { answer(&state, request).await }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let address = address.recv_timeout(Duration::from_secs(10)).expect("the fake listens");
        Fake { url: format!("http://{address}"), state, stop: Some(stop), thread: Some(thread) }
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The accepted requests as `METHOD path`.
    fn accepted(&self) -> Vec<String> {
        self.seen().iter().filter(|s| s.status < 300).map(|s| format!("{} {}", s.method, s.path)).collect()
    }

    fn slack(&self) -> Vec<SlackMessage> {
        self.state.lock().unwrap().slack.clone()
    }

    fn comments(&self) -> Vec<Item> {
        self.state.lock().unwrap().comments.clone()
    }

    fn pulls(&self) -> Vec<Item> {
        self.state.lock().unwrap().pulls.clone()
    }

    fn assert_no_problems(&self) {
        let problems = self.state.lock().unwrap().problems.clone();
        assert!(problems.is_empty(), "requests of the wrong shape: {problems:#?}");
    }

    /// nightshift.yaml's settings that point Slack and GitHub here.
    fn settings(&self) -> Value {
        json!({
            "slack": { "api_url": format!("{}/slack/", self.url) },
            "github": { "api_url": format!("{}/github/", self.url) },
            "notify": { "allow_private_targets": true },
        })
    }

    /// Waits until `done` holds for what arrived; fails with what did.
    fn wait_until(&self, what: &str, server: &Serving, done: impl Fn(&Fake) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what} never happened; the fake saw: {:#?}\n{}",
                self.seen(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Checks a request, records it, and answers as Slack, GitHub or a webhook receiver would.
async fn answer(state: &Mutex<State>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let body: Value =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    let method = parts.method.to_string();
    let full = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let mut state = state.lock().unwrap();
    let (status, reply) = if state.down {
        (503, json!({ "message": "down" }))
    } else if let Some(path) = full.strip_prefix("/slack/") {
        let auth = header("authorization").as_deref() == Some(&*format!("Bearer {SLACK_TOKEN}"));
        let json_post =
            method == "POST" && header("content-type").as_deref() == Some("application/json; charset=utf-8");
        let lookup = method == "GET" && path.starts_with("conversations.");
        if !auth || !(json_post || lookup) {
            state.problems.push(format!("{method} {full}: auth {auth}, content-type {:?}", header("content-type")));
            (400, json!({ "ok": false, "error": "invalid_request" }))
        } else {
            slack(&mut state, path, &query, &body)
        }
    } else if let Some(path) = full.strip_prefix("/github/") {
        let checks = [
            ("authorization", header("authorization").as_deref() == Some(&*format!("Bearer {GITHUB_TOKEN}"))),
            ("accept", header("accept").as_deref() == Some("application/vnd.github+json")),
            ("x-github-api-version", header("x-github-api-version").as_deref() == Some("2022-11-28")),
            ("user-agent", header("user-agent").is_some_and(|agent| agent.starts_with("nightshift/"))),
            (
                "content-type",
                !matches!(method.as_str(), "POST" | "PATCH")
                    || header("content-type").as_deref() == Some("application/json"),
            ),
        ];
        let bad: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
        if bad.is_empty() {
            github(&mut state, &method, path, &query, &body)
        } else {
            state.problems.push(format!("{method} {full}: bad {bad:?}"));
            (400, json!({ "message": format!("bad {bad:?}") }))
        }
    } else if full == "/hook" && method == "POST" && header("webhook-id").is_some() {
        (200, Value::Null)
    } else {
        state.problems.push(format!("{method} {full}: not a path the fake serves"));
        (404, json!({ "message": "Not Found" }))
    };
    let webhook_id = header("webhook-id");
    let path = full.trim_start_matches("/slack/").trim_start_matches("/github/").to_string();
    state.seen.push(Seen { method, path, body, webhook_id, status });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(reply.to_string()))
        .unwrap()
}

/// Slack's Web API: `chat.postMessage`, `chat.update`, and the lookups of an unsure try.
fn slack(state: &mut State, method: &str, query: &str, body: &Value) -> (u16, Value) {
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_string);
    match method {
        "chat.postMessage" => {
            let (Some(channel), Some(message)) = (text("channel"), text("text")) else {
                state.problems.push(format!("chat.postMessage without channel or text: {body}"));
                return (200, json!({ "ok": false, "error": "invalid_arguments" }));
            };
            let message_id = body.pointer("/metadata/event_payload/message_id").and_then(Value::as_str);
            let ts = format!("1800000000.{:06}", state.slack.len() + 1);
            state.slack.push(SlackMessage {
                ts: ts.clone(),
                channel: channel.clone(),
                thread_ts: text("thread_ts"),
                text: message,
                message_id: message_id.unwrap_or_default().to_string(),
            });
            (200, json!({ "ok": true, "channel": channel, "ts": ts }))
        }
        "chat.update" => {
            let (channel, ts) = (text("channel"), text("ts"));
            match state.slack.iter_mut().find(|m| Some(&m.channel) == channel.as_ref() && Some(&m.ts) == ts.as_ref()) {
                Some(message) => {
                    message.text = text("text").unwrap_or_default();
                    (200, json!({ "ok": true, "channel": channel, "ts": ts }))
                }
                None => (200, json!({ "ok": false, "error": "message_not_found" })),
            }
        }
        "conversations.replies" | "conversations.history" => {
            let pairs: BTreeMap<String, String> = url_pairs(query);
            let messages: Vec<Value> = state
                .slack
                .iter()
                .filter(|m| Some(&m.channel) == pairs.get("channel"))
                .filter(|m| method == "conversations.history" || m.thread_ts.as_ref() == pairs.get("ts"))
                .map(|m| {
                    json!({ "ts": m.ts, "text": m.text, "metadata": {
                        "event_type": "nightshift_run", "event_payload": { "message_id": m.message_id } } })
                })
                .collect();
            (200, json!({ "ok": true, "messages": messages }))
        }
        other => {
            state.problems.push(format!("Slack method {other} is not one nightshift uses"));
            (200, json!({ "ok": false, "error": "unknown_method" }))
        }
    }
}

/// GitHub's REST API: issue comments (post, list, edit) and pull requests (open, list).
fn github(state: &mut State, method: &str, path: &str, query: &str, body: &Value) -> (u16, Value) {
    let parts: Vec<&str> = path.split('/').collect();
    let item = |item: &Item| json!({ "id": item.id, "number": item.id, "html_url": item.html_url, "body": item.body });
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_string);
    match (method, parts.as_slice()) {
        ("POST", ["repos", owner, name, "issues", number, "comments"]) => {
            let id = 9000 + state.comments.len() as u64 + 1;
            let repo = format!("{owner}/{name}");
            let html_url = format!("https://github.test/{repo}/issues/{number}#issuecomment-{id}");
            let comment = Item { id, repo, body: text("body").unwrap_or_default(), html_url, head: String::new() };
            state.comments.push(comment.clone());
            (201, item(&comment))
        }
        ("GET", ["repos", owner, name, "issues", _, "comments"]) => {
            let repo = format!("{owner}/{name}");
            (200, state.comments.iter().filter(|c| c.repo == repo).map(item).collect())
        }
        ("PATCH", ["repos", owner, name, "issues", "comments", id]) => {
            let repo = format!("{owner}/{name}");
            match state.comments.iter_mut().find(|c| c.repo == repo && c.id.to_string() == *id) {
                Some(comment) => {
                    comment.body = text("body").unwrap_or_default();
                    (200, item(comment))
                }
                None => (404, json!({ "message": "Not Found" })),
            }
        }
        ("POST", ["repos", owner, name, "pulls"]) => {
            let number = 70 + state.pulls.len() as u64 + 1;
            let repo = format!("{owner}/{name}");
            let html_url = format!("https://github.test/{repo}/pull/{number}");
            let (Some(head), Some(_), Some(_), Some(_)) = (text("head"), text("base"), text("title"), text("body"))
            else {
                state.problems.push(format!("a pull request without head, base, title or body: {body}"));
                return (422, json!({ "message": "Validation Failed" }));
            };
            let pull = Item { id: number, repo, body: text("body").unwrap_or_default(), html_url, head };
            state.pulls.push(pull.clone());
            (201, item(&pull))
        }
        ("GET", ["repos", owner, name, "pulls"]) => {
            let repo = format!("{owner}/{name}");
            let head = url_pairs(query).get("head").cloned().unwrap_or_default();
            let found: Vec<Value> = state
                .pulls
                .iter()
                .filter(|p| p.repo == repo && head == format!("{owner}:{}", p.head))
                .map(item)
                .collect();
            (200, Value::Array(found))
        }
        _ => {
            state.problems.push(format!("{method} {path}: not a GitHub call nightshift makes"));
            (404, json!({ "message": "Not Found" }))
        }
    }
}

fn url_pairs(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// An upstream repository (the runs' git remote) and the fixture agent, which commits a
/// file and reports a summary.
struct World {
    dir: tempfile::TempDir,
}

const AGENT: &str = r#"#!/bin/sh
set -e
cat "$1" >> fixed.txt
git add -A
git -c user.name=Agent -c user.email=agent@example.com commit -qm "agent: $NIGHTSHIFT_RUN_ID"
echo '{"type":"summary","text":"fixed the cart for run '"$NIGHTSHIFT_RUN_ID"'"}'
"#;

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        std::fs::write(upstream.join("README.md"), "fixture\n").unwrap();
        git(&upstream, &["init", "-q"]);
        commit_all(&upstream, "initial");
        std::fs::write(dir.path().join("agent.sh"), AGENT).unwrap();
        World { dir }
    }

    fn upstream(&self) -> PathBuf {
        self.dir.path().join("upstream")
    }

    /// `nightshift.yaml`: the fixture profile and the fake's settings.
    fn project(&self, fake: &Fake) -> PathBuf {
        let mut project = fake.settings();
        project["profiles"] = json!({
            "fixture": {
                "command": ["sh", self.dir.path().join("agent.sh"), "{prompt_file}"],
                "output": "generic",
                "sandbox": { "paths": [{ "path": self.dir.path() }] },
            }
        });
        let path = self.dir.path().join("nightshift.yaml");
        std::fs::write(&path, serde_yaml::to_string(&project).unwrap()).unwrap();
        path
    }

    /// The task every automation here runs: the fixture agent on the upstream, pushed.
    fn task(&self, branch: &str) -> String {
        format!(
            "task:\n  agent: fixture\n  repo: {}\n  base: main\n  branch: \"{branch}\"\n  push: true\n  \
             prompt: \"Fix it for {{{{ event.id }}}}\"\n",
            self.upstream().display()
        )
    }

    fn serve(&self, fake: &Fake, files: &[(&str, &str)]) -> Serving {
        let project = self.project(fake);
        let args = ["--config", project.to_str().unwrap(), "--work-dir", "work", "--workers", "2"];
        let args = [&args[..], &["--public-url", PUBLIC_URL]].concat();
        let env = [
            ("SLACK_BOT_TOKEN", SLACK_TOKEN),
            ("GITHUB_TOKEN", GITHUB_TOKEN),
            ("SLACK_SIGNING", SLACK_SIGNING),
            ("GITHUB_SECRET", GITHUB_SECRET),
        ];
        Serving::start_with_args(files, &env, &args)
    }
}

/// The one run the server has.
fn only_run(server: &Serving) -> String {
    let runs = server.runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    runs[0]["id"].as_str().unwrap().to_string()
}

/// The run's `notify` activities.
fn notify_activities(server: &Serving, run: &str) -> Vec<String> {
    let activities = record(server, run)["activities"].as_array().cloned().unwrap_or_default();
    activities.iter().filter(|a| a["kind"] == "notify").map(|a| a["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_slack_message_gets_a_reply_in_its_thread_edited_at_the_end_with_the_pull_request() {
    let fake = Fake::start(false);
    let world = World::new();
    let automation = format!(
        "name: slack-fix\ntrigger:\n  slack: {{ signing_secret: env:SLACK_SIGNING, events: [message], pattern: \"^bug:\" }}\n\
         {}notify:\n  - slack: {{}}\n  - github_pull_request: {{ repo: acme/api }}\n",
        world.task("fix/slack-{{ slug(event.ts) }}")
    );
    let server = world.serve(&fake, &[("slack-fix.yaml", &automation)]);

    let message_ts = "1763852000.000200";
    let body = json!({
        "type": "event_callback", "event_id": "Ev0SERVE1", "team_id": "T1",
        "event": { "type": "message", "channel": "C0BUGS", "user": "U1", "text": "bug: the cart is empty", "ts": message_ts },
    })
    .to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = format!("v0={}", hmac_hex(SLACK_SIGNING, &[format!("v0:{timestamp}:{body}").as_bytes()]));
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Slack-Request-Timestamp", timestamp.as_str()),
        ("X-Slack-Signature", signature.as_str()),
    ];
    let answer = server.post("/hooks/slack-fix", &headers, body);
    assert!(answer.status < 300, "{answer:?}");
    let run = only_run(&server);
    let done = wait_for(&server, &run, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{}", server.log());
    fake.wait_until("the pull request and the edit", &server, |fake| {
        fake.accepted().iter().any(|request| request == "POST chat.update")
    });
    fake.assert_no_problems();

    // The start: one reply in the message's thread, with the run and its link.
    let posts: Vec<SlackMessage> = fake.slack();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let post = &posts[0];
    assert_eq!((post.channel.as_str(), post.thread_ts.as_deref()), ("C0BUGS", Some(message_ts)));
    assert_eq!(post.message_id, format!("{run}-0-start"));
    // The end edited that reply (chat.update with the ts Slack gave), after the pull request
    // was opened, so it carries its link; the start and the pull request go in either order.
    let mut accepted = fake.accepted();
    assert_eq!(accepted.pop().as_deref(), Some("POST chat.update"), "{accepted:#?}");
    accepted.sort();
    assert_eq!(accepted, ["POST chat.postMessage", "POST repos/acme/api/pulls"], "{accepted:#?}");
    let update = fake.seen().into_iter().find(|s| s.path == "chat.update").unwrap();
    assert_eq!((update.body["channel"].as_str(), update.body["ts"].as_str()), (Some("C0BUGS"), Some(post.ts.as_str())));
    let branch = format!("fix/slack-{}", message_ts.replace('.', "-"));
    let pull = &fake.pulls()[0];
    let end = &post.text;
    for part in ["succeeded", &branch, "(pushed)", &pull.html_url, &format!("fixed the cart for run {run}")] {
        assert!(end.contains(part), "the end lacks {part:?}: {end}");
    }
    // The pull request: a draft from the pushed branch into main, with the summary and link.
    let opened = fake.seen().into_iter().find(|s| s.path == "repos/acme/api/pulls").unwrap();
    assert_eq!((opened.body["head"].as_str(), opened.body["base"].as_str()), (Some(branch.as_str()), Some("main")));
    assert_eq!(opened.body["draft"], true);
    let link = format!("{PUBLIC_URL}/api/runs/{run}");
    for part in [&format!("fixed the cart for run {run}"), &link] {
        assert!(pull.body.contains(part.as_str()), "the pull request's body lacks {part:?}: {}", pull.body);
    }
    assert!(git(&world.upstream(), &["branch", "--list", &branch]).contains(&branch), "the branch was not pushed");
    let record = record(&server, &run);
    assert_eq!(record["run"]["result"]["details"]["pull_request"], pull.html_url.as_str(), "{record:#}");
    // Each message's try is on the run's timeline (the edit's once its answer is recorded).
    let deadline = Instant::now() + PATIENCE;
    while notify_activities(&server, &run).len() < 3 {
        assert!(Instant::now() < deadline, "{:#?}", notify_activities(&server, &run));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(notify_activities(&server, &run).len(), 3, "{:#?}", notify_activities(&server, &run));
}

#[test]
fn a_pull_request_gets_a_comment_edited_at_the_end_and_a_draft_pull_request() {
    let fake = Fake::start(false);
    let world = World::new();
    let automation = format!(
        "name: review\ntrigger:\n  github: {{ secret: env:GITHUB_SECRET, events: [pull_request.opened] }}\n\
         {}notify:\n  - github_comment: {{}}\n  - github_pull_request: {{}}\n",
        world.task("review/pr-{{ event.number }}")
    );
    let server = world.serve(&fake, &[("review.yaml", &automation)]);
    let body = std::fs::read_to_string(super::repo_root().join("tests/data/github/pull_request_opened.json")).unwrap();
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[body.as_bytes()]));
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "pull_request"),
        ("X-GitHub-Delivery", "72d3162e-serve-notify"),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    let answer = server.post("/hooks/review", &headers, body);
    assert_eq!(answer.status, 202, "{answer:?}");
    let run = only_run(&server);
    let done = wait_for(&server, &run, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{}", server.log());
    fake.wait_until("the comment's edit", &server, |fake| {
        fake.accepted().iter().any(|request| request.starts_with("PATCH "))
    });
    fake.assert_no_problems();

    let comments = fake.comments();
    assert_eq!(comments.len(), 1, "one comment, edited: {comments:#?}");
    let comment = &comments[0];
    // The start's comment and the pull request may go in either order; the edit goes last.
    let mut accepted = fake.accepted();
    let edit = format!("PATCH repos/acme/shop/issues/comments/{}", comment.id);
    assert_eq!(accepted.pop(), Some(edit), "{accepted:#?}");
    accepted.sort();
    assert_eq!(accepted, ["POST repos/acme/shop/issues/1347/comments", "POST repos/acme/shop/pulls"], "{accepted:#?}");
    let started = fake.seen().into_iter().find(|s| s.method == "POST" && s.path.ends_with("/comments")).unwrap();
    let link = format!("{PUBLIC_URL}/api/runs/{run}");
    let start = started.body["body"].as_str().unwrap();
    assert!(start.contains("is working on this") && start.contains(&link), "{start}");
    let pull = &fake.pulls()[0];
    let summary = format!("fixed the cart for run {run}");
    for part in ["succeeded", summary.as_str(), pull.html_url.as_str()] {
        assert!(comment.body.contains(part), "the edited comment lacks {part:?}: {}", comment.body);
    }
    let opened = fake.seen().into_iter().find(|s| s.path == "repos/acme/shop/pulls").unwrap();
    assert_eq!(opened.body["head"], "review/pr-1347");
    assert_eq!(opened.body["base"], "main");
    assert_eq!(opened.body["draft"], true, "a draft by default");
    for part in [summary.as_str(), link.as_str()] {
        assert!(pull.body.contains(part), "the pull request's body lacks {part:?}: {}", pull.body);
    }
    assert!(git(&world.upstream(), &["branch", "--list", "review/pr-1347"]).contains("review/pr-1347"));
}

#[test]
fn with_the_receivers_down_a_killed_and_restarted_engine_delivers_each_message_once() {
    const RUNS: usize = 3;
    let fake = Fake::start(true);
    let world = World::new();
    let webhook = format!("{}/hook", fake.url);
    let automation = format!(
        "name: told\ntrigger:\n  manual: {{}}\n{}notify:\n  - slack: {{ channel: C0OPS }}\n  - webhook: {{ url: \"{webhook}\" }}\n",
        world.task("told/{{ event.n }}")
    );
    let server = world.serve(&fake, &[("told.yaml", &automation)]);
    let runs: Vec<String> = (0..RUNS as u32).map(|n| super::workers::trigger(&server, "told", n)).collect();
    for run in &runs {
        let done = wait_for(&server, run, &["succeeded", "failed"]);
        assert_eq!(done["run"]["state"], "succeeded", "{done:#}");
    }
    // Every message that may go was tried and refused: each run's Slack start and webhook
    // end (the Slack end waits for its start).
    let tried = |fake: &Fake, id: &str| {
        fake.seen().iter().any(|s| {
            s.status == 503
                && (s.webhook_id.as_deref() == Some(id)
                    || s.body.pointer("/metadata/event_payload/message_id").and_then(Value::as_str) == Some(id))
        })
    };
    fake.wait_until("a refused try of every message", &server, |fake| {
        runs.iter().all(|run| tried(fake, &format!("{run}-0-start")) && tried(fake, &format!("{run}-1-end")))
    });
    let mut server = server;
    server.kill();
    let server = server.restart(&[
        ("SLACK_BOT_TOKEN", SLACK_TOKEN),
        ("GITHUB_TOKEN", GITHUB_TOKEN),
        ("SLACK_SIGNING", SLACK_SIGNING),
        ("GITHUB_SECRET", GITHUB_SECRET),
    ]);
    fake.set_down(false);

    // Every message settles: three per run (Slack start and end, the webhook).
    let deadline = Instant::now() + Duration::from_secs(90);
    for run in &runs {
        loop {
            let settled = notify_activities(&server, run).iter().filter(|text| text.contains(": posted")).count();
            if settled == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{run}'s messages did not all arrive: {:#?}\n{:#?}\n{}",
                notify_activities(&server, run),
                fake.seen(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fake.assert_no_problems();
    // Once each: one Slack post per run, edited once, and one webhook per run.
    let seen: Vec<Seen> = fake.seen().into_iter().filter(|s| s.status < 300).collect();
    let posts = fake.slack();
    assert_eq!(posts.len(), RUNS, "{posts:#?}");
    for run in &runs {
        let post: Vec<&SlackMessage> = posts.iter().filter(|p| p.message_id == format!("{run}-0-start")).collect();
        assert_eq!(post.len(), 1, "{run}: {posts:#?}");
        assert!(post[0].text.contains("succeeded"), "{run}'s post was not edited to its end: {:?}", post[0].text);
        let updates = seen.iter().filter(|s| s.path == "chat.update" && s.body["ts"] == post[0].ts.as_str()).count();
        assert_eq!(updates, 1, "{run}: {seen:#?}");
        let hooks = seen.iter().filter(|s| s.webhook_id.as_deref() == Some(&format!("{run}-1-end"))).count();
        assert_eq!(hooks, 1, "{run}: {seen:#?}");
    }
    let posted = seen.iter().filter(|s| s.path == "chat.postMessage").count();
    assert_eq!(posted, RUNS, "{seen:#?}");
}
