//! Which event ids the store may hold: a Bloom filter over the `ev/` keys. Nearly every
//! delivery is new, and the filter says so without a read from sled (a read that, under
//! the store's lock, raced the applier's inserts into the same tree). A "maybe" is
//! settled by reading sled, so the filter never decides a duplicate on its own.
//!
//! The filter is built from sled by a background thread (`build`); until it is ready
//! every check reads sled. Ids stored while a build runs are kept and added to the new
//! filter. Deleted events stay in the filter (a "maybe" costs only a read); once the
//! filter has taken as many ids as it was sized for, a rebuild is due.

use std::sync::atomic::{AtomicBool, Ordering};

use fastbloom::BloomFilter;

use super::keys;

/// False positives wanted: one new delivery in a thousand pays a read from sled.
const FALSE_POSITIVES: f64 = 0.001;
/// The smallest filter: about 1.8 MB, room for a million ids before a rebuild.
const MIN_CAPACITY: usize = 1 << 20;
/// How often a build looks at its stop flag, in keys.
const STOP_CHECK_EVERY: usize = 4096;

#[derive(Default)]
pub(super) struct SeenEvents {
    filter: Option<Filter>,
    /// Ids stored while a build runs: the new filter gets them when it is installed.
    arrived_during_build: Option<Vec<Box<[u8]>>>,
    /// The filter is full; the builder has not started the rebuild yet.
    rebuild_wanted: bool,
}

/// A Bloom filter and the number of ids it was sized for.
pub(super) struct Filter {
    bloom: BloomFilter,
    capacity: usize,
    added: usize,
}

impl Filter {
    /// A filter for `existing` ids, with room for as many again (at least a million).
    fn for_count(existing: usize) -> Filter {
        let capacity = existing.saturating_mul(2).max(MIN_CAPACITY);
        Filter { bloom: BloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(capacity), capacity, added: 0 }
    }

    fn add(&mut self, id: &[u8]) {
        self.bloom.insert(id);
        self.added += 1;
    }
}

impl SeenEvents {
    /// Whether an event with this id may be stored; `false` is certain.
    pub fn may_hold(&self, id: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|filter| filter.bloom.contains(id))
    }

    /// Notes an id being stored. Once the filter holds more ids than it was sized for,
    /// a rebuild is due (`build_due`).
    pub fn add(&mut self, id: &[u8]) {
        if let Some(arrived) = &mut self.arrived_during_build {
            arrived.push(id.into());
        }
        if let Some(filter) = &mut self.filter {
            filter.add(id);
            self.rebuild_wanted |= filter.added > filter.capacity;
        }
    }

    /// Whether the builder has work: the first build, or a rebuild.
    pub fn build_due(&self) -> bool {
        (self.filter.is_none() || self.rebuild_wanted) && self.arrived_during_build.is_none()
    }

    /// Marks a build as running: from now on, stored ids are also kept for it.
    pub fn build_started(&mut self) {
        self.rebuild_wanted = false;
        self.arrived_during_build = Some(Vec::new());
    }

    /// Installs a finished build, with the ids stored while it ran. `None` (the build
    /// failed or was stopped) keeps the old filter, or none, which means "read sled".
    pub fn build_finished(&mut self, built: Option<Filter>) {
        let arrived = self.arrived_during_build.take().unwrap_or_default();
        if let Some(mut built) = built {
            for id in arrived {
                built.add(&id);
            }
            self.rebuild_wanted = built.added > built.capacity;
            self.filter = Some(built);
        }
    }

    /// Whether the filter is in use (tests wait for it).
    pub fn is_ready(&self) -> bool {
        self.filter.is_some()
    }
}

/// Builds a filter from the event ids in `db`: one pass to count them, one to add them.
/// Returns `None` once `stop` is set.
pub(super) fn build(db: &sled::Db, stop: &AtomicBool) -> sled::Result<Option<Filter>> {
    let ids = || db.scan_prefix(keys::EVENT).keys();
    let mut count = 0;
    for key in ids() {
        key?;
        count += 1;
        if count % STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
    let mut filter = Filter::for_count(count);
    for (done, key) in ids().enumerate() {
        let key = key?;
        filter.add(&key[keys::EVENT.len()..]);
        if done % STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
    Ok(Some(filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_added_before_or_during_a_build_are_never_ruled_out() {
        let mut seen = SeenEvents::default();
        assert!(seen.may_hold(b"anything"), "without a filter every id is a maybe");
        assert!(seen.build_due());
        seen.build_started();
        seen.add(b"during");
        let mut built = Filter::for_count(1);
        built.add(b"before");
        seen.build_finished(Some(built));
        assert!(seen.is_ready());
        assert!(seen.may_hold(b"before"));
        assert!(seen.may_hold(b"during"));
        seen.add(b"after");
        assert!(seen.may_hold(b"after"));
        let ruled_out = (0..1000).filter(|i| !seen.may_hold(format!("new-{i}").as_bytes())).count();
        assert!(ruled_out > 990, "only {ruled_out} of 1000 new ids were ruled out");
    }

    #[test]
    fn a_full_filter_asks_for_a_rebuild() {
        let mut seen = SeenEvents::default();
        seen.build_started();
        seen.build_finished(Some(Filter::for_count(0)));
        for i in 0..MIN_CAPACITY {
            seen.add(&i.to_be_bytes());
        }
        assert!(!seen.build_due(), "a filter with room left needs no rebuild");
        seen.add(b"one more");
        assert!(seen.build_due());
        seen.build_started();
        assert!(!seen.build_due(), "one rebuild at a time");
        seen.add(b"while rebuilding");
        seen.build_finished(Some(Filter::for_count(MIN_CAPACITY)));
        assert!(seen.may_hold(b"while rebuilding"));
        assert!(!seen.build_due());
    }

    #[test]
    fn a_failed_build_keeps_reading_sled() {
        let mut seen = SeenEvents::default();
        seen.build_started();
        seen.add(b"during");
        seen.build_finished(None);
        assert!(!seen.is_ready());
        assert!(seen.may_hold(b"never stored"));
        assert!(seen.build_due());
    }
}
