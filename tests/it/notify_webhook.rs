//! The webhook transport against a loopback receiver: the request's shape and Standard
//! Webhooks signature, how answers are classified, and refused private destinations.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use nightshift::config::SecretRef;
use nightshift::delivery::webhook::Client;
use nightshift::delivery::{Attempt, Kind, Message, Outcome, Report, Target};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver on 127.0.0.1 that records every request and answers with the scripted
/// statuses (and `Retry-After`) in turn, then 204.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A status and its `Retry-After`.
type Answer = (u16, Option<String>);

impl Receiver {
    async fn start(answers: &[(u16, Option<&str>)]) -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers: Arc<Mutex<VecDeque<Answer>>> =
            Arc::new(Mutex::new(answers.iter().map(|(s, r)| (*s, r.map(str::to_string))).collect()));
        let record = Arc::clone(&received);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = Arc::clone(&record);
            let answers = Arc::clone(&answers);
            async move {
                record.lock().unwrap().push(Received { method, path: uri.path().to_string(), headers, body });
                let (status, retry_after) = answers.lock().unwrap().pop_front().unwrap_or((204, None));
                let status = StatusCode::from_u16(status).unwrap();
                match retry_after {
                    Some(wait) => (status, [("retry-after", wait)]).into_response(),
                    None => status.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { port, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn report() -> Report {
    Report {
        run: "42".into(),
        automation: "dispatch".into(),
        state: "succeeded".into(),
        summary: Some("fixed the <!channel> bug".into()),
        reason: None,
        repo: "https://github.com/acme/api.git".into(),
        base: "main".into(),
        branch: "nightshift/dispatch/x".into(),
        pushed: true,
        pull_request: Some("https://github.com/acme/api/pull/7".into()),
        link: None,
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One attempt to `url`, signed with `SECRET` when `signed`.
async fn send(client: &Client, url: &str, kind: Kind, number: u32, signed: bool) -> Outcome {
    let secret = signed.then(|| "env:WEBHOOK_SECRET".parse::<SecretRef>().unwrap());
    let target = Target::Webhook { url: url.to_string(), secret };
    let report = report();
    let attempt = Attempt { message_id: "42-0-end".into(), number, unsure: false };
    let message = Message {
        target: &target,
        kind,
        report: &report,
        earlier: None,
        attempt: &attempt,
        secret: signed.then_some(SECRET),
    };
    client.send(&message).await
}

#[tokio::test]
async fn a_signed_report_arrives_with_standard_webhooks_headers_that_verify() {
    let receiver = Receiver::start(&[]).await;
    let client = Client::new(reqwest::Client::new(), true);
    let url = format!("http://127.0.0.1:{}/hooks/runs?team=a", receiver.port);
    for number in [1, 2] {
        let outcome = send(&client, &url, Kind::End, number, true).await;
        assert!(matches!(&outcome, Outcome::Sent(posted) if posted.id == "42-0-end"), "{outcome:?}");
    }
    let unsigned = send(&client, &url, Kind::Start, 1, false).await;
    assert!(matches!(unsigned, Outcome::Sent(_)), "{unsigned:?}");

    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let key = nightshift::auth::standard_webhooks_key(SECRET).unwrap();
    for request in &received[..2] {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/hooks/runs");
        let header = |name: &str| request.headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        // The same id on every attempt, so the receiver can drop repeats.
        assert_eq!(header("webhook-id").as_deref(), Some("42-0-end"));
        let timestamp = header("webhook-timestamp").expect("timestamp");
        let signed_at = chrono::DateTime::from_timestamp(timestamp.parse().unwrap(), 0).unwrap();
        let verified = nightshift::auth::verify_standard_webhooks(
            &key,
            header("webhook-id").as_deref(),
            Some(&timestamp),
            header("webhook-signature").as_deref(),
            &request.body,
            signed_at,
        );
        assert_eq!(verified, Ok(()));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["type"], "run.ended");
        assert_eq!(body["data"], serde_json::to_value(report()).unwrap());
        let sent_at = chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(sent_at.timestamp(), signed_at.timestamp(), "the body's timestamp is the attempt's");
    }
    let start = &received[2];
    assert!(start.headers.get("webhook-signature").is_none(), "no secret, no signature");
    assert_eq!(start.headers.get("webhook-id").unwrap(), "42-0-end");
    let body: serde_json::Value = serde_json::from_slice(&start.body).unwrap();
    assert_eq!(body["type"], "run.started");
}

#[tokio::test]
async fn answers_are_classified_410_stops_429_waits_5xx_and_network_errors_retry_4xx_fails() {
    let receiver = Receiver::start(&[(410, None), (429, Some("3")), (500, None), (400, None)]).await;
    let client = Client::new(reqwest::Client::new(), true);
    let url = format!("http://127.0.0.1:{}/r", receiver.port);
    let gone = send(&client, &url, Kind::End, 1, false).await;
    assert!(matches!(&gone, Outcome::Failed { why } if why.contains("410")), "{gone:?}");
    let limited = send(&client, &url, Kind::End, 2, false).await;
    assert!(
        matches!(limited, Outcome::Retry { after: Some(wait), .. } if wait == Duration::from_secs(3)),
        "{limited:?}"
    );
    let broken = send(&client, &url, Kind::End, 3, false).await;
    assert!(matches!(&broken, Outcome::Retry { after: None, why } if why.contains("500")), "{broken:?}");
    let refused = send(&client, &url, Kind::End, 4, false).await;
    assert!(matches!(&refused, Outcome::Failed { why } if why.contains("400")), "{refused:?}");
    assert_eq!(receiver.received().len(), 4);

    // Nobody listening: try again later.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = send(&client, &format!("http://127.0.0.1:{port}/r"), Kind::End, 1, false).await;
    assert!(matches!(down, Outcome::Retry { after: None, .. }), "{down:?}");
}

#[tokio::test]
async fn private_and_loopback_destinations_are_refused_unless_allowed() {
    let receiver = Receiver::start(&[]).await;
    let client = Client::new(reqwest::Client::new(), false);
    for host in ["127.0.0.1", "localhost", "[::1]"] {
        let url = format!("http://{host}:{}/r", receiver.port);
        let outcome = send(&client, &url, Kind::Start, 1, true).await;
        assert!(matches!(&outcome, Outcome::Failed { why } if why.starts_with("refused")), "{host}: {outcome:?}");
    }
    let private = send(&client, "http://10.1.2.3:9/r", Kind::Start, 1, false).await;
    assert!(matches!(&private, Outcome::Failed { why } if why.contains("10.1.2.3")), "{private:?}");
    assert!(receiver.received().is_empty(), "no request may arrive");
}
