//! GitHub's REST API as a delivery transport: one comment on the triggering issue or pull
//! request (posted at the start, edited at the end) and the pull request a run's pushed
//! branch opens (docs/notify.md, "GitHub").
//!
//! Every body ends with a hidden marker, `<!-- nightshift:{run}-{target index} -->`, so an
//! attempt that may have reached GitHub before (the engine stopped mid-send, or an earlier
//! try got no answer) finds what it posted instead of posting again. The agent's summary
//! is untrusted: its @mentions and HTML comments are neutralised before it goes in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;

use super::{Kind, Message, Outcome, Posted, Report, Target, retry_after};

/// GitHub's limit on an issue comment's or a pull request's body, in characters.
pub const BODY_LIMIT: usize = 65_536;
/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Comments asked for per page when looking for a marker (GitHub's largest page).
const PER_PAGE: u32 = 100;
/// At most this many pages of an issue's comments are read looking for a marker: the
/// first, then the newest ones backwards.
pub const MAX_PAGES: u32 = 5;
/// How long to wait on a rate limit that names no time (GitHub: "at least one minute").
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The longest pull request title.
const TITLE_LIMIT: usize = 120;
const USER_AGENT_VALUE: &str = concat!("nightshift/", env!("CARGO_PKG_VERSION"));

/// Sends `github_comment` and `github_pull_request` messages.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The API base, ending in `/` (`https://api.github.com/`, or GitHub Enterprise's
    /// `https://HOST/api/v3/`).
    api: Url,
}

/// A comment or pull request as GitHub answers it (only what is used).
#[derive(Debug, Deserialize)]
struct Item {
    #[serde(default)]
    id: u64,
    #[serde(default)]
    number: u64,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

impl Client {
    pub fn new(http: reqwest::Client, mut api_url: Url) -> Self {
        if !api_url.path().ends_with('/') {
            let path = format!("{}/", api_url.path());
            api_url.set_path(&path);
        }
        Client { http, api: api_url }
    }

    /// One attempt at one message; see the module's documentation.
    pub async fn send(&self, message: &Message<'_>) -> Outcome {
        let Some(token) = message.secret.filter(|t| !t.is_empty()) else {
            return failed("no GitHub token: the target's token secret resolved to nothing");
        };
        let call = Call { client: self, token };
        let marker = marker(&message.attempt.message_id);
        // A try after the first may have reached GitHub without its answer arriving.
        let look_first = message.attempt.unsure || message.attempt.number > 1;
        match plan(message.target, message.kind, message.report, &marker) {
            Err(outcome) => outcome,
            Ok(Plan::Comment { repo, number, body }) => {
                call.comment(repo, number, message, &body, &marker, look_first).await
            }
            Ok(Plan::PullRequest { repo, request }) => {
                call.pull_request(&NewPull { repo, branch: &message.report.branch, request }, look_first).await
            }
        }
    }
}

/// What a message to a GitHub target asks of GitHub, before any lookup an unsure attempt
/// makes. Built by [`plan`], which `nightshift render` shows too.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan<'a> {
    /// Post a comment with `body` on issue or pull request `number` of `repo` (at the end,
    /// edit the start's comment to say it).
    Comment { repo: &'a str, number: u64, body: String },
    /// Open a pull request: `POST repos/{repo}/pulls` with `request`.
    PullRequest { repo: &'a str, request: serde_json::Value },
}

/// What a message of `kind` to `target` asks (its bodies end with `marker`), or the outcome
/// it has without a request: a failure (a bad `repo`, a branch that was not pushed), or
/// nothing to do (a pull request's start).
pub fn plan<'a>(target: &'a Target, kind: Kind, report: &Report, marker: &str) -> Result<Plan<'a>, Outcome> {
    match target {
        Target::GithubComment { repo, number, .. } => {
            check_repo(repo).map_err(|why| failed(&why))?;
            Ok(Plan::Comment { repo, number: *number, body: comment_body(kind, report, marker) })
        }
        Target::GithubPullRequest { repo, base, draft, .. } => {
            check_repo(repo).map_err(|why| failed(&why))?;
            if kind == Kind::Start {
                // A pull request is opened at the end only; a start message for one is
                // nothing to do, and answering Sent keeps it from being retried.
                return Err(Outcome::Sent(Posted { id: String::new(), channel: None, url: None }));
            }
            if !report.pushed {
                return Err(failed("the branch was not pushed (task.push is false or the push failed)"));
            }
            Ok(Plan::PullRequest { repo, request: pull_request_json(report, base, *draft, marker) })
        }
        _ => Err(failed("not a GitHub target")),
    }
}

