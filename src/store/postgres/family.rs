//! Parallel work on PostgreSQL (docs/parallel.md): a parent's next step decided by
//! `parallel::conduct` on its children as stored, under the parent's row lock; a
//! cancelled parent's children cancelled in the same transaction.

use chrono::{DateTime, Utc};

use super::db::Tx;
use super::leases::{cancel_tree, finish};
use super::rows::{add_activity, load_run, next_run_id, runs_of, save_run, update_run};
use crate::parallel::conduct;
use crate::runs::{ActivityKind, Run, RunId, RunState};
use crate::store::StoreError;

/// A child ended: its parent decides what follows, in the same transaction (as the
/// embedded store's `child_ended`). The caller locked the parent's row before the
/// child's.
pub(super) fn child_ended(tx: &mut Tx<'_>, child: &Run, now: DateTime<Utc>) -> Result<(), StoreError> {
    match child.parent.filter(|link| link.role.is_part_of_parent()) {
        Some(link) if child.state.is_finished() => conduct(tx, link.run, now),
        _ => Ok(()),
    }
}

/// Takes `parent`'s next step (spawn children, publish, finish), in `tx`, as the
/// embedded store's `Inner::conduct`: new children, the parent queued to publish its
/// pick, or the parent's end. A parent that is not coordinating (ended, or publishing)
/// is left alone. Its row is locked here; a caller that also changes a child locks the
/// parent first.
pub(super) fn conduct(tx: &mut Tx<'_>, parent: RunId, now: DateTime<Utc>) -> Result<(), StoreError> {
    let Some(before) = load_run(tx, parent, true)? else { return Ok(()) };
    if !is_coordinating(&before) {
        return Ok(());
    }
    let rows = tx.query("SELECT doc FROM nightshift_runs WHERE parent = $1 ORDER BY id", &[&(parent.0 as i64)])?;
    let children = runs_of(&rows)?;
    match conduct::next(&before, &children) {
        conduct::Next::Wait => {}
        conduct::Next::Spawn(new) => {
            let mut started = Vec::with_capacity(new.len());
            for child in new {
                let id = next_run_id(tx)?;
                started.push(format!("{id} ({} {})", child.link.role, child.link.index));
                save_run(tx, &child_run(id, &before, child, now))?;
            }
            let text = format!("started {}", started.join(", "));
            add_activity(tx, parent, ActivityKind::Progress, text, serde_json::Value::Null, now)?;
        }
        conduct::Next::Publish { held, summary, mut details } => {
            details.insert("held".into(), serde_json::json!(held));
            let mut run = before.clone();
            run.result = Some(crate::runs::RunResult { summary, exit_code: None, details });
            let pushes = run.task.as_ref().is_some_and(|task| task.push);
            let text = if let Some(task) = run.task.as_mut().filter(|_| pushes) {
                task.staging =
                    crate::parallel::Staging { start_from: Some(held.clone()), skip_agent: true, ..Default::default() };
                run.state = RunState::Queued;
                run.updated_at = now;
                format!("queued to publish {}'s commit {}", held.run, held.commit)
            } else {
                finish(&mut run, RunState::Succeeded, None, now);
                format!("succeeded: {}'s commit {} is held (the task does not push)", held.run, held.commit)
            };
            add_activity(tx, parent, ActivityKind::Progress, text, serde_json::Value::Null, now)?;
            update_run(tx, &before, &run)?;
        }
        conduct::Next::Finish { succeeded, reason, summary, details } => {
            let mut run = before.clone();
            run.result = Some(crate::runs::RunResult { summary: summary.clone(), exit_code: None, details });
            let (ended, kind) = if succeeded {
                (RunState::Succeeded, ActivityKind::Completion)
            } else {
                (RunState::Failed, ActivityKind::Failure)
            };
            finish(&mut run, ended, reason, now);
            add_activity(tx, parent, kind, summary, serde_json::Value::Null, now)?;
            update_run(tx, &before, &run)?;
            for child in unfinished_children(tx, parent)? {
                cancel_tree(tx, child, format!("its parent {parent} ended"), now)?;
            }
        }
    }
    Ok(())
}

