//! Cron triggers: schedule, timezone and misfire policy, checked with croner (the parser
//! tokio-cron-scheduler uses), and `Slots`, the walk of a schedule's instants that
//! follows cron's rule at daylight saving changes.

use std::str::FromStr;

use std::collections::VecDeque;

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Normalized, str_at};
use crate::config::{Code, DurationSpec, FieldPath, Finding, did_you_mean};

/// A schedule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    /// A cron expression: 5 fields (`minute hour day-of-month month day-of-week`) or 6 with
    /// seconds first. Names (`MON`, `JAN`) and `@daily`-style nicknames work.
    pub schedule: String,
    /// IANA timezone the schedule is read in, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// What to do with slots missed while the engine was down.
    #[serde(default)]
    pub misfire: MisfirePolicy,
    /// How late a slot may still fire as if on time. Default `5m`.
    #[serde(default = "default_grace")]
    pub misfire_grace: DurationSpec,
    /// With `misfire: run_all`, the most missed slots to run. Default 10.
    #[serde(default = "default_max_catchup")]
    #[schemars(range(max = 1000))]
    pub max_catchup: u32,
}

fn utc() -> String {
    "UTC".to_string()
}

fn default_grace() -> DurationSpec {
    DurationSpec::from_secs(300)
}

fn default_max_catchup() -> u32 {
    10
}

/// Misfire policy for slots missed while the engine was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Record missed slots as skipped.
    Skip,
    /// Run once for all missed slots (the latest), record the rest as skipped.
    #[default]
    RunOnce,
    /// Run every missed slot, up to `max_catchup`.
    RunAll,
}

impl MisfirePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::Skip => "skip",
            MisfirePolicy::RunOnce => "run_once",
            MisfirePolicy::RunAll => "run_all",
        }
    }
}

impl CronTrigger {
    pub fn parsed_schedule(&self) -> Result<croner::Cron, String> {
        croner::Cron::from_str(&self.schedule).map_err(|e| e.to_string())
    }

    pub fn parsed_timezone(&self) -> Result<Tz, String> {
        Tz::from_str(&self.timezone).map_err(|e| e.to_string())
    }

    /// The next `count` slots strictly after `after`, in the trigger's timezone, by the
    /// daylight saving rule of `Slots`.
    pub fn next_slots(&self, after: DateTime<Utc>, count: usize) -> Result<Vec<DateTime<Tz>>, String> {
        let timezone = self.parsed_timezone()?;
        Ok(self.slots_after(after)?.take(count).map(|slot| slot.with_timezone(&timezone)).collect())
    }

    /// The slots strictly after `after`, oldest first: the one walk `nightshift schedule`
    /// and serve's scheduler both take.
    pub fn slots_after(&self, after: DateTime<Utc>) -> Result<Slots, String> {
        Ok(Slots::new(&self.parsed_schedule()?, self.parsed_timezone()?, DstRule::of(&self.schedule), after))
    }

    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        let fields = self.schedule.split_whitespace().count();
        if !self.schedule.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            findings.push(
                Finding::new(
                    path.key("schedule"),
                    Code::InvalidCron,
                    format!("cron expression `{}` has {fields} fields", self.schedule),
                )
                .hint("write 5 fields (`min hour dom month dow`, e.g. `0 9 * * MON`) or 6 with seconds first"),
            );
        } else if let Err(error) = self.parsed_schedule() {
            findings.push(
                Finding::new(
                    path.key("schedule"),
                    Code::InvalidCron,
                    format!("invalid cron expression `{}`: {error}", self.schedule),
                )
                .hint("e.g. `0 9 * * MON` is 09:00 every Monday"),
            );
        }
        if self.parsed_timezone().is_err() {
            let mut finding = Finding::new(
                path.key("timezone"),
                Code::InvalidTimezone,
                format!("unknown timezone `{}`", self.timezone),
            );
            let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
            finding = match did_you_mean(&self.timezone, names) {
                Some(close) => finding.hint(format!("did you mean `{close}`?")),
                None => finding.hint("use an IANA name such as `Europe/Berlin` or `UTC`"),
            };
            findings.push(finding);
        }
        if self.misfire == MisfirePolicy::RunAll && self.max_catchup == 0 {
            findings.push(
                Finding::new(path.key("max_catchup"), Code::InvalidValue, "`max_catchup` must be at least 1")
                    .hint("use `misfire: skip` to run no missed slots"),
            );
        }
    }
}

