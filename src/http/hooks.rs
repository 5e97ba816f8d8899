//! `POST /hooks/{name}`: reads the body within the size limit, hands the delivery to the
//! server, and maps the outcome to a status: 202 with the run ids once the events are
//! durable, 200 for a handshake, 401/404/413/415/400 for refused requests (nothing
//! stored), 503 with Retry-After when the store is behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{error, store_error, unavailable};
use crate::intake::{Delivery, IntakeError};
use crate::server::{DeliveryAnswer, DeliveryError, Server};

pub async fn deliver(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = server.body_limit(&name);
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {limit} bytes; nothing was stored"));
    // A body a little over the limit is read to its end before the 413, so the sender,
    // still writing, gets the answer rather than a reset connection; one far over it is
    // refused at once.
    let readable = limit.saturating_mul(2);
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > readable as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(body, readable).await {
        Ok(body) if body.len() <= limit => body,
        _ => return too_large(),
    };
    let headers = lowercase_headers(&headers);
    let delivery = Delivery { headers: &headers, body: &body };
    match server.deliver(&name, delivery).await {
        Ok(DeliveryAnswer::Reply(reply)) => (StatusCode::OK, axum::Json(reply)).into_response(),
        Ok(DeliveryAnswer::Stored { run_ids, events, cancelled_by_resolution }) => {
            let body = Stored { run_ids: &run_ids, events: &events, cancelled: &cancelled_by_resolution };
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(DeliveryError::Intake(refused)) => intake_error(&refused),
        Err(DeliveryError::Busy) => unavailable(DeliveryError::Busy.to_string(), 1),
        Err(DeliveryError::Store(failed)) => store_error(&failed),
    }
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
fn lowercase_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers.iter().filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string()))).collect()
}
