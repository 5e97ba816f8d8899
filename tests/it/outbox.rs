//! The durable outbox: messages written in the same commit as a run's change of state,
//! kept across a restart, and the sender that delivers them through a recording
//! `Transport` (the transports' own request shapes are tested in their modules).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use nightshift::config::{Approval, DurationSpec, OutputFormat, SecretRef};
use nightshift::delivery::sender::Sender;
use nightshift::delivery::{Attempt, BoxFuture, Kind, Message, Outcome, Posted, Report, Target, Transport};
use nightshift::event::Event;
use nightshift::netpolicy::NetworkPolicy;
use nightshift::runs::{ActivityKind, Completion, Epoch, RunId, RunResult, RunState};
use nightshift::scheduler::ManualClock;
use nightshift::store::{NewRun, OutboxKey, OutboxState, SledStore, Store};
use nightshift::task::{AgentCommand, Flow, PhasePolicies, Task};
use nightshift::triggers::TriggerKind;
use tokio::sync::watch;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

/// A token in a file, so no test touches the environment.
fn token(dir: &Path) -> SecretRef {
    let path = dir.join("token");
    std::fs::write(&path, "xoxb-test\n").expect("token file");
    SecretRef::File(path.display().to_string())
}

fn slack(dir: &Path) -> Target {
    Target::Slack { channel: "C123".into(), thread_ts: Some("1700000000.1".into()), token: token(dir) }
}

fn pull_request(dir: &Path) -> Target {
    Target::GithubPullRequest { repo: "acme/api".into(), base: "main".into(), draft: true, token: token(dir) }
}

fn webhook() -> Target {
    Target::Webhook { url: "https://hooks.example.com/in".into(), secret: None }
}

fn task(targets: Vec<Target>) -> Task {
    Task {
        automation: "probe".into(),
        agent: AgentCommand {
            profile: "codex".into(),
            argv: vec!["codex".into(), "{prompt}".into()],
            plan_argv: None,
            env: Default::default(),
            output: OutputFormat::default(),
            paths: Vec::new(),
            pass_env: Vec::new(),
        },
        repo: "/srv/git/api".into(),
        base: "main".into(),
        branch: "nightshift/probe-1".into(),
        prompt: "p".into(),
        setup: Vec::new(),
        secrets: Default::default(),
        network: PhasePolicies { setup: NetworkPolicy::default(), agent: NetworkPolicy::default() },
        paths: Vec::new(),
        timeout: DurationSpec::from_secs(60),
        setup_timeout: DurationSpec::from_secs(60),
        approval: Approval::default(),
        push: true,
        untrusted_input: false,
        limits: Default::default(),
        notify: targets,
        follows: None,
        plan: None,
        staging: Default::default(),
    }
}

/// Stores one run of `probe` with `targets` and `flow`, created at `at(secs)`.
fn ingest(store: &dyn Store, name: &str, targets: Vec<Target>, flow: Flow, secs: i64) -> RunId {
    let mut event = Event::from_delivery(TriggerKind::Manual, serde_json::json!({}), Default::default(), at(secs));
    event.id = format!("manual:{name}");
    let new = NewRun { automation: "probe".into(), definition_hash: "h".into(), rendered: Ok((task(targets), flow)) };
    store.ingest(&event, vec![new], at(secs)).expect("ingest").runs[0].run
}

/// Claims the run and starts it.
fn start(store: &dyn Store, secs: i64) -> (RunId, Epoch) {
    let claim = store.claim("w", Duration::from_secs(600), at(secs)).expect("claim").expect("a queued run");
    store.mark_running(claim.run.id, claim.lease.epoch, at(secs)).expect("running");
    (claim.run.id, claim.lease.epoch)
}

fn succeed(store: &dyn Store, run: RunId, epoch: Epoch, secs: i64) {
    let result = RunResult { summary: "fixed the bug".into(), ..Default::default() };
    store.complete(run, epoch, Completion::Succeeded { result }, Vec::new(), at(secs)).expect("complete");
}

fn messages(store: &dyn Store, run: RunId) -> Vec<(u32, Kind, OutboxState)> {
    store.outbox(run).expect("outbox").into_iter().map(|e| (e.key.target, e.key.kind, e.state)).collect()
}

fn key(run: RunId, target: u32, kind: Kind) -> OutboxKey {
    OutboxKey { run, target, kind }
}

