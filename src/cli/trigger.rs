//! `nightshift trigger`: ingest an event fixture for one automation and say what became of it.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::Sources;
use super::fixture::FixtureArgs;
use super::ledger::{Location, TriggerRequest, connect};
use super::output::printable;
use crate::pipeline::IngestReport;
use crate::store::Disposition;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The automation's name.
    name: String,
    #[command(flatten)]
    fixture: FixtureArgs,
    /// When the event is received and ingested (RFC 3339); flow control (dedupe windows,
    /// cooldowns) counts from it. Default: now.
    #[arg(long, value_name = "TIME")]
    now: Option<DateTime<Utc>>,
    /// Print what ingest did as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    sources: Sources,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = connect(&args.location, &args.sources)?;
    let request =
        TriggerRequest { automation: args.name, fixture: args.fixture, now: args.now.unwrap_or_else(Utc::now) };
    let report = ledger.trigger(&request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", printable(&describe(&report)));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per outcome, cancelled run and non-match.
fn describe(report: &IngestReport) -> String {
    let outcome = &report.outcome;
    let mut out = String::new();
    if outcome.duplicate_delivery {
        out.push_str(&format!(
            "duplicate delivery: event {} was stored before, nothing changed; its first outcome:\n",
            outcome.event_id
        ));
    } else {
        out.push_str(&format!("event {} stored\n", outcome.event_id));
    }
    for run in &outcome.runs {
        let line = match &run.disposition {
            Disposition::Created => format!("{} queued  {}", run.run, run.automation),
            Disposition::Coalesced => {
                format!("{} coalesced  {} (the event joined this pending run)", run.run, run.automation)
            }
            Disposition::Skipped { reason } => format!("{} skipped  {} ({reason})", run.run, run.automation),
            Disposition::RenderFailed { error } => {
                format!("{} failed  {}: rendering failed: {error}", run.run, run.automation)
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    for cancelled in &outcome.cancelled {
        out.push_str(&format!("{cancelled} cancelled  (overlap: cancel_previous made room)\n"));
    }
    for not_matched in &report.not_matched {
        out.push_str(&format!("not matched: {}: {}\n", not_matched.automation, not_matched.reason));
    }
    out
}
