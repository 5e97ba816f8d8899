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
    let change = RunChange { id: run.id, state: run.state, automation: run.automation.clone(), updated_at: run.updated_at };
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
