//! The worker's side of parallel work (`Task.staging`), with real git and the real worker
//! running fixture agents (shell commands): an attempt that holds its commit and is
//! checked, a round that starts from a held commit, a join that merges held commits with
//! a conflict, agents' answers valid and not, and the publish of a held commit with no
//! agent. Each runs with worktree workspaces and with overlays (clones where overlays
//! cannot mount). The checks also run jailed, by the caller and by uid 65534 (the test
//! binary run again as that user).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use nightshift::config::{Approval, DurationSpec, OutputFormat};
use nightshift::event::Event;
use nightshift::netpolicy::NetworkPolicy;
use nightshift::parallel::{Answer, AnswerKind, Conflict, Held, Staging, StagingReport};
use nightshift::runs::{Completion, Epoch, NewActivity, Run, RunId, RunState};
use nightshift::sandbox::Sandbox;
use nightshift::sandbox::egress::EgressSettings;
use nightshift::store::{Claim, NewRun, SledStore, Store};
use nightshift::task::{AgentCommand, Flow, PhasePolicies, Task};
use nightshift::triggers::TriggerKind;
use nightshift::worker::workspace::{HELD_FOR, MirrorCache};
use nightshift::worker::{ControlError, RunControl, Runner, WorkerSettings};
use serde_json::{Map, Value};

use crate::git::{commit_all, git, refs};
use crate::sandbox_jail::{As, BIN, command_as, users};

/// The store in process, as the local pool's control is without the server around it.
struct StoreControl(Arc<SledStore>);

impl RunControl for StoreControl {
    fn claim(&self, worker: &str) -> Result<Option<Claim>, ControlError> {
        Ok(self.0.claim(worker, Duration::from_secs(600), Utc::now())?)
    }

    fn started(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        Ok(self.0.mark_running(run, epoch, Utc::now()).map(drop)?)
    }

    fn heartbeat(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        Ok(self.0.heartbeat(run, epoch, Duration::from_secs(600), Utc::now()).map(drop)?)
    }

    fn activities(&self, run: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), ControlError> {
        for activity in activities {
            self.0.append_activity(run, epoch, activity, Utc::now())?;
        }
        Ok(())
    }

    fn log(&self, run: RunId, epoch: Epoch, text: String) -> Result<(), ControlError> {
        Ok(self.0.append_log(run, epoch, &text, Utc::now()).map(drop)?)
    }

    fn release(&self, run: RunId, epoch: Epoch, reason: &str) -> Result<(), ControlError> {
        Ok(self.0.release(run, epoch, reason, Utc::now()).map(drop)?)
    }

    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        _memory: Option<Map<String, Value>>,
    ) -> Result<(), ControlError> {
        Ok(self.0.complete(run, epoch, completion, Vec::new(), Utc::now()).map(drop)?)
    }
}

/// A bare repository `source.git` whose `main` holds a README, a store, and a worker.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
    main: String,
    store: Arc<SledStore>,
    runner: Runner,
    events: Mutex<u32>,
}

fn fixture(overlays: bool) -> Fixture {
    fixture_in(&std::env::temp_dir(), overlays, None)
}

fn fixture_in(parent: &Path, overlays: bool, sandbox: Option<Arc<Sandbox>>) -> Fixture {
    let dir = tempfile::tempdir_in(parent).unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (source, seed) = (root.join("source.git"), root.join("seed"));
    git(&root, &["init", "--quiet", "--bare", "source.git"]);
    git(&root, &["clone", "--quiet", "source.git", "seed"]);
    std::fs::write(seed.join("README.md"), "hello\n").unwrap();
    let main = commit_all(&seed, "initial");
    git(&seed, &["push", "--quiet", "origin", "main"]);
    let store = Arc::new(SledStore::open(&root.join("data")).unwrap());
    let mut settings = WorkerSettings::new(root.join("work"));
    settings.overlays = overlays;
    settings.refresh_every = Duration::ZERO;
    settings.sandbox = sandbox;
    let runner = Runner::new(Arc::new(StoreControl(Arc::clone(&store))), settings);
    Fixture { _dir: dir, root, source, main, store, runner, events: Mutex::new(0) }
}

fn fixtures() -> [Fixture; 2] {
    [fixture(false), fixture(true)]
}

