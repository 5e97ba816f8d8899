//! Retention: deletes finished runs beyond the configured count and age per automation,
//! with their activities, logs and events, and expired memory, dedupe marks and cooldowns,
//! and the thread index's entries whose run is gone.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};

use super::codec::{self, decode, encode};
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
        // The automations are listed from sled: it must hold the runs finished just now.
        self.settle()?;
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
        let mut live = self.lock_for_change()?;
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
            changes.count_finished(run.state, -1);
            changes.delete(key.to_vec());
            changes.delete(keys::finished_run_of(automation, id));
            for activity in self.db.scan_prefix(keys::activities_of(id)) {
                changes.delete(activity.map_err(io)?.0.to_vec());
                report.activities += 1;
            }
            for chunk in self.db.scan_prefix(keys::log_of(id)) {
                changes.delete(chunk.map_err(io)?.0.to_vec());
                report.log_chunks += 1;
            }
            for message in self.db.scan_prefix(keys::outbox_of(id)) {
                changes.delete(message.map_err(io)?.0.to_vec());
            }
            live.outbox.retain(|key, _| key.run != id);
            // The index of its children, and its own entry in its parent's.
            for child in self.db.scan_prefix(keys::children_of(id)) {
                changes.delete(child.map_err(io)?.0.to_vec());
            }
            if let Some(link) = run.parent {
                changes.delete(keys::child(link.run, id));
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
        self.db.get(&key).map_err(io)?.map(|bytes| codec::decode_event(&key, &bytes)).transpose()
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
        let mut live = self.lock_for_change()?;
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
        // A thread whose newest run is gone has nothing to follow up.
        for entry in self.db.scan_prefix(keys::THREAD) {
            let (key, value) = entry.map_err(io)?;
            let Ok(number) = <[u8; 8]>::try_from(value.as_ref()) else { continue };
            let run = RunId(u64::from_be_bytes(number));
            if !live.queued.overlay.contains_key(&key) && self.read_run_locked(&live, run)?.is_none() {
                changes.delete(key.to_vec());
            }
        }
        self.apply(live, changes, true)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::config::{Approval, DurationSpec, OutputFormat};
    use crate::event::Event;
    use crate::netpolicy::NetworkPolicy;
    use crate::runs::Completion;
    use crate::store::embedded::SledStore;
    use crate::store::{NewRun, Store};
    use crate::task::{AgentCommand, Flow, PhasePolicies, Task};
    use crate::triggers::TriggerKind;

    fn task() -> Task {
        Task {
            automation: "probe".into(),
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
            branch: "nightshift/probe".into(),
            prompt: "p".into(),
            setup: Vec::new(),
            secrets: BTreeMap::new(),
            network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
            paths: Vec::new(),
            timeout: DurationSpec::from_secs(60),
            setup_timeout: DurationSpec::from_secs(60),
            approval: Approval::default(),
            push: false,
            untrusted_input: false,
            limits: Default::default(),
            notify: Vec::new(),
            follows: None,
            plan: None,
            staging: Default::default(),
        }
    }

    /// A finished run with `lines` log chunks, created and finished at `now`.
    fn run_with_log(store: &SledStore, name: &str, lines: u64, now: DateTime<Utc>) -> RunId {
        let mut event = Event::from_delivery(TriggerKind::Manual, serde_json::json!({}), BTreeMap::new(), now);
        event.id = format!("manual:{name}");
        let new =
            NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Ok((task(), Flow::default())) };
        store.ingest(&event, vec![new], now).expect("ingest");
        let claim = store.claim("w", Duration::from_secs(60), now).expect("claim").expect("a queued run");
        for line in 0..lines {
            store.append_log(claim.run.id, claim.lease.epoch, &format!("line {line}\n"), now).expect("append");
        }
        let done = Completion::Succeeded { result: Default::default() };
        store.complete(claim.run.id, claim.lease.epoch, done, Vec::new(), now).expect("complete");
        claim.run.id
    }

    #[test]
    fn a_deleted_runs_log_chunks_leave_the_tree() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("store opens");
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).single().expect("a time");
        let old = run_with_log(&store, "old", 2, now);
        let kept = run_with_log(&store, "kept", 1, now + chrono::Duration::seconds(1));
        let report = store.apply_retention(&Retention { runs: 1, days: 30 }, now).expect("retention");
        assert_eq!((report.runs, report.log_chunks), (1, 2));
        store.settle().expect("settle");
        let left = |run| store.db.scan_prefix(keys::log_of(run)).count();
        assert_eq!((left(old), left(kept)), (0, 1));
    }

    #[test]
    fn a_deleted_parent_and_its_children_leave_no_index_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("store opens");
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).single().expect("a time");
        let mut parent = task();
        parent.plan = Some(crate::parallel::Plan::Attempts(crate::parallel::AttemptsPlan {
            agents: vec![crate::parallel::RoleAgent { agent: parent.agent.clone(), network: parent.network.clone() }],
            check: None,
            judge: None,
            on_no_winner: Default::default(),
        }));
        let event = Event::from_delivery(TriggerKind::Manual, serde_json::json!({}), BTreeMap::new(), now);
        let new =
            NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Ok((parent, Flow::default())) };
        let id = store.ingest(&event, vec![new], now).expect("ingest").runs[0].run;
        let claim = store.claim("w", Duration::from_secs(60), now).expect("claim").expect("the attempt");
        let done = Completion::Succeeded { result: Default::default() };
        store.complete(claim.run.id, claim.lease.epoch, done, Vec::new(), now).expect("complete");
        store.settle().expect("settle");
        let indexed = || store.db.scan_prefix(keys::CHILDREN).count();
        assert_eq!(indexed(), 1);
        let later = now + chrono::Duration::days(3);
        let report = store.apply_retention(&Retention { runs: 1, days: 1 }, later).expect("retention");
        assert_eq!(report.runs, 2, "the parent (failed: no change) and its attempt");
        store.settle().expect("settle");
        assert_eq!(indexed(), 0);
        assert!(store.run(id).expect("read").is_none());
    }
}
