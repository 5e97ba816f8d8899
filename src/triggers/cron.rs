//! Cron triggers: schedule, timezone and misfire policy, checked with croner (the parser
//! tokio-cron-scheduler uses).

use std::str::FromStr;

use chrono::{DateTime, Utc};
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

    /// The next `count` slots strictly after `after`, in the trigger's timezone. Local
    /// times a DST change skips or repeats follow croner: a skipped time fires at the
    /// first moment after the gap, a repeated one fires once.
    pub fn next_slots(&self, after: DateTime<Utc>, count: usize) -> Result<Vec<DateTime<Tz>>, String> {
        let cron = self.parsed_schedule()?;
        let timezone = self.parsed_timezone()?;
        cron.iter_after(after.with_timezone(&timezone)).take(count).map(Ok).collect()
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
