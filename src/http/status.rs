//! `GET /api/status[?now=TIME][&waiting=N]`: the status picture (`server::status`), behind the API
//! token like the rest of `/api`. docs/serving.md ("Status") documents the JSON.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{error, store_error};
use crate::server::Server;

pub fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    Router::new()
        .route("/api/status", get(status))
        .route_layer(middleware::from_fn_with_state(server, super::board::access))
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    /// The moment to judge backoffs and cron fires at (default: now).
    now: Option<DateTime<Utc>>,
    /// How many waiting runs to list (default `WAITING_SHOWN`); all are counted.
    waiting: Option<usize>,
}

async fn status(State(server): State<Arc<Server>>, Query(query): Query<StatusQuery>) -> Response {
    let now = query.now.unwrap_or_else(Utc::now);
    let shown = query.waiting.unwrap_or(crate::server::status::WAITING_SHOWN);
    match tokio::task::spawn_blocking(move || server.status(now, shown)).await {
        Ok(Ok(status)) => axum::Json(status).into_response(),
        Ok(Err(failed)) => store_error(&failed),
        Err(panicked) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {panicked}")),
    }
}
