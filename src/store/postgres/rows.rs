//! Records as rows: a run's JSON with the columns queries select by, events, and the
//! sequences ids and epochs come from. Every part of the PostgreSQL store writes runs
//! through `save_run`, so the columns always agree with the record.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::db::Tx;
use crate::runs::{Run, RunId};
use crate::store::{RunChange, StoreError};

/// The channel every committed run change is announced on (`listen.rs`).
pub const RUNS_CHANNEL: &str = "nightshift_runs";
/// The channel rung when outbox messages were written or settled.
pub const OUTBOX_CHANNEL: &str = "nightshift_outbox";

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialize")
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|cause| StoreError::Corrupt { what: what.to_string(), cause: cause.to_string() })
}

/// A run's row: the columns queries select by, and its record.
struct RunRow {
    id: i64,
    state: &'static str,
    finished: bool,
    group: String,
    repo: Option<String>,
    holds_worker: bool,
    parent: Option<i64>,
    lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    doc: Vec<u8>,
}

impl RunRow {
    fn of(run: &Run) -> RunRow {
        RunRow {
            id: run.id.0 as i64,
            state: run.state.as_str(),
            finished: run.state.is_finished(),
            group: run.group(),
            repo: run.task.as_ref().map(|task| task.repo.clone()),
            holds_worker: crate::runs::queue::holds_worker(run),
            parent: run.parent.map(|link| link.run.0 as i64),
            lease_expires_at: run.lease.as_ref().filter(|_| run.state.is_active()).map(|lease| lease.expires_at),
            doc: encode(run),
        }
    }
}

/// Announces `run`'s change to every instance, once the transaction commits.
fn announce(tx: &mut Tx<'_>, run: &Run) -> Result<(), StoreError> {
    let change =
        RunChange { id: run.id, state: run.state, automation: run.automation.clone(), updated_at: run.updated_at };
    tx.notify(RUNS_CHANNEL, &serde_json::to_string(&change).expect("a change serializes"))
}

/// Inserts `run` or replaces the stored one, with its columns, and announces the change
/// (delivered to listeners once the transaction commits).
pub fn save_run(tx: &mut Tx<'_>, run: &Run) -> Result<(), StoreError> {
    let row = RunRow::of(run);
    tx.execute(
        "INSERT INTO nightshift_runs (id, automation, state, finished, group_key, repo, holds_worker, parent, \
         finished_at, lease_expires_at, updated_at, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (id) DO UPDATE SET state = $3, finished = $4, group_key = $5, repo = $6, holds_worker = $7, \
         parent = $8, finished_at = $9, lease_expires_at = $10, updated_at = $11, doc = $12",
        &[
            &row.id,
            &run.automation,
            &row.state,
            &row.finished,
            &row.group,
            &row.repo,
            &row.holds_worker,
            &row.parent,
            &run.finished_at,
            &row.lease_expires_at,
            &run.updated_at,
            &row.doc,
        ],
    )?;
    announce(tx, run)
}

/// Inserts new runs (ids no row has) in one statement, and announces them.
pub fn insert_runs(tx: &mut Tx<'_>, runs: &[Run]) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let rows: Vec<RunRow> = runs.iter().map(RunRow::of).collect();
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let automations: Vec<&str> = runs.iter().map(|run| run.automation.as_str()).collect();
    let states: Vec<&str> = rows.iter().map(|row| row.state).collect();
    let finished: Vec<bool> = rows.iter().map(|row| row.finished).collect();
    let groups: Vec<&str> = rows.iter().map(|row| row.group.as_str()).collect();
    let repos: Vec<Option<&str>> = rows.iter().map(|row| row.repo.as_deref()).collect();
    let holds_worker: Vec<bool> = rows.iter().map(|row| row.holds_worker).collect();
    let parents: Vec<Option<i64>> = rows.iter().map(|row| row.parent).collect();
    let finished_at: Vec<Option<chrono::DateTime<chrono::Utc>>> = runs.iter().map(|run| run.finished_at).collect();
    let lease_expires_at: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        rows.iter().map(|row| row.lease_expires_at).collect();
    let updated_at: Vec<chrono::DateTime<chrono::Utc>> = runs.iter().map(|run| run.updated_at).collect();
    let docs: Vec<&[u8]> = rows.iter().map(|row| row.doc.as_slice()).collect();
    tx.execute(
        "INSERT INTO nightshift_runs (id, automation, state, finished, group_key, repo, holds_worker, parent, \
         finished_at, lease_expires_at, updated_at, doc) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::bool[], \
         $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::bytea[])",
        &[
            &ids,
            &automations,
            &states,
            &finished,
            &groups,
            &repos,
            &holds_worker,
            &parents,
            &finished_at,
            &lease_expires_at,
            &updated_at,
            &docs,
        ],
    )?;
    runs.iter().try_for_each(|run| announce(tx, run))
}

