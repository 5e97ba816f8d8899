//! `nightshift worker`: a worker on this machine for a `nightshift serve` elsewhere,
//! claiming runs over its worker API; and the worker settings `serve` shares with it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::config::DurationSpec;
use crate::worker::remote::RemoteControl;
use crate::worker::{Pool, Runner, Wakeup, WorkerSettings};

/// How runs are run, for `serve`'s local workers and for `nightshift worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Where mirrors of the repositories, run workspaces and per-run files live.
    /// Default: work/ in the data directory (for `worker`: ./.nightshift-worker).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the workspace of a run that did not succeed (under WORK_DIR/workspaces).
    #[arg(long)]
    keep_failed_workspaces: bool,
    /// Hand the agent this proxy as HTTP_PROXY and HTTPS_PROXY (where the egress policy is
    /// enforced). The policy itself is always in $NIGHTSHIFT_POLICY_FILE.
    #[arg(long, value_name = "URL")]
    egress_proxy: Option<String>,
    /// Use `git worktree` workspaces even where overlay mounts work.
    #[arg(long)]
    no_overlay: bool,
    /// How long a claim holds a run without a heartbeat; a worker that dies loses its
    /// runs after this, and they are queued again.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    lease: DurationSpec,
}

impl WorkerArgs {
    pub fn settings(&self, default_work_dir: PathBuf) -> WorkerSettings {
        let mut settings = WorkerSettings::new(self.work_dir.clone().unwrap_or(default_work_dir));
        settings.keep_failed = self.keep_failed_workspaces;
        settings.egress_proxy = self.egress_proxy.clone();
        settings.overlays = !self.no_overlay;
        settings.lease_for = self.lease.as_duration().max(Duration::from_secs(2));
        // Often enough that a cancel stops the agent within a few seconds.
        settings.heartbeat_every = (settings.lease_for / 4).min(Duration::from_secs(2));
        settings
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's base URL, e.g. http://10.0.0.5:8080.
    #[arg(long, value_name = "URL")]
    server: String,
    /// A worker token the server accepts (`serve --worker-token`). Default: the
    /// NIGHTSHIFT_WORKER_TOKEN environment variable.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Runs taken on at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    concurrency: usize,
    /// This worker's name in leases (`nightshift show` tells which worker holds a run).
    /// Default: the host name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    worker: WorkerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let token = args
        .token
        .or_else(|| std::env::var("NIGHTSHIFT_WORKER_TOKEN").ok())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| anyhow!("a worker token is needed: --token TOKEN or NIGHTSHIFT_WORKER_TOKEN"))?;
    if args.concurrency == 0 {
        return Err(anyhow!("--concurrency must be at least 1"));
    }
    let settings = args.worker.settings(PathBuf::from(".nightshift-worker"));
    std::fs::create_dir_all(&settings.work_dir)
        .with_context(|| format!("cannot create the work directory {}", settings.work_dir.display()))?;
    let control = RemoteControl::new(&args.server, &token, settings.lease_for).map_err(|e| anyhow!(e))?;
    let name = args.name.unwrap_or_else(host_name);
    let runner = Arc::new(Runner::new(Arc::new(control), settings));
    println!("nightshift worker {name} taking up to {} runs from {}", args.concurrency, args.server);
    // The claim itself waits on the server (a long poll): no sleeping between claims.
    let pool = Pool::start(runner, &name, args.concurrency, Arc::new(Wakeup::new()), Duration::ZERO)?;
    let stopper = pool.stopper();
    let on_signal = stopper.clone();
    std::thread::Builder::new().name("nightshift-signals".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            runtime.block_on(crate::server::shutdown_signal());
            tracing::info!("stopping: runs in progress are stopped and given back");
            on_signal.stop();
            // Threads waiting on the server for a claim may take up to its wait to return;
            // only the runs in progress are worth waiting for.
            on_signal.wait_for_runs(Duration::from_secs(30));
            std::process::exit(0);
        }
    })?;
    pool.join();
    if stopper.stopped() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(anyhow!("every worker thread stopped: the server refuses this worker (see the log above)"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}
