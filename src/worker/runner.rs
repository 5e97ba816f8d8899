//! One attempt of one claimed run, start to end: the workspace from the repository's
//! mirror, the setup phase (with the automation's secrets), the agent phase (without
//! them, with the network policy handed over), the results read from git, the push, the
//! agent's memory, and the completion. A monitor thread renews the lease and streams the
//! log; when the lease is lost (the run was cancelled, or another worker took it over)
//! it stops the phase and the attempt ends without reporting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::attempt::Attempt;
use super::control::{ControlError, RunControl};
use super::output::OutputAdapter;
use super::phase::{CancelToken, PhaseCommand, PhaseOptions, PhaseStatus, Stream, run_phase};
use super::results::{self, PushOutcome, RunChanges};
use super::staging::{self, Tail};
use super::workspace::{Cleanup, MirrorCache, Workspace, WorkspaceError, WorkspaceKind, remove_tree};
use crate::config::{AgentProfile, Approval};
use crate::netpolicy::NetworkPolicy;
use crate::parallel::{CheckOutcome, StagingReport};
use crate::runs::{ActivityKind, Completion, Epoch, NewActivity, Run, RunId, RunResult};
use crate::sandbox::egress::PhaseName;
use crate::sandbox::limits::ByteSize;
use crate::sandbox::{Confinement, PhaseJail, Sandbox, SandboxPath, plan};
use crate::store::Claim;
use crate::task::Task;

/// The most bytes of `$NIGHTSHIFT_MEMORY_OUT` read.
pub const MAX_MEMORY_OUT: u64 = crate::pipeline::MAX_AGENT_MEMORY as u64;

/// How one worker runs runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Mirrors, workspaces and per-run files live under it.
    pub work_dir: PathBuf,
    /// How long a claim or a heartbeat holds the run.
    pub lease_for: Duration,
    /// How often the lease is renewed and the log sent.
    pub heartbeat_every: Duration,
    /// The most bytes of log kept per run, start and end.
    pub log_limit: usize,
    /// Keep the workspace of a run that did not succeed, for a look.
    pub keep_failed: bool,
    /// Overlay workspaces where they can be mounted (else clones); `false`: worktrees.
    pub overlays: bool,
    /// A mirror fetched this recently is used as it is.
    pub refresh_every: Duration,
    /// The sandbox every setup and agent phase runs in. `None` runs them unconfined
    /// (`--sandbox off`, for development), and every run records that it was.
    pub sandbox: Option<Arc<Sandbox>>,
    /// How long a stopped phase has between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl WorkerSettings {
    pub fn new(work_dir: PathBuf) -> WorkerSettings {
        WorkerSettings {
            work_dir,
            lease_for: Duration::from_secs(60),
            heartbeat_every: Duration::from_secs(1),
            log_limit: 4 * 1024 * 1024,
            keep_failed: false,
            overlays: true,
            refresh_every: Duration::from_secs(5),
            sandbox: None,
            grace: Duration::from_secs(5),
        }
    }

    fn workspaces(&self) -> PathBuf {
        self.work_dir.join("workspaces")
    }

    /// Files the worker gives one run (prompt, policy, memory output), outside its
    /// workspace so they never show up as changes.
    fn run_files(&self, run: RunId) -> PathBuf {
        self.work_dir.join("runs").join(run.to_string())
    }
}

/// Runs claimed runs; shared by a pool's threads.
pub struct Runner {
    control: Arc<dyn RunControl>,
    settings: WorkerSettings,
    mirrors: MirrorCache,
    /// When each mirror was last fetched; its lock is held while fetching.
    refreshed: Mutex<HashMap<String, Arc<Mutex<Option<Instant>>>>>,
    in_flight: Mutex<InFlight>,
}

/// The attempts under way (from their claim to their workspace's cleanup), so a shutdown
/// can stop them; once `stopping`, an attempt that starts is stopped at once.
#[derive(Default)]
struct InFlight {
    attempts: HashMap<RunId, CancelToken>,
    stopping: bool,
}

/// How an attempt ended, for the engine.
enum Ending {
    Report {
        completion: Completion,
        memory: Option<Map<String, Value>>,
    },
    /// The lease is gone or the worker is stopping: nothing is reported.
    Stopped(String),
}

impl Ending {
    fn failed(reason: impl Into<String>, retryable: bool, result: Option<RunResult>) -> Ending {
        Ending::Report { completion: Completion::Failed { reason: reason.into(), retryable, result }, memory: None }
    }
}

impl Runner {
    pub fn new(control: Arc<dyn RunControl>, mut settings: WorkerSettings) -> Runner {
        // The agent runs in its workspace: paths handed to it must not be relative.
        if let Ok(absolute) = std::path::absolute(&settings.work_dir) {
            settings.work_dir = absolute;
        }
        let mirrors = MirrorCache::new(&settings.work_dir).with_overlays(settings.overlays);
        Runner { control, settings, mirrors, refreshed: Mutex::new(HashMap::new()), in_flight: Mutex::default() }
    }

    pub fn control(&self) -> &Arc<dyn RunControl> {
        &self.control
    }