/// How a schedule meets a daylight saving change, decided as cron (cronie) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstRule {
    /// Neither the minute nor the hour field (nor the seconds field, when there is one)
    /// starts with `*`: the job runs at wall-clock times. A time the spring-forward gap
    /// skips runs once, at the first instant after the gap; a time the fall-back repeats
    /// runs once, in its first pass.
    FixedTime,
    /// `*/15 * * * *`, `0 * * * *`: the job runs on elapsed time. Times in a gap do not
    /// happen; a repeated time runs in both passes.
    Interval,
}

impl DstRule {
    /// The rule of a schedule as written (cronie looks at whether the field starts with
    /// `*`, not at how many values it lists: `15,45 2 * * *` is fixed-time).
    pub fn of(schedule: &str) -> DstRule {
        let schedule = schedule.trim();
        if schedule.starts_with('@') {
            return if schedule.eq_ignore_ascii_case("@hourly") { DstRule::Interval } else { DstRule::FixedTime };
        }
        let fields: Vec<&str> = schedule.split_whitespace().collect();
        // Five fields are `min hour ...`; six (or seven, with a year) put seconds first.
        let time_fields = if fields.len() >= 6 { &fields[..3] } else { &fields[..fields.len().min(2)] };
        if time_fields.iter().any(|field| field.starts_with(['*', '?'])) {
            DstRule::Interval
        } else {
            DstRule::FixedTime
        }
    }
}

/// A fall-back can repeat at most this long a stretch of wall-clock time, and a
/// spring-forward skip one this long (Samoa skipped a whole day in 2011).
const LONGEST_CHANGE_MINUTES: u32 = 26 * 60;

/// The slots of a schedule in a timezone after an instant, oldest first, each once.
///
/// croner walks the schedule's wall-clock times with no timezone; this maps each to
/// instants by the schedule's `DstRule`. A wall-clock time maps to one instant, none (a
/// gap) or two (a repeated stretch); the first instants of the walk never go back in
/// time, and the second passes of a repeated stretch wait in `repeated` until they are
/// the oldest. Slots that meet at one instant (several skipped times moved to the end
/// of a gap) are one slot.
pub struct Slots {
    walk: croner::CronIterator<NaiveDateTime>,
    timezone: Tz,
    rule: DstRule,
    /// The next first-pass instant, already taken from the walk.
    next: Option<DateTime<Utc>>,
    /// Second passes of repeated wall-clock times (interval jobs), oldest first.
    repeated: VecDeque<DateTime<Utc>>,
    /// The newest slot given out (at first, the start): only later ones are given.
    newest: DateTime<Utc>,
}

impl Slots {
    fn new(cron: &croner::Cron, timezone: Tz, rule: DstRule, after: DateTime<Utc>) -> Slots {
        let mut start = after.with_timezone(&timezone).naive_local();
        // Started in a repeated stretch, the walk goes back to its beginning: the second
        // passes of the times before `after` in the first pass are still to come.
        let mut steps = 0;
        while steps < LONGEST_CHANGE_MINUTES
            && matches!(timezone.from_local_datetime(&start), LocalResult::Ambiguous(..))
        {
            start -= chrono::Duration::minutes(1);
            steps += 1;
        }
        Slots { walk: cron.iter_after(start), timezone, rule, next: None, repeated: VecDeque::new(), newest: after }
    }

    /// Takes wall-clock times from the walk until one gives a first-pass instant.
    fn pull(&mut self) -> Option<DateTime<Utc>> {
        for wall in self.walk.by_ref() {
            match self.timezone.from_local_datetime(&wall) {
                LocalResult::Single(at) => return Some(at.with_timezone(&Utc)),
                LocalResult::Ambiguous(one, other) => {
                    let (first, second) = (one.min(other), one.max(other));
                    if self.rule == DstRule::Interval {
                        self.repeated.push_back(second.with_timezone(&Utc));
                    }
                    return Some(first.with_timezone(&Utc));
                }
                LocalResult::None if self.rule == DstRule::FixedTime => {
                    if let Some(at) = gap_end(self.timezone, wall) {
                        return Some(at);
                    }
                }
                LocalResult::None => {}
            }
        }
        None
    }
}

