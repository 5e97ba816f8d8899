//! Group commit: concurrent writers share one log append, one sync and one applier pass.
//! Writers queue their changes under the store's lock, take a ticket and park. Two
//! threads form a pipeline: the logger takes everything queued, appends it to the
//! write-ahead log, syncs it when anyone needs it durable and wakes those writers; the
//! applier then applies it to sled and wakes the writers that needed it visible there.
//! While one batch is applied, the next is logged and a third gathers; an applier that
//! falls behind takes every batch waiting.
//!
//! A log append or sync that fails (a full disk, say) stalls the pipeline instead of
//! breaking it: the logger keeps the batch, answers its writers with the error, tries
//! again every `RETRY_EVERY`, and carries on once a try succeeds. While it is stalled
//! the store refuses new changes (`stalled`), so nothing piles up behind the batch.

use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;

/// Who to wake when a commit covers a waiter: a parked thread or an async task.
#[derive(Debug)]
enum Wake {
    Thread(Thread),
    Task(Waker),
}

impl Wake {
    fn wake(&self) {
        match self {
            Wake::Thread(thread) => thread.unpark(),
            Wake::Task(waker) => waker.wake_by_ref(),
        }
    }
}

/// Where queued changes go: taken as one batch, logged, then applied.
pub trait Sink: Sync {
    type Batch: Send;
    /// Everything queued so far, the newest ticket it covers, and whether any of it was
    /// queued by a writer that needs it on disk.
    fn take(&self) -> (u64, Self::Batch, bool);
    /// Appends the batch to the log, synced when `sync`.
    fn log(&self, batch: &mut Self::Batch, sync: bool) -> Result<(), String>;
    /// Syncs everything logged so far.
    fn sync(&self) -> Result<(), String>;
    /// Applies logged batches, oldest first, so every reader sees them.
    fn apply(&self, batches: Vec<Self::Batch>) -> Result<(), String>;
    /// Changes up to `ticket` are applied (the sink may drop its read overlay of them).
    fn applied(&self, ticket: u64);
}

/// How far a caller needs its changes to have got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// In sled, visible to every reader; lost in a crash unless a later durable commit
    /// covers it (claims, heartbeats).
    Applied,
    /// Synced in the log: survives a crash. Sled may not have it yet; readers that must
    /// see it wait for `Applied` first (the sink's overlay covers readers until then).
    Durable,
}

#[derive(Debug, Default)]
struct Progress {
    /// The newest ticket logged, synced, and applied.
    logged: u64,
    durable: u64,
    applied: u64,
    /// The newest ticket anyone waits for, and the newest someone needs on disk.
    wanted: u64,
    wanted_durable: u64,
    waiting: Vec<(u64, Stage, Wake)>,
    logs: u64,
    syncs: u64,
    applies: u64,
    /// A failed commit may have lost queued changes: the store refuses further work.
    broken: Option<String>,
    /// Why the logger cannot write now; it keeps the batch and tries again.
    stalled: Option<String>,
    stopping: bool,
    /// The logger sleeps on `work`; only then does a new waiter need to signal it (a busy
    /// logger looks again before it sleeps), which saves a syscall per write.
    logger_idle: bool,
}

impl Progress {
    fn reached(&self, ticket: u64, stage: Stage) -> bool {
        match stage {
            Stage::Applied => self.applied >= ticket,
            Stage::Durable => self.durable >= ticket,
        }
    }

    /// Why `ticket` will not reach `stage` for now: the store is broken, or the logger is
    /// stalled before it (a logged change still reaches sled).
    fn refusal(&self, ticket: u64, stage: Stage) -> Option<&String> {
        if self.broken.is_some() {
            return self.broken.as_ref();
        }
        let stuck = match stage {
            Stage::Applied => ticket > self.logged,
            Stage::Durable => ticket > self.durable,
        };
        self.stalled.as_ref().filter(|_| stuck && !self.reached(ticket, stage))
    }

