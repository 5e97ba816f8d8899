//! The misfire decision, pure: which slots of a cron trigger fire now and which are
//! recorded as skipped, given the last slot handled and the time.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

use crate::triggers::cron::{CronTrigger, MisfirePolicy};

/// At most this many due slots are looked at in one plan; older ones are counted as
/// skipped without being listed (a per-second schedule down for a day has 86,400).
pub const SCAN_LIMIT: usize = 10_000;

/// What to do with the slots in (last, now].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slots to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Slots skipped by the misfire policy, oldest first (only those scanned).
    pub skipped: Vec<DateTime<Utc>>,
    /// Due slots beyond `SCAN_LIMIT`, skipped without being listed.
    pub skipped_unlisted: u64,
    /// The newest due slot: the next plan starts after it.
    pub newest: Option<DateTime<Utc>>,
}

/// Plans the slots of `trigger` after `last` up to `now`. A slot no older than the
/// trigger's `misfire_grace` is on time and fires; older ones were missed while the
/// engine was down, and the policy decides: `skip` fires none of them, `run_once` the
/// newest (unless an on-time slot already fires), `run_all` the newest `max_catchup`.
pub fn plan(trigger: &CronTrigger, last: DateTime<Utc>, now: DateTime<Utc>) -> Result<SlotPlan, String> {
    let due = due_slots(trigger, last, now)?;
    let unlisted = due.unlisted;
    let due: Vec<DateTime<Utc>> = due.slots.into_iter().rev().collect();
    let newest = due.first().copied();
    let on_time_count = due.iter().take_while(|slot| is_on_time(trigger, **slot, now)).count();
    let (on_time, missed) = due.split_at(on_time_count);
    let catch_up = match trigger.misfire {
        MisfirePolicy::Skip => 0,
        MisfirePolicy::RunOnce => usize::from(on_time.is_empty()),
        MisfirePolicy::RunAll => trigger.max_catchup as usize,
    };
    let catch_up = catch_up.min(missed.len());
    let mut fire: Vec<DateTime<Utc>> = on_time.iter().chain(&missed[..catch_up]).copied().collect();
    let mut skipped: Vec<DateTime<Utc>> = missed[catch_up..].to_vec();
    fire.reverse();
    skipped.reverse();
    Ok(SlotPlan { fire, skipped, skipped_unlisted: unlisted, newest })
}

/// Walking forward more slots than this in one plan, the walk jumps ahead to the last
/// `SCAN_LIMIT` slots before now (an estimate from the slots' spacing).
const MAX_STEPS: u64 = 200_000;

struct DueSlots {
    /// Oldest first, at most `SCAN_LIMIT`, the newest ones.
    slots: VecDeque<DateTime<Utc>>,
    /// Due slots older than those, counted (after a jump, those jumped over are
    /// estimated from the slots' spacing).
    unlisted: u64,
    /// How many slots the walk went through: the work one plan did.
    walked: u64,
}

/// The slots in (last, now], walked forward from `last` by the trigger's `Slots` (the
/// walk `nightshift schedule` prints), so both agree at daylight saving changes.
fn due_slots(trigger: &CronTrigger, last: DateTime<Utc>, now: DateTime<Utc>) -> Result<DueSlots, String> {
    let mut due = DueSlots { slots: VecDeque::new(), unlisted: 0, walked: 0 };
    let mut from = last;
    let mut jumped = false;
    'walk: loop {
        for slot in trigger.slots_after(from)? {
            if slot > now {
                break 'walk;
            }
            due.slots.push_back(slot);
            if due.slots.len() > SCAN_LIMIT {
                due.slots.pop_front();
                due.unlisted += 1;
            }
            due.walked += 1;
            if due.walked == MAX_STEPS && !jumped {
                // Far behind: skip to about SCAN_LIMIT slots before now.
                let spacing = slot.signed_duration_since(last) / i32::try_from(MAX_STEPS).unwrap_or(i32::MAX);
                let ahead = now - spacing * i32::try_from(SCAN_LIMIT).unwrap_or(i32::MAX);
                if ahead > slot {
                    jumped = true;
                    let jumped_over = (ahead - slot).num_milliseconds() / spacing.num_milliseconds().max(1);
                    due.unlisted += due.slots.len() as u64 + u64::try_from(jumped_over).unwrap_or(0);
                    due.slots.clear();
                    from = ahead;
                    continue 'walk;
                }
            }
        }
        break;
    }
    Ok(due)
}

