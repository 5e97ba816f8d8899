//! The `nightshift` command line: argument parsing and one module per subcommand.

mod approve;
mod fixture;
mod follow_up;
mod ledger;
mod logs;
mod memory;
mod migrate;
mod output;
mod prune;
mod remote;
mod render;
mod runs;
mod sandbox;
mod schedule;
mod schema;
mod serve;
mod show;
mod status;
mod test;
mod trigger;
mod validate;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::catalog::{self, Catalog};
use crate::config::Diagnostic;
use crate::rules::RuleEngine;

/// nightshift: event-driven automations for AI coding agents.
///
/// Automations are YAML files that bind triggers (cron, webhooks, Slack, PagerDuty,
/// Alertmanager, GitHub) to a task an agent runs on a fresh branch. `validate`, `render`,
/// `test` and `schema` check and try them without running anything; `trigger`, `runs`,
/// `show`, `memory` and `prune` work with the store in the data directory.
#[derive(Debug, Parser)]
#[command(name = "nightshift", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where automations and the project settings come from.
#[derive(Debug, Clone, Default, clap::Args)]
struct Sources {
    /// Project settings (agent profiles). Default: ./nightshift.yaml if it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: webhooks, the API, cron slots, and hot reload.
    ///
    /// Loads every automation (refusing to start on any problem), opens the store,
    /// serves POST /hooks/{name} for webhook, GitHub, Slack, PagerDuty and Alertmanager
    /// triggers and /api for the other commands (which find the server through
    /// serve.json in the data directory), and fires cron slots. Edits to automation
    /// files are applied live; a broken edit is logged and the last good set keeps
    /// running. Stops cleanly on Ctrl-C or SIGTERM. Secrets are read at start (and
    /// `file:` secrets again at each reload); see docs/serving.md.
    Serve(serve::Args),
    /// Check automation files and report every problem as file:line:col.
    ///
    /// Exits 1 if any file has an error.
    Validate(validate::Args),
    /// Render one automation against an event fixture and print the task as JSON.
    ///
    /// Nothing is executed: this shows whether the event matches and why, the prompt,
    /// branch, agent command, network policies and flow-control keys.
    Render(render::Args),
    /// Run the `tests:` blocks of automations. Exits 1 on any failure.
    Test(test::Args),
    /// Print the JSON Schema of automation files (or write schemas/).
    Schema(schema::Args),
    /// Print the next fire times of a cron-triggered automation.
    ///
    /// Times are shown in the trigger's timezone, with UTC beside them, so daylight
    /// saving changes are visible: `nightshift schedule weekly-dependency-audit -n 5
    /// --from 2026-03-27T00:00:00Z`.
    Schedule(schedule::Args),
    /// Deliver an event fixture to one automation and store the outcome.
    ///
    /// Runs the automation's rules and flow control (dedupe, coalescing, cooldown,
    /// overlap) as a real delivery would, stores the event and prints one line per
    /// outcome: `r3 queued  NAME`, `coalesced`, `skipped (why)`, `failed: why`, or
    /// `not matched: NAME: why`. Exits 0 once the event is stored.
    Trigger(trigger::Args),
    /// List runs in the store, newest first.
    Runs(runs::Args),
    /// Show one run: its state, task and prompt, events and activity timeline.
    Show(show::Args),
    /// What the running server is doing: runs by state, active and waiting runs, workers.
    ///
    /// Asks the running `nightshift serve` (found by serve.json in the data directory, or
    /// `--server URL` with `--token`) for its status picture and prints the counts by
    /// state, one line per active run (its worker and lease) and per waiting run (why it
    /// waits: backoff, concurrency, same branch, overlapping paths, behind an older run,
    /// next in line, or awaiting approval), and the workers. `--watch` redraws it every
    /// `--interval` seconds until Ctrl-C; `--json` prints the API's answer
    /// (docs/serving.md, "Status").
    Status(status::Args),
    /// List, read, set or remove an automation's memory.
    ///
    /// `nightshift memory NAME` lists every live entry; `get KEY`, `set KEY VALUE` and
    /// `rm KEY` act on one. Values set here are recorded as written by a person.
    Memory(memory::Args),
    /// Delete what `retention` in nightshift.yaml no longer keeps.
    ///
    /// Finished runs beyond the count or age (default: 1000 runs and 30 days per
    /// automation) go with their activities and events, as do expired memory entries.
    /// Unfinished runs are never deleted.
    Prune(prune::Args),
    /// Copy an embedded store into an empty PostgreSQL database.
    ///
    /// For moving to several `serve` instances on one database (docs/scaling.md): stop
    /// `serve`, run `nightshift migrate-store --from .nightshift --to postgres://...`,
    /// then start the instances with `--store`. Every record is copied: events, runs,
    /// timelines, logs, memory, schedules, outbox messages, dedupe marks and cooldowns.
    MigrateStore(migrate::Args),
    /// Print a run's log: the setup and agent phases' output, secrets masked.
    ///
    /// The log is bounded (4 MiB by default): a longer one keeps its start and end,
    /// with `[… N bytes cut …]` between. `--follow` prints as it grows.
    Logs(logs::Args),
    /// Let a run that waits with a plan (`approval: plan`) go on to carry it out.
    Approve(approve::ApproveArgs),
    /// Cancel a run in any unfinished state; an agent that is running is stopped.
    Cancel(approve::CancelArgs),
    /// Start a follow-up of a run: the same automation on the run's branch.
    ///
    /// What a reply in the run's Slack thread (or a comment with the automation's
    /// `follow_up.phrase` on its pull request) does: a new run whose workspace starts at
    /// the branch's tip, whose push adds commits to it, and whose prompt carries the run's
    /// summary and TEXT as untrusted text. It waits while a run of that branch is going;
    /// past the automation's `follow_up.queue` it is refused. See docs/notify.md.
    FollowUp(follow_up::Args),
    /// Run agents for a `nightshift serve` on another machine.
    ///
    /// Claims runs over the server's worker API with a worker token (`serve
    /// --worker-token`), runs them here (workspaces from cached mirrors, setup and
    /// agent phases) and reports activities, logs and results back. Automations' secrets
    /// (`env:`, `file:`) are read here. Ctrl-C or SIGTERM stops it: the agents in progress
    /// are stopped and their runs given back, queued again at once with the attempt not
    /// counted (a worker that dies loses them when their leases expire).
    Worker(worker::Args),
    /// Check or try the sandbox that setup and agent phases run in.
    ///
    /// `check` tells whether this machine allows it (and how to allow it if not); `run`
    /// runs a command in one, with a directory read-write and the egress proxy deciding
    /// by `--allow` rules. See docs/sandbox.md.
    Sandbox(sandbox::Args),
    /// The jail's helper, which the worker starts for each phase; not for people.
    #[command(name = "__sandbox-exec", hide = true)]
    SandboxExec,
}

