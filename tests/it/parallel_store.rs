//! Parallel work in the store, without a worker: a parent run with a plan is ingested,
//! its children are claimed and completed with the store API (their `StagingReport`s
//! written by hand), and the parent's state, children and pick are read back.

use std::time::Duration;

use nightshift::config::{Approval, DurationSpec, OutputFormat};
use nightshift::netpolicy::NetworkPolicy;
use nightshift::parallel::{
    Answer, AnswerKind, AttemptsPlan, CheckOutcome, FanOutItem, FanOutPlan, Held, JoinPlan, JoinWhen, NoWinner, Plan,
    Role, RoleAgent, StagingReport, VerifyPlan,
};
use nightshift::runs::{Completion, Run, RunId, RunResult, RunState};
use nightshift::store::{Claim, NewRun, RunRecord, Store};
use nightshift::task::{AgentCommand, Flow, PhasePolicies, Task};
use serde_json::json;

use crate::backends::{Backend, on_both};
use crate::store::{at, event};

const LEASE: Duration = Duration::from_secs(600);

// Every test below runs on sled and on PostgreSQL.
on_both!(
    attempts_run_at_once_and_the_smallest_passing_one_is_published_with_every_reason,
    a_failed_verification_gives_the_findings_to_the_next_author_who_starts_from_the_last_round,
    a_verification_that_always_fails_fails_the_parent_after_the_last_round_with_the_findings,
    a_fan_out_runs_at_most_max_concurrent_children_keeps_overlapping_paths_apart_and_joins_the_successes,
    cancelling_a_parent_cancels_every_unfinished_child_in_the_same_call,
    a_remote_style_claim_never_gets_a_staged_run,
    a_restart_keeps_the_parent_its_children_their_index_and_its_progress,
    a_coordinating_parent_holds_no_worker_is_never_swept_and_status_says_it_waits_for_its_children,
    a_parent_that_does_not_push_succeeds_with_the_held_commit_and_retention_forgets_its_children_index,
);

fn agent(profile: &str) -> RoleAgent {
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

/// The parent's task: branch `fix`, the whole repository, pushed.
fn task(plan: Plan) -> Task {
    let main = agent("codex");
    Task {
        automation: "probe".into(),
        agent: main.agent,
        repo: "/srv/git/api".into(),
        base: "main".into(),
        branch: "fix".into(),
        prompt: "fix the bug".into(),
        setup: Vec::new(),
        secrets: Default::default(),
        network: main.network,
        paths: vec!["**".into()],
        timeout: DurationSpec::from_secs(60),
        setup_timeout: DurationSpec::from_secs(60),
        approval: Approval::default(),
        push: true,
        untrusted_input: false,
        limits: Default::default(),
        notify: Vec::new(),
        follows: None,
        plan: Some(plan),
        staging: Default::default(),
    }
}

fn ingest_parent(store: &dyn Store, task: Task, secs: i64) -> RunId {
    ingest_parent_with(store, task, Flow::default(), secs)
}

/// `ingest_parent` with the parent's flow (its children take its retry).
fn ingest_parent_with(store: &dyn Store, task: Task, flow: Flow, secs: i64) -> RunId {
    let new = NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Ok((task, flow)) };
    let outcome = store.ingest(&event(&format!("e{secs}"), json!({}), secs), vec![new], at(secs)).expect("ingest");
    outcome.runs[0].run
}

fn run(store: &dyn Store, id: RunId) -> Run {
    store.run(id).expect("read").expect("the run exists")
}

fn claim(store: &dyn Store, secs: i64) -> Claim {
    store.claim("local-1", LEASE, at(secs)).expect("claim").expect("a run to claim")
}

