//! Flow control at ingest: dedupe and coalescing, cooldown, and the overlap policy.
//! Pure decisions over facts a store gathers inside its atomic section, so every store
//! backend decides the same way.

use chrono::{DateTime, Utc};

use super::clock::later;
use super::{RunId, RunState, SkipReason};
use crate::config::Overlap;
use crate::task::Flow;

/// What the store knows that matters for one new run.
#[derive(Debug, Clone, Default)]
pub struct FlowFacts {
    /// The run holding this dedupe key, if its window has not ended, and its state.
    pub dedupe_holder: Option<(RunId, RunState)>,
    /// The latest run created in this group (not skipped), and when.
    pub last_created: Option<(RunId, DateTime<Utc>)>,
    /// How many runs of the group are pending or active.
    pub busy_count: usize,
    /// The oldest of them: at least as many as `needed_busy` asks for.
    pub oldest_busy: Vec<RunId>,
}

/// How many of the oldest busy runs `decide` needs to see: none for `queue`, which
/// never looks, so a long queue costs nothing at ingest.
pub fn needed_busy(flow: &Flow, busy_count: usize) -> usize {
    let limit = flow.concurrency_limit.max(1) as usize;
    match flow.overlap {
        Overlap::Queue => 0,
        Overlap::Skip => limit.min(busy_count),
        Overlap::CancelPrevious => (busy_count + 1).saturating_sub(limit),
    }
}

/// Whether `decide` can depend on the run's group: a cooldown, or an overlap policy
/// that looks at the group's busy runs. A store serialises ingest per group only then;
/// other runs of a group (`overlap: queue`, no cooldown) are always created.
pub fn needs_group_facts(flow: &Flow) -> bool {
    flow.cooldown.is_some() || !matches!(flow.overlap, Overlap::Queue)
}

/// What to do with a new run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A repeat event: it joins this pending run's event list.
    Coalesce(RunId),
    /// Record the run as skipped.
    Skip(SkipReason),
    /// Create the run; first cancel these (`overlap: cancel_previous`).
    Create { cancel: Vec<RunId> },
}

