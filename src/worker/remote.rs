//! `RemoteControl`: a worker on another machine talks to `serve` over its worker API
//! (`/api/worker/...`, behind a worker token), so agent work scales across machines. The
//! request bodies are `wire` types, which the server's handlers read.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use super::control::{ControlError, RunControl};
use crate::config::SecretRef;
use crate::runs::{Completion, Epoch, NewActivity, RunId};
use crate::store::Claim;

/// The worker API's request bodies.
pub mod wire {
    use serde::{Deserialize, Serialize};
    use serde_json::{Map, Value};

    use crate::runs::{Completion, Epoch, NewActivity};

    /// Asks for a run. The server waits up to `wait_seconds` for one to be queued.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ClaimRequest {
        pub worker: String,
        pub lease_seconds: u64,
        #[serde(default)]
        pub wait_seconds: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Held {
        pub epoch: Epoch,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Heartbeat {
        pub epoch: Epoch,
        pub lease_seconds: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Activities {
        pub epoch: Epoch,
        pub activities: Vec<NewActivity>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Log {
        pub epoch: Epoch,
        pub text: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Release {
        pub epoch: Epoch,
        pub reason: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Complete {
        pub epoch: Epoch,
        pub completion: Completion,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub memory: Option<Map<String, Value>>,
    }
}

/// The engine behind `serve`'s worker API.
pub struct RemoteControl {
    client: Client,
    server: String,
    token: String,
    lease_for: Duration,
    /// How long a claim waits on the server for a run (a long poll).
    claim_wait: Duration,
}

impl RemoteControl {
    /// `server` is the base URL (`http://host:port`); `token` one of the server's worker tokens.
    pub fn new(server: &str, token: &str, lease_for: Duration) -> Result<RemoteControl, String> {
        let client = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let server = server.trim_end_matches('/').to_string();
        if !server.starts_with("http://") && !server.starts_with("https://") {
            return Err(format!("`{server}` is not a server URL; give one like http://127.0.0.1:8080"));
        }
        Ok(RemoteControl { client, server, token: token.to_string(), lease_for, claim_wait: Duration::from_secs(20) })
    }

    fn post(&self, path: &str, body: &impl Serialize) -> Result<Response, ControlError> {
        let url = format!("{}/api/worker/{path}", self.server);
        let response = self
            .client
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .map_err(|error| ControlError::Unavailable(format!("POST {url}: {}", causes(&error))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = error_message(response).unwrap_or_else(|| status.to_string());
        Err(match status {
            StatusCode::CONFLICT | StatusCode::NOT_FOUND | StatusCode::GONE => ControlError::Lost(message),
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                ControlError::Unavailable(message)
            }
            _ => ControlError::Refused(format!("{status}: {message}")),
        })
    }

    /// Why a claim came back 404: the URL is not a nightshift server's.
    fn not_a_server(&self, why: String) -> ControlError {
        ControlError::Refused(format!(
            "{why}; is --server ({}) the base URL of `nightshift serve`, e.g. http://host:8080?",
            self.server
        ))
    }

    fn run_call(&self, run: RunId, action: &str, body: &impl Serialize) -> Result<(), ControlError> {
        self.post(&format!("runs/{run}/{action}"), body).map(drop)
    }
}

impl RunControl for RemoteControl {
    /// The server's secret references, read here: a value this machine cannot read is
    /// one its runs cannot print either.
    fn known_secrets(&self) -> Arc<Vec<String>> {
        let url = format!("{}/api/worker/secrets", self.server);
        let references: Result<Vec<SecretRef>, String> = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .and_then(Response::error_for_status)
            .and_then(Response::json)
            .map_err(|error| causes(&error));
        match references {
            Ok(references) => Arc::new(references.iter().filter_map(|reference| reference.resolve().ok()).collect()),
            Err(why) => {
                tracing::warn!("Cannot read the server's secret references; only the run's own are masked: {why}");
                Arc::default()
            }
        }
    }

    fn claim(&self, worker: &str) -> Result<Option<Claim>, ControlError> {
        let request = wire::ClaimRequest {
            worker: worker.to_string(),
            lease_seconds: self.lease_for.as_secs().max(1),
            wait_seconds: self.claim_wait.as_secs(),
        };
        let asked = std::time::Instant::now();
        let response = match self.post("claim", &request) {
            Err(ControlError::Lost(why)) => return Err(self.not_a_server(why)),
            other => other?,
        };
        if response.status() == StatusCode::NO_CONTENT {
            // An answer long before the wait asked for (a server stopping): pause rather
            // than ask again at once.
            if asked.elapsed() < Duration::from_secs(1) && !self.claim_wait.is_zero() {
                std::thread::sleep(Duration::from_secs(1));
            }
            return Ok(None);
        }
        response.json().map(Some).map_err(|e| ControlError::Unavailable(format!("a claim that is not JSON: {e}")))
    }

    fn started(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        self.run_call(run, "started", &wire::Held { epoch })
    }

    fn heartbeat(&self, run: RunId, epoch: Epoch) -> Result<(), ControlError> {
        self.run_call(run, "heartbeat", &wire::Heartbeat { epoch, lease_seconds: self.lease_for.as_secs().max(1) })
    }

    fn activities(&self, run: RunId, epoch: Epoch, activities: Vec<NewActivity>) -> Result<(), ControlError> {
        self.run_call(run, "activities", &wire::Activities { epoch, activities })
    }

    fn log(&self, run: RunId, epoch: Epoch, text: String) -> Result<(), ControlError> {
        self.run_call(run, "log", &wire::Log { epoch, text })
    }

    fn release(&self, run: RunId, epoch: Epoch, reason: &str) -> Result<(), ControlError> {
        self.run_call(run, "release", &wire::Release { epoch, reason: reason.to_string() })
    }

    fn complete(
        &self,
        run: RunId,
        epoch: Epoch,
        completion: Completion,
        memory: Option<Map<String, Value>>,
    ) -> Result<(), ControlError> {
        self.run_call(run, "complete", &wire::Complete { epoch, completion, memory })
    }
}

/// The `error` of one of serve's JSON error answers (`{"error": ...}`), if it is one.
pub fn error_message(response: Response) -> Option<String> {
    let body: Value = response.json().ok()?;
    body.get("error").and_then(Value::as_str).map(str::to_string)
}

/// An HTTP error with its causes ("connection refused"), which its own text leaves out.
fn causes(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(next) = cause {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&next.to_string());
        cause = next.source();
    }
    if text.is_empty() { error.to_string() } else { text }
}