    /// Wakes the waiters the progress so far satisfies, or refuses.
    fn wake_satisfied(&mut self) {
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|(ticket, stage, wake)| {
            let done = self.refusal(*ticket, *stage).is_some() || self.reached(*ticket, *stage);
            if done {
                wake.wake();
            }
            !done
        });
        self.waiting = waiting;
    }

    /// Registers a waiter and says what the committer must do for it.
    fn register(&mut self, ticket: u64, stage: Stage, wake: Wake) {
        self.wanted = self.wanted.max(ticket);
        if stage == Stage::Durable {
            self.wanted_durable = self.wanted_durable.max(ticket);
        }
        self.waiting.push((ticket, stage, wake));
    }

    /// Someone waits for changes not yet logged.
    fn take_pending(&self) -> bool {
        self.wanted > self.logged
    }

    /// Someone needs changes on disk that were logged without a sync.
    fn sync_pending(&self) -> bool {
        self.wanted_durable > self.durable && self.logged > self.durable
    }

    /// After a failure nothing more is written: every waiter is answered with the error.
    fn give_up(&mut self) {
        self.logged = self.logged.max(self.wanted);
        self.applied = self.applied.max(self.wanted);
        self.durable = self.durable.max(self.wanted_durable);
        self.wake_satisfied();
    }
}

/// When this many commits are waiting for the logger, it waits `GATHER_FOR` before
/// taking them, so the sync is shared by more (PostgreSQL's `commit_siblings` and
/// `commit_delay`). Fewer waiting, as at a steady 2,000 deliveries a second, are synced
/// at once.
const GATHER_WHEN_QUEUED: u64 = 8;
const GATHER_FOR: std::time::Duration = std::time::Duration::from_micros(300);

/// How often a stalled logger tries its batch again.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the logger does next: log a batch (synced when `sync`), or only sync.
enum Step<B> {
    Log { covers: u64, batch: B, sync: bool },
    Sync,
}

/// How many logged batches may wait for the applier before the logger waits too.
const LOGGED_NOT_APPLIED: usize = 256;

#[derive(Debug, Default)]
pub struct GroupCommit {
    progress: Mutex<Progress>,
    work: Condvar,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once `ticket` has reached `stage`.
    pub fn wait(&self, ticket: u64, stage: Stage) -> Result<(), String> {
        let mut progress = self.lock();
        if !progress.reached(ticket, stage) && progress.refusal(ticket, stage).is_none() {
            progress.register(ticket, stage, Wake::Thread(std::thread::current()));
            self.signal(&progress);
        }
        loop {
            if progress.broken.is_none() && progress.reached(ticket, stage) {
                return Ok(());
            }
            if let Some(why) = progress.refusal(ticket, stage) {
                return Err(why.clone());
            }
            drop(progress);
            std::thread::park();
            progress = self.lock();
        }
    }

    fn signal(&self, progress: &Progress) {
        if progress.logger_idle && (progress.take_pending() || progress.sync_pending()) {
            self.work.notify_one();
        }
    }

