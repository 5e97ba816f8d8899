//! The parent's decisions (docs/parallel.md, "How it runs"): given a parent run and the
//! records of its children, what happens next — wait, start children, publish a held
//! commit, or finish the parent. Pure: the store asks whenever a child ends and stores
//! the answer in the same commit, so the parent's progress is its children's records.

use serde_json::{Map, Value, json};

use super::{
    Answer, AnswerKind, AttemptsPlan, FanOutPlan, Held, JoinWhen, NoWinner, ParentLink, Plan, Role, RoleAgent, Staging,
    StagingReport, VerifyPlan,
};
use crate::rules::helpers::untrusted;
use crate::runs::{Run, RunId, RunState};
use crate::task::{Flow, Task};

/// A child the parent starts: an ordinary queued run linked to it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChild {
    pub link: ParentLink,
    pub task: Task,
    pub flow: Flow,
}

/// What the parent does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// A child is still working.
    Wait,
    /// Start these children.
    Spawn(Vec<NewChild>),
    /// Push the held commit to the parent's branch (`details` go into its result).
    Publish { held: Held, summary: String, details: Map<String, Value> },
    /// The parent ends: succeeded (`reason` None) or failed with `reason`.
    Finish { succeeded: bool, reason: Option<String>, summary: String, details: Map<String, Value> },
}

impl Next {
    fn failed(reason: impl Into<String>, details: Map<String, Value>) -> Next {
        let reason = reason.into();
        Next::Finish { succeeded: false, summary: reason.clone(), reason: Some(reason), details }
    }
}

/// The next step of `parent` (a run whose task has a plan), given every child of it
/// (any order; follow-ups are ignored). With no children yet, it is the first ones.
pub fn next(parent: &Run, children: &[Run]) -> Next {
    let Some(task) = &parent.task else { return Next::failed("the parent has no task", Map::new()) };
    let Some(plan) = &task.plan else { return Next::failed("the parent has no plan", Map::new()) };
    let mut children: Vec<&Run> = children
        .iter()
        .filter(|child| child.parent.is_some_and(|link| link.run == parent.id && link.role.is_part_of_parent()))
        .collect();
    children.sort_by_key(|child| child.id);
    let family = Family { parent: parent.id, task, flow: &parent.flow, children };
    match plan {
        Plan::Attempts(plan) => family.attempts(plan),
        Plan::Verify(plan) => family.verify(plan),
        Plan::FanOut(plan) => family.fan_out(plan),
    }
}

/// The branch a child works on: `{branch}-a{i}` and so on (not `{branch}/a1`: git cannot
/// hold both `x` and `x/a1`).
pub fn child_branch(parent_branch: &str, role: Role, index: u32) -> String {
    match role {
        Role::Attempt => format!("{parent_branch}-a{index}"),
        Role::Author => format!("{parent_branch}-r{index}"),
        Role::Verify => format!("{parent_branch}-v{index}"),
        Role::Judge => format!("{parent_branch}-judge"),
        Role::Child => format!("{parent_branch}-c{index}"),
        Role::Join => format!("{parent_branch}-join"),
        Role::FollowUp => parent_branch.to_string(),
    }
}

/// The concurrency key children share: with the automation, group `{automation}/{parent}`.
pub fn children_concurrency_key(parent: RunId) -> String {
    parent.to_string()
}

struct Family<'a> {
    parent: RunId,
    task: &'a Task,
    flow: &'a Flow,
    children: Vec<&'a Run>,
}

/// What a child reported, read once.
struct Ended<'a> {
    run: &'a Run,
    report: Option<StagingReport>,
}

impl<'a> Ended<'a> {
    fn of(run: &'a Run) -> Ended<'a> {
        Ended { run, report: run.result.as_ref().and_then(StagingReport::of) }
    }

    fn succeeded(&self) -> bool {
        self.run.state == RunState::Succeeded
    }

    fn held(&self) -> Option<Held> {
        let commit = self.report.as_ref()?.held.clone()?;
        self.succeeded().then_some(Held { run: self.run.id, commit })
    }

    fn summary(&self) -> &str {
        self.run.result.as_ref().map_or("", |result| result.summary.as_str())
    }

    fn lines(&self) -> u64 {
        self.report.as_ref().map_or(0, |report| report.lines_changed)
    }

    fn files(&self) -> u64 {
        self.report.as_ref().map_or(0, |report| report.files_changed)
    }

    fn answer(&self) -> Option<&Answer> {
        self.report.as_ref()?.answer.as_ref()
    }

    /// Why the run did not succeed, as its record says.
    fn failure(&self) -> String {
        let reason = self.run.reason.as_deref().unwrap_or("no reason recorded");
        format!("{} ({reason})", self.run.state)
    }
}

impl<'a> Family<'a> {
    fn of_role(&self, role: Role) -> impl Iterator<Item = &'a Run> + '_ {
        self.children.iter().copied().filter(move |child| child.parent.is_some_and(|link| link.role == role))
    }

