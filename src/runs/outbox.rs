//! The outbox's rules, pure, so every store backend applies them the same way: which
//! messages a run's change of state creates, the order in which they may go, and when a
//! message that could not be sent is tried again or given up (docs/notify.md).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::clock::later;
use super::{Run, RunId, RunState};
use crate::delivery::{Kind, Outcome, Posted, Target};

/// The wait before the second attempt; it doubles with each attempt after.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10 * 60);
/// A target's `Retry-After` is honoured up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// A message is given up after this many attempts...
pub const MAX_ATTEMPTS: u32 = 200;
/// ...or once its next attempt would be this long after it was created.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a message waits for those it goes after (`Entry::after`) before it goes
/// anyway: an end without the pull request's link beats no end.
pub const ORDER_WAIT: Duration = Duration::from_secs(10 * 60);

/// One message: a run's start or end, to one of its targets (by its index in the
/// task's `notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub run: RunId,
    pub target: u32,
    pub kind: Kind,
}

impl Key {
    /// The message's id across its attempts (`Attempt::message_id`): `r42-0-end`.
    pub fn message_id(&self) -> String {
        format!("{}-{}-{}", self.run, self.target, kind_name(self.kind))
    }
}

/// `start` or `end`.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Start => "start",
        Kind::End => "end",
    }
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EntryState {
    /// Waiting for `next_at` (and for the messages it goes after).
    Pending,
    /// An attempt began and its outcome is not recorded yet. Found so at open, the
    /// engine stopped mid-send: the next attempt is unsure.
    InFlight,
    /// The target took it; what it left, for the end to edit.
    Sent { posted: Posted },
    /// Never tried again.
    Failed { why: String },
}

impl EntryState {
    /// Sent or failed: nothing more will happen to it.
    pub fn is_settled(&self) -> bool {
        matches!(self, EntryState::Sent { .. } | EntryState::Failed { .. })
    }
}

/// One message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: Key,
    pub state: EntryState,
    /// Attempts begun so far.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When the next attempt may begin.
    pub next_at: DateTime<Utc>,
    /// Messages of the same run that go first while they are unsettled (at most
    /// `ORDER_WAIT`): an end waits for its target's start, so it can edit it, and the
    /// ends of other targets wait for the pull request's end, so they carry its link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Key>,
    /// Why the last attempt did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Entry {
    /// A message created at `now`, due at once.
    pub fn new(key: Key, after: Vec<Key>, now: DateTime<Utc>) -> Entry {
        Entry { key, state: EntryState::Pending, attempts: 0, created_at: now, next_at: now, after, last_error: None }
    }

    /// Whether its turn has come at `now`: it is pending, due, and every message it goes
    /// after is settled (`unsettled` says which are not) or it has waited `ORDER_WAIT`.
    pub fn is_ready(&self, now: DateTime<Utc>, unsettled: impl Fn(&Key) -> bool) -> bool {
        self.state == EntryState::Pending && self.next_at <= now && !self.is_blocked(now, unsettled)
    }

    /// Whether it still waits for another message at `now`.
    pub fn is_blocked(&self, now: DateTime<Utc>, unsettled: impl Fn(&Key) -> bool) -> bool {
        now < self.order_deadline() && self.after.iter().any(unsettled)
    }

    /// When it stops waiting for others.
    pub fn order_deadline(&self) -> DateTime<Utc> {
        later(self.created_at, ORDER_WAIT)
    }
}

/// Whether a target gets a message of `kind`: a pull request and a webhook only hear of
/// the end; Slack and GitHub comments post at the start and edit at the end.
pub fn sends(target: &Target, kind: Kind) -> bool {
    match kind {
        Kind::End => true,
        Kind::Start => target.kind().told_at_start(),
    }
}

/// Whether the run reached a state the end message reports.
fn is_end(state: RunState) -> bool {
    matches!(state, RunState::Succeeded | RunState::Failed | RunState::TimedOut | RunState::Cancelled)
}

/// The messages a change of `before` into `after` creates, each with those it goes after:
/// starts when the run first becomes running (not on a retry's attempt), ends when it
/// reaches a final state (a skipped run gets none; a run cancelled before it started gets
/// only ends).
pub fn created(before: &Run, after: &Run, now: DateTime<Utc>) -> Vec<Entry> {
    let Some(task) = &after.task else { return Vec::new() };
    let kind = if after.state == RunState::Running && before.state != RunState::Running && before.started_at.is_none() {
        Kind::Start
    } else if is_end(after.state) && !before.state.is_finished() {
        Kind::End
    } else {
        return Vec::new();
    };
    let targets = &task.notify;
    let key = |target: usize, kind| Key { run: after.id, target: target as u32, kind };
    let pull_requests: Vec<Key> = targets
        .iter()
        .enumerate()
        .filter(|(_, target)| matches!(target, Target::GithubPullRequest { .. }))
        .map(|(index, _)| key(index, Kind::End))
        .collect();
    targets
        .iter()
        .enumerate()
        .filter(|(_, target)| sends(target, kind))
        .map(|(index, target)| {
            let mut first = Vec::new();
            if kind == Kind::End {
                if sends(target, Kind::Start) {
                    first.push(key(index, Kind::Start));
                }
                if !matches!(target, Target::GithubPullRequest { .. }) {
                    first.extend(pull_requests.iter().copied());
                }
            }
            Entry::new(key(index, kind), first, now)
        })
        .collect()
}

