//! The worker side of a run: claiming runs (`pool.rs`, through a `RunControl`: the store
//! in process, or `serve`'s worker API over HTTP in `remote.rs`), one attempt of a run
//! start to end (`runner.rs`, with `attempt.rs` renewing its lease and sending its
//! output), the repository mirrors and per-run workspaces (overlay
//! mounts or worktrees), the phases run in them as child processes, the adapters that
//! read an agent's output, the streamed log, what a run changed and its push, and what a
//! run of parallel work does besides its agent (`staging.rs`: merges, held commits,
//! checks, answers).

mod attempt;
pub mod control;
pub mod mask;
mod objects;
pub mod output;
mod overlay;
pub mod phase;
pub mod pool;
pub mod remote;
pub mod results;
pub mod runlog;
pub mod runner;
pub mod staging;
pub mod workspace;

pub use control::{ControlError, RunControl};
pub use pool::{Pool, Wakeup};
pub use runner::{Runner, WorkerSettings};