    fn find(&self, role: Role, index: u32) -> Option<&'a Run> {
        self.of_role(role).filter(|child| child.parent.is_some_and(|link| link.index == index)).last()
    }

    /// A child's task: the parent's, on its own branch, telling nobody, with `staging`.
    fn child_task(&self, role: Role, index: u32, agent: Option<&RoleAgent>, prompt: String, staging: Staging) -> Task {
        let mut task = self.task.clone();
        task.branch = child_branch(&self.task.branch, role, index);
        if let Some(agent) = agent {
            task.agent = agent.agent.clone();
            task.network = agent.network.clone();
        }
        task.prompt = prompt;
        task.notify = Vec::new();
        task.follows = None;
        task.plan = None;
        task.staging = staging;
        task
    }

    /// Children's flow: no dedupe or cooldown, the parent's retry, a group of their own.
    fn child(&self, role: Role, index: u32, task: Task, concurrency_limit: u32) -> NewChild {
        let flow = Flow {
            dedupe_key: None,
            dedupe_window: None,
            concurrency_key: Some(children_concurrency_key(self.parent)),
            concurrency_limit: concurrency_limit.max(1),
            overlap: Default::default(),
            cooldown: None,
            retry: self.flow.retry,
        };
        NewChild { link: ParentLink { run: self.parent, role, index }, task, flow }
    }

    fn attempts(&self, plan: &AttemptsPlan) -> Next {
        let attempts: Vec<&Run> = self.of_role(Role::Attempt).collect();
        let count = plan.agents.len() as u32;
        if attempts.is_empty() {
            let staging = Staging { hold: true, checks: plan.check.iter().cloned().collect(), ..Staging::default() };
            let children = plan.agents.iter().zip(1..).map(|(agent, index)| {
                let task =
                    self.child_task(Role::Attempt, index, Some(agent), self.task.prompt.clone(), staging.clone());
                self.child(Role::Attempt, index, task, count)
            });
            return Next::Spawn(children.collect());
        }
        if attempts.iter().any(|attempt| !attempt.state.is_finished()) {
            return Next::Wait;
        }
        let ended: Vec<Ended> = attempts.iter().map(|run| Ended::of(run)).collect();
        let ranked = rank(&ended);
        let mut reasons: Vec<(u32, String)> = ended.iter().filter_map(|attempt| not_a_candidate(attempt)).collect();
        let Some(first) = ranked.first() else {
            let details = pick_details(None, &ended, reasons);
            return match plan.on_no_winner {
                NoWinner::Fail => Next::failed(format!("no attempt of {count} passed"), details),
                NoWinner::ReportAll => Next::Finish {
                    succeeded: true,
                    reason: None,
                    summary: format!("no attempt of {count} passed; every attempt is reported"),
                    details,
                },
            };
        };
        let (winner, why) = match (&plan.judge, ranked.len()) {
            (Some(judge), 2..) => match self.find(Role::Judge, 0) {
                None => {
                    let candidates: Vec<u32> = ranked.iter().map(|attempt| index_of(attempt.run)).collect();
                    let listing: Vec<String> = ranked
                        .iter()
                        .map(|attempt| {
                            let size = format!("{} lines in {} files", attempt.lines(), attempt.files());
                            format!("Attempt {} ({size}):\n{}", index_of(attempt.run), untrusted(attempt.summary()))
                        })
                        .collect();
                    let prompt = format!("{}\n\n## Candidates\n\n{}", judge.prompt, listing.join("\n\n"));
                    let staging = Staging { answer: Some(AnswerKind::Pick { candidates }), ..Staging::default() };
                    let task = self.child_task(Role::Judge, 0, Some(&judge.agent), prompt, staging);
                    return Next::Spawn(vec![self.child(Role::Judge, 0, task, 1)]);
                }
                Some(judge) if !judge.state.is_finished() => return Next::Wait,
                Some(judge) => {
                    let verdict = Ended::of(judge);
                    let picked = match verdict.answer() {
                        Some(Answer::Pick { winner, reason }) if verdict.succeeded() => {
                            ranked.iter().find(|attempt| index_of(attempt.run) == *winner).map(|a| (a, reason.clone()))
                        }
                        _ => None,
                    };
                    let Some((winner, reason)) = picked else {
                        let why = if verdict.succeeded() { "no valid answer".to_string() } else { verdict.failure() };
                        reasons.extend(ranked.iter().map(|a| (index_of(a.run), "candidate".to_string())));
                        let details = pick_details(None, &ended, reasons);
                        return Next::failed(format!("failed pick: the judge {} gave {why}", judge.id), details);
                    };
                    (*winner, format!("picked by the judge: {reason}"))
                }
            },
            _ => (*first, "the smallest change".to_string()),
        };
        for other in &ranked {
            if other.run.id != winner.run.id {
                // Another ranked attempt means two or more: a judge, if any, was asked.
                let why = match &plan.judge {
                    Some(_) => format!("not picked by the judge (it picked {})", winner.run.id),
                    None => format!("larger than {}", winner.run.id),
                };
                reasons.push((index_of(other.run), why));
            }
        }
        reasons.push((index_of(winner.run), why));
        let held = winner.held().unwrap_or(Held { run: winner.run.id, commit: String::new() });
        let summary = format!("attempt {} ({}) won: {}", index_of(winner.run), winner.run.id, winner.summary());
        Next::Publish { held, summary, details: pick_details(Some(winner), &ended, reasons) }
    }

