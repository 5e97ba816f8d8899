//! Retention: deletes finished runs beyond the configured count and age per automation,
//! with their activities and events, and expired memory, dedupe marks and cooldowns.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};

use super::codec::{decode, encode};
use super::keys;
use super::live::{DedupeMark, LastCreated};
use super::{Changes, Inner, io};
use crate::config::Retention;
use crate::runs::{MemoryEntry, RunId};
use crate::store::{RetentionReport, StoreError, StoredEvent};

impl Inner {
    pub(super) fn retain(&self, retention: &Retention, now: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
        let cutoff = now
            .checked_sub_signed(chrono::Duration::days(i64::from(retention.days)))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut report = RetentionReport::default();
        for automation in self.automations_with_runs()? {
            self.retain_runs_of(&automation, retention.runs as usize, cutoff, &mut report)?;
        }
        self.forget_expired(now, cutoff, &mut report)?;
        Ok(report)
    }

    fn automations_with_runs(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut names = BTreeSet::new();
        for entry in self.db.scan_prefix(keys::RUNS_OF) {
            let (key, _) = entry.map_err(io)?;
            if let Some(name) = keys::automation_of_runs_key(&key) {
                names.insert(name.to_string());
            }
        }
        Ok(names)
    }

    /// Keeps the newest `keep` finished runs younger than `cutoff`; deletes the rest.
    fn retain_runs_of(
        &self,
        automation: &str,
        keep: usize,
        cutoff: DateTime<Utc>,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        // Sled must hold what earlier passes deleted: they read it, not the overlay.
        self.settle()?;
        let live = self.lock();
        let mut kept = 0;
        let mut changes = Changes::default();
        // The newest run may go: remember its id so it is never handed out again.
        changes.put(keys::LAST_RUN.to_vec(), encode(&live.next_run));
        let mut deleted: HashSet<RunId> = HashSet::new();
        let mut events: BTreeMap<String, Option<StoredEvent>> = BTreeMap::new();
        for entry in self.db.scan_prefix(keys::runs_of(automation)).rev() {
            let (key, _) = entry.map_err(io)?;
            let Some(id) = keys::number_at_end(&key).map(RunId) else { continue };
            if live.get(id).is_some() {
                continue;
            }
            let Some(run) = self.read_run(id)? else { continue };
            if kept < keep && run.finished_at.unwrap_or(run.created_at) >= cutoff {
                kept += 1;
                continue;
            }
            changes.delete(keys::run(id));
            changes.delete(key.to_vec());
            changes.delete(keys::finished_run_of(automation, id));
            for activity in self.db.scan_prefix(keys::activities_of(id)) {
                changes.delete(activity.map_err(io)?.0.to_vec());
                report.activities += 1;
            }
            for event in run.event_ids {
                if !events.contains_key(&event) {
                    events.insert(event.clone(), self.event_record(&event)?);
                }
            }
            deleted.insert(id);
            report.runs += 1;
        }
        // An event goes when none of its runs is left (runs of other automations may be).
        for (id, stored) in events {
            let Some(stored) = stored else { continue };
            let mut remaining = Vec::new();
            for outcome in &stored.outcomes {
                if !deleted.contains(&outcome.run) && self.read_run_locked(&live, outcome.run)?.is_some() {
                    remaining.push(outcome.run);
                }
            }
            if remaining.is_empty() {
                changes.delete(keys::event(&id));
                report.events += 1;
            }
        }
        self.apply(live, changes, true)
    }

    fn event_record(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let key = keys::event(id);
        self.db.get(&key).map_err(io)?.map(|bytes| decode(&key, &bytes)).transpose()
    }

    /// Events older than `cutoff` that created no run; expired memory entries, dedupe
    /// marks, and cooldown marks older than `cutoff`.
    fn forget_expired(
        &self,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        // Sled must hold what earlier passes deleted: they read it, not the overlay.
        self.settle()?;
        let mut live = self.lock();
        let mut changes = Changes::default();
        let end = keys::event_age(cutoff.timestamp_millis(), "");
        for entry in self.db.range(keys::EVENT_AGE.to_vec()..end) {
            let (key, _) = entry.map_err(io)?;
            let Some(id) = keys::event_of_age_key(&key) else { continue };
            if let Some(stored) = self.event_record(id)?
                && stored.outcomes.is_empty()
            {
                changes.delete(keys::event(id));
                changes.delete(key.to_vec());
                report.events += 1;
            }
        }
        for entry in self.db.scan_prefix(keys::MEMORY) {
            let (key, value) = entry.map_err(io)?;
            let memory: MemoryEntry = decode(&key, &value)?;
            if !memory.is_live(now) && !live.queued.overlay.contains_key(&key) {
                changes.delete(key.to_vec());
                report.memory_entries += 1;
            }
        }
        for entry in self.db.scan_prefix(keys::DEDUPE) {
            let (key, value) = entry.map_err(io)?;
            let mark: DedupeMark = decode(&key, &value)?;
            if mark.expires_at <= now && !live.queued.overlay.contains_key(&key) {
                changes.delete(key.to_vec());
                report.dedupe_marks += 1;
            }
        }
        // Marks renewed by a queued write are newer in memory than on disk: keep those.
        live.dedupe.retain(|_, mark| mark.expires_at > now);
        for entry in self.db.scan_prefix(keys::LAST_CREATED) {
            let (key, value) = entry.map_err(io)?;
            let last: LastCreated = decode(&key, &value)?;
            if last.until <= now && !live.queued.overlay.contains_key(&key) {
                changes.delete(key.to_vec());
            }
        }
        live.last_created.retain(|_, last| last.until > now);
        self.apply(live, changes, true)
    }
}
