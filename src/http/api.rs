//! `/api`: what `nightshift trigger`, `runs`, `show`, `memory` and `prune` ask of a
//! running server, behind a bearer token (`serve.json` in the data directory holds it).
//!
//! - `POST /api/automations/{name}/run?source=KIND&now=TIME` with the payload as the
//!   body and `X-Nightshift-Header-{Name}` for delivery headers: a manual run, 202.
//! - `GET /api/runs?automation=&state=&limit=&before=&view=`, newest first: a full page
//!   says the next one's cursor in `X-Nightshift-Next` (pass it as `before=`);
//!   `view=summary` gives each run as a list shows it;
//!   `GET /api/runs/{id}`: the run, its timeline, its events and, for a parent, its
//!   `children` (id, role, index, state).
//! - `GET /api/runs/{id}/log?from=N`: the log pieces numbered N and on.
//! - `POST /api/runs/{id}/approve`; `POST /api/runs/{id}/cancel` with `{"reason": ...}`.
//! - `GET /api/automations/{name}/memory`, `PUT` / `DELETE .../memory/{key}`.
//! - `POST /api/runs/{id}/rerun`: the same automation and event again, 202.
//! - `GET /api/runs/stream`: run changes as server-sent events (`board.rs`).
//! - `POST /api/prune`.
//!
//! `board::access` checks every request: the API token may do anything, the read-only
//! token and read-only board sessions only GET.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{error, not_a_run_id, store_error};
use crate::runs::{MemoryChange, MemoryWrite, RunId, RunState};
use crate::server::{ApiError, ManualRun, Server};
use crate::store::RunFilter;
use crate::triggers::TriggerKind;

/// Request headers that carry a manual run's delivery headers.
pub const MANUAL_HEADER_PREFIX: &str = "x-nightshift-header-";

pub fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    Router::new()
        .route("/api/automations/{name}/run", post(run_manually))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/log", get(run_log))
        .route("/api/runs/{id}/approve", post(approve_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/follow-up", post(follow_up_run))
        .route("/api/runs/{id}/rerun", post(rerun))
        .route("/api/runs/stream", get(super::board::stream))
        .route("/api/automations/{name}/memory", get(read_memory))
        .route("/api/automations/{name}/memory/{key}", put(set_memory).delete(remove_memory))
        .route("/api/prune", post(prune))
        .route_layer(middleware::from_fn_with_state(server, super::board::access))
}

fn api_error(failed: ApiError) -> Response {
    match &failed {
        ApiError::NoSuchAutomation(_) => error(StatusCode::NOT_FOUND, failed.to_string()),
        ApiError::BadRequest(_) => error(StatusCode::BAD_REQUEST, failed.to_string()),
        ApiError::Conflict(_) => error(StatusCode::CONFLICT, failed.to_string()),
        ApiError::Store(store) => store_error(store),
    }
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    source: Option<String>,
    now: Option<DateTime<Utc>>,
}

async fn run_manually(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(query): Query<RunQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let payload: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(payload) => payload,
            Err(why) => return error(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {why}")),
        }
    };
    let source = match query.source.as_deref().map(|s| TriggerKind::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(kind)) => Some(kind),
        Some(Err(unknown)) => {
            let known = TriggerKind::ALL.map(TriggerKind::as_str).join(", ");
            return error(StatusCode::BAD_REQUEST, format!("unknown source `{unknown}`; one of {known}"));
        }
    };
    let delivery_headers: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix(MANUAL_HEADER_PREFIX)?;
            Some((name.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    let request = ManualRun { source, headers: delivery_headers, now: query.now };
    match server.run_manually(&name, payload, request).await {
        Ok(report) => (StatusCode::ACCEPTED, axum::Json(report)).into_response(),
        Err(failed) => api_error(failed),
    }
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    automation: Option<String>,
    state: Option<String>,
    #[serde(default)]
    limit: usize,
    before: Option<String>,
    /// `summary`: each run as the board's list shows it (`RunSummary`), not whole.
    view: Option<String>,
}

/// A run as a list of runs shows it: the fields of `Run` it needs, in the same places,
/// so one reader handles both (a page of 50 is about an eighth of the whole runs).
#[derive(Serialize)]
struct RunSummary<'a> {
    id: RunId,
    automation: &'a str,
    state: RunState,
    /// The first event only: it names the source.
    event_ids: &'a [String],
    created_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<crate::parallel::ParentLink>,
}

