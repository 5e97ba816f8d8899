//! Cron scheduling end to end, driven by a controllable clock over a real store:
//! timezones and daylight saving changes, the misfire policies after an outage, a
//! restart in the middle of a slot (never a second run), and new automations that
//! do not fire slots from before they existed.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift::pipeline::Pipeline;
use nightshift::runs::{Run, RunState};
use nightshift::scheduler::{Clock, ManualClock};
use nightshift::store::{Disposition, RunFilter, ScheduleState, SledStore, Store, StoreError};
use tokio::sync::watch;

use crate::{load, temp_dir_with};

/// The longest any wait for the scheduler task may take.
const WAIT: Duration = Duration::from_secs(10);

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 instant")
}

/// The event id of `automation`'s slot at `slot`.
fn slot_id(automation: &str, slot: DateTime<Utc>) -> String {
    format!("cron:{automation}:{}", slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A `ManualClock` that also logs every instant the scheduler goes to sleep until, so a
/// test knows when the scheduler has handled everything due and is idle again.
struct TestClock {
    manual: ManualClock,
    wakes: watch::Sender<Vec<DateTime<Utc>>>,
}

impl TestClock {
    fn new(start: &str) -> Arc<TestClock> {
        Arc::new(TestClock { manual: ManualClock::new(at(start)), wakes: watch::Sender::new(Vec::new()) })
    }

    fn wakes(&self) -> Vec<DateTime<Utc>> {
        self.wakes.borrow().clone()
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.manual.now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.wakes.send_modify(|wakes| wakes.push(at));
        self.manual.sleep_until(at)
    }
}

/// An automation `name` whose trigger is `cron: { <cron> }`; its branch and prompt
/// name the slot's local date and time.
fn automation(name: &str, cron: &str) -> (String, String) {
    let yaml = format!(
        "name: {name}\ntrigger:\n  cron: {{ {cron} }}\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  base: main\n  branch: \"agent/{name}-{{{{ event.local_date }}}}\"\n  prompt: \"Audit for {{{{ event.local_date }}}} {{{{ event.local_time }}}}\"\n"
    );
    (format!("{name}.yaml"), yaml)
}

/// A pipeline over `store` and the automations loaded from YAML files in a temp dir.
fn pipeline(store: &Arc<dyn Store>, automations: &[(String, String)]) -> Arc<Pipeline> {
    let files: Vec<(&str, &str)> = automations.iter().map(|(name, yaml)| (name.as_str(), yaml.as_str())).collect();
    let dir = temp_dir_with(&files);
    let (catalog, diagnostics) = load(dir.path());
    assert!(diagnostics.is_empty(), "{automations:#?}\n{diagnostics:#?}");
    assert_eq!(catalog.automations.len(), automations.len());
    Arc::new(Pipeline::new(Arc::new(catalog), Arc::clone(store)))
}

/// Opens the store in `dir`, waiting while a closing store still holds its lock.
async fn open_store(dir: &Path) -> Arc<dyn Store> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match SledStore::open(dir) {
            Ok(store) => return Arc::new(store),
            Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("the store does not reopen: {error}"),
        }
    }
}

/// A running scheduler.
struct Engine {
    clock: Arc<TestClock>,
    pipelines: watch::Sender<Arc<Pipeline>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts the scheduler and waits until it has handled what was due at start.
    async fn start(clock: &Arc<TestClock>, pipeline: Arc<Pipeline>) -> Engine {
        let mark = clock.wakes.borrow().len();
        let (pipelines, receiver) = watch::channel(pipeline);
        let (shutdown, stop) = watch::channel(false);
        let dyn_clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
        let task = tokio::spawn(nightshift::scheduler::run(dyn_clock, receiver, stop));
        let engine = Engine { clock: Arc::clone(clock), pipelines, shutdown, task };
        engine.idle(mark).await;
        engine
    }

