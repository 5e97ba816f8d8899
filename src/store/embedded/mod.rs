//! `SledStore`: the embedded store, on sled. One sled tree holds every record (see `keys`);
//! one mutex orders the operations; group commit makes each operation durable and
//! atomic as one write-ahead log frame, with one sync per batch of concurrent callers,
//! and sled is flushed only when a log segment is checkpointed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

mod codec;
mod export;
mod group_commit;
mod keys;
mod live;
mod outbox;
mod retention;
mod seen;
mod wal;
mod watermark;

use super::{
    Claim, Disposition, Durability, IngestOutcome, LogChunk, NewRun, OutboxDue, OutboxEntry, OutboxKey, PendingWrite,
    QueueStatus, RetentionReport, RunFilter, RunOutcome, ScheduleState, Store, StoreError, StoredEvent, StoredEventRef,
    fresh_run,
};
use crate::config::Retention;
use crate::delivery::{Attempt, Outcome};
use crate::event::Event;
use crate::parallel::conduct;
use crate::runs::clock::later;
use crate::runs::flow::{Decision, decide};
use crate::runs::retry::{backoff, may_retry};
use crate::runs::{
    Activity, ActivityKind, Completion, Epoch, Lease, MemoryEntry, MemoryWrite, NewActivity, Run, RunId, RunState,
    SkipReason,
};
use crate::task::Flow;
use codec::{decode, encode};
use group_commit::{GroupCommit, Sink, Stage};
use live::{DedupeMark, LastCreated, Live, LiveRun};
use seen::SeenEvents;
use wal::Wal;
use watermark::Watermark;

/// Memory sled may use for its page cache. Ingest writes new keys, which a bigger cache
/// only holds longer: at 256 MiB the kernel spent a fifth of the CPU faulting in fresh
/// pages while the cache grew, and ingest was slower.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How often the filter builder looks whether the filter of stored events is full.
const SEEN_CHECK_EVERY: Duration = Duration::from_secs(5);
/// After a failed build, how long deliveries read sled before the next try.
const SEEN_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The store. Its committer threads log and apply queued changes (group commit);
/// dropping the store commits what is left, checkpoints and stops them.
pub struct SledStore {
    inner: Arc<Inner>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// Builds the filter of stored event ids (`seen.rs`) at open and when it fills up.
    seen_builder: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for SledStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// What the store's callers and its committer thread share.
pub struct Inner {
    dir: PathBuf,
    db: sled::Db,
    state: Mutex<State>,
    commit: GroupCommit,
    /// Only the logger thread appends; the lock is never contended.
    wal: Mutex<Wal>,
    /// Wakes the filter builder when the store stops.
    seen_builder_wake: Condvar,
    builder_stop: AtomicBool,
    /// Every agent command stored (`codec::encode_run`); taken after the state's lock,
    /// never before it.
    agents: RwLock<codec::Agents>,
    /// Rung once a change that wrote outbox messages is queued (`Store::outbox_written`).
    outbox_written: Arc<tokio::sync::Notify>,
    /// Told how long each log append and sync took (`Store::observe_commits`).
    commit_observer: std::sync::OnceLock<Arc<dyn super::CommitObserver>>,
    /// Told of every run written, once its change is queued (`Store::run_changes`).
    run_changes: tokio::sync::broadcast::Sender<crate::store::RunChange>,
}

/// What the store's lock guards: the index of unfinished runs, and changes queued for
/// the next group commit.
#[derive(Default)]
struct State {
    live: Live,
    queued: Queued,
    seen: SeenEvents,
    /// Set once `open` has checked and loaded everything: only then may dropping the
    /// store record a watermark (a failed open must not overwrite the good one).
    opened: bool,
}

/// Changes decided but not yet applied to sled.
#[derive(Default)]
struct Queued {
    batch: Vec<(sled::IVec, Option<sled::IVec>)>,
    /// Someone who queued part of `batch` needs it on disk, not only applied.
    durable: bool,
    /// The same changes by key, with the ticket that made them, so reads under the lock
    /// see them before sled does. Ordered, so a prefix can be read too.
    overlay: BTreeMap<sled::IVec, (u64, Option<sled::IVec>)>,
    /// Every key written, in ticket order: what to drop from the overlay once applied.
    written: VecDeque<(u64, sled::IVec)>,
    /// The newest ticket handed out.
    issued: u64,
}

impl std::ops::Deref for State {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.live
    }
}

impl std::ops::DerefMut for State {
    fn deref_mut(&mut self) -> &mut Live {
        &mut self.live
    }
}

/// Changes on their way through the write-ahead log into sled.
pub struct Batch {
    writes: Vec<(sled::IVec, Option<sled::IVec>)>,
    /// Logging this batch ended that log segment: once everything before this batch is
    /// in sled and flushed, the segment may go.
    checkpoint: Option<u64>,
}

impl Sink for Inner {
    type Batch = Batch;

    fn take(&self) -> (u64, Batch, bool) {
        let mut state = self.lock();
        let writes = std::mem::take(&mut state.queued.batch);
        let durable = std::mem::take(&mut state.queued.durable);
        (state.queued.issued, Batch { writes, checkpoint: None }, durable)
    }

    fn log(&self, batch: &mut Batch, sync: bool) -> Result<(), String> {
        let began = std::time::Instant::now();
        let writes = batch.writes.iter().map(|(key, value)| (key.as_ref(), value.as_deref()));
        let appended = self.wal.lock().unwrap_or_else(PoisonError::into_inner).append(writes, sync);
        batch.checkpoint = appended.map_err(|e| e.to_string())?;
        if let Some(observer) = self.commit_observer.get() {
            observer.committed(began.elapsed(), sync);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), String> {
        let began = std::time::Instant::now();
        self.wal.lock().unwrap_or_else(PoisonError::into_inner).sync().map_err(|e| e.to_string())?;
        if let Some(observer) = self.commit_observer.get() {
            observer.committed(began.elapsed(), true);
        }
        Ok(())
    }

    /// Plain inserts, not sled batches: a sled batch costs two log buffer writes of its
    /// own, and atomicity in a crash comes from the write-ahead log. Readers under the
    /// store's lock see the whole batch through the overlay until it is applied.
    fn apply(&self, batches: Vec<Batch>) -> Result<(), String> {
        for batch in batches {
            if let Some(ended) = batch.checkpoint {
                self.checkpoint(ended)?;
            }
            write_all(&self.db, batch.writes).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn applied(&self, ticket: u64) {
        let mut state = self.lock();
        let queued = &mut state.queued;
        while queued.written.front().is_some_and(|(written_by, _)| *written_by <= ticket) {
            let Some((_, key)) = queued.written.pop_front() else { break };
            // A later write to the same key stays until it is applied too.
            if queued.overlay.get(&key).is_some_and(|(newest, _)| *newest <= ticket) {
                queued.overlay.remove(&key);
            }
        }
    }
}

impl Inner {
    /// Flushes sled, which then holds every write of log segments up to `ended`, and
    /// removes those segments.
    fn checkpoint(&self, ended: u64) -> Result<(), String> {
        self.db.flush().map_err(|e| format!("flushing the database failed: {e}"))?;
        wal::retire_through(&wal_dir(&self.dir), ended).map_err(|e| format!("retiring old log segments failed: {e}"))
    }
}

fn write_all(db: &sled::Db, writes: Vec<(sled::IVec, Option<sled::IVec>)>) -> sled::Result<()> {
    for (key, value) in writes {
        match value {
            Some(value) => db.insert(key, value)?,
            None => db.remove(key)?,
        };
    }
    Ok(())
}

/// Directories this process has opened a store in. Sled lets go of its file lock on a
/// background thread a moment after the store is dropped, so reopening one of these
/// waits briefly for it; any other lock belongs to another process and is reported at
/// once.
static OPENED_HERE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
/// How long a reopen in this process waits for sled to let go of the lock.
const OWN_LOCK_RELEASE: Duration = Duration::from_secs(2);

fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + OWN_LOCK_RELEASE;
    let opened_here = || OPENED_HERE.lock().unwrap_or_else(PoisonError::into_inner).contains(dir);
    loop {
        match try_open_sled(dir) {
            Err(StoreError::Locked { .. }) if opened_here() && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(db) => {
                OPENED_HERE.lock().unwrap_or_else(PoisonError::into_inner).insert(dir.to_path_buf());
                return Ok(db);
            }
            failed => return failed,
        }
    }
}

fn try_open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let open_error = |cause: String| StoreError::Open { dir: dir.to_path_buf(), cause };
    let config = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(None)
        .use_compression(compresses(dir))
        .compression_factor(COMPRESSION_LEVEL);
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| config.open())).map_err(|panic| {
        let what =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        StoreError::Corrupt { what: format!("the files in {}", dir.display()), cause: what.unwrap_or_default() }
    })?;
    opened.map_err(|error| match error {
        sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
            StoreError::Locked { dir: dir.to_path_buf() }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Corrupt {
            what: format!("the files in {}", dir.display()),
            cause: format!("{error}; move the directory away to start afresh"),
        },
        other => open_error(other.to_string()),
    })
}