    fn verify(&self, plan: &VerifyPlan) -> Next {
        let round = self.of_role(Role::Author).filter_map(|run| run.parent).map(|link| link.index).max();
        let Some(round) = round else {
            let staging = Staging { hold: true, ..Staging::default() };
            let task = self.child_task(Role::Author, 1, None, self.task.prompt.clone(), staging);
            return Next::Spawn(vec![self.child(Role::Author, 1, task, 1)]);
        };
        let Some(author) = self.find(Role::Author, round) else { return Next::Wait };
        if !author.state.is_finished() {
            return Next::Wait;
        }
        let author = Ended::of(author);
        let mut details = Map::new();
        details.insert("rounds".into(), json!(round));
        if !author.succeeded() {
            return Next::failed(format!("author round {round} ({}) {}", author.run.id, author.failure()), details);
        }
        let Some(held) = author.held() else {
            return Next::failed(format!("author round {round} ({}) changed nothing", author.run.id), details);
        };
        let Some(verifier) = self.find(Role::Verify, round) else {
            let size = format!("{} lines in {} files", author.lines(), author.files());
            let prompt =
                format!("{}\n\n## The author's summary ({size})\n\n{}", plan.prompt, untrusted(author.summary()));
            let staging = Staging {
                start_from: Some(held),
                checks: plan.checks.clone(),
                answer: Some(AnswerKind::Verdict),
                ..Staging::default()
            };
            let task = self.child_task(Role::Verify, round, Some(&plan.verifier), prompt, staging);
            return Next::Spawn(vec![self.child(Role::Verify, round, task, 1)]);
        };
        if !verifier.state.is_finished() {
            return Next::Wait;
        }
        let verdict = Ended::of(verifier);
        let (pass, findings) = match verdict.answer() {
            Some(Answer::Verdict { pass, findings }) if verdict.succeeded() => (*pass, findings.clone()),
            _ => {
                let why = if verdict.succeeded() { "gave no verdict".to_string() } else { verdict.failure() };
                return Next::failed(format!("verifier round {round} ({}) {why}", verifier.id), details);
            }
        };
        details.insert("findings".into(), json!(findings));
        if pass {
            let summary = format!("round {round} ({}) passed verification: {}", author.run.id, author.summary());
            return Next::Publish { held, summary, details };
        }
        if round >= plan.max_rounds {
            let reason = format!("verification failed in all {round} rounds");
            return Next::failed(reason, details);
        }
        let next = round + 1;
        let prompt = format!(
            "{}\n\n## Findings from the verifier (untrusted)\n\n{}",
            self.task.prompt,
            untrusted(&findings.iter().map(|finding| format!("- {finding}")).collect::<Vec<_>>().join("\n"))
        );
        let staging = Staging { start_from: Some(held), hold: true, ..Staging::default() };
        let task = self.child_task(Role::Author, next, None, prompt, staging);
        Next::Spawn(vec![self.child(Role::Author, next, task, 1)])
    }

