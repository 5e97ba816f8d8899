//! Reading automation files and `nightshift.yaml`: YAML syntax, schema, types and the
//! checks that need no rule engine, each problem located in its file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::schema::Format;
use super::{
    Automation, Code, Diagnostic, FieldPath, Finding, NotifyTarget, ProjectConfig, SourceMap, TestCase, is_valid_name,
};

/// A file's text, kept to locate problems found later (e.g. by the rule compiler).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn read(path: &Path) -> Result<SourceFile, Diagnostic> {
        std::fs::read_to_string(path)
            .map(|text| SourceFile { path: path.to_path_buf(), text })
            .map_err(|error| io_diagnostic(path, &format!("cannot read the file: {error}")))
    }

    /// Turns findings into diagnostics with line and column.
    pub fn locate(&self, findings: Vec<Finding>) -> Vec<Diagnostic> {
        if findings.is_empty() {
            return Vec::new();
        }
        let map = SourceMap::new(&self.text);
        findings
            .into_iter()
            .map(|finding| {
                let at = match (finding.inner, finding.at_key) {
                    (Some(inner), _) => map.inside(&finding.path, inner),
                    (None, true) => map.key(&finding.path),
                    (None, false) => map.value(&finding.path),
                };
                Diagnostic {
                    file: self.path.clone(),
                    line: at.line,
                    col: at.col,
                    code: finding.code,
                    message: finding.message,
                    hint: finding.hint,
                }
            })
            .collect()
    }

    /// Parses the file as `format`: syntax, then every schema problem, then the types.
    pub fn parse<T: DeserializeOwned>(&self, format: Format) -> Result<T, Vec<Diagnostic>> {
        let value = self.parse_value()?;
        let findings = format.check(&value);
        if !findings.is_empty() {
            return Err(self.locate(findings));
        }
        self.typed(value)
    }

    /// The YAML as a JSON value, or what keeps it from being one (syntax, a key written
    /// twice, a key that is not a string).
    pub fn parse_value(&self) -> Result<Value, Vec<Diagnostic>> {
        // Through serde_yaml's own value, which refuses duplicate keys; serde_json's maps
        // would silently keep the last one.
        let mut yaml: serde_yaml::Value = serde_yaml::from_str(&self.text).map_err(|error| self.yaml_error(&error))?;
        yaml.apply_merge().map_err(|error| vec![self.at_start(Code::YamlSyntax, format!("invalid YAML: {error}"))])?;
        serde_json::to_value(yaml).map_err(|error| {
            vec![self.at_start(Code::YamlSyntax, format!("unsupported YAML: {error}; every key must be a string"))]
        })
    }

    /// A schema-valid value as its type.
    pub fn typed<T: DeserializeOwned>(&self, value: Value) -> Result<T, Vec<Diagnostic>> {
        // The schema is generated from `T`, so this only fails on checks the schema cannot
        // express (e.g. a duration too large to represent).
        serde_path_to_error::deserialize(&value).map_err(|error| {
            let pointer: String = error.path().iter().map(|segment| format!("/{segment}")).collect();
            let path = FieldPath::from_json_pointer(&pointer, &value);
            let message = format!("`{path}`: {}", error.inner());
            self.locate(vec![Finding::new(path, Code::InvalidValue, message)])
        })
    }

    fn at_start(&self, code: Code, message: String) -> Diagnostic {
        Diagnostic { file: self.path.clone(), line: 1, col: 1, code, message, hint: None }
    }

    fn yaml_error(&self, error: &serde_yaml::Error) -> Vec<Diagnostic> {
        let message = error.to_string();
        if message.contains("duplicate entry with key") {
            let duplicates: Vec<Diagnostic> = SourceMap::new(&self.text)
                .duplicate_keys()
                .iter()
                .map(|(path, at)| Diagnostic {
                    file: self.path.clone(),
                    line: at.line,
                    col: at.col,
                    code: Code::DuplicateKey,
                    message: format!("`{path}` is written twice in the same mapping"),
                    hint: Some("YAML keeps only one of them; remove or merge the other".into()),
                })
                .collect();
            if !duplicates.is_empty() {
                return duplicates;
            }
        }
        let (line, col) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        vec![Diagnostic {
            file: self.path.clone(),
            line,
            col,
            code: Code::YamlSyntax,
            message: format!("invalid YAML: {message}"),
            hint: Some("check indentation and quoting; strings with `: ` or `#` need quotes".into()),
        }]
    }
}

