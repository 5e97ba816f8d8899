//! `nightshift serve`: one process that owns the store, serves the hooks and the API
//! (through `http/`), fires cron slots (`scheduler`), reloads automations when their
//! files change (`reload.rs`), and keeps the store tidy (`maintenance.rs`).
//!
//! `Server` is what the HTTP handlers call. It answers in domain terms (reports,
//! records, typed errors); `http/` decides statuses and bodies.

mod alerts;
pub mod discovery;
pub mod evaluation;
mod maintenance;
mod reload;
pub mod status;
pub mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, watch};

use crate::catalog::{self, Catalog};
use crate::config::{Diagnostic, SecretRef};
use crate::event::Event;
use crate::intake::{Accepted, Delivery, Headers, HookTable, IntakeError, Precheck};
use crate::pipeline::{Audience, IngestReport, Pipeline};
use crate::rules::RuleEngine;
use crate::runs::{MemoryEntry, MemoryWrite, Run, RunId};
use crate::store::{LogChunk, RetentionReport, RunFilter, RunRecord, Store, StoreError};
use crate::triggers::TriggerKind;
use crate::worker::mask::Masker;
use crate::worker::{Pool, Runner, Wakeup, WorkerSettings};
pub use evaluation::{EvaluationLimits, Evaluator, HookBusy};

/// Deliveries waiting for the disk at once, beyond which hooks answer 503 with
/// Retry-After instead of queueing without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Everything `serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Automation files or directories.
    pub automations: PathBuf,
    /// The project settings file, if any.
    pub project: Option<PathBuf>,
    pub data: PathBuf,
    /// A PostgreSQL URL (`--store`): the store several instances share; `None` for the
    /// embedded store in `data`.
    pub store: Option<String>,
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes, for triggers that set no `max_body`
    /// of their own; `None` leaves each source's default (see
    /// `TriggerKind::default_max_body`).
    pub max_body: Option<usize>,
    /// The API's bearer token; a random one is made when none is given.
    pub api_token: Option<String>,
    /// A token that may read the API and the board but change nothing (`--read-token`).
    pub read_token: Option<String>,
    /// Runs the local worker pool takes on at once; 0 leaves every run to remote workers.
    pub workers: usize,
    /// How the local workers run runs (their directory, lease, log bound, ...).
    pub worker: WorkerSettings,
    /// Tokens that remote workers (`nightshift worker`) present; with none, the worker
    /// API refuses every request.
    pub worker_tokens: Vec<String>,
    /// What a client, a connection or a hook's rules may take of the server.
    pub limits: ServeLimits,
    /// Where people reach the server (`--public-url`): messages link to
    /// `{public_url}/api/runs/{id}`.
    pub public_url: Option<String>,
    /// The bearer token `GET /metrics` asks for (`--metrics-token`); without one it is
    /// open.
    pub metrics_token: Option<String>,
}

/// What one client, connection or hook may take of the server, so none can stall the
/// others (serving.md, "Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Rule evaluation: threads, and each hook's share of them.
    pub evaluation: EvaluationLimits,
    /// Connections open at once; more wait to be accepted until one closes.
    pub max_connections: usize,
    /// How long a connection may take to send a request's head, counted from when the
    /// server waits for one: a new connection, or a kept-alive one after its last answer
    /// (so it is also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// How long a request may take to send its whole body, from its head.
    pub body_timeout: Duration,
    /// Bytes of hook bodies the server holds at once before their signature is checked
    /// (each body's first 64 KiB not counted); a hook request whose body would not fit
    /// gets 503.
    pub unauthenticated_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            evaluation: EvaluationLimits::default(),
            // About 20 KB each while open, so an idle flood at the cap costs about 20 MB;
            // a webhook server rarely needs more, and more wait in the listen queue.
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            unauthenticated_bytes: 16 << 20,
        }
    }
}

