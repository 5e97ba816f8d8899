//! The Slack transport: a run's start as a message (in the thread it came from), its end as
//! an edit of that message (`chat.update`), through Slack's Web API with a bot token.
//!
//! Slack answers most failures with HTTP 200 and `{"ok": false, "error": ...}`; [`classify`]
//! turns those codes into a retry or a plain reason. Text from the run (summary, reason,
//! branch) is untrusted: [`untrusted`] escapes what Slack would act on (`<!channel>`,
//! `<@U1>`, links) and keeps it inside [`SUMMARY_LIMIT`] and friends. A message carries
//! metadata (`nightshift_run`, the attempt's `message_id`), so an unsure attempt can find
//! what an earlier try posted before posting again.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

use super::{Kind, Message, Outcome, Posted, Report, Target, retry_after};

/// How long one request to Slack may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The metadata `event_type` of every message nightshift posts.
pub const EVENT_TYPE: &str = "nightshift_run";
/// The most characters of the agent's summary a message carries (after escaping). Slack
/// cuts `text` at 40,000 characters; a message people read stays far below.
pub const SUMMARY_LIMIT: usize = 3_000;
/// The most characters of a failure's reason a message carries.
pub const REASON_LIMIT: usize = 1_000;
/// The most characters of a short field (branch, repository, state) a message carries.
pub const FIELD_LIMIT: usize = 200;
/// How many recent channel messages an unsure attempt looks through for its earlier post
/// (`conversations.history`; a thread's replies are read up to [`THREAD_LOOKUP`]).
pub const CHANNEL_LOOKUP: u32 = 20;
/// How many replies of a thread an unsure attempt looks through.
pub const THREAD_LOOKUP: u32 = 200;

/// Said after text that was cut.
const TRUNCATED: &str = " (truncated)";
/// Errors of `chat.update` that mean the message to edit is gone or may no longer be
/// edited: the end is then posted as a new message rather than lost.
const GONE: &[&str] = &["message_not_found", "cant_update_message", "edit_window_closed"];

/// Posts and edits a run's messages in Slack.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api_url: reqwest::Url,
}

/// Why a Web API call gave no answer to use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Slack could not be asked, or answered outside its API (429, 5xx, another status,
    /// a body that is not its JSON): the outcome says what to do.
    Transport(Outcome),
    /// Slack answered `{"ok": false, "error": ...}`.
    Api { error: String, needed: Option<String>, after: Option<Duration> },
}

impl Client {
    /// `api_url` is Slack's Web API base (`https://slack.com/api/`); method names are
    /// appended to it.
    pub fn new(http: reqwest::Client, api_url: reqwest::Url) -> Self {
        Self { http, api_url }
    }

    /// Sends one message: the start as a new message, the end as an edit of what the
    /// start posted (a new message when there is none, or it is gone).
    pub async fn send(&self, message: &Message<'_>) -> Outcome {
        let Target::Slack { channel, thread_ts, .. } = message.target else {
            return Outcome::Failed { why: "not a Slack target".to_string() };
        };
        let Some(token) = message.secret.filter(|token| !token.is_empty()) else {
            return Outcome::Failed { why: "no Slack token: the target's token reference is empty".to_string() };
        };
        let text = text(message.kind, message.report);
        if let (Kind::End, Some(earlier)) = (message.kind, message.earlier) {
            let channel = earlier.channel.as_deref().unwrap_or(channel);
            match self.update(token, channel, &earlier.id, &text).await {
                Err(Refusal::Api { error, .. }) if GONE.contains(&error.as_str()) => {
                    tracing::warn!(error, "Slack message to edit is gone; posting the end as a new message");
                }
                Err(refusal) => return refused("chat.update", channel, refusal),
                Ok(answer) => return sent(&answer, channel),
            }
        }
        let message_id = message.attempt.message_id.as_str();
        if message.attempt.unsure {
            match self.find(token, channel, thread_ts.as_deref(), message_id).await {
                Ok(Some(posted)) => return Outcome::Sent(posted),
                Ok(None) => {}
                Err(outcome @ Outcome::Retry { .. }) => return outcome,
                Err(outcome) => {
                    tracing::warn!(?outcome, "Slack lookup of an earlier post failed; posting");
                }
            }
        }
        let body = post_body(channel, thread_ts.as_deref(), &text, message_id);
        match self.call(self.post_json("chat.postMessage", token, &body)).await {
            Ok(answer) => sent(&answer, channel),
            Err(refusal) => refused("chat.postMessage", channel, refusal),
        }
    }

