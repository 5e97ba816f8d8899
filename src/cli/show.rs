//! `nightshift show`: one run from the store, with its task, events and activity timeline.

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::bail;

use super::Sources;
use super::ledger::{Location, connect};
use super::output::{printable, time};
use crate::runs::RunId;
use crate::store::RunRecord;
use crate::task::Task;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's id, e.g. `r42` (or `42`).
    run: RunId,
    /// Print `{run, activities, events}` as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    location: Location,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = connect(&args.location, &Sources::default())?;
    let Some(record) = ledger.show(args.run)? else {
        bail!("no run {} in this store; `nightshift runs` lists them", args.run);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", printable(&describe(&record)));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(record: &RunRecord) -> String {
    let run = &record.run;
    let mut out = String::new();
    // Continuation lines of a long value (a summary, a reason) stay under its first line.
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "  {name:<11} {}", value.trim_end().replace('\n', "\n              "));
    };
    match run.parent {
        Some(link) if link.role == crate::parallel::Role::FollowUp => {
            field("follows", &format!("{} (a follow-up on its branch)", link.run))
        }
        Some(link) => field("parent", &format!("{} (its {})", link.run, role_name(link.role, link.index))),
        None => {
            if let Some(parent) = crate::runs::followup::parent(run) {
                field("follows", &format!("{parent} (a follow-up on its branch)"));
            }
        }
    }
    let attempts = run.flow.retry.attempts.max(1);
    field("attempt", &format!("{} of at most {attempts}", run.attempt));
    field("created", &time(run.created_at));
    field("updated", &time(run.updated_at));
    if let Some(at) = run.started_at {
        field("started", &time(at));
    }
    if let Some(at) = run.finished_at {
        field("finished", &time(at));
    }
    if let Some(at) = run.not_before {
        field("not before", &time(at));
    }
    if let Some(lease) = &run.lease {
        let held = format!("{}, epoch {}, until {}", lease.worker, lease.epoch, time(lease.expires_at));
        field("lease", &held);
    }
    if run.approved {
        field("approved", "yes");
    }
    if let Some(skip) = &run.skip {
        field("skipped", &skip.to_string());
    }
    if let Some(reason) = &run.reason {
        field("reason", reason);
    }
    if let Some(result) = &run.result {
        if !result.summary.is_empty() {
            field("summary", &result.summary);
        }
        if let Some(code) = result.exit_code {
            field("exit code", &code.to_string());
        }
        if let Some(url) = result.details.get("pull_request").and_then(|url| url.as_str()) {
            field("pull request", url);
        }
    }
    let mut text = format!("{}  {}  {}\n{out}", run.id, run.automation, run.state);
    match &run.task {
        Some(task) => text.push_str(&describe_task(task)),
        None => text.push_str("task\n  none: rendering failed\n"),
    }
    if !record.children.is_empty() {
        text.push_str("children\n");
        for child in &record.children {
            let _ = writeln!(
                text,
                "  {:<6} {:<12} {}",
                child.id.to_string(),
                role_name(child.role, child.index),
                child.state
            );
        }
    }
    if let Some(pick) = run.result.as_ref().and_then(|result| result.details.get("pick")) {
        text.push_str("pick\n");
        for attempt in pick["attempts"].as_array().into_iter().flatten() {
            let (id, reason) = (attempt["run"].as_str().unwrap_or("?"), attempt["reason"].as_str().unwrap_or(""));
            let _ = writeln!(text, "  {id:<6} {reason}");
        }
    }
    text.push_str("events\n");
    for id in &run.event_ids {
        match record.events.iter().find(|stored| &stored.event.id == id) {
            Some(stored) => {
                let event = &stored.event;
                let _ = writeln!(text, "  {id}  {}  received {}", event.kind, time(event.received_at));
            }
            None => {
                let _ = writeln!(text, "  {id}  (no longer stored)");
            }
        }
    }
    text.push_str("activity\n");
    if record.activities.is_empty() {
        text.push_str("  none yet\n");
    }
    for activity in &record.activities {
        let mut lines = activity.text.lines();
        let first = lines.next().unwrap_or_default();
        let _ = writeln!(text, "  {}  {}  {}  {first}", activity.seq, time(activity.at), activity.kind);
        for line in lines {
            let _ = writeln!(text, "      {line}");
        }
    }
    text
}

/// `attempt 2`, `verify 1`, `join`: what a linked run is to its parent.
fn role_name(role: crate::parallel::Role, index: u32) -> String {
    let role = role.as_str().replace('_', "-");
    if index == 0 { role } else { format!("{role} {index}") }
}

fn describe_task(task: &Task) -> String {
    // The argv carries the prompt; show where it goes instead of repeating it.
    let unfill =
        |arg: &String| if task.prompt.is_empty() { arg.clone() } else { arg.replace(&task.prompt, "{prompt}") };
    let argv: Vec<String> = task.agent.argv.iter().map(|arg| shell_word(&unfill(arg))).collect();
    let mut out = String::from("task\n");
    let _ = writeln!(out, "  {:<11} {}", "repo", task.repo);
    let _ = writeln!(out, "  {:<11} {}", "base", task.base);
    let _ = writeln!(out, "  {:<11} {}", "branch", task.branch);
    let _ = writeln!(out, "  {:<11} {} ({})", "agent", argv.join(" "), task.agent.profile);
    out.push_str("  prompt\n");
    for line in task.prompt.lines() {
        let _ = writeln!(out, "{}", format!("    {line}").trim_end());
    }
    out
}

/// `word` as a POSIX shell would need it written.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,{}".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}