#[test]
fn messages_are_written_with_the_change_of_state_and_are_there_after_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let targets = vec![slack(dir.path()), pull_request(dir.path()), webhook()];
    let run = {
        let store = SledStore::open(&dir.path().join("data")).expect("store opens");
        let run = ingest(&store, "a", targets, Flow::default(), 0);
        assert!(messages(&store, run).is_empty(), "a queued run has none");
        let (run, epoch) = start(&store, 1);
        assert_eq!(messages(&store, run), vec![(0, Kind::Start, OutboxState::Pending)]);
        succeed(&store, run, epoch, 2);
        run
    };
    // Dropped without sending anything: the store was closed, as after a kill the log
    // replays the same commits.
    let store = SledStore::open(&dir.path().join("data")).expect("store reopens");
    assert_eq!(
        messages(&store, run),
        vec![
            (0, Kind::Start, OutboxState::Pending),
            (0, Kind::End, OutboxState::Pending),
            (1, Kind::End, OutboxState::Pending),
            (2, Kind::End, OutboxState::Pending),
        ]
    );
    // The start and the pull request go first; the other ends wait for them.
    let due = store.outbox_due(at(2), 16).expect("due");
    let keys: Vec<OutboxKey> = due.entries.iter().map(|e| e.key).collect();
    assert_eq!(keys, vec![key(run, 0, Kind::Start), key(run, 1, Kind::End)]);
    assert_eq!(due.next_at, Some(at(2 + 600)), "the waiting ends go anyway after ten minutes");
}

const KILL_DATA_ENV: &str = "NIGHTSHIFT_OUTBOX_KILL_DATA";

/// The child of `a_run_completed_before_a_kill_has_its_end_message_after_reopen`: starts
/// and completes a run, says so, and waits to be killed.
#[test]
#[ignore = "run as a child process by a_run_completed_before_a_kill_has_its_end_message_after_reopen"]
fn kill_child_completes_a_run_and_waits() {
    let Some(data) = std::env::var_os(KILL_DATA_ENV) else { return };
    let data = Path::new(&data);
    let store = SledStore::open(&data.join("data")).expect("store opens");
    ingest(&store, "a", vec![slack(data), webhook()], Flow::default(), 0);
    let (run, epoch) = start(&store, 1);
    succeed(&store, run, epoch, 2);
    println!("completed {run}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_run_completed_before_a_kill_has_its_end_message_after_reopen() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["outbox::kill_child_completes_a_run_and_waits", "--exact", "--ignored", "--nocapture", "--quiet"])
        .env(KILL_DATA_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("completed "))
        .expect("the child completes its run");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let run: RunId = line["completed ".len()..].parse().expect("a run id");
    let store = SledStore::open(&dir.path().join("data")).expect("store reopens after the kill");
    assert_eq!(store.run(run).expect("read").expect("the run").state, RunState::Succeeded);
    assert_eq!(
        messages(&store, run),
        vec![
            (0, Kind::Start, OutboxState::Pending),
            (0, Kind::End, OutboxState::Pending),
            (1, Kind::End, OutboxState::Pending),
        ]
    );
}

#[test]
fn a_retry_starts_nothing_new_and_a_run_cancelled_before_it_started_gets_only_its_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(&dir.path().join("data")).expect("store opens");
    let mut flow = Flow::default();
    flow.retry.attempts = 2;
    let run = ingest(&store, "a", vec![slack(dir.path())], flow, 0);
    let (_, epoch) = start(&store, 1);
    let failed = Completion::Failed { reason: "flaky".into(), retryable: true, result: None };
    let queued = store.complete(run, epoch, failed, Vec::new(), at(2)).expect("complete");
    assert_eq!(queued.state, RunState::Queued);
    start(&store, 3600);
    assert_eq!(messages(&store, run), vec![(0, Kind::Start, OutboxState::Pending)], "one start only");

    let unstarted = ingest(&store, "b", vec![slack(dir.path())], Flow::default(), 0);
    store.cancel_unstarted(unstarted, "not needed", at(5)).expect("cancel").expect("cancelled");
    assert_eq!(messages(&store, unstarted), vec![(0, Kind::End, OutboxState::Pending)]);
    // Its end waits for no start.
    let due = store.outbox_due(at(5), 16).expect("due");
    assert!(due.entries.iter().any(|e| e.key == key(unstarted, 0, Kind::End)));
}

