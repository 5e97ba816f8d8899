//! Retention on PostgreSQL: finished runs beyond the limits with what hangs off them,
//! and expired memory and dedupe marks. The rules are the embedded store's
//! (src/store/embedded/retention.rs): per automation, the newest `runs` finished runs
//! younger than `days` stay, one transaction each; then events that made no run,
//! expired memory, dedupe and cooldown marks, and threads whose run is gone.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};

use super::PgStore;
use super::db::Tx;
use super::reads::decode_event;
use super::rows::decode_run;
use crate::config::Retention;
use crate::store::{RetentionReport, StoreError};

impl PgStore {
    pub(super) fn retention_now(
        &self,
        retention: &Retention,
        now: DateTime<Utc>,
    ) -> Result<RetentionReport, StoreError> {
        // Nothing stored is older than 1970, and PostgreSQL holds no time before 4713 BC:
        // a huge `days` keeps everything rather than failing.
        let cutoff = now
            .checked_sub_signed(chrono::Duration::days(i64::from(retention.days)))
            .unwrap_or(DateTime::UNIX_EPOCH)
            .max(DateTime::UNIX_EPOCH);
        let mut report = RetentionReport::default();
        let automations = self.db.transaction(|tx| {
            let rows = tx.query("SELECT DISTINCT automation FROM nightshift_runs WHERE finished", &[])?;
            Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>())
        })?;
        for automation in automations {
            let pass = self.db.transaction(|tx| retain_runs_of(tx, &automation, retention.runs as usize, cutoff))?;
            add(&mut report, &pass);
        }
        let pass = self.db.transaction(|tx| forget_expired(tx, now, cutoff))?;
        add(&mut report, &pass);
        Ok(report)
    }
}

fn add(report: &mut RetentionReport, pass: &RetentionReport) {
    report.runs += pass.runs;
    report.events += pass.events;
    report.activities += pass.activities;
    report.log_chunks += pass.log_chunks;
    report.memory_entries += pass.memory_entries;
    report.dedupe_marks += pass.dedupe_marks;
}

/// Keeps `automation`'s newest `keep` finished runs that finished at or after `cutoff`
/// and deletes the others, with their activities, logs, outbox messages, and the events
/// no remaining run came from. What one pass deleted is its report.
fn retain_runs_of(
    tx: &mut Tx<'_>,
    automation: &str,
    keep: usize,
    cutoff: DateTime<Utc>,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    // A finished run's `finished_at` is set; the record's `created_at` stands in when not.
    let rows = tx.query(
        "SELECT id, finished_at, CASE WHEN finished_at IS NULL THEN doc END FROM nightshift_runs \
         WHERE automation = $1 AND finished ORDER BY id DESC",
        &[&automation],
    )?;
    let mut kept = 0;
    let mut doomed = Vec::new();
    for row in &rows {
        let id: i64 = row.get(0);
        let finished_at = match row.get::<_, Option<DateTime<Utc>>>(1) {
            Some(at) => at,
            None => row
                .get::<_, Option<&[u8]>>(2)
                .map(decode_run)
                .transpose()?
                .map_or(DateTime::<Utc>::MIN_UTC, |run| run.finished_at.unwrap_or(run.created_at)),
        };
        if kept < keep && finished_at >= cutoff {
            kept += 1;
        } else {
            doomed.push(id);
        }
    }
    if doomed.is_empty() {
        return Ok(report);
    }
    // Run rows first, in ascending id (the store's lock order): a change of one of them
    // (a message settled on it) waits, or is done before they go.
    doomed.sort_unstable();
    let locked = tx.query(
        "SELECT id, doc FROM nightshift_runs WHERE id = ANY($1) AND finished ORDER BY id FOR UPDATE",
        &[&doomed],
    )?;
    let mut gone: HashSet<i64> = HashSet::new();
    let mut events = BTreeSet::new();
    for row in &locked {
        gone.insert(row.get(0));
        events.extend(decode_run(row.get(1))?.event_ids);
    }
    let gone: Vec<i64> = gone.into_iter().collect();
    report.activities = tx.execute("DELETE FROM nightshift_activities WHERE run = ANY($1)", &[&gone])? as usize;
    report.log_chunks = tx.execute("DELETE FROM nightshift_logs WHERE run = ANY($1)", &[&gone])? as usize;
    tx.execute("DELETE FROM nightshift_outbox WHERE run = ANY($1)", &[&gone])?;
    report.runs = tx.execute("DELETE FROM nightshift_runs WHERE id = ANY($1)", &[&gone])? as usize;
    // An event goes once none of its runs is left (runs of other automations may be).
    for id in events {
        let Some(row) = tx.query_opt("SELECT doc FROM nightshift_events WHERE id = $1 FOR UPDATE", &[&id])? else {
            continue;
        };
        let stored = decode_event(&id, row.get(0))?;
        let runs: Vec<i64> = stored.outcomes.iter().map(|outcome| outcome.run.0 as i64).collect();
        let left = tx.query_one("SELECT count(*) FROM nightshift_runs WHERE id = ANY($1)", &[&runs])?;
        if left.get::<_, i64>(0) == 0 {
            report.events += tx.execute("DELETE FROM nightshift_events WHERE id = $1", &[&id])? as usize;
        }
    }
    Ok(report)
}