impl<'a> RunSummary<'a> {
    fn of(run: &'a crate::runs::Run) -> RunSummary<'a> {
        let pull_request = run.result.as_ref().and_then(|result| result.details.get("pull_request"));
        RunSummary {
            id: run.id,
            automation: &run.automation,
            state: run.state,
            event_ids: &run.event_ids[..run.event_ids.len().min(1)],
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            task: run.task.as_ref().map(|task| serde_json::json!({ "branch": task.branch, "repo": task.repo })),
            result: pull_request.map(|link| serde_json::json!({ "details": { "pull_request": link } })),
            parent: run.parent,
        }
    }
}

/// The header of a full page of runs that names the next page's `before=`.
pub const NEXT_PAGE_HEADER: &str = "x-nightshift-next";

async fn list_runs(State(server): State<Arc<Server>>, Query(query): Query<RunsQuery>) -> Response {
    let state = match query.state.as_deref().map(|s| s.parse::<RunState>()) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(why)) => return error(StatusCode::BAD_REQUEST, why.to_string()),
    };
    let before = match query.before.as_deref().filter(|text| !text.is_empty()).map(|text| (text, text.parse::<RunId>()))
    {
        None => None,
        Some((_, Ok(id))) => Some(id),
        Some((text, Err(_))) => return not_a_run_id(text),
    };
    let summary = match query.view.as_deref() {
        None | Some("full") => false,
        Some("summary") => true,
        Some(other) => return error(StatusCode::BAD_REQUEST, format!("unknown view `{other}`; `full` or `summary`")),
    };
    let filter = RunFilter { automation: query.automation, state, limit: query.limit, before };
    let server = Arc::clone(&server);
    blocking(move || {
        let runs = server.runs(&filter)?;
        let next = runs.last().filter(|_| filter.limit > 0 && runs.len() == filter.limit).map(|run| run.id);
        let mut response = if summary {
            axum::Json(runs.iter().map(RunSummary::of).collect::<Vec<_>>()).into_response()
        } else {
            axum::Json(runs).into_response()
        };
        if let Some(next) = next
            && let Ok(value) = axum::http::HeaderValue::from_str(&next.to_string())
        {
            response.headers_mut().insert(NEXT_PAGE_HEADER, value);
        }
        Ok(response)
    })
    .await
}

async fn show_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    blocking(move || match server.record(id)? {
        Some(record) => Ok(axum::Json(record).into_response()),
        None => Ok(error(StatusCode::NOT_FOUND, format!("no run {id}"))),
    })
    .await
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    from: u64,
}

async fn run_log(State(server): State<Arc<Server>>, Path(id): Path<String>, Query(query): Query<LogQuery>) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    blocking(move || server.log(id, query.from).map(|chunks| axum::Json(chunks).into_response())).await
}

async fn approve_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    blocking(move || server.approve(id).map(|run| axum::Json(run).into_response())).await
}

#[derive(Debug, Default, Deserialize)]
struct CancelRequest {
    reason: Option<String>,
}

async fn cancel_run(State(server): State<Arc<Server>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    let request: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(why) => return error(StatusCode::BAD_REQUEST, format!("the body is not a cancel request: {why}")),
        }
    };
    let reason = request.reason.unwrap_or_else(|| "cancelled through the API".to_string());
    blocking(move || server.cancel(id, &reason).map(|run| axum::Json(run).into_response())).await
}

/// `POST /api/runs/{id}/follow-up` with `{"text": "..."}`.
#[derive(Debug, Deserialize)]
struct FollowUpRequest {
    text: String,
    now: Option<DateTime<Utc>>,
}

async fn follow_up_run(State(server): State<Arc<Server>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    let request: FollowUpRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, format!("the body is not a follow-up request: {why}")),
    };
    if request.text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "`text` is empty: say what the follow-up should do".to_string());
    }
    match server.follow_up(id, request.text, request.now.unwrap_or_else(Utc::now)).await {
        Ok(report) => (StatusCode::ACCEPTED, axum::Json(report)).into_response(),
        Err(failed) => api_error(failed),
    }
}

/// `POST /api/runs/{id}/rerun`: a new run of the same automation for the same event.
async fn rerun(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    match server.rerun(id).await {
        Ok(report) => (StatusCode::ACCEPTED, axum::Json(report)).into_response(),
        Err(failed) => api_error(failed),
    }
}

async fn read_memory(State(server): State<Arc<Server>>, Path(name): Path<String>) -> Response {
    blocking(move || server.memory(&name).map(|entries| axum::Json(entries).into_response())).await
}

async fn set_memory(
    State(server): State<Arc<Server>>,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(why) => return error(StatusCode::BAD_REQUEST, format!("the value is not valid JSON: {why}")),
    };
    let write = MemoryWrite { key, change: MemoryChange::Set { value, expires_at: None }, untrusted: false };
    blocking(move || server.write_memory(&name, write).map(|()| StatusCode::NO_CONTENT.into_response())).await
}

async fn remove_memory(State(server): State<Arc<Server>>, Path((name, key)): Path<(String, String)>) -> Response {
    let write = MemoryWrite { key, change: MemoryChange::Remove, untrusted: false };
    blocking(move || server.write_memory(&name, write).map(|()| StatusCode::NO_CONTENT.into_response())).await
}

async fn prune(State(server): State<Arc<Server>>) -> Response {
    blocking(move || server.prune().map(|report| axum::Json(report).into_response())).await
}

/// Store reads scan and wait: off the async threads.
async fn blocking(work: impl FnOnce() -> Result<Response, ApiError> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(response)) => response,
        Ok(Err(failed)) => api_error(failed),
        Err(panicked) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {panicked}")),
    }
}