/// The API path of an issue's or pull request's comments (a new comment is POSTed there).
pub fn comments_path(repo: &str, number: u64) -> String {
    format!("repos/{repo}/issues/{number}/comments")
}

/// The API path of comment `id` (an edit is a PATCH there).
pub fn comment_path(repo: &str, id: &str) -> String {
    format!("repos/{repo}/issues/comments/{id}")
}

/// The API path of a repository's pull requests (a new one is POSTed there).
pub fn pulls_path(repo: &str) -> String {
    format!("repos/{repo}/pulls")
}

/// The JSON of a comment's POST or PATCH.
pub fn comment_json(body: &str) -> serde_json::Value {
    json!({ "body": body })
}

/// The JSON of `POST repos/{repo}/pulls`: from the run's branch into `base`.
pub fn pull_request_json(report: &Report, base: &str, draft: bool, marker: &str) -> serde_json::Value {
    json!({
        "title": pull_title(report),
        "head": report.branch,
        "base": base,
        "body": pull_body(report, marker),
        "draft": draft,
    })
}

/// One message's requests, with its token.
struct Call<'a> {
    client: &'a Client,
    token: &'a str,
}

/// What opening a pull request needs: where, from which branch, and the request.
struct NewPull<'a> {
    repo: &'a str,
    branch: &'a str,
    request: serde_json::Value,
}

