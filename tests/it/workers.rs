//! Runs end to end: a real `nightshift serve` with its local workers (or a remote
//! `nightshift worker` process on loopback), a real git repository made here, and a
//! fixture agent (a shell script) that edits, commits, prints activities and writes memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::git::{commit_all, git, git_command};
use super::serving::Serving;
use crate::sandbox_jail::{As, users};

/// How long a test waits for a run to get somewhere before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// The fixture agent. It appends the prompt to `$TARGET` (a path in the repository;
/// default `{automation}/file.txt`), commits, reports a plan and a summary, writes memory, and, when `$HOLD` names a file,
/// first waits for that file to exist (so a test can catch it mid-run). Its first
/// argument is the prompt file; the setup phase's secret must not reach it.
const AGENT: &str = r#"#!/bin/sh
set -e
echo '{"type":"plan","text":"append the prompt to '"${TARGET:-a file}"'"}'
echo "agent sees token: ${FIXTURE_TOKEN:-none}" >&2
if [ -n "$HOLD" ]; then
  # A pid means nothing outside the jail's PID namespace: the test finds this sleep by
  # its unique argument.
  marker="299.$(od -An -N3 -tu4 /dev/urandom | tr -d ' ')"
  sleep "$marker" &
  echo "$marker" > "$HOLD.child"
  while [ ! -e "$HOLD" ]; do sleep 0.1; done
fi
target="${TARGET:-$NIGHTSHIFT_AUTOMATION/file.txt}"
mkdir -p "$(dirname "$target")"
cat "$1" >> "$target"
git add -A
git -c user.name=Agent -c user.email=agent@example.com commit -qm "agent: $NIGHTSHIFT_RUN_ID"
printf '{"last":"done by %s","note":"from the agent"}' "$NIGHTSHIFT_RUN_ID" > "$NIGHTSHIFT_MEMORY_OUT"
echo '{"type":"summary","text":"appended the prompt"}'
"#;

/// The fixture agent's plan command: it proposes and changes nothing.
const PLANNER: &str = r#"#!/bin/sh
echo '{"type":"summary","text":"plan: append the prompt"}'
"#;

/// A test's world: the upstream repository, the agent, the project file.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream");
        std::fs::create_dir_all(upstream.join("src/a")).unwrap();
        std::fs::write(upstream.join("README.md"), "fixture\n").unwrap();
        std::fs::write(upstream.join("src/a/notes.txt"), "notes\n").unwrap();
        git(&upstream, &["init", "-q"]);
        commit_all(&upstream, "initial");
        std::fs::write(dir.path().join("agent.sh"), AGENT).unwrap();
        std::fs::write(dir.path().join("plan.sh"), PLANNER).unwrap();
        World { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn upstream(&self) -> PathBuf {
        self.path("upstream")
    }

    /// `nightshift.yaml` with the `fixture` profile; `env` goes to the agent.
    fn project(&self, env: &[(&str, &str)]) -> PathBuf {
        let env: serde_json::Map<String, Value> = env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let project = json!({
            "profiles": {
                "fixture": {
                    "command": ["sh", self.path("agent.sh"), "{prompt_file}"],
                    "plan_command": ["sh", self.path("plan.sh")],
                    "env": env,
                    "output": "generic",
                    // The scripts and the files tests steer the agent with (`$HOLD`) live
                    // here; the jail shows the agent nothing else outside its workspace.
                    "sandbox": { "paths": [{ "path": self.dir.path(), "writable": true }] },
                }
            },
            // The webhook receivers tests start listen on loopback.
            "notify": { "allow_private_targets": true },
        });
        let path = self.path("nightshift.yaml");
        std::fs::write(&path, serde_yaml::to_string(&project).unwrap()).unwrap();
        path
    }

    /// An automation run by hand on the fixture agent, changing `paths`.
    fn automation(&self, name: &str, paths: &str, extra: &str) -> String {
        format!(
            r#"name: {name}
trigger:
  manual: {{}}
task:
  agent: fixture
  repo: {repo}
  base: main
  branch: "nightshift/{name}/{{{{ event.n }}}}"
  push: true
  paths: {paths}
  setup: ['echo "setup sees $FIXTURE_TOKEN"']
  secrets:
    FIXTURE_TOKEN: env:FIXTURE_SECRET
  prompt: |
    Request {{{{ event.n }}}}. Before: {{{{ memory.get("last") ?? "nothing" }}}}
memory:
  after_run: |
    memory.set("seen_note", run.memory_out.note);
{extra}"#,
            repo = self.upstream().display(),
        )
    }

    fn branch_exists(&self, branch: &str) -> bool {
        git(&self.upstream(), &["branch", "--list", branch]).contains(branch)
    }
}

fn serve(world: &World, files: &[(&str, &str)], agent_env: &[(&str, &str)], args: &[&str]) -> Serving {
    let project = world.project(agent_env);
    // Relative, as a person would type it: the server's directory is its own.
    let mut all = vec!["--config", project.to_str().unwrap(), "--work-dir", "work"];
    all.extend_from_slice(args);
    Serving::start_with_args(files, &[("FIXTURE_SECRET", "s3cr3t-value")], &all)
}

