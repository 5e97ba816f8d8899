//! Records as rows: a run's JSON with the columns queries select by, events, and the
//! sequences ids and epochs come from. Every part of the PostgreSQL store writes runs
//! through `save_run`, so the columns always agree with the record.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::db::Tx;
use crate::runs::{Epoch, Run, RunId};
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

/// Inserts `run` or replaces the stored one, with its columns, and announces the change
/// (delivered to listeners once the transaction commits).
pub fn save_run(tx: &mut Tx<'_>, run: &Run) -> Result<(), StoreError> {
    let id = run.id.0 as i64;
    let state = run.state.as_str();
    let finished = run.state.is_finished();
    let group = run.group();
    let repo = run.task.as_ref().map(|task| task.repo.clone());
    let holds_worker = crate::runs::queue::holds_worker(run);
    let parent = run.parent.map(|link| link.run.0 as i64);
    let lease_expires_at = run.lease.as_ref().filter(|_| run.state.is_active()).map(|lease| lease.expires_at);
    let doc = encode(run);
    tx.execute(
        "INSERT INTO nightshift_runs (id, automation, state, finished, group_key, repo, holds_worker, parent, \
         finished_at, lease_expires_at, updated_at, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (id) DO UPDATE SET state = $3, finished = $4, group_key = $5, repo = $6, holds_worker = $7, \
         parent = $8, finished_at = $9, lease_expires_at = $10, updated_at = $11, doc = $12",
        &[
            &id,
            &run.automation,
            &state,
            &finished,
            &group,
            &repo,
            &holds_worker,
            &parent,
            &run.finished_at,
            &lease_expires_at,
            &run.updated_at,
            &doc,
        ],
    )?;
    let change =
        RunChange { id: run.id, state: run.state, automation: run.automation.clone(), updated_at: run.updated_at };
    tx.notify(RUNS_CHANNEL, &serde_json::to_string(&change).expect("a change serializes"))
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

/// An epoch no claim has had, on any instance, ever.
pub fn next_epoch(tx: &mut Tx<'_>) -> Result<Epoch, StoreError> {
    let row = tx.query_one("SELECT nextval('nightshift_epochs')", &[])?;
    Ok(Epoch(row.get::<_, i64>(0) as u64))
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
