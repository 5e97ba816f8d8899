//! Housekeeping on tokio-cron-scheduler: expired leases are swept every few seconds (their
//! runs queued again or failed), and `retention` from nightshift.yaml is applied hourly.
//! Their timing is loose, so the crate's half-second tick suits them; cron slots, which
//! must fire within milliseconds, have their own timer (`scheduler`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::Server;

/// How often expired leases are looked for.
pub const LEASE_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// When retention runs: at minute 17 of every hour (off the hour, when cron slots crowd).
pub const RETENTION_SCHEDULE: &str = "0 17 * * * *";

/// Starts the jobs; `shutdown` on the returned scheduler stops them.
pub async fn start(server: Arc<Server>) -> Result<JobScheduler, tokio_cron_scheduler::JobSchedulerError> {
    let jobs = JobScheduler::new().await?;
    let sweeper = Arc::clone(&server);
    jobs.add(Job::new_repeated_async(LEASE_SWEEP_EVERY, move |_, _| {
        let server = Arc::clone(&sweeper);
        let wakeup = Arc::clone(server.wakeup());
        Box::pin(async move {
            let swept = tokio::task::spawn_blocking(move || {
                let now = Utc::now();
                // With a shared database one instance sweeps; another takes over if it dies.
                if !server.store().maintains(crate::store::DUTY_LEASES, now)? {
                    return Ok(Vec::new());
                }
                let runs = server.store().sweep_expired_leases(now)?;
                count_expiries(&server, &runs);
                Ok::<_, crate::store::StoreError>(runs)
            })
            .await;
            match swept {
                Ok(Ok(runs)) if !runs.is_empty() => {
                    tracing::warn!(runs = ?runs, "leases expired; runs queued again or failed");
                    wakeup.notify();
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::error!(%error, "sweeping expired leases"),
                Err(error) => tracing::error!(%error, "sweeping expired leases"),
            }
        })
    })?)
    .await?;
    jobs.add(Job::new_async(RETENTION_SCHEDULE, move |_, _| {
        let server = Arc::clone(&server);
        Box::pin(async move {
            let pruned = tokio::task::spawn_blocking(move || {
                if !server.store().maintains(crate::store::DUTY_RETENTION, Utc::now())? {
                    return Ok(None);
                }
                server.prune().map(Some)
            });
            match pruned.await {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(report))) => tracing::info!(?report, "retention applied"),
                Ok(Err(error)) => tracing::error!(%error, "applying retention"),
                Err(error) => tracing::error!(%error, "applying retention"),
            }
        })
    })?)
    .await?;
    jobs.start().await?;
    Ok(jobs)
}

/// Counts the expired leases, and the runs they queued again as retries; the rest
/// failed (their attempts were used up) and are timed like any finished run.
fn count_expiries(server: &Server, runs: &[crate::runs::RunId]) {
    let metrics = server.metrics();
    metrics.leases_expired(runs.len() as u64);
    for id in runs {
        match server.store().run(*id) {
            Ok(Some(run)) if run.state == crate::runs::RunState::Queued => {
                metrics.retry(crate::metrics::RetryCause::LeaseExpired);
            }
            Ok(Some(run)) => metrics.run_changed(&run),
            _ => {}
        }
    }
}
