//! A worker's sandbox: the jail helper and the egress proxy, and what one phase needs of
//! them (`run_phase`'s jail options, and the decisions its proxy session recorded).

use std::any::Any;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::netpolicy::NetworkPolicy;
use crate::sandbox::limits::{self, Limits, LimitsConfig};
use crate::worker::phase::{JailOptions, PhaseCommand, PhaseOptions};

use super::egress::{Egress, EgressSession, EgressSettings, PhaseName, PolicyRecord};
use super::jail;
use super::{NetnsSockets, SandboxPath, SandboxSpec, plan};

/// The jail helper (the nightshift binary) and the egress proxy every phase goes through.
pub struct Sandbox {
    helpers: Arc<jail::Helpers>,
    egress: Arc<Egress>,
    /// Whether phases can get cgroups here; if not, why.
    cgroups: Result<(), String>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox").field("helper", &self.helpers.program()).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// A sandbox whose jails are started by `helper` (the nightshift binary) and whose
    /// egress proxy reaches upstreams as `settings` say.
    pub fn new(helper: PathBuf, settings: EgressSettings) -> io::Result<Sandbox> {
        let cgroups = limits::probe();
        if let Err(why) = &cgroups {
            tracing::warn!(
                %why,
                fix = limits::FIX,
                "Phases cannot get cgroups here: their memory, process and CPU limits are not enforced, \
                 and runs that set task.limits are refused"
            );
        }
        let helpers = Arc::new(jail::Helpers::warm(helper)?);
        Ok(Sandbox { helpers, egress: Arc::new(Egress::new(settings)?), cgroups })
    }

    /// Whether this machine lets the helper build a jail; if not, what failed and the fix.
    pub fn probe(&self) -> Result<(), String> {
        jail::probe(self.helpers.program())
    }

    /// What running one phase in a jail under `policy` takes. Its decisions are in
    /// [`PhaseJail::decisions`] once the phase has ended.
    pub fn phase(&self, phase: PhaseName, policy: &NetworkPolicy) -> PhaseJail {
        let decisions: Arc<Mutex<Vec<PolicyRecord>>> = Arc::default();
        let (egress, policy, sink) = (self.egress.clone(), policy.clone(), decisions.clone());
        let serve = Arc::new(move |sockets: NetnsSockets, helper_pid: u32| -> Box<dyn Any + Send> {
            match egress.start(phase, policy.clone(), sockets, Some(helper_pid)) {
                Ok(session) => Box::new(Serving { session: Some(session), sink: sink.clone() }),
                Err(error) => {
                    // The sockets are dropped: the phase has no way out at all (fail closed).
                    tracing::error!(%error, phase = phase.as_str(), "Cannot serve a jail's network: it has none");
                    Box::new(())
                }
            }
        });
        PhaseJail { options: JailOptions { helpers: self.helpers.clone(), serve }, decisions }
    }
}

/// One phase's jail options and where its proxy session leaves its decisions.
pub struct PhaseJail {
    pub options: JailOptions,
    decisions: Arc<Mutex<Vec<PolicyRecord>>>,
}

impl PhaseJail {
    /// The decisions of the phase's proxy session, once the phase has ended.
    pub fn decisions(&self) -> Vec<PolicyRecord> {
        std::mem::take(&mut *self.decisions.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A phase's proxy session; when the phase has ended (`run_phase` drops this), it stops
/// and hands its decisions over.
struct Serving {
    session: Option<EgressSession>,
    sink: Arc<Mutex<Vec<PolicyRecord>>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let records = session.finish();
            self.sink.lock().unwrap_or_else(PoisonError::into_inner).extend(records);
        }
    }
}

/// How one run's phases are confined: the worker's sandbox, or none (`--sandbox off`),
/// and what every phase of the run sees.
pub struct Confinement<'a> {
    sandbox: Option<&'a Sandbox>,
    base: SandboxSpec,
}

impl<'a> Confinement<'a> {
    /// Every phase of a run sees its `workspace` and `run_dir` read-write, and the paths
    /// the workspace itself needs (a worktree's mirror, a base checkout's objects).
    pub fn new(sandbox: Option<&'a Sandbox>, workspace: &Path, run_dir: &Path, paths: Vec<SandboxPath>) -> Self {
        let base = SandboxSpec {
            workspace: workspace.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            paths,
            home: private_home(workspace),
            capture_ports: Vec::new(),
            limits: Limits::default(),
        };
        Confinement { sandbox, base }
    }

    /// Whether phases run in jails.
    pub fn enforced(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Gives every phase the limits `config` sets, the worker's defaults filling the rest.
    /// Returns what the run's timeline should say when they are not enforced, or why the
    /// run is refused: limits set in `config` are enforced or nothing runs (fail closed).
    pub fn limit(&mut self, config: &LimitsConfig) -> Result<Option<String>, String> {
        let resolved = Limits::resolve(config, limits::ram());
        self.base.limits = resolved;
        let Some(sandbox) = self.sandbox else {
            return Ok((!config.is_empty()).then(|| "the sandbox is off: the task's limits were not enforced".into()));
        };
        self.base.limits = limits::enforceable(resolved, &sandbox.cgroups)?;
        Ok(match (&sandbox.cgroups, resolved.needs_cgroup()) {
            (Err(why), true) => Some(format!(
                "the default limits ({}) were not enforced: {why}; to enforce them, {}",
                resolved.describe(),
                limits::FIX
            )),
            _ => None,
        })
    }

    /// What every phase of the run is limited to.
    pub fn limits(&self) -> Limits {
        self.base.limits
    }

    /// Puts `command` in a jail for `phase` under `policy`, with `extra` paths besides the
    /// run's own; `None` when the sandbox is off, and the command is left as it is.
    pub fn confine(
        &self,
        phase: PhaseName,
        policy: &NetworkPolicy,
        extra: &[SandboxPath],
        command: &mut PhaseCommand,
        options: &mut PhaseOptions,
    ) -> Option<PhaseJail> {
        let sandbox = self.sandbox?;
        let mut spec = self.base.clone();
        spec.paths.extend(extra.iter().cloned());
        spec.capture_ports = plan::capture_ports(policy);
        command.env.extend(plan::proxy_env());
        command.env.insert("HOME".into(), spec.home.display().to_string());
        command.sandbox = Some(spec);
        let jail = sandbox.phase(phase, policy);
        options.jail = Some(jail.options.clone());
        Some(jail)
    }
}

/// The home a phase gets, empty: the worker's own path for it (so that is what the phase
/// cannot see, and a profile's `~/...` paths land where the agent CLI looks), unless it
/// is `/` or holds the workspace's path as itself.
fn private_home(workspace: &Path) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|home| home.is_absolute() && home.parent().is_some() && home != workspace)
        .unwrap_or_else(|| PathBuf::from("/home/nightshift"))
}
