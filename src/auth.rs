//! Webhook authentication: checks that a request's signature or credentials match the
//! trigger's secret. Pure functions over header values, the raw body and the time; every
//! comparison of secret material is constant-time. The HTTP layer answers 401 with the
//! error's text.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a signed timestamp may be from now, either way (Slack and Standard Webhooks).
pub const MAX_SKEW_SECONDS: i64 = 300;

/// Why a request was not accepted as authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing header `{0}`")]
    Missing(Cow<'static, str>),
    #[error("header `{header}` is malformed: {why}")]
    Malformed { header: Cow<'static, str>, why: String },
    #[error("the signed timestamp is {skew} s away from now; at most {MAX_SKEW_SECONDS} s is accepted")]
    Stale { skew: i64 },
    #[error("the signature does not match the configured secret")]
    Mismatch,
    #[error("the credentials do not match")]
    BadCredentials,
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

/// The digest in a signature header written `{prefix}{hex}`.
fn hex_after(prefix: &str, header: &str, signature: &str) -> Result<Vec<u8>, AuthError> {
    let hex = signature.strip_prefix(prefix).ok_or_else(|| AuthError::Malformed {
        header: header.to_string().into(),
        why: format!("it does not start with `{prefix}`"),
    })?;
    decode_hex(hex)
        .ok_or_else(|| AuthError::Malformed { header: header.to_string().into(), why: "not a hex digest".into() })
}

// The `precheck_*` functions check what a signed request's headers show before its body
// arrives: the signature header is there and well-formed, a signed timestamp is fresh.
// A request that fails one is refused without reading its body; `verify_*` make the
// same checks again, with the body.

/// The digest of a GitHub-style signature header, `{prefix}{hex}`.
pub fn precheck_hmac(header: &str, prefix: &str, signature: Option<&str>) -> Result<Vec<u8>, AuthError> {
    hex_after(prefix, header, signature.ok_or_else(|| AuthError::Missing(header.to_string().into()))?)
}

/// A GitHub-style signature: `{prefix}{hex HMAC-SHA256(secret, body)}` in `header`.
pub fn verify_hmac(
    secret: &[u8],
    header: &str,
    prefix: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), AuthError> {
    let given = precheck_hmac(header, prefix, signature)?;
    if equal(&given, &hmac_sha256(secret, &[body])) { Ok(()) } else { Err(AuthError::Mismatch) }
}

/// `X-PagerDuty-Signature` is there and lists at least one `v1=<hex>` signature.
pub fn precheck_pagerduty(signatures: Option<&str>) -> Result<(), AuthError> {
    const HEADER: &str = "X-PagerDuty-Signature";
    let signatures = signatures.ok_or(AuthError::Missing(HEADER.into()))?;
    let well_formed = signatures
        .split(',')
        .filter_map(|signature| signature.trim().strip_prefix("v1="))
        .any(|hex| decode_hex(hex).is_some());
    if well_formed {
        Ok(())
    } else {
        Err(AuthError::Malformed { header: HEADER.into(), why: "no `v1=<hex>` signature".into() })
    }
}

/// Slack's timestamp is there and fresh, its signature there and `v0=<hex>`.
pub fn precheck_slack(timestamp: Option<&str>, signature: Option<&str>, now: DateTime<Utc>) -> Result<(), AuthError> {
    let timestamp = timestamp.ok_or(AuthError::Missing(SLACK_TIMESTAMP.into()))?;
    let signature = signature.ok_or(AuthError::Missing(SLACK_SIGNATURE.into()))?;
    check_skew(timestamp, SLACK_TIMESTAMP, now)?;
    hex_after("v0=", SLACK_SIGNATURE, signature).map(drop)
}

/// Standard Webhooks' id, timestamp (fresh) and signature headers are there, with at
/// least one `v1,<base64>` signature.
pub fn precheck_standard_webhooks(
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    id.ok_or(AuthError::Missing("webhook-id".into()))?;
    let timestamp = timestamp.ok_or(AuthError::Missing("webhook-timestamp".into()))?;
    let signatures = signatures.ok_or(AuthError::Missing("webhook-signature".into()))?;
    check_skew(timestamp, "webhook-timestamp", now)?;
    let well_formed = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .any(|encoded| BASE64.decode(encoded).is_ok());
    if well_formed {
        Ok(())
    } else {
        Err(AuthError::Malformed { header: "webhook-signature".into(), why: "no `v1,<base64>` signature".into() })
    }
}

/// PagerDuty v3: `X-PagerDuty-Signature` lists `v1=<hex>` signatures, one per active
/// secret while secrets rotate; any one made with `secret` is enough.
pub fn verify_pagerduty(secret: &[u8], signatures: Option<&str>, body: &[u8]) -> Result<(), AuthError> {
    const HEADER: &str = "X-PagerDuty-Signature";
    let signatures = signatures.ok_or(AuthError::Missing(HEADER.into()))?;
    let expected = hmac_sha256(secret, &[body]);
    let mut matched = false;
    for signature in signatures.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(hex) = signature.strip_prefix("v1=") else { continue };
        if let Some(given) = decode_hex(hex) {
            matched |= equal(&given, &expected);
        }
    }
    if matched { Ok(()) } else { Err(AuthError::Mismatch) }
}

fn check_skew(timestamp: &str, header: &'static str, now: DateTime<Utc>) -> Result<(), AuthError> {
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| AuthError::Malformed { header: header.into(), why: "not a Unix time in seconds".into() })?;
    let skew = now.timestamp().saturating_sub(seconds);
    if skew.abs() > MAX_SKEW_SECONDS { Err(AuthError::Stale { skew }) } else { Ok(()) }
}

