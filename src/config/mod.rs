//! Automation files: the format (serde + schemars types), loading from disk, and
//! diagnostics that point at `file:line:col`.

pub mod automation;
mod diagnostic;
mod duration;
pub mod load;
pub mod notify;
pub mod parallel;
pub mod profiles;
pub mod schema;
mod secret;
mod source_map;

pub use automation::*;
pub use diagnostic::{Code, Diagnostic, FieldPath, Finding, InnerPosition, Segment, did_you_mean};
pub use duration::DurationSpec;
pub use notify::{GithubSettings, NotifySettings, SlackSettings};
pub use parallel::{AttemptsConfig, FanOutConfig, JoinConfig, JudgeConfig, VerifyConfig};
pub use profiles::{
    AgentProfile, DEFAULT_MAX_PROMPT_BYTES, OutputFormat, ProfilePath, ProfileSandbox, ProjectConfig, Retention,
};
pub use secret::SecretRef;
pub use source_map::SourceMap;

/// Automation and hook names: lowercase letters, digits and inner dashes, 1 to 64 chars.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