/// `count` new run ids, ascending.
pub fn next_run_ids(tx: &mut Tx<'_>, count: usize) -> Result<Vec<RunId>, StoreError> {
    let count = i32::try_from(count).unwrap_or(i32::MAX);
    let rows = tx.query("SELECT nextval('nightshift_run_ids') FROM generate_series(1, $1)", &[&count])?;
    let mut ids: Vec<RunId> = rows.iter().map(|row| RunId(row.get::<_, i64>(0) as u64)).collect();
    ids.sort();
    Ok(ids)
}

/// Run `id` as stored; `lock` takes its row until the transaction ends (`FOR UPDATE`),
/// which every change of a stored run does first.
pub fn load_run(tx: &mut Tx<'_>, id: RunId, lock: bool) -> Result<Option<Run>, StoreError> {
    let sql = if lock {
        "SELECT doc FROM nightshift_runs WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT doc FROM nightshift_runs WHERE id = $1"
    };
    let row = tx.query_opt(sql, &[&(id.0 as i64)])?;
    row.map(|row| decode_run(&row.get::<_, Vec<u8>>(0))).transpose()
}

pub fn decode_run(bytes: &[u8]) -> Result<Run, StoreError> {
    decode("a run", bytes)
}

/// The runs of rows whose first column is a run's `doc`.
pub fn runs_of(rows: &[tokio_postgres::Row]) -> Result<Vec<Run>, StoreError> {
    rows.iter().map(|row| decode_run(&row.get::<_, Vec<u8>>(0))).collect()
}

pub fn next_run_id(tx: &mut Tx<'_>) -> Result<RunId, StoreError> {
    let row = tx.query_one("SELECT nextval('nightshift_run_ids')", &[])?;
    Ok(RunId(row.get::<_, i64>(0) as u64))
}

/// Writes a stored run's change from `before` to `after`, with the outbox messages the
/// change of state creates (`runs::outbox::created`), as the embedded store's
/// `Changes::keep` does. The caller holds `before`'s row lock.
pub fn update_run(tx: &mut Tx<'_>, before: &Run, after: &Run) -> Result<(), StoreError> {
    let entries = crate::runs::outbox::created(before, after, after.updated_at);
    put_outbox(tx, &entries)?;
    save_run(tx, after)
}

/// Writes new or changed outbox messages and rings every instance's sender.
pub fn put_outbox(tx: &mut Tx<'_>, entries: &[crate::runs::outbox::Entry]) -> Result<(), StoreError> {
    for entry in entries {
        let key = &entry.key;
        let state = match &entry.state {
            crate::runs::outbox::EntryState::Pending => "pending",
            crate::runs::outbox::EntryState::InFlight => "in_flight",
            crate::runs::outbox::EntryState::Sent { .. } => "sent",
            crate::runs::outbox::EntryState::Failed { .. } => "failed",
        };
        tx.execute(
            "INSERT INTO nightshift_outbox (run, target, kind, state, next_at, doc) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (run, target, kind) DO UPDATE SET state = $4, next_at = $5, doc = $6",
            &[
                &(key.run.0 as i64),
                &(key.target as i32),
                &crate::runs::outbox::kind_name(key.kind),
                &state,
                &entry.next_at,
                &encode(entry),
            ],
        )?;
    }
    if !entries.is_empty() {
        tx.notify(OUTBOX_CHANNEL, "")?;
    }
    Ok(())
}

/// Appends an activity to `run`'s timeline (the caller holds the run's row lock, which
/// orders the sequence numbers) and returns its sequence number.
pub fn add_activity(
    tx: &mut Tx<'_>,
    run: RunId,
    kind: crate::runs::ActivityKind,
    text: String,
    data: serde_json::Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<u64, StoreError> {
    let row =
        tx.query_one("SELECT coalesce(max(seq) + 1, 0) FROM nightshift_activities WHERE run = $1", &[&(run.0 as i64)])?;
    let seq: i64 = row.get(0);
    let activity = crate::runs::Activity { seq: seq as u64, at, kind, text, data };
    add_activity_at(tx, run, &activity)?;
    Ok(seq as u64)
}

/// Writes `activity` under its own sequence number.
pub fn add_activity_at(tx: &mut Tx<'_>, run: RunId, activity: &crate::runs::Activity) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO nightshift_activities (run, seq, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&(run.0 as i64), &(activity.seq as i64), &encode(activity)],
    )
    .map(drop)
}