    /// Edits the message `ts` in `channel` to say `text`.
    async fn update(&self, token: &str, channel: &str, ts: &str, text: &str) -> Result<Value, Refusal> {
        self.call(self.post_json("chat.update", token, &update_body(channel, ts, text))).await
    }

    /// The message an earlier try posted for `message_id`: among the replies of
    /// `thread_ts`, or the channel's latest messages. `Err` holds what to answer instead
    /// of posting (a retry) or why the lookup could not be made (then post).
    async fn find(
        &self,
        token: &str,
        channel: &str,
        thread_ts: Option<&str>,
        message_id: &str,
    ) -> Result<Option<Posted>, Outcome> {
        let (method, query) = lookup_query(channel, thread_ts);
        let request = self.http.get(endpoint(&self.api_url, method)).bearer_auth(token).query(&query).timeout(TIMEOUT);
        let answer = self.call(request).await.map_err(|refusal| refused(method, channel, refusal))?;
        Ok(find_posted(&answer, message_id).map(|ts| Posted {
            id: ts.to_string(),
            channel: Some(channel.to_string()),
            url: None,
        }))
    }

    /// A POST of `body` as JSON to `method`, with the token.
    fn post_json(&self, method: &str, token: &str, body: &Value) -> RequestBuilder {
        self.http
            .post(endpoint(&self.api_url, method))
            .bearer_auth(token)
            // Slack warns (`missing_charset`) about JSON without a charset.
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .timeout(TIMEOUT)
    }

    /// Sends `request` and reads Slack's answer: the JSON of an `ok` answer, else why not.
    async fn call(&self, request: RequestBuilder) -> Result<Value, Refusal> {
        let response = request.send().await.map_err(|error| {
            Refusal::Transport(Outcome::Retry { after: None, why: format!("Slack unreachable: {error}") })
        })?;
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, chrono::Utc::now()));
        if let Some(outcome) = status_outcome(status, after) {
            return Err(Refusal::Transport(outcome));
        }
        let body = response.bytes().await.map_err(|error| {
            Refusal::Transport(Outcome::Retry { after: None, why: format!("Slack's answer broke off: {error}") })
        })?;
        read_answer(&body, after)
    }
}

/// What a non-200 HTTP status means: 429 and 5xx are retried (after `Retry-After` when
/// given), any other status that is not a success fails. `None` for a success: read the
/// body.
fn status_outcome(status: StatusCode, after: Option<Duration>) -> Option<Outcome> {
    if status.is_success() {
        None
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Some(Outcome::Retry { after, why: "Slack rate limit (HTTP 429)".to_string() })
    } else if status.is_server_error() {
        Some(Outcome::Retry { after, why: format!("Slack answered HTTP {}", status.as_u16()) })
    } else {
        Some(Outcome::Failed { why: format!("Slack answered HTTP {}", status.as_u16()) })
    }
}

/// Reads the body of a 2xx answer: the JSON when `ok`, else Slack's error code.
fn read_answer(body: &[u8], after: Option<Duration>) -> Result<Value, Refusal> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|_| Refusal::Transport(Outcome::Retry { after, why: "Slack's answer is not its JSON".to_string() }))?;
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(answer);
    }
    let text = |field: &str| answer.get(field).and_then(Value::as_str).map(str::to_string);
    Err(Refusal::Api { error: text("error").unwrap_or_else(|| "unknown".to_string()), needed: text("needed"), after })
}

/// The outcome of a refused call to `method` for `channel`.
fn refused(method: &str, channel: &str, refusal: Refusal) -> Outcome {
    match refusal {
        Refusal::Transport(outcome) => outcome,
        Refusal::Api { error, needed, after } => classify(method, channel, &error, needed.as_deref(), after),
    }
}

