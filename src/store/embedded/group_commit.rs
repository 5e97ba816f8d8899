//! Group commit: concurrent writers share one sled batch and one flush. Writers queue
//! their changes under the store's lock, take a ticket and park; a committer thread
//! takes everything queued, applies it as one batch, flushes, and wakes exactly the
//! writers the commit covered. While it flushes, the next batch gathers.

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

/// Where queued changes go: taken as one batch, applied, then made durable.
pub trait Sink {
    type Batch;
    /// Everything queued so far, and the newest ticket it covers.
    fn take(&self) -> (u64, Self::Batch);
    fn apply(&self, batch: Self::Batch) -> Result<(), String>;
    /// Changes up to `ticket` are applied (the sink may drop its read overlay of them).
    fn applied(&self, ticket: u64);
    fn flush(&self) -> Result<(), String>;
}

/// How far a caller needs its changes to have got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Visible to every reader; lost in a crash (claims, heartbeats).
    Applied,
    /// On disk.
    Durable,
}

#[derive(Debug, Default)]
struct Progress {
    applied: u64,
    durable: u64,
    /// The newest ticket anyone waits for, and whether someone needs it on disk.
    wanted: u64,
    wanted_durable: u64,
    waiting: Vec<(u64, Stage, Wake)>,
    commits: u64,
    /// A failed commit may have lost queued changes: the store refuses further work.
    broken: Option<String>,
    stopping: bool,
    /// The committer sleeps on `work`; only then does a new waiter need to signal it
    /// (a busy committer looks again before it sleeps), which saves a syscall per write.
    committer_idle: bool,
}

impl Progress {
    fn reached(&self, ticket: u64, stage: Stage) -> bool {
        match stage {
            Stage::Applied => self.applied >= ticket,
            Stage::Durable => self.durable >= ticket,
        }
    }

    /// Wakes the waiters the progress so far satisfies.
    fn wake_satisfied(&mut self) {
        let (applied, durable, broken) = (self.applied, self.durable, self.broken.is_some());
        self.waiting.retain(|(ticket, stage, wake)| {
            let done = broken || *ticket <= if *stage == Stage::Applied { applied } else { durable };
            if done {
                wake.wake();
            }
            !done
        });
    }

    /// Registers a waiter and says what the committer must do for it.
    fn register(&mut self, ticket: u64, stage: Stage, wake: Wake) {
        self.wanted = self.wanted.max(ticket);
        if stage == Stage::Durable {
            self.wanted_durable = self.wanted_durable.max(ticket);
        }
        self.waiting.push((ticket, stage, wake));
    }
}

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
        if !progress.reached(ticket, stage) && progress.broken.is_none() {
            progress.register(ticket, stage, Wake::Thread(std::thread::current()));
            self.signal(&progress);
        }
        loop {
            if let Some(why) = &progress.broken {
                return Err(why.clone());
            }
            if progress.reached(ticket, stage) {
                return Ok(());
            }
            drop(progress);
            std::thread::park();
            progress = self.lock();
        }
    }

    fn signal(&self, progress: &Progress) {
        if progress.committer_idle {
            self.work.notify_one();
        }
    }

    /// `wait` for async callers: ready once `ticket` has reached `stage`.
    pub fn poll(&self, ticket: u64, stage: Stage, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let mut progress = self.lock();
        if let Some(why) = &progress.broken {
            return Poll::Ready(Err(why.clone()));
        }
        if progress.reached(ticket, stage) {
            return Poll::Ready(Ok(()));
        }
        progress.register(ticket, stage, Wake::Task(cx.waker().clone()));
        self.signal(&progress);
        Poll::Pending
    }

    /// The committer thread's loop: commits whenever someone waits, until `stop`.
    pub fn run<S: Sink>(&self, sink: &S) {
        let mut progress = self.lock();
        loop {
            let pending = progress.wanted > progress.applied || progress.wanted_durable > progress.durable;
            if !pending {
                if progress.stopping {
                    return;
                }
                progress.committer_idle = true;
                progress = self.work.wait(progress).unwrap_or_else(PoisonError::into_inner);
                progress.committer_idle = false;
                continue;
            }
            if progress.broken.is_some() {
                progress.wake_satisfied();
                progress.applied = progress.wanted;
                progress.durable = progress.wanted_durable.max(progress.durable);
                continue;
            }
            drop(progress);
            // A panic here (inside sled, say) must not leave writers parked forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(sink)))
                .unwrap_or_else(|_| Err("the committer thread panicked; restart nightshift".to_string()));
            progress = self.lock();
            if let Err(why) = result {
                progress.broken.get_or_insert(why);
            }
            progress.wake_satisfied();
        }
    }

    /// Applies and flushes everything queued; wakes those who only needed it applied
    /// before the flush.
    fn commit<S: Sink>(&self, sink: &S) -> Result<(), String> {
        let (covers, batch) = sink.take();
        sink.apply(batch).map_err(|e| format!("applying changes failed, restart nightshift: {e}"))?;
        sink.applied(covers);
        let flush = {
            let mut progress = self.lock();
            progress.applied = progress.applied.max(covers);
            progress.wake_satisfied();
            progress.wanted_durable > progress.durable
        };
        if flush {
            sink.flush().map_err(|e| format!("flushing to disk failed, restart nightshift: {e}"))?;
        }
        let mut progress = self.lock();
        if flush {
            progress.durable = progress.durable.max(covers);
        }
        progress.commits += 1;
        Ok(())
    }

    /// Asks `run` to return once nothing is waiting.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
    }

    /// Commits (one batch each, flushed when anyone needed it) so far.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }
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
        fn take(&self) -> (u64, u64) {
            let mut queued = self.queued.lock().unwrap();
            let batch = std::mem::take(&mut queued.1);
            (queued.0, batch)
        }
        fn apply(&self, batch: u64) -> Result<(), String> {
            self.applied.fetch_add(batch, Ordering::Relaxed);
            Ok(())
        }
        fn applied(&self, _: u64) {}
        fn flush(&self) -> Result<(), String> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_micros(200));
            if self.fail_flush.load(Ordering::Relaxed) { Err("disk full".into()) } else { Ok(()) }
        }
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
}
