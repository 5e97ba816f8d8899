//! Reads on PostgreSQL: runs, timelines, logs, events, memory and the queue as it
//! stands; and a person's memory writes. Each read is one transaction; the answers are
//! the embedded store's (src/store/embedded/mod.rs), in the same order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::PgStore;
use super::db::Tx;
use super::rows::{decode, encode, runs_of};
use crate::runs::{Activity, MemoryEntry, MemoryWrite, Run, RunId, RunState};
use crate::store::{LogChunk, RunFilter, StoreError, StoredEvent};

impl PgStore {
    /// Stored runs by state, every state listed: the unfinished states first, then the
    /// finished ones, each in `RunState::ALL`'s order (as the embedded store lists them).
    pub(super) fn stats_now(&self) -> Result<crate::store::StoreStats, StoreError> {
        let rows = self.db.read(|tx| tx.query("SELECT state, count(*) FROM nightshift_runs GROUP BY state", &[]))?;
        let mut counted = BTreeMap::new();
        for row in &rows {
            let state: &str = row.get(0);
            let state: RunState =
                state.parse().map_err(|cause| StoreError::Corrupt { what: "nightshift_runs.state".into(), cause })?;
            counted.insert(state.as_str(), row.get::<_, i64>(1) as u64);
        }
        let unfinished = RunState::ALL.into_iter().filter(|state| !state.is_finished());
        let finished = RunState::ALL.into_iter().filter(|state| state.is_finished());
        let by_state = unfinished
            .chain(finished)
            .map(|state| (state, counted.get(state.as_str()).copied().unwrap_or(0)))
            .collect();
        Ok(crate::store::StoreStats { by_state, commits: None })
    }

    pub(super) fn run_now(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        self.db.read(|tx| super::rows::load_run(tx, id, false))
    }

