//! `nightshift sandbox check` and `nightshift sandbox run`: whether this machine can jail phases, and a command in a jail by hand.

use std::any::Any;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::sandbox::{NetnsSockets, PROXY_PORT, SandboxPath, SandboxSpec, jail};
use crate::worker::phase::{CancelToken, JailOptions, PhaseCommand, PhaseOptions, PhaseStatus, Stream, run_phase};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SandboxCommand {
    /// Check that this machine allows the jail: prints `ok`, or what failed and how to
    /// allow it. Exits 1 on failure.
    Check,
    /// Run a command in a jail, as a setup or agent phase runs: the system read-only, the
    /// workspace read-write, an empty home and /tmp, no other network than loopback.
    ///
    /// Connections are captured, but until the egress proxy serves them here every one is
    /// closed at once. Prints the command's output and exits with its status.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Read-write at its own path, and the command's directory. Default: the current one.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// A further path at its own path, read-only, or read-write as `PATH:rw`.
    #[arg(long = "path", value_name = "PATH[:rw]")]
    paths: Vec<String>,
    /// Stop the command after this many seconds (exit 124).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    timeout: u64,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let helper = std::env::current_exe().context("cannot find the nightshift binary")?;
    match args.command {
        SandboxCommand::Check => match jail::probe(&helper) {
            Ok(()) => {
                println!("ok: phases can run in a jail on this machine");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("sandbox check failed: {error}");
                Ok(ExitCode::FAILURE)
            }
        },
        SandboxCommand::Run(args) => run_command(args, helper),
    }
}

fn run_command(args: RunArgs, helper: PathBuf) -> anyhow::Result<ExitCode> {
    let workspace = match args.workspace {
        Some(dir) => dir,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let workspace = std::fs::canonicalize(&workspace)
        .with_context(|| format!("cannot find the workspace {}", workspace.display()))?;
    let mut paths = Vec::new();
    for path in &args.paths {
        let (path, writable) = match path.strip_suffix(":rw") {
            Some(path) => (path, true),
            None => (path.as_str(), false),
        };
        let path = std::fs::canonicalize(path).with_context(|| format!("--path: cannot find {path}"))?;
        paths.push(SandboxPath { path, writable });
    }
    let run_dir = RunDir::create()?;
    let spec = SandboxSpec {
        workspace: workspace.clone(),
        run_dir: run_dir.0.clone(),
        paths,
        home: home(&workspace),
        capture_ports: vec![80, 443],
    };
    let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
    let env = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"].map(|name| (name.to_string(), proxy.clone()));
    let command = PhaseCommand {
        argv: args.command,
        dir: workspace,
        env: BTreeMap::from(env),
        timeout: Duration::from_secs(args.timeout),
        sandbox: Some(spec),
    };
    let options = PhaseOptions {
        log_limit: 0,
        jail: Some(JailOptions { helper, serve: Arc::new(stub_serve) }),
        ..PhaseOptions::default()
    };
    let outcome = run_phase(&command, &options, &CancelToken::new(), |stream, line| {
        let _ = match stream {
            Stream::Stdout => writeln!(std::io::stdout(), "{line}"),
            Stream::Stderr => writeln!(std::io::stderr(), "{line}"),
        };
    })?;
    let code = match outcome.status {
        PhaseStatus::Exited(code) => code,
        PhaseStatus::Signalled(signal) => 128 + signal,
        PhaseStatus::TimedOut => 124,
        PhaseStatus::Cancelled => 130,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The home the command gets (empty inside): the caller's path, so the caller's own home
/// is what it cannot see, or /home/nightshift.
fn home(workspace: &Path) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|home| home.is_absolute() && home.parent().is_some() && home != workspace)
        .unwrap_or_else(|| PathBuf::from("/home/nightshift"))
}

/// The run directory a phase gets: a fresh temporary one, removed afterwards.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> anyhow::Result<RunDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("nightshift-sandbox-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(RunDir(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// TEMPORARY: until the egress proxy (src/sandbox/egress/) is wired in, `sandbox run`
// serves the jail's sockets with this stub. It records nothing: every connection is
// accepted and closed at once, every DNS query is read and dropped.
fn stub_serve(sockets: NetnsSockets, _helper: u32) -> Box<dyn Any + Send> {
    let mut handles: Vec<OwnedFd> = Vec::new();
    for listener in std::iter::once(sockets.proxy).chain(sockets.captured) {
        if let Ok(handle) = listener.try_clone() {
            handles.push(handle.into());
        }
        std::thread::spawn(move || {
            while let Ok((connection, _)) = listener.accept() {
                drop(connection);
            }
        });
    }
    for socket in sockets.dns {
        if let Ok(handle) = socket.try_clone() {
            handles.push(handle.into());
        }
        std::thread::spawn(move || {
            let mut buffer = [0; 512];
            // `recv`, not `recv_from`: a shut down socket returns no address.
            while matches!(socket.recv(&mut buffer), Ok(n) if n > 0) {}
        });
    }
    Box::new(StubGuard(handles))
}

/// Wakes the stub's threads (a shut down socket ends `accept` and `recv`) so they end.
struct StubGuard(Vec<OwnedFd>);

impl Drop for StubGuard {
    fn drop(&mut self) {
        for socket in &self.0 {
            // SAFETY: shutdown on a descriptor this guard owns.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}