    /// Waits until the scheduler sleeps (again, after the first `mark` sleeps) until a
    /// time still to come: everything due by now has been fired.
    async fn idle(&self, mark: usize) {
        let now = self.clock.now();
        let mut wakes = self.clock.wakes.subscribe();
        let asleep = wakes.wait_for(|wakes| wakes.len() > mark && wakes.last().is_some_and(|next| *next > now));
        if tokio::time::timeout(WAIT, asleep).await.is_err() {
            let finished = self.task.is_finished();
            panic!("the scheduler did not go idle at {now} (task finished: {finished}): {:?}", self.clock.wakes());
        }
    }

    /// Moves the clock to `to` and waits until every slot due by then has been fired.
    async fn set(&self, to: DateTime<Utc>) {
        // A sleep until a time after `to` is a sleep that `to` does not end.
        self.clock.manual.set(to);
        self.idle(0).await;
    }

    /// Swaps in a new catalog, as a reload does, and waits until it is scheduled.
    async fn reload(&self, pipeline: Arc<Pipeline>) {
        let mark = self.clock.wakes.borrow().len();
        self.pipelines.send_replace(pipeline);
        self.idle(mark).await;
    }

    /// Stops the scheduler and waits until its task has ended.
    async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(WAIT, self.task).await.expect("the scheduler stops").expect("the scheduler did not panic");
    }
}

/// `automation`'s runs, oldest slot first.
fn runs(store: &dyn Store, automation: &str) -> Vec<Run> {
    let filter = RunFilter { automation: Some(automation.into()), ..RunFilter::default() };
    let mut runs = store.runs(&filter).unwrap();
    runs.sort_by(|a, b| a.event_ids.cmp(&b.event_ids));
    runs
}

/// The event ids of the automation's runs, skipped slots' records left out.
fn fired(store: &dyn Store, automation: &str) -> Vec<String> {
    runs(store, automation)
        .iter()
        .filter(|run| run.skip.is_none())
        .map(|run| {
            assert_eq!(run.event_ids.len(), 1, "one slot per run: {run:#?}");
            run.event_ids[0].clone()
        })
        .collect()
}

fn ids(automation: &str, slots: &[&str]) -> Vec<String> {
    slots.iter().map(|slot| slot_id(automation, at(slot))).collect()
}

fn progress(store: &dyn Store, automation: &str) -> Option<ScheduleState> {
    store.schedule(automation, "0").unwrap()
}