/// One load of the automations: the pipeline over its catalog and the hooks it serves.
pub struct Generation {
    pub pipeline: Arc<Pipeline>,
    pub hooks: HookTable,
    /// Every secret value the automations name (their tasks' and their hooks'), read at
    /// load: the local workers mask them all in every run's output.
    pub secrets: Arc<Vec<String>>,
    /// `secrets` compiled once: what remote workers report (log, activities, results,
    /// memory) is masked with it before it is stored, as they know none of the hooks'.
    pub masker: Arc<Masker>,
    /// Where every task secret lives (never a value), for remote workers to read what
    /// they can and mask it.
    pub secret_refs: Arc<Vec<SecretRef>>,
}

/// The running server's state, shared by every request.
pub struct Server {
    store: Arc<dyn Store>,
    current: ArcSwap<Generation>,
    /// Tells the scheduler about each new generation.
    pipelines: watch::Sender<Arc<Pipeline>>,
    admission: Semaphore,
    options: ServeOptions,
    api_token: String,
    /// Rings when runs may be ready to claim: idle local workers and waiting remote
    /// claims wake up.
    wakeup: Arc<Wakeup>,
    /// Where rules are evaluated, away from the request threads.
    evaluator: Evaluator,
    /// Room, in KiB, for hook bodies held before their signature is checked.
    unauthenticated: Semaphore,
    /// Per remote attempt, the end of its last log piece that may be the start of a
    /// secret going on in the next piece (`workers.rs`).
    held_logs: std::sync::Mutex<std::collections::HashMap<RunId, (crate::runs::Epoch, Vec<u8>)>>,
    /// What `/metrics` serves; recorded into by hooks, workers, the sender and cron.
    metrics: Arc<crate::metrics::Metrics>,
    /// The web board's logins.
    sessions: crate::board::Sessions,
    /// The workers seen asking for runs, for the status picture (`status.rs`).
    claimers: status::Claimers,
    /// The boards' live feed, gathered once for all of them.
    board_feed: crate::board::feed::Feed,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the automations have problems; fix them (see `nightshift validate`) and start again:\n{0}")]
    Automations(String),
    #[error("cannot listen on {address}: {cause}")]
    Listen { address: SocketAddr, cause: std::io::Error },
    #[error("cannot watch {path} for changes: {cause}")]
    Watch { path: PathBuf, cause: notify::Error },
    #[error("cannot start the housekeeping jobs: {0}")]
    Maintenance(#[from] tokio_cron_scheduler::JobSchedulerError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why a delivery got no 202.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error("the store is busy: {MAX_IN_FLIGHT} deliveries are waiting for the disk; retry shortly")]
    Busy,
    #[error(transparent)]
    HookBusy(#[from] HookBusy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a hook's delivery came to.
#[derive(Debug, Clone)]
pub enum DeliveryAnswer {
    /// A handshake (GitHub `ping`, Slack `url_verification`): answered, nothing stored.
    Reply(serde_json::Value),
    /// The events are durable; one report per event.
    Stored { run_ids: Vec<RunId>, events: Vec<IngestReport>, cancelled_by_resolution: Vec<RunId> },
}

/// A manual run request (`POST /api/automations/{name}/run`): the body is the payload.
#[derive(Debug, Clone, Default)]
pub struct ManualRun {
    /// The source that would have delivered the payload. Default: the automation's first
    /// trigger.
    pub source: Option<TriggerKind>,
    /// Request headers of the delivery, e.g. `X-GitHub-Event`.
    pub headers: BTreeMap<String, String>,
    /// When the event is received; flow control counts from it. Default: now.
    pub now: Option<DateTime<Utc>>,
}

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no automation named `{0}` is loaded")]
    NoSuchAutomation(String),
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but the engine's state refuses it (a follow-up whose
    /// thread's queue is full, or whose automation has follow-ups off).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads the automations, refusing a set with any problem.
pub fn load_generation(
    automations: &std::path::Path,
    project: Option<&std::path::Path>,
    store: &Arc<dyn Store>,
) -> Result<(Generation, Vec<String>), Vec<Diagnostic>> {
    let (catalog, diagnostics) =
        catalog::load(RuleEngine::shared(), std::slice::from_ref(&automations.to_path_buf()), project);
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    Ok(generation(catalog, store))
}

fn generation(catalog: Catalog, store: &Arc<dyn Store>) -> (Generation, Vec<String>) {
    let (hooks, mut problems) = HookTable::build(&catalog);
    problems.extend(catalog.warnings.iter().cloned());
    let secret_refs = Arc::new(task_secret_refs(&catalog));
    let secrets = Arc::new(known_secrets(&secret_refs, &hooks));
    let masker = Arc::new(Masker::new(&secrets));
    let pipeline = Arc::new(Pipeline::new(Arc::new(catalog), Arc::clone(store)));
    release_freed_memory();
    (Generation { pipeline, hooks, secrets, masker, secret_refs }, problems)
}

/// Every automation's task secret references, once each.
fn task_secret_refs(catalog: &Catalog) -> Vec<SecretRef> {
    let mut references: Vec<SecretRef> = catalog
        .automations
        .iter()
        .flat_map(|loaded| loaded.compiled.definition.task.secrets.values().cloned())
        .collect();
    references.sort_by_cached_key(ToString::to_string);
    references.dedup();
    references
}

/// The values of every task secret that can be read now and of every hook's credential,
/// without duplicates. A task secret that cannot be read is left out: its run fails
/// before any output, and the value may not exist yet.
fn known_secrets(references: &[SecretRef], hooks: &HookTable) -> Vec<String> {
    let mut values: Vec<String> =
        references.iter().filter_map(|reference| reference.resolve().ok()).chain(hooks.secret_values()).collect();
    values.sort();
    values.dedup();
    values
}

/// Loading thousands of files frees about as much as the catalog keeps (parse trees,
/// schema checks); mimalloc holds freed pages for reuse, which measured 230 MB resident
/// instead of 135 MB with 10,000 automations. Handing them back once per load costs a
/// few milliseconds and nothing on the request path.
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers; with another global allocator it only
    // tidies mimalloc's own (empty) heaps.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

impl Server {
    /// Opens the store and loads the automations. Problems in automation files are an
    /// error here (`serve` will not start on them); a missing webhook secret is a
    /// warning, and that hook refuses requests until it is set.
    pub fn open(options: ServeOptions) -> Result<Arc<Server>, ServeError> {
        let store = crate::store::open(&options.data, options.store.as_deref())?;
        let (generation, problems) = match load_generation(&options.automations, options.project.as_deref(), &store) {
            Ok(loaded) => loaded,
            Err(diagnostics) => {
                let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                return Err(ServeError::Automations(text.join("\n")));
            }
        };
        for problem in &problems {
            tracing::warn!("{problem}");
        }
        let api_token = match &options.api_token {
            Some(token) => token.clone(),
            None => discovery::random_token()?,
        };
        let (pipelines, _) = watch::channel(Arc::clone(&generation.pipeline));
        Ok(Arc::new(Server {
            store: Arc::clone(&store),
            current: ArcSwap::from_pointee(generation),
            pipelines,
            admission: Semaphore::new(MAX_IN_FLIGHT),
            evaluator: Evaluator::new(options.limits.evaluation)?,
            unauthenticated: Semaphore::new(options.limits.unauthenticated_bytes / 1024),
            options,
            api_token,
            wakeup: Arc::new(Wakeup::new()),
            held_logs: std::sync::Mutex::default(),
            metrics: crate::metrics::Metrics::new(Arc::clone(&store)),
            sessions: crate::board::Sessions::default(),
            claimers: status::Claimers::default(),
            board_feed: Default::default(),
        }))
    }

    /// The largest body a delivery to hook `name` may have: its trigger's limit, or for a
    /// name no hook serves (answered 404), the server's.
    pub fn body_limit(&self, name: &str) -> usize {
        match self.current().hooks.get(name) {
            Some(hook) => hook.max_body(self.options.max_body),
            None => self.options.max_body.unwrap_or(crate::triggers::webhook::DEFAULT_MAX_BODY),
        }
    }

    pub fn options(&self) -> &ServeOptions {
        &self.options
    }

    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// The read-only token, if one was given.
    pub fn read_token(&self) -> Option<&str> {
        self.options.read_token.as_deref()
    }

    pub fn sessions(&self) -> &crate::board::Sessions {
        &self.sessions
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// A receiver of each new generation's pipeline, for the scheduler.
    pub fn pipelines(&self) -> watch::Receiver<Arc<Pipeline>> {
        self.pipelines.subscribe()
    }

    /// Makes `generation` current for new requests and the scheduler.
    fn install(&self, generation: Generation) {
        let pipeline = Arc::clone(&generation.pipeline);
        self.current.store(Arc::new(generation));
        self.pipelines.send_replace(pipeline);
    }

    /// What the headers of a request to hook `name` settle before its body is read:
    /// `Err` refuses it (unknown hook, missing secret, credentials or a signature header
    /// missing, malformed or stale) without reading the body.
    pub fn precheck(&self, name: &str, headers: &Headers) -> Result<Precheck, IntakeError> {
        self.current().hooks.precheck(name, headers, Utc::now())
    }

    /// Room for `bytes` of a body held before its signature is checked, if the budget
    /// has it (`ServeLimits::unauthenticated_bytes`); the room is given back on drop.
    pub fn hold_unauthenticated(&self, bytes: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        self.unauthenticated.try_acquire_many(kib).ok()
    }

    /// Authenticates a delivery to hook `name`, ingests its events for the hook's
    /// automation and returns once they are durable. The rules run on the evaluation
    /// threads, within the hook's share of them (`HookBusy` when its line is full).
    pub async fn deliver(&self, name: &str, delivery: Delivery<'_>) -> Result<DeliveryAnswer, DeliveryError> {
        let now = Utc::now();
        let generation = self.current();
        let (hook, events) = match generation.hooks.receive(name, delivery, now)? {
            (_, Accepted::Reply(reply)) => return Ok(DeliveryAnswer::Reply(reply)),
            (hook, Accepted::Events(events)) => (hook, events),
        };
        let Ok(_permit) = self.admission.try_acquire() else { return Err(DeliveryError::Busy) };
        let admission = self.evaluator.admit(&hook.name)?;
        // A resolution cancels the firing runs before it is ingested, so it never joins
        // one of them through dedupe and is cancelled with it; a repeated resolution
        // changes nothing, like any repeated delivery.
        let mut cancelled = Vec::new();
        for event in events.iter().filter(|event| alerts::is_resolution(hook, event)) {
            if self.store.event(&event.id)?.is_none() {
                cancelled.extend(alerts::cancel_unstarted_runs(self.store.as_ref(), hook, event, now)?);
            }
        }
        let automation = hook.automation.clone();
        // A store across the network is read before the hook's turn at the rules, which
        // then only evaluate: the read's round trip would hold the hook's line.
        let recalled = if self.store.reads_are_remote() {
            let (reading, name) = (Arc::clone(&generation), automation.clone());
            tokio::task::spawn_blocking(move || reading.pipeline.recall_for(&name, now))
                .await
                .map_err(|cause| StoreError::Io(format!("reading the automation's memory stopped: {cause}")))??
        } else {
            None
        };
        let rendering = Arc::clone(&generation);
        let ingested = self
            .evaluator
            .run(&admission, move || {
                let mut queued = Vec::with_capacity(events.len());
                for event in events {
                    let audience = Audience::Subscriber(&automation);
                    queued.push(rendering.pipeline.ingest_recalled(event, audience, now, recalled.as_ref())?);
                }
                Ok::<_, StoreError>(queued)
            })
            .await;
        // The hook's place is given up before the wait for the disk: only rules count.
        drop(admission);
        let mut reports = Vec::new();
        for pending in ingested? {
            reports.push(pending.done().await?);
        }
        let run_ids: Vec<RunId> = reports.iter().flat_map(|r| r.outcome.runs.iter().map(|o| o.run)).collect();
        if !run_ids.is_empty() {
            self.wakeup.notify();
        }
        Ok(DeliveryAnswer::Stored { run_ids, events: reports, cancelled_by_resolution: cancelled })
    }

    /// Ingests `payload` for automation `name` as a person's request, its trigger's
    /// filters not consulted (like `nightshift trigger`).
    pub async fn run_manually(
        &self,
        name: &str,
        payload: serde_json::Value,
        request: ManualRun,
    ) -> Result<IngestReport, ApiError> {
        let generation = self.current();
        let catalog = generation.pipeline.catalog();
        let loaded = catalog.get(name).ok_or_else(|| ApiError::NoSuchAutomation(name.to_string()))?;
        let source =
            request.source.or_else(|| loaded.compiled.definition.first_source()).unwrap_or(TriggerKind::Manual);
        let now = request.now.unwrap_or_else(Utc::now);
        let event = Event::from_delivery(source, payload, request.headers, now);
        let name = name.to_string();
        let report = self
            .evaluator
            .run_any(move || generation.pipeline.ingest_queued(event, Audience::Named(&name), now))
            .await?
            .done()
            .await?;
        self.wakeup.notify();
        Ok(report)
    }

    /// Starts a follow-up of run `id` with `text` as the new message (`nightshift
    /// follow-up`): a run on its branch, as a reply in its thread would start.
    pub async fn follow_up(&self, id: RunId, text: String, now: DateTime<Utc>) -> Result<IngestReport, ApiError> {
        let generation = self.current();
        let payload = serde_json::json!({ "follow_up": id, "text": text });
        let event = Event::from_delivery(TriggerKind::Manual, payload, Default::default(), now);
        let report = self
            .evaluator
            .run_any(move || generation.pipeline.follow_up_by_hand(id, event, &text, now))
            .await?
            .map_err(ApiError::Conflict)?;
        self.wakeup.notify();
        Ok(report)
    }

    /// Queues a new run of run `id`'s automation for the same event (its last, when
    /// several coalesced into it), as a person's request: a fresh event with the stored
    /// one's source, headers and payload, received now.
    pub async fn rerun(&self, id: RunId) -> Result<IngestReport, ApiError> {
        let store = Arc::clone(&self.store);
        let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let run = store.run(id)?.ok_or(StoreError::NoSuchRun(id))?;
            let event = match run.event_ids.last() {
                Some(event) => store.event(event)?,
                None => None,
            };
            Ok((run.automation, event))
        })
        .await
        .map_err(|panicked| ApiError::BadRequest(format!("reading the run failed: {panicked}")))??;
        let (automation, Some(stored)) = found else {
            return Err(ApiError::Conflict(format!(
                "{id}'s event is no longer stored (retention): nothing to run again"
            )));
        };
        let event = stored.event;
        let request = ManualRun { source: Some(event.source), headers: event.headers, now: None };
        self.run_manually(&automation, event.payload, request).await
    }

    /// Lets a run that waits for approval continue.
    pub fn approve(&self, id: RunId) -> Result<Run, ApiError> {
        let run = self.store.approve(id, Utc::now())?;
        self.wakeup.notify();
        Ok(run)
    }

    /// Cancels a run in any unfinished state; a worker running it stops at its next
    /// heartbeat.
    pub fn cancel(&self, id: RunId, reason: &str) -> Result<Run, ApiError> {
        let run = self.store.cancel(id, reason, Utc::now())?;
        self.metrics.run_changed(&run);
        // Its group's slot and its paths are free for the next run.
        self.wakeup.notify();
        Ok(run)
    }

    /// The run's log pieces from `from` on.
    pub fn log(&self, id: RunId, from: u64) -> Result<Vec<LogChunk>, ApiError> {
        Ok(self.store.log(id, from)?)
    }

    /// A waiter that a newly queued run wakes (for the worker API's long poll).
    pub fn wakeup(&self) -> &Arc<Wakeup> {
        &self.wakeup
    }

    /// The boards' live feed (`board::feed`).
    pub fn board_feed(&self) -> &crate::board::feed::Feed {
        &self.board_feed
    }

    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, ApiError> {
        Ok(self.store.runs(filter)?)
    }

    pub fn record(&self, id: RunId) -> Result<Option<RunRecord>, ApiError> {
        Ok(RunRecord::read(self.store.as_ref(), id)?)
    }

    pub fn memory(&self, automation: &str) -> Result<BTreeMap<String, MemoryEntry>, ApiError> {
        Ok(self.store.memory(automation, Utc::now())?)
    }

    pub fn write_memory(&self, automation: &str, write: MemoryWrite) -> Result<(), ApiError> {
        Ok(self.store.write_memory(automation, write, Utc::now())?)
    }

    /// Applies the loaded project's retention now (the hourly job asks
    /// `Store::maintains` first: with a shared database, one instance does it).
    pub fn prune(&self) -> Result<RetentionReport, ApiError> {
        let retention = self.current().pipeline.catalog().retention;
        Ok(self.store.apply_retention(&retention, Utc::now())?)
    }
}

/// Runs the server until SIGINT or SIGTERM: binds, writes the discovery file, starts the
/// scheduler, the reloader and the maintenance jobs, and serves. On a signal it stops
/// accepting, lets requests in flight finish, stops the scheduler, and closes the store
/// (a clean checkpoint).
///
/// The outbox's sender (`delivery::sender`) runs alongside, sending through `transport`,
/// and stops after the requests.
pub async fn serve(server: Arc<Server>, transport: Arc<dyn crate::delivery::Transport>) -> Result<(), ServeError> {
    let address = server.options.listen;
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|cause| ServeError::Listen { address, cause })?;
    let address = listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let clock: Arc<dyn crate::scheduler::Clock> = Arc::new(crate::scheduler::SystemClock);
    let scheduler = start_scheduler(clock, server.pipelines(), stopped.clone(), Arc::clone(&server.metrics))?;
    let reloader = reload::watch(Arc::clone(&server), stopped.clone())?;
    let mut maintenance = maintenance::start(Arc::clone(&server)).await?;
    let pool = start_local_workers(&server)?;
    let sender = Arc::new(
        crate::delivery::sender::Sender::new(
            Arc::clone(&server.store),
            transport,
            Arc::new(crate::scheduler::SystemClock),
        )
        .with_public_url(server.options.public_url.clone())
        .with_metrics(Arc::clone(&server.metrics)),
    );
    let sender = tokio::spawn(sender.run(stopped.clone()));
    // Runs another instance queued (a shared database) wake this one's workers too.
    if let Some(elsewhere) = server.store.wakeups() {
        let wakeup = Arc::clone(&server.wakeup);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = elsewhere.notified() => wakeup.notify(),
                    _ = stopped.changed() => return,
                }
            }
        });
    }

    // Last: the file tells the other commands (and tests) the server is ready.
    let mut serve_file = discovery::ServeFile::new(address, &server.api_token);
    serve_file.shared_store = server.options.store.is_some();
    serve_file.write(&server.options.data)?;
    let generation = server.current();
    tracing::info!(
        address = %address,
        automations = generation.pipeline.catalog().automations.len(),
        hooks = generation.hooks.len(),
        data = %server.options.data.display(),
        "nightshift is serving"
    );
    println!("nightshift serving on http://{address}");
    println!(
        "the board is at http://{address}/ : log in with the API token in {}",
        discovery::ServeFile::path(&server.options.data).display()
    );

    let wakeup = Arc::clone(&server.wakeup);
    let stop_within = STOP_WITHIN.max(server.options.worker.grace + std::time::Duration::from_secs(5));
    let shutdown = async move {
        shutdown_signal().await;
        exit_if_stopping_takes(stop_within);
        tracing::info!("shutting down: finishing requests in flight");
        // Remote workers' waiting claims end now, rather than holding up the drain.
        wakeup.close();
    };
    let max_connections = connection_cap(server.options.limits.max_connections);
    let served =
        crate::http::serve(listener, Arc::clone(&server), max_connections, shutdown).await.map_err(ServeError::from);
    let _ = stop.send(true);
    if let Some(pool) = pool {
        tracing::info!("stopping the local workers; runs in progress are stopped and given back");
        let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
    }
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    let _ = sender.await;
    drop(reloader);
    if let Err(error) = maintenance.shutdown().await {
        tracing::warn!(%error, "stopping the maintenance jobs");
    }
    discovery::ServeFile::remove(&server.options.data);
    served
}

