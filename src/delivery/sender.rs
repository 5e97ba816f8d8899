//! The outbox's sender, run by `serve`: it wakes when the store writes or settles outbox
//! messages and when the next one is due (never a polling loop), sends up to
//! `Sender::BATCH` at once through its `Transport`, and records each attempt's outcome in
//! the store. The store's `runs::outbox` rules decide the order and the retries. Given
//! the server's `Metrics`, it counts each attempt's outcome by target kind.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Kind, Message, Outcome, Report, Target, Transport};
use crate::runs::outbox::{EntryState, Key};
use crate::runs::{Run, RunState};
use crate::scheduler::Clock;
use crate::store::{OutboxDue, Store, StoreError};

/// Sends the outbox's messages.
pub struct Sender {
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    /// The server's public URL, for each report's `link`.
    public_url: Option<String>,
    /// Where each attempt's outcome is counted.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Sender {
    /// Messages sent at once, at most.
    pub const BATCH: usize = 16;
    /// How often an instance that does not send (another holds the outbox duty of a
    /// shared database) asks again whether it should.
    pub const DUTY_CHECK_EVERY: Duration = Duration::from_secs(5);
    /// How long attempts in flight at shutdown may take to finish; the rest stay in
    /// flight in the store and are sent, unsure, at the next start.
    pub const STOP_WITHIN: Duration = Duration::from_secs(15);

    pub fn new(store: Arc<dyn Store>, transport: Arc<dyn Transport>, clock: Arc<dyn Clock>) -> Sender {
        Sender { store, transport, clock, public_url: None, metrics: None }
    }

    /// Counts each attempt's outcome in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Sender {
        self.metrics = Some(metrics);
        self
    }

    /// Reports link to `{url}/api/runs/{id}`.
    pub fn with_public_url(mut self, url: Option<String>) -> Sender {
        self.public_url = url.map(|url| url.trim_end_matches('/').to_string());
        self
    }

    /// Sends until `stopped` turns true, then lets the attempts in flight finish (for at
    /// most `STOP_WITHIN`).
    ///
    /// A slot is free again once the transport has answered: the outcome's store write
    /// (a durable commit) goes on beside the next sends. The message stays in flight in
    /// the store until that write, so it is never picked twice.
    pub async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let written = self.store.outbox_written();
        let mut sending: JoinSet<(Key, Option<Outcome>)> = JoinSet::new();
        let mut settling: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashSet<Key> = HashSet::new();
        loop {
            if *stopped.borrow() {
                break;
            }
            // Registered before looking, so a write while we look still wakes us.
            let notified = written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let due = self.due().await;
            for entry in due.entries {
                if in_flight.len() >= Self::BATCH {
                    break;
                }
                if in_flight.insert(entry.key) {
                    sending.spawn(Arc::clone(&self).send(entry.key));
                }
            }
            let sleep = async {
                match due.next_at {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                Some(done) = sending.join_next(), if !sending.is_empty() => {
                    self.answered(done, &mut in_flight, &mut settling);
                }
                Some(_) = settling.join_next(), if !settling.is_empty() => {}
                _ = sleep => {}
                _ = stopped.changed() => {}
            }
            // Others may have finished at the same time.
            while let Some(done) = sending.try_join_next() {
                self.answered(done, &mut in_flight, &mut settling);
            }
            while settling.try_join_next().is_some() {}
        }
        let drained = async {
            while let Some(done) = sending.join_next().await {
                self.answered(done, &mut in_flight, &mut settling);
            }
            while settling.join_next().await.is_some() {}
        };
        if tokio::time::timeout(Self::STOP_WITHIN, drained).await.is_err() {
            tracing::warn!("outbox: attempts still in flight at shutdown are sent again at the next start");
        }
    }

    /// Frees the slot of a message the transport answered and records its outcome.
    fn answered(
        self: &Arc<Self>,
        done: Result<(Key, Option<Outcome>), tokio::task::JoinError>,
        in_flight: &mut HashSet<Key>,
        settling: &mut JoinSet<()>,
    ) {
        let Ok((key, outcome)) = done else { return };
        in_flight.remove(&key);
        if let Some(outcome) = outcome {
            settling.spawn(Arc::clone(self).settle(key, outcome));
        }
    }

    async fn due(&self) -> OutboxDue {
        let store = Arc::clone(&self.store);
        let now = self.clock.now();
        let due = move || {
            // With a shared database one instance sends; the others look again soon, to
            // take over when it dies.
            if !store.maintains(crate::store::DUTY_OUTBOX, now)? {
                let again = crate::runs::clock::later(now, Sender::DUTY_CHECK_EVERY);
                return Ok(OutboxDue { entries: Vec::new(), next_at: Some(again) });
            }
            store.outbox_due(now, Sender::BATCH)
        };
        match tokio::task::spawn_blocking(due).await {
            Ok(Ok(due)) => due,
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox: cannot read the due messages; looking again in a minute");
                OutboxDue {
                    entries: Vec::new(),
                    next_at: Some(crate::runs::clock::later(now, Duration::from_secs(60))),
                }
            }
            Err(_) => OutboxDue::default(),
        }
    }

    /// One attempt at one message, marked in flight and sent; its outcome, which
    /// `settle` records, or `None` when it was not begun (settled meanwhile, or the store
    /// failed).
    pub async fn send(self: Arc<Self>, key: Key) -> (Key, Option<Outcome>) {
        match self.attempt(key).await {
            Ok(outcome) => (key, outcome),
            Err(error) => {
                tracing::warn!(%error, message = %key.message_id(), "outbox: cannot mark a message in flight");
                (key, None)
            }
        }
    }

    /// Records an attempt's outcome; a failure leaves the message in flight, to be sent
    /// again (unsure) at the next start.
    pub async fn settle(self: Arc<Self>, key: Key, outcome: Outcome) {
        let store = Arc::clone(&self.store);
        let now = self.clock.now();
        let settled = blocking(move || store.outbox_finish(key, &outcome, now, fastrand::f64()).map(drop)).await;
        if let Err(error) = settled {
            tracing::warn!(%error, message = %key.message_id(), "outbox: cannot record a message's attempt");
        }
    }

    async fn attempt(&self, key: Key) -> Result<Option<Outcome>, StoreError> {
        let store = Arc::clone(&self.store);
        let now = self.clock.now();
        let prepared = blocking(move || {
            let Some((_, attempt)) = store.outbox_begin(key, now)? else { return Ok(None) };
            let run = store.run(key.run)?;
            let earlier = match key.kind {
                Kind::Start => None,
                Kind::End => store.outbox(key.run)?.into_iter().find_map(|entry| match entry.state {
                    EntryState::Sent { posted } if entry.key == Key { kind: Kind::Start, ..key } => Some(posted),
                    _ => None,
                }),
            };
            Ok(Some((attempt, run, earlier)))
        })
        .await?;
        let Some((attempt, run, earlier)) = prepared else { return Ok(None) };
        let target = run.as_ref().and_then(|run| run.task.as_ref()?.notify.get(key.target as usize).cloned());
        let target_kind = target.as_ref().map_or("unknown", target_kind);
        let outcome = match (run, target) {
            (Some(run), Some(target)) => match secret(&target) {
                Ok(secret) => {
                    let report = report(&run, self.public_url.as_deref());
                    let message = Message {
                        target: &target,
                        kind: key.kind,
                        report: &report,
                        earlier: earlier.as_ref(),
                        attempt: &attempt,
                        secret: secret.as_deref(),
                    };
                    self.transport.send(&message).await
                }
                Err(why) => Outcome::Failed { why: format!("token: {why}") },
            },
            _ => Outcome::Failed { why: "the run or its target is no longer stored".into() },
        };
        if let Some(metrics) = &self.metrics {
            let counted = match &outcome {
                Outcome::Sent(_) => crate::metrics::NotifyOutcome::Sent,
                Outcome::Retry { .. } => crate::metrics::NotifyOutcome::Retry,
                Outcome::Failed { .. } => crate::metrics::NotifyOutcome::Failed,
            };
            metrics.notify(target_kind, counted);
        }
        Ok(Some(outcome))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Io(format!("the store's task failed: {error}")))?
}

