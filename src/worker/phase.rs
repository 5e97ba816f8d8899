//! One phase of a run (the setup phase or the agent phase) as a child process: a clean
//! environment, its own process group killed whole on timeout or cancellation, and its
//! output masked and kept in a log bounded in bytes.
//!
//! The child sees only `PATH`, `HOME`, `LANG`, `LC_ALL` and `TMPDIR` from the engine's
//! environment (those that are set), plus the command's own `env`; its stdin is
//! `/dev/null`. Stopping it sends SIGTERM to its process group, waits a grace period for
//! the child to exit, then sends SIGKILL to the group. When the child exits on its own,
//! whatever it left running in its group is killed: a phase leaves nothing behind. A
//! process that moves itself to another group or session (`setsid`) escapes this.
//!
//! A command with a `sandbox` spec runs in a jail (`sandbox::jail`): the child is the
//! jail's helper, whose PID namespace holds every process of the phase, `setsid` ones
//! too, and ends with it. The helper hands over the network namespace's sockets, which
//! `JailOptions::serve` serves until the phase has ended. The child then sees `PATH`,
//! `LANG` and `LC_ALL`, `HOME` set to the spec's home and `TMPDIR=/tmp`, plus `env`. A jail
//! that cannot be built fails the phase ([`PhaseError::Jail`]); the command never runs
//! outside it.
//!
//! Secret values, plain or encoded (see `mask.rs`), are replaced by `***` in the output
//! as it is read, before it is split into lines, so a secret written in pieces or across
//! lines is masked too. Lines longer than `MAX_LINE` bytes are split.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::mask::Masker;
use crate::sandbox::jail::{self, JailError};
use crate::sandbox::limits::PhaseCgroup;
use crate::sandbox::{NetnsSockets, SandboxSpec};

/// The engine's environment variables a phase inherits, when set.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"];

/// Those a jailed phase inherits: the engine's home and temporary directory are not in
/// its jail.
const JAILED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL"];

/// How long a line can be before it is split: a bound on the memory a reader holds.
pub const MAX_LINE: usize = 1024 * 1024;

/// How often the child's state, the deadline and the cancel token are checked.
const POLL: Duration = Duration::from_millis(20);

/// How long output is still read after the child is gone. Only a process that escaped
/// the group can hold a pipe open that long.
const DRAIN: Duration = Duration::from_secs(2);

/// The most bytes read from a pipe at once.
const READ_SIZE: usize = 64 * 1024;

/// Lines waiting between the readers and the log; a full channel slows the child down.
const CHANNEL_LINES: usize = 1024;

/// Why a phase could not be run.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("the phase's command is empty")]
    EmptyCommand,
    #[error("cannot start `{program}` in {dir}: {cause}")]
    Spawn { program: String, dir: PathBuf, cause: io::Error },
    #[error("cannot read the output of `{program}`: {cause}")]
    Output { program: String, cause: io::Error },
    #[error("cannot wait for `{program}`: {cause}")]
    Wait { program: String, cause: io::Error },
    /// The jail could not be built (the helper's message says what failed and the fix):
    /// the command was not run.
    #[error("cannot start `{program}` in its jail: {message}")]
    Jail { program: String, message: String },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PhaseCommand {
    /// The program and its arguments; never interpreted by a shell.
    pub argv: Vec<String>,
    /// The working directory.
    pub dir: PathBuf,
    /// Variables the child gets on top of the few it inherits.
    pub env: BTreeMap<String, String>,
    /// How long the phase may run before it is stopped.
    pub timeout: Duration,
    /// The jail to run in; `None` runs the command as a plain child process.
    pub sandbox: Option<SandboxSpec>,
}

/// How to run it.
#[derive(Debug, Clone)]
pub struct PhaseOptions {
    /// Values masked in the output; empty ones are ignored.
    pub secrets: Vec<String>,
    /// The most bytes the log keeps (each line counts its newline).
    pub log_limit: usize,
    /// How long the child has to exit after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// How to run a command that has a `sandbox`; without it such a command fails.
    pub jail: Option<JailOptions>,
}