/// Events older than `cutoff` that made no run; memory entries and dedupe marks expired
/// at `now`, cooldown marks whose cooldown is over, and the threads whose newest run is
/// gone (nothing left to follow up).
fn forget_expired(tx: &mut Tx<'_>, now: DateTime<Utc>, cutoff: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
    // The embedded store orders events by the millisecond they arrived.
    let cutoff = DateTime::<Utc>::from_timestamp_millis(cutoff.timestamp_millis()).unwrap_or(cutoff);
    let events =
        tx.execute("DELETE FROM nightshift_events WHERE NOT has_runs AND received_at < $1", &[&cutoff])? as usize;
    let memory_entries = tx
        .execute("DELETE FROM nightshift_memory WHERE expires_at IS NOT NULL AND expires_at <= $1", &[&now])?
        as usize;
    let dedupe_marks = tx.execute("DELETE FROM nightshift_dedupe WHERE expires_at <= $1", &[&now])? as usize;
    tx.execute("DELETE FROM nightshift_cooldowns WHERE until <= $1", &[&now])?;
    tx.execute(
        "DELETE FROM nightshift_threads WHERE NOT EXISTS (SELECT 1 FROM nightshift_runs WHERE id = nightshift_threads.run)",
        &[],
    )?;
    Ok(RetentionReport { events, memory_entries, dedupe_marks, ..RetentionReport::default() })
}

#[cfg(test)]
mod tests {
    use super::super::reads::tests::{at, manual_event, run, save, save_event, store};
    use super::super::rows;
    use super::*;
    use crate::parallel::{ParentLink, Role};
    use crate::runs::{ActivityKind, Run, RunId, RunState};
    use crate::store::Store;

    fn count(store: &PgStore, sql: &str) -> i64 {
        store.db.transaction(|tx| Ok(tx.query_one(sql, &[])?.get(0))).expect("counted")
    }

    /// Run `id` of `automation` with two activities, a log chunk and an outbox message.
    fn with_timeline(store: &PgStore, run: &Run) {
        save(store, std::slice::from_ref(run));
        let id = run.id;
        store
            .db
            .transaction(|tx| {
                for text in ["started", "ended"] {
                    rows::add_activity(tx, id, ActivityKind::Progress, text.into(), serde_json::Value::Null, at(0))?;
                }
                tx.execute(
                    "INSERT INTO nightshift_logs (run, seq, at, text) VALUES ($1, 0, $2, 'line')",
                    &[&(id.0 as i64), &at(0)],
                )?;
                let message = crate::runs::outbox::Entry::new(
                    crate::runs::outbox::Key { run: id, target: 0, kind: crate::delivery::Kind::End },
                    Vec::new(),
                    at(0),
                );
                rows::put_outbox(tx, &[message])
            })
            .expect("timeline written");
    }

