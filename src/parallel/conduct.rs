//! The parent's decisions (docs/parallel.md, "How it runs"): given a parent run and the
//! records of its children, what happens next — wait, start children, publish a held
//! commit, or finish the parent. Pure: the store asks whenever a child ends and stores
//! the answer in the same commit, so the parent's progress is its children's records.

use serde_json::{Map, Value, json};

use super::{
    Answer, AnswerKind, AttemptsPlan, FanOutPlan, Held, JoinWhen, NoWinner, ParentLink, Plan, Role, RoleAgent,
    Staging, StagingReport, VerifyPlan,
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
            retry: self.flow.retry.clone(),
        };
        NewChild { link: ParentLink { run: self.parent, role, index }, task, flow }
    }

    fn attempts(&self, plan: &AttemptsPlan) -> Next {
        let attempts: Vec<&Run> = self.of_role(Role::Attempt).collect();
        let count = plan.agents.len() as u32;
        if attempts.is_empty() {
            let staging = Staging { hold: true, checks: plan.check.iter().cloned().collect(), ..Staging::default() };
            let children = plan.agents.iter().zip(1..).map(|(agent, index)| {
                let task = self.child_task(Role::Attempt, index, Some(agent), self.task.prompt.clone(), staging.clone());
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
                let why = match &plan.judge {
                    Some(_) if ranked.len() > 1 => format!("not picked by the judge (it picked {})", winner.run.id),
                    _ => format!("larger than {}", winner.run.id),
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
            let merge: Vec<Held> = ended.iter().filter_map(Ended::held).collect();
            if merge.is_empty() {
                return Next::failed("no child succeeded with a change to join", details);
            }
            let summaries: Vec<String> = ended
                .iter()
                .filter(|child| child.succeeded())
                .map(|child| format!("Child {} ({}):\n{}", index_of(child.run), child.run.id, untrusted(child.summary())))
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
            None => Next::failed(format!("the join ({}) left no commit", joiner.id), details),
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