    /// `wait` for async callers: ready once `ticket` has reached `stage`.
    pub fn poll(&self, ticket: u64, stage: Stage, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let mut progress = self.lock();
        if progress.broken.is_none() && progress.reached(ticket, stage) {
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = progress.refusal(ticket, stage) {
            return Poll::Ready(Err(why.clone()));
        }
        progress.register(ticket, stage, Wake::Task(cx.waker().clone()));
        self.signal(&progress);
        Poll::Pending
    }

    /// Runs the logger on this thread and the applier beside it, until `stop`.
    pub fn run<S: Sink>(&self, sink: &S) {
        let (to_apply, logged) = mpsc::sync_channel(LOGGED_NOT_APPLIED);
        std::thread::scope(|scope| {
            let applier = std::thread::Builder::new().name("nightshift-apply".into()).spawn_scoped(scope, || {
                self.run_applier(sink, logged);
            });
            if applier.is_err() {
                self.lock().broken.get_or_insert("cannot start the applier thread; restart nightshift".into());
            }
            self.run_logger(sink, to_apply);
        });
    }

    fn run_logger<S: Sink>(&self, sink: &S, to_apply: mpsc::SyncSender<(u64, S::Batch)>) {
        // A step that failed with the log unwritable, to try again.
        let mut retained: Option<Step<S::Batch>> = None;
        let mut progress = self.lock();
        loop {
            if progress.broken.is_some() {
                progress.give_up();
                retained = None;
            }
            let step = match retained.take() {
                Some(step) => {
                    if progress.stopping {
                        // Its writers were answered with the error: nothing acknowledged
                        // is dropped here.
                        return;
                    }
                    progress = self.work.wait_timeout(progress, RETRY_EVERY).unwrap_or_else(PoisonError::into_inner).0;
                    if progress.stopping {
                        return;
                    }
                    step
                }
                None => {
                    let take = progress.take_pending();
                    if !take && !progress.sync_pending() {
                        if progress.stopping {
                            // Dropping the sender lets the applier finish what is left, then stop.
                            return;
                        }
                        progress.logger_idle = true;
                        progress = self.work.wait(progress).unwrap_or_else(PoisonError::into_inner);
                        progress.logger_idle = false;
                        continue;
                    }
                    if take && progress.wanted - progress.logged >= GATHER_WHEN_QUEUED && !progress.stopping {
                        // Busy: give more writers a moment to join this sync. A sync costs the
                        // kernel CPU of its own, and fewer, fuller ones leave more for requests.
                        drop(progress);
                        std::thread::sleep(GATHER_FOR);
                        progress = self.lock();
                    }
                    let someone_needs_sync = progress.wanted_durable > progress.durable;
                    drop(progress);
                    let taken = guarded(|| {
                        Ok(if take {
                            let (covers, batch, durable) = sink.take();
                            Step::Log { covers, batch, sync: durable || someone_needs_sync }
                        } else {
                            Step::Sync
                        })
                    });
                    progress = self.lock();
                    match taken {
                        Ok(step) => step,
                        Err(why) => {
                            progress.broken.get_or_insert(why);
                            continue;
                        }
                    }
                }
            };
            drop(progress);
            let mut step = step;
            let result = guarded(|| {
                Ok(match &mut step {
                    Step::Sync => sink.sync(),
                    Step::Log { batch, sync, .. } => sink.log(batch, *sync),
                })
            });
            progress = self.lock();
            let written = match result {
                Ok(written) => written,
                Err(why) => {
                    progress.broken.get_or_insert(why);
                    continue;
                }
            };
            if let Err(why) = written {
                let why = format!("the store cannot write its log ({why}); it tries again every second");
                if progress.stalled.is_none() {
                    tracing::error!("{why}");
                }
                progress.stalled = Some(why);
                progress.wake_satisfied();
                retained = Some(step);
                continue;
            }
            if progress.stalled.take().is_some() {
                tracing::info!("the store can write its log again");
            }
            match step {
                Step::Sync => {
                    progress.durable = progress.logged;
                    progress.syncs += 1;
                    progress.wake_satisfied();
                }
                Step::Log { covers, batch, sync } => {
                    progress.logged = covers;
                    progress.logs += 1;
                    if sync {
                        progress.durable = covers;
                        progress.syncs += 1;
                    }
                    progress.wake_satisfied();
                    // A full queue holds the logger back until the applier catches up.
                    drop(progress);
                    let sent = to_apply.send((covers, batch)).is_ok();
                    progress = self.lock();
                    if !sent {
                        progress.broken.get_or_insert("the applier thread stopped; restart nightshift".into());
                    }
                }
            }
        }
    }

    fn run_applier<S: Sink>(&self, sink: &S, logged: mpsc::Receiver<(u64, S::Batch)>) {
        while let Ok((mut covers, first)) = logged.recv() {
            let mut batches = vec![first];
            while let Ok((later, batch)) = logged.try_recv() {
                covers = later;
                batches.push(batch);
            }
            if self.lock().broken.is_some() {
                continue;
            }
            let result = guarded(|| {
                sink.apply(batches).map_err(|e| format!("applying changes failed, restart nightshift: {e}"))?;
                sink.applied(covers);
                Ok(())
            });
            let mut progress = self.lock();
            match result {
                Ok(()) => {
                    progress.applied = covers;
                    progress.applies += 1;
                }
                Err(why) => {
                    progress.broken.get_or_insert(why);
                    // The logger answers everyone with the error.
                    self.work.notify_one();
                }
            }
            progress.wake_satisfied();
        }
    }

    /// Nothing failed, and everything logged is applied: sled holds every change.
    pub fn is_clean(&self) -> bool {
        let progress = self.lock();
        progress.broken.is_none() && progress.applied >= progress.logged
    }

    /// Why the store cannot take changes now: it is broken, or its log cannot be
    /// written (it keeps trying). `None` when all is well.
    pub fn trouble(&self) -> Option<String> {
        let progress = self.lock();
        progress.broken.clone().or_else(|| progress.stalled.clone())
    }

    /// Asks `run` to return once nothing is waiting.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
    }

