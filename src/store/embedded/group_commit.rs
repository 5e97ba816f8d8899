//! Group commit: concurrent writers share one flush. Each writer applies its batch, takes
//! a ticket, and waits until a flush that started after its ticket has finished; whoever
//! finds no flush running performs one for everyone waiting.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
struct Progress {
    /// Tickets handed out: each stands for writes applied before it was taken.
    issued: u64,
    /// Every ticket up to this one is on disk.
    durable: u64,
    flushing: bool,
    flushes: u64,
}

#[derive(Debug, Default)]
pub struct GroupCommit {
    progress: Mutex<Progress>,
    flushed: Condvar,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket covering every write applied before this call.
    pub fn ticket(&self) -> u64 {
        let mut progress = self.lock();
        progress.issued += 1;
        progress.issued
    }

    /// Returns once `ticket` is durable, calling `flush` when no one else is flushing.
    pub fn wait_durable(&self, ticket: u64, flush: impl Fn() -> Result<(), String>) -> Result<(), String> {
        let mut progress = self.lock();
        loop {
            if progress.durable >= ticket {
                return Ok(());
            }
            if progress.flushing {
                progress = self.flushed.wait(progress).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            progress.flushing = true;
            let covers = progress.issued;
            drop(progress);
            let result = flush();
            progress = self.lock();
            progress.flushing = false;
            if result.is_ok() {
                progress.durable = progress.durable.max(covers);
                progress.flushes += 1;
            }
            self.flushed.notify_all();
            result?;
        }
    }

    /// Flushes performed so far (for statistics and benchmarks).
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn concurrent_writers_share_flushes_and_all_become_durable() {
        let commit = Arc::new(GroupCommit::default());
        let calls = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (commit, calls) = (commit.clone(), calls.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let ticket = commit.ticket();
                        commit
                            .wait_durable(ticket, || {
                                calls.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                Ok(())
                            })
                            .expect("flush");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer");
        }
        let flushes = calls.load(Ordering::Relaxed);
        assert!(flushes < 800, "800 writes took {flushes} flushes");
        assert_eq!(commit.flushes(), flushes);
    }

    #[test]
    fn a_failed_flush_is_reported_and_a_later_one_can_succeed() {
        let commit = GroupCommit::default();
        let ticket = commit.ticket();
        assert_eq!(commit.wait_durable(ticket, || Err("disk full".into())), Err("disk full".into()));
        assert_eq!(commit.wait_durable(ticket, || Ok(())), Ok(()));
    }
}