/// The unfinished runs that are part of `parent` (not its follow-ups), oldest first.
pub(super) fn unfinished_children(tx: &mut Tx<'_>, parent: RunId) -> Result<Vec<RunId>, StoreError> {
    let rows = tx.query(
        "SELECT doc FROM nightshift_runs WHERE parent = $1 AND NOT finished ORDER BY id",
        &[&(parent.0 as i64)],
    )?;
    let children = runs_of(&rows)?;
    let part_of = |run: &Run| run.parent.is_some_and(|link| link.role.is_part_of_parent());
    Ok(children.iter().filter(|run| part_of(run)).map(|run| run.id).collect())
}

/// Whether `run` is a parent waiting for its children: running with no lease.
fn is_coordinating(run: &Run) -> bool {
    run.state == RunState::Running && run.lease.is_none() && run.task.as_ref().is_some_and(|task| task.plan.is_some())
}

/// A child's queued run record, part of `parent`.
fn child_run(id: RunId, parent: &Run, child: conduct::NewChild, now: DateTime<Utc>) -> Run {
    let event_ids = parent.event_ids.iter().take(1).cloned().collect();
    let (automation, hash) = (parent.automation.clone(), parent.definition_hash.clone());
    Run::queued(id, automation, hash, event_ids, Some(child.task), child.flow, Some(child.link), now)
}

#[cfg(test)]
mod tests {
    use super::super::PgStore;
    use super::super::leases::tests::{LEASE, at, claim, get, open};
    use super::*;
    use crate::parallel::{CheckOutcome, Held, Role, StagingReport};
    use crate::runs::{Completion, RunResult};
    use crate::store::{Claim, StoreError};

    fn parent(store: &PgStore, count: usize, push: bool) -> RunId {
        super::tests_support::parent_with(store, count, push)
    }

    fn children(store: &PgStore, parent: RunId) -> Vec<Run> {
        let rows = store
            .db
            .transaction(|tx| {
                tx.query("SELECT doc FROM nightshift_runs WHERE parent = $1 ORDER BY id", &[&(parent.0 as i64)])
            })
            .expect("read");
        runs_of(&rows).expect("runs")
    }

    fn report(held: &str, lines: u64, check_passed: bool) -> StagingReport {
        StagingReport {
            held: Some(held.into()),
            checks: vec![CheckOutcome {
                command: "cargo test".into(),
                exit_code: Some(if check_passed { 0 } else { 101 }),
                tail: String::new(),
            }],
            lines_changed: lines,
            files_changed: 1,
            ..StagingReport::default()
        }
    }

    fn succeed(store: &PgStore, claim: &Claim, summary: &str, report: StagingReport, secs: i64) -> Run {
        let mut result = RunResult { summary: summary.into(), ..RunResult::default() };
        result.details.insert(StagingReport::DETAILS_KEY.into(), serde_json::to_value(report).expect("report"));
        let done = Completion::Succeeded { result };
        store.complete_now(claim.run.id, claim.lease.epoch, done, Vec::new(), at(secs)).expect("complete")
    }

