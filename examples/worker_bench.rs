//! Load tool for workers, over the real store, pipeline and runner with a real git
//! repository and a shell agent:
//!
//! ```text
//! cargo build --release --example worker_bench
//! target/release/examples/worker_bench start [RUNS=20] [CLONES=5]
//! target/release/examples/worker_bench concurrent [RUNS=32]
//! target/release/examples/worker_bench fanout [CHILDREN=32] [ROUNDS=3] [push|no-push]
//! ```
//! - `start`: from a claim granted to the agent process started (it writes the time first
//!   thing), on a repository of 10,000 files, one run at a time with a warm mirror that is fetched again for every run,
//!   runs without and with the sandbox taking turns (its jails are started by `$NIGHTSHIFT_BIN`,
//!   default the `nightshift` built beside this example),
//!   interleaved with fresh `git clone file://` of the same repository; prints both and
//!   the ratio of the medians.
//! - `concurrent`: RUNS runs at once (RUNS automations with disjoint `paths`, a pool of
//!   RUNS threads) on a small repository (3 files per run's directory), each agent a
//!   short shell command. The engine's overhead per run is the time from claim to
//!   completion recorded, minus the agent's own time (from its first to its last
//!   instruction); also the whole batch's time divided by RUNS.
//! - `fanout`: issue 17's goal, side by side in each of ROUNDS rounds: CHILDREN plain runs
//!   at once (as `concurrent`), then one run whose `fan_out` makes CHILDREN children with
//!   disjoint `paths` and a join, on a pool of CHILDREN threads. Every agent writes a file
//!   in its module and commits. A plain run delivers its commit by pushing its branch
//!   (`push`, the default; `no-push` leaves it in the workspace), a child by holding it
//!   in the worker's mirror for the join. Prints the engine's overhead per run for both (claim to
//!   completion recorded, minus the agent's own time), their ratio, and how long the
//!   join's worker took to merge the children's commits (from its `merged` activity).
//!
//! Everything lives in a temporary directory. Overlay workspaces need root; without, the
//! workspaces are worktrees and the tool says so.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use serde_json::{Map, Value, json};

use nightshift::event::Event;
use nightshift::parallel::Role;
use nightshift::pipeline::Audience;
use nightshift::runs::{Completion, Epoch, NewActivity, RunId, RunState};
use nightshift::sandbox::Sandbox;
use nightshift::sandbox::egress::EgressSettings;
use nightshift::server::workers::LocalControl;
use nightshift::server::{ServeOptions, Server};
use nightshift::store::Claim;
use nightshift::triggers::TriggerKind;
use nightshift::worker::workspace::overlay_support;
use nightshift::worker::{ControlError, Pool, RunControl, Runner, Wakeup, WorkerSettings};
use support::{git, make_repository_of, median, report};

#[path = "support/mod.rs"]
mod support;

/// The longest the tool waits for the concurrent runs.
const CONCURRENT_TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    // NIGHTSHIFT_LOG=nightshift=debug shows where a run's time goes.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("NIGHTSHIFT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let mut number = |default: usize, limit: usize| -> usize {
        let n = args.next().map_or(default, |n| n.parse().expect("a number"));
        assert!((1..=limit).contains(&n), "at most {limit}");
        n
    };
    match mode.as_str() {
        "start" => {
            let runs = number(20, 500);
            let clones = number(5, 100);
            start(runs, clones);
        }
        "concurrent" => concurrent(number(32, 100)),
        "fanout" => {
            let children = number(32, 32);
            let rounds = number(3, 20);
            let push = match args.next().as_deref() {
                None | Some("push") => true,
                Some("no-push") => false,
                Some(other) => panic!("`{other}`: the plain runs either `push` (default) or `no-push`"),
            };
            fanout(children, rounds, push);
        }
        _ => panic!(
            "usage: worker_bench start [RUNS] [CLONES] | concurrent [RUNS] | fanout [CHILDREN] [ROUNDS] [push|no-push]"
        ),
    }
}

/// A temporary world: the repository, the automations, the store and the agent's clock.
struct Bench {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server: Arc<Server>,
    control: Arc<BenchControl>,
}

