//! The `nightshift` binary as a user runs it.

use std::process::{Command, Output};

use crate::{repo_root, temp_dir_with};

fn nightshift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nightshift")).args(args).current_dir(repo_root()).output().expect("run nightshift")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_examples() {
    let out = nightshift(&["validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("5 automations OK"));
}

#[test]
fn validate_reports_file_line_col_and_exits_1() {
    let out = nightshift(&["validate", "tests/data/invalid"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("tests/data/invalid/schedule.yaml:5:17: error[invalid-timezone]: unknown timezone `Europe/Berln`\n  = hint: did you mean `Europe/Berlin`?"), "{stderr}");
    let json = nightshift(&["validate", "--json", "tests/data/invalid/schedule.yaml"]);
    let first: serde_json::Value = serde_json::from_str(text(&json.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["code"], "invalid-cron");
}

#[test]
fn test_runs_every_case_and_counts() {
    let out = nightshift(&["test"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("ok   p1-incident-investigation › a P1 incident starts an investigation"), "{stdout}");
    assert!(stdout.trim_end().ends_with("15 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_failing_test_case_fails_the_command() {
    let automation = "name: wrong\ntrigger: { manual: {} }\ntask: { agent: codex, repo: /r, prompt: \"hi {{ event.who }}\" }\ntests:\n  - event: e.json\n    expect: { matched: true, prompt_contains: [bye], branch: nope }\n  - event: e.json\n    expect: { prompt_contains: [hi ann] }\n";
    let dir = temp_dir_with(&[("a/wrong.yaml", automation), ("a/e.json", "{\"who\": \"ann\"}")]);
    let out = nightshift(&["test", dir.path().join("a").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL wrong › e.json"), "{stdout}");
    assert!(stdout.contains("prompt does not contain \"bye\""), "{stdout}");
    assert!(stdout.contains("expected branch \"nope\""), "{stdout}");
    assert!(stdout.trim_end().ends_with("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn render_prints_the_task_as_json() {
    let out = nightshift(&[
        "render",
        "pr-security-review",
        "--event",
        "tests/data/github/pull_request_opened.json",
        "--header",
        "X-GitHub-Event: pull_request",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rendered["matched"], true);
    assert_eq!(rendered["task"]["branch"], "review/pr-1347");
    assert_eq!(rendered["task"]["repo"], ".");
    assert_eq!(rendered["task"]["agent"]["profile"], "local-audit");
    assert_eq!(rendered["task"]["agent"]["argv"][0], "sh");
    assert_eq!(rendered["task"]["network"]["agent"]["default"], "deny");
    assert!(rendered["flow"]["concurrency_key"].as_str().unwrap().starts_with("acme/shop#1347"));
}

#[test]
fn render_explains_a_non_match() {
    let out = nightshift(&[
        "render",
        "p1-incident-investigation",
        "--event",
        "tests/data/pagerduty/incident_triggered_p3.json",
    ]);
    assert!(out.status.success());
    let rendered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rendered["matched"], false);
    assert!(rendered["reason"].as_str().unwrap().contains("`when` is false"));
}

#[test]
fn render_errors_name_what_is_wrong() {
    let unknown = nightshift(&["render", "nope", "--event", "tests/data/cron/monday_slot.json"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no automation named `nope`; known:"));
    let missing = nightshift(&["render", "slack-bug-dispatch", "--event", "nope.json"]);
    assert!(text(&missing.stderr).contains("cannot read fixture nope.json"));
}

#[test]
fn help_explains_each_command() {
    let out = nightshift(&["--help"]);
    let help = text(&out.stdout);
    for command in ["validate", "render", "test", "schema"] {
        assert!(help.contains(command), "{help}");
    }
    let render = text(&nightshift(&["render", "--help"]).stdout);
    assert!(render.contains("--memory") && render.contains("--event"), "{render}");
}

#[test]
fn schedule_prints_fire_times_in_the_trigger_timezone_and_refuses_other_triggers() {
    let out = nightshift(&["schedule", "weekly-dependency-audit", "-n", "2", "--from", "2026-03-27T00:00:00Z"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Europe/Berlin changes to summer time on 2026-03-29: the UTC hour moves.
    assert_eq!(
        text(&out.stdout),
        "2026-03-30T07:00:00+02:00  (2026-03-30T05:00:00Z)\n2026-04-06T07:00:00+02:00  (2026-04-06T05:00:00Z)\n"
    );
    let out = nightshift(&["schedule", "p1-incident-investigation"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("triggered by `pagerduty`, not by a cron schedule"), "{}", text(&out.stderr));
}

const PER_ALERT: &str = "name: each-alert\ntrigger:\n  alertmanager: { auth: { none: true }, per: alert }\ntask: { agent: codex, repo: /r, prompt: \"disk on {{ event.alert.labels.instance }}\" }\ntests:\n  - event: two.json\n    expect: { matched: true, prompt_contains: [\"disk on db-\"] }\n  - name: every alert is checked\n    event: two.json\n    expect: { prompt_contains: [\"disk on db-1\"] }\n";

const TWO_ALERTS: &str = r#"{"version": "4", "groupKey": "{}:{alertname=\"DiskFull\"}", "status": "firing", "receiver": "nightshift",
  "groupLabels": {"alertname": "DiskFull"}, "commonLabels": {"alertname": "DiskFull"}, "commonAnnotations": {},
  "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0, "alerts": [
  {"status": "firing", "labels": {"alertname": "DiskFull", "instance": "db-1"}, "annotations": {}, "startsAt": "2026-11-22T10:00:00Z", "fingerprint": "aaaa000000000001"},
  {"status": "firing", "labels": {"alertname": "DiskFull", "instance": "db-2"}, "annotations": {}, "startsAt": "2026-11-22T10:00:00Z", "fingerprint": "aaaa000000000002"}]}"#;

#[test]
fn render_and_test_show_one_task_per_alert_with_per_alert() {
    let dir = temp_dir_with(&[("a/each.yaml", PER_ALERT), ("a/two.json", TWO_ALERTS)]);
    let automations = dir.path().join("a");
    let fixture = automations.join("two.json");
    let args = ["render", "each-alert", "--dir", automations.to_str().unwrap(), "--event", fixture.to_str().unwrap()];
    let out = nightshift(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prompts: Vec<&str> =
        rendered.as_array().unwrap().iter().map(|r| r["task"]["prompt"].as_str().unwrap()).collect();
    assert_eq!(prompts, ["disk on db-1", "disk on db-2"]);

    let out = nightshift(&["test", automations.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok   each-alert › two.json"), "{stdout}");
    assert!(stdout.contains("FAIL each-alert › every alert is checked"), "{stdout}");
    assert!(stdout.contains("alert 2 (aaaa000000000002): prompt does not contain \"disk on db-1\""), "{stdout}");
    assert!(stdout.trim_end().ends_with("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn schedule_runs_a_listed_hour_skipped_by_daylight_saving_once_after_the_gap() {
    let automation = "name: twice-daily\ntrigger:\n  cron: { schedule: \"0 2,14 * * *\", timezone: America/New_York }\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  base: main\n  branch: agent/twice-daily\n  prompt: Audit\n";
    let dir = temp_dir_with(&[("twice-daily.yaml", automation)]);
    let dir = dir.path().to_str().unwrap();
    let out = nightshift(&["schedule", "twice-daily", "-n", "3", "--from", "2026-03-07T12:00:00Z", "--dir", dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // New York springs forward at 02:00 on 2026-03-08: that day's 02:00 runs at 03:00 EDT.
    assert_eq!(
        text(&out.stdout),
        "2026-03-07T14:00:00-05:00  (2026-03-07T19:00:00Z)\n2026-03-08T03:00:00-04:00  (2026-03-08T07:00:00Z)\n2026-03-08T14:00:00-04:00  (2026-03-08T18:00:00Z)\n"
    );
}

#[test]
fn validate_refuses_a_rule_that_sleeps_naming_the_function_and_where() {
    let dir = temp_dir_with(&[(
        "sleepy.yaml",
        "name: sleepy\ntrigger:\n  manual: {}\nwhen: |\n  true &&\n    sleep(100000)\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  base: main\n  branch: agent/sleepy\n  prompt: hello\n",
    )]);
    let out = nightshift(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sleepy.yaml:6:5: error[rhai-syntax]: rhai: `sleep` is not available: rules cannot wait"),
        "{stderr}"
    );
}

/// An automation told of by Slack (a channel) and a webhook, with one test whose
/// `expect.notify` holds and one whose does not.
const TOLD: &str = r#"name: told
trigger: { manual: {} }
task: { agent: codex, repo: /r, branch: "agent/told", prompt: "hi", push: true }
notify:
  - slack: { channel: C0OPS }
  - webhook: { url: "https://ops.example.com/hook", secret: "env:OPS_SECRET" }
tests:
  - name: what would be sent
    event: e.json
    now: "2026-11-22T09:00:00Z"
    result: { state: failed, summary: "Tried <!here>", reason: "tests failed" }
    expect:
      notify:
        - { target: slack, kind: start, to: C0OPS, contains: ["*told* is working on this", "`agent/told`"] }
        - target: slack
          kind: end
          contains: [":x: *told* failed", "Reason: tests failed", "> Tried &lt;!here&gt;"]
          excludes: ["<!here>"]
        - target: webhook
          kind: end
          to: "https://ops.example.com/hook"
          contains: ['"type": "run.ended"', '"state": "failed"', '"pushed": false', '"timestamp": "2026-11-22T09:00:00Z"']
  - name: what differs is said
    event: e.json
    expect:
      notify:
        - { target: slack, kind: start }
        - { target: slack, kind: end, contains: ["succeeded", "Pull request"] }
"#;

#[test]
fn a_test_asserts_what_would_be_sent_and_a_failure_says_what_differed() {
    let dir = temp_dir_with(&[("a/told.yaml", TOLD), ("a/e.json", "{}")]);
    let out = nightshift(&["test", "--messages", dir.path().join("a").to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("ok   told › what would be sent"), "{stdout}");
    assert!(stdout.contains("FAIL told › what differs is said"), "{stdout}");
    // The first expectation's difference, with the message it was held to...
    assert!(
        stdout.contains(
            "expect.notify[1] (slack end): the message does not contain \"Pull request\"\n       \
             slack end → C0OPS (POST https://slack.com/api/chat.update); edits the start's message"
        ),
        "{stdout}"
    );
    // ...and the message no entry lists.
    assert!(
        stdout.contains("a message expect.notify does not list is sent: webhook end → https://ops.example.com/hook"),
        "{stdout}"
    );
    // `--messages` shows each message; a default result says it is a placeholder.
    assert!(stdout.contains("     = webhook end → https://ops.example.com/hook (POST https://ops.example.com/hook)"));
    assert!(stdout.contains("the end messages use a placeholder summary"), "{stdout}");
    assert!(stdout.trim_end().ends_with("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn expected_messages_must_name_targets_the_automation_has_at_file_line_col() {
    let automation = "name: quiet\ntrigger: { manual: {} }\ntask: { agent: codex, repo: /r, prompt: hi }\nnotify:\n  - webhook: { url: \"https://ops.example.com/hook\" }\ntests:\n  - event: e.json\n    expect:\n      notify:\n        - { target: slack, kind: end }\n        - { target: webhook, kind: start }\n";
    let dir = temp_dir_with(&[("quiet.yaml", automation), ("e.json", "{}")]);
    let file = dir.path().join("quiet.yaml");
    let out = nightshift(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = file.display();
    assert!(
        stderr.contains(&format!(
            "{file}:10:21: error[invalid-value]: the automation has no `slack` target (its targets: `webhook`)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:11:36: error[invalid-value]: a `webhook` target is told only of the run's end\n  = hint: use `kind: end`"
        )),
        "{stderr}"
    ); // A kind that is neither is the schema's error.
    let typo = automation.replace("kind: start }", "kind: ended }");
    std::fs::write(dir.path().join("quiet.yaml"), typo).unwrap();
    let stderr = text(&nightshift(&["validate", dir.path().join("quiet.yaml").to_str().unwrap()]).stderr);
    assert!(
        stderr.contains(&format!(
            "{file}:11:36: error[invalid-value]: `ended` is not a valid value for `tests[0].expect.notify[1].kind`\n  = hint: did you mean `end`?"
        )),
        "{stderr}"
    );
}

#[test]
fn render_shows_the_messages_a_pull_request_run_would_send() {
    let automation = r#"name: opener
trigger: { github: { secret: "env:GH_SECRET", events: [issues.opened] } }
task: { agent: codex, repo: /r, branch: "agent/issue-{{ event.issue.number }}", prompt: hi, push: true }
notify:
  - github_comment: {}
  - github_pull_request: { draft: false }
"#;
    let event =
        r#"{"action": "opened", "issue": {"number": 12, "title": "t"}, "repository": {"full_name": "acme/shop"}}"#;
    let dir = temp_dir_with(&[
        ("a/opener.yaml", automation),
        ("a/e.json", event),
        ("result.json", r#"{"summary": "Fixed the cart\n\nDetails."}"#),
        ("failed.json", r#"{"state": "failed", "reason": "tests failed"}"#),
    ]);
    let render = |result: Option<&str>| {
        let mut args = vec!["render", "opener", "--now", "2026-11-22T09:00:00Z", "--header", "X-GitHub-Event: issues"];
        let dir_arg = dir.path().join("a");
        let event_arg = dir.path().join("a/e.json");
        let result_arg = dir.path().join(result.unwrap_or("none"));
        args.extend(["--dir", dir_arg.to_str().unwrap(), "--event", event_arg.to_str().unwrap()]);
        if result.is_some() {
            args.extend(["--result", result_arg.to_str().unwrap()]);
        }
        let out = nightshift(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let rendered = render(Some("result.json"));
    insta::assert_json_snapshot!("render_pull_request_messages", rendered["messages"]);
    assert_eq!(
        rendered["result"],
        serde_json::json!({"state": "succeeded", "summary": "Fixed the cart\n\nDetails.", "pushed": true, "pull_request": "(placeholder: the pull request's link)", "placeholders": ["pull_request"]})
    );
    // Without a result: a placeholder summary, said so.
    let rendered = render(None);
    assert_eq!(rendered["result"]["placeholders"], serde_json::json!(["summary", "pull_request"]));
    assert_eq!(rendered["messages"][2]["body"]["title"], "opener: (placeholder: the agent's summary)");
    // A failed run pushes nothing: the pull request is not opened, and says why.
    let rendered = render(Some("failed.json"));
    let pull = &rendered["messages"][2];
    assert_eq!(pull["text"], "not sent: the branch was not pushed (task.push is false or the push failed)");
    assert!(pull.get("request").is_none() && pull.get("body").is_none(), "{pull:#}");
    assert!(rendered["messages"][1]["text"].as_str().unwrap().contains("**Reason:** tests failed"), "{rendered:#}");
}

#[test]
fn render_shows_a_fan_out_plan_readably_and_in_the_json() {
    let args = [
        "render",
        "parallel-module-audit",
        "--event",
        "tests/data/manual/modules.json",
        "--now",
        "2026-11-23T06:00:00Z",
    ];
    let out = nightshift(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &rendered["task"]["plan"];
    assert_eq!(plan["shape"], "fan_out");
    assert_eq!(plan["max_concurrent"], 2);
    assert_eq!(plan["items"][1]["paths"], serde_json::json!(["src/rules/**"]));
    assert_eq!(plan["join"]["when"], "all_ended");
    assert_eq!(plan["join"]["agent"]["agent"]["profile"], "local-audit");

    let out = nightshift(&[&args[..], &["--plan"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("plan: fan_out, 3 children, at most 2 at once\n"), "{shown}");
    assert!(shown.contains("  child 3: \"Audit src/store/ for unwrap()"), "{shown}");
    assert!(shown.contains("(paths src/store/**)"), "{shown}");
    assert!(shown.contains("  join, when all ended: local-audit: \"Each module's audit"), "{shown}");
}

#[test]
fn test_asserts_a_plan_and_a_failure_says_what_differed() {
    let automation = r#"name: best
trigger: { manual: {} }
task:
  agent: codex
  repo: /r
  prompt: fix it
  attempts: { count: 3, profiles: [codex, claude], check: cargo test }
tests:
  - name: right
    event: e.json
    expect: { plan: { shape: attempts, attempts: 3, profiles: [codex, claude, codex], check: cargo test, judge: "" } }
  - name: wrong
    event: e.json
    expect: { plan: { attempts: 2, profiles: [claude], judge: codex, children: 1, child_prompts_contain: [x] } }
"#;
    let dir = temp_dir_with(&[("a/best.yaml", automation), ("a/e.json", "{}")]);
    let out = nightshift(&["test", "--plan", dir.path().join("a").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok   best › right\n     = plan: attempts (3)"), "{stdout}");
    assert!(stdout.contains("       attempt 2: claude\n"), "{stdout}");
    assert!(stdout.contains("FAIL best › wrong"), "{stdout}");
    for wanted in [
        "expected plan.attempts 2, got 3",
        r#"expected plan.profiles ["claude"], got ["codex", "claude", "codex"]"#,
        r#"expected plan.judge "codex", got """#,
        "expected plan.children 1, got no children (the plan is attempts)",
        r#"expected plan.child_prompts_contain[0] "x", got no child 1 (there are 0)"#,
    ] {
        assert!(stdout.contains(wanted), "{wanted}\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn parallel_limits_of_nightshift_yaml_bound_what_an_automation_may_ask_at_file_line_col() {
    let automation = "name: many\ntrigger: { manual: {} }\ntask:\n  agent: codex\n  repo: /r\n  prompt: p\n  attempts:\n    count: 3\n    profiles: [codex, nobody]\n";
    let dir = temp_dir_with(&[("a/many.yaml", automation), ("nightshift.yaml", "parallel: { max_attempts: 2 }\n")]);
    let config = dir.path().join("nightshift.yaml");
    let out = nightshift(&["validate", "--config", config.to_str().unwrap(), dir.path().join("a").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "many.yaml:8:12: error[invalid-value]: `count` is 3, more than `parallel.max_attempts` (2) allows"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("many.yaml:9:23: error[unknown-profile]: unknown agent profile `nobody`"), "{stderr}");
    // Within the default limit of 4 it loads.
    let out = nightshift(&["validate", dir.path().join("a").to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("`nobody`") && !text(&out.stderr).contains("max_attempts"),
        "{}",
        text(&out.stderr)
    );
}
