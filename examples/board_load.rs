//! Load tool for issue 16's speed goals (the board and the status picture): fills a data
//! directory with many runs through the store API, starts the release `serve` on it and
//! times the runs list and `/api/status`; then measures hook ingest with and without 100
//! open live boards (server-sent events). Build the binary first; this example does not.
//!
//! ```text
//! cargo build --release && cargo build --release --example board_load
//! target/release/examples/board_load pages [RUNS=100000] [REQUESTS=200]
//! target/release/examples/board_load live [STREAMS=100] [ROUNDS=3] [SECONDS=5] [CONNECTIONS=16] [--path /api/runs/stream]
//! ```
//!
//! - `pages`: RUNS runs are written straight into a fresh store (`SledStore`, no
//!   server): in chunks of 5,000, each queued with `ingest_queued`, then claimed and
//!   completed by four threads (so group commit batches their syncs), 70% succeeded,
//!   10% failed, 10% cancelled before they started and 10% skipped (`record_skipped_slots`),
//!   except the first 200, left waiting on one branch (the first leased for a year, the
//!   rest queued behind it), so the newest runs are finished ones and the queue has
//!   reasons to give. Then `serve` starts on the store and each of `GET /api/runs?limit=50`, with
//!   `&state=failed`, with `&state=queued`, and `GET /api/status` is asked REQUESTS times,
//!   one after another on one keep-alive connection; p50, p99 and max of each.
//! - `live`: a server with a hook that creates a run per delivery (`load-hook`, HMAC
//!   signed, as serve_load's), no workers. Each round drives CONNECTIONS closed-loop
//!   connections of signed deliveries for SECONDS alone, then again with STREAMS
//!   connections open on the board's live endpoint (`--path`, default
//!   `/api/runs/stream`, with the API token as a bearer token), each read as fast as it
//!   comes; like the board's page, each reads `GET /api/runs?limit=50&view=summary` again after a
//!   change, at most once a second. Prints deliveries per second for both in every round, their medians and the
//!   ratio, and the bytes the streams received. A path that answers 404 or 400 (no board
//!   on this build: `/api/runs/{id}` takes the path) measures the first half only and
//!   says so.
//!
//! The server is `NIGHTSHIFT_BIN`, else `target/release/nightshift`; its files live in a
//! temporary directory under `TMPDIR`. Only loopback addresses are used; every loop is
//! bounded in count and time; the server is stopped with SIGTERM at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, TimeZone, Utc};
use hyper::StatusCode;
use nightshift::event::Event;
use nightshift::pipeline::{Audience, Pipeline};
use nightshift::runs::{Completion, RunResult, SkipReason};
use nightshift::server::discovery::ServeFile;
use nightshift::store::{NewRun, SledStore, Store};
use nightshift::triggers::TriggerKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::http::{connect, exchange, exchange_once, get, hook_request, median_of};

mod support;

const USAGE: &str = "usage: board_load pages [RUNS=100000] [REQUESTS=200]
       board_load live [STREAMS=100] [ROUNDS=3] [SECONDS=5] [CONNECTIONS=16] [--path /api/runs/stream]
(build the server first: cargo build --release)";

const SECRET: &str = "board-load-secret";
const MAX_RUNS: u64 = 10_000_000;
const MAX_REQUESTS: u64 = 100_000;
const MAX_STREAMS: u64 = 10_000;
const MAX_ROUNDS: u64 = 100;
const MAX_SECONDS: u64 = 600;
const MAX_CONNECTIONS: u64 = 1000;
/// Runs written per chunk while filling.
const CHUNK: u64 = 5_000;
/// Runs left queued at the end of the fill.
const LEFT_QUEUED: u64 = 200;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);

const HOOK: &str = r#"name: load-hook
trigger:
  webhook:
    auth: { hmac: { secret: env:LOAD_SECRET } }
