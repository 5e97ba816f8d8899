//! The engine's side of workers: what a worker may ask of the server (claim, start,
//! heartbeat, activities, log, complete), for the local pool (`LocalControl`, in
//! process) and for remote workers (the worker API in `http/`). A remote worker is known
//! by its token: its leases are named `{name}@{token id}`, and only the holder of a
//! run's lease may touch it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Server;
use crate::runs::{Completion, Epoch, NewActivity, Run, RunId};
use crate::store::{Claim, StoreError};
use crate::worker::{ControlError, RunControl};

/// The longest lease a worker may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);
/// The shortest.
pub const MIN_LEASE: Duration = Duration::from_secs(2);

/// A remote worker: the lease name it claims as, `{name}@{token id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerId {
    pub holder: String,
}

impl WorkerId {
    /// A remote worker calling itself `name` with `token`: `name@` the token's id (the
    /// start of its SHA-256, so the token itself is never stored).
    pub fn remote(name: &str, token: &str) -> WorkerId {
        WorkerId { holder: format!("{name}@{}", token_id(token)) }
    }

    /// Whether a lease name is a remote worker's: only they carry `@` (the worker API
    /// refuses names with one).
    pub fn is_remote_holder(holder: &str) -> bool {
        holder.contains('@')
    }

    /// Whether this worker (or another process with the same token) holds `run`.
    fn holds(&self, run: &Run) -> bool {
        let Some(lease) = &run.lease else { return false };
        let token = |holder: &str| holder.rsplit_once('@').map(|(_, token)| token.to_string());
        token(&lease.worker).is_some_and(|held| Some(held) == token(&self.holder))
    }
}

/// The first 12 hex digits of the token's SHA-256.
pub fn token_id(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().take(6).map(|byte| format!("{byte:02x}")).collect()
}

