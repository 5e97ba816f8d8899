//! `POST /hooks/{name}`: checks what the headers settle (hook, credentials, signature
//! header), reads the body within the size limit and its deadline (holding room in the
//! unauthenticated-bytes budget while a signature is still to be checked), hands the
//! delivery to the server, and maps the outcome to a status: 202 with the run ids once
//! the events are durable, 200 for a handshake, 401/404/413/415/400/408 for refused
//! requests (nothing stored), 503 with Retry-After when the store, the budget or the
//! hook's rules are behind. Each answer is counted in `/metrics` by its source and
//! outcome.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;

use super::connections::BodyDeadline;
use super::{error, store_error, unavailable};
use crate::intake::{Delivery, Headers, IntakeError, Precheck};
use crate::metrics::DeliveryOutcome;
use crate::server::{DeliveryAnswer, DeliveryError, Server};

/// Bytes of an unauthenticated body the budget does not count.
pub const SMALL_BODY: usize = 64 << 10;

pub async fn deliver(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = server.current().hooks.get(&name).map(|hook| hook.kind);
    let response = answer(&server, &name, headers, body).await;
    let outcome = match response.status() {
        _ if response.extensions().get::<Duplicate>().is_some() => DeliveryOutcome::Duplicate,
        status if status.is_success() => DeliveryOutcome::Accepted,
        StatusCode::UNAUTHORIZED => DeliveryOutcome::Unauthorized,
        StatusCode::PAYLOAD_TOO_LARGE => DeliveryOutcome::TooLarge,
        _ => DeliveryOutcome::Refused,
    };
    server.metrics().delivery(source, outcome);
    response
}

/// Marks a 202 whose every event was delivered before (nothing new stored).
#[derive(Debug, Clone, Copy)]
struct Duplicate;

async fn answer(server: &Server, name: &str, headers: HeaderMap, body: Body) -> Response {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let headers = lowercase_headers(&headers);
    // What the headers settle is settled before the body is read: an unknown hook, a
    // missing secret, wrong credentials, a missing or malformed signature.
    let precheck = match server.precheck(name, &headers) {
        Ok(precheck) => precheck,
        Err(refused) => return closing(intake_error(&refused)),
    };
    // The one place a hook's body limit is applied.
    let limit = server.body_limit(name);
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {limit} bytes; nothing was stored"));
    // A body a little over the limit is read to its end before the 413, so the sender,
    // still writing, gets the answer rather than a reset connection; one far over it is
    // refused at once.
    let readable = limit.saturating_mul(2);
    if declared.is_some_and(|length| length > readable as u64) {
        return closing(too_large());
    }
    // A body whose signature is still to be checked is held within a budget shared by
    // every request, so unauthenticated senders cannot fill the memory. Its first
    // `SMALL_BODY` bytes are not counted: small deliveries (most webhooks) always get
    // through, and what they hold is bounded by the connection cap.
    let room = declared.map_or(readable, |length| (length as usize).min(readable)).saturating_sub(SMALL_BODY);
    let _held = match precheck {
        Precheck::Authenticated => None,
        Precheck::NeedsBody if room == 0 => None,
        Precheck::NeedsBody => match server.hold_unauthenticated(room) {
            Some(held) => {
                tracing::debug!(hook = %name, bytes = room, "Holding an unauthenticated body");
                Some(held)
            }
            None => {
                let why = "the server holds as many unauthenticated bodies as it may; retry shortly";
                return closing(unavailable(why, 1));
            }
        },
    };
    let expected = declared.map_or(0, |length| length as usize);
    let body = match read_body(body, expected, readable).await {
        Ok(body) if body.len() <= limit => body,
        Ok(_) | Err(BodyFailure::TooLarge) => return too_large(),
        Err(BodyFailure::Late(late)) => {
            return closing(error(StatusCode::REQUEST_TIMEOUT, format!("{late}; nothing was stored")));
        }
        Err(BodyFailure::Unreadable(why)) => {
            return closing(error(
                StatusCode::BAD_REQUEST,
                format!("the body cannot be read: {why}; nothing was stored"),
            ));
        }
    };
    let delivery = Delivery { headers: &headers, body: &body };
    match server.deliver(name, delivery).await {
        Ok(DeliveryAnswer::Reply(reply)) => (StatusCode::OK, axum::Json(reply)).into_response(),
        Ok(DeliveryAnswer::Stored { run_ids, events, cancelled_by_resolution }) => {
            let body = Stored { run_ids: &run_ids, events: &events, cancelled: &cancelled_by_resolution };
            let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            if !events.is_empty() && events.iter().all(|event| event.outcome.duplicate_delivery) {
                response.extensions_mut().insert(Duplicate);
            }
            response
        }
        Err(DeliveryError::Intake(refused)) => intake_error(&refused),
        Err(DeliveryError::Busy) => unavailable(DeliveryError::Busy.to_string(), 1),
        Err(DeliveryError::HookBusy(busy)) => unavailable(busy.to_string(), 1),
        Err(DeliveryError::Store(failed)) => store_error(&failed),
    }
}

/// Why a body was not read whole.
enum BodyFailure {
    TooLarge,
    /// Its deadline passed first.
    Late(BodyDeadline),
    /// The connection broke, or the framing is malformed (bad chunked encoding).
    Unreadable(String),
}

/// Reads a body of at most `limit` bytes, room for `expected` (its declared length, at
/// most `limit`) made at once so a large body is not copied as it grows.
async fn read_body(mut body: Body, expected: usize, limit: usize) -> Result<Bytes, BodyFailure> {
    let mut bytes = BytesMut::with_capacity(expected.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|failed| {
            let failed = failed.into_inner();
            match failed.downcast::<BodyDeadline>() {
                Ok(late) => BodyFailure::Late(*late),
                Err(other) => BodyFailure::Unreadable(other.to_string()),
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(BodyFailure::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// `response` with `Connection: close`: the body was not read (or not whole), so the
/// connection cannot carry another request.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The 202 body.
#[derive(serde::Serialize)]
struct Stored<'a> {
    run_ids: &'a [crate::runs::RunId],
    events: &'a [crate::pipeline::IngestReport],
    /// Runs an Alertmanager resolution cancelled.
    cancelled: &'a [crate::runs::RunId],
}

fn intake_error(refused: &IntakeError) -> Response {
    let status = match refused {
        IntakeError::UnknownHook(_) => StatusCode::NOT_FOUND,
        IntakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        IntakeError::NotConfigured { .. } => {
            tracing::error!(error = %refused, "a hook was called whose secret is not set");
            return unavailable(refused.to_string(), 60);
        }
        IntakeError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IntakeError::MalformedJson(_) => StatusCode::BAD_REQUEST,
    };
    error(status, format!("{refused}; nothing was stored"))
}

/// The headers by name (the `http` crate keeps names lowercase), values that are not
/// text left out.
fn lowercase_headers(headers: &HeaderMap) -> Headers {
    headers.iter().filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string()))).collect()
}
