//! Load tool for `nightshift serve`: starts the release binary as a child process on a
//! loopback port, with automations it writes into a temporary directory, drives it over
//! HTTP and prints what it measured. Build the binary first; this example does not.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example serve_load -- hooks [CONNECTIONS=64] [SECONDS=5]
//! cargo run --release --example serve_load -- rate [PER_SECOND=2000] [SECONDS=10] [CONNECTIONS=32]
//! cargo run --release --example serve_load -- ready [AUTOMATIONS=1000] [REPEATS=5]
//! cargo run --release --example serve_load -- cron [AUTOMATIONS=10000] [SECONDS=65]
//! cargo run --release --example serve_load -- idle [AUTOMATIONS=10000] [SECONDS=30]
//! cargo run --release --example serve_load -- slow [REQUESTS=2000]
//! cargo run --release --example serve_load -- stall [UPLOADS=200] [BODY_TIMEOUT=10]
//! cargo run --release --example serve_load -- flood [CONNECTIONS=20000] [SECONDS=15]
//! cargo run --release --example serve_load -- notify [ROUNDS=5] [CONNECTIONS=16]
//! ```
//!
//! - `hooks`: closed loop, the most throughput. Each connection sends its next request as
//!   soon as the last is answered: `POST /hooks/load-hook`, a generic webhook with HMAC
//!   authentication, the body `{"n": N}` (N unique) signed per request. Prints requests
//!   per second, latency percentiles, errors (any status but 202, the first few bodies
//!   shown), the server's newest run id (it should match the 202s) and the CPU both
//!   processes used.
//! - `rate`: open loop at a fixed rate. Request i is due at start + i/rate and is sent by
//!   whichever connection is free; its latency counts from when it was due, so a server
//!   that falls behind shows it (no coordinated omission). A pacer thread releases the
//!   turns with `std::thread::sleep` (tokio's timer has 1 ms steps); the send lag (due to
//!   sent) is shown apart, as the client's share of the latency.
//! - `ready`: the time from spawning `serve` with N webhook automations to its first
//!   good `GET /healthz` (polled every 5 ms), on a fresh data directory each repeat; the
//!   median of the repeats.
//! - `cron`: N automations with 6-field schedules spread over the seconds of a minute
//!   (`{i % 60} * * * * *`: each fires once a minute), served for SECONDS. Then every run
//!   is read through `GET /api/runs` and its lateness (`created_at` minus the slot in its
//!   event id `cron:{automation}:{slot}`) summarized, with the slots due while it served
//!   and the server's resident memory.
//! - `idle`: N cron automations that do not fire during the test (`0 0 1 1 *`). From 3 s
//!   after ready, the server's CPU use over SECONDS (utime + stime from /proc, as a share
//!   of one core) and its resident memory.
//! - `slow`: the latency of `load-hook` (one connection, REQUESTS signed requests one
//!   after another), first on an idle server, then while eight connections keep sending
//!   to `slow-hook`, whose policy script runs to the rule deadline (250 ms) on every
//!   delivery; side by side, with how `slow-hook` was answered (202 for the deliveries
//!   its line took, 503 with Retry-After for the rest).
//! - `stall`: UPLOADS connections each send a hook request with a well-formed (wrong)
//!   signature and `Content-Length: 2 MiB`, then all of the body but its last byte, and
//!   stall, on a server started with `--body-timeout BODY_TIMEOUT`. Prints the server's
//!   resident memory before, at its peak (sampled every 100 ms) and after; how the
//!   uploads were answered and how long the server took to close them; and the signed
//!   requests one keep-alive connection got answered meanwhile.
//! - `flood`: opens CONNECTIONS idle connections (as many as this process's open-file
//!   limit allows, raised to its hard limit) that send nothing, and holds them for
//!   SECONDS. Meanwhile one keep-alive connection opened before sends signed requests,
//!   and a fresh connection sends one every second. Prints how many connections
//!   opened, the server's resident memory, and both clients' answers and latencies.
//! - `notify`: the outbox's speed. Each round queues 300 runs of three manual
//!   automations, claims and starts them through the worker API (the tool is the
//!   worker), completes the 100 of `idle` (one webhook target each) at once after a 3 s
//!   pause on an otherwise idle server, then drives
//!   signed deliveries to `load-hook` (whose `when` is false: authenticated, evaluated,
//!   stored, no run) three times for 4 s each: alone; while the 100 runs of `silent` (no
//!   targets) are completed at once 1 s in; and while the 100 runs of `told` (one
//!   webhook target each, to a receiver on a thread of this tool) are completed at once
//!   1 s in and their messages drain. Prints each run's time from its end to its webhook
//!   request arriving (p50/p99/max: from the run's `finished_at`, the server's stamp as
//!   it ended the run, read back through the API; from sending the complete, an upper
//!   bound; and from its answer, which comes after the commit), the drain time (first complete sent to
//!   last message arrived), and ingest per second over the same window (the drain, at
//!   least 1 s) in the three cases, their medians and ratios.
//!
//! The server is `NIGHTSHIFT_BIN`, else `target/release/nightshift`. Its automations,
//! data directory and log (shown when it fails) live in a temporary directory under
//! `TMPDIR`: TMPDIR picks the file system whose syncs the hooks wait for. The client is
//! one thread (a current-thread tokio runtime with one task per keep-alive connection,
//! hyper's low-level HTTP/1.1 client), so it takes little from the server. Only loopback
//! addresses are used; every loop is bounded in count and time. At the end the server is
//! stopped with SIGTERM and waited for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use nightshift::server::discovery::ServeFile;
use serde::Deserialize;
use tokio::net::TcpStream;

use support::http::{Body, Sender, connect, exchange, exchange_once, get, hook_request, median_of};

mod support;
use tokio::sync::Semaphore;

const USAGE: &str = "usage: serve_load hooks [CONNECTIONS=64] [SECONDS=5]
       serve_load rate [PER_SECOND=2000] [SECONDS=10] [CONNECTIONS=32]
       serve_load ready [AUTOMATIONS=1000] [REPEATS=5]
       serve_load cron [AUTOMATIONS=10000] [SECONDS=65]
       serve_load idle [AUTOMATIONS=10000] [SECONDS=30]
       serve_load slow [REQUESTS=2000]
       serve_load stall [UPLOADS=200] [BODY_TIMEOUT=10]
       serve_load flood [CONNECTIONS=20000] [SECONDS=15]
       serve_load notify [ROUNDS=5] [CONNECTIONS=16]
       serve_load backends [ROUNDS=3] [SECONDS=5] [CONNECTIONS=64]
(build the server first: cargo build --release)";

