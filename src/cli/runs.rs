//! `nightshift runs`: list runs from the store, newest first.

use std::process::ExitCode;

use super::Sources;
use super::ledger::{Location, connect};
use super::output::{excerpt, printable, table, time};
use crate::runs::{Run, RunState};
use crate::store::RunFilter;

/// The widest the DETAIL column gets.
const DETAIL_WIDTH: usize = 60;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only runs of this automation.
    #[arg(long, value_name = "NAME")]
    automation: Option<String>,
    /// Only runs in this state: awaiting_approval, queued, leased, running, succeeded,
    /// failed, cancelled, timed_out or skipped.
    #[arg(long, value_name = "STATE")]
    state: Option<RunState>,
    /// At most this many runs; 0 lists them all.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
    /// Print the runs as a JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    location: Location,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = connect(&args.location, &Sources::default())?;
    let filter = RunFilter { automation: args.automation, state: args.state, limit: args.limit, before: None };
    let runs = ledger.runs(&filter)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else if runs.is_empty() {
        eprintln!("no runs");
    } else {
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|run| {
                vec![
                    run.id.to_string(),
                    run.state.to_string(),
                    run.automation.clone(),
                    time(run.created_at),
                    run.attempt.to_string(),
                    excerpt(&detail(run), DETAIL_WIDTH),
                ]
            })
            .collect();
        print!("{}", printable(&table(&["ID", "STATE", "AUTOMATION", "CREATED", "ATTEMPT", "DETAIL"], &rows)));
    }
    Ok(ExitCode::SUCCESS)
}

/// Why the run is where it is: the skip or failure reason, else the agent's summary.
fn detail(run: &Run) -> String {
    if let Some(skip) = &run.skip {
        return skip.to_string();
    }
    if let Some(reason) = &run.reason {
        return reason.clone();
    }
    if let Some(summary) = run.result.as_ref().map(|r| r.summary.as_str()).filter(|s| !s.is_empty()) {
        return summary.to_string();
    }
    match run.not_before {
        Some(at) if run.state == RunState::Queued => format!("retry at {}", time(at)),
        _ => String::new(),
    }
}
