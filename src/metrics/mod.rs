//! Prometheus metrics (`GET /metrics`, docs/metrics.md): one `Metrics` per server owns a
//! prometheus-client `Registry` and the typed families the engine records into. Recording
//! is an atomic increment or a histogram observation (prometheus-client's own lock, none
//! of ours); what the store already counts (runs by state, queue depth, group commit's
//! work) is read at each scrape through `Store::stats`, never decoded from disk.
//!
//! The handle is an `Arc<Metrics>` held by `Server` and handed to what records: the hook
//! handler and the worker methods reach it through `Server`, the outbox sender and the
//! cron scheduler are given a clone when `serve` starts them, and the store is given an
//! observer of its commits. No global: two servers in one process (the tests) keep
//! their own counts.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::runs::{NewActivity, Run, RunState};
use crate::store::{CommitObserver, Store};
use crate::triggers::TriggerKind;

/// The content type of `Metrics::render`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a hook delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// 2xx: stored (or a handshake answered).
    Accepted,
    /// 2xx, but every event was delivered before: nothing new stored.
    Duplicate,
    /// 401: the credentials or signature did not check out.
    Unauthorized,
    /// 413: the body was over the hook's limit.
    TooLarge,
    /// Anything else: an unknown hook (404), a missing secret, a malformed or late body,
    /// a busy store or hook (503).
    Refused,
}

impl DeliveryOutcome {
    const ALL: [DeliveryOutcome; 5] = [
        DeliveryOutcome::Accepted,
        DeliveryOutcome::Duplicate,
        DeliveryOutcome::Unauthorized,
        DeliveryOutcome::TooLarge,
        DeliveryOutcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Accepted => "accepted",
            DeliveryOutcome::Duplicate => "duplicate",
            DeliveryOutcome::Unauthorized => "unauthorized",
            DeliveryOutcome::TooLarge => "too_large",
            DeliveryOutcome::Refused => "refused",
        }
    }
}

/// What an outbox attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    Sent,
    Retry,
    Failed,
}

impl NotifyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOutcome::Sent => "sent",
            NotifyOutcome::Retry => "retry",
            NotifyOutcome::Failed => "failed",
        }
    }
}

/// Why a run was queued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// An attempt failed and the automation's `retry` allows another.
    Failure,
    /// Its worker's lease expired.
    LeaseExpired,
}

impl RetryCause {
    fn as_str(self) -> &'static str {
        match self {
            RetryCause::Failure => "failure",
            RetryCause::LeaseExpired => "lease_expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeliveryLabels {
    source: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EgressLabels {
    outcome: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NotifyLabels {
    target: &'static str,
    outcome: &'static str,
}

/// Buckets of the waits and durations of runs, in seconds: a second to a day.
const RUN_BUCKETS: [f64; 12] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0];
/// Buckets of a log append and sync, in seconds: 50 µs to a second.
const COMMIT_BUCKETS: [f64; 12] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.25, 1.0];
/// Buckets of how late a cron slot fired, in seconds: a millisecond to an hour (a slot
/// fired after a restart under `misfire: run_once` is as late as the engine was down).
const LATENESS_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0, 3600.0];

/// The sources a hook can serve, and `unknown` for a name none serves: the `source`
/// label of deliveries.
const HOOK_SOURCES: [Option<TriggerKind>; 6] = [
    Some(TriggerKind::Github),
    Some(TriggerKind::Slack),
    Some(TriggerKind::Pagerduty),
    Some(TriggerKind::Alertmanager),
    Some(TriggerKind::Webhook),
    None,
];

/// The families, shared with the commit observer.
#[derive(Debug)]
struct Families {
    /// Every (source, outcome) counter of the deliveries family, made at start and
    /// indexed `[source][outcome]` (`HOOK_SOURCES`, `DeliveryOutcome::ALL`): counting a
    /// delivery is one atomic increment, without the family's lock.
    delivery_counters: Vec<Vec<Counter>>,
    queue_wait: Histogram,
    run_duration: Family<StateLabels, Histogram>,
    lease_expiries: Counter,
    retries: Family<CauseLabels, Counter>,
    egress: Family<EgressLabels, Counter>,
    notify: Family<NotifyLabels, Counter>,
    commit_latency: Histogram,
    cron_lateness: Histogram,
}

