//! Rule evaluation off the request threads: a bounded number of evaluations at once, on
//! tokio's blocking threads, and per hook a bound on how many of its deliveries are
//! evaluated at once and how many more may wait, so a hook whose rules are slow (a
//! script that runs to its deadline) delays only its own deliveries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How rule evaluation is bounded (`serve --rule-threads`, `--hook-concurrency`,
/// `--hook-queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvaluationLimits {
    /// Evaluations running at once, across every hook.
    pub threads: usize,
    /// Evaluations of one hook's deliveries running at once.
    pub per_hook: usize,
    /// Deliveries of one hook that may wait for an evaluation; beyond them, 503.
    pub per_hook_waiting: usize,
}

impl Default for EvaluationLimits {
    fn default() -> Self {
        EvaluationLimits { threads: 4, per_hook: 1, per_hook_waiting: 64 }
    }
}

/// One hook's share: `admitted` counts its deliveries running or waiting, `running` those
/// being evaluated.
struct HookShare {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

/// The evaluation threads and every hook's share of them.
pub struct Evaluator {
    limits: EvaluationLimits,
    threads: Arc<Semaphore>,
    hooks: Mutex<HashMap<String, Arc<HookShare>>>,
}

/// A hook has as many deliveries waiting for its rules as it may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hook `{hook}` has {waiting} deliveries waiting for its rules, the most it may; retry shortly")]
pub struct HookBusy {
    pub hook: String,
    pub waiting: usize,
}

/// A place in a hook's line: while it is held, the delivery counts as waiting or running.
pub struct Admission {
    share: Arc<HookShare>,
    _admitted: OwnedSemaphorePermit,
}

impl Evaluator {
    pub fn new(limits: EvaluationLimits) -> Evaluator {
        let limits = EvaluationLimits {
            threads: limits.threads.max(1),
            per_hook: limits.per_hook.max(1),
            per_hook_waiting: limits.per_hook_waiting,
        };
        Evaluator { limits, threads: Arc::new(Semaphore::new(limits.threads)), hooks: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> EvaluationLimits {
        self.limits
    }

    /// A place in hook `name`'s line, or `HookBusy` at once when the line is full.
    pub fn admit(&self, name: &str) -> Result<Admission, HookBusy> {
        let share = {
            let mut hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
            let limits = self.limits;
            Arc::clone(hooks.entry(name.to_string()).or_insert_with(|| {
                Arc::new(HookShare {
                    admitted: Arc::new(Semaphore::new(limits.per_hook + limits.per_hook_waiting)),
                    running: Arc::new(Semaphore::new(limits.per_hook)),
                })
            }))
        };
        let admitted = Arc::clone(&share.admitted)
            .try_acquire_owned()
            .map_err(|_| HookBusy { hook: name.to_string(), waiting: self.limits.per_hook_waiting })?;
        Ok(Admission { share, _admitted: admitted })
    }

    /// Runs `work` on an evaluation thread once the hook's turn and a thread are free.
    pub async fn run<T: Send + 'static>(&self, admission: &Admission, work: impl FnOnce() -> T + Send + 'static) -> T {
        let _running = Arc::clone(&admission.share.running).acquire_owned().await;
        self.run_any(work).await
    }

    /// Runs `work` on an evaluation thread once one is free, outside any hook's share
    /// (manual runs through the API).
    pub async fn run_any<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        // The semaphores are never closed, so acquiring only waits.
        let _thread = Arc::clone(&self.threads).acquire_owned().await;
        match tokio::task::spawn_blocking(work).await {
            Ok(value) => value,
            // Blocking tasks are not cancelled while the runtime runs; a panic goes on.
            Err(failed) => std::panic::resume_unwind(
                failed.try_into_panic().unwrap_or_else(|_| Box::new("a rule evaluation was cancelled")),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_waits_within_its_bound_and_is_refused_beyond_it() {
        let evaluator = Evaluator::new(EvaluationLimits { threads: 4, per_hook: 1, per_hook_waiting: 2 });
        let held: Vec<Admission> = (0..3).map(|_| evaluator.admit("a").unwrap()).collect();
        assert_eq!(evaluator.admit("a").err(), Some(HookBusy { hook: "a".into(), waiting: 2 }));
        // Another hook has its own line.
        assert!(evaluator.admit("b").is_ok());
        drop(held);
        assert!(evaluator.admit("a").is_ok());
    }
}