    /// Stops every attempt in progress; each run is given back (queued again, its attempt
    /// not counted), or if that fails its lease runs out.
    pub fn shutdown(&self) {
        let mut in_flight = lock(&self.in_flight);
        in_flight.stopping = true;
        for cancel in in_flight.attempts.values() {
            cancel.cancel();
        }
    }

    /// How many attempts are under way (claimed and not yet cleaned up).
    pub fn busy(&self) -> usize {
        lock(&self.in_flight).attempts.len()
    }

    /// Runs one attempt of the claimed run and reports how it ended.
    pub fn execute(&self, claim: Claim) {
        let run = claim.run;
        let epoch = claim.lease.epoch;
        let attempt = Attempt::new(Arc::clone(&self.control), run.id, epoch, self.settings.log_limit);
        self.wait_out_earlier_attempt(run.id);
        let stopping = {
            let mut in_flight = lock(&self.in_flight);
            in_flight.attempts.insert(run.id, attempt.cancel.clone());
            in_flight.stopping
        };
        if stopping {
            attempt.lose("the worker is stopping".to_string());
        }
        attempt.log_line(&format!("== attempt {} of {} on {}", run.attempt, run.id, claim.lease.worker));
        let monitor = attempt.monitor(&self.settings);
        tracing::info!(run_id = %run.id, automation = %run.automation, attempt = run.attempt, "Run started");
        let (ending, workspace) = self.attempt(&run, &attempt);
        drop(monitor);
        attempt.send(true);
        let succeeded = matches!(
            ending,
            Ending::Report { completion: Completion::Succeeded { .. } | Completion::PlanReady { .. }, .. }
        );
        match (ending, attempt.lost()) {
            (Ending::Stopped(why), _) | (Ending::Report { .. }, Some(why)) => {
                tracing::warn!(run_id = %run.id, "Run stopped: {why}");
                if self.is_stopping() {
                    self.give_back(run.id, epoch);
                }
            }
            (Ending::Report { completion, memory }, None) => self.report(run.id, epoch, completion, memory),
        }
        self.clean_up(run.id, workspace, succeeded);
        lock(&self.in_flight).attempts.remove(&run.id);
    }

