//! The web board: login and its cookie, who may act (read-only token, cross-site
//! requests, CSRF token), re-run, the live feed, paging through the API, and a real
//! headless Chromium that logs in, watches a run change live and cancels it.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::serving::Serving;

const AUTOMATION: &str = "name: board-probe\ntrigger:\n  manual: {}\ntask:\n  agent: codex\n  repo: /srv/git/api\n  prompt: 'look at <b>{{ event.get(\"title\") ?? \"this\" }}</b>'\n";
const READ_TOKEN: &str = "read-only-token-for-the-board-test";
const WORKER_TOKEN: &str = "worker-token-for-the-board-test";
/// How long any one wait may take.
const PATIENCE: Duration = Duration::from_secs(30);

fn start() -> Serving {
    Serving::start_with_args(
        &[("board-probe.yaml", AUTOMATION)],
        &[],
        &["--workers", "0", "--read-token", READ_TOKEN, "--worker-token", WORKER_TOKEN],
    )
}

/// A client that does not follow redirects and keeps no cookies of its own.
fn client() -> Client {
    Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(PATIENCE).build().unwrap()
}

/// Logs in with `token`: the login answer.
fn login(serving: &Serving, token: &str) -> Response {
    let form = format!("token={token}");
    client()
        .post(format!("{}/login", serving.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &serving.url)
        .body(form)
        .send()
        .unwrap()
}

/// The session cookie (`name=value`) a successful login set.
fn session_cookie(serving: &Serving, token: &str) -> String {
    let answer = login(serving, token);
    assert_eq!(answer.status(), 303, "a good token logs in");
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    cookie.split(';').next().unwrap().to_string()
}

fn csrf(serving: &Serving, cookie: &str) -> String {
    let session: Value =
        client().get(format!("{}/board/session", serving.url)).header("cookie", cookie).send().unwrap().json().unwrap();
    session["csrf"].as_str().unwrap().to_string()
}

/// Queues a manual run through the API: its id.
fn trigger(serving: &Serving, title: &str) -> String {
    let answer = serving.api_post("/api/automations/board-probe/run", &json!({"title": title}));
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    answer.body["runs"][0]["run"].as_str().unwrap().to_string()
}

/// POSTs to `path` as a browser with `cookie` would, with `headers`.
fn browser_post(serving: &Serving, path: &str, cookie: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = client().post(format!("{}{path}", serving.url)).header("cookie", cookie).body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().unwrap().status().as_u16()
}

#[test]
fn without_a_login_pages_go_to_the_login_form_and_data_is_refused() {
    let serving = start();
    let page = client().get(format!("{}/", serving.url)).send().unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    let run_page = client().get(format!("{}/runs/r1", serving.url)).send().unwrap();
    assert_eq!(run_page.headers()["location"], "/login");
    for path in ["/api/runs", "/api/runs/stream", "/board/session"] {
        assert_eq!(client().get(format!("{}{path}", serving.url)).send().unwrap().status(), 401, "{path}");
    }
    let wrong_cookie = client().get(format!("{}/api/runs", serving.url)).header("cookie", "nightshift_session=guess");
    assert_eq!(wrong_cookie.send().unwrap().status(), 401);
    let form = client().get(format!("{}/login", serving.url)).send().unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
}

#[test]
fn a_bad_login_sets_no_cookie_and_a_good_one_sets_a_session_cookie_that_is_not_the_token() {
    let serving = start();
    let bad = login(&serving, "not-the-token");
    assert_eq!(bad.status(), 401);
    assert!(bad.headers().get("set-cookie").is_none());
    let foreign = client()
        .post(format!("{}/login", serving.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body(format!("token={}", serving.token))
        .send()
        .unwrap();
    assert_eq!(foreign.status(), 403, "a login from another site is refused");
    assert!(foreign.headers().get("set-cookie").is_none());

    let good = login(&serving, &serving.token);
    assert_eq!(good.status(), 303);
    assert_eq!(good.headers()["location"], "/");
    let cookie = good.headers()["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http on loopback: {cookie}");
    assert!(!cookie.contains(&serving.token), "the cookie is a session id, not the token: {cookie}");
    let cookie = cookie.split(';').next().unwrap();
    let page = client().get(format!("{}/", serving.url)).header("cookie", cookie).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
    let runs = client().get(format!("{}/api/runs", serving.url)).header("cookie", cookie).send().unwrap();
    assert_eq!(runs.status(), 200);

    // Logging out ends the session.
    let out = browser_post(&serving, "/logout", cookie, &[("origin", &serving.url)]);
    assert_eq!(out, 303);
    let after = client().get(format!("{}/api/runs", serving.url)).header("cookie", cookie).send().unwrap();
    assert_eq!(after.status(), 401);
}

#[test]
fn a_button_needs_the_same_origin_and_the_csrf_token_and_the_read_only_token_cannot_act() {
    let serving = start();
    let run = trigger(&serving, "one");
    let cancel = format!("/api/runs/{run}/cancel");
    let cookie = session_cookie(&serving, &serving.token);
    let token = csrf(&serving, &cookie);
    let origin = serving.url.as_str();

    let foreign =
        browser_post(&serving, &cancel, &cookie, &[("origin", "http://evil.example"), ("x-nightshift-csrf", &token)]);
    assert_eq!(foreign, 403, "a foreign Origin");
    let cross_site = browser_post(
        &serving,
        &cancel,
        &cookie,
        &[("origin", origin), ("sec-fetch-site", "cross-site"), ("x-nightshift-csrf", &token)],
    );
    assert_eq!(cross_site, 403, "Sec-Fetch-Site cross-site");
    assert_eq!(browser_post(&serving, &cancel, &cookie, &[("x-nightshift-csrf", &token)]), 403, "no Origin");
    assert_eq!(browser_post(&serving, &cancel, &cookie, &[("origin", origin)]), 403, "no CSRF token");
    let wrong = browser_post(&serving, &cancel, &cookie, &[("origin", origin), ("x-nightshift-csrf", "guess")]);
    assert_eq!(wrong, 403, "a wrong CSRF token");
    assert_eq!(serving.api_get(&format!("/api/runs/{run}"))["run"]["state"], "queued", "nothing was cancelled");

    // The read-only token sees but cannot act, as a bearer or as a login.
    let read = client().get(format!("{}/api/runs", serving.url)).bearer_auth(READ_TOKEN).send().unwrap();
    assert_eq!(read.status(), 200);
    let refused = client().post(format!("{}{cancel}", serving.url)).bearer_auth(READ_TOKEN).send().unwrap();
    assert_eq!(refused.status(), 403);
    let trigger_refused = client()
        .post(format!("{}/api/automations/board-probe/run", serving.url))
        .bearer_auth(READ_TOKEN)
        .send()
        .unwrap();
    assert_eq!(trigger_refused.status(), 403);
    let read_cookie = session_cookie(&serving, READ_TOKEN);
    let read_csrf = csrf(&serving, &read_cookie);
    let by_reader =
        browser_post(&serving, &cancel, &read_cookie, &[("origin", origin), ("x-nightshift-csrf", &read_csrf)]);
    assert_eq!(by_reader, 403);
    assert_eq!(serving.api_get(&format!("/api/runs/{run}"))["run"]["state"], "queued");

    // The board's own request, with the full login, cancels.
    let ours = browser_post(&serving, &cancel, &cookie, &[("origin", origin), ("x-nightshift-csrf", &token)]);
    assert_eq!(ours, 200);
    assert_eq!(serving.api_get(&format!("/api/runs/{run}"))["run"]["state"], "cancelled");
}

#[test]
fn a_rerun_queues_a_new_run_of_the_same_automation_for_the_same_payload() {
    let serving = start();
    let first = trigger(&serving, "again");
    let answer = serving.api_post(&format!("/api/runs/{first}/rerun"), &json!({}));
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let second = answer.body["runs"][0]["run"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let record = serving.api_get(&format!("/api/runs/{second}"));
    assert_eq!(record["run"]["automation"], "board-probe");
    assert_eq!(record["run"]["state"], "queued");
    assert_eq!(record["events"][0]["event"]["payload"], json!({"title": "again"}));
    assert_eq!(serving.api_post("/api/runs/r999/rerun", &json!({})).status, 404);
}

#[test]
fn the_runs_list_pages_through_the_api_with_its_cursor() {
    let serving = start();
    let ids: Vec<String> = (0..7).map(|n| trigger(&serving, &format!("run {n}"))).collect();
    let mut seen = Vec::new();
    let mut before = String::new();
    for _ in 0..10 {
        let response = client()
            .get(format!("{}/api/runs?limit=3&before={before}", serving.url))
            .bearer_auth(&serving.token)
            .send()
            .unwrap();
        let next = response.headers().get("x-nightshift-next").map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Value> = response.json().unwrap();
        seen.extend(page.iter().map(|run| run["id"].as_str().unwrap().to_string()));
        match next {
            Some(next) => before = next,
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
}

#[test]
fn the_live_feed_tells_of_a_run_queued_and_cancelled() {
    let serving = start();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {}", serving.token)).unwrap());
    let stream = client().get(format!("{}/api/runs/stream", serving.url)).headers(headers).send().unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let run = trigger(&serving, "live");
    let mut lines = BufReader::new(stream).lines();
    let mut states = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while states.len() < 2 && Instant::now() < deadline {
        let line = lines.next().expect("the stream stays open").expect("a line within the client's timeout");
        if let Some(data) = line.strip_prefix("data:") {
            let changes: Vec<Value> = serde_json::from_str(data.trim()).unwrap();
            for change in changes.iter().filter(|change| change["id"] == run.as_str()) {
                assert_eq!(change["automation"], "board-probe");
                assert!(change["updated_at"].is_string());
                states.push(change["state"].as_str().unwrap().to_string());
                if states == ["queued"] {
                    // Cancelled once it was seen queued: a change within one gathering
                    // would be told as its newest state only.
                    assert_eq!(serving.api_post(&format!("/api/runs/{run}/cancel"), &json!({})).status, 200);
                }
            }
        }
    }
    assert_eq!(states, ["queued", "cancelled"]);
    // An open feed does not hold up a stop.
    let mut serving = serving;
    let status = serving.stop_within(Duration::from_secs(20)).expect("serve stopped with a board's feed open");
    assert!(status.success(), "{status}");
    drop(lines);
}

/// Evaluates `expression` in the page: its value (strings, numbers and booleans).
fn eval(tab: &headless_chrome::Tab, expression: &str) -> Value {
    tab.evaluate(expression, false).unwrap_or_else(|e| panic!("{expression}: {e}")).value.unwrap_or(Value::Null)
}

/// Polls `expression` until it is `expected`, for at most `PATIENCE`.
fn until(tab: &headless_chrome::Tab, expression: &str, expected: Value) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = eval(tab, expression);
        if value == expected {
            return;
        }
        assert!(Instant::now() < deadline, "`{expression}` is {value}, not {expected}, after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A headless Chromium with its profile under `profile`.
fn launch(chromium: std::path::PathBuf, profile: &std::path::Path) -> headless_chrome::Browser {
    let options = headless_chrome::LaunchOptions::default_builder()
        .path(Some(chromium))
        .headless(true)
        // Chromium's own sandbox needs user namespaces it may not have here (and refuses root).
        .sandbox(false)
        .window_size(Some((1280, 860)))
        .user_data_dir(Some(profile.join("profile")))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    headless_chrome::Browser::new(options).expect("chromium starts")
}

/// Opens the board in `tab`, which sends it to the login form, and logs in with the
/// full token: the runs list shows.
fn log_in(tab: &headless_chrome::Tab, serving: &Serving) {
    tab.navigate_to(&format!("{}/", serving.url)).unwrap().wait_until_navigated().unwrap();
    until(tab, "location.pathname", json!("/login"));
    tab.wait_for_element("#token").unwrap().click().unwrap();
    tab.type_str(&serving.token).unwrap().press_key("Enter").unwrap();
    until(tab, "location.pathname === '/' && document.getElementById('runs') !== null", json!(true));
}

#[test]
fn in_chromium_the_board_logs_in_shows_a_run_change_live_and_cancels_it() {
    let Some(chromium) = crate::requires::program("chromium", &["chromium", "chromium-browser"]) else { return };
    let serving = start();
    let profile = tempfile::tempdir().unwrap();
    let browser = launch(chromium, profile.path());
    let tab = browser.new_tab().unwrap();
    log_in(&tab, &serving);
    until(&tab, "document.getElementById('live').textContent", json!("live"));
    // Whatever follows must happen without a reload, which would forget this.
    eval(&tab, "window.boardTestMarker = 'still here'");

    // A run queued through the API appears, then changes state when a worker claims it.
    let run = trigger(&serving, "seen live");
    let state = format!("(document.querySelector('tr[data-id=\"{run}\"] .state') || {{}}).textContent || null");
    until(&tab, &state, json!("queued"));
    let claim = serving.worker_post(WORKER_TOKEN, "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 300}));
    assert_eq!(claim.status, 200, "{:?}", claim.body);
    until(&tab, &state, json!("leased"));
    assert_eq!(eval(&tab, "window.boardTestMarker"), json!("still here"), "the page was not reloaded");

    // The run's page, its cancel button, and the run cancelled.
    tab.wait_for_element(&format!("a[data-run=\"{run}\"]")).unwrap().click().unwrap();
    until(&tab, "(document.getElementById('prompt') || {}).textContent || null", json!("look at <b>seen live</b>"));
    assert_eq!(eval(&tab, "document.querySelectorAll('#prompt b').length"), json!(0), "run text is text, not HTML");
    tab.wait_for_element("#cancel").unwrap().click().unwrap();
    until(&tab, "(document.getElementById('run-state') || {}).textContent || null", json!("cancelled"));
    assert_eq!(serving.api_get(&format!("/api/runs/{run}"))["run"]["state"], "cancelled");
    assert_eq!(eval(&tab, "window.boardTestMarker"), json!("still here"));

    // Back on the list, the row says so too; then a picture of the board.
    eval(&tab, "location.hash = '#/'");
    until(&tab, &state, json!("cancelled"));
    let newer = trigger(&serving, "fix the flaky test");
    until(&tab, &format!("document.querySelector('tr[data-id=\"{newer}\"]') !== null"), json!(true));
    let png = tab
        .capture_screenshot(headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(profile.path().join("board.png"), &png).unwrap();
    if std::env::var_os("NIGHTSHIFT_BOARD_SCREENSHOT").is_some() {
        std::fs::write(crate::repo_root().join("docs/board.png"), &png).unwrap();
    }
}

const NIGHTLY: &str = "name: nightly\ntrigger:\n  cron: { schedule: \"0 3 * * *\" }\ntask:\n  agent: codex\n  \
                       repo: /srv/git/nightly\n  prompt: sweep\n";
const GUARDED: &str = "name: guarded\ntrigger:\n  webhook:\n    auth: { bearer: { token: env:BOARD_TEST_UNSET_TOKEN } }\n\
                       task:\n  agent: codex\n  repo: /srv/git/guarded\n  prompt: go\n";
const HOSTILE: &str = "<img src=x onerror=\"window.boardPwned=1\">";
/// A hook whose runs remember what their agent said: outside text, so untrusted memory.
const TIPSTER: &str = "name: tipster\ntrigger:\n  webhook:\n    auth: { bearer: { token: env:BOARD_TIP_TOKEN } }\n\
                       task:\n  agent: codex\n  repo: /srv/git/tips\n  prompt: go\n\
                       memory:\n  after_run: 'memory.set(\"tip\", run.memory_out.tip)'\n";

/// `(document.querySelector(selector) || {}).textContent`, or null.
fn text_of(selector: &str) -> String {
    format!("(document.querySelector({selector:?}) || {{}}).textContent || null")
}

#[test]
fn in_chromium_the_automations_and_queue_pages_show_fires_hook_problems_and_why_runs_wait() {
    let Some(chromium) = crate::requires::program("chromium", &["chromium", "chromium-browser"]) else { return };
    let serving = Serving::start_with_args(
        &[
            ("board-probe.yaml", AUTOMATION),
            ("nightly.yaml", NIGHTLY),
            ("guarded.yaml", GUARDED),
            ("tipster.yaml", TIPSTER),
        ],
        &[("BOARD_TIP_TOKEN", "tip-token")],
        &["--workers", "0", "--worker-token", WORKER_TOKEN],
    );
    let held = trigger(&serving, "held");
    let claim = serving.worker_post(WORKER_TOKEN, "/api/worker/claim", &json!({"worker": "w", "lease_seconds": 300}));
    assert_eq!(claim.body["run"]["id"], held.as_str(), "{:?}", claim.body);
    // A hook's run, ended by a worker with memory for `after_run`: an untrusted entry.
    let delivered = serving.post("/hooks/tipster", &[("authorization", "Bearer tip-token")], r#"{"n": 1}"#);
    assert_eq!(delivered.status, 202, "{:?}", delivered.body);
    let claim = serving.worker_post(WORKER_TOKEN, "/api/worker/claim", &json!({"worker": "tips", "lease_seconds": 60}));
    assert_eq!(claim.body["run"]["automation"], "tipster", "{:?}", claim.body);
    let (tip_run, epoch) =
        (claim.body["run"]["id"].as_str().unwrap().to_string(), claim.body["lease"]["epoch"].clone());
    let completion = json!({"epoch": epoch, "completion": {"outcome": "succeeded", "result": {"summary": "ok"}},
        "memory": {"tip": "from a stranger"}});
    let ended = serving.worker_post(WORKER_TOKEN, &format!("/api/worker/runs/{tip_run}/complete"), &completion);
    assert_eq!(ended.status, 204, "{:?}", ended.body);
    let run = trigger(&serving, "waits");
    let stored = client()
        .put(format!("{}/api/automations/board-probe/memory/note", serving.url))
        .bearer_auth(&serving.token)
        .json(&json!(HOSTILE))
        .send()
        .unwrap();
    assert!(stored.status().is_success(), "{}", stored.status());
    let status = serving.api_get("/api/status");
    let nightly = status["automations"].as_array().unwrap().iter().find(|a| a["name"] == "nightly").unwrap();
    let next_fire = nightly["triggers"][0]["next_fires"][0].as_str().unwrap().to_string();

    let profile = tempfile::tempdir().unwrap();
    let browser = launch(chromium, profile.path());
    let tab = browser.new_tab().unwrap();
    log_in(&tab, &serving);
    eval(&tab, "window.boardTestMarker = 'still here'");

    // Automations: the cron trigger's next fire, the hook's problem, the memory as text.
    tab.wait_for_element("#nav-automations").unwrap().click().unwrap();
    let first_fire = text_of("[data-automation=\"nightly\"] .next-fire time");
    until(&tab, &format!("({first_fire} || '').startsWith({next_fire:?})"), json!(true));
    let problem = text_of("[data-automation=\"guarded\"] .hook-problem");
    until(&tab, &format!("({problem} || '').includes('BOARD_TEST_UNSET_TOKEN')"), json!(true));
    let value = text_of("[data-automation=\"board-probe\"] tr[data-key=\"note\"] .memory-value");
    until(&tab, &value, json!(HOSTILE));
    let writer = text_of("[data-automation=\"board-probe\"] tr[data-key=\"note\"] td:nth-child(3)");
    assert_eq!(eval(&tab, &writer), json!("a person"));
    let trust = text_of("[data-automation=\"board-probe\"] tr[data-key=\"note\"] .badge");
    assert_eq!(eval(&tab, &trust), json!("trusted"), "a person's write is trusted");
    let tip = "[data-automation=\"tipster\"] tr[data-key=\"tip\"]";
    until(&tab, &text_of(&format!("{tip} .memory-value")), json!("from a stranger"));
    assert_eq!(eval(&tab, &text_of(&format!("{tip} .warning-badge"))), json!("untrusted"));
    assert_eq!(eval(&tab, &text_of(&format!("{tip} td:nth-child(3)"))), json!(tip_run));
    let recent = text_of(&format!("[data-automation=\"board-probe\"] li[data-id=\"{run}\"] .state"));
    assert_eq!(eval(&tab, &recent), json!("queued"));
    assert_eq!(eval(&tab, "document.querySelectorAll('#view img').length"), json!(0), "memory is text, not HTML");
    assert_eq!(eval(&tab, "window.boardPwned === undefined"), json!(true));

    // Workers & queue: the leased run and its worker, the queued run and why it waits; a new run appears from the feed.
    picture(&tab, profile.path(), "board-automations.png");
    tab.wait_for_element("#nav-queue").unwrap().click().unwrap();
    let why = text_of(&format!("#waiting tr[data-id=\"{run}\"] .why"));
    until(&tab, &why, json!("concurrency: 1 of 1 running in group board-probe"));
    let reason = text_of(&format!("#waiting tr[data-id=\"{run}\"] .reason"));
    assert_eq!(eval(&tab, &reason), json!("concurrency"));
    assert_eq!(eval(&tab, &text_of("#queue-depth")), json!("queue depth 1"));
    assert_eq!(eval(&tab, &text_of(&format!("#active tr[data-id=\"{held}\"] .state"))), json!("leased"));
    let holder = eval(&tab, &text_of(&format!("#active tr[data-id=\"{held}\"] td:nth-child(4)")));
    assert!(holder.as_str().unwrap().starts_with("w@"), "{holder}");
    let lease = eval(&tab, &text_of(&format!("#active tr[data-id=\"{held}\"] time")));
    assert!(lease.as_str().unwrap().contains("(in "), "the lease expires in the future: {lease}");
    assert_eq!(eval(&tab, &text_of("#local-workers")), json!("local workers: 0"));
    let worker = format!("#workers tr[data-worker={holder}]");
    assert_eq!(eval(&tab, &text_of(&format!("{worker} .badge"))), json!("remote"));
    assert_eq!(eval(&tab, &text_of(&format!("{worker} a[data-run]"))), json!(held));
    let newer = trigger(&serving, "also waits");
    until(&tab, &format!("document.querySelector('#waiting tr[data-id=\"{newer}\"]') !== null"), json!(true));
    until(&tab, &text_of("#queue-depth"), json!("queue depth 2"));
    assert_eq!(eval(&tab, "window.boardTestMarker"), json!("still here"), "the page was not reloaded");
    picture(&tab, profile.path(), "board-queue.png");
}

/// A picture of the page, kept in `dir` and, with NIGHTSHIFT_BOARD_SCREENSHOT, in docs/.
fn picture(tab: &headless_chrome::Tab, dir: &std::path::Path, name: &str) {
    let png = tab
        .capture_screenshot(headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(name), &png).unwrap();
    if std::env::var_os("NIGHTSHIFT_BOARD_SCREENSHOT").is_some() {
        std::fs::write(crate::repo_root().join("docs").join(name), &png).unwrap();
    }
}

/// A fan-out of two: its parent lists its children, each child links back with its role.
const FAN: &str = "name: fan\ntrigger:\n  manual: {}\ntask:\n  agent: codex\n  repo: /srv/git/api\n  prompt: split\n  \
                   fan_out:\n    items: '[#{prompt: \"a\", paths: [\"a/**\"]}, #{prompt: \"b\", paths: [\"b/**\"]}]'\n";

#[test]
fn in_chromium_a_parent_lists_its_children_and_a_child_names_its_parent() {
    let Some(chromium) = crate::requires::program("chromium", &["chromium", "chromium-browser"]) else { return };
    let serving = Serving::start_with_args(&[("fan.yaml", FAN)], &[], &["--workers", "0"]);
    let answer = serving.api_post("/api/automations/fan/run", &json!({}));
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let parent = answer.body["runs"][0]["run"].as_str().unwrap().to_string();
    let children: Vec<String> = serving.api_get(&format!("/api/runs/{parent}"))["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 2);

    let profile = tempfile::tempdir().unwrap();
    let browser = launch(chromium, profile.path());
    let tab = browser.new_tab().unwrap();
    log_in(&tab, &serving);
    eval(&tab, &format!("location.hash = '#/runs/{parent}'"));
    for (n, child) in children.iter().enumerate() {
        let row = format!("#children li[data-id=\"{child}\"]");
        until(&tab, &text_of(&row), json!(format!("{child} child {} queued", n + 1)));
    }
    tab.wait_for_element(&format!("#children a[data-run=\"{}\"]", children[1])).unwrap().click().unwrap();
    until(&tab, &text_of("#run-parent"), json!(format!("{parent} (child 2)")));
}

#[test]
fn a_summary_page_of_runs_has_what_the_list_shows_and_not_the_task() {
    let serving = start();
    let run = trigger(&serving, "summed up");
    let page = serving.api_get("/api/runs?limit=1&view=summary");
    let first = &page[0];
    assert_eq!(first["id"], run.as_str());
    assert_eq!(first["state"], "queued");
    assert_eq!(first["automation"], "board-probe");
    assert!(first["event_ids"][0].as_str().unwrap().starts_with("manual:"), "{first:#}");
    assert_eq!(
        first["task"],
        json!({"branch": serving.api_get(&format!("/api/runs/{run}"))["run"]["task"]["branch"], "repo": "/srv/git/api"})
    );
    assert!(first.get("flow").is_none() && first["task"].get("prompt").is_none(), "no prompt, no flow: {first:#}");
    let full = serving.api_get("/api/runs?limit=1");
    assert!(full[0]["task"]["prompt"].as_str().unwrap().contains("summed up"));
    let unknown = client().get(format!("{}/api/runs?view=everything", serving.url)).bearer_auth(&serving.token).send();
    assert_eq!(unknown.unwrap().status(), 400);
}
