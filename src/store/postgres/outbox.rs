//! The outbox on PostgreSQL: messages written by the change that makes them, marked in
//! flight and settled each in one transaction, with `runs::outbox` deciding the order
//! and the retries as in the embedded store.
//!
//! An attempt in flight names the instance that began it and when. The embedded store
//! offers a message found in flight at open again, unsure; here no instance "opens"
//! alone, so a message in flight is offered again, unsure, once its attempt is
//! abandoned: begun `IN_FLIGHT_FOR` ago (its instance died, or lost the database before
//! recording the outcome), or begun by another instance while this one holds the outbox
//! duty (`DUTY_OUTBOX`: that instance lost the duty, so it stopped or stalled). Only the
//! instance that began an attempt settles it, so a stalled one's late answer is dropped.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PgStore;
use super::db::Tx;
use super::reads::snapshot;
use super::rows::{self, decode, load_run, put_outbox};
use crate::delivery::{Attempt, Kind, Outcome, Target};
use crate::runs::clock::later;
use crate::runs::outbox::{self, Entry, EntryState, Key};
use crate::runs::{ActivityKind, RunId};
use crate::store::{DUTY_OUTBOX, OutboxDue, OutboxEntry, OutboxKey, StoreError};

/// How long an attempt may stay in flight before it counts as abandoned: far longer
/// than a transport takes (10 s a request, a few requests for an unsure one).
pub const IN_FLIGHT_FOR: Duration = Duration::from_secs(5 * 60);

/// An outbox row: its record and, while in flight, who began the attempt and when.
struct Row {
    entry: Entry,
    began_by: Option<String>,
    began_at: Option<DateTime<Utc>>,
}

impl Row {
    fn of(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
        let entry: Entry = decode("an outbox message", row.get(0))?;
        Ok(Row { entry, began_by: row.get(1), began_at: row.get(2) })
    }

    /// Whether its attempt in flight may be made again (unsure) at `now` by `me`.
    fn abandoned(&self, me: &str, holds_duty: bool, now: DateTime<Utc>) -> bool {
        let stale = self.began_at.is_none_or(|at| later(at, IN_FLIGHT_FOR) <= now);
        stale || (holds_duty && self.began_by.as_deref() != Some(me))
    }
}

const ROW: &str = "SELECT doc, began_by, began_at FROM nightshift_outbox";

impl PgStore {
    /// The pending messages whose turn has come, as the embedded store's `due_messages`
    /// picks them; an abandoned attempt (see the module) counts as pending again.
    pub(super) fn outbox_due_now(&self, now: DateTime<Utc>, limit: usize) -> Result<OutboxDue, StoreError> {
        let me = self.instance.as_str();
        self.db.transaction(|tx| {
            snapshot(tx)?;
            let holds_duty = holds_outbox_duty(tx, me)?;
            let mut next_at: Option<DateTime<Utc>> = None;
            let mut consider = |at: DateTime<Utc>| next_at = Some(next_at.map_or(at, |next| next.min(at)));
            let mut pending = Vec::new();
            for row in tx.query(&format!("{ROW} WHERE state = 'pending' AND next_at <= $1"), &[&now])? {
                pending.push(Row::of(&row)?.entry);
            }
            for row in tx.query(&format!("{ROW} WHERE state = 'in_flight'"), &[])? {
                let row = Row::of(&row)?;
                if row.abandoned(me, holds_duty, now) {
                    let mut entry = row.entry;
                    entry.state = EntryState::Pending;
                    pending.push(entry);
                } else if let Some(began_at) = row.began_at {
                    // Nobody may ring when it is abandoned: look again then.
                    consider(later(began_at, IN_FLIGHT_FOR));
                }
            }
            let later_one = tx.query_one(
                "SELECT min(next_at) FROM nightshift_outbox WHERE state = 'pending' AND next_at > $1",
                &[&now],
            )?;
            if let Some(at) = later_one.get::<_, Option<DateTime<Utc>>>(0) {
                consider(at);
            }
            let runs: Vec<i64> = pending.iter().map(|entry| entry.key.run.0 as i64).collect();
            let mut unsettled = HashSet::new();
            let rows = tx.query(
                "SELECT run, target, kind FROM nightshift_outbox WHERE run = ANY($1) AND state IN ('pending', 'in_flight')",
                &[&runs],
            )?;
            for row in &rows {
                unsettled.insert(key_of(row)?);
            }
            let mut ready: Vec<Entry> = Vec::new();
            for entry in pending {
                if entry.next_at > now {
                    consider(entry.next_at);
                } else if entry.is_blocked(now, |key| unsettled.contains(key)) {
                    consider(entry.order_deadline());
                } else {
                    ready.push(entry);
                }
            }
            ready.sort_by_key(|entry| (entry.next_at, entry.key));
            if ready.len() > limit {
                consider(ready[limit].next_at);
            }
            ready.truncate(limit);
            Ok(OutboxDue { entries: ready, next_at })
        })
    }

