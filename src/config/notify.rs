//! Notify settings of `nightshift.yaml` (`slack`, `github`, `notify`) and the load-time
//! checks of an automation's `notify:` targets: what the triggers can fill, webhook URLs,
//! and the tokens each target will use (docs/notify.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Automation, Code, FieldPath, Finding, NotifyTarget, SecretRef};
use crate::triggers::TriggerKind;

/// `slack:` in nightshift.yaml: where Slack's Web API is and the default bot token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// The Web API's base URL. Default `https://slack.com/api/`.
    #[serde(default = "default_slack_api")]
    pub api_url: String,
    /// The bot token of targets that name none (`env:VARIABLE` or `file:/path`). Default
    /// `env:SLACK_BOT_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
}

/// `github:` in nightshift.yaml: where GitHub's REST API is (GitHub Enterprise:
/// `https://HOST/api/v3/`) and the default token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// The REST API's base URL. Default `https://api.github.com/`.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// The token of targets that name none. Default `env:GITHUB_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
}

/// `notify:` in nightshift.yaml.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// Let webhook targets reach private, loopback and link-local addresses. Default
    /// false: a webhook URL whose host resolves to one is refused.
    #[serde(default)]
    pub allow_private_targets: bool,
}

pub const DEFAULT_SLACK_API: &str = "https://slack.com/api/";
pub const DEFAULT_GITHUB_API: &str = "https://api.github.com/";
/// The token of a Slack target when neither it nor nightshift.yaml names one.
pub const DEFAULT_SLACK_TOKEN: &str = "SLACK_BOT_TOKEN";
/// The token of a GitHub target when neither it nor nightshift.yaml names one.
pub const DEFAULT_GITHUB_TOKEN: &str = "GITHUB_TOKEN";

fn default_slack_api() -> String {
    DEFAULT_SLACK_API.into()
}

fn default_github_api() -> String {
    DEFAULT_GITHUB_API.into()
}

impl Default for SlackSettings {
    fn default() -> Self {
        SlackSettings { api_url: default_slack_api(), token: None }
    }
}

impl Default for GithubSettings {
    fn default() -> Self {
        GithubSettings { api_url: default_github_api(), token: None }
    }
}

impl SlackSettings {
    /// The API's base URL, ending with `/` so method names join onto it.
    pub fn url(&self) -> Result<reqwest::Url, String> {
        api_url(&self.api_url)
    }

    /// The token a target uses: its own, else this one, else `env:SLACK_BOT_TOKEN`.
    pub fn token_for(&self, own: Option<&SecretRef>) -> SecretRef {
        effective(own, self.token.as_ref(), DEFAULT_SLACK_TOKEN)
    }
}

impl GithubSettings {
    /// The API's base URL, ending with `/` so paths join onto it.
    pub fn url(&self) -> Result<reqwest::Url, String> {
        api_url(&self.api_url)
    }

    /// The token a target uses: its own, else this one, else `env:GITHUB_TOKEN`.
    pub fn token_for(&self, own: Option<&SecretRef>) -> SecretRef {
        effective(own, self.token.as_ref(), DEFAULT_GITHUB_TOKEN)
    }
}

fn effective(own: Option<&SecretRef>, project: Option<&SecretRef>, variable: &str) -> SecretRef {
    own.or(project).cloned().unwrap_or_else(|| SecretRef::Env(variable.to_string()))
}

/// `text` as an API base URL: http(s), with a host, ending with `/`.
fn api_url(text: &str) -> Result<reqwest::Url, String> {
    let with_slash = if text.ends_with('/') { text.to_string() } else { format!("{text}/") };
    let url = http_url(&with_slash)?;
    Ok(url)
}

/// `text` as an `http://` or `https://` URL with a host, or why not.
pub fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    Ok(url)
}

/// Load-time checks of the settings in nightshift.yaml.
pub fn check_settings(slack: &SlackSettings, github: &GithubSettings, findings: &mut Vec<Finding>) {
    let root = FieldPath::root();
    for (at, text) in [(root.key("slack"), &slack.api_url), (root.key("github"), &github.api_url)] {
        if let Err(why) = api_url(text) {
            findings.push(Finding::new(at.key("api_url"), Code::InvalidValue, why));
        }
    }
}

