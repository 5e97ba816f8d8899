//! An event fixture on the command line (`render`, `trigger`): the options that describe
//! it, finding the automation it is for, and turning both into the `Event` a source
//! would have produced.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use chrono::{DateTime, Utc};

use super::print_diagnostics;
use crate::catalog::{Catalog, LoadedAutomation};
use crate::config::Diagnostic;
use crate::event::Event;
use crate::selftest::{fixture_event, fixture_events};
use crate::triggers::TriggerKind;

/// A payload file and how it was delivered.
#[derive(Debug, Clone, clap::Args)]
pub struct FixtureArgs {
    /// The event payload (JSON, as the source delivers it).
    #[arg(long, value_name = "FILE.json")]
    pub event: PathBuf,
    /// The source that received the event. Default: the automation's first trigger.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub source: Option<TriggerKind>,
    /// A request header of the delivery, e.g. `X-GitHub-Event: pull_request`. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

impl FixtureArgs {
    /// The event the source (by default the automation's first trigger) would have made
    /// of the fixture, received at `now`.
    pub fn event_for(&self, loaded: &LoadedAutomation, now: DateTime<Utc>) -> anyhow::Result<Event> {
        let headers: BTreeMap<String, String> = self.headers.iter().cloned().collect();
        fixture_event(&self.event, self.source_for(loaded)?, &headers, now).map_err(|why| anyhow!(why))
    }

    /// The events the automation's hook would make of the fixture: one, or one per alert
    /// for an Alertmanager trigger with `per: alert`.
    pub fn events_for(&self, loaded: &LoadedAutomation, now: DateTime<Utc>) -> anyhow::Result<Vec<Event>> {
        let headers: BTreeMap<String, String> = self.headers.iter().cloned().collect();
        let automation = &loaded.compiled.definition;
        fixture_events(automation, &self.event, self.source_for(loaded)?, &headers, now).map_err(|why| anyhow!(why))
    }

    fn source_for(&self, loaded: &LoadedAutomation) -> anyhow::Result<TriggerKind> {
        let automation = &loaded.compiled.definition;
        self.source
            .or_else(|| automation.first_source())
            .ok_or_else(|| anyhow!("automation `{}` has no trigger; give --source", automation.name))
    }
}

/// The automation called `name`. When it is missing, the error says whether it failed to
/// load (after printing the problems) or which names exist.
pub fn find_automation<'c>(
    catalog: &'c Catalog,
    diagnostics: &[Diagnostic],
    name: &str,
) -> anyhow::Result<&'c LoadedAutomation> {
    let Some(loaded) = catalog.get(name) else {
        print_diagnostics(diagnostics);
        if !diagnostics.is_empty() {
            bail!("automation `{name}` did not load; see the problems above");
        }
        if let Some(close) = crate::config::did_you_mean(name, catalog.names()) {
            bail!("no automation named `{name}`; did you mean `{close}`?");
        }
        let known: Vec<&str> = catalog.names().collect();
        bail!("no automation named `{name}`; known: {}", known.join(", "));
    };
    if !diagnostics.is_empty() {
        eprintln!("note: {} problems in automation files; run `nightshift validate`", diagnostics.len());
    }
    Ok(loaded)
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