impl Bench {
    /// A repository of `modules` directories of `files` files; `modules` automations `a0`,
    /// `a1`, ... on it, each changing only its own module (and pushing its branch back
    /// to the repository when `push`); a `fan` automation fanning out to every module;
    /// and a `bench` agent that records when it starts and ends.
    fn new(modules: usize, files: usize, push: bool) -> Bench {
        let automations = modules;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().canonicalize().expect("its path");
        let source = root.join("source");
        let started = Instant::now();
        make_repository_of(&source, modules, files);
        println!("repository: {} files in {} ms", modules * files, started.elapsed().as_millis());
        let clock = root.join("clock");
        std::fs::create_dir_all(&clock).expect("the clock directory");
        // With a prompt naming a module (`fanout`), the agent also changes a file there
        // and commits, as a real agent's work would be merged.
        let agent = r#"date +%s%N > "$CLOCK/$NIGHTSHIFT_RUN_ID.start"
module=$(cat "$1")
if [ -d "$module" ]; then
  echo "$NIGHTSHIFT_RUN_ID" > "$module/touched.txt"
  git add -A && git -c user.name=Bench -c user.email=bench@example.com commit -qm "$NIGHTSHIFT_RUN_ID"
fi
echo '{"type":"summary","text":"ok"}'; date +%s%N > "$CLOCK/$NIGHTSHIFT_RUN_ID.end""#;
        std::fs::write(root.join("agent.sh"), agent).expect("write the agent");
        // In a jail the agent sees its script and the clock through its profile.
        let project = json!({"profiles": {"bench": {
            "command": ["sh", root.join("agent.sh"), "{prompt_file}"],
            "env": {"CLOCK": clock},
            "output": "generic",
            "sandbox": {"paths": [{"path": root.join("agent.sh")}, {"path": clock, "writable": true}]},
        }}});
        std::fs::write(root.join("nightshift.yaml"), serde_yaml::to_string(&project).expect("YAML")).expect("write");
        let automations_dir = root.join("automations");
        std::fs::create_dir_all(&automations_dir).expect("the automations directory");
        for n in 0..automations {
            let yaml = format!(
                "name: a{n}\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: bench\n  repo: {}\n  base: main\n  \
                 branch: \"bench/{{{{ automation.name }}}}/{{{{ event.n }}}}\"\n  paths: [\"module_{n:03}/**\"]\n  \
                 prompt: '{{{{ event.get(\"module\") ?? \"bench\" }}}}'\n  push: {push}\n",
                source.display()
            );
            std::fs::write(automations_dir.join(format!("a{n}.yaml")), yaml).expect("write");
        }
        // One run fanning out to every module, with a join.
        let items: Vec<String> =
            (0..modules).map(|n| format!("#{{ prompt: \"module_{n:03}\", paths: [\"module_{n:03}/**\"] }}")).collect();
        let fan = format!(
            "name: fan\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: bench\n  repo: {}\n  base: main\n  \
             branch: \"bench/fan/{{{{ event.n }}}}\"\n  prompt: fan\n  fan_out:\n    max_concurrent: {modules}\n    \
             items: '[{}]'\n    join: {{ profile: bench, prompt: join }}\n",
            source.display(),
            items.join(", ")
        );
        std::fs::write(automations_dir.join("fan.yaml"), fan).expect("write");
        // The server as `serve` opens it (store, automations, project), without HTTP or a
        // pool of its own: its workers' way in is `LocalControl`, as serve's pool's is.
        let options = ServeOptions {
            automations: automations_dir,
            project: Some(root.join("nightshift.yaml")),
            data: root.join("data"),
            store: None,
            listen: "127.0.0.1:0".parse().expect("an address"),
            max_body: None,
            api_token: Some("bench".into()),
            read_token: None,
            workers: 0,
            worker: WorkerSettings::new(root.join("work")),
            worker_tokens: Vec::new(),
            limits: Default::default(),
            public_url: None,
            metrics_token: None,
        };
        let server = Server::open(options).expect("the automations load and the store opens");
        let inner = LocalControl::new(Arc::clone(&server), Duration::from_secs(60));
        let control = Arc::new(BenchControl { inner, times: Mutex::default() });
        if let Err(reason) = overlay_support(&root.join("work/workspaces")) {
            println!("WARNING: overlays unavailable, workspaces are worktrees: {reason}");
        }
        Bench { _dir: dir, root, server, control }
    }

