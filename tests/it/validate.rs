//! `validate`: every load-time problem is caught, located and reported at once.

use std::collections::BTreeSet;

use nightshift::config::Code;

use crate::{load, repo_root, temp_dir_with};

/// Diagnostics of the committed broken fixtures, paths relative to tests/data/invalid.
fn invalid_fixture_report() -> (String, Vec<nightshift::config::Diagnostic>) {
    let dir = repo_root().join("tests/data/invalid");
    let (_, diagnostics) = load(&dir);
    let text = diagnostics
        .iter()
        .map(|d| d.to_string().replace(&format!("{}/", dir.display()), ""))
        .collect::<Vec<_>>()
        .join("\n");
    (text, diagnostics)
}

#[test]
fn every_problem_of_every_file_is_reported_with_its_position() {
    let (text, _) = invalid_fixture_report();
    insta::assert_snapshot!(text);
}

#[test]
fn each_kind_of_load_time_problem_is_caught() {
    let (_, diagnostics) = invalid_fixture_report();
    let codes: BTreeSet<Code> = diagnostics.iter().map(|d| d.code).collect();
    let required = [
        Code::YamlSyntax,
        Code::WrongType,
        Code::UnknownField,
        Code::MissingField,
        Code::InvalidValue,
        Code::DuplicateName,
        Code::DuplicateKey,
        Code::InvalidCron,
        Code::InvalidTimezone,
        Code::RhaiSyntax,
        Code::UnknownProfile,
        Code::NetworkRule,
        Code::BranchTemplate,
        Code::MissingFixture,
    ];
    for code in required {
        assert!(codes.contains(&code), "no {code} diagnostic in:\n{diagnostics:#?}");
    }
}

#[test]
fn automations_with_problems_are_left_out_of_the_catalog() {
    let (catalog, _) = load(&repo_root().join("tests/data/invalid"));
    let names: Vec<&str> = catalog.names().collect();
    assert_eq!(names, ["same-name"], "only duplicate_a.yaml is clean");
}

#[test]
fn one_file_reports_many_problems() {
    let (_, diagnostics) = invalid_fixture_report();
    let in_task_file = diagnostics.iter().filter(|d| d.file.ends_with("task.yaml")).count();
    assert!(in_task_file >= 10, "task.yaml has 11 problems, {in_task_file} were reported");
}

#[test]
fn rhai_errors_point_at_the_line_inside_the_file() {
    let (_, diagnostics) = invalid_fixture_report();
    let when =
        diagnostics.iter().find(|d| d.file.ends_with("rhai.yaml") && d.message.contains("Unexpected '=='")).unwrap();
    // `when: |` is on line 4; the second `==` is on line 6, column 5.
    assert_eq!((when.line, when.col), (6, 5));
    let prompt = diagnostics.iter().find(|d| d.message.contains("event.title +")).unwrap();
    assert_eq!(prompt.line, 10);
}

#[test]
fn a_clean_directory_has_no_diagnostics() {
    let (catalog, diagnostics) = load(&repo_root().join("automations"));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(catalog.automations.len(), 5);
}

#[test]
fn unreadable_and_empty_inputs_are_diagnostics_not_panics() {
    let dir = temp_dir_with(&[("empty.yaml", ""), ("list.yaml", "- a\n- b\n"), ("binary.yaml", "\u{0}\u{1}")]);
    let (_, diagnostics) = load(dir.path());
    assert_eq!(diagnostics.len(), 3, "{diagnostics:#?}");
    let (_, missing) =
        nightshift::catalog::load(nightshift::rules::RuleEngine::shared(), &[dir.path().join("nope")], None);
    assert_eq!(missing[0].code, Code::Io);
}

#[test]
fn profiles_come_from_nightshift_yaml() {
    let automation = "name: custom\ntrigger: { manual: {} }\ntask: { agent: local, repo: /srv/x, prompt: hi }\n";
    let dir = temp_dir_with(&[
        ("automations/custom.yaml", automation),
        ("nightshift.yaml", "profiles:\n  local:\n    command: [\"sh\", \"-c\", \"echo {prompt}\"]\n"),
        ("bad.yaml", "profiles:\n  local:\n    command: [\"x\", \"{promt}\"]\n    outptu: generic\n"),
    ]);
    let engine = nightshift::rules::RuleEngine::shared();
    let automations = [dir.path().join("automations")];
    let (catalog, diagnostics) =
        nightshift::catalog::load(engine, &automations, Some(&dir.path().join("nightshift.yaml")));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(catalog.get("custom").is_some());

    let (_, without) = nightshift::catalog::load(engine, &automations, None);
    assert_eq!(without.iter().map(|d| d.code).collect::<Vec<_>>(), [Code::UnknownProfile]);

    let (_, bad) = nightshift::catalog::load(engine, &automations, Some(&dir.path().join("bad.yaml")));
    assert!(bad.iter().any(|d| d.code == Code::UnknownField && d.line == 4), "{bad:#?}");
}

