//! The `webhook` transport: POSTs a run's report as JSON, signed with Standard Webhooks
//! when the target has a secret, and only to public addresses unless nightshift.yaml says
//! `notify: { allow_private_targets: true }` (docs/notify.md).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use serde::Serialize;

use super::{Kind, Message, Outcome, Posted, Report, Target, retry_after};

/// How long one attempt may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What a webhook target receives: the Standard Webhooks payload shape.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// `run.started` or `run.ended`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When this attempt was made (RFC 3339).
    pub timestamp: String,
    pub data: &'a Report,
}

/// The event type a message of `kind` is sent as.
pub fn event_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Start => "run.started",
        Kind::End => "run.ended",
    }
}

/// What a message of `kind` about `report` POSTs, as attempted at `now`.
pub fn payload(kind: Kind, report: &Report, now: DateTime<Utc>) -> Payload<'_> {
    Payload { kind: event_type(kind), timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), data: report }
}

/// Sends webhook targets' messages.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    allow_private_targets: bool,
}

impl Client {
    /// `http` is used as it is when private targets are allowed; otherwise each attempt
    /// connects only to the addresses it checked.
    pub fn new(http: reqwest::Client, allow_private_targets: bool) -> Self {
        Client { http, allow_private_targets }
    }

    /// One attempt at one message. Never touches the store.
    pub async fn send(&self, message: &Message<'_>) -> Outcome {
        let Target::Webhook { url, secret } = message.target else {
            return Outcome::Failed { why: "not a webhook target".into() };
        };
        let url = match crate::config::notify::http_url(url) {
            Ok(url) => url,
            Err(why) => return Outcome::Failed { why },
        };
        let now = Utc::now();
        let body = match serde_json::to_vec(&payload(message.kind, message.report, now)) {
            Ok(body) => body,
            Err(error) => return Outcome::Failed { why: format!("cannot write the report as JSON: {error}") },
        };
        let id = message.attempt.message_id.as_str();
        let timestamp = now.timestamp().to_string();
        let signature = match (secret, message.secret) {
            (None, _) => None,
            (Some(reference), None) => {
                return Outcome::Failed { why: format!("the signing secret {reference} could not be read") };
            }
            (Some(_), Some(value)) => match crate::auth::standard_webhooks_key(value) {
                Ok(key) => Some(crate::auth::sign_standard_webhooks(&key, id, &timestamp, &body)),
                Err(why) => return Outcome::Failed { why },
            },
        };
        let http = match self.client_for(&url).await {
            Ok(http) => http,
            Err(outcome) => return outcome,
        };
        let mut request = http
            .post(url)
            .timeout(TIMEOUT)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", &timestamp);
        if let Some(signature) = signature {
            request = request.header("webhook-signature", signature);
        }
        match request.body(body).send().await {
            Ok(response) => classify(response.status(), response.headers(), id, now),
            Err(error) => Outcome::Retry { after: None, why: format!("the request failed: {}", plain(&error)) },
        }
    }

    /// The client to send to `url` with: the shared one when private targets are
    /// allowed; else one that connects only to the addresses checked here (so a second
    /// DNS answer cannot swap in a private one) and follows no redirects.
    async fn client_for(&self, url: &reqwest::Url) -> Result<reqwest::Client, Outcome> {
        if self.allow_private_targets {
            return Ok(self.http.clone());
        }
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(error)) => {
                    return Err(Outcome::Retry { after: None, why: format!("cannot resolve {host}: {error}") });
                }
                Err(_) => return Err(Outcome::Retry { after: None, why: format!("resolving {host} timed out") }),
            },
        };
        if addresses.is_empty() {
            return Err(Outcome::Retry { after: None, why: format!("{host} has no address") });
        }
        if let Some(private) = addresses.iter().find(|address| !crate::sandbox::egress::is_public(address.ip())) {
            return Err(Outcome::Failed {
                why: format!(
                    "refused: {host} is at {}, a private, loopback or link-local address (nightshift.yaml: `notify: {{ allow_private_targets: true }}` allows it)",
                    private.ip()
                ),
            });
        }
        reqwest::Client::builder()
            .resolve_to_addrs(&host, &addresses)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .map_err(|error| Outcome::Retry { after: None, why: format!("cannot make an HTTP client: {error}") })
    }
}

/// What an answer means: 2xx sent; 410 stop for good; 429 and 5xx again later (after
/// `Retry-After` when given); any other answer will not change by retrying.
pub fn classify(status: StatusCode, headers: &HeaderMap, id: &str, now: DateTime<Utc>) -> Outcome {
    if status.is_success() {
        return Outcome::Sent(Posted { id: id.to_string(), channel: None, url: None });
    }
    if status == StatusCode::GONE {
        return Outcome::Failed { why: "the receiver answered 410 Gone: stop sending to it".into() };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Outcome::Retry {
            after: headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| retry_after(v, now)),
            why: format!("the receiver answered {status}"),
        };
    }
    Outcome::Failed { why: format!("the receiver answered {status}") }
}

/// A request error without the URL (it may carry credentials in its query).
fn plain(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, retry_after.parse().expect("header"));
        headers
    }

    #[test]
    fn answers_are_classified() {
        let now = Utc::now();
        let none = HeaderMap::new();
        let sent = classify(StatusCode::NO_CONTENT, &none, "m1", now);
        assert_eq!(sent, Outcome::Sent(Posted { id: "m1".into(), channel: None, url: None }));
        assert!(matches!(classify(StatusCode::GONE, &none, "m1", now), Outcome::Failed { why } if why.contains("410")));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, &none, "m1", now), Outcome::Failed { .. }));
        assert!(matches!(classify(StatusCode::FOUND, &none, "m1", now), Outcome::Failed { .. }));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &headers("7"), "m1", now),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                why: "the receiver answered 429 Too Many Requests".into()
            }
        );
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, &none, "m1", now), Outcome::Retry { after: None, .. }));
    }

    #[test]
    fn signing_the_standard_webhooks_example_gives_its_signature() {
        // The published example (shared/vectors/webhook-signatures.json, `standard_webhooks`).
        let key = crate::auth::standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        let signature = crate::auth::sign_standard_webhooks(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