    /// Every message of `run`, in key order; `NoSuchRun` for an unknown run.
    pub(super) fn outbox_now(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        let id = run.0 as i64;
        self.db.transaction(|tx| {
            snapshot(tx)?;
            if tx.query_opt("SELECT 1 FROM nightshift_runs WHERE id = $1", &[&id])?.is_none() {
                return Err(StoreError::NoSuchRun(run));
            }
            let mut entries = Vec::new();
            for row in tx.query(&format!("{ROW} WHERE run = $1"), &[&id])? {
                entries.push(Row::of(&row)?.entry);
            }
            entries.sort_by_key(|entry: &Entry| entry.key);
            Ok(entries)
        })
    }

    /// Marks a pending message (or an abandoned attempt's) in flight, durably, for this
    /// instance; `None` if it is settled, gone, or in flight with a live attempt.
    pub(super) fn outbox_begin_now(
        &self,
        key: OutboxKey,
        now: DateTime<Utc>,
    ) -> Result<Option<(OutboxEntry, Attempt)>, StoreError> {
        let me = self.instance.as_str();
        self.db.transaction(|tx| {
            let holds_duty = holds_outbox_duty(tx, me)?;
            let Some(row) = lock_row(tx, key)? else { return Ok(None) };
            let unsure = match row.entry.state {
                EntryState::Pending => false,
                EntryState::InFlight if row.abandoned(me, holds_duty, now) => true,
                _ => return Ok(None),
            };
            let mut entry = row.entry;
            entry.state = EntryState::InFlight;
            entry.attempts += 1;
            let attempt = Attempt { message_id: key.message_id(), number: entry.attempts, unsure };
            tx.execute(
                "UPDATE nightshift_outbox SET state = 'in_flight', began_by = $4, began_at = $5, doc = $6 \
                 WHERE run = $1 AND target = $2 AND kind = $3",
                &[
                    &(key.run.0 as i64),
                    &(key.target as i32),
                    &outbox::kind_name(key.kind),
                    &me,
                    &now,
                    &rows::encode(&entry),
                ],
            )?;
            Ok(Some((entry, attempt)))
        })
    }

    /// Settles this instance's attempt (`runs::outbox::settle`) with a `notify` activity
    /// on the run, the thread a start opened, and a sent pull request's link on the run,
    /// in one transaction; `None` if the message is not in flight for this instance.
    pub(super) fn outbox_finish_now(
        &self,
        key: OutboxKey,
        outcome: &Outcome,
        now: DateTime<Utc>,
        random_unit: f64,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let me = self.instance.as_str();
        self.db.transaction(|tx| {
            // The run's row first: every change of a run locks it before its messages.
            let run = load_run(tx, key.run, true)?;
            let Some(row) = lock_row(tx, key)? else { return Ok(None) };
            if row.entry.state != EntryState::InFlight || row.began_by.as_deref() != Some(me) {
                return Ok(None);
            }
            let settled = outbox::settle(&row.entry, outcome, now, random_unit);
            put_outbox(tx, std::slice::from_ref(&settled))?;
            let Some(run) = run else { return Ok(Some(settled)) };
            let Some(target) = run.task.as_ref().and_then(|task| task.notify.get(key.target as usize)).cloned() else {
                return Ok(Some(settled));
            };
            let text = outbox::activity_text(&target, &settled);
            rows::add_activity(tx, key.run, ActivityKind::Notify, text, serde_json::Value::Null, now)?;
            if let EntryState::Sent { posted } = &settled.state {
                if let Some(thread) = crate::runs::followup::posted_thread(&target, key.kind, posted) {
                    tx.execute(
                        "INSERT INTO nightshift_threads (thread, run) VALUES ($1, $2) \
                         ON CONFLICT (thread) DO UPDATE SET run = $2",
                        &[&thread, &(key.run.0 as i64)],
                    )?;
                }
                if let (Target::GithubPullRequest { .. }, Kind::End) = (&target, key.kind) {
                    let link = posted.url.clone().unwrap_or_else(|| posted.id.clone());
                    let mut linked = run.clone();
                    let result = linked.result.get_or_insert_with(Default::default);
                    result.details.insert("pull_request".into(), serde_json::Value::String(link));
                    rows::update_run(tx, &run, &linked)?;
                }
            }
            Ok(Some(settled))
        })
    }
}

