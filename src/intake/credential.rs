//! `Credential`: a hook trigger's authentication method with its secret read, and the
//! check of one delivery against it (through `crate::auth`).

use chrono::{DateTime, Utc};

use super::{Delivery, Headers};
use crate::auth::{self, AuthError};
use crate::triggers::Trigger;
use crate::triggers::webhook::WebhookAuth;

/// What a request's headers settled (`Credential::precheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// The credentials were in the headers and match.
    Authenticated,
    /// The signature covers the body: it is checked once the body is read.
    NeedsBody,
}

/// How one hook authenticates, with the secret's value.
#[derive(Clone)]
pub enum Credential {
    /// GitHub-style HMAC-SHA256 of the body in `header` (lowercase), after `prefix`.
    Hmac {
        secret: String,
        header: String,
        prefix: String,
    },
    StandardWebhooks {
        key: Vec<u8>,
    },
    Bearer {
        token: String,
    },
    Basic {
        username: String,
        password: String,
    },
    Slack {
        signing_secret: String,
    },
    PagerDuty {
        secret: String,
    },
    /// `auth: { none: true }`: anyone who can reach the server.
    Open,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        let name = match self {
            Credential::Hmac { header, .. } => return write!(f, "Hmac({header})"),
            Credential::StandardWebhooks { .. } => "StandardWebhooks",
            Credential::Bearer { .. } => "Bearer",
            Credential::Basic { username, .. } => return write!(f, "Basic({username})"),
            Credential::Slack { .. } => "Slack",
            Credential::PagerDuty { .. } => "PagerDuty",
            Credential::Open => "Open",
        };
        f.write_str(name)
    }
}

impl Credential {
    /// The secret values this credential holds (a Standard Webhooks key as the base64 it
    /// is written in), for masking.
    pub fn secret_values(&self) -> Vec<String> {
        use base64::Engine as _;
        match self {
            Credential::Hmac { secret, .. } | Credential::PagerDuty { secret } => vec![secret.clone()],
            Credential::StandardWebhooks { key } => vec![base64::engine::general_purpose::STANDARD.encode(key)],
            Credential::Bearer { token } => vec![token.clone()],
            Credential::Basic { password, .. } => vec![password.clone()],
            Credential::Slack { signing_secret } => vec![signing_secret.clone()],
            Credential::Open => Vec::new(),
        }
    }

    /// The credential of a hook trigger, its secret read now.
    pub fn for_trigger(trigger: Trigger<'_>) -> Result<Credential, String> {
        match trigger {
            Trigger::Webhook(webhook) => Self::for_auth(&webhook.auth),
            Trigger::Alertmanager(alertmanager) => Self::for_auth(&alertmanager.auth),
            Trigger::Github(github) => Ok(Credential::Hmac {
                secret: github.secret.resolve()?,
                header: "x-hub-signature-256".into(),
                prefix: "sha256=".into(),
            }),
            Trigger::Slack(slack) => Ok(Credential::Slack { signing_secret: slack.signing_secret.resolve()? }),
            Trigger::Pagerduty(pagerduty) => Ok(Credential::PagerDuty { secret: pagerduty.secret.resolve()? }),
            Trigger::Cron(_) | Trigger::Manual(_) => Err("this trigger is not served at /hooks".into()),
        }
    }

    fn for_auth(auth: &WebhookAuth) -> Result<Credential, String> {
        if let Some(hmac) = &auth.hmac {
            return Ok(Credential::Hmac {
                secret: hmac.secret.resolve()?,
                header: hmac.header.to_ascii_lowercase(),
                prefix: hmac.prefix.clone(),
            });
        }
        if let Some(standard) = &auth.standard {
            let key = auth::standard_webhooks_key(&standard.secret.resolve()?)
                .map_err(|why| format!("secret {}: {why}", standard.secret))?;
            return Ok(Credential::StandardWebhooks { key });
        }
        if let Some(bearer) = &auth.bearer {
            return Ok(Credential::Bearer { token: bearer.token.resolve()? });
        }
        if let Some(basic) = &auth.basic {
            return Ok(Credential::Basic { username: basic.username.clone(), password: basic.password.resolve()? });
        }
        if auth.none {
            return Ok(Credential::Open);
        }
        Err("no authentication method is set".into())
    }

    /// What a request's headers settle before its body is read: credentials that sit in
    /// headers (bearer, basic, none) are checked whole, so `Authenticated`; a signature
    /// over the body is checked for presence and form (and its timestamp for freshness),
    /// so `NeedsBody`. An error refuses the request without reading its body.
    pub fn precheck(&self, headers: &Headers, now: DateTime<Utc>) -> Result<Precheck, AuthError> {
        let header = |name: &str| headers.get(name).map(String::as_str);
        match self {
            Credential::Hmac { header: name, prefix, .. } => {
                auth::precheck_hmac(name, prefix, header(name)).map(|_| Precheck::NeedsBody)
            }
            Credential::StandardWebhooks { .. } => auth::precheck_standard_webhooks(
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                now,
            )
            .map(|()| Precheck::NeedsBody),
            Credential::Slack { .. } => {
                auth::precheck_slack(header("x-slack-request-timestamp"), header("x-slack-signature"), now)
                    .map(|()| Precheck::NeedsBody)
            }
            Credential::PagerDuty { .. } => {
                auth::precheck_pagerduty(header("x-pagerduty-signature")).map(|()| Precheck::NeedsBody)
            }
            Credential::Bearer { .. } | Credential::Basic { .. } | Credential::Open => {
                self.verify(&Delivery { headers, body: &[] }, now).map(|()| Precheck::Authenticated)
            }
        }
    }

    /// Checks a delivery's signature or credentials; `now` judges signed timestamps.
    pub fn verify(&self, delivery: &Delivery<'_>, now: DateTime<Utc>) -> Result<(), AuthError> {
        let header = |name: &str| delivery.header(name);
        match self {
            Credential::Hmac { secret, header: name, prefix } => {
                auth::verify_hmac(secret.as_bytes(), name, prefix, header(name), delivery.body)
            }
            Credential::StandardWebhooks { key } => auth::verify_standard_webhooks(
                key,
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                delivery.body,
                now,
            ),
            Credential::Bearer { token } => auth::verify_bearer(token, header("authorization")),
            Credential::Basic { username, password } => auth::verify_basic(username, password, header("authorization")),
            Credential::Slack { signing_secret } => auth::verify_slack(
                signing_secret.as_bytes(),
                header("x-slack-request-timestamp"),
                header("x-slack-signature"),
                delivery.body,
                now,
            ),
            Credential::PagerDuty { secret } => {
                auth::verify_pagerduty(secret.as_bytes(), header("x-pagerduty-signature"), delivery.body)
            }
            Credential::Open => Ok(()),
        }
    }
}
