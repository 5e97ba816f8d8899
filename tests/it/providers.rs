//! Every source against its payloads: the fixtures under tests/data/{github,pagerduty,slack}
//! are written in the shapes of the providers' published examples and checked against
//! them field by field, and tests/data/alertmanager holds a real Alertmanager's (each
//! folder's README.md says which examples and what was compared). Each case loads a trigger, turns a
//! fixture into the event its source makes, and checks the type, the filters' answer and
//! the fields rules read.

use std::collections::BTreeMap;

use nightshift::config::FieldPath;
use nightshift::event::Event;
use nightshift::triggers::alertmanager::split_per_alert;
use nightshift::triggers::{TriggerKind, TriggerSpec};
use serde_json::{Value, json};

use crate::repo_root;

/// One fixture through one trigger.
struct Case<'a> {
    fixture: &'a str,
    /// The trigger spec, as in a file (`{source: {...}}`).
    trigger: Value,
    /// The `X-GitHub-Event` header, for GitHub.
    github_event: Option<&'a str>,
    /// Changes to the payload before delivery (JSON pointer, value): for cases the
    /// providers publish no payload of, such as a stranger's review.
    patch: &'a [(&'a str, &'a str)],
    kind: &'a str,
    /// `None`: accepted; `Some(text)`: refused with a reason containing `text`.
    refused: Option<&'a str>,
    /// Event fields (JSON pointers into `event.fields`) and their expected values.
    fields: &'a [(&'a str, &'a str)],
}

fn payload(fixture: &str, patch: &[(&str, &str)]) -> Value {
    let path = repo_root().join("tests/data").join(fixture);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut payload: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (pointer, value) in patch {
        *payload.pointer_mut(pointer).unwrap_or_else(|| panic!("{fixture}: no {pointer}")) = json!(value);
    }
    payload
}

fn check(case: &Case) {
    let spec: TriggerSpec = serde_json::from_value(case.trigger.clone()).expect("a trigger spec");
    let mut findings = Vec::new();
    spec.check(&FieldPath::root(), &mut findings);
    assert!(findings.is_empty(), "{}: the trigger does not load: {findings:?}", case.fixture);
    let trigger = spec.source().expect("one source");
    let headers: BTreeMap<String, String> =
        case.github_event.map(|name| ("x-github-event".to_string(), name.to_string())).into_iter().collect();
    let event = Event::from_delivery(trigger.kind(), payload(case.fixture, case.patch), headers, chrono::Utc::now());
    assert_eq!(event.kind, case.kind, "{}", case.fixture);
    match (trigger.accepts(&event), case.refused) {
        (Ok(()), None) => {}
        (Err(reason), Some(wanted)) => assert!(reason.contains(wanted), "{}: refused with {reason:?}", case.fixture),
        (answer, wanted) => panic!("{}: {answer:?}, wanted refused: {wanted:?}", case.fixture),
    }
    let fields = Value::Object(event.fields.clone());
    for (pointer, wanted) in case.fields {
        let got = fields.pointer(pointer).unwrap_or_else(|| panic!("{}: no field {pointer}", case.fixture));
        assert_eq!(
            got.as_str().map_or_else(|| got.to_string(), str::to_string),
            *wanted,
            "{}: {pointer}",
            case.fixture
        );
    }
}

fn github(events: Value, extra: Value) -> Value {
    let mut trigger = json!({"secret": "env:S", "events": events});
    trigger.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"github": trigger})
}