impl Default for PhaseOptions {
    fn default() -> PhaseOptions {
        PhaseOptions { secrets: Vec::new(), log_limit: 1024 * 1024, grace: Duration::from_secs(5), jail: None }
    }
}

/// Starts serving a jailed phase's sockets, given the helper's pid (the phase's process
/// group); what it returns is dropped once the phase has ended and all of its processes
/// are gone, which is when serving should stop.
pub type ServeSockets = Arc<dyn Fn(NetnsSockets, u32) -> Box<dyn Any + Send> + Send + Sync>;

/// What running a phase in a jail needs.
#[derive(Clone)]
pub struct JailOptions {
    /// Starts the nightshift binary as `nightshift __sandbox-exec`.
    pub helpers: Arc<jail::Helpers>,
    /// The egress proxy's entry point.
    pub serve: ServeSockets,
}

impl std::fmt::Debug for JailOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JailOptions").field("helper", &self.helpers.program()).finish_non_exhaustive()
    }
}

/// Stops a running phase from another thread. Clones share the token.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseStatus {
    /// The child exited with this code.
    Exited(i32),
    /// The child was killed by this signal, not by us.
    Signalled(i32),
    /// The timeout passed and the group was stopped.
    TimedOut,
    /// The cancel token was triggered and the group was stopped.
    Cancelled,
}

/// A phase that ran.
#[derive(Debug, Clone)]
pub struct PhaseOutcome {
    pub status: PhaseStatus,
    /// Whether the OOM killer ended one of the phase's processes at its memory limit.
    pub memory_exceeded: bool,
    pub duration: Duration,
    pub log: PhaseLog,
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of output, masked, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
}

/// A phase's output in arrival order, at most `limit` bytes: once the first half is
/// full, later lines go to the second half, which keeps the most recent ones. What falls
/// out between the two is counted and shown by a marker line.
#[derive(Debug, Clone)]
pub struct PhaseLog {
    limit: usize,
    head: Vec<LogLine>,
    head_bytes: usize,
    tail: VecDeque<LogLine>,
    tail_bytes: usize,
    cut_bytes: usize,
}

impl PhaseLog {
    pub fn new(limit: usize) -> PhaseLog {
        PhaseLog { limit, head: Vec::new(), head_bytes: 0, tail: VecDeque::new(), tail_bytes: 0, cut_bytes: 0 }
    }

    /// Adds a line that is already masked.
    pub fn push(&mut self, stream: Stream, text: String) {
        let size = text.len() + 1;
        if self.cut_bytes == 0 && self.tail.is_empty() && self.head_bytes + size <= self.head_limit() {
            self.head_bytes += size;
            self.head.push(LogLine { stream, text });
            return;
        }
        let text = self.shorten(text);
        self.tail_bytes += text.len() + 1;
        self.tail.push_back(LogLine { stream, text });
        while self.tail_bytes > self.tail_limit() {
            let Some(dropped) = self.tail.pop_front() else { break };
            self.tail_bytes -= dropped.text.len() + 1;
            self.cut_bytes += dropped.text.len() + 1;
        }
    }

    /// The kept lines in arrival order, without the marker.
    pub fn lines(&self) -> impl Iterator<Item = &LogLine> {
        self.head.iter().chain(self.tail.iter())
    }

    /// The bytes of output left out (lines dropped and the ends of lines too long to keep).
    pub fn cut_bytes(&self) -> usize {
        self.cut_bytes
    }

    /// The kept bytes, each line counting its newline; at most the limit.
    pub fn len_bytes(&self) -> usize {
        self.head_bytes + self.tail_bytes
    }

