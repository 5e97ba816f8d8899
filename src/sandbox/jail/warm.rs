//! Jail helpers started ahead of their phase: spawned, put in a fresh cgroup and left
//! waiting for their request, so a phase does not wait for the cgroup move.
//!
//! Moving a process into a cgroup waits for an RCU grace period (5 to 20 ms measured on
//! a cgroup v1 host), more than everything else a jail costs. A [`Helpers`] made with
//! [`Helpers::warm`] keeps one helper parked: its cgroup made in every controller with no
//! limit yet, its namespaces built, blocked on fd 3. A phase takes it, sets its limits
//! (a plain file write) and sends the request; once the phase has ended, a thread parks
//! the next one ([`Refill`]). With none parked (phases starting together, or a phase
//! right after another of the same run), a phase starts its own as before.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{JailError, Jailed, SYSTEM, Started, launch, request, with_limits};
use crate::sandbox::SandboxSpec;
use crate::sandbox::limits::PhaseCgroup;

/// Starts the jail helper (the nightshift binary) for phases.
#[derive(Debug)]
pub struct Helpers {
    program: PathBuf,
    park: Option<Arc<Park>>,
}

/// The parked helper and how to ask for the next.
#[derive(Debug)]
struct Park {
    program: PathBuf,
    slot: Mutex<Option<Parked>>,
    refill: Mutex<Sender<()>>,
}

/// A helper waiting for its request, in a cgroup with no limits yet (where one could be
/// made); killed if dropped unused.
#[derive(Debug)]
struct Parked {
    started: Option<Started>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(started) = &mut self.started {
            super::end(&mut started.child);
        }
    }
}

impl Helpers {
    /// Each phase starts its own helper.
    pub fn cold(program: PathBuf) -> Helpers {
        Helpers { program, park: None }
    }

    /// One helper is kept started ahead, by a thread that lives as long as this does
    /// (a helper dies with the thread that started it: its parent-death signal).
    pub fn warm(program: PathBuf) -> io::Result<Helpers> {
        let (refill, wanted) = channel::<()>();
        let park = Arc::new(Park { program: program.clone(), slot: Mutex::new(None), refill: Mutex::new(refill) });
        let weak: Weak<Park> = Arc::downgrade(&park);
        std::thread::Builder::new().name("jail-warm".into()).spawn(move || {
            while wanted.recv().is_ok() {
                let Some(park) = weak.upgrade() else { break };
                if park.slot.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
                    continue;
                }
                // Started without the lock held: a phase taking the slot meanwhile starts
                // its own rather than wait for this one.
                match Parked::start(&park.program) {
                    Ok(parked) => {
                        let mut slot = park.slot.lock().unwrap_or_else(PoisonError::into_inner);
                        if slot.is_none() {
                            *slot = Some(parked);
                        }
                    }
                    Err(error) => tracing::debug!(%error, "Cannot start a jail helper ahead of its phase"),
                }
            }
        })?;
        park.wake();
        Ok(Helpers { program, park: Some(park) })
    }

    /// Whether a helper is parked, waiting for the next phase.
    pub fn is_parked(&self) -> bool {
        self.park.as_ref().is_some_and(|park| park.slot.lock().unwrap_or_else(PoisonError::into_inner).is_some())
    }

    /// The nightshift binary that runs the jails.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts `argv` in `dir` inside the jail `spec` describes, with `env` as its whole
    /// environment, stdin empty, stdout and stderr piped, in a process group of its own.
    /// Returns once the command was exec'd in the jail, with every process it starts in
    /// the phase's cgroup.
    pub fn spawn(
        &self,
        env: Vec<(OsString, OsString)>,
        spec: &SandboxSpec,
        argv: &[String],
        dir: &Path,
    ) -> Result<Jailed, JailError> {
        let system: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).collect();
        let request = request(spec, argv, dir, &system, Some(env))?;
        let parked = self.park.as_ref().and_then(|park| park.take()).and_then(|parked| parked.limited(spec));
        let started = match parked {
            Some(started) => started,
            None => {
                let needs = spec.limits.needs_cgroup();
                let cgroup = if needs { with_limits(PhaseCgroup::create(&spec.limits), spec)? } else { None };
                Started::new(Parked::command(&self.program), cgroup)?
            }
        };
        let mut jailed = launch(started, &request)?;
        jailed.refill = self.park.clone().map(Refill);
        Ok(jailed)
    }
}

/// Starts the next helper ahead when dropped: once the phase that took one has ended.
///
/// Not sooner: while a process is being moved into a cgroup, every fork on the machine
/// waits for it (the kernel's cgroup_threadgroup_rwsem), so parking the next helper
/// while a phase starts would slow that phase by as much as was saved.
#[derive(Debug)]
pub struct Refill(Arc<Park>);

impl Drop for Refill {
    fn drop(&mut self) {
        self.0.wake();
    }
}

impl Park {
    /// The parked helper, if it is still alive.
    fn take(&self) -> Option<Parked> {
        let parked = self.slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut parked = parked?;
        let alive = parked.started.as_mut().is_some_and(|started| matches!(started.child.try_wait(), Ok(None)));
        alive.then_some(parked)
    }

    fn wake(&self) {
        let _ = self.refill.lock().unwrap_or_else(PoisonError::into_inner).send(());
    }
}

impl Parked {
    /// Starts a helper in a new cgroup with no limits yet, where one can be made.
    fn start(program: &Path) -> Result<Parked, JailError> {
        let cgroup = PhaseCgroup::create_unlimited().map_err(JailError::Limits)?;
        Ok(Parked { started: Some(Started::new(Parked::command(program), Some(cgroup))?) })
    }

    /// The helper with `spec`'s limits set, if it can have them.
    fn limited(mut self, spec: &SandboxSpec) -> Option<Started> {
        let mut started = self.started.take()?;
        let limited = match started.cgroup.as_mut() {
            Some(cgroup) => cgroup.limit(&spec.limits).is_ok(),
            None => false,
        };
        if limited || !spec.limits.needs_cgroup() {
            Some(started)
        } else {
            self.started = Some(started);
            None
        }
    }

    /// The helper with an empty environment (its command's comes in the request), stdin
    /// empty, stdout and stderr piped, a process group of its own, killed if the thread
    /// that started it ends.
    fn command(program: &Path) -> Command {
        let mut command = super::helper_command(program);
        command.env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        super::die_with_parent(&mut command);
        command
    }
}