/// Dedupe first (a repeat never counts against cooldown or concurrency), then cooldown,
/// then the overlap policy.
pub fn decide(flow: &Flow, facts: &FlowFacts, now: DateTime<Utc>) -> Decision {
    if let (Some(key), Some((holder, state))) = (&flow.dedupe_key, facts.dedupe_holder) {
        return if state.is_pending() {
            Decision::Coalesce(holder)
        } else {
            Decision::Skip(SkipReason::Dedupe { key: key.clone(), duplicate_of: holder })
        };
    }
    if let (Some(cooldown), Some((last_run, created))) = (flow.cooldown, facts.last_created) {
        let until = later(created, cooldown.as_duration());
        if now < until {
            return Decision::Skip(SkipReason::Cooldown { last_run, until });
        }
    }
    let limit = flow.concurrency_limit.max(1) as usize;
    match flow.overlap {
        Overlap::Queue => Decision::Create { cancel: Vec::new() },
        Overlap::Skip if facts.busy_count >= limit => {
            Decision::Skip(SkipReason::Overlap { limit: flow.concurrency_limit, busy: facts.oldest_busy.clone() })
        }
        Overlap::Skip => Decision::Create { cancel: Vec::new() },
        Overlap::CancelPrevious => {
            // Make room for the new run by cancelling the oldest ones.
            let excess = (facts.busy_count + 1).saturating_sub(limit);
            Decision::Create { cancel: facts.oldest_busy.iter().take(excess).copied().collect() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DurationSpec, Retry};

    fn flow(overlap: Overlap, limit: u32) -> Flow {
        Flow {
            dedupe_key: None,
            dedupe_window: None,
            concurrency_key: None,
            concurrency_limit: limit,
            overlap,
            cooldown: None,
            retry: Retry::default(),
        }
    }

    #[test]
    fn only_a_cooldown_or_an_overlap_that_looks_needs_the_group() {
        assert!(!needs_group_facts(&flow(Overlap::Queue, 1)));
        assert!(needs_group_facts(&flow(Overlap::Skip, 1)));
        assert!(needs_group_facts(&flow(Overlap::CancelPrevious, 1)));
        let cooled = Flow { cooldown: Some(DurationSpec::from_secs(60)), ..flow(Overlap::Queue, 1) };
        assert!(needs_group_facts(&cooled));
        // A group that needs nothing is created whatever its facts say.
        let busy = FlowFacts {
            busy_count: 9,
            oldest_busy: vec![RunId(1)],
            last_created: Some((RunId(1), Utc::now())),
            ..FlowFacts::default()
        };
        assert_eq!(decide(&flow(Overlap::Queue, 1), &busy, Utc::now()), Decision::Create { cancel: Vec::new() });
    }

    #[test]
    fn a_repeat_joins_a_pending_run_and_is_skipped_once_the_run_started() {
        let flow = Flow { dedupe_key: Some("inc-1".into()), ..flow(Overlap::Queue, 1) };
        let pending = FlowFacts { dedupe_holder: Some((RunId(7), RunState::Queued)), ..FlowFacts::default() };
        assert_eq!(decide(&flow, &pending, Utc::now()), Decision::Coalesce(RunId(7)));
        let started = FlowFacts { dedupe_holder: Some((RunId(7), RunState::Running)), ..FlowFacts::default() };
        assert!(matches!(
            decide(&flow, &started, Utc::now()),
            Decision::Skip(SkipReason::Dedupe { duplicate_of: RunId(7), .. })
        ));
    }

    #[test]
    fn cooldown_skips_until_it_has_passed() {
        let flow = Flow { cooldown: Some(DurationSpec::from_secs(60)), ..flow(Overlap::Queue, 1) };
        let now = Utc::now();
        let facts = FlowFacts { last_created: Some((RunId(1), now)), ..FlowFacts::default() };
        assert!(matches!(decide(&flow, &facts, now + chrono::Duration::seconds(59)), Decision::Skip(_)));
        assert_eq!(decide(&flow, &facts, now + chrono::Duration::seconds(60)), Decision::Create { cancel: Vec::new() });
    }

    #[test]
    fn overlap_policies_at_the_limit() {
        let busy = FlowFacts { busy_count: 2, oldest_busy: vec![RunId(1), RunId(2)], ..FlowFacts::default() };
        let now = Utc::now();
        assert_eq!(decide(&flow(Overlap::Queue, 2), &busy, now), Decision::Create { cancel: Vec::new() });
        assert!(matches!(decide(&flow(Overlap::Skip, 2), &busy, now), Decision::Skip(SkipReason::Overlap { .. })));
        assert_eq!(decide(&flow(Overlap::Skip, 3), &busy, now), Decision::Create { cancel: Vec::new() });
        assert_eq!(decide(&flow(Overlap::CancelPrevious, 2), &busy, now), Decision::Create { cancel: vec![RunId(1)] });
        assert_eq!(
            decide(&flow(Overlap::CancelPrevious, 1), &busy, now),
            Decision::Create { cancel: vec![RunId(1), RunId(2)] }
        );
    }

    #[test]
    fn needed_busy_counts_what_each_policy_looks_at() {
        // (policy, limit, busy runs, how many of the oldest `decide` needs)
        let cases = [
            (Overlap::Queue, 2, 5, 0),
            (Overlap::Skip, 2, 5, 2),
            (Overlap::Skip, 3, 1, 1),
            (Overlap::Skip, 2, 0, 0),
            (Overlap::CancelPrevious, 2, 3, 2),
            (Overlap::CancelPrevious, 2, 2, 1),
            (Overlap::CancelPrevious, 3, 1, 0),
            (Overlap::CancelPrevious, 0, 2, 2),
        ];
        for (overlap, limit, busy, needed) in cases {
            assert_eq!(needed_busy(&flow(overlap, limit), busy), needed, "{overlap:?} limit {limit}, {busy} busy");
        }
    }

    /// The facts a store gathers for a group whose busy runs are `busy`, oldest first.
    fn gathered(flow: &Flow, busy: &[RunId]) -> FlowFacts {
        let oldest = busy[..needed_busy(flow, busy.len())].to_vec();
        FlowFacts { busy_count: busy.len(), oldest_busy: oldest, ..FlowFacts::default() }
    }

    #[test]
    fn with_a_limit_above_one_a_skip_names_the_busy_runs_and_a_cancel_keeps_the_limit() {
        let busy: Vec<RunId> = (1..=4).map(RunId).collect();
        let now = Utc::now();
        for limit in [2u32, 3] {
            let skip = flow(Overlap::Skip, limit);
            let expected = busy[..limit as usize].to_vec();
            let decision = decide(&skip, &gathered(&skip, &busy), now);
            assert_eq!(decision, Decision::Skip(SkipReason::Overlap { limit, busy: expected }), "limit {limit}");
            let cancel = flow(Overlap::CancelPrevious, limit);
            let Decision::Create { cancel: cancelled } = decide(&cancel, &gathered(&cancel, &busy), now) else {
                panic!("cancel_previous always creates");
            };
            // The oldest go, and the new run makes the group exactly full.
            assert_eq!(cancelled, busy[..busy.len() + 1 - limit as usize], "limit {limit}");
            assert_eq!(busy.len() - cancelled.len() + 1, limit as usize);
        }
    }
}