/// The zstd level sled compresses a compressed store's pages with.
const COMPRESSION_LEVEL: i32 = 1;

/// Whether sled compresses this store's pages: only where it already did (sled records
/// the choice in `db/conf` and will not change it). New stores do not: measured with
/// `store_load ingest 64 5 rules`, zstd (level 1 or 3) halved durable ingest (34,172 to
/// 16,829 events/s) and stalled deliveries for up to 0.6 s while pages were written.
fn compresses(dir: &Path) -> bool {
    // Text lines, then a checksum that is not text.
    match std::fs::read(dir.join("db").join("conf")) {
        Ok(conf) => conf.split(|b| *b == b'\n').any(|line| line == b"use_compression: true"),
        Err(_) => false,
    }
}

fn wal_dir(store: &Path) -> PathBuf {
    store.join("wal")
}

/// Replays what the write-ahead log holds into sled, flushes, and retires the segments
/// replayed; returns the newest segment number.
fn recover(db: &sled::Db, dir: &Path) -> Result<u64, StoreError> {
    let failed = |cause: String| StoreError::Open { dir: dir.to_path_buf(), cause };
    let replayed = wal::replay(&wal_dir(dir), |writes| {
        let writes = writes.into_iter().map(|(key, value)| (key.into(), value.map(sled::IVec::from))).collect();
        write_all(db, writes).map_err(|e| format!("replaying the write-ahead log into the database failed: {e}"))
    })
    .map_err(|error| match error {
        wal::ReplayError::Damaged { file, cause } => StoreError::Corrupt {
            what: file.display().to_string(),
            cause: format!("{cause}; restore a backup, or move the store directory away to start afresh"),
        },
        wal::ReplayError::Failed(cause) => failed(cause),
    })?;
    db.flush().map_err(|e| failed(format!("flushing the replayed write-ahead log failed: {e}")))?;
    wal::retire_through(&wal_dir(dir), replayed)
        .map_err(|e| failed(format!("retiring replayed write-ahead log segments failed: {e}")))?;
    Ok(replayed)
}

/// A queued write of the embedded store, on its way to disk.
struct QueuedWrite {
    inner: Arc<Inner>,
    ticket: u64,
}

impl PendingWrite for QueuedWrite {
    fn wait(&self) -> Result<(), StoreError> {
        self.inner.wait(self.ticket, Stage::Durable)
    }

    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), StoreError>> {
        self.inner.commit.poll(self.ticket, Stage::Durable, cx).map_err(StoreError::Io)
    }
}

impl SledStore {
    fn durability(&self, ticket: u64) -> Durability {
        Durability::pending(Box::new(QueuedWrite { inner: self.inner.clone(), ticket }))
    }
}

impl Drop for SledStore {
    /// Commits what is queued and records how far the store got, so a damaged log is
    /// noticed at the next open.
    fn drop(&mut self) {
        // Set under the lock: the builder looks at the flag under it before it waits.
        let state = self.lock();
        self.builder_stop.store(true, Ordering::Relaxed);
        drop(state);
        self.seen_builder_wake.notify_all();
        if let Some(builder) = self.seen_builder.take() {
            let _stopped = builder.join();
        }
        let state = self.lock();
        if !state.opened {
            drop(state);
            self.commit.stop();
            if let Some(committer) = self.committer.take() {
                let _finished = committer.join();
            }
            return;
        }
        let (ticket, mark) =
            (state.queued.issued, Watermark { generation: state.epoch_floor >> 32, last_run: state.next_run });
        drop(state);
        if let Err(error) = self.wait(ticket, Stage::Durable).and_then(|()| mark.write(&self.dir)) {
            tracing::warn!(dir = %self.dir.display(), "could not record the store's watermark: {error}");
        }
        self.commit.stop();
        if let Some(committer) = self.committer.take()
            && committer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "the store's committer thread panicked");
            return;
        }
        // A clean stop leaves everything in sled and no log to replay. After a failure,
        // sled may hold part of a commit: the log stays, for the next open to replay.
        if !self.commit.is_clean() {
            return;
        }
        let current = self.wal.lock().unwrap_or_else(PoisonError::into_inner).current();
        let checkpointed = self.checkpoint(current).and_then(|()| {
            wal::remove_spares(&wal_dir(&self.dir)).map_err(|e| format!("removing spare log segments failed: {e}"))
        });
        if let Err(error) = checkpointed {
            tracing::warn!(dir = %self.dir.display(), "could not checkpoint the store: {error}");
        }
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn io(error: sled::Error) -> StoreError {
    StoreError::Io(error.to_string())
}

/// The writes of one operation, applied together or not at all.
#[derive(Default)]
struct Changes {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Agent commands of the runs written, stored once each (`queue`).
    agents: Vec<codec::StoredAgent>,
    /// Outbox messages were written: the sender is rung once they are queued.
    outbox: bool,
    /// The runs written, for `Store::run_changes`.
    runs: Vec<crate::store::RunChange>,
    /// Finished runs added (or, negative, deleted) per state (`live::state_slot`).
    finished: [i64; RunState::ALL.len()],
    /// Runs that are part of a parent, as written by this operation: the parent's
    /// decisions read them before they reach the overlay.
    children: BTreeMap<RunId, Run>,
}

impl Changes {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((key, Some(value)));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    /// Writes a changed run: an unfinished one under `live/`, a finished one moves to
    /// `run/` with its index entries.
    fn put_run(&mut self, run: &Run) {
        self.changed(run);
        self.note_child(run);
        if run.state.is_finished() {
            // Readers outside the lock look under `run/` first: they never miss the run.
            self.put_finished(run);
            self.count_finished(run.state, 1);
            self.delete(keys::live(run.id));
        } else {
            let record = self.encode_run(run);
            self.put(keys::live(run.id), record);
        }
    }

    /// Keeps the record of a run that is part of a parent, for its parent's decisions.
    fn note_child(&mut self, run: &Run) {
        if run.parent.is_some_and(|link| link.role.is_part_of_parent()) {
            self.children.insert(run.id, run.clone());
        }
    }

    fn changed(&mut self, run: &Run) {
        self.runs.push(crate::store::RunChange {
            id: run.id,
            state: run.state,
            automation: run.automation.clone(),
            updated_at: run.updated_at,
        });
    }

    fn put_finished(&mut self, run: &Run) {
        let record = self.encode_run(run);
        self.put(keys::run(run.id), record);
        self.put(keys::run_of(&run.automation, run.id), Vec::new());
        if run.state != RunState::Skipped {
            self.put(keys::finished_run_of(&run.automation, run.id), Vec::new());
        }
    }

    /// Counts a finished run stored (`by` 1) or deleted (-1).
    fn count_finished(&mut self, state: RunState, by: i64) {
        self.finished[live::state_slot(state)] += by;
    }

    /// Writes a run created just now: one key for a queued run, so ingest stays cheap.
    fn new_run(&mut self, run: &Run) {
        self.changed(run);
        self.note_child(run);
        // Follow-ups are indexed too, so a run lists the runs that followed it up.
        if let Some(link) = run.parent {
            self.put(keys::child(link.run, run.id), Vec::new());
        }
        if run.state.is_finished() {
            self.put_finished(run);
            self.count_finished(run.state, 1);
        } else {
            let record = self.encode_run(run);
            self.put(keys::live(run.id), record)
        }
    }

    /// A run's record; its agent command goes to `agents`.
    fn encode_run(&mut self, run: &Run) -> Vec<u8> {
        let (record, shared) = codec::encode_run(run);
        self.agents.extend(shared);
        record
    }

    /// Writes a changed live run and puts it back into the index, with the outbox
    /// messages its change of state creates.
    fn keep(&mut self, live: &mut Live, updated: LiveRun) {
        if let Some(before) = live.get(updated.run.id) {
            let entries = crate::runs::outbox::created(&before.run, &updated.run, updated.run.updated_at);
            self.put_outbox(live, entries);
        }
        self.put_run(&updated.run);
        live.put(updated);
    }

    /// Writes new or changed outbox messages; the unsettled ones go into the index.
    fn put_outbox(&mut self, live: &mut Live, entries: Vec<crate::runs::outbox::Entry>) {
        for entry in entries {
            self.outbox = true;
            self.put(keys::outbox(&entry.key), encode(&entry));
            if entry.state.is_settled() {
                live.outbox.remove(&entry.key);
            } else {
                live.outbox.insert(entry.key, (entry, false));
            }
        }
    }

    /// Makes `run` the newest run of `thread` (`Store::thread_run`).
    fn thread(&mut self, thread: &str, run: RunId) {
        self.put(keys::thread(thread), run.0.to_be_bytes().to_vec());
    }

