//! `nightshift approve` and `nightshift cancel`: a person's say over a run, for a plan
//! that waits for approval, or any run that has not finished.

use std::process::ExitCode;

use super::Sources;
use super::ledger::{Location, connect};
use crate::runs::RunId;

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The run's id, e.g. `r42`; it must be awaiting approval.
    run: RunId,
    #[command(flatten)]
    location: Location,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The run's id, e.g. `r42`.
    run: RunId,
    /// Why, recorded on the run.
    #[arg(long, default_value = "cancelled by a person")]
    reason: String,
    #[command(flatten)]
    location: Location,
}

pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let run = connect(&args.location, &Sources::default())?.approve(args.run)?;
    println!("{} {}: the plan is approved; the run is queued to carry it out", run.id, run.state);
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let run = connect(&args.location, &Sources::default())?.cancel(args.run, &args.reason)?;
    println!("{} {}: {}", run.id, run.state, args.reason);
    Ok(ExitCode::SUCCESS)
}