    #[test]
    fn a_best_of_n_parent_conducts_its_attempts_to_the_smallest_passing_one_and_publishes_it() {
        let (_cluster, store) = open();
        let id = parent(&store, 3, true);
        let started = children(&store, id);
        let shapes: Vec<(Role, u32, String)> = started
            .iter()
            .map(|child| {
                let link = child.parent.expect("a child");
                (link.role, link.index, child.task.as_ref().expect("task").branch.clone())
            })
            .collect();
        assert_eq!(
            shapes,
            [
                (Role::Attempt, 1, "fix-a1".into()),
                (Role::Attempt, 2, "fix-a2".into()),
                (Role::Attempt, 3, "fix-a3".into())
            ]
        );
        // All three at once (their paths overlap, but they are alternatives); never the parent.
        let claims: Vec<Claim> = (0..3).map(|i| claim(&store, 1 + i).expect("an attempt")).collect();
        assert!(claim(&store, 5).is_none());
        succeed(&store, &claims[0], "broke the tests", report("aaa", 5, false), 10);
        succeed(&store, &claims[1], "big fix", report("bbb", 30, true), 11);
        assert_eq!(get(&store, id).state, RunState::Running, "an attempt still works");
        succeed(&store, &claims[2], "small fix", report("ccc", 10, true), 12);

        let publishing = get(&store, id);
        assert_eq!(publishing.state, RunState::Queued);
        let staging = &publishing.task.as_ref().expect("task").staging;
        assert!(staging.skip_agent && !staging.hold);
        assert_eq!(staging.start_from, Some(Held { run: claims[2].run.id, commit: "ccc".into() }));
        assert_eq!(publishing.result.as_ref().expect("result").details["pick"]["winner"]["attempt"], 3);

        // The parent publishes like any run, and keeps its pick.
        let published = claim(&store, 20).expect("the parent");
        assert_eq!(published.run.id, id);
        let done = succeed(&store, &published, "opened the pull request", StagingReport::default(), 21);
        assert_eq!(done.state, RunState::Succeeded);
        assert_eq!(done.result.as_ref().expect("result").details["pick"]["winner"]["attempt"], 3);
    }

    #[test]
    fn a_parent_that_does_not_push_succeeds_with_the_held_commit_and_a_swept_attempt_tells_its_parent() {
        let (_cluster, store) = open();
        let id = parent(&store, 2, false);
        let first = claim(&store, 1).expect("an attempt");
        let second = claim(&store, 2).expect("an attempt");
        succeed(&store, &second, "fine", report("bbb", 2, true), 3);
        assert_eq!(get(&store, id).state, RunState::Running);
        // The first attempt's worker died: with three attempts it is queued again, then
        // its last lease runs out and the parent decides in the same sweep.
        for (sweep, claim_at) in [(700, 701), (1400, 1401)] {
            assert_eq!(store.sweep_now(at(sweep)).expect("sweep"), [first.run.id]);
            claim(&store, claim_at).expect("the attempt again");
        }
        assert_eq!(store.sweep_now(at(5000)).expect("sweep"), [first.run.id]);
        assert_eq!(get(&store, first.run.id).state, RunState::Failed);
        let ended = get(&store, id);
        assert_eq!(ended.state, RunState::Succeeded);
        assert_eq!(ended.result.expect("result").details["held"]["commit"], "bbb");
    }

    #[test]
    fn cancelling_a_parent_cancels_every_unfinished_child_and_fences_their_workers() {
        let (_cluster, store) = open();
        let id = parent(&store, 3, true);
        let first = claim(&store, 1).expect("an attempt");
        succeed(&store, &first, "done", report("a", 1, true), 2);
        let working = claim(&store, 3).expect("an attempt");
        let cancelled = store.cancel_now(id, "not needed", at(4)).expect("cancel");
        assert_eq!(cancelled.state, RunState::Cancelled);
        let states: Vec<RunState> = children(&store, id).iter().map(|child| child.state).collect();
        assert_eq!(states, [RunState::Succeeded, RunState::Cancelled, RunState::Cancelled]);
        assert_eq!(get(&store, working.run.id).reason, Some(format!("its parent {id} was cancelled")));
        let fenced = store.heartbeat_now(working.run.id, working.lease.epoch, LEASE, at(5));
        assert_eq!(
            fenced,
            Err(StoreError::WrongState { run: working.run.id, state: RunState::Cancelled, action: "heartbeat" })
        );
        assert!(claim(&store, 6).is_none());
    }

    #[test]
    fn a_parent_whose_attempts_all_fail_fails_and_cancelling_a_child_tells_its_parent() {
        let (_cluster, store) = open();
        let id = parent(&store, 2, true);
        let first = claim(&store, 1).expect("an attempt");
        succeed(&store, &first, "broke it", report("a", 1, false), 2);
        let unstarted = children(&store, id)[1].id;
        store.cancel_unstarted_now(unstarted, "not wanted", at(3)).expect("cancel").expect("it had not started");
        let failed = get(&store, id);
        assert_eq!(failed.state, RunState::Failed, "{:?}", failed.reason);
        assert!(claim(&store, 4).is_none());
    }
}

