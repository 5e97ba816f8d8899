//! Ingest on PostgreSQL: a delivery's event row admits it once; flow control is decided
//! under its group's advisory lock on the group's unfinished runs, as the embedded store
//! decides it on its index; cron progress.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::PgStore;
use super::db::Tx;
use super::rows::{self, encode, next_run_id, save_run};
use crate::config::Overlap;
use crate::event::Event;
use crate::runs::clock::later;
use crate::runs::flow::{Decision, FlowFacts, decide, needed_busy};
use crate::runs::{Run, RunId, RunState, SkipReason, group_key};
use crate::store::{
    Disposition, IngestOutcome, NewRun, RunOutcome, ScheduleState, StoreError, StoredEvent, StoredEventRef, fresh_run,
};
use crate::task::{Flow, Task};

/// How many times a delivery is tried when its stored event vanished (retention deleted
/// it) between finding it there and reading it.
const ADMIT_TRIES: usize = 3;

impl PgStore {
    pub(super) fn record_skipped_slots_now(
        &self,
        automation: &str,
        definition_hash: &str,
        skipped: &[(Event, SkipReason)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>, StoreError> {
        self.db.transaction(|tx| {
            let mut ids = Vec::new();
            for (event, reason) in skipped {
                if admit(tx, event)?.is_some() {
                    continue;
                }
                let id = next_run_id(tx)?;
                let (automation, hash) = (automation.to_string(), definition_hash.to_string());
                let run = fresh_run(id, automation.clone(), hash, None, Flow::default(), event, now);
                save_run(tx, &as_skipped(run, reason.clone(), now))?;
                let outcomes =
                    [RunOutcome { automation, run: id, disposition: Disposition::Skipped { reason: reason.clone() } }];
                write_event(tx, event, &BTreeMap::new(), &outcomes)?;
                ids.push(id);
            }
            Ok(ids)
        })
    }

    pub(super) fn schedule_now(&self, automation: &str, trigger: &str) -> Result<Option<ScheduleState>, StoreError> {
        self.db.transaction(|tx| {
            let sql = "SELECT doc FROM nightshift_schedules WHERE automation = $1 AND trigger = $2";
            let Some(row) = tx.query_opt(sql, &[&automation, &trigger])? else { return Ok(None) };
            let what = format!("the progress of {automation}'s cron trigger `{trigger}`");
            rows::decode(&what, &row.get::<_, Vec<u8>>(0)).map(Some)
        })
    }

    /// Not waited for on disk, as the trait allows. Each row keeps the state with the
    /// latest `last_slot`: instances (or one instance's writes arriving late) that store
    /// an older state change nothing, so progress never moves backwards.
    pub(super) fn set_schedules_now(&self, states: &[(&str, &str, &ScheduleState)]) -> Result<(), StoreError> {
        // One statement may change a row once: of one trigger's states, the latest (the
        // last given among equals, as the embedded store's last write wins).
        let mut latest: BTreeMap<(&str, &str), &ScheduleState> = BTreeMap::new();
        for &(automation, trigger, state) in states {
            let kept = latest.entry((automation, trigger)).or_insert(state);
            if kept.last_slot <= state.last_slot {
                *kept = state;
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let automations: Vec<&str> = latest.keys().map(|(automation, _)| *automation).collect();
        let triggers: Vec<&str> = latest.keys().map(|(_, trigger)| *trigger).collect();
        let slots: Vec<DateTime<Utc>> = latest.values().map(|state| state.last_slot).collect();
        let docs: Vec<Vec<u8>> = latest.values().map(encode).collect();
        self.db.transaction_unsynced(|tx| {
            tx.execute(
                "INSERT INTO nightshift_schedules (automation, trigger, last_slot, doc) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[]) \
                 ON CONFLICT (automation, trigger) DO UPDATE SET last_slot = EXCLUDED.last_slot, doc = EXCLUDED.doc \
                 WHERE nightshift_schedules.last_slot <= EXCLUDED.last_slot",
                &[&automations, &triggers, &slots, &docs],
            )
            .map(drop)
        })
    }
}

/// `Store::ingest` in `tx`: the event's row first (a delivery seen before stops there),
/// then each rendered run through flow control, then the event's outcomes.
pub(super) fn ingest_in(
    tx: &mut Tx<'_>,
    event: &Event,
    runs: &[NewRun],
    now: DateTime<Utc>,
) -> Result<IngestOutcome, StoreError> {
    if let Some(first) = admit(tx, event)? {
        return Ok(IngestOutcome {
            event_id: event.id.clone(),
            duplicate_delivery: true,
            runs: first.outcomes,
            cancelled: Vec::new(),
        });
    }
    lock_flow(tx, runs)?;
    let mut ingest = Ingest { event, now, cancelled: Vec::new() };
    let mut outcomes = Vec::with_capacity(runs.len());
    let mut dedupe_keys = BTreeMap::new();
    for new in runs {
        let (task, flow) = match &new.rendered {
            Ok(rendered) => rendered,
            Err(error) => {
                outcomes.push(ingest.render_failed(tx, new, error)?);
                continue;
            }
        };
        if let Some(key) = &flow.dedupe_key {
            dedupe_keys.insert(new.automation.clone(), key.clone());
        }
        outcomes.extend(ingest.flow_controlled(tx, new, task, flow)?);
    }
    write_event(tx, event, &dedupe_keys, &outcomes)?;
    Ok(IngestOutcome {
        event_id: event.id.clone(),
        duplicate_delivery: false,
        runs: outcomes,
        cancelled: ingest.cancelled,
    })
}

/// Inserts `event`'s row, or returns the stored event when the delivery was seen before.
/// The primary key admits one delivery: a second one racing it waits here until the
/// first commits, then finds it. The row's record is written by `write_event` in the
/// same transaction, so no one ever reads it empty.
fn admit(tx: &mut Tx<'_>, event: &Event) -> Result<Option<StoredEvent>, StoreError> {
    for _ in 0..ADMIT_TRIES {
        let inserted = tx.execute(
            "INSERT INTO nightshift_events (id, received_at, has_runs, doc) VALUES ($1, $2, false, '') \
             ON CONFLICT (id) DO NOTHING",
            &[&event.id, &event.received_at],
        )?;
        if inserted == 1 {
            return Ok(None);
        }
        if let Some(row) = tx.query_opt("SELECT doc FROM nightshift_events WHERE id = $1", &[&event.id])? {
            let what = format!("the stored event `{}`", event.id);
            return rows::decode(&what, &row.get::<_, Vec<u8>>(0)).map(Some);
        }
    }
    Err(StoreError::Io(format!(
        "event `{}` was deleted each time it was found stored ({ADMIT_TRIES} times); deliver it again",
        event.id
    )))
}

/// Writes the record of an admitted event: the event without its derived `fields`, its
/// dedupe keys and what ingest did with it. An event with no outcome ages out alone
/// (`has_runs`), the others go with their runs.
fn write_event(
    tx: &mut Tx<'_>,
    event: &Event,
    dedupe_keys: &BTreeMap<String, String>,
    outcomes: &[RunOutcome],
) -> Result<(), StoreError> {
    let stored = StoredEventRef { event: event.without_fields(), dedupe_keys, outcomes };
    tx.execute(
        "UPDATE nightshift_events SET has_runs = $2, doc = $3 WHERE id = $1",
        &[&event.id, &!outcomes.is_empty(), &encode(&stored)],
    )
    .map(drop)
}

/// Takes the advisory locks of every group and dedupe key the rendered runs belong to,
/// each kind in name order, so two ingests never wait for each other in a circle.
fn lock_flow(tx: &mut Tx<'_>, runs: &[NewRun]) -> Result<(), StoreError> {
    let mut groups = BTreeSet::new();
    let mut dedupes = BTreeSet::new();
    for new in runs {
        let Ok((_, flow)) = &new.rendered else { continue };
        // A group whose decision reads nothing of it (no cooldown, `overlap: queue`)
        // takes no lock: its deliveries commit side by side.
        if crate::runs::flow::needs_group_facts(flow) {
            groups.insert(format!("group:{}", group_key(&new.automation, flow.concurrency_key.as_deref())));
        }
        if let Some(key) = &flow.dedupe_key {
            dedupes.insert(format!("dedupe:{}:{key}", new.automation));
        }
    }
    for name in groups.iter().chain(&dedupes) {
        tx.lock(name)?;
    }
    Ok(())
}

/// One delivery's ingest: its event, its clock, and the runs cancelled to make room.
struct Ingest<'e> {
    event: &'e Event,
    now: DateTime<Utc>,
    cancelled: Vec<RunId>,
}

impl Ingest<'_> {
    /// A run whose rendering failed, recorded failed with the error.
    fn render_failed(&self, tx: &mut Tx<'_>, new: &NewRun, error: &str) -> Result<RunOutcome, StoreError> {
        let id = next_run_id(tx)?;
        save_run(tx, &render_failed_run(id, new, error, self.event, self.now))?;
        let disposition = Disposition::RenderFailed { error: error.to_string() };
        Ok(RunOutcome { automation: new.automation.clone(), run: id, disposition })
    }

    /// A rendered run through flow control (`runs::flow::decide`) on its group's facts.
    /// `None` when it was to join a run that has ended since (as the embedded store,
    /// which skips it): the holder's row is locked while its state is read, so it cannot.
    fn flow_controlled(
        &mut self,
        tx: &mut Tx<'_>,
        new: &NewRun,
        task: &Task,
        flow: &Flow,
    ) -> Result<Option<RunOutcome>, StoreError> {
        let (event, now) = (self.event, self.now);
        let automation = new.automation.clone();
        let group = group_key(&automation, flow.concurrency_key.as_deref());
        let facts = facts(tx, &automation, &group, flow, now)?;
        let (run, disposition) = match decide(flow, &facts, now) {
            Decision::Coalesce(id) => {
                let Some(before) = rows::load_run(tx, id, true)?.filter(|run| !run.state.is_finished()) else {
                    return Ok(None);
                };
                let mut joined = before.clone();
                joined.event_ids.push(event.id.clone());
                joined.updated_at = now;
                rows::update_run(tx, &before, &joined)?;
                (id, Disposition::Coalesced)
            }
            Decision::Skip(reason) => {
                let id = next_run_id(tx)?;
                let hash = new.definition_hash.clone();
                let run = fresh_run(id, automation.clone(), hash, Some(task.clone()), flow.clone(), event, now);
                save_run(tx, &as_skipped(run, reason.clone(), now))?;
                (id, Disposition::Skipped { reason })
            }
            Decision::Create { cancel } => {
                let id = next_run_id(tx)?;
                self.create(tx, id, new, task, flow, cancel)?;
                (id, Disposition::Created)
            }
        };
        Ok(Some(RunOutcome { automation, run, disposition }))
    }

    /// Creates run `id`: cancels the runs it supersedes, takes its dedupe key and starts
    /// its group's cooldown, makes it the newest run of its threads, and queues it; a
    /// parent instead starts running at once, with no lease, and spawns its first
    /// children in this same transaction.
    fn create(
        &mut self,
        tx: &mut Tx<'_>,
        id: RunId,
        new: &NewRun,
        task: &Task,
        flow: &Flow,
        cancel: Vec<RunId>,
    ) -> Result<(), StoreError> {
        let (event, now) = (self.event, self.now);
        let automation = &new.automation;
        // Ascending ids (the group's oldest first): the order run rows are locked in.
        for previous in cancel {
            // A child's cancellation changes its parent, an older row: locked first.
            super::leases::lock_parent(tx, previous)?;
            let why = format!("superseded by {id} (`overlap: cancel_previous`)");
            if super::leases::cancel_in(tx, previous, why, now)?.is_some() {
                self.cancelled.push(previous);
            }
        }
        let row = id.0 as i64;
        if let (Some(key), Some(window)) = (&flow.dedupe_key, flow.dedupe_window) {
            tx.execute(
                "INSERT INTO nightshift_dedupe (automation, key, run, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (automation, key) DO UPDATE SET run = $3, expires_at = $4",
                &[automation, key, &row, &later(now, window.as_duration())],
            )?;
        }
        if let Some(cooldown) = flow.cooldown {
            let group = group_key(automation, flow.concurrency_key.as_deref());
            tx.execute(
                "INSERT INTO nightshift_cooldowns (group_key, run, at, until) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (group_key) DO UPDATE SET run = $2, at = $3, until = $4",
                &[&group, &row, &now, &later(now, cooldown.as_duration())],
            )?;
        }
        for thread in crate::runs::followup::thread_keys(&task.notify) {
            tx.execute(
                "INSERT INTO nightshift_threads (thread, run) VALUES ($1, $2) ON CONFLICT (thread) DO UPDATE SET run = $2",
                &[&thread, &row],
            )?;
        }
        let hash = new.definition_hash.clone();
        let run = fresh_run(id, automation.clone(), hash, Some(task.clone()), flow.clone(), event, now);
        if task.plan.is_none() {
            return save_run(tx, &run);
        }
        // A parent coordinates from the start. Its row is this transaction's own until
        // the commit, as `family::conduct` needs it locked.
        let mut running = run.clone();
        running.state = RunState::Running;
        running.started_at = Some(now);
        save_run(tx, &running)?;
        rows::put_outbox(tx, &crate::runs::outbox::created(&run, &running, now))?;
        super::family::conduct(tx, id, now)
    }
}

/// What flow control needs to know about a new run of `automation` in `group`, read
/// under the group's and the dedupe key's locks (`lock_flow`), as the embedded store's
/// `Live::facts` reads its index.
fn facts(
    tx: &mut Tx<'_>,
    automation: &str,
    group: &str,
    flow: &Flow,
    now: DateTime<Utc>,
) -> Result<FlowFacts, StoreError> {
    let dedupe_holder = match &flow.dedupe_key {
        Some(key) => dedupe_holder(tx, automation, key, now)?,
        None => None,
    };
    let last_created = match flow.cooldown {
        Some(_) => tx
            .query_opt("SELECT run, at FROM nightshift_cooldowns WHERE group_key = $1", &[&group])?
            .map(|row| (RunId(row.get::<_, i64>(0) as u64), row.get::<_, DateTime<Utc>>(1))),
        None => None,
    };
    // `queue` never looks at the group's runs (`needed_busy`), so a long queue costs
    // ingest nothing: it is not even counted.
    if matches!(flow.overlap, Overlap::Queue) {
        return Ok(FlowFacts { dedupe_holder, last_created, busy_count: 0, oldest_busy: Vec::new() });
    }
    let count =
        tx.query_one("SELECT count(*) FROM nightshift_runs WHERE group_key = $1 AND NOT finished", &[&group])?;
    let busy_count = count.get::<_, i64>(0) as usize;
    let needed = needed_busy(flow, busy_count) as i64;
    let oldest = tx.query(
        "SELECT id FROM nightshift_runs WHERE group_key = $1 AND NOT finished ORDER BY id LIMIT $2",
        &[&group, &needed],
    )?;
    let oldest_busy = oldest.iter().map(|row| RunId(row.get::<_, i64>(0) as u64)).collect();
    Ok(FlowFacts { dedupe_holder, last_created, busy_count, oldest_busy })
}

/// The run holding `automation`'s dedupe `key` at `now`, with its state; its row is
/// locked, so no claim starts it before a repeat event has joined it. A holder that is
/// no longer stored counts as succeeded, as in the embedded store.
fn dedupe_holder(
    tx: &mut Tx<'_>,
    automation: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<(RunId, RunState)>, StoreError> {
    let sql = "SELECT run FROM nightshift_dedupe WHERE automation = $1 AND key = $2 AND expires_at > $3";
    let Some(mark) = tx.query_opt(sql, &[&automation, &key, &now])? else { return Ok(None) };
    let run: i64 = mark.get(0);
    let holder = RunId(run as u64);
    let Some(row) = tx.query_opt("SELECT state FROM nightshift_runs WHERE id = $1 FOR UPDATE", &[&run])? else {
        return Ok(Some((holder, RunState::Succeeded)));
    };
    let state = RunState::from_str(row.get::<_, &str>(0))
        .map_err(|cause| StoreError::Corrupt { what: format!("the state column of {holder}"), cause })?;
    Ok(Some((holder, state)))
}

/// Run `id` of `new`, whose rendering failed with `error`: recorded failed with it.
pub(super) fn render_failed_run(id: RunId, new: &NewRun, error: &str, event: &Event, now: DateTime<Utc>) -> Run {
    let (automation, hash) = (new.automation.clone(), new.definition_hash.clone());
    let mut run = fresh_run(id, automation, hash, None, Flow::default(), event, now);
    finish(&mut run, RunState::Failed, Some(format!("rendering failed: {error}")), now);
    run
}

fn finish(run: &mut Run, state: RunState, reason: Option<String>, now: DateTime<Utc>) {
    run.state = state;
    run.reason = reason;
    run.lease = None;
    run.finished_at = Some(now);
    run.updated_at = now;
}

/// `run` recorded as skipped, saying why.
fn as_skipped(mut run: Run, reason: SkipReason, now: DateTime<Utc>) -> Run {
    finish(&mut run, RunState::Skipped, None, now);
    run.skip = Some(reason);
    run
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::config::{Approval, DurationSpec, OutputFormat};
    use crate::netpolicy::NetworkPolicy;
    use crate::runs::{Epoch, Lease};
    use crate::store::Store;
    use crate::store::postgres::cluster::Cluster;
    use crate::task::{AgentCommand, PhasePolicies};
    use crate::triggers::TriggerKind;

    /// A store on a database of its own in a throwaway cluster (the store is dropped
    /// first, then the cluster stops).
    struct Fixture {
        store: Arc<PgStore>,
        cluster: Cluster,
    }

    impl Fixture {
        fn start() -> Fixture {
            let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
            let url = cluster.database("ingest").expect("a database");
            Fixture { store: Arc::new(PgStore::open(&url).expect("the store opens")), cluster }
        }

        /// Another instance on the same database.
        fn another_instance(&self) -> Arc<PgStore> {
            Arc::new(PgStore::open(&self.cluster.url("ingest")).expect("a second instance opens"))
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn event(id: &str, secs: i64) -> Event {
        let mut event = Event::from_delivery(TriggerKind::Manual, json!({"title": "t"}), BTreeMap::new(), at(secs));
        event.id = format!("manual:{id}");
        event
    }

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

    fn rendered(flow: &Flow) -> NewRun {
        NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Ok((task(), flow.clone())) }
    }

    /// Delivers event `id` at `secs` to one automation with `flow`; its one outcome.
    fn ingest(store: &PgStore, id: &str, flow: &Flow, secs: i64) -> (RunId, Disposition) {
        let outcome = store.ingest(&event(id, secs), vec![rendered(flow)], at(secs)).expect("ingest");
        assert!(!outcome.duplicate_delivery, "{id} is delivered for the first time");
        let [only] = <[RunOutcome; 1]>::try_from(outcome.runs).expect("one outcome");
        (only.run, only.disposition)
    }

    fn stored(store: &PgStore, id: RunId) -> Run {
        store.db.transaction(|tx| rows::load_run(tx, id, false)).expect("a read").expect("the run is stored")
    }

    fn count(store: &PgStore, sql: &str) -> i64 {
        store.db.transaction(|tx| tx.query_one(sql, &[])).expect("a count").get(0)
    }

    fn stored_event(store: &PgStore, id: &str) -> (bool, StoredEvent) {
        let row = store
            .db
            .transaction(|tx| tx.query_one("SELECT has_runs, doc FROM nightshift_events WHERE id = $1", &[&id]))
            .expect("the event is stored");
        (row.get(0), rows::decode("an event", &row.get::<_, Vec<u8>>(1)).expect("its record decodes"))
    }

    /// A worker takes run `id` at `secs` (what a claim and `mark_running` write).
    fn start(store: &PgStore, id: RunId, secs: i64) {
        store
            .db
            .transaction(|tx| {
                let mut run = rows::load_run(tx, id, true)?.expect("the run is stored");
                run.state = RunState::Running;
                run.epoch = Epoch(1);
                let expires_at = at(secs + 30);
                run.lease = Some(Lease { worker: "w".into(), epoch: run.epoch, acquired_at: at(secs), expires_at });
                run.started_at = Some(at(secs));
                save_run(tx, &run)
            })
            .expect("the run starts");
    }

    fn overlap(overlap: Overlap, limit: u32) -> Flow {
        Flow { concurrency_limit: limit, overlap, ..Flow::default() }
    }

    /// Another connection holding a group's lock, until released.
    struct Blocker {
        release: std::sync::mpsc::Sender<()>,
        holding: std::thread::JoinHandle<Result<(), StoreError>>,
    }

    impl Blocker {
        fn release(self) {
            self.release.send(()).expect("the holder waits");
            self.holding.join().expect("the holder").expect("its transaction");
        }
    }

    /// A delivery whose flow needs its group's lock while another connection holds it:
    /// the ingest writer waits in it, and what is submitted meanwhile lines up behind it
    /// in one batch.
    fn blocked_first_delivery(fixture: &Fixture) -> (crate::store::PendingIngest, Blocker) {
        let (locked, waiting) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = fixture.another_instance();
        let holding = std::thread::spawn(move || {
            holder.db.transaction(|tx| {
                tx.lock(&format!("group:{}", group_key("probe", Some("k"))))?;
                let _ = locked.send(());
                let _ = released.recv();
                Ok(())
            })
        });
        waiting.recv().expect("the lock is held");
        let skip = Flow { concurrency_key: Some("k".into()), ..overlap(Overlap::Skip, 1) };
        let first = fixture.store.ingest_pending(&event("a", 1), vec![rendered(&skip)], at(1));
        (first, Blocker { release, holding })
    }

    /// Deliveries that wait in line together are decided in one batch: plain ones a
    /// segment at a time, flow-controlled ones alone in their place, each seeing those
    /// before it; repeats in the batch and deliveries stored before get first outcomes.
    #[test]
    fn deliveries_decided_in_one_batch_keep_their_order_and_their_promises() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let (old, _) = ingest(store, "old", &Flow::default(), 0);
        // The writer waits in the first delivery while the others line up behind it.
        let (first, blocker) = blocked_first_delivery(&fixture);
        let broken = NewRun { automation: "broken".into(), definition_hash: "h".into(), rendered: Err("no".into()) };
        let lined_up = [
            ("e1", vec![rendered(&Flow::default())]),
            ("e2", vec![broken, rendered(&Flow::default())]),
            ("e1", vec![rendered(&Flow::default())]),
            ("old", vec![rendered(&Flow::default())]),
            ("e3", vec![rendered(&Flow { concurrency_key: Some("k".into()), ..overlap(Overlap::Skip, 1) })]),
            ("e1", vec![rendered(&Flow::default())]),
            ("e5", vec![rendered(&Flow::default())]),
        ];
        let pending: Vec<_> =
            lined_up.into_iter().map(|(id, runs)| store.ingest_pending(&event(id, 2), runs, at(2))).collect();
        blocker.release();
        let a = first.wait().expect("stored");
        assert_eq!(a.runs[0].disposition, Disposition::Created);
        let answers: Vec<IngestOutcome> = pending.into_iter().map(|p| p.wait().expect("stored")).collect();
        let dispositions =
            |outcome: &IngestOutcome| outcome.runs.iter().map(|r| r.disposition.clone()).collect::<Vec<_>>();
        let fresh = |outcome: &IngestOutcome| !outcome.duplicate_delivery;
        let e1 = &answers[0];
        assert!(fresh(e1) && dispositions(e1) == [Disposition::Created], "{e1:?}");
        assert_eq!(dispositions(&answers[1]), [Disposition::RenderFailed { error: "no".into() }, Disposition::Created]);
        for repeat in [&answers[2], &answers[5]] {
            assert!(repeat.duplicate_delivery, "{repeat:?}");
            assert_eq!(repeat.runs, e1.runs, "a repeat in the batch answers the first outcome");
        }
        assert!(answers[3].duplicate_delivery);
        assert_eq!(answers[3].runs[0].run, old, "a delivery stored before answers its first outcome");
        let busy = vec![a.runs[0].run];
        assert_eq!(
            dispositions(&answers[4]),
            [Disposition::Skipped { reason: SkipReason::Overlap { limit: 1, busy } }],
            "a flow-controlled delivery sees the runs lined up before it"
        );
        assert!(fresh(&answers[6]) && dispositions(&answers[6]) == [Disposition::Created]);
        assert_eq!(count(store, "SELECT count(*) FROM nightshift_runs"), 7);
        assert_eq!(count(store, "SELECT count(*) FROM nightshift_events"), 6);
        let (has_runs, record) = stored_event(store, "manual:e2");
        assert!(has_runs);
        assert_eq!(record.outcomes, answers[1].runs);
        let failed = stored(store, answers[1].runs[0].run);
        assert_eq!((failed.state, failed.reason.as_deref()), (RunState::Failed, Some("rendering failed: no")));
        let created = stored(store, answers[6].runs[0].run);
        assert_eq!((created.state, created.event_ids.as_slice()), (RunState::Queued, &["manual:e5".to_string()][..]));
    }

    /// A delivery the database refuses (text PostgreSQL cannot hold) fails alone: the
    /// others in its batch are stored, each in a transaction of its own.
    #[test]
    fn a_delivery_the_database_refuses_fails_alone_not_its_batch() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let (first, blocker) = blocked_first_delivery(&fixture);
        let lined_up: Vec<_> = ["good-1", "bad\u{0}id", "good-2"]
            .into_iter()
            .map(|id| store.ingest_pending(&event(id, 2), vec![rendered(&Flow::default())], at(2)))
            .collect();
        blocker.release();
        first.wait().expect("stored");
        let [good, bad, other] = <[_; 3]>::try_from(lined_up).expect("three");
        assert_eq!(good.wait().expect("stored alone").runs[0].disposition, Disposition::Created);
        assert_eq!(other.wait().expect("stored alone").runs[0].disposition, Disposition::Created);
        let refused = bad.wait().expect_err("PostgreSQL holds no NUL in text");
        assert!(refused.to_string().contains("refused a statement"), "{refused}");
        assert_eq!(count(store, "SELECT count(*) FROM nightshift_events"), 3);
        assert_eq!(count(store, "SELECT count(*) FROM nightshift_runs"), 3);
    }

    /// Dropping a store stops its ingest writer, which holds the database's pool too:
    /// every connection of that instance closes.
    #[test]
    fn a_dropped_store_stops_its_writer_and_closes_its_connections() {
        let fixture = Fixture::start();
        let other = fixture.another_instance();
        other.ingest(&event("x", 0), vec![rendered(&Flow::default())], at(0)).expect("stored");
        let open = || {
            count(
                &fixture.store,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'nightshift' \
                 AND datname = current_database()",
            )
        };
        let before = open();
        drop(other);
        // Its listener's connection and its writer's close; the server notices each as
        // its socket closes, so wait for that (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while open() > before - 2 {
            assert!(std::time::Instant::now() < deadline, "the dropped instance's connections stayed open");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_delivery_seen_before_creates_nothing_and_returns_the_first_outcome() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let (first, disposition) = ingest(store, "d1", &Flow::default(), 0);
        assert_eq!(disposition, Disposition::Created);
        let again = store.ingest(&event("d1", 5), vec![rendered(&Flow::default())], at(5)).unwrap();
        assert!(again.duplicate_delivery);
        assert_eq!(
            again.runs,
            [RunOutcome { automation: "probe".into(), run: first, disposition: Disposition::Created }]
        );
        assert_eq!(count(store, "SELECT count(*) FROM nightshift_runs"), 1);
        let run = stored(store, first);
        assert_eq!((run.state, run.event_ids), (RunState::Queued, vec!["manual:d1".to_string()]));
        let (has_runs, record) = stored_event(store, "manual:d1");
        assert!(has_runs);
        assert_eq!(record.outcomes, again.runs);
        assert_eq!(record.event.received_at, at(0), "the first delivery's event is kept");
        // An event no automation wanted is stored too, without runs, and is a duplicate
        // the second time.
        assert!(store.ingest(&event("nobody", 6), Vec::new(), at(6)).unwrap().runs.is_empty());
        assert!(store.ingest(&event("nobody", 7), Vec::new(), at(7)).unwrap().duplicate_delivery);
        assert!(!stored_event(store, "manual:nobody").0);
    }

    #[test]
    fn threads_racing_one_delivery_make_one_run() {
        let fixture = Fixture::start();
        let racers = 8;
        let barrier = Arc::new(Barrier::new(racers));
        let outcomes: Vec<IngestOutcome> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..racers)
                .map(|_| {
                    let (store, barrier) = (&fixture.store, Arc::clone(&barrier));
                    scope.spawn(move || {
                        barrier.wait();
                        store.ingest(&event("raced", 0), vec![rendered(&Flow::default())], at(0)).expect("ingest")
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().expect("a racer")).collect()
        });
        assert_eq!(outcomes.iter().filter(|outcome| !outcome.duplicate_delivery).count(), 1, "{outcomes:#?}");
        assert!(outcomes.iter().all(|outcome| outcome.runs == outcomes[0].runs), "{outcomes:#?}");
        assert_eq!(count(&fixture.store, "SELECT count(*) FROM nightshift_runs"), 1);
    }

    #[test]
    fn two_instances_racing_fifty_duplicate_deliveries_make_one_run_per_delivery() {
        let fixture = Fixture::start();
        let instances = [Arc::clone(&fixture.store), fixture.another_instance()];
        let deliveries = 50;
        let per_instance = 2;
        let barrier = Arc::new(Barrier::new(instances.len() * per_instance));
        // Every thread delivers every id, each starting at another place in the list.
        let answers: Vec<(usize, IngestOutcome)> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for (number, store) in
                instances.iter().flat_map(|store| std::iter::repeat_n(store, per_instance)).enumerate()
            {
                let barrier = Arc::clone(&barrier);
                handles.push(scope.spawn(move || {
                    barrier.wait();
                    (0..deliveries)
                        .map(|n| (n + number * 13) % deliveries)
                        .map(|n| {
                            let new = vec![rendered(&Flow::default())];
                            (n, store.ingest(&event(&format!("e{n}"), 0), new, at(0)).expect("ingest"))
                        })
                        .collect::<Vec<_>>()
                }));
            }
            handles.into_iter().flat_map(|handle| handle.join().expect("a racer")).collect()
        });
        let mut runs = BTreeMap::new();
        for (n, outcome) in &answers {
            let run = outcome.runs[0].run;
            assert_eq!(*runs.entry(*n).or_insert(run), run, "every answer for e{n} names one run");
        }
        assert_eq!(runs.len(), deliveries);
        let firsts = answers.iter().filter(|(_, outcome)| !outcome.duplicate_delivery).count();
        assert_eq!(firsts, deliveries, "each delivery was admitted once");
        assert_eq!(count(&fixture.store, "SELECT count(*) FROM nightshift_runs"), deliveries as i64);
        let distinct: BTreeSet<RunId> = runs.values().copied().collect();
        assert_eq!(distinct.len(), deliveries);
    }