impl Iterator for Slots {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        loop {
            if self.next.is_none() {
                self.next = self.pull();
            }
            let repeated = self.repeated.front().copied();
            let slot = match (self.next, repeated) {
                (Some(next), Some(second)) if second < next => self.repeated.pop_front(),
                (Some(_), _) => self.next.take(),
                (None, Some(_)) => self.repeated.pop_front(),
                (None, None) => return None,
            }?;
            if slot > self.newest {
                self.newest = slot;
                return Some(slot);
            }
        }
    }
}

/// The first instant after the daylight saving gap that skips the wall-clock time `wall`.
fn gap_end(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let minute = chrono::Duration::minutes(1);
    let second = chrono::Duration::seconds(1);
    let mut probe = wall;
    for _ in 0..LONGEST_CHANGE_MINUTES {
        probe += minute;
        let Some(mut first) = timezone.from_local_datetime(&probe).earliest() else { continue };
        // The gap ended within the last minute: find its second.
        for _ in 0..59 {
            match timezone.from_local_datetime(&(probe - second)).earliest() {
                Some(earlier) => (probe, first) = (probe - second, earlier),
                None => break,
            }
        }
        return Some(first.with_timezone(&Utc));
    }
    None
}

/// A cron payload is `{"automation", "scheduled_at": RFC3339, "timezone": IANA name}`,
/// made by the scheduler (`slot_payload`). The slot is also given in the trigger's timezone (`local_date`,
/// `local_time`, `weekday`), so a schedule near midnight names the right day.
pub(super) fn normalize(payload: &Value) -> Normalized {
    let mut fields = Map::new();
    let slot = str_at(payload, "/scheduled_at");
    if let Some(slot) = slot {
        fields.insert("scheduled_at".into(), Value::String(slot.into()));
    }
    let zone = str_at(payload, "/timezone").unwrap_or("UTC");
    fields.insert("timezone".into(), Value::String(zone.into()));
    let parsed = slot.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    if let (Some(at), Ok(tz)) = (parsed, Tz::from_str(zone)) {
        let local = at.with_timezone(&tz);
        fields.insert("local_date".into(), Value::String(local.format("%Y-%m-%d").to_string()));
        fields.insert("local_time".into(), Value::String(local.format("%H:%M").to_string()));
        fields.insert("weekday".into(), Value::String(local.format("%a").to_string()));
    }
    // Two automations on one schedule share a slot time but not a delivery.
    let delivery_id = match (str_at(payload, "/automation"), slot) {
        (Some(automation), Some(slot)) => Some(format!("{automation}:{slot}")),
        (None, Some(slot)) => Some(slot.to_string()),
        (_, None) => None,
    };
    Normalized { kind: "schedule".into(), delivery_id, fields }
}

