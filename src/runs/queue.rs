//! Why a queued run waits: the claim rules as one pure function, which a store's claim
//! asks for the first run that may start and the status picture asks for every run.
//!
//! Queued runs are considered oldest first. A run waits while its retry backoff lasts
//! (`not_before`), while its group has as many leased or running runs as its
//! `concurrency_limit` (at least one), while a leased or running run of its repository
//! works on its branch (a follow-up waits for the run it follows) or has `paths` that
//! overlap its own (`scope::paths_overlap`), and behind an older queued run of its
//! repository that waits for such a run and shares its branch or overlaps its paths, so
//! a stream of newer runs cannot starve the older one. A run that waits for none of
//! these is ready: a worker that asks now gets the first ready run. A coordinating
//! parent holds no worker (`holds_worker`), and a run with staging goes only to a local
//! worker (`plain`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::scope::paths_overlap;
use super::{Run, RunId};

/// Why a queued run is not claimed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Wait {
    /// Its retry backoff lasts until `until`.
    Backoff { until: DateTime<Utc> },
    /// Its group (the automation, or its `concurrency_key`) has `active` leased or
    /// running runs, as many as its `limit`.
    Concurrency { group: String, limit: u32, active: u32 },
    /// Run `run`, leased or running, works on the same repository and branch.
    SameBranch { run: RunId, branch: String },
    /// Run `run`, leased or running in the same repository, has `paths` that overlap.
    PathsOverlap { run: RunId },
    /// An older queued run, `run`, that shares its repository and branch or overlapping
    /// paths, is waiting for a run it conflicts with; this one waits its turn after it.
    BehindOlder { run: RunId },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Backoff { until } => write!(f, "backoff until {}", until.format("%Y-%m-%dT%H:%M:%SZ")),
            Wait::Concurrency { group, limit, active } => {
                write!(f, "concurrency: {active} of {limit} running in group {group}")
            }
            Wait::SameBranch { run, branch } => write!(f, "branch {branch} is busy with {run}"),
            Wait::PathsOverlap { run } => write!(f, "paths overlap with {run}"),
            Wait::BehindOlder { run } => write!(f, "behind {run}, which waits on the same scope"),
        }
    }
}

/// Whether a worker holds `run`: leased or running, with a lease. A coordinating parent
/// (running, no lease: its children do the work, docs/parallel.md) holds nothing, so it
/// blocks none of its children by concurrency, branch or paths.
pub fn holds_worker(run: &Run) -> bool {
    run.state.is_active() && run.lease.is_some()
}

/// Whether any worker may take `run`: its staging is plain. Staged runs need the held
/// commits in the worker's own mirror, which only the server's local workers share.
pub fn plain(run: &Run) -> bool {
    run.task.as_ref().is_none_or(|task| task.staging.is_plain())
}

/// What the claim rules need to know of the leased and running runs.
pub trait Active {
    /// Leased or running runs of `group`.
    fn in_group(&self, group: &str) -> u32;
    /// The first leased or running run of `repo` that works on `branch` or whose
    /// `paths` overlap `paths`, with whether it is the branch that conflicts.
    fn conflict(&self, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)>;
    /// `conflict` for `asking`, passing over the runs it is an alternative to
    /// (`alternatives`); the default passes over none.
    fn conflict_for(&self, asking: &Run, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)> {
        let _ = asking;
        self.conflict(repo, branch, paths)
    }
}

/// Whether `a` and `b` are attempts of one best-of-N: alternatives of which at most one
/// is published, each on its own branch and holding its commit, so their `paths` may
/// overlap while they run at once (docs/parallel.md).
pub fn alternatives(a: &Run, b: &Run) -> bool {
    use crate::parallel::Role;
    match (a.parent, b.parent) {
        (Some(x), Some(y)) => x.run == y.run && x.role == Role::Attempt && y.role == Role::Attempt,
        _ => false,
    }
}

/// A run's repository, branch and `paths`.
type Scope<'a> = (&'a str, &'a str, &'a [String]);

/// A run's turn: `None` is ready.
pub type Turn<'a> = (&'a Run, Option<Wait>);

/// Walks `queued` (oldest first) and gives each run's turn, stopping after the first
/// ready run when `first_ready_only` (what a claim asks).
pub fn turns<'a>(
    queued: impl IntoIterator<Item = &'a Run>,
    active: &impl Active,
    now: DateTime<Utc>,
    first_ready_only: bool,
) -> Vec<Turn<'a>> {
    let mut full_groups: Vec<(String, u32, u32)> = Vec::new();
    // Scopes of queued runs found waiting for an active run, with the run that waits
    // first in each (runs of one automation usually share one scope).
    let mut blocked_scopes: Vec<(Scope, RunId)> = Vec::new();
    let mut turns = Vec::new();
    for run in queued {
        let wait = wait_of(run, active, now, &mut full_groups, &mut blocked_scopes);
        let ready = wait.is_none();
        turns.push((run, wait));
        if ready && first_ready_only {
            break;
        }
    }
    turns
}

