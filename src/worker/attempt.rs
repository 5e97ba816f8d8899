//! One attempt's link to the engine while it runs: the monitor thread that renews the
//! lease and sends what the phases produce (activities and the bounded log, in order),
//! and whether the lease was lost. The phase's own thread only queues, so a slow engine
//! never stalls the agent or its timeout.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::control::{ControlError, RunControl};
use super::phase::CancelToken;
use super::runlog::RunLog;
use super::runner::{WorkerSettings, lock};
use crate::runs::{Epoch, NewActivity, RunId};

/// Pending log text is sent once it reaches this, without waiting for the next tick.
pub(super) const LOG_SEND_AT: usize = 64 * 1024;

/// One attempt's link to the engine: its cancel token, what it has to send (log and
/// activities, sent in order by one thread at a time: the monitor while it runs, then the
/// runner), and whether the lease was lost.
pub(super) struct Attempt {
    control: Arc<dyn RunControl>,
    run: RunId,
    pub(super) epoch: Epoch,
    pub(super) cancel: CancelToken,
    outbox: Mutex<Outbox>,
    /// Wakes the monitor to send now; `None` once it has stopped.
    nudge: Mutex<Option<mpsc::Sender<()>>>,
    lost: Mutex<Option<String>>,
}

struct Outbox {
    log: RunLog,
    activities: Vec<NewActivity>,
}

/// The monitor thread; dropping it stops the thread and waits for it.
pub(super) struct Monitor {
    attempt: Arc<Attempt>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        lock(&self.attempt.nudge).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Attempt {
    pub(super) fn new(control: Arc<dyn RunControl>, run: RunId, epoch: Epoch, log_limit: usize) -> Arc<Attempt> {
        Arc::new(Attempt {
            control,
            run,
            epoch,
            cancel: CancelToken::new(),
            outbox: Mutex::new(Outbox { log: RunLog::new(log_limit), activities: Vec::new() }),
            nudge: Mutex::new(None),
            lost: Mutex::new(None),
        })
    }

    /// Starts the thread that sends what the phases produce (when nudged, else every
    /// `heartbeat_every`) and renews the lease every `heartbeat_every`. A lease the engine
    /// says is gone, or one it could not renew for nearly a whole lease, stops the attempt.
    pub(super) fn monitor(self: &Arc<Attempt>, settings: &WorkerSettings) -> Monitor {
        let (nudge, nudged) = mpsc::channel::<()>();
        *lock(&self.nudge) = Some(nudge);
        let attempt = Arc::clone(self);
        let (every, lease_for) = (settings.heartbeat_every, settings.lease_for);
        let thread = std::thread::Builder::new().name(format!("nightshift-{}", self.run)).spawn(move || {
            let (mut renewed, mut beat) = (Instant::now(), Instant::now());
            loop {
                if let Err(RecvTimeoutError::Disconnected) = nudged.recv_timeout(every.saturating_sub(beat.elapsed())) {
                    return;
                }
                attempt.send(false);
                if beat.elapsed() < every {
                    continue;
                }
                beat = Instant::now();
                match attempt.control.heartbeat(attempt.run, attempt.epoch) {
                    Ok(()) => renewed = Instant::now(),
                    Err(ControlError::Lost(why)) => return attempt.lose(why),
                    // Given up a little before the engine would, so the run is stopped
                    // before another worker can claim it.
                    Err(error) if renewed.elapsed() >= lease_for.saturating_sub(every * 2) => {
                        return attempt.lose(format!("the lease was not renewed for {lease_for:?}: {error}"));
                    }
                    Err(error) => tracing::warn!(run_id = %attempt.run, %error, "Heartbeat failed"),
                }
            }
        });
        match thread {
            Ok(thread) => Monitor { attempt: Arc::clone(self), thread: Some(thread) },
            Err(error) => {
                lock(&self.nudge).take();
                self.lose(format!("cannot start the heartbeat thread: {error}"));
                Monitor { attempt: Arc::clone(self), thread: None }
            }
        }
    }

    pub(super) fn lose(&self, why: String) {
        lock(&self.lost).get_or_insert(why);
        self.cancel.cancel();
    }

    pub(super) fn lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    pub(super) fn stop_reason(&self) -> String {
        self.lost().unwrap_or_else(|| "the worker is stopping".to_string())
    }

    fn nudge(&self) {
        if let Some(nudge) = lock(&self.nudge).as_ref() {
            let _ = nudge.send(());
        }
    }

    pub(super) fn log_line(&self, line: &str) {
        let full = {
            let mut outbox = lock(&self.outbox);
            outbox.log.push(line);
            outbox.log.pending_bytes() >= LOG_SEND_AT
        };
        if full {
            self.nudge();
        }
    }

    pub(super) fn activities(&self, activities: Vec<NewActivity>) {
        if !activities.is_empty() {
            lock(&self.outbox).activities.extend(activities);
            self.nudge();
        }
    }

    /// Sends what is queued: the activities, then the log; at the end (`last`), the log's
    /// cut marker and tail too. Only the monitor calls it while it runs, then the runner.
    pub(super) fn send(&self, last: bool) {
        let (activities, text) = {
            let mut outbox = lock(&self.outbox);
            let text = if last { outbox.log.finish() } else { outbox.log.take_pending() };
            (std::mem::take(&mut outbox.activities), text)
        };
        if !activities.is_empty() {
            match self.control.activities(self.run, self.epoch, activities) {
                Ok(()) => {}
                Err(ControlError::Lost(why)) => return self.lose(why),
                Err(error) => tracing::warn!(run_id = %self.run, %error, "Cannot record activities"),
            }
        }
        let Some(text) = text else { return };
        match self.control.log(self.run, self.epoch, text) {
            Ok(()) => {}
            Err(ControlError::Lost(why)) => self.lose(why),
            Err(error) => tracing::warn!(run_id = %self.run, %error, "Cannot send the log; a piece of it is lost"),
        }
    }
}
