//! Ingest in batches: deliveries wait in one line, and a writer thread decides each
//! batch in one transaction, so every delivery in it shares the round trips and the
//! commit's sync, and the rule threads never wait on the database. Deliveries whose
//! runs read nothing of the database (no flow control, dedupe, threads or children:
//! the default `overlap: queue`) are stored a segment at a time in a few statements;
//! any other goes through `ingest::ingest_in`, in its place in the line.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, Utc};

use super::db::{Db, Tx};
use super::ingest::{ingest_in, render_failed_run};
use super::rows::{self, encode, insert_runs, next_run_ids};
use crate::event::Event;
use crate::runs::Run;
use crate::store::{
    Disposition, IngestOutcome, NewRun, PendingIngest, PendingOutcome, RunOutcome, StoreError, StoredEvent,
    StoredEventRef, fresh_run,
};

/// Most deliveries decided in one transaction.
const MOST_PER_BATCH: usize = 256;

type Answer = Arc<Settle<Result<IngestOutcome, StoreError>>>;

/// A delivery waiting in the line, and where its outcome goes.
struct Job {
    event: Event,
    runs: Vec<NewRun>,
    now: DateTime<Utc>,
    answer: Answer,
}

#[derive(Default)]
struct Line {
    jobs: VecDeque<Job>,
    closed: bool,
}

type SharedLine = Arc<(Mutex<Line>, Condvar)>;

