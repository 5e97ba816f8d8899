//! Webhook authentication: the providers' published examples in
//! `../shared/vectors/webhook-signatures.json` verify exactly, and wrong secrets,
//! rotated secrets, stale and future timestamps and bad credentials are told apart.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use nightshift::auth::{
    AuthError, standard_webhooks_key, verify_basic, verify_bearer, verify_hmac, verify_pagerduty, verify_slack,
    verify_standard_webhooks,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors/webhook-signatures.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn text<'a>(vector: &'a Value, field: &str) -> &'a str {
    vector[field].as_str().unwrap_or_else(|| panic!("vector field {field}"))
}

fn at_unix(seconds: &str, offset: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds.parse::<i64>().unwrap() + offset, 0).unwrap()
}

fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn github_published_example_verifies_and_a_wrong_secret_does_not() {
    let all = vectors();
    let github = &all["github"];
    let (secret, body, expected) = (text(github, "secret"), text(github, "body"), text(github, "expected"));
    let header = "X-Hub-Signature-256";
    assert_eq!(verify_hmac(secret.as_bytes(), header, "sha256=", Some(expected), body.as_bytes()), Ok(()));
    assert_eq!(
        verify_hmac(b"another secret", header, "sha256=", Some(expected), body.as_bytes()),
        Err(AuthError::Mismatch)
    );
    assert_eq!(
        verify_hmac(secret.as_bytes(), header, "sha256=", Some(expected), b"Hello, World?"),
        Err(AuthError::Mismatch)
    );
    assert_eq!(
        verify_hmac(secret.as_bytes(), header, "sha256=", None, body.as_bytes()),
        Err(AuthError::Missing(header.to_string().into()))
    );
    let sha1 = "sha1=0123";
    assert!(matches!(
        verify_hmac(secret.as_bytes(), header, "sha256=", Some(sha1), body.as_bytes()),
        Err(AuthError::Malformed { .. })
    ));
}

#[test]
fn slack_published_example_verifies_inside_five_minutes_only() {
    let all = vectors();
    let slack = &all["slack"];
    let (secret, timestamp, body, expected) =
        (text(slack, "signing_secret"), text(slack, "timestamp"), text(slack, "body"), text(slack, "expected"));
    let verify = |signature: &str, offset: i64| {
        verify_slack(secret.as_bytes(), Some(timestamp), Some(signature), body.as_bytes(), at_unix(timestamp, offset))
    };
    assert_eq!(verify(expected, 0), Ok(()));
    assert_eq!(verify(expected, 299), Ok(()));
    assert_eq!(verify(expected, -299), Ok(()), "a clock slightly behind the sender's");
    assert_eq!(verify(expected, 300), Ok(()), "five minutes exactly is still in time");
    assert_eq!(verify(expected, -300), Ok(()));
    assert_eq!(verify(expected, 301), Err(AuthError::Stale { skew: 301 }), "a replay after five minutes");
    assert_eq!(verify(expected, -301), Err(AuthError::Stale { skew: -301 }), "a timestamp from the future");
    let mut wrong = expected.to_string();
    wrong.replace_range(wrong.len() - 1.., "0");
    assert_eq!(verify(&wrong, 0), Err(AuthError::Mismatch));
    assert_eq!(
        verify_slack(b"rotated-away", Some(timestamp), Some(expected), body.as_bytes(), at_unix(timestamp, 0)),
        Err(AuthError::Mismatch)
    );
}

#[test]
fn standard_webhooks_published_example_verifies_with_rotation_and_skew() {
    let all = vectors();
    let standard = &all["standard_webhooks"];
    let (secret, id, timestamp, body, expected) = (
        text(standard, "secret"),
        text(standard, "id"),
        text(standard, "timestamp"),
        text(standard, "body"),
        text(standard, "expected"),
    );
    let key = standard_webhooks_key(secret).unwrap();
    let verify = |key: &[u8], signatures: &str, offset: i64| {
        verify_standard_webhooks(
            key,
            Some(id),
            Some(timestamp),
            Some(signatures),
            body.as_bytes(),
            at_unix(timestamp, offset),
        )
    };
    assert_eq!(verify(&key, expected, 0), Ok(()));
    // During rotation the sender signs with the old and the new secret.
    assert_eq!(verify(&key, &format!("v1,bm90IHRoaXMgb25l {expected}"), 0), Ok(()));
    assert_eq!(verify(&key, &format!("{expected} v1,bm90IHRoaXMgb25l"), 0), Ok(()));
    assert_eq!(verify(b"another key", expected, 0), Err(AuthError::Mismatch));
    assert_eq!(verify(&key, expected, 300), Ok(()), "five minutes exactly is still in time");
    assert_eq!(verify(&key, expected, -300), Ok(()));
    assert_eq!(verify(&key, expected, 301), Err(AuthError::Stale { skew: 301 }));
    assert_eq!(verify(&key, expected, -301), Err(AuthError::Stale { skew: -301 }));
    assert_eq!(verify(&key, "v2,abc", 0), Err(AuthError::Mismatch), "only v1 signatures count");
    assert!(standard_webhooks_key("whsec_not base64!").is_err());
}