/// The webhook secret; the server reads it from `LOAD_SECRET`.
const SECRET: &str = "serve-load-secret";
/// The most requests one `hooks` or `rate` run sends, whatever the duration.
const MAX_REQUESTS: u64 = 20_000_000;
/// The longest any test serves (SECONDS is capped to it).
const MAX_SECONDS: u64 = 3600;
const MAX_CONNECTIONS: u64 = 10_000;
/// The most idle connections `flood` opens.
const MAX_FLOOD: u64 = 100_000;
const MAX_AUTOMATIONS: u64 = 1_000_000;
const MAX_REPEATS: u64 = 100;
/// How long one request may wait for its answer before its connection is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading every run may take (`cron`).
const LIST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take from spawn to answering `GET /healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often start-up is polled.
const POLL: Duration = Duration::from_millis(5);
/// The most times one connection task connects (after failures).
const MAX_CONNECTS: u32 = 1000;
/// Error answers shown with their bodies.
const SHOWN_ERRORS: usize = 5;

const HOOK: &str = r#"name: load-hook
trigger:
  webhook:
    auth: { hmac: { secret: env:LOAD_SECRET } }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/load-{{ event.n }}"
  prompt: "Handle {{ event.n }}"
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut numbers = Vec::new();
    for text in rest {
        match text.parse::<u64>() {
            Ok(number) if number > 0 => numbers.push(number),
            _ => {
                eprintln!("serve_load: `{text}` is not a positive whole number\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let arg = |index: usize, default: u64, max: u64| numbers.get(index).copied().unwrap_or(default).min(max);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("serve_load: cannot start a tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match mode.as_str() {
        "hooks" => runtime.block_on(hooks(arg(0, 64, MAX_CONNECTIONS), arg(1, 5, MAX_SECONDS))),
        "rate" => {
            runtime.block_on(rate(arg(0, 2000, MAX_REQUESTS), arg(1, 10, MAX_SECONDS), arg(2, 32, MAX_CONNECTIONS)))
        }
        "ready" => runtime.block_on(ready(arg(0, 1000, MAX_AUTOMATIONS), arg(1, 5, MAX_REPEATS))),
        "cron" => runtime.block_on(cron(arg(0, 10_000, MAX_AUTOMATIONS), arg(1, 65, MAX_SECONDS))),
        "idle" => runtime.block_on(idle(arg(0, 10_000, MAX_AUTOMATIONS), arg(1, 30, MAX_SECONDS))),
        "slow" => runtime.block_on(slow(arg(0, 2000, MAX_REQUESTS))),
        "stall" => runtime.block_on(stall(arg(0, 200, MAX_CONNECTIONS), arg(1, 10, MAX_SECONDS))),
        "flood" => runtime.block_on(flood(arg(0, 20_000, MAX_FLOOD), arg(1, 15, MAX_SECONDS))),
        "notify" => runtime.block_on(notify(arg(0, 5, MAX_REPEATS), arg(1, 16, MAX_CONNECTIONS))),
        "backends" => {
            runtime.block_on(backends(arg(0, 3, MAX_REPEATS), arg(1, 5, MAX_SECONDS), arg(2, 64, MAX_CONNECTIONS)))
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("serve_load {mode}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// The modes

async fn hooks(connections: u64, seconds: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let (mut serve, _) = serve(&workspace, 0).await?;
    let run = drive(&serve, connections, Pace::Closed, seconds).await?;
    let newest = newest_run(&serve).await;
    serve.check_running("during the test")?;
    serve.stop().await?;
    let tally = &run.tally;
    let answered = tally.latencies.len();
    println!(
        "hooks: {connections} connections, {:.1} s: {:.0} req/s, {}, errors {}",
        run.elapsed.as_secs_f64(),
        answered as f64 / run.elapsed.as_secs_f64(),
        spread(&tally.latencies),
        tally.errors,
    );
    let newest = match newest {
        Ok(Some(id)) => format!("r{id}"),
        Ok(None) => "none".to_string(),
        Err(error) => format!("unknown ({error:#})"),
    };
    println!(
        "  {} answered 202; the server's newest run: {newest}; cpu: server {:.0}% of a core, this tool {:.0}%",
        tally.accepted, run.server_cpu, run.own_cpu
    );
    tally.show_errors();
    Ok(())
}

/// `hooks` on the embedded store and on PostgreSQL (a throwaway cluster with fsync and
/// synchronous commit on, on a Unix socket), in turns, ROUNDS times: signed deliveries
/// per second answered 202 (each committed first), side by side.
async fn backends(rounds: u64, seconds: u64, connections: u64) -> anyhow::Result<()> {
    let cluster = nightshift::store::postgres::cluster::Cluster::start_with(true)
        .map_err(|why| anyhow::anyhow!("a throwaway PostgreSQL cluster: {why}"))?;
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (index, backend) in ["embedded", "postgresql"].into_iter().enumerate() {
            let url = match index {
                0 => None,
                _ => Some(cluster.database(&format!("hooks{round}")).map_err(|why| anyhow::anyhow!(why))?),
            };
            let args: Vec<&str> = url.as_deref().map(|url| vec!["--store", url]).unwrap_or_default();
            let (mut serve, _) = serve_with(&workspace, round * 2 + index as u64, &args).await?;
            let run = drive(&serve, connections, Pace::Closed, seconds).await?;
            serve.check_running("during the test")?;
            serve.stop().await?;
            let tally = &run.tally;
            let per_second = tally.accepted as f64 / run.elapsed.as_secs_f64();
            println!(
                "round {round} {backend:<10}: {per_second:.0} deliveries/s answered 202, {}, errors {}; cpu: server {:.0}% of a core",
                spread(&tally.latencies),
                tally.errors,
                run.server_cpu,
            );
            tally.show_errors();
            rates[index].push(per_second);
        }
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (embedded, postgres) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "medians over {rounds} rounds: embedded {embedded:.0}/s, postgresql {postgres:.0}/s (postgresql / embedded {:.2})",
        postgres / embedded
    );
    Ok(())
}

async fn rate(per_second: u64, seconds: u64, connections: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let (mut serve, _) = serve(&workspace, 0).await?;
    let total = per_second.saturating_mul(seconds).min(MAX_REQUESTS);
    let run = drive(&serve, connections, Pace::Open { per_second, total }, seconds).await?;
    serve.check_running("during the test")?;
    serve.stop().await?;
    let tally = &run.tally;
    let answered = tally.latencies.len();
    println!(
        "rate: {per_second}/s for {seconds} s on {connections} connections: {} sent, {:.0} req/s achieved, {}, errors {}",
        total - tally.unsent,
        answered as f64 / run.elapsed.as_secs_f64(),
        spread(&tally.latencies),
        tally.errors,
    );
    println!(
        "  latency counts from each request's due time; send lag (due to sent) {}; cpu: server {:.0}% of a core, this tool {:.0}%",
        spread(&tally.lags),
        run.server_cpu,
        run.own_cpu
    );
    if tally.unsent > 0 {
        println!(
            "  {} requests were not sent: their turn came more than {REQUEST_TIMEOUT:?} after the schedule ended",
            tally.unsent
        );
    }
    tally.show_errors();
    Ok(())
}

/// A hook whose policy script runs to the rule deadline on every delivery; its bearer
/// token is the load secret.
const SLOW_HOOK: &str = r#"name: slow-hook
trigger:
  webhook:
    auth: { bearer: { token: env:LOAD_SECRET } }
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/slow-{{ event.n }}"
  prompt: "Handle {{ event.n }}"
  network:
    agent:
      script_may_allow: [{ domain: "*.example.com" }]
      script: |
        let a = [];
        a.pad(5000, 1);
        loop { a.reverse(); }
"#;

/// Connections that keep `slow-hook` busy in `slow`.
const SLOW_SENDERS: usize = 8;

async fn slow(requests: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    workspace.write("slow-hook", SLOW_HOOK)?;
    let (mut serve, _) = serve(&workspace, 0).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let idle = sequential(&serve, requests, &counter).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..SLOW_SENDERS)
        .map(|_| tokio::spawn(keep_slow_busy(serve.address, Arc::clone(&stop), Arc::clone(&counter))))
        .collect();
    // Let the slow hook's line fill before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = sequential(&serve, requests, &counter).await;
    stop.store(true, Ordering::SeqCst);
    let mut slow_tally = SlowTally::default();
    for sender in senders {
        let tally = sender.await.context("a slow sender failed")?;
        slow_tally.accepted += tally.accepted;
        slow_tally.refused += tally.refused;
        slow_tally.other += tally.other;
    }
    let loaded = loaded?;
    serve.check_running("during the test")?;
    serve.stop().await?;
    println!("slow: load-hook, {requests} signed requests one after another on one connection");
    println!("  idle server:                         {} (errors {})", spread(&idle.latencies), idle.errors);
    println!(
        "  {SLOW_SENDERS} connections busy on slow-hook:    {} (errors {})",
        spread(&loaded.latencies),
        loaded.errors
    );
    println!(
        "  slow-hook answered meanwhile: {} with 202, {} with 503 + Retry-After, {} otherwise",
        slow_tally.accepted, slow_tally.refused, slow_tally.other
    );
    idle.show_errors();
    loaded.show_errors();
    Ok(())
}

/// Sends one signed request to `load-hook` on `sender` and counts its answer; false when
/// the connection cannot be used any more.
async fn signed_request(sender: &mut Sender, host: &str, counter: &AtomicU64, tally: &mut Tally) -> bool {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let sent = Instant::now();
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(sender, hook_request(host, n, SECRET))).await {
        Ok(Ok((StatusCode::ACCEPTED, _))) => {
            tally.latencies.push(micros(sent.elapsed()));
            tally.accepted += 1;
            true
        }
        Ok(Ok((status, body))) => {
            tally.error(format!("{status}: {}", String::from_utf8_lossy(&body)));
            true
        }
        Ok(Err(error)) => {
            tally.error(format!("{error:#}"));
            false
        }
        Err(_) => {
            tally.error(format!("no answer within {REQUEST_TIMEOUT:?}"));
            false
        }
    }
}

/// `requests` signed requests to `load-hook`, one after another on one connection.
async fn sequential(serve: &Serve, requests: u64, counter: &AtomicU64) -> anyhow::Result<Tally> {
    let (mut sender, connection) = connect(serve.address).await?;
    let driver = tokio::spawn(connection);
    let host = serve.address.to_string();
    let mut tally = Tally::default();
    for _ in 0..requests {
        if !signed_request(&mut sender, &host, counter, &mut tally).await {
            break;
        }
    }
    drop(sender);
    driver.abort();
    tally.latencies.sort_unstable();
    Ok(tally)
}

#[derive(Default)]
struct SlowTally {
    accepted: u64,
    refused: u64,
    other: u64,
}

/// Sends to `slow-hook` until `stop`, each request as soon as the last is answered.
async fn keep_slow_busy(
    address: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    counter: Arc<AtomicU64>,
) -> SlowTally {
    let mut tally = SlowTally::default();
    let host = address.to_string();
    for _ in 0..MAX_CONNECTS {
        let Ok((mut sender, connection)) = connect(address).await else { break };
        let driver = tokio::spawn(connection);
        while !stop.load(Ordering::SeqCst) {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let request = Request::post("/hooks/slow-hook")
                .header(HOST, &host)
                .header(CONTENT_TYPE, "application/json")
                .header(AUTHORIZATION, format!("Bearer {SECRET}"))
                .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))))
                .expect("the request is well formed");
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, request)).await {
                Ok(Ok((StatusCode::ACCEPTED, _))) => tally.accepted += 1,
                Ok(Ok((StatusCode::SERVICE_UNAVAILABLE, _))) => tally.refused += 1,
                Ok(Ok(_)) => tally.other += 1,
                _ => {
                    tally.other += 1;
                    break;
                }
            }
        }
        driver.abort();
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    tally
}

/// The body `stall` declares for each upload.
const STALLED_BODY: usize = 2 << 20;

async fn stall(uploads: u64, body_timeout: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let timeout = body_timeout.to_string();
    let (mut serve, _) = serve_with(&workspace, 0, &["--body-timeout", &timeout]).await?;
    let pid = serve.pid;
    let rss = move || status_number(pid, "VmRSS:").unwrap_or(0);
    let before = rss();
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signer = {
        let (address, stop, counter) = (serve.address, Arc::clone(&stop), Arc::clone(&counter));
        tokio::spawn(async move { sign_until(address, &stop, &counter).await })
    };
    let patience = Duration::from_secs(body_timeout + 30);
    let started = Instant::now();
    let stalled: Vec<_> = (0..uploads).map(|_| tokio::spawn(stalled_upload(serve.address, patience))).collect();
    let mut peak = before;
    while !stalled.iter().all(|upload| upload.is_finished()) && started.elapsed() < patience {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut closed_after = Vec::new();
    for upload in stalled {
        let (status, closed) = upload.await.context("an upload task failed")?;
        *statuses.entry(status).or_default() += 1;
        closed_after.extend(closed.map(micros));
    }
    closed_after.sort_unstable();
    let after = rss();
    stop.store(true, Ordering::SeqCst);
    let signed = signer.await.context("the signing client failed")?;
    serve.check_running("during the test")?;
    serve.stop().await?;
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "stall: {uploads} uploads declaring {} MiB, all but the last byte sent, body timeout {body_timeout} s",
        STALLED_BODY >> 20
    );
    println!(
        "  server RSS: before {}, peak {} (+{}), after {}",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        mib(after)
    );
    let statuses: Vec<String> = statuses.iter().map(|(status, count)| format!("{count} {status}")).collect();
    println!("  uploads answered: {}", statuses.join(", "));
    println!(
        "  closed by the server: {} of {uploads}, from the first byte sent: {}",
        closed_after.len(),
        spread(&closed_after)
    );
    println!(
        "  signed requests meanwhile on one keep-alive connection: {} answered 202, {}, errors {}",
        signed.accepted,
        spread(&signed.latencies),
        signed.errors
    );
    signed.show_errors();
    Ok(())
}

async fn flood(connections: u64, seconds: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let own_limit = getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
    // Descriptors for this tool's own files and clients.
    let wanted = connections.min(own_limit.saturating_sub(200));
    let workspace = Workspace::new()?;
    workspace.write("load-hook", HOOK)?;
    let (mut serve, _) = serve(&workspace, 0).await?;
    let pid = serve.pid;
    let rss = move || status_number(pid, "VmRSS:").unwrap_or(0);
    let before = rss();
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signer = {
        let (address, stop, counter) = (serve.address, Arc::clone(&stop), Arc::clone(&counter));
        tokio::spawn(async move { sign_until(address, &stop, &counter).await })
    };
    let fresh = {
        let (address, stop, counter) = (serve.address, Arc::clone(&stop), Arc::clone(&counter));
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let host = address.to_string();
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let request = hook_request(&host, counter.fetch_add(1, Ordering::Relaxed), SECRET);
                match exchange_once(address, request, Duration::from_secs(60)).await {
                    Ok((StatusCode::ACCEPTED, _)) => {
                        tally.latencies.push(micros(sent.elapsed()));
                        tally.accepted += 1;
                    }
                    Ok((status, body)) => tally.error(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    Err(error) => tally.error(format!("{error:#}")),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tally.latencies.sort_unstable();
            tally
        })
    };
    let started = Instant::now();
    let mut open = Vec::with_capacity(wanted as usize);
    let mut failed = 0u64;
    // In batches: beyond the server's cap and listen queue, a connect waits for a slot.
    while (open.len() as u64) + failed < wanted && started.elapsed() < Duration::from_secs(seconds) {
        let batch = (wanted - open.len() as u64 - failed).min(500);
        let connects: Vec<_> = (0..batch)
            .map(|_| {
                let address = serve.address;
                tokio::spawn(
                    async move { tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address)).await },
                )
            })
            .collect();
        for connect in connects {
            match connect.await {
                Ok(Ok(Ok(stream))) => open.push(stream),
                _ => failed += 1,
            }
        }
    }
    let opened = open.len();
    let mut peak = rss();
    while started.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);
    stop.store(true, Ordering::SeqCst);
    let signed = signer.await.context("the signing client failed")?;
    let fresh = fresh.await.context("the fresh-connection client failed")?;
    serve.check_running("during the test")?;
    serve.stop().await?;
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "flood: {opened} of {wanted} idle connections opened ({failed} not within 2 s), held {seconds} s from the first"
    );
    println!("  server RSS: before {}, peak {} (+{})", mib(before), mib(peak), mib(peak.saturating_sub(before)));
    println!(
        "  signed requests on a keep-alive connection opened before: {} answered 202, {}, errors {}",
        signed.accepted,
        spread(&signed.latencies),
        signed.errors
    );
    println!(
        "  signed requests each on a fresh connection: {} answered 202, {}, errors {}",
        fresh.accepted,
        spread(&fresh.latencies),
        fresh.errors
    );
    signed.show_errors();
    fresh.show_errors();
    Ok(())
}

/// Signed requests to `load-hook`, one after another, until `stop`.
async fn sign_until(address: SocketAddr, stop: &std::sync::atomic::AtomicBool, counter: &AtomicU64) -> Tally {
    let mut tally = Tally::default();
    let host = address.to_string();
    let Ok((mut sender, connection)) = connect(address).await else {
        tally.error("cannot connect".into());
        return tally;
    };
    let driver = tokio::spawn(connection);
    while !stop.load(Ordering::SeqCst) && (tally.accepted + tally.errors) < MAX_REQUESTS {
        if !signed_request(&mut sender, &host, counter, &mut tally).await {
            break;
        }
        // A few hundred a second is enough to see whether they get through.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    driver.abort();
    tally.latencies.sort_unstable();
    tally
}

/// One stalled upload: the head, all of the body but its last byte, then nothing. The
/// status line the server answered (or how the connection ended) and how long after the
/// first byte the server closed the connection.
async fn stalled_upload(address: SocketAddr, patience: Duration) -> (String, Option<Duration>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(stream) = TcpStream::connect(address).await else { return ("no connection".into(), None) };
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /hooks/load-hook HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nX-Hub-Signature-256: sha256={}\r\nContent-Length: {STALLED_BODY}\r\n\r\n",
        "0".repeat(64)
    );
    let writing = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let body = vec![b' '; STALLED_BODY - 1];
        let _ = writer.write_all(&body).await;
        // Keep the writing half open: the stall.
        std::future::pending::<()>().await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(patience, async {
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    writing.abort();
    let text = String::from_utf8_lossy(&answer);
    let status = match text.split(' ').nth(1) {
        Some(code) if !code.is_empty() => code.to_string(),
        _ if answer.is_empty() => "closed without an answer".to_string(),
        _ => "unreadable answer".to_string(),
    };
    (status, read.ok().map(|()| started.elapsed()))
}

async fn ready(automations: u64, repeats: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write_many("hook", automations, |_| "webhook: { auth: { hmac: { secret: env:LOAD_SECRET } } }".into())?;
    let mut times = Vec::new();
    for repeat in 0..repeats {
        let (serve, started) = serve(&workspace, repeat).await?;
        if started.automations != automations {
            bail!("/healthz says {} automations are loaded, not {automations}", started.automations);
        }
        let rss = rss_text(serve.pid);
        let stopped = serve.stop().await?;
        println!(
            "ready {}/{repeats}: {automations} automations: serve.json after {}, /healthz after {}; rss {rss}; stopped in {}",
            repeat + 1,
            millis(started.serve_json),
            millis(started.healthz),
            millis(stopped),
        );
        times.push(started.healthz);
        // The next repeat starts on a fresh data directory; this one is done with.
        let _ = std::fs::remove_dir_all(workspace.data(repeat));
    }
    times.sort();
    let middle = times.len() / 2;
    let median = if times.len() % 2 == 0 { (times[middle - 1] + times[middle]) / 2 } else { times[middle] };
    println!(
        "ready: {automations} automations, {repeats} repeats: median {} (min {}, max {})",
        millis(median),
        millis(times[0]),
        millis(times[times.len() - 1]),
    );
    Ok(())
}

async fn cron(automations: u64, seconds: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write_many("cron", automations, |i| format!("cron: {{ schedule: \"{} * * * * *\" }}", i % 60))?;
    let (mut serve, started) = serve(&workspace, 0).await?;
    let ready_at = Utc::now();
    let rss_ready = rss_text(serve.pid);
    eprintln!("cron: {automations} automations ready after {}; serving for {seconds} s", millis(started.healthz));
    serve.wait(Duration::from_secs(seconds)).await?;
    let end_at = Utc::now();
    let rss_end = rss_text(serve.pid);
    let runs = serve.get_json::<Vec<RunRow>>("/api/runs?limit=0", LIST_TIMEOUT).await;
    serve.stop().await?;
    let runs = runs?;

    // Slots due in (ready, end]: whole seconds, each with the automations on its second.
    let mut per_second = [0u64; 60];
    for i in 0..automations {
        per_second[(i % 60) as usize] += 1;
    }
    let mut due = 0;
    for second in ready_at.timestamp() + 1..=end_at.timestamp() {
        due += per_second[second.rem_euclid(60) as usize];
    }

    let mut lateness: Vec<i64> = Vec::with_capacity(runs.len());
    let (mut in_window, mut unexpected) = (0u64, Vec::new());
    let mut events = std::collections::HashSet::with_capacity(runs.len());
    for run in &runs {
        let event = run.event_ids.first().map(String::as_str).unwrap_or_default();
        let slot = event
            .strip_prefix("cron:")
            .and_then(|rest| rest.strip_prefix(run.automation.as_str()))
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|slot| DateTime::parse_from_rfc3339(slot).ok());
        let Some(slot) = slot else {
            if unexpected.len() < SHOWN_ERRORS {
                unexpected.push(format!("run r{} of {}: event `{event}`", run.id, run.automation));
            }
            continue;
        };
        let slot = slot.with_timezone(&Utc);
        events.insert(event);
        if slot > ready_at && slot <= end_at {
            in_window += 1;
        }
        lateness.push((run.created_at - slot).num_microseconds().unwrap_or(i64::MAX));
    }
    lateness.sort_unstable();
    let early = lateness.iter().filter(|micros| **micros < 0).count();
    println!(
        "cron: {automations} automations, {seconds} s: {} runs fired, {in_window} of {due} slots due between ready and stop \
         (+{} around the edges); lateness {}{}",
        lateness.len(),
        lateness.len() as u64 - in_window,
        spread(&lateness),
        lateness.first().map(|min| format!(" (min {})", ms(*min))).unwrap_or_default(),
    );
    println!("  rss at ready {rss_ready}, after {seconds} s {rss_end}; ready after {}", millis(started.healthz));
    if early > 0 {
        println!("  {early} runs were created before their slot");
    }
    if events.len() < lateness.len() {
        println!("  {} runs share a slot's event with another run", lateness.len() - events.len());
    }
    for run in unexpected {
        println!("  not a cron run: {run}");
    }
    Ok(())
}

async fn idle(automations: u64, seconds: u64) -> anyhow::Result<()> {
    let workspace = Workspace::new()?;
    workspace.write_many("idle", automations, |_| "cron: { schedule: \"0 0 1 1 *\" }".into())?;
    let (mut serve, started) = serve(&workspace, 0).await?;
    serve.wait(Duration::from_secs(3)).await?;
    let pid = serve.pid.to_string();
    let before = cpu_ticks(&pid)?;
    let begun = Instant::now();
    serve.wait(Duration::from_secs(seconds)).await?;
    let ticks = cpu_ticks(&pid)?.saturating_sub(before);
    let elapsed = begun.elapsed();
    let (rss, threads) = (rss_text(serve.pid), status_number(serve.pid, "Threads:").unwrap_or(0));
    serve.stop().await?;
    let per_second = clock_ticks();
    println!(
        "idle: {automations} automations, {:.1} s: server cpu {:.2}% of a core ({ticks} ticks of 1/{per_second} s), \
         rss {rss}, {threads} threads; ready after {}",
        elapsed.as_secs_f64(),
        ticks as f64 / per_second as f64 / elapsed.as_secs_f64() * 100.0,
        millis(started.healthz),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The notify mode: runs ending at once, their messages, and ingest beside them

/// Runs ended at once per round.
const NOTIFY_RUNS: usize = 100;
/// The bench's worker token (it claims and completes the runs through the worker API).
const WORKER_TOKEN: &str = "serve-load-worker";
/// How long the load runs before the runs end, in each window.
const LEAD: Duration = Duration::from_millis(1000);
/// The shortest window ingest is counted over.
const MIN_WINDOW: Duration = Duration::from_millis(1000);
/// The pause before the runs end on an idle server.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the last message of a round may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Deliveries to `load-hook` in the notify mode: authenticated, rules evaluated, the event
/// stored, and no run (`when` is false), so the runs queued are the bench's own.
const QUIET_HOOK: &str = r#"name: load-hook
trigger:
  webhook:
    auth: { hmac: { secret: env:LOAD_SECRET } }
when: "event.n < 0"
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/load-{{ event.n }}"
  prompt: "Handle {{ event.n }}"
"#;

/// A manual automation whose runs the bench ends; with `notify`, each end is a webhook
/// message to the bench's receiver. Each run has a repository of its own, so none waits
/// for another's paths.
fn ending_automation(name: &str, notify: Option<&str>) -> String {
    let notify = notify.map(|url| format!("notify:\n  - webhook: {{ url: \"{url}\" }}\n")).unwrap_or_default();
    format!(
        "name: {name}\ntrigger: {{ manual: {{}} }}\nconcurrency: {{ limit: 1000 }}\ntask:\n  agent: codex\n  \
         repo: \"https://github.com/acme/{name}-{{{{ event.n }}}}.git\"\n  \
         base: main\n  branch: \"agent/{name}-{{{{ event.n }}}}\"\n  prompt: \"Work {{{{ event.n }}}}\"\n{notify}"
    )
}

/// When a message arrived: on this process's clock, and on the wall clock (to compare
/// with the server's `finished_at`).
type Arrival = (Instant, chrono::DateTime<chrono::Utc>);

/// A loopback webhook receiver on a thread of its own: the first arrival of each
/// `webhook-id`, and how many requests came.
struct Receiver {
    address: SocketAddr,
    /// The first arrival of each message: on this process's clock, and on the wall clock
    /// (to compare with the server's `finished_at`).
    arrivals: Arc<std::sync::Mutex<std::collections::HashMap<String, Arrival>>>,
    requests: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> anyhow::Result<Receiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the receiver")?;
        listener.set_nonblocking(true).context("a non-blocking listener")?;
        let address = listener.local_addr()?;
        let arrivals: Arc<std::sync::Mutex<std::collections::HashMap<String, Arrival>>> = Arc::default();
        let requests = Arc::new(AtomicU64::new(0));
        let (kept, counted) = (Arc::clone(&arrivals), Arc::clone(&requests));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (kept, counted) = (Arc::clone(&kept), Arc::clone(&counted));
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                            let at = (Instant::now(), chrono::Utc::now());
                            counted.fetch_add(1, Ordering::Relaxed);
                            let id = request.headers().get("webhook-id").and_then(|v| v.to_str().ok());
                            if let Some(id) = id {
                                kept.lock().expect("the arrivals").entry(id.to_string()).or_insert(at);
                            }
                            async move {
                                let _ = request.into_body().collect().await;
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Ok(Receiver { address, arrivals, requests })
    }
}

/// A claimed run: its id, automation and lease epoch (as the server wrote it).
struct Claimed {
    id: String,
    automation: String,
    epoch: serde_json::Value,
}

fn json_request(address: SocketAddr, path: &str, token: &str, body: &serde_json::Value) -> Request<Body> {
    Request::post(path)
        .header(HOST, address.to_string())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a JSON request is well formed")
}

/// POSTs JSON on a connection of its own; fails unless the answer is `expected`.
async fn post_json(
    serve: &Serve,
    path: &str,
    token: &str,
    body: &serde_json::Value,
    expected: StatusCode,
) -> anyhow::Result<Bytes> {
    let request = json_request(serve.address, path, token, body);
    let (status, answer) = exchange_once(serve.address, request, REQUEST_TIMEOUT).await?;
    if status != expected {
        bail!("POST {path} answered {status}: {}", String::from_utf8_lossy(&answer));
    }
    Ok(answer)
}

/// Queues `count` runs of `automation`, claims them all (they are the only queued runs)
/// and marks them started.
async fn queue_and_claim(serve: &Serve, automation: &str, count: usize, first: usize) -> anyhow::Result<Vec<Claimed>> {
    for n in first..first + count {
        let path = format!("/api/automations/{automation}/run");
        post_json(serve, &path, &serve.token, &serde_json::json!({ "n": n }), StatusCode::ACCEPTED).await?;
    }
    let mut claimed = Vec::with_capacity(count);
    let ask = serde_json::json!({ "worker": "bench", "lease_seconds": 3600, "wait_seconds": 0 });
    while claimed.len() < count {
        let answer = post_json(serve, "/api/worker/claim", WORKER_TOKEN, &ask, StatusCode::OK).await?;
        let claim: serde_json::Value = serde_json::from_slice(&answer).context("a claim")?;
        let text = |pointer: &str| claim.pointer(pointer).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let run = Claimed {
            id: text("/run/id"),
            automation: text("/run/automation"),
            epoch: claim["lease"]["epoch"].clone(),
        };
        if run.automation != automation {
            bail!("claimed run {} of {}, expected {automation}: the queue holds other runs", run.id, run.automation);
        }
        let path = format!("/api/worker/runs/{}/started", run.id);
        post_json(serve, &path, WORKER_TOKEN, &serde_json::json!({ "epoch": run.epoch }), StatusCode::NO_CONTENT)
            .await?;
        claimed.push(run);
    }
    Ok(claimed)
}

/// Completes every run at once (one connection each); returns each run's send and
/// answer instants.
async fn complete_all(serve: &Serve, runs: &[Claimed]) -> anyhow::Result<Vec<(String, Instant, Instant)>> {
    let tasks: Vec<_> = runs
        .iter()
        .map(|run| {
            let path = format!("/api/worker/runs/{}/complete", run.id);
            let body = serde_json::json!({
                "epoch": run.epoch,
                "completion": { "outcome": "succeeded", "result": { "summary": format!("bench run {}", run.id) } },
            });
            let request = json_request(serve.address, &path, WORKER_TOKEN, &body);
            let (address, id) = (serve.address, run.id.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = exchange_once(address, request, REQUEST_TIMEOUT).await;
                (id, sent, Instant::now(), answer)
            })
        })
        .collect();
    let mut times = Vec::with_capacity(runs.len());
    for task in tasks {
        let (id, sent, answered, answer) = task.await.context("a completion task failed")?;
        match answer? {
            (StatusCode::NO_CONTENT, _) => times.push((id, sent, answered)),
            (status, body) => bail!("completing {id} answered {status}: {}", String::from_utf8_lossy(&body)),
        }
    }
    Ok(times)
}

/// Ingest answers counted in `[from, from + window)`, per second.
fn rate_in(answers: &[Instant], from: Instant, window: Duration) -> f64 {
    let count = answers.iter().filter(|at| **at >= from && **at < from + window).count();
    count as f64 / window.as_secs_f64()
}

/// Waits until the receiver holds `count` messages.
async fn arrived(receiver: &Receiver, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while receiver.arrivals.lock().expect("the arrivals").len() < count {
        if Instant::now() > deadline {
            bail!("the messages did not all arrive within {DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Each run's time from its end to its message's arrival, from the complete's send and
/// from its answer, in microseconds; and when the last message arrived.
fn latencies(
    receiver: &Receiver,
    times: &[(String, Instant, Instant)],
    from_sent: &mut Vec<i128>,
    from_answered: &mut Vec<i128>,
) -> anyhow::Result<Instant> {
    let arrivals = receiver.arrivals.lock().expect("the arrivals").clone();
    let mut last = times.iter().map(|(_, sent, _)| *sent).min().unwrap_or_else(Instant::now);
    for (id, sent, answered) in times {
        let (arrived, _) =
            arrivals.get(&format!("{id}-0-end")).copied().with_context(|| format!("no message for {id}"))?;
        let signed = |from: Instant| match arrived.checked_duration_since(from) {
            Some(after) => i128::try_from(after.as_micros()).unwrap_or(i128::MAX),
            None => -i128::try_from(from.duration_since(arrived).as_micros()).unwrap_or(i128::MAX),
        };
        from_sent.push(signed(*sent));
        from_answered.push(signed(*answered));
        last = last.max(arrived);
    }
    Ok(last)
}

/// Each run's time from its `finished_at` (stamped by the server as it ended the run, on
/// the wall clock this tool shares) to its message's arrival, in microseconds.
async fn from_finished(
    serve: &Serve,
    receiver: &Receiver,
    times: &[(String, Instant, Instant)],
    samples: &mut Vec<i128>,
) -> anyhow::Result<()> {
    let arrivals = receiver.arrivals.lock().expect("the arrivals").clone();
    for (id, _, _) in times {
        let record: serde_json::Value = serve.get_json(&format!("/api/runs/{id}"), REQUEST_TIMEOUT).await?;
        let finished = record["run"]["finished_at"].as_str().with_context(|| format!("{id} has no finished_at"))?;
        let finished: chrono::DateTime<chrono::Utc> = finished.parse().context("finished_at")?;
        let (_, arrived) =
            arrivals.get(&format!("{id}-0-end")).copied().with_context(|| format!("no message for {id}"))?;
        samples.push(i128::from((arrived - finished).num_microseconds().unwrap_or(i64::MAX)));
    }
    Ok(())
}

async fn notify(rounds: u64, connections: u64) -> anyhow::Result<()> {
    let receiver = Receiver::start()?;
    let workspace = Workspace::new()?;
    let url = format!("http://{}/runs", receiver.address);
    workspace.write("load-hook", QUIET_HOOK)?;
    workspace.write("told", &ending_automation("told", Some(&url)))?;
    workspace.write("idle", &ending_automation("idle", Some(&url)))?;
    workspace.write("silent", &ending_automation("silent", None))?;
    let project = workspace.dir.path().join("nightshift.yaml");
    std::fs::write(&project, "notify: { allow_private_targets: true }\n").context("writing nightshift.yaml")?;
    let project = project.to_string_lossy().to_string();
    let args = ["--config", project.as_str(), "--worker-token", WORKER_TOKEN];
    let (mut serve, _) = serve_with(&workspace, 0, &args).await?;
    println!(
        "notify: {rounds} rounds of {NOTIFY_RUNS} runs ending at once with a webhook each on an idle server; then \
         ingest on {connections} hook connections alone, while {NOTIFY_RUNS} runs end (no targets), and while \
         {NOTIFY_RUNS} runs end with a webhook each"
    );
    // Warm up: the first deliveries open what later ones reuse.
    drive(&serve, connections, Pace::Closed, 1).await?;
    let (mut idle_sent, mut idle_answered, mut load_sent, mut load_answered) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut idle_finished, mut load_finished) = (Vec::new(), Vec::new());
    // The idle latencies of the rounds after the first, whose messages open connections.
    let mut warm_answered = Vec::new();
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    let (mut alone, mut silent, mut told, mut drains) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut expected = 0;
    for round in 0..rounds {
        let first = usize::try_from(round).unwrap_or(0) * NOTIFY_RUNS;
        let idle_runs = queue_and_claim(&serve, "idle", NOTIFY_RUNS, first).await?;
        let silent_runs = queue_and_claim(&serve, "silent", NOTIFY_RUNS, first).await?;
        let told_runs = queue_and_claim(&serve, "told", NOTIFY_RUNS, first).await?;

        // Runs ending at once on an idle server: after a pause, so the store's background
        // work after the queueing (its log, a checkpoint) is done.
        tokio::time::sleep(SETTLE).await;
        let idle_times = complete_all(&serve, &idle_runs).await?;
        expected += NOTIFY_RUNS;
        arrived(&receiver, expected).await?;
        let idle_started = idle_times.iter().map(|(_, sent, _)| *sent).min().unwrap_or_else(Instant::now);
        let before = idle_answered.len();
        let idle_last = latencies(&receiver, &idle_times, &mut idle_sent, &mut idle_answered)?;
        from_finished(&serve, &receiver, &idle_times, &mut idle_finished).await?;
        if round > 0 {
            warm_answered.extend_from_slice(&idle_answered[before..]);
        }

        // Long enough for the lead, the drain and the window after it.
        let seconds = (LEAD + MIN_WINDOW).as_secs() + 2;
        // Ingest alone.
        let quiet = drive(&serve, connections, Pace::Closed, seconds).await?;
        // Ingest while runs without targets end.
        let (ended, silent_times) = tokio::join!(drive(&serve, connections, Pace::Closed, seconds), async {
            tokio::time::sleep(LEAD).await;
            complete_all(&serve, &silent_runs).await
        });
        let (ended, silent_times) = (ended?, silent_times?);
        let silent_from = silent_times.iter().map(|(_, sent, _)| *sent).min().unwrap_or(ended.started + LEAD);
        // Ingest while runs end and their messages drain.
        expected += NOTIFY_RUNS;
        let (draining, told_times) = tokio::join!(drive(&serve, connections, Pace::Closed, seconds), async {
            tokio::time::sleep(LEAD).await;
            let times = complete_all(&serve, &told_runs).await?;
            arrived(&receiver, expected).await?;
            anyhow::Ok(times)
        });
        let (draining, told_times) = (draining?, told_times?);
        let started = told_times.iter().map(|(_, sent, _)| *sent).min().unwrap_or(draining.started + LEAD);
        let last = latencies(&receiver, &told_times, &mut load_sent, &mut load_answered)?;
        from_finished(&serve, &receiver, &told_times, &mut load_finished).await?;
        let drain = last.duration_since(started);
        let window = drain.max(MIN_WINDOW);
        drains.push(drain.as_secs_f64() * 1000.0);
        let a = rate_in(&quiet.tally.answers, quiet.started + LEAD, window);
        let s = rate_in(&ended.tally.answers, silent_from, window);
        let t = rate_in(&draining.tally.answers, started, window);
        println!(
            "  round {round}: idle drain {}; under load drain {} (first complete sent to last message); ingest over \
             {}: alone {a:.0}/s, runs ending {s:.0}/s, runs ending + messages {t:.0}/s; errors {}",
            millis(idle_last.duration_since(idle_started)),
            millis(drain),
            millis(window),
            quiet.tally.errors + ended.tally.errors + draining.tally.errors
        );
        alone.push(a);
        silent.push(s);
        told.push(t);
        for (kept, run) in cpu.iter_mut().zip([&quiet, &ended, &draining]) {
            kept.push(run.server_cpu);
        }
        serve.check_running("during the test")?;
    }
    serve.stop().await?;
    for samples in [
        &mut idle_sent,
        &mut idle_answered,
        &mut warm_answered,
        &mut load_sent,
        &mut load_answered,
        &mut idle_finished,
        &mut load_finished,
    ] {
        samples.sort_unstable();
    }
    println!(
        "  run end to its first notify request, idle server, {} runs: from the complete's send {}; from its answer \
         (after the commit) {}",
        idle_sent.len(),
        spread(&idle_sent),
        spread(&idle_answered)
    );
    println!("  idle server, rounds after the first: from the answer {}", spread(&warm_answered));
    println!(
        "  from the run's finished_at (the server's own stamp at the end) to its request: idle server {}; under \
         ingest load {}",
        spread(&idle_finished),
        spread(&load_finished)
    );
    println!(
        "  the same under ingest load, {} runs: from the send {}; from the answer {}",
        load_sent.len(),
        spread(&load_sent),
        spread(&load_answered)
    );
    let (a, s, t) = (median_of(&mut alone), median_of(&mut silent), median_of(&mut told));
    println!(
        "  ingest medians: alone {a:.0}/s, runs ending {s:.0}/s ({:.3} of alone), runs ending + messages {t:.0}/s \
         ({:.3} of alone, {:.3} of runs ending); drain under load, median {:.1} ms; the receiver got {} requests",
        s / a,
        t / a,
        t / s,
        median_of(&mut drains),
        receiver.requests.load(Ordering::Relaxed)
    );
    let [quiet_cpu, ended_cpu, draining_cpu] = &mut cpu;
    println!(
        "  server CPU over each 4 s load, medians: alone {:.0}%, runs ending {:.0}%, runs ending + messages {:.0}% \
         of a core",
        median_of(quiet_cpu),
        median_of(ended_cpu),
        median_of(draining_cpu)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The server

/// A temporary directory with the automations, the data directories and the server logs.
struct Workspace {
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Workspace {
    fn new() -> anyhow::Result<Workspace> {
        let binary = server_binary()?;
        let dir = tempfile::Builder::new().prefix("serve-load-").tempdir().context("creating a temporary directory")?;
        std::fs::create_dir(dir.path().join("automations")).context("creating the automations directory")?;
        Ok(Workspace { dir, binary })
    }

    fn automations(&self) -> PathBuf {
        self.dir.path().join("automations")
    }

    fn data(&self, run: u64) -> PathBuf {
        self.dir.path().join(format!("data-{run}"))
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.automations().join(format!("{name}.yaml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes `count` automations `{prefix}-0000`..., each with the trigger `trigger(i)`.
    fn write_many(&self, prefix: &str, count: u64, trigger: impl Fn(u64) -> String) -> anyhow::Result<()> {
        let width = count.to_string().len().max(4);
        for i in 0..count {
            let name = format!("{prefix}-{i:0width$}");
            let text = format!(
                "name: {name}\ntrigger:\n  {}\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  \
                 base: main\n  branch: \"agent/{name}\"\n  prompt: \"Work for {name}\"\n",
                trigger(i)
            );
            self.write(&name, &text)?;
        }
        Ok(())
    }
}

/// `NIGHTSHIFT_BIN`, else the release binary of this checkout (with a warning when it
/// is older than the sources).
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NIGHTSHIFT_BIN") {
        let path = PathBuf::from(path);
        return std::fs::canonicalize(&path).with_context(|| format!("NIGHTSHIFT_BIN: no file {}", path.display()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("target/release/nightshift");
    let binary = std::fs::canonicalize(&path).with_context(|| {
        format!("no server at {}: run `cargo build --release` first (or set NIGHTSHIFT_BIN)", path.display())
    })?;
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(edited)) = (built, newest_file(&root.join("src"), 0))
        && edited > built
    {
        eprintln!("warning: {} is older than src/; `cargo build --release` to measure the sources", path.display());
    }
    Ok(binary)
}

/// The newest modification time of a file under `dir`.
fn newest_file(dir: &Path, depth: u32) -> Option<SystemTime> {
    if depth > 8 {
        return None;
    }
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten().take(10_000) {
        let time = match entry.file_type() {
            Ok(kind) if kind.is_dir() => newest_file(&entry.path(), depth + 1),
            _ => entry.metadata().and_then(|m| m.modified()).ok(),
        };
        newest = newest.max(time);
    }
    newest
}

/// A `nightshift serve` child process and where it listens. Dropped without `stop`, it
/// is killed.
struct Serve {
    child: Child,
    pid: u32,
    address: SocketAddr,
    token: String,
    log: PathBuf,
}

/// How start-up went.
struct Started {
    serve_json: Duration,
    healthz: Duration,
    /// As `/healthz` counts them.
    automations: u64,
}

/// Spawns `serve` on the fresh data directory `data-{run}` and waits until `/healthz`
/// answers 200.
async fn serve(workspace: &Workspace, run: u64) -> anyhow::Result<(Serve, Started)> {
    serve_with(workspace, run, &[]).await
}

/// `serve` with more arguments for the server (its limits).
async fn serve_with(workspace: &Workspace, run: u64, args: &[&str]) -> anyhow::Result<(Serve, Started)> {
    let data = workspace.data(run);
    let log = workspace.dir.path().join(format!("serve-{run}.log"));
    let stdout = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let stderr = stdout.try_clone().context("sharing the log file")?;
    let spawned = Instant::now();
    let deadline = spawned + START_TIMEOUT;
    let child = Command::new(&workspace.binary)
        .arg("serve")
        // Ingest alone: no local workers picking up the runs it creates.
        .args(["--workers", "0", "--listen", "127.0.0.1:0", "--dir"])
        .arg(workspace.automations())
        .arg("--data")
        .arg(&data)
        .args(args)
        .env("LOAD_SECRET", SECRET)
        .env_remove("NIGHTSHIFT_API_TOKEN")
        .current_dir(workspace.dir.path())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting `{} serve`", workspace.binary.display()))?;
    let mut serve =
        Serve { pid: child.id(), child, address: SocketAddr::from(([127, 0, 0, 1], 0)), token: String::new(), log };

    let file = loop {
        if let Some(file) = ServeFile::read(&data) {
            break file;
        }
        serve.check_running("before writing serve.json")?;
        if Instant::now() >= deadline {
            bail!("no {} within {START_TIMEOUT:?}{}", ServeFile::path(&data).display(), serve.log_tail());
        }
        tokio::time::sleep(POLL).await;
    };
    let serve_json = spawned.elapsed();
    if file.pid != serve.pid {
        bail!("serve.json names process {}, but the server started is {}", file.pid, serve.pid);
    }
    serve.address = loopback_address(&file.url)?;
    serve.token = file.token;

    let body = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match exchange_once(serve.address, get(serve.address, "/healthz", None), remaining).await {
            Ok((StatusCode::OK, body)) => break body,
            Ok((status, body)) => format!("{status}: {}", String::from_utf8_lossy(&body)),
            Err(error) => format!("{error:#}"),
        };
        serve.check_running("before answering /healthz")?;
        if Instant::now() >= deadline {
            bail!("GET /healthz did not answer 200 within {START_TIMEOUT:?} (last: {last}){}", serve.log_tail());
        }
        tokio::time::sleep(POLL).await;
    };
    let healthz = spawned.elapsed();
    let automations = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|health| health["automations"].as_u64())
        .with_context(|| format!("/healthz answered {}", String::from_utf8_lossy(&body)))?;
    Ok((serve, Started { serve_json, healthz, automations }))
}

impl Serve {
    /// Fails when the server has exited.
    fn check_running(&mut self, when: &str) -> anyhow::Result<()> {
        match self.child.try_wait().context("checking on the server")? {
            None => Ok(()),
            Some(status) => bail!("the server exited ({status}) {when}{}", self.log_tail()),
        }
    }

    /// Waits `duration`, checking every second that the server still runs.
    async fn wait(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(remaining.min(Duration::from_secs(1))).await;
            self.check_running("during the test")?;
        }
    }

    /// `GET path` from the API, with the token, as JSON.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, timeout: Duration) -> anyhow::Result<T> {
        let request = get(self.address, path, Some(&self.token));
        let (status, body) =
            exchange_once(self.address, request, timeout).await.with_context(|| format!("GET {path}"))?;
        if status != StatusCode::OK {
            bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path} answered what nightshift does not send"))
    }

    /// Stops the server with SIGTERM and waits for it; returns how long it took.
    async fn stop(mut self) -> anyhow::Result<Duration> {
        let begun = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running `kill -TERM` on the server")?;
        if !status.success() {
            bail!("`kill -TERM {}` failed ({status}){}", self.pid, self.log_tail());
        }
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the server")? {
                if !status.success() {
                    bail!("the server exited with {status} after SIGTERM{}", self.log_tail());
                }
                return Ok(begun.elapsed());
            }
            if begun.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it{}", self.log_tail());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The end of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        if tail.is_empty() {
            format!("; its log {} is empty", self.log.display())
        } else {
            format!("; the end of its log {}:\n{}", self.log.display(), tail.join("\n"))
        }
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

fn loopback_address(url: &str) -> anyhow::Result<SocketAddr> {
    let address: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("serve.json names `{url}`, not http://ADDRESS:PORT"))?;
    if !address.ip().is_loopback() {
        bail!("serve.json names {address}, which is not a loopback address");
    }
    Ok(address)
}

/// The fields of a run this tool reads (`GET /api/runs`).
#[derive(Deserialize)]
struct RunRow {
    id: nightshift::runs::RunId,
    automation: String,
    event_ids: Vec<String>,
    created_at: DateTime<Utc>,
}

async fn newest_run(serve: &Serve) -> anyhow::Result<Option<u64>> {
    let runs = serve.get_json::<Vec<RunRow>>("/api/runs?limit=1", REQUEST_TIMEOUT).await?;
    Ok(runs.first().map(|run| run.id.0))
}

// ---------------------------------------------------------------------------------------
// HTTP

// ---------------------------------------------------------------------------------------
// Load

/// When requests are sent.
#[derive(Clone, Copy)]
enum Pace {
    /// Each connection sends its next request as soon as the last is answered.
    Closed,
    /// Request i is due at start + i / per_second; `total` in all.
    Open { per_second: u64, total: u64 },
}

/// What the connections share.
struct Load {
    address: SocketAddr,
    host: String,
    /// The next request's number: its body's `n` and, open loop, its turn.
    next: AtomicU64,
    pace: Pace,
    /// Open loop: one permit per turn as it comes due, then one per connection to end.
    turns: Semaphore,
    start: Instant,
    /// No request is sent after this.
    end: Instant,
}

/// What the requests came to.
#[derive(Default)]
struct Tally {
    /// Microseconds from send (open loop: from the due time) to the whole answer, one per
    /// answered request.
    latencies: Vec<u64>,
    /// When each accepted request's answer came (unsorted).
    answers: Vec<Instant>,
    /// Microseconds from the due time to the send (open loop).
    lags: Vec<u64>,
    accepted: u64,
    /// Answers other than 202, and requests that got no answer.
    errors: u64,
    /// Requests whose turn came after `Load::end` (open loop).
    unsent: u64,
    shown: Vec<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.shown.len() < SHOWN_ERRORS {
            self.shown.push(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.answers.extend(other.answers);
        self.lags.extend(other.lags);
        self.accepted += other.accepted;
        self.errors += other.errors;
        self.unsent += other.unsent;
        let room = SHOWN_ERRORS.saturating_sub(self.shown.len());
        self.shown.extend(other.shown.into_iter().take(room));
    }

    fn show_errors(&self) {
        for error in &self.shown {
            let shown: String = error.chars().take(400).collect();
            println!("  error: {shown}");
        }
    }
}

/// A finished load run.
struct Run {
    /// Latencies and lags sorted.
    tally: Tally,
    /// When the load began.
    started: Instant,
    /// From the start to the last answer.
    elapsed: Duration,
    /// CPU time over the run, as percentages of one core.
    server_cpu: f64,
    own_cpu: f64,
}

async fn drive(serve: &Serve, connections: u64, pace: Pace, seconds: u64) -> anyhow::Result<Run> {
    // Open loop: give the connections a moment to connect before the first turn.
    let (lead, slack) = match pace {
        Pace::Closed => (Duration::ZERO, Duration::ZERO),
        Pace::Open { .. } => (Duration::from_millis(100), REQUEST_TIMEOUT),
    };
    let start = Instant::now() + lead;
    let end = start + Duration::from_secs(seconds) + slack;
    let load = Arc::new(Load {
        address: serve.address,
        host: serve.address.to_string(),
        next: AtomicU64::new(0),
        pace,
        turns: Semaphore::new(0),
        start,
        end,
    });
    let pacer = match pace {
        Pace::Closed => None,
        Pace::Open { per_second, total } => {
            let load = Arc::clone(&load);
            let connections = usize::try_from(connections).unwrap_or(usize::MAX);
            Some(std::thread::spawn(move || pace_turns(&load, per_second, total, connections)))
        }
    };
    let server_pid = serve.pid.to_string();
    let (server_before, own_before, begun) = (cpu_ticks(&server_pid)?, cpu_ticks("self")?, Instant::now());
    let tasks: Vec<_> = (0..connections).map(|_| tokio::spawn(connection(Arc::clone(&load)))).collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("a connection task failed")?);
    }
    let elapsed = start.elapsed();
    if let Some(pacer) = pacer {
        pacer.join().map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    }
    let wall = begun.elapsed().as_secs_f64() * clock_ticks() as f64 / 100.0;
    let server_cpu = cpu_ticks(&server_pid)?.saturating_sub(server_before) as f64 / wall;
    let own_cpu = cpu_ticks("self")?.saturating_sub(own_before) as f64 / wall;
    tally.latencies.sort_unstable();
    tally.lags.sort_unstable();
    Ok(Run { tally, started: start, elapsed, server_cpu, own_cpu })
}

/// When turn `n` is due.
fn due(start: Instant, n: u64, per_second: u64) -> Instant {
    let offset = u128::from(n) * 1_000_000_000 / u128::from(per_second);
    start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// Open loop: releases each turn when it is due (precise to the thread's wake-up, unlike
/// tokio's millisecond timer), then one extra permit per connection to tell it to end.
fn pace_turns(load: &Load, per_second: u64, total: u64, connections: usize) {
    let mut n = 0;
    while n < total {
        let now = Instant::now();
        let next = due(load.start, n, per_second);
        if next > now {
            std::thread::sleep(next - now);
            continue;
        }
        let mut ready = 0;
        while n < total && due(load.start, n, per_second) <= now {
            n += 1;
            ready += 1;
        }
        load.turns.add_permits(ready);
    }
    load.turns.add_permits(connections);
}

/// One keep-alive connection (reconnecting if it breaks), its requests one after another.
async fn connection(load: Arc<Load>) -> Tally {
    let mut tally = Tally::default();
    let mut connects = 0;
    while Instant::now() < load.end && connects < MAX_CONNECTS {
        connects += 1;
        let (sender, connection) = match tokio::time::timeout(REQUEST_TIMEOUT, connect(load.address)).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => {
                tally.error(format!("{error:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                tally.error(format!("connecting took more than {REQUEST_TIMEOUT:?}"));
                continue;
            }
        };
        // The connection is driven in this task too; it ends once `sender` is dropped.
        let connection = tokio::time::timeout_at((load.end + REQUEST_TIMEOUT).into(), connection);
        let (_, finished) = tokio::join!(connection, send_requests(sender, &load, &mut tally));
        if finished {
            break;
        }
    }
    tally
}

/// Sends requests until the test ends (true) or the connection breaks (false).
async fn send_requests(mut sender: Sender, load: &Load, tally: &mut Tally) -> bool {
    loop {
        let (n, due) = match load.pace {
            Pace::Closed => {
                let n = load.next.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_REQUESTS || Instant::now() >= load.end {
                    return true;
                }
                (n, None)
            }
            Pace::Open { per_second, total } => {
                // Permits come in turn order and the number is taken right after one is
                // granted, so turn n goes with the n-th permit.
                match load.turns.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return true,
                }
                let n = load.next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return true;
                }
                if Instant::now() >= load.end {
                    tally.unsent += 1;
                    continue;
                }
                (n, Some(due(load.start, n, per_second)))
            }
        };
        let request = hook_request(&load.host, n, SECRET);
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, request)).await;
        let answered = Instant::now();
        if let Some(due) = due {
            tally.lags.push(micros(sent.saturating_duration_since(due)));
        }
        match answer {
            Ok(Ok((status, body))) => {
                tally.latencies.push(micros(answered.saturating_duration_since(due.unwrap_or(sent))));
                if status == StatusCode::ACCEPTED {
                    tally.accepted += 1;
                    tally.answers.push(answered);
                } else {
                    tally.error(format!("request {n}: {status}: {}", String::from_utf8_lossy(&body)));
                }
            }
            Ok(Err(error)) => {
                tally.error(format!("request {n}: {error:#}"));
                return false;
            }
            Err(_) => {
                tally.error(format!("request {n}: no answer within {REQUEST_TIMEOUT:?}"));
                return false;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measures

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds as milliseconds.
fn ms<T: Into<i128>>(micros: T) -> String {
    format!("{:.2} ms", micros.into() as f64 / 1000.0)
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// p50, p99 and max of sorted microseconds (nearest rank: exact samples).
fn spread<T: Copy + Into<i128>>(sorted: &[T]) -> String {
    let Some(max) = sorted.last() else { return "no samples".to_string() };
    let at = |p: f64| {
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        ms(sorted[rank - 1])
    };
    format!("p50 {}, p99 {}, max {}", at(0.50), at(0.99), ms(*max))
}

/// utime + stime of a process (`self` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Field 2, the command, is in parentheses and may hold spaces: count after it.
    let (_, rest) = text.rsplit_once(')').with_context(|| format!("{path} has no `)`"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state); utime is field 14, stime field 15.
    let field = |number: usize| {
        fields.get(number - 3).and_then(|f| f.parse::<u64>().ok()).with_context(|| format!("{path}: no field {number}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second (`getconf CLK_TCK`, else 100).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// The first number on the line of /proc/PID/status that starts with `key`.
fn status_number(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// VmRSS of a process, in MiB.
fn rss_text(pid: u32) -> String {
    match status_number(pid, "VmRSS:") {
        Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
        None => "unknown".to_string(),
    }
}
