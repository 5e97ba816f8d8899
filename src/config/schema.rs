//! JSON Schemas generated from the config types (committed under `schemas/`), and
//! schema validation that reports every structural problem of a file at once.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use super::{Automation, Code, FieldPath, Finding, ProjectConfig, did_you_mean};

/// The file formats nightshift reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Automation,
    Project,
}

impl Format {
    /// Where the schema is committed, relative to the repository root.
    pub fn schema_file(self) -> &'static str {
        match self {
            Format::Automation => "schemas/automation.schema.json",
            Format::Project => "schemas/nightshift.schema.json",
        }
    }

    /// The schema, generated from the Rust types.
    pub fn schema(self) -> Value {
        match self {
            Format::Automation => schema_for::<Automation>(),
            Format::Project => schema_for::<ProjectConfig>(),
        }
    }

    /// The committed text of the schema: pretty JSON with a final newline.
    pub fn schema_text(self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema()).expect("a schema serializes");
        text.push('\n');
        text
    }

    /// The schema and its validator, generated once per process.
    fn compiled(self) -> &'static (Value, jsonschema::Validator) {
        static AUTOMATION: OnceLock<(Value, jsonschema::Validator)> = OnceLock::new();
        static PROJECT: OnceLock<(Value, jsonschema::Validator)> = OnceLock::new();
        let cell = match self {
            Format::Automation => &AUTOMATION,
            Format::Project => &PROJECT,
        };
        cell.get_or_init(|| {
            let schema = self.schema();
            let validator = jsonschema::draft202012::new(&schema).expect("the generated schema is a valid JSON Schema");
            (schema, validator)
        })
    }

    /// Every structural problem of `instance`, as findings.
    pub fn check(self, instance: &Value) -> Vec<Finding> {
        let (root, validator) = self.compiled();
        if validator.is_valid(instance) {
            return Vec::new();
        }
        let mut findings = Vec::new();
        for error in validator.iter_errors(instance) {
            explain(self, &error, instance, root, &mut findings);
        }
        findings.sort_by(|a, b| a.path.cmp(&b.path));
        findings.dedup();
        findings
    }
}

/// YAML users write `field: ~` rarely and by mistake; optional fields are simply omitted.
/// Dropping `null` from optional types makes such a mistake a clear type error.
#[derive(Clone)]
struct NotNullable;

impl Transform for NotNullable {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(object) = schema.as_object_mut() {
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types[0].clone();
                    object.insert("type".into(), only);
                }
            }
            let any_of = object.get("anyOf").and_then(Value::as_array);
            if let Some(branches) = any_of
                && branches.len() == 2
                && branches.iter().any(|b| b.get("type") == Some(&Value::from("null")))
            {
                let kept = branches.iter().find(|b| b.get("type") != Some(&Value::from("null"))).cloned();
                object.remove("anyOf");
                if let Some(Value::Object(kept)) = kept {
                    object.extend(kept);
                }
            }
        }
        transform_subschemas(self, schema);
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// What a finding at `path` is about: a field, or the file as a whole.
fn describe(format: Format, path: &FieldPath) -> String {
    match format {
        _ if !path.0.is_empty() => format!("`{path}`"),
        Format::Automation => "the automation".to_string(),
        Format::Project => "the project settings (nightshift.yaml)".to_string(),
    }
}

/// The schema object at a canonical keyword location such as `/$defs/Task/properties/x/type`.
fn schema_at<'a>(root: &'a Value, keyword_location: &str) -> Option<&'a Value> {
    let parent = keyword_location.rsplit_once('/').map_or("", |(parent, _)| parent);
    root.pointer(parent)
}

