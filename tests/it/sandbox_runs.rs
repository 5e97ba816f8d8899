//! The sandbox through `nightshift serve`: a run's setup reaches the registry its policy
//! allows, while its agent, with an empty policy, reaches nothing and cannot read the
//! engine's environment, its data directory and API token, another run's workspace or
//! the automations directory, nor write an automation there; what its profile allows (its
//! login state, its credential, its model API) it gets, and the timeline says so. Both
//! the outcomes and the recorded decisions are checked, with `serve` run by the caller and
//! again by uid 65534 (its directories and repositories that user's own).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::git::{commit_all, git};
use super::serving::Serving;
use super::workers::{log_text, trigger, wait_for};
use crate::requires;
use crate::sandbox_jail::{As, command_as, users};

/// What the hostile agent tries; it reports each outcome on a line of its own. (Its braces
/// are doubled: a profile's command reads `{name}` as a placeholder.)
const PROBE: &str = r#"
echo "proxy: $(curl -sS -p http://index.crates.io:443/agent 2>&1 | head -c 120)"
cat /proc/$ENGINE_PID/environ >/dev/null 2>&1 && echo "environ: read" || echo "environ: unreadable"
cat $DATA_DIR/serve.json >/dev/null 2>&1 && echo "serve.json: read" || echo "serve.json: unreadable"
echo "data holds: $(ls $DATA_DIR 2>&1 | tr '\n' ' ')"
ls $AUTOMATIONS >/dev/null 2>&1 && echo "automations: listed" || echo "automations: unlisted"
(echo 'name: planted' > $AUTOMATIONS/planted.yaml) 2>/dev/null && echo "automation write: written" || echo "automation write: refused"
cat $DATA_DIR/work/workspaces/r999/secret.txt >/dev/null 2>&1 && echo "other workspace: read" || echo "other workspace: unreadable"
echo "model: $(curl -sS http://model.test/v1 2>&1 | head -c 60)"
echo "login: $(cat $LOGIN_DIR/token 2>&1)"
[ -n "$MODEL_KEY" ] && echo "model key: set" || echo "model key: unset"
echo '{{"type":"summary","text":"probed"}}'
"#;

/// A loopback server standing in for the registry; remembers each request line.
fn registry() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut connection in listener.incoming().flatten().take(20) {
            connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && connection.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            log.lock().unwrap().push(String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string());
            let _ =
                connection.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nregistry\n");
        }
    });
    (port, seen)
}

/// A repository of one commit (a README) at `dir/upstream`, which runs work on.
fn repository_in(dir: &std::path::Path) -> std::path::PathBuf {
    let upstream = dir.join("upstream");
    std::fs::create_dir_all(&upstream).unwrap();
    std::fs::write(upstream.join("README.md"), "fixture\n").unwrap();
    git(&upstream, &["init", "-q"]);
    commit_all(&upstream, "initial");
    upstream
}

