//! The pipeline between the rules and the store: `ingest` takes an event through every
//! automation's rules into the store; `finish` takes a worker's completion through
//! `memory.after_run` into the store, memory writes and completion in one step.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::catalog::Catalog;
use crate::event::Event;
use crate::rules::{CompiledAutomation, MemoryEdits, MemoryView, PreparedEvent, RuleEngine};
use crate::runs::{
    ActivityKind, Completion, Epoch, MemoryChange, MemoryWrite, NewActivity, Run, RunId, RunState, followup,
};
use crate::store::{Durability, IngestOutcome, NewRun, PendingIngest, RunFilter, Store, StoreError};

/// An automation that saw the event and let it pass, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotMatched {
    pub automation: String,
    pub reason: String,
}

/// What `ingest` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    #[serde(flatten)]
    pub outcome: IngestOutcome,
    /// Automations whose triggers took the event but whose rules said no.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_matched: Vec<NotMatched>,
}

/// An ingest under way: the automations whose rules let the event pass, and the store's
/// outcome, which may be decided and committed after the rules' thread is free again.
#[must_use = "the event is not stored until this resolves"]
pub struct PendingReport {
    not_matched: Vec<NotMatched>,
    ingest: PendingIngest,
}

impl PendingReport {
    fn new(not_matched: Vec<NotMatched>, ingest: PendingIngest) -> PendingReport {
        PendingReport { not_matched, ingest }
    }

    /// A report with nothing left to store.
    fn stored(outcome: IngestOutcome, not_matched: Vec<NotMatched>) -> PendingReport {
        PendingReport::new(not_matched, PendingIngest::decided(Ok((outcome, Durability::done()))))
    }

    /// Blocks until the outcome is decided (not until it is durable, for a backend that
    /// decides first and syncs after): the report, with the write to await.
    pub fn decide(self) -> Result<(IngestReport, Durability), StoreError> {
        let (outcome, durability) = self.ingest.decide()?;
        Ok((IngestReport { outcome, not_matched: self.not_matched }, durability))
    }

    /// Blocks until the event and its runs are stored.
    pub fn wait(self) -> Result<IngestReport, StoreError> {
        let outcome = self.ingest.wait()?;
        Ok(IngestReport { outcome, not_matched: self.not_matched })
    }

    /// Suspends until the event and its runs are stored.
    pub async fn done(self) -> Result<IngestReport, StoreError> {
        let outcome = self.ingest.await?;
        Ok(IngestReport { outcome, not_matched: self.not_matched })
    }
}