#[test]
fn an_empty_nightshift_yaml_means_the_defaults_and_its_problems_name_it() {
    let automation = "name: plain\ntrigger: { manual: {} }\ntask: { agent: codex, repo: /srv/x, prompt: hi }\n";
    let dir = temp_dir_with(&[
        ("automations/plain.yaml", automation),
        ("empty.yaml", ""),
        ("comments.yaml", "# nothing set yet\n"),
        ("unknown.yaml", "retension: { days: 3 }\n"),
        ("list.yaml", "- profiles\n"),
    ]);
    let engine = nightshift::rules::RuleEngine::shared();
    let automations = [dir.path().join("automations")];
    let load = |name: &str| nightshift::catalog::load(engine, &automations, Some(&dir.path().join(name))).1;
    for empty in ["empty.yaml", "comments.yaml"] {
        assert!(load(empty).is_empty(), "{empty}: {:#?}", load(empty));
    }
    let unknown = load("unknown.yaml");
    assert_eq!(unknown.len(), 1, "{unknown:#?}");
    assert_eq!(unknown[0].message, "unknown field `retension` in the project settings (nightshift.yaml)");
    assert_eq!(unknown[0].hint.as_deref(), Some("did you mean `retention`?"));
    let list = load("list.yaml");
    assert_eq!(list[0].message, "nightshift.yaml must be a mapping of fields, found a list", "{list:#?}");
}

#[test]
fn a_profile_writes_literal_braces_doubled() {
    let automation = "name: json\ntrigger: { manual: {} }\ntask: { agent: json, repo: /srv/x, prompt: hi }\n";
    let project = "profiles:\n  json:\n    command: [\"agent\", '--settings={{\"model\": \"x\"}}', \"{prompt}\"]\n";
    let dir = temp_dir_with(&[("automations/json.yaml", automation), ("nightshift.yaml", project)]);
    let engine = nightshift::rules::RuleEngine::shared();
    let (catalog, diagnostics) =
        nightshift::catalog::load(engine, &[dir.path().join("automations")], Some(&dir.path().join("nightshift.yaml")));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(catalog.get("json").is_some());
}

#[test]
fn notify_targets_must_be_fillable_by_the_triggers_and_unreadable_tokens_are_warnings() {
    let automation = r#"name: notes
triggers:
  - slack: { signing_secret: "env:S" }
  - cron: { schedule: "0 9 * * *" }
task: { agent: codex, repo: /srv/x, prompt: hi }
notify:
  - slack: {}
  - github_comment: {}
  - github_pull_request: { draft: false }
  - webhook: { url: "ftp://hooks.example.com/x" }
  - webhook: { url: "https://" }
  - slack: { channel: C1 }
    webhook: { url: "https://hooks.example.com/x" }
"#;
    let dir = temp_dir_with(&[("notes.yaml", automation)]);
    let (_, diagnostics) = load(dir.path());
    let text = diagnostics
        .iter()
        .map(|d| d.to_string().replace(&format!("{}/", dir.path().display()), ""))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(text);

    // Clean targets load; a token or secret that cannot be read is a warning at its line.
    let clean = r#"name: thread
trigger: { slack: { signing_secret: "env:S" } }
task: { agent: codex, repo: /srv/x, prompt: hi }
notify:
  - slack: {}
  - slack: { channel: C1, token: "env:NIGHTSHIFT_TEST_UNSET_SLACK" }
  - webhook: { url: "https://hooks.example.com/x", secret: "file:/nonexistent/whsec" }
  - webhook: { url: "http://127.0.0.1:9/x" }
"#;
    let project = "slack: { token: \"env:NIGHTSHIFT_TEST_UNSET_DEFAULT\", api_url: \"http://127.0.0.1:9/api\" }\nnotify: { allow_private_targets: true }\n";
    let dir = temp_dir_with(&[("automations/thread.yaml", clean), ("nightshift.yaml", project)]);
    let engine = nightshift::rules::RuleEngine::shared();
    let (catalog, diagnostics) =
        nightshift::catalog::load(engine, &[dir.path().join("automations")], Some(&dir.path().join("nightshift.yaml")));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(catalog.get("thread").is_some());
    assert_eq!(catalog.slack.url().expect("url").as_str(), "http://127.0.0.1:9/api/");
    assert_eq!(catalog.github.url().expect("url").as_str(), "https://api.github.com/");
    assert!(catalog.notify.allow_private_targets);
    let warnings: Vec<String> =
        catalog.warnings.iter().map(|w| w.replace(&format!("{}/", dir.path().display()), "")).collect();
    insta::assert_snapshot!("notify_token_warnings", warnings.join("\n"));

    // nightshift.yaml's API URLs are checked.
    let bad = temp_dir_with(&[("nightshift.yaml", "github: { api_url: \"api.github.com\" }\n")]);
    let (_, diagnostics) = nightshift::catalog::load(engine, &[], Some(&bad.path().join("nightshift.yaml")));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert!(diagnostics[0].to_string().contains("nightshift.yaml:1:"), "{}", diagnostics[0]);
    assert!(diagnostics[0].message.contains("is not a URL"), "{}", diagnostics[0]);
}