/// What Slack's `error` code for `method` means: a rate limit or a fault on Slack's side
/// is retried; anything else will not change by trying again, and fails with a reason a
/// person can act on.
pub fn classify(method: &str, channel: &str, error: &str, needed: Option<&str>, after: Option<Duration>) -> Outcome {
    // The code comes from the API; keep a surprising one short in the run's activity.
    let error: String = error.chars().take(80).collect();
    let retry = |why: String| Outcome::Retry { after, why };
    let failed = |why: String| Outcome::Failed { why };
    match error.as_str() {
        "ratelimited" | "rate_limited" => retry(format!("Slack rate limit ({error})")),
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" | "team_added_to_org" => {
            retry(format!("Slack could not answer {method} ({error})"))
        }
        "invalid_auth" => failed("Slack refused the token (invalid_auth): check the target's token".to_string()),
        "not_authed" => failed("no token reached Slack (not_authed)".to_string()),
        "token_revoked" | "token_expired" | "account_inactive" => {
            failed(format!("the Slack token no longer works ({error})"))
        }
        "missing_scope" => failed(format!(
            "the Slack app lacks the scope {} for {method} (missing_scope)",
            needed.unwrap_or("it needs")
        )),
        "channel_not_found" => failed(format!("Slack has no channel {channel} the app can see (channel_not_found)")),
        "not_in_channel" => failed(format!("the Slack app is not in channel {channel}: invite it (not_in_channel)")),
        "is_archived" => failed(format!("channel {channel} is archived (is_archived)")),
        "msg_too_long" => failed("the message is too long for Slack (msg_too_long)".to_string()),
        "message_not_found" => failed("the Slack message to edit is gone (message_not_found)".to_string()),
        _ => failed(format!("Slack refused {method} ({error})")),
    }
}

/// What a successful post or edit left: Slack's `ts`, and the channel id it answered
/// (`channel` as asked when it did not say).
fn sent(answer: &Value, channel: &str) -> Outcome {
    let text = |field: &str| answer.get(field).and_then(Value::as_str);
    match text("ts") {
        Some(ts) => Outcome::Sent(Posted {
            id: ts.to_string(),
            channel: Some(text("channel").unwrap_or(channel).to_string()),
            url: None,
        }),
        None => Outcome::Retry { after: None, why: "Slack's answer has no ts".to_string() },
    }
}

/// `{api_url}{method}`, whether or not the configured URL ends with `/`.
pub fn endpoint(api_url: &reqwest::Url, method: &str) -> String {
    let base = api_url.as_str();
    if base.ends_with('/') { format!("{base}{method}") } else { format!("{base}/{method}") }
}

/// The text of a message of `kind` about `report`: what is posted at the start and what
/// the end edits it to.
pub fn text(kind: Kind, report: &Report) -> String {
    match kind {
        Kind::Start => start_text(report),
        Kind::End => end_text(report),
    }
}

/// The JSON of `chat.update`: the message `ts` in `channel` now says `text`.
pub fn update_body(channel: &str, ts: &str, text: &str) -> Value {
    json!({ "channel": channel, "ts": ts, "text": text })
}

/// The JSON of `chat.postMessage`: no unfurling (agent text may carry links), no
/// `link_names`, and the metadata an unsure attempt looks for.
pub fn post_body(channel: &str, thread_ts: Option<&str>, text: &str, message_id: &str) -> Value {
    let mut body = json!({
        "channel": channel,
        "text": text,
        "unfurl_links": false,
        "unfurl_media": false,
        "metadata": { "event_type": EVENT_TYPE, "event_payload": { "message_id": message_id } },
    });
    if let Some(thread_ts) = thread_ts {
        body["thread_ts"] = json!(thread_ts);
    }
    body
}