/// Which automations an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// Every automation with a trigger that accepts it (e.g. a cron slot's own automation).
    Everyone,
    /// The automation a hook serves, if its trigger's filters accept the event. An event
    /// they refuse is not stored: the report names the reason in `not_matched`.
    Subscriber(&'a str),
    /// One automation, without consulting its trigger's filters: a person asked for it
    /// (`nightshift trigger`, `POST /api/automations/{name}/run`).
    Named(&'a str),
}

pub struct Pipeline {
    catalog: Arc<Catalog>,
    store: Arc<dyn Store>,
    engine: &'static RuleEngine,
}

impl Pipeline {
    pub fn new(catalog: Arc<Catalog>, store: Arc<dyn Store>) -> Pipeline {
        Pipeline { catalog, store, engine: RuleEngine::shared() }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Renders `event` for its audience, then stores the event and its runs in one
    /// durable step. A rendering error becomes a failed run that records it.
    pub fn ingest(&self, event: Event, audience: Audience<'_>, now: DateTime<Utc>) -> Result<IngestReport, StoreError> {
        self.ingest_queued(event, audience, now)?.wait()
    }

    /// `ingest` that returns once the rules have run, with the store's outcome to await
    /// before answering: the thread is free for the next delivery meanwhile.
    pub fn ingest_queued(
        &self,
        event: Event,
        audience: Audience<'_>,
        now: DateTime<Utc>,
    ) -> Result<PendingReport, StoreError> {
        self.ingest_recalled(event, audience, now, None)
    }

    /// What automation `name`'s rules are given besides the event (its memory, and its
    /// history when a rule reads it), read ahead: a hook reads it before its turn at the
    /// rules, so a store across the network does not hold the hook's line meanwhile.
    pub fn recall_for(&self, name: &str, now: DateTime<Utc>) -> Result<Option<Recalled>, StoreError> {
        let Some(loaded) = self.catalog.get(name) else { return Ok(None) };
        Ok(Some(Recalled { automation: name.to_string(), recall: self.recall(&loaded.compiled, now)? }))
    }

    /// `ingest_queued` with `recalled` read ahead for its automation (`recall_for`).
    pub fn ingest_recalled(
        &self,
        event: Event,
        audience: Audience<'_>,
        now: DateTime<Utc>,
        recalled: Option<&Recalled>,
    ) -> Result<PendingReport, StoreError> {
        if let Some(followed) = self.follow_up_of(&event, audience, now)? {
            return Ok(followed);
        }
        if let Audience::Subscriber(name) = audience
            && let Err(reason) = self.subscriber_accepts(name, &event)
        {
            let outcome = IngestOutcome {
                event_id: event.id,
                duplicate_delivery: false,
                runs: Vec::new(),
                cancelled: Vec::new(),
            };
            let not_matched = vec![NotMatched { automation: name.to_string(), reason }];
            return Ok(PendingReport::stored(outcome, not_matched));
        }
        let prepared = PreparedEvent::new(event);
        let mut runs = Vec::new();
        let mut not_matched = Vec::new();
        let candidates = self.catalog.automations.iter().map(|loaded| &loaded.compiled);
        let only = match audience {
            Audience::Everyone => None,
            Audience::Subscriber(name) | Audience::Named(name) => Some(name),
        };
        for automation in candidates.filter(|a| only.is_none_or(|name| a.name() == name)) {
            if only.is_none() && !automation.accepts(&prepared.event) {
                continue;
            }
            let read_now;
            let recall = match recalled.filter(|recalled| recalled.automation == automation.name()) {
                Some(recalled) => &recalled.recall,
                None => {
                    read_now = self.recall(automation, now)?;
                    &read_now
                }
            };
            let rendered = match automation.render(self.engine, &prepared, &recall.view, now) {
                Ok(rendered) if !rendered.matched => {
                    not_matched.push(NotMatched { automation: rendered.automation, reason: rendered.reason });
                    continue;
                }
                Ok(rendered) => match (rendered.task, rendered.flow) {
                    (Some(mut task), Some(flow)) => {
                        task.untrusted_input |= recall.untrusted;
                        Ok((task, flow))
                    }
                    _ => Err("the rules matched but gave no task".to_string()),
                },
                Err(error) => Err(error.to_string()),
            };
            runs.push(NewRun {
                automation: automation.name().to_string(),
                definition_hash: automation.definition_hash.clone(),
                rendered,
            });
        }
        Ok(PendingReport::new(not_matched, self.store.ingest_pending(&prepared.event, runs, now)))
    }

    /// `event` as a follow-up, when it is a reply in a thread a run of the audience's
    /// automation told and `runs::followup::decide` says it starts one: a run on the
    /// same branch, stored with the event in one step. A refused follow-up (its thread's
    /// queue is full) stores nothing and says why in `not_matched`. `None`: not a
    /// follow-up, the event goes on as any other.
    fn follow_up_of(
        &self,
        event: &Event,
        audience: Audience<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<PendingReport>, StoreError> {
        let Some(reply) = followup::reply_of(event) else { return Ok(None) };
        let Some(last) = self.store.thread_run(&reply.thread)? else { return Ok(None) };
        let Some(last) = self.store.run(last)? else { return Ok(None) };
        if let Audience::Subscriber(name) | Audience::Named(name) = audience
            && name != last.automation
        {
            return Ok(None);
        }
        let Some(loaded) = self.catalog.get(&last.automation) else { return Ok(None) };
        if self.store.event(&event.id)?.is_some() {
            // A delivery seen before: the store answers what it got the first time.
            return Ok(Some(PendingReport::new(Vec::new(), self.store.ingest_pending(event, Vec::new(), now))));
        }
        let queued = RunFilter {
            automation: Some(last.automation.clone()),
            state: Some(RunState::Queued),
            limit: 0,
            before: None,
        };
        let waiting = followup::waiting(&last, &self.store.runs(&queued)?);
        let config = &loaded.compiled.definition.follow_up;
        let task = match followup::decide(config, &reply, &last, waiting, now) {
            followup::Decision::Ignore(why) => {
                tracing::debug!(run_id = %last.id, automation = %last.automation, why, "Not a follow-up");
                return Ok(None);
            }
            followup::Decision::Refuse(why) => {
                tracing::warn!(run_id = %last.id, automation = %last.automation, why, "Refused a follow-up");
                let outcome = IngestOutcome {
                    event_id: event.id.clone(),
                    duplicate_delivery: false,
                    runs: Vec::new(),
                    cancelled: Vec::new(),
                };
                let not_matched = vec![NotMatched { automation: last.automation, reason: why }];
                return Ok(Some(PendingReport::stored(outcome, not_matched)));
            }
            followup::Decision::Start => followup::task(&last, &reply.text, Some(&reply.thread)),
        };
        let Some(task) = task else { return Ok(None) };
        let runs = vec![follow_up_run(&loaded.compiled, &last, task)];
        Ok(Some(PendingReport::new(Vec::new(), self.store.ingest_pending(event, runs, now))))
    }

    /// A follow-up of run `last` asked for by hand (`nightshift follow-up`, the API):
    /// `event` carries `text`. It starts even outside the automation's window, but not
    /// when the automation is gone, follow-ups are off, or the queue is full.
    pub fn follow_up_by_hand(
        &self,
        last: RunId,
        event: Event,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<IngestReport, String>, StoreError> {
        let last = self.store.run(last)?.ok_or(StoreError::NoSuchRun(last))?;
        let Some(loaded) = self.catalog.get(&last.automation) else {
            return Ok(Err(format!("{}'s automation `{}` is not loaded", last.id, last.automation)));
        };
        let queued = RunFilter {
            automation: Some(last.automation.clone()),
            state: Some(RunState::Queued),
            limit: 0,
            before: None,
        };
        let waiting = followup::waiting(&last, &self.store.runs(&queued)?);
        let mut config = loaded.compiled.definition.follow_up.clone();
        // A person asking is not held to the window.
        config.window = crate::config::DurationSpec::from_secs(u64::MAX);
        let reply = followup::Reply { thread: String::new(), text: text.to_string(), needs_phrase: false };
        match followup::decide(&config, &reply, &last, waiting, now) {
            followup::Decision::Start => {}
            followup::Decision::Ignore(why) | followup::Decision::Refuse(why) => return Ok(Err(why)),
        }
        let Some(task) = followup::task(&last, text, None) else {
            return Ok(Err(format!("{} has no task to follow up (its rendering failed)", last.id)));
        };
        let run = follow_up_run(&loaded.compiled, &last, task);
        let outcome = self.store.ingest(&event, vec![run], now)?;
        Ok(Ok(IngestReport { outcome, not_matched: Vec::new() }))
    }

    /// Whether the automation `name` is loaded and accepts `event`; `Err` says why not.
    fn subscriber_accepts(&self, name: &str, event: &Event) -> Result<(), String> {
        let loaded = self.catalog.get(name).ok_or_else(|| format!("no automation named `{name}` is loaded"))?;
        loaded.compiled.check_accepts(event)
    }

    /// What rules of `automation` read from earlier runs.
    fn recall(&self, automation: &CompiledAutomation, now: DateTime<Utc>) -> Result<Recall, StoreError> {
        let entries = self.store.memory(automation.name(), now)?;
        let untrusted = entries.values().any(|entry| entry.untrusted);
        let values: Map<String, Value> = entries.into_iter().map(|(key, entry)| (key, entry.value)).collect();
        // Reading earlier runs costs a scan on every ingest; skip it when no rule looks.
        let wanted = if automation.reads_history() { automation.definition.memory.history as usize } else { 0 };
        let history = self.store.history(automation.name(), wanted)?;
        let history: Vec<Value> = history.iter().map(run_view).collect();
        Ok(Recall { view: MemoryView::new(&values, history), values, untrusted })
    }

    /// Ends an attempt. When it is the run's last (success, time-out, or a failure with
    /// no retry left), `memory.after_run` runs first and its writes are stored with the
    /// completion. A failing script is recorded on the run and writes nothing.
    pub fn finish(
        &self,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        self.finish_with_memory(id, epoch, completion, None, now)
    }

    /// `finish` with what the agent wrote to `$NIGHTSHIFT_MEMORY_OUT` (keys to values,
    /// null removes): stored with the run as provenance when the attempt is the run's
    /// last, before `after_run`'s writes (which see it as `run.memory_out` and win).
    pub fn finish_with_memory(
        &self,
        id: RunId,
        epoch: Epoch,
        completion: Completion,
        agent_memory: Option<Map<String, Value>>,
        now: DateTime<Utc>,
    ) -> Result<Run, StoreError> {
        let run = self.store.run(id)?.ok_or(StoreError::NoSuchRun(id))?;
        let mut writes = Vec::new();
        if completion.ends_run(&run) && run.epoch == epoch {
            let loaded = self.catalog.get(&run.automation);
            if let Some(entries) = &agent_memory {
                let (edits, refused) = agent_edits(entries);
                for why in refused {
                    let text = format!("the agent's memory was not all stored: {why}");
                    self.store.append_activity(id, epoch, NewActivity::new(ActivityKind::Failure, text), now)?;
                }
                let ttl = loaded.and_then(|loaded| loaded.compiled.definition.memory.ttl);
                // The agent read the repository, and maybe the network: what it writes is
                // untrusted, whatever its event was.
                writes.extend(memory_writes(edits, true, ttl, now));
            }
            if let Some(loaded) = loaded {
                match self.after_run(&loaded.compiled, &run, &completion, agent_memory.as_ref(), now) {
                    Ok((edits, read_untrusted)) => {
                        let ttl = loaded.compiled.definition.memory.ttl;
                        writes.extend(memory_writes(edits, read_untrusted, ttl, now));
                    }
                    Err(why) => {
                        let text = format!("memory.after_run failed, its writes are dropped: {why}");
                        self.store.append_activity(id, epoch, NewActivity::new(ActivityKind::Failure, text), now)?;
                    }
                }
            }
        }
        self.store.complete(id, epoch, completion, writes, now)
    }

    fn after_run(
        &self,
        automation: &CompiledAutomation,
        run: &Run,
        completion: &Completion,
        agent_memory: Option<&Map<String, Value>>,
        now: DateTime<Utc>,
    ) -> Result<(MemoryEdits, bool), String> {
        if automation.definition.memory.after_run.is_none() {
            return Ok((MemoryEdits::new(), false));
        }
        let first_event = run.event_ids.first().ok_or("the run has no event")?;
        let stored = self.store.event(first_event).map_err(|e| e.to_string())?;
        let event = stored.ok_or_else(|| format!("event {first_event} is no longer stored"))?.event;
        let recall = self.recall(automation, now).map_err(|e| e.to_string())?;
        let mut view = finished_view(run, completion);
        view["memory_out"] = agent_memory.map_or(Value::Null, |entries| Value::Object(entries.clone()));
        let run_value = crate::rules::value::to_dynamic(&view);
        let edits = automation
            .after_run(self.engine, &PreparedEvent::new(event), &recall.view, recall.values, run_value, now)
            .map_err(|e| e.0)?;
        Ok((edits, recall.untrusted))
    }
}

/// The run a follow-up of `last` is: `task` with `last`'s flow, queued behind whatever
/// holds the branch (claims never run two runs of one branch at once), with no dedupe or
/// cooldown of its own.
fn follow_up_run(automation: &CompiledAutomation, last: &Run, task: crate::task::Task) -> NewRun {
    let flow = crate::task::Flow {
        dedupe_key: None,
        dedupe_window: None,
        cooldown: None,
        overlap: crate::config::Overlap::Queue,
        ..last.flow.clone()
    };
    NewRun {
        automation: last.automation.clone(),
        definition_hash: automation.definition_hash.clone(),
        rendered: Ok((task, flow)),
    }
}

/// The most bytes of memory an agent may write in one run (as JSON).
pub const MAX_AGENT_MEMORY: usize = 256 * 1024;

/// What the agent wrote, as edits (null removes), and why any of it was refused: keys
/// `after_run` could not use either, or the whole of it when it is too large.
fn agent_edits(entries: &Map<String, Value>) -> (MemoryEdits, Vec<String>) {
    let size = serde_json::to_vec(entries).map_or(usize::MAX, |json| json.len());
    if size > MAX_AGENT_MEMORY {
        return (MemoryEdits::new(), vec![format!("{size} bytes, more than the {MAX_AGENT_MEMORY} allowed")]);
    }
    let mut refused = Vec::new();
    let mut edits = MemoryEdits::new();
    for (key, value) in entries {
        match crate::rules::key_problem(key) {
            Some(why) => refused.push(why),
            None => {
                edits.insert(key.clone(), (!value.is_null()).then(|| value.clone()));
            }
        }
    }
    (edits, refused)
}

/// An automation's memory and history, read ahead of its rules (`Pipeline::recall_for`).
pub struct Recalled {
    automation: String,
    recall: Recall,
}

struct Recall {
    view: MemoryView,
    values: Map<String, Value>,
    untrusted: bool,
}

/// Edits as store writes, expiring after the automation's memory `ttl`; `untrusted` when
/// the writer read untrusted input.
fn memory_writes(
    edits: MemoryEdits,
    untrusted: bool,
    ttl: Option<crate::config::DurationSpec>,
    now: DateTime<Utc>,
) -> Vec<MemoryWrite> {
    let expires_at = ttl.and_then(|ttl| crate::runs::clock::checked_later(now, ttl.as_duration()));
    edits
        .into_iter()
        .map(|(key, value)| MemoryWrite {
            key,
            change: match value {
                Some(value) => MemoryChange::Set { value, expires_at },
                None => MemoryChange::Remove,
            },
            untrusted,
        })
        .collect()
}

/// An earlier run as rules read it in `history`.
pub fn run_view(run: &Run) -> Value {
    let result = run.result.clone().unwrap_or_default();
    json!({
        "id": run.id.to_string(),
        "state": run.state.as_str(),
        "attempt": run.attempt,
        "summary": result.summary,
        "exit_code": result.exit_code,
        "details": result.details,
        "reason": run.reason,
        "branch": run.task.as_ref().map(|task| task.branch.clone()),
        "event_ids": run.event_ids,
        "created_at": run.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "finished_at": run.finished_at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    })
}

/// The run as `after_run` reads it: as it will be once this completion is stored.
fn finished_view(run: &Run, completion: &Completion) -> Value {
    let mut view = run_view(run);
    let (state, result, reason) = match completion {
        Completion::Succeeded { result } => ("succeeded", Some(result), None),
        Completion::Failed { reason, result, .. } => ("failed", result.as_ref(), Some(reason)),
        Completion::TimedOut { reason } => ("timed_out", None, Some(reason)),
        Completion::PlanReady { .. } => ("awaiting_approval", None, None),
    };
    let result = result.cloned().unwrap_or_default();
    view["state"] = json!(state);
    view["summary"] = json!(result.summary);
    view["exit_code"] = json!(result.exit_code);
    view["details"] = json!(result.details);
    view["reason"] = json!(reason);
    view
}
