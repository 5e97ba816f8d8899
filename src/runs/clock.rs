//! Time arithmetic for runs: configured durations may be absurdly large, and adding them
//! must never panic.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// `at + duration`, or `None` when that is past what a timestamp can hold.
pub fn checked_later(at: DateTime<Utc>, duration: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(duration).ok().and_then(|d| at.checked_add_signed(d))
}

/// `at + duration`, saturating: a huge duration means "never", not a panic.
pub fn later(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    checked_later(at, duration).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
