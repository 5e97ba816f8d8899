//! `nightshift follow-up`: a follow-up of a run by hand, as a reply in its thread would
//! start one: a run of the same automation on the same branch.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::Sources;
use super::ledger::{Location, connect};
use crate::runs::RunId;
use crate::store::Disposition;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run to follow up, e.g. `r42` (any state; a follow-up of a running run waits
    /// for it).
    run: RunId,
    /// What the follow-up should do: given to the agent as untrusted text, after the
    /// earlier run's prompt and summary.
    text: String,
    /// When the follow-up is asked for (RFC 3339). Default: now.
    #[arg(long)]
    now: Option<DateTime<Utc>>,
    #[command(flatten)]
    location: Location,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.text.trim().is_empty() {
        anyhow::bail!("the text is empty: say what the follow-up should do");
    }
    let ledger = connect(&args.location, &Sources::default())?;
    let report = ledger.follow_up(args.run, &args.text, args.now.unwrap_or_else(Utc::now))?;
    for outcome in &report.outcome.runs {
        match &outcome.disposition {
            Disposition::Created => {
                println!("{} queued: a follow-up of {} ({})", outcome.run, args.run, outcome.automation)
            }
            other => println!("{} {}: {other:?}", outcome.run, outcome.automation),
        }
    }
    Ok(ExitCode::SUCCESS)
}
