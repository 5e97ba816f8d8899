//! `GET /metrics`: every series of `metrics::Metrics` in the Prometheus text format. With
//! `serve --metrics-token` (or NIGHTSHIFT_METRICS_TOKEN) it asks for that bearer token;
//! without one it is open (it serves counts, never payloads or secrets: docs/metrics.md).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error;
use crate::server::Server;

pub fn routes() -> Router<Arc<Server>> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Some(token) = &server.options().metrics_token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(why) = crate::auth::verify_bearer(token, given) {
            return error(
                StatusCode::UNAUTHORIZED,
                format!("{why}: /metrics needs `Authorization: Bearer <token>`, the server's --metrics-token"),
            );
        }
    }
    // The store's counts are read under its lock: off the request threads.
    let metrics = Arc::clone(server.metrics());
    let Ok(text) = tokio::task::spawn_blocking(move || metrics.render()).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be written");
    };
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    response
}
