//! The jail: user, mount, PID and network namespaces, no new privileges and a seccomp filter around one phase.
//!
//! The worker starts the nightshift binary again as `nightshift __sandbox-exec` (the
//! helper, `helper.rs`) with [`spawn`], sends it the phase's [`SandboxSpec`] and command
//! over a socket pair (`wire.rs`), and gets back the listeners of the phase's network
//! namespace ([`NetnsSockets`], `net.rs`) for the egress proxy to serve. The helper's PID 1
//! builds the filesystem (`fs.rs`); the command runs with no capabilities, no new
//! privileges and a seccomp filter (`lockdown.rs`). [`probe`] checks that the kernel
//! allows all of it. A root worker's jail hides what only root may read under the system
//! directories (`hidden.rs`). A worker keeps a helper started ahead, in a fresh cgroup
//! (`warm.rs`, [`Helpers`]), so a phase does not wait for the kernel to move a process
//! into its cgroup. docs/sandbox.md says what each layer stops.

mod fs;
mod helper;
mod hidden;
mod lockdown;
mod net;
mod warm;
mod wire;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::limits::{self, PhaseCgroup};
use super::{NetnsSockets, SandboxSpec};
use wire::{Answer, Request};

pub use helper::main as helper_main;
pub use warm::{Helpers, Refill};

/// The hidden subcommand that runs the helper.
pub const HELPER_ARG: &str = "__sandbox-exec";

/// The host directories every jail shows read-only, where present. Not /home, /root,
/// /run, /srv, /mnt, /media, /var.
pub const SYSTEM: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"];

/// The most capture ports a spec may name (each is two listeners, passed in one message).
pub const MAX_CAPTURE_PORTS: usize = 16;

/// How long the helper may take to answer: building a jail takes milliseconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a phase could not be started in its jail. The command never runs outside it.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the sandbox spec cannot be used: {0}")]
    Spec(String),
    #[error("cannot start the jail helper {helper}: {cause}")]
    Spawn { helper: PathBuf, cause: io::Error },
    #[error("cannot talk to the jail helper: {0}")]
    Channel(String),
    /// The helper's own line: what failed, the errno and, where it helps, the fix.
    #[error("the jail could not be built: {0}")]
    Setup(String),
    /// The jail was built, but the program could not be run in it (not found, ...).
    #[error("{0}")]
    Exec(String),
    /// The spec's explicit limits cannot be enforced: the command was not run.
    #[error("{0}")]
    Limits(String),
}

/// A phase started in its jail: the helper process (exits with the command's status, a
/// signal as 128+n), the namespace's sockets and the cgroup that holds every process of
/// the phase (drop it once they are gone).
#[derive(Debug)]
pub struct Jailed {
    pub child: Child,
    pub sockets: NetnsSockets,
    pub cgroup: Option<PhaseCgroup>,
    /// Dropped once the phase has ended, it starts the next helper ahead (warm.rs).
    pub refill: Option<Refill>,
}

/// The command that starts the helper. The caller sets its environment (which the phase's
/// command gets as it is), stdio and process group, then passes it to [`spawn`].
pub fn helper_command(helper: &Path) -> Command {
    // The helper starts in /, where a relative path would not find it.
    let mut command = Command::new(std::path::absolute(helper).unwrap_or_else(|_| helper.to_path_buf()));
    command.arg(HELPER_ARG).current_dir("/");
    command
}

/// Starts `argv` in `dir` inside the jail `spec` describes, through `helper` (from
/// [`helper_command`]). Returns once the command was exec'd in the jail. The helper is in
/// the phase's cgroup before it reads its request, so all the phase's processes are too.
pub fn spawn(helper: Command, spec: &SandboxSpec, argv: &[String], dir: &Path) -> Result<Jailed, JailError> {
    let system: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).collect();
    spawn_with_system(helper, spec, argv, dir, &system)
}

/// [`spawn`], with `system` (absolute real paths) as the read-only system directories
/// instead of [`SYSTEM`]: for tests, which cannot put files in the host's /etc safely.
pub fn spawn_with_system(
    helper: Command,
    spec: &SandboxSpec,
    argv: &[String],
    dir: &Path,
    system: &[PathBuf],
) -> Result<Jailed, JailError> {
    let request = request(spec, argv, dir, system, None)?;
    let cgroup = if spec.limits.needs_cgroup() { with_limits(PhaseCgroup::create(&spec.limits), spec)? } else { None };
    launch(Started::new(helper, cgroup)?, &request)
}

