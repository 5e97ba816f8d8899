//! The ledger: what the store-backed commands (`trigger`, `runs`, `show`, `memory`) ask
//! of a nightshift store, and `connect`, the one place that decides how to reach it.
//!
//! sled lets one process open a store at a time, so these commands cannot open it while
//! `nightshift serve` runs. They are written against the `Ledger` trait, not the store:
//! today `LocalLedger` opens the store in this process; a later change adds an
//! implementation that talks HTTP to a running `nightshift serve`, and `connect` will
//! choose it when a server holds the store. Nothing else in the CLI needs to change then.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use chrono::{DateTime, Utc};

use super::fixture::{FixtureArgs, find_automation};
use super::remote::RemoteLedger;
use super::{Sources, load_catalog};
use crate::pipeline::{Audience, IngestReport, Pipeline};
use crate::runs::{MemoryEntry, MemoryWrite, Run, RunId};
use crate::server::discovery::ServeFile;
use crate::store::{LogChunk, RetentionReport, RunFilter, RunRecord, SledStore, Store, StoreError, default_data_dir};

/// Where the automations and the store are.
#[derive(Debug, Clone, clap::Args)]
pub struct Location {
    /// Directory (or file) of automations; the default data directory is beside it.
    /// Default: automations/
    #[arg(long, value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// The data directory that holds the store. Default: .nightshift/ beside the
    /// automations directory.
    #[arg(long, value_name = "DIR", global = true)]
    pub data: Option<PathBuf>,
}

impl Location {
    pub fn automations(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("automations"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(|| default_data_dir(&self.automations()))
    }

    /// Refuses to make a new store outside a project: without `--data`, the store is
    /// made only beside an automations directory that exists, so a command run in the
    /// wrong directory says so instead of leaving a `.nightshift/` there.
    fn check_project(&self, data: &std::path::Path) -> anyhow::Result<()> {
        let automations = self.automations();
        if self.data.is_some() || data.exists() || automations.exists() {
            return Ok(());
        }
        let flag = if self.dir.is_some() { "--dir" } else { "the default --dir" };
        Err(anyhow!(
            "no automations at {} ({flag}) and no store at {}: this is not a nightshift project; \
             run the command in the project's directory, or pass --dir DIR (the automations) or --data DIR (the store)",
            automations.display(),
            data.display()
        ))
    }
}

/// An event fixture to ingest for one automation, as if its source had delivered it.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    pub automation: String,
    pub fixture: FixtureArgs,
    /// When the event is received and ingested.
    pub now: DateTime<Utc>,
}

/// What the store-backed commands need from a store, wherever it is.
pub trait Ledger {
    /// Ingests the fixture for the named automation only, through its rules and flow
    /// control, and stores the event with its outcome.
    fn trigger(&self, request: &TriggerRequest) -> anyhow::Result<IngestReport>;
    /// Runs, newest first.
    fn runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<Run>>;
    /// One run, its activity timeline and its events; `None` if there is no such run.
    fn show(&self, id: RunId) -> anyhow::Result<Option<RunRecord>>;
    /// An automation's live memory.
    fn memory(&self, automation: &str, now: DateTime<Utc>) -> anyhow::Result<BTreeMap<String, MemoryEntry>>;
    /// A person's change to memory (provenance: no run).
    fn write_memory(&self, automation: &str, write: MemoryWrite, now: DateTime<Utc>) -> anyhow::Result<()>;
    /// Deletes what the project's `retention` no longer keeps.
    fn prune(&self, now: DateTime<Utc>) -> anyhow::Result<RetentionReport>;
    /// Lets a run that waits for approval of its plan continue.
    fn approve(&self, id: RunId) -> anyhow::Result<Run>;
    /// Cancels a run in any unfinished state.
    fn cancel(&self, id: RunId, reason: &str) -> anyhow::Result<Run>;
    /// The run's log pieces from `from` on.
    fn log(&self, id: RunId, from: u64) -> anyhow::Result<Vec<LogChunk>>;
    /// Starts a follow-up of run `id` with `text` (`Pipeline::follow_up_by_hand`).
    fn follow_up(&self, id: RunId, text: &str, now: DateTime<Utc>) -> anyhow::Result<IngestReport>;
}

