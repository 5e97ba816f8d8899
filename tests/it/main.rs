//! Integration tests: one binary, one module per boundary.

mod alertmanager;
mod backends;
mod board;
mod cli;
mod crash;
mod cron_schedule;
mod follow_ups;
mod full_disk;
mod git;
mod hooks;
mod ledger_cli;
mod limits;
mod metrics;
mod notify_github;
mod notify_serve;
mod notify_slack;
mod notify_webhook;
mod outbox;
mod parallel;
mod parallel_store;
mod parallel_worker;
mod providers;
mod requires;
mod rules;
mod sandbox_bypass;
mod sandbox_egress;
mod sandbox_jail;
mod sandbox_limits;
mod sandbox_runs;
mod scaling;
mod schema;
mod serving;
mod signatures;
mod status;
mod store;
mod tidy;
mod validate;
mod worker_output;
mod worker_phase;
mod worker_results;
mod workers;
mod workspace;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `files` (name, text) into a fresh temporary directory.
pub fn temp_dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Loads the automations under `dir` with the built-in profiles only.
pub fn load(dir: &Path) -> (nightshift::catalog::Catalog, Vec<nightshift::config::Diagnostic>) {
    nightshift::catalog::load(nightshift::rules::RuleEngine::shared(), &[dir.to_path_buf()], None)
}