/// The request for `argv` in `dir` in `spec`'s jail, once the spec was checked.
fn request(
    spec: &SandboxSpec,
    argv: &[String],
    dir: &Path,
    system: &[PathBuf],
    env: Option<Vec<(OsString, OsString)>>,
) -> Result<Request, JailError> {
    check(spec, argv, dir)?;
    // SAFETY: getuid cannot fail. The helper maps this uid to itself in the jail.
    let uid = unsafe { libc::getuid() };
    let hidden = hidden::for_uid(uid, system).map_err(|error| JailError::Setup(error.to_string()))?;
    let bound: Vec<&Path> = [&spec.workspace, &spec.run_dir, &spec.home]
        .into_iter()
        .chain(spec.paths.iter().map(|p| &p.path))
        .map(PathBuf::as_path)
        .collect();
    Ok(Request {
        spec: spec.clone(),
        argv: argv.to_vec(),
        dir: dir.to_path_buf(),
        system: system.to_vec(),
        hidden: hidden::except_bound(hidden, &bound),
        env,
    })
}

/// Starts the helper with its end of the channel on fd 3; returns the worker's end.
fn start_helper(mut helper: Command) -> Result<(Child, OwnedFd), JailError> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| JailError::Channel(wire::describe(e)))?;
    let fd = theirs.as_raw_fd();
    // SAFETY: fcntl and dup2 are async-signal-safe and touch no memory of the parent.
    unsafe {
        helper.pre_exec(move || {
            let result =
                if fd == wire::HELPER_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, wire::HELPER_FD) };
            if result == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    let program = PathBuf::from(helper.get_program());
    let child = helper.spawn().map_err(|cause| JailError::Spawn { helper: program, cause })?;
    Ok((child, ours))
}

/// A helper waiting for its request, already in its cgroup (if it has one).
#[derive(Debug)]
struct Started {
    child: Child,
    channel: OwnedFd,
    cgroup: Option<PhaseCgroup>,
}

impl Started {
    /// Starts `helper` and puts it in `cgroup`. Moving a process into a cgroup waits for
    /// the kernel (an RCU grace period, milliseconds): warm.rs does it ahead of the phase.
    fn new(helper: Command, cgroup: Option<PhaseCgroup>) -> Result<Started, JailError> {
        let (mut child, channel) = start_helper(helper)?;
        if let Some(cgroup) = &cgroup
            && let Err(why) = cgroup.join(child.id())
        {
            end(&mut child);
            return Err(JailError::Limits(why));
        }
        Ok(Started { child, channel, cgroup })
    }
}

/// Sends the request and waits for the command's exec; on any failure the helper is
/// killed (and its PID 1 with it).
fn launch(started: Started, request: &Request) -> Result<Jailed, JailError> {
    let Started { mut child, channel, cgroup } = started;
    match start(&channel, request) {
        Ok(sockets) => Ok(Jailed { child, sockets, cgroup, refill: None }),
        Err(error) => {
            end(&mut child);
            Err(error)
        }
    }
}