#[cfg(test)]
mod races {
    use super::super::leases::tests::{at, claim, get, open};
    use super::tests_support::parent_with_attempts;
    use super::*;
    use crate::parallel::{CheckOutcome, StagingReport};
    use crate::runs::{Completion, RunResult};
    use crate::store::StoreError;

    /// A passing attempt's result: its commit held, its check passed.
    fn held_commit(id: RunId) -> RunResult {
        let report = StagingReport {
            held: Some(format!("c{id}")),
            checks: vec![CheckOutcome { command: "cargo test".into(), exit_code: Some(0), tail: String::new() }],
            lines_changed: 1,
            files_changed: 1,
            ..StagingReport::default()
        };
        let mut result = RunResult::default();
        result.details.insert(StagingReport::DETAILS_KEY.into(), serde_json::to_value(report).expect("report"));
        result
    }

    #[test]
    fn children_ending_while_their_parent_is_cancelled_leave_every_run_finished_and_no_error_but_a_refusal() {
        let (_cluster, store) = open();
        // Bounded: five families, each raced once.
        for round in 0..5 {
            let id = parent_with_attempts(&store, 3);
            let claims: Vec<_> = (0..3).map(|i| claim(&store, round * 10 + i).expect("an attempt")).collect();
            let (completed, cancelled) = std::thread::scope(|scope| {
                let ending = scope.spawn(|| {
                    claims
                        .iter()
                        .map(|held| {
                            let done = Completion::Succeeded { result: held_commit(held.run.id) };
                            store.complete_now(held.run.id, held.lease.epoch, done, Vec::new(), at(100))
                        })
                        .collect::<Vec<_>>()
                });
                let cancelling = scope.spawn(|| store.cancel_now(id, "not needed", at(100)));
                (ending.join().expect("completes"), cancelling.join().expect("cancels"))
            });
            assert_eq!(cancelled.expect("a coordinating or publishing parent is cancelled").state, RunState::Cancelled);
            for (held, result) in claims.iter().zip(completed) {
                match result {
                    Ok(run) => assert_eq!(run.state, RunState::Succeeded),
                    Err(StoreError::WrongState { state: RunState::Cancelled, .. }) => {}
                    Err(other) => panic!("{}: {other}", held.run.id),
                }
                assert!(get(&store, held.run.id).state.is_finished());
            }
            assert_eq!(get(&store, id).state, RunState::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::super::PgStore;
    use super::super::leases::tests::{at, put, queued};
    use super::*;
    use crate::config::OutputFormat;
    use crate::netpolicy::NetworkPolicy;
    use crate::parallel::{AttemptsPlan, NoWinner, Plan, RoleAgent};
    use crate::task::{AgentCommand, PhasePolicies};

    pub fn agent(profile: &str) -> RoleAgent {
        RoleAgent {
            agent: AgentCommand {
                profile: profile.into(),
                argv: vec![profile.into()],
                plan_argv: None,
                env: Default::default(),
                output: OutputFormat::default(),
                paths: Vec::new(),
                pass_env: Vec::new(),
            },
            network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
        }
    }

    /// A parent trying `count` agents at once (`push`ing the pick or not), coordinating
    /// as ingest leaves it: running, no lease, its first children started in the same
    /// transaction.
    pub fn parent_with(store: &PgStore, count: usize, push: bool) -> RunId {
        let mut run = queued("probe", "fix", &["**"]);
        let task = run.task.as_mut().expect("task");
        task.push = push;
        task.plan = Some(Plan::Attempts(AttemptsPlan {
            agents: (0..count).map(|i| agent(&format!("agent{i}"))).collect(),
            check: Some("cargo test".into()),
            judge: None,
            on_no_winner: NoWinner::Fail,
        }));
        run.state = RunState::Running;
        run.started_at = Some(at(0));
        let id = put(store, &run);
        store.db.transaction(|tx| conduct(tx, id, at(0))).expect("the first children");
        id
    }

    pub fn parent_with_attempts(store: &PgStore, count: usize) -> RunId {
        parent_with(store, count, true)
    }
}