/// Reaches the store at `location`. `sources` says where `trigger` finds the project
/// settings. This is the only place that picks a `Ledger` implementation.
pub fn connect(location: &Location, sources: &Sources) -> anyhow::Result<Box<dyn Ledger>> {
    let data = location.data_dir();
    location.check_project(&data)?;
    // A server on a shared database (`serve --store`) is reached through its API.
    if let Some(server) = ServeFile::read(&data).filter(|server| server.shared_store && server.is_alive()) {
        return Ok(Box::new(RemoteLedger::new(server)?));
    }
    match SledStore::open(&data) {
        Ok(store) => Ok(Box::new(LocalLedger {
            store: Arc::new(store),
            automations: location.automations(),
            sources: sources.clone(),
        })),
        // A running server holds the store: go through its API.
        Err(StoreError::Locked { dir }) => match ServeFile::read(&data) {
            Some(server) => Ok(Box::new(RemoteLedger::new(server)?)),
            None => Err(StoreError::Locked { dir }.into()),
        },
        Err(error) => Err(error.into()),
    }
}

/// The store opened in this process, and the automations `trigger` renders with.
pub struct LocalLedger {
    store: Arc<dyn Store>,
    automations: PathBuf,
    sources: Sources,
}

impl Ledger for LocalLedger {
    fn trigger(&self, request: &TriggerRequest) -> anyhow::Result<IngestReport> {
        let (catalog, diagnostics) = load_catalog(std::slice::from_ref(&self.automations), &self.sources);
        let loaded = find_automation(&catalog, &diagnostics, &request.automation)?;
        let event = request.fixture.event_for(loaded, request.now)?;
        let pipeline = Pipeline::new(Arc::new(catalog), Arc::clone(&self.store));
        Ok(pipeline.ingest(event, Audience::Named(&request.automation), request.now)?)
    }

    fn runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<Run>> {
        Ok(self.store.runs(filter)?)
    }

    fn show(&self, id: RunId) -> anyhow::Result<Option<RunRecord>> {
        Ok(RunRecord::read(self.store.as_ref(), id)?)
    }

    fn memory(&self, automation: &str, now: DateTime<Utc>) -> anyhow::Result<BTreeMap<String, MemoryEntry>> {
        Ok(self.store.memory(automation, now)?)
    }

    fn write_memory(&self, automation: &str, write: MemoryWrite, now: DateTime<Utc>) -> anyhow::Result<()> {
        Ok(self.store.write_memory(automation, write, now)?)
    }

    fn prune(&self, now: DateTime<Utc>) -> anyhow::Result<RetentionReport> {
        let project = crate::catalog::project_file(self.sources.config.as_deref());
        let settings = crate::config::load::load_project(project.as_deref()).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow!("the project settings have problems:\n{}", text.join("\n"))
        })?;
        Ok(self.store.apply_retention(&settings.retention, now)?)
    }

    fn approve(&self, id: RunId) -> anyhow::Result<Run> {
        Ok(self.store.approve(id, Utc::now())?)
    }

    fn cancel(&self, id: RunId, reason: &str) -> anyhow::Result<Run> {
        Ok(self.store.cancel(id, reason, Utc::now())?)
    }

    fn log(&self, id: RunId, from: u64) -> anyhow::Result<Vec<LogChunk>> {
        Ok(self.store.log(id, from)?)
    }

    fn follow_up(&self, id: RunId, text: &str, now: DateTime<Utc>) -> anyhow::Result<IngestReport> {
        let (catalog, _) = load_catalog(std::slice::from_ref(&self.automations), &self.sources);
        let pipeline = Pipeline::new(Arc::new(catalog), Arc::clone(&self.store));
        let payload = serde_json::json!({ "follow_up": id, "text": text });
        let event =
            crate::event::Event::from_delivery(crate::triggers::TriggerKind::Manual, payload, Default::default(), now);
        pipeline.follow_up_by_hand(id, event, text, now)?.map_err(|why| anyhow!("{id} cannot be followed up: {why}"))
    }
}
