//! Phases as real child processes (`/bin/sh` and coreutils): exit codes and output, the
//! clean environment, masking, timeouts and cancellation that kill the whole process
//! group, the bounded log, and a program that does not exist.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nightshift::worker::phase::{
    CancelToken, PhaseCommand, PhaseError, PhaseOptions, PhaseOutcome, PhaseStatus, Stream, run_phase,
};

/// Far longer than any phase here should take, even on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn command(dir: &Path, argv: &[&str], timeout: Duration) -> PhaseCommand {
    PhaseCommand {
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        dir: dir.to_path_buf(),
        env: BTreeMap::new(),
        timeout,
        sandbox: None,
    }
}

fn sh(dir: &Path, script: &str, timeout: Duration) -> PhaseCommand {
    command(dir, &["sh", "-c", script], timeout)
}

fn options() -> PhaseOptions {
    PhaseOptions { grace: Duration::from_millis(200), ..PhaseOptions::default() }
}

fn run(command: &PhaseCommand, options: &PhaseOptions) -> PhaseOutcome {
    run_phase(command, options, &CancelToken::new(), |_, _| {}).expect("the phase runs")
}

fn lines(outcome: &PhaseOutcome, stream: Stream) -> Vec<&str> {
    outcome.log.lines().filter(|line| line.stream == stream).map(|line| line.text.as_str()).collect()
}

/// Whether process `pid` is gone: no /proc entry, or a zombie nobody reaped yet (a
/// killed grandchild belongs to init, which may be slow to reap it).
fn is_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some(Some('Z' | 'X')))
}

#[track_caller]
fn assert_gone_soon(pid: u32) {
    let start = Instant::now();
    while !is_gone(pid) {
        assert!(start.elapsed() < PATIENCE, "process {pid} survived the phase");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid the phase's script wrote to `file`.
fn read_pid(file: &Path) -> u32 {
    let text = std::fs::read_to_string(file).expect("the script wrote the pid");
    text.trim().parse().expect("a pid")
}

/// A script that starts a long sleep in the background, writes its pid to `pid`, and
/// waits for it; `prelude` runs first.
fn background_sleep(prelude: &str) -> String {
    format!("{prelude} sleep 30 & echo $! > pid; echo started; wait")
}

#[test]
fn exit_codes_and_both_streams_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo one; echo err-a >&2; echo two; echo err-b >&2; printf 'three'; exit 3";
    let outcome = run(&sh(dir.path(), script, PATIENCE), &options());
    assert_eq!(outcome.status, PhaseStatus::Exited(3));
    assert_eq!(lines(&outcome, Stream::Stdout), ["one", "two", "three"]);
    assert_eq!(lines(&outcome, Stream::Stderr), ["err-a", "err-b"]);

    let outcome = run(&command(dir.path(), &["true"], PATIENCE), &options());
    assert_eq!(outcome.status, PhaseStatus::Exited(0));
    assert_eq!(outcome.log.text(), "");

    let outcome = run(&sh(dir.path(), "kill -KILL $$", PATIENCE), &options());
    assert_eq!(outcome.status, PhaseStatus::Signalled(9));
}

#[test]
fn runs_in_its_directory_and_passes_stdout_lines_to_the_callback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("here"), "").unwrap();
    let mut seen = Vec::new();
    let outcome = run_phase(
        &sh(dir.path(), "ls; echo '{\"kind\":\"note\"}'; echo hidden >&2; read x || echo no-stdin", PATIENCE),
        &options(),
        &CancelToken::new(),
        |stream, line| {
            if stream == Stream::Stdout {
                seen.push(line.to_string())
            }
        },
    )
    .unwrap();
    assert_eq!(outcome.status, PhaseStatus::Exited(0));
    assert_eq!(seen, ["here", "{\"kind\":\"note\"}", "no-stdin"]);
}