#[test]
fn an_attempt_found_in_flight_at_open_is_made_again_unsure_and_a_settled_one_never_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let run = {
        let store = SledStore::open(&data).expect("store opens");
        ingest(&store, "a", vec![slack(dir.path()), webhook()], Flow::default(), 0);
        let (run, _) = start(&store, 1);
        let (_, attempt) = store.outbox_begin(key(run, 0, Kind::Start), at(2)).expect("begin").expect("pending");
        assert_eq!(attempt, Attempt { message_id: format!("{run}-0-start"), number: 1, unsure: false });
        assert!(store.outbox_begin(key(run, 0, Kind::Start), at(2)).expect("begin").is_none(), "in flight once");
        assert!(store.outbox_due(at(2), 16).expect("due").entries.is_empty());
        run
    };
    // The engine stopped between sending and recording.
    let store = SledStore::open(&data).expect("store reopens");
    let due = store.outbox_due(at(3), 16).expect("due");
    assert_eq!(due.entries.iter().map(|e| e.key).collect::<Vec<_>>(), vec![key(run, 0, Kind::Start)]);
    let (_, attempt) = store.outbox_begin(key(run, 0, Kind::Start), at(3)).expect("begin").expect("pending");
    assert_eq!((attempt.number, attempt.unsure), (2, true));
    let posted = Posted { id: "1700000001.2".into(), channel: Some("C123".into()), url: None };
    store.outbox_finish(key(run, 0, Kind::Start), &Outcome::Sent(posted.clone()), at(4), 0.5).expect("finish");
    drop(store);

    let store = SledStore::open(&data).expect("store reopens");
    assert_eq!(messages(&store, run), vec![(0, Kind::Start, OutboxState::Sent { posted })]);
    let due = store.outbox_due(at(100_000), 16).expect("due");
    assert!(due.entries.is_empty() && due.next_at.is_none(), "nothing is sent twice: {due:?}");
    let notes: Vec<String> = store
        .activities(run)
        .expect("activities")
        .into_iter()
        .filter(|a| a.kind == ActivityKind::Notify)
        .map(|a| a.text)
        .collect();
    assert_eq!(notes, vec!["slack C123 start: posted (1700000001.2 in C123)"]);
}

#[test]
fn a_sent_pull_request_puts_its_link_on_the_run_and_retention_deletes_the_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(&dir.path().join("data")).expect("store opens");
    ingest(&store, "a", vec![pull_request(dir.path()), webhook()], Flow::default(), 0);
    let (run, epoch) = start(&store, 1);
    succeed(&store, run, epoch, 2);
    let pr = key(run, 0, Kind::End);
    store.outbox_begin(pr, at(3)).expect("begin").expect("pending");
    let retry = Outcome::Retry { after: Some(Duration::from_secs(30)), why: "github: 502".into() };
    let entry = store.outbox_finish(pr, &retry, at(4), 0.5).expect("finish").expect("in flight");
    assert_eq!((entry.state, entry.next_at), (OutboxState::Pending, at(34)), "Retry-After is honoured");
    assert!(store.outbox_due(at(33), 16).expect("due").entries.is_empty(), "the webhook waits for the PR");
    store.outbox_begin(pr, at(34)).expect("begin").expect("due again");
    let posted = Posted { id: "7".into(), channel: None, url: Some("https://github.com/acme/api/pull/7".into()) };
    store.outbox_finish(pr, &Outcome::Sent(posted), at(35), 0.5).expect("finish");
    let stored = store.run(run).expect("read").expect("the run");
    let link = stored.result.as_ref().and_then(|r| r.details.get("pull_request")).and_then(|v| v.as_str());
    assert_eq!(link, Some("https://github.com/acme/api/pull/7"));
    let report = nightshift::delivery::sender::report(&stored, Some("https://ns.example.com"));
    assert_eq!(report.pull_request.as_deref(), link);
    assert_eq!(report.link.as_deref(), Some(&*format!("https://ns.example.com/api/runs/{run}")));
    let due = store.outbox_due(at(35), 16).expect("due");
    assert_eq!(due.entries.iter().map(|e| e.key).collect::<Vec<_>>(), vec![key(run, 1, Kind::End)]);
    let notes: Vec<String> = store
        .activities(run)
        .expect("activities")
        .into_iter()
        .filter(|a| a.kind == ActivityKind::Notify)
        .map(|a| a.text)
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].starts_with("github pull request on acme/api (into main) end: github: 502; retrying at"),
        "{notes:?}"
    );

    let retention = nightshift::config::Retention { runs: 0, days: 0 };
    store.apply_retention(&retention, at(100)).expect("retention");
    assert!(store.outbox_due(at(100), 16).expect("due").entries.is_empty(), "deleted with the run");
}

