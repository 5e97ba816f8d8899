//! Alertmanager resolutions: a `resolved` notification cancels the runs its firing
//! notification queued, if no worker has started them (`cancel_on_resolved`).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::Event;
use crate::intake::Hook;
use crate::runs::{RunId, RunState};
use crate::store::{RunFilter, Store, StoreError};
use crate::triggers::alertmanager::{self, AlertGrouping};

/// Whether `event` is a resolution that may cancel runs of the hook's automation.
pub fn is_resolution(hook: &Hook, event: &Event) -> bool {
    hook.alertmanager().is_some_and(|options| options.cancel_on_resolved)
        && event.fields.get("status").and_then(Value::as_str) == Some("resolved")
}

/// What ties a run to the alerts it was queued for: the group key, and with `per:
/// alert` the alert's fingerprint (or its labels' hash) too.
fn identity(event: &Event, per: AlertGrouping) -> (Option<String>, Option<String>) {
    let group = event.fields.get("group_key").and_then(Value::as_str).map(str::to_string);
    let fingerprint = match per {
        AlertGrouping::Group => None,
        AlertGrouping::Alert => event.fields.get("alert").map(alertmanager::fingerprint),
    };
    (group, fingerprint)
}

/// Cancels the automation's unstarted runs (queued, or awaiting approval) that a firing
/// notification with the resolution's identity queued.
pub fn cancel_unstarted_runs(
    store: &dyn Store,
    hook: &Hook,
    resolution: &Event,
    now: DateTime<Utc>,
) -> Result<Vec<RunId>, StoreError> {
    let Some(options) = hook.alertmanager() else { return Ok(Vec::new()) };
    let wanted = identity(resolution, options.per);
    if wanted.0.is_none() {
        return Ok(Vec::new());
    }
    let mut cancelled = Vec::new();
    let unstarted = [RunState::Queued, RunState::AwaitingApproval].map(|state| RunFilter {
        automation: Some(hook.automation.clone()),
        state: Some(state),
        limit: 0,
        before: None,
    });
    let mut candidates = Vec::new();
    for filter in &unstarted {
        candidates.extend(store.runs(filter)?);
    }
    for run in candidates {
        let Some(first) = run.event_ids.first() else { continue };
        let Some(stored) = store.event(first)? else { continue };
        // Only runs a firing notification queued: with `statuses: [firing, resolved]`
        // the resolution's own run stays.
        let firing = stored.event.fields.get("status").and_then(Value::as_str) == Some("firing");
        if !firing || identity(&stored.event, options.per) != wanted {
            continue;
        }
        let reason = format!("the alert resolved before the run started (event {})", resolution.id);
        if store.cancel_unstarted(run.id, &reason, now)?.is_some() {
            cancelled.push(run.id);
        }
    }
    Ok(cancelled)
}
