//! `/api/worker`: the worker API that `nightshift worker` calls, behind a worker token
//! (not the API token). Every call but the claim names a run and carries its lease
//! epoch; a run whose lease another token holds answers 404, as if it did not exist.
//!
//! - `POST /api/worker/claim` `{worker, lease_seconds, wait_seconds}`: 200 with the
//!   claim (run, task and lease), or 204 when no run was queued within `wait_seconds`
//!   (at most 30).
//! - `POST /api/worker/runs/{id}/started|heartbeat|activities|log|release|complete`: 204; 409
//!   when the epoch is stale or the run was cancelled, so the worker stops it.
//! - `GET /api/worker/secrets`: where every automation's task secrets live (`env:NAME`,
//!   `file:PATH`; never a value), so a worker masks those it can read in every run.
//!
//! A remote worker cannot mask what it does not know (hooks' credentials, secrets only
//! the server can read), so everything it reports (log, activities, release reason,
//! result, memory) is masked here too, for every secret the engine knows, before it is
//! stored.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{error, not_a_run_id, store_error};
use crate::runs::{Completion, RunId, RunResult};
use crate::server::Server;
use crate::server::workers::WorkerId;
use crate::store::StoreError;
use crate::worker::mask::Masker;
use crate::worker::remote::wire;

/// The largest request a worker may send.
const WORKER_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What a worker may do to a run it holds.
const ACTIONS: [&str; 6] = ["started", "heartbeat", "activities", "log", "release", "complete"];

/// The longest a claim waits for a run.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);

/// The token that authenticated the request, for `WorkerId`.
#[derive(Clone)]
struct WorkerToken(String);

pub fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    Router::new()
        .route("/api/worker/claim", post(claim))
        .route("/api/worker/runs/{id}/{action}", post(run_action))
        .route("/api/worker/secrets", get(secret_refs))
        .route_layer(middleware::from_fn_with_state(server, require_worker_token))
        // A completion carries the result (lists bounded by `MAX_LISTED`) and up to
        // 256 KiB of memory; a log piece is at most about 64 KiB.
        .layer(axum::extract::DefaultBodyLimit::max(WORKER_BODY_LIMIT))
}

/// Checks the bearer token against the server's worker tokens, in constant time each.
async fn require_worker_token(State(server): State<Arc<Server>>, mut request: Request, next: Next) -> Response {
    let tokens = &server.options().worker_tokens;
    if tokens.is_empty() {
        return error(
            StatusCode::FORBIDDEN,
            "this server takes no remote workers: start `nightshift serve` with --worker-token TOKEN",
        );
    }
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = tokens.iter().find(|token| crate::auth::verify_bearer(token, given).is_ok()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "/api/worker needs `Authorization: Bearer <worker token>`, one given to serve with --worker-token",
        );
    };
    let token = WorkerToken(token.clone());
    request.extensions_mut().insert(token);
    next.run(request).await
}

async fn claim(
    State(server): State<Arc<Server>>,
    axum::Extension(WorkerToken(token)): axum::Extension<WorkerToken>,
    body: axum::body::Bytes,
) -> Response {
    let request: wire::ClaimRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, format!("not a claim request: {why}")),
    };
    if request.worker.is_empty() || request.worker.contains('@') {
        return error(StatusCode::BAD_REQUEST, "`worker` must be a non-empty name without `@`");
    }
    let worker = WorkerId::remote(&request.worker, &token);
    let lease_for = Duration::from_secs(request.lease_seconds);
    let until = tokio::time::Instant::now() + Duration::from_secs(request.wait_seconds).min(MAX_CLAIM_WAIT);
    // The wait is async: a worker that hangs up ends it, and so does the server's shutdown.
    let mut notified = server.wakeup().subscribe();
    let answer = loop {
        notified.mark_unchanged();
        let (claimer, worker) = (Arc::clone(&server), worker.clone());
        match tokio::task::spawn_blocking(move || claimer.claim_run(&worker.holder, lease_for)).await {
            Ok(Ok(None)) if tokio::time::Instant::now() < until && !server.wakeup().is_closed() => {
                let _ = tokio::time::timeout_at(until, notified.changed()).await;
            }
            other => break other,
        }
    };
    match answer {
        Ok(Ok(Some(claim))) => (StatusCode::OK, Json(claim)).into_response(),
        Ok(Ok(None)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(failed)) => store_error(&failed),
        Err(panicked) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the claim failed: {panicked}")),
    }
}

/// The secret references of the automations loaded now.
async fn secret_refs(State(server): State<Arc<Server>>) -> Response {
    Json(server.current().secret_refs.as_ref().clone()).into_response()
}

