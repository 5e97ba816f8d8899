//! Output adapters on recorded-shape agent output (`tests/data/agent_output/`): the
//! activities in order, the summary, what is ignored, and the bounds on text.

use nightshift::config::OutputFormat;
use nightshift::runs::{ActivityKind, NewActivity};
use nightshift::worker::output::{AgentReport, MAX_SUMMARY, MAX_TEXT, OutputAdapter, TRUNCATED};
use serde_json::json;

use ActivityKind::{Action, Completion, Failure, Plan, Progress, Thought, Url};

/// Feeds `text` line by line; the activities of every line, and the report.
fn read(format: OutputFormat, text: &str) -> (Vec<NewActivity>, AgentReport) {
    let mut adapter = OutputAdapter::new(format);
    let activities = text.lines().flat_map(|line| adapter.line(line)).collect();
    (activities, adapter.finish())
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(crate::repo_root().join("tests/data/agent_output").join(name)).expect("fixture")
}

#[track_caller]
fn check(activities: &[NewActivity], expected: &[(ActivityKind, &str)]) {
    let actual: Vec<(ActivityKind, &str)> = activities.iter().map(|a| (a.kind, a.text.as_str())).collect();
    assert_eq!(actual, expected);
}

#[test]
fn codex_events_become_activities() {
    let (activities, report) = read(OutputFormat::CodexJsonl, &fixture("codex.jsonl"));
    check(
        &activities,
        &[
            (Thought, "**Finding the flaky test**"),
            (Plan, "[ ] Reproduce the failure\n[ ] Fix the race"),
            (Action, "$ bash -lc 'cargo test -p queue'"),
            (Plan, "[x] Reproduce the failure\n[ ] Fix the race"),
            (Action, "edit: update src/queue.rs, add tests/queue_race.rs"),
            (Progress, "The lock was released before the notify; moving it fixes the race."),
            (Progress, "error: command output truncated"),
            (Progress, "Fixed the race in src/queue.rs and added tests/queue_race.rs."),
            (Completion, "turn completed"),
        ],
    );
    assert_eq!(activities[2].data["command"], "bash -lc 'cargo test -p queue'");
    assert_eq!(activities[8].data["usage"]["output_tokens"], 122);
    let expected = "Fixed the race in src/queue.rs and added tests/queue_race.rs.";
    assert_eq!(report, AgentReport { summary: Some(expected.into()), failed: false });
}

#[test]
fn codex_failures_are_reported() {
    let lines = [
        r#"{"type":"turn.started"}"#,
        r#"{"type":"error","message":"stream disconnected before completion"}"#,
        r#"{"type":"turn.failed","error":{"message":"usage limit reached"}}"#,
    ];
    let (activities, report) = read(OutputFormat::CodexJsonl, &lines.join("\n"));
    check(&activities, &[(Failure, "stream disconnected before completion"), (Failure, "usage limit reached")]);
    assert_eq!(report, AgentReport { summary: None, failed: true });
}

#[test]
fn codex_completion_without_a_start_is_shown_once() {
    let line = r#"{"type":"item.completed","item":{"id":"i","type":"command_execution","command":"ls","aggregated_output":"","exit_code":0,"status":"completed"}}"#;
    let (activities, _) = read(OutputFormat::CodexJsonl, line);
    check(&activities, &[(Action, "$ ls")]);
    assert_eq!(activities[0].data["exit_code"], 0);
}

#[test]
fn claude_events_become_activities() {
    let (activities, report) = read(OutputFormat::ClaudeStreamJson, &fixture("claude.jsonl"));
    check(
        &activities,
        &[
            (Thought, "The test fails only under load; look at the lock order."),
            (Progress, "I'll reproduce the failure first."),
            (Plan, "[~] Reproduce the failure\n[ ] Fix the race"),
            (Action, "Bash: cargo test -p queue"),
            (Action, "Edit: /work/r42/src/queue.rs"),
            (Progress, "Fixed: the lock is now released after the notify."),
            (Completion, "completed"),
        ],
    );
    assert_eq!(activities[3].data["input"]["command"], "cargo test -p queue");
    assert_eq!(activities[6].data["num_turns"], 6);
    let expected = "Fixed the race in src/queue.rs: the lock is now released after the notify.";
    assert_eq!(report, AgentReport { summary: Some(expected.into()), failed: false });
}

