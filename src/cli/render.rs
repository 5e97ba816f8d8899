//! `nightshift render`: apply one automation to an event fixture and print the result
//! (one per alert for an Alertmanager trigger with `per: alert`), with the messages its
//! run would send to its `notify:` targets (`delivery::preview`), or with `--plan` its
//! parallel plan, readably.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::fixture::{FixtureArgs, find_automation};
use super::{Sources, load_catalog};
use crate::config::TestResult;
use crate::delivery::preview;
use crate::rules::{PreparedEvent, RuleEngine, describe_plan, memory_value};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The automation's name.
    name: String,
    #[command(flatten)]
    fixture: FixtureArgs,
    /// Memory as earlier runs left it (a JSON object).
    #[arg(long, value_name = "FILE.json")]
    memory: Option<PathBuf>,
    /// How the run ends, for its end messages: a JSON object with `state`, `summary`,
    /// `reason`, `pushed`, `pull_request` (as a test's `result`). Default: it succeeds, with
    /// a placeholder summary.
    #[arg(long, value_name = "FILE.json")]
    result: Option<PathBuf>,
    /// Directory (or file) of automations. Default: automations/
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The time of the render (RFC 3339). Default: now.
    #[arg(long, value_name = "TIME")]
    now: Option<DateTime<Utc>>,
    /// Print the parallel plan (attempts, verification, children) readably instead of the
    /// JSON, where the plan is `task.plan`.
    #[arg(long)]
    plan: bool,
    #[command(flatten)]
    sources: Sources,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths: Vec<PathBuf> = args.dir.iter().cloned().collect();
    let (catalog, diagnostics) = load_catalog(&paths, &args.sources);
    let loaded = find_automation(&catalog, &diagnostics, &args.name)?;
    let memory = match &args.memory {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} must hold a JSON object", path.display()))?
        }
        None => serde_json::Map::new(),
    };
    let result: Option<TestResult> = match &args.result {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{}: not a run result", path.display()))?)
        }
        None => None,
    };
    let now = args.now.unwrap_or_else(Utc::now);
    let mut renders = Vec::new();
    let mut plans = Vec::new();
    for event in args.fixture.events_for(loaded, now)? {
        let prepared = PreparedEvent::new(event);
        let rendered = loaded.compiled.render(RuleEngine::shared(), &prepared, &memory_value(&memory), now)?;
        plans.push(match &rendered.task {
            Some(task) => task.plan.as_ref().map_or_else(|| "plan: none (a single run)".to_string(), describe_plan),
            None => format!("plan: none (the event does not match: {})", rendered.reason),
        });
        let mut shown = serde_json::to_value(&rendered)?;
        if let (Some(task), Some(object)) = (&rendered.task, shown.as_object_mut()) {
            let previews = preview::messages(task, result.as_ref(), &catalog.slack, &catalog.github, now);
            object.insert("messages".into(), serde_json::to_value(&previews.messages)?);
            object.insert("result".into(), serde_json::to_value(&previews.result)?);
        }
        renders.push(shown);
    }
    if args.plan {
        println!("{}", plans.join("\n"));
        return Ok(ExitCode::SUCCESS);
    }
    // One event renders as one object; a notification split per alert as a list.
    match renders.as_slice() {
        [one] => println!("{}", serde_json::to_string_pretty(one)?),
        all => println!("{}", serde_json::to_string_pretty(all)?),
    }
    Ok(ExitCode::SUCCESS)
}