/// Checks of one automation's `notify:` that need its triggers: a Slack target without a
/// `channel` replies in the triggering thread, so every trigger must be Slack; GitHub
/// targets take the repository and number from the event, so every trigger must be
/// GitHub (unless a pull request names its `repo`); a webhook URL is http(s) with a host.
pub fn check_targets(automation: &Automation, findings: &mut Vec<Finding>) {
    let kinds: Vec<Option<TriggerKind>> =
        automation.all_triggers().map(|t| t.source().map(|source| source.kind())).collect();
    let all = |kind: TriggerKind| !kinds.is_empty() && kinds.iter().all(|k| *k == Some(kind));
    let others = |kind: TriggerKind| {
        let mut names: Vec<&str> =
            kinds.iter().flatten().filter(|k| **k != kind).map(|k| k.as_str()).collect::<Vec<_>>();
        names.dedup();
        names.join(", ")
    };
    for (index, target) in automation.notify.iter().enumerate() {
        let at = FieldPath::root().key("notify").index(index);
        if let Some(slack) = &target.slack
            && slack.channel.is_none()
            && !all(TriggerKind::Slack)
        {
            findings.push(
                Finding::new(
                    at.key("slack"),
                    Code::InvalidValue,
                    format!(
                        "a Slack target without `channel` replies in the triggering message's thread, and this automation also has {} triggers",
                        others(TriggerKind::Slack)
                    ),
                )
                .hint("give a `channel` (e.g. `C0123ABC`), or keep only Slack triggers"),
            );
        }
        // A pull request with its own `repo` needs nothing from the event.
        let github = [
            ("github_comment", target.github_comment.is_some()),
            ("github_pull_request", target.github_pull_request.as_ref().is_some_and(|pull| pull.repo.is_none())),
        ];
        for (field, _) in github.into_iter().filter(|(_, set)| *set) {
            if !all(TriggerKind::Github) {
                let hint = if field == "github_comment" {
                    "keep only GitHub triggers in an automation with a `github_comment` target"
                } else {
                    "give the pull request's `repo` (`owner/name`), or keep only GitHub triggers"
                };
                findings.push(
                    Finding::new(
                        at.key(field),
                        Code::InvalidValue,
                        format!(
                            "`{field}` takes the repository{} from a GitHub event, and this automation also has {} triggers",
                            if field == "github_comment" { " and the number" } else { "" },
                            others(TriggerKind::Github)
                        ),
                    )
                    .hint(hint),
                );
            }
        }
        if let Some(webhook) = &target.webhook
            && let Err(why) = http_url(&webhook.url)
        {
            findings.push(Finding::new(at.key("webhook").key("url"), Code::InvalidValue, why));
        }
    }
}

/// The tokens and secrets `notify:` targets will use that cannot be read now: warnings,
/// not errors (as for a hook's missing secret); the messages fail when sent.
pub fn token_warnings(automation: &Automation, slack: &SlackSettings, github: &GithubSettings) -> Vec<Finding> {
    let mut warnings = Vec::new();
    for (index, target) in automation.notify.iter().enumerate() {
        let at = FieldPath::root().key("notify").index(index);
        let (field, own, project, default) = match target {
            NotifyTarget { slack: Some(t), .. } => ("slack", &t.token, &slack.token, DEFAULT_SLACK_TOKEN),
            NotifyTarget { github_comment: Some(t), .. } => {
                ("github_comment", &t.token, &github.token, DEFAULT_GITHUB_TOKEN)
            }
            NotifyTarget { github_pull_request: Some(t), .. } => {
                ("github_pull_request", &t.token, &github.token, DEFAULT_GITHUB_TOKEN)
            }
            NotifyTarget { webhook: Some(t), .. } => match &t.secret {
                Some(secret) => {
                    if let Err(why) = secret.resolve() {
                        let message = format!(
                            "the webhook's `secret` cannot be read: {why}; its messages will fail until it can"
                        );
                        warnings.push(Finding::new(at.key("webhook").key("secret"), Code::InvalidValue, message));
                    }
                    continue;
                }
                None => continue,
            },
            _ => continue,
        };
        let (reference, whose, place) = match (own, project) {
            (Some(own), _) => (own.clone(), "its `token`".to_string(), at.key(field).key("token")),
            (None, Some(project)) => {
                let section = if field == "slack" { "slack" } else { "github" };
                (project.clone(), format!("`{section}.token` of nightshift.yaml"), at.key(field))
            }
            (None, None) => (
                SecretRef::Env(default.to_string()),
                format!("`env:{default}` (no token here or in nightshift.yaml)"),
                at.key(field),
            ),
        };
        if let Err(why) = reference.resolve() {
            let message = format!(
                "the {field} target's token, {whose}, cannot be read: {why}; its messages will fail until it can"
            );
            warnings.push(Finding::new(place, Code::InvalidValue, message));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_end_with_a_slash_and_need_http_and_a_host() {
        let slack = SlackSettings { api_url: "http://127.0.0.1:9/api".into(), token: None };
        assert_eq!(slack.url().expect("url").as_str(), "http://127.0.0.1:9/api/");
        assert_eq!(SlackSettings::default().url().expect("url").as_str(), DEFAULT_SLACK_API);
        assert!(http_url("ftp://x/").is_err());
        assert!(http_url("https://").is_err());
        assert!(http_url("hooks.example.com/x").is_err());
    }

    #[test]
    fn a_targets_own_token_wins_then_the_projects_then_the_default_variable() {
        let own: SecretRef = "env:OWN".parse().expect("ref");
        let project = GithubSettings { token: Some("file:/run/gh".parse().expect("ref")), ..Default::default() };
        assert_eq!(project.token_for(Some(&own)), own);
        assert_eq!(project.token_for(None), "file:/run/gh".parse().expect("ref"));
        assert_eq!(GithubSettings::default().token_for(None), SecretRef::Env(DEFAULT_GITHUB_TOKEN.into()));
        assert_eq!(SlackSettings::default().token_for(None), SecretRef::Env(DEFAULT_SLACK_TOKEN.into()));
    }
}
