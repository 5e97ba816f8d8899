//! `nightshift status`: the running server's status picture (`GET /api/status`) in a
//! terminal: counts by state, one line per active or waiting run with its worker or why
//! it waits, and the workers; `--watch` redraws it until Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};

use super::ledger::Location;
use super::output::{excerpt, printable, table};
use crate::server::discovery::ServeFile;
use crate::server::status::Status;

/// The widest the WORKER / WHY column gets.
const WHY_WIDTH: usize = 70;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the picture live: clear the screen and draw it again every `--interval`
    /// seconds until Ctrl-C.
    #[arg(long, short)]
    watch: bool,
    /// Seconds between redraws with `--watch`.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    interval: f64,
    /// Print the API's answer as JSON (with `--watch`, one document per redraw).
    #[arg(long)]
    json: bool,
    /// The server's URL, e.g. `http://10.0.0.5:8080`, instead of the one `serve.json`
    /// in the data directory names; the token is then `--token` or
    /// `NIGHTSHIFT_API_TOKEN`.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The API token for `--server` (default: `NIGHTSHIFT_API_TOKEN`).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    location: Location,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a number of seconds above 0, not {}", args.interval);
    }
    let (url, token) = match &args.server {
        Some(url) => {
            let token = args
                .token
                .clone()
                .or_else(|| std::env::var("NIGHTSHIFT_API_TOKEN").ok())
                .ok_or_else(|| anyhow!("--server needs --token or NIGHTSHIFT_API_TOKEN"))?;
            (url.trim_end_matches('/').to_string(), token)
        }
        None => {
            let data = args.location.data_dir();
            let file = ServeFile::read(&data).ok_or_else(|| {
                anyhow!(
                    "no running nightshift serve found: {} does not exist; start `nightshift serve` \
                     (with this --data), or name one with --server",
                    ServeFile::path(&data).display()
                )
            })?;
            (file.url, file.token)
        }
    };
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let fetch = || -> anyhow::Result<(Status, String)> {
        let response = client
            .get(format!("{url}/api/status"))
            .bearer_auth(&token)
            .send()
            .with_context(|| format!("cannot reach nightshift serve at {url}"))?;
        let status = response.status();
        let body = response.text()?;
        if !status.is_success() {
            bail!("nightshift serve answered {status}: {}", excerpt(&body, 300));
        }
        let picture = serde_json::from_str(&body).with_context(|| format!("{url}/api/status answered {body:.200}"))?;
        Ok((picture, body))
    };
    loop {
        let (picture, body) = fetch()?;
        let text = if args.json { format!("{body}\n") } else { render(&picture) };
        if args.watch && !args.json {
            // Clear the screen and go home, then draw.
            print!("\x1b[2J\x1b[H");
        }
        print!("{text}");
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}