    /// Appends an activity the engine itself records (lease expiry, retries, cancels).
    fn activity(&mut self, live: &mut LiveRun, kind: ActivityKind, text: String, at: DateTime<Utc>) {
        let seq = live.next_activity;
        live.next_activity += 1;
        let activity = Activity { seq, at, kind, text, data: serde_json::Value::Null };
        self.put(keys::activity(live.run.id, seq), encode(&activity));
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. A damaged, foreign or locked store is an
    /// error that says which, never a panic.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_log_segment(dir, wal::SEGMENT_BYTES)
    }

    /// `open`, with write-ahead log segments rotated (and sled checkpointed) every
    /// `segment_bytes`. Small segments let tests reach checkpoints quickly.
    #[doc(hidden)]
    pub fn open_with_log_segment(dir: &Path, segment_bytes: u64) -> Result<SledStore, StoreError> {
        let open_error = |cause: String| StoreError::Open { dir: dir.to_path_buf(), cause };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = open_sled(dir)?;
        let newest_segment = recover(&db, dir)?;
        let wal = Wal::create(&wal_dir(dir), newest_segment, segment_bytes)
            .map_err(|e| open_error(format!("cannot start a write-ahead log segment: {e}")))?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            db,
            state: Mutex::new(State::default()),
            commit: GroupCommit::default(),
            wal: Mutex::new(wal),
            seen_builder_wake: Condvar::new(),
            builder_stop: AtomicBool::new(false),
            agents: RwLock::new(codec::Agents::new()),
            outbox_written: Arc::new(tokio::sync::Notify::new()),
            commit_observer: std::sync::OnceLock::new(),
            run_changes: tokio::sync::broadcast::channel(crate::store::RUN_CHANGES_BUFFER).0,
        });
        let committer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("nightshift-commit".into())
                .spawn(move || inner.commit.run(inner.as_ref()))
                .map_err(|e| open_error(format!("cannot start the committer thread: {e}")))?
        };
        let mut store = SledStore { inner, committer: Some(committer), seen_builder: None };
        store.check_format()?;
        store.load_agents()?;
        let live = store.load_live()?;
        let generation = live.epoch_floor >> 32;
        if let Some(mark) = Watermark::read(dir)? {
            mark.check(dir, Watermark { generation: generation - 1, last_run: live.next_run })?;
        }
        store.db.insert(keys::GENERATION, &generation.to_be_bytes()).map_err(io)?;
        store.db.flush().map_err(io)?;
        Watermark { generation, last_run: live.next_run }.write(dir)?;
        let mut state = store.lock();
        state.live = live;
        state.opened = true;
        drop(state);
        let inner = store.inner.clone();
        store.seen_builder = std::thread::Builder::new()
            .name("nightshift-seen".into())
            .spawn(move || inner.run_seen_builder())
            .map_err(|e| tracing::warn!("cannot start the event filter's builder, every delivery reads sled: {e}"))
            .ok();
        Ok(store)
    }

    /// Waits up to `timeout` for the filter of stored event ids to be in use; true once
    /// it is. Until then every delivery reads sled to rule out a duplicate.
    #[doc(hidden)]
    pub fn wait_for_event_filter(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.lock().seen.is_ready() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Log appends, log syncs and applier passes so far: concurrent writers share them.
    pub fn commits(&self) -> (u64, u64, u64) {
        self.commit.commits()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, for an operation that changes something: refused while the log cannot
    /// be written (a full disk), before anything is decided, so nothing queues up behind
    /// the batch the logger is retrying and nothing half-decided stays in memory.
    fn lock_for_change(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        match self.commit.trouble() {
            Some(why) => Err(StoreError::Io(why)),
            None => Ok(self.lock()),
        }
    }

    /// The filter builder's thread: builds at open, then whenever the filter fills up,
    /// until the store stops.
    fn run_seen_builder(&self) {
        let mut state = self.lock();
        loop {
            if self.builder_stop.load(Ordering::Relaxed) {
                return;
            }
            if !state.seen.build_due() {
                state = self
                    .seen_builder_wake
                    .wait_timeout(state, SEEN_CHECK_EVERY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            state.seen.build_started();
            drop(state);
            // Ids queued before the build started reach sled before the scan reads it;
            // later ones are kept for the filter by `queue`.
            let built = self
                .settle()
                .map_err(|e| e.to_string())
                .and_then(|()| seen::build(&self.db, &self.builder_stop).map_err(|e| e.to_string()));
            let built = built.unwrap_or_else(|error| {
                tracing::warn!(dir = %self.dir.display(), "cannot build the filter of stored events, deliveries read sled: {error}");
                None
            });
            let failed = built.is_none();
            state = self.lock();
            state.seen.build_finished(built);
            if failed && !self.builder_stop.load(Ordering::Relaxed) {
                state = self
                    .seen_builder_wake
                    .wait_timeout(state, SEEN_RETRY_AFTER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self.db.get(keys::FORMAT).map_err(io)? {
            Some(found) if found.as_ref() == keys::FORMAT_VERSION => Ok(()),
            Some(found) if keys::OLDER_FORMATS.contains(&found.as_ref()) => {
                self.db.insert(keys::FORMAT, keys::FORMAT_VERSION).map_err(io)?;
                Ok(())
            }
            Some(found) => Err(StoreError::Corrupt {
                what: format!("{}", self.dir.display()),
                cause: format!(
                    "store format `{}`, this nightshift reads `{}`",
                    String::from_utf8_lossy(&found),
                    String::from_utf8_lossy(keys::FORMAT_VERSION)
                ),
            }),
            None if self.db.is_empty() => {
                self.db.insert(keys::FORMAT, keys::FORMAT_VERSION).map_err(io)?;
                Ok(())
            }
            None => Err(StoreError::Corrupt {
                what: format!("{}", self.dir.display()),
                cause: "it holds data but no nightshift format marker: not a nightshift store".into(),
            }),
        }
    }

    /// Rebuilds the index of unfinished runs, dedupe marks and cooldowns, and starts a
    /// new epoch generation so epochs handed out before a crash are never reused.
    fn load_live(&self) -> Result<Live, StoreError> {
        let mut live = Live::default();
        let generation = match self.db.get(keys::GENERATION).map_err(io)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "meta/generation".into(),
                cause: "not an 8-byte number".into(),
            })?),
            None => 0,
        } + 1;
        // Recorded by `open` once the watermark check has passed.
        live.epoch_floor = generation << 32;

        if let Some(bytes) = self.db.get(keys::LAST_RUN).map_err(io)? {
            live.next_run = decode(keys::LAST_RUN, &bytes)?;
        }
        for prefix in [keys::RUN, keys::LIVE] {
            if let Some(entry) = self.db.scan_prefix(prefix).next_back() {
                let (key, _) = entry.map_err(io)?;
                live.next_run = live.next_run.max(keys::number_at_end(&key).unwrap_or(0));
            }
        }
        live.finished = self.load_finished_counts()?;
        for entry in self.db.scan_prefix(keys::LIVE) {
            let (key, value) = entry.map_err(io)?;
            let run = self.decode_run(&key, &value)?;
            let next_activity = self.next_seq(&keys::activities_of(run.id))?;
            let next_log = self.next_seq(&keys::log_of(run.id))?;
            live.put(LiveRun { run, next_activity, next_log });
        }
        for entry in self.db.scan_prefix(keys::DEDUPE) {
            let (key, value) = entry.map_err(io)?;
            let mark: DedupeMark = decode(&key, &value)?;
            let Some(rest) = keys::suffix(&key, keys::DEDUPE) else { continue };
            let Some((automation, dedupe_key)) = rest.split_once('\0') else { continue };
            live.dedupe.insert((automation.to_string(), dedupe_key.to_string()), mark);
        }
        for entry in self.db.scan_prefix(keys::MEMORY) {
            let (key, _) = entry.map_err(io)?;
            if let Some((automation, _)) = keys::suffix(&key, keys::MEMORY).and_then(|rest| rest.split_once('\0')) {
                live.with_memory.insert(automation.to_string());
            }
        }
        for entry in self.db.scan_prefix(keys::OUTBOX) {
            let (key, value) = entry.map_err(io)?;
            let message: crate::runs::outbox::Entry = decode(&key, &value)?;
            if !message.state.is_settled() {
                let unsure = message.state == crate::runs::outbox::EntryState::InFlight;
                let mut pending = message;
                pending.state = crate::runs::outbox::EntryState::Pending;
                live.outbox.insert(pending.key, (pending, unsure));
            }
        }
        for entry in self.db.scan_prefix(keys::LAST_CREATED) {
            let (key, value) = entry.map_err(io)?;
            let last: LastCreated = decode(&key, &value)?;
            if let Some(group) = keys::suffix(&key, keys::LAST_CREATED) {
                live.last_created.insert(group.to_string(), last);
            }
        }
        Ok(live)
    }

    /// The finished runs by state: kept under `keys::FINISHED_COUNTS`, or, in a store
    /// written before it was (the next change that finishes a run writes it), counted
    /// once from the records.
    fn load_finished_counts(&self) -> Result<[u64; RunState::ALL.len()], StoreError> {
        let mut finished = [0; RunState::ALL.len()];
        if let Some(bytes) = self.db.get(keys::FINISHED_COUNTS).map_err(io)? {
            let counts: BTreeMap<String, u64> = decode(keys::FINISHED_COUNTS, &bytes)?;
            for (state, count) in counts {
                let state: RunState = state.parse().map_err(|cause| StoreError::Corrupt {
                    what: String::from_utf8_lossy(keys::FINISHED_COUNTS).into_owned(),
                    cause,
                })?;
                finished[live::state_slot(state)] = count;
            }
            return Ok(finished);
        }
        for entry in self.db.scan_prefix(keys::RUN) {
            let (key, value) = entry.map_err(io)?;
            finished[live::state_slot(self.decode_run(&key, &value)?.state)] += 1;
        }
        Ok(finished)
    }

    /// A run record, with its agent command put back.
    fn decode_run(&self, key: &[u8], bytes: &[u8]) -> Result<Run, StoreError> {
        codec::decode_run(key, bytes, &self.agents.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the agent commands runs refer to.
    fn load_agents(&self) -> Result<(), StoreError> {
        let mut agents = codec::Agents::new();
        for entry in self.db.scan_prefix(keys::AGENT) {
            let (key, value) = entry.map_err(io)?;
            let Some((profile, hash)) = keys::suffix(&key, keys::AGENT).and_then(|rest| rest.split_once('\0')) else {
                continue;
            };
            agents.insert((profile.to_string(), hash.to_string()), decode(&key, &value)?);
        }
        *self.agents.write().unwrap_or_else(PoisonError::into_inner) = agents;
        Ok(())
    }

    /// The sequence number after the last one under `prefix` (a run's `act/` or `log/`).
    fn next_seq(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        match self.db.scan_prefix(prefix).next_back() {
            Some(entry) => {
                let (key, _) = entry.map_err(io)?;
                Ok(keys::number_at_end(&key).map_or(0, |seq| seq + 1))
            }
            None => Ok(0),
        }
    }

    /// Queues the changes while the caller still holds the lock (so they reach sled in
    /// the order their decisions were made), then, with the lock released, waits until
    /// a group commit has applied them, and flushed them when `durable`.
    fn apply(&self, guard: MutexGuard<'_, State>, changes: Changes, durable: bool) -> Result<(), StoreError> {
        let ticket = self.queue(guard, changes, durable);
        self.wait(ticket, if durable { Stage::Durable } else { Stage::Applied })
    }

    /// Queues the changes for the next group commit and releases the lock; returns the
    /// ticket to wait for.
    fn queue(&self, mut guard: MutexGuard<'_, State>, mut changes: Changes, durable: bool) -> u64 {
        let queued = &mut guard.queued;
        queued.issued += 1;
        queued.durable |= durable;
        let ticket = queued.issued;
        let outbox = changes.outbox;
        let runs = std::mem::take(&mut changes.runs);
        if changes.finished.iter().any(|by| *by != 0) {
            for (count, by) in guard.live.finished.iter_mut().zip(changes.finished) {
                *count = count.saturating_add_signed(by);
            }
            changes.put(keys::FINISHED_COUNTS.to_vec(), encode(&finished_counts(&guard.live.finished)));
        }
        if !changes.agents.is_empty() {
            let mut known = self.agents.write().unwrap_or_else(PoisonError::into_inner);
            for agent in std::mem::take(&mut changes.agents) {
                let name = (agent.profile, agent.hash);
                if !known.contains_key(&name) {
                    known.insert(name.clone(), decode(keys::AGENT, &agent.bytes).unwrap_or_default());
                    changes.put(keys::agent(&name.0, &name.1), agent.bytes);
                }
            }
        }
        for (key, value) in changes.writes {
            if value.is_some()
                && let Some(id) = key.strip_prefix(keys::EVENT)
            {
                guard.seen.add(id);
            }
            let queued = &mut guard.queued;
            // Shared buffers: the batch and the overlay hold one copy.
            let (key, value) = (sled::IVec::from(key), value.map(sled::IVec::from));
            queued.batch.push((key.clone(), value.clone()));
            queued.written.push_back((ticket, key.clone()));
            queued.overlay.insert(key, (ticket, value));
        }
        drop(guard);
        if outbox {
            self.outbox_written.notify_one();
        }
        if self.run_changes.receiver_count() > 0 {
            for change in runs {
                // No receiver left is no error: nobody watches.
                let _ = self.run_changes.send(change);
            }
        }
        ticket
    }

    fn wait(&self, ticket: u64, stage: Stage) -> Result<(), StoreError> {
        self.commit.wait(ticket, stage).map_err(StoreError::Io)
    }

    /// Waits until sled holds everything queued before this call. Readers that go to sled
    /// without the lock call it first, so a caller reads its own writes: a write returns
    /// once durable in the log, which may be before sled has it.
    fn settle(&self) -> Result<(), StoreError> {
        let issued = self.lock().queued.issued;
        self.wait(issued, Stage::Applied)
    }

    /// A record as the lock holder sees it: queued changes first, then sled.
    fn get(&self, state: &State, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some((_, value)) = state.queued.overlay.get(key) {
            return Ok(value.as_ref().map(|bytes| bytes.to_vec()));
        }
        Ok(self.db.get(key).map_err(io)?.map(|bytes| bytes.to_vec()))
    }

    /// The stored record of event `id`, if any. The filter of stored ids rules out
    /// nearly every new id without reading sled.
    fn stored_event(&self, state: &State, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if !state.seen.may_hold(id.as_bytes()) {
            return Ok(None);
        }
        self.get(state, &keys::event(id))
    }

    /// A run record from sled, finished or not (callers holding the lock use
    /// `read_run_locked`).
    fn read_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        for key in [keys::run(id), keys::live(id)] {
            if let Some(bytes) = self.db.get(&key).map_err(io)? {
                return self.decode_run(&key, &bytes).map(Some);
            }
        }
        Ok(None)
    }

    fn read_run_locked(&self, state: &State, id: RunId) -> Result<Option<Run>, StoreError> {
        for key in [keys::run(id), keys::live(id)] {
            if let Some(bytes) = self.get(state, &key)? {
                return self.decode_run(&key, &bytes).map(Some);
            }
        }
        Ok(None)
    }

    /// Stores an operation on one live run: its other changes, the run itself, and the
    /// index entry. Returns the run as stored.
    fn save(
        &self,
        mut state: MutexGuard<'_, State>,
        mut changes: Changes,
        updated: LiveRun,
        durable: bool,
    ) -> Result<Run, StoreError> {
        let run = updated.run.clone();
        changes.keep(&mut state.live, updated);
        self.apply(state, changes, durable)?;
        Ok(run)
    }

    /// The live run `id`, or the error that says why it is not one.
    fn live_run(&self, state: &State, id: RunId, action: &'static str) -> Result<LiveRun, StoreError> {
        if let Some(found) = state.get(id) {
            return Ok(found.clone());
        }
        match self.read_run_locked(state, id)? {
            Some(run) => Err(StoreError::WrongState { run: id, state: run.state, action }),
            None => Err(StoreError::NoSuchRun(id)),
        }
    }

    /// The live run `id` held under `epoch` by a worker.
    fn held_run(&self, state: &State, id: RunId, epoch: Epoch, action: &'static str) -> Result<LiveRun, StoreError> {
        let held = self.live_run(state, id, action)?;
        if held.run.epoch != epoch {
            return Err(StoreError::StaleLease { run: id, presented: epoch, current: held.run.epoch });
        }
        if !held.run.state.is_active() {
            return Err(StoreError::WrongState { run: id, state: held.run.state, action });
        }
        Ok(held)
    }

    fn finish(run: &mut Run, state: RunState, reason: Option<String>, now: DateTime<Utc>) {
        run.state = state;
        run.reason = reason;
        run.lease = None;
        run.finished_at = Some(now);
        run.updated_at = now;
    }

    fn cancel_live(
        live: &mut Live,
        changes: &mut Changes,
        id: RunId,
        reason: String,
        now: DateTime<Utc>,
    ) -> Option<Run> {
        let mut cancelled = live.remove(id)?;
        let before = cancelled.run.clone();
        Self::finish(&mut cancelled.run, RunState::Cancelled, Some(reason.clone()), now);
        changes.put_outbox(live, crate::runs::outbox::created(&before, &cancelled.run, now));
        changes.activity(&mut cancelled, ActivityKind::Cancellation, reason, now);
        changes.put_run(&cancelled.run);
        // A parent's unfinished children go with it, in the same step.
        for child in live.unfinished_children(id) {
            Self::cancel_live(live, changes, child, format!("its parent {id} was cancelled"), now);
        }
        Some(cancelled.run)
    }

    /// The runs that are part of `parent`, oldest first: the index on disk, with the
    /// queued changes and this operation's `changes` over it.
    fn children_locked(&self, state: &State, changes: &Changes, parent: RunId) -> Result<Vec<Run>, StoreError> {
        let prefix = keys::children_of(parent);
        let mut ids = BTreeSet::new();
        for entry in self.db.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(io)?;
            ids.extend(keys::number_at_end(&key).map(RunId));
        }
        let queued = state.queued.overlay.range(sled::IVec::from(prefix.as_slice())..);
        for (key, (_, value)) in queued.take_while(|(key, _)| key.starts_with(&prefix)) {
            if let Some(id) = keys::number_at_end(key).map(RunId) {
                if value.is_some() {
                    ids.insert(id)
                } else {
                    ids.remove(&id)
                };
            }
        }
        ids.extend(changes.children.values().filter(|run| run.parent.is_some_and(|l| l.run == parent)).map(|r| r.id));
        let mut children = Vec::with_capacity(ids.len());
        for id in ids {
            let run = match (changes.children.get(&id), state.get(id)) {
                (Some(written), _) => Some(written.clone()),
                (None, Some(live)) => Some(live.run.clone()),
                (None, None) => self.read_run_locked(state, id)?,
            };
            children.extend(run);
        }
        Ok(children)
    }

    /// A child ended: its parent decides what follows, in the same step.
    fn child_ended(
        &self,
        state: &mut State,
        changes: &mut Changes,
        child: &Run,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match child.parent.filter(|link| link.role.is_part_of_parent()) {
            Some(link) if child.state.is_finished() => self.conduct(state, changes, link.run, now),
            _ => Ok(()),
        }
    }

    /// Asks the parent's decisions (`parallel::conduct`) what a coordinating parent does
    /// next and writes the answer into `changes`: new children, the parent queued to
    /// publish its pick, or the parent's end. A parent that is not coordinating (ended,
    /// or publishing) is left alone.
    fn conduct(
        &self,
        state: &mut State,
        changes: &mut Changes,
        parent: RunId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Some(mut coordinating) = state.get(parent).cloned() else { return Ok(()) };
        if !is_coordinating(&coordinating.run) {
            return Ok(());
        }
        let children = self.children_locked(state, changes, parent)?;
        match conduct::next(&coordinating.run, &children) {
            conduct::Next::Wait => {}
            conduct::Next::Spawn(new) => {
                let mut started = Vec::with_capacity(new.len());
                for child in new {
                    let id = state.allocate_id();
                    started.push(format!("{id} ({} {})", child.link.role, child.link.index));
                    let run = child_run(id, &coordinating.run, child, now);
                    changes.new_run(&run);
                    state.live.put(LiveRun::new(run));
                }
                let text = format!("started {}", started.join(", "));
                changes.activity(&mut coordinating, ActivityKind::Progress, text, now);
                state.live.put(coordinating);
            }
            conduct::Next::Publish { held, summary, mut details } => {
                details.insert("held".into(), serde_json::json!(held));
                let result = crate::runs::RunResult { summary, exit_code: None, details };
                let run = &mut coordinating.run;
                run.result = Some(result);
                let pushes = run.task.as_ref().is_some_and(|task| task.push);
                let text = if let Some(task) = run.task.as_mut().filter(|_| pushes) {
                    task.staging = crate::parallel::Staging {
                        start_from: Some(held.clone()),
                        skip_agent: true,
                        ..Default::default()
                    };
                    run.state = RunState::Queued;
                    run.updated_at = now;
                    format!("queued to publish {}'s commit {}", held.run, held.commit)
                } else {
                    Inner::finish(run, RunState::Succeeded, None, now);
                    format!("succeeded: {}'s commit {} is held (the task does not push)", held.run, held.commit)
                };
                changes.activity(&mut coordinating, ActivityKind::Progress, text, now);
                changes.keep(&mut state.live, coordinating);
            }
            conduct::Next::Finish { succeeded, reason, summary, details } => {
                let run = &mut coordinating.run;
                run.result = Some(crate::runs::RunResult { summary: summary.clone(), exit_code: None, details });
                let (ended, kind) = if succeeded {
                    (RunState::Succeeded, ActivityKind::Completion)
                } else {
                    (RunState::Failed, ActivityKind::Failure)
                };
                Inner::finish(run, ended, reason, now);
                changes.activity(&mut coordinating, kind, summary, now);
                changes.keep(&mut state.live, coordinating);
                for child in state.unfinished_children(parent) {
                    Inner::cancel_live(&mut state.live, changes, child, format!("its parent {parent} ended"), now);
                }
            }
        }
        Ok(())
    }

    fn put_memory(changes: &mut Changes, automation: &str, write: MemoryWrite, by: Option<&Run>, now: DateTime<Utc>) {
        let key = keys::memory(automation, &write.key);
        match super::memory_entry(write, by, now) {
            Some((_, entry)) => changes.put(key, encode(&entry)),
            None => changes.delete(key),
        }
    }
}

impl Store for SledStore {
    fn trouble(&self) -> Option<String> {
        self.commit.trouble()
    }

    fn stats(&self) -> super::StoreStats {
        let by_state = {
            let state = self.lock();
            let mut counts = state.count_by_state();
            let finished = RunState::ALL.into_iter().filter(|run_state| run_state.is_finished());
            counts.extend(finished.map(|run_state| (run_state, state.finished[live::state_slot(run_state)])));
            counts
        };
        let (logs, syncs, applies) = self.commit.commits();
        super::StoreStats { by_state, commits: Some(super::CommitCounts { logs, syncs, applies }) }
    }

    /// Only the first observer is kept: one server owns the store.
    fn observe_commits(&self, observer: Arc<dyn super::CommitObserver>) {
        let _ = self.commit_observer.set(observer);
    }

    fn ingest_queued(
        &self,
        event: &Event,
        runs: Vec<NewRun>,
        now: DateTime<Utc>,
    ) -> Result<(IngestOutcome, Durability), StoreError> {
        let event_key = keys::event(&event.id);
        let mut live = self.lock_for_change()?;
        if let Some(bytes) = self.stored_event(&live, &event.id)? {
            let stored = codec::decode_event(&event_key, &bytes)?;
            // The first delivery may not be on disk yet: answer only once it is.
            let ticket = live.queued.issued;
            drop(live);
            let outcome = IngestOutcome {
                event_id: event.id.clone(),
                duplicate_delivery: true,
                runs: stored.outcomes,
                cancelled: Vec::new(),
            };
            return Ok((outcome, self.durability(ticket)));
        }

        let mut changes = Changes::default();
        let mut outcomes = Vec::with_capacity(runs.len());
        let mut cancelled = Vec::new();
        let mut dedupe_keys = BTreeMap::new();
        for new in runs {
            let (task, flow) = match new.rendered {
                Ok(rendered) => rendered,
                Err(error) => {
                    let id = live.allocate_id();
                    let mut run =
                        fresh_run(id, new.automation.clone(), new.definition_hash, None, Flow::default(), event, now);
                    Inner::finish(&mut run, RunState::Failed, Some(format!("rendering failed: {error}")), now);
                    changes.new_run(&run);
                    outcomes.push(RunOutcome {
                        automation: new.automation,
                        run: id,
                        disposition: Disposition::RenderFailed { error },
                    });
                    continue;
                }
            };
            let group = crate::runs::group_key(&new.automation, flow.concurrency_key.as_deref());
            let dedupe_key = flow.dedupe_key.clone();
            if let Some(key) = &dedupe_key {
                dedupe_keys.insert(new.automation.clone(), key.clone());
            }
            let facts = live.facts(&new.automation, &group, &flow, now, |id| {
                self.read_run_locked(&live, id).ok().flatten().map_or(RunState::Succeeded, |run| run.state)
            });
            let automation = new.automation.clone();
            let (run, disposition) = match decide(&flow, &facts, now) {
                Decision::Coalesce(id) => {
                    let Some(mut joined) = live.get(id).cloned() else { continue };
                    joined.run.event_ids.push(event.id.clone());
                    joined.run.updated_at = now;
                    changes.keep(&mut live.live, joined);
                    (id, Disposition::Coalesced)
                }
                Decision::Skip(reason) => {
                    let id = live.allocate_id();
                    let run = fresh_run(id, automation.clone(), new.definition_hash, Some(task), flow, event, now);
                    changes.new_run(&as_skipped(run, reason.clone(), now));
                    (id, Disposition::Skipped { reason })
                }
                Decision::Create { cancel } => {
                    let id = live.allocate_id();
                    for previous in cancel {
                        let why = format!("superseded by {id} (`overlap: cancel_previous`)");
                        if Inner::cancel_live(&mut live, &mut changes, previous, why, now).is_some() {
                            cancelled.push(previous);
                        }
                    }
                    let window = flow.dedupe_window;
                    let cooldown = flow.cooldown;
                    let run = fresh_run(id, automation.clone(), new.definition_hash, Some(task), flow, event, now);
                    if let (Some(key), Some(window)) = (&dedupe_key, window) {
                        let mark = DedupeMark { run: id, expires_at: later(now, window.as_duration()) };
                        changes.put(keys::dedupe(&automation, key), encode(&mark));
                        live.dedupe.insert((automation.clone(), key.clone()), mark);
                    }
                    if let Some(cooldown) = cooldown {
                        let last = LastCreated { run: id, at: now, until: later(now, cooldown.as_duration()) };
                        changes.put(keys::last_created(&group), encode(&last));
                        live.last_created.insert(group, last);
                    }
                    if let Some(task) = &run.task {
                        for thread in crate::runs::followup::thread_keys(&task.notify) {
                            changes.thread(&thread, id);
                        }
                    }
                    if run.task.as_ref().is_some_and(|task| task.plan.is_some()) {
                        // A parent coordinates from the start: running, with no lease,
                        // and its first children in this same commit.
                        let queued = run.clone();
                        let mut run = run;
                        run.state = RunState::Running;
                        run.started_at = Some(now);
                        changes.new_run(&run);
                        changes.put_outbox(&mut live.live, crate::runs::outbox::created(&queued, &run, now));
                        live.put(LiveRun::new(run));
                        self.conduct(&mut live, &mut changes, id, now)?;
                    } else {
                        changes.new_run(&run);
                        live.put(LiveRun::new(run));
                    }
                    (id, Disposition::Created)
                }
            };
            outcomes.push(RunOutcome { automation, run, disposition });
        }
        // `fields` repeat parts of the payload; they are derived again on reading.
        let stored = StoredEventRef { event: event.without_fields(), dedupe_keys: &dedupe_keys, outcomes: &outcomes };
        changes.put(event_key, codec::encode_event(&stored));
        if outcomes.is_empty() {
            // Events with runs go with their runs; the others by age, through this index.
            changes.put(keys::event_age(event.received_at.timestamp_millis(), &event.id), Vec::new());
        }
        let ticket = self.queue(live, changes, true);
        let outcome =
            IngestOutcome { event_id: event.id.clone(), duplicate_delivery: false, runs: outcomes, cancelled };
        Ok((outcome, self.durability(ticket)))
    }

    fn claim_for(
        &self,
        worker: &str,
        lease_for: Duration,
        now: DateTime<Utc>,
        staged: bool,
    ) -> Result<Option<Claim>, StoreError> {
        let live = self.lock_for_change()?;
        let Some(id) = live.next_claimable(now, staged) else { return Ok(None) };
        let Some(mut claimed) = live.get(id).cloned() else { return Ok(None) };
        let run = &mut claimed.run;
        run.epoch = Epoch(run.epoch.0.max(live.epoch_floor) + 1);
        run.attempt += 1;
        run.state = RunState::Leased;
        run.not_before = None;
        run.updated_at = now;
        let lease =
            Lease { worker: worker.to_string(), epoch: run.epoch, acquired_at: now, expires_at: later(now, lease_for) };
        run.lease = Some(lease.clone());
        let run = self.save(live, Changes::default(), claimed, false)?;
        Ok(Some(Claim { run, lease }))
    }

    fn mark_running(&self, id: RunId, epoch: Epoch, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let live = self.lock_for_change()?;
        let mut held = self.held_run(&live, id, epoch, "started")?;
        held.run.state = RunState::Running;
        held.run.started_at.get_or_insert(now);
        held.run.updated_at = now;
        self.save(live, Changes::default(), held, false)
    }

    fn heartbeat(
        &self,
        id: RunId,
        epoch: Epoch,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let live = self.lock_for_change()?;
        let mut held = self.held_run(&live, id, epoch, "heartbeat")?;
        let expires_at = later(now, lease_for);
        if let Some(lease) = held.run.lease.as_mut() {
            lease.expires_at = expires_at;
        }
        self.save(live, Changes::default(), held, false)?;
        Ok(expires_at)
    }

    fn append_activity(
        &self,
        id: RunId,
        epoch: Epoch,
        activity: NewActivity,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut live = self.lock_for_change()?;
        let mut held = self.held_run(&live, id, epoch, "given activities")?;
        let seq = held.next_activity;
        let stored = Activity { seq, at: now, kind: activity.kind, text: activity.text, data: activity.data };
        let mut changes = Changes::default();
        changes.put(keys::activity(id, seq), encode(&stored));
        held.next_activity = seq + 1;
        live.put(held);
        self.apply(live, changes, true)?;
        Ok(seq)
    }

    fn append_log(&self, id: RunId, epoch: Epoch, text: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut live = self.lock_for_change()?;
        let mut held = self.held_run(&live, id, epoch, "given log output")?;
        let seq = held.next_log;
        let chunk = LogChunk { seq, at: now, text: text.to_string() };
        let mut changes = Changes::default();
        changes.put(keys::log_chunk(id, seq), encode(&chunk));
        held.next_log = seq + 1;
        live.put(held);
        // Not waited for on disk, like a heartbeat: the durable completion comes after.
        self.apply(live, changes, false)?;
        Ok(seq)
    }

    fn complete(
        &self,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Vec<MemoryWrite>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        let mut live = self.lock_for_change()?;
        let mut held = self.held_run(&live, id, epoch, "completed")?;
        let mut changes = Changes::default();
        let retries = completion.retries(&held.run);
        let run = &mut held.run;
        let is_parent = run.task.as_ref().is_some_and(|task| task.plan.is_some());
        let (kind, text) = match completion {
            Completion::Succeeded { result } => {
                let text = format!("succeeded: {}", result.summary);
                run.result = Some(if is_parent { with_earlier_details(run.result.take(), result) } else { result });
                Inner::finish(run, RunState::Succeeded, None, now);
                (ActivityKind::Completion, text)
            }
            Completion::Failed { reason, result, .. } => {
                run.result = match result {
                    Some(result) if is_parent => Some(with_earlier_details(run.result.take(), result)),
                    other if is_parent => run.result.take().or(other),
                    other => other,
                };
                if retries {
                    let wait = backoff(&run.flow.retry, run.attempt, fastrand::f64());
                    let at = later(now, wait);
                    run.state = RunState::Queued;
                    run.lease = None;
                    run.not_before = Some(at);
                    run.updated_at = now;
                    let text = format!("attempt {} failed: {reason}; retrying at {}", run.attempt, at.to_rfc3339());
                    run.reason = Some(reason);
                    (ActivityKind::Failure, text)
                } else {
                    let text = format!("failed after {} attempt(s): {reason}", run.attempt);
                    Inner::finish(run, RunState::Failed, Some(reason), now);
                    (ActivityKind::Failure, text)
                }
            }
            Completion::TimedOut { reason } => {
                let text = format!("timed out: {reason}");
                Inner::finish(run, RunState::TimedOut, Some(reason), now);
                (ActivityKind::Failure, text)
            }
            Completion::PlanReady { plan } => {
                run.plan = Some(plan.clone());
                run.state = RunState::AwaitingApproval;
                run.lease = None;
                run.updated_at = now;
                (ActivityKind::Plan, plan)
            }
        };
        changes.activity(&mut held, kind, text, now);
        if !memory.is_empty() {
            live.with_memory.insert(held.run.automation.clone());
        }
        for write in memory {
            Inner::put_memory(&mut changes, &held.run.automation, write, Some(&held.run), now);
        }
        let run = held.run.clone();
        changes.keep(&mut live.live, held);
        self.child_ended(&mut live, &mut changes, &run, now)?;
        self.apply(live, changes, true)?;
        Ok(run)
    }

    fn cancel(&self, id: RunId, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let mut live = self.lock_for_change()?;
        self.live_run(&live, id, "cancelled")?;
        let mut changes = Changes::default();
        let run = Inner::cancel_live(&mut live, &mut changes, id, reason.to_string(), now)
            .ok_or(StoreError::NoSuchRun(id))?;
        self.child_ended(&mut live, &mut changes, &run, now)?;
        self.apply(live, changes, true)?;
        Ok(run)
    }

    fn record_skipped_slots(
        &self,
        automation: &str,
        definition_hash: &str,
        skipped: &[(Event, SkipReason)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>, StoreError> {
        let mut live = self.lock_for_change()?;
        let mut changes = Changes::default();
        let mut ids = Vec::new();
        for (event, reason) in skipped {
            if self.stored_event(&live, &event.id)?.is_some() {
                continue;
            }
            let event_key = keys::event(&event.id);
            let id = live.allocate_id();
            let run =
                fresh_run(id, automation.to_string(), definition_hash.to_string(), None, Flow::default(), event, now);
            changes.new_run(&as_skipped(run, reason.clone(), now));
            let outcomes = [RunOutcome {
                automation: automation.to_string(),
                run: id,
                disposition: Disposition::Skipped { reason: reason.clone() },
            }];
            let stored =
                StoredEventRef { event: event.without_fields(), dedupe_keys: &BTreeMap::new(), outcomes: &outcomes };
            changes.put(event_key, codec::encode_event(&stored));
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(ids);
        }
        self.apply(live, changes, true)?;
        Ok(ids)
    }

    fn cancel_unstarted(&self, id: RunId, reason: &str, now: DateTime<Utc>) -> Result<Option<Run>, StoreError> {
        let mut live = self.lock_for_change()?;
        let unstarted = |state| matches!(state, RunState::Queued | RunState::AwaitingApproval);
        if live.get(id).is_none_or(|pending| !unstarted(pending.run.state)) {
            return Ok(None);
        }
        let mut changes = Changes::default();
        let run = Inner::cancel_live(&mut live, &mut changes, id, reason.to_string(), now);
        if let Some(run) = &run
            && let Some(key) = &run.flow.dedupe_key
        {
            let mark = (run.automation.clone(), key.clone());
            if live.dedupe.get(&mark).is_some_and(|held| held.run == id) {
                live.dedupe.remove(&mark);
                changes.delete(keys::dedupe(&run.automation, key));
            }
        }
        if let Some(run) = &run {
            self.child_ended(&mut live, &mut changes, run, now)?;
        }
        self.apply(live, changes, true)?;
        Ok(run)
    }

    fn release(&self, id: RunId, epoch: Epoch, reason: &str, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let live = self.lock_for_change()?;
        let mut held = self.held_run(&live, id, epoch, "released")?;
        let run = &mut held.run;
        run.state = RunState::Queued;
        run.lease = None;
        run.attempt = run.attempt.saturating_sub(1);
        run.updated_at = now;
        let text = format!("given back by its worker ({reason}); queued again, the attempt not counted");
        let mut changes = Changes::default();
        changes.activity(&mut held, ActivityKind::Progress, text, now);
        self.save(live, changes, held, true)
    }

    fn approve(&self, id: RunId, now: DateTime<Utc>) -> Result<Run, StoreError> {
        let live = self.lock_for_change()?;
        let mut pending = self.live_run(&live, id, "approved")?;
        if pending.run.state != RunState::AwaitingApproval {
            return Err(StoreError::WrongState { run: id, state: pending.run.state, action: "approved" });
        }
        pending.run.state = RunState::Queued;
        pending.run.approved = true;
        pending.run.updated_at = now;
        let mut changes = Changes::default();
        changes.activity(&mut pending, ActivityKind::Progress, "plan approved".into(), now);
        self.save(live, changes, pending, true)
    }

    fn sweep_expired_leases(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StoreError> {
        let mut live = self.lock_for_change()?;
        let expired = live.expired_leases(now);
        if expired.is_empty() {
            return Ok(expired);
        }
        let mut changes = Changes::default();
        for id in &expired {
            let Some(mut held) = live.get(*id).cloned() else { continue };
            let holder =
                held.run.lease.as_ref().map(|l| format!("{} (epoch {})", l.worker, l.epoch)).unwrap_or_default();
            let run = &mut held.run;
            let text = if may_retry(&run.flow.retry, run.attempt) {
                run.state = RunState::Queued;
                run.lease = None;
                run.updated_at = now;
                format!("the lease of worker {holder} expired on attempt {}; queued again", run.attempt)
            } else {
                let reason = format!("the lease of worker {holder} expired, and all {} attempts are used", run.attempt);
                Inner::finish(run, RunState::Failed, Some(reason.clone()), now);
                reason
            };
            changes.activity(&mut held, ActivityKind::Failure, text, now);
            let run = held.run.clone();
            changes.keep(&mut live.live, held);
            self.child_ended(&mut live, &mut changes, &run, now)?;
        }
        self.apply(live, changes, true)?;
        Ok(expired)
    }

    fn queue_status(&self, now: DateTime<Utc>) -> Result<QueueStatus, StoreError> {
        let state = self.lock();
        let mut counts = state.live.finished;
        let mut active = Vec::new();
        let mut awaiting_approval = Vec::new();
        for live in state.runs() {
            counts[live::state_slot(live.run.state)] += 1;
            if live.run.state.is_active() {
                active.push(live.run.clone());
            } else if live.run.state == RunState::AwaitingApproval {
                awaiting_approval.push(live.run.clone());
            }
        }
        let queued = state.turns(now).into_iter().map(|(run, wait)| (run.clone(), wait)).collect();
        drop(state);
        active.sort_by_key(|run| run.id);
        awaiting_approval.sort_by_key(|run| run.id);
        let counts = RunState::ALL.into_iter().zip(counts).collect();
        Ok(QueueStatus { counts, active, queued, awaiting_approval })
    }

    fn run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        let state = self.lock();
        if let Some(live) = state.get(id) {
            return Ok(Some(live.run.clone()));
        }
        self.read_run_locked(&state, id)
    }

    fn children(&self, parent: RunId) -> Result<Vec<Run>, StoreError> {
        let state = self.lock();
        self.children_locked(&state, &Changes::default(), parent)
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        self.settle()?;
        let limit = if filter.limit == 0 { usize::MAX } else { filter.limit };
        let before = filter.before.unwrap_or(RunId(u64::MAX));
        let wanted = |run: &Run| {
            run.id < before
                && filter.state.is_none_or(|state| state == run.state)
                && filter.automation.as_ref().is_none_or(|name| *name == run.automation)
        };
        // Unfinished runs come from memory, finished ones from disk; both newest first.
        // Only the newest `limit` unfinished ones can be on the page: just they are read,
        // from the end of the ordered index (a page costs the same behind a long queue).
        let unfinished: Vec<Run> = {
            let state = self.lock();
            state
                .runs_newest_first()
                .map(|live| &live.run)
                .skip_while(|run| run.id >= before)
                .filter(|run| wanted(run))
                .take(limit)
                .cloned()
                .collect()
        };
        if filter.state.is_some_and(|state| !state.is_finished()) {
            // Nothing on disk is in an unfinished state: a page of them reads no record.
            return Ok(unfinished);
        }
        let listed: std::collections::HashSet<RunId> = unfinished.iter().map(|run| run.id).collect();
        let mut unfinished = unfinished.into_iter().peekable();
        // `ra/` (one automation) holds ids to look up; `run/` (all) holds the records.
        // Both end in the id, so the cursor is a key range: a page reads only its runs.
        let index = filter.automation.is_some();
        let finished = match &filter.automation {
            Some(automation) => self.db.range(keys::runs_of(automation)..keys::run_of(automation, before)),
            None => self.db.range(keys::RUN.to_vec()..keys::run(before)),
        };
        let mut found = Vec::new();
        for entry in finished.rev() {
            if found.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(io)?;
            let Some(id) = keys::number_at_end(&key).map(RunId) else { continue };
            if listed.contains(&id) {
                // Finished since the snapshot of unfinished runs was taken.
                continue;
            }
            while found.len() < limit && unfinished.peek().is_some_and(|run| run.id > id) {
                found.extend(unfinished.next());
            }
            let run = if index { self.read_run(id)? } else { Some(self.decode_run(&key, &value)?) };
            if found.len() < limit
                && let Some(run) = run
                && wanted(&run)
            {
                found.push(run);
            }
        }
        found.extend(unfinished.take(limit.saturating_sub(found.len())));
        Ok(found)
    }

    fn activities(&self, run: RunId) -> Result<Vec<Activity>, StoreError> {
        self.settle()?;
        self.db
            .scan_prefix(keys::activities_of(run))
            .map(|entry| {
                let (key, value) = entry.map_err(io)?;
                decode(&key, &value)
            })
            .collect()
    }

    fn log(&self, run: RunId, from: u64) -> Result<Vec<LogChunk>, StoreError> {
        if self.run(run)?.is_none() {
            return Err(StoreError::NoSuchRun(run));
        }
        self.settle()?;
        let prefix = keys::log_of(run);
        let mut chunks = Vec::new();
        for entry in self.db.range(keys::log_chunk(run, from)..) {
            let (key, value) = entry.map_err(io)?;
            if !key.starts_with(&prefix) {
                break;
            }
            chunks.push(decode(&key, &value)?);
        }
        Ok(chunks)
    }

    fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.settle()?;
        let key = keys::event(id);
        let Some(bytes) = self.db.get(&key).map_err(io)? else { return Ok(None) };
        let mut stored = codec::decode_event(&key, &bytes)?;
        let event = &mut stored.event;
        event.fields = crate::triggers::normalize(event.source, &event.payload, &event.headers).fields;
        Ok(Some(stored))
    }

    fn history(&self, automation: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        self.settle()?;
        for entry in self.db.scan_prefix(keys::finished_runs_of(automation)).rev().take(limit) {
            let (key, _) = entry.map_err(io)?;
            let Some(id) = keys::number_at_end(&key).map(RunId) else { continue };
            found.extend(self.read_run(id)?);
        }
        Ok(found)
    }

    fn memory(&self, automation: &str, now: DateTime<Utc>) -> Result<BTreeMap<String, MemoryEntry>, StoreError> {
        let prefix = keys::memory_of(automation);
        // Under the lock, with queued changes over sled: a completion's memory writes
        // reach sled one insert at a time, and a reader must see all of them or none.
        let state = self.lock();
        if !state.with_memory.contains(automation) {
            return Ok(BTreeMap::new());
        }
        let mut records: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in self.db.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(io)?;
            records.insert(key.to_vec(), value.to_vec());
        }
        let queued = state.queued.overlay.range(sled::IVec::from(prefix.as_slice())..);
        for (key, (_, value)) in queued.take_while(|(key, _)| key.starts_with(&prefix)) {
            match value {
                Some(value) => records.insert(key.to_vec(), value.to_vec()),
                None => records.remove(key.as_ref()),
            };
        }
        drop(state);
        let mut entries = BTreeMap::new();
        for (key, value) in records {
            let memory: MemoryEntry = decode(&key, &value)?;
            if memory.is_live(now)
                && let Some(name) = keys::suffix(&key, &prefix)
            {
                entries.insert(name.to_string(), memory);
            }
        }
        Ok(entries)
    }

    fn write_memory(&self, automation: &str, write: MemoryWrite, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut live = self.lock_for_change()?;
        live.with_memory.insert(automation.to_string());
        let mut changes = Changes::default();
        Inner::put_memory(&mut changes, automation, write, None, now);
        self.apply(live, changes, true)
    }

    fn schedule(&self, automation: &str, trigger: &str) -> Result<Option<ScheduleState>, StoreError> {
        self.settle()?;
        let key = keys::schedule(automation, trigger);
        self.db.get(&key).map_err(io)?.map(|bytes| decode(&key, &bytes)).transpose()
    }

    fn set_schedules(&self, states: &[(&str, &str, &ScheduleState)]) -> Result<(), StoreError> {
        let live = self.lock_for_change()?;
        let mut changes = Changes::default();
        for (automation, trigger, state) in states {
            changes.put(keys::schedule(automation, trigger), encode(state));
        }
        // Not waited for on disk: losing it in a crash re-fires a slot whose event was
        // stored first, and the event id makes that a duplicate delivery.
        self.apply(live, changes, false)
    }

    fn outbox_due(&self, now: DateTime<Utc>, limit: usize) -> Result<OutboxDue, StoreError> {
        Ok(self.due_messages(now, limit))
    }

    fn outbox(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        self.messages_of(run)
    }

    fn outbox_begin(&self, key: OutboxKey, now: DateTime<Utc>) -> Result<Option<(OutboxEntry, Attempt)>, StoreError> {
        self.begin_message(key, now)
    }

    fn outbox_finish(
        &self,
        key: OutboxKey,
        outcome: &Outcome,
        now: DateTime<Utc>,
        random_unit: f64,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        self.finish_message(key, outcome, now, random_unit)
    }

    fn thread_run(&self, thread: &str) -> Result<Option<RunId>, StoreError> {
        let state = self.lock();
        let Some(bytes) = self.get(&state, &keys::thread(thread))? else { return Ok(None) };
        let number: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            what: format!("thread record `{}`", thread.escape_debug()),
            cause: format!("{} bytes, not a run id's 8", bytes.len()),
        })?;
        Ok(Some(RunId(u64::from_be_bytes(number))))
    }

    fn outbox_written(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_written.clone()
    }

    fn run_changes(&self) -> tokio::sync::broadcast::Receiver<crate::store::RunChange> {
        self.run_changes.subscribe()
    }

    fn apply_retention(&self, retention: &Retention, now: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
        self.retain(retention, now)
    }
}

