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

/// Who is asking: the lease name it claims as, and the token it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerId {
    pub holder: String,
}

impl WorkerId {
    /// The local pool's worker `name`.
    pub fn local(name: &str) -> WorkerId {
        WorkerId { holder: name.to_string() }
    }

    /// A remote worker calling itself `name` with `token`: `name@` the token's id (the
    /// start of its SHA-256, so the token itself is never stored).
    pub fn remote(name: &str, token: &str) -> WorkerId {
        WorkerId { holder: format!("{name}@{}", token_id(token)) }
    }

    /// Whether this worker (or another process with the same token) holds `run`.
    fn holds(&self, run: &Run) -> bool {
        let Some(lease) = &run.lease else { return false };
        match self.holder.split_once('@') {
            Some((_, token)) => lease.worker.rsplit_once('@').is_some_and(|(_, held)| held == token),
            None => lease.worker == self.holder,
        }
    }
}

/// The first 12 hex digits of the token's SHA-256.
pub fn token_id(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().take(6).map(|byte| format!("{byte:02x}")).collect()
}

impl Server {
    /// Leases the oldest run that may start.
    pub fn claim_run(&self, worker: &WorkerId, lease_for: Duration) -> Result<Option<Claim>, StoreError> {
        self.store.claim(&worker.holder, lease_for.clamp(MIN_LEASE, MAX_LEASE), Utc::now())
    }

    /// Refuses a run whose lease `worker` does not hold, as if it were gone, so a worker
    /// learns nothing of other workers' runs.
    fn check_holder(&self, worker: &WorkerId, id: RunId) -> Result<(), StoreError> {
        match self.store.run(id)? {
            Some(run) if worker.holds(&run) => Ok(()),
            _ => Err(StoreError::NoSuchRun(id)),
        }
    }

    pub fn run_started(&self, worker: &WorkerId, id: RunId, epoch: Epoch) -> Result<(), StoreError> {
        self.check_holder(worker, id)?;
        self.store.mark_running(id, epoch, Utc::now()).map(drop)
    }

    pub fn run_heartbeat(
        &self,
        worker: &WorkerId,
        id: RunId,
        epoch: Epoch,
        lease_for: Duration,
    ) -> Result<(), StoreError> {
        self.check_holder(worker, id)?;
        self.store.heartbeat(id, epoch, lease_for.clamp(MIN_LEASE, MAX_LEASE), Utc::now()).map(drop)
    }

    pub fn run_activities(
        &self,
        worker: &WorkerId,
        id: RunId,
        epoch: Epoch,
        activities: Vec<NewActivity>,
    ) -> Result<(), StoreError> {
        self.check_holder(worker, id)?;
        for activity in activities {
            self.store.append_activity(id, epoch, activity, Utc::now())?;
        }
        Ok(())
    }

    pub fn run_log(&self, worker: &WorkerId, id: RunId, epoch: Epoch, text: &str) -> Result<(), StoreError> {
        self.check_holder(worker, id)?;
        self.store.append_log(id, epoch, text, Utc::now()).map(drop)
    }

    pub fn run_release(&self, worker: &WorkerId, id: RunId, epoch: Epoch, reason: &str) -> Result<(), StoreError> {
        self.check_holder(worker, id)?;
        self.store.release(id, epoch, reason, Utc::now())?;
        self.wakeup.notify();
        Ok(())
    }

    /// Ends the attempt through the current automations' `after_run`.
    pub fn run_complete(
        &self,
        worker: &WorkerId,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<Run, StoreError> {
        self.check_holder(worker, id)?;
        let run = self.current().pipeline.finish_with_memory(id, epoch, completion, memory, Utc::now())?;
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
    fn claim(&self, worker: &str) -> Result<Option<Claim>, ControlError> {
        self.server.claim_run(&WorkerId::local(worker), self.lease_for).map_err(ControlError::from)
    }

    fn started(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        self.server.store.mark_running(run, epoch, Utc::now()).map(drop).map_err(ControlError::from)
    }

    fn heartbeat(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        self.server.store.heartbeat(run, epoch, self.lease_for, Utc::now()).map(drop).map_err(ControlError::from)
    }

    fn activities(&self, run: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), ControlError> {
        for activity in activities {
            self.server.store.append_activity(run, epoch, activity, Utc::now()).map_err(ControlError::from)?;
        }
        Ok(())
    }

    fn log(&self, run: RunId, epoch: Epoch, text: String) -> Result<(), ControlError> {
        self.server.store.append_log(run, epoch, &text, Utc::now()).map(drop).map_err(ControlError::from)
    }

    fn release(&self, run: RunId, epoch: Epoch, reason: &str) -> Result<(), ControlError> {
        self.server.store.release(run, epoch, reason, Utc::now())?;
        self.server.wakeup.notify();
        Ok(())
    }

    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<(), ControlError> {
        let pipeline = self.server.current().pipeline.clone();
        pipeline
            .finish_with_memory(run, epoch, completion, memory, Utc::now())
            .map(drop)
            .map_err(ControlError::from)?;
        self.server.wakeup.notify();
        Ok(())
    }
}