/// A shell script as an agent's command: its braces doubled, as a profile's command reads
/// `{name}` as a placeholder. `$1` is the prompt file.
fn agent(script: &str) -> Vec<String> {
    let script = script.replace('{', "{{").replace('}', "}}");
    vec!["sh".into(), "-c".into(), script, "agent".into(), "{prompt_file}".into()]
}

/// Commits in the agent's workspace as a fixed identity.
const COMMIT: &str = "git -c user.name=Agent -c user.email=agent@example.com commit --quiet -am";

impl Fixture {
    fn task(&self, branch: &str, argv: Vec<String>, staging: Staging) -> Task {
        Task {
            automation: "parallel".into(),
            agent: AgentCommand {
                profile: "fixture".into(),
                argv,
                plan_argv: None,
                env: Default::default(),
                output: OutputFormat::default(),
                paths: Vec::new(),
                pass_env: Vec::new(),
            },
            repo: self.source.display().to_string(),
            base: "main".into(),
            branch: branch.into(),
            prompt: "Fix the bug.".into(),
            setup: Vec::new(),
            secrets: Default::default(),
            network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
            paths: vec!["**".into()],
            timeout: DurationSpec::from_secs(120),
            setup_timeout: DurationSpec::from_secs(120),
            approval: Approval::default(),
            push: true,
            untrusted_input: false,
            limits: Default::default(),
            notify: Vec::new(),
            follows: None,
            plan: None,
            staging,
        }
    }

    /// Stores a run of `task`, has the worker claim and run it, and returns it ended.
    fn run(&self, task: Task) -> Run {
        let number = {
            let mut events = self.events.lock().unwrap();
            *events += 1;
            *events
        };
        let mut event =
            Event::from_delivery(TriggerKind::Manual, serde_json::json!({}), Default::default(), Utc::now());
        event.id = format!("manual:{number}");
        let new = NewRun {
            automation: "parallel".into(),
            definition_hash: "h".into(),
            rendered: Ok((task, Flow::default())),
        };
        let id = self.store.ingest(&event, vec![new], Utc::now()).unwrap().runs[0].run;
        let claim = self.runner.control().claim("w").unwrap().expect("the run is queued");
        assert_eq!(claim.run.id, id);
        self.runner.execute(claim);
        let run = self.store.run(id).unwrap().unwrap();
        assert!(run.state.is_finished(), "{run:?}");
        run
    }

    /// The worker's mirror of the source.
    fn mirror(&self) -> PathBuf {
        let mirrors = self.root.join("work").join("mirrors");
        let entries = std::fs::read_dir(&mirrors).unwrap();
        entries.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "git")).unwrap()
    }

    /// A run that commits `file` with `contents` and holds it; its held commit.
    fn held(&self, branch: &str, file: &str, contents: &str) -> (RunId, String) {
        let script = format!("printf '{contents}' > {file} && git add {file} && {COMMIT} 'write {file}'");
        let run = self.run(self.task(branch, agent(&script), Staging { hold: true, ..Staging::default() }));
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");
        let held = report(&run).held.expect("a held commit");
        (run.id, held)
    }
}

fn report(run: &Run) -> StagingReport {
    StagingReport::of(run.result.as_ref().expect("a result")).expect("a staging report")
}

fn reason(run: &Run) -> String {
    run.reason.clone().unwrap_or_default()
}

#[test]
fn an_attempt_holds_its_commit_in_the_mirror_records_its_checks_and_pushes_nothing() {
    for f in fixtures() {
        let before = refs(&f.source);
        let staging = Staging {
            hold: true,
            // The first leaves build output behind, which is not counted as a change.
            checks: vec!["echo built > build.out && test -f fixed.txt".into(), "echo 'no good'; exit 3".into()],
            ..Staging::default()
        };
        let script = format!("printf 'a\\nb\\n' > fixed.txt && git add fixed.txt && {COMMIT} fix");
        let run = f.run(f.task("nightshift/fix-a1", agent(&script), staging));
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");

        let staged = report(&run);
        let held = staged.held.clone().expect("held");
        assert_eq!((staged.lines_changed, staged.files_changed), (2, 1));
        let codes: Vec<Option<i32>> = staged.checks.iter().map(|c| c.exit_code).collect();
        assert_eq!(codes, [Some(0), Some(3)]);
        assert_eq!(staged.checks[1].tail, "no good");
        assert!(!staged.checks_passed());
        let details = &run.result.as_ref().unwrap().details;
        assert_eq!(details["uncommitted"], serde_json::json!([]), "the checks ran after the changes were read");
        assert!(details.get("pushed").is_none());

        let mirror = refs(&f.mirror());
        assert_eq!(mirror.get(&Held::reference(run.id)), Some(&held));
        assert_eq!(refs(&f.source), before, "nothing is pushed, though the task says push");
    }
}