fn explain(
    format: Format,
    error: &jsonschema::ValidationError<'_>,
    instance: &Value,
    root: &Value,
    findings: &mut Vec<Finding>,
) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let path = FieldPath::from_json_pointer(error.instance_path().as_str(), instance);
    let value = instance.pointer(error.instance_path().as_str()).unwrap_or(&Value::Null);
    let schema = schema_at(root, error.schema_path().as_str());
    match error.kind() {
        Kind::AdditionalProperties { unexpected } => {
            let known: Vec<&str> = schema
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|props| props.keys().map(String::as_str).collect())
                .unwrap_or_default();
            for field in unexpected {
                let hint = match did_you_mean(field, known.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("known fields here: {}", known.join(", ")),
                };
                findings.push(
                    Finding::new(
                        path.key(field),
                        Code::UnknownField,
                        format!("unknown field `{field}` in {}", describe(format, &path)),
                    )
                    .hint(hint)
                    .at_key(),
                );
            }
        }
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            findings.push(
                Finding::new(
                    path.clone(),
                    Code::MissingField,
                    format!("missing required field `{name}` in {}", describe(format, &path)),
                )
                .hint(field_description(schema, name).unwrap_or_else(|| format!("add `{name}:`"))),
            );
        }
        Kind::Type { kind } => {
            let expected = format!("{kind:?}").to_lowercase().replace("single(", "").replace(')', "");
            let expected = match expected.as_str() {
                "object" => "a mapping".to_string(),
                "array" => "a list".to_string(),
                "string" => "a string".to_string(),
                "boolean" => "true or false".to_string(),
                "integer" => "an integer".to_string(),
                other => other.to_string(),
            };
            let message = if path.0.is_empty() {
                let file = match format {
                    Format::Automation => "an automation file",
                    Format::Project => "nightshift.yaml",
                };
                format!("{file} must be a mapping of fields, found {}", json_type(value))
            } else {
                format!("{} must be {expected}, found {}", describe(format, &path), json_type(value))
            };
            findings.push(Finding::new(path, Code::WrongType, message));
        }
        Kind::Enum { options } => {
            push_not_one_of(format, path, value, options.as_array().map(Vec::as_slice).unwrap_or_default(), findings);
        }
        Kind::OneOfNotValid { context } | Kind::AnyOf { context } => {
            let constants: Option<Vec<Value>> = context
                .iter()
                .flatten()
                .map(|e| match e.kind() {
                    Kind::Constant { expected_value } => Some((**expected_value).clone()),
                    _ => None,
                })
                .collect();
            match constants {
                Some(options) if !options.is_empty() => push_not_one_of(format, path, value, &options, findings),
                // The branch with the fewest problems is the one the author meant.
                _ => match context.iter().filter(|branch| !branch.is_empty()).min_by_key(|branch| branch.len()) {
                    Some(branch) => branch.iter().for_each(|e| explain(format, e, instance, root, findings)),
                    None => findings.push(Finding::new(path, Code::InvalidValue, error.to_string())),
                },
            }
        }
        Kind::Pattern { pattern } => {
            let shown = value.as_str().unwrap_or_default();
            let (message, hint) = if pattern == super::duration::DURATION_PATTERN {
                (format!("invalid duration `{shown}`"), "write e.g. `90s`, `30m`, `1h30m` or `7d`".to_string())
            } else if pattern == crate::sandbox::limits::SIZE_PATTERN {
                (
                    format!("invalid size `{shown}`"),
                    "write e.g. `512M` or `2G` (K, M, G, T: powers of 1024)".to_string(),
                )
            } else if pattern.starts_with("^(env:") {
                (
                    format!("invalid secret reference `{shown}`"),
                    "write `env:VARIABLE` or `file:/path`; never put a secret's value in a file".to_string(),
                )
            } else if path == FieldPath::root().key("name") {
                (
                    format!("invalid automation name `{shown}`"),
                    "use 1 to 64 lowercase letters, digits and inner dashes, e.g. `weekly-audit`".to_string(),
                )
            } else {
                (format!("`{shown}` does not match the pattern `{pattern}`"), String::new())
            };
            let finding = Finding::new(path, Code::InvalidValue, message);
            findings.push(if hint.is_empty() { finding } else { finding.hint(hint) });
        }
        _ => findings.push(Finding::new(
            path.clone(),
            Code::InvalidValue,
            format!("{}: {error}", describe(format, &path)),
        )),
    }
}

fn push_not_one_of(format: Format, path: FieldPath, value: &Value, options: &[Value], findings: &mut Vec<Finding>) {
    let names: Vec<String> = options.iter().map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_string)).collect();
    let shown = value.as_str().map_or_else(|| value.to_string(), str::to_string);
    let hint = match did_you_mean(&shown, names.iter().map(String::as_str)) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!("choose one of: {}", names.join(", ")),
    };
    findings.push(
        Finding::new(
            path.clone(),
            Code::InvalidValue,
            format!("`{shown}` is not a valid value for {}", describe(format, &path)),
        )
        .hint(hint),
    );
}

fn field_description(schema: Option<&Value>, name: &str) -> Option<String> {
    let description = schema?.pointer(&format!("/properties/{name}/description"))?.as_str()?;
    let joined = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let first_sentence = joined.split_inclusive(". ").next().unwrap_or(&joined).trim_end();
    Some(format!("`{name}`: {first_sentence}"))
}

/// The JSON Schema of a type, for tests and docs.
pub fn schema_for<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12().with_transform(NotNullable).into_generator().into_root_schema_for::<T>().to_value()
}