#[test]
fn github_payloads_in_the_shape_of_its_webhooks() {
    let mention = || json!({"mention": "@nightshift\\b"});
    let case = |fixture, event: &'static str, trigger, kind, refused| Case {
        fixture,
        trigger,
        github_event: Some(event),
        patch: &[],
        kind,
        refused,
        fields: &[],
    };
    let cases = [
        Case {
            fields: &[("/pull_request/number", "1347")],
            ..case(
                "github/pull_request_opened.json",
                "pull_request",
                github(json!(["pull_request.opened"]), json!({"repositories": ["ACME/shop"]})),
                "pull_request.opened",
                None,
            )
        },
        Case {
            fields: &[("/ref", "refs/heads/main")],
            ..case("github/push.json", "push", github(json!(["push"]), json!({})), "push", None)
        },
        case(
            "github/projects_v2_item_edited.json",
            "projects_v2_item",
            github(json!(["projects_v2_item.edited"]), json!({})),
            "projects_v2_item.edited",
            None,
        ),
        // A stranger's comment that mentions the bot: refused by the default comment_authors.
        case(
            "github/issue_comment_created.json",
            "issue_comment",
            github(json!(["issue_comment.created"]), mention()),
            "issue_comment.created",
            Some("comment_authors"),
        ),
        Case {
            patch: &[("/comment/author_association", "COLLABORATOR")],
            ..case(
                "github/issue_comment_created.json",
                "issue_comment",
                github(json!(["issue_comment.created"]), mention()),
                "issue_comment.created",
                None,
            )
        },
        case(
            "github/discussion_comment_created.json",
            "discussion_comment",
            github(json!(["discussion_comment"]), json!({"comment_authors": ["CONTRIBUTOR"]})),
            "discussion_comment.created",
            None,
        ),
        case(
            "github/pull_request_review_comment_created.json",
            "pull_request_review_comment",
            github(json!(["pull_request_review_comment.created"]), mention()),
            "pull_request_review_comment.created",
            None,
        ),
        Case {
            fields: &[("/review/state", "changes_requested")],
            ..case(
                "github/pull_request_review_submitted.json",
                "pull_request_review",
                github(json!(["pull_request_review.submitted"]), mention()),
                "pull_request_review.submitted",
                None,
            )
        },
        // A stranger's review that mentions the bot: refused by the default comment_authors.
        Case {
            patch: &[("/review/author_association", "NONE")],
            ..case(
                "github/pull_request_review_submitted.json",
                "pull_request_review",
                github(json!(["pull_request_review"]), json!({})),
                "pull_request_review.submitted",
                Some("comment_authors"),
            )
        },
        // An approval without a body carries no mention.
        case(
            "github/pull_request_review_approved_without_body.json",
            "pull_request_review",
            github(json!(["pull_request_review.submitted"]), mention()),
            "pull_request_review.submitted",
            Some("review does not match"),
        ),
    ];
    cases.iter().for_each(check);
}

