//! `nightshift serve`: the server, the cron scheduler and hot reload in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::Sources;
use super::ledger::Location;
use super::worker::WorkerArgs;
use crate::server::{EvaluationLimits, ServeLimits, ServeOptions, Server};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on. Use 0.0.0.0:PORT to accept from other machines.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The largest request body accepted, in bytes, by triggers that set no `max_body`
    /// of their own; larger ones get 413. Default: each source's own (GitHub 25 MiB,
    /// Alertmanager 4 MiB, others 1 MiB).
    #[arg(long, value_name = "BYTES")]
    max_body: Option<usize>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Log as JSON lines (for log collectors) instead of text. The level comes from
    /// NIGHTSHIFT_LOG (default `nightshift=info,warn`), e.g. NIGHTSHIFT_LOG=nightshift=debug.
    #[arg(long)]
    pub log_json: bool,
    /// Runs the local workers take on at once. 0 leaves every run to remote workers
    /// (`nightshift worker`).
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,
    /// A token remote workers may present (repeat for several). Also read from
    /// NIGHTSHIFT_WORKER_TOKEN (comma-separated). Without any, the worker API refuses
    /// every request.
    #[arg(long, value_name = "TOKEN")]
    worker_token: Vec<String>,
    /// The address people reach this server at (e.g. `https://nightshift.example.com`):
    /// Slack messages, GitHub comments, pull requests and webhooks link to each run at
    /// `URL/api/runs/ID`. Also read from NIGHTSHIFT_PUBLIC_URL. Without it, messages
    /// carry no link.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// A bearer token `GET /metrics` asks for. Also read from NIGHTSHIFT_METRICS_TOKEN.
    /// Without one, /metrics is open to anyone who can reach the server (it serves
    /// counts, never payloads or secrets: docs/metrics.md).
    #[arg(long, value_name = "TOKEN")]
    metrics_token: Option<String>,
    /// A token that may see runs through the API and the web board but change nothing
    /// (no approve, cancel, re-run or trigger). Also read from NIGHTSHIFT_READ_TOKEN.
    /// Not written to serve.json: give it to the people who should only look.
    #[arg(long, value_name = "TOKEN")]
    read_token: Option<String>,
    /// Keep events and runs in the PostgreSQL database at URL (e.g.
    /// `postgres://nightshift@db.internal/nightshift`) instead of the embedded store in
    /// --data, so several `serve` instances can share it behind a load balancer
    /// (docs/scaling.md). Also read from NIGHTSHIFT_STORE. Local workers' workspaces stay
    /// under --data.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    sources: Sources,
}