/// What a worker may do to a run it holds, for the local pool and the worker API alike;
/// the lease epoch fences each call. The worker API checks `check_holder` first.
impl Server {
    /// Leases the oldest run that may start, naming the lease `holder`.
    pub fn claim_run(&self, holder: &str, lease_for: Duration) -> Result<Option<Claim>, StoreError> {
        let now = Utc::now();
        self.saw_claimer(holder, now);
        // A remote worker's mirror lacks the commits other runs held (docs/parallel.md):
        // runs with staging go to the local pool only.
        let staged = !WorkerId::is_remote_holder(holder);
        let claim = self.store.claim_for(holder, lease_for.clamp(MIN_LEASE, MAX_LEASE), now, staged)?;
        if let Some(claim) = &claim {
            self.metrics.claimed(&claim.run, now);
            // What an earlier attempt's worker left held back is not this attempt's.
            self.held_logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&claim.run.id);
        }
        Ok(claim)
    }

    /// Refuses a run whose lease `worker` does not hold, as if it were gone, so a remote
    /// worker learns nothing of other workers' runs.
    pub fn check_holder(&self, worker: &WorkerId, id: RunId) -> Result<(), StoreError> {
        match self.store.run(id)? {
            Some(run) if worker.holds(&run) => Ok(()),
            _ => Err(StoreError::NoSuchRun(id)),
        }
    }

    pub fn run_started(&self, id: RunId, epoch: Epoch) -> Result<(), StoreError> {
        self.store.mark_running(id, epoch, Utc::now()).map(drop)
    }

    pub fn run_heartbeat(&self, id: RunId, epoch: Epoch, lease_for: Duration) -> Result<(), StoreError> {
        self.store.heartbeat(id, epoch, lease_for.clamp(MIN_LEASE, MAX_LEASE), Utc::now()).map(drop)
    }

    pub fn run_activities(&self, id: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), StoreError> {
        self.metrics.activities(&activities);
        for activity in activities {
            self.store.append_activity(id, epoch, activity, Utc::now())?;
        }
        Ok(())
    }

    pub fn run_log(&self, id: RunId, epoch: Epoch, text: &str) -> Result<(), StoreError> {
        self.store.append_log(id, epoch, text, Utc::now()).map(drop)
    }

    /// Appends a remote worker's log piece, masked for every secret the engine knows.
    /// A secret with a line break can fall across two pieces, so what may be its start is
    /// held back until the next piece of the same attempt, or its end
    /// (`flush_remote_log`).
    pub fn remote_log(&self, id: RunId, epoch: Epoch, text: &str) -> Result<(), StoreError> {
        let masker = Arc::clone(&self.current().masker);
        let mut held = self.held_logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = match held.remove(&id) {
            Some((held_epoch, bytes)) if held_epoch == epoch => bytes,
            _ => Vec::new(),
        };
        let mut stream = masker.resume(before);
        let mut out = Vec::with_capacity(text.len());
        stream.push(text.as_bytes(), &mut out);
        let mut rest = stream.into_held();
        // A piece ends on a whole character: the bytes of one cut short wait with the rest.
        let whole = match std::str::from_utf8(&out) {
            Ok(_) => out.len(),
            Err(error) => error.valid_up_to(),
        };
        if whole < out.len() {
            rest.splice(0..0, out.drain(whole..));
        }
        if !rest.is_empty() {
            held.insert(id, (epoch, rest));
        }
        drop(held);
        if out.is_empty() {
            return Ok(());
        }
        self.run_log(id, epoch, &String::from_utf8_lossy(&out))
    }

    /// A remote attempt ends: what `remote_log` held back of it goes in, masked.
    pub fn flush_remote_log(&self, id: RunId, epoch: Epoch) -> Result<(), StoreError> {
        let held = self.held_logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        let Some((held_epoch, bytes)) = held else { return Ok(()) };
        if held_epoch != epoch {
            return Ok(());
        }
        let masker = Arc::clone(&self.current().masker);
        let mut out = Vec::with_capacity(bytes.len());
        masker.resume(bytes).finish(&mut out);
        self.run_log(id, epoch, &String::from_utf8_lossy(&out))
    }

    pub fn run_release(&self, id: RunId, epoch: Epoch, reason: &str) -> Result<(), StoreError> {
        self.store.release(id, epoch, reason, Utc::now())?;
        self.wakeup.notify();
        Ok(())
    }

    /// Ends the attempt through the current automations' `after_run`.
    pub fn run_complete(
        &self,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<Run, StoreError> {
        let run = self.current().pipeline.finish_with_memory(id, epoch, completion, memory, Utc::now())?;
        self.metrics.run_changed(&run);
        self.wakeup.notify();
        Ok(run)
    }
}

/// The local pool's way to the engine: the server's methods, in process.
pub struct LocalControl {
    server: Arc<Server>,
    lease_for: Duration,
}

impl LocalControl {
    pub fn new(server: Arc<Server>, lease_for: Duration) -> LocalControl {
        LocalControl { server, lease_for }
    }
}

impl RunControl for LocalControl {
    fn known_secrets(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.server.current().secrets)
    }

    fn claim(&self, worker: &str) -> Result<Option<Claim>, ControlError> {
        Ok(self.server.claim_run(worker, self.lease_for)?)
    }

    fn started(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        Ok(self.server.run_started(run, epoch)?)
    }

    fn heartbeat(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        Ok(self.server.run_heartbeat(run, epoch, self.lease_for)?)
    }

    fn activities(&self, run: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), ControlError> {
        Ok(self.server.run_activities(run, epoch, activities)?)
    }

    fn log(&self, run: RunId, epoch: Epoch, text: String) -> Result<(), ControlError> {
        Ok(self.server.run_log(run, epoch, &text)?)
    }

    fn release(&self, run: RunId, epoch: Epoch, reason: &str) -> Result<(), ControlError> {
        Ok(self.server.run_release(run, epoch, reason)?)
    }

    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<(), ControlError> {
        self.server.run_complete(run, epoch, completion, memory)?;
        Ok(())
    }
}
