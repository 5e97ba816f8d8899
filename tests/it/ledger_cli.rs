//! The store-backed commands (`trigger`, `runs`, `show`, `memory`) as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

use crate::{repo_root, temp_dir_with};

const P1: &str = "tests/data/pagerduty/incident_triggered_p1.json";
const P3: &str = "tests/data/pagerduty/incident_triggered_p3.json";
const PR: &str = "tests/data/github/pull_request_opened.json";

/// Runs nightshift in the repository with `--data data` appended.
fn nightshift(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(args)
        .arg("--data")
        .arg(data)
        .current_dir(repo_root())
        .output()
        .expect("run nightshift")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs nightshift and returns its stdout, failing the test if it did not exit 0.
#[track_caller]
fn ok(data: &Path, args: &[&str]) -> String {
    let out = nightshift(data, args);
    assert!(out.status.success(), "{args:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn trigger_p1(data: &Path, now: &str) -> String {
    ok(data, &["trigger", "p1-incident-investigation", "--event", P1, "--now", now])
}

fn trigger_pr(data: &Path, delivery: &str) -> String {
    let delivery = format!("X-GitHub-Delivery: {delivery}");
    let headers = ["--header", "X-GitHub-Event: pull_request", "--header", &delivery];
    ok(
        data,
        &[&["trigger", "pr-security-review", "--event", PR][..], &headers, &["--now", "2026-11-22T09:00:00Z"]].concat(),
    )
}

#[test]
fn a_triggered_run_is_listed_as_queued() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = trigger_p1(data.path(), "2026-11-21T23:15:00Z");
    assert!(out.contains("event pagerduty:01DFQ5ZV0N7Q2X6B4H0M3PKA2T stored"), "{out}");
    assert!(out.contains("r1 queued  p1-incident-investigation"), "{out}");

    let runs = ok(data.path(), &["runs"]);
    let mut lines = runs.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("STATE") && header.contains("CREATED"), "{runs}");
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[..5], ["r1", "queued", "p1-incident-investigation", "2026-11-21T23:15:00Z", "0"], "{runs}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(data.path(), &["runs", "--json", "--state", "queued"])).unwrap();
    assert_eq!(json[0]["automation"], "p1-incident-investigation");
    let none = ok(data.path(), &["runs", "--automation", "slack-bug-dispatch"]);
    assert_eq!(none, "");
}

#[test]
fn repeats_are_reported_as_duplicate_deliveries_or_coalesced() {
    let data = tempfile::tempdir().expect("temp dir");
    trigger_p1(data.path(), "2026-11-21T23:15:00Z");
    // PagerDuty retries carry the same event id: the store recognises the delivery.
    let again = trigger_p1(data.path(), "2026-11-21T23:16:00Z");
    assert!(again.contains("duplicate delivery"), "{again}");
    assert!(again.contains("r1 queued  p1-incident-investigation"), "{again}");

    // A second delivery of the same pull request (same dedupe key) joins the pending run.
    assert!(trigger_pr(data.path(), "d-1").contains("r2 queued  pr-security-review"));
    let second = trigger_pr(data.path(), "d-2");
    assert!(second.contains("event github:d-2 stored"), "{second}");
    assert!(second.contains("r2 coalesced  pr-security-review"), "{second}");

    let json = ok(
        data.path(),
        &[
            "trigger",
            "pr-security-review",
            "--event",
            PR,
            "--header",
            "X-GitHub-Event: pull_request",
            "--header",
            "X-GitHub-Delivery: d-3",
            "--now",
            "2026-11-22T09:00:00Z",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["event_id"], "github:d-3");
    assert_eq!(report["duplicate_delivery"], false);
    assert_eq!(report["runs"][0]["run"], "r2", "the run id as the table shows it");
    assert_eq!(report["runs"][0]["disposition"], "coalesced");
}

#[test]
fn a_non_match_is_stored_and_explained() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = ok(data.path(), &["trigger", "p1-incident-investigation", "--event", P3]);
    assert!(out.contains("not matched: p1-incident-investigation: `when` is false"), "{out}");
    assert_eq!(ok(data.path(), &["runs"]), "");
}

#[test]
fn trigger_names_the_known_automations() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = nightshift(data.path(), &["trigger", "nope", "--event", P1]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no automation named `nope`; known:"), "{stderr}");
    assert!(stderr.contains("p1-incident-investigation"), "{stderr}");
}