    fn queue(&self, automation: &str, n: usize) -> RunId {
        self.queue_event(automation, json!({ "n": n }))
    }

    fn queue_event(&self, automation: &str, payload: Value) -> RunId {
        let now = Utc::now();
        let event = Event::from_delivery(TriggerKind::Manual, payload, Default::default(), now);
        let pipeline = self.server.current().pipeline.clone();
        let report = pipeline.ingest(event, Audience::Named(automation), now).expect("the run is stored");
        report.outcome.runs[0].run
    }

    fn runner(&self, refresh_every: Duration, sandbox: Option<Arc<Sandbox>>) -> Arc<Runner> {
        let mut settings = WorkerSettings::new(self.root.join("work"));
        settings.refresh_every = refresh_every;
        settings.sandbox = sandbox;
        Arc::new(Runner::new(Arc::clone(&self.control) as Arc<dyn RunControl>, settings))
    }

    /// Each run's claim to completion minus its agent's own time.
    fn overheads(&self, runs: &[RunId]) -> Vec<Duration> {
        runs.iter()
            .map(|id| {
                let total = self.control.time(*id, "completed").duration_since(self.control.time(*id, "claimed"));
                let (start, end) = self.agent_clock(*id);
                total.expect("order").saturating_sub(end.duration_since(start).unwrap_or_default())
            })
            .collect()
    }

    /// Where each run's overhead went: claim → agent start, agent end → the completion
    /// call, and the completion call itself (medians, in ms).
    fn phases(&self, runs: &[RunId]) -> [f64; 3] {
        let mut parts = [Vec::new(), Vec::new(), Vec::new()];
        for id in runs {
            let (start, end) = self.agent_clock(*id);
            let since = |later: SystemTime, earlier: SystemTime| later.duration_since(earlier).unwrap_or_default();
            parts[0].push(since(start, self.control.time(*id, "claimed")));
            parts[1].push(since(self.control.time(*id, "completing"), end));
            parts[2].push(since(self.control.time(*id, "completed"), self.control.time(*id, "completing")));
        }
        parts.map(|mut part| {
            part.sort();
            ms(median(&part))
        })
    }

    /// The agent's start and end, as recorded by the agent.
    fn agent_clock(&self, run: RunId) -> (SystemTime, SystemTime) {
        let read = |end: &str| {
            let path = self.root.join("clock").join(format!("{run}.{end}"));
            let nanos: u64 =
                std::fs::read_to_string(&path).expect("the agent ran").trim().parse().expect("nanoseconds");
            UNIX_EPOCH + Duration::from_nanos(nanos)
        };
        (read("start"), read("end"))
    }
}

/// The nightshift binary that starts jails: `$NIGHTSHIFT_BIN`, else the one built beside
/// this example (`target/release/nightshift`).
fn jail_helper() -> PathBuf {
    std::env::var_os("NIGHTSHIFT_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("this example's path");
        exe.parent().and_then(|examples| examples.parent()).expect("target/<profile>/examples").join("nightshift")
    })
}

