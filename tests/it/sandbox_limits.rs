//! Per-phase limits on the real kernel: a jail's /tmp, /dev/shm and home fill up at their
//! size; as root, a fork bomb stops at the processes limit and a memory hog is killed at
//! its memory limit (through `nightshift sandbox run`, and through a run, whose reason
//! says so); as uid 65534, where no cgroup can be made, explicit limits refuse the phase
//! and the defaults run with a note that they were not enforced.

use std::path::Path;
use std::process::{Output, Stdio};

use super::git::{commit_all, git};
use super::sandbox_jail::{As, Layout, nightshift_as, text, users};
use super::serving::Serving;
use super::workers::{activity_texts, trigger, wait_for};
use crate::requires::{self, REQUIRE_JAIL};

/// `nightshift sandbox run` as `who` with `limits` flags, `sh -c SCRIPT` in `workspace`.
fn limited(who: As, workspace: &Path, limits: &[&str], script: &str) -> Output {
    let mut command = nightshift_as(who);
    command
        .args(["sandbox", "run", "--timeout", "120", "--workspace"])
        .arg(workspace)
        .args(limits)
        .args(["--", "sh", "-c", script])
        .current_dir("/")
        .stdin(Stdio::null());
    command.output().expect("run nightshift sandbox run")
}

/// Whether this test runs as root with cgroups it can write (else it is skipped).
fn cgroups_writable() -> bool {
    if !users().contains(&As::Caller) {
        return false;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        requires::skip(REQUIRE_JAIL, "not root: cgroup limits are not tried");
        return false;
    }
    if let Err(why) = nightshift::sandbox::limits::probe() {
        requires::skip(REQUIRE_JAIL, &format!("no cgroup can be made here: {why}"));
        return false;
    }
    true
}

fn why(output: &Output) -> String {
    format!("{}\nstdout: {}\nstderr: {}", output.status, text(&output.stdout), text(&output.stderr))
}

#[test]
fn writing_past_a_jails_tmpfs_size_fails_with_enospc() {
    for who in users() {
        let layout = Layout::new();
        let script = "for dir in /tmp /dev/shm \"$HOME\"; do \
                      head -c 2000000 /dev/zero > $dir/fill && echo \"$dir: written\" || echo \"$dir: full\"; done";
        let output = limited(who, &layout.workspace(), &["--tmpfs", "1M"], script);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{who:?}: {}", why(&output));
        for dir in ["/tmp", "/dev/shm"] {
            assert!(stdout.lines().any(|l| l == format!("{dir}: full")), "{who:?}: {}", why(&output));
        }
        assert_eq!(stdout.lines().filter(|l| l.ends_with(": full")).count(), 3, "{who:?}: {}", why(&output));
        assert!(text(&output.stderr).contains("No space left on device"), "{who:?}: {}", why(&output));
        // A write below the size still works.
        let output = limited(who, &layout.workspace(), &["--tmpfs", "4M"], "head -c 1000000 /dev/zero > /tmp/fill");
        assert!(output.status.success(), "{who:?}: {}", why(&output));
    }
}

#[test]
fn a_fork_bomb_stops_at_the_processes_limit_and_the_phase_ends() {
    if !cgroups_writable() {
        return;
    }
    let layout = Layout::new();
    // At most 500 forks; each child sleeps far longer than the phase's timeout, so only
    // the limit can end the loop early.
    let script = "i=0; while [ $i -lt 500 ]; do sleep 600 & i=$((i+1)); echo $i > started; done; echo all started";
    let output = limited(As::Caller, &layout.workspace(), &["--processes", "32"], script);
    let started: u32 = std::fs::read_to_string(layout.workspace().join("started")).unwrap().trim().parse().unwrap();
    assert!(started < 32, "{started} started: {}", why(&output));
    assert!(!text(&output.stdout).contains("all started"), "{}", why(&output));
    assert!(text(&output.stderr).contains("fork"), "{}", why(&output));
    // It ended on its own (the shell could not fork), not at its timeout (124).
    assert_ne!(output.status.code(), Some(124), "{}", why(&output));
    assert!(!output.status.success(), "{}", why(&output));
}

#[test]
fn a_memory_hog_is_killed_at_its_limit_and_the_phase_says_so() {
    if !cgroups_writable() {
        return;
    }
    let layout = Layout::new();
    // The shell keeps the 300 MB in memory; the limit is 64 MiB.
    let script = "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived";
    let output = limited(As::Caller, &layout.workspace(), &["--memory", "64M"], script);
    assert_eq!(output.status.code(), Some(137), "{}", why(&output));
    assert!(!text(&output.stdout).contains("survived"), "{}", why(&output));
    assert!(text(&output.stderr).contains("limits: the command was killed by its memory limit"), "{}", why(&output));
    // Under the limit, the same phase runs to its end.
    let output = limited(As::Caller, &layout.workspace(), &["--memory", "64M"], "echo fine");
    assert!(output.status.success(), "{}", why(&output));
    assert!(!text(&output.stderr).contains("memory limit"), "{}", why(&output));
}

#[test]
fn where_no_cgroup_can_be_made_explicit_limits_refuse_and_defaults_run_with_a_note() {
    if !users().contains(&As::Nobody) {
        return;
    }
    let layout = Layout::new();
    for flags in [&["--memory", "64M"][..], &["--processes", "32"], &["--cpu", "0.5"]] {
        let output = limited(As::Nobody, &layout.workspace(), flags, "touch ran");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(125), "{flags:?}: {}", why(&output));
        assert!(stderr.contains("cannot be enforced on this worker"), "{flags:?}: {}", why(&output));
        assert!(stderr.contains("Delegate=yes") && stderr.contains("as root"), "{flags:?}: {}", why(&output));
        assert!(!layout.workspace().join("ran").exists(), "{flags:?}: the command ran");
    }
    let output = limited(As::Nobody, &layout.workspace(), &[], "touch ran");
    assert!(output.status.success(), "{}", why(&output));
    assert!(text(&output.stderr).contains("limits: the default limits"), "{}", why(&output));
    assert!(text(&output.stderr).contains("were not enforced"), "{}", why(&output));
    assert!(layout.workspace().join("ran").exists());
}

#[test]
fn a_run_whose_setup_exceeds_its_memory_limit_fails_saying_so() {
    if !cgroups_writable() {
        return;
    }
    let world = tempfile::tempdir().unwrap();
    let upstream = world.path().join("upstream");
    std::fs::create_dir_all(&upstream).unwrap();
    std::fs::write(upstream.join("README.md"), "fixture\n").unwrap();
    git(&upstream, &["init", "-q"]);
    commit_all(&upstream, "initial");
    let automation = format!(
        r#"name: hog
trigger: {{ manual: {{}} }}
task:
  agent: local-audit
  repo: {repo}
  base: main
  branch: "nightshift/hog/{{{{ event.n }}}}"
  setup: ["x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"]
  limits: {{ memory: 64M, processes: 256 }}
  prompt: hog
"#,
        repo = upstream.display()
    );
    let server = Serving::start_with_args(&[("hog.yaml", &automation)], &[], &["--workers", "1"]);
    let run = trigger(&server, "hog", 1);
    let done = wait_for(&server, &run, &["succeeded", "failed", "timed_out"]);
    assert_eq!(done["run"]["state"], "failed", "{done:#}");
    let reason = done["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("was killed by its memory limit (64M)"), "{done:#}");
    assert!(activity_texts(&done, "policy").iter().all(|t| !t.contains("not enforced")), "{done:#}");
}
