//! Runs: the record, its state machine, activities, memory entries, and the pure rules
//! of flow control, retries and path scopes that every store backend applies the same
//! way.

mod activity;
pub mod clock;
pub mod flow;
pub mod followup;
mod memory;
pub mod outbox;
pub mod queue;
pub mod retry;
mod run;
pub mod scope;

pub use activity::{Activity, ActivityKind, NewActivity};
pub use memory::{MemoryChange, MemoryEntry, MemoryWrite};
pub use run::{Completion, Epoch, Lease, Run, RunId, RunResult, RunState, SkipReason, group_key};
