//! The jail around a phase, through `nightshift sandbox run` as the caller and again as an
//! unprivileged user (65534), and through `run_phase`: what a phase can see, write and
//! reach, what it leaves behind, and a jail that cannot be built failing the phase.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift::sandbox::{NetnsSockets, SandboxSpec, jail};
use nightshift::worker::phase::{
    CancelToken, JailOptions, PhaseCommand, PhaseError, PhaseOptions, PhaseStatus, run_phase,
};

use crate::requires::{self, REQUIRE_JAIL};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_nightshift");

/// Who runs `nightshift sandbox run`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum As {
    /// The test's own user (root in CI).
    Caller,
    /// uid and gid 65534, through setpriv.
    Nobody,
}

/// The users to try, once the jail is known to work here; empty (the test skips) if not.
pub(crate) fn users() -> Vec<As> {
    let check = Command::new(BIN).args(["sandbox", "check"]).output().expect("run nightshift sandbox check");
    if !check.status.success() {
        requires::skip(REQUIRE_JAIL, &format!("the jail cannot be built here: {}", text(&check.stderr)));
        return Vec::new();
    }
    let mut users = vec![As::Caller];
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        requires::skip(REQUIRE_JAIL, "not root: the jail is not tried as uid 65534 (setpriv needs root)");
    } else if requires::program("util-linux", &["setpriv"]).is_some() {
        match unreachable_by_nobody(Path::new(BIN)) {
            Some(dir) => requires::skip(
                REQUIRE_JAIL,
                &format!("uid 65534 cannot reach {BIN}: {} is not world-executable (chmod o+x it)", dir.display()),
            ),
            None => users.push(As::Nobody),
        }
    }
    users
}

impl As {
    /// Makes `path` and everything under it this user's, and lets it (and so anyone) enter
    /// `path`, as a directory a person gives to the account that runs nightshift.
    pub(crate) fn hand_over(self, path: &Path) {
        if self == As::Caller {
            return;
        }
        chown_tree(path, NOBODY);
        let mode = std::fs::symlink_metadata(path).unwrap().permissions().mode();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
    }
}

/// uid and gid of `As::Nobody`.
const NOBODY: u32 = 65534;

fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), id);
        }
    }
}

