//! Parallel agent work end to end (docs/parallel.md): a real `nightshift serve` with its
//! local workers, a real git repository as the remote and deterministic fixture agents.
//! Best-of-N picks the smallest attempt that passes its check and pushes only that;
//! a verifier that fails once gives a second author round carrying its findings, one
//! that always fails ends the run after `max_rounds`; a fan-out of five with
//! `max_concurrent: 2` never runs more than two children at once, serialises the two
//! whose paths overlap, and its join's branch holds every child's commits with the
//! conflict handed to the join agent; cancelling a parent stops its running children.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::follow_ups::nightshift;
use super::git::{commit_all, git};
use super::serving::Serving;
use super::workers::{record, trigger, wait_for};

/// The fixture agent: `agent.sh MODE PROMPT_FILE`. Every mode commits what it wrote and
/// prints a summary; the verifier and the join also write their answer or prompt.
const AGENT: &str = r#"#!/bin/sh
set -e
mode="$1"; prompt="$2"
commit() {
  git add -A
  git -c user.name=Agent -c user.email=agent@example.com commit -qm "$mode: $NIGHTSHIFT_RUN_ID"
}
case "$mode" in
  small) echo "one line" > fix.txt; commit ;;
  big) seq 1 40 > fix.txt; commit ;;
  broken) echo "broken" > fix.txt; touch BROKEN; commit ;;
  author)
    if grep -q "still says bad" "$prompt"; then echo good > answer.txt; else echo bad > answer.txt; fi
    echo "$NIGHTSHIFT_RUN_ID" > "round-$NIGHTSHIFT_RUN_ID.txt"
    commit ;;
  verify-once)
    if grep -q bad answer.txt; then
      echo '{"verdict":"fail","findings":["answer.txt still says bad"]}' > "$NIGHTSHIFT_ANSWER"
    else
      echo '{"verdict":"pass","findings":[]}' > "$NIGHTSHIFT_ANSWER"
    fi ;;
  verify-never) echo '{"verdict":"fail","findings":["nothing is ever good enough"]}' > "$NIGHTSHIFT_ANSWER" ;;
  child)
    # The prompt's first word names the file the child owns.
    file=$(head -n 1 "$prompt" | cut -d' ' -f1)
    mkdir -p "$(dirname "$file")"
    echo "$NIGHTSHIFT_RUN_ID" > "$file"
    commit ;;
  join) cp "$prompt" join-prompt.txt; echo resolved > shared/conflict.txt; commit ;;
  sleep) touch "$PIDS/$NIGHTSHIFT_RUN_ID"; exec sleep 6017 ;;
esac
echo '{"type":"summary","text":"'"$mode"' did its part in '"$NIGHTSHIFT_RUN_ID"'"}'
"#;

/// The modes above, each a profile of its own.
const MODES: [&str; 9] = ["small", "big", "broken", "author", "verify-once", "verify-never", "child", "join", "sleep"];