/// Whether this instance holds the outbox duty now (`Store::maintains`).
fn holds_outbox_duty(tx: &mut Tx<'_>, me: &str) -> Result<bool, StoreError> {
    let row = tx.query_opt(
        "SELECT 1 FROM nightshift_maintenance WHERE name = $1 AND holder = $2 AND expires_at > now()",
        &[&DUTY_OUTBOX, &me],
    )?;
    Ok(row.is_some())
}

/// Message `key`'s row, locked until the transaction ends.
fn lock_row(tx: &mut Tx<'_>, key: Key) -> Result<Option<Row>, StoreError> {
    let row = tx.query_opt(
        &format!("{ROW} WHERE run = $1 AND target = $2 AND kind = $3 FOR UPDATE"),
        &[&(key.run.0 as i64), &(key.target as i32), &outbox::kind_name(key.kind)],
    )?;
    row.as_ref().map(Row::of).transpose()
}

/// The key of a row selected as `run, target, kind`.
fn key_of(row: &tokio_postgres::Row) -> Result<Key, StoreError> {
    let kind = match row.get::<_, &str>(2) {
        "start" => Kind::Start,
        "end" => Kind::End,
        other => {
            return Err(StoreError::Corrupt {
                what: "nightshift_outbox.kind".into(),
                cause: format!("`{}` is neither `start` nor `end`", other.escape_debug()),
            });
        }
    };
    Ok(Key { run: RunId(row.get::<_, i64>(0) as u64), target: row.get::<_, i32>(1) as u32, kind })
}

#[cfg(test)]
mod tests {
    use super::super::reads::tests::{at, run, save, store, task};
    use super::*;
    use crate::config::SecretRef;
    use crate::delivery::Posted;
    use crate::runs::{Run, RunState};
    use crate::store::Store;

    fn slack() -> Target {
        Target::Slack { channel: "C123".into(), thread_ts: None, token: SecretRef::Env("TOKEN".into()) }
    }

    fn pull_request() -> Target {
        Target::GithubPullRequest {
            repo: "acme/api".into(),
            base: "main".into(),
            draft: true,
            token: SecretRef::Env("TOKEN".into()),
        }
    }

    fn webhook() -> Target {
        Target::Webhook { url: "https://hooks.example.com/in".into(), secret: None }
    }

    fn key(run: u64, target: u32, kind: Kind) -> Key {
        Key { run: RunId(run), target, kind }
    }

    /// Run `id`, running since `at(1)` with `targets`, its start message written; then
    /// finished at `at(2)` with its end messages when `finish`.
    fn notifying(store: &PgStore, id: u64, targets: Vec<Target>, finish: bool) -> Run {
        let mut queued = run(id, "probe", RunState::Queued);
        queued.task = Some(task(targets));
        save(store, std::slice::from_ref(&queued));
        let mut running = queued.clone();
        running.state = RunState::Running;
        running.started_at = Some(at(1));
        running.updated_at = at(1);
        store.db.transaction(|tx| rows::update_run(tx, &queued, &running)).expect("started");
        if !finish {
            return running;
        }
        let mut done = running.clone();
        done.state = RunState::Succeeded;
        done.finished_at = Some(at(2));
        done.updated_at = at(2);
        store.db.transaction(|tx| rows::update_run(tx, &running, &done)).expect("finished");
        done
    }

    fn due_keys(due: &OutboxDue) -> Vec<Key> {
        due.entries.iter().map(|entry| entry.key).collect()
    }

    fn notes(store: &PgStore, run: u64) -> Vec<String> {
        let activities = store.activities(RunId(run)).expect("activities");
        activities.into_iter().filter(|a| a.kind == ActivityKind::Notify).map(|a| a.text).collect()
    }