pub fn io_diagnostic(path: &Path, message: &str) -> Diagnostic {
    Diagnostic { file: path.to_path_buf(), line: 1, col: 1, code: Code::Io, message: message.to_string(), hint: None }
}

/// Expands directories into the `.yaml`/`.yml` files under them (sorted, recursively).
pub fn discover(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_yaml(path, &mut files, &mut problems);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            problems.push(io_diagnostic(path, "no such file or directory"));
        }
    }
    (files, problems)
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Diagnostic>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => return problems.push(io_diagnostic(dir, &format!("cannot read the directory: {error}"))),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, files, problems);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            files.push(path);
        }
    }
}

/// Checks of an automation that need no rule engine.
pub fn check_automation(automation: &Automation, file: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    let root = FieldPath::root();
    check_trigger_presence(automation.trigger.is_some(), !automation.triggers.is_empty(), &mut findings);
    if let Some(trigger) = &automation.trigger {
        trigger.check(&root.key("trigger"), &mut findings);
    }
    for (index, trigger) in automation.triggers.iter().enumerate() {
        trigger.check(&root.key("triggers").index(index), &mut findings);
    }
    let task = root.key("task");
    check_paths(&automation.task.paths, &task.key("paths"), &mut findings);
    check_secret_names(automation.task.secrets.keys(), &task.key("secrets"), &mut findings);
    for (index, target) in automation.notify.iter().enumerate() {
        check_notify(target, &root.key("notify").index(index), &mut findings);
    }
    super::notify::check_targets(automation, &mut findings);
    check_follow_up(&automation.follow_up, &root.key("follow_up"), &mut findings);
    for (index, case) in automation.tests.iter().enumerate() {
        let at = root.key("tests").index(index);
        check_test(case, file, &at, &mut findings);
        check_test_messages(automation, case, &at, &mut findings);
    }
    findings
}

/// A follow-up phrase with text in it and a window longer than nothing.
pub fn check_follow_up(follow_up: &super::FollowUpConfig, path: &FieldPath, findings: &mut Vec<Finding>) {
    if follow_up.phrase.trim().is_empty() {
        findings.push(
            Finding::new(
                path.key("phrase"),
                Code::InvalidValue,
                "`phrase` is empty, so every comment would be a follow-up",
            )
            .hint("give the words a comment must contain, e.g. `@nightshift`"),
        );
    }
    if follow_up.window.as_duration().is_zero() {
        findings.push(
            Finding::new(path.key("window"), Code::InvalidValue, "`window` is zero, so no reply would be a follow-up")
                .hint("give a duration such as `7d`, or set `enabled: false`"),
        );
    }
}

/// A test's `expect.notify` names targets the automation has, and messages they are sent:
/// a pull request and a webhook are told only of the end.
pub fn check_test_messages(automation: &Automation, case: &TestCase, path: &FieldPath, findings: &mut Vec<Finding>) {
    let Some(expected) = &case.expect.notify else { return };
    let kinds: Vec<super::NotifyKind> = automation.notify.iter().filter_map(NotifyTarget::kind).collect();
    for (n, wanted) in expected.iter().enumerate() {
        let at = path.key("expect").key("notify").index(n);
        if !kinds.contains(&wanted.target) {
            let has = if kinds.is_empty() {
                "it has no `notify:` targets".to_string()
            } else {
                let names: Vec<String> = kinds.iter().map(|kind| format!("`{}`", kind.as_str())).collect();
                format!("its targets: {}", names.join(", "))
            };
            findings.push(Finding::new(
                at.key("target"),
                Code::InvalidValue,
                format!("the automation has no `{}` target ({has})", wanted.target.as_str()),
            ));
        } else if wanted.kind == super::MessageKind::Start && !wanted.target.told_at_start() {
            findings.push(
                Finding::new(
                    at.key("kind"),
                    Code::InvalidValue,
                    format!("a `{}` target is told only of the run's end", wanted.target.as_str()),
                )
                .hint("use `kind: end`"),
            );
        }
    }
}

