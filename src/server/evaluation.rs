//! Rule evaluation off the request threads: a fixed pool of threads, at a lower CPU
//! priority than the threads that serve requests and write the store, and per hook a
//! bound on how many of its deliveries are evaluated at once and how many more may
//! wait, so a hook whose rules are slow (a script that runs to its deadline) delays only
//! its own deliveries. A hook whose evaluation took long moves, for a while, to a lane
//! of threads at the lowest priority, so its script does not compete with the quick
//! rules of other hooks either.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// How rule evaluation is bounded (`serve --rule-threads`, `--hook-concurrency`,
/// `--hook-queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvaluationLimits {
    /// Evaluation threads: evaluations running at once, across every hook.
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
    /// Until when the hook's evaluations run in the slow lane.
    slow_until: Mutex<Option<Instant>>,
}

impl HookShare {
    fn is_slow(&self, now: Instant) -> bool {
        self.slow_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|until| now < until)
    }

    /// Notes how long an evaluation took: one over `SLOW_EVALUATION` sends the hook to
    /// the slow lane for `SLOW_LANE_FOR` from now.
    fn took(&self, elapsed: Duration, now: Instant) {
        if elapsed > SLOW_EVALUATION {
            *self.slow_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(now + SLOW_LANE_FOR);
        }
    }
}

/// An evaluation longer than this is slow (a quick rule takes well under a millisecond).
const SLOW_EVALUATION: Duration = Duration::from_millis(20);
/// How long a hook stays in the slow lane after a slow evaluation.
const SLOW_LANE_FOR: Duration = Duration::from_secs(30);

