//! Proves the GitHub transport against a loopback GitHub REST API that checks each
//! request's method, path, headers (token, media type, API version, user agent) and JSON
//! body, and records what arrives: a comment posted at the start and edited at the end, a
//! draft pull request, an existing pull request found, an unsure start that finds its
//! comment, rate limits, a bad token, and a summary's mentions neutralised.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use nightshift::config::SecretRef;
use nightshift::delivery::github::Client;
use nightshift::delivery::{Attempt, Kind, Message, Outcome, Posted, Report, Target};
use serde_json::{Value, json};

const TOKEN: &str = "ghp_loopback-token-7f3a";
const BIG_BODY: usize = 1 << 20;

/// One request as the fake API saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    body: Value,
}

/// What the fake answers: status, extra headers, JSON body.
type Answer = (u16, Vec<(&'static str, String)>, Value);
type Respond = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A GitHub REST API on loopback.
struct FakeGithub {
    url: reqwest::Url,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGithub {
    /// Serves under `/api/v3` (as GitHub Enterprise does), so the base URL's path is kept.
    async fn start(respond: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> FakeGithub {
        let respond: Respond = Arc::new(respond);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = Router::new().fallback(move |request: Request| {
            let respond = respond.clone();
            let record = record.clone();
            async move { serve(request, &respond, &record).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let url = reqwest::Url::parse(&format!("http://{address}/api/v3")).unwrap();
        FakeGithub { url, seen, server }
    }

    fn client(&self) -> Client {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Client::new(http, self.url.clone())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<String> {
        self.seen().iter().map(|s| format!("{} {}", s.method, s.uri)).collect()
    }
}

/// Checks what every request to GitHub must carry, then records it and answers.
async fn serve(request: Request, respond: &Respond, record: &Mutex<Vec<Seen>>) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let problems: Vec<String> = [
        ("authorization", header("authorization").as_deref() == Some(&format!("Bearer {TOKEN}"))),
        ("accept", header("accept").as_deref() == Some("application/vnd.github+json")),
        ("x-github-api-version", header("x-github-api-version").as_deref() == Some("2022-11-28")),
        ("user-agent", header("user-agent").is_some_and(|a| a.starts_with("nightshift/"))),
    ]
    .iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| format!("bad or missing {name}"))
    .collect();
    let method = parts.method.to_string();
    let has_body = method == "POST" || method == "PATCH";
    let json_body = header("content-type").as_deref() == Some("application/json");
    let uri = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let bytes = axum::body::to_bytes(body, BIG_BODY).await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let seen = Seen { method, uri, body };
    record.lock().unwrap().push(seen.clone());
    let (status, headers, body) = if !problems.is_empty() || (has_body && !json_body) {
        (400, vec![], json!({ "message": format!("{problems:?} json body: {json_body}") }))
    } else {
        respond(&seen)
    };
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        response = response.header(name, value);
    }
    response.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

fn report() -> Report {
    Report {
        run: "r1".into(),
        automation: "fix-bugs".into(),
        state: "running".into(),
        summary: None,
        reason: None,
        repo: "acme/app".into(),
        base: "main".into(),
        branch: "nightshift/r1".into(),
        pushed: false,
        pull_request: None,
        link: Some("https://ns.example/api/runs/r1".into()),
    }
}

fn ended(summary: &str) -> Report {
    Report {
        state: "succeeded".into(),
        summary: Some(summary.into()),
        pushed: true,
        pull_request: Some("https://github.com/acme/app/pull/7".into()),
        ..report()
    }
}

fn comment_target() -> Target {
    Target::GithubComment { repo: "acme/app".into(), number: 5, token: SecretRef::Env("GITHUB_TOKEN".into()) }
}

fn pull_target() -> Target {
    Target::GithubPullRequest {
        repo: "acme/app".into(),
        base: "main".into(),
        draft: true,
        token: SecretRef::Env("GITHUB_TOKEN".into()),
    }
}

fn attempt(kind: Kind, unsure: bool) -> Attempt {
    let kind = match kind {
        Kind::Start => "start",
        Kind::End => "end",
    };
    Attempt { message_id: format!("r1-0-{kind}"), number: 1, unsure }
}

async fn send(
    client: &Client,
    target: &Target,
    kind: Kind,
    report: &Report,
    earlier: Option<&Posted>,
    attempt: &Attempt,
) -> Outcome {
    let message = Message { target, kind, report, earlier, attempt, secret: Some(TOKEN) };
    client.send(&message).await
}

const MARKER: &str = "<!-- nightshift:r1-0 -->";

fn comment(id: u64, body: &str) -> Value {
    json!({ "id": id, "html_url": format!("https://github.com/acme/app/issues/5#issuecomment-{id}"), "body": body })
}

#[tokio::test]
async fn a_comment_is_posted_at_the_start_and_edited_at_the_end_with_the_pull_request() {
    let github = FakeGithub::start(|seen| match (seen.method.as_str(), seen.uri.as_str()) {
        ("POST", "/api/v3/repos/acme/app/issues/5/comments") => {
            (201, vec![], comment(111, seen.body["body"].as_str().unwrap()))
        }
        ("PATCH", "/api/v3/repos/acme/app/issues/comments/111") => {
            (200, vec![], comment(111, seen.body["body"].as_str().unwrap()))
        }
        _ => (404, vec![], json!({ "message": "Not Found" })),
    })
    .await;
    let client = github.client();
    let target = comment_target();

    let start = send(&client, &target, Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    let posted = Posted {
        id: "111".into(),
        channel: None,
        url: Some("https://github.com/acme/app/issues/5#issuecomment-111".into()),
    };
    assert_eq!(start, Outcome::Sent(posted.clone()));

    let report = ended("Fixed the off-by-one in the parser.");
    let end = send(&client, &target, Kind::End, &report, Some(&posted), &attempt(Kind::End, false)).await;
    assert_eq!(end, Outcome::Sent(posted));

    let seen = github.seen();
    assert_eq!(
        github.requests(),
        ["POST /api/v3/repos/acme/app/issues/5/comments", "PATCH /api/v3/repos/acme/app/issues/comments/111"]
    );
    let start_body = seen[0].body["body"].as_str().unwrap();
    assert!(start_body.contains("is working on this") && start_body.contains("run `r1`"), "{start_body}");
    assert!(start_body.ends_with(MARKER), "{start_body}");
    let end_body = seen[1].body["body"].as_str().unwrap();
    for part in [
        "succeeded",
        "Fixed the off-by-one in the parser.",
        "Branch `nightshift/r1`",
        "Pull request: https://github.com/acme/app/pull/7",
        "[View run](https://ns.example/api/runs/r1)",
    ] {
        assert!(end_body.contains(part), "no {part:?} in {end_body}");
    }
    assert!(end_body.ends_with(MARKER), "{end_body}");
    assert_eq!(seen[1].body.as_object().unwrap().len(), 1, "only the body is sent: {}", seen[1].body);
}

#[tokio::test]
async fn an_end_without_a_start_posts_a_new_comment() {
    let github = FakeGithub::start(|seen| (201, vec![], comment(222, seen.body["body"].as_str().unwrap()))).await;
    let end =
        send(&github.client(), &comment_target(), Kind::End, &ended("done"), None, &attempt(Kind::End, false)).await;
    assert!(matches!(&end, Outcome::Sent(p) if p.id == "222"), "{end:?}");
    assert_eq!(github.requests(), ["POST /api/v3/repos/acme/app/issues/5/comments"]);
}

#[tokio::test]
async fn an_unsure_start_finds_its_marked_comment_and_posts_nothing() {
    // Three pages of comments, oldest first; the start's comment is on page 2, and an
    // older run's marker (r0) on page 3 must not be taken for it.
    let github = FakeGithub::start(|seen| {
        let link = "<https://api.github.com/repositories/9/issues/5/comments?per_page=100&page=2>; rel=\"next\", \
                    <https://api.github.com/repositories/9/issues/5/comments?per_page=100&page=3>; rel=\"last\"";
        let page = |n: &str| format!("/api/v3/repos/acme/app/issues/5/comments?per_page=100&page={n}");
        match (seen.method.as_str(), seen.uri.as_str()) {
            ("GET", uri) if uri == page("1") => {
                (200, vec![("link", link.to_string())], json!([comment(1, "first"), comment(2, "second")]))
            }
            ("GET", uri) if uri == page("3") => {
                (200, vec![("link", link.to_string())], json!([comment(5, "old <!-- nightshift:r0-0 -->")]))
            }
            ("GET", uri) if uri == page("2") => (
                200,
                vec![("link", link.to_string())],
                json!([comment(3, &format!("working\n\n{MARKER}")), comment(4, "a reply")]),
            ),
            _ => (500, vec![], json!({ "message": "unexpected" })),
        }
    })
    .await;
    let outcome =
        send(&github.client(), &comment_target(), Kind::Start, &report(), None, &attempt(Kind::Start, true)).await;
    assert_eq!(
        outcome,
        Outcome::Sent(Posted {
            id: "3".into(),
            channel: None,
            url: Some("https://github.com/acme/app/issues/5#issuecomment-3".into())
        })
    );
    assert_eq!(
        github.requests(),
        [
            "GET /api/v3/repos/acme/app/issues/5/comments?per_page=100&page=1",
            "GET /api/v3/repos/acme/app/issues/5/comments?per_page=100&page=3",
            "GET /api/v3/repos/acme/app/issues/5/comments?per_page=100&page=2",
        ]
    );
}

#[tokio::test]
async fn an_unsure_start_that_finds_nothing_posts() {
    let github = FakeGithub::start(|seen| match seen.method.as_str() {
        "GET" => (200, vec![], json!([comment(1, "unrelated")])),
        _ => (201, vec![], comment(9, seen.body["body"].as_str().unwrap())),
    })
    .await;
    let outcome =
        send(&github.client(), &comment_target(), Kind::Start, &report(), None, &attempt(Kind::Start, true)).await;
    assert!(matches!(&outcome, Outcome::Sent(p) if p.id == "9"), "{outcome:?}");
    assert_eq!(
        github.requests(),
        [
            "GET /api/v3/repos/acme/app/issues/5/comments?per_page=100&page=1",
            "POST /api/v3/repos/acme/app/issues/5/comments"
        ]
    );
}

fn pull(number: u64) -> Value {
    json!({ "number": number, "html_url": format!("https://github.com/acme/app/pull/{number}") })
}

#[tokio::test]
async fn a_draft_pull_request_is_opened_from_the_pushed_branch() {
    let github = FakeGithub::start(|seen| match (seen.method.as_str(), seen.uri.as_str()) {
        ("POST", "/api/v3/repos/acme/app/pulls") => (201, vec![], pull(7)),
        _ => (404, vec![], json!({ "message": "Not Found" })),
    })
    .await;
    let client = github.client();
    let target = pull_target();

    // A start for a pull request target is nothing to do.
    let start = send(&client, &target, Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    assert_eq!(start, Outcome::Sent(Posted { id: String::new(), channel: None, url: None }));
    assert!(github.requests().is_empty());

    let report = Report { pull_request: None, ..ended("Fix the parser\n\nIt was off by one.") };
    let end = send(&client, &target, Kind::End, &report, None, &attempt(Kind::End, false)).await;
    assert_eq!(
        end,
        Outcome::Sent(Posted { id: "7".into(), channel: None, url: Some("https://github.com/acme/app/pull/7".into()) })
    );
    let seen = github.seen();
    assert_eq!(github.requests(), ["POST /api/v3/repos/acme/app/pulls"]);
    let body = &seen[0].body;
    assert_eq!(body["title"], "fix-bugs: Fix the parser");
    assert_eq!(body["head"], "nightshift/r1");
    assert_eq!(body["base"], "main");
    assert_eq!(body["draft"], true);
    let text = body["body"].as_str().unwrap();
    assert!(text.contains("It was off by one."), "{text}");
    assert!(text.contains("[View run](https://ns.example/api/runs/r1)"), "{text}");
    assert!(text.ends_with(MARKER), "{text}");
}

#[tokio::test]
async fn a_branch_that_was_not_pushed_opens_no_pull_request() {
    let github = FakeGithub::start(|_| (201, vec![], pull(7))).await;
    let report = Report { pushed: false, ..ended("done") };
    let end = send(&github.client(), &pull_target(), Kind::End, &report, None, &attempt(Kind::End, false)).await;
    assert_eq!(
        end,
        Outcome::Failed { why: "the branch was not pushed (task.push is false or the push failed)".into() }
    );
    assert!(github.requests().is_empty());
}

#[tokio::test]
async fn an_existing_pull_request_is_found_by_its_branch() {
    let github = FakeGithub::start(|seen| match (seen.method.as_str(), seen.uri.as_str()) {
        ("POST", "/api/v3/repos/acme/app/pulls") => (
            422,
            vec![],
            json!({
                "message": "Validation Failed",
                "errors": [{ "resource": "PullRequest", "code": "custom",
                             "message": "A pull request already exists for acme:nightshift/r1." }],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"
            }),
        ),
        ("GET", "/api/v3/repos/acme/app/pulls?head=acme%3Anightshift%2Fr1&state=open") => {
            (200, vec![], json!([pull(9)]))
        }
        _ => (404, vec![], json!({ "message": "Not Found" })),
    })
    .await;
    let end = send(&github.client(), &pull_target(), Kind::End, &ended("done"), None, &attempt(Kind::End, false)).await;
    assert_eq!(
        end,
        Outcome::Sent(Posted { id: "9".into(), channel: None, url: Some("https://github.com/acme/app/pull/9".into()) })
    );
    assert_eq!(
        github.requests(),
        [
            "POST /api/v3/repos/acme/app/pulls",
            "GET /api/v3/repos/acme/app/pulls?head=acme%3Anightshift%2Fr1&state=open"
        ]
    );
}

#[tokio::test]
async fn an_unsure_pull_request_is_looked_for_before_opening() {
    let github = FakeGithub::start(|seen| match seen.method.as_str() {
        "GET" => (200, vec![], json!([pull(4)])),
        _ => (201, vec![], pull(5)),
    })
    .await;
    let end = send(&github.client(), &pull_target(), Kind::End, &ended("done"), None, &attempt(Kind::End, true)).await;
    assert!(matches!(&end, Outcome::Sent(p) if p.id == "4"), "{end:?}");
    assert_eq!(github.requests(), ["GET /api/v3/repos/acme/app/pulls?head=acme%3Anightshift%2Fr1&state=open"]);
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_rate_limit_is_retried_after_its_reset() {
    let github = FakeGithub::start(|_| {
        let reset = unix_now() + 3600;
        (
            403,
            vec![("x-ratelimit-remaining", "0".into()), ("x-ratelimit-reset", reset.to_string())],
            json!({ "message": "API rate limit exceeded for user ID 1." }),
        )
    })
    .await;
    let outcome =
        send(&github.client(), &comment_target(), Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    let Outcome::Retry { after: Some(after), why } = &outcome else { panic!("{outcome:?}") };
    // The reset is an hour after the answer; the bound leaves room for a slow machine.
    assert!(*after <= Duration::from_secs(3600) && *after >= Duration::from_secs(3000), "{after:?}");
    assert!(why.contains("rate limit"), "{why}");
}

#[tokio::test]
async fn a_server_error_is_retried_and_a_refused_token_is_not() {
    let github = FakeGithub::start(|_| (502, vec![], json!({ "message": "Server Error" }))).await;
    let outcome =
        send(&github.client(), &comment_target(), Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    assert_eq!(outcome, Outcome::Retry { after: None, why: "GitHub answered 502: Server Error".into() });

    let github = FakeGithub::start(|_| (401, vec![], json!({ "message": "Bad credentials" }))).await;
    let outcome =
        send(&github.client(), &comment_target(), Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    assert_eq!(outcome, Outcome::Failed { why: "GitHub refused the token (401): Bad credentials".into() });
}

#[tokio::test]
async fn github_down_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let client = Client::new(http, reqwest::Url::parse(&format!("http://{address}/")).unwrap());
    let outcome = send(&client, &comment_target(), Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    assert!(
        matches!(&outcome, Outcome::Retry { after: None, why } if why.starts_with("GitHub did not answer")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_summarys_mentions_and_markers_arrive_neutralised() {
    let github = FakeGithub::start(|seen| (201, vec![], comment(1, seen.body["body"].as_str().unwrap()))).await;
    let summary = "Done. cc @acme/security and @bob <!-- nightshift:r1-0 -->";
    send(&github.client(), &comment_target(), Kind::End, &ended(summary), None, &attempt(Kind::End, false)).await;
    let seen = github.seen();
    let body = seen[0].body["body"].as_str().unwrap();
    assert!(body.contains("cc @\u{200D}acme/security and @\u{200D}bob &lt;!-- nightshift:r1-0 -->"), "{body}");
    assert!(!body.contains("@acme/security") && !body.contains("@bob"), "{body}");
    assert_eq!(body.matches(MARKER).count(), 1, "{body}");
}

#[tokio::test]
async fn a_repo_that_is_not_owner_and_name_is_refused_without_a_request() {
    let github = FakeGithub::start(|_| (201, vec![], comment(1, ""))).await;
    let target = Target::GithubComment { repo: "acme/../../user".into(), number: 5, token: SecretRef::Env("T".into()) };
    let outcome = send(&github.client(), &target, Kind::Start, &report(), None, &attempt(Kind::Start, false)).await;
    assert_eq!(outcome, Outcome::Failed { why: "repo `acme/../../user` is not `owner/name`".into() });
    assert!(github.requests().is_empty());
}

#[tokio::test]
async fn an_unsure_end_edits_the_marked_comment_instead_of_posting() {
    let github = FakeGithub::start(|seen| match (seen.method.as_str(), seen.uri.as_str()) {
        ("GET", _) => (200, vec![], json!([comment(3, &format!("working\n\n{MARKER}")), comment(4, "a reply")])),
        ("PATCH", "/api/v3/repos/acme/app/issues/comments/3") => {
            (200, vec![], comment(3, seen.body["body"].as_str().unwrap()))
        }
        _ => (500, vec![], json!({ "message": "unexpected" })),
    })
    .await;
    let end =
        send(&github.client(), &comment_target(), Kind::End, &ended("done"), None, &attempt(Kind::End, true)).await;
    assert!(matches!(&end, Outcome::Sent(p) if p.id == "3"), "{end:?}");
    assert_eq!(
        github.requests(),
        [
            "GET /api/v3/repos/acme/app/issues/5/comments?per_page=100&page=1",
            "PATCH /api/v3/repos/acme/app/issues/comments/3"
        ]
    );
    assert!(github.seen()[1].body["body"].as_str().unwrap().contains("succeeded"));
}

#[tokio::test]
async fn an_end_whose_start_comment_was_deleted_posts_anew() {
    let github = FakeGithub::start(|seen| match seen.method.as_str() {
        "PATCH" => (404, vec![], json!({ "message": "Not Found" })),
        _ => (201, vec![], comment(8, seen.body["body"].as_str().unwrap())),
    })
    .await;
    let earlier = Posted { id: "111".into(), channel: None, url: None };
    let end = send(
        &github.client(),
        &comment_target(),
        Kind::End,
        &ended("done"),
        Some(&earlier),
        &attempt(Kind::End, false),
    )
    .await;
    assert!(matches!(&end, Outcome::Sent(p) if p.id == "8"), "{end:?}");
    assert_eq!(
        github.requests(),
        ["PATCH /api/v3/repos/acme/app/issues/comments/111", "POST /api/v3/repos/acme/app/issues/5/comments"]
    );
}

#[tokio::test]
async fn an_end_that_may_not_edit_its_comment_fails() {
    let github =
        FakeGithub::start(|_| (403, vec![], json!({ "message": "Resource not accessible by integration" }))).await;
    let earlier = Posted { id: "111".into(), channel: None, url: None };
    let end = send(
        &github.client(),
        &comment_target(),
        Kind::End,
        &ended("done"),
        Some(&earlier),
        &attempt(Kind::End, false),
    )
    .await;
    assert!(matches!(&end, Outcome::Failed { why } if why.starts_with("GitHub forbids this (403)")), "{end:?}");
    assert_eq!(github.requests(), ["PATCH /api/v3/repos/acme/app/issues/comments/111"]);
}