/// A target's kind as `/metrics` labels it.
fn target_kind(target: &Target) -> &'static str {
    match target {
        Target::Slack { .. } => "slack",
        Target::GithubComment { .. } => "github_comment",
        Target::GithubPullRequest { .. } => "github_pull_request",
        Target::Webhook { .. } => "webhook",
    }
}

/// The target's token or signing secret, read now; `None` for a webhook without one.
fn secret(target: &Target) -> Result<Option<String>, String> {
    let reference = match target {
        Target::Slack { token, .. } | Target::GithubComment { token, .. } | Target::GithubPullRequest { token, .. } => {
            Some(token)
        }
        Target::Webhook { secret, .. } => secret.as_ref(),
    };
    reference.map(|reference| reference.resolve()).transpose()
}

/// What a message says about `run`, from its record as stored now.
pub fn report(run: &Run, public_url: Option<&str>) -> Report {
    let result = run.result.as_ref();
    let detail = |name: &str| result.and_then(|result| result.details.get(name));
    let (repo, base, branch) = match &run.task {
        Some(task) => (task.repo.clone(), task.base.clone(), task.branch.clone()),
        None => Default::default(),
    };
    Report {
        run: run.id.to_string(),
        automation: run.automation.clone(),
        state: run.state.as_str().to_string(),
        summary: result.map(|result| result.summary.clone()).filter(|summary| !summary.is_empty()),
        reason: run.reason.clone().filter(|_| run.state != RunState::Succeeded),
        repo,
        base,
        branch,
        pushed: detail("pushed").is_some(),
        pull_request: detail("pull_request").and_then(|url| url.as_str()).map(str::to_string),
        link: public_url.map(|url| format!("{url}/api/runs/{}", run.id)),
    }
}