#[test]
fn claude_error_results_are_failures() {
    let lines = [
        r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Working on it."}]}}"#,
        r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":10,"session_id":"s"}"#,
    ];
    let (activities, report) = read(OutputFormat::ClaudeStreamJson, &lines.join("\n"));
    check(&activities, &[(Progress, "Working on it."), (Failure, "agent failed: error_max_turns")]);
    // Without a `result` string the last assistant text stands in.
    assert_eq!(report, AgentReport { summary: Some("Working on it.".into()), failed: true });
}

#[test]
fn generic_lines_become_activities() {
    let (activities, report) = read(OutputFormat::Generic, &fixture("generic.txt"));
    check(
        &activities,
        &[
            (Plan, "1. reproduce 2. fix 3. test"),
            (Thought, "The race is in the notify path."),
            (Action, "cargo test -p queue"),
            (Url, "https://github.com/acme/queue/pull/7"),
            (Progress, "tests pass"),
            (Completion, "Opened a pull request."),
        ],
    );
    assert_eq!(activities[2].data, json!({"exit_code": 101}));
    assert_eq!(activities[0].data, serde_json::Value::Null);
    let expected = "Fixed the race in the queue and opened acme/queue#7.";
    assert_eq!(report, AgentReport { summary: Some(expected.into()), failed: false });
}

#[test]
fn generic_summary_is_the_last_completion_then_the_last_plain_line() {
    let with_completion = "working\n{\"type\":\"completion\",\"text\":\"done\"}\nbye\n";
    assert_eq!(read(OutputFormat::Generic, with_completion).1.summary.as_deref(), Some("done"));

    let plain = "step one\n{\"type\":\"progress\",\"text\":\"half way\"}\nAll done: 3 files changed.\n\n   \n";
    let (activities, report) = read(OutputFormat::Generic, plain);
    check(&activities, &[(Progress, "half way")]);
    assert_eq!(report.summary.as_deref(), Some("All done: 3 files changed."));

    assert_eq!(read(OutputFormat::Generic, "").1, AgentReport::default());
}

#[test]
fn generic_failure_is_reported() {
    let (activities, report) = read(OutputFormat::Generic, r#"{"type":"failure","text":"cannot push"}"#);
    check(&activities, &[(Failure, "cannot push")]);
    assert!(report.failed);
}

#[test]
fn plain_text_is_no_summary_for_json_formats() {
    for format in [OutputFormat::CodexJsonl, OutputFormat::ClaudeStreamJson] {
        let (activities, report) = read(format, "Reading prompt from stdin...\nnot json {");
        assert!(activities.is_empty(), "{format:?}: {activities:?}");
        assert_eq!(report, AgentReport::default(), "{format:?}");
    }
}

#[test]
fn huge_texts_are_truncated_with_the_marker() {
    let huge = "x".repeat(MAX_SUMMARY * 4);
    let lines = [
        json!({"type":"item.completed","item":{"id":"a","type":"agent_message","text": huge}}),
        json!({"type":"item.started","item":{"id":"b","type":"command_execution","command": huge}}),
    ];
    let text = lines.map(|line| line.to_string()).join("\n");
    let (activities, report) = read(OutputFormat::CodexJsonl, &text);
    assert_eq!(activities.len(), 2);
    for activity in &activities {
        assert!(activity.text.len() <= MAX_TEXT, "{}", activity.text.len());
        assert!(activity.text.ends_with(TRUNCATED));
    }
    // The command's data would be larger than its bound: it is dropped, not kept whole.
    assert_eq!(activities[1].data, json!({"truncated": true}));
    let summary = report.summary.expect("a summary");
    assert!(summary.len() <= MAX_SUMMARY && summary.len() > MAX_TEXT, "{}", summary.len());
    assert!(summary.ends_with(TRUNCATED));

    let (activities, report) = read(OutputFormat::Generic, &huge);
    assert!(activities.is_empty());
    assert!(report.summary.is_some_and(|s| s.len() <= MAX_SUMMARY && s.ends_with(TRUNCATED)));
}