/// Kills and reaps a helper; its PID 1 dies with it (its parent-death signal), and the
/// namespace with that.
fn end(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Has the kernel kill the process `command` starts when the thread that started it ends
/// (the worker died, or the thread that parked it is gone).
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The phase's cgroup, given the attempt to make it with the spec's limits. One that
/// cannot be made refuses the phase when the limits were explicit; otherwise (the
/// worker's defaults, which `Confinement::limit` already said may not be enforced) the
/// phase runs without it.
fn with_limits(made: Result<PhaseCgroup, String>, spec: &SandboxSpec) -> Result<Option<PhaseCgroup>, JailError> {
    match made {
        Ok(cgroup) => Ok(Some(cgroup)),
        Err(why) if spec.limits.required => Err(JailError::Limits(format!(
            "the limits ({}) cannot be enforced: {why}; {}",
            spec.limits.describe(),
            limits::FIX
        ))),
        Err(why) => {
            tracing::warn!(%why, "A phase runs without its default limits");
            Ok(None)
        }
    }
}

/// Sends the request, takes the sockets, and waits for the command's exec (EOF).
fn start(channel: &OwnedFd, request: &Request) -> Result<NetnsSockets, JailError> {
    let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
    nix::sys::socket::setsockopt(channel, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| JailError::Channel(wire::describe(e)))?;
    if let Err(errno) = wire::send_request(channel, request) {
        // The helper builds its namespaces before it reads the request: if that failed, it
        // is gone and its line says why.
        return Err(match receive(channel) {
            Ok(Answer::Error(text)) => JailError::Setup(text),
            _ => JailError::Channel(wire::describe(errno)),
        });
    }
    let mut sockets = None;
    loop {
        let answer = receive(channel).map_err(|e| match e {
            nix::errno::Errno::EAGAIN => JailError::Channel(format!("no answer within {ANSWER_TIMEOUT:?}")),
            e => JailError::Channel(wire::describe(e)),
        })?;
        match answer {
            Answer::Sockets { fds, captured, dns } if sockets.is_none() => {
                sockets = Some(
                    netns_sockets(fds, captured, dns).ok_or_else(|| JailError::Channel("no proxy socket".into()))?,
                );
            }
            Answer::Sockets { .. } => return Err(JailError::Channel("the sockets came twice".into())),
            Answer::Error(text) => return Err(JailError::Setup(text)),
            Answer::Exec(text) => return Err(JailError::Exec(text)),
            Answer::End => {
                return sockets.ok_or_else(|| JailError::Setup("the helper ended without an answer".into()));
            }
        }
    }
}

/// The next answer. A helper that exits without reading its request (its namespaces
/// failed) leaves ECONNRESET on the socket, reported once, ahead of the line it sent.
fn receive(channel: &OwnedFd) -> nix::Result<Answer> {
    match wire::receive_answer(channel) {
        Err(nix::errno::Errno::ECONNRESET) => wire::receive_answer(channel),
        answer => answer,
    }
}

/// The sockets in the order the helper sends them: the proxy, the captured ports, DNS.
fn netns_sockets(fds: Vec<OwnedFd>, captured: usize, dns: usize) -> Option<NetnsSockets> {
    let mut fds = fds.into_iter();
    let proxy = fds.next().map(std::net::TcpListener::from)?;
    let captured = fds.by_ref().take(captured).map(std::net::TcpListener::from).collect();
    let dns = fds.take(dns).map(std::net::UdpSocket::from).collect();
    Some(NetnsSockets { proxy, captured, dns })
}

/// Refuses a spec the helper could not follow safely: relative paths, `..` or symlinks
/// in what is bound (a path must mean the same inside and out), the root itself, too
/// many capture ports.
fn check(spec: &SandboxSpec, argv: &[String], dir: &Path) -> Result<(), JailError> {
    if argv.is_empty() {
        return Err(JailError::Spec("the command is empty".into()));
    }
    if spec.capture_ports.len() > MAX_CAPTURE_PORTS {
        return Err(JailError::Spec(format!("more than {MAX_CAPTURE_PORTS} capture ports")));
    }
    let named =
        [("workspace", &spec.workspace), ("run_dir", &spec.run_dir), ("home", &spec.home), ("dir", &dir.to_path_buf())];
    let paths = spec.paths.iter().map(|p| ("paths", &p.path));
    for (field, path) in named.into_iter().chain(paths) {
        let plain = path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !path.is_absolute() || !plain || path.parent().is_none() {
            return Err(JailError::Spec(format!(
                "{field}: `{}` must be absolute, without `..`, and not /",
                path.display()
            )));
        }
    }
    // The helper finds each source under the old root, where an absolute symlink on the
    // way would point elsewhere: what is bound must be named by its real path.
    let bound = [&spec.workspace, &spec.run_dir].into_iter().chain(spec.paths.iter().map(|p| &p.path));
    for path in bound {
        if let Ok(real) = std::fs::canonicalize(path)
            && &real != path
        {
            return Err(JailError::Spec(format!(
                "`{}` goes through a symlink: name it `{}`",
                path.display(),
                real.display()
            )));
        }
    }
    Ok(())
}

/// Runs `true` in a jail to check that this machine allows every step; the error is the
/// helper's line, with the fix where there is one.
pub fn probe(helper: &Path) -> Result<(), String> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("nightshift-probe-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let spec = SandboxSpec {
        workspace: dir.clone(),
        run_dir: dir.clone(),
        paths: Vec::new(),
        home: PathBuf::from("/home/nightshift"),
        capture_ports: vec![80, 443],
        limits: Default::default(),
    };
    let mut command = helper_command(helper);
    command.env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let result =
        spawn(command, &spec, &["true".to_string()], &dir).map_err(|error| error.to_string()).and_then(|mut jailed| {
            match jailed.child.wait() {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("`true` in the jail ended with {status}")),
                Err(error) => Err(format!("cannot wait for the jail helper: {error}")),
            }
        });
    let _ = std::fs::remove_dir(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(workspace: &Path) -> SandboxSpec {
        SandboxSpec {
            workspace: workspace.to_path_buf(),
            run_dir: workspace.to_path_buf(),
            paths: Vec::new(),
            home: PathBuf::from("/home/nightshift"),
            capture_ports: vec![443],
            limits: Default::default(),
        }
    }

    #[test]
    fn a_spec_must_name_real_absolute_paths() {
        let dir = std::fs::canonicalize(std::env::temp_dir()).unwrap();
        let argv = ["true".to_string()];
        assert!(check(&spec(&dir), &argv, &dir).is_ok());
        for bad in ["relative", "/", "/tmp/../etc"] {
            assert!(check(&spec(Path::new(bad)), &argv, &dir).is_err(), "{bad}");
        }
        let link = dir.join(format!("nightshift-jail-link-{}", std::process::id()));
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let error = check(&spec(&link), &argv, &dir).unwrap_err().to_string();
        std::fs::remove_file(&link).unwrap();
        assert!(error.contains("symlink"), "{error}");
        assert!(check(&spec(&dir), &[], &dir).is_err());
    }
}