/// Waits until `automation`'s stored progress has reached `slot` (it is written after
/// the slot's event is durable) and returns it.
async fn progress_reaches(store: &dyn Store, automation: &str, slot: &str) -> ScheduleState {
    let slot = at(slot);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = progress(store, automation);
        if let Some(state) = state.as_ref().filter(|state| state.last_slot == slot) {
            return state.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{automation}'s progress never reached {slot}: {state:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the run of `automation`'s slot at `slot`: created when the clock said `fired_at`,
/// queued, and rendered from the slot's local date (`local` is `YYYY-MM-DD HH:MM`).
fn assert_slot_run(store: &dyn Store, automation: &str, slot: DateTime<Utc>, fired_at: DateTime<Utc>, local: &str) {
    let id = slot_id(automation, slot);
    let event = store.event(&id).unwrap().unwrap_or_else(|| panic!("no event {id}"));
    assert_eq!(event.outcomes.len(), 1, "{event:#?}");
    assert_eq!(event.outcomes[0].disposition, Disposition::Created);
    let run = store.run(event.outcomes[0].run).unwrap().unwrap();
    assert_eq!(run.created_at, fired_at, "{id} fired at the wrong time");
    assert_eq!(run.event_ids, [id.as_str()]);
    assert_eq!(run.state, RunState::Queued, "{id}");
    let task = run.task.expect("a rendered task");
    let (date, _) = local.split_once(' ').unwrap();
    assert_eq!(task.branch, format!("agent/{automation}-{date}"), "{id}");
    assert_eq!(task.prompt, format!("Audit for {local}"), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_fire_at_their_local_times_across_the_spring_forward_gap() {
    let data = tempfile::tempdir().unwrap();
    let store = open_store(data.path()).await;
    let pipeline = pipeline(
        &store,
        &[
            automation("nightly", r#"schedule: "30 2 * * *", timezone: Europe/Berlin, misfire: run_all"#),
            automation("delhi", r#"schedule: "0 0 * * *", timezone: Asia/Kolkata"#),
        ],
    );
    let clock = TestClock::new("2026-03-27T12:00:00Z");
    let engine = Engine::start(&clock, pipeline).await;
    // (automation, slot in UTC, the slot in local time), in the order they come.
    let slots = [
        // Midnight in Kolkata (UTC+05:30, no DST) is 18:30 UTC the day before.
        ("delhi", "2026-03-27T18:30:00Z", "2026-03-28 00:00"),
        ("nightly", "2026-03-28T01:30:00Z", "2026-03-28 02:30"), // CET, UTC+1
        ("delhi", "2026-03-28T18:30:00Z", "2026-03-29 00:00"),
        // Berlin jumps from 02:00 to 03:00: 02:30 does not exist, the slot is 03:00 CEST.
        ("nightly", "2026-03-29T01:00:00Z", "2026-03-29 03:00"),
        ("delhi", "2026-03-29T18:30:00Z", "2026-03-30 00:00"),
        ("nightly", "2026-03-30T00:30:00Z", "2026-03-30 02:30"), // CEST, UTC+2
        ("delhi", "2026-03-30T18:30:00Z", "2026-03-31 00:00"),
        ("nightly", "2026-03-31T00:30:00Z", "2026-03-31 02:30"),
    ];
    for (automation, slot, local) in slots {
        let slot = at(slot);
        engine.set(slot - chrono::Duration::seconds(1)).await;
        assert_eq!(store.event(&slot_id(automation, slot)).unwrap(), None, "{automation} fired before {slot}");
        engine.set(slot).await;
        assert_slot_run(store.as_ref(), automation, slot, slot, local);
        // Before the next slot: progress written out of order can go back (see
        // `progress_never_moves_back_when_several_slots_are_due_at_once`).
        progress_reaches(store.as_ref(), automation, &slot.to_rfc3339()).await;
    }
    engine.set(at("2026-03-31T12:00:00Z")).await;
    let nightly = ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"];
    assert_eq!(fired(store.as_ref(), "nightly"), ids("nightly", &nightly));
    let delhi = ["2026-03-27T18:30:00Z", "2026-03-28T18:30:00Z", "2026-03-29T18:30:00Z", "2026-03-30T18:30:00Z"];
    assert_eq!(fired(store.as_ref(), "delhi"), ids("delhi", &delhi));
    // The scheduler slept until exactly these instants, and now waits for the next one.
    let mut expected: Vec<DateTime<Utc>> = slots.iter().map(|(_, slot, _)| at(slot)).collect();
    expected.push(at("2026-03-31T18:30:00Z"));
    assert_eq!(clock.wakes(), expected);
    let state = progress_reaches(store.as_ref(), "nightly", "2026-03-31T00:30:00Z").await;
    assert_eq!(state.last_fired, Some(at("2026-03-31T00:30:00Z")));
    assert_eq!((state.skipped_total, state.skipped.len()), (0, 0));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_time_repeated_at_the_fall_back_fires_once() {
    let data = tempfile::tempdir().unwrap();
    let store = open_store(data.path()).await;
    let pipeline = pipeline(
        &store,
        &[automation("nightly", r#"schedule: "30 2 * * *", timezone: Europe/Berlin, misfire: run_all"#)],
    );
    let clock = TestClock::new("2026-10-24T12:00:00Z");
    let engine = Engine::start(&clock, pipeline).await;
    // Half an hour at a time through the night: 02:30 Berlin is both 00:30 UTC (CEST)
    // and 01:30 UTC (CET) on the 25th, and the clock stops at both.
    let mut now = at("2026-10-24T12:00:00Z");
    while now < at("2026-10-26T12:00:00Z") {
        now += chrono::Duration::minutes(30);
        engine.set(now).await;
        if store.event(&slot_id("nightly", now)).unwrap().is_some() {
            // See `progress_never_moves_back_when_several_slots_are_due_at_once`.
            progress_reaches(store.as_ref(), "nightly", &now.to_rfc3339()).await;
        }
    }
    let first = at("2026-10-25T00:30:00Z");
    let ids = fired(store.as_ref(), "nightly");
    assert_eq!(ids, [slot_id("nightly", first), slot_id("nightly", at("2026-10-26T01:30:00Z"))]);
    assert_slot_run(store.as_ref(), "nightly", first, first, "2026-10-25 02:30");
    let after = at("2026-10-26T01:30:00Z");
    assert_slot_run(store.as_ref(), "nightly", after, after, "2026-10-26 02:30");
    progress_reaches(store.as_ref(), "nightly", "2026-10-26T01:30:00Z").await;
    engine.stop().await;
}

/// Walks the clock through `slots` (automation, slot in UTC, the slot in local time, in
/// order) and checks that each fires at its instant, not a second before (slots of one
/// instant are listed together), then moves
/// the clock to `end` and checks that nothing else fired.
async fn check_slots(automations: &[(String, String)], start: &str, slots: &[(&str, &str, &str)], end: &str) {
    let data = tempfile::tempdir().unwrap();
    let store = open_store(data.path()).await;
    let clock = TestClock::new(start);
    let engine = Engine::start(&clock, pipeline(&store, automations)).await;
    for (automation, slot, local) in slots {
        let slot = at(slot);
        if clock.now() < slot {
            engine.set(slot - chrono::Duration::seconds(1)).await;
            assert_eq!(store.event(&slot_id(automation, slot)).unwrap(), None, "{automation} fired before {slot}");
            engine.set(slot).await;
        }
        assert_slot_run(store.as_ref(), automation, slot, slot, local);
        // See `progress_never_moves_back_when_several_slots_are_due_at_once`.
        progress_reaches(store.as_ref(), automation, &slot.to_rfc3339()).await;
    }
    engine.set(at(end)).await;
    for (name, _) in automations {
        let name = name.trim_end_matches(".yaml");
        let expected: Vec<&str> = slots.iter().filter(|(a, _, _)| *a == name).map(|(_, slot, _)| *slot).collect();
        assert_eq!(fired(store.as_ref(), name), ids(name, &expected), "{name}");
    }
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_times_in_the_spring_forward_gap_fire_once_after_it() {
    // Berlin jumps from 02:00 to 03:00 on 2026-03-29: 02:00, 02:30 and 02:23 do not
    // exist; each job runs once, at 03:00 CEST (01:00 UTC), as cron does.
    let automations = [
        automation("halves", r#"schedule: "0,30 2 * * *", timezone: Europe/Berlin"#),
        automation("evens", r#"schedule: "23 0-20/2 * * *", timezone: Europe/Berlin"#),
    ];
    let slots = [
        ("evens", "2026-03-28T23:23:00Z", "2026-03-29 00:23"),
        ("halves", "2026-03-29T01:00:00Z", "2026-03-29 03:00"),
        ("evens", "2026-03-29T01:00:00Z", "2026-03-29 03:00"),
        ("evens", "2026-03-29T02:23:00Z", "2026-03-29 04:23"),
    ];
    check_slots(&automations, "2026-03-28T22:00:00Z", &slots, "2026-03-29T04:00:00Z").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_times_in_the_repeated_hour_fire_in_its_first_pass_only() {
    // Berlin goes back from 03:00 to 02:00 on 2026-10-25: 02:23 is 00:23 UTC (CEST) and
    // 01:23 UTC (CET); a fixed-time job runs at the first. `0 * * * *` runs on elapsed
    // time: both 02:00s.
    let automations = [
        automation("evens", r#"schedule: "23 0-20/2 * * *", timezone: Europe/Berlin"#),
        automation("hourly", r#"schedule: "0 * * * *", timezone: Europe/Berlin"#),
    ];
    let slots = [
        ("evens", "2026-10-24T22:23:00Z", "2026-10-25 00:23"),
        ("hourly", "2026-10-24T23:00:00Z", "2026-10-25 01:00"),
        ("hourly", "2026-10-25T00:00:00Z", "2026-10-25 02:00"),
        ("evens", "2026-10-25T00:23:00Z", "2026-10-25 02:23"),
        ("hourly", "2026-10-25T01:00:00Z", "2026-10-25 02:00"),
        ("hourly", "2026-10-25T02:00:00Z", "2026-10-25 03:00"),
        ("hourly", "2026-10-25T03:00:00Z", "2026-10-25 04:00"),
        ("evens", "2026-10-25T03:23:00Z", "2026-10-25 04:23"),
    ];
    check_slots(&automations, "2026-10-24T22:00:00Z", &slots, "2026-10-25T03:30:00Z").await;
}

/// One automation per misfire policy, daily at 09:00 Berlin (08:00 UTC in November).
fn misfire_automations() -> Vec<(String, String)> {
    let daily = r#"schedule: "0 9 * * *", timezone: Europe/Berlin, misfire_grace: 5m"#;
    vec![
        automation("skipper", &format!("{daily}, misfire: skip")),
        automation("once", &format!("{daily}, misfire: run_once")),
        automation("all", &format!("{daily}, misfire: run_all, max_catchup: 2")),
    ]
}

const POLICIES: [&str; 3] = ["skipper", "once", "all"];

/// Starts a scheduler over a freshly opened store in `data` at the clock's time, waits
/// until every policy's progress reached `slot`, and stops it and closes the store.
async fn restart_until(clock: &Arc<TestClock>, data: &Path, slot: &str) -> Arc<dyn Store> {
    let store = open_store(data).await;
    let engine = Engine::start(clock, pipeline(&store, &misfire_automations())).await;
    for automation in POLICIES {
        progress_reaches(store.as_ref(), automation, slot).await;
    }
    engine.stop().await;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_missed_while_down_follow_the_misfire_policy_and_late_ones_within_grace_fire() {
    let data = tempfile::tempdir().unwrap();
    let clock = TestClock::new("2026-11-20T07:00:00Z");
    {
        let store = open_store(data.path()).await;
        let engine = Engine::start(&clock, pipeline(&store, &misfire_automations())).await;
        engine.set(at("2026-11-20T08:00:00Z")).await;
        for automation in POLICIES {
            progress_reaches(store.as_ref(), automation, "2026-11-20T08:00:00Z").await;
            assert_eq!(fired(store.as_ref(), automation), ids(automation, &["2026-11-20T08:00:00Z"]));
        }
        engine.stop().await;
    }

    // Down from the 20th until noon on the 24th: the slots of the 21st to the 24th were
    // missed. The store is closed and reopened in between.
    clock.manual.set(at("2026-11-24T12:00:00Z"));
    let store = restart_until(&clock, data.path(), "2026-11-24T08:00:00Z").await;
    let missed = ["2026-11-21T08:00:00Z", "2026-11-22T08:00:00Z", "2026-11-23T08:00:00Z", "2026-11-24T08:00:00Z"];
    let skipped = |store: &Arc<dyn Store>, automation: &str| {
        let state = progress(store.as_ref(), automation).unwrap();
        (state.skipped, state.skipped_total, state.last_fired)
    };
    let slots = |slots: &[&str]| slots.iter().map(|slot| at(slot)).collect::<Vec<_>>();
    // skip: nothing fires, every missed slot is recorded.
    assert_eq!(fired(store.as_ref(), "skipper"), ids("skipper", &["2026-11-20T08:00:00Z"]));
    assert_eq!(skipped(&store, "skipper"), (slots(&missed), 4, Some(at("2026-11-20T08:00:00Z"))));
    // Each skipped slot is also a skipped run that says why.
    let records: Vec<String> = runs(store.as_ref(), "skipper")
        .iter()
        .filter(|run| run.state == RunState::Skipped)
        .map(|run| run.skip.as_ref().unwrap().to_string())
        .collect();
    let expected: Vec<String> =
        missed.iter().map(|slot| format!("misfire: slot {} missed (skip)", at(slot).to_rfc3339())).collect();
    assert_eq!(records, expected);
    // run_once: the newest missed slot fires, the older ones are skipped.
    assert_eq!(fired(store.as_ref(), "once"), ids("once", &["2026-11-20T08:00:00Z", missed[3]]));
    assert_eq!(skipped(&store, "once"), (slots(&missed[..3]), 3, Some(at(missed[3]))));
    // run_all with max_catchup 2: the newest two fire.
    assert_eq!(fired(store.as_ref(), "all"), ids("all", &["2026-11-20T08:00:00Z", missed[2], missed[3]]));
    assert_eq!(skipped(&store, "all"), (slots(&missed[..2]), 2, Some(at(missed[3]))));
    // Catch-up runs are made at restart, and each is its slot's own.
    for (automation, slot) in [("once", missed[3]), ("all", missed[2]), ("all", missed[3])] {
        let date = &slot[..10];
        assert_slot_run(store.as_ref(), automation, at(slot), at("2026-11-24T12:00:00Z"), &format!("{date} 09:00"));
    }
    drop(store);

    // Back 4 minutes after the 25th's slot: within the 5 minute grace it is on time, so
    // even `skip` runs it, and `run_once` adds nothing.
    clock.manual.set(at("2026-11-25T08:04:00Z"));
    let store = restart_until(&clock, data.path(), "2026-11-25T08:00:00Z").await;
    for automation in POLICIES {
        assert_eq!(fired(store.as_ref(), automation).last(), Some(&slot_id(automation, at("2026-11-25T08:00:00Z"))));
    }
    assert_eq!(fired(store.as_ref(), "skipper").len(), 2);
    assert_eq!(fired(store.as_ref(), "once").len(), 3);
    assert_eq!(fired(store.as_ref(), "all").len(), 4);
    assert_eq!(skipped(&store, "skipper").1, 4);
    assert_eq!(skipped(&store, "once").1, 3);
    assert_slot_run(
        store.as_ref(),
        "skipper",
        at("2026-11-25T08:00:00Z"),
        at("2026-11-25T08:04:00Z"),
        "2026-11-25 09:00",
    );
    drop(store);

    // Back one second past the grace of the 26th's slot: it was missed.
    clock.manual.set(at("2026-11-26T08:05:01Z"));
    let store = restart_until(&clock, data.path(), "2026-11-26T08:00:00Z").await;
    let the_26th = "2026-11-26T08:00:00Z";
    assert_eq!(fired(store.as_ref(), "skipper").len(), 2);
    let (skips, total, _) = skipped(&store, "skipper");
    assert_eq!((skips.last(), total), (Some(&at(the_26th)), 5));
    for automation in ["once", "all"] {
        assert_eq!(fired(store.as_ref(), automation).last(), Some(&slot_id(automation, at(the_26th))));
    }
    drop(store);

    // And the restarted schedule goes on firing on time.
    let store = open_store(data.path()).await;
    let engine = Engine::start(&clock, pipeline(&store, &misfire_automations())).await;
    engine.set(at("2026-11-27T08:00:00Z")).await;
    for automation in POLICIES {
        assert_eq!(fired(store.as_ref(), automation).last(), Some(&slot_id(automation, at("2026-11-27T08:00:00Z"))));
    }
    engine.stop().await;
}

/// A daily 02:30 Berlin automation that runs every missed slot.
fn nightly() -> Vec<(String, String)> {
    vec![automation(
        "nightly",
        r#"schedule: "30 2 * * *", timezone: Europe/Berlin, misfire: run_all, misfire_grace: 5m, max_catchup: 5"#,
    )]
}

/// Rewinds `nightly`'s stored progress to `slot`, as if the engine had crashed after
/// later slots' events were stored but before their progress was, and closes the store.
fn rewind(store: Arc<dyn Store>, slot: &str) {
    let state = ScheduleState {
        last_slot: at(slot),
        updated_at: at(slot),
        last_fired: Some(at(slot)),
        ..ScheduleState::default()
    };
    store.set_schedule("nightly", "0", &state).unwrap();
    assert_eq!(progress(store.as_ref(), "nightly"), Some(state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_slot_makes_no_second_run() {
    let data = tempfile::tempdir().unwrap();
    let clock = TestClock::new("2026-11-20T00:00:00Z");
    let store = open_store(data.path()).await;
    let engine = Engine::start(&clock, pipeline(&store, &nightly())).await;
    for slot in ["2026-11-20T01:30:00Z", "2026-11-21T01:30:00Z"] {
        engine.set(at(slot)).await;
        progress_reaches(store.as_ref(), "nightly", slot).await;
    }
    engine.stop().await;
    let first_runs = runs(store.as_ref(), "nightly");
    assert_eq!(fired(store.as_ref(), "nightly"), ids("nightly", &["2026-11-20T01:30:00Z", "2026-11-21T01:30:00Z"]));
    rewind(store, "2026-11-20T01:30:00Z");

    // The 21st's event is stored, its progress is not: back within the grace, the slot
    // is due again and fires again, as a duplicate delivery.
    clock.manual.set(at("2026-11-21T01:33:00Z"));
    let store = open_store(data.path()).await;
    assert_eq!(progress(store.as_ref(), "nightly").unwrap().last_slot, at("2026-11-20T01:30:00Z"));
    let engine = Engine::start(&clock, pipeline(&store, &nightly())).await;
    let state = progress_reaches(store.as_ref(), "nightly", "2026-11-21T01:30:00Z").await;
    assert_eq!(state.last_fired, Some(at("2026-11-21T01:30:00Z")));
    engine.stop().await;
    assert_eq!(runs(store.as_ref(), "nightly"), first_runs, "the slot fired again made no run");
    let event = store.event(&slot_id("nightly", at("2026-11-21T01:30:00Z"))).unwrap().unwrap();
    assert_eq!(event.outcomes.len(), 1);
    assert_eq!(event.outcomes[0].run, first_runs[1].id);
    rewind(store, "2026-11-20T01:30:00Z");

    // Again, but down past the grace until the 23rd: run_all catches up the 21st (its
    // run already exists), the 22nd and the 23rd, one run per slot.
    clock.manual.set(at("2026-11-23T12:00:00Z"));
    let store = open_store(data.path()).await;
    let engine = Engine::start(&clock, pipeline(&store, &nightly())).await;
    let state = progress_reaches(store.as_ref(), "nightly", "2026-11-23T01:30:00Z").await;
    assert_eq!((state.last_fired, state.skipped_total), (Some(at("2026-11-23T01:30:00Z")), 0));
    let slots = ["2026-11-20T01:30:00Z", "2026-11-21T01:30:00Z", "2026-11-22T01:30:00Z", "2026-11-23T01:30:00Z"];
    assert_eq!(fired(store.as_ref(), "nightly"), ids("nightly", &slots));
    let all = runs(store.as_ref(), "nightly");
    assert_eq!(all[..2], first_runs[..], "the runs from before the restarts are untouched");
    assert_slot_run(store.as_ref(), "nightly", at(slots[2]), at("2026-11-23T12:00:00Z"), "2026-11-22 02:30");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_automation_does_not_fire_slots_from_before_it_started() {
    let data = tempfile::tempdir().unwrap();
    let store = open_store(data.path()).await;
    // Started at noon: every slot before, the 24th's 02:30 Berlin included, is past.
    let clock = TestClock::new("2026-11-24T12:00:00Z");
    let engine = Engine::start(&clock, pipeline(&store, &nightly())).await;
    assert_eq!(store.runs(&RunFilter::default()).unwrap(), []);
    assert_eq!(store.event(&slot_id("nightly", at("2026-11-24T01:30:00Z"))).unwrap(), None);
    assert_eq!(clock.wakes().last(), Some(&at("2026-11-25T01:30:00Z")), "it waits for the first slot to come");
    engine.set(at("2026-11-25T01:30:00Z")).await;
    progress_reaches(store.as_ref(), "nightly", "2026-11-25T01:30:00Z").await;
    assert_eq!(fired(store.as_ref(), "nightly"), ids("nightly", &["2026-11-25T01:30:00Z"]));

    // An hourly automation added by a reload at 12:10 runs from 13:00 on, not at 12:00
    // or before; `nightly` keeps its progress and fires nothing again.
    engine.set(at("2026-11-25T12:10:00Z")).await;
    let mut both = nightly();
    both.push(automation("hourly", r#"schedule: "0 * * * *", misfire: run_all, max_catchup: 100"#));
    engine.reload(pipeline(&store, &both)).await;
    assert_eq!(fired(store.as_ref(), "hourly"), Vec::<String>::new());
    assert_eq!(fired(store.as_ref(), "nightly"), ids("nightly", &["2026-11-25T01:30:00Z"]));
    engine.set(at("2026-11-25T13:00:00Z")).await;
    assert_eq!(fired(store.as_ref(), "hourly"), ids("hourly", &["2026-11-25T13:00:00Z"]));
    progress_reaches(store.as_ref(), "hourly", "2026-11-25T13:00:00Z").await;
    engine.stop().await;
}

/// A new trigger's start is stored at once: a restart before its first slot still knows
/// when it started, so slots missed while down follow the misfire policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_missed_before_a_new_triggers_first_slot_follow_the_misfire_policy() {
    let data = tempfile::tempdir().unwrap();
    let clock = TestClock::new("2026-11-24T12:00:00Z");
    let store = open_store(data.path()).await;
    let engine = Engine::start(&clock, pipeline(&store, &nightly())).await;
    engine.stop().await;
    drop(store);
    // Down from noon on the 24th, before the first slot, until noon on the 26th.
    clock.manual.set(at("2026-11-26T12:00:00Z"));
    let store = open_store(data.path()).await;
    let engine = Engine::start(&clock, pipeline(&store, &nightly())).await;
    progress_reaches(store.as_ref(), "nightly", "2026-11-26T01:30:00Z").await;
    engine.stop().await;
    assert_eq!(fired(store.as_ref(), "nightly"), ids("nightly", &["2026-11-25T01:30:00Z", "2026-11-26T01:30:00Z"]));
}

/// Each fired slot records progress once its event is durable, and those waits finish
/// in any order: the stored progress must still never move back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_never_moves_back_when_several_slots_are_due_at_once() {
    for _ in 0..5 {
        let data = tempfile::tempdir().unwrap();
        let clock = TestClock::new("2026-11-24T12:00:00Z");
        let store = open_store(data.path()).await;
        let every_second = automation("fast", r#"schedule: "* * * * * *", misfire: run_all"#);
        let engine = Engine::start(&clock, pipeline(&store, &[every_second])).await;
        // The engine was held up (a suspended host, say) for 30 seconds.
        engine.set(at("2026-11-24T12:00:30Z")).await;
        assert_eq!(fired(store.as_ref(), "fast").len(), 30);
        progress_reaches(store.as_ref(), "fast", "2026-11-24T12:00:30Z").await;
        engine.stop().await;
    }
}