fn policy_records(record: &Value) -> Vec<Value> {
    record["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "policy" && a["data"].is_object())
        .map(|a| a["data"].clone())
        .collect()
}

#[test]
fn setup_reaches_what_its_policy_allows_and_the_agent_reaches_nothing_of_the_engine() {
    if requires::program("curl", &["curl"]).is_none() {
        return;
    }
    for who in users() {
        probe_as(who);
    }
}

fn probe_as(who: As) {
    let world = tempfile::tempdir().unwrap();
    let upstream = repository_in(world.path());
    let (port, seen) = registry();

    let automation = format!(
        r#"name: probe
trigger: {{ manual: {{}} }}
task:
  agent: hostile
  repo: {repo}
  base: main
  branch: "nightshift/probe/{{{{ event.n }}}}"
  setup: ["curl -sSf -p http://index.crates.io:443/setup"]
  network:
    setup:
      allow: [{{ preset: rust }}]
  prompt: probe
"#,
        repo = upstream.display()
    );
    // serve.json (with the pid) appears once the server is up; the agent's environment
    // names what it must not reach.
    let project = world.path().join("nightshift.yaml");
    let login = world.path().join("login");
    std::fs::create_dir_all(&login).unwrap();
    std::fs::write(login.join("token"), "logged-in\n").unwrap();
    let write_project = |pid: &str, data: &str, automations: &str| {
        let project_yaml = serde_json::json!({
            "profiles": { "hostile": {
                "command": ["sh", "-c", PROBE],
                "env": { "ENGINE_PID": pid, "DATA_DIR": data, "AUTOMATIONS": automations, "LOGIN_DIR": login },
                "output": "generic",
                "sandbox": {
                    "paths": [{ "path": login }],
                    "network": [{ "domain": "model.test", "ports": [80] }],
                    "env": ["MODEL_KEY", "UNSET_MODEL_KEY"],
                },
            }}
        });
        std::fs::write(&project, serde_yaml::to_string(&project_yaml).unwrap()).unwrap();
    };
    write_project("0", "/nonexistent", "/nonexistent");
    who.hand_over(world.path());
    let (registry_name, model_name) =
        (format!("index.crates.io=127.0.0.1:{port}"), format!("model.test=127.0.0.1:{port}"));
    let server = Serving::start_as(
        who,
        &[("probe.yaml", &automation)],
        &[("MODEL_KEY", "mk-123")],
        &[
            "--config",
            project.to_str().unwrap(),
            "--workers",
            "1",
            "--egress-resolve",
            &registry_name,
            "--egress-resolve",
            &model_name,
        ],
    );
    let discovery: Value =
        serde_json::from_str(&std::fs::read_to_string(server.data.join("serve.json")).unwrap()).unwrap();
    let pid = discovery["pid"].to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find_map(|line| line.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    // SAFETY: geteuid cannot fail.
    let expected = if who == As::Nobody { 65534 } else { unsafe { libc::geteuid() } };
    assert_eq!(uid, expected.to_string(), "{who:?}: serve runs as {uid}");
    write_project(&pid, server.data.to_str().unwrap(), server.automations.to_str().unwrap());
    // Another run's workspace, with something in it.
    let other = server.data.join("work/workspaces/r999");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "another run's work\n").unwrap();
    who.hand_over(&server.data.join("work"));
    // The project file changed: wait until the server has the new profile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server.log().contains("automations reloaded") {
        assert!(std::time::Instant::now() < deadline, "the server never reloaded: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(server.get("/healthz").body["sandbox"], "on");
    let run = trigger(&server, "probe", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed", "timed_out"]);
    let log = log_text(&server, &run);
    let why = format!("{who:?}: {done:#}\n{log}");
    assert_eq!(done["run"]["state"], "succeeded", "{why}");
    for line in [
        "environ: unreadable",
        "serve.json: unreadable",
        "automations: unlisted",
        "automation write: refused",
        "other workspace: unreadable",
        "model: registry",
        "login: logged-in",
        "model key: set",
    ] {
        assert!(log.lines().any(|l| l == line), "no line `{line}`: {why}");
    }
    assert!(log.contains("proxy: curl: (56) CONNECT tunnel failed, response 403"), "{why}");
    let data_holds = log.lines().find(|l| l.starts_with("data holds:")).unwrap();
    assert!(!data_holds.contains("serve.json") && !data_holds.contains("store"), "{why}");
    assert!(!server.automations.join("planted.yaml").exists());

    let records = policy_records(&done);
    let setup = records.iter().find(|r| r["phase"] == "setup" && r["host"] == "index.crates.io").expect(&why);
    assert_eq!((setup["allowed"].clone(), setup["port"].clone()), (Value::Bool(true), 443.into()), "{why}");
    assert!(setup["rule"].as_str().unwrap().contains("preset rust"), "{why}");
    let agent = records.iter().find(|r| r["phase"] == "agent" && r["host"] == "index.crates.io").expect(&why);
    assert_eq!((agent["allowed"].clone(), agent["rule"].clone()), (Value::Bool(false), "no rule".into()), "{why}");
    let model = records.iter().find(|r| r["phase"] == "agent" && r["host"] == "model.test").expect(&why);
    assert_eq!(
        (model["allowed"].clone(), model["rule"].clone()),
        (Value::Bool(true), "model.test (profile hostile)".into()),
        "{why}"
    );
    let note = format!(
        "agent profile hostile: brings {}; passes MODEL_KEY; would pass UNSET_MODEL_KEY (unset here); allows model.test:80",
        login.display()
    );
    let texts: Vec<&str> = done["activities"].as_array().unwrap().iter().filter_map(|a| a["text"].as_str()).collect();
    assert!(texts.contains(&note.as_str()), "{who:?}: no `{note}` in {texts:#?}");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["GET /setup HTTP/1.1", "GET /v1 HTTP/1.1"],
        "{who:?}: the registry saw only the setup's and the model's"
    );
}

/// Where the kernel refuses the jail, `serve` and `worker` refuse to run phases: they
/// exit at start saying why and how to allow it. `--sandbox off` starts, loudly.
#[test]
fn serve_and_worker_refuse_to_start_where_no_jail_can_be_built() {
    let Some(unshare) = requires::program("util-linux", &["unshare"]) else { return };
    for who in users() {
        refused_as(who, &unshare);
    }
}

fn refused_as(who: As, unshare: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let automations = dir.path().join("automations");
    std::fs::create_dir_all(&automations).unwrap();
    who.hand_over(dir.path());
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // A user namespace whose limit on nested ones is 0, as on a machine that refuses them.
    let refused = |args: &[&str]| {
        let script = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\"";
        let output = command_as(who, unshare)
            .args(["-Ur", "sh", "-c", script, env!("CARGO_BIN_EXE_nightshift")])
            .args(args)
            .current_dir(dir.path())
            .env("NIGHTSHIFT_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let automations_arg = automations.to_str().unwrap();
    // Without local workers it runs no phase, so it starts (remote workers bring jails).
    let mut only_remote = command_as(who, unshare)
        .args(["-Ur", "sh", "-c", "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_nightshift"))
        .args(["serve", "--workers", "0", "--dir", automations_arg, "--data", data, "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("NIGHTSHIFT_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let serve_file = std::path::Path::new(data).join("serve.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !serve_file.exists() && only_remote.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let exited = only_remote.try_wait().unwrap();
    let _ = only_remote.kill();
    let _ = only_remote.wait();
    assert!(exited.is_none() && serve_file.exists(), "{who:?}: serve --workers 0 did not start: {exited:?}");
    std::fs::remove_dir_all(data).unwrap();
    let serve = ["serve", "--dir", automations_arg, "--data", data, "--listen", "127.0.0.1:0"];
    let (status, stderr) = refused(&serve);
    assert_eq!(status.code(), Some(1), "{who:?}: {stderr}");
    for needle in ["phases cannot be sandboxed on this machine", "max_user_namespaces", "--sandbox off"] {
        assert!(stderr.contains(needle), "{who:?}: no `{needle}` in: {stderr}");
    }
    let worker = ["worker", "--server", "http://127.0.0.1:9", "--token", "t"];
    let (status, stderr) = refused(&worker);
    assert_eq!(status.code(), Some(1), "{who:?}: {stderr}");
    assert!(stderr.contains("phases cannot be sandboxed on this machine"), "{who:?}: {stderr}");
}

/// What an agent writes in its workspace's `.git` never runs or is read on the host: the
/// worker's own `git status` afterwards sees the config the worker made, not a clean
/// filter (which would run a command outside the jail) or an include of a host file.
/// (The change keeps the file's size, so status must hash it, through the filter.)
#[test]
fn git_config_an_agent_writes_is_not_what_the_workers_git_reads() {
    for who in users() {
        plant_git_config_as(who);
    }
}

fn plant_git_config_as(who: As) {
    let world = tempfile::tempdir().unwrap();
    let upstream = repository_in(world.path());
    // Where a filter run by the host's git would leave its mark: nowhere the agent sees.
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran-on-the-host");
    let script = format!(
        "cd \"$NIGHTSHIFT_WORKSPACE\" && \
         git config filter.pw.clean \"sh -c 'id > {marker}; cat'\" && \
         git config include.path {host_file} && \
         echo '* filter=pw' > .gitattributes && \
         printf 'FIXTURE\\n' > README.md && \
         echo '{{{{\"type\":\"summary\",\"text\":\"planted\"}}}}'",
        marker = marker.display(),
        host_file = outside.path().join("included").display(),
    );
    // A host file the agent's config includes: it hides every untracked file from status
    // (an effect the test can see) and defines the filter too.
    let ignore_all = outside.path().join("ignore-all");
    std::fs::write(&ignore_all, "*\n").unwrap();
    let included = format!(
        "[core]\n\texcludesFile = {}\n[filter \"pw\"]\n\tclean = sh -c 'id > {}; cat'\n",
        ignore_all.display(),
        marker.display()
    );
    std::fs::write(outside.path().join("included"), included).unwrap();
    let project = world.path().join("nightshift.yaml");
    let profile =
        serde_json::json!({ "profiles": { "planter": { "command": ["sh", "-c", script], "output": "generic" } } });
    std::fs::write(&project, serde_yaml::to_string(&profile).unwrap()).unwrap();
    // The filter, were it run by the worker's git, could write its mark there.
    who.hand_over(world.path());
    who.hand_over(outside.path());
    let automation = format!(
        "name: planter\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: planter\n  repo: {}\n  base: main\n  \
         branch: \"nightshift/planter/{{{{ event.n }}}}\"\n  paths: [\"**\"]\n  prompt: plant\n",
        upstream.display()
    );
    let server = Serving::start_as(
        who,
        &[("planter.yaml", &automation)],
        &[],
        &["--config", project.to_str().unwrap(), "--workers", "1"],
    );
    let run = trigger(&server, "planter", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed", "timed_out"]);
    let log = log_text(&server, &run);
    assert_eq!(done["run"]["state"], "succeeded", "{who:?}: {done:#}\n{log}");
    assert!(
        !marker.exists(),
        "{who:?}: the agent's filter ran on the host: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    // The changes are seen through the worker's own config: the untracked .gitattributes
    // too, which the included host file would have hidden.
    assert_eq!(
        done["run"]["result"]["details"]["uncommitted"],
        serde_json::json!([".gitattributes", "README.md"]),
        "{who:?}: {done:#}"
    );
}

/// What a phase leaves that its own user may not delete (a read-only tree, as Go's module
/// cache is) goes with its workspace all the same, whoever runs `serve`.
#[test]
fn a_workspace_left_read_only_is_removed_after_the_run() {
    for who in users() {
        read_only_leftovers_as(who);
    }
}

fn read_only_leftovers_as(who: As) {
    let world = tempfile::tempdir().unwrap();
    let upstream = repository_in(world.path());
    let script = "cd \"$NIGHTSHIFT_WORKSPACE\" && mkdir -p cache/mod/pkg && echo x > cache/mod/pkg/file && \
                  chmod -R a-w cache && echo '{{\"type\":\"summary\",\"text\":\"left\"}}'";
    let project = world.path().join("nightshift.yaml");
    let profile =
        serde_json::json!({ "profiles": { "leaver": { "command": ["sh", "-c", script], "output": "generic" } } });
    std::fs::write(&project, serde_yaml::to_string(&profile).unwrap()).unwrap();
    who.hand_over(world.path());
    let automation = format!(
        "name: leaver\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: leaver\n  repo: {}\n  base: main\n  \
         branch: \"nightshift/leaver/{{{{ event.n }}}}\"\n  paths: [\"**\"]\n  prompt: leave\n",
        upstream.display()
    );
    let server = Serving::start_as(
        who,
        &[("leaver.yaml", &automation)],
        &[],
        &["--config", project.to_str().unwrap(), "--workers", "1"],
    );
    let run = trigger(&server, "leaver", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed", "timed_out"]);
    assert_eq!(done["run"]["state"], "succeeded", "{who:?}: {done:#}\n{}", log_text(&server, &run));
    // The workspace is removed once the run's completion is reported.
    let workspace = server.data.join("work/workspaces").join(&run);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while workspace.exists() || workspace.with_extension("layers").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{who:?}: {} is still there:\n{}",
            workspace.display(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