/// An automation has `trigger` or a non-empty `triggers`, not both.
pub fn check_trigger_presence(single: bool, list: bool, findings: &mut Vec<Finding>) {
    let root = FieldPath::root();
    match (single, list) {
        (false, false) => findings.push(
            Finding::new(root, Code::MissingField, "an automation needs `trigger` (one) or `triggers` (a list)")
                .hint("e.g. `trigger: { cron: { schedule: \"0 9 * * MON\" } }`"),
        ),
        (true, true) => findings.push(
            Finding::new(root.key("triggers"), Code::InvalidValue, "write `trigger` or `triggers`, not both")
                .hint("move the single trigger into the `triggers` list"),
        ),
        _ => {}
    }
}

pub fn check_paths(globs: &[String], path: &FieldPath, findings: &mut Vec<Finding>) {
    for (index, pattern) in globs.iter().enumerate() {
        if let Err(error) = globset::Glob::new(pattern) {
            findings.push(Finding::new(
                path.index(index),
                Code::InvalidValue,
                format!("invalid glob: {}", error.kind()),
            ));
        }
    }
}

pub fn check_secret_names<'a>(names: impl Iterator<Item = &'a String>, path: &FieldPath, findings: &mut Vec<Finding>) {
    for name in names {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            findings.push(
                Finding::new(path.key(name), Code::InvalidValue, format!("invalid environment variable name `{name}`"))
                    .hint("use uppercase letters, digits and `_`, e.g. `NPM_TOKEN`")
                    .at_key(),
            );
        }
    }
}

pub fn check_notify(target: &NotifyTarget, path: &FieldPath, findings: &mut Vec<Finding>) {
    if target.kind().is_none() {
        findings.push(Finding::new(
            path.clone(),
            Code::InvalidValue,
            "a notify target has exactly one of `slack`, `webhook`, `github_comment`, `github_pull_request`",
        ));
    }
}

/// A test's fixture must exist (relative to the automation `file`) and its expectations parse.
pub fn check_test(case: &TestCase, file: &Path, path: &FieldPath, findings: &mut Vec<Finding>) {
    let dir = file.parent().unwrap_or(Path::new("."));
    let fixture = dir.join(&case.event);
    if !fixture.is_file() {
        findings.push(
            Finding::new(path.key("event"), Code::MissingFixture, format!("fixture `{}` not found", fixture.display()))
                .hint("fixture paths are relative to the automation file"),
        );
    }
    if let Some(now) = &case.now
        && chrono::DateTime::parse_from_rfc3339(now).is_err()
    {
        findings.push(
            Finding::new(path.key("now"), Code::InvalidValue, format!("`{now}` is not an RFC 3339 time"))
                .hint("e.g. `2026-11-23T09:00:00Z`"),
        );
    }
    if let Some(network) = &case.expect.network {
        let lists = [
            ("setup_allows", &network.setup_allows),
            ("setup_denies", &network.setup_denies),
            ("agent_allows", &network.agent_allows),
            ("agent_denies", &network.agent_denies),
        ];
        for (field, requests) in lists {
            for (n, request) in requests.iter().enumerate() {
                if let Err(why) = super::RequestSpec::parse(request) {
                    let at = path.key("expect").key("network").key(field).index(n);
                    findings.push(Finding::new(at, Code::InvalidValue, why));
                }
            }
        }
    }
}

/// Loads `nightshift.yaml`, or the defaults when `path` is `None`. A file that is empty
/// (or only comments) means the defaults too.
pub fn load_project(path: Option<&Path>) -> Result<ProjectConfig, Vec<Diagnostic>> {
    let Some(path) = path else { return Ok(ProjectConfig::default()) };
    let file = SourceFile::read(path).map_err(|d| vec![d])?;
    let value = match file.parse_value()? {
        Value::Null => Value::Object(serde_json::Map::new()),
        value => value,
    };
    let findings = Format::Project.check(&value);
    if !findings.is_empty() {
        return Err(file.locate(findings));
    }
    let config: ProjectConfig = file.typed(value)?;
    let mut findings = Vec::new();
    for (name, profile) in &config.profiles {
        let at = FieldPath::root().key("profiles").key(name);
        if !is_valid_name(name) {
            findings
                .push(Finding::new(at.clone(), Code::InvalidValue, format!("invalid profile name `{name}`")).at_key());
        }
        profile.check(&at, &mut findings);
    }
    super::notify::check_settings(&config.slack, &config.github, &mut findings);
    if findings.is_empty() { Ok(config) } else { Err(file.locate(findings)) }
}