/// How long a test waits for anything.
const PATIENCE: Duration = Duration::from_secs(120);

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream");
        std::fs::create_dir_all(upstream.join("shared")).unwrap();
        std::fs::write(upstream.join("shared/conflict.txt"), "base\n").unwrap();
        git(&upstream, &["init", "-q", "--initial-branch=main"]);
        commit_all(&upstream, "initial");
        std::fs::write(dir.path().join("agent.sh"), AGENT).unwrap();
        std::fs::create_dir_all(dir.path().join("pids")).unwrap();
        World { dir }
    }

    fn upstream(&self) -> PathBuf {
        self.dir.path().join("upstream")
    }

    fn pids(&self) -> PathBuf {
        self.dir.path().join("pids")
    }

    fn project(&self) -> PathBuf {
        let agent = self.dir.path().join("agent.sh");
        let profiles: serde_json::Map<String, Value> = MODES
            .iter()
            .map(|mode| {
                let profile = json!({
                    "command": ["sh", agent, mode, "{prompt_file}"],
                    "output": "generic",
                    "env": { "PIDS": self.pids() },
                    "sandbox": { "paths": [{ "path": self.dir.path(), "writable": true }] },
                });
                (mode.to_string(), profile)
            })
            .collect();
        let path = self.dir.path().join("nightshift.yaml");
        std::fs::write(&path, serde_yaml::to_string(&json!({ "profiles": profiles })).unwrap()).unwrap();
        path
    }

    fn serve(&self, files: &[(&str, &str)]) -> Serving {
        let project = self.project();
        Serving::start_with_args(
            files,
            &[],
            &["--config", project.to_str().unwrap(), "--work-dir", "work", "--workers", "4"],
        )
    }

    /// A manual automation on the upstream with `task` added under `task:`.
    fn automation(&self, name: &str, agent: &str, task: &str) -> String {
        format!(
            "name: {name}\ntrigger: {{ manual: {{}} }}\ntask:\n  agent: {agent}\n  repo: {repo}\n  base: main\n  \
             branch: \"nightshift/{name}-{{{{ event.n }}}}\"\n  push: true\n  prompt: \"Fix it\"\n{task}",
            repo = self.upstream().display()
        )
    }

    /// The upstream's branches other than `main`.
    fn branches(&self) -> Vec<String> {
        git(&self.upstream(), &["for-each-ref", "--format=%(refname:short)", "refs/heads"])
            .lines()
            .filter(|name| *name != "main")
            .map(str::to_string)
            .collect()
    }

    fn file_on(&self, branch: &str, path: &str) -> String {
        git(&self.upstream(), &["show", &format!("{branch}:{path}")])
    }
}

/// The run's children as the API lists them, in creation order.
fn children(server: &Serving, parent: &str) -> Vec<Value> {
    record(server, parent)["children"].as_array().cloned().unwrap_or_default()
}