/// The first of `bin` and its directories that others may not execute or enter.
fn unreachable_by_nobody(bin: &Path) -> Option<PathBuf> {
    bin.ancestors()
        .find(|path| std::fs::metadata(path).map_or(true, |m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// A directory both users can enter, holding a workspace anyone can write and a data
/// file next to it that the phase must not see.
pub(crate) struct Layout {
    pub(crate) root: tempfile::TempDir,
}

impl Layout {
    pub(crate) fn new() -> Layout {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let workspace = root.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(root.path().join("data.txt"), "data-outside-the-workspace\n").unwrap();
        std::fs::set_permissions(root.path().join("data.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        Layout { root }
    }

    pub(crate) fn workspace(&self) -> PathBuf {
        self.root.path().join("ws")
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data.txt")
    }
}

/// `nightshift` run as `who`.
pub(crate) fn nightshift_as(who: As) -> Command {
    command_as(who, Path::new(BIN))
}

/// `program` run as `who`.
pub(crate) fn command_as(who: As, program: &Path) -> Command {
    match who {
        As::Caller => Command::new(program),
        As::Nobody => {
            let mut command = Command::new("setpriv");
            command.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--"]);
            command.arg(program);
            command
        }
    }
}

/// `nightshift sandbox run --workspace WS -- sh -c SCRIPT` as `who`.
fn jail(who: As, workspace: &Path, script: &str) -> Output {
    let mut command = nightshift_as(who);
    command
        .args(["sandbox", "run", "--timeout", "60", "--workspace"])
        .arg(workspace)
        .args(["--", "sh", "-c", script])
        .current_dir("/")
        .stdin(Stdio::null());
    command.output().expect("run nightshift sandbox run")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `script` as each user and hands over the output, failing on a non-zero exit.
fn each_user(script: impl Fn(As, &Layout) -> String, check: impl Fn(As, &Layout, &str)) {
    for who in users() {
        let layout = Layout::new();
        let output = jail(who, &layout.workspace(), &script(who, &layout));
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "{who:?}: {}\nstdout: {stdout}\nstderr: {}",
            output.status,
            text(&output.stderr)
        );
        check(who, &layout, &stdout);
    }
}

/// A process that is killed when dropped.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_phase_cannot_read_another_process_environment() {
    let secret = format!("jail-secret-{}", std::process::id());
    let sleeper = Sleeper(Command::new("sleep").arg("1000").env("NIGHTSHIFT_JAIL_SECRET", &secret).spawn().unwrap());
    let pid = sleeper.0.id();
    let me = std::process::id();
    each_user(
        |_, _| {
            format!(
                "cat /proc/{pid}/environ /proc/{me}/environ; echo \"cat=$?\"; ls /proc/{pid} 2>&1 || echo no-such-pid"
            )
        },
        |who, _, stdout| {
            assert!(!stdout.contains(&secret), "{who:?}: {stdout}");
            assert!(stdout.contains("cat=1") && stdout.contains("no-such-pid"), "{who:?}: {stdout}");
        },
    );
    drop(sleeper);
}

/// The `THP_enabled` line of a /proc status file.
fn thp_enabled(status: &str) -> Option<&str> {
    status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(str::trim)
}

#[test]
fn the_engine_runs_without_huge_pages_and_a_phase_gets_the_system_setting_back() {
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let Some(system) = thp_enabled(&own).map(str::to_string) else {
        eprintln!("this kernel does not report THP_enabled; nothing to compare");
        return;
    };
    each_user(
        |_, _| "grep THP_enabled /proc/self/status; echo parent; grep THP_enabled /proc/$PPID/status".into(),
        |who, _, stdout| {
            let (phase, parent) = stdout.split_once("parent").unwrap_or_else(|| panic!("{who:?}: {stdout}"));
            assert_eq!(thp_enabled(phase), Some(system.as_str()), "{who:?}: the phase: {stdout}");
            assert_eq!(thp_enabled(parent), Some("0"), "{who:?}: the jail's nightshift process: {stdout}");
        },
    );
}

#[test]
fn a_phase_sees_its_workspace_but_not_the_data_next_to_it_nor_the_home() {
    // `sandbox run` gives the phase the caller's HOME path, empty.
    each_user(
        |_, layout| {
            format!(
                "echo seen > in-ws; cat in-ws; cat {data} || echo no-data; ls {parent}; echo \"home=$HOME\"; \
                 echo \"home-entries=$(ls -A \"$HOME\" | wc -l)\"; for d in /run /var /srv /mnt /media /home; do \
                 test -e $d && echo \"has $d\"; done; echo end",
                data = layout.data().display(),
                parent = layout.root.path().display(),
            )
        },
        |who, layout, stdout| {
            assert!(stdout.contains("seen\n") && stdout.contains("no-data\n"), "{who:?}: {stdout}");
            assert!(
                !stdout.contains("data-outside-the-workspace") && !stdout.contains("data.txt"),
                "{who:?}: {stdout}"
            );
            assert!(stdout.contains("home-entries=0\n"), "{who:?}: {stdout}");
            assert!(!stdout.contains("has /"), "{who:?}: {stdout}");
            assert_eq!(std::fs::read_to_string(layout.workspace().join("in-ws")).unwrap(), "seen\n");
        },
    );
}

#[test]
fn a_phase_writes_only_in_its_workspace_and_a_private_tmp() {
    let mark = format!("nightshift-jail-write-{}", std::process::id());
    each_user(
        |_, layout| {
            let parent = layout.root.path().display();
            format!(
                "echo t > /tmp/{mark} && echo ok-tmp; echo w > in-ws && echo ok-ws; \
                 echo e > /etc/{mark} || echo no-etc; echo u > /usr/{mark} || echo no-usr; \
                 echo r > /{mark} || echo no-root; echo p > {parent}/escaped; echo end"
            )
        },
        |who, layout, stdout| {
            for expected in ["ok-tmp", "ok-ws", "no-etc", "no-usr", "no-root", "end"] {
                assert!(stdout.contains(&format!("{expected}\n")), "{who:?}: {expected}: {stdout}");
            }
            assert!(layout.workspace().join("in-ws").exists());
            assert!(!layout.root.path().join("escaped").exists(), "{who:?} wrote next to the workspace");
            for path in [format!("/tmp/{mark}"), format!("/etc/{mark}"), format!("/usr/{mark}"), format!("/{mark}")] {
                assert!(!Path::new(&path).exists(), "{who:?} wrote {path} on the host");
            }
        },
    );
}

#[test]
fn a_daemon_started_by_a_phase_ends_with_it() {
    for (n, who) in users().into_iter().enumerate() {
        let layout = Layout::new();
        // The script spells the marker in two quoted halves, so only the daemon's argv
        // holds it whole.
        let (first, second) = ("nightshift-jail-daemon-", format!("{}-{n}", std::process::id()));
        let marker = format!("{first}{second}");
        let script = format!(
            "m=\"{first}\"\"{second}\"; setsid sh -c \"sleep 1000; : $m\" </dev/null >/dev/null 2>&1 & \
             for i in $(seq 200); do grep -qs \"$m\" /proc/[0-9]*/cmdline && echo daemon-up && break; sleep 0.05; done"
        );
        let output = jail(who, &layout.workspace(), &script);
        assert!(text(&output.stdout).contains("daemon-up"), "{who:?}: {}", text(&output.stderr));
        assert!(!running(&marker), "{who:?}: the daemon outlived its phase");
    }
}

/// Whether a process on the host has `marker` in its argv.
fn running(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|argv| text(&argv).contains(marker)))
}

#[test]
fn a_phase_has_only_loopback_and_cannot_change_its_routes() {
    if requires::program("iproute2", &["ip"]).is_none() {
        return;
    }
    each_user(
        |_, _| {
            "echo \"links=$(ip -o link | wc -l) $(ip -o link | cut -d: -f2 | tr -d ' ')\"; \
             ip route del local default table local; echo \"del=$?\"; \
             ip -6 route del local default table local; echo \"del6=$?\"; \
             ip route show table local | grep -c '^local default'"
                .to_string()
        },
        |who, _, stdout| {
            assert!(stdout.contains("links=1 lo\n"), "{who:?}: {stdout}");
            assert!(stdout.contains("del=2\n") && stdout.contains("del6=2\n"), "{who:?}: {stdout}");
            assert!(stdout.ends_with("1\n"), "{who:?}: {stdout}");
        },
    );
}

#[test]
fn connections_to_any_address_stay_inside_the_namespace() {
    if requires::program("iproute2", &["ip"]).is_none() || requires::program("perl-base", &["perl"]).is_none() {
        return;
    }
    // TEST-NET addresses, only ever inside the jail's namespace, where every address is
    // local: the connect lands on the captured listener, and the egress proxy (no rule
    // allows anything here) answers a plain-HTTP port's capture with its 403.
    let tcp = r#"perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(PeerAddr => "192.0.2.10:80", Timeout => 10);
        if (!$s) { print "tcp: failed $!\n"; exit }
        print $s "GET / HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n";
        my $n = sysread($s, my $b, 12);
        print "tcp: answered <$b>\n"'"#;
    let udp = r#"perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(PeerAddr => "192.0.2.1:53", Proto => "udp") or die "udp: $!";
        print defined(send($s, "x", 0)) ? "udp: sent\n" : "udp: failed $!\n"'"#;
    each_user(
        |_, _| format!("ip route get 192.0.2.10; ip route get 192.0.2.1; {tcp}; {udp}"),
        |who, _, stdout| {
            assert!(
                stdout.contains("local 192.0.2.10 dev lo") && stdout.contains("local 192.0.2.1 dev lo"),
                "{who:?}: {stdout}"
            );
            assert!(stdout.contains("tcp: answered <HTTP/1.1 403>\n"), "{who:?}: {stdout}");
            assert!(stdout.contains("udp: sent\n"), "{who:?}: {stdout}");
        },
    );
}

#[test]
fn a_phase_has_no_privileges_and_a_seccomp_filter() {
    if requires::program("perl-base", &["perl"]).is_none() {
        return;
    }
    // io_uring_setup is 425 on every architecture; AF_VSOCK is 40.
    let io_uring = r#"perl -e 'my $p = "\0" x 120; my $r = syscall(425, 1, $p); print "io_uring: $r ", $! + 0, "\n"'"#;
    let vsock = r#"perl -e 'socket(my $s, 40, 1, 0) ? print "vsock: opened\n" : print "vsock: ", $! + 0, "\n"'"#;
    each_user(
        |_, _| {
            format!(
                "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd|CapAmb|Seccomp):' /proc/self/status; {io_uring}; {vsock}"
            )
        },
        |who, _, stdout| {
            for line in [
                "NoNewPrivs:\t1",
                "CapEff:\t0000000000000000",
                "CapPrm:\t0000000000000000",
                "CapBnd:\t0000000000000000",
                "CapAmb:\t0000000000000000",
                "Seccomp:\t2",
            ] {
                assert!(stdout.contains(line), "{who:?}: {line}: {stdout}");
            }
            assert!(stdout.contains(&format!("io_uring: -1 {}\n", libc::EPERM)), "{who:?}: {stdout}");
            assert!(stdout.contains(&format!("vsock: {}\n", libc::EPERM)), "{who:?}: {stdout}");
        },
    );
}

/// A jailed phase through `run_phase`, its sockets served by nothing (counted).
fn jailed(workspace: &Path, script: &str, timeout: Duration) -> (PhaseCommand, PhaseOptions, Arc<Mutex<usize>>) {
    let served = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&served);
    let serve = move |sockets: NetnsSockets, _helper: u32| -> Box<dyn std::any::Any + Send> {
        *counter.lock().unwrap() += 1;
        Box::new(sockets)
    };
    let spec = SandboxSpec {
        workspace: workspace.to_path_buf(),
        run_dir: workspace.to_path_buf(),
        paths: Vec::new(),
        home: PathBuf::from("/home/nightshift"),
        capture_ports: vec![443],
        limits: Default::default(),
    };
    let command = PhaseCommand {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        dir: workspace.to_path_buf(),
        env: BTreeMap::new(),
        timeout,
        sandbox: Some(spec),
    };
    let options = PhaseOptions {
        grace: Duration::from_millis(200),
        jail: Some(JailOptions { helpers: Arc::new(jail::Helpers::cold(PathBuf::from(BIN))), serve: Arc::new(serve) }),
        ..PhaseOptions::default()
    };
    (command, options, served)
}

#[test]
fn helpers_started_ahead_run_phase_after_phase_each_with_its_own_environment_and_cgroup() {
    if users().is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cgroups = unsafe { libc::geteuid() } == 0 && nightshift::sandbox::limits::probe().is_ok();
    let (mut command, mut options, served) = jailed(dir.path(), "", Duration::from_secs(60));
    let helpers = Arc::new(jail::Helpers::warm(PathBuf::from(BIN)).unwrap());
    options.jail.as_mut().unwrap().helpers = Arc::clone(&helpers);
    // SAFETY: only this test's helper threads read the environment, never this variable.
    unsafe { std::env::set_var("NIGHTSHIFT_TEST_WORKER_ONLY", "leaked") };
    let mut cgroups_seen = Vec::new();
    // Limits that need a cgroup, which the parked helper's gets.
    let mut spec = command.sandbox.clone().unwrap();
    spec.limits.processes = Some(64);
    command.sandbox = Some(spec);
    for n in 0..3 {
        if cgroups {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !helpers.is_parked() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(helpers.is_parked(), "a helper is started ahead after the last phase ended");
        }
        command.env = BTreeMap::from([("N".to_string(), n.to_string())]);
        command.argv[2] = "echo \"n=$N home=$HOME tmp=$TMPDIR worker=${NIGHTSHIFT_TEST_WORKER_ONLY:-none}\"; \
                           grep -o 'nightshift-[0-9]*-[0-9]*' /proc/self/cgroup | sort -u"
            .to_string();
        let mut lines = Vec::new();
        let outcome =
            run_phase(&command, &options, &CancelToken::new(), |_, line| lines.push(line.to_string())).unwrap();
        assert_eq!(outcome.status, PhaseStatus::Exited(0), "{lines:?}");
        assert_eq!(lines[0], format!("n={n} home=/home/nightshift tmp=/tmp worker=none"));
        if cgroups {
            assert_eq!(lines.len(), 2, "one cgroup of the phase's own, in every hierarchy: {lines:?}");
            cgroups_seen.push(lines[1].clone());
        }
    }
    assert_eq!(*served.lock().unwrap(), 3);
    cgroups_seen.dedup();
    assert_eq!(cgroups_seen.len(), if cgroups { 3 } else { 0 }, "each phase has a cgroup of its own");
}

#[test]
fn a_jailed_phase_that_times_out_leaves_nothing_behind() {
    if users().is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("nightshift-jail-timeout-{}", std::process::id());
    let script =
        format!("setsid sh -c 'sleep 1000; : {marker}' </dev/null >/dev/null 2>&1 & echo \"home=$HOME\"; sleep 1000");
    let (command, options, served) = jailed(dir.path(), &script, Duration::from_millis(500));
    let mut lines = Vec::new();
    let outcome = run_phase(&command, &options, &CancelToken::new(), |_, line| lines.push(line.to_string())).unwrap();
    assert_eq!(outcome.status, PhaseStatus::TimedOut);
    assert_eq!(lines, ["home=/home/nightshift"]);
    assert_eq!(*served.lock().unwrap(), 1);
    // The outer `sh` holds the marker in its script too: both must be gone.
    assert!(!running(&marker), "a process of the phase outlived it");
}

#[test]
fn a_jail_that_cannot_be_built_fails_the_phase_and_runs_nothing() {
    if users().is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut command, options, served) = jailed(dir.path(), "touch ran", Duration::from_secs(60));
    let mut spec = command.sandbox.clone().unwrap();
    spec.paths.push(nightshift::sandbox::SandboxPath { path: dir.path().join("missing"), writable: false });
    command.sandbox = Some(spec);
    let error = run_phase(&command, &options, &CancelToken::new(), |_, _| {}).unwrap_err();
    assert!(matches!(error, PhaseError::Jail { .. }), "{error}");
    assert!(error.to_string().contains("missing"), "{error}");
    assert!(!dir.path().join("ran").exists());
    assert_eq!(*served.lock().unwrap(), 0, "a phase that never ran has nothing to serve");

    let no_helper = PhaseOptions { jail: None, ..options.clone() };
    let error = run_phase(&command, &no_helper, &CancelToken::new(), |_, _| {}).unwrap_err();
    assert!(matches!(error, PhaseError::Jail { .. }), "{error}");

    let (mut missing, options, _) = jailed(dir.path(), "", Duration::from_secs(60));
    missing.argv = vec!["nightshift-no-such-program".into()];
    let error = run_phase(&missing, &options, &CancelToken::new(), |_, _| {}).unwrap_err();
    assert!(matches!(error, PhaseError::Spawn { .. }), "{error}");
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn sandbox_check_says_ok_or_names_the_fix() {
    if users().is_empty() {
        return;
    }
    let ok = Command::new(BIN).args(["sandbox", "check"]).output().unwrap();
    assert!(ok.status.success() && text(&ok.stdout).starts_with("ok"), "{}", text(&ok.stderr));
    let Some(unshare) = requires::program("util-linux", &["unshare"]) else { return };
    // A user namespace whose limit on nested ones is 0, as on a machine that refuses them.
    let refused = Command::new(unshare)
        .args(["-Ur", "sh", "-c", "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" sandbox check", BIN])
        .output()
        .unwrap();
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unshare") && stderr.contains("kernel.apparmor_restrict_unprivileged_userns=0"),
        "{stderr}"
    );
    assert!(stderr.contains("user.max_user_namespaces"), "{stderr}");
}

/// A descriptor the caller leaves open without close-on-exec (a shell's `7<`, a
/// supervisor's pipe) does not reach the phase: through it the phase would read a host
/// file its jail hides.
#[test]
fn descriptors_the_worker_inherited_do_not_reach_the_phase() {
    for who in users() {
        let layout = Layout::new();
        let data = std::fs::File::open(layout.data()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&data);
        let mut command = nightshift_as(who);
        command
            .args(["sandbox", "run", "--timeout", "60", "--workspace"])
            .arg(layout.workspace())
            .args(["--", "sh", "-c", "ls /proc/self/fd | tr '\\n' ' '; echo; cat /proc/self/fd/7 2>&1 || true"])
            .current_dir("/")
            .stdin(Stdio::null());
        // SAFETY: dup2 between descriptors this process owns, in the child before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::dup2(fd, 7) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let output = command.output().unwrap();
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{who:?}: {}", text(&output.stderr));
        assert!(!stdout.contains("data-outside-the-workspace"), "{who:?}: the phase read the inherited file: {stdout}");
        let fds = stdout.lines().next().unwrap_or_default();
        assert_eq!(fds.trim(), "0 1 2 3", "{who:?}: the phase's descriptors (3 is ls's own directory): {stdout}");
    }
}

/// A root worker's jail is root on the host: under the system directories it shows what
/// others may read and nothing of what only root or its group may (a key, a 0640 config,
/// a 0700 directory), each left empty. The system directory is the test's own, beside the
/// real ones, so nothing is written to the host's /etc.
#[test]
fn a_root_jail_hides_what_only_root_may_read_in_the_system() {
    if users().is_empty() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        requires::skip(REQUIRE_JAIL, "not root: a jail hides system files only for a root worker");
        return;
    }
    // Not under /tmp, which the jail covers with its private tmpfs.
    let system = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = std::fs::canonicalize(system.path()).unwrap();
    let write = |name: &str, mode: u32| {
        std::fs::write(dir.join(name), format!("{name}-text\n")).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.join("private")).unwrap();
    std::fs::set_permissions(dir.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    write("public.txt", 0o644);
    write("secret.key", 0o600);
    write("group.conf", 0o640);
    write("private/inner", 0o644);

    let layout = Layout::new();
    let spec = SandboxSpec {
        workspace: layout.workspace(),
        run_dir: layout.workspace(),
        paths: Vec::new(),
        home: PathBuf::from("/home/nightshift"),
        capture_ports: Vec::new(),
        limits: Default::default(),
    };
    let mut systems: Vec<PathBuf> = jail::SYSTEM.iter().map(PathBuf::from).collect();
    systems.push(dir.clone());
    let script = "for f in public.txt secret.key group.conf private/inner; do echo \"$f: $(cat $f 2>&1)\"; done; \
                  echo \"private entries: $(ls -A private | wc -l)\"; echo \"etc: $(wc -l < /etc/passwd)\"";
    let mut command = jail::helper_command(Path::new(BIN));
    command.env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let argv = ["sh".to_string(), "-c".to_string(), script.to_string()];
    let jailed = jail::spawn_with_system(command, &spec, &argv, &dir, &systems).expect("start the jail");
    let output = jailed.child.wait_with_output().unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}\nstdout: {stdout}\nstderr: {}", output.status, text(&output.stderr));
    assert!(stdout.contains("public.txt: public.txt-text\n"), "{stdout}");
    for hidden in ["secret.key-text", "group.conf-text", "inner-text"] {
        assert!(!stdout.contains(hidden), "{hidden} showed in the jail: {stdout}");
    }
    assert!(stdout.contains("secret.key: \n") && stdout.contains("group.conf: \n"), "{stdout}");
    assert!(stdout.contains("private entries: 0\n"), "{stdout}");
    // The world-readable system is still there.
    assert!(!stdout.contains("etc: 0\n") && stdout.contains("etc: "), "{stdout}");
}