/// The Web API method and query that list where an earlier post would be: the thread's
/// replies, or the channel's latest messages, with their metadata.
fn lookup_query(channel: &str, thread_ts: Option<&str>) -> (&'static str, Vec<(&'static str, String)>) {
    let mut query = vec![("channel", channel.to_string()), ("include_all_metadata", "true".to_string())];
    match thread_ts {
        Some(ts) => {
            query.push(("ts", ts.to_string()));
            query.push(("limit", THREAD_LOOKUP.to_string()));
            ("conversations.replies", query)
        }
        None => {
            query.push(("limit", CHANNEL_LOOKUP.to_string()));
            ("conversations.history", query)
        }
    }
}

/// The `ts` of the message in a `conversations.*` answer whose metadata is nightshift's
/// for `message_id`.
pub fn find_posted<'a>(answer: &'a Value, message_id: &str) -> Option<&'a str> {
    answer.get("messages")?.as_array()?.iter().find_map(|message| {
        let metadata = message.get("metadata")?;
        let ours = metadata.get("event_type")?.as_str()? == EVENT_TYPE
            && metadata.get("event_payload")?.get("message_id")?.as_str()? == message_id;
        if ours { message.get("ts")?.as_str() } else { None }
    })
}

/// The start: who is working on what, the run's id and branch, and where to watch it.
pub fn start_text(report: &Report) -> String {
    let mut text = format!(
        ":hourglass_flowing_sand: *{}* is working on this: run {}, branch {}",
        untrusted(&report.automation, FIELD_LIMIT),
        code(&report.run),
        code(&report.branch)
    );
    if !report.repo.is_empty() {
        text.push_str(&format!(" of {}", code(&report.repo)));
    }
    text.push('.');
    if let Some(link) = &report.link {
        text.push_str(&format!("\n{}", link_to(link, "View the run")));
    }
    text
}

/// The end: the state, why it failed, the agent's summary (quoted), the branch and the
/// pull request.
pub fn end_text(report: &Report) -> String {
    let (icon, state) = match report.state.as_str() {
        "succeeded" => (":white_check_mark:", "succeeded".to_string()),
        "failed" => (":x:", "failed".to_string()),
        "timed_out" => (":alarm_clock:", "timed out".to_string()),
        "cancelled" => (":no_entry_sign:", "was cancelled".to_string()),
        other => (":information_source:", format!("ended: {}", untrusted(other, FIELD_LIMIT))),
    };
    let mut text = format!(
        "{icon} *{}* {state}: run {}, branch {}{}.",
        untrusted(&report.automation, FIELD_LIMIT),
        code(&report.run),
        code(&report.branch),
        if report.pushed { " (pushed)" } else { "" }
    );
    if let Some(pull_request) = &report.pull_request {
        text.push_str(&format!("\nPull request: {}", link_to(pull_request, pull_request)));
    }
    if let Some(reason) = report.reason.as_deref().filter(|reason| !reason.trim().is_empty()) {
        text.push_str(&format!("\nReason: {}", untrusted(reason, REASON_LIMIT)));
    }
    if let Some(summary) = report.summary.as_deref().filter(|summary| !summary.trim().is_empty()) {
        text.push_str("\nSummary:");
        for line in untrusted(summary, SUMMARY_LIMIT).lines() {
            text.push_str("\n> ");
            text.push_str(line);
        }
    }
    if let Some(link) = &report.link {
        text.push_str(&format!("\n{}", link_to(link, "View the run")));
    }
    text
}

/// `text` as inline code: escaped, cut to [`FIELD_LIMIT`], without backticks that would
/// end the span.
fn code(text: &str) -> String {
    format!("`{}`", untrusted(&text.replace('`', "'"), FIELD_LIMIT))
}

/// A link to `url` labelled `label` (both escaped); plain escaped text when `url` is not
/// http(s), so a `mailto:` or a Slack control sequence cannot hide in it.
pub fn link_to(url: &str, label: &str) -> String {
    let label = untrusted(label, FIELD_LIMIT).replace('|', "\u{2758}");
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return untrusted(url, FIELD_LIMIT);
    }
    let url: String = url
        .chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "%3C".to_string(),
            '>' => "%3E".to_string(),
            '|' => "%7C".to_string(),
            c if c.is_whitespace() || c.is_control() => c.to_string().bytes().map(|b| format!("%{b:02X}")).collect(),
            c => c.to_string(),
        })
        .collect();
    format!("<{url}|{label}>")
}

