//! The HTTP surface of `serve` (axum; the only module that imports it): `/hooks/{name}`
//! for trigger sources (`hooks.rs`), `/api` for the command line and tools (`api.rs`),
//! `/api/worker` for remote workers (`worker.rs`), `/metrics` for Prometheus
//! (`metrics.rs`), the web board (`board.rs`: `/`, `/login`, the live feed, and who may
//! use `/api`), and `/healthz`. Every error is JSON, `{"error": ...}`, with a status that tells the
//! caller what to do: 401 only when authentication failed, 413 for an oversize body,
//! 408 for a body that did not arrive in time, 503 with Retry-After when the store or a
//! hook's rules cannot keep up. `connections.rs` is the serve loop: the connection cap
//! and the header and body deadlines.

mod api;
mod board;
mod connections;
mod hooks;
mod metrics;
mod status;
mod worker;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::server::Server;

pub use api::MANUAL_HEADER_PREFIX;

/// Serves on `listener`, at most `max_connections` at once, until `shutdown` resolves,
/// then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = &server.options().limits;
    let limits = connections::ConnectionLimits {
        max_connections,
        header_timeout: limits.header_timeout,
        body_timeout: limits.body_timeout,
    };
    connections::serve(listener, router(server), limits, shutdown).await
}

/// Every route.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/hooks/{name}", post(hooks::deliver))
        .route("/healthz", get(health))
        .merge(api::routes(Arc::clone(&server)))
        .merge(board::routes())
        .merge(worker::routes(Arc::clone(&server)))
        .merge(metrics::routes())
        .merge(status::routes(Arc::clone(&server)))
        .fallback(not_found)
        .with_state(server)
}

/// 200 with `ok: true`, or 503 with `ok: false` and the `problem` (the store cannot
/// write, say) while the server cannot take deliveries.
async fn health(axum::extract::State(server): axum::extract::State<Arc<Server>>) -> Response {
    let generation = server.current();
    let problem = server.store().trouble();
    let status = if problem.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({
        "ok": problem.is_none(),
        "problem": problem,
        "automations": generation.pipeline.catalog().automations.len(),
        "hooks": generation.hooks.len(),
        // Whether this server's own workers confine their phases (remote workers say so
        // on each run they run).
        "sandbox": match (server.options().workers, server.options().worker.sandbox.is_some()) {
            (0, _) => "no local workers",
            (_, true) => "on",
            (_, false) => "off",
        },
    });
    (status, axum::Json(body)).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("nothing is served at {}: try POST /hooks/{{name}} or /api", uri.path()))
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// 400 for a path's run id that is not one.
fn not_a_run_id(text: &str) -> Response {
    error(StatusCode::BAD_REQUEST, format!("`{text}` is not a run id (they look like r12)"))
}

/// 503 with a Retry-After in seconds.
fn unavailable(message: impl Into<String>, retry_after_seconds: u32) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    response
}

/// A store failure as an answer: I/O trouble is worth retrying, the rest is not.
fn store_error(error: &crate::store::StoreError) -> Response {
    use crate::store::StoreError;
    match error {
        StoreError::Io(_) | StoreError::Unavailable(_) | StoreError::Locked { .. } => unavailable(error.to_string(), 5),
        StoreError::NoSuchRun(_) => self::error(StatusCode::NOT_FOUND, error.to_string()),
        StoreError::StaleLease { .. } | StoreError::WrongState { .. } => {
            self::error(StatusCode::CONFLICT, error.to_string())
        }
        StoreError::Open { .. } | StoreError::Corrupt { .. } => {
            tracing::error!(%error, "store failure while answering a request");
            self::error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
    }
}
