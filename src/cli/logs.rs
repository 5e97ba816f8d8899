//! `nightshift logs`: a run's log (both phases, secrets masked, bounded with a cut
//! marker), whole or followed while the run goes on.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::Sources;
use super::ledger::{Ledger, Location, connect};
use crate::runs::RunId;

/// How often `--follow` asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's id, e.g. `r42` (or `42`).
    run: RunId,
    /// Keep printing as the log grows, until the run finishes or waits for approval.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    location: Location,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = connect(&args.location, &Sources::default())?;
    if ledger.show(args.run)?.is_none() {
        bail!("no run {} in this store; `nightshift runs` lists them", args.run);
    }
    let mut next = print_from(ledger.as_ref(), args.run, 0)?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let state = ledger.show(args.run)?.map(|record| record.run.state);
        // Read once more after the run settles: its last pieces come before its end.
        let settled = state.is_none_or(|state| state.is_finished() || state == crate::runs::RunState::AwaitingApproval);
        next = print_from(ledger.as_ref(), args.run, next)?;
        if settled {
            break;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the pieces from `from` on and returns the next number to ask for.
fn print_from(ledger: &dyn Ledger, run: RunId, from: u64) -> anyhow::Result<u64> {
    let chunks = ledger.log(run, from)?;
    let mut out = std::io::stdout().lock();
    let mut next = from;
    for chunk in chunks {
        out.write_all(chunk.text.as_bytes())?;
        next = chunk.seq + 1;
    }
    out.flush()?;
    Ok(next)
}
