//! Reads of one key shared by the callers that wait together: at most one read per key
//! is in flight, and the callers that arrive meanwhile share the next one, which starts
//! after they arrived, so each gets what was stored when it asked, or newer. Under
//! load (every delivery reading its automation's memory) this turns thousands of
//! reads a second into one in flight per automation.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::store::StoreError;

/// The reads in flight, by key.
pub(super) struct SharedReads<T> {
    keys: Mutex<HashMap<String, Key<T>>>,
}

/// One key: whether a read is in flight, and the callers lined up for the next.
struct Key<T> {
    next: Option<Arc<Round<T>>>,
}

/// Callers waiting for one read: the earliest time any of them asks about, and the
/// read's state.
struct Round<T> {
    state: Mutex<RoundState<T>>,
    changed: Condvar,
}

struct RoundState<T> {
    earliest: DateTime<Utc>,
    turn: Turn<T>,
}

enum Turn<T> {
    /// The read before is still in flight.
    Waiting,
    /// It ended: one of the round reads for all.
    Lead,
    Reading,
    Done(Result<T, StoreError>),
}

impl<T: Clone> SharedReads<T> {
    pub fn new() -> SharedReads<T> {
        SharedReads { keys: Mutex::new(HashMap::new()) }
    }

    /// `read(earliest)` for `key`, shared with callers waiting alongside: `read` must
    /// answer for any time from `earliest` on (the caller filters by its own `now`).
    pub fn read(
        &self,
        key: &str,
        now: DateTime<Utc>,
        read: impl Fn(DateTime<Utc>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let round = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            match keys.get_mut(key) {
                None => {
                    keys.insert(key.to_string(), Key { next: None });
                    None
                }
                Some(busy) => {
                    let round = busy.next.get_or_insert_with(|| {
                        Arc::new(Round {
                            state: Mutex::new(RoundState { earliest: now, turn: Turn::Waiting }),
                            changed: Condvar::new(),
                        })
                    });
                    let mut state = round.state.lock().unwrap_or_else(PoisonError::into_inner);
                    state.earliest = state.earliest.min(now);
                    drop(state);
                    Some(Arc::clone(round))
                }
            }
        };
        let Some(round) = round else {
            let answer = read(now);
            self.hand_over(key);
            return answer;
        };
        let mut state = round.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match &state.turn {
                Turn::Done(answer) => return answer.clone(),
                Turn::Lead => {
                    state.turn = Turn::Reading;
                    let earliest = state.earliest;
                    drop(state);
                    let answer = read(earliest);
                    let mut state = round.state.lock().unwrap_or_else(PoisonError::into_inner);
                    state.turn = Turn::Done(answer.clone());
                    round.changed.notify_all();
                    drop(state);
                    self.hand_over(key);
                    return answer;
                }
                Turn::Waiting | Turn::Reading => {
                    state = round.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    /// A read of `key` ended: the round lined up behind it (if any) reads next, else the
    /// key is idle.
    fn hand_over(&self, key: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let next = keys.get_mut(key).and_then(|busy| busy.next.take());
        match next {
            Some(round) => {
                let mut state = round.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.turn = Turn::Lead;
                round.changed.notify_one();
            }
            None => {
                keys.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    /// A read in flight is not shared with callers that came after it started: they
    /// share the next one, which reads for the earliest of their times.
    #[test]
    fn callers_arriving_during_a_read_share_the_next_one() {
        let reads: SharedReads<u64> = SharedReads::new();
        let version = AtomicUsize::new(1);
        let calls = Mutex::new(Vec::new());
        let (started, first_started) = mpsc::channel();
        let (finish, first_may_finish) = mpsc::channel::<()>();
        let first_may_finish = Mutex::new(first_may_finish);
        let waiters = 5;
        let lined_up = Barrier::new(waiters + 1);
        let read = |earliest: DateTime<Utc>| {
            calls.lock().unwrap().push(earliest);
            let seen = version.load(Ordering::SeqCst) as u64;
            if calls.lock().unwrap().len() == 1 {
                started.send(()).unwrap();
                first_may_finish.lock().unwrap().recv().unwrap();
            }
            Ok(seen)
        };
        std::thread::scope(|scope| {
            let first = scope.spawn(|| reads.read("a", at(0), read));
            first_started.recv().unwrap();
            // Stored after the first read began: the callers from now on must see it.
            version.store(2, Ordering::SeqCst);
            let late: Vec<_> = (0..waiters)
                .map(|n| {
                    let (reads, lined_up) = (&reads, &lined_up);
                    scope.spawn(move || {
                        lined_up.wait();
                        reads.read("a", at(10 - n as i64), read)
                    })
                })
                .collect();
            lined_up.wait();
            // The waiters are lined up once each has joined the round; give them the
            // chance, then let the first read end.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while reads.keys.lock().unwrap()["a"].next.as_ref().map_or(0, Arc::strong_count) < waiters + 1 {
                assert!(std::time::Instant::now() < deadline, "the late callers never lined up for the next read");
                std::thread::yield_now();
            }
            finish.send(()).unwrap();
            assert_eq!(first.join().unwrap().unwrap(), 1);
            for waiter in late {
                assert_eq!(waiter.join().unwrap().unwrap(), 2, "a late caller sees what was stored when it asked");
            }
        });
        let calls = calls.into_inner().unwrap();
        assert_eq!(calls, [at(0), at(6)], "two reads for six callers, the second for the earliest waiter");
        assert!(reads.keys.lock().unwrap().is_empty(), "an idle key is forgotten");
    }

    #[test]
    fn an_error_reaches_every_caller_of_its_read_and_the_next_read_tries_again() {
        let reads: SharedReads<u64> = SharedReads::new();
        let fail = |_| Err(StoreError::Unavailable("the database is away".into()));
        assert!(matches!(reads.read("a", at(0), fail), Err(StoreError::Unavailable(_))));
        assert_eq!(reads.read("a", at(1), |_| Ok(7)).unwrap(), 7);
        assert_eq!(reads.read("b", at(1), |_| Ok(8)).unwrap(), 8, "keys are apart");
    }
}
