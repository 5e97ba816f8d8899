//! `nightshift migrate-store`: copies an embedded store (a data directory) into an empty
//! PostgreSQL database, for moving to several instances (docs/scaling.md).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::{PgStore, SledStore, is_postgres_url};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The embedded store to copy: a data directory (`.nightshift` beside the
    /// automations by default). No server may be using it.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The PostgreSQL database to copy into (`postgres://...`); it must hold no runs or
    /// events yet. Its schema is created if needed.
    #[arg(long, value_name = "URL")]
    to: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !is_postgres_url(&args.to) {
        anyhow::bail!("--to takes a postgres:// or postgresql:// URL, not `{}`", args.to);
    }
    if !args.from.join("db").exists() {
        anyhow::bail!(
            "{} holds no embedded store (no db/ inside): pass the data directory with --from",
            args.from.display()
        );
    }
    let from = SledStore::open(&args.from)?;
    let to = PgStore::open(&args.to)?;
    if !to.is_empty()? {
        anyhow::bail!(
            "the database at {} already holds runs or events: migrate-store copies into an empty database only",
            to.shown()
        );
    }
    let mut records = Vec::new();
    from.export(&mut |record| {
        records.push(record);
        Ok(())
    })?;
    let imported = to.import(records)?;
    println!(
        "copied {} runs, {} events and {} other records from {} to {}",
        imported.runs,
        imported.events,
        imported.others,
        args.from.display(),
        to.shown()
    );
    Ok(ExitCode::SUCCESS)
}
