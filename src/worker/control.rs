//! `RunControl`: what a worker asks of the engine while it runs one claimed run (claim,
//! start, heartbeat, activities, log, complete), every call carrying the lease epoch.
//! The local pool in `serve` calls the store in process; `nightshift worker` calls the
//! server's worker API over HTTP (`remote.rs`).

use serde_json::{Map, Value};

use crate::runs::{Completion, Epoch, NewActivity, RunId};
use crate::store::{Claim, StoreError};

/// Why a call to the engine did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The worker no longer holds the run (a newer epoch, cancelled, finished, deleted):
    /// it must stop the run and report nothing more.
    #[error("the run is no longer this worker's: {0}")]
    Lost(String),
    /// The engine could not be reached or refused for now; the call may be tried again.
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
    /// The engine refused the request as malformed or unauthorized: retrying will not help.
    #[error("the engine refused the request: {0}")]
    Refused(String),
}

/// How a store error reads to a worker: a run it no longer holds, or trouble to wait out.
impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> ControlError {
        match error {
            StoreError::StaleLease { .. } | StoreError::WrongState { .. } | StoreError::NoSuchRun(_) => {
                ControlError::Lost(error.to_string())
            }
            StoreError::Io(_)
            | StoreError::Unavailable(_)
            | StoreError::Locked { .. }
            | StoreError::Open { .. }
            | StoreError::Corrupt { .. } => ControlError::Unavailable(error.to_string()),
        }
    }
}

/// The engine as one worker sees it. Implementations are shared by a pool's threads.
pub trait RunControl: Send + Sync {
    /// Secret values besides the run's own that the engine knows (other automations',
    /// hooks'), masked in the run's output too. None by default: a remote worker knows
    /// only the secrets of the runs it is given.
    fn known_secrets(&self) -> std::sync::Arc<Vec<String>> {
        std::sync::Arc::default()
    }

    /// Leases the oldest run that may start, as `worker`; `None` when there is none.
    fn claim(&self, worker: &str) -> Result<Option<Claim>, ControlError>;
    /// The workspace is ready and the run is starting.
    fn started(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError>;
    /// Extends the lease.
    fn heartbeat(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError>;
    /// Appends to the run's timeline, in order.
    fn activities(&self, run: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), ControlError>;
    /// Appends masked text to the run's log.
    fn log(&self, run: RunId, epoch: Epoch, text: String) -> Result<(), ControlError>;
    /// Gives the run back unfinished (the worker is stopping): it is queued again at once,
    /// and the attempt does not count.
    fn release(&self, run: RunId, epoch: Epoch, reason: &str) -> Result<(), ControlError>;
    /// Ends the attempt. `memory` is what the agent wrote to `$NIGHTSHIFT_MEMORY_OUT`.
    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<(), ControlError>;
}
