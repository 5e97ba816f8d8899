//! `nightshift memory`: read and change an automation's memory in the store.

use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use serde_json::Value;

use super::fixture::find_automation;
use super::ledger::{Location, connect};
use super::output::{printable, table, time};
use super::{Sources, load_catalog};
use crate::runs::{MemoryChange, MemoryEntry, MemoryWrite};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The automation whose memory to read or change.
    automation: String,
    /// What to do. Without one, every live entry is listed.
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON: the entries (as an object by key), the entry, or the change made.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    location: Location,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print one entry's value as JSON. Exits 1 if the key is not set.
    Get {
        /// The key.
        key: String,
    },
    /// Set a key, as a person (the entry records no run and is not marked untrusted).
    Set {
        /// The key.
        key: String,
        /// The value, as JSON (`42`, `true`, `{"a": 1}`, `"quoted text"`); anything that is
        /// not valid JSON is stored as a string.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Remove a key. Exits 1 if the key is not set.
    Rm {
        /// The key.
        key: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = connect(&args.location, &Sources::default())?;
    let now = Utc::now();
    let automation = &args.automation;
    match args.action {
        None => {
            let entries = ledger.memory(automation, now)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                eprintln!("`{automation}` has no memory");
            } else {
                let rows: Vec<Vec<String>> = entries.iter().map(|(key, entry)| row(key, entry)).collect();
                let header = ["KEY", "WRITTEN_BY", "WRITTEN_AT", "TRUST", "EXPIRES_AT", "VALUE"];
                print!("{}", printable(&table(&header, &rows)));
            }
        }
        Some(Action::Get { key }) => {
            let entries = ledger.memory(automation, now)?;
            let Some(entry) = entries.get(&key) else {
                bail!("`{automation}` has no memory entry `{key}`");
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(entry)?);
            } else {
                println!("{}", serde_json::to_string(&entry.value)?);
            }
        }
        Some(Action::Set { key, value }) => {
            // Memory is kept by name: a typo would start a memory no automation reads.
            let (catalog, diagnostics) = load_catalog(&[args.location.automations()], &Sources::default());
            find_automation(&catalog, &diagnostics, automation)?;
            let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            let write = MemoryWrite { key, change: MemoryChange::Set { value, expires_at: None }, untrusted: false };
            ledger.write_memory(automation, write.clone(), now)?;
            report(&write, args.json)?;
        }
        Some(Action::Rm { key }) => {
            if !ledger.memory(automation, now)?.contains_key(&key) {
                bail!("`{automation}` has no memory entry `{key}`");
            }
            let write = MemoryWrite { key, change: MemoryChange::Remove, untrusted: false };
            ledger.write_memory(automation, write.clone(), now)?;
            report(&write, args.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(key: &str, entry: &MemoryEntry) -> Vec<String> {
    vec![
        key.to_string(),
        entry.written_by.map_or_else(|| "person".to_string(), |run| run.to_string()),
        time(entry.written_at),
        if entry.untrusted { "untrusted" } else { "trusted" }.to_string(),
        entry.expires_at.map_or_else(|| "never".to_string(), time),
        entry.value.to_string(),
    ]
}

/// Confirms a change: the write as JSON, or one line.
fn report(write: &MemoryWrite, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(write)?);
        return Ok(());
    }
    let line = match &write.change {
        MemoryChange::Set { value, .. } => format!("set {} = {value}", write.key),
        MemoryChange::Remove => format!("removed {}", write.key),
    };
    println!("{}", printable(&line));
    Ok(())
}