/// One server's metrics.
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry with every series, reading `store`'s counts at each scrape and
    /// observing its commits.
    pub fn new(store: Arc<dyn Store>) -> Arc<Metrics> {
        let deliveries: Family<DeliveryLabels, Counter> = Family::default();
        let delivery_counters = HOOK_SOURCES
            .iter()
            .map(|source| {
                let source = source.map_or("unknown", TriggerKind::as_str);
                DeliveryOutcome::ALL
                    .iter()
                    .map(|outcome| {
                        deliveries.get_or_create(&DeliveryLabels { source, outcome: outcome.as_str() }).clone()
                    })
                    .collect()
            })
            .collect();
        let families = Arc::new(Families {
            delivery_counters,
            queue_wait: Histogram::new(RUN_BUCKETS),
            run_duration: Family::new_with_constructor(|| Histogram::new(RUN_BUCKETS)),
            lease_expiries: Counter::default(),
            retries: Family::default(),
            egress: Family::default(),
            notify: Family::default(),
            commit_latency: Histogram::new(COMMIT_BUCKETS),
            cron_lateness: Histogram::new(LATENESS_BUCKETS),
        });
        let mut registry = Registry::with_prefix("nightshift");
        let f = &families;
        registry.register("deliveries", "Hook deliveries by source (trigger kind) and outcome", deliveries);
        registry.register_with_unit(
            "queue_wait",
            "How long runs waited from queued (created, or their retry's backoff over) to claimed",
            Unit::Seconds,
            f.queue_wait.clone(),
        );
        registry.register_with_unit(
            "run_duration",
            "How long finished runs ran, from started to finished, by final state",
            Unit::Seconds,
            f.run_duration.clone(),
        );
        registry.register("lease_expiries", "Worker leases that expired", f.lease_expiries.clone());
        registry.register("retries", "Runs queued again for another attempt, by cause", f.retries.clone());
        registry.register(
            "egress_decisions",
            "Network decisions of sandboxed phases by outcome and kind",
            f.egress.clone(),
        );
        registry.register("notify_attempts", "Outbox message attempts by target kind and outcome", f.notify.clone());
        registry.register_with_unit(
            "store_commit",
            "How long one group commit's write-ahead log append (and sync, when needed) took",
            Unit::Seconds,
            f.commit_latency.clone(),
        );
        registry.register_with_unit(
            "cron_lateness",
            "How late cron slots fired: fire time minus slot time",
            Unit::Seconds,
            f.cron_lateness.clone(),
        );
        // Zeros from the start, so a rate over them needs no first increment.
        for cause in [RetryCause::Failure, RetryCause::LeaseExpired] {
            drop(families.retries.get_or_create(&CauseLabels { cause: cause.as_str() }));
        }
        store.observe_commits(Arc::new(Observer(Arc::clone(&families))));
        registry.register_collector(Box::new(StoreCounts { store }));
        Arc::new(Metrics { registry, families })
    }

    /// Every series in the Prometheus text format (`CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            // Writing to a String fails only if a collector does.
            let _ = writeln!(text, "# the metrics could not all be written: {error}");
        }
        text
    }

    /// One hook delivery; `source` is `None` for a hook no automation serves.
    pub fn delivery(&self, source: Option<TriggerKind>, outcome: DeliveryOutcome) {
        // Cron and manual events never come through a hook: counted as `unknown` if so.
        let row = HOOK_SOURCES.iter().position(|known| *known == source).unwrap_or(HOOK_SOURCES.len() - 1);
        let column = DeliveryOutcome::ALL.iter().position(|known| *known == outcome).unwrap_or_default();
        if let Some(counter) = self.families.delivery_counters.get(row).and_then(|counters| counters.get(column)) {
            counter.inc();
        }
    }

    /// A worker claimed `run` at `now`: the wait since it was queued.
    pub fn claimed(&self, run: &Run, now: DateTime<Utc>) {
        let queued = run.not_before.map_or(run.created_at, |ready| ready.max(run.created_at));
        self.families.queue_wait.observe(seconds_between(queued, now));
    }

    /// `run` changed through a worker or a person: a finished one is timed, one queued
    /// again after an attempt counts as a retry.
    pub fn run_changed(&self, run: &Run) {
        if run.state.is_finished() {
            if let (Some(started), Some(finished)) = (run.started_at, run.finished_at) {
                let labels = StateLabels { state: run.state.as_str() };
                self.families.run_duration.get_or_create(&labels).observe(seconds_between(started, finished));
            }
        } else if run.state == RunState::Queued && run.attempt > 0 {
            self.retry(RetryCause::Failure);
        }
    }

    /// `count` leases expired at one sweep.
    pub fn leases_expired(&self, count: u64) {
        self.families.lease_expiries.inc_by(count);
    }

    pub fn retry(&self, cause: RetryCause) {
        self.families.retries.get_or_create(&CauseLabels { cause: cause.as_str() }).inc();
    }

    /// Counts the network decisions among a worker's activities (`policy` activities
    /// carry their record: whether it was allowed, its kind and how many times).
    pub fn activities(&self, activities: &[NewActivity]) {
        for activity in activities.iter().filter(|a| a.kind == crate::runs::ActivityKind::Policy) {
            let Some(allowed) = activity.data.get("allowed").and_then(serde_json::Value::as_bool) else { continue };
            let count = activity.data.get("count").and_then(serde_json::Value::as_u64).unwrap_or(1);
            let kind = match activity.data.get("kind").and_then(serde_json::Value::as_str) {
                Some("proxy_http") => "proxy_http",
                Some("connect") => "connect",
                Some("captured") => "captured",
                Some("dns") => "dns",
                Some("overflow") => "overflow",
                _ => "other",
            };
            let outcome = if allowed { "allowed" } else { "denied" };
            self.families.egress.get_or_create(&EgressLabels { outcome, kind }).inc_by(count);
        }
    }

    /// One outbox attempt to a target of kind `target` (`slack`, `webhook`, ...).
    pub fn notify(&self, target: &'static str, outcome: NotifyOutcome) {
        self.families.notify.get_or_create(&NotifyLabels { target, outcome: outcome.as_str() }).inc();
    }

    /// A cron slot for `slot` fired at `fired`.
    pub fn cron_fired(&self, slot: DateTime<Utc>, fired: DateTime<Utc>) {
        self.families.cron_lateness.observe(seconds_between(slot, fired));
    }
}

