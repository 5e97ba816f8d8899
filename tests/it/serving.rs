//! A real `nightshift serve` child process on a loopback port, for the server's tests:
//! start it over automation files, call it, read its store through its API, stop it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sandbox_jail::{As, nightshift_as};

/// A running server; stopped (SIGTERM, then waited for) when dropped.
pub struct Serving {
    child: Option<Child>,
    pub url: String,
    pub token: String,
    /// The automations directory (a temporary one).
    pub automations: PathBuf,
    pub data: PathBuf,
    _dirs: tempfile::TempDir,
    client: reqwest::blocking::Client,
    /// The arguments `serve` was started with beyond the directories, for `restart`.
    args: Vec<String>,
    /// Who runs `serve`, for `restart`.
    who: As,
}

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Serving {
    /// Starts `nightshift serve` on `files` (name → YAML, in `automations/`), with `env`,
    /// and no local workers: runs stay queued.
    pub fn start(files: &[(&str, &str)], env: &[(&str, &str)]) -> Serving {
        Self::start_with_args(files, env, &["--workers", "0"])
    }

    /// `start` with more arguments for `serve` (e.g. `--workers 4`).
    pub fn start_with_args(files: &[(&str, &str)], env: &[(&str, &str)], args: &[&str]) -> Serving {
        Self::start_as(As::Caller, files, env, args)
    }

    /// `start_with_args` with `serve` run as `who`, its directories (automations, data,
    /// log) handed over to that user.
    pub fn start_as(who: As, files: &[(&str, &str)], env: &[(&str, &str)], args: &[&str]) -> Serving {
        let dirs = tempfile::tempdir().expect("temp dir");
        let automations = dirs.path().join("automations");
        std::fs::create_dir_all(&automations).unwrap();
        for (name, text) in files {
            std::fs::write(automations.join(name), text).unwrap();
        }
        let data = dirs.path().join("data");
        Self::start_in(who, dirs, automations, data, env, args)
    }

    /// `start_with_args` with the store in `data` (e.g. on a file system the test made).
    pub fn start_with_data(files: &[(&str, &str)], env: &[(&str, &str)], args: &[&str], data: &Path) -> Serving {
        let dirs = tempfile::tempdir().expect("temp dir");
        let automations = dirs.path().join("automations");
        std::fs::create_dir_all(&automations).unwrap();
        for (name, text) in files {
            std::fs::write(automations.join(name), text).unwrap();
        }
        Self::start_in(As::Caller, dirs, automations, data.to_path_buf(), env, args)
    }

    /// Starts a server over existing directories (e.g. again, after a stop).
    fn start_in(
        who: As,
        dirs: tempfile::TempDir,
        automations: PathBuf,
        data: PathBuf,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Serving {
        let _ = std::fs::remove_file(data.join("serve.json"));
        let log = std::fs::File::create(dirs.path().join("serve.log")).unwrap();
        who.hand_over(dirs.path());
        let mut command = nightshift_as(who);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&automations)
            .arg("--data")
            .arg(&data)
            .args(args)
            .current_dir(dirs.path())
            .env("NIGHTSHIFT_LOG", "nightshift=debug,warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start nightshift serve");
        let mut serving = Serving {
            child: Some(child),
            url: String::new(),
            token: String::new(),
            automations,
            data,
            _dirs: dirs,
            client: reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
            who,
        };
        serving.wait_until_ready();
        serving
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read(self.data.join("serve.json")) {
                let file: Value = serde_json::from_slice(&text).unwrap();
                self.url = file["url"].as_str().unwrap().to_string();
                self.token = file["token"].as_str().unwrap().to_string();
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nightshift serve exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "nightshift serve did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's own directory (its working directory), which holds `automations/`
    /// and `data/`.
    pub fn root(&self) -> &Path {
        self._dirs.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dirs.path().join("serve.log")).unwrap_or_default()
    }

    /// POSTs `body` to `path` with `headers`.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Answer {
        let mut request = self.client.post(format!("{}{path}", self.url)).body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().expect("request"))
    }

    /// GETs an `/api` path with the token.
    pub fn api_get(&self, path: &str) -> Value {
        let response = self.client.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().unwrap();
        let answer = answer(response);
        assert_eq!(answer.status, 200, "GET {path}: {:?}", answer.body);
        answer.body
    }

    /// POSTs JSON to an `/api` path with the token.
    pub fn api_post(&self, path: &str, body: &Value) -> Answer {
        let request = self.client.post(format!("{}{path}", self.url)).bearer_auth(&self.token).json(body);
        answer(request.send().expect("request"))
    }

    /// POSTs JSON to a worker API path with a worker token.
    pub fn worker_post(&self, token: &str, path: &str, body: &Value) -> Answer {
        let request = self.client.post(format!("{}{path}", self.url)).bearer_auth(token).json(body);
        answer(request.send().expect("request"))
    }

    /// Every run, newest first, through the API.
    pub fn runs(&self) -> Vec<Value> {
        self.api_get("/api/runs").as_array().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; returns its exit
    /// status, or `None` if it was still running (it is then killed).
    pub fn stop_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to die; `restart`
    /// starts it again on the same directories.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GETs a path without credentials (e.g. `/healthz`).
    pub fn get(&self, path: &str) -> Answer {
        answer(self.client.get(format!("{}{path}", self.url)).send().expect("request"))
    }

    /// Stops the server and starts it again on the same directories, with the same arguments.
    pub fn restart(mut self, env: &[(&str, &str)]) -> Serving {
        assert!(self.stop(), "the server did not stop cleanly:\n{}", self.log());
        let dirs = std::mem::replace(&mut self._dirs, tempfile::tempdir().unwrap());
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Self::start_in(self.who, dirs, self.automations.clone(), self.data.clone(), env, &args)
    }

    pub fn automations_dir(&self) -> &Path {
        &self.automations
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(response: reqwest::blocking::Response) -> Answer {
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body = response.json().unwrap_or(Value::Null);
    Answer { status, body, retry_after }
}

/// Hex HMAC-SHA256 of `body` with `secret`.
pub fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