#[test]
fn a_round_starts_at_a_held_commit_and_is_measured_from_the_base() {
    for f in fixtures() {
        let (first, held) = f.held("nightshift/fix-r1", "one.txt", "1\\n");
        let staging =
            Staging { start_from: Some(Held { run: first, commit: held.clone() }), hold: true, ..Staging::default() };
        let script = format!("test -f one.txt && printf '2\\n' > two.txt && git add two.txt && {COMMIT} two");
        let run = f.run(f.task("nightshift/fix-r2", agent(&script), staging));
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");
        let details = &run.result.as_ref().unwrap().details;
        assert_eq!(details["base"], f.main.as_str());
        assert_eq!(details["commits"][0]["id"], held.as_str(), "the first round's commit comes first");
        assert_eq!(details["commits"].as_array().unwrap().len(), 2);
        let staged = report(&run);
        assert_eq!((staged.lines_changed, staged.files_changed), (2, 2));

        // A held commit the mirror does not hold under that run is refused, for good.
        let staging = Staging { start_from: Some(Held { run: first, commit: f.main.clone() }), ..Staging::default() };
        let run = f.run(f.task("nightshift/fix-r3", agent("true"), staging));
        assert_eq!(run.state, RunState::Failed);
        assert!(reason(&run).contains(&format!("held commit of {first}")), "{}", reason(&run));
    }
}

#[test]
fn a_join_merges_held_commits_and_its_agent_is_told_of_the_conflicts() {
    for f in fixtures() {
        let (one, one_held) = f.held("nightshift/big-c1", "shared.txt", "from one\\n");
        let (two, two_held) = f.held("nightshift/big-c2", "shared.txt", "from two\\n");
        let (three, three_held) = f.held("nightshift/big-c3", "own.txt", "three\\n");
        let seen = f.root.join("join-prompt.txt");
        let staging = Staging {
            merge: vec![
                Held { run: one, commit: one_held },
                Held { run: two, commit: two_held },
                Held { run: three, commit: three_held },
            ],
            hold: true,
            ..Staging::default()
        };
        let run = f.run(f.task("nightshift/big-join", agent(&format!("cp \"$1\" {}", seen.display())), staging));
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");
        let staged = report(&run);
        assert_eq!(staged.conflicts, [Conflict { from: two, files: vec!["shared.txt".into()] }]);

        let prompt = std::fs::read_to_string(&seen).unwrap();
        assert!(prompt.starts_with("Fix the bug."), "{prompt}");
        assert!(prompt.contains("## Merge conflicts"), "{prompt}");
        assert!(prompt.contains(&format!("\n{two}: shared.txt\n</untrusted-data")), "{prompt}");

        let held = staged.held.expect("the merges are held");
        let mirror = f.mirror();
        let shared = git(&mirror, &["show", &format!("{held}:shared.txt")]);
        assert!(shared.contains("<<<<<<<") && shared.contains("from one") && shared.contains("from two"), "{shared}");
        assert_eq!(git(&mirror, &["show", &format!("{held}:own.txt")]), "three");

        // Only what a run held is merged: another commit under its name is refused.
        let staging = Staging { merge: vec![Held { run: three, commit: f.main.clone() }], ..Staging::default() };
        let run = f.run(f.task("nightshift/big-join2", agent("true"), staging));
        assert_eq!(run.state, RunState::Failed);
        assert!(reason(&run).starts_with("merge: "), "{}", reason(&run));
        assert!(reason(&run).contains(&format!("held commit of {three}: refs/nightshift/held/{three} is at")));
    }
}