/// Whether `slot`, firing at `now`, is no later than the trigger's `misfire_grace`.
pub fn is_on_time(trigger: &CronTrigger, slot: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let grace = Duration::from_std(trigger.misfire_grace.as_duration()).unwrap_or(Duration::MAX);
    now.signed_duration_since(slot) <= grace
}

/// The first slot of `trigger` strictly after `after`.
pub fn next_slot(trigger: &CronTrigger, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    trigger.slots_after(after).ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(schedule: &str, misfire: &str, extra: serde_json::Value) -> CronTrigger {
        let mut value = serde_json::json!({"schedule": schedule, "misfire": misfire, "misfire_grace": "5m"});
        value.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn an_on_time_slot_fires_under_every_policy() {
        for policy in ["skip", "run_once", "run_all"] {
            let plan = plan(
                &trigger("0 9 * * *", policy, serde_json::json!({})),
                at("2026-11-22T08:00:00Z"),
                at("2026-11-22T09:00:00.020Z"),
            )
            .unwrap();
            assert_eq!(plan.fire, [at("2026-11-22T09:00:00Z")], "{policy}");
            assert!(plan.skipped.is_empty());
        }
    }

    #[test]
    fn missed_slots_follow_the_policy() {
        // Down from 08:00 on the 20th until 12:00 on the 22nd: the 09:00 slots of the
        // 20th, 21st and 22nd were missed (all older than the 5 minute grace).
        let (last, now) = (at("2026-11-20T08:00:00Z"), at("2026-11-22T12:00:00Z"));
        let missed = ["2026-11-20T09:00:00Z", "2026-11-21T09:00:00Z", "2026-11-22T09:00:00Z"].map(at);
        let skip = plan(&trigger("0 9 * * *", "skip", serde_json::json!({})), last, now).unwrap();
        assert_eq!((skip.fire.as_slice(), skip.skipped.as_slice()), (&[][..], &missed[..]));
        let once = plan(&trigger("0 9 * * *", "run_once", serde_json::json!({})), last, now).unwrap();
        assert_eq!((once.fire.as_slice(), once.skipped.as_slice()), (&missed[2..], &missed[..2]));
        let all = plan(&trigger("0 9 * * *", "run_all", serde_json::json!({"max_catchup": 2})), last, now).unwrap();
        assert_eq!((all.fire.as_slice(), all.skipped.as_slice()), (&missed[1..], &missed[..1]));
        assert_eq!(all.newest, Some(missed[2]));
    }

    #[test]
    fn run_once_does_not_add_a_catch_up_when_a_slot_is_on_time() {
        let plan = plan(
            &trigger("0 9 * * *", "run_once", serde_json::json!({})),
            at("2026-11-20T08:00:00Z"),
            at("2026-11-22T09:04:00Z"),
        )
        .unwrap();
        assert_eq!(plan.fire, [at("2026-11-22T09:00:00Z")]);
        assert_eq!(plan.skipped.len(), 2);
    }

    #[test]
    fn slots_already_handled_are_not_planned_again() {
        let trigger = trigger("0 9 * * *", "run_all", serde_json::json!({}));
        let plan = plan(&trigger, at("2026-11-22T09:00:00Z"), at("2026-11-22T09:00:30Z")).unwrap();
        assert_eq!(plan, SlotPlan::default());
    }

    #[test]
    fn a_long_outage_of_a_frequent_schedule_is_bounded() {
        let trigger = trigger("* * * * * *", "skip", serde_json::json!({}));
        let (last, now) = (at("2026-11-01T00:00:00Z"), at("2026-11-22T00:00:00Z"));
        let plan = plan(&trigger, last, now).unwrap();
        // 300 on-time seconds fire (the grace is 5 minutes), the rest are skipped: the
        // newest listed, the older 21 days of seconds counted.
        assert_eq!(plan.fire.len(), 301);
        assert_eq!(plan.skipped.len(), SCAN_LIMIT - 301);
        assert_eq!(plan.skipped_unlisted, 21 * 86_400 - SCAN_LIMIT as u64);
        assert_eq!(plan.newest, Some(now));
        // The walk jumped: it went through MAX_STEPS slots and then the last SCAN_LIMIT,
        // not 1.8 million.
        let due = due_slots(&trigger, last, now).unwrap();
        assert_eq!(due.walked, MAX_STEPS + SCAN_LIMIT as u64);
    }

    #[test]
    fn a_short_outage_lists_every_slot() {
        // Two slots a minute apart, a day apart: an early jump (estimated from the first
        // minute's spacing) would lose most of these 17 missed slots.
        let trigger = trigger("0,1 9 * * *", "skip", serde_json::json!({}));
        let plan = plan(&trigger, at("2026-11-01T09:00:00Z"), at("2026-11-09T12:00:00Z")).unwrap();
        assert_eq!((plan.fire.len(), plan.skipped.len(), plan.skipped_unlisted), (0, 17, 0));
        assert_eq!(plan.skipped[0], at("2026-11-01T09:01:00Z"));
        assert_eq!(plan.skipped[16], at("2026-11-09T09:01:00Z"));
    }

    #[test]
    fn the_oldest_slots_beyond_the_scan_limit_are_counted() {
        // 10,060 minutes of a per-minute schedule: the newest SCAN_LIMIT are listed.
        let trigger = trigger("* * * * *", "skip", serde_json::json!({}));
        let last = at("2026-11-01T00:00:00Z");
        let now = last + Duration::minutes(SCAN_LIMIT as i64 + 60);
        let plan = plan(&trigger, last, now).unwrap();
        assert_eq!(plan.skipped_unlisted, 60);
        assert_eq!(plan.fire.len() + plan.skipped.len(), SCAN_LIMIT);
        assert_eq!(plan.skipped[0], last + Duration::minutes(61));
    }

    #[test]
    fn the_next_slot_is_the_one_schedule_prints() {
        // `0 2,14 * * *` in New York: 02:00 on the spring-forward day runs at 03:00 EDT.
        let twice = trigger("0 2,14 * * *", "skip", serde_json::json!({"timezone": "America/New_York"}));
        assert_eq!(next_slot(&twice, at("2026-03-07T19:00:00Z")), Some(at("2026-03-08T07:00:00Z")));
        let printed = twice.next_slots(at("2026-03-07T19:00:00Z"), 1).unwrap()[0].with_timezone(&Utc);
        assert_eq!(printed, at("2026-03-08T07:00:00Z"));
        let never = trigger("0 0 30 2 *", "skip", serde_json::json!({}));
        assert_eq!(next_slot(&never, at("2026-03-07T19:00:00Z")), None, "February 30th never comes");
    }

    #[test]
    fn timezones_and_daylight_saving() {
        // 02:30 Berlin does not exist on 2026-03-29 (clocks jump 02:00 -> 03:00): that
        // day's slot is the first moment after the gap, 03:00 CEST.
        let trigger = trigger("30 2 * * *", "run_all", serde_json::json!({"timezone": "Europe/Berlin"}));
        let plan = plan(&trigger, at("2026-03-27T12:00:00Z"), at("2026-03-31T12:00:00Z")).unwrap();
        let expected = ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"];
        assert_eq!(plan.fire, expected.map(at));
        // 02:30 Berlin happens twice on 2026-10-25 (03:00 -> 02:00); it is one slot.
        let plan = super::plan(&trigger, at("2026-10-24T12:00:00Z"), at("2026-10-26T12:00:00Z")).unwrap();
        let forward: Vec<DateTime<Utc>> =
            trigger.next_slots(at("2026-10-24T12:00:00Z"), 2).unwrap().iter().map(|s| s.with_timezone(&Utc)).collect();
        assert_eq!(plan.fire, forward);
        assert_eq!(plan.fire.len(), 2);
    }
}