    /// Log appends, log syncs and applier passes so far: concurrent writers share them.
    pub fn commits(&self) -> (u64, u64, u64) {
        let progress = self.lock();
        (progress.logs, progress.syncs, progress.applies)
    }
}

/// Runs one step of the pipeline; a panic (inside sled, say) becomes an error, so
/// writers are answered instead of parked forever.
fn guarded<T>(step: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
        .unwrap_or_else(|_| Err("the committer thread panicked; restart nightshift".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[derive(Default)]
    struct Counter {
        queued: Mutex<(u64, u64)>,
        applied: AtomicU64,
        flushes: AtomicU64,
        fail_flush: AtomicBool,
    }

    impl Counter {
        fn queue(&self) -> u64 {
            let mut queued = self.queued.lock().unwrap();
            queued.0 += 1;
            queued.1 += 1;
            queued.0
        }
    }

    impl Sink for Counter {
        type Batch = u64;
        fn take(&self) -> (u64, u64, bool) {
            let mut queued = self.queued.lock().unwrap();
            let batch = std::mem::take(&mut queued.1);
            (queued.0, batch, true)
        }
        fn log(&self, _: &mut u64, sync: bool) -> Result<(), String> {
            if sync { self.sync() } else { Ok(()) }
        }
        fn sync(&self) -> Result<(), String> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_micros(200));
            if self.fail_flush.load(Ordering::Relaxed) { Err("disk full".into()) } else { Ok(()) }
        }
        fn apply(&self, batches: Vec<u64>) -> Result<(), String> {
            self.applied.fetch_add(batches.iter().sum(), Ordering::Relaxed);
            Ok(())
        }
        fn applied(&self, _: u64) {}
    }

    fn start(sink: Arc<Counter>) -> (Arc<GroupCommit>, std::thread::JoinHandle<()>) {
        let commit = Arc::new(GroupCommit::default());
        let committer = {
            let commit = commit.clone();
            std::thread::spawn(move || commit.run(sink.as_ref()))
        };
        (commit, committer)
    }

    #[test]
    fn concurrent_writers_share_commits_and_every_change_is_applied_once() {
        let sink = Arc::new(Counter::default());
        let (commit, committer) = start(sink.clone());
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (commit, sink) = (commit.clone(), sink.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let ticket = sink.queue();
                        commit.wait(ticket, Stage::Durable).expect("commit");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        commit.stop();
        committer.join().expect("committer");
        assert_eq!(sink.applied.load(Ordering::Relaxed), 800);
        let flushes = sink.flushes.load(Ordering::Relaxed);
        assert!(flushes < 800, "800 writes took {flushes} flushes");
    }

    #[test]
    fn a_failed_flush_is_reported_to_the_writer() {
        let sink = Arc::new(Counter::default());
        sink.fail_flush.store(true, Ordering::Relaxed);
        let (commit, committer) = start(sink.clone());
        let ticket = sink.queue();
        let error = commit.wait(ticket, Stage::Durable).unwrap_err();
        assert!(error.contains("disk full"), "{error}");
        commit.stop();
        committer.join().expect("committer");
    }

    #[test]
    fn a_stalled_log_refuses_while_it_fails_and_carries_on_once_it_can_write() {
        let sink = Arc::new(Counter::default());
        sink.fail_flush.store(true, Ordering::Relaxed);
        let (commit, committer) = start(sink.clone());
        let first = sink.queue();
        assert!(commit.wait(first, Stage::Durable).is_err());
        assert!(commit.trouble().is_some_and(|why| why.contains("disk full")));
        sink.fail_flush.store(false, Ordering::Relaxed);
        // The kept batch goes through on a later try; so does what follows it.
        let second = sink.queue();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while commit.wait(second, Stage::Applied).is_err() {
            assert!(std::time::Instant::now() < deadline, "the log never recovered");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(commit.trouble(), None);
        assert_eq!(sink.applied.load(Ordering::Relaxed), 2, "the batch that failed was kept and applied once");
        commit.stop();
        committer.join().expect("committer");
    }
}
