//! Writes records exported from another store (`nightshift migrate-store`) into an empty
//! database, in batches of one transaction each, and moves the id and epoch sequences
//! past everything imported so nothing is handed out twice.

use super::PgStore;
use super::rows::{add_activity_at, encode, put_outbox, save_run};
use crate::store::{Record, StoreError};

/// Records written per transaction.
const BATCH: usize = 500;

/// What an import wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub runs: usize,
    pub events: usize,
    pub others: usize,
}

impl PgStore {
    /// Whether the database holds any run or event (an import goes only into an empty one).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.db.transaction(|tx| {
            let row = tx.query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM nightshift_runs) AND NOT EXISTS (SELECT 1 FROM nightshift_events)",
                &[],
            )?;
            Ok(row.get(0))
        })
    }

    /// Writes `records` (as `SledStore::export` gives them) and moves the sequences on.
    pub fn import(&self, records: impl IntoIterator<Item = Record>) -> Result<Imported, StoreError> {
        let mut imported = Imported::default();
        let mut batch = Vec::with_capacity(BATCH);
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            batch.clear();
            batch.extend(records.by_ref().take(BATCH));
            self.db.transaction(|tx| {
                for record in &batch {
                    write(tx, record)?;
                }
                Ok(())
            })?;
            for record in &batch {
                match record {
                    Record::Run(_) => imported.runs += 1,
                    Record::Event(_) => imported.events += 1,
                    _ => imported.others += 1,
                }
            }
        }
        self.db.transaction(|tx| {
            tx.execute(
                "SELECT setval('nightshift_run_ids', greatest((SELECT coalesce(max(id), 0) FROM nightshift_runs), 1))",
                &[],
            )?;
            tx.execute(
                "SELECT setval('nightshift_epochs', greatest((SELECT coalesce(max((convert_from(doc, 'UTF8')::jsonb->>'epoch')::bigint), 0) FROM nightshift_runs), 1))",
                &[],
            )?;
            Ok(())
        })?;
        Ok(imported)
    }
}

fn write(tx: &mut super::db::Tx<'_>, record: &Record) -> Result<(), StoreError> {
    match record {
        Record::Run(run) => save_run(tx, run),
        Record::Event(stored) => {
            let has_runs = !stored.outcomes.is_empty();
            tx.execute(
                "INSERT INTO nightshift_events (id, received_at, has_runs, doc) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&stored.event.id, &stored.event.received_at, &has_runs, &encode(stored)],
            )
            .map(drop)
        }
        Record::Activity(run, activity) => add_activity_at(tx, *run, activity),
        Record::Log(run, chunk) => tx
            .execute(
                "INSERT INTO nightshift_logs (run, seq, at, text) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&(run.0 as i64), &(chunk.seq as i64), &chunk.at, &chunk.text],
            )
            .map(drop),
        Record::Memory { automation, key, entry } => tx
            .execute(
                "INSERT INTO nightshift_memory (automation, key, expires_at, doc) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (automation, key) DO UPDATE SET expires_at = $3, doc = $4",
                &[automation, key, &entry.expires_at, &encode(entry)],
            )
            .map(drop),
        Record::Schedule { automation, trigger, state } => tx
            .execute(
                "INSERT INTO nightshift_schedules (automation, trigger, last_slot, doc) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (automation, trigger) DO UPDATE SET last_slot = $3, doc = $4",
                &[automation, trigger, &state.last_slot, &encode(state)],
            )
            .map(drop),
        Record::Outbox(entry) => put_outbox(tx, std::slice::from_ref(entry)),
        Record::Thread { thread, run } => tx
            .execute(
                "INSERT INTO nightshift_threads (thread, run) VALUES ($1, $2) ON CONFLICT (thread) DO UPDATE SET run = $2",
                &[thread, &(run.0 as i64)],
            )
            .map(drop),
        Record::Dedupe { automation, key, run, expires_at } => tx
            .execute(
                "INSERT INTO nightshift_dedupe (automation, key, run, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (automation, key) DO UPDATE SET run = $3, expires_at = $4",
                &[automation, key, &(run.0 as i64), expires_at],
            )
            .map(drop),
        Record::Cooldown { group, run, at, until } => tx
            .execute(
                "INSERT INTO nightshift_cooldowns (group_key, run, at, until) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (group_key) DO UPDATE SET run = $2, at = $3, until = $4",
                &[group, &(run.0 as i64), at, until],
            )
            .map(drop),
    }
}