concurrency: { limit: 1000 }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/load-{{ event.n }}"
  prompt: "Handle {{ event.n }}"
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = "/api/runs/stream".to_string();
    let mut numbers = Vec::new();
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--path" {
            match rest.next() {
                Some(value) if value.starts_with('/') => path = value.clone(),
                _ => {
                    eprintln!("--path needs a path starting with /\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
        } else if let Ok(number) = arg.parse::<u64>() {
            numbers.push(number);
        } else {
            eprintln!("`{arg}` is not a number\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let number = |index: usize, default: u64, max: u64| numbers.get(index).copied().unwrap_or(default).clamp(1, max);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match args.first().map(String::as_str) {
        Some("pages") => runtime.block_on(pages(number(0, 100_000, MAX_RUNS), number(1, 200, MAX_REQUESTS))),
        Some("live") => runtime.block_on(live(
            number(0, 100, MAX_STREAMS),
            number(1, 3, MAX_ROUNDS),
            number(2, 5, MAX_SECONDS),
            number(3, 16, MAX_CONNECTIONS),
            &path,
        )),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// pages

async fn pages(runs: u64, requests: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let data = workspace.data();
    let filled = Instant::now();
    fill(&workspace.automations(), &data, runs)?;
    let fill_time = filled.elapsed();
    let size = dir_size(&data);
    println!("filled {runs} runs in {:.1} s ({:.0} MiB on disk)", fill_time.as_secs_f64(), size as f64 / 1048576.0);

    let serve = Serve::start(&workspace).await?;
    println!("serve answered /healthz {:.2} s after spawning", serve.ready.as_secs_f64());
    let (mut sender, driver) = connect(serve.address).await?;
    let driver = tokio::spawn(driver);
    let paths = [
        "/api/runs?limit=50",
        "/api/runs?limit=50&view=summary",
        "/api/runs?limit=50&state=failed",
        "/api/runs?limit=50&state=queued",
        "/api/status",
    ];
    println!("\n{requests} requests each, one after another on one connection:");
    for path in paths {
        let mut latencies = Vec::new();
        let mut bytes = 0;
        for _ in 0..requests {
            let began = Instant::now();
            let request = get(serve.address, path, Some(&serve.token));
            let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, request))
                .await
                .with_context(|| format!("GET {path} took over {REQUEST_TIMEOUT:?}"))??;
            latencies.push(began.elapsed());
            if status != StatusCode::OK {
                bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&body));
            }
            bytes = body.len();
        }
        latencies.sort_unstable();
        println!(
            "  {path:<36} p50 {}  p99 {}  max {}  ({bytes} bytes)",
            millis(percentile(&latencies, 50)),
            millis(percentile(&latencies, 99)),
            millis(*latencies.last().unwrap_or(&Duration::ZERO))
        );
    }
    drop(sender);
    driver.abort();
    serve.stop().await
}

/// Writes `runs` runs into the store in `data` (see the module's comment).
fn fill(automations: &Path, data: &Path, runs: u64) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(data)?);
    let (catalog, diagnostics) =
        nightshift::catalog::load(nightshift::rules::RuleEngine::shared(), &[automations.to_path_buf()], None);
    if !diagnostics.is_empty() {
        bail!("the load automation has problems: {diagnostics:?}");
    }
    let pipeline = Pipeline::new(Arc::new(catalog), Arc::clone(&store));
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().context("a fixed start")?;
    let at = |n: u64| start + chrono::Duration::milliseconds(i64::try_from(n).unwrap_or(i64::MAX) * 100);
    // One rendered run for the template: every other run is a copy with its own branch.
    let template_event = event("template", 0, at(0));
    let report = pipeline.ingest(template_event, Audience::Named("load-hook"), at(0))?;
    let template = report.outcome.runs.first().context("the template event made no run")?.run;
    let template = store.cancel(template, "the fill's template", at(0))?;
    let (task, flow) = (template.task.context("the template has no task")?, template.flow);

    // First the runs left waiting: one branch, the first held by a worker for a year, so
    // the others stay queued behind it and the newest runs listed are finished ones.
    let mut n = 1;
    for i in 0..LEFT_QUEUED {
        let mut task = task.clone();
        // A repository of their own: runs of one repository with overlapping paths (the
        // default, `**`) run one at a time, and these must hold back only each other.
        task.repo = "https://github.com/acme/waiting.git".into();
        task.branch = "agent/shared".into();
        let new = NewRun {
            automation: "load-hook".into(),
            definition_hash: template.definition_hash.clone(),
            rendered: Ok((task, flow.clone())),
        };
        store.ingest(&event("waiting", i, at(n)), vec![new], at(n))?;
        n += 1;
    }
    store.claim("fill-holder", Duration::from_secs(400 * 86_400), at(n))?.context("the first waiting run")?;

    let mut written = 1 + LEFT_QUEUED;
    while written < runs {
        let chunk = CHUNK.min(runs - written);
        let skipped = chunk / 10;
        let slots: Vec<(Event, SkipReason)> = (0..skipped)
            .map(|i| (event("skip", n + i, at(n + i)), SkipReason::Misfire { slot: at(n + i), policy: "skip".into() }))
            .collect();
        store.record_skipped_slots("load-hook", &template.definition_hash, &slots, at(n))?;
        n += skipped;
        let queued = chunk - skipped;
        let mut pending = Vec::new();
        let mut ids = Vec::new();
        for i in 0..queued {
            let mut task = task.clone();
            task.branch = format!("agent/load-{}", n + i);
            let new = NewRun {
                automation: "load-hook".into(),
                definition_hash: template.definition_hash.clone(),
                rendered: Ok((task, flow.clone())),
            };
            let (outcome, durability) = store.ingest_queued(&event("run", n + i, at(n + i)), vec![new], at(n + i))?;
            ids.extend(outcome.runs.iter().map(|outcome| outcome.run));
            pending.push(durability);
        }
        n += queued;
        for durability in pending {
            durability.wait()?;
        }
        let to_finish = &ids[..];
        // Every ninth of the rest is cancelled before it starts; workers take the others.
        for id in to_finish.iter().filter(|id| id.0 % 9 == 0) {
            store.cancel(*id, "the fill cancels some", at(n))?;
        }
        let claims = to_finish.iter().filter(|id| id.0 % 9 != 0).count();
        finish_claimed(&store, claims, at(n))?;
        written += chunk;
        eprint!("\r{written} runs");
    }
    eprintln!();
    Ok(())
}

