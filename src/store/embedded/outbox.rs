//! The outbox in the embedded store: messages are written by the change of state that
//! creates them (`Changes::keep`, `Inner::cancel_live`), kept in memory while unsettled
//! (`Live::outbox`), and marked in flight and settled here, each in one commit.

use chrono::{DateTime, Utc};

use super::codec::{decode, encode};
use super::{Changes, Inner, State, keys};
use crate::delivery::{Attempt, Kind, Outcome, Target};
use crate::runs::outbox::{self, Entry, EntryState, Key};
use crate::runs::{Activity, ActivityKind, RunId};
use crate::store::{OutboxDue, StoreError};

impl Inner {
    pub(super) fn due_messages(&self, now: DateTime<Utc>, limit: usize) -> OutboxDue {
        let state = self.lock();
        let unsettled = |key: &Key| state.outbox.contains_key(key);
        let mut ready: Vec<&Entry> = Vec::new();
        let mut next_at: Option<DateTime<Utc>> = None;
        let mut consider = |at: DateTime<Utc>| next_at = Some(next_at.map_or(at, |next| next.min(at)));
        for (entry, _) in state.outbox.values() {
            if entry.state != EntryState::Pending {
                continue;
            }
            if entry.next_at > now {
                consider(entry.next_at);
            } else if entry.is_blocked(now, unsettled) {
                consider(entry.order_deadline());
            } else {
                ready.push(entry);
            }
        }
        ready.sort_by_key(|entry| (entry.next_at, entry.key));
        if ready.len() > limit {
            consider(ready[limit].next_at);
        }
        OutboxDue { entries: ready.into_iter().take(limit).cloned().collect(), next_at }
    }

    /// Every message of `run`: one start and one end key per target, read under the lock
    /// (queued changes first).
    pub(super) fn messages_of(&self, run: RunId) -> Result<Vec<Entry>, StoreError> {
        let state = self.lock();
        let Some(found) = self.read_run_locked(&state, run)? else { return Err(StoreError::NoSuchRun(run)) };
        let targets = found.task.map_or(0, |task| task.notify.len());
        let mut entries = Vec::new();
        for target in 0..targets as u32 {
            for kind in [Kind::Start, Kind::End] {
                let key = keys::outbox(&Key { run, target, kind });
                if let Some(bytes) = self.get(&state, &key)? {
                    entries.push(decode(&key, &bytes)?);
                }
            }
        }
        Ok(entries)
    }

    pub(super) fn begin_message(&self, key: Key, _now: DateTime<Utc>) -> Result<Option<(Entry, Attempt)>, StoreError> {
        let mut state = self.lock_for_change()?;
        let Some((entry, unsure)) = state.outbox.get_mut(&key) else { return Ok(None) };
        if entry.state != EntryState::Pending {
            return Ok(None);
        }
        entry.state = EntryState::InFlight;
        entry.attempts += 1;
        let attempt = Attempt { message_id: key.message_id(), number: entry.attempts, unsure: *unsure };
        *unsure = false;
        let entry = entry.clone();
        let mut changes = Changes::default();
        changes.put(keys::outbox(&key), encode(&entry));
        // Durable before the send: a crash after it leaves the message in flight, and the
        // next attempt looks for what this one may have posted.
        self.apply(state, changes, true)?;
        Ok(Some((entry, attempt)))
    }

    pub(super) fn finish_message(
        &self,
        key: Key,
        outcome: &Outcome,
        now: DateTime<Utc>,
        random_unit: f64,
    ) -> Result<Option<Entry>, StoreError> {
        let mut state = self.lock_for_change()?;
        let Some((entry, _)) = state.outbox.get(&key) else { return Ok(None) };
        if entry.state != EntryState::InFlight {
            return Ok(None);
        }
        let settled = outbox::settle(entry, outcome, now, random_unit);
        let mut changes = Changes::default();
        changes.put_outbox(&mut state.live, vec![settled.clone()]);
        if let Some(mut run) = self.read_run_locked(&state, key.run)? {
            let target = run.task.as_ref().and_then(|task| task.notify.get(key.target as usize)).cloned();
            if let Some(target) = target {
                let text = outbox::activity_text(&target, &settled);
                self.note(&mut state, &mut changes, key.run, text, now)?;
                if let EntryState::Sent { posted } = &settled.state
                    && let Some(thread) = crate::runs::followup::posted_thread(&target, key.kind, posted)
                {
                    changes.thread(&thread, key.run);
                }
                if let (Target::GithubPullRequest { .. }, Kind::End, EntryState::Sent { posted }) =
                    (&target, key.kind, &settled.state)
                {
                    let link = posted.url.clone().unwrap_or_else(|| posted.id.clone());
                    let result = run.result.get_or_insert_with(Default::default);
                    result.details.insert("pull_request".into(), serde_json::Value::String(link));
                    match state.live.get(key.run).cloned() {
                        Some(mut live) => {
                            live.run.result = run.result.clone();
                            changes.keep(&mut state.live, live);
                        }
                        None => changes.put_finished(&run),
                    }
                }
            }
        }
        self.apply(state, changes, true)?;
        Ok(Some(settled))
    }

    /// Appends a `notify` activity to run `run`, finished or not.
    fn note(
        &self,
        state: &mut State,
        changes: &mut Changes,
        run: RunId,
        text: String,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(mut live) = state.live.get(run).cloned() {
            changes.activity(&mut live, ActivityKind::Notify, text, now);
            state.live.put(live);
            return Ok(());
        }
        let seq = self.next_seq_locked(state, &keys::activities_of(run))?;
        let activity = Activity { seq, at: now, kind: ActivityKind::Notify, text, data: serde_json::Value::Null };
        changes.put(keys::activity(run, seq), encode(&activity));
        Ok(())
    }

    /// The sequence number after the last one under `prefix`, counting queued writes.
    fn next_seq_locked(&self, state: &State, prefix: &[u8]) -> Result<u64, StoreError> {
        let queued = state
            .queued
            .overlay
            .range(sled::IVec::from(prefix)..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, (_, value))| value.is_some())
            .filter_map(|(key, _)| keys::number_at_end(key))
            .max();
        let stored = self.next_seq(prefix)?.checked_sub(1);
        Ok(queued.max(stored).map_or(0, |seq| seq + 1))
    }
}
