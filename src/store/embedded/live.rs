//! The in-memory index of unfinished runs that flow control and claims consult: rebuilt
//! from disk at open, changed only together with the batch that persists the change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::runs::flow::{FlowFacts, needed_busy};
use crate::runs::outbox::{Entry as OutboxEntry, Key as OutboxKey};
use crate::runs::queue::{self, Wait};
use crate::runs::scope::paths_overlap;
use crate::runs::{Run, RunId, RunState};
use crate::task::Flow;

/// Who holds a dedupe key, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeMark {
    pub run: RunId,
    pub expires_at: DateTime<Utc>,
}

/// The latest run created in a group, for cooldowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCreated {
    pub run: RunId,
    pub at: DateTime<Utc>,
    /// When the cooldown it starts ends; the mark may be forgotten after that.
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct LiveRun {
    pub run: Run,
    /// The sequence numbers the run's next activity and next log chunk get.
    pub next_activity: u64,
    pub next_log: u64,
}

impl LiveRun {
    /// A run with no activities and no log yet.
    pub fn new(run: Run) -> LiveRun {
        LiveRun { run, next_activity: 0, next_log: 0 }
    }
}

#[derive(Debug, Default)]
pub struct Live {
    /// Boxed, so growing the map moves pointers rather than whole runs; ordered, so a
    /// page of the newest is read from the end without looking at the rest.
    runs: BTreeMap<RunId, Box<LiveRun>>,
    queued: BTreeSet<RunId>,
    /// Unfinished runs per group, oldest first.
    groups: HashMap<String, BTreeSet<RunId>>,
    /// Leased or running runs per group.
    active: HashMap<String, u32>,
    /// Leased or running runs per repository, whose `paths` a claim checks.
    active_in_repo: HashMap<String, BTreeSet<RunId>>,
    /// Unfinished runs that are part of a parent (docs/parallel.md), per parent.
    children: HashMap<RunId, BTreeSet<RunId>>,
    pub dedupe: HashMap<(String, String), DedupeMark>,
    pub last_created: HashMap<String, LastCreated>,
    pub next_run: u64,
    /// Automations that have had memory entries since the store opened: reading the
    /// memory of any other is an empty answer without a scan (every ingest asks).
    pub with_memory: HashSet<String>,
    /// Every epoch handed out from now on is above this (it grows with each open).
    pub epoch_floor: u64,
    /// Outbox messages not yet sent or failed, with whether an attempt may have reached
    /// the target unrecorded (found in flight at open). Every unsettled message is here,
    /// so the sender never scans sled and a message not here is settled.
    pub outbox: BTreeMap<OutboxKey, (OutboxEntry, bool)>,
    /// Finished runs stored, by state (`RunState::ALL`'s order); `keys::FINISHED_COUNTS`
    /// on disk.
    pub finished: [u64; RunState::ALL.len()],
}

/// A state's place in `Live::finished`.
pub fn state_slot(state: RunState) -> usize {
    RunState::ALL.iter().position(|known| *known == state).unwrap_or(0)
}

impl Live {
    pub fn get(&self, id: RunId) -> Option<&LiveRun> {
        self.runs.get(&id).map(|live| live.as_ref())
    }

    pub fn runs(&self) -> impl Iterator<Item = &LiveRun> {
        self.runs.values().map(|live| live.as_ref())
    }

    /// Unfinished runs, newest first.
    pub fn runs_newest_first(&self) -> impl Iterator<Item = &LiveRun> {
        self.runs.values().rev().map(|live| live.as_ref())
    }

    /// How many unfinished runs are in each unfinished state (every one listed, zeros
    /// too), counted from the index without decoding anything.
    pub fn count_by_state(&self) -> Vec<(RunState, u64)> {
        let mut counts: Vec<(RunState, u64)> =
            RunState::ALL.into_iter().filter(|state| !state.is_finished()).map(|state| (state, 0)).collect();
        for live in self.runs.values() {
            if let Some((_, count)) = counts.iter_mut().find(|(state, _)| *state == live.run.state) {
                *count += 1;
            }
        }
        counts
    }

    pub fn allocate_id(&mut self) -> RunId {
        self.next_run += 1;
        RunId(self.next_run)
    }

    /// Puts an unfinished run in (or replaces it); a finished one is taken out.
    pub fn put(&mut self, entry: LiveRun) {
        let run = &entry.run;
        let id = run.id;
        self.remove(id);
        if run.state.is_finished() {
            return;
        }
        let group = run.group();
        if run.state == RunState::Queued {
            self.queued.insert(id);
        }
        if queue::holds_worker(run) {
            *self.active.entry(group.clone()).or_default() += 1;
            if let Some(task) = &run.task {
                self.active_in_repo.entry(task.repo.clone()).or_default().insert(id);
            }
        }
        self.groups.entry(group).or_default().insert(id);
        if let Some(parent) = part_of(run) {
            self.children.entry(parent).or_default().insert(id);
        }
        self.runs.insert(id, Box::new(entry));
    }