/// A request's answer: success with its status and headers and text, or the outcome
/// that ends the attempt.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Call<'_> {
    async fn request(&self, method: Method, url: Url, body: Option<serde_json::Value>) -> Result<Answer, Outcome> {
        let mut request = self
            .client
            .http
            .request(method, url)
            .timeout(TIMEOUT)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|error| Outcome::Retry {
            after: None,
            why: format!("GitHub did not answer: {}", causes(&error)),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|error| Outcome::Retry {
            after: None,
            why: format!("GitHub's answer was cut off: {}", causes(&error)),
        })?;
        Ok(Answer { status, headers, text })
    }

    /// A request whose non-2xx answer is classified into the attempt's outcome.
    async fn expect(&self, method: Method, url: Url, body: Option<serde_json::Value>) -> Result<Answer, Outcome> {
        let answer = self.request(method, url, body).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(classify(answer.status, &answer.headers, &answer.text, unix_now()))
        }
    }

    fn url(&self, path: &str) -> Result<Url, Outcome> {
        self.client.api.join(path).map_err(|error| Outcome::Failed { why: format!("bad GitHub URL `{path}`: {error}") })
    }

    async fn comment(
        &self,
        repo: &str,
        number: u64,
        message: &Message<'_>,
        body: &str,
        marker: &str,
        look_first: bool,
    ) -> Outcome {
        let result = async {
            let mut earlier = message.earlier.map(|posted| posted.id.clone()).filter(|id| !id.is_empty());
            if earlier.is_none()
                && look_first
                && let Some(found) = self.find_comment(repo, number, marker).await?
            {
                if message.kind == Kind::Start {
                    return Ok(posted_comment(&found));
                }
                earlier = Some(found.id.to_string());
            }
            if let Some(id) = earlier {
                if !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(failed(&format!("the start's comment id `{id}` is not a GitHub comment id")));
                }
                let url = self.url(&comment_path(repo, &id))?;
                let answer = self.request(Method::PATCH, url, Some(comment_json(body))).await?;
                if answer.status.is_success() {
                    return Ok(posted_comment(&parse_item(&answer.text)?));
                }
                // Someone deleted the start's comment: the end is posted anew.
                if answer.status != StatusCode::NOT_FOUND {
                    return Err(classify(answer.status, &answer.headers, &answer.text, unix_now()));
                }
            }
            let url = self.url(&comments_path(repo, number))?;
            let answer = self.expect(Method::POST, url, Some(comment_json(body))).await?;
            Ok(posted_comment(&parse_item(&answer.text)?))
        };
        result.await.unwrap_or_else(|outcome| outcome)
    }

    /// The newest comment on the issue whose body ends with `marker`, reading the first
    /// page and then at most `MAX_PAGES - 1` of the last pages, newest first.
    async fn find_comment(&self, repo: &str, number: u64, marker: &str) -> Result<Option<Item>, Outcome> {
        let page_url =
            |page: u32| self.url(&format!("repos/{repo}/issues/{number}/comments?per_page={PER_PAGE}&page={page}"));
        let first = self.expect(Method::GET, page_url(1)?, None).await?;
        let first_items = parse_items(&first.text)?;
        let last = first.headers.get("link").and_then(|v| v.to_str().ok()).and_then(last_page).unwrap_or(1);
        for page in pages_newest_first(last) {
            let answer = self.expect(Method::GET, page_url(page)?, None).await?;
            if let Some(found) = newest_marked(parse_items(&answer.text)?, marker) {
                return Ok(Some(found));
            }
        }
        Ok(newest_marked(first_items, marker))
    }

    async fn pull_request(&self, pull: &NewPull<'_>, look_first: bool) -> Outcome {
        let result = async {
            if look_first && let Some(found) = self.find_pull(pull).await? {
                return Ok(posted_pull(&found));
            }
            let body = Some(pull.request.clone());
            let answer = self.request(Method::POST, self.url(&pulls_path(pull.repo))?, body).await?;
            if answer.status.is_success() {
                return Ok(posted_pull(&parse_item(&answer.text)?));
            }
            if answer.status == StatusCode::UNPROCESSABLE_ENTITY && pull_exists(&answer.text) {
                return match self.find_pull(pull).await? {
                    Some(found) => Ok(posted_pull(&found)),
                    None => Err(Outcome::Retry {
                        after: None,
                        why: "GitHub says a pull request already exists for the branch, but lists no open one".into(),
                    }),
                };
            }
            Err(classify(answer.status, &answer.headers, &answer.text, unix_now()))
        };
        result.await.unwrap_or_else(|outcome| outcome)
    }

    /// The open pull request from the run's branch, if there is one.
    async fn find_pull(&self, pull: &NewPull<'_>) -> Result<Option<Item>, Outcome> {
        let owner = pull.repo.split('/').next().unwrap_or_default();
        let mut url = self.url(&pulls_path(pull.repo))?;
        url.query_pairs_mut().append_pair("head", &format!("{owner}:{}", pull.branch)).append_pair("state", "open");
        let answer = self.expect(Method::GET, url, None).await?;
        Ok(parse_items(&answer.text)?.into_iter().next())
    }
}

fn failed(why: &str) -> Outcome {
    Outcome::Failed { why: why.to_string() }
}

fn posted_comment(item: &Item) -> Outcome {
    Outcome::Sent(Posted { id: item.id.to_string(), channel: None, url: item.html_url.clone() })
}

fn posted_pull(item: &Item) -> Outcome {
    Outcome::Sent(Posted { id: item.number.to_string(), channel: None, url: item.html_url.clone() })
}

fn parse_item(text: &str) -> Result<Item, Outcome> {
    serde_json::from_str(text).map_err(|error| Outcome::Retry {
        after: None,
        why: format!("GitHub's answer is not the JSON expected: {error}"),
    })
}

fn parse_items(text: &str) -> Result<Vec<Item>, Outcome> {
    serde_json::from_str(text).map_err(|error| Outcome::Retry {
        after: None,
        why: format!("GitHub's list is not the JSON expected: {error}"),
    })
}

/// The error and its sources, for a reason a person reads.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `owner/name` as GitHub allows them, so a rendered target cannot walk the API's paths.
pub fn check_repo(repo: &str) -> Result<(), String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    match repo.split_once('/') {
        Some((owner, name)) if ok(owner) && ok(name) => Ok(()),
        _ => Err(format!("repo `{repo}` is not `owner/name`")),
    }
}