fn wait_of<'a>(
    run: &'a Run,
    active: &impl Active,
    now: DateTime<Utc>,
    full_groups: &mut Vec<(String, u32, u32)>,
    blocked_scopes: &mut Vec<(Scope<'a>, RunId)>,
) -> Option<Wait> {
    if let Some(until) = run.not_before.filter(|at| *at > now) {
        return Some(Wait::Backoff { until });
    }
    let group = run.group();
    if let Some((_, limit, running)) = full_groups.iter().find(|(full, _, _)| *full == group) {
        return Some(Wait::Concurrency { group, limit: *limit, active: *running });
    }
    let limit = run.flow.concurrency_limit.max(1);
    let running = active.in_group(&group);
    if running >= limit {
        full_groups.push((group.clone(), limit, running));
        return Some(Wait::Concurrency { group, limit, active: running });
    }
    let task = run.task.as_ref()?;
    let scope = (task.repo.as_str(), task.branch.as_str(), task.paths.as_slice());
    let behind_older = |((repo, branch, paths), _): &&(Scope, RunId)| {
        *repo == scope.0 && (*branch == scope.1 || paths_overlap(paths, scope.2))
    };
    if let Some((_, older)) = blocked_scopes.iter().find(behind_older) {
        return Some(Wait::BehindOlder { run: *older });
    }
    let (holder, same_branch) = active.conflict_for(run, scope.0, scope.1, scope.2)?;
    blocked_scopes.push((scope, run.id));
    Some(if same_branch {
        Wait::SameBranch { run: holder, branch: task.branch.clone() }
    } else {
        Wait::PathsOverlap { run: holder }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::config::{Approval, DurationSpec, OutputFormat};
    use crate::netpolicy::NetworkPolicy;
    use crate::runs::RunState;
    use crate::task::{AgentCommand, PhasePolicies, Task};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, minute, 0).unwrap()
    }

    fn run(id: u64, automation: &str, branch: &str, paths: &[&str]) -> Run {
        let task = Task {
            automation: automation.into(),
            agent: AgentCommand {
                profile: "codex".into(),
                argv: vec!["codex".into()],
                plan_argv: None,
                env: Default::default(),
                output: OutputFormat::default(),
                paths: Vec::new(),
                pass_env: Vec::new(),
            },
            repo: "/srv/git/api".into(),
            base: "main".into(),
            branch: branch.into(),
            prompt: "p".into(),
            setup: Vec::new(),
            secrets: Default::default(),
            network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
            paths: paths.iter().map(|path| path.to_string()).collect(),
            timeout: DurationSpec::from_secs(60),
            setup_timeout: DurationSpec::from_secs(60),
            approval: Approval::default(),
            push: true,
            untrusted_input: false,
            limits: Default::default(),
            notify: Vec::new(),
            follows: None,
            plan: None,
            staging: Default::default(),
        };
        Run::queued(
            RunId(id),
            automation.into(),
            String::new(),
            Vec::new(),
            Some(task),
            Default::default(),
            None,
            at(0),
        )
    }

    /// Active runs by id, as the store's index holds them.
    struct Running(BTreeMap<RunId, Run>);

    impl Active for Running {
        fn in_group(&self, group: &str) -> u32 {
            self.0.values().filter(|run| run.group() == group).count() as u32
        }
        fn conflict(&self, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)> {
            self.0.values().find_map(|run| {
                let task = run.task.as_ref()?;
                (task.repo == repo && (task.branch == branch || paths_overlap(paths, &task.paths)))
                    .then_some((run.id, task.branch == branch))
            })
        }
    }

    fn check(active: &[Run], queued: &[Run], expected: &[(u64, Option<Wait>)]) {
        let active = Running(active.iter().map(|run| (run.id, run.clone())).collect());
        let found: Vec<(u64, Option<Wait>)> =
            turns(queued, &active, at(10), false).into_iter().map(|(run, wait)| (run.id.0, wait)).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn each_queued_run_says_what_it_waits_for() {
        let mut limited = run(1, "solo", "ns/a", &[]);
        limited.flow.concurrency_limit = 1;
        let mut backoff = run(5, "retry", "ns/e", &[]);
        backoff.not_before = Some(at(15));
        let mut over = backoff.clone();
        over.id = RunId(6);
        over.not_before = Some(at(5));
        // A backoff that ends now is over.
        let mut ending = run(7, "again", "ns/g", &[]);
        ending.not_before = Some(at(10));
        check(
            &[limited.clone(), run(2, "docs", "ns/b", &["docs/"]), run(3, "fix", "ns/fix", &[])],
            &[
                run(10, "solo", "ns/x", &[]),
                run(11, "docs2", "ns/c", &["docs/guide.md"]),
                run(12, "fix2", "ns/fix", &[]),
                run(13, "docs3", "ns/d", &["docs/**"]),
                backoff,
                over,
                ending,
                run(14, "other", "ns/o", &["src/"]),
            ],
            &[
                (10, Some(Wait::Concurrency { group: "solo".into(), limit: 1, active: 1 })),
                (11, Some(Wait::PathsOverlap { run: RunId(2) })),
                (12, Some(Wait::SameBranch { run: RunId(3), branch: "ns/fix".into() })),
                (13, Some(Wait::BehindOlder { run: RunId(11) })),
                (5, Some(Wait::Backoff { until: at(15) })),
                (6, None),
                (7, None),
                (14, None),
            ],
        );
    }

    #[test]
    fn a_full_group_holds_back_every_later_run_of_it() {
        let mut first = run(1, "a", "ns/1", &[]);
        first.flow.concurrency_limit = 2;
        let mut second = first.clone();
        second.id = RunId(2);
        let queued = [run(3, "a", "ns/3", &[]), run(4, "a", "ns/4", &[])];
        let mut limit_2 = queued.clone();
        for run in &mut limit_2 {
            run.flow.concurrency_limit = 2;
        }
        let full = Some(Wait::Concurrency { group: "a".into(), limit: 2, active: 2 });
        check(&[first.clone(), second], &limit_2, &[(3, full.clone()), (4, full)]);
        // One running of two: both are ready (the first one claimed fills the group).
        check(&[first], &limit_2, &[(3, None), (4, None)]);
    }

    #[test]
    fn a_claim_stops_at_the_first_ready_run() {
        let active = Running(BTreeMap::new());
        let queued = [run(1, "a", "ns/1", &[]), run(2, "b", "ns/2", &[])];
        let found = turns(&queued, &active, at(10), true);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.id, RunId(1));
        assert_eq!(found[0].1, None);
    }

    #[test]
    fn each_wait_reads_as_a_sentence() {
        let said = |wait: Wait| wait.to_string();
        assert_eq!(said(Wait::Backoff { until: at(7) }), "backoff until 2026-01-01T12:07:00Z");
        assert_eq!(
            said(Wait::Concurrency { group: "fix/api".into(), limit: 2, active: 2 }),
            "concurrency: 2 of 2 running in group fix/api"
        );
        assert_eq!(said(Wait::SameBranch { run: RunId(3), branch: "ns/x".into() }), "branch ns/x is busy with r3");
        assert_eq!(said(Wait::PathsOverlap { run: RunId(4) }), "paths overlap with r4");
        assert_eq!(said(Wait::BehindOlder { run: RunId(5) }), "behind r5, which waits on the same scope");
    }

    #[test]
    fn only_a_leased_or_running_run_with_a_lease_holds_a_worker() {
        let lease =
            crate::runs::Lease { worker: "w".into(), epoch: Default::default(), acquired_at: at(0), expires_at: at(5) };
        let with = |state: RunState, leased: bool| {
            let mut run = run(1, "a", "main", &["**"]);
            run.state = state;
            run.lease = leased.then(|| lease.clone());
            holds_worker(&run)
        };
        assert!(with(RunState::Leased, true));
        assert!(with(RunState::Running, true));
        assert!(!with(RunState::Running, false), "a coordinating parent holds no worker");
        assert!(!with(RunState::Queued, true), "nor does a run that is not active");
    }

    #[test]
    fn a_run_is_plain_unless_its_task_is_staged() {
        let mut staged = run(1, "a", "main", &["**"]);
        assert!(plain(&staged));
        staged.task.as_mut().unwrap().staging.hold = true;
        assert!(!plain(&staged));
        staged.task = None;
        assert!(plain(&staged), "a run that failed to render has nothing to stage");
    }

    #[test]
    fn attempts_of_one_parent_are_alternatives_and_nothing_else_is() {
        use crate::parallel::{ParentLink, Role};
        let linked = |id: u64, parent: Option<(u64, Role)>| {
            let mut run = run(id, "a", "main", &["**"]);
            run.parent = parent.map(|(parent, role)| ParentLink { run: RunId(parent), role, index: 1 });
            run
        };
        let first = linked(2, Some((1, Role::Attempt)));
        assert!(alternatives(&first, &linked(3, Some((1, Role::Attempt)))));
        assert!(!alternatives(&first, &linked(3, Some((9, Role::Attempt)))), "another parent's attempt");
        assert!(!alternatives(&first, &linked(3, Some((1, Role::Judge)))), "the judge is no attempt");
        assert!(
            !alternatives(&linked(3, Some((1, Role::Child))), &linked(4, Some((1, Role::Child)))),
            "fan-out children"
        );
        assert!(!alternatives(&first, &linked(3, None)));
        assert!(!alternatives(&linked(3, None), &first));
    }
}