/// Claim → agent started, one run at a time, with and without the sandbox taking turns,
/// against fresh clones.
fn start(runs: usize, clones: usize) {
    let bench = Bench::new(100, 100, false);
    let helper = jail_helper();
    let sandbox = Sandbox::new(helper.clone(), EgressSettings::default()).expect("the egress proxy starts");
    if let Err(why) = sandbox.probe() {
        panic!("no jail can be built with {}: {why} (build it: cargo build --release)", helper.display());
    }
    // A mirror fetched for every run: no credit for a fetch skipped.
    let plain = bench.runner(Duration::ZERO, None);
    let jailed = bench.runner(Duration::ZERO, Some(Arc::new(sandbox)));
    let mut next = 0;
    let mut one = |runner: &Runner| -> Duration {
        next += 1;
        let id = bench.queue("a0", next);
        let claim = bench.control.claim("bench").expect("claim").expect("a queued run");
        assert_eq!(claim.run.id, id);
        runner.execute(claim);
        let claimed = bench.control.time(id, "claimed");
        bench.agent_clock(id).0.duration_since(claimed).expect("the agent starts after the claim")
    };
    println!("first run (clones the mirror, makes the base checkout): {} ms", one(&plain).as_millis());
    let (mut starts, mut jailed_starts, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    let source = bench.root.join("source");
    for i in 0..runs.max(clones) {
        if i < runs {
            starts.push(one(&plain));
            jailed_starts.push(one(&jailed));
        }
        if i < clones {
            let target = bench.root.join(format!("clone-{i}"));
            let started = Instant::now();
            let url = format!("file://{}", source.display());
            git(&bench.root, &["clone", "--quiet", &url, target.to_str().expect("UTF-8")]);
            fresh.push(started.elapsed());
            std::fs::remove_dir_all(&target).expect("the clone is removed");
        }
    }
    report("claim→agent", &mut starts);
    report("claim→agent, sandboxed", &mut jailed_starts);
    report("fresh clone", &mut fresh);
    let added = median(&jailed_starts).as_secs_f64() - median(&starts).as_secs_f64();
    println!("the sandbox adds {:.1} ms to the median claim→agent", added * 1000.0);
    let ratio = median(&fresh).as_secs_f64() / median(&starts).as_secs_f64();
    println!("fresh-clone median / claim→agent median: {ratio:.1}x");
}

/// RUNS runs at once on a pool of RUNS threads.
fn concurrent(runs: usize) {
    let bench = Bench::new(runs, 3, false);
    let runner = bench.runner(Duration::from_secs(5), None);
    // Warm the mirror and the base checkout, as a running worker has them.
    let warm = bench.queue("a0", 0);
    runner.execute(bench.control.claim("warm").expect("claim").expect("a queued run"));
    assert!(bench.control.completed(warm));
    let ids: Vec<RunId> = (0..runs).map(|n| bench.queue(&format!("a{n}"), 1)).collect();
    let started = Instant::now();
    let pool = Pool::start(Arc::clone(&runner), "bench", runs, Arc::new(Wakeup::new()), Duration::from_millis(50))
        .expect("the pool starts");
    while !ids.iter().all(|id| bench.control.completed(*id)) {
        assert!(started.elapsed() < CONCURRENT_TIMEOUT, "the runs did not finish in time");
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed();
    pool.stop();
    let mut overheads = Vec::new();
    let mut totals = Vec::new();
    for id in &ids {
        let total =
            bench.control.time(*id, "completed").duration_since(bench.control.time(*id, "claimed")).expect("order");
        let (agent_start, agent_end) = bench.agent_clock(*id);
        let agent = agent_end.duration_since(agent_start).unwrap_or_default();
        totals.push(total);
        overheads.push(total.saturating_sub(agent));
    }
    println!(
        "{runs} runs at once: all done in {} ms, {:.1} ms per run",
        wall.as_millis(),
        wall.as_secs_f64() * 1000.0 / runs as f64
    );
    report("claim→complete", &mut totals);
    report("engine overhead", &mut overheads);
}

/// CHILDREN plain runs at once, then a fan-out of CHILDREN children and a join, ROUNDS
/// times, on one pool.
fn fanout(children: usize, rounds: usize, push: bool) {
    let bench = Bench::new(children, 3, push);
    let runner = bench.runner(Duration::from_secs(5), None);
    let warm = bench.queue("a0", 0);
    runner.execute(bench.control.claim("warm").expect("claim").expect("a queued run"));
    assert!(bench.control.completed(warm));
    let pool = Pool::start(Arc::clone(&runner), "bench", children, Arc::new(Wakeup::new()), Duration::from_millis(5))
        .expect("the pool starts");
    let store = bench.server.store();
    let (mut plain_medians, mut child_medians, mut merges) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Plain: one run of each automation, all at once.
        let ids: Vec<RunId> = (0..children)
            .map(|n| {
                let event = json!({ "n": round, "module": format!("module_{n:03}") });
                bench.queue_event(&format!("a{n}"), event)
            })
            .collect();
        let started = Instant::now();
        while !ids.iter().all(|id| bench.control.completed(*id)) {
            assert!(started.elapsed() < CONCURRENT_TIMEOUT, "the plain runs did not finish in time");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut plain = bench.overheads(&ids);
        let plain_wall = started.elapsed();

        // Fan-out: the parent, its children and the join.
        let parent = bench.queue_event("fan", json!({ "n": round }));
        let started = Instant::now();
        let finished = loop {
            let run = store.run(parent).expect("the store reads").expect("the parent");
            if run.state.is_finished() {
                break run;
            }
            assert!(started.elapsed() < CONCURRENT_TIMEOUT, "the fan-out did not finish in time");
            std::thread::sleep(Duration::from_millis(5));
        };
        let fan_wall = started.elapsed();
        assert_eq!(finished.state, RunState::Succeeded, "{:?}", finished.reason);
        let family = store.children(parent).expect("the store reads");
        let kids: Vec<RunId> =
            family.iter().filter(|run| run.parent.is_some_and(|p| p.role == Role::Child)).map(|run| run.id).collect();
        assert_eq!(kids.len(), children);
        let mut fanned = bench.overheads(&kids);
        let join = family.iter().find(|run| run.parent.is_some_and(|p| p.role == Role::Join)).expect("a join");
        let merged = store
            .activities(join.id)
            .expect("the store reads")
            .into_iter()
            .find_map(|activity| merge_millis(&activity.text))
            .expect("the join reports its merge");
        plain.sort();
        fanned.sort();
        let [a, b, c] = bench.phases(&ids);
        let [d, e, f] = bench.phases(&kids);
        println!(
            "  phases (claim→agent, agent→complete, complete): plain {a:.1} / {b:.1} / {c:.1} ms; child {d:.1} / {e:.1} / {f:.1} ms"
        );
        println!(
            "round {round}: plain {children} runs in {} ms, overhead median {:.1} ms; fan-out in {} ms, child overhead median {:.1} ms; merge {merged:.0} ms",
            plain_wall.as_millis(),
            ms(median(&plain)),
            fan_wall.as_millis(),
            ms(median(&fanned)),
        );
        plain_medians.push(median(&plain));
        child_medians.push(median(&fanned));
        merges.push(Duration::from_secs_f64(merged / 1000.0));
    }
    pool.stop();
    report("plain overhead", &mut plain_medians);
    report("child overhead", &mut child_medians);
    report("merge", &mut merges);
    let ratio = median(&child_medians).as_secs_f64() / median(&plain_medians).as_secs_f64();
    println!("child overhead / plain overhead (medians of the rounds' medians): {ratio:.2}");
}

/// `… in 812 ms …` in the join's merge activity.
fn merge_millis(text: &str) -> Option<f64> {
    if !text.starts_with("merged") {
        return None;
    }
    let (before, _) = text.split_once(" ms")?;
    before.rsplit(' ').next()?.parse().ok()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Serve's own `LocalControl`, recording when each run was claimed and completed.
struct BenchControl {
    inner: LocalControl,
    times: Mutex<HashMap<(RunId, &'static str), SystemTime>>,
}

impl BenchControl {
    fn mark(&self, run: RunId, what: &'static str) {
        self.times.lock().expect("lock").insert((run, what), SystemTime::now());
    }

    fn time(&self, run: RunId, what: &'static str) -> SystemTime {
        self.times.lock().expect("lock")[&(run, what)]
    }

    fn completed(&self, run: RunId) -> bool {
        self.times.lock().expect("lock").contains_key(&(run, "completed"))
    }
}

impl RunControl for BenchControl {
    fn claim(&self, worker: &str) -> Result<Option<Claim>, ControlError> {
        let claim = self.inner.claim(worker)?;
        if let Some(claim) = &claim {
            self.mark(claim.run.id, "claimed");
        }
        Ok(claim)
    }

    fn started(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        self.inner.started(run, epoch)
    }

    fn heartbeat(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        self.inner.heartbeat(run, epoch)
    }

    fn activities(&self, run: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), ControlError> {
        self.inner.activities(run, epoch, activities)
    }

    fn log(&self, run: RunId, epoch: Epoch, text: String) -> Result<(), ControlError> {
        self.inner.log(run, epoch, text)
    }

    fn release(&self, run: RunId, epoch: Epoch, reason: &str) -> Result<(), ControlError> {
        self.inner.release(run, epoch, reason)
    }

    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<(), ControlError> {
        assert!(matches!(completion, Completion::Succeeded { .. }), "{run}: {completion:?}");
        self.mark(run, "completing");
        self.inner.complete(run, epoch, completion, memory)?;
        self.mark(run, "completed");
        Ok(())
    }
}