/// The hidden marker a message's bodies end with: the attempt's message id without its
/// kind, so the end finds what the start posted.
pub fn marker(message_id: &str) -> String {
    let key = message_id.strip_suffix("-start").or_else(|| message_id.strip_suffix("-end")).unwrap_or(message_id);
    format!("<!-- nightshift:{key} -->")
}

/// Whether `body` is one this target posted: it ends with the marker (the summary cannot
/// fake one, its HTML comments are neutralised, and it never comes last).
pub fn carries(body: &str, marker: &str) -> bool {
    body.trim_end().ends_with(marker)
}

/// The newest of a page's comments (GitHub lists oldest first) carrying the marker.
fn newest_marked(items: Vec<Item>, marker: &str) -> Option<Item> {
    items.into_iter().rev().find(|item| item.body.as_deref().is_some_and(|body| carries(body, marker)))
}

/// The pages after the first to read, newest first: `last` down, at most `MAX_PAGES - 1`.
pub fn pages_newest_first(last: u32) -> impl Iterator<Item = u32> {
    (2..=last).rev().take(MAX_PAGES as usize - 1)
}

/// The `page` of the `rel="last"` link in a `Link` header. The link's URL is not
/// followed: the next request is built on the configured API base, so the token goes
/// nowhere else.
pub fn last_page(link: &str) -> Option<u32> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_last = params.split(';').any(|p| p.trim().replace(' ', "") == "rel=\"last\"");
        if !is_last {
            return None;
        }
        let url = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let query = url.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "page").and_then(|(_, v)| v.parse().ok())
    })
}

/// Untrusted text made safe to put in a GitHub body: `@name` and `@org/team` no longer
/// mention (a zero-width joiner after the `@`), `<!--` cannot open a comment (so it can
/// neither hide text nor fake a marker), and an unclosed code fence is closed so what
/// follows still renders.
pub fn neutralise(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut previous: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        let starts_mention = c == '@'
            && !previous.is_some_and(|p| p.is_alphanumeric() || p == '_')
            && chars.peek().is_some_and(|n| n.is_ascii_alphanumeric());
        if starts_mention {
            out.push('\u{200D}');
        }
        previous = Some(c);
    }
    let mut out = out.replace("<!--", "&lt;!--");
    let fences = out.lines().filter(|line| line.trim_start().starts_with("```")).count();
    if fences % 2 == 1 {
        out.push_str("\n```");
    }
    out
}

/// `text` cut to at most `limit` characters, saying so when cut.
pub fn truncate(text: &str, limit: usize) -> String {
    const CUT: &str = "\n\n… (cut to fit GitHub's limit)";
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let keep = limit.saturating_sub(CUT.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(CUT);
    out
}

/// `head` + the untrusted `middle` (cut to fit) + `tail`, at most `BODY_LIMIT` characters.
fn assemble(head: &str, middle: &str, tail: &str) -> String {
    let fixed = head.chars().count() + tail.chars().count();
    let middle = truncate(middle, BODY_LIMIT.saturating_sub(fixed));
    let body = format!("{head}{middle}{tail}");
    debug_assert!(body.chars().count() <= BODY_LIMIT);
    body
}

/// The run's state as a reader says it.
fn state_words(state: &str) -> String {
    match state {
        "succeeded" => "succeeded ✅".into(),
        "failed" => "failed ❌".into(),
        "timed_out" => "timed out ⏱".into(),
        "cancelled" => "was cancelled".into(),
        other => other.replace('_', " "),
    }
}

/// The untrusted part of an end message: the summary and why the run did not succeed.
fn story(report: &Report) -> String {
    let mut text = String::new();
    if let Some(summary) = report.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        text.push_str(&neutralise(summary.trim()));
        text.push_str("\n\n");
    }
    if let Some(reason) = report.reason.as_deref().filter(|s| !s.trim().is_empty()) {
        text.push_str("**Reason:** ");
        text.push_str(&neutralise(reason.trim()));
        text.push_str("\n\n");
    }
    text
}

