//! `RemoteLedger`: the ledger commands through a running `nightshift serve`'s `/api`,
//! found through `serve.json` in the data directory.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use reqwest::blocking::{Client, RequestBuilder, Response};

use super::ledger::{Ledger, TriggerRequest};
use crate::pipeline::IngestReport;
use crate::runs::{MemoryChange, MemoryEntry, MemoryWrite, Run, RunId};
use crate::server::discovery::ServeFile;
use crate::store::{LogChunk, RetentionReport, RunFilter, RunRecord};

pub struct RemoteLedger {
    client: Client,
    server: ServeFile,
}

impl RemoteLedger {
    pub fn new(server: ServeFile) -> anyhow::Result<RemoteLedger> {
        let client = Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        Ok(RemoteLedger { client, server })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.bearer_auth(&self.server.token).send().with_context(|| {
            format!("cannot reach nightshift serve (pid {}) at {}", self.server.pid, self.server.url)
        })?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(response);
        }
        let status = response.status();
        Err(anyhow!("nightshift serve answered {status}: {}", error_text(response, "no details")))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = self.send(request)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(anyhow!("{}", error_text(response, "not found")));
        }
        Ok(response.json()?)
    }
}

impl Ledger for RemoteLedger {
    fn trigger(&self, request: &TriggerRequest) -> anyhow::Result<IngestReport> {
        let fixture = &request.fixture;
        let body = std::fs::read(&fixture.event)
            .with_context(|| format!("cannot read fixture {}", fixture.event.display()))?;
        let mut query: Vec<(&str, String)> = vec![("now", request.now.to_rfc3339())];
        if let Some(source) = fixture.source {
            query.push(("source", source.as_str().to_string()));
        }
        let mut call = self
            .client
            .post(self.url(&format!("/api/automations/{}/run", request.automation)))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in &fixture.headers {
            call = call.header(format!("{}{}", crate::http::MANUAL_HEADER_PREFIX, name.to_ascii_lowercase()), value);
        }
        self.json(call)
    }

    fn runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<Run>> {
        let mut query: Vec<(&str, String)> = vec![("limit", filter.limit.to_string())];
        if let Some(automation) = &filter.automation {
            query.push(("automation", automation.clone()));
        }
        if let Some(state) = filter.state {
            query.push(("state", state.as_str().to_string()));
        }
        self.json(self.client.get(self.url("/api/runs")).query(&query))
    }

    fn show(&self, id: RunId) -> anyhow::Result<Option<RunRecord>> {
        let response = self.send(self.client.get(self.url(&format!("/api/runs/{id}"))))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(response.json()?))
    }

    fn memory(&self, automation: &str, _now: DateTime<Utc>) -> anyhow::Result<BTreeMap<String, MemoryEntry>> {
        self.json(self.client.get(self.url(&format!("/api/automations/{automation}/memory"))))
    }

    fn write_memory(&self, automation: &str, write: MemoryWrite, _now: DateTime<Utc>) -> anyhow::Result<()> {
        let url = self.url(&format!("/api/automations/{automation}/memory/{}", encode_segment(&write.key)));
        let request = match write.change {
            MemoryChange::Set { value, .. } => self.client.put(url).json(&value),
            MemoryChange::Remove => self.client.delete(url),
        };
        self.send(request)?;
        Ok(())
    }

    fn prune(&self, _now: DateTime<Utc>) -> anyhow::Result<RetentionReport> {
        self.json(self.client.post(self.url("/api/prune")))
    }

    fn approve(&self, id: RunId) -> anyhow::Result<Run> {
        self.json(self.client.post(self.url(&format!("/api/runs/{id}/approve"))))
    }

    fn cancel(&self, id: RunId, reason: &str) -> anyhow::Result<Run> {
        let url = self.url(&format!("/api/runs/{id}/cancel"));
        self.json(self.client.post(url).json(&serde_json::json!({ "reason": reason })))
    }

    fn log(&self, id: RunId, from: u64) -> anyhow::Result<Vec<LogChunk>> {
        self.json(self.client.get(self.url(&format!("/api/runs/{id}/log"))).query(&[("from", from)]))
    }

    fn follow_up(&self, id: RunId, text: &str, now: DateTime<Utc>) -> anyhow::Result<IngestReport> {
        let url = self.url(&format!("/api/runs/{id}/follow-up"));
        self.json(self.client.post(url).json(&serde_json::json!({ "text": text, "now": now })))
    }
}

/// The `error` of a JSON error answer, or `fallback`.
fn error_text(response: Response, fallback: &str) -> String {
    crate::worker::remote::error_message(response).unwrap_or_else(|| fallback.to_string())
}

/// A memory key as one URL path segment.
fn encode_segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}
