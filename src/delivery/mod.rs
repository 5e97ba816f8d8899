//! Delivery: telling people what a run is doing and what it did, where the work came from
//! (a Slack thread, a GitHub pull request or issue, a signed webhook), through a durable
//! outbox (docs/notify.md).
//!
//! The contract between the outbox's sender and the transports: a run's task carries its
//! [`Target`]s, rendered at ingest; the store writes one outbox message per (run, target,
//! [`Kind`]) in the same commit as the run's change of state; the sender builds a
//! [`Report`] from the run and hands each due message to its transport, which answers
//! with an [`Outcome`]. A transport never touches the store.

pub mod github;
pub mod preview;
pub mod sender;
pub mod slack;
pub mod transports;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{NotifyKind, SecretRef};

/// Where a run's messages go, with everything the event told about the place: rendered
/// into the run's task at ingest, so a message can be sent after the automation changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A message in `channel`; in the thread of `thread_ts` when the run came from a
    /// message there. The end edits what the start posted (`chat.update`).
    Slack { channel: String, thread_ts: Option<String>, token: SecretRef },
    /// One comment on pull request or issue `number` of `repo` (`owner/name`), posted at
    /// the start and edited at the end.
    GithubComment { repo: String, number: u64, token: SecretRef },
    /// A pull request from the run's pushed branch against `base`, opened at the end.
    GithubPullRequest { repo: String, base: String, draft: bool, token: SecretRef },
    /// The run as JSON, POSTed to `url`; signed with Standard Webhooks when `secret` is set.
    Webhook { url: String, secret: Option<SecretRef> },
}

impl Target {
    /// The kind of target, as `notify:` names it.
    pub fn kind(&self) -> NotifyKind {
        match self {
            Target::Slack { .. } => NotifyKind::Slack,
            Target::GithubComment { .. } => NotifyKind::GithubComment,
            Target::GithubPullRequest { .. } => NotifyKind::GithubPullRequest,
            Target::Webhook { .. } => NotifyKind::Webhook,
        }
    }
}

/// Which of a run's messages to a target this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The run started: what is being done, and the run's id.
    Start,
    /// The run ended: its state, summary, branch and pull request. Edits the start's
    /// message where the target can (Slack, GitHub comments).
    End,
}

/// What a message says: the run as a reader sees it. Built by the sender from the run
/// record at the time of sending, never from the agent's words alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    pub automation: String,
    /// `running`, `succeeded`, `failed`, `timed_out`, `cancelled`, ...
    pub state: String,
    /// The agent's summary (untrusted text: transports neutralise what their format
    /// would act on, such as Slack's `<!channel>`).
    pub summary: Option<String>,
    /// Why a run failed, timed out or was cancelled.
    pub reason: Option<String>,
    pub repo: String,
    pub base: String,
    pub branch: String,
    /// Whether the branch was pushed (a pull request needs it).
    pub pushed: bool,
    /// The pull request opened for the run, once one is.
    pub pull_request: Option<String>,
    /// Where the run can be seen (`{public_url}/api/runs/{id}`), when the server has a
    /// public URL.
    pub link: Option<String>,
}

/// What a sent message left behind, kept on the outbox entry so the end can edit it
/// (Slack `channel` + `ts`, a GitHub comment id, a pull request number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    /// The target's own id of the message: Slack `ts`, GitHub comment id, PR number.
    pub id: String,
    /// Slack's channel id as the API answered it (a `#name` target becomes an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A link a person can open (the pull request's `html_url`, the comment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One try at sending one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Stable for a message across its attempts (`webhook-id`, the marker a GitHub
    /// comment carries, Slack message metadata): `{run}-{target index}-{kind}`.
    pub message_id: String,
    /// 1 for the first try.
    pub number: u32,
    /// An earlier try may have reached the target without its answer being recorded (the
    /// engine stopped mid-send): look for that message before posting a new one.
    pub unsure: bool,
}

/// How one attempt went. The sender records it as an activity on the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent(Posted),
    /// Try again: after `after` when the target said (`Retry-After`), else on the
    /// sender's backoff. Network errors, 429, 5xx.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Never try this message again: a 4xx that will not change (bad token, unknown
    /// channel, a 410 from a webhook), a refused address.
    Failed {
        why: String,
    },
}

/// Everything a transport needs for one attempt. Every transport module has a `Client`
/// (holding its HTTP client and API base URL from nightshift.yaml) with
/// `async fn send(&self, message: &Message<'_>) -> Outcome`.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub target: &'a Target,
    pub kind: Kind,
    pub report: &'a Report,
    /// What the run's start message to this target left behind, for the end to edit.
    pub earlier: Option<&'a Posted>,
    pub attempt: &'a Attempt,
    /// The target's token or signing secret, resolved by the sender where it runs
    /// (`None` for a webhook without a secret).
    pub secret: Option<&'a str>,
}

/// A `Retry-After` value as a wait from `now`: seconds, or an HTTP date (a date already
/// past is no wait). Every transport reads it with this.
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?.to_utc();
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Sends one message. The sender holds one `Transport` that dispatches on the target's
/// kind to the Slack, GitHub and webhook clients.
pub trait Transport: Send + Sync {
    fn send<'a>(&'a self, message: &'a Message<'a>) -> BoxFuture<'a, Outcome>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").expect("time").to_utc();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now), Some(Duration::from_secs(90)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-3", now), None);
    }
}