fn links(report: &Report, with_pull_request: bool) -> String {
    let mut parts = Vec::new();
    if !report.branch.is_empty() {
        let pushed = if report.pushed { "" } else { " (not pushed)" };
        parts.push(format!("Branch `{}`{pushed}", report.branch.replace('`', "'")));
    }
    if with_pull_request && let Some(pull) = &report.pull_request {
        parts.push(format!("Pull request: {pull}"));
    }
    if let Some(link) = &report.link {
        parts.push(format!("[View run]({link})"));
    }
    parts.join(" · ")
}

/// A `github_comment` body: at the start what is being done; at the end the state, the
/// summary, the branch and the pull request. Ends with `marker`.
pub fn comment_body(kind: Kind, report: &Report, marker: &str) -> String {
    let name = format!("automation `{}`, run `{}`", report.automation.replace('`', "'"), report.run.replace('`', "'"));
    match kind {
        Kind::Start => {
            let links = links(report, false);
            let links = if links.is_empty() { String::new() } else { format!("\n\n{links}") };
            assemble(&format!("⏳ **nightshift** is working on this ({name})."), "", &format!("{links}\n\n{marker}"))
        }
        Kind::End => {
            let head = format!("**nightshift** {} ({name}).\n\n", state_words(&report.state));
            assemble(&head, &story(report), &format!("{}\n\n{marker}", links(report, true)))
        }
    }
}

/// A pull request's title: the automation and the summary's first line.
pub fn pull_title(report: &Report) -> String {
    let first = report.summary.as_deref().and_then(|s| s.lines().map(str::trim).find(|l| !l.is_empty()));
    let title = match first {
        Some(line) => format!("{}: {}", report.automation, neutralise(line)),
        None => format!("{}: run {}", report.automation, report.run),
    };
    if title.chars().count() <= TITLE_LIMIT {
        title
    } else {
        let mut cut: String = title.chars().take(TITLE_LIMIT - 1).collect();
        cut.push('…');
        cut
    }
}

/// A pull request's body: the summary, the run's link, the marker.
pub fn pull_body(report: &Report, marker: &str) -> String {
    let head = format!(
        "Opened by **nightshift** for automation `{}`, run `{}`.\n\n",
        report.automation.replace('`', "'"),
        report.run.replace('`', "'")
    );
    assemble(&head, &story(report), &format!("{}\n\n{marker}", links(report, false)))
}

/// Whether a 422's body is GitHub's "A pull request already exists for owner:branch."
pub fn pull_exists(text: &str) -> bool {
    text.contains("A pull request already exists")
}

