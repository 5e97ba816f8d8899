//! Retry timing: exponential backoff with jitter, bounded by the automation's `retry`.

use std::time::Duration;

use crate::config::Retry;

/// The wait before attempt `attempt + 1`, after `attempt` attempts failed (`attempt` ≥ 1):
/// `backoff · 2^(attempt-1)`, capped at `max_backoff`, then a random point in its upper
/// half ("equal jitter"), so retries of many runs that failed together spread out.
pub fn backoff(retry: &Retry, attempt: u32, random_unit: f64) -> Duration {
    let base = retry.backoff.as_duration();
    let doubled = base.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX));
    let capped = doubled.min(retry.max_backoff.as_duration());
    capped / 2 + capped.mul_f64(random_unit.clamp(0.0, 1.0) / 2.0)
}

/// Whether another attempt is allowed after `attempt` attempts.
pub fn may_retry(retry: &Retry, attempt: u32) -> bool {
    attempt < retry.attempts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DurationSpec;

    #[test]
    fn backoff_doubles_is_capped_and_jitters_within_the_upper_half() {
        let retry =
            Retry { attempts: 5, backoff: DurationSpec::from_secs(10), max_backoff: DurationSpec::from_secs(60) };
        assert_eq!(backoff(&retry, 1, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(&retry, 1, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(&retry, 2, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(&retry, 3, 1.0), Duration::from_secs(40));
        assert_eq!(backoff(&retry, 4, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(&retry, 40, 0.0), Duration::from_secs(30));
        assert!(may_retry(&retry, 4) && !may_retry(&retry, 5));
    }
}
