//! The worker side of a run: where it does its work and how. For now, the repository
//! mirrors, the per-run workspaces checked out from them, the phases run in them as
//! child processes, and the adapters that read an agent's output.

pub mod output;
pub mod phase;
pub mod workspace;
