//! Maintenance leases: lease sweeps, retention and the outbox are each done by one
//! instance at a time, the one holding the duty's row; it renews the row each time it
//! asks, and when it dies the row expires and the next instance to ask takes it over.
//! Times are the database's clock, so instances' clocks need not agree.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::store::StoreError;

/// How long a duty stays with an instance that stopped asking. Every duty's loop asks
/// far more often than this (the lease sweep every few seconds).
pub const DUTY_LEASE_SECONDS: f64 = 15.0;

impl PgStore {
    /// Whether this instance does `duty` now: it holds the duty's row (renewed by this
    /// call) or takes it because its holder's lease ran out.
    pub(super) fn maintains_now(&self, duty: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        let holder = self.instance.as_str();
        self.db.transaction(|tx| {
            let row = tx.query_opt(
                "INSERT INTO nightshift_maintenance (name, holder, expires_at) \
                 VALUES ($1, $2, now() + make_interval(secs => $3)) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE nightshift_maintenance.holder = excluded.holder OR nightshift_maintenance.expires_at < now() \
                 RETURNING holder",
                &[&duty, &holder, &DUTY_LEASE_SECONDS],
            )?;
            Ok(row.is_some())
        })
    }
}