/// Untrusted `text` made inert for Slack and cut to at most `limit` characters (counted
/// after escaping, then " (truncated)" added): `&`, `<` and `>` become entities, so
/// `<!channel>`, `<!here>`, `<!subteam^ID>`, `<@U1>` and `<url|label>` show as typed;
/// `@channel`, `@here` and `@everyone` get an invisible word joiner after the `@`, so they
/// stay text even where Slack would link names.
pub fn untrusted(text: &str, limit: usize) -> String {
    let text = inert_mentions(text);
    let mut out = String::with_capacity(text.len().min(limit * 4));
    let mut count = 0;
    for c in text.chars() {
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => "",
        };
        let width = if piece.is_empty() { 1 } else { piece.len() };
        if count + width > limit {
            out.push_str(TRUNCATED);
            return out;
        }
        count += width;
        if piece.is_empty() { out.push(c) } else { out.push_str(piece) }
    }
    out
}

/// `@channel`, `@here` and `@everyone` (any case) with a word joiner (U+2060) after the `@`.
fn inert_mentions(text: &str) -> String {
    const BROADCASTS: [&str; 3] = ["channel", "here", "everyone"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let broadcast =
            BROADCASTS.iter().any(|word| rest.get(..word.len()).is_some_and(|head| head.eq_ignore_ascii_case(word)));
        if broadcast {
            out.push('\u{2060}');
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            run: "r-1".into(),
            automation: "fix-bugs".into(),
            state: "succeeded".into(),
            summary: None,
            reason: None,
            repo: "acme/api".into(),
            base: "main".into(),
            branch: "nightshift/fix-bugs/r-1".into(),
            pushed: true,
            pull_request: None,
            link: None,
        }
    }

    #[test]
    fn control_characters_become_entities() {
        assert_eq!(
            untrusted("a & b <!channel> <@U1> <!subteam^S1> x>y", 100),
            "a &amp; b &lt;!channel&gt; &lt;@U1&gt; &lt;!subteam^S1&gt; x&gt;y"
        );
        assert_eq!(untrusted("<https://evil|click>", 100), "&lt;https://evil|click&gt;");
        assert_eq!(untrusted("plain text", 100), "plain text");
    }

    #[test]
    fn broadcast_words_get_a_word_joiner() {
        assert_eq!(
            untrusted("ping @channel and @HERE, @everyone", 100),
            "ping @\u{2060}channel and @\u{2060}HERE, @\u{2060}everyone"
        );
        assert_eq!(untrusted("mail a@example.com or @alice", 100), "mail a@example.com or @alice");
        assert_eq!(untrusted("ends with @", 100), "ends with @");
        assert_eq!(untrusted("@ch", 100), "@ch");
    }

    #[test]
    fn truncation_counts_escaped_characters_and_says_so() {
        assert_eq!(untrusted("abcdef", 6), "abcdef");
        assert_eq!(untrusted("abcdefg", 6), "abcdef (truncated)");
        // An entity is never cut in half: `&` needs 5 characters.
        assert_eq!(untrusted("abc&", 7), "abc (truncated)");
        assert_eq!(untrusted("abc&", 8), "abc&amp;");
        assert_eq!(untrusted("ééé", 2), "éé (truncated)");
        let long = "x".repeat(SUMMARY_LIMIT * 20);
        assert!(untrusted(&long, SUMMARY_LIMIT).chars().count() <= SUMMARY_LIMIT + TRUNCATED.len());
    }

    #[test]
    fn links_are_http_only_and_cannot_break_out() {
        assert_eq!(link_to("https://gh.example/p/1", "PR"), "<https://gh.example/p/1|PR>");
        assert_eq!(link_to("https://x/a?b=1&c=2|<!here>", "a|b"), "<https://x/a?b=1&amp;c=2%7C%3C!here%3E|a\u{2758}b>");
        assert_eq!(link_to("https://x/a b", "l"), "<https://x/a%20b|l>");
        assert_eq!(link_to("javascript:alert(1)", "l"), "javascript:alert(1)");
        assert_eq!(link_to("<!channel>", "l"), "&lt;!channel&gt;");
    }

    #[test]
    fn the_start_says_what_is_being_done() {
        let mut report = report();
        report.link = Some("https://ns.example/api/runs/r-1".into());
        assert_eq!(
            start_text(&report),
            ":hourglass_flowing_sand: *fix-bugs* is working on this: run `r-1`, branch \
             `nightshift/fix-bugs/r-1` of `acme/api`.\n<https://ns.example/api/runs/r-1|View the run>"
        );
        report.repo.clear();
        report.link = None;
        assert!(start_text(&report).ends_with("`nightshift/fix-bugs/r-1`."));
    }

    #[test]
    fn the_end_says_state_reason_summary_branch_and_pull_request() {
        let mut report = report();
        report.pull_request = Some("https://gh.example/acme/api/pull/7".into());
        report.summary = Some("Fixed it.\n<!channel> look".into());
        report.reason = Some(" ".into());
        let text = end_text(&report);
        assert_eq!(
            text,
            ":white_check_mark: *fix-bugs* succeeded: run `r-1`, branch `nightshift/fix-bugs/r-1` (pushed).\n\
             Pull request: <https://gh.example/acme/api/pull/7|https://gh.example/acme/api/pull/7>\n\
             Summary:\n> Fixed it.\n> &lt;!channel&gt; look"
        );
        report.state = "failed".into();
        report.pushed = false;
        report.reason = Some("tests failed".into());
        report.summary = None;
        report.pull_request = None;
        report.link = Some("https://ns.example/r".into());
        assert_eq!(
            end_text(&report),
            ":x: *fix-bugs* failed: run `r-1`, branch `nightshift/fix-bugs/r-1`.\nReason: tests failed\n\
             <https://ns.example/r|View the run>"
        );
        for (state, said) in
            [("timed_out", "timed out"), ("cancelled", "was cancelled"), ("odd<x>", "ended: odd&lt;x&gt;")]
        {
            report.state = state.into();
            assert!(end_text(&report).contains(&format!("* {said}: run")), "{state}");
        }
    }

    #[test]
    fn backticks_cannot_end_a_code_span() {
        assert_eq!(code("a`<!here>`b"), "`a'&lt;!here&gt;'b`");
    }

    #[test]
    fn slack_errors_are_retried_or_failed() {
        let after = Some(Duration::from_secs(3));
        let class = |error: &str| classify("chat.postMessage", "C1", error, Some("chat:write"), after);
        for error in
            ["ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"]
        {
            assert!(
                matches!(class(error), Outcome::Retry { after: Some(a), .. } if a == Duration::from_secs(3)),
                "{error}"
            );
        }
        let why = |error: &str| match class(error) {
            Outcome::Failed { why } => why,
            other => panic!("{error}: {other:?}"),
        };
        assert_eq!(why("invalid_auth"), "Slack refused the token (invalid_auth): check the target's token");
        assert_eq!(why("not_authed"), "no token reached Slack (not_authed)");
        assert_eq!(why("token_revoked"), "the Slack token no longer works (token_revoked)");
        assert_eq!(
            why("missing_scope"),
            "the Slack app lacks the scope chat:write for chat.postMessage (missing_scope)"
        );
        assert_eq!(why("channel_not_found"), "Slack has no channel C1 the app can see (channel_not_found)");
        assert_eq!(why("not_in_channel"), "the Slack app is not in channel C1: invite it (not_in_channel)");
        assert_eq!(why("is_archived"), "channel C1 is archived (is_archived)");
        assert_eq!(why("msg_too_long"), "the message is too long for Slack (msg_too_long)");
        assert_eq!(why("message_not_found"), "the Slack message to edit is gone (message_not_found)");
        assert_eq!(why("something_new"), "Slack refused chat.postMessage (something_new)");
        assert_eq!(why(&"x".repeat(500)).len(), "Slack refused chat.postMessage ()".len() + 80);
    }

    #[test]
    fn http_statuses_other_than_success_are_classified() {
        let after = Some(Duration::from_secs(7));
        assert_eq!(status_outcome(StatusCode::OK, after), None);
        assert_eq!(
            status_outcome(StatusCode::TOO_MANY_REQUESTS, after),
            Some(Outcome::Retry { after, why: "Slack rate limit (HTTP 429)".into() })
        );
        assert_eq!(
            status_outcome(StatusCode::BAD_GATEWAY, None),
            Some(Outcome::Retry { after: None, why: "Slack answered HTTP 502".into() })
        );
        assert_eq!(
            status_outcome(StatusCode::NOT_FOUND, None),
            Some(Outcome::Failed { why: "Slack answered HTTP 404".into() })
        );
        assert!(matches!(status_outcome(StatusCode::MOVED_PERMANENTLY, None), Some(Outcome::Failed { .. })));
    }

    #[test]
    fn answers_are_read_as_ok_or_an_error_code() {
        assert_eq!(read_answer(br#"{"ok":true,"ts":"1.2"}"#, None), Ok(json!({"ok": true, "ts": "1.2"})));
        assert_eq!(
            read_answer(br#"{"ok":false,"error":"missing_scope","needed":"chat:write"}"#, None),
            Err(Refusal::Api { error: "missing_scope".into(), needed: Some("chat:write".into()), after: None })
        );
        assert_eq!(
            read_answer(br#"{"ok":false}"#, None),
            Err(Refusal::Api { error: "unknown".into(), needed: None, after: None })
        );
        assert!(matches!(read_answer(b"<html>", None), Err(Refusal::Transport(Outcome::Retry { .. }))));
    }

    #[test]
    fn a_sent_message_is_its_ts_and_channel() {
        assert_eq!(
            sent(&json!({"ok": true, "channel": "C9", "ts": "1.5"}), "#general"),
            Outcome::Sent(Posted { id: "1.5".into(), channel: Some("C9".into()), url: None })
        );
        assert_eq!(
            sent(&json!({"ok": true, "ts": "1.5"}), "C1"),
            Outcome::Sent(Posted { id: "1.5".into(), channel: Some("C1".into()), url: None })
        );
        assert!(matches!(sent(&json!({"ok": true}), "C1"), Outcome::Retry { .. }));
    }

    #[test]
    fn the_post_carries_metadata_and_no_unfurling() {
        assert_eq!(
            post_body("C1", Some("1.1"), "hi", "r-1-0-start"),
            json!({
                "channel": "C1", "thread_ts": "1.1", "text": "hi",
                "unfurl_links": false, "unfurl_media": false,
                "metadata": {"event_type": "nightshift_run", "event_payload": {"message_id": "r-1-0-start"}},
            })
        );
        assert!(post_body("C1", None, "hi", "m").get("thread_ts").is_none());
    }

    #[test]
    fn the_lookup_reads_the_thread_or_the_channel() {
        let (method, query) = lookup_query("C1", Some("1.1"));
        assert_eq!(method, "conversations.replies");
        assert!(query.contains(&("ts", "1.1".into())) && query.contains(&("limit", "200".into())));
        assert!(query.contains(&("include_all_metadata", "true".into())) && query.contains(&("channel", "C1".into())));
        let (method, query) = lookup_query("C1", None);
        assert_eq!(method, "conversations.history");
        assert!(query.contains(&("limit", "20".into())) && !query.iter().any(|(key, _)| *key == "ts"));
    }

    #[test]
    fn the_earlier_post_is_found_by_its_metadata() {
        let ours = |ts: &str, id: &str| json!({"ts": ts, "metadata": {"event_type": EVENT_TYPE, "event_payload": {"message_id": id}}});
        let answer = json!({"ok": true, "messages": [
            {"ts": "1.0", "text": "the question"},
            {"ts": "1.1", "metadata": {"event_type": "other_app", "event_payload": {"message_id": "m"}}},
            ours("1.2", "other"),
            ours("1.3", "m"),
        ]});
        assert_eq!(find_posted(&answer, "m"), Some("1.3"));
        assert_eq!(find_posted(&answer, "absent"), None);
        assert_eq!(find_posted(&json!({"ok": true}), "m"), None);
    }
}