/// The wait after `attempt` failed attempts (≥ 1): `FIRST_BACKOFF · 2^(attempt-1)`,
/// capped at `MAX_BACKOFF`, then a random point in its upper half.
pub fn backoff(attempt: u32, random_unit: f64) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX));
    let capped = doubled.min(MAX_BACKOFF);
    capped / 2 + capped.mul_f64(random_unit.clamp(0.0, 1.0) / 2.0)
}

/// The entry after an attempt that ended with `outcome` at `now`: sent, failed, or
/// pending again at the next attempt's time (the target's `Retry-After`, capped, else
/// the backoff), given up once that would pass `MAX_ATTEMPTS` or `GIVE_UP_AFTER`.
pub fn settle(entry: &Entry, outcome: &Outcome, now: DateTime<Utc>, random_unit: f64) -> Entry {
    let mut next = entry.clone();
    match outcome {
        Outcome::Sent(posted) => {
            next.state = EntryState::Sent { posted: posted.clone() };
            next.last_error = None;
        }
        Outcome::Failed { why } => {
            next.state = EntryState::Failed { why: why.clone() };
            next.last_error = Some(why.clone());
        }
        Outcome::Retry { after, why } => {
            let wait = after.map_or_else(|| backoff(entry.attempts, random_unit), |after| after.min(MAX_RETRY_AFTER));
            let at = later(now, wait);
            if entry.attempts >= MAX_ATTEMPTS || at > later(entry.created_at, GIVE_UP_AFTER) {
                let why = format!("gave up after {} attempts: {why}", entry.attempts);
                next.state = EntryState::Failed { why: why.clone() };
                next.last_error = Some(why);
            } else {
                next.state = EntryState::Pending;
                next.next_at = at;
                next.last_error = Some(why.clone());
            }
        }
    }
    next
}

/// How a target is named in the run's activities: its kind and place, never a secret
/// (a webhook's URL without its query).
pub fn label(target: &Target) -> String {
    match target {
        Target::Slack { channel, .. } => format!("slack {channel}"),
        Target::GithubComment { repo, number, .. } => format!("github comment on {repo}#{number}"),
        Target::GithubPullRequest { repo, base, .. } => format!("github pull request on {repo} (into {base})"),
        Target::Webhook { url, .. } => {
            let shown = url.split(['?', '#']).next().unwrap_or(url);
            format!("webhook {shown}")
        }
    }
}