#[test]
fn the_child_sees_only_a_clean_environment_and_its_own_variables() {
    const PARENT: &str = "NIGHTSHIFT_TEST_SECRET_PARENT_7F3A";
    // SAFETY: no other test reads or writes this variable; std serializes its own
    // environment access, and this binary's other threads do not call libc's getenv.
    unsafe { std::env::set_var(PARENT, "parent-only") };
    let dir = tempfile::tempdir().unwrap();
    let mut phase = command(dir.path(), &["env"], PATIENCE);
    phase.env.insert("GIVEN".to_string(), "to-the-child".to_string());
    let outcome = run(&phase, &options());

    assert_eq!(outcome.status, PhaseStatus::Exited(0));
    let seen = lines(&outcome, Stream::Stdout);
    assert!(seen.contains(&"GIVEN=to-the-child"), "{seen:?}");
    assert!(!outcome.log.text().contains(PARENT), "{seen:?}");
    for line in seen {
        let name = line.split('=').next().unwrap();
        assert!(["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "GIVEN"].contains(&name), "the child saw {line}");
    }
}

#[test]
fn secrets_are_masked_wherever_they_appear() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo "token=$TOKEN again=$TOKEN"; echo "$LONG"; echo "to stderr: $TOKEN" >&2; echo plain"#;
    let mut phase = sh(dir.path(), script, PATIENCE);
    phase.env.insert("TOKEN".to_string(), "hunter2".to_string());
    phase.env.insert("LONG".to_string(), "hunter2-and-more".to_string());
    let options = PhaseOptions {
        secrets: vec!["hunter2".to_string(), String::new(), "hunter2-and-more".to_string()],
        ..options()
    };
    let mut seen = Vec::new();
    let outcome =
        run_phase(&phase, &options, &CancelToken::new(), |stream, line| seen.push((stream, line.to_string()))).unwrap();

    assert_eq!(outcome.status, PhaseStatus::Exited(0));
    let text = outcome.log.text();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("and-more"), "{text}");
    assert_eq!(lines(&outcome, Stream::Stdout), ["token=*** again=***", "***", "plain"]);
    assert_eq!(lines(&outcome, Stream::Stderr), ["to stderr: ***"]);
    let stdout: Vec<&str> = seen.iter().filter(|(s, _)| *s == Stream::Stdout).map(|(_, l)| l.as_str()).collect();
    assert_eq!(stdout, ["token=*** again=***", "***", "plain"]);
    assert!(seen.contains(&(Stream::Stderr, "to stderr: ***".to_string())), "{seen:?}");
}

#[test]
fn a_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let outcome = run(&sh(dir.path(), &background_sleep(""), Duration::from_millis(300)), &options());

    assert_eq!(outcome.status, PhaseStatus::TimedOut);
    assert!(outcome.duration >= Duration::from_millis(300), "{:?}", outcome.duration);
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(lines(&outcome, Stream::Stdout), ["started"]);
    assert_gone_soon(read_pid(&dir.path().join("pid")));
}

#[test]
fn cancelling_from_another_thread_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancelToken::new();
    let canceller = {
        let cancel = cancel.clone();
        let pid_file = dir.path().join("pid");
        std::thread::spawn(move || {
            let start = Instant::now();
            while !pid_file.exists() && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(100));
            cancel.cancel();
        })
    };
    let outcome =
        run_phase(&sh(dir.path(), &background_sleep(""), PATIENCE * 3), &options(), &cancel, |_, _| {}).unwrap();
    canceller.join().unwrap();

    assert_eq!(outcome.status, PhaseStatus::Cancelled);
    assert!(outcome.duration < PATIENCE, "{:?}", outcome.duration);
    assert_gone_soon(read_pid(&dir.path().join("pid")));
}

#[test]
fn a_group_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let phase = sh(dir.path(), &background_sleep("trap '' TERM;"), Duration::from_millis(300));
    let outcome = run(&phase, &options());

    assert_eq!(outcome.status, PhaseStatus::TimedOut);
    // The timeout, then the whole grace period: SIGTERM did nothing.
    assert!(outcome.duration >= Duration::from_millis(500), "{:?}", outcome.duration);
    assert!(outcome.duration < PATIENCE, "{:?}", outcome.duration);
    assert_gone_soon(read_pid(&dir.path().join("pid")));
}

#[test]
fn a_phase_leaves_nothing_running_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(&sh(dir.path(), "sleep 30 > /dev/null 2>&1 & echo $! > pid", PATIENCE), &options());
    assert_eq!(outcome.status, PhaseStatus::Exited(0));
    assert_gone_soon(read_pid(&dir.path().join("pid")));
}

#[test]
fn the_log_keeps_both_ends_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 4096;
    let options = PhaseOptions { log_limit: limit, ..options() };
    let outcome = run(&command(dir.path(), &["seq", "1", "200000"], PATIENCE), &options);

    assert_eq!(outcome.status, PhaseStatus::Exited(0));
    let printed: usize = (1..=200_000).map(|i: u32| i.to_string().len() + 1).sum();
    assert!(outcome.log.len_bytes() <= limit);
    assert_eq!(outcome.log.len_bytes() + outcome.log.cut_bytes(), printed);
    let text = outcome.log.text();
    let marker = format!("[… {} bytes cut …]\n", outcome.log.cut_bytes());
    assert!(text.contains(&marker), "{text}");
    assert!(text.len() <= limit + marker.len());
    assert!(text.starts_with("1\n2\n3\n"), "{text}");
    assert!(text.ends_with("199999\n200000\n"), "{text}");
}

#[test]
fn a_missing_program_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let phase = command(dir.path(), &["nightshift-no-such-program", "--flag"], PATIENCE);
    let error = run_phase(&phase, &options(), &CancelToken::new(), |_, _| {}).unwrap_err();
    assert!(matches!(error, PhaseError::Spawn { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("`nightshift-no-such-program`"), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");

    let empty = command(dir.path(), &[], PATIENCE);
    assert!(matches!(run_phase(&empty, &options(), &CancelToken::new(), |_, _| {}), Err(PhaseError::EmptyCommand)));
}