/// The payload the scheduler delivers for `automation`'s slot at `slot`: its event id is
/// `cron:{automation}:{slot}`, so a slot fired twice (say, across a restart) is one
/// delivery and makes one run.
pub fn slot_payload(automation: &str, slot: DateTime<Utc>, timezone: &str) -> Value {
    serde_json::json!({
        "automation": automation,
        "scheduled_at": slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "timezone": timezone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(schedule: &str, timezone: &str, after: &str, count: usize) -> Vec<String> {
        let trigger: CronTrigger =
            serde_json::from_value(serde_json::json!({"schedule": schedule, "timezone": timezone})).unwrap();
        let after: DateTime<Utc> = after.parse().unwrap();
        trigger.next_slots(after, count).unwrap().iter().map(|slot| slot.to_rfc3339()).collect()
    }

    #[test]
    fn next_slots_follow_the_timezone_across_daylight_saving_changes() {
        // Berlin leaves winter time on 2026-03-29: 09:00 local moves from 08:00 to 07:00 UTC.
        assert_eq!(
            slots("0 9 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            ["2026-03-28T09:00:00+01:00", "2026-03-29T09:00:00+02:00", "2026-03-30T09:00:00+02:00"]
        );
        // Strictly after: a slot at the start time itself is not repeated.
        assert_eq!(
            slots("*/15 * * * *", "UTC", "2026-01-01T00:15:00Z", 2),
            ["2026-01-01T00:30:00+00:00", "2026-01-01T00:45:00+00:00"]
        );
        // Six fields: seconds first.
        assert_eq!(slots("30 0 12 * * MON", "UTC", "2026-11-22T00:00:00Z", 1), ["2026-11-23T12:00:30+00:00"]);
    }

    /// The next `count` slots of `schedule` in `timezone` after `after`, in UTC.
    fn utc_slots(schedule: &str, timezone: &str, after: &str, count: usize) -> Vec<String> {
        let trigger: CronTrigger =
            serde_json::from_value(serde_json::json!({"schedule": schedule, "timezone": timezone})).unwrap();
        let slots = trigger.slots_after(after.parse().unwrap()).unwrap().take(count);
        slots.map(|slot| slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).collect()
    }

    #[test]
    fn fixed_time_jobs_run_once_at_daylight_saving_changes_whatever_their_fields() {
        // (schedule, timezone, after, the next slots in UTC)
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // New York springs forward at 02:00 EST on 2026-03-08: 02:00 runs at 03:00 EDT.
            (
                "0 2,14 * * *",
                "America/New_York",
                "2026-03-07T00:00:00Z",
                &[
                    "2026-03-07T07:00:00Z",
                    "2026-03-07T19:00:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-08T18:00:00Z",
                    "2026-03-09T06:00:00Z",
                ],
            ),
            // Both skipped times run once, at the end of the gap.
            (
                "15,45 2 * * *",
                "America/New_York",
                "2026-03-08T00:00:00Z",
                &["2026-03-08T07:00:00Z", "2026-03-09T06:15:00Z"],
            ),
            (
                "0,30 2 * * *",
                "Europe/Berlin",
                "2026-03-28T00:00:00Z",
                &[
                    "2026-03-28T01:00:00Z",
                    "2026-03-28T01:30:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-30T00:00:00Z",
                    "2026-03-30T00:30:00Z",
                ],
            ),
            // A skipped time and the time the gap ends at are one slot.
            ("0 2,3 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]),
            (
                "23 0-20/2 * * *",
                "Europe/Berlin",
                "2026-03-28T22:00:00Z",
                &["2026-03-28T23:23:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:23:00Z", "2026-03-29T04:23:00Z"],
            ),
            // Berlin falls back at 03:00 CEST on 2026-10-25: 02:23 runs in the first pass only.
            (
                "23 0-20/2 * * *",
                "Europe/Berlin",
                "2026-10-24T21:00:00Z",
                &["2026-10-24T22:23:00Z", "2026-10-25T00:23:00Z", "2026-10-25T03:23:00Z", "2026-10-25T05:23:00Z"],
            ),
            // New York falls back at 02:00 EDT on 2026-11-01: 01:30 runs at 01:30 EDT only.
            (
                "30 1,13 * * *",
                "America/New_York",
                "2026-11-01T04:00:00Z",
                &["2026-11-01T05:30:00Z", "2026-11-01T18:30:00Z", "2026-11-02T06:30:00Z"],
            ),
            // Started in either pass, the second pass still does not run.
            ("30 1,13 * * *", "America/New_York", "2026-11-01T05:40:00Z", &["2026-11-01T18:30:00Z"]),
            ("30 1,13 * * *", "America/New_York", "2026-11-01T06:10:00Z", &["2026-11-01T18:30:00Z"]),
            (
                "0-59/20 1 * * *",
                "America/New_York",
                "2026-11-01T04:00:00Z",
                &["2026-11-01T05:00:00Z", "2026-11-01T05:20:00Z", "2026-11-01T05:40:00Z", "2026-11-02T06:00:00Z"],
            ),
            // Seconds first, and nicknames.
            ("0 30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", &["2026-03-29T01:00:00Z"]),
            ("@daily", "Pacific/Apia", "2011-12-29T09:00:00Z", &["2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z"]),
        ];
        for (schedule, timezone, after, expected) in cases {
            assert_eq!(
                utc_slots(schedule, timezone, after, expected.len()),
                *expected,
                "{schedule} in {timezone} after {after}"
            );
        }
    }

    #[test]
    fn interval_jobs_keep_real_time_at_daylight_saving_changes() {
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // The gap: no slot inside it, the interval goes on after it.
            (
                "*/15 * * * *",
                "America/New_York",
                "2026-03-08T06:40:00Z",
                &["2026-03-08T06:45:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:15:00Z"],
            ),
            (
                "0 * * * *",
                "America/New_York",
                "2026-03-08T05:30:00Z",
                &["2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"],
            ),
            ("@hourly", "Europe/Berlin", "2026-03-29T00:30:00Z", &["2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]),
            ("*/20 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", &["2026-03-30T00:00:00Z"]),
            // The repeated hour runs twice, also when the walk starts in its first pass.
            (
                "*/15 * * * *",
                "America/New_York",
                "2026-11-01T05:40:00Z",
                &[
                    "2026-11-01T05:45:00Z",
                    "2026-11-01T06:00:00Z",
                    "2026-11-01T06:15:00Z",
                    "2026-11-01T06:30:00Z",
                    "2026-11-01T06:45:00Z",
                    "2026-11-01T07:00:00Z",
                ],
            ),
            (
                "0 * * * *",
                "America/New_York",
                "2026-11-01T04:30:00Z",
                &["2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"],
            ),
            ("0 * * * *", "America/New_York", "2026-11-01T06:10:00Z", &["2026-11-01T07:00:00Z"]),
        ];
        for (schedule, timezone, after, expected) in cases {
            assert_eq!(
                utc_slots(schedule, timezone, after, expected.len()),
                *expected,
                "{schedule} in {timezone} after {after}"
            );
        }
    }

    #[test]
    fn the_daylight_saving_rule_is_read_from_the_fields_as_cron_does() {
        for fixed in
            ["0 2 * * *", "15,45 2 * * *", "23 0-20/2 * * *", "0-59/20 1 * * *", "0 30 2 * * *", "@daily", "@weekly"]
        {
            assert_eq!(DstRule::of(fixed), DstRule::FixedTime, "{fixed}");
        }
        for interval in
            ["*/15 * * * *", "0 * * * *", "* 2 * * *", "*/5 30 2 * * *", "0 */2 * * * *", "@hourly", "? 2 * * *"]
        {
            assert_eq!(DstRule::of(interval), DstRule::Interval, "{interval}");
        }
    }

    fn findings_for(schedule: &str, timezone: &str) -> Vec<Code> {
        let trigger: CronTrigger =
            serde_json::from_value(serde_json::json!({"schedule": schedule, "timezone": timezone})).unwrap();
        let mut findings = Vec::new();
        trigger.check(&FieldPath::root(), &mut findings);
        findings.into_iter().map(|f| f.code).collect()
    }

    #[test]
    fn accepts_five_and_six_fields_and_nicknames() {
        assert!(findings_for("0 9 * * MON", "Europe/Berlin").is_empty());
        assert!(findings_for("30 0 9 * * *", "UTC").is_empty());
        assert!(findings_for("@daily", "UTC").is_empty());
    }

    #[test]
    fn slots_are_also_given_in_the_triggers_timezone() {
        let payload = serde_json::json!({"scheduled_at": "2026-11-22T23:30:00Z", "timezone": "Europe/Berlin"});
        let fields = normalize(&payload).fields;
        assert_eq!(fields["local_date"], "2026-11-23");
        assert_eq!(fields["local_time"], "00:30");
        assert_eq!(fields["weekday"], "Mon");
    }

    #[test]
    fn rejects_bad_expressions_and_zones() {
        assert_eq!(findings_for("0 25 * * *", "UTC"), [Code::InvalidCron]);
        assert_eq!(findings_for("* * *", "UTC"), [Code::InvalidCron]);
        assert_eq!(findings_for("0 9 * * MON", "Europe/Berln"), [Code::InvalidTimezone]);
    }
}