#[test]
fn show_prints_the_run_its_prompt_and_events() {
    let data = tempfile::tempdir().expect("temp dir");
    trigger_pr(data.path(), "d-1");
    trigger_pr(data.path(), "d-2");
    let out = ok(data.path(), &["show", "r1"]);
    assert!(out.starts_with("r1  pr-security-review  queued\n"), "{out}");
    assert!(out.contains("  branch      review/pr-1347"), "{out}");
    assert!(out.contains("  agent       sh -c"), "{out}");
    assert!(out.contains("{prompt_file}"), "the argv shows where the prompt goes: {out}");
    assert!(out.contains("    Review pull request #1347 in acme/shop for security"), "{out}");
    assert!(
        out.contains("events\n  github:d-1  pull_request.opened  received 2026-11-22T09:00:00Z\n  github:d-2"),
        "{out}"
    );
    assert!(out.contains("activity\n  none yet"), "{out}");

    let json: serde_json::Value = serde_json::from_str(&ok(data.path(), &["show", "1", "--json"])).unwrap();
    assert_eq!(json["run"]["task"]["branch"], "review/pr-1347");
    assert_eq!(json["events"][1]["event"]["id"], "github:d-2");
    assert_eq!(json["activities"], serde_json::json!([]));

    let missing = nightshift(data.path(), &["show", "r99"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no run r99"), "{}", text(&missing.stderr));
}

#[test]
fn memory_round_trips_json_and_plain_text() {
    let data = tempfile::tempdir().expect("temp dir");
    let data = data.path();
    let audit = "weekly-dependency-audit";
    let empty = nightshift(data, &["memory", audit]);
    assert!(empty.status.success());
    assert!(text(&empty.stderr).contains("has no memory"));

    assert_eq!(
        ok(data, &["memory", audit, "set", "note", "two advisories fixed"]),
        "set note = \"two advisories fixed\"\n"
    );
    ok(data, &["memory", audit, "set", "seen", r#"{"count": 2, "ids": ["a", "b"]}"#]);
    ok(data, &["memory", audit, "set", "offset", "-3"]);
    ok(data, &["memory", audit, "set", "quoted", r#""42""#]);

    assert_eq!(ok(data, &["memory", audit, "get", "note"]), "\"two advisories fixed\"\n");
    assert_eq!(ok(data, &["memory", audit, "get", "seen"]), "{\"count\":2,\"ids\":[\"a\",\"b\"]}\n");
    assert_eq!(ok(data, &["memory", audit, "get", "offset"]), "-3\n");
    assert_eq!(ok(data, &["memory", audit, "get", "quoted"]), "\"42\"\n");

    let list = ok(data, &["memory", audit]);
    let header = list.lines().next().unwrap_or_default();
    assert!(header.starts_with("KEY") && header.contains("WRITTEN_BY") && header.ends_with("VALUE"), "{list}");
    let seen = list.lines().find(|line| line.starts_with("seen")).unwrap_or_default();
    assert!(seen.contains("person") && seen.contains("trusted") && seen.contains("never"), "{list}");
    assert!(seen.ends_with("{\"count\":2,\"ids\":[\"a\",\"b\"]}"), "{list}");

    let entries: serde_json::Value = serde_json::from_str(&ok(data, &["memory", audit, "--json"])).unwrap();
    assert_eq!(entries["seen"]["value"]["ids"][1], "b");
    assert_eq!(entries["note"]["untrusted"], false);
    assert!(entries["note"].get("written_by").is_none(), "a person's write names no run: {entries}");

    assert_eq!(ok(data, &["memory", audit, "rm", "note"]), "removed note\n");
    let gone = nightshift(data, &["memory", audit, "get", "note"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        text(&gone.stderr).contains("`weekly-dependency-audit` has no memory entry `note`"),
        "{}",
        text(&gone.stderr)
    );
    assert_eq!(nightshift(data, &["memory", audit, "rm", "note"]).status.code(), Some(1));
    // Other automations have memory of their own.
    assert_eq!(ok(data, &["memory", "p1-incident-investigation", "--json"]), "{}\n");
}

#[test]
fn an_unknown_state_lists_the_states() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = nightshift(data.path(), &["runs", "--state", "bogus"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown run state `bogus`"), "{stderr}");
    let help = ok(data.path(), &["runs", "--help"]);
    for state in nightshift::runs::RunState::ALL {
        assert!(stderr.contains(state.as_str()), "{stderr}");
        assert!(help.contains(state.as_str()), "`runs --help` does not list {state}: {help}");
    }
}

#[test]
fn a_store_in_use_says_so() {
    let data = tempfile::tempdir().expect("temp dir");
    let _held = nightshift::store::SledStore::open(data.path()).expect("open the store");
    for args in [
        &["runs"][..],
        &["memory", "weekly-dependency-audit"],
        &["trigger", "p1-incident-investigation", "--event", P1],
    ] {
        let out = nightshift(data.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("is in use by another nightshift process (e.g. `nightshift serve`)"), "{stderr}");
        assert!(stderr.contains("stop that process, or point --data at another directory"), "{stderr}");
    }
}

#[test]
fn the_default_data_directory_is_beside_the_automations() {
    let automation = "name: hello\ntrigger: { manual: {} }\ntask: { agent: codex, repo: /r, prompt: hi }\n";
    let root = temp_dir_with(&[("automations/hello.yaml", automation), ("event.json", "{}")]);
    let out = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["trigger", "hello", "--event", "event.json", "--dir", "automations"])
        .current_dir(root.path())
        .output()
        .expect("run nightshift");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("r1 queued  hello"), "{}", text(&out.stdout));
    assert!(root.path().join(".nightshift").is_dir());
}

#[test]
fn prune_deletes_finished_runs_beyond_retention_and_keeps_unfinished_ones() {
    let project = temp_dir_with(&[
        (
            "automations/probe.yaml",
            "name: probe\ntrigger: { manual: {} }\nconcurrency: { limit: 1, overlap: skip }\ntask:\n  agent: codex\n  repo: /srv/git/api\n  prompt: \"{{ event.title }}\"\n",
        ),
        ("event.json", r#"{"title": "t"}"#),
    ]);
    let data = project.path().join("data");
    let dir = project.path().join("automations");
    let event = project.path().join("event.json");
    let trigger = |now: &str| {
        ok(
            &data,
            &["trigger", "probe", "--dir", dir.to_str().unwrap(), "--event", event.to_str().unwrap(), "--now", now],
        )
    };
    assert!(trigger("2026-01-05T09:00:00Z").contains("r1 queued"));
    assert!(trigger("2026-01-05T09:01:00Z").contains("r2 skipped"));
    let report = ok(&data, &["prune", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["runs"], 1, "the skipped run is older than 30 days: {report}");
    let runs = ok(&data, &["runs"]);
    assert!(runs.contains("r1") && !runs.contains("r2"), "{runs}");
    // The deleted run's id is not handed out again.
    assert!(trigger("2026-01-05T09:02:00Z").contains("r3 skipped"));
}

#[test]
fn memory_of_an_automation_that_does_not_exist_is_refused_with_a_suggestion() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = nightshift(data.path(), &["memory", "weekly-dependency-audt", "set", "note", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no automation named `weekly-dependency-audt`"), "{stderr}");
    assert!(stderr.contains("did you mean `weekly-dependency-audit`?"), "{stderr}");
    assert_eq!(ok(data.path(), &["memory", "weekly-dependency-audt", "--json"]), "{}\n", "nothing was written");
}

#[test]
fn store_commands_outside_a_project_say_so_and_create_nothing() {
    let elsewhere = tempfile::tempdir().expect("temp dir");
    for args in [&["runs"][..], &["memory", "x", "set", "k", "1"], &["show", "r1"], &["prune"]] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_nightshift")).args(args).current_dir(elsewhere.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("not a nightshift project"), "{args:?}: {stderr}");
        assert!(stderr.contains("--dir DIR") && stderr.contains("--data DIR"), "{args:?}: {stderr}");
        assert!(!elsewhere.path().join(".nightshift").exists(), "{args:?} made a store");
    }
    // With an automations directory, the store is made beside it as before.
    std::fs::create_dir(elsewhere.path().join("automations")).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_nightshift")).arg("runs").current_dir(elsewhere.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(elsewhere.path().join(".nightshift").exists());
}
