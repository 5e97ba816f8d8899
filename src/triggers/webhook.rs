//! Generic webhooks: `POST /hooks/{name}` with one authentication method per trigger.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Normalized, object_fields};
use crate::config::{Code, FieldPath, Finding, SecretRef};

/// An authenticated webhook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// The hook's name in `/hooks/{name}`; default: the automation's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How callers prove who they are. Exactly one method.
    pub auth: WebhookAuth,
    /// The largest delivery accepted, in bytes; larger ones get 413. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body: Option<usize>,
}

/// The largest delivery a webhook hook accepts unless told otherwise.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Authentication of a webhook: set exactly one field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookAuth {
    /// HMAC-SHA256 of the raw body in a header (GitHub style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacAuth>,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard: Option<StandardWebhooksAuth>,
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// `Authorization: Basic ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// No authentication. Only for hooks that are reachable from trusted networks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub none: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    pub secret: SecretRef,
    /// The header carrying the signature. Default `X-Hub-Signature-256`.
    #[serde(default = "default_hmac_header")]
    pub header: String,
    /// Text before the hex digest in the header. Default `sha256=`.
    #[serde(default = "default_hmac_prefix")]
    pub prefix: String,
}

fn default_hmac_header() -> String {
    "X-Hub-Signature-256".into()
}

fn default_hmac_prefix() -> String {
    "sha256=".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksAuth {
    /// A `whsec_...` secret.
    pub secret: SecretRef,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerAuth {
    pub token: SecretRef,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: SecretRef,
}

impl WebhookAuth {
    fn method_count(&self) -> usize {
        [self.hmac.is_some(), self.standard.is_some(), self.bearer.is_some(), self.basic.is_some(), self.none]
            .into_iter()
            .filter(|set| *set)
            .count()
    }

    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        if self.method_count() != 1 {
            findings.push(
                Finding::new(path.clone(), Code::InvalidValue, "set exactly one authentication method")
                    .hint("one of `hmac`, `standard`, `bearer`, `basic`, or `none: true`"),
            );
        }
    }
}

impl WebhookTrigger {
    pub(super) fn check(&self, path: &FieldPath, findings: &mut Vec<Finding>) {
        self.auth.check(&path.key("auth"), findings);
        if let Some(name) = &self.path
            && !crate::config::is_valid_name(name)
        {
            findings.push(
                Finding::new(path.key("path"), Code::InvalidValue, format!("invalid hook name `{name}`"))
                    .hint("use lowercase letters, digits and dashes, e.g. `deploy-failed`"),
            );
        }
    }
}

pub(super) fn normalize(payload: &Value, headers: &BTreeMap<String, String>) -> Normalized {
    Normalized {
        kind: "webhook".into(),
        delivery_id: headers.get("webhook-id").cloned(),
        fields: object_fields(payload),
    }
}
