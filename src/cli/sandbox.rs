//! `nightshift sandbox check` and `nightshift sandbox run`: whether this machine can jail phases, and a command in a jail by hand.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::worker::parse_resolve;
use crate::netpolicy::{AllowRuleConfig, Method, NetworkPolicy, RuleOrigin};
use crate::sandbox::egress::{EgressSettings, PhaseName};
use crate::sandbox::limits::{ByteSize, Cpu, LimitsConfig};
use crate::sandbox::{Confinement, Sandbox, SandboxPath, jail, plan};
use crate::worker::phase::{CancelToken, PhaseCommand, PhaseOptions, PhaseStatus, Stream, run_phase};

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
    /// workspace read-write, an empty home and /tmp, and the egress proxy as the only way
    /// out, deciding by the `--allow` rules (none: nothing is reachable).
    ///
    /// Prints the command's output, then each egress decision on stderr (or as JSON lines
    /// to `--decisions`), and exits with the command's status.
    Run(Box<RunArgs>),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Read-write at its own path, and the command's directory. Default: the current one.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// A further path at its own path, read-only, or read-write as `PATH:rw`.
    #[arg(long = "path", value_name = "PATH[:rw]")]
    paths: Vec<String>,
    /// Allow a destination: `DOMAIN` (port 443), `DOMAIN:PORT,PORT...`, `*.DOMAIN`, and
    /// `/METHOD,METHOD` after either to allow only those methods (plain HTTP only: a
    /// tunnel hides its method). Repeatable.
    #[arg(long = "allow", value_name = "DOMAIN[:PORTS][/METHODS]")]
    allow: Vec<String>,
    /// Reach HOST at ADDR:PORT instead of where DNS says, like curl's --resolve.
    #[arg(long = "egress-resolve", value_name = "HOST=ADDR:PORT")]
    egress_resolve: Vec<String>,
    /// Write the decisions as JSON lines to this file instead of describing them on stderr.
    #[arg(long, value_name = "FILE")]
    decisions: Option<PathBuf>,
    /// Cap the memory (and swap) of all its processes, e.g. `512M`: past it the OOM killer
    /// ends one (exit 137 and a line on stderr). Refused where cgroups cannot be made.
    #[arg(long, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// Cap how many processes and threads it may have at once. Refused where cgroups
    /// cannot be made.
    #[arg(long, value_name = "N")]
    processes: Option<u64>,
    /// Cap its CPU time, in cores (`0.5`). Refused where cgroups cannot be made.
    #[arg(long, value_name = "CORES")]
    cpu: Option<f64>,
    /// What each of its /tmp, home and /dev/shm may hold, e.g. `64M`. Default: an eighth
    /// of the machine's RAM each.
    #[arg(long, value_name = "SIZE")]
    tmpfs: Option<ByteSize>,
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
        SandboxCommand::Run(args) => run_command(*args, helper),
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
    let policy = policy(&args.allow)?;
    let mut egress = EgressSettings::default();
    for entry in &args.egress_resolve {
        let (host, addr) = parse_resolve(entry).map_err(|why| anyhow::anyhow!("--egress-resolve {entry}: {why}"))?;
        egress.resolve.insert(host, addr);
    }
    let sandbox = Sandbox::new(helper, egress).context("cannot start the egress proxy")?;
    let run_dir = RunDir::create()?;
    let mut command = PhaseCommand {
        argv: args.command,
        dir: workspace.clone(),
        env: BTreeMap::new(),
        timeout: Duration::from_secs(args.timeout),
        sandbox: None,
    };
    let mut options = PhaseOptions { log_limit: 0, ..PhaseOptions::default() };
    let mut confinement = Confinement::new(Some(&sandbox), &workspace, &run_dir.0, paths);
    let limits = LimitsConfig {
        memory: args.memory,
        processes: match args.processes {
            Some(0) => anyhow::bail!("--processes: a phase needs at least one"),
            n => n,
        },
        cpu: args.cpu.map(Cpu::from_cores).transpose().map_err(|why| anyhow::anyhow!("--cpu: {why}"))?,
        tmpfs: args.tmpfs,
    };
    match confinement.limit(&limits) {
        Ok(None) => {}
        Ok(Some(note)) => eprintln!("limits: {note}"),
        Err(why) => {
            eprintln!("limits: {why}");
            return Ok(ExitCode::from(125));
        }
    }
    let jail = confinement.confine(PhaseName::Agent, &policy, &[], &mut command, &mut options);
    let outcome = run_phase(&command, &options, &CancelToken::new(), |stream, line| {
        let _ = match stream {
            Stream::Stdout => writeln!(std::io::stdout(), "{line}"),
            Stream::Stderr => writeln!(std::io::stderr(), "{line}"),
        };
    });
    let records = jail.map(|jail| jail.decisions()).unwrap_or_default();
    match &args.decisions {
        Some(file) => {
            let mut text = String::new();
            for record in &records {
                text.push_str(&serde_json::to_string(record)?);
                text.push('\n');
            }
            std::fs::write(file, text).with_context(|| format!("cannot write {}", file.display()))?;
        }
        None => {
            for record in &records {
                eprintln!("egress: {}", plan::describe(record));
            }
        }
    }
    let outcome = outcome?;
    if outcome.memory_exceeded {
        eprintln!("limits: the command was killed by its memory limit");
    }
    let code = match outcome.status {
        PhaseStatus::Exited(code) => code,
        PhaseStatus::Signalled(signal) => 128 + signal,
        PhaseStatus::TimedOut => 124,
        PhaseStatus::Cancelled => 130,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The policy `--allow` entries make: `DOMAIN[:PORT,PORT][/METHOD,METHOD]`.
fn policy(allow: &[String]) -> anyhow::Result<NetworkPolicy> {
    let mut policy = NetworkPolicy::default();
    for entry in allow {
        let fail = |why: &str| anyhow::anyhow!("--allow {entry}: {why}");
        let (destination, methods) = match entry.split_once('/') {
            Some((destination, methods)) => {
                let methods = methods
                    .split(',')
                    .map(|m| Method::parse(&m.trim().to_ascii_uppercase()))
                    .collect::<Option<Vec<Method>>>()
                    .ok_or_else(|| fail("methods are GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS"))?;
                (destination, methods)
            }
            None => (entry.as_str(), Vec::new()),
        };
        let (domain, ports) = match destination.split_once(':') {
            Some((domain, ports)) => {
                let ports = ports
                    .split(',')
                    .map(|port| port.trim().parse::<u16>())
                    .collect::<Result<Vec<u16>, _>>()
                    .map_err(|_| fail("the ports must be numbers, e.g. example.com:443,8443"))?;
                (domain, ports)
            }
            None => (destination, Vec::new()),
        };
        let rule = AllowRuleConfig { domain: Some(domain.to_string()), ports, methods, ..AllowRuleConfig::default() };
        policy.allow.extend(rule.expand(RuleOrigin::Static).map_err(|error| fail(&error.to_string()))?);
    }
    Ok(policy)
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
