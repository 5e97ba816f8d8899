//! `DurationSpec`: human durations such as `30m`, `1h30m` or `7d` in automation files.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the JSON Schema gives editors; `FromStr` is the authority.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";

/// A duration written as one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{text}`: {why}")]
pub struct DurationError {
    text: String,
    why: &'static str,
}

impl FromStr for DurationSpec {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |why| DurationError { text: text.to_string(), why };
        if text.is_empty() {
            return Err(fail("it is empty; write e.g. `30m`"));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail("expected a number before each unit, e.g. `1h30m`"));
            }
            let number: u64 = rest[..digits].parse().map_err(|_| fail("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit_millis: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(fail("missing unit; use ms, s, m, h or d")),
                _ => return Err(fail("unknown unit; use ms, s, m, h or d")),
            };
            rest = &rest[unit_len..];
            let millis = number.checked_mul(unit_millis).ok_or_else(|| fail("too large"))?;
            total = total.checked_add(Duration::from_millis(millis)).ok_or_else(|| fail("too large"))?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if millis >= size {
                write!(f, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as `90s`, `30m`, `1h30m` or `7d` (units: ms, s, m, h, d).",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected_secs: Option<u64>) {
        let parsed = text.parse::<DurationSpec>().ok().map(|d| d.0.as_secs());
        assert_eq!(parsed, expected_secs, "{text}");
    }

    #[test]
    fn parses_units_and_compounds() {
        check("30m", Some(1800));
        check("1h30m", Some(5400));
        check("7d", Some(604_800));
        check("45s", Some(45));
        check("", None);
        check("30", None);
        check("m", None);
        check("5w", None);
        check("1h 30m", None);
        check("99999999999999999999d", None);
    }

    #[test]
    fn display_round_trips() {
        for text in ["30m", "1h30m", "7d", "1500ms", "0s"] {
            let parsed: DurationSpec = text.parse().unwrap();
            let shown = parsed.to_string();
            assert_eq!(shown.parse::<DurationSpec>().unwrap(), parsed);
        }
        assert_eq!("90m".parse::<DurationSpec>().unwrap().to_string(), "1h30m");
    }
}