/// `run` recorded as skipped, saying why.
/// How `keys::FINISHED_COUNTS` is written: each state's name and count.
fn finished_counts(finished: &[u64]) -> BTreeMap<&'static str, u64> {
    RunState::ALL.iter().zip(finished).map(|(state, count)| (state.as_str(), *count)).collect()
}

fn as_skipped(mut run: Run, reason: SkipReason, now: DateTime<Utc>) -> Run {
    Inner::finish(&mut run, RunState::Skipped, None, now);
    run.skip = Some(reason);
    run
}

/// Whether `run` is a parent waiting for its children: running with no lease.
fn is_coordinating(run: &Run) -> bool {
    run.state == RunState::Running && run.lease.is_none() && run.task.as_ref().is_some_and(|task| task.plan.is_some())
}

/// A parent's result after its publishing attempt: the worker's, with what the parent
/// recorded before (the pick, the findings) under the keys the worker did not set.
fn with_earlier_details(
    earlier: Option<crate::runs::RunResult>,
    mut result: crate::runs::RunResult,
) -> crate::runs::RunResult {
    for (key, value) in earlier.map(|earlier| earlier.details).unwrap_or_default() {
        result.details.entry(key).or_insert(value);
    }
    result
}

/// A child's queued run record, part of `parent`.
fn child_run(id: RunId, parent: &Run, child: crate::parallel::conduct::NewChild, now: DateTime<Utc>) -> Run {
    let event_ids = parent.event_ids.iter().take(1).cloned().collect();
    let (automation, hash) = (parent.automation.clone(), parent.definition_hash.clone());
    Run::queued(id, automation, hash, event_ids, Some(child.task), child.flow, Some(child.link), now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_of_the_older_formats_open_read_their_runs_and_keep_their_sled_settings() {
        let run = codec::run_with_env(&[("SCRIPT", "echo audit")], "check the disk");
        let agent = run.task.as_ref().expect("task").agent.clone();
        // Format 2 kept the agent command apart but the shape in the run record.
        let mut format_2 = serde_json::to_value(&run).expect("value");
        format_2["task"]["agent"] = serde_json::json!({"profile": agent.profile, "agent_hash": "0123456789abcdef"});
        for (format, record) in [(b"nightshift-store/1", encode(&run)), (b"nightshift-store/2", encode(&format_2))] {
            let dir = tempfile::tempdir().expect("dir");
            {
                // What nightshift wrote then: uncompressed pages, the older format marker.
                let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled");
                db.insert(keys::FORMAT, format).expect("format");
                db.insert(keys::live(run.id), record).expect("run");
                db.insert(keys::agent(&agent.profile, "0123456789abcdef"), encode(&agent)).expect("agent");
                db.flush().expect("flush");
            }
            for _ in 0..2 {
                let store = SledStore::open(dir.path()).expect("open");
                assert_eq!(store.run(run.id).expect("read"), Some(run.clone()));
                assert_eq!(store.db.get(keys::FORMAT).expect("get").as_deref(), Some(keys::FORMAT_VERSION));
                assert!(!compresses(dir.path()));
            }
        }
        let fresh = tempfile::tempdir().expect("dir");
        drop(SledStore::open(fresh.path()).expect("open"));
        assert!(!compresses(fresh.path()), "new stores are not compressed: it halved ingest");
        // A store whose pages sled compressed keeps them compressed.
        let compressed = tempfile::tempdir().expect("dir");
        let config = sled::Config::new().path(compressed.path().join("db")).use_compression(true);
        drop(config.open().expect("sled"));
        assert!(compresses(compressed.path()));
        drop(SledStore::open(compressed.path()).expect("open"));
        assert!(compresses(compressed.path()));
    }

    #[test]
    fn a_store_without_the_finished_counter_counts_its_finished_runs_once_at_open() {
        let mut run = codec::run_with_env(&[], "check the disk");
        run.state = RunState::Failed;
        let mut other = run.clone();
        other.id = RunId(run.id.0 + 1);
        other.state = RunState::Succeeded;
        let dir = tempfile::tempdir().expect("dir");
        {
            // Written before `meta/finished` was kept: finished records, no counter.
            let db = sled::Config::new().path(dir.path().join("db")).open().expect("sled");
            db.insert(keys::FORMAT, b"nightshift-store/1").expect("format");
            db.insert(keys::run(run.id), encode(&run)).expect("run");
            db.insert(keys::run(other.id), encode(&other)).expect("run");
            db.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("open");
        let counts: Vec<(RunState, u64)> =
            store.queue_status(Utc::now()).expect("status").counts.into_iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counts, [(RunState::Succeeded, 1), (RunState::Failed, 1)]);
    }
}
