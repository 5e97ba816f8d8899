//! `nightshift serve`: the server, the cron scheduler and hot reload in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::Sources;
use super::ledger::Location;
use crate::server::{ServeOptions, Server};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on. Use 0.0.0.0:PORT to accept from other machines.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_body: usize,
    /// Log as JSON lines (for log collectors) instead of text. The level comes from
    /// NIGHTSHIFT_LOG (default `nightshift=info,warn`), e.g. NIGHTSHIFT_LOG=nightshift=debug.
    #[arg(long)]
    pub log_json: bool,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    sources: Sources,
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
        data,
        listen: args.listen,
        max_body: args.max_body,
        api_token: std::env::var("NIGHTSHIFT_API_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::open(options)?;
        crate::server::serve(server).await
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