/// The line and its writer thread.
pub(super) struct Batcher {
    line: SharedLine,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Batcher {
    /// Starts the writer. `trouble` is kept saying why while the database is away.
    pub fn start(db: Arc<Db>, trouble: Arc<Mutex<Option<String>>>) -> Result<Batcher, StoreError> {
        let line: SharedLine = Arc::default();
        let writing = Arc::clone(&line);
        let writer = std::thread::Builder::new()
            .name("nightshift-ingest".into())
            .spawn(move || write(&db, &trouble, &writing))
            .map_err(|cause| StoreError::Io(format!("cannot start the ingest writer thread: {cause}")))?;
        Ok(Batcher { line, writer: Some(writer) })
    }

    /// Puts a delivery in line; its outcome resolves once its batch has committed.
    pub fn submit(&self, event: &Event, runs: Vec<NewRun>, now: DateTime<Utc>) -> PendingIngest {
        let answer: Answer = Arc::new(Settle::new());
        let job = Job { event: event.clone(), runs, now, answer: Arc::clone(&answer) };
        let (line, ready) = &*self.line;
        let mut waiting = line.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.closed {
            answer.finish(Err(StoreError::Io("the store is closing; deliver again".into())));
        } else {
            waiting.jobs.push_back(job);
            ready.notify_one();
        }
        PendingIngest::later(Box::new(Outcome(answer)))
    }
}

impl Drop for Batcher {
    /// The writer decides what is in line, then stops.
    fn drop(&mut self) {
        let (line, ready) = &*self.line;
        line.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        ready.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Outcome(Answer);

impl PendingOutcome for Outcome {
    fn wait(&self) -> Result<IngestOutcome, StoreError> {
        self.0.wait()
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<IngestOutcome, StoreError>> {
        self.0.poll(cx)
    }
}

/// The writer: takes everything in line (at most `MOST_PER_BATCH`) and decides it in
/// one transaction, until the line is closed and empty. While a batch commits the next
/// one gathers, so the busier the line, the larger its batches.
fn write(db: &Db, trouble: &Mutex<Option<String>>, line: &(Mutex<Line>, Condvar)) {
    let (waiting, ready) = line;
    loop {
        let batch: Vec<Job> = {
            let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            while waiting.jobs.is_empty() && !waiting.closed {
                waiting = ready.wait(waiting).unwrap_or_else(PoisonError::into_inner);
            }
            if waiting.jobs.is_empty() {
                return;
            }
            let count = waiting.jobs.len().min(MOST_PER_BATCH);
            waiting.jobs.drain(..count).collect()
        };
        decide(db, trouble, batch);
    }
}

/// Decides and commits `batch`, and answers each delivery in it. When the database
/// refuses the batch for something other than being away, each delivery is tried in a
/// transaction of its own, so one it refuses fails alone.
fn decide(db: &Db, trouble: &Mutex<Option<String>>, batch: Vec<Job>) {
    let note = |error: Option<&StoreError>| super::note_trouble(trouble, error);
    let decided = db.transaction(|tx| ingest_batch(tx, &batch));
    note(decided.as_ref().err());
    match decided {
        Ok(outcomes) => {
            for (job, outcome) in batch.iter().zip(outcomes) {
                job.answer.finish(Ok(outcome));
            }
        }
        Err(error) if batch.len() == 1 || matches!(error, StoreError::Unavailable(_)) => {
            for job in &batch {
                job.answer.finish(Err(error.clone()));
            }
        }
        Err(error) => {
            tracing::warn!(%error, deliveries = batch.len(), "A batch of deliveries was refused; storing each alone");
            for job in &batch {
                let alone = db.transaction(|tx| ingest_in(tx, &job.event, &job.runs, job.now));
                note(alone.as_ref().err());
                job.answer.finish(alone);
            }
        }
    }
}

/// `batch`'s outcomes, in its order: segments of plain deliveries a segment at a time,
/// any other delivery alone, each seeing what those before it wrote.
fn ingest_batch(tx: &mut Tx<'_>, batch: &[Job]) -> Result<Vec<IngestOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut start = 0;
    while start < batch.len() {
        let end = (start..batch.len()).find(|&index| !is_plain(&batch[index])).unwrap_or(batch.len());
        if end == start {
            let job = &batch[start];
            outcomes.push(ingest_in(tx, &job.event, &job.runs, job.now)?);
            start += 1;
        } else {
            outcomes.extend(ingest_plain(tx, &batch[start..end])?);
            start = end;
        }
    }
    Ok(outcomes)
}

/// Whether storing `job` reads nothing: each of its runs either failed to render or is
/// created whatever its group holds (`runs::flow::decide` needs no facts, and there is
/// no dedupe key), tells no thread and coordinates no children.
fn is_plain(job: &Job) -> bool {
    job.runs.iter().all(|new| match &new.rendered {
        Err(_) => true,
        Ok((task, flow)) => {
            !crate::runs::flow::needs_group_facts(flow)
                && flow.dedupe_key.is_none()
                && task.plan.is_none()
                && crate::runs::followup::thread_keys(&task.notify).is_empty()
        }
    })
}

/// A delivery's first sight in a segment: its runs and the record of its event.
struct Offer {
    index: usize,
    runs: Vec<Run>,
    outcomes: Vec<RunOutcome>,
    doc: Vec<u8>,
}

/// Stores a segment of plain deliveries: their run ids in one statement, their events
/// in one (the primary key admits each delivery once, across instances), the runs of
/// the admitted ones in one. A delivery stored before gets its first outcome; one
/// repeated within the segment gets the outcome of its first sight.
fn ingest_plain(tx: &mut Tx<'_>, jobs: &[Job]) -> Result<Vec<IngestOutcome>, StoreError> {
    let mut first_sight: HashMap<&str, usize> = HashMap::new();
    for (index, job) in jobs.iter().enumerate() {
        first_sight.entry(job.event.id.as_str()).or_insert(index);
    }
    let offered: Vec<usize> =
        (0..jobs.len()).filter(|index| first_sight[jobs[*index].event.id.as_str()] == *index).collect();
    let wanted: usize = offered.iter().map(|index| jobs[*index].runs.len()).sum();
    let mut ids = if wanted == 0 { Vec::new() } else { next_run_ids(tx, wanted)? }.into_iter();
    let mut offers: Vec<Offer> = Vec::with_capacity(offered.len());
    for index in offered {
        let job = &jobs[index];
        let (mut runs, mut outcomes) = (Vec::new(), Vec::new());
        for new in &job.runs {
            let id = ids.next().ok_or_else(|| StoreError::Io("the database gave fewer run ids than asked".into()))?;
            let automation = new.automation.clone();
            match &new.rendered {
                Err(error) => {
                    runs.push(render_failed_run(id, new, error, &job.event, job.now));
                    outcomes.push(RunOutcome {
                        automation,
                        run: id,
                        disposition: Disposition::RenderFailed { error: error.clone() },
                    });
                }
                Ok((task, flow)) => {
                    let hash = new.definition_hash.clone();
                    let task = Some(task.clone());
                    runs.push(fresh_run(id, automation.clone(), hash, task, flow.clone(), &job.event, job.now));
                    outcomes.push(RunOutcome { automation, run: id, disposition: Disposition::Created });
                }
            }
        }
        let doc = encode(&StoredEventRef {
            event: job.event.without_fields(),
            dedupe_keys: &BTreeMap::new(),
            outcomes: &outcomes,
        });
        offers.push(Offer { index, runs, outcomes, doc });
    }
    let admitted = insert_events(tx, jobs, &offers)?;
    let fresh: Vec<Run> = offers
        .iter_mut()
        .filter(|offer| admitted.contains(jobs[offer.index].event.id.as_str()))
        .flat_map(|offer| std::mem::take(&mut offer.runs))
        .collect();
    insert_runs(tx, &fresh)?;
    let seen_before: Vec<&str> =
        offers.iter().map(|offer| jobs[offer.index].event.id.as_str()).filter(|id| !admitted.contains(id)).collect();
    let mut stored = stored_events(tx, &seen_before)?;
    let mut answers: HashMap<usize, IngestOutcome> = HashMap::with_capacity(offers.len());
    for offer in offers {
        let job = &jobs[offer.index];
        let answer = if admitted.contains(job.event.id.as_str()) {
            IngestOutcome {
                event_id: job.event.id.clone(),
                duplicate_delivery: false,
                runs: offer.outcomes,
                cancelled: Vec::new(),
            }
        } else {
            match stored.remove(&job.event.id) {
                Some(first) => repeat_of(&job.event, first.outcomes),
                // Retention deleted it since: stored as any delivery would be.
                None => ingest_in(tx, &job.event, &job.runs, job.now)?,
            }
        };
        answers.insert(offer.index, answer);
    }
    Ok(jobs
        .iter()
        .enumerate()
        .map(|(index, job)| {
            let first = first_sight[job.event.id.as_str()];
            let answer = &answers[&first];
            if first == index { answer.clone() } else { repeat_of(&job.event, answer.runs.clone()) }
        })
        .collect())
}

/// The answer to a delivery seen before: what the first one got.
fn repeat_of(event: &Event, runs: Vec<RunOutcome>) -> IngestOutcome {
    IngestOutcome { event_id: event.id.clone(), duplicate_delivery: true, runs, cancelled: Vec::new() }
}

/// Inserts the offered events' rows in one statement, in id order (two instances
/// inserting the same deliveries then wait for each other in one order), and returns
/// the ids admitted: those no row had.
fn insert_events<'j>(tx: &mut Tx<'_>, jobs: &'j [Job], offers: &[Offer]) -> Result<HashSet<&'j str>, StoreError> {
    let mut order: Vec<&Offer> = offers.iter().collect();
    order.sort_by(|a, b| jobs[a.index].event.id.cmp(&jobs[b.index].event.id));
    let ids: Vec<&str> = order.iter().map(|offer| jobs[offer.index].event.id.as_str()).collect();
    let received: Vec<DateTime<Utc>> = order.iter().map(|offer| jobs[offer.index].event.received_at).collect();
    let has_runs: Vec<bool> = order.iter().map(|offer| !offer.outcomes.is_empty()).collect();
    let docs: Vec<&[u8]> = order.iter().map(|offer| offer.doc.as_slice()).collect();
    let rows = tx.query(
        "INSERT INTO nightshift_events (id, received_at, has_runs, doc) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bool[], $4::bytea[]) \
         ON CONFLICT (id) DO NOTHING RETURNING id",
        &[&ids, &received, &has_runs, &docs],
    )?;
    let inserted: HashSet<String> = rows.iter().map(|row| row.get::<_, String>(0)).collect();
    Ok(ids.into_iter().filter(|id| inserted.contains(*id)).collect())
}

/// The stored records of events `ids`, by id; an id retention deleted is missing.
fn stored_events(tx: &mut Tx<'_>, ids: &[&str]) -> Result<HashMap<String, StoredEvent>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx.query("SELECT id, doc FROM nightshift_events WHERE id = ANY($1)", &[&ids])?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            let what = format!("the stored event `{id}`");
            let stored: StoredEvent = rows::decode(&what, row.get::<_, &[u8]>(1))?;
            Ok((id, stored))
        })
        .collect()
}

/// A value some other thread produces later (a deferred commit's outcome, a batched
/// ingest's), and who waits for it: threads block on `wait`, tasks poll.
struct Settle<T> {
    state: Mutex<SettleState<T>>,
    settled: Condvar,
}

struct SettleState<T> {
    value: Option<T>,
    waiting: Vec<Waker>,
}

impl<T: Clone> Settle<T> {
    fn new() -> Settle<T> {
        Settle { state: Mutex::new(SettleState { value: None, waiting: Vec::new() }), settled: Condvar::new() }
    }

    fn finish(&self, value: T) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.value = Some(value);
        for waker in state.waiting.drain(..) {
            waker.wake();
        }
        self.settled.notify_all();
    }

    fn wait(&self) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(value) = &state.value {
                return value.clone();
            }
            state = self.settled.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &state.value {
            Some(value) => Poll::Ready(value.clone()),
            None => {
                state.waiting.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
