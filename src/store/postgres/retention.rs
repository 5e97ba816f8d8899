//! Retention on PostgreSQL: finished runs beyond the limits with what hangs off them,
//! and expired memory and dedupe marks.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::config::Retention;
use crate::store::{RetentionReport, StoreError};

impl PgStore {
    pub(super) fn retention_now(
        &self,
        retention: &Retention,
        now: DateTime<Utc>,
    ) -> Result<RetentionReport, StoreError> {
        Err(StoreError::Io("not built yet: retention_now".into()))
    }
}