    /// The runs linked to `parent` (its parts and its follow-ups), oldest first. A
    /// parent retention deleted has none, as its index of children went with it in the
    /// embedded store.
    pub(super) fn children_now(&self, parent: RunId) -> Result<Vec<Run>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT doc FROM nightshift_runs WHERE parent = $1 \
                 AND EXISTS (SELECT 1 FROM nightshift_runs WHERE id = $1) ORDER BY id",
                &[&(parent.0 as i64)],
            )
        })?;
        runs_of(&rows)
    }

    /// Runs newest first (ids grow with creation), older than the cursor `before`.
    pub(super) fn runs_now(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let automation = filter.automation.as_deref();
        let state = filter.state.map(RunState::as_str);
        let before = filter.before.map(|id| id.0 as i64);
        // `LIMIT NULL` is no limit.
        let limit = (filter.limit > 0).then(|| i64::try_from(filter.limit).unwrap_or(i64::MAX));
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT doc FROM nightshift_runs WHERE ($1::text IS NULL OR automation = $1) \
                 AND ($2::text IS NULL OR state = $2) AND ($3::bigint IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
                &[&automation, &state, &before, &limit],
            )
        })?;
        runs_of(&rows)
    }

    /// The run's timeline in order (empty for an unknown run, as the embedded store).
    pub(super) fn activities_now(&self, run: RunId) -> Result<Vec<Activity>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query("SELECT doc FROM nightshift_activities WHERE run = $1 ORDER BY seq", &[&(run.0 as i64)])
        })?;
        rows.iter().map(|row| decode("an activity", row.get::<_, &[u8]>(0))).collect()
    }

    pub(super) fn log_now(&self, run: RunId, from: u64) -> Result<Vec<LogChunk>, StoreError> {
        let id = run.0 as i64;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.db.transaction(|tx| {
            snapshot(tx)?;
            if tx.query_opt("SELECT 1 FROM nightshift_runs WHERE id = $1", &[&id])?.is_none() {
                return Err(StoreError::NoSuchRun(run));
            }
            let rows = tx.query(
                "SELECT seq, at, text FROM nightshift_logs WHERE run = $1 AND seq >= $2 ORDER BY seq",
                &[&id, &from],
            )?;
            Ok(rows
                .iter()
                .map(|row| LogChunk { seq: row.get::<_, i64>(0) as u64, at: row.get(1), text: row.get(2) })
                .collect())
        })
    }

    /// The stored event, with its `fields` derived again from its payload (they are not
    /// stored, as in the embedded store).
    pub(super) fn event_now(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let row = self.db.read(|tx| tx.query_opt("SELECT doc FROM nightshift_events WHERE id = $1", &[&id]))?;
        let Some(row) = row else { return Ok(None) };
        let mut stored = decode_event(id, row.get(0))?;
        let event = &mut stored.event;
        event.fields = crate::triggers::normalize(event.source, &event.payload, &event.headers).fields;
        Ok(Some(stored))
    }

    /// The newest `limit` finished runs of `automation` that were not skipped.
    pub(super) fn history_now(&self, automation: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT doc FROM nightshift_runs WHERE automation = $1 AND finished AND state <> 'skipped' \
                 ORDER BY id DESC LIMIT $2",
                &[&automation, &limit],
            )
        })?;
        runs_of(&rows)
    }

    /// `automation`'s unexpired memory.
    pub(super) fn memory_now(
        &self,
        automation: &str,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, MemoryEntry>, StoreError> {
        // Every delivery reads its automation's memory: callers waiting together share
        // one read, which answers for the earliest of their times.
        let read = |earliest: DateTime<Utc>| {
            let rows = self.db.read(|tx| {
                tx.query(
                    "SELECT key, doc FROM nightshift_memory \
                     WHERE automation = $1 AND (expires_at IS NULL OR expires_at > $2)",
                    &[&automation, &earliest],
                )
            })?;
            let mut entries = BTreeMap::new();
            for row in &rows {
                let key: String = row.get(0);
                let what = format!("memory `{}` of {automation}", key.escape_debug());
                entries.insert(key, decode::<MemoryEntry>(&what, row.get(1))?);
            }
            Ok(std::sync::Arc::new(entries))
        };
        let shared = self.memory_reads.read(automation, now, read)?;
        Ok(shared
            .iter()
            .filter(|(_, entry)| entry.is_live(now))
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect())
    }

    /// A person's write: no run wrote it, so it is trusted unless the write says not.
    pub(super) fn write_memory_now(
        &self,
        automation: &str,
        write: MemoryWrite,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.db.transaction(|tx| put_memory(tx, automation, write.clone(), None, now))
    }

    /// The newest run that told `thread`.
    pub(super) fn thread_run_now(&self, thread: &str) -> Result<Option<RunId>, StoreError> {
        let row =
            self.db.read(|tx| tx.query_opt("SELECT run FROM nightshift_threads WHERE thread = $1", &[&thread]))?;
        Ok(row.map(|row| RunId(row.get::<_, i64>(0) as u64)))
    }
}

/// Makes the rest of a read transaction see one snapshot (its first statement).
pub(super) fn snapshot(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", &[]).map(drop)
}

/// Writes one memory change of `automation`: by run `by` (whose untrusted input marks
/// the entry untrusted), or by a person (`None`). As the embedded `Inner::put_memory`.
pub(super) fn put_memory(
    tx: &mut Tx<'_>,
    automation: &str,
    write: MemoryWrite,
    by: Option<&Run>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let key = write.key.clone();
    match crate::store::memory_entry(write, by, now) {
        Some((_, entry)) => tx.execute(
            "INSERT INTO nightshift_memory (automation, key, expires_at, doc) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (automation, key) DO UPDATE SET expires_at = $3, doc = $4",
            &[&automation, &key, &entry.expires_at, &encode(&entry)],
        )?,
        None => tx.execute("DELETE FROM nightshift_memory WHERE automation = $1 AND key = $2", &[&automation, &key])?,
    };
    Ok(())
}

/// An event row's record. It is written as the embedded store writes it
/// (`StoredEventRef`: no `fields`), and may leave out the id and a type equal to its
/// source, which are put back.
pub(super) fn decode_event(id: &str, bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let what = || format!("event `{}`", id.escape_debug());
    let mut value: serde_json::Value = decode(&what(), bytes)?;
    if let Some(event) = value.get_mut("event").and_then(serde_json::Value::as_object_mut) {
        event.entry("id").or_insert_with(|| id.into());
        if let Some(source) = event.get("source").filter(|_| !event.contains_key("type")).cloned() {
            event.insert("type".into(), source);
        }
    }
    serde_json::from_value(value).map_err(|cause| StoreError::Corrupt { what: what(), cause: cause.to_string() })
}

