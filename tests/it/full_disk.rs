//! A full disk, survived: a real `nightshift serve` keeps its store on a small tmpfs the
//! test mounts and fills. While the store cannot write, hooks answer 503 with
//! Retry-After and `/healthz` says why; once space is freed the server takes deliveries
//! again by itself; SIGTERM while full exits promptly; and every delivery that was
//! answered 2xx is in the store after a restart. Mounting needs root: elsewhere the
//! test is skipped, loudly, unless `NIGHTSHIFT_REQUIRE_MOUNTS` is set (CI sets it where
//! `mount -t tmpfs` works), when it fails instead.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::hooks::GITHUB;
use crate::serving::{Answer, Serving, hmac_hex};

const SECRET: &str = "gh-secret";

/// How long SIGTERM may take, whatever the store is doing.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it cannot.
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let reason = match mounted {
            Ok(output) if output.status.success() => return Some(SmallFs { dir }),
            Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
            Err(error) => format!("cannot run mount: {error}"),
        };
        crate::requires::skip(
            crate::requires::REQUIRE_MOUNTS,
            &format!("cannot mount a tmpfs for the full-disk test ({reason}); it needs root"),
        );
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a ballast file, to the last byte; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("ballast");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("ballast");
        for chunk in [1 << 20, 4096, 1] {
            let zeros = vec![0u8; chunk];
            // Bounded: the file system is small.
            for _ in 0..100_000 {
                if file.write_all(&zeros).is_err() {
                    break;
                }
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn post(server: &Serving, n: u64) -> Answer {
    let body = json!({"action": "opened", "number": n, "pull_request": {"draft": false}}).to_string();
    let signature = format!("sha256={}", hmac_hex(SECRET, &[body.as_bytes()]));
    let delivery = format!("delivery-{n}");
    server.post(
        "/hooks/pr-review",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", &delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    )
}

fn start(data: &Path) -> Serving {
    Serving::start_with_data(&[("github.yaml", GITHUB)], &[("GH_SECRET", SECRET)], &["--workers", "0"], data)
}

/// Posts deliveries from `*next` on until one is refused with 503; records the accepted
/// ones. Returns the refused one's number.
fn post_until_refused(server: &Serving, next: &mut u64, accepted: &mut BTreeSet<u64>) -> u64 {
    for _ in 0..2000 {
        let n = *next;
        *next += 1;
        let answer = post(server, n);
        match answer.status {
            202 => {
                accepted.insert(n);
            }
            503 => {
                let retry_after = answer.retry_after.as_deref().unwrap_or_default();
                assert!(retry_after.parse::<u32>().is_ok_and(|s| s > 0), "503 without Retry-After: {answer:?}");
                return n;
            }
            _ => panic!("delivery {n} on a full disk: {answer:?}\n{}", server.log()),
        }
    }
    panic!("2000 deliveries on a full disk were all accepted:\n{}", server.log());
}

/// The deliveries the store holds, read through the API.
fn stored_deliveries(server: &Serving) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for run in server.runs() {
        for id in run["event_ids"].as_array().expect("event_ids") {
            let number: Option<u64> =
                id.as_str().and_then(|id| id.strip_prefix("github:pr-review:delivery-")).and_then(|n| n.parse().ok());
            found.extend(number);
        }
    }
    found
}

fn wait_until(what: &str, server: &Serving, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within 60 s:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_gets_503_and_an_unhealthy_healthz_then_recovers_and_loses_nothing_acknowledged() {
    let Some(fs) = SmallFs::mount("64m") else { return };
    let data = fs.path().join("data");
    let mut server = start(&data);
    let (mut next, mut accepted) = (1, BTreeSet::new());
    for _ in 0..5 {
        let answer = post(&server, next);
        assert_eq!(answer.status, 202, "{answer:?}");
        accepted.insert(next);
        next += 1;
    }
    assert_eq!(server.get("/healthz").status, 200);

    let ballast = fs.fill();
    let refused = post_until_refused(&server, &mut next, &mut accepted);
    let health = server.get("/healthz");
    assert_eq!(health.status, 503, "{health:?}");
    assert_eq!(health.body["ok"], false, "{health:?}");
    let problem = health.body["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("No space left on device"), "{health:?}");
    // Still full: refused at once, not queued.
    let answer = post(&server, next);
    assert_eq!(answer.status, 503, "{answer:?}");
    next += 1;

    std::fs::remove_file(&ballast).expect("free the ballast");
    wait_until("healthz ok after freeing space", &server, || server.get("/healthz").status == 200);
    // The refused delivery, sent again, is taken now (as new, or as the duplicate of a
    // write the store finished once it could).
    let answer = post(&server, refused);
    assert_eq!(answer.status, 202, "{answer:?}");
    accepted.insert(refused);
    for _ in 0..5 {
        let answer = post(&server, next);
        assert_eq!(answer.status, 202, "{answer:?}");
        accepted.insert(next);
        next += 1;
    }

    // Full again, and SIGTERM: the server exits promptly.
    let ballast = fs.fill();
    post_until_refused(&server, &mut next, &mut accepted);
    let started = Instant::now();
    let exited = server.stop_within(STOP_WITHIN);
    assert!(exited.is_some(), "SIGTERM on a full disk: still running after {STOP_WITHIN:?}:\n{}", server.log());
    eprintln!("SIGTERM on a full disk: exited in {:?} with {exited:?}", started.elapsed());

    std::fs::remove_file(&ballast).expect("free the ballast");
    let server = start(&data);
    let stored = stored_deliveries(&server);
    let lost: Vec<_> = accepted.difference(&stored).collect();
    assert!(lost.is_empty(), "deliveries answered 2xx but not stored: {lost:?}\n{}", server.log());
    assert_eq!(server.get("/healthz").status, 200);
}