/// The evaluation threads and every hook's share of them.
pub struct Evaluator {
    limits: EvaluationLimits,
    /// Work for the threads; they stop when it is dropped.
    jobs: mpsc::Sender<Job>,
    /// Work of hooks that were slow lately, for threads at the lowest priority.
    slow_jobs: mpsc::Sender<Job>,
    hooks: Mutex<HashMap<String, Arc<HookShare>>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// How much lower than the server's other threads the evaluation threads' CPU priority
/// is (a nice value): a script busy to its deadline yields the CPU to serving.
const NICE: libc::c_int = 10;
/// The slow lane's priority, the lowest: below quick rules too. Threads only ever lower
/// their own priority, which needs no privilege (raising it back would).
const SLOW_NICE: libc::c_int = 19;

/// Starts `count` evaluation threads at priority `nice` taking jobs from one queue.
fn start_threads(lane: &str, count: usize, nice: libc::c_int) -> std::io::Result<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for index in 0..count {
        let queue = Arc::clone(&queue);
        std::thread::Builder::new().name(format!("{lane}-{index}")).spawn(move || {
            // SAFETY: setpriority takes no pointers; on Linux, PRIO_PROCESS with 0 names
            // the calling thread only. If it fails the thread keeps its priority.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
            loop {
                let job = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            }
        })?;
    }
    Ok(jobs)
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
    /// Starts the evaluation threads.
    pub fn new(limits: EvaluationLimits) -> std::io::Result<Evaluator> {
        let limits = EvaluationLimits {
            threads: limits.threads.max(1),
            per_hook: limits.per_hook.max(1),
            per_hook_waiting: limits.per_hook_waiting,
        };
        Ok(Evaluator {
            limits,
            jobs: start_threads("rules", limits.threads, NICE)?,
            slow_jobs: start_threads("slow-rules", limits.threads, SLOW_NICE)?,
            hooks: Mutex::new(HashMap::new()),
        })
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
                    slow_until: Mutex::new(None),
                })
            }))
        };
        let admitted = Arc::clone(&share.admitted)
            .try_acquire_owned()
            .map_err(|_| HookBusy { hook: name.to_string(), waiting: self.limits.per_hook_waiting })?;
        Ok(Admission { share, _admitted: admitted })
    }

    /// Runs `work` on an evaluation thread once the hook's turn and a thread are free: in
    /// the slow lane if one of the hook's evaluations was slow lately.
    pub async fn run<T: Send + 'static>(&self, admission: &Admission, work: impl FnOnce() -> T + Send + 'static) -> T {
        let _running = Arc::clone(&admission.share.running).acquire_owned().await;
        let share = Arc::clone(&admission.share);
        let lane = if share.is_slow(Instant::now()) { &self.slow_jobs } else { &self.jobs };
        self.run_in(lane, move || {
            let started = Instant::now();
            let value = work();
            let now = Instant::now();
            share.took(now - started, now);
            value
        })
        .await
    }

    /// Runs `work` on an evaluation thread once one is free, outside any hook's share
    /// (manual runs through the API).
    pub async fn run_any<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        self.run_in(&self.jobs, work).await
    }

    async fn run_in<T: Send + 'static>(
        &self,
        lane: &mpsc::Sender<Job>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
        });
        // The threads live as long as the sender; if they are gone, a blocking thread.
        if let Err(mpsc::SendError(job)) = lane.send(job) {
            let _ = tokio::task::spawn_blocking(job).await;
        }
        match answered.await {
            Ok(Ok(value)) => value,
            // A panic in the rules goes on in the caller, as if it had run there.
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => std::panic::resume_unwind(Box::new("a rule evaluation was dropped unfinished")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_waits_within_its_bound_and_is_refused_beyond_it() {
        let evaluator = Evaluator::new(EvaluationLimits { threads: 4, per_hook: 1, per_hook_waiting: 2 }).unwrap();
        let held: Vec<Admission> = (0..3).map(|_| evaluator.admit("a").unwrap()).collect();
        assert_eq!(evaluator.admit("a").err(), Some(HookBusy { hook: "a".into(), waiting: 2 }));
        // Another hook has its own line.
        assert!(evaluator.admit("b").is_ok());
        drop(held);
        assert!(evaluator.admit("a").is_ok());
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[tokio::test]
    async fn a_hook_whose_evaluation_was_slow_runs_in_the_slow_lane_for_a_while() {
        let evaluator = Evaluator::new(EvaluationLimits::default()).unwrap();
        let thread = || std::thread::current().name().unwrap_or_default().to_string();
        let admission = evaluator.admit("slow").unwrap();
        assert!(evaluator.run(&admission, thread).await.starts_with("rules-"));
        evaluator.run(&admission, || std::thread::sleep(SLOW_EVALUATION * 2)).await;
        assert!(evaluator.run(&admission, thread).await.starts_with("slow-rules-"));
        // Other hooks keep the quick lane.
        let other = evaluator.admit("quick").unwrap();
        assert!(evaluator.run(&other, thread).await.starts_with("rules-"));
        // A quick evaluation does not bring the hook back before its time is up...
        assert!(evaluator.run(&admission, thread).await.starts_with("slow-rules-"));
        // ...which is `SLOW_LANE_FOR` after the slow one.
        let now = Instant::now();
        assert!(admission.share.is_slow(now));
        assert!(!admission.share.is_slow(now + SLOW_LANE_FOR + Duration::from_millis(1)));
        let share = HookShare {
            admitted: Arc::new(Semaphore::new(1)),
            running: Arc::new(Semaphore::new(1)),
            slow_until: Mutex::new(None),
        };
        share.took(SLOW_EVALUATION, now);
        assert!(!share.is_slow(now), "exactly the threshold is not slow");
        share.took(SLOW_EVALUATION + Duration::from_micros(1), now);
        assert!(share.is_slow(now + SLOW_LANE_FOR - Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn work_runs_on_an_evaluation_thread_and_its_panic_reaches_the_caller() {
        let evaluator = Evaluator::new(EvaluationLimits::default()).unwrap();
        let name = evaluator.run_any(|| std::thread::current().name().map(str::to_string)).await;
        assert!(name.is_some_and(|name| name.starts_with("rules-")));
        let caller = tokio::spawn(async move { evaluator.run_any(|| panic!("in a rule")).await });
        assert!(caller.await.unwrap_err().is_panic());
    }
}