const SLACK_TIMESTAMP: &str = "X-Slack-Request-Timestamp";
const SLACK_SIGNATURE: &str = "X-Slack-Signature";

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{timestamp}:{body}")>`,
/// with `X-Slack-Request-Timestamp` within five minutes of now.
pub fn verify_slack(
    signing_secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let timestamp = timestamp.ok_or(AuthError::Missing(SLACK_TIMESTAMP.into()))?;
    let signature = signature.ok_or(AuthError::Missing(SLACK_SIGNATURE.into()))?;
    check_skew(timestamp, SLACK_TIMESTAMP, now)?;
    let given = hex_after("v0=", SLACK_SIGNATURE, signature)?;
    let expected = hmac_sha256(signing_secret, &[b"v0:", timestamp.as_bytes(), b":", body]);
    if equal(&given, &expected) { Ok(()) } else { Err(AuthError::Mismatch) }
}

/// The key of a Standard Webhooks secret: base64 after `whsec_`.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    BASE64.decode(encoded).map_err(|e| format!("a Standard Webhooks secret is `whsec_` and base64: {e}"))
}

/// HMAC-SHA256(key, "{id}.{timestamp}.{body}"): what Standard Webhooks signs, both
/// when nightshift checks a delivery and when it sends one.
fn standard_webhooks_mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body])
}

/// The `webhook-signature` header of a Standard Webhooks delivery: `v1,<base64 MAC>`.
pub fn sign_standard_webhooks(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("v1,{}", BASE64.encode(standard_webhooks_mac(key, id, timestamp, body)))
}

/// Standard Webhooks: `webhook-signature` lists `v1,<base64 HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")>` entries separated by spaces (several during rotation),
/// with `webhook-timestamp` within five minutes of now.
pub fn verify_standard_webhooks(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let id = id.ok_or(AuthError::Missing("webhook-id".into()))?;
    let timestamp = timestamp.ok_or(AuthError::Missing("webhook-timestamp".into()))?;
    let signatures = signatures.ok_or(AuthError::Missing("webhook-signature".into()))?;
    check_skew(timestamp, "webhook-timestamp", now)?;
    let expected = standard_webhooks_mac(key, id, timestamp, body);
    let mut matched = false;
    for entry in signatures.split(' ').filter(|entry| !entry.is_empty()) {
        let Some(encoded) = entry.strip_prefix("v1,") else { continue };
        if let Ok(given) = BASE64.decode(encoded) {
            matched |= equal(&given, &expected);
        }
    }
    if matched { Ok(()) } else { Err(AuthError::Mismatch) }
}

/// The credentials after `scheme ` in an Authorization header, the scheme in any case.
fn scheme_value<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, value) = authorization.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(value)
}

/// Whether `given` is `secret`, in time that does not depend on where they differ.
pub fn same_secret(given: &str, secret: &str) -> bool {
    equal(given.as_bytes(), secret.as_bytes())
}

/// `Authorization: Bearer <token>`.
pub fn verify_bearer(token: &str, authorization: Option<&str>) -> Result<(), AuthError> {
    let authorization = authorization.ok_or(AuthError::Missing("Authorization".into()))?;
    // The scheme is case-insensitive (RFC 9110); Alertmanager sends `type:` as written.
    let given = scheme_value(authorization, "Bearer").ok_or_else(|| AuthError::Malformed {
        header: "Authorization".into(),
        why: "expected `Bearer <token>`".into(),
    })?;
    if equal(given.trim().as_bytes(), token.as_bytes()) { Ok(()) } else { Err(AuthError::BadCredentials) }
}

/// `Authorization: Basic base64(username:password)`.
pub fn verify_basic(username: &str, password: &str, authorization: Option<&str>) -> Result<(), AuthError> {
    let authorization = authorization.ok_or(AuthError::Missing("Authorization".into()))?;
    let malformed = |why: &str| AuthError::Malformed { header: "Authorization".into(), why: why.into() };
    let encoded = scheme_value(authorization, "Basic").ok_or_else(|| malformed("expected `Basic <base64>`"))?;
    let decoded = BASE64.decode(encoded.trim()).map_err(|_| malformed("the credentials are not base64"))?;
    let expected = [username.as_bytes(), b":", password.as_bytes()].concat();
    if equal(&decoded, &expected) { Ok(()) } else { Err(AuthError::BadCredentials) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_timestamp_may_be_five_minutes_away_either_way_and_no_more() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let check = |offset: i64| check_skew(&(1_700_000_000 - offset).to_string(), "X-Time", now);
        for offset in [0, 299, 300, -299, -300] {
            assert_eq!(check(offset), Ok(()), "{offset}");
        }
        for offset in [301, -301, 100_000] {
            assert_eq!(check(offset), Err(AuthError::Stale { skew: offset }), "{offset}");
        }
        assert!(matches!(check_skew("soon", "X-Time", now), Err(AuthError::Malformed { .. })));
    }
}
