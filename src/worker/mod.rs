//! The worker side of a run: where it does its work. For now, the repository mirrors and
//! the per-run workspaces checked out from them.

pub mod workspace;
