//! A pool of worker threads, each claiming a run, running it and claiming the next.
//! Idle threads sleep until `Wakeup` says runs were queued, or `idle_poll` passes (for
//! retries whose wait ended), so an idle pool costs nothing measurable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::control::ControlError;
use super::runner::Runner;

/// Tells idle workers that there may be runs to claim: threads wait on it with `wait`,
/// async tasks (the worker API's claims) with `changed`.
#[derive(Debug)]
pub struct Wakeup {
    state: Mutex<WakeupState>,
    changed: Condvar,
    generations: tokio::sync::watch::Sender<u64>,
}

impl Default for Wakeup {
    fn default() -> Wakeup {
        Wakeup { state: Mutex::default(), changed: Condvar::new(), generations: tokio::sync::watch::Sender::new(0) }
    }
}

#[derive(Debug, Default)]
struct WakeupState {
    generation: u64,
    closed: bool,
}

impl Wakeup {
    pub fn new() -> Wakeup {
        Wakeup::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WakeupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every idle worker.
    pub fn notify(&self) {
        let generation = {
            let mut state = self.state();
            state.generation += 1;
            state.generation
        };
        self.changed.notify_all();
        self.generations.send_replace(generation);
    }

    /// A receiver whose `changed()` resolves at the next notify (or close).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generations.subscribe()
    }

    /// Wakes every waiter now and from now on: the server is stopping.
    pub fn close(&self) {
        self.state().closed = true;
        self.notify();
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// The count of notifications so far, to pass to `wait`.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Waits until a notify after `seen` (one may have come already), or `timeout`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.state();
        let _ = self.changed.wait_timeout_while(guard, timeout, |state| state.generation == seen && !state.closed);
    }
}

/// Running worker threads; `stop` ends them.
pub struct Pool {
    runner: Arc<Runner>,
    wakeup: Arc<Wakeup>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `size` threads named `{name}-{n}`, which is also how their leases name them.
    pub fn start(
        runner: Arc<Runner>,
        name: &str,
        size: usize,
        wakeup: Arc<Wakeup>,
        idle_poll: Duration,
    ) -> std::io::Result<Pool> {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(size);
        for n in 1..=size {
            let worker = format!("{name}-{n}");
            let (runner, wakeup, stopping) = (Arc::clone(&runner), Arc::clone(&wakeup), Arc::clone(&stopping));
            let thread = std::thread::Builder::new()
                .name(worker.clone())
                .spawn(move || work(&runner, &worker, &wakeup, &stopping, idle_poll))?;
            threads.push(thread);
        }
        tracing::info!(workers = size, "Worker pool started");
        Ok(Pool { runner, wakeup, stopping, threads })
    }

    /// Stops claiming, stops the runs in progress (given back to the engine, so they are
    /// queued again) and waits for the threads.
    pub fn stop(self) {
        self.stopper().stop();
        self.join();
    }

    /// A way to stop the pool from another thread while this one `join`s.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            runner: Arc::clone(&self.runner),
            wakeup: Arc::clone(&self.wakeup),
            stopping: Arc::clone(&self.stopping),
        }
    }

    /// Waits for the threads, which only end once `stop` is called from elsewhere or
    /// the engine refuses this worker.
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Stops a pool's threads: no more claims, runs in progress stopped.
#[derive(Clone)]
pub struct Stopper {
    runner: Arc<Runner>,
    wakeup: Arc<Wakeup>,
    stopping: Arc<AtomicBool>,
}

impl Stopper {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.runner.shutdown();
        self.wakeup.notify();
    }

    pub fn stopped(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits until no attempt is under way (their phases stopped, their workspaces
    /// cleaned up), or `limit`. Threads waiting for a claim are not waited for.
    pub fn wait_for_runs(&self, limit: Duration) {
        let until = std::time::Instant::now() + limit;
        while self.runner.busy() > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn work(runner: &Runner, worker: &str, wakeup: &Wakeup, stopping: &AtomicBool, idle_poll: Duration) {
    let mut backoff = Duration::from_millis(500);
    while !stopping.load(Ordering::SeqCst) {
        let seen = wakeup.generation();
        match runner.control().claim(worker) {
            Ok(Some(claim)) => {
                backoff = Duration::from_millis(500);
                runner.execute(claim);
            }
            Ok(None) => wakeup.wait(seen, idle_poll),
            Err(ControlError::Refused(why)) => {
                tracing::error!(worker, "The engine refuses this worker, which stops: {why}");
                return;
            }
            Err(error) => {
                tracing::warn!(worker, %error, "Cannot claim a run; trying again in {backoff:?}");
                wakeup.wait(seen, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