    /// The log as text, one line each, with the marker where output was left out.
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(self.len_bytes() + 64);
        for line in &self.head {
            text.push_str(&line.text);
            text.push('\n');
        }
        if self.cut_bytes > 0 {
            text.push_str(&format!("[… {} bytes cut …]\n", self.cut_bytes));
        }
        for line in &self.tail {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    fn head_limit(&self) -> usize {
        self.limit / 2
    }

    fn tail_limit(&self) -> usize {
        self.limit - self.head_limit()
    }

    /// A line too long for the second half keeps its beginning.
    fn shorten(&mut self, mut text: String) -> String {
        let room = self.tail_limit().saturating_sub(1);
        if text.len() > room {
            let end = (0..=room).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            self.cut_bytes += text.len() - end;
            text.truncate(end);
        }
        text
    }
}

/// Runs `command` to its end, its timeout or its cancellation, and passes each line of
/// either stream to `on_line` as it arrives, masked.
pub fn run_phase(
    command: &PhaseCommand,
    options: &PhaseOptions,
    cancel: &CancelToken,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<PhaseOutcome, PhaseError> {
    let program = command.argv.first().ok_or(PhaseError::EmptyCommand)?.clone();
    let started = Instant::now();
    let mut group = Group::spawn(command, options, &program)?;
    let (sender, lines) = std::sync::mpsc::sync_channel(CHANNEL_LINES);
    let masker = Arc::new(Masker::new(&options.secrets));
    let readers = group.start_readers(sender, &masker)?;
    let mut log = PhaseLog::new(options.log_limit);
    let mut record = |stream: Stream, text: String| {
        on_line(stream, &text);
        log.push(stream, text);
    };

    let deadline = started.checked_add(command.timeout);
    let mut stopping: Option<(PhaseStatus, Instant)> = None;
    let mut readers_done = false;
    let exit = loop {
        if readers_done {
            std::thread::sleep(POLL);
        } else {
            readers_done = receive_until(&lines, Instant::now() + POLL, &mut record);
        }
        if group.has_exited()? {
            break group.reap()?;
        }
        match stopping {
            None => stopping = why_stop(cancel, deadline).map(|why| (why, group.terminate())),
            Some((_, since)) if since.elapsed() >= options.grace => group.kill(),
            Some(_) => {}
        }
    };
    if !readers_done {
        readers_done = receive_until(&lines, Instant::now() + DRAIN, &mut record);
    }
    finish_readers(readers, readers_done, &program);
    // The phase's processes are all gone: its sockets need no more serving, its cgroup
    // can go.
    drop(group.serving.take());
    let memory_exceeded = group.cgroup.take().is_some_and(|cgroup| cgroup.oom_killed());

    let status = stopping.map_or_else(|| exit_status(exit), |(why, _)| why);
    let duration = started.elapsed();
    tracing::info!(program = %program, ?status, duration_ms = duration.as_millis() as u64, "Phase ended");
    Ok(PhaseOutcome { status, memory_exceeded, duration, log })
}

/// Why the phase must stop now, if it must.
fn why_stop(cancel: &CancelToken, deadline: Option<Instant>) -> Option<PhaseStatus> {
    if cancel.is_cancelled() {
        Some(PhaseStatus::Cancelled)
    } else if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
        Some(PhaseStatus::TimedOut)
    } else {
        None
    }
}

/// Records lines until `until` or until both readers are done; returns whether they are.
fn receive_until(lines: &Receiver<(Stream, String)>, until: Instant, record: &mut impl FnMut(Stream, String)) -> bool {
    loop {
        match lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((stream, text)) => record(stream, text),
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
}

/// Joins the readers, or, when one is still blocked on a pipe that a process outside the
/// group holds open, leaves it to end on its own. `done` is whether the lines channel
/// said both readers let go of it: they are past their last read and end at once. (Not
/// `is_finished`: a reader drops its sender a moment before its thread is finished, and
/// asking then would blame a process that does not exist.)
fn finish_readers(readers: [JoinHandle<()>; 2], done: bool, program: &str) {
    if done {
        for reader in readers {
            let _ = reader.join();
        }
        return;
    }
    tracing::warn!(program, "A process outside the phase's group still holds its output open");
    for reader in readers.into_iter().filter(JoinHandle::is_finished) {
        let _ = reader.join();
    }
}

fn exit_status(status: ExitStatus) -> PhaseStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => PhaseStatus::Exited(code),
        (None, Some(signal)) => PhaseStatus::Signalled(signal),
        // Neither is possible for a child that was waited for; report it as a failure.
        (None, None) => PhaseStatus::Exited(-1),
    }
}

