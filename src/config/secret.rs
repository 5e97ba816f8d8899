//! `SecretRef`: where a secret's value lives (`env:NAME` or `file:PATH`), never the value itself.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A reference to a secret. Automation files never hold secret values, so they can be
/// committed and reviewed like code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// `env:NAME`: the value of an environment variable of the nightshift process.
    Env(String),
    /// `file:PATH`: the contents of a file (trailing newline removed).
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret reference `{0}`: write `env:VARIABLE` or `file:/path/to/secret`")]
pub struct SecretRefError(String);

impl FromStr for SecretRef {
    type Err = SecretRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || SecretRefError(text.to_string());
        match text.split_once(':') {
            Some(("env", name))
                if !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !name.as_bytes()[0].is_ascii_digit() =>
            {
                Ok(Self::Env(name.to_string()))
            }
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.to_string())),
            _ => Err(fail()),
        }
    }
}

impl SecretRef {
    /// Reads the secret's value now: the variable, or the file without its trailing
    /// newline. The error names the reference, never a value.
    pub fn resolve(&self) -> Result<String, String> {
        let value = match self {
            Self::Env(name) => std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?,
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read secret file {path}: {e}"))?,
        };
        // An empty key is one anyone can sign with.
        if value.is_empty() {
            return Err(format!("secret {self} is empty"));
        }
        Ok(value)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{path}"),
        }
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$",
            "description": "Where a secret lives: `env:VARIABLE` or `file:/path`. Never the value itself.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_and_file_references_only() {
        assert_eq!("env:GH_SECRET".parse(), Ok(SecretRef::Env("GH_SECRET".into())));
        assert_eq!("file:/run/s".parse(), Ok(SecretRef::File("/run/s".into())));
        for bad in ["hunter2", "env:", "env:1X", "env:A-B", "file:", "vault:x"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }
}