/// Starts a manual run of `automation` with `{"n": n}`; returns its id.
pub(crate) fn trigger(server: &Serving, automation: &str, n: u32) -> String {
    let answer = server.api_post(&format!("/api/automations/{automation}/run"), &json!({ "n": n }));
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    answer.body["runs"][0]["run"].as_str().map(str::to_string).expect("a run was created")
}

pub(crate) fn record(server: &Serving, run: &str) -> Value {
    server.api_get(&format!("/api/runs/{run}"))
}

/// Waits until the run is in one of `states`; returns its record.
pub(crate) fn wait_for(server: &Serving, run: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let record = record(server, run);
        if states.contains(&record["run"]["state"].as_str().unwrap()) {
            return record;
        }
        assert!(Instant::now() < deadline, "{run} never reached {states:?}: {record:#}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn log_text(server: &Serving, run: &str) -> String {
    let chunks = server.api_get(&format!("/api/runs/{run}/log"));
    chunks.as_array().unwrap().iter().map(|chunk| chunk["text"].as_str().unwrap()).collect()
}

pub(crate) fn activity_texts(record: &Value, kind: &str) -> Vec<String> {
    record["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .map(|a| a["text"].as_str().unwrap().to_string())
        .collect()
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(50));
    std::fs::read_to_string(path).unwrap()
}

/// The pid (in this namespace) of the agent's `sleep MARKER`, if it is alive.
fn marked_process(marker: &str) -> Option<String> {
    let wanted = format!("sleep\0{}\0", marker.trim());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_string_lossy().to_string();
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let zombie = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default().contains(") Z ");
        (cmdline == wanted.as_bytes() && !zombie).then_some(pid)
    })
}

fn process_alive(marker: &str) -> bool {
    marked_process(marker).is_some()
}