    pub fn remove(&mut self, id: RunId) -> Option<LiveRun> {
        let old = *self.runs.remove(&id)?;
        let group = old.run.group();
        self.queued.remove(&id);
        if queue::holds_worker(&old.run)
            && let Some(count) = self.active.get_mut(&group)
        {
            *count = count.saturating_sub(1);
        }
        if queue::holds_worker(&old.run)
            && let Some(task) = &old.run.task
            && let Some(members) = self.active_in_repo.get_mut(&task.repo)
        {
            members.remove(&id);
            if members.is_empty() {
                self.active_in_repo.remove(&task.repo);
            }
        }
        if let Some(members) = self.groups.get_mut(&group) {
            members.remove(&id);
            if members.is_empty() {
                self.groups.remove(&group);
                self.active.remove(&group);
            }
        }
        if let Some(parent) = part_of(&old.run)
            && let Some(members) = self.children.get_mut(&parent)
        {
            members.remove(&id);
            if members.is_empty() {
                self.children.remove(&parent);
            }
        }
        Some(old)
    }

    /// The unfinished runs that are part of `parent`, oldest first.
    pub fn unfinished_children(&self, parent: RunId) -> Vec<RunId> {
        self.children.get(&parent).map(|members| members.iter().copied().collect()).unwrap_or_default()
    }

    /// What flow control needs to know about a new run of `automation` in `group`.
    /// `finished_state` looks up a dedupe holder that is no longer live.
    pub fn facts(
        &self,
        automation: &str,
        group: &str,
        flow: &Flow,
        now: DateTime<Utc>,
        finished_state: impl Fn(RunId) -> RunState,
    ) -> FlowFacts {
        let dedupe_holder = flow
            .dedupe_key
            .as_deref()
            .and_then(|key| self.dedupe.get(&(automation.to_string(), key.to_string())))
            .filter(|mark| mark.expires_at > now)
            .map(|mark| {
                let state = self.runs.get(&mark.run).map_or_else(|| finished_state(mark.run), |live| live.run.state);
                (mark.run, state)
            });
        let members = self.groups.get(group);
        let busy_count = members.map_or(0, |m| m.len());
        let oldest_busy = members.into_iter().flatten().take(needed_busy(flow, busy_count)).copied().collect();
        let last_created = self.last_created.get(group).map(|last| (last.run, last.at));
        FlowFacts { dedupe_holder, last_created, busy_count, oldest_busy }
    }

    /// The oldest queued run that may start now (`runs::queue`): its retry wait is over,
    /// its group is below its concurrency limit, and no leased or running run of its
    /// repository is on its branch or has `paths` that overlap its own. The runs passed
    /// over stay queued, in their place.
    /// Runs whose staging is not plain go only to a claimant that may take them
    /// (`staged`: the server's local workers, which hold the held commits' mirror).
    pub fn next_claimable(&self, now: DateTime<Utc>, staged: bool) -> Option<RunId> {
        let offered = self.queued_runs().filter(|run| staged || queue::plain(run));
        let turns = queue::turns(offered, self, now, true);
        turns.last().filter(|(_, wait)| wait.is_none()).map(|(run, _)| run.id)
    }

    /// Every queued run, oldest first, with why it waits (`None`: a claim takes it).
    pub fn turns(&self, now: DateTime<Utc>) -> Vec<(&Run, Option<Wait>)> {
        queue::turns(self.queued_runs(), self, now, false)
    }

    fn queued_runs(&self) -> impl Iterator<Item = &Run> {
        self.queued.iter().filter_map(|id| self.runs.get(id)).map(|live| &live.run)
    }

    /// Leased or running runs whose lease ended at or before `now`.
    pub fn expired_leases(&self, now: DateTime<Utc>) -> Vec<RunId> {
        let mut expired: Vec<RunId> = self
            .runs
            .values()
            .filter(|live| live.run.state.is_active() && live.run.lease.as_ref().is_some_and(|l| l.expires_at <= now))
            .map(|live| live.run.id)
            .collect();
        expired.sort();
        expired
    }
}

/// The parent `run` is part of (a follow-up is not part of the run it follows).
fn part_of(run: &Run) -> Option<RunId> {
    run.parent.filter(|link| link.role.is_part_of_parent()).map(|link| link.run)
}

/// What the claim rules ask of the leased and running runs, from the index.
impl queue::Active for Live {
    fn in_group(&self, group: &str) -> u32 {
        self.active.get(group).copied().unwrap_or(0)
    }

    /// A leased or running run of `repo` on `branch` (a follow-up waits for the run it
    /// follows) or that may change a file in `paths`.
    fn conflict(&self, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)> {
        self.conflict_among(repo, branch, paths, |_| true)
    }

    /// Attempts of one best-of-N do not wait for each other's `paths`.
    fn conflict_for(&self, asking: &Run, repo: &str, branch: &str, paths: &[String]) -> Option<(RunId, bool)> {
        self.conflict_among(repo, branch, paths, |other| !queue::alternatives(asking, other))
    }
}

impl Live {
    fn conflict_among(
        &self,
        repo: &str,
        branch: &str,
        paths: &[String],
        counts: impl Fn(&Run) -> bool,
    ) -> Option<(RunId, bool)> {
        let active = self.active_in_repo.get(repo)?;
        active.iter().find_map(|id| {
            let run = &self.runs.get(id)?.run;
            let task = run.task.as_ref()?;
            let conflicts = task.branch == branch || (paths_overlap(paths, &task.paths) && counts(run));
            conflicts.then_some((*id, task.branch == branch))
        })
    }
}