/// The cron scheduler on a thread and runtime of its own: it renders each slot's rules
/// where it fires, and a slow rule must not hold up the threads that serve requests.
fn start_scheduler(
    clock: Arc<dyn crate::scheduler::Clock>,
    pipelines: watch::Receiver<Arc<Pipeline>>,
    stopped: watch::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let thread = std::thread::Builder::new().name("cron".into()).spawn(move || {
        runtime.block_on(crate::scheduler::run_with_metrics(clock, pipelines, stopped, Some(metrics)))
    })?;
    Ok(thread)
}

/// Raises the soft open-file limit to the hard one where allowed, and returns the soft
/// limit now. `serve` and `worker` call it first: each phase's egress connections hold
/// descriptors (a share of the limit, docs/sandbox.md), and so do the API's.
pub fn raise_open_files() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(open_files = hard, was = soft, "Raised the open-file limit to the hard limit");
                Some(hard)
            }
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
                Some(soft)
            }
        },
        Ok((soft, _)) => {
            tracing::debug!(open_files = soft, "The open-file limit is the hard limit");
            Some(soft)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            None
        }
    }
}

/// Raises the open-file limit to its hard limit where allowed, and returns the connection
/// cap that fits under it, with descriptors left for the store, the log and the workers.
fn connection_cap(wanted: usize) -> usize {
    /// Descriptors kept for everything but connections.
    const RESERVED: u64 = 256;
    let Some(soft) = raise_open_files() else { return wanted };
    let fits = usize::try_from(soft.saturating_sub(RESERVED).max(16)).unwrap_or(usize::MAX);
    if wanted > fits {
        tracing::warn!(
            wanted,
            open_files = soft,
            cap = fits,
            "fewer connections at once than asked: the open-file limit"
        );
        return fits;
    }
    wanted
}