#[test]
fn pagerduty_accepts_any_signature_of_the_configured_secret_during_rotation() {
    // PagerDuty publishes no example: these are computed with known secrets.
    let body = br#"{"event":{"id":"5ac64822-4adc-4fda-ade0-410becf0de4f","event_type":"incident.triggered"}}"#;
    let (current, retiring) = (b"current-secret".as_slice(), b"retiring-secret".as_slice());
    let both = format!("v1={},v1={}", hex_hmac(retiring, body), hex_hmac(current, body));
    assert_eq!(verify_pagerduty(current, Some(&both), body), Ok(()));
    assert_eq!(verify_pagerduty(retiring, Some(&both), body), Ok(()));
    assert_eq!(verify_pagerduty(b"other", Some(&both), body), Err(AuthError::Mismatch));
    assert_eq!(verify_pagerduty(current, Some(&both), b"{}"), Err(AuthError::Mismatch));
    assert_eq!(verify_pagerduty(current, None, body), Err(AuthError::Missing("X-PagerDuty-Signature".into())));
}

#[test]
fn bearer_and_basic_credentials() {
    assert_eq!(verify_bearer("s3cret", Some("Bearer s3cret")), Ok(()));
    assert_eq!(verify_bearer("s3cret", Some("Bearer s3cre")), Err(AuthError::BadCredentials));
    assert!(matches!(verify_bearer("s3cret", Some("s3cret")), Err(AuthError::Malformed { .. })));
    assert_eq!(verify_bearer("s3cret", None), Err(AuthError::Missing("Authorization".into())));
    // "alertmanager:hunter2"
    assert_eq!(verify_basic("alertmanager", "hunter2", Some("Basic YWxlcnRtYW5hZ2VyOmh1bnRlcjI=")), Ok(()));
    assert_eq!(
        verify_basic("alertmanager", "hunter3", Some("Basic YWxlcnRtYW5hZ2VyOmh1bnRlcjI=")),
        Err(AuthError::BadCredentials)
    );
    assert!(matches!(verify_basic("a", "b", Some("Basic %%%")), Err(AuthError::Malformed { .. })));
}

#[test]
fn headers_are_prechecked_before_the_body_arrives() {
    use nightshift::auth::{precheck_hmac, precheck_pagerduty, precheck_slack, precheck_standard_webhooks};
    let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let digest = "ab".repeat(32);
    let good = format!("sha256={digest}");
    assert!(precheck_hmac("x-hub-signature-256", "sha256=", Some(&good)).is_ok());
    assert!(matches!(precheck_hmac("x-hub-signature-256", "sha256=", None), Err(AuthError::Missing(_))));
    assert!(matches!(
        precheck_hmac("x-hub-signature-256", "sha256=", Some("sha1=abcd")),
        Err(AuthError::Malformed { .. })
    ));
    assert!(precheck_pagerduty(Some(&format!("v1=zz, v1={digest}"))).is_ok());
    assert!(matches!(precheck_pagerduty(Some("v2=abcd")), Err(AuthError::Malformed { .. })));
    assert!(matches!(precheck_pagerduty(None), Err(AuthError::Missing(_))));
    let fresh = now.timestamp().to_string();
    let stale = (now.timestamp() - 3600).to_string();
    let slack = format!("v0={digest}");
    assert!(precheck_slack(Some(&fresh), Some(&slack), now).is_ok());
    assert!(matches!(precheck_slack(Some(&stale), Some(&slack), now), Err(AuthError::Stale { .. })));
    assert!(matches!(precheck_slack(Some(&fresh), Some("v0=xyz"), now), Err(AuthError::Malformed { .. })));
    assert!(precheck_standard_webhooks(Some("msg_1"), Some(&fresh), Some("v1,aGVsbG8="), now).is_ok());
    assert!(matches!(
        precheck_standard_webhooks(Some("msg_1"), Some(&fresh), Some("v1a,aGVsbG8="), now),
        Err(AuthError::Malformed { .. })
    ));
    assert!(matches!(
        precheck_standard_webhooks(None, Some(&fresh), Some("v1,aGVsbG8="), now),
        Err(AuthError::Missing(_))
    ));
}