/// What an answering run ended as, given the script that writes its answer.
fn answered(f: &Fixture, branch: &str, kind: AnswerKind, script: &str) -> Run {
    let staging = Staging { answer: Some(kind), ..Staging::default() };
    f.run(f.task(branch, agent(script), staging))
}

#[test]
fn answers_are_parsed_and_an_invalid_one_fails_the_run_for_good() {
    let f = fixture(false);
    let pick = || AnswerKind::Pick { candidates: vec![1, 3] };

    let run = answered(&f, "a/pick", pick(), r#"printf '{"winner": 3, "reason": "smaller"}' > "$NIGHTSHIFT_ANSWER""#);
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(report(&run).answer, Some(Answer::Pick { winner: 3, reason: "smaller".into() }));

    let failures = [
        (
            pick(),
            r#"printf '{"winner": 2, "reason": "x"}' > "$NIGHTSHIFT_ANSWER""#,
            "`winner` 2 is not one of the candidates (1, 3)",
        ),
        (AnswerKind::Verdict, r#"printf '{"verdict": pass}' > "$NIGHTSHIFT_ANSWER""#, "is not {\"verdict\""),
        (AnswerKind::Verdict, "true", "the agent wrote no answer"),
        (
            AnswerKind::Verdict,
            r#"printf '{"verdict": "pass"}' > "$NIGHTSHIFT_ANSWER"; head -c 70000 /dev/zero | tr '\0' ' ' >> "$NIGHTSHIFT_ANSWER""#,
            "more than the 65536 allowed",
        ),
    ];
    for (number, (kind, script, why)) in failures.into_iter().enumerate() {
        let run = answered(&f, &format!("a/bad{number}"), kind, script);
        assert_eq!(run.state, RunState::Failed, "{run:?}");
        assert!(reason(&run).starts_with("invalid answer: $NIGHTSHIFT_ANSWER: "), "{}", reason(&run));
        assert!(reason(&run).contains(why), "{} should say {why}", reason(&run));
        assert_eq!(run.attempt, 1, "not retried");
    }
}

#[test]
fn a_verifier_checks_before_its_agent_reads_the_outcomes_and_answers_a_verdict() {
    let f = fixture(false);
    let (author, held) = f.held("nightshift/fix-r1", "fixed.txt", "fixed\\n");
    let seen = f.root.join("verifier-prompt.txt");
    let staging = Staging {
        start_from: Some(Held { run: author, commit: held }),
        checks: vec!["test -f fixed.txt && echo 'fixed is there'".into(), "echo 'suite: 1 failed'; exit 1".into()],
        answer: Some(AnswerKind::Verdict),
        ..Staging::default()
    };
    let script = format!(
        r#"cp "$1" {} && printf '{{"verdict": "fail", "findings": ["the suite fails"]}}' > "$NIGHTSHIFT_ANSWER""#,
        seen.display()
    );
    let before = refs(&f.source);
    let run = f.run(f.task("nightshift/fix-v1", agent(&script), staging));
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    let staged = report(&run);
    assert_eq!(staged.answer, Some(Answer::Verdict { pass: false, findings: vec!["the suite fails".into()] }));
    assert_eq!(staged.checks.iter().map(|c| c.exit_code).collect::<Vec<_>>(), [Some(0), Some(1)]);
    let prompt = std::fs::read_to_string(&seen).unwrap();
    assert!(prompt.contains("## Checks run on this branch before you"), "{prompt}");
    assert!(prompt.contains("(exited with 0)\nfixed is there"), "{prompt}");
    assert!(prompt.contains("(exited with 1)\nsuite: 1 failed"), "{prompt}");
    assert_eq!(refs(&f.source), before, "a run that answers pushes nothing");
}

#[test]
fn publishing_pushes_exactly_the_held_commit_with_no_agent() {
    for f in fixtures() {
        let (attempt, held) = f.held("nightshift/fix-a2", "fixed.txt", "fixed\\n");
        let staging = Staging {
            start_from: Some(Held { run: attempt, commit: held.clone() }),
            skip_agent: true,
            ..Staging::default()
        };
        // An agent that would fail the run: it never runs.
        let run = f.run(f.task("nightshift/fix", vec!["false".into()], staging));
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");
        let details = &run.result.as_ref().unwrap().details;
        assert_eq!(details["pushed"], serde_json::json!({"branch": "nightshift/fix", "commit": held}));
        assert_eq!(refs(&f.source).get("refs/heads/nightshift/fix"), Some(&held));
        assert_eq!((report(&run).lines_changed, report(&run).files_changed), (1, 1));
    }
}

#[test]
fn held_commits_are_forgotten_after_their_bound() {
    let f = fixture(false);
    let (run, held) = f.held("nightshift/fix-a1", "fixed.txt", "fixed\\n");
    let mirror = MirrorCache::new(&f.root.join("work")).mirror(f.source.to_str().unwrap()).unwrap();
    let reference = Held::reference(run);
    let holds = |mirror_dir: &Path| refs(mirror_dir).get(&reference).cloned();

    mirror.prune_held(SystemTime::now()).unwrap();
    assert_eq!(holds(mirror.path()), Some(held.clone()), "kept within its bound");
    mirror.prune_held(SystemTime::now() + HELD_FOR - Duration::from_secs(3600)).unwrap();
    assert_eq!(holds(mirror.path()), Some(held), "kept within its bound");
    mirror.prune_held(SystemTime::now() + HELD_FOR + Duration::from_secs(3600)).unwrap();
    assert_eq!(holds(mirror.path()), None, "forgotten after it");
}

/// Where the test run again as uid 65534 works (a directory that user owns).
const JAILED_DIR: &str = "NIGHTSHIFT_TEST_JAILED_CHECKS_DIR";

#[test]
fn checks_run_jailed_with_no_network_as_the_caller_and_as_an_unprivileged_user() {
    for who in users() {
        match who {
            As::Caller => jailed_checks(&std::env::temp_dir(), "0"),
            As::Nobody => {
                let dir = tempfile::tempdir().unwrap();
                who.hand_over(dir.path());
                let test = std::env::current_exe().unwrap();
                let output = command_as(who, &test)
                    .args(["--exact", "parallel_worker::jailed_checks_as_another_user", "--include-ignored"])
                    .args(["--nocapture", "--test-threads=1"])
                    .env(JAILED_DIR, dir.path())
                    // The user's own git config is out of its reach: git reads none.
                    .env("HOME", dir.path())
                    .env("XDG_CONFIG_HOME", dir.path())
                    .output()
                    .unwrap();
                let said =
                    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
                assert!(output.status.success(), "as uid 65534: {said}");
                assert!(said.contains("1 passed"), "the test ran as uid 65534: {said}");
            }
        }
    }
}

/// The half of the test above that uid 65534 runs, in a process of its own.
#[test]
#[ignore = "run by checks_run_jailed_with_no_network_as_the_caller_and_as_an_unprivileged_user as uid 65534"]
fn jailed_checks_as_another_user() {
    let dir = std::env::var_os(JAILED_DIR).expect("run by the test above");
    jailed_checks(Path::new(&dir), "65534");
}

/// An attempt's checks in the jail: the first sees the agent's commit and says who runs
/// it, the second reaches for a server on the host's loopback and cannot.
fn jailed_checks(parent: &Path, uid: &str) {
    let sandbox = Sandbox::new(PathBuf::from(BIN), EgressSettings::default()).unwrap();
    sandbox.probe().unwrap();
    let f = fixture_in(parent, true, Some(Arc::new(sandbox)));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let staging = Staging {
        hold: true,
        checks: vec![
            "test -f fixed.txt && id -u".into(),
            format!("git ls-remote http://127.0.0.1:{port}/repo.git 2>&1; echo \"exit $?\"; exit 7"),
        ],
        ..Staging::default()
    };
    let script = format!("printf 'fixed\\n' > fixed.txt && git add fixed.txt && {COMMIT} fix");
    let run = f.run(f.task("nightshift/jailed-a1", agent(&script), staging));
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    let staged = report(&run);
    assert_eq!(staged.checks[0].exit_code, Some(0), "{staged:?}");
    assert_eq!(staged.checks[0].tail, uid);
    assert_eq!(staged.checks[1].exit_code, Some(7), "{staged:?}");
    assert!(!staged.checks[1].tail.contains("exit 0"), "the check reached the host: {staged:?}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "no connection reached the host's loopback");
    assert!(staged.held.is_some());
}