    /// An earlier attempt of the same run may still be here, if it lost its lease and the
    /// run came back to this process: it is stopped, and its workspace (the same path) is
    /// removed, before this one starts.
    fn wait_out_earlier_attempt(&self, run: RunId) {
        let give_up = Instant::now() + self.settings.grace + Duration::from_secs(30);
        loop {
            match lock(&self.in_flight).attempts.get(&run) {
                Some(earlier) => earlier.cancel(),
                None => return,
            }
            if Instant::now() > give_up {
                tracing::warn!(run_id = %run, "An earlier attempt of the run is still here; going ahead");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `shutdown` was called.
    fn is_stopping(&self) -> bool {
        lock(&self.in_flight).stopping
    }

    /// Gives a run stopped by a shutdown back to the engine, so it is queued again at once
    /// with its attempt not counted. If that fails, its lease runs out instead.
    fn give_back(&self, run: RunId, epoch: Epoch) {
        match self.control.release(run, epoch, "the worker is stopping") {
            Ok(()) => tracing::info!(run_id = %run, "Gave the run back; it is queued again"),
            Err(error) => tracing::warn!(run_id = %run, %error, "Cannot give the run back; its lease will run out"),
        }
    }

    /// Reports a completion, retrying while the engine is unreachable for up to a lease.
    fn report(&self, run: RunId, epoch: Epoch, completion: Completion, memory: Option<Map<String, Value>>) {
        let give_up = Instant::now() + self.settings.lease_for;
        let mut wait = Duration::from_millis(200);
        loop {
            match self.control.complete(run, epoch, completion.clone(), memory.clone()) {
                Ok(()) => {
                    tracing::info!(run_id = %run, outcome = completion_name(&completion), "Run reported");
                    return;
                }
                Err(ControlError::Unavailable(why)) if Instant::now() + wait < give_up => {
                    tracing::warn!(run_id = %run, "Cannot report the run yet, retrying: {why}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(ControlError::Lost(why)) => {
                    tracing::warn!(run_id = %run, "The run is no longer this worker's, its result is dropped: {why}");
                    return;
                }
                Err(error) => {
                    tracing::error!(
                        run_id = %run, %error,
                        "Cannot report the run; when its lease expires it is queued again (or failed, with no attempts left)"
                    );
                    return;
                }
            }
        }
    }

    /// The attempt's ending, and its workspace to clean up once the ending is reported.
    fn attempt(&self, run: &Run, attempt: &Attempt) -> (Ending, Option<Workspace>) {
        let Some(task) = run.task.as_ref() else {
            return (Ending::failed("the run has no task (its rendering failed)", false, None), None);
        };
        let secrets = match resolve_secrets(task) {
            Ok(secrets) => secrets,
            Err(why) => return (Ending::failed(why, false, None), None),
        };
        let workspace = match self.workspace(task, run.id) {
            Ok(workspace) => workspace,
            Err(error) => return (Ending::failed(error.to_string(), is_transient(&error), None), None),
        };
        let ending = self.in_workspace(run, task, &workspace, attempt, &secrets);
        (ending, Some(workspace))
    }

    /// Removes the attempt's workspace (kept after a failure when so configured) and its
    /// files. It runs after the completion is reported: the run's result does not wait.
    fn clean_up(&self, run: RunId, workspace: Option<Workspace>, succeeded: bool) {
        if let Some(workspace) = workspace {
            let how = if self.settings.keep_failed && !succeeded { Cleanup::Keep } else { Cleanup::Remove };
            if let Err(error) = workspace.cleanup(how) {
                tracing::warn!(run_id = %run, %error, "Cannot remove the workspace");
            }
        }
        if let Err(error) = remove_tree(&self.settings.run_files(run))
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(run_id = %run, %error, "Cannot remove the run's files");
        }
    }

    /// The run's workspace, from a mirror fetched at most `refresh_every` ago. Runs that
    /// start together wait for one fetch rather than each making its own.
    fn workspace(&self, task: &Task, run: RunId) -> Result<Workspace, WorkspaceError> {
        let mirror = self.mirrors.mirror(&task.repo)?;
        let last_fetch = Arc::clone(lock(&self.refreshed).entry(mirror.location().to_string()).or_default());
        {
            let mut last_fetch = lock(&last_fetch);
            // A follow-up starts at the tip its branch has now: the run it follows pushed
            // there moments ago.
            let stale = last_fetch.is_none_or(|at| at.elapsed() >= self.settings.refresh_every);
            if stale || task.follows.is_some() {
                mirror.refresh()?;
                *last_fetch = Some(Instant::now());
            }
        }
        if let Some(start) = &task.staging.start_from {
            return mirror.prepare_from(&self.settings.workspaces(), run, &task.base, &task.branch, start);
        }
        if task.follows.is_some() {
            return mirror.prepare_follow_up(&self.settings.workspaces(), run, &task.base, &task.branch);
        }
        mirror.prepare(&self.settings.workspaces(), run, &task.base, &task.branch)
    }

    fn in_workspace(
        &self,
        run: &Run,
        task: &Task,
        workspace: &Workspace,
        attempt: &Attempt,
        secrets: &BTreeMap<String, String>,
    ) -> Ending {
        match self.control.started(run.id, attempt.epoch) {
            Ok(()) => {}
            Err(ControlError::Lost(why)) => return Ending::Stopped(why),
            Err(error) => return Ending::failed(format!("cannot start the run: {error}"), true, None),
        }
        let files = match RunFiles::write(&self.settings.run_files(run.id), task, run) {
            Ok(files) => files,
            Err(why) => return Ending::failed(why, true, None),
        };
        // Before any phase can touch them: what the worker's own git will read later.
        let git_admin = match workspace.git_admin() {
            Ok(admin) => admin,
            Err(error) => return Ending::failed(format!("cannot read the workspace's git files: {error}"), true, None),
        };
        let staging = &task.staging;
        let mut staged = StagingReport::default();
        if !staging.merge.is_empty() {
            let began = std::time::Instant::now();
            match staging::merge(workspace, &staging.merge) {
                Ok(conflicts) => staged.conflicts = conflicts,
                Err(error) => return Ending::failed(format!("merge: {error}"), is_transient(&error), None),
            }
            let took = began.elapsed().as_secs_f64() * 1000.0;
            let merged = format!(
                "merged {} commits in {took:.0} ms, {} with conflicts",
                staging.merge.len(),
                staged.conflicts.len()
            );
            attempt.activities(vec![NewActivity::new(ActivityKind::Progress, merged)]);
            for conflict in &staged.conflicts {
                let note =
                    format!("merging {}'s commit left conflicts in {}", conflict.from, conflict.files.join(", "));
                attempt.activities(vec![NewActivity::new(ActivityKind::Progress, note)]);
            }
        }
        if staging.skip_agent {
            return self.publish(run, task, workspace, attempt, staged);
        }
        let mut env = BTreeMap::from([
            ("NIGHTSHIFT_RUN_ID".to_string(), run.id.to_string()),
            ("NIGHTSHIFT_AUTOMATION".to_string(), run.automation.clone()),
            ("NIGHTSHIFT_BRANCH".to_string(), task.branch.clone()),
            ("NIGHTSHIFT_WORKSPACE".to_string(), workspace.path().display().to_string()),
        ]);
        let options = PhaseOptions {
            // Every secret the engine knows is masked, not only this run's: a setup can
            // read another automation's from a file.
            secrets: secrets.values().chain(self.control.known_secrets().iter()).cloned().collect(),
            // The run's log is the attempt's `RunLog`: the phase need keep no copy.
            log_limit: 0,
            grace: self.settings.grace,
            jail: None,
        };
        let mut confinement = Confinement::new(
            self.settings.sandbox.as_deref(),
            workspace.path(),
            &files.dir,
            workspace_paths(workspace),
        );
        if !confinement.enforced() {
            attempt.activities(vec![NewActivity::new(
                ActivityKind::Policy,
                "the sandbox is off (--sandbox off): this run's phases ran unconfined and its network policy was not enforced",
            )]);
        }
        match confinement.limit(&task.limits) {
            Ok(None) => {}
            Ok(Some(note)) => attempt.activities(vec![NewActivity::new(ActivityKind::Policy, note)]),
            Err(why) => {
                attempt.activities(vec![NewActivity::new(ActivityKind::Policy, why.clone())]);
                return Ending::failed(why, false, None);
            }
        }

        if let Some(ending) = setup(task, workspace, attempt, &env, secrets, &options, &confinement) {
            return ending;
        }
        // A run that holds its work is checked after its agent; any other (a verifier)
        // before it, and its agent is told how the checks went.
        let checks_first = !staging.hold && !staging.checks.is_empty();
        // What a check gets: the run's variables, never the secrets or the agent's own.
        let check_env = env.clone();
        if checks_first {
            match run_checks(task, workspace, attempt, &env, &options, &confinement) {
                Ok(outcomes) => staged.checks = outcomes,
                Err(ending) => return ending,
            }
        }
        let extra: Vec<String> =
            [staging::conflicts_section(&staged.conflicts), staging::checks_section(&staged.checks)]
                .into_iter()
                .flatten()
                .collect();
        let extra = extra.join("\n");
        if !extra.is_empty()
            && let Err(error) = std::fs::write(&files.prompt, agent_prompt(task, run, &extra))
        {
            return Ending::failed(format!("cannot write {}: {error}", files.prompt.display()), true, None);
        }

        let planning = task.approval == Approval::Plan && !run.approved;
        env.extend(task.agent.env.clone());
        if staging.answer.is_some() {
            env.insert("NIGHTSHIFT_ANSWER".into(), files.answer.display().to_string());
        }
        env.insert("NIGHTSHIFT_MEMORY_OUT".into(), files.memory_out.display().to_string());
        env.insert("NIGHTSHIFT_POLICY_FILE".into(), files.policy.display().to_string());
        let allowances = profile_allowances(task);
        env.extend(allowances.env.clone());
        if let Some(note) = allowances.note(&task.agent.profile) {
            attempt.activities(vec![NewActivity::new(ActivityKind::Policy, note)]);
        }
        let mut phase = PhaseCommand {
            argv: agent_argv(run, task, workspace, &files, planning, &extra),
            dir: workspace.path().to_path_buf(),
            env,
            timeout: task.timeout.as_duration(),
            sandbox: None,
        };
        let mut agent_options = options.clone();
        let jail = confinement.confine(
            PhaseName::Agent,
            &task.network.agent,
            &allowances.paths,
            &mut phase,
            &mut agent_options,
        );
        attempt.log_line(&format!("== agent: {}", phase.argv.first().map_or("", String::as_str)));
        let mut adapter = OutputAdapter::new(task.agent.output);
        let outcome = run_phase(&phase, &agent_options, &attempt.cancel, |stream, line| {
            attempt.log_line(line);
            if stream == Stream::Stdout {
                attempt.activities(adapter.line(line));
            }
        });
        record_decisions(attempt, jail);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => return Ending::failed(format!("agent: {error}"), false, None),
        };
        if outcome.memory_exceeded {
            return Ending::failed(over_memory("the agent", &confinement), false, None);
        }
        let exit_code = match outcome.status {
            PhaseStatus::Exited(code) => Some(code),
            PhaseStatus::Signalled(_) => None,
            PhaseStatus::TimedOut => {
                let reason = format!("the agent ran longer than its {}", task.timeout);
                return Ending::Report { completion: Completion::TimedOut { reason }, memory: None };
            }
            PhaseStatus::Cancelled => return Ending::Stopped(attempt.stop_reason()),
        };
        let report = adapter.finish();
        let summary = report.summary.unwrap_or_default();
        let agent_failed = match outcome.status {
            PhaseStatus::Exited(0) if !report.failed => None,
            PhaseStatus::Exited(0) => Some("the agent reported a failure".to_string()),
            PhaseStatus::Exited(code) => Some(format!("the agent exited with {code}")),
            PhaseStatus::Signalled(signal) => Some(format!("the agent was killed by signal {signal}")),
            PhaseStatus::TimedOut | PhaseStatus::Cancelled => None,
        };
        if planning {
            return match agent_failed {
                Some(why) => Ending::failed(format!("planning: {why}"), false, None),
                None if summary.trim().is_empty() => Ending::failed("planning: the agent gave no plan", false, None),
                None => Ending::Report { completion: Completion::PlanReady { plan: summary }, memory: None },
            };
        }

        let mut result = RunResult { summary, exit_code, details: Map::new() };
        let memory = match read_memory_out(&files.memory_out) {
            Ok(memory) => memory,
            Err(why) => {
                attempt.activities(vec![NewActivity::new(ActivityKind::Failure, why)]);
                None
            }
        };
        // The phases are over and nothing they started is left: put back what they may
        // have made of the git files before the worker's git reads them.
        if let Err(why) = git_admin.restore() {
            let reason = format!("the agent's workspace cannot be read safely: {why}");
            return Ending::Report {
                completion: Completion::Failed { reason, retryable: false, result: Some(result) },
                memory,
            };
        }
        let changes = match results::collect(workspace, &task.paths) {
            Ok(changes) => changes,
            Err(error) => return Ending::failed(format!("reading the run's changes: {error}"), true, Some(result)),
        };
        changes.record(&mut result);
        let failure = if let Some(why) = agent_failed {
            Some(why)
        } else if !changes.out_of_scope.is_empty() {
            Some(format!(
                "out of scope: the run changed files outside its `paths` ({}), so nothing was pushed",
                changes.out_of_scope.join(", ")
            ))
        } else {
            None
        };
        let failure = match (failure, &staging.answer) {
            (None, Some(kind)) => match staging::read_answer(&files.answer, kind) {
                Ok(answer) => {
                    staged.answer = Some(answer);
                    None
                }
                Err(why) => Some(format!("invalid answer: {why}")),
            },
            (failure, _) => failure,
        };
        if !staging.is_plain() {
            staged.lines_changed = changes.diff_stat.insertions + changes.diff_stat.deletions;
            staged.files_changed = changes.diff_stat.files_changed as u64;
        }
        if let Some(reason) = failure {
            if !staging.is_plain() {
                put_report(&mut result, &staged);
            }
            let completion = Completion::Failed { reason, retryable: false, result: Some(result) };
            return Ending::Report { completion, memory };
        }
        if staging.hold {
            if !staging.checks.is_empty() {
                match run_checks(task, workspace, attempt, &check_env, &options, &confinement) {
                    Ok(outcomes) => staged.checks = outcomes,
                    Err(ending) => return ending,
                }
            }
            if !changes.commits.is_empty() {
                match workspace.hold(&changes.head) {
                    Ok(reference) => {
                        staged.held = Some(changes.head.clone());
                        let note = format!("held {} as {reference} (not pushed)", changes.head);
                        attempt.activities(vec![NewActivity::new(ActivityKind::Progress, note)]);
                    }
                    Err(error) => {
                        put_report(&mut result, &staged);
                        let completion = Completion::Failed {
                            reason: format!("hold: {error}"),
                            retryable: is_transient(&error),
                            result: Some(result),
                        };
                        return Ending::Report { completion, memory };
                    }
                }
            }
        }
        if !staging.is_plain() {
            put_report(&mut result, &staged);
        }
        // A run that holds its work, or answers, never pushes: its parent publishes.
        if task.push && !staging.hold && staging.answer.is_none() {
            return self.push(run, workspace, attempt, &changes, result, memory);
        }
        Ending::Report { completion: Completion::Succeeded { result }, memory }
    }

    /// Pushes the collected commits to the run's branch, once the lease is confirmed (a
    /// worker that lost it must not push: the run may be another's by now), and ends the
    /// run.
    fn push(
        &self,
        run: &Run,
        workspace: &Workspace,
        attempt: &Attempt,
        changes: &RunChanges,
        mut result: RunResult,
        memory: Option<Map<String, Value>>,
    ) -> Ending {
        match self.control.heartbeat(run.id, attempt.epoch) {
            Ok(()) if attempt.lost().is_none() => {}
            Ok(()) => return Ending::Stopped(attempt.stop_reason()),
            Err(ControlError::Lost(why)) => return Ending::Stopped(why),
            Err(error) => {
                let reason = format!("cannot confirm the lease before pushing: {error}");
                return Ending::Report {
                    completion: Completion::Failed { reason, retryable: true, result: Some(result) },
                    memory,
                };
            }
        }
        match results::push(workspace, changes) {
            Ok(PushOutcome::Pushed { branch, commit }) => {
                result.details.insert("pushed".into(), json!({"branch": branch, "commit": commit}));
                attempt
                    .activities(vec![NewActivity::new(ActivityKind::Progress, format!("pushed {branch} at {commit}"))]);
            }
            Ok(PushOutcome::NoCommits) => {}
            Err(error) => {
                let completion =
                    Completion::Failed { reason: format!("push: {error}"), retryable: true, result: Some(result) };
                return Ending::Report { completion, memory };
            }
        }
        Ending::Report { completion: Completion::Succeeded { result }, memory }
    }

    /// A run with no agent (`skip_agent`, a parent publishing its pick): its branch starts
    /// at the held commit; it is pushed when the task pushes, and its pull request opened
    /// as for any run that pushed. No setup, no phase at all.
    fn publish(
        &self,
        run: &Run,
        task: &Task,
        workspace: &Workspace,
        attempt: &Attempt,
        mut report: StagingReport,
    ) -> Ending {
        let changes = match results::collect(workspace, &task.paths) {
            Ok(changes) => changes,
            Err(error) => return Ending::failed(format!("reading the run's changes: {error}"), true, None),
        };
        let held = task.staging.start_from.as_ref().map_or("nothing", |held| held.commit.as_str());
        let mut result =
            RunResult { summary: format!("Published the commit {held}"), exit_code: None, details: Map::new() };
        changes.record(&mut result);
        report.lines_changed = changes.diff_stat.insertions + changes.diff_stat.deletions;
        report.files_changed = changes.diff_stat.files_changed as u64;
        put_report(&mut result, &report);
        attempt.log_line(&format!("== publish: {held} as {} (no agent)", task.branch));
        if !task.push {
            return Ending::Report { completion: Completion::Succeeded { result }, memory: None };
        }
        self.push(run, workspace, attempt, &changes, result, None)
    }
}

/// Puts the staging report in the result's details (`details.staging`).
fn put_report(result: &mut RunResult, report: &StagingReport) {
    if let Ok(value) = serde_json::to_value(report) {
        result.details.insert(StagingReport::DETAILS_KEY.into(), value);
    }
}

/// The checks (`Staging::checks`): each command with `sh -c` in the workspace, with no
/// network (a deny-all policy) and the setup phase's limits, each within `setup_timeout`;
/// its exit code and the end of its output are recorded, whatever they are. `Err` only
/// when the attempt is stopped.
fn run_checks(
    task: &Task,
    workspace: &Workspace,
    attempt: &Attempt,
    env: &BTreeMap<String, String>,
    options: &PhaseOptions,
    confinement: &Confinement<'_>,
) -> Result<Vec<CheckOutcome>, Ending> {
    let no_network = NetworkPolicy::default();
    let mut outcomes = Vec::new();
    for command in &task.staging.checks {
        let mut phase = PhaseCommand {
            argv: vec!["sh".into(), "-c".into(), command.clone()],
            dir: workspace.path().to_path_buf(),
            env: env.clone(),
            timeout: task.setup_timeout.as_duration(),
            sandbox: None,
        };
        let mut options = options.clone();
        let jail = confinement.confine(PhaseName::Setup, &no_network, &[], &mut phase, &mut options);
        attempt.log_line(&format!("== check: {command}"));
        let mut tail = Tail::default();
        let outcome = run_phase(&phase, &options, &attempt.cancel, |_, line| {
            attempt.log_line(line);
            tail.push(line);
        });
        record_decisions(attempt, jail);
        let exit_code = match outcome {
            Ok(outcome) => match outcome.status {
                PhaseStatus::Exited(code) => Some(code),
                PhaseStatus::Cancelled => return Err(Ending::Stopped(attempt.stop_reason())),
                PhaseStatus::Signalled(_) | PhaseStatus::TimedOut => None,
            },
            Err(error) => {
                tail.push(&format!("the check could not run: {error}"));
                None
            }
        };
        let shown = exit_code.map_or_else(|| "no exit code".to_string(), |code| format!("exit {code}"));
        attempt.activities(vec![NewActivity::new(ActivityKind::Progress, format!("check `{command}`: {shown}"))]);
        outcomes.push(CheckOutcome { command: command.clone(), exit_code, tail: tail.text() });
    }
    Ok(outcomes)
}

/// The setup phase: each command with `sh -c`, the secrets in its environment, all within
/// `setup_timeout`. `None` when every command succeeded; else how the attempt ends.
fn setup(
    task: &Task,
    workspace: &Workspace,
    attempt: &Attempt,
    env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    options: &PhaseOptions,
    confinement: &Confinement<'_>,
) -> Option<Ending> {
    let setup_started = Instant::now();
    for command in &task.setup {
        let mut setup_env = env.clone();
        setup_env.extend(secrets.clone());
        let timeout = task.setup_timeout.as_duration().saturating_sub(setup_started.elapsed());
        let mut phase = PhaseCommand {
            argv: vec!["sh".into(), "-c".into(), command.clone()],
            dir: workspace.path().to_path_buf(),
            env: setup_env,
            timeout,
            sandbox: None,
        };
        let mut options = options.clone();
        let jail = confinement.confine(PhaseName::Setup, &task.network.setup, &[], &mut phase, &mut options);
        attempt.log_line(&format!("== setup: {command}"));
        let outcome = run_phase(&phase, &options, &attempt.cancel, |_, line| attempt.log_line(line));
        record_decisions(attempt, jail);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => return Some(Ending::failed(format!("setup: {error}"), false, None)),
        };
        if outcome.memory_exceeded {
            let what = format!("setup command `{command}`");
            return Some(Ending::failed(over_memory(&what, confinement), false, None));
        }
        match outcome.status {
            PhaseStatus::Exited(0) => {}
            PhaseStatus::Exited(code) => {
                let result = RunResult { exit_code: Some(code), ..RunResult::default() };
                return Some(Ending::failed(
                    format!("setup command `{command}` exited with {code}"),
                    true,
                    Some(result),
                ));
            }
            PhaseStatus::Signalled(signal) => {
                return Some(Ending::failed(
                    format!("setup command `{command}` was killed by signal {signal}"),
                    true,
                    None,
                ));
            }
            PhaseStatus::TimedOut => {
                let reason = format!("the setup phase ran longer than its {}", task.setup_timeout);
                return Some(Ending::Report { completion: Completion::TimedOut { reason }, memory: None });
            }
            PhaseStatus::Cancelled => return Some(Ending::Stopped(attempt.stop_reason())),
        }
    }
    None
}

/// What a workspace needs besides itself, its mirror: an overlay's or a clone's repository
/// borrows its objects, read-only; a worktree's `.git` is there, and its commits go there too.
fn workspace_paths(workspace: &Workspace) -> Vec<SandboxPath> {
    let mirror = workspace.mirror().path();
    let mut paths = vec![SandboxPath { path: mirror.to_path_buf(), writable: false }];
    // A worktree's commits go into the mirror's objects and refs, its index and HEAD into
    // its own directory there; the mirror's config (which the worker's fetches and pushes
    // read) stays read-only.
    let writable = [Some(mirror.join("objects")), Some(mirror.join("refs")), Some(mirror.join("logs"))];
    if workspace.kind() == WorkspaceKind::Worktree {
        for path in writable.into_iter().chain([workspace.worktree_admin()]).flatten() {
            if path.exists() {
                paths.push(SandboxPath { path, writable: true });
            }
        }
    }
    paths
}

/// `the agent was killed by its memory limit (512M)`.
fn over_memory(what: &str, confinement: &Confinement) -> String {
    match confinement.limits().memory {
        Some(bytes) => format!("{what} was killed by its memory limit ({})", ByteSize(bytes)),
        None => format!("{what} was killed by its memory limit"),
    }
}

/// Puts a phase's egress decisions on the run's timeline.
fn record_decisions(attempt: &Attempt, jail: Option<PhaseJail>) {
    if let Some(jail) = jail {
        let activities: Vec<NewActivity> = jail.decisions().iter().map(plan::activity).collect();
        if !activities.is_empty() {
            attempt.activities(activities);
        }
    }
}

/// What the agent's profile brings into its phase: paths that exist on this worker, and
/// the values of the variables it names that are set here.
struct ProfileAllowances {
    paths: Vec<SandboxPath>,
    env: Vec<(String, String)>,
    missing_paths: Vec<String>,
    unset_env: Vec<String>,
    rules: Vec<String>,
}

fn profile_allowances(task: &Task) -> ProfileAllowances {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut allowances = ProfileAllowances {
        paths: Vec::new(),
        env: Vec::new(),
        missing_paths: Vec::new(),
        unset_env: Vec::new(),
        rules: profile_rules(&task.network.agent, &task.agent.profile),
    };
    for entry in &task.agent.paths {
        match entry.resolve(home.as_deref()).filter(|path| path.exists()) {
            Some(path) => allowances.paths.push(SandboxPath { path, writable: entry.writable }),
            None => allowances.missing_paths.push(entry.path.clone()),
        }
    }
    for name in &task.agent.pass_env {
        match std::env::var(name) {
            Ok(value) => allowances.env.push((name.clone(), value)),
            Err(_) => allowances.unset_env.push(name.clone()),
        }
    }
    allowances
}

/// The agent policy's rules that came from the profile, as `host:ports`.
fn profile_rules(policy: &NetworkPolicy, profile: &str) -> Vec<String> {
    policy
        .allow
        .iter()
        .filter(|rule| matches!(&rule.origin, crate::netpolicy::RuleOrigin::Profile(name) if name == profile))
        .map(|rule| {
            let ports: Vec<String> = rule.ports.iter().map(u16::to_string).collect();
            format!("{}:{}", rule.host, ports.join(","))
        })
        .collect()
}

impl ProfileAllowances {
    /// The timeline's line about what the profile brought, if it brought anything.
    fn note(&self, profile: &str) -> Option<String> {
        let mut parts = Vec::new();
        if !self.paths.is_empty() {
            let paths: Vec<String> = self
                .paths
                .iter()
                .map(|p| format!("{}{}", p.path.display(), if p.writable { " (writable)" } else { "" }))
                .collect();
            parts.push(format!("brings {}", paths.join(", ")));
        }
        if !self.missing_paths.is_empty() {
            parts.push(format!("would bring {} (missing here)", self.missing_paths.join(", ")));
        }
        if !self.env.is_empty() {
            let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
            parts.push(format!("passes {}", names.join(", ")));
        }
        if !self.unset_env.is_empty() {
            parts.push(format!("would pass {} (unset here)", self.unset_env.join(", ")));
        }
        if !self.rules.is_empty() {
            parts.push(format!("allows {}", self.rules.join(", ")));
        }
        (!parts.is_empty()).then(|| format!("agent profile {profile}: {}", parts.join("; ")))
    }
}

/// The agent's argv: the profile's command (its plan command when planning) with every
/// placeholder filled in one pass.
fn agent_argv(
    run: &Run,
    task: &Task,
    workspace: &Workspace,
    files: &RunFiles,
    planning: bool,
    extra: &str,
) -> Vec<String> {
    let prompt = agent_prompt(task, run, extra);
    let (template, prompt) = match (&task.agent.plan_argv, planning) {
        (Some(plan_argv), true) => (plan_argv, prompt),
        (None, true) => (&task.agent.argv, format!("Propose a plan only; change nothing.\n\n{prompt}")),
        (_, false) => (&task.agent.argv, prompt),
    };
    let prompt = prompt.as_str();
    let run_id = run.id.to_string();
    let workspace = workspace.path().display().to_string();
    let prompt_file = files.prompt.display().to_string();
    AgentProfile::finish(
        template,
        &[
            ("prompt", prompt),
            ("prompt_file", &prompt_file),
            ("workspace", &workspace),
            ("run_id", &run_id),
            ("branch", &task.branch),
            ("base", &task.base),
        ],
    )
}

/// What the agent is asked: the task's prompt, once a plan was approved the plan, and
/// what the worker adds for a run of parallel work (`extra`: conflicts, check outcomes).
fn agent_prompt(task: &Task, run: &Run, extra: &str) -> String {
    let prompt = match (&run.plan, run.approved) {
        (Some(plan), true) => format!("{}\n\nCarry out this plan, which a person approved:\n{plan}\n", task.prompt),
        _ => task.prompt.clone(),
    };
    if extra.is_empty() { prompt } else { format!("{prompt}\n\n{extra}") }
}

/// The automation's secrets, read now for the setup phase.
fn resolve_secrets(task: &Task) -> Result<BTreeMap<String, String>, String> {
    task.secrets
        .iter()
        .map(|(name, reference)| {
            reference.resolve().map(|value| (name.clone(), value)).map_err(|why| format!("secret {name}: {why}"))
        })
        .collect()
}

/// Whether trying again later may help: a fetch or a file system hiccup, not a wrong ref.
fn is_transient(error: &WorkspaceError) -> bool {
    !matches!(
        error,
        WorkspaceError::Location { .. }
            | WorkspaceError::BadRef { .. }
            | WorkspaceError::UnknownBase { .. }
            | WorkspaceError::BranchExists { .. }
            | WorkspaceError::Held { .. }
    )
}

/// What the agent wrote to `$NIGHTSHIFT_MEMORY_OUT`: a JSON object, keys to values (null
/// removes a key). No file is no memory.
fn read_memory_out(path: &Path) -> Result<Option<Map<String, Value>>, String> {
    let why = |what: String| format!("$NIGHTSHIFT_MEMORY_OUT is ignored: {what}");
    let Some(bytes) = staging::read_agent_file(path, MAX_MEMORY_OUT).map_err(why)? else { return Ok(None) };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(entries)) => Ok(Some(entries)),
        Ok(other) => Err(why(format!("it must hold a JSON object of keys to values, not {}", json_kind(&other)))),
        Err(error) => Err(why(format!("it is not JSON: {error}"))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn completion_name(completion: &Completion) -> &'static str {
    match completion {
        Completion::Succeeded { .. } => "succeeded",
        Completion::Failed { .. } => "failed",
        Completion::TimedOut { .. } => "timed_out",
        Completion::PlanReady { .. } => "awaiting_approval",
    }
}

/// The files a run's agent is given, outside its workspace.
struct RunFiles {
    dir: PathBuf,
    prompt: PathBuf,
    policy: PathBuf,
    memory_out: PathBuf,
    /// Where the agent writes its answer (`$NIGHTSHIFT_ANSWER`), when its run asks for one.
    answer: PathBuf,
}

impl RunFiles {
    /// The prompt file holds the task's prompt, followed by the approved plan when there
    /// is one.
    fn write(dir: &Path, task: &Task, run: &Run) -> Result<RunFiles, String> {
        let _ = remove_tree(dir);
        let failed = |what: &Path, error: std::io::Error| format!("cannot write {}: {error}", what.display());
        std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
        let files = RunFiles {
            dir: dir.to_path_buf(),
            prompt: dir.join("prompt.txt"),
            policy: dir.join("policy.json"),
            memory_out: dir.join("memory.json"),
            answer: dir.join("answer.json"),
        };
        std::fs::write(&files.prompt, agent_prompt(task, run, "")).map_err(|e| failed(&files.prompt, e))?;
        let policy = serde_json::to_vec_pretty(&task.network.agent).map_err(|e| e.to_string())?;
        std::fs::write(&files.policy, policy).map_err(|e| failed(&files.policy, e))?;
        Ok(files)
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_out_is_read_from_a_regular_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.json");
        assert_eq!(read_memory_out(&path), Ok(None), "no file is no memory");
        std::fs::write(&path, r#"{"last": "ok"}"#).unwrap();
        assert_eq!(read_memory_out(&path).unwrap().unwrap()["last"], "ok");

        // A link to a host file the agent cannot read itself is not followed.
        let host_file = dir.path().join("serve.json");
        std::fs::write(&host_file, r#"{"token": "s3cret"}"#).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&host_file, &path).unwrap();
        let linked = read_memory_out(&path).unwrap_err();
        assert!(linked.contains("symbolic link"), "{linked}");

        // A FIFO is refused at once instead of holding the worker's thread.
        std::fs::remove_file(&path).unwrap();
        let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let (sender, receiver) = std::sync::mpsc::channel();
        let reading = path.clone();
        std::thread::spawn(move || sender.send(read_memory_out(&reading)).unwrap());
        let answer = receiver.recv_timeout(Duration::from_secs(30)).expect("reading a FIFO must not block");
        assert!(answer.unwrap_err().contains("not a regular file"));
    }
}
