//! `nightshift schedule`: the next fire times of a cron-triggered automation.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, FixedOffset, Utc};

use super::fixture::find_automation;
use super::{Sources, load_catalog};
use crate::triggers::Trigger;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The automation's name.
    name: String,
    /// How many fire times to print (at most 1000).
    #[arg(short = 'n', long = "count", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    count: u16,
    /// Start after this time (RFC 3339, e.g. 2026-03-28T00:00:00+01:00). Default: now.
    #[arg(long, value_name = "TIME")]
    from: Option<DateTime<FixedOffset>>,
    /// Directory (or file) of automations. Default: automations/
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    sources: Sources,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths: Vec<PathBuf> = args.dir.iter().cloned().collect();
    let (catalog, diagnostics) = load_catalog(&paths, &args.sources);
    let loaded = find_automation(&catalog, &diagnostics, &args.name)?;
    let trigger = loaded.compiled.definition.trigger.as_ref().and_then(|spec| spec.sources().into_iter().next());
    let Some(Trigger::Cron(cron)) = trigger else {
        let kind = trigger.map_or("nothing".to_string(), |t| format!("`{}`", t.kind()));
        bail!("`{}` is triggered by {kind}, not by a cron schedule", args.name);
    };
    let after = args.from.map_or_else(Utc::now, |from| from.with_timezone(&Utc));
    let slots = cron.next_slots(after, usize::from(args.count)).map_err(anyhow::Error::msg)?;
    for slot in &slots {
        println!("{}  ({})", slot.to_rfc3339(), slot.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%SZ"));
    }
    if slots.is_empty() {
        println!("`{}` ({}) never fires after {}", cron.schedule, cron.timezone, after.to_rfc3339());
    }
    Ok(ExitCode::SUCCESS)
}