/// Parses arguments, runs the command, and maps the outcome to an exit code.
pub fn run() -> ExitCode {
    // The jail's helper must stay single-threaded and quiet until its command's exec:
    // it goes before anything else (logging, parsing).
    if std::env::args_os().nth(1).is_some_and(|arg| arg == crate::sandbox::jail::HELPER_ARG) {
        crate::sandbox::jail::helper_main();
    }
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(args) => init_logging(args.log_json, "nightshift=info,warn"),
        Command::Worker(_) => init_logging(false, "nightshift=info,warn"),
        _ => init_logging(false, "warn"),
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Render(args) => render::run(args),
        Command::Test(args) => test::run(args),
        Command::Schema(args) => schema::run(args),
        Command::Schedule(args) => schedule::run(args),
        Command::Trigger(args) => trigger::run(args),
        Command::Runs(args) => runs::run(args),
        Command::Show(args) => show::run(args),
        Command::Status(args) => status::run(args),
        Command::Memory(args) => memory::run(args),
        Command::Prune(args) => prune::run(args),
        Command::MigrateStore(args) => migrate::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Approve(args) => approve::approve(args),
        Command::Cancel(args) => approve::cancel(args),
        Command::FollowUp(args) => follow_up::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Sandbox(args) => sandbox::run(args),
        Command::SandboxExec => crate::sandbox::jail::helper_main(),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, as text or JSON lines, at the level NIGHTSHIFT_LOG sets (else `default`).
/// Colours only on a terminal: a log file or a journal gets plain text.
fn init_logging(json: bool, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIGHTSHIFT_LOG").unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads automations from `paths` (default `automations/`).
fn load_catalog(paths: &[PathBuf], sources: &Sources) -> (Catalog, Vec<Diagnostic>) {
    let default = [PathBuf::from("automations")];
    let paths = if paths.is_empty() { &default[..] } else { paths };
    let project = catalog::project_file(sources.config.as_deref());
    catalog::load(RuleEngine::shared(), paths, project.as_deref())
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
}
