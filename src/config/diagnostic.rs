//! Diagnostics: problems found in automation files, located as `file:line:col`.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// The kind of a problem; its name is what `error[CODE]` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// The file is not valid YAML.
    YamlSyntax,
    /// A value has the wrong type.
    WrongType,
    /// A field the format does not know.
    UnknownField,
    /// A required field is missing.
    MissingField,
    /// A value of the right type that is not allowed (pattern, range, enum, conflict).
    InvalidValue,
    /// Two automations share a name, or two webhooks a hook name.
    DuplicateName,
    /// A key written twice in one mapping.
    DuplicateKey,
    /// A cron expression that does not parse.
    InvalidCron,
    /// A timezone that is not an IANA name.
    InvalidTimezone,
    /// A rhai expression, script or template that does not compile.
    RhaiSyntax,
    /// `task.agent` names a profile that does not exist.
    UnknownProfile,
    /// A network rule that is malformed.
    NetworkRule,
    /// A branch template that cannot produce a safe git ref.
    BranchTemplate,
    /// A test fixture that cannot be read.
    MissingFixture,
    /// A file or directory that cannot be read.
    Io,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::WrongType => "wrong-type",
            Code::UnknownField => "unknown-field",
            Code::MissingField => "missing-field",
            Code::InvalidValue => "invalid-value",
            Code::DuplicateName => "duplicate-name",
            Code::DuplicateKey => "duplicate-key",
            Code::InvalidCron => "invalid-cron",
            Code::InvalidTimezone => "invalid-timezone",
            Code::RhaiSyntax => "rhai-syntax",
            Code::UnknownProfile => "unknown-profile",
            Code::NetworkRule => "network-rule",
            Code::BranchTemplate => "branch-template",
            Code::MissingFixture => "missing-fixture",
            Code::Io => "io",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a path into an automation file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path to a field, shown as `task.network.agent.allow[1].domain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Segment>);

impl FieldPath {
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_string()));
        path
    }

    pub fn index(&self, index: usize) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    pub fn parent(&self) -> FieldPath {
        FieldPath(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }

    /// Parses a JSON pointer such as `/task/allow/1`. A number is an index only where
    /// `instance` has a list (a mapping may have a key `"2"`).
    pub fn from_json_pointer(pointer: &str, instance: &serde_json::Value) -> FieldPath {
        let mut node = Some(instance);
        let mut segments = Vec::new();
        for raw in pointer.split('/').skip(1) {
            let key = raw.replace("~1", "/").replace("~0", "~");
            let index = key.parse::<usize>().ok().filter(|_| node.is_some_and(serde_json::Value::is_array));
            node = match index {
                Some(index) => node.and_then(|n| n.get(index)),
                None => node.and_then(|n| n.get(&key)),
            };
            segments.push(match index {
                Some(index) => Segment::Index(index),
                None => Segment::Key(key),
            });
        }
        FieldPath(segments)
    }

    /// The JSON pointer of this path.
    pub fn to_json_pointer(&self) -> String {
        self.0
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => format!("/{}", key.replace('~', "~0").replace('/', "~1")),
                Segment::Index(index) => format!("/{index}"),
            })
            .collect()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (n, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if n == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A position inside a scalar's text: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPosition {
    pub line: usize,
    pub col: usize,
}

/// A problem found in a file before its position is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: FieldPath,
    pub code: Code,
    pub message: String,
    pub hint: Option<String>,
    /// Where inside the value the problem is (e.g. a rhai syntax error).
    pub inner: Option<InnerPosition>,
    /// Point at the key rather than the value (for unknown fields).
    pub at_key: bool,
}

impl Finding {
    pub fn new(path: FieldPath, code: Code, message: impl Into<String>) -> Finding {
        Finding { path, code, message: message.into(), hint: None, inner: None, at_key: false }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Finding {
        self.hint = Some(hint.into());
        self
    }

    pub fn inner(mut self, inner: Option<InnerPosition>) -> Finding {
        self.inner = inner;
        self
    }

    pub fn at_key(mut self) -> Finding {
        self.at_key = true;
        self
    }
}

/// A located problem, as `validate` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error[{}]: {}", self.file.display(), self.line, self.col, self.code, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `input`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(input, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_yaml() {
        let instance =
            serde_json::json!({"task": {"network": {"agent": {"allow": [{}, {"domain": 1}]}}}, "p": {"2": 1}});
        let path = FieldPath::from_json_pointer("/task/network/agent/allow/1/domain", &instance);
        assert_eq!(path.to_string(), "task.network.agent.allow[1].domain");
        assert_eq!(path.to_json_pointer(), "/task/network/agent/allow/1/domain");
        assert_eq!(FieldPath::from_json_pointer("/a~1b", &instance).to_string(), "a/b");
        assert_eq!(FieldPath::from_json_pointer("/p/2", &instance), FieldPath::root().key("p").key("2"));
    }

    #[test]
    fn suggestions_only_for_close_names() {
        assert_eq!(did_you_mean("promt", ["prompt", "paths"]), Some("prompt"));
        assert_eq!(did_you_mean("zzz", ["prompt", "paths"]), None);
    }
}