fn wait_until_gone(marker: &str) {
    let deadline = Instant::now() + PATIENCE;
    while process_alive(marker) {
        assert!(Instant::now() < deadline, "the agent's `sleep {}` outlived its run", marker.trim());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_event_becomes_a_pushed_commit_with_activities_a_masked_log_and_memory() {
    let world = World::new();
    let automation = world.automation("fix", r#"["src/**"]"#, "");
    let server = serve(&world, &[("fix.yaml", &automation)], &[("TARGET", "src/a/notes.txt")], &["--workers", "2"]);

    let first = trigger(&server, "fix", 1);
    let done = wait_for(&server, &first, &["succeeded", "failed", "timed_out"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{}", log_text(&server, &first));
    let result = &done["run"]["result"];
    assert_eq!(result["summary"], "appended the prompt");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["details"]["diff_stat"]["files_changed"], 1);
    assert_eq!(result["details"]["commits"][0]["subject"], format!("agent: {first}"));
    assert_eq!(result["details"]["pushed"]["branch"], "nightshift/fix/1");

    // The branch reached the real repository with the agent's commit.
    let pushed = git(&world.upstream(), &["log", "-1", "--format=%s", "nightshift/fix/1"]);
    assert_eq!(pushed, format!("agent: {first}"));
    let file = git(&world.upstream(), &["show", "nightshift/fix/1:src/a/notes.txt"]);
    assert!(file.contains("Request 1. Before: nothing"), "{file}");

    assert_eq!(activity_texts(&done, "plan"), ["append the prompt to src/a/notes.txt"]);
    let log = log_text(&server, &first);
    assert!(log.contains("setup sees ***"), "the setup phase sees the secret, masked in the log:\n{log}");
    assert!(log.contains("agent sees token: none"), "the agent phase has no secrets:\n{log}");
    assert!(!log.contains("s3cr3t-value"), "{log}");

    let memory = server.api_get("/api/automations/fix/memory");
    assert_eq!(memory["last"]["value"], format!("done by {first}"));
    assert_eq!(memory["last"]["written_by"], first.as_str(), "run ids are `r1` in JSON too");
    assert_eq!(memory["seen_note"]["value"], "from the agent", "after_run sees what the agent wrote");

    let second = trigger(&server, "fix", 2);
    let prompt = record(&server, &second)["run"]["task"]["prompt"].as_str().unwrap().to_string();
    assert!(prompt.contains(&format!("Before: done by {first}")), "{prompt}");
    assert_eq!(wait_for(&server, &second, &["succeeded", "failed"])["run"]["state"], "succeeded");
}

/// An automation whose setup prints its secret in many forms and another automation's
/// secret; run by the server's own worker or by a remote one, the log shows none of them.
/// The sandbox would hide the other automation's secret file from the setup, so it is off:
/// masking is the defence for what a phase can read.
fn check_every_secret_is_masked(remote: bool) {
    let world = World::new();
    let other_secret = world.path("other-secret");
    std::fs::write(&other_secret, "0ther-automation-key\n").unwrap();
    let setup = [
        r#"printf '%s' "$FIXTURE_TOKEN" | base64"#,
        r#"printf 'user:%s' "$FIXTURE_TOKEN" | base64 -w0; echo"#,
        r#"printf '%s' "$FIXTURE_TOKEN" | od -An -tx1 | tr -d ' \n'; echo"#,
        r#"printf 'q=%s&x=1\n' "$(printf '%s' "$FIXTURE_TOKEN" | sed 's/-/%2D/')""#,
        r#"printf 'split: %.4s' "$FIXTURE_TOKEN"; sleep 0.2; printf '%s done\n' "${FIXTURE_TOKEN#????}""#,
        "cat OTHER",
    ]
    .map(|command| command.replace("OTHER", other_secret.to_str().unwrap()));
    let setup = serde_json::to_string(&setup).unwrap();
    let leaky = world
        .automation("leaky", r#"["leaky/**"]"#, "")
        .replace(r#"setup: ['echo "setup sees $FIXTURE_TOKEN"']"#, &format!("setup: {setup}"));
    let other = format!(
        "name: other\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: fixture\n  repo: {}\n  prompt: hi\n  secrets:\n    OTHER: file:{}\n",
        world.upstream().display(),
        other_secret.display()
    );
    let workers: &[&str] =
        if remote { &["--workers", "0", "--worker-token", "t"] } else { &["--workers", "1", "--sandbox", "off"] };
    let server = serve(&world, &[("leaky.yaml", &leaky), ("other.yaml", &other)], &[], workers);
    let _worker = remote.then(|| {
        RemoteWorker::start_with(&server, "t", &world.path("work"), &world.path("worker.log"), &["--sandbox", "off"])
    });

    let sandbox = if remote { "no local workers" } else { "off" };
    assert_eq!(server.get("/healthz").body["sandbox"], sandbox, "the server's own workers' sandbox");
    let run = trigger(&server, "leaky", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed", "timed_out"]);
    let log = log_text(&server, &run);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{log}");
    assert!(
        activity_texts(&done, "policy").iter().any(|text| text.starts_with("the sandbox is off (--sandbox off)")),
        "a run without the sandbox says so: {done:#}"
    );
    for line in ["***", "q=***&x=1", "split: *** done"] {
        assert!(log.lines().any(|l| l == line), "no line `{line}` in:\n{log}");
    }
    let leaks = ["s3cr3t", "czNjcjN0LXZhbHVl", "7333637233742d76616c7565", "0ther-automation-key", "%2Dvalue"];
    for leak in leaks {
        assert!(!log.contains(leak), "`{leak}` is in the log:\n{log}");
    }
}

#[test]
fn every_secret_the_engine_knows_is_masked_in_every_form_and_in_pieces() {
    check_every_secret_is_masked(false);
}

#[test]
fn a_remote_worker_masks_every_secret_it_can_read_too() {
    check_every_secret_is_masked(true);
}

/// A hook's signing secret lives only on the server: a remote worker cannot know it, so
/// the server masks what the worker reports, and neither the API nor `nightshift logs`
/// shows it, plain, in base64 or written in two pieces.
#[test]
fn a_remote_workers_log_is_masked_on_the_server_for_secrets_only_the_server_knows() {
    const HOOK_SECRET: &str = "gh-hook-s1gning-key";
    let world = World::new();
    let setup = [
        format!("echo 'plain {HOOK_SECRET}'"),
        format!("printf '%s' '{HOOK_SECRET}' | base64"),
        format!("printf 'split: {}'; sleep 0.2; printf '{} done\\n'", &HOOK_SECRET[..8], &HOOK_SECRET[8..]),
    ];
    let setup = serde_json::to_string(&setup).unwrap();
    let leaky = world
        .automation("leaky", r#"["leaky/**"]"#, "")
        .replace(r#"setup: ['echo "setup sees $FIXTURE_TOKEN"']"#, &format!("setup: {setup}"));
    let hook = super::hooks::GITHUB.replace("GH_SECRET", "GH_HOOK_SECRET");
    let project = world.project(&[]);
    let args = ["--config", project.to_str().unwrap(), "--work-dir", "work", "--workers", "0", "--worker-token", "t"];
    let server = Serving::start_with_args(
        &[("leaky.yaml", &leaky), ("hook.yaml", &hook)],
        &[("FIXTURE_SECRET", "s3cr3t-value"), ("GH_HOOK_SECRET", HOOK_SECRET)],
        &args,
    );
    let _worker = RemoteWorker::start(&server, "t", &world.path("work"), &world.path("worker.log"));

    let run = trigger(&server, "leaky", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed", "timed_out"]);
    let log = log_text(&server, &run);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{log}");
    let printed = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("logs")
        .arg(&run)
        .arg("--dir")
        .arg(&server.automations)
        .arg("--data")
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed = String::from_utf8(printed.stdout).unwrap();
    for log in [&log, &printed] {
        for line in ["plain ***", "***", "split: *** done"] {
            assert!(log.lines().any(|l| l == line), "no line `{line}` in:\n{log}");
        }
        for leak in [HOOK_SECRET, "Z2gtaG9vay1zMWduaW5nLWtleQ"] {
            assert!(!log.contains(leak), "`{leak}` is in the log:\n{log}");
        }
    }
}

/// Everything a remote worker reports through the worker API is masked on the server
/// before it is stored: a log piece, including a secret with a line break that falls
/// across two pieces, activities, the result and memory.
#[test]
fn what_a_remote_worker_reports_is_masked_on_the_server() {
    const KEY: &str = "-----BEGIN KEY-----\nq7Zp0wXyLmN3\n-----END KEY-----";
    let world = World::new();
    let key_file = world.path("key.pem");
    std::fs::write(&key_file, KEY).unwrap();
    let other = format!(
        "name: other\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: fixture\n  repo: {}\n  prompt: hi\n  secrets:\n    KEY: file:{}\n",
        world.upstream().display(),
        key_file.display()
    );
    let reporter = world.automation("reporter", r#"["reporter/**"]"#, "");
    let project = world.project(&[]);
    let args = ["--config", project.to_str().unwrap(), "--workers", "0", "--worker-token", "t"];
    let server = Serving::start_with_args(&[("reporter.yaml", &reporter), ("other.yaml", &other)], &[], &args);
    let run = trigger(&server, "reporter", 1);

    let claim = server.worker_post("t", "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 30}));
    assert_eq!(claim.status, 200, "{:?}", claim.body);
    let epoch = claim.body["lease"]["epoch"].clone();
    let call = |action: &str, body: Value| {
        let answer = server.worker_post("t", &format!("/api/worker/runs/{run}/{action}"), &body);
        assert_eq!(answer.status, 204, "{action}: {:?}", answer.body);
    };
    call("started", json!({"epoch": epoch}));
    // The key's first line ends one piece, its second line starts the next.
    call("log", json!({"epoch": epoch, "text": "key: -----BEGIN KEY-----\n"}));
    call("log", json!({"epoch": epoch, "text": "q7Zp0wXyLmN3\n-----END KEY----- done\n"}));
    call(
        "activities",
        json!({"epoch": epoch, "activities": [{"kind": "thought", "text": format!("saw {KEY}"), "data": {KEY: [KEY]}}]}),
    );
    let completion =
        json!({"outcome": "succeeded", "result": {"summary": format!("used {KEY}"), "details": {"note": KEY}}});
    call("complete", json!({"epoch": epoch, "completion": completion, "memory": {"note": KEY}}));

    let done = wait_for(&server, &run, &["succeeded", "failed"]);
    let log = log_text(&server, &run);
    assert!(log.contains("key: *** done\n"), "the key across two pieces is masked:\n{log}");
    let everything = format!("{done}\n{log}\n{}", server.api_get("/api/automations/reporter/memory"));
    assert!(!everything.contains("q7Zp0wXyLmN3"), "the key is stored in clear:\n{everything}");
    assert_eq!(activity_texts(&done, "thought"), ["saw ***"]);
    assert_eq!(done["run"]["result"]["summary"], "used ***");
}

#[test]
fn runs_with_disjoint_paths_run_together_and_overlapping_ones_one_after_the_other() {
    let world = World::new();
    let mut files = Vec::new();
    for part in 0..8 {
        files.push((
            format!("part{part}.yaml"),
            world.automation(&format!("part{part}"), &format!("[\"part{part}/**\"]"), ""),
        ));
    }
    for name in ["shared-a", "shared-b"] {
        files.push((format!("{name}.yaml"), world.automation(name, r#"["shared-a/**", "shared-b/**"]"#, "")));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    // Each agent holds until the test lets them all go, so the test sees which started.
    let hold = world.path("hold");
    let agent_env = [("HOLD", hold.to_str().unwrap())];
    let server = serve(&world, &files, &agent_env, &["--workers", "10"]);

    let parts: Vec<String> = (0..8).map(|part| trigger(&server, &format!("part{part}"), 1)).collect();
    let first_shared = trigger(&server, "shared-a", 1);
    let second_shared = trigger(&server, "shared-b", 1);
    for run in parts.iter().chain([&first_shared]) {
        wait_for(&server, run, &["running"]);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        record(&server, &second_shared)["run"]["state"],
        "queued",
        "a run whose paths overlap a running one of the same repository waits"
    );
    std::fs::write(&hold, "").unwrap();
    for run in parts.iter().chain([&first_shared, &second_shared]) {
        let done = wait_for(&server, run, &["succeeded", "failed"]);
        assert_eq!(done["run"]["state"], "succeeded", "{done:#}");
    }
    let first = record(&server, &first_shared)["run"]["finished_at"].as_str().unwrap().to_string();
    let second = record(&server, &second_shared)["run"]["started_at"].as_str().unwrap().to_string();
    let (first, second) = (parse_time(&first), parse_time(&second));
    assert!(second >= first, "the second shared run started at {second} before the first ended at {first}");
}

fn parse_time(text: &str) -> chrono::DateTime<chrono::Utc> {
    text.parse().unwrap()
}

#[test]
fn a_run_that_changes_files_outside_its_paths_is_out_of_scope_and_not_pushed() {
    let world = World::new();
    let automation = world.automation("narrow", r#"["src/a/**"]"#, "");
    let server = serve(&world, &[("narrow.yaml", &automation)], &[("TARGET", "README.md")], &["--workers", "1"]);
    let run = trigger(&server, "narrow", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "failed");
    assert!(done["run"]["reason"].as_str().unwrap().starts_with("out of scope"), "{done:#}");
    assert_eq!(done["run"]["result"]["details"]["out_of_scope"], json!(["README.md"]));
    assert!(!world.branch_exists("nightshift/narrow/1"), "an out-of-scope run is not pushed");
}

#[test]
fn cancel_and_timeout_stop_the_agent_and_everything_it_started() {
    let world = World::new();
    let hold = world.path("hold");
    let cancelled = world.automation("cancelled", r#"["src/**"]"#, "");
    let slow = world.automation("slow", r#"["src/**"]"#, "").replace("  push: true\n", "  push: true\n  timeout: 2s\n");
    let files = [("cancelled.yaml", cancelled.as_str()), ("slow.yaml", slow.as_str())];
    let agent_env = [("TARGET", "src/a/notes.txt"), ("HOLD", hold.to_str().unwrap())];
    let server = serve(&world, &files, &agent_env, &["--workers", "2"]);

    let run = trigger(&server, "cancelled", 1);
    wait_for(&server, &run, &["running"]);
    let child = wait_for_file(&world.path("hold.child"));
    assert!(process_alive(&child));
    let answer = server.api_post(&format!("/api/runs/{run}/cancel"), &json!({"reason": "not needed"}));
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    wait_until_gone(&child);
    assert_eq!(record(&server, &run)["run"]["state"], "cancelled");
    std::fs::remove_file(world.path("hold.child")).unwrap();

    let run = trigger(&server, "slow", 1);
    let done = wait_for(&server, &run, &["timed_out", "failed", "succeeded"]);
    assert_eq!(done["run"]["state"], "timed_out", "{done:#}");
    let child = wait_for_file(&world.path("hold.child"));
    wait_until_gone(&child);
}

#[test]
fn a_plan_waits_for_approval_then_the_agent_carries_it_out() {
    let world = World::new();
    let automation =
        world.automation("planned", r#"["src/**"]"#, "").replace("  push: true\n", "  push: true\n  approval: plan\n");
    let server = serve(&world, &[("planned.yaml", &automation)], &[("TARGET", "src/a/notes.txt")], &["--workers", "1"]);
    let run = trigger(&server, "planned", 1);
    let waiting = wait_for(&server, &run, &["awaiting_approval", "failed", "succeeded"]);
    assert_eq!(waiting["run"]["state"], "awaiting_approval", "{waiting:#}");
    assert!(activity_texts(&waiting, "plan").contains(&"plan: append the prompt".to_string()), "{waiting:#}");
    assert!(!world.branch_exists("nightshift/planned/1"), "planning changes nothing");

    let answer = server.api_post(&format!("/api/runs/{run}/approve"), &json!({}));
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let done = wait_for(&server, &run, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}");
    // The agent got the approved plan with its prompt (and wrote its prompt to the file).
    let file = git(&world.upstream(), &["show", "nightshift/planned/1:src/a/notes.txt"]);
    assert!(file.contains("Carry out this plan, which a person approved:\nplan: append the prompt"), "{file}");
}

/// A `nightshift worker` process; killed when dropped.
struct RemoteWorker(Child);

impl RemoteWorker {
    fn start(server: &Serving, token: &str, work: &Path, log: &Path) -> RemoteWorker {
        RemoteWorker::start_with(server, token, work, log, &[])
    }

    fn start_with(server: &Serving, token: &str, work: &Path, log: &Path, args: &[&str]) -> RemoteWorker {
        let child = Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .args(["worker", "--server", &server.url, "--token", token, "--concurrency", "1", "--lease", "3s"])
            .args(args)
            .arg("--work-dir")
            .arg(work)
            .env("NIGHTSHIFT_LOG", "nightshift=debug,warn")
            .env("FIXTURE_SECRET", "s3cr3t-value")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .expect("start nightshift worker");
        RemoteWorker(child)
    }
}

impl Drop for RemoteWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_remote_worker_runs_over_http_and_a_dead_ones_run_is_finished_by_another() {
    let world = World::new();
    let hold = world.path("hold");
    let automation = world.automation("remote", r#"["src/**"]"#, "");
    let agent_env = [("TARGET", "src/a/notes.txt"), ("HOLD", hold.to_str().unwrap())];
    let server = serve(
        &world,
        &[("remote.yaml", &automation)],
        &agent_env,
        &["--workers", "0", "--worker-token", "token-one", "--worker-token", "token-two"],
    );
    let run = trigger(&server, "remote", 1);

    let mut first = RemoteWorker::start(&server, "token-one", &world.path("work-1"), &world.path("worker-1.log"));
    let running = wait_for(&server, &run, &["running"]);
    let epoch = running["run"]["epoch"].as_u64().unwrap();
    let holder = running["run"]["lease"]["worker"].as_str().unwrap().to_string();

    // Another token's holder learns nothing of the run and cannot touch it.
    let other = server.worker_post(
        "token-two",
        &format!("/api/worker/runs/{run}/heartbeat"),
        &json!({"epoch": epoch, "lease_seconds": 3}),
    );
    assert_eq!(other.status, 404, "{:?}", other.body);
    let none = server.worker_post("wrong", "/api/worker/claim", &json!({"worker": "x", "lease_seconds": 3}));
    assert_eq!(none.status, 401);

    // The worker dies mid-run: its jail, and the agent's background sleep in it, die with
    // it; its lease expires and the run is queued again.
    let first_sleep = wait_for_file(&world.path("hold.child"));
    assert!(process_alive(&first_sleep));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    wait_until_gone(&first_sleep);
    wait_for(&server, &run, &["queued"]);
    std::fs::write(&hold, "").unwrap();

    let _second = RemoteWorker::start(&server, "token-two", &world.path("work-2"), &world.path("worker-2.log"));
    let done = wait_for(&server, &run, &["succeeded", "failed"]);
    assert_eq!(
        done["run"]["state"],
        "succeeded",
        "{done:#}\n{}",
        std::fs::read_to_string(world.path("worker-2.log")).unwrap()
    );
    assert_eq!(done["run"]["attempt"], 2);
    assert!(
        activity_texts(&done, "failure").iter().any(|text| text.contains(&holder) && text.contains("expired")),
        "the timeline says the first worker's lease expired: {done:#}"
    );
    let log = log_text(&server, &run);
    assert!(log.contains("== attempt 2 of"), "each attempt's log starts with a header: {log}");
    assert_eq!(done["run"]["result"]["summary"], "appended the prompt");
    assert!(world.branch_exists("nightshift/remote/1"));
    assert!(log.contains("setup sees ***") && !log.contains("s3cr3t-value"), "{log}");
    assert_eq!(server.api_get("/api/automations/remote/memory")["seen_note"]["value"], "from the agent");
    // The dead worker's workspace is still mounted.
    let _ = Command::new("umount").arg("--lazy").arg(world.path("work-1/workspaces").join(&run)).status();
}

#[test]
fn a_waiting_remote_claim_does_not_hold_up_the_servers_stop() {
    let world = World::new();
    let automation = world.automation("idle", r#"["src/**"]"#, "");
    let mut server = serve(&world, &[("idle.yaml", &automation)], &[], &["--workers", "0", "--worker-token", "t"]);
    let (url, client) = (server.url.clone(), reqwest::blocking::Client::new());
    let waiting = std::thread::spawn(move || {
        let claim = json!({"worker": "idle", "lease_seconds": 5, "wait_seconds": 30});
        client.post(format!("{url}/api/worker/claim")).bearer_auth("t").json(&claim).send().map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(500));
    // `stop` gives serve 20 s; a claim that held up the drain would take its full 30.
    assert!(server.stop(), "serve stops cleanly while a claim waits:\n{}", server.log());
    assert_eq!(waiting.join().unwrap().ok(), Some(204), "the waiting claim is answered: no run");
}

#[test]
fn a_remote_worker_stopped_with_sigterm_stops_its_agent_and_gives_the_run_back() {
    let world = World::new();
    let hold = world.path("hold");
    let automation = world.automation("stopped", r#"["src/**"]"#, "");
    let agent_env = [("TARGET", "src/a/notes.txt"), ("HOLD", hold.to_str().unwrap())];
    let server =
        serve(&world, &[("stopped.yaml", &automation)], &agent_env, &["--workers", "0", "--worker-token", "t"]);
    let run = trigger(&server, "stopped", 1);
    let work = world.path("work-1");
    let mut worker = RemoteWorker::start(&server, "t", &work, &world.path("worker-1.log"));
    wait_for(&server, &run, &["running"]);
    let child = wait_for_file(&world.path("hold.child"));

    let _ = Command::new("kill").args(["-TERM", &worker.0.id().to_string()]).status();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(world.path("worker-1.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    wait_until_gone(&child);
    let workspace = work.join("workspaces").join(&run);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(workspace.to_str().unwrap()), "the workspace is unmounted");
    assert!(!workspace.exists(), "and removed: {log}");
    let given_back = record(&server, &run);
    assert_eq!(given_back["run"]["state"], "queued", "given back: {given_back:#}");
    assert_eq!(given_back["run"]["attempt"], 0, "the stopped attempt does not count");
    assert!(activity_texts(&given_back, "progress").iter().any(|text| text.contains("given back by its worker")));
}

#[test]
fn stopping_serve_gives_its_local_runs_back_without_using_an_attempt() {
    let world = World::new();
    let hold = world.path("hold");
    let automation = world.automation("restarted", r#"["src/**"]"#, "");
    let agent_env = [("TARGET", "src/a/notes.txt"), ("HOLD", hold.to_str().unwrap())];
    let server = serve(&world, &[("restarted.yaml", &automation)], &agent_env, &["--workers", "1"]);
    let run = trigger(&server, "restarted", 1);
    wait_for(&server, &run, &["running"]);
    let child = wait_for_file(&world.path("hold.child"));
    std::fs::remove_file(world.path("hold.child")).unwrap();

    let server = server.restart(&[("FIXTURE_SECRET", "s3cr3t-value")]);
    wait_until_gone(&child);
    // The restarted server's worker takes the run again at once: no lease had to run out.
    let again = wait_for(&server, &run, &["running"]);
    assert_eq!(again["run"]["attempt"], 1, "the stopped attempt was not counted: {again:#}");
    assert!(activity_texts(&again, "progress").iter().any(|text| text.contains("given back by its worker")));
    std::fs::write(&hold, "").unwrap();
    assert_eq!(wait_for(&server, &run, &["succeeded", "failed"])["run"]["state"], "succeeded");
}

/// A server with one local worker over the example automation `name` from
/// automations/, run by `who` with the sandbox on (the default), its hook's secret
/// `secret_env` set. The example's `repo: .` is serve's directory: `files` (path, text)
/// and a `.gitignore` for the server's own files are committed there, as `who`'s own.
fn serve_example(who: As, name: &str, secret_env: &str, files: &[(&str, &str)]) -> Serving {
    let examples = super::repo_root();
    let file = format!("{name}.yaml");
    let automation = std::fs::read_to_string(examples.join("automations").join(&file))
        .unwrap()
        .replace("../tests/data/", &format!("{}/tests/data/", examples.display()));
    let server = Serving::start_as(who, &[(&file, &automation)], &[(secret_env, "unused")], &["--workers", "1"]);
    let root = server.root();
    for (path, text) in [(".gitignore", "data/\n*.log\n")].iter().chain(files) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    // The directory is already `who`'s: git, run by the caller, must be told it is safe.
    let git = |args: &[&str]| {
        let output =
            git_command(root, Path::new("/dev/null"), &[&["-c", "safe.directory=*"], args].concat()).output().unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "--all"]);
    git(&["commit", "-q", "-m", "initial"]);
    who.hand_over(root);
    server
}

/// Runs `automation` through the API on the fixture at `fixture` (under the repository)
/// as `source` delivered it, and returns its run id.
fn run_example(server: &Serving, automation: &str, source: &str, headers: &[(&str, &str)], fixture: &str) -> String {
    let fixture = std::fs::read(super::repo_root().join(fixture)).unwrap();
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{}/api/automations/{automation}/run?source={source}", server.url))
        .bearer_auth(&server.token)
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer: Value = request.body(fixture).send().unwrap().json().unwrap();
    answer["runs"][0]["run"].as_str().unwrap_or_else(|| panic!("a run: {answer:#}")).to_string()
}

/// Waits for `run` to succeed; returns its record, its log, and its summary.
fn example_succeeds(who: As, server: &Serving, run: &str) -> (Value, String, String) {
    let done = wait_for(server, run, &["succeeded", "failed", "timed_out"]);
    let log = log_text(server, run);
    assert_eq!(done["run"]["state"], "succeeded", "{who:?}: {done:#}\n{log}");
    assert!(
        activity_texts(&done, "policy").iter().all(|text| !text.contains("the sandbox is off")),
        "{who:?}: {done:#}"
    );
    let server_log = server.log();
    assert!(!server_log.contains("holds its output open"), "{who:?}: a phase's output was left open:\n{server_log}");
    let summary = done["run"]["result"]["summary"].as_str().unwrap().to_string();
    (done, log, summary)
}

#[test]
fn the_example_review_runs_end_to_end_on_the_local_audit_agent() {
    for who in users() {
        // A repository of three tracked files (.gitignore, notes.txt with one marker, and
        // automations/).
        let server =
            serve_example(who, "pr-security-review", "GITHUB_WEBHOOK_SECRET", &[("notes.txt", "TODO: one thing\n")]);
        let event = [("X-Nightshift-Header-X-GitHub-Event", "pull_request")];
        let fixture = "tests/data/github/pull_request_opened.json";
        let run = run_example(&server, "pr-security-review", "github", &event, fixture);
        let (done, _, summary) = example_succeeds(who, &server, &run);
        assert!(
            summary.contains("local audit of 3 tracked files: 1 TODO/FIXME/XXX markers (most in: notes.txt:1"),
            "{who:?}: {summary}"
        );
        assert!(activity_texts(&done, "plan")[0].starts_with("audit the repository for: Review pull request #1347"));
        let memory = server.api_get("/api/automations/pr-security-review/memory");
        assert_eq!(memory["markers"]["value"], 1, "{who:?}: {memory:#}");
    }
}

#[test]
fn the_example_incident_investigation_runs_end_to_end_with_no_network() {
    for who in users() {
        // No Cargo.toml and no remote: nothing the setup could fetch.
        let files = [("services/pool.txt", "FIXME: pool size\n")];
        let server = serve_example(who, "p1-incident-investigation", "PAGERDUTY_WEBHOOK_SECRET", &files);
        let fixture = "tests/data/pagerduty/incident_triggered_p1.json";
        let run = run_example(&server, "p1-incident-investigation", "pagerduty", &[], fixture);
        let (_, log, summary) = example_succeeds(who, &server, &run);
        assert!(log.contains("== setup: "), "{who:?}: {log}");
        assert!(summary.contains("1 TODO/FIXME/XXX markers"), "{who:?}: {summary}");
    }
}

#[test]
fn the_example_slack_bug_dispatch_runs_end_to_end() {
    for who in users() {
        let files = [("web/cart.js", "// XXX: Safari\n"), ("services/pay.txt", "TODO: gift cards\n")];
        let server = serve_example(who, "slack-bug-dispatch", "SLACK_SIGNING_SECRET", &files);
        let run = run_example(&server, "slack-bug-dispatch", "slack", &[], "tests/data/slack/message_bug.json");
        let (done, _, summary) = example_succeeds(who, &server, &run);
        assert!(summary.contains("2 TODO/FIXME/XXX markers"), "{who:?}: {summary}");
        assert_eq!(done["run"]["task"]["branch"], "bugfix/slack-1763852000-000200", "{who:?}: {done:#}");
    }
}

/// What a loopback receiver keeps of each request: its request line, lower-cased headers
/// and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>, Vec<u8>)>>>;

/// A loopback webhook receiver: answers each request with the next of `statuses` (then
/// 200) and keeps what arrived.
fn webhook_receiver(statuses: &[u16]) -> (u16, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (kept, mut statuses) = (received.clone(), statuses.to_vec());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let Some((name, value)) = header.trim_end().split_once(':') else { break };
                headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
            let length = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            kept.lock().unwrap().push((line.trim_end().to_string(), headers, body));
            let status = if statuses.is_empty() { 200 } else { statuses.remove(0) };
            let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = (&stream).write_all(answer.as_bytes());
        }
    });
    (port, received)
}

#[test]
fn a_finished_run_is_posted_to_its_webhook_signed_once_past_a_failure() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let world = World::new();
    let (port, received) = webhook_receiver(&[503]);
    let notify =
        format!("notify:\n  - webhook: {{ url: \"http://127.0.0.1:{port}/runs\", secret: env:HOOK_SIGNING }}\n");
    let told = world.automation("told", r#"["told/**"]"#, &notify);
    let files = [("told.yaml", told.as_str())];
    let project = world.project(&[]);
    let args = ["--config", project.to_str().unwrap(), "--work-dir", "work"];
    let server =
        Serving::start_with_args(&files, &[("FIXTURE_SECRET", "s3cr3t-value"), ("HOOK_SIGNING", SECRET)], &args);
    let run = trigger(&server, "told", 1);
    wait_for(&server, &run, &["succeeded"]);

    // The first try gets a 503; the sender tries again on its backoff.
    let deadline = Instant::now() + PATIENCE;
    while received.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "two tries never arrived: {:?}\n{}", received.lock().unwrap(), server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let tries = received.lock().unwrap().clone();
    assert_eq!(tries.len(), 2, "one message, tried twice: {tries:?}");
    let key = nightshift::auth::standard_webhooks_key(SECRET).unwrap();
    for (line, headers, body) in &tries {
        assert_eq!(line, "POST /runs HTTP/1.1");
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(header("webhook-id"), Some(format!("{run}-0-end")), "the same id on every try");
        let timestamp = header("webhook-timestamp").unwrap();
        let signed_at = chrono::DateTime::from_timestamp(timestamp.parse().unwrap(), 0).unwrap();
        let verified = nightshift::auth::verify_standard_webhooks(
            &key,
            header("webhook-id").as_deref(),
            Some(&timestamp),
            header("webhook-signature").as_deref(),
            body,
            signed_at,
        );
        assert_eq!(verified, Ok(()));
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sent["type"], "run.ended");
        assert_eq!(sent["data"]["run"], run.as_str());
        assert_eq!(sent["data"]["state"], "succeeded");
        assert_eq!(sent["data"]["summary"], "appended the prompt");
    }
    // Each try is on the run's timeline.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let activities = record(&server, &run)["activities"].as_array().cloned().unwrap_or_default();
        let tries: Vec<String> =
            activities.iter().filter(|a| a["kind"] == "notify").map(|a| a["text"].to_string()).collect();
        let timeline = tries.join("\n");
        if tries.len() == 2 && tries[0].contains("503") {
            break;
        }
        assert!(Instant::now() < deadline, "the tries are not on the timeline: {timeline}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