    #[test]
    fn the_newest_young_finished_runs_stay_and_the_rest_go_with_what_hangs_off_them() {
        let (_cluster, store) = store();
        let day = 24 * 60 * 60;
        // Automation a: 1 is old, 2..=4 young; 5 is unfinished. b: one young run.
        let mut old = run(1, "a", RunState::Succeeded);
        old.finished_at = Some(at(-10 * day));
        for run in
            [old, run(2, "a", RunState::Failed), run(3, "a", RunState::Skipped), run(4, "a", RunState::Succeeded)]
        {
            with_timeline(&store, &run);
        }
        let mut of_b = run(6, "b", RunState::Succeeded);
        of_b.event_ids = vec!["e2".into()];
        save(&store, &[run(5, "a", RunState::Running), of_b]);
        // Event e2 also made run 6 of b, which stays: e2 stays. e1 and e3 go with their runs.
        for id in [1, 3, 4, 5] {
            save_event(&store, &manual_event(&format!("e{id}"), id), &[("a", RunId(id as u64))]);
        }
        save_event(&store, &manual_event("e2", 2), &[("a", RunId(2)), ("b", RunId(6))]);
        store
            .db
            .transaction(|tx| {
                tx.execute("INSERT INTO nightshift_threads (thread, run) VALUES ('t2', 2), ('t4', 4)", &[]).map(drop)
            })
            .expect("threads");

        let report = store.apply_retention(&Retention { runs: 1, days: 7 }, at(day)).expect("retention");
        assert_eq!(
            report,
            RetentionReport { runs: 3, events: 2, activities: 6, log_chunks: 3, memory_entries: 0, dedupe_marks: 0 }
        );
        let left: Vec<u64> = store.runs(&Default::default()).expect("runs").iter().map(|run| run.id.0).collect();
        assert_eq!(left, [6, 5, 4], "the newest finished run of each, and the unfinished one");
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_activities WHERE run <> 4"), 0);
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_logs WHERE run <> 4"), 0);
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_outbox WHERE run <> 4"), 0);
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_outbox"), 1);
        let events: Vec<bool> =
            ["e1", "e2", "e3", "e4", "e5"].iter().map(|id| store.event(id).expect("read").is_some()).collect();
        assert_eq!(events, [false, true, false, true, true]);
        assert_eq!(store.thread_run("t2").expect("read"), None, "its run is gone");
        assert_eq!(store.thread_run("t4").expect("read"), Some(RunId(4)));
        let again = store.apply_retention(&Retention { runs: 1, days: 7 }, at(day)).expect("retention");
        assert_eq!(again, RetentionReport::default(), "nothing more to delete");
        // Old enough, even the newest goes.
        let report = store.apply_retention(&Retention { runs: 1, days: 7 }, at(30 * day)).expect("retention");
        assert_eq!((report.runs, report.events), (2, 2), "{report:?}");
    }

    #[test]
    fn a_deleted_parent_lists_no_children_and_its_surviving_children_stay() {
        let (_cluster, store) = store();
        let mut child = run(2, "b", RunState::Succeeded);
        child.parent = Some(ParentLink { run: RunId(1), role: Role::Attempt, index: 0 });
        save(&store, &[run(1, "a", RunState::Failed), child, run(3, "a", RunState::Succeeded)]);
        assert_eq!(store.children(RunId(1)).expect("children").len(), 1);
        let report = store.apply_retention(&Retention { runs: 1, days: 7 }, at(0)).expect("retention");
        assert_eq!(report.runs, 1);
        assert!(store.run(RunId(1)).expect("read").is_none());
        assert!(store.children(RunId(1)).expect("children").is_empty());
        assert!(store.run(RunId(2)).expect("read").is_some());
    }

    #[test]
    fn expired_memory_dedupe_and_cooldown_marks_and_old_events_without_runs_are_forgotten() {
        let (_cluster, store) = store();
        let day = 24 * 60 * 60;
        let set = |key: &str, expires_at| crate::runs::MemoryWrite {
            key: key.into(),
            change: crate::runs::MemoryChange::Set { value: serde_json::json!(1), expires_at },
            untrusted: false,
        };
        store.write_memory("a", set("expired", Some(at(10))), at(0)).expect("write");
        store.write_memory("a", set("live", Some(at(100))), at(0)).expect("write");
        store.write_memory("a", set("forever", None), at(0)).expect("write");
        save_event(&store, &manual_event("old", -8 * day), &[]);
        save_event(&store, &manual_event("recent", -6 * day), &[]);
        store
            .db
            .transaction(|tx| {
                tx.batch(
                    "INSERT INTO nightshift_dedupe (automation, key, run, expires_at) VALUES \
                     ('a', 'k1', 1, '2026-12-01 09:00:10+00'), ('a', 'k2', 2, '2026-12-01 09:01:40+00'); \
                     INSERT INTO nightshift_cooldowns (group_key, run, at, until) VALUES \
                     ('g1', 1, '2026-12-01 09:00:00+00', '2026-12-01 09:00:10+00'), \
                     ('g2', 2, '2026-12-01 09:00:00+00', '2026-12-01 09:01:40+00')",
                )
            })
            .expect("marks");
        let report = store.apply_retention(&Retention { runs: 1, days: 7 }, at(10)).expect("retention");
        assert_eq!((report.events, report.memory_entries, report.dedupe_marks, report.runs), (1, 1, 1, 0));
        assert_eq!(store.memory("a", at(0)).expect("memory").keys().collect::<Vec<_>>(), ["forever", "live"]);
        assert!(store.event("old").expect("read").is_none() && store.event("recent").expect("read").is_some());
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_dedupe WHERE key = 'k2'"), 1);
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_cooldowns"), 1);
        assert_eq!(count(&store, "SELECT count(*) FROM nightshift_cooldowns WHERE group_key = 'g2'"), 1);
    }
}
