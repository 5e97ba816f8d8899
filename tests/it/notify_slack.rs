//! The Slack transport against a loopback Slack Web API that checks and records every
//! request: posts in the thread, edits at the end, rate limits, refusals, the unsure
//! start's lookup and neutralised agent text.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use nightshift::config::SecretRef;
use nightshift::delivery::slack::Client;
use nightshift::delivery::{Attempt, Kind, Message, Outcome, Posted, Report, Target};
use serde_json::{Value, json};

const TOKEN: &str = "xoxb-test-token";

/// One request as the fake Slack saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

/// What the fake Slack answers to a request: status, headers, JSON body.
type Reply = Arc<dyn Fn(&Seen) -> (u16, Vec<(&'static str, String)>, Value) + Send + Sync>;

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    reply: Reply,
}

/// A fake Slack Web API on a loopback port.
struct Slack {
    api_url: reqwest::Url,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Slack {
    async fn start(reply: impl Fn(&Seen) -> (u16, Vec<(&'static str, String)>, Value) + Send + Sync + 'static) -> Self {
        let fake = Fake { seen: Arc::default(), reply: Arc::new(reply) };
        let seen = fake.seen.clone();
        let router = axum::Router::new().fallback(record).with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve the fake Slack");
        });
        let api_url = format!("http://{address}/api/").parse().unwrap();
        Self { api_url, seen, server }
    }

    fn client(&self) -> Client {
        Client::new(reqwest::Client::new(), self.api_url.clone())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Slack {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(fake): State<Fake>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).map(|value| value.to_str().unwrap().to_string());
    let seen = Seen {
        method,
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("a JSON body") },
    };
    let (status, extra, answer) = (fake.reply)(&seen);
    fake.seen.lock().unwrap().push(seen);
    let mut response = (StatusCode::from_u16(status).unwrap(), answer.to_string()).into_response();
    response.headers_mut().insert("content-type", "application/json; charset=utf-8".parse().unwrap());
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// A 200 with `answer`.
fn ok(answer: Value) -> (u16, Vec<(&'static str, String)>, Value) {
    (200, Vec::new(), answer)
}

fn target(thread_ts: Option<&str>) -> Target {
    Target::Slack {
        channel: "C0123".to_string(),
        thread_ts: thread_ts.map(str::to_string),
        token: SecretRef::Env("SLACK_TOKEN".to_string()),
    }
}

fn report() -> Report {
    Report {
        run: "r-42".to_string(),
        automation: "fix-bugs".to_string(),
        state: "running".to_string(),
        summary: None,
        reason: None,
        repo: "acme/api".to_string(),
        base: "main".to_string(),
        branch: "nightshift/fix-bugs/r-42".to_string(),
        pushed: false,
        pull_request: None,
        link: Some("https://ns.example/api/runs/r-42".to_string()),
    }
}

fn attempt(kind: &str, unsure: bool) -> Attempt {
    Attempt { message_id: format!("r-42-0-{kind}"), number: 1, unsure }
}

fn message<'a>(
    target: &'a Target,
    kind: Kind,
    report: &'a Report,
    earlier: Option<&'a Posted>,
    attempt: &'a Attempt,
) -> Message<'a> {
    Message { target, kind, report, earlier, attempt, secret: Some(TOKEN) }
}

/// A JSON POST to `method` with the bot token, as Slack's Web API takes it.
fn assert_json_post(seen: &Seen, method: &str) {
    assert_eq!(seen.method, Method::POST, "{seen:?}");
    assert_eq!(seen.path, format!("/api/{method}"), "{seen:?}");
    assert_eq!(seen.authorization.as_deref(), Some(&*format!("Bearer {TOKEN}")), "{seen:?}");
    assert_eq!(seen.content_type.as_deref(), Some("application/json; charset=utf-8"), "{seen:?}");
}

fn text(seen: &Seen) -> &str {
    seen.body["text"].as_str().expect("a text field")
}

#[tokio::test]
async fn the_start_is_posted_in_the_thread_and_the_end_edits_it_with_the_pull_request() {
    let slack = Slack::start(|seen| match seen.path.as_str() {
        "/api/chat.postMessage" => {
            ok(json!({"ok": true, "channel": "C0123", "ts": "1700000000.000200", "message": {}}))
        }
        "/api/chat.update" => ok(json!({"ok": true, "channel": "C0123", "ts": "1700000000.000200", "text": "x"})),
        _ => (404, Vec::new(), json!({"ok": false, "error": "unknown_method"})),
    })
    .await;
    let client = slack.client();
    let target = target(Some("1700000000.000100"));
    let mut report = report();

    let start = attempt("start", false);
    let outcome = client.send(&message(&target, Kind::Start, &report, None, &start)).await;
    let posted = Posted { id: "1700000000.000200".into(), channel: Some("C0123".into()), url: None };
    assert_eq!(outcome, Outcome::Sent(posted.clone()));

    report.state = "succeeded".to_string();
    report.pushed = true;
    report.summary = Some("Fixed the off-by-one in the pager.".to_string());
    report.pull_request = Some("https://github.example/acme/api/pull/7".to_string());
    let end = attempt("end", false);
    let outcome = client.send(&message(&target, Kind::End, &report, Some(&posted), &end)).await;
    assert_eq!(outcome, Outcome::Sent(posted));

    let seen = slack.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_json_post(&seen[0], "chat.postMessage");
    let body = &seen[0].body;
    assert_eq!(body["channel"], "C0123");
    assert_eq!(body["thread_ts"], "1700000000.000100");
    assert_eq!(body["unfurl_links"], false);
    assert_eq!(body["unfurl_media"], false);
    assert_eq!(
        body["metadata"],
        json!({"event_type": "nightshift_run", "event_payload": {"message_id": "r-42-0-start"}})
    );
    assert!(body.get("link_names").is_none() && body.get("parse").is_none(), "{body}");
    let start_text = text(&seen[0]);
    assert!(start_text.contains("*fix-bugs* is working on this: run `r-42`"), "{start_text}");
    assert!(start_text.contains("`nightshift/fix-bugs/r-42`"), "{start_text}");
    assert!(start_text.contains("<https://ns.example/api/runs/r-42|View the run>"), "{start_text}");

    assert_json_post(&seen[1], "chat.update");
    assert_eq!(seen[1].body["channel"], "C0123");
    assert_eq!(seen[1].body["ts"], "1700000000.000200");
    let end_text = text(&seen[1]);
    assert!(end_text.contains("succeeded: run `r-42`"), "{end_text}");
    assert!(end_text.contains("`nightshift/fix-bugs/r-42` (pushed)"), "{end_text}");
    assert!(end_text.contains("Pull request: <https://github.example/acme/api/pull/7|"), "{end_text}");
    assert!(end_text.contains("> Fixed the off-by-one in the pager."), "{end_text}");
}

#[tokio::test]
async fn a_429_with_retry_after_is_a_retry_after_that_many_seconds() {
    let slack =
        Slack::start(|_| (429, vec![("retry-after", "7".to_string())], json!({"ok": false, "error": "ratelimited"})))
            .await;
    let (target, report, start) = (target(None), report(), attempt("start", false));
    let outcome = slack.client().send(&message(&target, Kind::Start, &report, None, &start)).await;
    assert!(
        matches!(outcome, Outcome::Retry { after: Some(after), .. } if after == Duration::from_secs(7)),
        "{outcome:?}"
    );
    assert_eq!(slack.seen().len(), 1);
}

#[tokio::test]
async fn slack_faults_are_retried() {
    for (status, answer) in [(200, json!({"ok": false, "error": "internal_error"})), (503, json!({}))] {
        let slack = Slack::start(move |_| (status, Vec::new(), answer.clone())).await;
        let (target, report, start) = (target(None), report(), attempt("start", false));
        let outcome = slack.client().send(&message(&target, Kind::Start, &report, None, &start)).await;
        assert!(matches!(outcome, Outcome::Retry { after: None, .. }), "{status}: {outcome:?}");
    }
}

#[tokio::test]
async fn invalid_auth_fails_with_a_plain_reason() {
    let slack = Slack::start(|_| ok(json!({"ok": false, "error": "invalid_auth"}))).await;
    let (target, report, start) = (target(None), report(), attempt("start", false));
    let outcome = slack.client().send(&message(&target, Kind::Start, &report, None, &start)).await;
    assert_eq!(
        outcome,
        Outcome::Failed { why: "Slack refused the token (invalid_auth): check the target's token".to_string() }
    );
}

#[tokio::test]
async fn an_unsure_start_finds_the_earlier_post_and_does_not_post_again() {
    let slack = Slack::start(|seen| match seen.path.as_str() {
        "/api/conversations.replies" => ok(json!({"ok": true, "has_more": false, "messages": [
            {"type": "message", "ts": "1700000000.000100", "text": "bug: the pager is off by one"},
            {"type": "message", "ts": "1700000000.000150", "text": "an earlier run",
             "metadata": {"event_type": "nightshift_run", "event_payload": {"message_id": "r-41-0-start"}}},
            {"type": "message", "ts": "1700000000.000200", "text": "working",
             "metadata": {"event_type": "nightshift_run", "event_payload": {"message_id": "r-42-0-start"}}},
        ]})),
        _ => ok(json!({"ok": true, "channel": "C0123", "ts": "1700000000.000300"})),
    })
    .await;
    let (target, report, start) = (target(Some("1700000000.000100")), report(), attempt("start", true));
    let outcome = slack.client().send(&message(&target, Kind::Start, &report, None, &start)).await;
    assert_eq!(
        outcome,
        Outcome::Sent(Posted { id: "1700000000.000200".into(), channel: Some("C0123".into()), url: None })
    );
    let seen = slack.seen();
    assert_eq!(seen.len(), 1, "posted again: {seen:?}");
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].path, "/api/conversations.replies");
    assert_eq!(seen[0].authorization.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    for pair in ["channel=C0123", "ts=1700000000.000100", "include_all_metadata=true"] {
        assert!(seen[0].query.split('&').any(|part| part == pair), "{pair} in {}", seen[0].query);
    }
}

#[tokio::test]
async fn an_unsure_start_that_finds_nothing_posts() {
    let slack = Slack::start(|seen| match seen.path.as_str() {
        "/api/conversations.history" => ok(json!({"ok": true, "messages": [{"ts": "1.0", "text": "hello"}]})),
        _ => ok(json!({"ok": true, "channel": "C0123", "ts": "1700000000.000300"})),
    })
    .await;
    let (target, report, start) = (target(None), report(), attempt("start", true));
    let outcome = slack.client().send(&message(&target, Kind::Start, &report, None, &start)).await;
    assert!(matches!(&outcome, Outcome::Sent(posted) if posted.id == "1700000000.000300"), "{outcome:?}");
    let seen = slack.seen();
    assert_eq!(
        seen.iter().map(|seen| seen.path.as_str()).collect::<Vec<_>>(),
        ["/api/conversations.history", "/api/chat.postMessage"]
    );
}

#[tokio::test]
async fn an_end_whose_message_is_gone_is_posted_anew() {
    let slack = Slack::start(|seen| match seen.path.as_str() {
        "/api/chat.update" => ok(json!({"ok": false, "error": "message_not_found"})),
        _ => ok(json!({"ok": true, "channel": "C0123", "ts": "1700000000.000900"})),
    })
    .await;
    let (target, mut report, end) = (target(Some("1700000000.000100")), report(), attempt("end", false));
    report.state = "failed".to_string();
    let earlier = Posted { id: "1700000000.000200".into(), channel: Some("C0123".into()), url: None };
    let outcome = slack.client().send(&message(&target, Kind::End, &report, Some(&earlier), &end)).await;
    assert!(matches!(&outcome, Outcome::Sent(posted) if posted.id == "1700000000.000900"), "{outcome:?}");
    let seen = slack.seen();
    assert_eq!(seen.len(), 2);
    assert_json_post(&seen[0], "chat.update");
    assert_json_post(&seen[1], "chat.postMessage");
    assert_eq!(seen[1].body["thread_ts"], "1700000000.000100");
    assert!(text(&seen[1]).contains("failed: run `r-42`"));
}

#[tokio::test]
async fn agent_text_arrives_neutralised() {
    let slack = Slack::start(|_| ok(json!({"ok": true, "channel": "C0123", "ts": "1.2"}))).await;
    let (target, mut report, end) = (target(None), report(), attempt("end", false));
    report.state = "failed".to_string();
    report.summary = Some(
        "<!channel> wake up <!here> <!subteam^S0123|@oncall> <@U0123> <https://evil.example|docs> @here & @channel"
            .to_string(),
    );
    report.reason = Some("<!everyone> broke".to_string());
    report.branch = "b`<!here>".to_string();
    let outcome = slack.client().send(&message(&target, Kind::End, &report, None, &end)).await;
    assert!(matches!(outcome, Outcome::Sent(_)), "{outcome:?}");
    let seen = slack.seen();
    let text = text(&seen[0]);
    assert!(!text.contains("<!") && !text.contains("<@") && !text.contains("<https://evil"), "{text}");
    assert!(
        text.contains("&lt;!channel&gt; wake up &lt;!here&gt; &lt;!subteam^S0123|@oncall&gt; &lt;@U0123&gt;"),
        "{text}"
    );
    assert!(text.contains("&lt;https://evil.example|docs&gt; @\u{2060}here &amp; @\u{2060}channel"), "{text}");
    assert!(text.contains("Reason: &lt;!everyone&gt; broke"), "{text}");
    assert!(text.contains("`b'&lt;!here&gt;`"), "{text}");
}

#[tokio::test]
async fn a_long_summary_is_cut_and_says_so() {
    let slack = Slack::start(|_| ok(json!({"ok": true, "channel": "C0123", "ts": "1.2"}))).await;
    let (target, mut report, end) = (target(None), report(), attempt("end", false));
    report.state = "succeeded".to_string();
    report.summary = Some("word ".repeat(20_000));
    let outcome = slack.client().send(&message(&target, Kind::End, &report, None, &end)).await;
    assert!(matches!(outcome, Outcome::Sent(_)), "{outcome:?}");
    let text = text(&slack.seen()[0]).to_string();
    assert!(text.chars().count() < 4_000, "{} characters", text.chars().count());
    assert!(text.trim_end().ends_with("(truncated)") || text.contains("(truncated)\n"), "{text}");
}

#[tokio::test]
async fn a_missing_token_fails_without_asking_slack() {
    let slack = Slack::start(|_| ok(json!({"ok": true, "ts": "1.2"}))).await;
    let (target, report, start) = (target(None), report(), attempt("start", false));
    let mut message = message(&target, Kind::Start, &report, None, &start);
    message.secret = None;
    assert!(matches!(slack.client().send(&message).await, Outcome::Failed { .. }));
    assert!(slack.seen().is_empty());
}