/// Seconds from `from` to `to`, 0 if `to` is earlier (a clock step back).
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).to_std().map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The store's commit observer.
struct Observer(Arc<Families>);

impl CommitObserver for Observer {
    fn committed(&self, took: Duration, _synced: bool) {
        self.0.commit_latency.observe(took.as_secs_f64());
    }
}

/// The store's own counts, read at each scrape.
struct StoreCounts {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for StoreCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCounts").finish_non_exhaustive()
    }
}

impl Collector for StoreCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.store.stats();
        let runs = ConstGauge::<i64>::new(0);
        let mut family = encoder.encode_descriptor("runs", "Stored runs by state", None, runs.metric_type())?;
        for (state, count) in &stats.by_state {
            let labels = StateLabels { state: state.as_str() };
            ConstGauge::new(gauge(*count)).encode(family.encode_family(&labels)?)?;
        }
        let queued = stats.by_state.iter().find(|(state, _)| *state == RunState::Queued).map_or(0, |(_, n)| *n);
        let depth = ConstGauge::new(gauge(queued));
        depth.encode(encoder.encode_descriptor(
            "queue_depth",
            "Runs queued and not yet claimed (waiting for a worker, their group, their paths or a retry's backoff)",
            None,
            depth.metric_type(),
        )?)?;
        if let Some(commits) = stats.commits {
            for (name, help, value) in [
                ("store_syncs", "Write-ahead log syncs (fsync); concurrent writers share one", commits.syncs),
                ("store_log_appends", "Write-ahead log appends, one per group of concurrent changes", commits.logs),
                ("store_applies", "Passes applying logged changes to the database", commits.applies),
            ] {
                let counter = ConstCounter::new(value);
                counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
            }
        }
        Ok(())
    }
}

fn gauge(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_with_its_unit_and_recordings_show() {
        let dir = tempfile::tempdir().expect("a directory");
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).expect("the store opens"));
        let metrics = Metrics::new(Arc::clone(&store));
        metrics.delivery(Some(TriggerKind::Github), DeliveryOutcome::Accepted);
        metrics.delivery(None, DeliveryOutcome::Refused);
        metrics.notify("webhook", NotifyOutcome::Retry);
        metrics.leases_expired(2);
        metrics.retry(RetryCause::LeaseExpired);
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("a time").with_timezone(&Utc);
        metrics.cron_fired(at, at + chrono::Duration::milliseconds(3));
        let text = metrics.render();
        for line in [
            "nightshift_deliveries_total{source=\"github\",outcome=\"accepted\"} 1",
            "nightshift_deliveries_total{source=\"unknown\",outcome=\"refused\"} 1",
            "nightshift_notify_attempts_total{target=\"webhook\",outcome=\"retry\"} 1",
            "nightshift_lease_expiries_total 2",
            "nightshift_retries_total{cause=\"lease_expired\"} 1",
            "nightshift_cron_lateness_seconds_bucket{le=\"0.005\"} 1",
            "nightshift_cron_lateness_seconds_count 1",
            "nightshift_runs{state=\"queued\"} 0",
            "nightshift_queue_depth 0",
            "# TYPE nightshift_store_syncs_total counter",
            "# TYPE nightshift_store_commit_seconds histogram",
            "# TYPE nightshift_queue_wait_seconds histogram",
        ] {
            assert!(text.lines().any(|have| have == line), "no line `{line}` in:\n{text}");
        }
    }
}