/// GitHub's error message with its validation errors, bounded.
pub fn github_message(text: &str) -> String {
    #[derive(Deserialize)]
    struct Error {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    let message = match serde_json::from_str::<Error>(text) {
        Ok(error) => {
            let mut parts: Vec<String> = error.message.into_iter().collect();
            for detail in error.errors {
                let part = match detail.get("message").and_then(|m| m.as_str()) {
                    Some(text) => text.to_string(),
                    None => ["resource", "field", "code"]
                        .iter()
                        .filter_map(|key| detail.get(*key).and_then(|v| v.as_str()))
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                if !part.is_empty() {
                    parts.push(part);
                }
            }
            parts.join(": ")
        }
        Err(_) => text.trim().to_string(),
    };
    let message = if message.is_empty() { "no message".to_string() } else { message };
    let mut cut: String = message.chars().take(300).collect();
    if cut.len() < message.len() {
        cut.push('…');
    }
    cut
}

/// `now` in unix seconds as a time.
fn unix(now: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(i64::try_from(now).unwrap_or(i64::MAX), 0).unwrap_or_default()
}

/// What a GitHub answer that is not a success means for the message. `now` is unix
/// seconds, for `x-ratelimit-reset`.
pub fn classify(status: StatusCode, headers: &HeaderMap, text: &str, now: u64) -> Outcome {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let message = github_message(text);
    let code = status.as_u16();
    if code == 403 || code == 429 {
        if let Some(after) = header(RETRY_AFTER.as_str()).and_then(|v| retry_after(v, unix(now))) {
            return Outcome::Retry { after: Some(after), why: format!("GitHub's rate limit ({code}): {message}") };
        }
        if header("x-ratelimit-remaining").map(str::trim) == Some("0") {
            let after = header("x-ratelimit-reset")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|reset| Duration::from_secs(reset.saturating_sub(now)));
            return Outcome::Retry { after, why: format!("GitHub's rate limit ({code}): {message}") };
        }
        if code == 429 || message.to_lowercase().contains("rate limit") {
            return Outcome::Retry {
                after: Some(RATE_LIMIT_WAIT),
                why: format!("GitHub's secondary rate limit ({code}): {message}"),
            };
        }
        return Outcome::Failed {
            why: format!(
                "GitHub forbids this (403): {message}; the token needs write access to issues and pull requests of the repository"
            ),
        };
    }
    let after = header(RETRY_AFTER.as_str()).and_then(|v| retry_after(v, unix(now)));
    match code {
        401 => Outcome::Failed { why: format!("GitHub refused the token (401): {message}") },
        404 => Outcome::Failed {
            why: format!(
                "GitHub found no such repository, issue or comment, or the token cannot see it (404): {message}"
            ),
        },
        422 => Outcome::Failed { why: format!("GitHub refused the request (422): {message}") },
        408 | 500..=599 => Outcome::Retry { after, why: format!("GitHub answered {code}: {message}") },
        _ => Outcome::Failed { why: format!("GitHub answered {code}: {message}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn report() -> Report {
        Report {
            run: "r1".into(),
            automation: "fix-bugs".into(),
            state: "succeeded".into(),
            summary: Some("Fixed the parser.".into()),
            reason: None,
            repo: "acme/app".into(),
            base: "main".into(),
            branch: "nightshift/r1".into(),
            pushed: true,
            pull_request: Some("https://github.com/acme/app/pull/7".into()),
            link: Some("https://ns.example/api/runs/r1".into()),
        }
    }

    #[test]
    fn the_marker_drops_the_kind_so_start_and_end_share_it() {
        assert_eq!(marker("r1-0-start"), "<!-- nightshift:r1-0 -->");
        assert_eq!(marker("r1-0-end"), "<!-- nightshift:r1-0 -->");
        assert_eq!(marker("r1-0"), "<!-- nightshift:r1-0 -->");
    }

    #[test]
    fn a_body_carries_the_marker_only_at_its_end() {
        let m = marker("r1-0-start");
        assert!(carries(&format!("hello\n\n{m}\n"), &m));
        assert!(!carries(&format!("{m}\n\nhello"), &m));
        assert!(!carries("hello", &m));
        assert!(!carries(&format!("hello {}", marker("r1-1-end")), &m));
    }

    #[test]
    fn mentions_are_neutralised_and_emails_kept() {
        let check = |input: &str, expected: &str| assert_eq!(neutralise(input), expected, "{input}");
        check("ping @alice", "ping @\u{200D}alice");
        check("@acme/security look", "@\u{200D}acme/security look");
        check("(@bob)", "(@\u{200D}bob)");
        check("mail a@b.com", "mail a@b.com");
        check("a lone @ sign", "a lone @ sign");
        check("@@x", "@@\u{200D}x");
        check("", "");
    }

    #[test]
    fn html_comments_cannot_hide_text_or_fake_a_marker() {
        let text = neutralise("done <!-- nightshift:r1-0 -->");
        assert_eq!(text, "done &lt;!-- nightshift:r1-0 -->");
        assert!(!carries(&text, &marker("r1-0-end")));
    }

    #[test]
    fn an_unclosed_fence_is_closed() {
        assert_eq!(neutralise("```\ncode"), "```\ncode\n```");
        assert_eq!(neutralise("```\ncode\n```"), "```\ncode\n```");
        assert_eq!(neutralise("  ```rust\nx"), "  ```rust\nx\n```");
    }

    #[test]
    fn truncation_keeps_the_limit_and_says_so() {
        assert_eq!(truncate("abc", 3), "abc");
        let cut = truncate(&"é".repeat(100), 50);
        assert_eq!(cut.chars().count(), 50);
        assert!(cut.ends_with("(cut to fit GitHub's limit)"));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn a_huge_summary_is_cut_but_the_marker_stays() {
        let mut report = report();
        report.summary = Some("x".repeat(BODY_LIMIT * 2));
        let m = marker("r1-0-end");
        for body in [comment_body(Kind::End, &report, &m), pull_body(&report, &m)] {
            assert_eq!(body.chars().count(), BODY_LIMIT);
            assert!(carries(&body, &m));
            assert!(body.contains("[View run](https://ns.example/api/runs/r1)"));
        }
    }

    #[test]
    fn the_start_comment_says_what_is_being_done() {
        let body = comment_body(Kind::Start, &report(), "<!-- nightshift:r1-0 -->");
        assert_eq!(
            body,
            "⏳ **nightshift** is working on this (automation `fix-bugs`, run `r1`).\n\n\
             Branch `nightshift/r1` · [View run](https://ns.example/api/runs/r1)\n\n<!-- nightshift:r1-0 -->"
        );
    }

    #[test]
    fn the_end_comment_has_state_summary_branch_and_pull_request() {
        let mut report = report();
        report.summary = Some("Fixed it, thanks @alice".into());
        let body = comment_body(Kind::End, &report, "<!-- nightshift:r1-0 -->");
        assert_eq!(
            body,
            "**nightshift** succeeded ✅ (automation `fix-bugs`, run `r1`).\n\n\
             Fixed it, thanks @\u{200D}alice\n\n\
             Branch `nightshift/r1` · Pull request: https://github.com/acme/app/pull/7 · \
             [View run](https://ns.example/api/runs/r1)\n\n<!-- nightshift:r1-0 -->"
        );
        report.state = "failed".into();
        report.summary = None;
        report.pushed = false;
        report.pull_request = None;
        report.link = None;
        report.reason = Some("tests failed".into());
        let body = comment_body(Kind::End, &report, "<!-- m -->");
        assert_eq!(
            body,
            "**nightshift** failed ❌ (automation `fix-bugs`, run `r1`).\n\n\
             **Reason:** tests failed\n\nBranch `nightshift/r1` (not pushed)\n\n<!-- m -->"
        );
    }

    #[test]
    fn the_pull_request_title_is_the_summarys_first_line() {
        let mut report = report();
        report.summary = Some("\n  Fix the parser @bob\nmore".into());
        assert_eq!(pull_title(&report), "fix-bugs: Fix the parser @\u{200D}bob");
        report.summary = None;
        assert_eq!(pull_title(&report), "fix-bugs: run r1");
        report.summary = Some("y".repeat(500));
        let title = pull_title(&report);
        assert_eq!(title.chars().count(), TITLE_LIMIT);
        assert!(title.ends_with('…'));
    }

    #[test]
    fn the_pull_request_body_has_summary_link_and_marker() {
        let body = pull_body(&report(), "<!-- m -->");
        assert_eq!(
            body,
            "Opened by **nightshift** for automation `fix-bugs`, run `r1`.\n\nFixed the parser.\n\n\
             Branch `nightshift/r1` · [View run](https://ns.example/api/runs/r1)\n\n<!-- m -->"
        );
    }

    #[test]
    fn repos_are_owner_and_name() {
        assert!(check_repo("acme/app").is_ok());
        assert!(check_repo("a-b_c.d/x.y").is_ok());
        for bad in ["acme", "acme/", "/app", "acme/app/x", "../x", "acme/..", "acme/a?b", "acme/a b", ""] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_last_page_comes_from_the_link_header() {
        let link = "<https://api.github.com/repositories/1/issues/2/comments?per_page=100&page=2>; rel=\"next\", \
                    <https://api.github.com/repositories/1/issues/2/comments?per_page=100&page=9>; rel=\"last\"";
        assert_eq!(last_page(link), Some(9));
        assert_eq!(last_page("<https://x/?page=3>; rel=\"next\""), None);
        assert_eq!(last_page("<https://x/?page=4>;rel=\"last\""), Some(4));
        assert_eq!(last_page("<https://x/>; rel=\"last\""), None);
        assert_eq!(last_page(""), None);
    }

    #[test]
    fn pages_are_read_newest_first_and_bounded() {
        assert_eq!(pages_newest_first(1).collect::<Vec<_>>(), Vec::<u32>::new());
        assert_eq!(pages_newest_first(3).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(pages_newest_first(50).collect::<Vec<_>>(), vec![50, 49, 48, 47]);
    }

    #[test]
    fn the_newest_marked_comment_wins() {
        let item = |id, body: &str| Item { id, number: 0, html_url: None, body: Some(body.into()) };
        let items = vec![item(1, "a <!-- m -->"), item(2, "b <!-- m -->"), item(3, "c"), item(4, "<!-- m --> d")];
        assert_eq!(newest_marked(items, "<!-- m -->").map(|i| i.id), Some(2));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const NOW: u64 = 1_700_000_000;

    fn check(code: u16, pairs: &[(&'static str, &str)], body: &str, expected: Outcome) {
        let outcome = classify(StatusCode::from_u16(code).unwrap(), &headers(pairs), body, NOW);
        assert_eq!(outcome, expected, "{code} {pairs:?} {body}");
    }

    fn retry(after: Option<u64>, why: &str) -> Outcome {
        Outcome::Retry { after: after.map(Duration::from_secs), why: why.into() }
    }

    fn fail(why: &str) -> Outcome {
        Outcome::Failed { why: why.into() }
    }

    #[test]
    fn answers_are_classified() {
        let limit = r#"{"message":"API rate limit exceeded for user ID 1."}"#;
        check(
            403,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000090")],
            limit,
            retry(Some(90), "GitHub's rate limit (403): API rate limit exceeded for user ID 1."),
        );
        check(
            429,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1699999999")],
            limit,
            retry(Some(0), "GitHub's rate limit (429): API rate limit exceeded for user ID 1."),
        );
        check(403, &[("retry-after", "30")], "{}", retry(Some(30), "GitHub's rate limit (403): no message"));
        check(
            429,
            &[("retry-after", "Tue, 14 Nov 2023 22:14:20 GMT")],
            "",
            retry(Some(60), "GitHub's rate limit (429): no message"),
        );
        check(
            403,
            &[],
            r#"{"message":"You have exceeded a secondary rate limit. Please wait."}"#,
            retry(
                Some(60),
                "GitHub's secondary rate limit (403): You have exceeded a secondary rate limit. Please wait.",
            ),
        );
        check(429, &[], "", retry(Some(60), "GitHub's secondary rate limit (429): no message"));
        check(
            403,
            &[("x-ratelimit-remaining", "4999")],
            r#"{"message":"Resource not accessible by integration"}"#,
            fail(
                "GitHub forbids this (403): Resource not accessible by integration; the token needs write access \
                 to issues and pull requests of the repository",
            ),
        );
        check(401, &[], r#"{"message":"Bad credentials"}"#, fail("GitHub refused the token (401): Bad credentials"));
        check(
            404,
            &[],
            r#"{"message":"Not Found"}"#,
            fail("GitHub found no such repository, issue or comment, or the token cannot see it (404): Not Found"),
        );
        check(
            422,
            &[],
            r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","field":"base","code":"invalid"}]}"#,
            fail("GitHub refused the request (422): Validation Failed: PullRequest base invalid"),
        );
        check(502, &[], "<html>bad gateway</html>", retry(None, "GitHub answered 502: <html>bad gateway</html>"));
        check(503, &[("retry-after", "7")], "", retry(Some(7), "GitHub answered 503: no message"));
        check(408, &[], "", retry(None, "GitHub answered 408: no message"));
        check(410, &[], r#"{"message":"Gone"}"#, fail("GitHub answered 410: Gone"));
    }

    #[test]
    fn github_messages_name_the_validation_errors() {
        assert_eq!(
            github_message(
                r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"A pull request already exists for acme:nightshift/r1."}]}"#
            ),
            "Validation Failed: A pull request already exists for acme:nightshift/r1."
        );
        assert_eq!(github_message("plain"), "plain");
        assert_eq!(github_message(""), "no message");
        let long = github_message(&"z".repeat(1000));
        assert_eq!(long.chars().count(), 301);
        assert!(pull_exists(r#"{"errors":[{"message":"A pull request already exists for a:b."}]}"#));
        assert!(!pull_exists(r#"{"message":"Validation Failed"}"#));
    }
}