/// What a client, connection or hook may take of the server (serving.md, "Limits").
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Connections open at once; more wait to be accepted until one closes. Lowered
    /// to fit the open-file limit.
    #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a connection has to send a request's head, from when the server waits
    /// for one (new, or kept alive after an answer: also the idle timeout).
    #[arg(long, value_name = "SECONDS", default_value_t = ServeLimits::default().header_timeout.as_secs_f64())]
    header_timeout: f64,
    /// Seconds a request has to send its whole body, from its head; then 408 and the
    /// connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = ServeLimits::default().body_timeout.as_secs_f64())]
    body_timeout: f64,
    /// Bytes of hook bodies held at once before their signature is checked (each
    /// body's first 64 KiB not counted); a hook request whose body would not fit gets 503.
    #[arg(long, value_name = "BYTES", default_value_t = ServeLimits::default().unauthenticated_bytes)]
    unauthenticated_bytes: usize,
    /// Rule evaluations at once, across every hook.
    #[arg(long, value_name = "N", default_value_t = EvaluationLimits::default().threads)]
    rule_threads: usize,
    /// Rule evaluations of one hook's deliveries at once.
    #[arg(long, value_name = "N", default_value_t = EvaluationLimits::default().per_hook)]
    hook_concurrency: usize,
    /// Deliveries of one hook that may wait for their rules; beyond, 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = EvaluationLimits::default().per_hook_waiting)]
    hook_queue: usize,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<ServeLimits> {
        let seconds = |flag: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow::anyhow!("--{flag} {value}: give a positive number of seconds"))
        };
        Ok(ServeLimits {
            evaluation: EvaluationLimits {
                threads: self.rule_threads.max(1),
                per_hook: self.hook_concurrency.max(1),
                per_hook_waiting: self.hook_queue,
            },
            max_connections: self.max_connections.max(1),
            header_timeout: seconds("header-timeout", self.header_timeout)?,
            body_timeout: seconds("body-timeout", self.body_timeout)?,
            unauthenticated_bytes: self.unauthenticated_bytes,
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let project = crate::catalog::project_file(args.sources.config.as_deref());
    let automations: PathBuf = args.location.automations();
    let data = args.location.data_dir();
    std::fs::create_dir_all(&data)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", data.display()))?;
    let options = ServeOptions {
        automations,
        project,
        data: data.clone(),
        store: args.store.or_else(|| std::env::var("NIGHTSHIFT_STORE").ok()).filter(|url| !url.is_empty()),
        listen: args.listen,
        max_body: args.max_body,
        api_token: std::env::var("NIGHTSHIFT_API_TOKEN").ok().filter(|t| !t.is_empty()),
        read_token: args
            .read_token
            .or_else(|| std::env::var("NIGHTSHIFT_READ_TOKEN").ok())
            .filter(|token| !token.is_empty()),
        workers: args.workers,
        // No local workers, no local phases: nothing to build a jail for (the first jail
        // of a root worker also walks /usr and /lib*, seconds of disk reads at start).
        worker: if args.workers == 0 {
            args.worker.settings_without_sandbox(data.join("work"))
        } else {
            args.worker.settings(data.join("work"))?
        },
        worker_tokens: worker_tokens(args.worker_token),
        limits: args.limits.limits()?,
        public_url: public_url(args.public_url)?,
        metrics_token: args
            .metrics_token
            .or_else(|| std::env::var("NIGHTSHIFT_METRICS_TOKEN").ok())
            .filter(|token| !token.is_empty()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::open(options)?;
        let current = server.clone();
        let transports =
            crate::delivery::transports::Transports::new(move || current.current().pipeline.catalog().clone());
        crate::server::serve(server, std::sync::Arc::new(transports)).await
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `--public-url`, else NIGHTSHIFT_PUBLIC_URL: an http(s) URL with a host, or none.
fn public_url(given: Option<String>) -> anyhow::Result<Option<String>> {
    let url = given.or_else(|| std::env::var("NIGHTSHIFT_PUBLIC_URL").ok()).filter(|url| !url.is_empty());
    let Some(url) = url else { return Ok(None) };
    crate::config::notify::http_url(&url).map_err(|why| anyhow::anyhow!("--public-url: {why}"))?;
    Ok(Some(url.trim_end_matches('/').to_string()))
}

/// The tokens given on the command line and in NIGHTSHIFT_WORKER_TOKEN.
fn worker_tokens(given: Vec<String>) -> Vec<String> {
    let from_env = std::env::var("NIGHTSHIFT_WORKER_TOKEN").unwrap_or_default();
    let from_env = from_env.split(',').map(str::trim).map(str::to_string);
    given.into_iter().chain(from_env).filter(|token| !token.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_http_with_a_host_and_loses_its_trailing_slash() {
        let given = |url: &str| public_url(Some(url.to_string()));
        assert_eq!(given("https://ns.example.com/").expect("a URL"), Some("https://ns.example.com".to_string()));
        assert_eq!(given("http://10.0.0.5:8080").expect("a URL"), Some("http://10.0.0.5:8080".to_string()));
        let refused = given("ns.example.com").expect_err("no scheme");
        assert!(refused.to_string().starts_with("--public-url: "), "{refused}");
        assert!(given("ftp://ns.example.com/").is_err());
    }
}
