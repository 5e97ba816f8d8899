//! `nightshift render`: apply one automation to an event fixture and print the result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};

use super::{Sources, load_catalog, print_diagnostics};
use crate::rules::{PreparedEvent, RuleEngine, memory_value};
use crate::selftest::fixture_event;
use crate::triggers::TriggerKind;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The automation's name.
    name: String,
    /// The event payload (JSON, as the source delivers it).
    #[arg(long, value_name = "FILE.json")]
    event: PathBuf,
    /// Memory as earlier runs left it (a JSON object).
    #[arg(long, value_name = "FILE.json")]
    memory: Option<PathBuf>,
    /// Directory (or file) of automations. Default: automations/
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The source that received the event. Default: the automation's first trigger.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    source: Option<TriggerKind>,
    /// A request header of the delivery, e.g. `X-GitHub-Event: pull_request`. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The time of the render (RFC 3339). Default: now.
    #[arg(long, value_name = "TIME")]
    now: Option<DateTime<Utc>>,
    #[command(flatten)]
    sources: Sources,
}

fn parse_kind(text: &str) -> Result<TriggerKind, String> {
    TriggerKind::parse(text).ok_or_else(|| {
        format!("unknown source `{text}`; one of {}", TriggerKind::ALL.map(TriggerKind::as_str).join(", "))
    })
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once(':').ok_or("write `Name: value`")?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths: Vec<PathBuf> = args.dir.iter().cloned().collect();
    let (catalog, diagnostics) = load_catalog(&paths, &args.sources);
    let Some(loaded) = catalog.get(&args.name) else {
        print_diagnostics(&diagnostics);
        if !diagnostics.is_empty() {
            bail!("automation `{}` did not load; see the problems above", args.name);
        }
        let known: Vec<&str> = catalog.names().collect();
        bail!("no automation named `{}`; known: {}", args.name, known.join(", "));
    };
    if !diagnostics.is_empty() {
        eprintln!("note: {} problems in automation files; run `nightshift validate`", diagnostics.len());
    }
    let automation = &loaded.compiled.definition;
    let source = match args.source {
        Some(source) => source,
        None => automation
            .all_triggers()
            .find_map(|t| t.source())
            .map(|t| t.kind())
            .ok_or_else(|| anyhow!("automation `{}` has no trigger", args.name))?,
    };
    let memory = match &args.memory {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} must hold a JSON object", path.display()))?
        }
        None => serde_json::Map::new(),
    };
    let now = args.now.unwrap_or_else(Utc::now);
    let headers: BTreeMap<String, String> = args.headers.into_iter().collect();
    let event = fixture_event(&args.event, source, &headers, now).map_err(|why| anyhow!(why))?;
    let prepared = PreparedEvent::new(event);
    let rendered = loaded.compiled.render(RuleEngine::shared(), &prepared, &memory_value(&memory), now)?;
    println!("{}", serde_json::to_string_pretty(&rendered)?);
    Ok(ExitCode::SUCCESS)
}