fn child_ids(server: &Serving, parent: &str, role: &str) -> Vec<String> {
    children(server, parent)
        .iter()
        .filter(|child| child["role"] == role)
        .map(|child| child["id"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `text` appears in `prompt` only between untrusted-data markers.
fn fenced(prompt: &str, text: &str) -> bool {
    let Some(at) = prompt.find(text) else { return false };
    let opened = prompt[..at].rfind("<untrusted-data");
    let closed = prompt[..at].rfind("</untrusted-data");
    opened.is_some() && closed.is_none_or(|closed| Some(closed) < opened) && prompt[at..].contains("</untrusted-data")
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap_or_else(|| panic!("a time: {value}")).parse().unwrap()
}

fn is_ancestor(repo: &Path, older: &str, newer: &str) -> bool {
    std::process::Command::new("git")
        .current_dir(repo)
        .args(["merge-base", "--is-ancestor", older, newer])
        .status()
        .unwrap()
        .success()
}

#[test]
fn best_of_three_picks_the_smallest_attempt_that_passes_its_check_and_pushes_only_it() {
    let world = World::new();
    let attempts = "  attempts:\n    count: 3\n    profiles: [broken, big, small]\n    check: \"test ! -e BROKEN\"\n";
    let automation = world.automation("best", "small", attempts);
    let server = world.serve(&[("best.yaml", &automation)]);
    let parent = trigger(&server, "best", 1);
    let done = wait_for(&server, &parent, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{}", server.log());

    let attempts = child_ids(&server, &parent, "attempt");
    assert_eq!(attempts.len(), 3, "{done:#}");
    let pick = &done["run"]["result"]["details"]["pick"];
    assert_eq!(pick["winner"]["run"], attempts[2].as_str(), "the small attempt wins: {pick:#}");
    let said = pick.to_string();
    assert!(said.contains("check"), "the broken attempt is discarded by its check: {pick:#}");
    assert!(said.contains("larger") || said.contains("lines"), "the big one lost on size: {pick:#}");

    // Only the parent's branch reached the remote, holding the small attempt's change.
    let branch = done["run"]["task"]["branch"].as_str().unwrap();
    assert_eq!(world.branches(), vec![branch.to_string()]);
    assert_eq!(world.file_on(branch, "fix.txt"), "one line");
    let held =
        record(&server, &attempts[2])["run"]["result"]["details"]["staging"]["held"].as_str().unwrap().to_string();
    assert_eq!(git(&world.upstream(), &["rev-parse", branch]), held, "the winner's commit, as held");

    // `nightshift show` draws the tree and the pick's reasons; a child names its parent.
    let shown = String::from_utf8_lossy(&nightshift(&server, &["show", &parent]).stdout).to_string();
    for (n, attempt) in attempts.iter().enumerate() {
        assert!(shown.contains(&format!("{attempt:<6} attempt {:<4} succeeded", n + 1)), "{shown}");
    }
    assert!(shown.contains(&format!("{:<6} the smallest change", attempts[2])), "{shown}");
    assert!(shown.contains(&format!("{:<6} check failed", attempts[0])), "{shown}");
    let child = String::from_utf8_lossy(&nightshift(&server, &["show", &attempts[1]]).stdout).to_string();
    assert!(child.contains(&format!("parent      {parent} (its attempt 2)")), "{child}");
}

#[test]
fn a_verifier_that_fails_once_gives_a_second_author_round_with_its_findings() {
    let world = World::new();
    let verify = "  verify:\n    profile: verify-once\n    max_rounds: 3\n";
    let automation = world.automation("checked", "author", verify);
    let server = world.serve(&[("checked.yaml", &automation)]);
    let parent = trigger(&server, "checked", 1);
    let done = wait_for(&server, &parent, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{}", server.log());

    let roles: Vec<String> =
        children(&server, &parent).iter().map(|child| child["role"].as_str().unwrap().to_string()).collect();
    assert_eq!(roles, ["author", "verify", "author", "verify"], "{done:#}");
    let authors = child_ids(&server, &parent, "author");
    let first = record(&server, &authors[0]);
    let second = record(&server, &authors[1]);
    let prompt = second["run"]["task"]["prompt"].as_str().unwrap();
    assert!(fenced(prompt, "answer.txt still says bad"), "the findings are fenced as untrusted: {prompt}");
    assert!(!first["run"]["task"]["prompt"].as_str().unwrap().contains("still says bad"));

    // One line of commits: the second round built on the first round's commit.
    let branch = done["run"]["task"]["branch"].as_str().unwrap();
    assert_eq!(world.branches(), vec![branch.to_string()]);
    assert_eq!(world.file_on(branch, "answer.txt"), "good");
    let first_held = first["run"]["result"]["details"]["staging"]["held"].as_str().unwrap();
    assert!(is_ancestor(&world.upstream(), first_held, branch), "round 1's commit is under round 2's");
}

#[test]
fn a_verifier_that_always_fails_ends_the_run_after_max_rounds_with_its_findings() {
    let world = World::new();
    let verify = "  verify:\n    profile: verify-never\n    max_rounds: 2\n";
    let automation = world.automation("never", "author", verify);
    let server = world.serve(&[("never.yaml", &automation)]);
    let parent = trigger(&server, "never", 1);
    let done = wait_for(&server, &parent, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "failed", "{done:#}");
    assert_eq!(child_ids(&server, &parent, "author").len(), 2);
    assert_eq!(child_ids(&server, &parent, "verify").len(), 2);
    assert!(done.to_string().contains("nothing is ever good enough"), "the findings are recorded: {done:#}");
    assert!(world.branches().is_empty(), "nothing was pushed: {:?}", world.branches());
}

#[test]
fn a_fan_out_runs_at_most_max_concurrent_serialises_overlaps_and_joins_every_child() {
    let world = World::new();
    // Five children: three own a directory each; the last two both own shared/, so they
    // wait for each other, and both change shared/conflict.txt, so their merge conflicts.
    let fan_out = r#"  fan_out:
    max_concurrent: 2
    items: |
      let items = [];
      for name in ["a", "b", "c"] {
        items.push(#{ prompt: `${name}/out.txt from ${name}`, paths: [`${name}/**`] });
      }
      items.push(#{ prompt: "shared/conflict.txt first", paths: ["shared/**"] });
      items.push(#{ prompt: "shared/conflict.txt second", paths: ["shared/**"] });
      items
    join:
      when: all_succeeded
      profile: join
      prompt: "Assemble the children's work."
"#;
    let automation = world.automation("fan", "child", fan_out);
    let server = world.serve(&[("fan.yaml", &automation)]);
    let parent = trigger(&server, "fan", 1);
    let done = wait_for(&server, &parent, &["succeeded", "failed"]);
    assert_eq!(done["run"]["state"], "succeeded", "{done:#}\n{}", server.log());

    let kids = child_ids(&server, &parent, "child");
    assert_eq!(kids.len(), 5);
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = kids
        .iter()
        .map(|id| {
            let run = record(&server, id)["run"].clone();
            (time(&run["started_at"]), time(&run["finished_at"]))
        })
        .collect();
    // The most children running at any start.
    let most = spans.iter().map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count()).max();
    assert!(most.unwrap() <= 2, "at most two at once: {spans:?}");
    let (fourth, fifth) = (spans[3], spans[4]);
    assert!(fourth.1 <= fifth.0 || fifth.1 <= fourth.0, "overlapping paths never run together: {spans:?}");

    // The join's branch, pushed as the parent's, holds every child's commit; the conflict
    // between the two shared/ children reached the join agent.
    let branch = done["run"]["task"]["branch"].as_str().unwrap();
    assert_eq!(world.branches(), vec![branch.to_string()]);
    for kid in &kids {
        let held = record(&server, kid)["run"]["result"]["details"]["staging"]["held"].as_str().unwrap().to_string();
        assert!(is_ancestor(&world.upstream(), &held, branch), "{kid}'s commit is on the joined branch");
    }
    for name in ["a", "b", "c"] {
        assert!(world.file_on(branch, &format!("{name}/out.txt")).starts_with('r'));
    }
    let join_prompt = world.file_on(branch, "join-prompt.txt");
    assert!(join_prompt.contains("shared/conflict.txt"), "the join agent was told of the conflict: {join_prompt}");
    assert_eq!(world.file_on(branch, "shared/conflict.txt"), "resolved");
}

#[test]
fn cancelling_a_parent_stops_its_running_children() {
    let world = World::new();
    let fan_out = "  fan_out:\n    max_concurrent: 2\n    items: '[#{prompt: \"x\", paths: [\"x/**\"]}, #{prompt: \"y\", paths: [\"y/**\"]}]'\n";
    let automation = world.automation("long", "sleep", fan_out);
    let server = world.serve(&[("long.yaml", &automation)]);
    let parent = trigger(&server, "long", 1);

    // Both children's agents are running (each left a mark, then sleeps 6017 s: a
    // number no other test sleeps, so `pgrep` finds only these).
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_dir(world.pids()).unwrap().count() < 2 {
        assert!(Instant::now() < deadline, "the children never started:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let asked = Instant::now();
    let answer = server.api_post(&format!("/api/runs/{parent}/cancel"), &json!({ "reason": "enough" }));
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    for kid in child_ids(&server, &parent, "child") {
        assert_eq!(wait_for(&server, &kid, &["cancelled"])["run"]["state"], "cancelled");
    }
    // The agents are gone within a few heartbeats (one a second).
    let sleeping = || {
        let found = std::process::Command::new("pgrep").args(["-f", "sleep 6017"]).output().unwrap();
        !found.stdout.is_empty()
    };
    while sleeping() {
        assert!(asked.elapsed() < Duration::from_secs(30), "children's agents still run");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("children stopped {:?} after the parent was cancelled", asked.elapsed());
    assert_eq!(record(&server, &parent)["run"]["state"], "cancelled");
}