/// The picture as text: counts, a table of active and waiting runs, the workers.
pub fn render(status: &Status) -> String {
    let now = status.now;
    let counts: Vec<String> = status
        .counts
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    let mut out = format!(
        "{}  queue depth {}  at {}\n",
        if counts.is_empty() { "no runs".to_string() } else { counts.join(", ") },
        status.queue_depth,
        super::output::time(now)
    );
    // The columns every line has, then its last: the worker or why it waits.
    let row = |id: &dyn std::fmt::Display,
               automation: &str,
               state: &dyn std::fmt::Display,
               created_at,
               branch: &Option<String>,
               last: &str| {
        vec![
            id.to_string(),
            automation.to_string(),
            state.to_string(),
            age(now, created_at),
            branch.clone().unwrap_or_default(),
            excerpt(last, WHY_WIDTH),
        ]
    };
    let mut rows = Vec::new();
    for run in &status.active {
        let lease = match (&run.worker, run.lease_expires_at) {
            (Some(worker), Some(until)) => format!("{worker}, lease ends in {}", age(until, now)),
            (Some(worker), None) => worker.clone(),
            _ => String::new(),
        };
        rows.push(row(&run.id, &run.automation, &run.state, run.created_at, &run.branch, &lease));
    }
    for run in &status.waiting {
        rows.push(row(&run.id, &run.automation, &run.state, run.created_at, &run.branch, &run.why.text));
    }
    if rows.is_empty() {
        out.push_str("no active or waiting runs\n");
    } else {
        out.push('\n');
        out.push_str(&table(&["ID", "AUTOMATION", "STATE", "AGE", "BRANCH", "WORKER / WHY"], &rows));
    }
    let unlisted = status.waiting_total.saturating_sub(status.waiting.len());
    if unlisted > 0 {
        out.push_str(&format!("... and {unlisted} more waiting\n"));
    }
    out.push_str(&format!("\nworkers: {} local", status.workers.local));
    for worker in &status.workers.seen {
        let kind = if worker.remote { "remote" } else { "local" };
        let leases: Vec<String> = worker.leases.iter().map(|lease| lease.run.to_string()).collect();
        let holds = if leases.is_empty() { "idle".to_string() } else { format!("holds {}", leases.join(" ")) };
        let seen = worker.last_claim_at.map(|at| format!(", asked {} ago", age(now, at))).unwrap_or_default();
        out.push_str(&format!("\n  {} ({kind}) {holds}{seen}", worker.name));
    }
    out.push('\n');
    printable(&out)
}

/// `later - earlier` in one unit: `45s`, `12m`, `3h`, `2d` (0s when `later` is earlier).
fn age(later: DateTime<Utc>, earlier: DateTime<Utc>) -> String {
    let seconds = (later - earlier).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::runs::queue::Wait;
    use crate::runs::{RunId, RunState};
    use crate::server::status::{ActiveRun, WaitingRun, WorkerStatus, Workers, why};

    #[test]
    fn the_picture_reads_as_counts_a_line_per_run_and_the_workers() {
        let at = |minute: u32| Utc.with_ymd_and_hms(2026, 12, 5, 6, minute, 0).unwrap();
        let mut counts: std::collections::BTreeMap<RunState, u64> = RunState::ALL.map(|s| (s, 0)).into();
        counts.insert(RunState::Queued, 1);
        counts.insert(RunState::Running, 1);
        counts.insert(RunState::Succeeded, 7);
        let status = Status {
            now: at(30),
            counts,
            queue_depth: 1,
            active: vec![ActiveRun {
                id: RunId(3),
                automation: "fix".into(),
                state: RunState::Running,
                attempt: 1,
                worker: Some("local-0".into()),
                lease_expires_at: Some(at(31)),
                created_at: at(10),
                started_at: Some(at(11)),
                repo: Some("/srv/git/api".into()),
                branch: Some("ns/fix-3".into()),
            }],
            waiting: vec![WaitingRun {
                id: RunId(4),
                automation: "docs".into(),
                state: RunState::Queued,
                attempt: 0,
                created_at: at(29),
                repo: Some("/srv/git/api".into()),
                branch: Some("ns/docs-4".into()),
                why: why(RunId(4), RunState::Queued, Some(Wait::PathsOverlap { run: RunId(3) })),
            }],
            waiting_total: 3,
            workers: Workers {
                local: 1,
                seen: vec![WorkerStatus {
                    name: "local-0".into(),
                    remote: false,
                    last_claim_at: Some(at(28)),
                    leases: Vec::new(),
                }],
            },
            automations: Vec::new(),
        };
        let expected = "\
1 queued, 1 running, 7 succeeded  queue depth 1  at 2026-12-05T06:30:00Z

ID  AUTOMATION  STATE    AGE  BRANCH     WORKER / WHY
r3  fix         running  20m  ns/fix-3   local-0, lease ends in 1m
r4  docs        queued   1m   ns/docs-4  paths overlap with r3
... and 2 more waiting

workers: 1 local
  local-0 (local) idle, asked 2m ago
";
        assert_eq!(render(&status), expected);
    }
}