    #[test]
    fn due_messages_go_soonest_first_ends_after_what_they_wait_for_or_ten_minutes() {
        let (_cluster, store) = store();
        notifying(&store, 1, vec![slack(), pull_request(), webhook()], true);
        let states: Vec<(u32, Kind, EntryState)> =
            store.outbox(RunId(1)).expect("outbox").into_iter().map(|e| (e.key.target, e.key.kind, e.state)).collect();
        assert_eq!(
            states,
            [
                (0, Kind::Start, EntryState::Pending),
                (0, Kind::End, EntryState::Pending),
                (1, Kind::End, EntryState::Pending),
                (2, Kind::End, EntryState::Pending),
            ]
        );
        assert_eq!(store.outbox(RunId(9)), Err(StoreError::NoSuchRun(RunId(9))));
        // The start and the pull request go first; the other ends wait for them.
        let due = store.outbox_due(at(2), 16).expect("due");
        assert_eq!(due_keys(&due), [key(1, 0, Kind::Start), key(1, 1, Kind::End)]);
        assert_eq!(due.next_at, Some(at(2 + 600)), "the waiting ends go anyway after ten minutes");
        let due = store.outbox_due(at(2), 1).expect("due");
        assert_eq!((due_keys(&due), due.next_at), (vec![key(1, 0, Kind::Start)], Some(at(2))), "one at a time");
        let after_the_wait = store.outbox_due(at(2 + 600), 16).expect("due");
        assert_eq!(after_the_wait.entries.len(), 4);
        assert_eq!(after_the_wait.next_at, None);
        // Not due yet: only its time is told.
        assert_eq!(store.outbox_due(at(0), 16).expect("due"), OutboxDue { entries: Vec::new(), next_at: Some(at(1)) });
    }

    #[test]
    fn an_attempt_is_begun_once_settled_with_its_activity_and_a_sent_pull_request_links_the_run() {
        let (_cluster, store) = store();
        notifying(&store, 1, vec![pull_request(), webhook()], true);
        let pr = key(1, 0, Kind::End);
        let (entry, attempt) = store.outbox_begin(pr, at(3)).expect("begin").expect("pending");
        assert_eq!(attempt, Attempt { message_id: "r1-0-end".into(), number: 1, unsure: false });
        assert_eq!((entry.state, entry.attempts), (EntryState::InFlight, 1));
        assert!(store.outbox_begin(pr, at(3)).expect("begin").is_none(), "in flight once");
        assert!(store.outbox_due(at(3), 16).expect("due").entries.is_empty(), "the webhook waits for the PR");
        let retry = Outcome::Retry { after: Some(Duration::from_secs(30)), why: "github: 502".into() };
        let entry = store.outbox_finish(pr, &retry, at(4), 0.5).expect("finish").expect("in flight");
        assert_eq!((entry.state, entry.next_at), (EntryState::Pending, at(34)), "Retry-After is honoured");
        assert!(store.outbox_finish(pr, &retry, at(4), 0.5).expect("finish").is_none(), "no longer in flight");
        assert_eq!(store.outbox_due(at(33), 16).expect("due").next_at, Some(at(34)));
        store.outbox_begin(pr, at(34)).expect("begin").expect("due again");
        let posted = Posted { id: "7".into(), channel: None, url: Some("https://github.com/acme/api/pull/7".into()) };
        store.outbox_finish(pr, &Outcome::Sent(posted.clone()), at(35), 0.5).expect("finish").expect("in flight");
        let stored = store.run(RunId(1)).expect("read").expect("the run");
        let link = stored.result.as_ref().and_then(|r| r.details.get("pull_request")).and_then(|v| v.as_str());
        assert_eq!(link, Some("https://github.com/acme/api/pull/7"));
        assert_eq!(stored.state, RunState::Succeeded);
        assert_eq!(due_keys(&store.outbox_due(at(35), 16).expect("due")), [key(1, 1, Kind::End)]);
        let notes = notes(&store, 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("github pull request on acme/api (into main) end: github: 502; retrying at"));
        assert!(notes[1].starts_with("github pull request on acme/api (into main) end: posted (7)"), "{notes:?}");
    }

    #[test]
    fn a_start_posted_in_a_channel_makes_its_thread_the_runs() {
        let (_cluster, store) = store();
        notifying(&store, 1, vec![slack()], false);
        let start = key(1, 0, Kind::Start);
        store.outbox_begin(start, at(2)).expect("begin").expect("pending");
        let posted = Posted { id: "1700000001.2".into(), channel: Some("C123".into()), url: None };
        store.outbox_finish(start, &Outcome::Sent(posted.clone()), at(3), 0.5).expect("finish").expect("in flight");
        let thread = crate::runs::followup::posted_thread(&slack(), Kind::Start, &posted).expect("a thread");
        assert_eq!(store.thread_run(&thread).expect("read"), Some(RunId(1)));
        assert_eq!(notes(&store, 1), ["slack C123 start: posted (1700000001.2 in C123)"]);
    }