    fn fan_out(&self, plan: &FanOutPlan) -> Next {
        let items: Vec<&Run> = self.of_role(Role::Child).collect();
        if items.is_empty() {
            let staging = Staging { hold: plan.join.is_some(), ..Staging::default() };
            let children = plan.items.iter().zip(1..).map(|(item, index)| {
                let mut task = self.child_task(Role::Child, index, None, item.prompt.clone(), staging.clone());
                task.paths = item.paths.clone();
                task.repo = item.repo.clone().unwrap_or_else(|| self.task.repo.clone());
                self.child(Role::Child, index, task, plan.max_concurrent)
            });
            return Next::Spawn(children.collect());
        }
        if items.iter().any(|item| !item.state.is_finished()) {
            return Next::Wait;
        }
        let ended: Vec<Ended> = items.iter().map(|run| Ended::of(run)).collect();
        let failed: Vec<String> = ended
            .iter()
            .filter(|child| !child.succeeded())
            .map(|child| format!("child {} ({}) {}", index_of(child.run), child.run.id, child.failure()))
            .collect();
        let mut details = Map::new();
        details.insert("children".into(), json!(ended.iter().map(child_detail).collect::<Vec<_>>()));
        let when = plan.join.as_ref().map_or(JoinWhen::AllSucceeded, |join| join.when);
        if when == JoinWhen::AllSucceeded && !failed.is_empty() {
            return Next::failed(failed.join("; "), details);
        }
        let Some(join) = &plan.join else {
            let summary = format!("all {} children succeeded", ended.len());
            return Next::Finish { succeeded: true, reason: None, summary, details };
        };
        let Some(joiner) = self.find(Role::Join, 0) else {
            // A child that succeeded without a change (an audit, a report) still gives the
            // join its summary; with none succeeded there is nothing to join.
            if !ended.iter().any(Ended::succeeded) {
                return Next::failed("no child succeeded, so there is nothing to join", details);
            }
            let merge: Vec<Held> = ended.iter().filter_map(Ended::held).collect();
            let summaries: Vec<String> = ended
                .iter()
                .filter(|child| child.succeeded())
                .map(|child| {
                    format!("Child {} ({}):\n{}", index_of(child.run), child.run.id, untrusted(child.summary()))
                })
                .collect();
            let prompt = format!("{}\n\n## The children's summaries\n\n{}", join.prompt, summaries.join("\n\n"));
            let staging = Staging { merge, hold: true, ..Staging::default() };
            let task = self.child_task(Role::Join, 0, Some(&join.agent), prompt, staging);
            return Next::Spawn(vec![self.child(Role::Join, 0, task, 1)]);
        };
        if !joiner.state.is_finished() {
            return Next::Wait;
        }
        let joined = Ended::of(joiner);
        if !joined.succeeded() {
            return Next::failed(format!("the join ({}) {}", joiner.id, joined.failure()), details);
        }
        match joined.held() {
            Some(held) => Next::Publish { held, summary: joined.summary().to_string(), details },
            // Nothing to publish: the work was the children's and the join's reports.
            None => Next::Finish { succeeded: true, reason: None, summary: joined.summary().to_string(), details },
        }
    }
}

fn index_of(run: &Run) -> u32 {
    run.parent.map_or(0, |link| link.index)
}

/// The attempts that may win, best first: succeeded, checks passed, a held commit;
/// fewer lines changed, then fewer files, then the lower attempt number.
fn rank<'e, 'a>(ended: &'e [Ended<'a>]) -> Vec<&'e Ended<'a>> {
    let mut candidates: Vec<&Ended> = ended.iter().filter(|attempt| not_a_candidate(attempt).is_none()).collect();
    candidates.sort_by_key(|attempt| (attempt.lines(), attempt.files(), index_of(attempt.run)));
    candidates
}

/// Why an ended attempt cannot win, or `None` when it can.
fn not_a_candidate(attempt: &Ended) -> Option<(u32, String)> {
    let index = index_of(attempt.run);
    if !attempt.succeeded() {
        return Some((index, attempt.failure()));
    }
    let report = attempt.report.as_ref();
    if let Some(check) = report.and_then(|report| report.checks.iter().find(|check| check.exit_code != Some(0))) {
        let exit = check.exit_code.map_or("was killed".to_string(), |code| format!("exited {code}"));
        return Some((index, format!("check failed: `{}` {exit}", check.command)));
    }
    if attempt.held().is_none() {
        return Some((index, "no change".to_string()));
    }
    None
}

fn child_detail(child: &Ended) -> Value {
    json!({
        "index": index_of(child.run),
        "run": child.run.id,
        "state": child.run.state,
        "held": child.report.as_ref().and_then(|report| report.held.clone()),
        "lines_changed": child.lines(),
        "files_changed": child.files(),
    })
}

