//! Parallel work on PostgreSQL (docs/parallel.md): a parent's next step decided by
//! `parallel::conduct` on its children as stored, under the parent's row lock; a
//! cancelled parent's children cancelled in the same transaction.

use chrono::{DateTime, Utc};

use super::db::Tx;
use crate::runs::RunId;
use crate::store::StoreError;

/// Takes `parent`'s next step (spawn children, publish, finish), in `tx`. Its row must be
/// locked by the caller.
pub(super) fn conduct(_tx: &mut Tx<'_>, _parent: RunId, _now: DateTime<Utc>) -> Result<(), StoreError> {
    Err(StoreError::Io("not built yet: conduct".into()))
}