/// Four threads claim and complete `claims` runs: one in eight fails, the rest succeed.
fn finish_claimed(store: &Arc<dyn Store>, claims: usize, now: DateTime<Utc>) -> anyhow::Result<()> {
    let left = Arc::new(AtomicU64::new(claims as u64));
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let (store, left) = (Arc::clone(store), Arc::clone(&left));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let worker = format!("fill-{thread}");
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                    let Some(claim) = store.claim(&worker, Duration::from_secs(600), now)? else { break };
                    let completion = if claim.run.id.0 % 8 == 0 {
                        Completion::Failed { reason: "exit 1".into(), retryable: false, result: None }
                    } else {
                        Completion::Succeeded { result: RunResult { summary: "done".into(), ..RunResult::default() } }
                    };
                    store.complete(claim.run.id, claim.lease.epoch, completion, Vec::new(), now)?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("a fill thread panicked"))??;
    }
    Ok(())
}

fn event(kind: &str, n: u64, at: DateTime<Utc>) -> Event {
    let mut event = Event::from_delivery(TriggerKind::Webhook, serde_json::json!({ "n": n }), Default::default(), at);
    event.id = format!("webhook:board-load:{kind}-{n}");
    event
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            _ => entry.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// live

async fn live(streams: u64, rounds: u64, seconds: u64, connections: u64, path: &str) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let serve = Serve::start(&workspace).await?;
    let counter = Arc::new(AtomicU64::new(0));
    // Does the live endpoint exist on this build?
    let probe = open_stream(serve.address, path, &serve.token).await;
    // A build without the board answers 404 (or 400: `/api/runs/{id}` takes the path).
    let has_stream = match probe {
        Ok(_) => true,
        Err(error) if format!("{error:#}").contains("answered `HTTP/1.1 4") => {
            println!("{error:#}: no live board on this build; measuring ingest without streams only");
            false
        }
        Err(error) => return Err(error.context(format!("opening {path}"))),
    };
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let rate = drive_hooks(serve.address, connections, seconds, &counter).await?;
        alone.push(rate);
        let mut line = format!("round {round}: alone {rate:.0}/s");
        if has_stream {
            let stop = Arc::new(AtomicBool::new(false));
            let received = Arc::new(AtomicU64::new(0));
            let reads = Arc::new(AtomicU64::new(0));
            let mut readers = Vec::new();
            for _ in 0..streams {
                let stream = open_stream(serve.address, path, &serve.token).await?;
                let board = Board { address: serve.address, token: serve.token.clone(), reads: Arc::clone(&reads) };
                readers.push(tokio::spawn(read_stream(stream, Arc::clone(&stop), Arc::clone(&received), board)));
            }
            let rate = drive_hooks(serve.address, connections, seconds, &counter).await?;
            stop.store(true, Ordering::Relaxed);
            for reader in readers {
                reader.abort();
            }
            beside.push(rate);
            line.push_str(&format!(
                ", with {streams} streams {rate:.0}/s ({} KiB streamed, {} page reads)",
                received.load(Ordering::Relaxed) / 1024,
                reads.load(Ordering::Relaxed)
            ));
        }
        println!("{line}");
    }
    let alone = median_of(&mut alone);
    if has_stream {
        let beside = median_of(&mut beside);
        println!(
            "median: alone {alone:.0}/s, with {streams} streams {beside:.0}/s, ratio {:.3}",
            beside / alone.max(f64::MIN_POSITIVE)
        );
    } else {
        println!("median: alone {alone:.0}/s");
    }
    serve.stop().await
}

/// Opens one live stream; fails with the status when the answer is not 200.
async fn open_stream(address: SocketAddr, path: &str, token: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(address).await.context("connecting")?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut first = [0u8; 12];
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut first)).await.context("no answer")??;
    let line = String::from_utf8_lossy(&first);
    if !line.starts_with("HTTP/1.1 200") {
        bail!("GET {path} answered `{}`", line.trim());
    }
    Ok(stream)
}