async fn run_action(
    State(server): State<Arc<Server>>,
    axum::Extension(WorkerToken(token)): axum::Extension<WorkerToken>,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(id) = id.parse::<RunId>() else { return not_a_run_id(&id) };
    // The name part does not matter here: a lease is checked by its token id.
    let worker = WorkerId::remote("_", &token);
    let done = tokio::task::spawn_blocking(move || act(&server, &worker, id, &action, &body)).await;
    match done {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(Refusal::Store(failed))) => store_error(&failed),
        Ok(Err(Refusal::BadRequest(why))) => error(StatusCode::BAD_REQUEST, why),
        Ok(Err(Refusal::NoSuchAction(action))) => {
            error(StatusCode::NOT_FOUND, format!("no worker action `{action}`; one of {}", ACTIONS.join(", ")))
        }
        Err(panicked) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {panicked}")),
    }
}

enum Refusal {
    Store(StoreError),
    BadRequest(String),
    NoSuchAction(String),
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Refusal {
        Refusal::Store(error)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|why| Refusal::BadRequest(format!("the body does not fit: {why}")))
}

fn act(server: &Server, worker: &WorkerId, id: RunId, action: &str, body: &[u8]) -> Result<(), Refusal> {
    if !ACTIONS.contains(&action) {
        return Err(Refusal::NoSuchAction(action.to_string()));
    }
    server.check_holder(worker, id)?;
    let masker = Arc::clone(&server.current().masker);
    match action {
        "started" => {
            let held: wire::Held = parse(body)?;
            server.run_started(id, held.epoch)?;
        }
        "heartbeat" => {
            let beat: wire::Heartbeat = parse(body)?;
            server.run_heartbeat(id, beat.epoch, Duration::from_secs(beat.lease_seconds))?;
        }
        "activities" => {
            let mut given: wire::Activities = parse(body)?;
            for activity in &mut given.activities {
                activity.text = masker.mask(&activity.text);
                masker.mask_json(&mut activity.data);
            }
            server.run_activities(id, given.epoch, given.activities)?;
        }
        "log" => {
            let given: wire::Log = parse(body)?;
            server.remote_log(id, given.epoch, &given.text)?;
        }
        "release" => {
            let given: wire::Release = parse(body)?;
            server.flush_remote_log(id, given.epoch)?;
            server.run_release(id, given.epoch, &masker.mask(&given.reason))?;
        }
        "complete" => {
            let mut given: wire::Complete = parse(body)?;
            mask_completion(&masker, &mut given.completion);
            server.flush_remote_log(id, given.epoch)?;
            if let Some(memory) = &mut given.memory {
                masker.mask_map(memory);
            }
            server.run_complete(id, given.epoch, given.completion, given.memory)?;
        }
        other => return Err(Refusal::NoSuchAction(other.to_string())),
    }
    Ok(())
}

/// Masks every text a completion carries: reasons, the plan, the result's summary and details.
fn mask_completion(masker: &Masker, completion: &mut Completion) {
    let mask_result = |result: &mut RunResult| {
        result.summary = masker.mask(&result.summary);
        masker.mask_map(&mut result.details);
    };
    match completion {
        Completion::Succeeded { result } => mask_result(result),
        Completion::Failed { reason, result, .. } => {
            *reason = masker.mask(reason);
            if let Some(result) = result {
                mask_result(result);
            }
        }
        Completion::TimedOut { reason } => *reason = masker.mask(reason),
        Completion::PlanReady { plan } => *plan = masker.mask(plan),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_of_a_completion_is_masked() {
        let masker = Masker::new(&["hook-secret"]);
        let result = || RunResult {
            summary: "used hook-secret".into(),
            exit_code: Some(0),
            details: serde_json::json!({"note": ["aG9vay1zZWNyZXQ="]}).as_object().cloned().unwrap(),
        };
        let masked_result = RunResult {
            summary: "used ***".into(),
            exit_code: Some(0),
            details: serde_json::json!({"note": ["***"]}).as_object().cloned().unwrap(),
        };
        let cases = [
            (Completion::Succeeded { result: result() }, Completion::Succeeded { result: masked_result.clone() }),
            (
                Completion::Failed { reason: "hook-secret refused".into(), retryable: true, result: Some(result()) },
                Completion::Failed { reason: "*** refused".into(), retryable: true, result: Some(masked_result) },
            ),
            (
                Completion::TimedOut { reason: "at hook-secret".into() },
                Completion::TimedOut { reason: "at ***".into() },
            ),
            (
                Completion::PlanReady { plan: "send hook-secret".into() },
                Completion::PlanReady { plan: "send ***".into() },
            ),
        ];
        for (mut given, expected) in cases {
            mask_completion(&masker, &mut given);
            assert_eq!(given, expected);
        }
    }
}
