//! `nightshift prune`: apply the project's `retention` to the store now.

use std::process::ExitCode;

use chrono::Utc;

use super::Sources;
use super::ledger::{Location, connect};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what was deleted as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    sources: Sources,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = connect(&args.location, &args.sources)?;
    let report = ledger.prune(Utc::now())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "deleted {} runs, {} events, {} activities, {} expired memory entries, {} expired dedupe marks",
            report.runs, report.events, report.activities, report.memory_entries, report.dedupe_marks
        );
    }
    Ok(ExitCode::SUCCESS)
}