    #[test]
    fn repeat_events_coalesce_into_the_pending_run_and_are_skipped_once_it_started() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let keyed = |key: &str| Flow {
            dedupe_key: Some(key.into()),
            dedupe_window: Some(DurationSpec::from_secs(3600)),
            ..Flow::default()
        };
        let (first, created) = ingest(store, "a", &keyed("I1"), 0);
        assert_eq!(created, Disposition::Created);
        for (id, secs) in [("b", 10), ("c", 20)] {
            assert_eq!(ingest(store, id, &keyed("I1"), secs), (first, Disposition::Coalesced));
        }
        assert_eq!(stored(store, first).event_ids, ["manual:a", "manual:b", "manual:c"]);
        assert_eq!(stored_event(store, "manual:b").1.dedupe_keys, BTreeMap::from([("probe".into(), "I1".into())]));
        let (other, _) = ingest(store, "d", &keyed("I2"), 30);
        assert_ne!(other, first, "another key is another run");

        start(store, first, 40);
        let (skipped, disposition) = ingest(store, "e", &keyed("I1"), 50);
        let Disposition::Skipped { reason: SkipReason::Dedupe { key, duplicate_of } } = disposition else {
            panic!("a repeat of a started run is skipped: {disposition:?}")
        };
        assert_eq!((key.as_str(), duplicate_of), ("I1", first));
        assert_eq!(stored(store, skipped).state, RunState::Skipped);
        // Once the window has passed, the key starts a new run.
        let (later, disposition) = ingest(store, "f", &keyed("I1"), 3601);
        assert_eq!(disposition, Disposition::Created);
        assert_ne!(later, first);
    }

    /// Threads of two instances deliver, in each of `rounds` rounds, one event each at
    /// the same moment to one automation with `flow(round)`; the outcomes, per round.
    fn race(fixture: &Fixture, rounds: usize, flow: impl Fn(usize) -> Flow + Sync) -> Vec<Vec<(RunId, Disposition)>> {
        let instances = [Arc::clone(&fixture.store), fixture.another_instance()];
        let threads = 4;
        let barrier = Barrier::new(threads);
        let answers: Vec<Vec<(RunId, Disposition)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let (store, barrier, flow) = (&instances[thread % 2], &barrier, &flow);
                    scope.spawn(move || {
                        let deliver = |round| {
                            barrier.wait();
                            ingest(store, &format!("r{round}-t{thread}"), &flow(round), 0)
                        };
                        (0..rounds).map(deliver).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().expect("a racer")).collect()
        });
        (0..rounds).map(|round| answers.iter().map(|thread| thread[round].clone()).collect()).collect()
    }

    #[test]
    fn instances_racing_repeats_of_one_key_make_one_run_the_others_join() {
        let fixture = Fixture::start();
        let rounds = 20;
        let keyed = |round: usize| Flow {
            dedupe_key: Some(format!("I{round}")),
            dedupe_window: Some(DurationSpec::from_secs(3600)),
            ..Flow::default()
        };
        for answers in race(&fixture, rounds, keyed) {
            let created: Vec<RunId> = answers
                .iter()
                .filter(|(_, disposition)| *disposition == Disposition::Created)
                .map(|(run, _)| *run)
                .collect();
            assert_eq!(created.len(), 1, "{answers:?}");
            assert!(answers.iter().all(|(run, _)| *run == created[0]), "{answers:?}");
            assert_eq!(stored(&fixture.store, created[0]).event_ids.len(), answers.len());
        }
        assert_eq!(count(&fixture.store, "SELECT count(*) FROM nightshift_runs"), rounds as i64);
    }

    #[test]
    fn instances_racing_into_a_full_group_make_one_run_and_skip_the_others() {
        let fixture = Fixture::start();
        let rounds = 20;
        let grouped = |round: usize| Flow { concurrency_key: Some(format!("g{round}")), ..overlap(Overlap::Skip, 1) };
        for answers in race(&fixture, rounds, grouped) {
            let created: Vec<RunId> = answers
                .iter()
                .filter(|(_, disposition)| *disposition == Disposition::Created)
                .map(|(run, _)| *run)
                .collect();
            assert_eq!(created.len(), 1, "{answers:?}");
            let busy = Disposition::Skipped { reason: SkipReason::Overlap { limit: 1, busy: created.clone() } };
            assert_eq!(answers.iter().filter(|(_, disposition)| *disposition == busy).count(), answers.len() - 1);
        }
    }

    #[test]
    fn cooldown_records_events_inside_it_as_skipped() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let flow = Flow { cooldown: Some(DurationSpec::from_secs(600)), ..overlap(Overlap::Skip, 5) };
        let (first, _) = ingest(store, "a", &flow, 0);
        let (second, disposition) = ingest(store, "b", &flow, 599);
        let Disposition::Skipped { reason: SkipReason::Cooldown { last_run, until } } = disposition else {
            panic!("inside the cooldown: {disposition:?}")
        };
        assert_eq!((last_run, until), (first, at(600)));
        assert_eq!(stored(store, second).state, RunState::Skipped);
        let (third, disposition) = ingest(store, "c", &flow, 600);
        assert_eq!(disposition, Disposition::Created);
        let (_, disposition) = ingest(store, "d", &flow, 601);
        assert!(
            matches!(disposition, Disposition::Skipped { reason: SkipReason::Cooldown { last_run, .. } } if last_run == third),
            "the cooldown starts again from the newest run: {disposition:?}"
        );
    }

    #[test]
    fn overlap_skip_records_the_run_when_the_limit_is_reached() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let flow = overlap(Overlap::Skip, 2);
        let (a, _) = ingest(store, "a", &flow, 0);
        let (b, _) = ingest(store, "b", &flow, 1);
        let (c, disposition) = ingest(store, "c", &flow, 2);
        assert_eq!(disposition, Disposition::Skipped { reason: SkipReason::Overlap { limit: 2, busy: vec![a, b] } });
        assert_eq!(stored(store, c).state, RunState::Skipped);
        // Another concurrency key is another group, with room.
        let keyed = Flow { concurrency_key: Some("other".into()), ..flow.clone() };
        assert_eq!(ingest(store, "d", &keyed, 3).1, Disposition::Created);
        // A run that ended makes room.
        store
            .db
            .transaction(|tx| {
                let mut run = rows::load_run(tx, a, true)?.expect("stored");
                finish(&mut run, RunState::Succeeded, None, at(4));
                save_run(tx, &run)
            })
            .unwrap();
        assert_eq!(ingest(store, "e", &flow, 5).1, Disposition::Created);
    }

    #[test]
    fn overlap_queue_creates_every_run_whatever_is_busy() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let flow = overlap(Overlap::Queue, 1);
        let runs: Vec<(RunId, Disposition)> = (0..3).map(|n| ingest(store, &format!("q{n}"), &flow, n)).collect();
        assert!(runs.iter().all(|(_, disposition)| *disposition == Disposition::Created), "{runs:?}");
        assert!(runs.iter().all(|(run, _)| stored(store, *run).state == RunState::Queued));
    }

    #[test]
    fn overlap_cancel_previous_cancels_the_oldest_busy_runs() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let flow = overlap(Overlap::CancelPrevious, 1);
        let (first, _) = ingest(store, "a", &flow, 0);
        start(store, first, 1);
        let outcome = store.ingest(&event("b", 3), vec![rendered(&flow)], at(3)).unwrap();
        assert_eq!(outcome.cancelled, [first]);
        assert_eq!(outcome.runs[0].disposition, Disposition::Created);
        let cancelled = stored(store, first);
        assert_eq!(cancelled.state, RunState::Cancelled);
        assert_eq!(
            cancelled.reason.unwrap(),
            format!("superseded by {} (`overlap: cancel_previous`)", outcome.runs[0].run)
        );
    }

    #[test]
    fn a_parent_starts_running_with_its_first_children_and_its_start_message() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let mut parent = task();
        let role = crate::parallel::RoleAgent { agent: parent.agent.clone(), network: parent.network.clone() };
        parent.plan = Some(crate::parallel::Plan::Attempts(crate::parallel::AttemptsPlan {
            agents: vec![role.clone(), role],
            check: None,
            judge: None,
            on_no_winner: Default::default(),
        }));
        let token = crate::config::SecretRef::Env("SLACK_TOKEN".into());
        parent.notify = vec![crate::delivery::Target::Slack { channel: "C1".into(), thread_ts: None, token }];
        let new =
            NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Ok((parent, Flow::default())) };
        let outcome = store.ingest(&event("a", 0), vec![new], at(0)).unwrap();
        let id = outcome.runs[0].run;
        let run = stored(store, id);
        assert_eq!((run.state, run.lease, run.started_at), (RunState::Running, None, Some(at(0))));
        let starts =
            count(store, &format!("SELECT count(*) FROM nightshift_outbox WHERE run = {} AND kind = 'start'", id.0));
        assert_eq!(starts, 1, "the parent's start is told");
        let children = count(store, &format!("SELECT count(*) FROM nightshift_runs WHERE parent = {}", id.0));
        assert_eq!(children, 2, "both attempts are queued in the same commit");
    }

    #[test]
    fn a_rendering_error_is_recorded_as_a_failed_run() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let broken =
            NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Err("task.prompt: no".into()) };
        let outcome = store.ingest(&event("a", 0), vec![broken, rendered(&Flow::default())], at(0)).unwrap();
        let [failed, created] = <[RunOutcome; 2]>::try_from(outcome.runs).unwrap();
        assert_eq!(failed.disposition, Disposition::RenderFailed { error: "task.prompt: no".into() });
        assert_eq!(created.disposition, Disposition::Created, "the other automation's run is made");
        let run = stored(store, failed.run);
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(run.reason.as_deref(), Some("rendering failed: task.prompt: no"));
        assert_eq!((run.task, run.finished_at), (None, Some(at(0))));
    }

    #[test]
    fn a_run_that_tells_a_thread_becomes_its_newest_run() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let token = crate::config::SecretRef::Env("SLACK_TOKEN".into());
        let thread = crate::delivery::Target::Slack { channel: "C1".into(), thread_ts: Some("1.2".into()), token };
        let threaded = |id: &str, secs| {
            let mut task = task();
            task.notify = vec![thread.clone()];
            let new = NewRun {
                automation: "probe".into(),
                definition_hash: "h".into(),
                rendered: Ok((task, Flow::default())),
            };
            store.ingest(&event(id, secs), vec![new], at(secs)).unwrap().runs[0].run
        };
        let newest = |store: &PgStore| -> Vec<(String, i64)> {
            let rows = store.db.transaction(|tx| tx.query("SELECT thread, run FROM nightshift_threads", &[])).unwrap();
            rows.iter().map(|row| (row.get(0), row.get(1))).collect()
        };
        let first = threaded("a", 0);
        let key = crate::runs::followup::thread_keys(std::slice::from_ref(&thread)).remove(0);
        assert_eq!(newest(store), [(key.clone(), first.0 as i64)]);
        let second = threaded("b", 1);
        assert_eq!(newest(store), [(key, second.0 as i64)]);
    }

    fn misfire(secs: i64) -> SkipReason {
        SkipReason::Misfire { slot: at(secs), policy: "skip".into() }
    }

    #[test]
    fn skipped_slots_are_recorded_once_each_with_their_events() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        let slots = [(event("slot-1", 0), misfire(0)), (event("slot-2", 60), misfire(60))];
        let ids = store.record_skipped_slots("probe", "h", &slots, at(120)).unwrap();
        assert_eq!(ids.len(), 2);
        for (id, (slot, reason)) in ids.iter().zip(&slots) {
            let run = stored(store, *id);
            assert_eq!((run.state, run.skip.as_ref()), (RunState::Skipped, Some(reason)));
            assert_eq!((run.event_ids, run.task), (vec![slot.id.clone()], None));
            let (has_runs, record) = stored_event(store, &slot.id);
            assert!(has_runs);
            let skipped = Disposition::Skipped { reason: reason.clone() };
            assert_eq!(record.outcomes, [RunOutcome { automation: "probe".into(), run: *id, disposition: skipped }]);
        }
        // Slots stored before are left alone; a slot fired later is a duplicate delivery.
        let again = [slots[1].clone(), (event("slot-3", 120), misfire(120))];
        let more = store.record_skipped_slots("probe", "h", &again, at(130)).unwrap();
        assert_eq!(more.len(), 1);
        assert_eq!(stored(store, more[0]).event_ids, ["manual:slot-3"]);
        assert!(store.record_skipped_slots("probe", "h", &again, at(140)).unwrap().is_empty());
        let fired = store.ingest(&event("slot-1", 0), vec![rendered(&Flow::default())], at(150)).unwrap();
        assert!(fired.duplicate_delivery);
        assert_eq!(fired.runs[0].run, ids[0]);
        assert_eq!(count(store, "SELECT count(*) FROM nightshift_runs"), 3);
    }

    fn progress(slot: i64, skipped_total: u64) -> ScheduleState {
        ScheduleState { last_slot: at(slot), updated_at: at(slot), skipped_total, ..ScheduleState::default() }
    }

    #[test]
    fn cron_progress_never_moves_backwards() {
        let fixture = Fixture::start();
        let store = &fixture.store;
        assert_eq!(store.schedule("probe", "cron-0").unwrap(), None);
        store.set_schedule("probe", "cron-0", &progress(60, 1)).unwrap();
        store.set_schedule("probe", "cron-1", &progress(30, 0)).unwrap();
        // A late write of older progress changes nothing; newer progress replaces it.
        store.set_schedule("probe", "cron-0", &progress(0, 0)).unwrap();
        assert_eq!(store.schedule("probe", "cron-0").unwrap(), Some(progress(60, 1)));
        store.set_schedule("probe", "cron-0", &progress(120, 2)).unwrap();
        assert_eq!(store.schedule("probe", "cron-0").unwrap(), Some(progress(120, 2)));
        // In one call, a trigger named twice keeps its latest state; others are written.
        let (newer, older, other) = (progress(240, 3), progress(180, 9), progress(90, 0));
        store
            .set_schedules(&[("probe", "cron-0", &newer), ("probe", "cron-0", &older), ("probe", "cron-1", &other)])
            .unwrap();
        assert_eq!(store.schedule("probe", "cron-0").unwrap(), Some(newer));
        assert_eq!(store.schedule("probe", "cron-1").unwrap(), Some(other));
        assert_eq!(store.schedule("other", "cron-0").unwrap(), None, "progress is per automation");
        store.set_schedules(&[]).unwrap();
    }

    #[test]
    fn instances_writing_cron_progress_in_any_order_keep_the_latest() {
        let fixture = Fixture::start();
        let instances = [Arc::clone(&fixture.store), fixture.another_instance()];
        let slots = 40;
        std::thread::scope(|scope| {
            for (number, store) in instances.iter().enumerate() {
                scope.spawn(move || {
                    // One instance writes the slots in order, the other backwards.
                    for n in 0..slots {
                        let slot = if number == 0 { n } else { slots - 1 - n };
                        let triggers = ["cron-0", "cron-1"].map(|trigger| ("probe", trigger, progress(slot * 60, 0)));
                        let states: Vec<(&str, &str, &ScheduleState)> =
                            triggers.iter().map(|(a, t, s)| (*a, *t, s)).collect();
                        store.set_schedules(&states).expect("progress is stored");
                    }
                });
            }
        });
        let latest = progress((slots - 1) * 60, 0);
        for trigger in ["cron-0", "cron-1"] {
            assert_eq!(fixture.store.schedule("probe", trigger).unwrap().as_ref(), Some(&latest), "{trigger}");
        }
    }
}
