//! `nightshift __sandbox-exec`: the process the worker starts for a jailed phase. It reads
//! its request on fd 3, enters new namespaces, hands the network namespace's listeners
//! to the worker, and forks the jail's PID 1, which builds the filesystem and runs the
//! command. Single-threaded until the command's exec, as `unshare` and `fork` need.
//!
//! Every failure is one line on fd 3 and exit status 125: the worker never runs the
//! command outside the jail.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::wire::{self, HELPER_FD, Request};
use super::{fs, lockdown, net};

/// The helper's exit status when the jail could not be built.
pub const SETUP_FAILED: i32 = 125;

/// Why the jail could not be built: one line for the worker.
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    pub fn errno(what: &str, errno: Errno) -> Failure {
        Failure(format!("cannot {what}: {}", wire::describe(errno)))
    }

    pub fn io(what: &str, error: &std::io::Error) -> Failure {
        match error.raw_os_error() {
            Some(code) => Failure::errno(what, Errno::from_raw(code)),
            None => Failure(format!("cannot {what}: {error}")),
        }
    }

    pub fn message(text: &str) -> Failure {
        Failure(text.to_string())
    }

    /// Adds how to allow user namespaces where the kernel refused one.
    fn with_namespace_fix(self, errno: Option<Errno>) -> Failure {
        match errno {
            Some(Errno::EPERM | Errno::EACCES | Errno::ENOSPC) => Failure(format!(
                "{}: this machine does not let unprivileged users create user namespaces; allow them \
                 (`sysctl kernel.apparmor_restrict_unprivileged_userns=0`, or an AppArmor profile \
                 that grants `userns` to the nightshift binary; check `sysctl user.max_user_namespaces` \
                 is above 0 and `kernel.unprivileged_userns_clone=1` where it exists)",
                self.0
            )),
            _ => self,
        }
    }
}

/// The process a signal is passed on to (PID 1 for the helper, the command for PID 1).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);
/// A SIGTERM or SIGINT came before there was anyone to pass it on to.
static PENDING: AtomicI32 = AtomicI32::new(0);
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn forward(signal: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    } else {
        PENDING.store(signal, Ordering::SeqCst);
        SIGNALLED.store(true, Ordering::SeqCst);
    }
}

/// The helper's `main`: never returns.
pub fn main() -> ! {
    let channel = HELPER_FD;
    // SAFETY: fcntl on a descriptor number; fails with EBADF when fd 3 is not open.
    if unsafe { libc::fcntl(channel, libc::F_GETFD) } == -1 {
        eprintln!("nightshift __sandbox-exec is started by the worker, with its request on fd 3");
        std::process::exit(SETUP_FAILED);
    }
    match run(channel) {
        Ok(status) => std::process::exit(status),
        Err(Failure(text)) => {
            wire::send_error(channel, "error", &text);
            std::process::exit(SETUP_FAILED);
        }
    }
}

fn run(channel: RawFd) -> Result<i32, Failure> {
    close_inherited(channel)?;
    die_with_the_worker()?;
    // All that does not depend on the request is done first: a helper started ahead of
    // its phase (warm.rs) waits here with its namespaces built.
    let filters = lockdown::filters()?;
    enter_namespaces()?;
    let ipv6 = net::configure()?;
    let request = wire::receive_request(channel).map_err(Failure)?;
    // The mount namespace copies the host's mounts as they are now: made earlier, it would
    // miss the workspace mounted meanwhile.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| Failure::errno("create the jail's mount namespace (unshare)", e))?;
    if let Some(env) = &request.env {
        set_environment(env);
    }
    let listeners = net::open(&request.spec.capture_ports, ipv6)?;
    let mut fds = vec![listeners.proxy.as_raw_fd()];
    fds.extend(listeners.captured.iter().map(AsRawFd::as_raw_fd));
    fds.extend(listeners.dns.iter().map(AsRawFd::as_raw_fd));
    wire::send_sockets(channel, &fds, listeners.captured.len(), listeners.dns.len())
        .map_err(|e| Failure::errno("send the sockets to the worker", e))?;
    drop(listeners);

    install_forwarding()?;
    // PID 1 asks this after arming its parent-death signal, in case the helper was killed
    // before: a pidfd reaches across the namespace, where a pid number would not.
    // SAFETY: pidfd_open has no memory-safety preconditions; it returns a close-on-exec fd.
    let helper = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as RawFd;
    // SAFETY: single-threaded, so the child may do anything.
    match unsafe { fork() }.map_err(|e| Failure::errno("fork the jail's PID 1", e))? {
        ForkResult::Child => {
            let status = match init(channel, helper, &request, &filters) {
                Ok(status) => status,
                Err(Failure(text)) => {
                    wire::send_error(channel, "error", &text);
                    SETUP_FAILED
                }
            };
            std::process::exit(status)
        }
        ForkResult::Parent { child } => {
            FORWARD_TO.store(child.as_raw(), Ordering::SeqCst);
            pass_on_pending();
            close(channel);
            if helper >= 0 {
                close(helper);
            }
            Ok(wait_for(child))
        }
    }
}

/// Closes every descriptor above the channel: whatever started the worker (a shell, a
/// supervisor) may have left some open without close-on-exec, and through one a phase
/// would reach a host file or directory its jail hides.
fn close_inherited(channel: RawFd) -> Result<(), Failure> {
    let first = u32::try_from(channel + 1).unwrap_or(4);
    // SAFETY: close_range closes descriptors this single-threaded process owns and uses
    // no more (only 0-2 and the channel are in use here).
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) } == -1 {
        return Err(Failure::errno("close the descriptors the helper inherited", Errno::last()));
    }
    Ok(())
}

