//! The worker side of a run: where it does its work and how. For now, the repository
//! mirrors, the per-run workspaces checked out from them (overlay mounts or worktrees),
//! the phases run in them as child processes, the adapters that read an agent's output,
//! and what a run changed and its push.

pub mod output;
mod overlay;
pub mod phase;
pub mod results;
pub mod workspace;
