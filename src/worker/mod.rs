//! The worker side of a run: where it does its work and how. For now, the repository
//! mirrors, the per-run workspaces checked out from them, and the phases run in them as
//! child processes.

pub mod phase;
pub mod workspace;