#[test]
fn pagerduty_payloads_in_the_shape_of_its_docs() {
    let pagerduty = |events: Value, services: Value| json!({"pagerduty": {"secret": "env:S", "events": events, "services": services}});
    let incident_types = [
        (
            "pagerduty/incident_annotated.json",
            "incident.annotated",
            "/note/content",
            "Rolled back payments-api to v2.14.1; error rate falling.",
        ),
        ("pagerduty/incident_responder_added.json", "incident.responder.added", "/responder/state", "pending"),
        (
            "pagerduty/incident_status_update_published.json",
            "incident.status_update_published",
            "/status_update/message",
            "Mitigated by rollback; monitoring.",
        ),
        (
            "pagerduty/incident_conference_bridge_updated.json",
            "incident.conference_bridge.updated",
            "/conference_bridge/conference_url",
            "https://meet.example.com/inc-4821",
        ),
        (
            "pagerduty/incident_custom_field_values_updated.json",
            "incident.custom_field_values.updated",
            "/field_values/custom_fields/0/value",
            "production",
        ),
        (
            "pagerduty/incident_workflow_started.json",
            "incident.workflow.started",
            "/workflow_instance/incident_workflow/id",
            "PWFLOW01",
        ),
        (
            "pagerduty/incident_role_assigned.json",
            "incident.role.assigned",
            "/role_assignment/incident_role_assignments/0/role/id",
            "PROLEIC",
        ),
        ("pagerduty/incident_task_created.json", "incident.task.created", "/task/status", "todo"),
        (
            "pagerduty/incident_action_invocation_created.json",
            "incident.action_invocation.created",
            "/action_invocation/state",
            "created",
        ),
    ];
    for (fixture, kind, pointer, value) in incident_types {
        let fields = [("/incident/id", "Q2A8KZ3F0XRM1Y"), ("/incident/type", "incident_reference"), (pointer, value)];
        let trigger = pagerduty(json!([kind]), json!([]));
        check(&Case { fixture, trigger, github_event: None, patch: &[], kind, refused: None, fields: &fields });
    }
    let cases = [
        Case {
            fixture: "pagerduty/incident_priority_updated.json",
            trigger: pagerduty(json!(["incident.priority_updated"]), json!(["PSVC7PAY"])),
            github_event: None,
            patch: &[],
            kind: "incident.priority_updated",
            refused: None,
            fields: &[("/incident/id", "Q2A8KZ3F0XRM1Y"), ("/incident/priority/summary", "P1")],
        },
        Case {
            fixture: "pagerduty/incident_workflow_started.json",
            trigger: pagerduty(json!(["incident.workflow.started"]), json!(["POTHER1"])),
            github_event: None,
            patch: &[],
            kind: "incident.workflow.started",
            refused: Some("service `PSVC7PAY` is not in `services`"),
            fields: &[],
        },
        Case {
            fixture: "pagerduty/service_updated.json",
            trigger: pagerduty(json!(["service.updated"]), json!(["PSVC7PAY"])),
            github_event: None,
            patch: &[],
            kind: "service.updated",
            refused: None,
            fields: &[("/service/summary", "payments-api")],
        },
        Case {
            fixture: "pagerduty/service_custom_field_values_updated.json",
            trigger: pagerduty(json!(["service.custom_field_values.updated"]), json!(["PSVC7PAY"])),
            github_event: None,
            patch: &[],
            kind: "service.custom_field_values.updated",
            refused: None,
            fields: &[("/service/id", "PSVC7PAY"), ("/field_values/custom_fields/1/value", "1")],
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn slack_payloads_in_the_shape_of_the_events_api() {
    let slack = |pattern: &str| json!({"slack": {"signing_secret": "env:S", "pattern": pattern}});
    let case = |fixture, kind, pattern: &str, refused| Case {
        fixture,
        trigger: slack(pattern),
        github_event: None,
        patch: &[],
        kind,
        refused,
        fields: &[],
    };
    let cases = [
        case("slack/app_mention.json", "app_mention", "^bug: the cart", None),
        case("slack/app_mention_as_message.json", "message", "^bug: the cart", None),
        case("slack/message.json", "message", "^bug: search", None),
        case("slack/thread_broadcast.json", "message", "^bug: also", None),
        case("slack/message_changed.json", "message", ".", Some("not a new message")),
        case("slack/message_replied_without_subtype.json", "message", ".", Some("hidden")),
        case("slack/bot_message.json", "message", ".", Some("bot")),
    ];
    cases.iter().for_each(check);
}

#[test]
fn alertmanager_payloads_from_a_real_alertmanager() {
    let alertmanager = |per: &str, statuses: Value| json!({"alertmanager": {"auth": {"none": true}, "per": per, "statuses": statuses}});
    let cases = [
        Case {
            fixture: "alertmanager/firing_two_alerts.json",
            trigger: alertmanager("group", json!(["firing"])),
            github_event: None,
            patch: &[],
            kind: "alert.firing",
            refused: None,
            fields: &[("/group_key", "{}:{alertname=\"DiskFull\"}"), ("/alerts/1/labels/instance", "db-2")],
        },
        Case {
            fixture: "alertmanager/resolved.json",
            trigger: alertmanager("group", json!(["firing"])),
            github_event: None,
            patch: &[],
            kind: "alert.resolved",
            refused: Some("alert status `resolved`"),
            fields: &[("/common_labels/alertname", "DiskFull")],
        },
    ];
    cases.iter().for_each(check);

    // per: alert, as intake splits: each alert its own status and delivery id.
    let ids = |fixture: &str| -> Vec<(String, Option<String>)> {
        split_per_alert(&payload(fixture, &[]))
            .into_iter()
            .map(|one| Event::from_delivery(TriggerKind::Alertmanager, one, BTreeMap::new(), chrono::Utc::now()))
            .map(|event| (event.kind, event.delivery_id))
            .collect()
    };
    let mixed = ids("alertmanager/one_resolved_one_firing.json");
    assert_eq!(mixed.iter().map(|(kind, _)| kind.as_str()).collect::<Vec<_>>(), ["alert.resolved", "alert.firing"]);
    assert_ne!(mixed[0].1, mixed[1].1);
    let without = ids("alertmanager/firing_two_alerts_without_fingerprints.json");
    assert_ne!(without[0].1, without[1].1, "alerts without a fingerprint are told apart by their labels");
}

/// Every fixture of these sources is listed, with its source, in its folder's README.md.
#[test]
fn every_provider_fixture_says_where_it_comes_from() {
    for folder in ["github", "pagerduty", "slack", "alertmanager"] {
        let dir = repo_root().join("tests/data").join(folder);
        let readme =
            std::fs::read_to_string(dir.join("README.md")).unwrap_or_else(|e| panic!("{folder}/README.md: {e}"));
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                assert!(readme.contains(&format!("`{name}`")), "tests/data/{folder}/README.md does not list `{name}`");
            }
        }
    }
}

/// Every field path the triggers and the example automations read, with the JSON type
/// the providers' published examples give it there (each folder's README.md names the
/// examples and the date they were compared); `absent` for a field the published
/// examples of that event do not carry, so no test leans on it.
const SHAPES: &[(&str, &[(&str, &str)])] = &[
    ("github/pull_request_opened.json", GITHUB_PULL_REQUEST),
    ("github/pull_request_opened_draft.json", GITHUB_PULL_REQUEST),
    ("github/push.json", &[("/ref", "string"), ("/before", "string"), ("/after", "string"), ("/commits", "array")]),
    ("github/projects_v2_item_edited.json", &[("/action", "string"), ("/projects_v2_item/content_type", "string")]),
    ("github/issue_comment_created.json", &[("/issue/number", "number"), ("/comment/body", "string")]),
    ("github/discussion_comment_created.json", &[("/discussion/number", "number"), ("/comment/body", "string")]),
    (
        "github/pull_request_review_comment_created.json",
        &[("/comment/body", "string"), ("/pull_request/number", "number"), ("/pull_request/draft", "absent")],
    ),
    ("github/pull_request_review_submitted.json", &[("/review/body", "string"), ("/review/state", "string")]),
    ("github/pull_request_review_approved_without_body.json", &[("/review/body", "null"), ("/review/state", "string")]),
    ("pagerduty/incident_triggered_p1.json", PAGERDUTY_INCIDENT),
    ("pagerduty/incident_triggered_p3.json", PAGERDUTY_INCIDENT),
    ("pagerduty/incident_priority_updated.json", PAGERDUTY_INCIDENT),
    ("pagerduty/incident_triggered_no_priority.json", &[("/event/data/priority", "null")]),
    ("pagerduty/service_updated.json", &[("/event/data/id", "string"), ("/event/data/type", "string")]),
    ("pagerduty/incident_workflow_started.json", &[("/event/data/service/id", "string")]),
    ("pagerduty/incident_role_assigned.json", &[("/event/data/incident_role_assignments/0/incident/id", "string")]),
    (
        "pagerduty/service_custom_field_values_updated.json",
        &[("/event/data/service/id", "string"), ("/event/data/custom_fields/0/value", "array")],
    ),
    ("slack/app_mention.json", SLACK_MESSAGE),
    ("slack/message.json", SLACK_MESSAGE),
    ("slack/thread_broadcast.json", &[("/event/thread_ts", "string"), ("/event/subtype", "string")]),
    ("slack/message_changed.json", &[("/event/hidden", "bool"), ("/event/message/text", "string")]),
    ("slack/bot_message.json", &[("/event/bot_id", "string"), ("/event/subtype", "string")]),
];

const GITHUB_PULL_REQUEST: &[(&str, &str)] = &[
    ("/action", "string"),
    ("/number", "number"),
    ("/pull_request/title", "string"),
    ("/pull_request/body", "string"),
    ("/pull_request/draft", "bool"),
    ("/pull_request/head/sha", "string"),
    ("/pull_request/base/sha", "string"),
];

const PAGERDUTY_INCIDENT: &[(&str, &str)] = &[
    ("/event/id", "string"),
    ("/event/event_type", "string"),
    ("/event/resource_type", "string"),
    ("/event/occurred_at", "string"),
    ("/event/data/id", "string"),
    ("/event/data/number", "number"),
    ("/event/data/title", "string"),
    ("/event/data/html_url", "string"),
    ("/event/data/service/id", "string"),
    ("/event/data/service/summary", "string"),
    ("/event/data/priority/summary", "string"),
];

const SLACK_MESSAGE: &[(&str, &str)] = &[
    ("/type", "string"),
    ("/team_id", "string"),
    ("/event_id", "string"),
    ("/event/type", "string"),
    ("/event/text", "string"),
    ("/event/channel", "string"),
    ("/event/user", "string"),
    ("/event/ts", "string"),
];

fn json_type(value: Option<&Value>) -> &'static str {
    match value {
        None => "absent",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "bool",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

#[test]
fn fixtures_have_the_field_types_of_the_published_examples() {
    let mut wrong = Vec::new();
    for (fixture, fields) in SHAPES {
        let payload = payload(fixture, &[]);
        for (pointer, expected) in *fields {
            let found = json_type(payload.pointer(pointer));
            if found != *expected {
                wrong.push(format!("{fixture} {pointer}: {found}, published examples: {expected}"));
            }
        }
        // Every GitHub payload names its repository whole, clone URL included (which
        // `task.repo` templates read); an organization's project events have none.
        if fixture.starts_with("github/") && payload.get("repository").is_some() {
            for pointer in ["/repository/full_name", "/repository/clone_url", "/repository/html_url"] {
                if json_type(payload.pointer(pointer)) != "string" {
                    wrong.push(format!("{fixture} {pointer}: missing"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "fixtures differ from the published shapes:\n{}", wrong.join("\n"));
}