/// The child and its process group. Dropped before it was reaped (an error, a panic), it
/// kills the group and reaps the child. A jailed child's `serving` guard is dropped with
/// it, after the child is gone.
struct Group {
    child: Child,
    pgid: libc::pid_t,
    program: String,
    reaped: bool,
    serving: Option<Box<dyn Any + Send>>,
    cgroup: Option<PhaseCgroup>,
    /// Dropped last, once the phase has ended: the next jail helper is started ahead.
    _refill: Option<jail::Refill>,
}

impl Group {
    fn spawn(command: &PhaseCommand, options: &PhaseOptions, program: &str) -> Result<Group, PhaseError> {
        let spawn_error = |cause| PhaseError::Spawn { program: program.to_string(), dir: command.dir.clone(), cause };
        let (child, serving, (cgroup, refill)) = match &command.sandbox {
            None => (Group::command(command, program).spawn().map_err(spawn_error)?, None, (None, None)),
            Some(spec) => {
                let jail = options.jail.as_ref().ok_or_else(|| PhaseError::Jail {
                    program: program.to_string(),
                    message: "no jail helper is configured".to_string(),
                })?;
                let inherited =
                    JAILED_ENV.iter().filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)));
                let own = [("HOME", spec.home.as_os_str()), ("TMPDIR", OsStr::new("/tmp"))]
                    .into_iter()
                    .map(|(name, value)| (OsString::from(name), value.to_os_string()));
                let env = command.env.iter().map(|(name, value)| (OsString::from(name), OsString::from(value)));
                // Later entries win, as with `Command::env`.
                let env: BTreeMap<OsString, OsString> = inherited.chain(own).chain(env).collect();
                let jailed = jail.helpers.spawn(env.into_iter().collect(), spec, &command.argv, &command.dir).map_err(
                    |error| match error {
                        JailError::Exec(text) => spawn_error(io::Error::other(text)),
                        error => PhaseError::Jail { program: program.to_string(), message: error.to_string() },
                    },
                )?;
                let serving = (jail.serve)(jailed.sockets, jailed.child.id());
                (jailed.child, Some(serving), (jailed.cgroup, jailed.refill))
            }
        };
        // `process_group(0)` makes the child's pid its group's id.
        let pgid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
        Ok(Group { child, pgid, program: program.to_string(), reaped: false, serving, cgroup, _refill: refill })
    }

    /// An unjailed command: the inherited variables and the command's own, stdin empty,
    /// stdout and stderr piped, a process group of its own, killed if the worker dies.
    fn command(command: &PhaseCommand, program: &str) -> Command {
        let mut process = Command::new(program);
        process.args(&command.argv[1..]).current_dir(&command.dir);
        process.env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                process.env(name, value);
            }
        }
        process.envs(&command.env);
        // If the worker dies (SIGKILL, a crash), the child is killed rather than left to
        // run unwatched; only the child, not what it started, so its group may outlive it.
        jail::die_with_parent(&mut process);
        process
    }

    fn start_readers(
        &mut self,
        sender: SyncSender<(Stream, String)>,
        masker: &Arc<Masker>,
    ) -> Result<[JoinHandle<()>; 2], PhaseError> {
        let error = |cause| PhaseError::Output { program: self.program.clone(), cause };
        let missing = || error(io::Error::other("the pipe was not set up"));
        let stdout: ChildStdout = self.child.stdout.take().ok_or_else(missing)?;
        let stderr: ChildStderr = self.child.stderr.take().ok_or_else(missing)?;
        let out = spawn_reader(stdout, Stream::Stdout, sender.clone(), Arc::clone(masker)).map_err(error)?;
        let err = spawn_reader(stderr, Stream::Stderr, sender, Arc::clone(masker)).map_err(error)?;
        Ok([out, err])
    }

    /// Whether the child has exited, without reaping it: while it is a zombie its pid,
    /// which names the group, cannot be reused, so signalling the group stays safe.
    fn has_exited(&self) -> Result<bool, PhaseError> {
        loop {
            // SAFETY: siginfo_t is plain data, valid when zeroed; waitid only writes to it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
            let result = unsafe { libc::waitid(libc::P_PID, self.pgid as libc::id_t, &mut info, flags) };
            if result == 0 {
                // SAFETY: waitid filled `info` (or left it zeroed, so si_pid reads 0).
                return Ok(unsafe { info.si_pid() } != 0);
            }
            let cause = io::Error::last_os_error();
            if cause.kind() != io::ErrorKind::Interrupted {
                return Err(PhaseError::Wait { program: self.program.clone(), cause });
            }
        }
    }

    /// Kills what the child left running in its group, then reaps the child.
    fn reap(&mut self) -> Result<ExitStatus, PhaseError> {
        self.kill();
        let status = self.child.wait().map_err(|cause| PhaseError::Wait { program: self.program.clone(), cause })?;
        self.reaped = true;
        Ok(status)
    }

    /// Asks the group to stop; returns when it asked.
    fn terminate(&self) -> Instant {
        self.signal(libc::SIGTERM);
        Instant::now()
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Signals the group. A failure means it is already gone (ESRCH), which is the point.
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe { libc::killpg(self.pgid, signal) };
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `pipe`, masks what it read and sends it line by line (a line longer than
/// `MAX_LINE` in pieces) to `sender`.
fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    sender: SyncSender<(Stream, String)>,
    masker: Arc<Masker>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("phase-{stream:?}").to_lowercase()).spawn(move || {
        let mut masking = masker.stream();
        let mut read = vec![0; READ_SIZE];
        let mut masked = Vec::with_capacity(READ_SIZE);
        let mut line = Vec::new();
        loop {
            masked.clear();
            let ended = match pipe.read(&mut read) {
                Ok(0) => true,
                Ok(n) => {
                    masking.push(&read[..n], &mut masked);
                    false
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => true,
            };
            if ended {
                masking.finish(&mut masked);
            }
            for piece in masked.split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(piece);
                while line.len() > MAX_LINE {
                    let rest = line.split_off(MAX_LINE);
                    if sender.send((stream, line_text(&line))).is_err() {
                        return;
                    }
                    line = rest;
                }
                if line.ends_with(b"\n") && sender.send((stream, line_text(&std::mem::take(&mut line)))).is_err() {
                    return;
                }
            }
            if ended {
                if !line.is_empty() {
                    let _ = sender.send((stream, line_text(&line)));
                }
                return;
            }
        }
    })
}

/// The line without its ending; bytes that are not UTF-8 become U+FFFD.
fn line_text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_keeps_both_ends_and_counts_the_cut() {
        let mut log = PhaseLog::new(20);
        for i in 0..100 {
            log.push(Stream::Stdout, format!("{i:03}"));
        }
        assert!(log.len_bytes() <= 20);
        assert_eq!(log.text(), "000\n001\n[… 384 bytes cut …]\n098\n099\n");
        assert_eq!(log.len_bytes() + log.cut_bytes(), 400);
    }

    #[test]
    fn a_line_longer_than_half_the_limit_keeps_its_beginning() {
        let mut log = PhaseLog::new(10);
        log.push(Stream::Stderr, "é".repeat(10));
        assert_eq!(log.text(), "[… 16 bytes cut …]\néé\n");
        assert!(log.len_bytes() <= 10);
    }
}
