//! Proves that a real Prometheus Alertmanager, on loopback, reaches `nightshift serve`: an
//! alert posted to its API becomes a webhook notification (bearer-authenticated) that
//! queues a run, and the alert's `resolved` notification cancels that queued run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::serving::Serving;

/// The hook's bearer token, as Alertmanager's `http_config` sends it.
const TOKEN: &str = "am-hook-token-5c1e";

const AUTOMATION: &str = r#"name: alert-investigation
trigger:
  alertmanager:
    auth: { bearer: { token: env:AM_TOKEN } }
    statuses: [firing]
task:
  agent: codex
  repo: https://github.com/acme/shop.git
  base: main
  branch: "agent/alert-{{ slug(event.group_labels.alertname) }}"
  prompt: "Investigate {{ event.common_labels.alertname }}"
"#;

/// How long any one wait may take; every wait polls every `POLL`.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// The Debian package's name for the binary, then upstream's.
const BINARIES: [&str; 2] = ["prometheus-alertmanager", "alertmanager"];

#[test]
fn an_alert_posted_to_alertmanager_queues_a_run_and_its_resolution_cancels_it() {
    let Some(binary) = crate::requires::program("prometheus-alertmanager", &BINARIES) else { return };
    let serving = Serving::start(&[("am.yaml", AUTOMATION)], &[("AM_TOKEN", TOKEN)]);
    let hook = format!("{}/hooks/alert-investigation", serving.url);

    // The hook wants Alertmanager's bearer token: without it, or with another, nothing is stored.
    let notification = serde_json::to_vec(&direct_notification()).unwrap();
    let json_type = ("content-type", "application/json");
    let refused = serving.post("/hooks/alert-investigation", &[json_type], notification.clone());
    assert_eq!(refused.status, 401, "no token: {:?}", refused.body);
    let wrong = format!("Bearer {TOKEN}-not");
    let refused = serving.post("/hooks/alert-investigation", &[json_type, ("authorization", &wrong)], notification);
    assert_eq!(refused.status, 401, "wrong token: {:?}", refused.body);
    assert!(serving.runs().is_empty(), "a refused call stored a run: {:?}", serving.runs());

    let dir = tempfile::tempdir().expect("temp dir");
    let alertmanager = Alertmanager::start(&binary, dir.path(), &hook, TOKEN);
    let context =
        |what: &str| format!("{what}\n--- nightshift:\n{}\n--- alertmanager:\n{}", serving.log(), alertmanager.log());

    // Firing: started a minute ago, so Alertmanager flushes the new group at once.
    let started = Utc::now() - chrono::Duration::seconds(60);
    let alert = |ends: Option<chrono::DateTime<Utc>>| {
        let mut alert = json!({
            "labels": { "alertname": "DiskFull", "severity": "page", "instance": "db-1" },
            "annotations": { "summary": "disk /var is 97% full" },
            "startsAt": started.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        if let Some(ends) = ends {
            alert["endsAt"] = json!(ends.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        json!([alert])
    };
    alertmanager.post_alerts(&alert(None));

    let run = wait_for(&context, "a run created by Alertmanager's firing notification", || {
        serving.runs().into_iter().find(|run| run["automation"] == "alert-investigation")
    });
    assert_eq!(run["state"], "queued", "{}", context(&format!("{run:#}")));
    let id = run["id"].as_str().unwrap_or_else(|| panic!("a run id: {run:#}")).to_string();
    let record = serving.api_get(&format!("/api/runs/{id}"));
    let event = &record["events"][0]["event"];
    assert_eq!(event["source"], "alertmanager", "{record:#}");
    assert_eq!(event["type"], "alert.firing", "{record:#}");
    let agent = event["headers"]["user-agent"].as_str().unwrap_or_default();
    assert!(agent.starts_with("Alertmanager/"), "not sent by Alertmanager: {record:#}");
    assert_eq!(event["payload"]["receiver"], "nightshift", "{record:#}");
    assert_eq!(event["payload"]["groupLabels"]["alertname"], "DiskFull", "{record:#}");
    assert_eq!(event["payload"]["alerts"][0]["labels"]["instance"], "db-1", "{record:#}");
    assert!(event["headers"].get("authorization").is_none(), "the bearer token was kept with the event: {record:#}");
    assert_eq!(record["run"]["task"]["branch"], "agent/alert-diskfull", "{record:#}");
    assert_eq!(record["run"]["task"]["prompt"], "Investigate DiskFull", "{record:#}");

    // Resolved: Alertmanager sends `resolved` at the group's next flush (group_interval).
    alertmanager.post_alerts(&alert(Some(Utc::now())));
    let cancelled = wait_for(&context, "the queued run cancelled by the resolved notification", || {
        let runs = serving.runs();
        runs.iter().find(|run| run["id"] == id.as_str() && run["state"] == "cancelled").cloned()
    });
    let record = serving.api_get(&format!("/api/runs/{id}"));
    let reason = record["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("resolved"), "{cancelled:#}\n{record:#}");
    // `statuses: [firing]`: the resolved notification starts no run of its own.
    let runs = serving.runs();
    assert_eq!(runs.len(), 1, "{}", context(&format!("{:#}", Value::Array(runs.clone()))));
}

/// A firing notification as Alertmanager would send it, for the calls without a token.
fn direct_notification() -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"DiskFull\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "nightshift",
        "groupLabels": { "alertname": "DiskFull" },
        "commonLabels": { "alertname": "DiskFull" },
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": "DiskFull" },
            "annotations": {},
            "startsAt": "2024-05-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": "0123456789abcdef"
        }]
    })
}

/// A Prometheus Alertmanager child process on a loopback port; killed when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    log: PathBuf,
    client: reqwest::blocking::Client,
}