#[test]
fn follow_up_settings_are_checked_where_they_are_written() {
    let automation = r#"name: thread
trigger: { slack: { signing_secret: "env:S" } }
task: { agent: codex, repo: /srv/x, prompt: hi }
follow_up:
  phrase: "  "
  window: 0s
  queue: 0
  reply: yes
"#;
    let dir = temp_dir_with(&[("thread.yaml", automation)]);
    let (_, diagnostics) = load(dir.path());
    let text: Vec<String> =
        diagnostics.iter().map(|d| d.to_string().replace(&format!("{}/", dir.path().display()), "")).collect();
    let text = text.join("\n");
    assert!(text.contains("thread.yaml:8:3") && text.contains("reply"), "an unknown key: {text}");
    // The structure is wrong, so the checks after it wait: fix it and they speak.
    let typed = automation.replace("  queue: 0\n  reply: yes\n", "");
    let dir = temp_dir_with(&[("thread.yaml", typed.as_str())]);
    let (_, diagnostics) = load(dir.path());
    let text: Vec<String> =
        diagnostics.iter().map(|d| d.to_string().replace(&format!("{}/", dir.path().display()), "")).collect();
    let text = text.join("\n");
    assert!(text.contains("thread.yaml:5:11") && text.contains("`phrase` is empty"), "{text}");
    assert!(text.contains("thread.yaml:6:11") && text.contains("`window` is zero"), "{text}");
    let queue = automation.replace("  phrase: \"  \"\n  window: 0s\n", "").replace("  reply: yes\n", "");
    let dir = temp_dir_with(&[("thread.yaml", queue.as_str())]);
    let (_, diagnostics) = load(dir.path());
    let text: Vec<String> =
        diagnostics.iter().map(|d| d.to_string().replace(&format!("{}/", dir.path().display()), "")).collect();
    assert!(text.join("\n").contains("thread.yaml:5:10"), "queue below 1: {text:?}");
}

#[test]
fn parallel_shapes_are_checked_at_their_lines_even_when_the_structure_is_broken() {
    // `promt` breaks the structure; the verifier's profile and the items script are
    // still checked where they are written.
    let broken = "name: broken\ntrigger: { manual: {} }\ntask:\n  agent: codex\n  repo: /r\n  promt: p\n  verify: { profile: cluade }\n";
    let items = "name: items\ntrigger: { manual: {} }\ntask:\n  agent: codex\n  repo: /r\n  prompt: p\n  fan_out:\n    items: \"[#{prompt: }]\"\n    join: { profile: nobody }\n";
    let two = "name: two\ntrigger: { manual: {} }\ntask:\n  agent: codex\n  repo: /r\n  prompt: p\n  attempts: { count: 0 }\n  fan_out: { items: \"[]\", max_concurrent: 0 }\n";
    let dir = temp_dir_with(&[("broken.yaml", broken), ("items.yaml", items), ("two.yaml", two)]);
    let (catalog, diagnostics) = load(dir.path());
    assert!(catalog.automations.is_empty());
    let found: Vec<String> = diagnostics
        .iter()
        .map(|d| {
            format!("{}:{}:{} {} {}", d.file.file_name().unwrap().to_string_lossy(), d.line, d.col, d.code, d.message)
        })
        .collect();
    let has = |wanted: &str| found.iter().any(|line| line.starts_with(wanted));
    assert!(has("broken.yaml:7:22 unknown-profile unknown agent profile `cluade`"), "{found:#?}");
    assert!(has("items.yaml:8:"), "{found:#?}");
    assert!(found.iter().any(|l| l.starts_with("items.yaml:8:") && l.contains("rhai-syntax")), "{found:#?}");
    assert!(has("items.yaml:9:22 unknown-profile unknown agent profile `nobody`"), "{found:#?}");
    // Zero counts break the schema (`minimum`), at their own lines.
    assert!(found.iter().any(|l| l.starts_with("two.yaml:7:") && l.contains("count")), "{found:#?}");
    assert!(found.iter().any(|l| l.starts_with("two.yaml:8:") && l.contains("max_concurrent")), "{found:#?}");
}

#[test]
fn parallel_limits_in_nightshift_yaml_are_checked_like_its_other_fields() {
    let dir = temp_dir_with(&[("automations/.keep", ""), ("typo.yaml", "parallel: { max_atempts: 2 }\n")]);
    let engine = nightshift::rules::RuleEngine::shared();
    let (_, problems) =
        nightshift::catalog::load(engine, &[dir.path().join("automations")], Some(&dir.path().join("typo.yaml")));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].message.contains("max_atempts"), "{problems:#?}");
    assert_eq!((problems[0].line, problems[0].col), (1, 13), "{problems:#?}");
}
