//! The committed JSON Schemas match the Rust types, and the examples follow them.

use nightshift::config::schema::Format;

use crate::repo_root;

#[test]
fn committed_schemas_are_up_to_date() {
    for format in [Format::Automation, Format::Project] {
        let path = repo_root().join(format.schema_file());
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == format.schema_text(),
            "{} is stale: run `cargo run -- schema --write .` and commit the result",
            path.display()
        );
    }
}

#[test]
fn example_automations_name_the_schema_and_follow_it() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(Format::Automation.schema_file())).unwrap())
            .unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    for entry in std::fs::read_dir(repo_root().join("automations")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/automation.schema.json\n"),
            "{} lacks the $schema line",
            path.display()
        );
        let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn field_docs_become_schema_descriptions() {
    let schema = Format::Automation.schema();
    let prompt = schema.pointer("/$defs/TaskTemplate/properties/prompt/description").and_then(|d| d.as_str());
    assert!(prompt.is_some_and(|d| d.contains("untrusted")), "{prompt:?}");
}
