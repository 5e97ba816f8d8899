//! What a run would send to its `notify:` targets, built by the transports' own builders
//! (`slack::text` and `post_body`, `github::plan`, `webhook::payload`) with no I/O and no
//! token read: `nightshift render` prints it and an automation's tests check it
//! (`expect.notify`). The run's id and what its start left behind (a Slack `ts`, a
//! comment's id) are not known before it runs: placeholders stand for them, and for the
//! parts of the result a test does not give.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Kind, Outcome, Report, Target, github, slack, webhook};
use crate::config::{GithubSettings, NotifyKind, SlackSettings, TestResult};
use crate::runs::outbox::{kind_name, sends};
use crate::task::Task;

/// The run's id in a preview: a run has none before the store creates it.
pub const RUN: &str = "RUN";
/// The summary of a result that gives none.
pub const PLACEHOLDER_SUMMARY: &str = "(placeholder: the agent's summary)";
/// The pull request's link of a result that gives none, when a target opens one.
pub const PLACEHOLDER_PULL_REQUEST: &str = "(placeholder: the pull request's link)";
/// What the start's Slack message is known by (its `ts`), for the end's edit.
pub const START_TS: &str = "(the start's ts)";
/// The id of the comment the start posted, for the end's edit.
pub const START_COMMENT: &str = "(the start's comment id)";

/// One message, as its transport would send it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// The target's index in `notify:`.
    pub index: usize,
    pub target: NotifyKind,
    pub kind: Kind,
    /// Where it goes: the Slack channel (and thread), `owner/name#number`, the pull
    /// request's repository and branches, the webhook's URL.
    pub to: String,
    /// `METHOD URL` of the request; none when the message would fail without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The headers that say something about the message (a webhook's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The request's JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// What a person reads: Slack's text, the comment's body, the pull request's title and
    /// body, the webhook's JSON (pretty-printed), or `not sent: WHY`.
    pub text: String,
    /// How it relates to other messages, or why it is not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Preview {
    /// The message as lines a person reads: a heading, then its text indented.
    pub fn describe(&self) -> String {
        let mut out = format!("{} {} → {}", self.target.as_str(), kind_name(self.kind), self.to);
        if let Some(request) = &self.request {
            out.push_str(&format!(" ({request})"));
        }
        if let Some(note) = &self.note {
            out.push_str(&format!("; {note}"));
        }
        for line in self.text.lines() {
            out.push_str("\n  |");
            if !line.is_empty() {
                out.push(' ');
                out.push_str(line);
            }
        }
        out
    }
}

/// Every message a run of `task` would send, and the result its end messages report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Previews {
    pub messages: Vec<Preview>,
    pub result: ResultShown,
}

/// The result the end messages report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultShown {
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub pushed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<String>,
    /// The fields a placeholder stands for (none was given).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placeholders: Vec<&'static str>,
}

/// The messages a run of `task` would send, at its start and at its end with `result`
/// (placeholders for what it does not give); `now` is the attempt's time a webhook's
/// payload carries. Requests are shown against nightshift.yaml's API URLs.
pub fn messages(
    task: &Task,
    result: Option<&TestResult>,
    slack: &SlackSettings,
    github: &GithubSettings,
    now: DateTime<Utc>,
) -> Previews {
    let start = report(task, None);
    let shown = ending(task, result);
    let end = report(task, Some(&shown));
    let slack_api = slack.url().map(|url| url.to_string()).unwrap_or_else(|_| slack.api_url.clone());
    let github_api = github.url().map(|url| url.to_string()).unwrap_or_else(|_| github.api_url.clone());
    let mut messages = Vec::new();
    for (index, target) in task.notify.iter().enumerate() {
        for kind in [Kind::Start, Kind::End] {
            if !sends(target, kind) {
                continue;
            }
            let report = if kind == Kind::Start { &start } else { &end };
            let message_id = format!("{RUN}-{index}-{}", kind_name(kind));
            let mut preview = Preview {
                index,
                target: target.kind(),
                kind,
                to: destination(target, &task.branch),
                request: None,
                headers: BTreeMap::new(),
                body: None,
                text: String::new(),
                note: None,
            };
            match target {
                Target::Slack { channel, thread_ts, .. } => {
                    let text = slack::text(kind, report);
                    let (method, body, note) = match kind {
                        Kind::Start => (
                            "chat.postMessage",
                            slack::post_body(channel, thread_ts.as_deref(), &text, &message_id),
                            thread_ts.as_ref().map(|_| "a reply in the triggering message's thread"),
                        ),
                        Kind::End => (
                            "chat.update",
                            slack::update_body(channel, START_TS, &text),
                            Some("edits the start's message (posted anew if it is gone)"),
                        ),
                    };
                    preview.request = Some(format!("POST {slack_api}{method}"));
                    preview.body = Some(body);
                    preview.text = text;
                    preview.note = note.map(str::to_string);
                }
                Target::GithubComment { .. } | Target::GithubPullRequest { .. } => {
                    match github::plan(target, kind, report, &github::marker(&message_id)) {
                        Ok(github::Plan::Comment { repo, number, body }) => {
                            preview.request = Some(match kind {
                                Kind::Start => format!("POST {github_api}{}", github::comments_path(repo, number)),
                                Kind::End => {
                                    preview.note = Some("edits the start's comment (posted anew if it is gone)".into());
                                    format!("PATCH {github_api}{}", github::comment_path(repo, START_COMMENT))
                                }
                            });
                            preview.body = Some(github::comment_json(&body));
                            preview.text = body;
                        }
                        Ok(github::Plan::PullRequest { repo, request }) => {
                            let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or_default();
                            preview.text = format!("{}\n\n{}", field("title"), field("body"));
                            preview.request = Some(format!("POST {github_api}{}", github::pulls_path(repo)));
                            preview.body = Some(request);
                        }
                        Err(outcome) => not_sent(&mut preview, outcome),
                    }
                }
                Target::Webhook { url, secret } => match crate::config::notify::http_url(url) {
                    Ok(_) => {
                        let body = serde_json::to_value(webhook::payload(kind, report, now)).unwrap_or_default();
                        preview.text = serde_json::to_string_pretty(&body).unwrap_or_default();
                        preview.request = Some(format!("POST {url}"));
                        preview.body = Some(body);
                        preview.headers.insert("webhook-id".into(), message_id.clone());
                        preview.headers.insert("webhook-timestamp".into(), now.timestamp().to_string());
                        if let Some(secret) = secret {
                            let signature = format!("v1,… (HMAC-SHA256 with the key in {secret})");
                            preview.headers.insert("webhook-signature".into(), signature);
                        }
                    }
                    Err(why) => not_sent(&mut preview, Outcome::Failed { why }),
                },
            }
            messages.push(preview);
        }
    }
    Previews { messages, result: shown }
}