#[cfg(test)]
pub(super) mod tests {
    //! Fixtures the PostgreSQL store's read, outbox and retention tests share: a
    //! throwaway cluster per test, and runs and events written as the writers do.

    use chrono::TimeZone;

    use super::super::cluster::Cluster;
    use super::super::rows;
    use super::*;
    use crate::config::{Approval, DurationSpec, OutputFormat};
    use crate::delivery::Target;
    use crate::event::Event;
    use crate::netpolicy::NetworkPolicy;
    use crate::parallel::{ParentLink, Role};
    use crate::runs::ActivityKind;
    use crate::store::{Disposition, RunOutcome, Store, StoredEventRef};
    use crate::task::{AgentCommand, Flow, PhasePolicies, Task};
    use crate::triggers::TriggerKind;

    pub fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).single().expect("a time") + chrono::Duration::seconds(secs)
    }

    /// A cluster and a store on a fresh database of it (the cluster must outlive it).
    pub fn store() -> (Cluster, PgStore) {
        let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
        let url = cluster.database("reads").expect("a database");
        let store = PgStore::open(&url).expect("the store opens");
        (cluster, store)
    }

    pub fn task(targets: Vec<Target>) -> Task {
        Task {
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
        }
    }

    /// Run `id` of `automation` from event `e{id}`, created at `at(id)`, in `state`
    /// (a finished one finished at `at(id)` too).
    pub fn run(id: u64, automation: &str, state: RunState) -> Run {
        let mut run = Run::queued(
            RunId(id),
            automation.into(),
            "h".into(),
            vec![format!("e{id}")],
            Some(task(Vec::new())),
            Flow::default(),
            None,
            at(id as i64),
        );
        run.state = state;
        if state.is_finished() {
            run.finished_at = Some(at(id as i64));
        }
        run
    }

    pub fn save(store: &PgStore, runs: &[Run]) {
        store.db.transaction(|tx| runs.iter().try_for_each(|run| rows::save_run(tx, run))).expect("runs saved");
    }

    /// Stores `event` as ingest does (without its fields), made into `runs`.
    pub fn save_event(store: &PgStore, event: &Event, runs: &[(&str, RunId)]) {
        let outcomes: Vec<RunOutcome> = runs
            .iter()
            .map(|(automation, run)| RunOutcome {
                automation: automation.to_string(),
                run: *run,
                disposition: Disposition::Created,
            })
            .collect();
        let keys = BTreeMap::new();
        let doc = encode(&StoredEventRef { event: event.without_fields(), dedupe_keys: &keys, outcomes: &outcomes });
        store
            .db
            .transaction(|tx| {
                tx.execute(
                    "INSERT INTO nightshift_events (id, received_at, has_runs, doc) VALUES ($1, $2, $3, $4)",
                    &[&event.id, &event.received_at, &!outcomes.is_empty(), &doc],
                )
            })
            .expect("event saved");
    }

    pub fn manual_event(id: &str, secs: i64) -> Event {
        let payload = serde_json::json!({"service": "api", "note": "disk full"});
        let mut event = Event::from_delivery(TriggerKind::Manual, payload, BTreeMap::new(), at(secs));
        event.id = id.into();
        event
    }

    fn ids(runs: &[Run]) -> Vec<u64> {
        runs.iter().map(|run| run.id.0).collect()
    }

    #[test]
    fn stats_count_every_state_unfinished_first_as_the_embedded_store_lists_them() {
        let (_cluster, store) = store();
        assert!(store.stats().by_state.iter().all(|(_, n)| *n == 0));
        save(
            &store,
            &[
                run(1, "a", RunState::Queued),
                run(2, "a", RunState::Queued),
                run(3, "a", RunState::Running),
                run(4, "b", RunState::Failed),
                run(5, "b", RunState::Skipped),
            ],
        );
        let stats = store.stats();
        assert_eq!(stats.commits, None);
        let listed: Vec<(&str, u64)> = stats.by_state.iter().map(|(state, n)| (state.as_str(), *n)).collect();
        assert_eq!(
            listed,
            [
                ("awaiting_approval", 0),
                ("queued", 2),
                ("leased", 0),
                ("running", 1),
                ("succeeded", 0),
                ("failed", 1),
                ("cancelled", 0),
                ("timed_out", 0),
                ("skipped", 1),
            ]
        );
    }

    #[test]
    fn runs_are_read_by_id_listed_newest_first_through_a_cursor_and_by_history() {
        let (_cluster, store) = store();
        save(
            &store,
            &[
                run(1, "a", RunState::Succeeded),
                run(2, "b", RunState::Failed),
                run(3, "a", RunState::Skipped),
                run(4, "a", RunState::Queued),
                run(5, "a", RunState::Failed),
                run(6, "b", RunState::Running),
            ],
        );
        assert_eq!(store.run(RunId(5)).expect("read"), Some(run(5, "a", RunState::Failed)));
        assert_eq!(store.run(RunId(99)).expect("read"), None);
        let list = |automation: Option<&str>, state: Option<RunState>, limit: usize, before: Option<u64>| {
            let filter =
                RunFilter { automation: automation.map(String::from), state, limit, before: before.map(RunId) };
            ids(&store.runs(&filter).expect("runs"))
        };
        assert_eq!(list(None, None, 0, None), [6, 5, 4, 3, 2, 1], "0 is no limit");
        assert_eq!(list(None, None, 2, None), [6, 5]);
        assert_eq!(list(None, None, 2, Some(5)), [4, 3], "the page after the cursor");
        assert_eq!(list(Some("a"), None, 0, Some(4)), [3, 1]);
        assert_eq!(list(None, Some(RunState::Failed), 0, None), [5, 2]);
        assert_eq!(list(Some("b"), Some(RunState::Running), 1, None), [6]);
        assert_eq!(list(Some("c"), None, 0, None), Vec::<u64>::new());
        // Finished, not skipped, newest first.
        assert_eq!(ids(&store.history("a", 10).expect("history")), [5, 1]);
        assert_eq!(ids(&store.history("a", 1).expect("history")), [5]);
        assert!(store.history("a", 0).expect("history").is_empty());
    }

    #[test]
    fn children_are_the_runs_linked_to_a_parent_oldest_first_follow_ups_included() {
        let (_cluster, store) = store();
        let link = |role, index| Some(ParentLink { run: RunId(1), role, index });
        let mut attempt = run(2, "a", RunState::Succeeded);
        attempt.parent = link(Role::Attempt, 0);
        let mut follow_up = run(4, "a", RunState::Queued);
        follow_up.parent = link(Role::FollowUp, 0);
        let mut judge = run(3, "a", RunState::Running);
        judge.parent = link(Role::Judge, 0);
        save(&store, &[run(1, "a", RunState::Running), follow_up, attempt, judge, run(5, "a", RunState::Queued)]);
        assert_eq!(ids(&store.children(RunId(1)).expect("children")), [2, 3, 4]);
        assert!(store.children(RunId(5)).expect("children").is_empty());
        assert!(store.children(RunId(99)).expect("children").is_empty());
    }

    #[test]
    fn timelines_and_logs_read_in_order_and_the_log_of_an_unknown_run_is_an_error() {
        let (_cluster, store) = store();
        save(&store, &[run(1, "a", RunState::Running), run(2, "a", RunState::Queued)]);
        store
            .db
            .transaction(|tx| {
                for (seq, text) in ["cloned", "agent started"].into_iter().enumerate() {
                    rows::add_activity(
                        tx,
                        RunId(1),
                        ActivityKind::Progress,
                        text.into(),
                        serde_json::Value::Null,
                        at(seq as i64),
                    )?;
                }
                for seq in 0..3i64 {
                    tx.execute(
                        "INSERT INTO nightshift_logs (run, seq, at, text) VALUES (1, $1, $2, $3)",
                        &[&seq, &at(seq), &format!("line {seq}\n")],
                    )?;
                }
                Ok(())
            })
            .expect("timeline written");
        let activities = store.activities(RunId(1)).expect("activities");
        let texts: Vec<(u64, &str)> = activities.iter().map(|a| (a.seq, a.text.as_str())).collect();
        assert_eq!(texts, [(0, "cloned"), (1, "agent started")]);
        assert!(store.activities(RunId(99)).expect("activities").is_empty());
        let log = store.log(RunId(1), 1).expect("log");
        assert_eq!(log, [1, 2].map(|seq| LogChunk { seq, at: at(seq as i64), text: format!("line {seq}\n") }));
        assert!(store.log(RunId(1), 3).expect("log").is_empty());
        assert!(store.log(RunId(2), 0).expect("a run with no log").is_empty());
        assert_eq!(store.log(RunId(99), 0), Err(StoreError::NoSuchRun(RunId(99))));
    }

    #[test]
    fn an_event_reads_back_with_its_fields_derived_again_and_its_outcomes() {
        let (_cluster, store) = store();
        let event = manual_event("manual:1", 0);
        assert!(!event.fields.is_empty(), "the fixture has fields to derive");
        save_event(&store, &event, &[("a", RunId(7))]);
        let stored = store.event("manual:1").expect("read").expect("stored");
        assert_eq!(stored.event, event);
        assert_eq!(
            stored.outcomes,
            [RunOutcome { automation: "a".into(), run: RunId(7), disposition: Disposition::Created }]
        );
        let raw: Vec<u8> = store
            .db
            .transaction(|tx| Ok(tx.query_one("SELECT doc FROM nightshift_events WHERE id = 'manual:1'", &[])?.get(0)))
            .expect("raw");
        assert!(!String::from_utf8_lossy(&raw).contains("\"fields\""), "fields are not stored");
        // A record written as the embedded store writes it: no id, no type equal to its source.
        let mut trimmed: serde_json::Value = serde_json::from_slice(&raw).expect("json");
        let inner = trimmed["event"].as_object_mut().expect("an object");
        inner.remove("id");
        inner.remove("type");
        let again = decode_event("manual:1", &encode(&trimmed)).expect("decodes");
        assert_eq!((again.event.id.as_str(), again.event.kind.as_str()), ("manual:1", event.kind.as_str()));
        assert_eq!(store.event("manual:2").expect("read"), None);
    }

    #[test]
    fn memory_is_written_by_a_person_trusted_and_read_until_it_expires() {
        let (_cluster, store) = store();
        let set = |key: &str, expires_at| MemoryWrite {
            key: key.into(),
            change: crate::runs::MemoryChange::Set { value: serde_json::json!(key.len()), expires_at },
            untrusted: false,
        };
        store.write_memory("a", set("kept", None), at(0)).expect("write");
        store.write_memory("a", set("brief", Some(at(10))), at(0)).expect("write");
        store.write_memory("a", set("gone", None), at(0)).expect("write");
        store
            .write_memory(
                "a",
                MemoryWrite { key: "gone".into(), change: crate::runs::MemoryChange::Remove, untrusted: false },
                at(1),
            )
            .expect("remove");
        store.write_memory("b", set("other", None), at(0)).expect("write");
        let memory = store.memory("a", at(5)).expect("memory");
        assert_eq!(memory.keys().collect::<Vec<_>>(), ["brief", "kept"]);
        let kept = &memory["kept"];
        assert_eq!((kept.written_by, kept.untrusted, kept.written_at), (None, false, at(0)));
        assert_eq!(
            store.memory("a", at(10)).expect("memory").keys().collect::<Vec<_>>(),
            ["kept"],
            "expired at its time"
        );
        assert!(store.memory("c", at(0)).expect("memory").is_empty());
        // A run's write is marked with the run, untrusted when its input was.
        let mut writer = run(3, "a", RunState::Running);
        writer.task.as_mut().expect("task").untrusted_input = true;
        store.db.transaction(|tx| put_memory(tx, "a", set("by run", None), Some(&writer), at(2))).expect("write");
        let by_run = &store.memory("a", at(5)).expect("memory")["by run"];
        assert_eq!((by_run.written_by, by_run.untrusted), (Some(RunId(3)), true));
    }

    #[test]
    fn a_thread_answers_the_newest_run_that_told_it() {
        let (_cluster, store) = store();
        assert_eq!(store.thread_run("slack:C1:1.2").expect("read"), None);
        store
            .db
            .transaction(|tx| {
                tx.execute("INSERT INTO nightshift_threads (thread, run) VALUES ('slack:C1:1.2', 42)", &[])
            })
            .expect("thread written");
        assert_eq!(store.thread_run("slack:C1:1.2").expect("read"), Some(RunId(42)));
    }
}