/// What the transport was given: the kind, what the start left, the attempt, the report.
type Call = (Kind, Option<Posted>, Attempt, Report);

/// Records every message and answers from a script (then `Sent`).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    script: Mutex<Vec<Outcome>>,
}

impl Transport for Recorder {
    fn send<'a>(&'a self, message: &'a Message<'a>) -> BoxFuture<'a, Outcome> {
        let mut calls = self.calls.lock().unwrap();
        calls.push((message.kind, message.earlier.cloned(), message.attempt.clone(), message.report.clone()));
        let number = calls.len();
        let mut script = self.script.lock().unwrap();
        let outcome = if script.is_empty() {
            Outcome::Sent(Posted { id: format!("ts.{number}"), channel: Some("C123".into()), url: None })
        } else {
            script.remove(0)
        };
        Box::pin(async move { outcome })
    }
}

impl Recorder {
    /// Waits (a bounded while) until `count` messages were sent.
    async fn until(&self, count: usize) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let calls = self.calls.lock().unwrap().clone();
            if calls.len() >= count {
                return calls;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} of {count} messages sent: {calls:?}", calls.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits (a bounded while) until `check` holds on the run's messages.
async fn until_messages(store: &dyn Store, run: RunId, check: impl Fn(&[(u32, Kind, OutboxState)]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = messages(store, run);
        if check(&now) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sender(store: Arc<dyn Store>, transport: Arc<Recorder>, clock: Arc<ManualClock>) -> watch::Sender<bool> {
    let (stop, stopped) = watch::channel(false);
    let sender = Arc::new(Sender::new(store, transport, clock));
    tokio::spawn(sender.run(stopped));
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_posts_the_start_and_edits_it_at_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).expect("store opens"));
    let clock = Arc::new(ManualClock::new(at(0)));
    let recorder = Arc::new(Recorder::default());
    let stop = sender(store.clone(), recorder.clone(), clock.clone());
    ingest(store.as_ref(), "a", vec![slack(dir.path())], Flow::default(), 0);
    let (run, epoch) = start(store.as_ref(), 0);
    let calls = recorder.until(1).await;
    assert_eq!((calls[0].0, calls[0].3.state.as_str()), (Kind::Start, "running"));
    assert_eq!(calls[0].2, Attempt { message_id: format!("{run}-0-start"), number: 1, unsure: false });
    until_messages(store.as_ref(), run, |m| matches!(m, [(0, Kind::Start, OutboxState::Sent { .. })])).await;
    succeed(store.as_ref(), run, epoch, 0);
    let calls = recorder.until(2).await;
    let (kind, earlier, attempt, report) = &calls[1];
    assert_eq!(*kind, Kind::End);
    assert_eq!(earlier.as_ref().map(|p| p.id.as_str()), Some("ts.1"), "the end edits the start");
    assert_eq!(attempt.message_id, format!("{run}-0-end"));
    assert_eq!((report.state.as_str(), report.summary.as_deref()), ("succeeded", Some("fixed the bug")));
    assert_eq!((report.branch.as_str(), report.base.as_str()), ("nightshift/probe-1", "main"));
    until_messages(store.as_ref(), run, |m| m.iter().all(|(_, _, state)| matches!(state, OutboxState::Sent { .. })))
        .await;
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_for_its_retry_after_on_the_clock_and_a_missing_token_fails_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).expect("store opens"));
    let clock = Arc::new(ManualClock::new(at(0)));
    let recorder = Arc::new(Recorder::default());
    recorder.script.lock().unwrap().push(Outcome::Retry { after: Some(Duration::from_secs(30)), why: "429".into() });
    let missing = Target::Slack {
        channel: "C9".into(),
        thread_ts: None,
        token: SecretRef::File(dir.path().join("absent").display().to_string()),
    };
    let stop = sender(store.clone(), recorder.clone(), clock.clone());
    ingest(store.as_ref(), "a", vec![slack(dir.path()), missing], Flow::default(), 0);
    let (run, _) = start(store.as_ref(), 0);
    recorder.until(1).await;
    until_messages(store.as_ref(), run, |m| {
        matches!(m, [(0, Kind::Start, OutboxState::Pending), (1, Kind::Start, OutboxState::Failed { .. })])
    })
    .await;
    let entries = store.outbox(run).expect("outbox");
    assert_eq!((entries[0].next_at, entries[0].attempts), (at(30), 1));
    match &entries[1].state {
        OutboxState::Failed { why } => assert!(why.starts_with("token: cannot read secret file"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(recorder.calls.lock().unwrap().len(), 1, "the token's failure sent nothing");
    clock.set(at(30));
    let calls = recorder.until(2).await;
    assert_eq!((calls[1].2.number, calls[1].2.unsure), (2, false));
    until_messages(store.as_ref(), run, |m| matches!(m[0], (0, Kind::Start, OutboxState::Sent { .. }))).await;
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_sender_resends_what_was_pending_or_in_flight_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (run, epoch) = {
        let store = SledStore::open(&data).expect("store opens");
        ingest(&store, "a", vec![slack(dir.path()), webhook()], Flow::default(), 0);
        let (run, epoch) = start(&store, 0);
        store.outbox_begin(key(run, 0, Kind::Start), at(0)).expect("begin").expect("pending");
        (run, epoch)
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data).expect("store reopens"));
    succeed(store.as_ref(), run, epoch, 1);
    let clock = Arc::new(ManualClock::new(at(1)));
    let recorder = Arc::new(Recorder::default());
    let stop = sender(store.clone(), recorder.clone(), clock.clone());
    let calls = recorder.until(3).await;
    let start_calls: Vec<_> = calls.iter().filter(|c| c.0 == Kind::Start).collect();
    assert_eq!(start_calls.len(), 1);
    assert_eq!((start_calls[0].2.number, start_calls[0].2.unsure), (2, true), "it may have been posted");
    until_messages(store.as_ref(), run, |m| {
        m.len() == 3 && m.iter().all(|(_, _, s)| matches!(s, OutboxState::Sent { .. }))
    })
    .await;
    stop.send(true).expect("stop");
    let due = store.outbox_due(at(1_000_000), 16).expect("due");
    assert!(due.entries.is_empty() && due.next_at.is_none());
    assert_eq!(recorder.calls.lock().unwrap().len(), 3, "each message once");
}

/// Holds every message until released, counting how many are held at once.
#[derive(Default)]
struct Gate {
    held: Mutex<Vec<String>>,
    most_at_once: Mutex<usize>,
    open: tokio::sync::Notify,
    opened: std::sync::atomic::AtomicBool,
}

impl Transport for Gate {
    fn send<'a>(&'a self, message: &'a Message<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let id = message.attempt.message_id.clone();
            {
                let mut held = self.held.lock().unwrap();
                held.push(id.clone());
                let mut most = self.most_at_once.lock().unwrap();
                *most = (*most).max(held.len());
            }
            let opened = self.open.notified();
            if !self.opened.load(std::sync::atomic::Ordering::SeqCst) {
                opened.await;
            }
            self.held.lock().unwrap().retain(|held| *held != id);
            Outcome::Sent(Posted { id, channel: None, url: None })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_a_batch_is_sent_at_once_and_each_message_once_while_outcomes_are_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).expect("store opens"));
    let clock = Arc::new(ManualClock::new(at(0)));
    let gate = Arc::new(Gate::default());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(Arc::new(Sender::new(store.clone(), gate.clone(), clock)).run(stopped));
    let runs = 3 * Sender::BATCH;
    let mut ended = Vec::new();
    for n in 0..runs {
        ingest(store.as_ref(), &format!("r{n}"), vec![webhook()], Flow::default(), 0);
        let (run, epoch) = start(store.as_ref(), 0);
        succeed(store.as_ref(), run, epoch, 0);
        ended.push(run);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gate.held.lock().unwrap().len() < Sender::BATCH {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", gate.held.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Held this long, no slot frees: a sender that took more would have by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*gate.most_at_once.lock().unwrap(), Sender::BATCH);
    gate.opened.store(true, std::sync::atomic::Ordering::SeqCst);
    gate.open.notify_waiters();
    for run in &ended {
        until_messages(store.as_ref(), *run, |m| matches!(m, [(0, Kind::End, OutboxState::Sent { .. })])).await;
    }
    let attempts: Vec<_> = ended
        .iter()
        .flat_map(|run| store.activities(*run).expect("activities"))
        .filter(|activity| activity.kind == ActivityKind::Notify)
        .collect();
    assert_eq!(attempts.len(), runs, "one attempt per message: {attempts:?}");
    assert_eq!(*gate.most_at_once.lock().unwrap(), Sender::BATCH);
    stop.send(true).expect("stop");
}