/// A message that fails without a request.
fn not_sent(preview: &mut Preview, outcome: Outcome) {
    let why = match outcome {
        Outcome::Failed { why } | Outcome::Retry { why, .. } => why,
        Outcome::Sent(_) => "nothing to send".to_string(),
    };
    preview.text = format!("not sent: {why}");
    preview.note = Some("the message fails".into());
}

/// Where a message to `target` goes, in words.
fn destination(target: &Target, branch: &str) -> String {
    match target {
        Target::Slack { channel, thread_ts: Some(ts), .. } => format!("{channel}, thread {ts}"),
        Target::Slack { channel, thread_ts: None, .. } => channel.clone(),
        Target::GithubComment { repo, number, .. } => format!("{repo}#{number}"),
        Target::GithubPullRequest { repo, base, .. } => format!("{repo}, {branch} into {base}"),
        Target::Webhook { url, .. } => url.clone(),
    }
}

/// The result the end reports: the test's, with placeholders for what it leaves out.
fn ending(task: &Task, result: Option<&TestResult>) -> ResultShown {
    let given = result.cloned().unwrap_or_default();
    let succeeded = given.state == crate::config::EndState::Succeeded;
    let mut placeholders = Vec::new();
    let summary = match given.summary {
        // An empty summary is none, as the sender reports it.
        Some(summary) => Some(summary).filter(|summary| !summary.is_empty()),
        None => {
            placeholders.push("summary");
            Some(PLACEHOLDER_SUMMARY.to_string())
        }
    };
    let pushed = given.pushed.unwrap_or(task.push && succeeded);
    let opens_pull = pushed && task.notify.iter().any(|target| matches!(target, Target::GithubPullRequest { .. }));
    let pull_request = match given.pull_request {
        Some(link) => Some(link),
        None if opens_pull => {
            placeholders.push("pull_request");
            Some(PLACEHOLDER_PULL_REQUEST.to_string())
        }
        None => None,
    };
    ResultShown {
        state: given.state.as_str().to_string(),
        summary,
        reason: given.reason.filter(|_| !succeeded),
        pushed,
        pull_request,
        placeholders,
    }
}