/// How long a stop may take once SIGINT or SIGTERM arrives, whatever the store is doing
/// (longer when the workers' grace for an agent to exit needs it): then the process
/// exits with status 1. Nothing acknowledged is lost: a 2xx was given only once the
/// write-ahead log held the change, and the next start replays it.
pub const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Exits the process if it is still running `within` from now.
fn exit_if_stopping_takes(within: std::time::Duration) {
    let deadline = std::thread::Builder::new().name("nightshift-stop-deadline".into()).spawn(move || {
        std::thread::sleep(within);
        tracing::error!("stopping took longer than {within:?}; exiting now (the next start replays the store's log)");
        std::process::exit(1);
    });
    if let Err(error) = deadline {
        tracing::warn!(%error, "cannot bound how long stopping takes");
    }
}

/// The local worker pool, unless `workers` is 0.
fn start_local_workers(server: &Arc<Server>) -> Result<Option<Pool>, ServeError> {
    let options = &server.options;
    if options.workers == 0 {
        return Ok(None);
    }
    let control = workers::LocalControl::new(Arc::clone(server), options.worker.lease_for);
    let runner = Arc::new(Runner::new(Arc::new(control), options.worker.clone()));
    let wakeup = Arc::clone(&server.wakeup);
    Ok(Some(Pool::start(runner, "local", options.workers, wakeup, std::time::Duration::from_secs(1))?))
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