/// What an open board does besides reading its feed: it reads its page of runs again
/// after a change, at most once a second (src/board/assets/board.js).
struct Board {
    address: SocketAddr,
    token: String,
    reads: Arc<AtomicU64>,
}

async fn read_stream(mut stream: TcpStream, stop: Arc<AtomicBool>, received: Arc<AtomicU64>, board: Board) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut last_read: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => received.fetch_add(n as u64, Ordering::Relaxed),
        };
        if last_read.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            last_read = Some(Instant::now());
            let page = get(board.address, "/api/runs?limit=50&view=summary", Some(&board.token));
            if exchange_once(board.address, page, REQUEST_TIMEOUT).await.is_ok() {
                board.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Closed loop: `connections` keep-alive connections send signed deliveries one after
/// another for `seconds`; returns the 202s per second.
async fn drive_hooks(
    address: SocketAddr,
    connections: u64,
    seconds: u64,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let began = Instant::now();
    let end = began + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let counter = Arc::clone(counter);
            tokio::spawn(async move {
                let mut accepted = 0u64;
                let (mut sender, driver) = connect(address).await?;
                let driver = tokio::spawn(driver);
                while Instant::now() < end {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let request = hook_request(&address.to_string(), n, SECRET);
                    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, request))
                        .await
                        .context("a delivery took too long")??;
                    if status != StatusCode::ACCEPTED {
                        bail!("a delivery answered {status}: {}", String::from_utf8_lossy(&body));
                    }
                    accepted += 1;
                }
                drop(sender);
                driver.abort();
                anyhow::Ok(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.context("a connection task failed")??;
    }
    Ok(accepted as f64 / began.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// The server

struct Workspace {
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Workspace {
    fn new() -> anyhow::Result<Workspace> {
        let binary = match std::env::var_os("NIGHTSHIFT_BIN") {
            Some(path) => PathBuf::from(path),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/nightshift"),
        };
        if !binary.exists() {
            bail!("no server at {}: run `cargo build --release` first (or set NIGHTSHIFT_BIN)", binary.display());
        }
        let dir = tempfile::Builder::new().prefix("board-load-").tempdir().context("creating a temporary directory")?;
        std::fs::create_dir(dir.path().join("automations"))?;
        Ok(Workspace { dir, binary })
    }

    fn automations(&self) -> PathBuf {
        self.dir.path().join("automations")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.automations().join(format!("{name}.yaml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

struct Serve {
    child: Child,
    address: SocketAddr,
    token: String,
    ready: Duration,
}

impl Serve {
    async fn start(workspace: &Workspace) -> anyhow::Result<Serve> {
        let data = workspace.data();
        let log = std::fs::File::create(workspace.dir.path().join("serve.log"))?;
        let spawned = Instant::now();
        let child = Command::new(&workspace.binary)
            .args(["serve", "--workers", "0", "--listen", "127.0.0.1:0", "--dir"])
            .arg(workspace.automations())
            .arg("--data")
            .arg(&data)
            .env("LOAD_SECRET", SECRET)
            .env_remove("NIGHTSHIFT_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `{} serve`", workspace.binary.display()))?;
        let mut serve = Serve {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: String::new(),
            ready: Duration::ZERO,
        };
        let file = loop {
            if let Some(file) = ServeFile::read(&data)
                && file.pid == serve.child.id()
            {
                break file;
            }
            if let Some(status) = serve.child.try_wait()? {
                bail!("the server exited ({status}); see {}", workspace.dir.path().join("serve.log").display());
            }
            if spawned.elapsed() > START_TIMEOUT {
                bail!("the server did not write serve.json within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        };
        serve.address = file
            .url
            .strip_prefix("http://")
            .and_then(|address| address.parse().ok())
            .filter(|address: &SocketAddr| address.ip().is_loopback())
            .with_context(|| format!("serve.json names `{}`, not a loopback http://ADDRESS:PORT", file.url))?;
        serve.token = file.token;
        loop {
            let request = get(serve.address, "/healthz", None);
            if let Ok((StatusCode::OK, _)) = exchange_once(serve.address, request, REQUEST_TIMEOUT).await {
                break;
            }
            if spawned.elapsed() > START_TIMEOUT {
                bail!("GET /healthz did not answer 200 within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        serve.ready = spawned.elapsed();
        Ok(serve)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().context("running `kill -TERM` on the server")?;
        let begun = Instant::now();
        while self.child.try_wait()?.is_none() {
            if begun.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                bail!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it");
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