impl Alertmanager {
    /// Starts `binary` in `dir` with one route to one receiver: a webhook to `hook_url`
    /// that sends `token` as a bearer token, for resolved notifications too.
    fn start(binary: &Path, dir: &Path, hook_url: &str, token: &str) -> Alertmanager {
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, config_text(hook_url, token)).unwrap();
        let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        // The port is free when we look, but another process may bind it before
        // Alertmanager does: a start that exits early is tried again on another port.
        let mut failures = String::new();
        for attempt in 1..=3 {
            let port = free_port();
            let log = dir.join(format!("alertmanager-{attempt}.log"));
            let storage = dir.join(format!("data-{attempt}"));
            std::fs::create_dir_all(&storage).unwrap();
            let mut command = Command::new(binary);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.external-url=http://127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .arg("--log.level=debug")
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
            // Only loopback, never through a proxy.
            for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
                command.env_remove(name);
            }
            let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let mut alertmanager =
                Alertmanager { child, url: format!("http://127.0.0.1:{port}"), log, client: client.clone() };
            match alertmanager.wait_until_ready() {
                Ok(()) => return alertmanager,
                Err(status) => {
                    failures += &format!("attempt {attempt}: exited with {status}:\n{}\n", alertmanager.log());
                }
            }
        }
        panic!("Alertmanager did not start:\n{failures}");
    }

    /// Waits for `/-/ready`; `Err` if the process exited first (e.g. its port was taken).
    fn wait_until_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            let ready = self.client.get(format!("{}/-/ready", self.url)).send();
            if ready.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "Alertmanager was not ready within {PATIENCE:?}:\n{}", self.log());
            std::thread::sleep(POLL);
        }
    }

    /// Posts `alerts` to the v2 API, as Prometheus does.
    fn post_alerts(&self, alerts: &Value) {
        let response = self
            .client
            .post(format!("{}/api/v2/alerts", self.url))
            .json(alerts)
            .send()
            .unwrap_or_else(|e| panic!("POST /api/v2/alerts: {e}\n{}", self.log()));
        let status = response.status();
        let body = response.text().unwrap_or_default();
        assert!(status.is_success(), "POST /api/v2/alerts: {status} {body}\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alertmanager's configuration: every alert, grouped by name, to the hook. A new group
/// is flushed at once (its alerts started before `group_wait`), changes within a second,
/// and nothing is repeated while the test runs.
fn config_text(hook_url: &str, token: &str) -> String {
    format!(
        r#"route:
  receiver: nightshift
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 4h
receivers:
  - name: nightshift
    webhook_configs:
      - url: "{hook_url}"
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: "{token}"
"#
    )
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

/// Polls `probe` every `POLL` until it gives a value, for at most `PATIENCE`; on time out,
/// fails with `what` and `context`.
fn wait_for<T>(context: &dyn Fn(&str) -> String, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{}", context(&format!("no {what} within {PATIENCE:?}")));
        std::thread::sleep(POLL);
    }
}
