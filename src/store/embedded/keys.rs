//! Key layout of the one sled tree. Every record kind has a prefix; numbers are
//! big-endian so keys sort in creation order. Automation names cannot hold a NUL byte,
//! which separates them from what follows.

use crate::runs::RunId;

pub const FORMAT: &[u8] = b"meta/format";
pub const FORMAT_VERSION: &[u8] = b"nightshift-store/3";
/// Stores of these formats are read too (their run records carry their shape, and in
/// format 1 their agent command), and marked with `FORMAT_VERSION` at open: an older
/// nightshift would not know to look for the parts kept apart (`codec::encode_run`).
pub const OLDER_FORMATS: &[&[u8]] = &[b"nightshift-store/1", b"nightshift-store/2"];
pub const GENERATION: &[u8] = b"meta/generation";
/// The newest run id handed out, written when retention may delete the newest run, so
/// ids are never reused.
pub const LAST_RUN: &[u8] = b"meta/last_run";
/// How many finished runs (under `run/`) each state holds, kept with every change that
/// adds or deletes one, so counting needs no scan (`Store::queue_status`).
pub const FINISHED_COUNTS: &[u8] = b"meta/finished";

pub const RUN: &[u8] = b"run/";
/// Unfinished runs: the record lives here until the run finishes, then moves to `run/`.
pub const LIVE: &[u8] = b"live/";
pub const EVENT: &[u8] = b"ev/";
pub const EVENT_AGE: &[u8] = b"eage/";
pub const ACTIVITY: &[u8] = b"act/";
/// A run's log, in chunks numbered per run like activities.
pub const LOG: &[u8] = b"log/";
/// Finished runs of an automation (skipped ones included), for listing and retention.
pub const RUNS_OF: &[u8] = b"ra/";
pub const FINISHED_RUNS_OF: &[u8] = b"rf/";
pub const MEMORY: &[u8] = b"mem/";
pub const DEDUPE: &[u8] = b"dk/";
pub const LAST_CREATED: &[u8] = b"lc/";
pub const SCHEDULE: &[u8] = b"sched/";
/// Agent commands of runs, once per profile name and hash, and the shapes of runs, once
/// per hash under the empty profile name (`codec::encode_run`).
pub const AGENT: &[u8] = b"agent/";
/// Outbox messages: a run's start and end for each of its `notify` targets.
pub const OUTBOX: &[u8] = b"ob/";
/// The newest run of each thread a run told (`runs::followup` names them), so a reply
/// there finds the run it follows up.
pub const THREAD: &[u8] = b"th/";
/// A parent's children (docs/parallel.md): `pc/{parent}{child}`, written with the child.
pub const CHILDREN: &[u8] = b"pc/";

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub fn run(id: RunId) -> Vec<u8> {
    join(&[RUN, &id.0.to_be_bytes()])
}

pub fn live(id: RunId) -> Vec<u8> {
    join(&[LIVE, &id.0.to_be_bytes()])
}

/// The number that ends a key: the run id of `run/`, `live/` and `ra/` keys, the
/// sequence number of `act/` and `log/` keys.
pub fn number_at_end(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn event(id: &str) -> Vec<u8> {
    join(&[EVENT, id.as_bytes()])
}

pub fn event_age(received_millis: i64, id: &str) -> Vec<u8> {
    join(&[EVENT_AGE, &received_millis.to_be_bytes(), id.as_bytes()])
}

/// The event id in an `eage/` key.
pub fn event_of_age_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(EVENT_AGE.len() + 8..)?).ok()
}

pub fn activities_of(run: RunId) -> Vec<u8> {
    join(&[ACTIVITY, &run.0.to_be_bytes()])
}

pub fn activity(run: RunId, seq: u64) -> Vec<u8> {
    join(&[ACTIVITY, &run.0.to_be_bytes(), &seq.to_be_bytes()])
}

pub fn log_of(run: RunId) -> Vec<u8> {
    join(&[LOG, &run.0.to_be_bytes()])
}

pub fn log_chunk(run: RunId, seq: u64) -> Vec<u8> {
    join(&[LOG, &run.0.to_be_bytes(), &seq.to_be_bytes()])
}

pub fn runs_of(automation: &str) -> Vec<u8> {
    join(&[RUNS_OF, automation.as_bytes(), b"\0"])
}

pub fn run_of(automation: &str, id: RunId) -> Vec<u8> {
    join(&[&runs_of(automation), &id.0.to_be_bytes()])
}

/// Finished runs (not skipped ones) of an automation, for `history`.
pub fn finished_runs_of(automation: &str) -> Vec<u8> {
    join(&[FINISHED_RUNS_OF, automation.as_bytes(), b"\0"])
}

pub fn finished_run_of(automation: &str, id: RunId) -> Vec<u8> {
    join(&[&finished_runs_of(automation), &id.0.to_be_bytes()])
}

/// The automation named in an `ra/` key.
pub fn automation_of_runs_key(key: &[u8]) -> Option<&str> {
    let rest = key.get(RUNS_OF.len()..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

pub fn memory_of(automation: &str) -> Vec<u8> {
    join(&[MEMORY, automation.as_bytes(), b"\0"])
}

pub fn memory(automation: &str, key: &str) -> Vec<u8> {
    join(&[&memory_of(automation), key.as_bytes()])
}

pub fn dedupe(automation: &str, key: &str) -> Vec<u8> {
    join(&[DEDUPE, automation.as_bytes(), b"\0", key.as_bytes()])
}

pub fn last_created(group: &str) -> Vec<u8> {
    join(&[LAST_CREATED, group.as_bytes()])
}

pub fn schedule(automation: &str, trigger: &str) -> Vec<u8> {
    join(&[SCHEDULE, automation.as_bytes(), b"\0", trigger.as_bytes()])
}

/// The text after a prefix (e.g. the memory key after `mem/{automation}\0`).
pub fn suffix<'k>(key: &'k [u8], prefix: &[u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(prefix)?).ok()
}

pub fn agent(profile: &str, hash: &str) -> Vec<u8> {
    join(&[AGENT, profile.as_bytes(), b"\0", hash.as_bytes()])
}

pub fn thread(key: &str) -> Vec<u8> {
    join(&[THREAD, key.as_bytes()])
}

pub fn outbox_of(run: RunId) -> Vec<u8> {
    join(&[OUTBOX, &run.0.to_be_bytes()])
}

pub fn outbox(key: &crate::runs::outbox::Key) -> Vec<u8> {
    let kind = match key.kind {
        crate::delivery::Kind::Start => 0u8,
        crate::delivery::Kind::End => 1u8,
    };
    join(&[&outbox_of(key.run), &key.target.to_be_bytes(), &[kind]])
}

pub fn children_of(parent: RunId) -> Vec<u8> {
    join(&[CHILDREN, &parent.0.to_be_bytes()])
}

pub fn child(parent: RunId, child: RunId) -> Vec<u8> {
    join(&[CHILDREN, &parent.0.to_be_bytes(), &child.0.to_be_bytes()])
}
