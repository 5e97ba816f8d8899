//! Reads every record of an embedded store, for `nightshift migrate-store`: events,
//! runs (finished and unfinished), timelines, logs, memory, schedules, outbox messages,
//! threads, dedupe marks and cooldowns. The store must not be in use by a server.

use super::codec::{decode, decode_event};
use super::live::{DedupeMark, LastCreated};
use super::{SledStore, keys};
use crate::runs::RunId;
use crate::store::{Record, StoreError};

impl SledStore {
    /// Hands every record to `sink`, runs before what hangs off them.
    pub fn export(&self, sink: &mut dyn FnMut(Record) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.settle()?;
        let scan = |prefix: &[u8]| self.db.scan_prefix(prefix).map(|item| item.map_err(super::io));
        for prefix in [keys::RUN, keys::LIVE] {
            for item in scan(prefix) {
                let (key, value) = item?;
                sink(Record::Run(Box::new(self.decode_run(&key, &value)?)))?;
            }
        }
        for item in scan(keys::EVENT) {
            let (key, value) = item?;
            sink(Record::Event(decode_event(&key, &value)?))?;
        }
        for item in scan(keys::ACTIVITY) {
            let (key, value) = item?;
            let run = run_after(&key, keys::ACTIVITY)?;
            sink(Record::Activity(run, decode(&key, &value)?))?;
        }
        for item in scan(keys::LOG) {
            let (key, value) = item?;
            let run = run_after(&key, keys::LOG)?;
            sink(Record::Log(run, decode(&key, &value)?))?;
        }
        for item in scan(keys::MEMORY) {
            let (key, value) = item?;
            let (automation, name) = two_names(&key, keys::MEMORY)?;
            sink(Record::Memory { automation, key: name, entry: decode(&key, &value)? })?;
        }
        for item in scan(keys::SCHEDULE) {
            let (key, value) = item?;
            let (automation, trigger) = two_names(&key, keys::SCHEDULE)?;
            sink(Record::Schedule { automation, trigger, state: decode(&key, &value)? })?;
        }
        for item in scan(keys::OUTBOX) {
            let (key, value) = item?;
            sink(Record::Outbox(decode(&key, &value)?))?;
        }
        for item in scan(keys::THREAD) {
            let (key, value) = item?;
            let thread = keys::suffix(&key, keys::THREAD).ok_or_else(|| damaged(&key, "not a thread key"))?.to_string();
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| damaged(&key, "not a run id"))?;
            sink(Record::Thread { thread, run: RunId(u64::from_be_bytes(bytes)) })?;
        }
        for item in scan(keys::DEDUPE) {
            let (key, value) = item?;
            let (automation, name) = two_names(&key, keys::DEDUPE)?;
            let mark: DedupeMark = decode(&key, &value)?;
            sink(Record::Dedupe { automation, key: name, run: mark.run, expires_at: mark.expires_at })?;
        }
        for item in scan(keys::LAST_CREATED) {
            let (key, value) = item?;
            let group = keys::suffix(&key, keys::LAST_CREATED).ok_or_else(|| damaged(&key, "not a group key"))?;
            let last: LastCreated = decode(&key, &value)?;
            sink(Record::Cooldown { group: group.to_string(), run: last.run, at: last.at, until: last.until })?;
        }
        Ok(())
    }
}

/// The run id right after `prefix` (`act/{run}{seq}`, `log/{run}{seq}`).
fn run_after(key: &[u8], prefix: &[u8]) -> Result<RunId, StoreError> {
    let rest = key.strip_prefix(prefix).ok_or_else(|| damaged(key, "a prefix"))?;
    let bytes: [u8; 8] = rest.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| damaged(key, "a run id"))?;
    Ok(RunId(u64::from_be_bytes(bytes)))
}

/// `{prefix}{first}\0{second}`.
fn two_names(key: &[u8], prefix: &[u8]) -> Result<(String, String), StoreError> {
    let rest = keys::suffix(key, prefix).ok_or_else(|| damaged(key, "not text"))?;
    let (first, second) = rest.split_once('\0').ok_or_else(|| damaged(key, "two names"))?;
    Ok((first.to_string(), second.to_string()))
}

fn damaged(key: &[u8], what: &str) -> StoreError {
    StoreError::Corrupt { what: format!("key {}", String::from_utf8_lossy(key)), cause: format!("expected {what}") }
}