/// The activity recorded for an attempt that left `entry` as it is.
pub fn activity_text(target: &Target, entry: &Entry) -> String {
    let what = format!("{} {}", label(target), kind_name(entry.key.kind));
    match &entry.state {
        EntryState::Sent { posted } => {
            let mut text = format!("{what}: posted ({}", posted.id);
            if let Some(channel) = &posted.channel {
                text.push_str(&format!(" in {channel}"));
            }
            text.push(')');
            if let Some(url) = &posted.url {
                text.push_str(&format!(" {url}"));
            }
            text
        }
        EntryState::Failed { why } => format!("{what}: failed: {why}"),
        EntryState::Pending | EntryState::InFlight => format!(
            "{what}: {}; retrying at {}",
            entry.last_error.as_deref().unwrap_or("not sent"),
            entry.next_at.to_rfc3339()
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::config::{Approval, DurationSpec, OutputFormat, SecretRef};
    use crate::netpolicy::NetworkPolicy;
    use crate::task::{AgentCommand, PhasePolicies, Task};

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn token() -> SecretRef {
        SecretRef::Env("TOKEN".into())
    }

    fn slack() -> Target {
        Target::Slack { channel: "C1".into(), thread_ts: Some("1.2".into()), token: token() }
    }

    fn pull_request() -> Target {
        Target::GithubPullRequest { repo: "o/r".into(), base: "main".into(), draft: true, token: token() }
    }

    fn webhook() -> Target {
        Target::Webhook { url: "https://example.com/hook?key=secret".into(), secret: None }
    }

    fn run(state: RunState, started: bool, targets: Vec<Target>) -> Run {
        let task = Task {
            automation: "probe".into(),
            agent: AgentCommand {
                profile: "codex".into(),
                argv: vec!["codex".into(), "{prompt}".into()],
                plan_argv: None,
                env: Default::default(),
                output: OutputFormat::default(),
                paths: Vec::new(),
                pass_env: Vec::new(),
            },
            repo: "/srv/git/api".into(),
            base: "main".into(),
            branch: "nightshift/probe-1".into(),
            prompt: "p".into(),
            setup: Vec::new(),
            secrets: Default::default(),
            network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
            paths: Vec::new(),
            timeout: DurationSpec::from_secs(60),
            setup_timeout: DurationSpec::from_secs(60),
            approval: Approval::default(),
            push: true,
            untrusted_input: false,
            limits: Default::default(),
            notify: targets,
            follows: None,
            plan: None,
            staging: Default::default(),
        };
        let mut run = Run::queued(
            RunId(7),
            "probe".into(),
            "h".into(),
            vec!["e".into()],
            Some(task),
            Default::default(),
            None,
            at(0),
        );
        run.state = state;
        run.attempt = 1;
        run.started_at = started.then(|| at(0));
        run
    }

    fn keys(entries: &[Entry]) -> Vec<(u32, Kind, Vec<Key>)> {
        entries.iter().map(|e| (e.key.target, e.key.kind, e.after.clone())).collect()
    }

    fn key(target: u32, kind: Kind) -> Key {
        Key { run: RunId(7), target, kind }
    }

    #[test]
    fn a_first_start_creates_starts_for_the_targets_that_post_at_the_start_only() {
        let targets = vec![slack(), pull_request(), webhook()];
        let before = run(RunState::Leased, false, targets.clone());
        let after = run(RunState::Running, true, targets);
        let entries = created(&before, &after, at(5));
        assert_eq!(keys(&entries), vec![(0, Kind::Start, vec![])]);
        assert_eq!(entries[0].next_at, at(5));
        assert_eq!(entries[0].state, EntryState::Pending);
    }

    #[test]
    fn a_retry_attempt_starting_again_creates_nothing() {
        let before = run(RunState::Leased, true, vec![slack()]);
        let after = run(RunState::Running, true, vec![slack()]);
        assert!(created(&before, &after, at(5)).is_empty());
        let running = run(RunState::Running, false, vec![slack()]);
        assert!(created(&running, &after, at(5)).is_empty(), "a running run saved again");
    }

    #[test]
    fn every_final_state_but_skipped_creates_ends_ordered_after_starts_and_the_pull_request() {
        let targets = vec![slack(), pull_request(), webhook()];
        for state in [RunState::Succeeded, RunState::Failed, RunState::TimedOut, RunState::Cancelled] {
            let before = run(RunState::Running, true, targets.clone());
            let after = run(state, true, targets.clone());
            assert_eq!(
                keys(&created(&before, &after, at(5))),
                vec![
                    (0, Kind::End, vec![key(0, Kind::Start), key(1, Kind::End)]),
                    (1, Kind::End, vec![]),
                    (2, Kind::End, vec![key(1, Kind::End)]),
                ],
                "{state}"
            );
        }
        let before = run(RunState::Queued, false, targets.clone());
        assert!(created(&before, &run(RunState::Skipped, false, targets.clone()), at(5)).is_empty());
        let finished = run(RunState::Failed, true, targets.clone());
        assert!(created(&finished, &run(RunState::Failed, true, targets), at(5)).is_empty(), "saved again");
    }

    #[test]
    fn a_run_cancelled_before_it_started_gets_only_ends_and_one_without_targets_nothing() {
        let before = run(RunState::Queued, false, vec![slack()]);
        let after = run(RunState::Cancelled, false, vec![slack()]);
        assert_eq!(keys(&created(&before, &after, at(1))), vec![(0, Kind::End, vec![key(0, Kind::Start)])]);
        let before = run(RunState::Running, true, vec![]);
        assert!(created(&before, &run(RunState::Succeeded, true, vec![]), at(1)).is_empty());
        let mut failed = run(RunState::Failed, false, vec![]);
        failed.task = None;
        assert!(created(&before, &failed, at(1)).is_empty());
        for state in [RunState::Queued, RunState::Leased, RunState::AwaitingApproval] {
            assert!(created(&before, &run(state, true, vec![slack()]), at(1)).is_empty(), "{state}");
        }
    }

    #[test]
    fn an_end_waits_for_what_it_goes_after_until_the_order_wait_is_over() {
        let entry = Entry::new(key(0, Kind::End), vec![key(0, Kind::Start)], at(0));
        let start_unsettled = |k: &Key| *k == key(0, Kind::Start);
        assert!(!entry.is_ready(at(0), start_unsettled));
        assert!(entry.is_ready(at(0), |_| false));
        let deadline = at(600);
        assert_eq!(entry.order_deadline(), deadline);
        assert!(!entry.is_ready(deadline - chrono::Duration::seconds(1), start_unsettled));
        assert!(entry.is_ready(deadline, start_unsettled));
        let mut later_entry = entry.clone();
        later_entry.next_at = at(10);
        assert!(!later_entry.is_ready(at(9), |_| false));
        assert!(later_entry.is_ready(at(10), |_| false));
        let mut in_flight = entry;
        in_flight.state = EntryState::InFlight;
        assert!(!in_flight.is_ready(at(0), |_| false));
    }

    #[test]
    fn backoff_doubles_from_two_seconds_is_capped_at_ten_minutes_and_jitters_in_the_upper_half() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(6));
        assert_eq!(backoff(9, 1.0), Duration::from_secs(512));
        assert_eq!(backoff(10, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(64, 0.0), MAX_BACKOFF / 2);
        assert_eq!(backoff(1, 7.0), Duration::from_secs(2), "clamped");
    }

    #[test]
    fn settling_records_sent_failed_and_retries_with_retry_after_capped() {
        let mut entry = Entry::new(key(0, Kind::Start), vec![], at(0));
        entry.state = EntryState::InFlight;
        entry.attempts = 1;
        let posted = Posted { id: "1.5".into(), channel: Some("C1".into()), url: None };
        let sent = settle(&entry, &Outcome::Sent(posted.clone()), at(1), 0.0);
        assert_eq!(sent.state, EntryState::Sent { posted });
        let failed = settle(&entry, &Outcome::Failed { why: "401".into() }, at(1), 0.0);
        assert_eq!(failed.state, EntryState::Failed { why: "401".into() });
        let retry = Outcome::Retry { after: Some(Duration::from_secs(30)), why: "429".into() };
        let again = settle(&entry, &retry, at(1), 0.0);
        assert_eq!(
            (again.state.clone(), again.next_at, again.last_error.as_deref()),
            (EntryState::Pending, at(31), Some("429"))
        );
        let long = Outcome::Retry { after: Some(Duration::from_secs(86_000)), why: "429".into() };
        assert_eq!(settle(&entry, &long, at(1), 0.0).next_at, at(1 + 3600));
        let backoff_only = Outcome::Retry { after: None, why: "503".into() };
        assert_eq!(settle(&entry, &backoff_only, at(1), 1.0).next_at, at(3));
    }

    #[test]
    fn a_message_is_given_up_after_its_attempts_or_a_day() {
        let retry = Outcome::Retry { after: None, why: "503".into() };
        let mut entry = Entry::new(key(0, Kind::End), vec![], at(0));
        entry.attempts = MAX_ATTEMPTS;
        let given_up = settle(&entry, &retry, at(1), 0.0);
        assert_eq!(given_up.state, EntryState::Failed { why: format!("gave up after {MAX_ATTEMPTS} attempts: 503") });
        entry.attempts = MAX_ATTEMPTS - 1;
        assert_eq!(settle(&entry, &retry, at(1), 0.0).state, EntryState::Pending);
        let day = 86_400;
        entry.attempts = 3;
        assert_eq!(settle(&entry, &retry, at(day - 8), 1.0).state, EntryState::Pending, "due exactly at a day");
        assert!(settle(&entry, &retry, at(day - 7), 1.0).state.is_settled());
    }

    #[test]
    fn activities_name_the_target_without_secrets_and_say_what_happened() {
        let mut entry = Entry::new(key(0, Kind::Start), vec![], at(0));
        entry.state = EntryState::Sent { posted: Posted { id: "1.5".into(), channel: Some("C1".into()), url: None } };
        assert_eq!(activity_text(&slack(), &entry), "slack C1 start: posted (1.5 in C1)");
        entry.state = EntryState::Pending;
        entry.next_at = at(30);
        entry.last_error = Some("503".into());
        assert_eq!(
            activity_text(&webhook(), &entry),
            "webhook https://example.com/hook start: 503; retrying at 2026-12-01T09:00:30+00:00"
        );
        entry.state = EntryState::Failed { why: "404".into() };
        assert_eq!(activity_text(&pull_request(), &entry), "github pull request on o/r (into main) start: failed: 404");
        entry.state =
            EntryState::Sent { posted: Posted { id: "9".into(), channel: None, url: Some("https://pr/9".into()) } };
        assert_eq!(
            activity_text(&pull_request(), &entry),
            "github pull request on o/r (into main) start: posted (9) https://pr/9"
        );
        let comment = Target::GithubComment { repo: "o/r".into(), number: 3, token: token() };
        assert_eq!(label(&comment), "github comment on o/r#3");
        assert_eq!(key(2, Kind::End).message_id(), "r7-2-end");
        assert!(!EntryState::Pending.is_settled() && !EntryState::InFlight.is_settled());
    }
}