/// A worker that dies (SIGKILL, a crash) takes its phases with it: the helper gets SIGKILL
/// then, and its PID 1, and with it the whole jail, follows. (The signal comes when the
/// worker's thread that started the helper ends; a worker's phase threads live as long as
/// it does.)
fn die_with_the_worker() -> Result<(), Failure> {
    // SAFETY: getppid and prctl have no memory-safety preconditions.
    let worker = unsafe { libc::getppid() };
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } == -1 {
        return Err(Failure::errno("set the helper's parent-death signal", Errno::last()));
    }
    // The worker may have died before the signal was armed.
    if unsafe { libc::getppid() } != worker {
        return Err(Failure::message("the worker that started this jail is gone"));
    }
    Ok(())
}

/// Makes `env` this process's whole environment, which the command inherits.
fn set_environment(env: &[(std::ffi::OsString, std::ffi::OsString)]) {
    let current: Vec<std::ffi::OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    for name in current {
        // SAFETY: the helper is single-threaded, so nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
    for (name, value) in env {
        // SAFETY: as above.
        unsafe { std::env::set_var(name, value) };
    }
}

/// New user, network, PID, IPC and UTS namespaces (the mount namespace comes with the
/// request), the caller's uid and gid mapped to themselves (root stays root, a user stays
/// that user: the namespace grants nothing outside it).
fn enter_namespaces() -> Result<(), Failure> {
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    unshare(flags)
        .map_err(|e| Failure::errno("create the jail's namespaces (unshare)", e).with_namespace_fix(Some(e)))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| {
            let errno = e.raw_os_error().map(Errno::from_raw);
            Failure::io(&format!("write /proc/self/{file}"), &e).with_namespace_fix(errno)
        })
    };
    write("setgroups", "deny".to_string())?;
    write("uid_map", format!("{uid} {uid} 1"))?;
    write("gid_map", format!("{gid} {gid} 1"))?;
    let _ = nix::unistd::sethostname("nightshift");
    Ok(())
}

fn install_forwarding() -> Result<(), Failure> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: sigaction is a plain struct; the handler only touches atomics and calls kill.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) == -1 {
                return Err(Failure::errno("handle SIGTERM", Errno::last()));
            }
        }
    }
    Ok(())
}

/// Passes on a signal that came before the process to pass it on to existed.
fn pass_on_pending() {
    if SIGNALLED.swap(false, Ordering::SeqCst) {
        forward(PENDING.load(Ordering::SeqCst));
    }
}

/// The jail's PID 1: builds the filesystem, runs the command, reaps whatever it leaves
/// and exits with its status; the kernel then kills everything left in the namespace.
fn init(channel: RawFd, helper: RawFd, request: &Request, filters: &lockdown::Filters) -> Result<i32, Failure> {
    FORWARD_TO.store(0, Ordering::SeqCst);
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } == -1 {
        return Err(Failure::errno("set PID 1's parent-death signal", Errno::last()));
    }
    if helper >= 0 {
        let mut exited = libc::pollfd { fd: helper, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a readable pidfd means its process has exited.
        if unsafe { libc::poll(&mut exited, 1, 0) } == 1 {
            return Err(Failure::message("the helper was gone before the jail was built"));
        }
        close(helper);
    }
    fs::build(request)?;
    let argv = request
        .argv
        .iter()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Failure::message("an argument holds a NUL byte"))?;
    // SAFETY: single-threaded, so the child may do anything.
    match unsafe { fork() }.map_err(|e| Failure::errno("fork the command", e))? {
        ForkResult::Child => {
            let (kind, Failure(text)) = exec(channel, request, filters, &argv);
            wire::send_error(channel, kind, &text);
            std::process::exit(SETUP_FAILED)
        }
        ForkResult::Parent { child } => {
            FORWARD_TO.store(child.as_raw(), Ordering::SeqCst);
            pass_on_pending();
            close(channel);
            Ok(reap_until(child))
        }
    }
}

/// Runs the command in this process; returns only when it could not, with the kind of
/// answer for the worker: `exec` when the jail is built but the program cannot run.
fn exec(channel: RawFd, request: &Request, filters: &lockdown::Filters, argv: &[CString]) -> (&'static str, Failure) {
    if let Err(error) = std::env::set_current_dir(&request.dir) {
        return ("error", Failure::io(&format!("enter {}", request.dir.display()), &error));
    }
    // SAFETY: fcntl on our own descriptor: it closes when the command starts.
    unsafe { libc::fcntl(channel, libc::F_SETFD, libc::FD_CLOEXEC) };
    // The engine turned transparent huge pages off for itself (main.rs); the command
    // gets the system's setting.
    let _ = nix::sys::prctl::set_thp_disable(false);
    if let Err(failure) = lockdown::apply(filters) {
        return ("error", failure);
    }
    let Some(program) = argv.first() else { return ("error", Failure::message("the command is empty")) };
    let Err(errno) = nix::unistd::execvp(program, argv);
    ("exec", Failure(format!("cannot run `{}`: {}", request.argv[0], wire::describe(errno))))
}

/// Reaps every child; returns the command's status when it exits (a signal as 128+n).
fn reap_until(command: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => return 128 + signal as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED,
        }
    }
}

/// The helper waits for PID 1 and takes its status.
fn wait_for(init: Pid) -> i32 {
    loop {
        match waitpid(init, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED,
        }
    }
}

fn close(fd: RawFd) {
    // SAFETY: the descriptor is ours and not used after this.
    unsafe { libc::close(fd) };
}