    #[test]
    fn an_abandoned_attempt_is_made_again_unsure_and_a_late_answer_of_its_instance_is_dropped() {
        let (cluster, store) = store();
        notifying(&store, 1, vec![slack(), webhook()], false);
        let start = key(1, 0, Kind::Start);
        store.outbox_begin(start, at(2)).expect("begin").expect("pending");
        // Another instance on the same database (or this one restarted).
        let other = PgStore::open(&cluster.url("reads")).expect("a second instance");
        let abandoned_at = later(at(2), IN_FLIGHT_FOR);
        let due = other.outbox_due(at(3), 16).expect("due");
        assert_eq!((due.entries.len(), due.next_at), (0, Some(abandoned_at)), "looked at again when abandoned");
        assert!(other.outbox_begin(start, at(3)).expect("begin").is_none(), "its attempt may still be going");
        let due = other.outbox_due(abandoned_at, 16).expect("due");
        assert_eq!(due_keys(&due), [start]);
        assert_eq!(due.entries[0].state, EntryState::Pending);
        let (_, attempt) = other.outbox_begin(start, abandoned_at).expect("begin").expect("abandoned");
        assert_eq!((attempt.number, attempt.unsure), (2, true));
        let posted = Posted { id: "1.2".into(), channel: Some("C123".into()), url: None };
        assert!(store.outbox_finish(start, &Outcome::Sent(posted.clone()), at(400), 0.5).expect("finish").is_none());
        let settled =
            other.outbox_finish(start, &Outcome::Sent(posted), at(400), 0.5).expect("finish").expect("its own");
        assert!(matches!(settled.state, EntryState::Sent { .. }));
        let due = other.outbox_due(at(100_000), 16).expect("due");
        assert!(due.entries.is_empty() && due.next_at.is_none(), "nothing is sent twice: {due:?}");
        assert_eq!(notes(&store, 1).len(), 1);
    }

    #[test]
    fn the_instance_holding_the_outbox_duty_takes_over_another_ones_attempt_at_once() {
        let (cluster, store) = store();
        notifying(&store, 1, vec![slack()], false);
        let start = key(1, 0, Kind::Start);
        store.outbox_begin(start, at(2)).expect("begin").expect("pending");
        let other = PgStore::open(&cluster.url("reads")).expect("a second instance");
        // The first instance stopped renewing its duty, which ran out.
        store
            .db
            .transaction(|tx| {
                tx.execute(
                    "INSERT INTO nightshift_maintenance (name, holder, expires_at) VALUES ($1, $2, now() - interval '1 s')",
                    &[&DUTY_OUTBOX, &store.instance],
                )
            })
            .expect("an expired duty");
        assert!(other.maintains(DUTY_OUTBOX, at(3)).expect("maintains"));
        assert_eq!(due_keys(&other.outbox_due(at(3), 16).expect("due")), [start]);
        let (_, attempt) = other.outbox_begin(start, at(3)).expect("begin").expect("taken over");
        assert_eq!((attempt.number, attempt.unsure), (2, true));
        // Its own attempts stay its own until they are abandoned by time.
        assert!(other.outbox_begin(start, at(4)).expect("begin").is_none());
    }

    #[test]
    fn instances_racing_to_begin_one_message_begin_it_once() {
        let (cluster, store) = store();
        notifying(&store, 1, vec![webhook()], true);
        let end = key(1, 0, Kind::End);
        let instances: Vec<PgStore> =
            (0..4).map(|_| PgStore::open(&cluster.url("reads")).expect("an instance")).collect();
        let begun: Vec<bool> = std::thread::scope(|scope| {
            let racers: Vec<_> = instances
                .iter()
                .map(|instance| scope.spawn(move || instance.outbox_begin(end, at(3)).expect("begin").is_some()))
                .collect();
            racers.into_iter().map(|racer| racer.join().expect("a racer")).collect()
        });
        assert_eq!(begun.iter().filter(|won| **won).count(), 1, "{begun:?}");
        let stored = store.outbox(RunId(1)).expect("outbox");
        assert_eq!((stored[0].state.clone(), stored[0].attempts), (EntryState::InFlight, 1));
    }
}