/// The report a message is built from: the start's (the run just started), or the end's
/// with `ended`. As `sender::report` builds it from a run record.
fn report(task: &Task, ended: Option<&ResultShown>) -> Report {
    Report {
        run: RUN.to_string(),
        automation: task.automation.clone(),
        state: ended.map_or("running", |ended| ended.state.as_str()).to_string(),
        summary: ended.and_then(|ended| ended.summary.clone()),
        reason: ended.and_then(|ended| ended.reason.clone()),
        repo: task.repo.clone(),
        base: task.base.clone(),
        branch: task.branch.clone(),
        pushed: ended.is_some_and(|ended| ended.pushed),
        pull_request: ended.and_then(|ended| ended.pull_request.clone()),
        link: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Approval, DurationSpec, EndState, OutputFormat, SecretRef};
    use crate::netpolicy::NetworkPolicy;
    use crate::task::{AgentCommand, PhasePolicies};

    fn task(push: bool, notify: Vec<Target>) -> Task {
        Task {
            automation: "fix".into(),
            agent: AgentCommand {
                profile: "codex".into(),
                argv: vec!["codex".into(), "{prompt}".into()],
                plan_argv: None,
                env: BTreeMap::new(),
                output: OutputFormat::default(),
                paths: Vec::new(),
                pass_env: Vec::new(),
            },
            repo: "/srv/git/api".into(),
            base: "main".into(),
            branch: "agent/fix".into(),
            prompt: "p".into(),
            setup: Vec::new(),
            secrets: BTreeMap::new(),
            network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
            paths: Vec::new(),
            timeout: DurationSpec::from_secs(60),
            setup_timeout: DurationSpec::from_secs(60),
            approval: Approval::default(),
            push,
            untrusted_input: false,
            limits: Default::default(),
            notify,
            follows: None,
            plan: None,
            staging: Default::default(),
        }
    }

    fn token() -> SecretRef {
        SecretRef::Env("TOKEN".into())
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T09:00:00Z").expect("time").to_utc()
    }

    #[test]
    fn placeholders_stand_for_what_the_result_leaves_out_and_are_named() {
        let pull =
            Target::GithubPullRequest { repo: "acme/api".into(), base: "main".into(), draft: true, token: token() };
        let pushed = task(true, vec![pull.clone()]);
        let previews = messages(&pushed, None, &SlackSettings::default(), &GithubSettings::default(), now());
        assert_eq!(previews.result.placeholders, ["summary", "pull_request"]);
        assert!(previews.result.pushed);
        assert_eq!(previews.messages.len(), 1, "a pull request hears of the end only");
        assert_eq!(
            previews.messages[0].body.as_ref().expect("body")["title"],
            "fix: (placeholder: the agent's summary)"
        );

        // A run that failed pushed nothing: no pull request, and the message says why.
        let failed = TestResult { state: EndState::Failed, summary: Some(String::new()), ..Default::default() };
        let previews = messages(&pushed, Some(&failed), &SlackSettings::default(), &GithubSettings::default(), now());
        assert!(previews.result.placeholders.is_empty() && previews.result.summary.is_none());
        assert_eq!(previews.result.pull_request, None);
        let message = &previews.messages[0];
        assert!(message.text.starts_with("not sent: the branch was not pushed"), "{message:?}");
        assert_eq!((message.request.as_ref(), message.body.as_ref()), (None, None));
    }

    #[test]
    fn a_webhook_shows_its_id_and_which_secret_signs_it_never_a_value() {
        let hook = Target::Webhook { url: "https://ops.example.com/h".into(), secret: Some(token()) };
        let given = TestResult { summary: Some("done".into()), ..Default::default() };
        let previews = messages(
            &task(false, vec![hook]),
            Some(&given),
            &SlackSettings::default(),
            &GithubSettings::default(),
            now(),
        );
        let [message] = previews.messages.as_slice() else { panic!("{previews:?}") };
        assert_eq!(message.headers["webhook-id"], "RUN-0-end");
        assert_eq!(message.headers["webhook-timestamp"], now().timestamp().to_string());
        assert_eq!(message.headers["webhook-signature"], "v1,… (HMAC-SHA256 with the key in env:TOKEN)");
        let body = message.body.as_ref().expect("body");
        assert_eq!((body["type"].as_str(), body["data"]["summary"].as_str()), (Some("run.ended"), Some("done")));
        assert_eq!(message.request.as_deref(), Some("POST https://ops.example.com/h"));
    }

    #[test]
    fn a_slack_start_is_the_transports_post_and_the_end_its_edit() {
        let slack = Target::Slack { channel: "C1".into(), thread_ts: Some("1.1".into()), token: token() };
        let settings = SlackSettings { api_url: "http://127.0.0.1:9/api".into(), token: None };
        let previews = messages(&task(false, vec![slack]), None, &settings, &GithubSettings::default(), now());
        let [start, end] = previews.messages.as_slice() else { panic!("{previews:?}") };
        assert_eq!(start.request.as_deref(), Some("POST http://127.0.0.1:9/api/chat.postMessage"));
        let report = report(&task(false, Vec::new()), None);
        let posted = slack::post_body("C1", Some("1.1"), &slack::start_text(&report), "RUN-0-start");
        assert_eq!(start.body.as_ref(), Some(&posted));
        assert_eq!(end.request.as_deref(), Some("POST http://127.0.0.1:9/api/chat.update"));
        assert_eq!(end.body.as_ref().expect("body")["ts"], START_TS);
        assert_eq!(end.to, "C1, thread 1.1");
    }
}