/// `details.pick`: the winner and every attempt with the reason it won or lost.
fn pick_details(winner: Option<&Ended>, ended: &[Ended], reasons: Vec<(u32, String)>) -> Map<String, Value> {
    let attempts: Vec<Value> = ended
        .iter()
        .map(|attempt| {
            let index = index_of(attempt.run);
            let reason = reasons.iter().rev().find(|(of, _)| *of == index).map(|(_, why)| why.clone());
            let mut detail = child_detail(attempt);
            detail["reason"] = json!(reason);
            detail
        })
        .collect();
    let winner = winner.map(|winner| {
        json!({
            "attempt": index_of(winner.run),
            "run": winner.run.id,
            "held": winner.report.as_ref().and_then(|report| report.held.clone()),
        })
    });
    let mut details = Map::new();
    details.insert("pick".into(), json!({ "winner": winner, "attempts": attempts }));
    details
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::config::{Approval, DurationSpec, OutputFormat};
    use crate::netpolicy::NetworkPolicy;
    use crate::parallel::{CheckOutcome, FanOutItem, JoinPlan, JudgePlan};
    use crate::runs::RunResult;
    use crate::task::{AgentCommand, PhasePolicies};

    const PARENT: RunId = RunId(1);

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

    fn parent(plan: Plan) -> Run {
        let main = agent("codex");
        let task = Task {
            automation: "probe".into(),
            agent: main.agent,
            repo: "/srv/git/api".into(),
            base: "main".into(),
            branch: "fix".into(),
            prompt: "fix it".into(),
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
            notify: vec![crate::delivery::Target::Webhook { url: "http://127.0.0.1:1/hook".into(), secret: None }],
            follows: None,
            plan: Some(plan),
            staging: Default::default(),
        };
        let mut flow = Flow::default();
        flow.retry.attempts = 2;
        flow.dedupe_key = Some("k".into());
        let created = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut run =
            Run::queued(PARENT, "probe".into(), "h".into(), vec!["e".into()], Some(task), flow, None, created);
        run.state = RunState::Running;
        run
    }

    /// A child `id` of the parent that ended in `state` with `report`.
    fn child(id: u64, role: Role, index: u32, state: RunState, report: Option<StagingReport>) -> Run {
        let mut run = parent(attempts(1, false));
        run.id = RunId(id);
        run.task.as_mut().unwrap().plan = None;
        run.parent = Some(ParentLink { run: PARENT, role, index });
        run.state = state;
        run.reason = (state == RunState::Failed).then(|| "it broke".to_string());
        run.result = report.map(|report| {
            let mut result = RunResult { summary: format!("summary of r{id}"), ..RunResult::default() };
            result.details.insert(StagingReport::DETAILS_KEY.into(), serde_json::to_value(report).unwrap());
            result
        });
        run
    }

    fn held(commit: &str, lines: u64, files: u64) -> StagingReport {
        StagingReport {
            held: Some(commit.into()),
            lines_changed: lines,
            files_changed: files,
            checks: vec![CheckOutcome { command: "t".into(), exit_code: Some(0), tail: String::new() }],
            ..StagingReport::default()
        }
    }

    fn done(id: u64, role: Role, index: u32, report: StagingReport) -> Run {
        child(id, role, index, RunState::Succeeded, Some(report))
    }

    fn attempts(count: usize, judge: bool) -> Plan {
        Plan::Attempts(AttemptsPlan {
            agents: (0..count).map(|i| agent(&format!("a{i}"))).collect(),
            check: Some("t".into()),
            judge: judge.then(|| JudgePlan { agent: agent("judge"), prompt: "pick one".into() }),
            on_no_winner: NoWinner::Fail,
        })
    }

    fn verify(max_rounds: u32) -> Plan {
        Plan::Verify(VerifyPlan {
            verifier: agent("rev"),
            checks: vec!["t".into()],
            max_rounds,
            prompt: "check".into(),
        })
    }

    fn fan_out(join: Option<JoinWhen>) -> Plan {
        let item = |path: &str| FanOutItem { prompt: format!("do {path}"), paths: vec![path.into()], repo: None };
        let mut other = item("b/**");
        other.repo = Some("/srv/git/web".into());
        Plan::FanOut(FanOutPlan {
            items: vec![item("a/**"), other],
            max_concurrent: 3,
            join: join.map(|when| JoinPlan { when, agent: agent("joiner"), prompt: "join".into() }),
        })
    }

    fn spawned(next: Next) -> Vec<NewChild> {
        match next {
            Next::Spawn(children) => children,
            other => panic!("expected children, got {other:?}"),
        }
    }

    fn published(next: Next) -> (Held, Map<String, Value>) {
        match next {
            Next::Publish { held, details, .. } => (held, details),
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    fn failure(next: Next) -> (String, Map<String, Value>) {
        match next {
            Next::Finish { succeeded: false, reason: Some(reason), details, .. } => (reason, details),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn reasons(details: &Map<String, Value>) -> Vec<String> {
        details["pick"]["attempts"].as_array().unwrap().iter().map(|a| a["reason"].as_str().unwrap().into()).collect()
    }

    #[test]
    fn the_first_attempts_are_the_parents_task_on_their_branches_with_their_agents_and_a_group_of_their_own() {
        let children = spawned(next(&parent(attempts(2, false)), &[]));
        assert_eq!(children.len(), 2);
        for (child, index) in children.iter().zip(1..) {
            assert_eq!(child.link, ParentLink { run: PARENT, role: Role::Attempt, index });
            assert_eq!(child.task.branch, format!("fix-a{index}"));
            assert_eq!(child.task.agent.profile, format!("a{}", index - 1));
            assert_eq!(child.task.prompt, "fix it");
            assert!(child.task.notify.is_empty() && child.task.plan.is_none() && child.task.follows.is_none());
            assert_eq!(child.task.staging, Staging { hold: true, checks: vec!["t".into()], ..Staging::default() });
            assert_eq!(child.flow.concurrency_key.as_deref(), Some("r1"));
            assert_eq!(child.flow.concurrency_limit, 2);
            assert_eq!((child.flow.dedupe_key.as_deref(), child.flow.cooldown), (None, None));
            assert_eq!(child.flow.retry.attempts, 2, "the parent's retry");
        }
    }

    #[test]
    fn attempts_wait_for_every_attempt_then_rank_by_lines_files_and_number() {
        let plan = parent(attempts(4, false));
        let working = [done(2, Role::Attempt, 1, held("x", 1, 1)), child(3, Role::Attempt, 2, RunState::Leased, None)];
        assert_eq!(next(&plan, &working), Next::Wait);
        let ended = [
            done(2, Role::Attempt, 1, held("a", 10, 3)),
            done(3, Role::Attempt, 2, held("b", 10, 2)),
            done(4, Role::Attempt, 3, held("c", 10, 2)),
            done(5, Role::Attempt, 4, held("d", 11, 1)),
        ];
        let (winner, details) = published(next(&plan, &ended));
        assert_eq!(winner, Held { run: RunId(3), commit: "b".into() });
        assert_eq!(reasons(&details), ["larger than r3", "the smallest change", "larger than r3", "larger than r3"]);
        assert_eq!(details["pick"]["winner"]["attempt"], 2);
    }

    #[test]
    fn attempts_that_failed_failed_their_check_or_changed_nothing_cannot_win() {
        let plan = parent(attempts(4, false));
        let mut check_failed = held("b", 1, 1);
        check_failed.checks[0].exit_code = Some(2);
        let mut killed = held("c", 1, 1);
        killed.checks[0].exit_code = None;
        let ended = [
            child(2, Role::Attempt, 1, RunState::Failed, None),
            done(3, Role::Attempt, 2, check_failed),
            done(4, Role::Attempt, 3, killed),
            done(5, Role::Attempt, 4, StagingReport::default()),
        ];
        let (reason, details) = failure(next(&plan, &ended));
        assert_eq!(reason, "no attempt of 4 passed");
        assert_eq!(
            reasons(&details),
            ["failed (it broke)", "check failed: `t` exited 2", "check failed: `t` was killed", "no change"]
        );
        assert_eq!(details["pick"]["winner"], Value::Null);
        let mut report_all = parent(attempts(4, false));
        if let Some(Plan::Attempts(plan)) = &mut report_all.task.as_mut().unwrap().plan {
            plan.on_no_winner = NoWinner::ReportAll;
        }
        match next(&report_all, &ended) {
            Next::Finish { succeeded: true, reason: None, details: reported, .. } => assert_eq!(reported, details),
            other => panic!("{other:?}"),
        }
        // One candidate is published without asking the judge.
        let judged = parent(attempts(2, true));
        let one = [child(2, Role::Attempt, 1, RunState::Cancelled, None), done(3, Role::Attempt, 2, held("z", 5, 1))];
        assert_eq!(published(next(&judged, &one)).0.commit, "z");
    }

    #[test]
    fn a_judge_gets_the_candidates_best_first_and_its_valid_answer_names_the_winner() {
        let plan = parent(attempts(3, true));
        let mut ended = vec![
            done(2, Role::Attempt, 1, held("a", 30, 1)),
            done(3, Role::Attempt, 2, held("b", 10, 1)),
            done(4, Role::Attempt, 3, StagingReport::default()),
        ];
        let judge = spawned(next(&plan, &ended)).remove(0);
        assert_eq!(judge.link, ParentLink { run: PARENT, role: Role::Judge, index: 0 });
        assert_eq!(judge.task.branch, "fix-judge");
        assert_eq!(judge.task.agent.profile, "judge");
        assert_eq!(judge.task.staging.answer, Some(AnswerKind::Pick { candidates: vec![2, 1] }));
        assert!(judge.task.prompt.starts_with("pick one"));
        let second = judge.task.prompt.find("Attempt 2 (10 lines in 1 files)").expect("attempt 2 listed");
        let first = judge.task.prompt.find("Attempt 1 (30 lines in 1 files)").expect("attempt 1 listed");
        assert!(second < first && judge.task.prompt.contains("<untrusted-data"));
        ended.push(child(5, Role::Judge, 0, RunState::Running, None));
        assert_eq!(next(&plan, &ended), Next::Wait);
        let answer = |winner: u32| StagingReport {
            answer: Some(Answer::Pick { winner, reason: "cleaner".into() }),
            ..StagingReport::default()
        };
        ended[3] = done(5, Role::Judge, 0, answer(1));
        let (winner, details) = published(next(&plan, &ended));
        assert_eq!(winner.commit, "a");
        assert_eq!(
            reasons(&details),
            ["picked by the judge: cleaner", "not picked by the judge (it picked r2)", "no change"]
        );
        // A winner that is no candidate, no answer, or a failed judge fails the pick.
        for judge in [
            done(5, Role::Judge, 0, answer(3)),
            done(5, Role::Judge, 0, StagingReport::default()),
            child(5, Role::Judge, 0, RunState::Failed, Some(answer(1))),
        ] {
            ended[3] = judge;
            let (reason, _) = failure(next(&plan, &ended));
            assert!(reason.starts_with("failed pick: the judge r5 gave "), "{reason}");
        }
    }

    fn verdict(pass: bool) -> StagingReport {
        StagingReport {
            answer: Some(Answer::Verdict { pass, findings: vec!["null panics".into()] }),
            ..StagingReport::default()
        }
    }

    #[test]
    fn verification_rounds_go_author_verifier_author_until_a_pass_or_the_last_round() {
        let plan = parent(verify(2));
        let author = spawned(next(&plan, &[])).remove(0);
        assert_eq!((author.link.role, author.link.index, author.task.branch.as_str()), (Role::Author, 1, "fix-r1"));
        assert_eq!(author.task.staging, Staging { hold: true, ..Staging::default() });
        assert_eq!(author.task.agent.profile, "codex", "authors keep the parent's agent");
        let mut children = vec![child(2, Role::Author, 1, RunState::Running, None)];
        assert_eq!(next(&plan, &children), Next::Wait);
        children[0] = done(2, Role::Author, 1, held("r1", 7, 2));
        let verifier = spawned(next(&plan, &children)).remove(0);
        assert_eq!(
            (verifier.link.role, verifier.link.index, verifier.task.branch.as_str()),
            (Role::Verify, 1, "fix-v1")
        );
        let start = Held { run: RunId(2), commit: "r1".into() };
        assert_eq!(
            verifier.task.staging,
            Staging {
                start_from: Some(start.clone()),
                checks: vec!["t".into()],
                answer: Some(AnswerKind::Verdict),
                ..Staging::default()
            }
        );
        assert!(verifier.task.prompt.starts_with("check") && verifier.task.prompt.contains("7 lines in 2 files"));
        children.push(child(3, Role::Verify, 1, RunState::Queued, None));
        assert_eq!(next(&plan, &children), Next::Wait);
        children[1] = done(3, Role::Verify, 1, verdict(false));
        let round2 = spawned(next(&plan, &children)).remove(0);
        assert_eq!((round2.link.index, round2.task.branch.as_str()), (2, "fix-r2"));
        assert_eq!(round2.task.staging, Staging { start_from: Some(start), hold: true, ..Staging::default() });
        assert!(round2.task.prompt.starts_with("fix it\n\n## Findings from the verifier (untrusted)"));
        assert!(round2.task.prompt.contains("- null panics"));
        children.push(done(4, Role::Author, 2, held("r2", 1, 1)));
        assert_eq!(spawned(next(&plan, &children))[0].link, ParentLink { run: PARENT, role: Role::Verify, index: 2 });
        children.push(done(5, Role::Verify, 2, verdict(true)));
        let (winner, details) = published(next(&plan, &children));
        assert_eq!(winner, Held { run: RunId(4), commit: "r2".into() });
        assert_eq!(details["rounds"], 2);
        children[3] = done(5, Role::Verify, 2, verdict(false));
        let (reason, details) = failure(next(&plan, &children));
        assert_eq!(reason, "verification failed in all 2 rounds");
        assert_eq!(details["findings"], json!(["null panics"]));
    }

    #[test]
    fn an_author_that_fails_or_changes_nothing_or_a_verifier_without_a_verdict_fails_the_parent() {
        let plan = parent(verify(3));
        let cases = [
            (vec![child(2, Role::Author, 1, RunState::Failed, None)], "author round 1 (r2) failed (it broke)"),
            (vec![done(2, Role::Author, 1, StagingReport::default())], "author round 1 (r2) changed nothing"),
            (
                vec![done(2, Role::Author, 1, held("h", 1, 1)), done(3, Role::Verify, 1, StagingReport::default())],
                "verifier round 1 (r3) gave no verdict",
            ),
            (
                vec![done(2, Role::Author, 1, held("h", 1, 1)), child(3, Role::Verify, 1, RunState::TimedOut, None)],
                "verifier round 1 (r3) timed_out (no reason recorded)",
            ),
            (
                // A verdict in the report of a verifier that failed is no verdict.
                vec![
                    done(2, Role::Author, 1, held("h", 1, 1)),
                    child(3, Role::Verify, 1, RunState::Failed, Some(verdict(true))),
                ],
                "verifier round 1 (r3) failed (it broke)",
            ),
        ];
        for (children, expected) in cases {
            assert_eq!(failure(next(&plan, &children)).0, expected);
        }
    }

    #[test]
    fn fan_out_children_get_their_items_and_a_join_merges_what_succeeded() {
        let plan = parent(fan_out(Some(JoinWhen::AllEnded)));
        let children = spawned(next(&plan, &[]));
        assert_eq!(children[0].task.paths, ["a/**"]);
        assert_eq!(children[0].task.repo, "/srv/git/api");
        assert_eq!(children[1].task.repo, "/srv/git/web");
        assert_eq!(children[1].task.prompt, "do b/**");
        assert_eq!(children[1].task.branch, "fix-c2");
        assert_eq!(children[1].flow.concurrency_limit, 3);
        assert!(children.iter().all(|child| child.task.staging == Staging { hold: true, ..Staging::default() }));
        let without_join = spawned(next(&parent(fan_out(None)), &[]));
        assert!(without_join.iter().all(|child| child.task.staging.is_plain()));

        let mut ended =
            vec![done(2, Role::Child, 1, held("c1", 1, 1)), child(3, Role::Child, 2, RunState::Running, None)];
        assert_eq!(next(&plan, &ended), Next::Wait);
        ended[1] = child(3, Role::Child, 2, RunState::Failed, None);
        let join = spawned(next(&plan, &ended)).remove(0);
        assert_eq!(
            (join.link.role, join.task.branch.as_str(), join.task.agent.profile.as_str()),
            (Role::Join, "fix-join", "joiner")
        );
        assert_eq!(join.task.staging.merge, [Held { run: RunId(2), commit: "c1".into() }]);
        assert!(
            join.task.staging.hold
                && join.task.prompt.starts_with("join")
                && join.task.prompt.contains("summary of r2")
        );
        assert!(!join.task.prompt.contains("summary of r3"));
        ended.push(child(4, Role::Join, 0, RunState::Leased, None));
        assert_eq!(next(&plan, &ended), Next::Wait);
        ended[2] = done(4, Role::Join, 0, held("joined", 2, 1));
        assert_eq!(published(next(&plan, &ended)).0, Held { run: RunId(4), commit: "joined".into() });
        ended[2] = done(4, Role::Join, 0, StagingReport::default());
        match next(&plan, &ended) {
            Next::Finish { succeeded: true, reason: None, .. } => {}
            other => panic!("a join that changed nothing ends the parent without a branch: {other:?}"),
        }
        ended[2] = child(4, Role::Join, 0, RunState::Failed, None);
        assert_eq!(failure(next(&plan, &ended)).0, "the join (r4) failed (it broke)");
    }

    #[test]
    fn a_failed_child_fails_a_fan_out_that_needs_them_all_and_one_without_a_join_ends_with_them() {
        let all = [done(2, Role::Child, 1, held("c1", 1, 1)), child(3, Role::Child, 2, RunState::Failed, None)];
        let (reason, details) = failure(next(&parent(fan_out(Some(JoinWhen::AllSucceeded))), &all));
        assert_eq!(reason, "child 2 (r3) failed (it broke)");
        assert_eq!(details["children"][0]["held"], "c1");
        assert_eq!(failure(next(&parent(fan_out(None)), &all)).0, "child 2 (r3) failed (it broke)");
        let succeeded = [done(2, Role::Child, 1, held("c1", 1, 1)), done(3, Role::Child, 2, StagingReport::default())];
        match next(&parent(fan_out(None)), &succeeded) {
            Next::Finish { succeeded: true, reason: None, summary, .. } => {
                assert_eq!(summary, "all 2 children succeeded")
            }
            other => panic!("{other:?}"),
        }
        let nothing =
            [child(2, Role::Child, 1, RunState::Failed, None), done(3, Role::Child, 2, StagingReport::default())];
        match next(&parent(fan_out(Some(JoinWhen::AllEnded))), &nothing) {
            Next::Spawn(join) => {
                let staging = &join[0].task.staging;
                assert!(staging.merge.is_empty(), "a child without a change gives its summary, not a commit");
                assert!(join[0].task.prompt.contains("Child 2 (r3)"));
            }
            other => panic!("{other:?}"),
        }
        let none =
            [child(2, Role::Child, 1, RunState::Failed, None), child(3, Role::Child, 2, RunState::Cancelled, None)];
        let (reason, _) = failure(next(&parent(fan_out(Some(JoinWhen::AllEnded))), &none));
        assert_eq!(reason, "no child succeeded, so there is nothing to join");
    }

    #[test]
    fn follow_ups_and_other_parents_children_are_not_the_parents_work() {
        let plan = parent(attempts(1, false));
        let mut follow_up = done(2, Role::FollowUp, 0, held("f", 1, 1));
        follow_up.parent = Some(ParentLink { run: PARENT, role: Role::FollowUp, index: 0 });
        let mut stranger = done(3, Role::Attempt, 1, held("s", 1, 1));
        stranger.parent = Some(ParentLink { run: RunId(99), role: Role::Attempt, index: 1 });
        assert_eq!(spawned(next(&plan, &[follow_up, stranger])).len(), 1, "still the first attempt");
        let mut no_plan = plan.clone();
        no_plan.task.as_mut().unwrap().plan = None;
        assert_eq!(failure(next(&no_plan, &[])).0, "the parent has no plan");
    }

    #[test]
    fn every_role_has_its_branch() {
        let branches: Vec<String> = Role::ALL.iter().map(|role| child_branch("b", *role, 2)).collect();
        assert_eq!(branches, ["b", "b-a2", "b-r2", "b-v2", "b-judge", "b-c2", "b-join"]);
    }
}
