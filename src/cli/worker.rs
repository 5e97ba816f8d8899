//! `nightshift worker`: a worker on this machine for a `nightshift serve` elsewhere,
//! claiming runs over its worker API; and the worker settings `serve` shares with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::config::DurationSpec;
use crate::sandbox::Sandbox;
use crate::sandbox::egress::EgressSettings;
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
    /// Run every setup and agent phase in the sandbox (`on`: its own namespaces, the
    /// system read-only, and the egress proxy as its only way out; see docs/sandbox.md),
    /// or unconfined (`off`: for development on a machine that cannot create namespaces;
    /// a warning at start, and every run records it).
    #[arg(long, value_enum, value_name = "MODE", default_value = "on")]
    sandbox: SandboxMode,
    /// Reach HOST at ADDR:PORT instead of where DNS says, like curl's --resolve (for a
    /// registry on a private network, and tests). Repeatable; HOST may then be private.
    #[arg(long = "egress-resolve", value_name = "HOST=ADDR:PORT")]
    egress_resolve: Vec<String>,
    /// Let allowed names reach private, loopback and link-local addresses (refused by
    /// default, so an allowed name that resolves to 127.0.0.1 cannot reach this machine).
    #[arg(long)]
    egress_allow_private: bool,
    /// Use `git worktree` workspaces even where overlay mounts work.
    #[arg(long)]
    no_overlay: bool,
    /// How long a claim holds a run without a heartbeat; a worker that dies loses its
    /// runs after this, and they are queued again.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    lease: DurationSpec,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    On,
    Off,
}

impl WorkerArgs {
    /// The settings, with the sandbox built and checked: where the kernel refuses it, an
    /// error that says why and how to allow it (fail closed).
    pub fn settings(&self, default_work_dir: PathBuf) -> anyhow::Result<WorkerSettings> {
        let mut settings = self.settings_without_sandbox(default_work_dir);
        settings.sandbox = self.sandbox()?;
        Ok(settings)
    }

    /// The settings for a process that runs no phases (`serve --workers 0`): no sandbox
    /// is built, probed, or walked.
    pub fn settings_without_sandbox(&self, default_work_dir: PathBuf) -> WorkerSettings {
        let mut settings = WorkerSettings::new(self.work_dir.clone().unwrap_or(default_work_dir));
        settings.keep_failed = self.keep_failed_workspaces;
        settings.overlays = !self.no_overlay;
        settings.lease_for = self.lease.as_duration().max(Duration::from_secs(2));
        // Often enough that a cancel stops the agent within a few seconds.
        settings.heartbeat_every = (settings.lease_for / 4).min(Duration::from_secs(2));
        settings
    }

    fn sandbox(&self) -> anyhow::Result<Option<Arc<Sandbox>>> {
        if self.sandbox == SandboxMode::Off {
            tracing::warn!(
                "--sandbox off: setup and agent phases run UNCONFINED, with the engine's files, \
                 processes and network in reach and no network policy enforced; for development only"
            );
            return Ok(None);
        }
        let mut egress = EgressSettings { allow_private_upstreams: self.egress_allow_private, ..Default::default() };
        for entry in &self.egress_resolve {
            let (host, addr) = parse_resolve(entry).map_err(|why| anyhow!("--egress-resolve {entry}: {why}"))?;
            egress.resolve.insert(host, addr);
        }
        let helper = std::env::current_exe().context("cannot find the nightshift binary to start jails with")?;
        let sandbox = Sandbox::new(helper, egress).context("cannot start the egress proxy")?;
        sandbox.probe().map_err(|why| {
            anyhow!(
                "phases cannot be sandboxed on this machine, so none will run: {why}\n\
                 (`nightshift sandbox check` tries again; `--sandbox off` runs phases unconfined, for development only)"
            )
        })?;
        Ok(Some(Arc::new(sandbox)))
    }
}

/// `HOST=ADDR:PORT`, the host lowercased.
pub(super) fn parse_resolve(entry: &str) -> Result<(String, SocketAddr), String> {
    let (host, addr) = entry.split_once('=').ok_or("write HOST=ADDR:PORT, e.g. registry.internal=10.0.0.5:443")?;
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let addr =
        addr.trim().parse().map_err(|_| format!("`{addr}` is not ADDR:PORT (e.g. 10.0.0.5:443 or [::1]:8443)"))?;
    Ok((host, addr))
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
    crate::server::raise_open_files();
    let settings = args.worker.settings(PathBuf::from(".nightshift-worker"))?;
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