/// A report of a held commit changing `lines`, with checks that passed or not.
fn report(held: Option<&str>, lines: u64, check_passed: bool) -> StagingReport {
    StagingReport {
        held: held.map(str::to_string),
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

fn succeed(store: &dyn Store, claim: &Claim, summary: &str, report: StagingReport, secs: i64) -> Run {
    let mut result = RunResult { summary: summary.into(), ..RunResult::default() };
    result.details.insert(StagingReport::DETAILS_KEY.into(), serde_json::to_value(report).expect("report"));
    store
        .complete(claim.run.id, claim.lease.epoch, Completion::Succeeded { result }, Vec::new(), at(secs))
        .expect("complete")
}

fn verdict(pass: bool, findings: &[&str]) -> StagingReport {
    let findings = findings.iter().map(|finding| finding.to_string()).collect();
    StagingReport { answer: Some(Answer::Verdict { pass, findings }), ..StagingReport::default() }
}

fn link(run: &Run) -> (Role, u32) {
    let link = run.parent.expect("a child");
    (link.role, link.index)
}

fn attempts_plan(count: usize) -> Plan {
    Plan::Attempts(AttemptsPlan {
        agents: (0..count).map(|i| agent(&format!("agent{i}"))).collect(),
        check: Some("cargo test".into()),
        judge: None,
        on_no_winner: NoWinner::Fail,
    })
}

fn verify_plan(max_rounds: u32) -> Plan {
    Plan::Verify(VerifyPlan {
        verifier: agent("reviewer"),
        checks: vec!["cargo test".into()],
        max_rounds,
        prompt: "review it".into(),
    })
}

fn attempts_run_at_once_and_the_smallest_passing_one_is_published_with_every_reason(backend: &Backend) {
    let opened = backend.open();
    let store = opened.as_ref();
    let parent = ingest_parent(store, task(attempts_plan(3)), 0);
    let coordinating = run(store, parent);
    assert_eq!((coordinating.state, coordinating.lease.is_none()), (RunState::Running, true));
    let children = store.children(parent).expect("children");
    let shapes: Vec<(Role, u32, String, String)> = children
        .iter()
        .map(|child| {
            let task = child.task.as_ref().expect("task");
            assert!(task.staging.hold && task.staging.checks == ["cargo test"], "{:?}", task.staging);
            assert!(task.notify.is_empty() && task.plan.is_none());
            (link(child).0, link(child).1, task.branch.clone(), task.agent.profile.clone())
        })
        .collect();
    assert_eq!(
        shapes,
        [
            (Role::Attempt, 1, "fix-a1".into(), "agent0".into()),
            (Role::Attempt, 2, "fix-a2".into(), "agent1".into()),
            (Role::Attempt, 3, "fix-a3".into(), "agent2".into()),
        ]
    );
    // All three at once (their paths overlap, but they are alternatives); never the parent.
    let claims: Vec<Claim> = (0..3).map(|i| claim(store, 1 + i)).collect();
    assert!(store.claim("local-1", LEASE, at(5)).expect("claim").is_none());
    assert_eq!(claims.iter().map(|c| c.run.id).collect::<Vec<_>>(), children.iter().map(|c| c.id).collect::<Vec<_>>());
    succeed(store, &claims[0], "broke the tests", report(Some("aaa"), 5, false), 10);
    succeed(store, &claims[1], "big fix", report(Some("bbb"), 30, true), 11);
    assert_eq!(run(store, parent).state, RunState::Running, "an attempt still works");
    succeed(store, &claims[2], "small fix", report(Some("ccc"), 10, true), 12);

    let publishing = run(store, parent);
    assert_eq!(publishing.state, RunState::Queued);
    let staging = &publishing.task.as_ref().expect("task").staging;
    assert!(staging.skip_agent && !staging.hold);
    assert_eq!(staging.start_from, Some(Held { run: claims[2].run.id, commit: "ccc".into() }));
    let pick = &publishing.result.as_ref().expect("result").details["pick"];
    assert_eq!(pick["winner"]["attempt"], 3);
    let reasons: Vec<String> =
        pick["attempts"].as_array().expect("attempts").iter().map(|a| a["reason"].as_str().unwrap().into()).collect();
    assert_eq!(reasons[0], "check failed: `cargo test` exited 101");
    assert_eq!(reasons[1], format!("larger than {}", claims[2].run.id));
    assert_eq!(reasons[2], "the smallest change");

    // The parent publishes like any run, and keeps its pick.
    let published = claim(store, 20);
    assert_eq!(published.run.id, parent);
    let done = succeed(store, &published, "opened the pull request", StagingReport::default(), 21);
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.result.as_ref().expect("result").details["pick"]["winner"]["attempt"], 3);
}

fn a_failed_verification_gives_the_findings_to_the_next_author_who_starts_from_the_last_round(backend: &Backend) {
    let opened = backend.open();
    let store = opened.as_ref();
    let parent = ingest_parent(store, task(verify_plan(3)), 0);
    let author1 = claim(store, 1);
    assert_eq!((link(&author1.run), author1.run.task.as_ref().unwrap().branch.as_str()), ((Role::Author, 1), "fix-r1"));
    succeed(store, &author1, "first try", report(Some("r1tip"), 12, true), 2);

    let verifier1 = claim(store, 3);
    let task = verifier1.run.task.clone().expect("task");
    assert_eq!((link(&verifier1.run), task.branch.as_str()), ((Role::Verify, 1), "fix-v1"));
    assert_eq!(task.agent.profile, "reviewer");
    assert_eq!(task.staging.start_from, Some(Held { run: author1.run.id, commit: "r1tip".into() }));
    assert_eq!(task.staging.answer, Some(AnswerKind::Verdict));
    assert_eq!(task.staging.checks, ["cargo test"]);
    assert!(task.prompt.starts_with("review it") && task.prompt.contains("first try"), "{}", task.prompt);
    succeed(store, &verifier1, "found a problem", verdict(false, &["the null case panics"]), 4);

    let author2 = claim(store, 5);
    let task = author2.run.task.clone().expect("task");
    assert_eq!((link(&author2.run), task.branch.as_str()), ((Role::Author, 2), "fix-r2"));
    assert_eq!(task.staging.start_from, Some(Held { run: author1.run.id, commit: "r1tip".into() }));
    assert!(task.staging.hold);
    assert!(task.prompt.starts_with("fix the bug"), "{}", task.prompt);
    assert!(task.prompt.contains("Findings from the verifier (untrusted)"));
    assert!(task.prompt.contains("<untrusted-data") && task.prompt.contains("the null case panics"));
    succeed(store, &author2, "second try", report(Some("r2tip"), 14, true), 6);
    let verifier2 = claim(store, 7);
    succeed(store, &verifier2, "looks right", verdict(true, &[]), 8);

    let publishing = run(store, parent);
    assert_eq!(publishing.state, RunState::Queued);
    let staging = &publishing.task.as_ref().expect("task").staging;
    assert_eq!(staging.start_from, Some(Held { run: author2.run.id, commit: "r2tip".into() }));
    assert!(staging.skip_agent);
    let roles: Vec<(Role, u32)> = store.children(parent).expect("children").iter().map(link).collect();
    assert_eq!(roles, [(Role::Author, 1), (Role::Verify, 1), (Role::Author, 2), (Role::Verify, 2)]);
}

fn a_verification_that_always_fails_fails_the_parent_after_the_last_round_with_the_findings(backend: &Backend) {
    let opened = backend.open();
    let store = opened.as_ref();
    let parent = ingest_parent(store, task(verify_plan(2)), 0);
    for round in 0..2 {
        let secs = 1 + round * 4;
        let author = claim(store, secs);
        succeed(store, &author, "a try", report(Some(&format!("tip{round}")), 3, true), secs + 1);
        let verifier = claim(store, secs + 2);
        succeed(store, &verifier, "no", verdict(false, &["still wrong"]), secs + 3);
    }
    let failed = run(store, parent);
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(failed.reason.as_deref(), Some("verification failed in all 2 rounds"));
    assert_eq!(failed.result.as_ref().expect("result").details["findings"], json!(["still wrong"]));
    assert!(store.claim("local-1", LEASE, at(30)).expect("claim").is_none(), "no third round");
}

fn fan_out_plan() -> Plan {
    let item = |i: usize, path: &str| FanOutItem { prompt: format!("part {i}"), paths: vec![path.into()], repo: None };
    Plan::FanOut(FanOutPlan {
        items: vec![item(1, "a/**"), item(2, "a/x.rs"), item(3, "b/**"), item(4, "c/**"), item(5, "d/**")],
        max_concurrent: 2,
        join: Some(JoinPlan { when: JoinWhen::AllEnded, agent: agent("joiner"), prompt: "join them".into() }),
    })
}

fn a_fan_out_runs_at_most_max_concurrent_children_keeps_overlapping_paths_apart_and_joins_the_successes(
    backend: &Backend,
) {
    let opened = backend.open();
    let store = opened.as_ref();
    let parent = ingest_parent(store, task(fan_out_plan()), 0);
    let children = store.children(parent).expect("children");
    assert_eq!(children.len(), 5);
    assert_eq!(children[1].task.as_ref().unwrap().paths, ["a/x.rs"]);
    assert_eq!(children[1].task.as_ref().unwrap().branch, "fix-c2");
    let mut held: Vec<Claim> = Vec::new();
    let mut order = Vec::new();
    // Bounded: five children, each claimed once.
    for secs in 1..20 {
        if order.len() == 5 {
            break;
        }
        while let Some(claim) = store.claim("local-1", LEASE, at(secs)).expect("claim") {
            assert_eq!(link(&claim.run).0, Role::Child);
            held.push(claim);
            assert!(held.len() <= 2, "more than max_concurrent children at once");
        }
        let paths: Vec<&String> = held.iter().flat_map(|c| &c.run.task.as_ref().unwrap().paths).collect();
        assert!(!(paths.contains(&&"a/**".to_string()) && paths.contains(&&"a/x.rs".to_string())), "overlap");
        if held.is_empty() {
            break;
        }
        let done = held.remove(0);
        let index = link(&done.run).1;
        order.push(index);
        if index == 4 {
            let reason = "the agent gave up".to_string();
            store
                .complete(
                    done.run.id,
                    done.lease.epoch,
                    Completion::Failed { reason, retryable: false, result: None },
                    Vec::new(),
                    at(secs),
                )
                .expect("fail");
        } else {
            succeed(store, &done, &format!("did part {index}"), report(Some(&format!("c{index}")), 1, true), secs);
        }
    }
    assert_eq!(order.len(), 5, "every child ran once: {order:?}");
    let join = claim(store, 50);
    assert_eq!(link(&join.run), (Role::Join, 0));
    let task = join.run.task.clone().expect("task");
    let merged: Vec<String> = task.staging.merge.iter().map(|held| held.commit.clone()).collect();
    assert_eq!(merged, ["c1", "c2", "c3", "c5"], "the succeeded children, in order");
    assert!(task.staging.hold && task.prompt.starts_with("join them") && task.prompt.contains("did part 3"));
    succeed(store, &join, "joined", report(Some("joined"), 4, true), 51);
    let publishing = run(store, parent);
    assert_eq!(publishing.state, RunState::Queued);
    assert_eq!(
        publishing.task.as_ref().unwrap().staging.start_from.as_ref().map(|h| h.commit.as_str()),
        Some("joined")
    );
}

fn cancelling_a_parent_cancels_every_unfinished_child_in_the_same_call(backend: &Backend) {
    let opened = backend.open();
    let store = opened.as_ref();
    let parent = ingest_parent(store, task(attempts_plan(3)), 0);
    let first = claim(store, 1);
    succeed(store, &first, "done", report(Some("a"), 1, true), 2);
    let _working = claim(store, 3);
    store.cancel(parent, "not needed", at(4)).expect("cancel");
    let states: Vec<RunState> = store.children(parent).expect("children").iter().map(|c| c.state).collect();
    assert_eq!(states, [RunState::Succeeded, RunState::Cancelled, RunState::Cancelled]);
    assert_eq!(run(store, parent).state, RunState::Cancelled);
    let record = RunRecord::read(store, parent).expect("read").expect("record");
    assert_eq!(record.children.len(), 3);
    assert_eq!(
        serde_json::to_value(&record.children[1]).expect("json")["role"],
        "attempt",
        "the run JSON lists children with their role"
    );
}

fn a_remote_style_claim_never_gets_a_staged_run(backend: &Backend) {
    let opened = backend.open();
    let store = opened.as_ref();
    ingest_parent(store, task(attempts_plan(2)), 0);
    let mut plain = task(attempts_plan(1));
    plain.plan = None;
    plain.repo = "/srv/git/other".into();
    let new =
        NewRun { automation: "plain".into(), definition_hash: "h".into(), rendered: Ok((plain, Flow::default())) };
    let plain_run = store.ingest(&event("plain", json!({}), 1), vec![new], at(1)).expect("ingest").runs[0].run;
    let remote = store.claim_for("w@0123", LEASE, at(2), false).expect("claim").expect("the plain run");
    assert_eq!(remote.run.id, plain_run);
    assert!(store.claim_for("w@0123", LEASE, at(3), false).expect("claim").is_none());
    assert!(store.claim_for("local-1", LEASE, at(3), true).expect("claim").is_some(), "a local worker gets it");
}

fn a_restart_keeps_the_parent_its_children_their_index_and_its_progress(backend: &Backend) {
    let (parent, first) = {
        let opened = backend.open();
        let store = opened.as_ref();
        let parent = ingest_parent(store, task(attempts_plan(2)), 0);
        let first = claim(store, 1);
        succeed(store, &first, "one", report(Some("a"), 8, true), 2);
        (parent, first.run.id)
    };
    let opened = backend.open();
    let store = opened.as_ref();
    assert_eq!(run(store, parent).state, RunState::Running);
    let children = store.children(parent).expect("children");
    assert_eq!(children.iter().map(|c| c.state).collect::<Vec<_>>(), [RunState::Succeeded, RunState::Queued]);
    assert_eq!(children[0].id, first);
    let second = claim(store, 10);
    assert_eq!(link(&second.run), (Role::Attempt, 2));
    succeed(store, &second, "two", report(Some("b"), 3, true), 11);
    let publishing = run(store, parent);
    assert_eq!(publishing.state, RunState::Queued);
    assert_eq!(publishing.task.unwrap().staging.start_from.map(|held| held.commit), Some("b".into()));
}

fn a_coordinating_parent_holds_no_worker_is_never_swept_and_status_says_it_waits_for_its_children(backend: &Backend) {
    let opened = backend.open();
    let store = opened.as_ref();
    let mut one_attempt = Flow::default();
    one_attempt.retry.attempts = 1;
    let parent = ingest_parent_with(store, task(attempts_plan(2)), one_attempt, 0);
    let first = claim(store, 1);
    let queue = store.queue_status(at(2)).expect("status");
    let picture = nightshift::server::status::picture(queue, Default::default(), 1, Vec::new(), at(2), 100);
    assert_eq!(picture.active.iter().map(|run| run.id).collect::<Vec<_>>(), [first.run.id]);
    let waiting = picture.waiting.iter().find(|run| run.id == parent).expect("the parent is listed");
    assert_eq!(waiting.why.text, "waiting for its children");
    assert_eq!(serde_json::to_value(&waiting.why).expect("json")["reason"], "waiting_for_children");

    // Long after every lease ended: the parent has none to expire, its attempt's has, and
    // with no attempt left the attempt fails and the parent decides in the same sweep.
    let second = claim(store, 3);
    succeed(store, &second, "fine", report(Some("b"), 2, true), 4);
    let swept = store.sweep_expired_leases(at(10_000)).expect("sweep");
    assert_eq!(swept, [first.run.id]);
    assert_eq!(run(store, first.run.id).state, RunState::Failed);
    let publishing = run(store, parent);
    assert_eq!(publishing.state, RunState::Queued);
    assert_eq!(publishing.task.unwrap().staging.start_from.map(|held| held.run), Some(second.run.id));
}

fn a_parent_that_does_not_push_succeeds_with_the_held_commit_and_retention_forgets_its_children_index(
    backend: &Backend,
) {
    let opened = backend.open();
    let store = opened.as_ref();
    let mut quiet = task(attempts_plan(1));
    quiet.push = false;
    let parent = ingest_parent(store, quiet, 0);
    let only = claim(store, 1);
    succeed(store, &only, "done", report(Some("abc"), 2, true), 2);
    let ended = run(store, parent);
    assert_eq!(ended.state, RunState::Succeeded);
    assert_eq!(ended.result.expect("result").details["held"]["commit"], "abc");
    assert_eq!(store.children(parent).expect("children").len(), 1);

    // Days pass: both runs are older than a day and go, and the index with them.
    let retention = nightshift::config::Retention { runs: 1, days: 1 };
    let report = store.apply_retention(&retention, at(3 * 86_400)).expect("retention");
    assert_eq!(report.runs, 2);
    assert!(store.run(parent).expect("read").is_none());
    assert!(store.children(parent).expect("children").is_empty());
}
