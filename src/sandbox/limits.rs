//! Per-phase resource limits: the `task.limits` config, the sizes of a jail's tmpfs mounts,
//! and the cgroup (v2, or v1 as on hybrid hosts) that caps one phase's memory, processes
//! and CPU.
//!
//! The pure part chooses: it parses sizes, resolves a task's limits against the worker's
//! defaults, picks the cgroup hierarchy from `/proc/self/cgroup`, and composes the files a
//! phase's cgroup is made of ([`plan`]). [`PhaseCgroup`] does the writing: the worker
//! creates it before the jail's helper gets its request, puts the helper in it (so every
//! process of the phase is inside), reads whether the OOM killer struck, and removes it
//! when the phase has ended.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What each of a jail's /tmp, home and /dev/shm may hold unless `tmpfs` is set: an
/// eighth of the machine's RAM (the kernel's own default is half, for each).
pub const DEFAULT_TMPFS: &str = "12%";

/// Processes (threads count) a phase may have at once unless `processes` is set.
pub const DEFAULT_PROCESSES: u64 = 4096;

/// The CFS period a CPU quota is expressed in, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The leaf a cgroup v2 worker moves itself into, so its own cgroup may hand the
/// controllers down to the phases' cgroups (v2 allows processes only in leaves).
pub const V2_WORKER_LEAF: &str = "nightshift-worker";

/// The pattern the JSON Schema gives a size; `FromStr` is the authority.
pub const SIZE_PATTERN: &str = "^[0-9]+([KkMmGgTt]i?B?)?$";

/// How to make a machine enforce limits, for messages.
pub const FIX: &str = "run the worker as root (cgroup v1 or v2), or start it in a delegated cgroup v2 subtree \
                       with the memory, pids and cpu controllers (systemd: `Delegate=yes`)";

/// A size in bytes, written `512M`, `2G`, `1536K` or a plain number of bytes (`K`, `M`,
/// `G`, `T` are powers of 1024; a trailing `i` or `B` is allowed: `2GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let fail = |why: &str| format!("invalid size `{text}`: {why}");
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail("write a number and a unit, e.g. `512M` or `2G`"));
        }
        let number: u64 = text[..digits].parse().map_err(|_| fail("number too large"))?;
        let unit = text[digits..].trim_end_matches('B').trim_end_matches('i');
        let shift = match unit {
            "" => 0,
            "K" | "k" => 10,
            "M" | "m" => 20,
            "G" | "g" => 30,
            "T" | "t" => 40,
            _ => return Err(fail("unknown unit; use K, M, G or T")),
        };
        let bytes = number.checked_mul(1 << shift).ok_or_else(|| fail("too large"))?;
        if bytes == 0 {
            return Err(fail("it must be above zero"));
        }
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "A size such as `512M`, `2G` or `1536K` (powers of 1024).",
        })
    }
}

/// CPU as a number of cores, e.g. `0.5` or `2`; kept in thousandths of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu(pub u32);

impl Cpu {
    pub fn from_cores(cores: f64) -> Result<Cpu, String> {
        if !(0.01..=1024.0).contains(&cores) {
            return Err(format!("invalid cpu `{cores}`: give cores between 0.01 and 1024, e.g. `1.5`"));
        }
        Ok(Cpu((cores * 1000.0).round() as u32))
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(f64::from(self.0) / 1000.0)
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cpu, D::Error> {
        Cpu::from_cores(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cpu {
    fn schema_name() -> Cow<'static, str> {
        "Cpu".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "number",
            "minimum": 0.01,
            "maximum": 1024,
            "description": "CPU time as a number of cores, e.g. `0.5` or `2`.",
        })
    }
}

fn processes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match u64::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom("invalid processes `0`: a phase needs at least one")),
        n => Ok(Some(n)),
    }
}

/// `task.limits`: what one phase (each setup command, the agent) may use. A limit set
/// here is enforced or the run is refused; one left out takes the worker's default,
/// enforced where the worker can (see docs/sandbox.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory (and swap) of all of a phase's processes together, e.g. `4G`; past it the
    /// kernel's OOM killer ends a process and the run says so. Default: half the worker's RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Processes and threads a phase may have at once. Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "processes")]
    #[schemars(range(min = 1))]
    pub processes: Option<u64>,
    /// CPU time, in cores (`1.5`). Default: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// What each of the phase's /tmp, home and /dev/shm may hold, e.g. `1G`. Default: an
    /// eighth of the worker's RAM each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<ByteSize>,
}

impl LimitsConfig {
    pub fn is_empty(&self) -> bool {
        *self == LimitsConfig::default()
    }
}

/// One phase's limits, resolved against the worker's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of memory and swap.
    pub memory: Option<u64>,
    pub processes: Option<u64>,
    /// Thousandths of a core.
    pub cpu: Option<u32>,
    /// Bytes each tmpfs may hold; `None`: [`DEFAULT_TMPFS`].
    pub tmpfs: Option<u64>,
    /// Whether a cgroup limit was set explicitly: then a phase whose cgroup cannot be
    /// made is refused rather than run without it.
    pub required: bool,
}

impl Limits {
    /// `config`'s limits, the defaults filling the rest: half of `ram` (bytes, when known)
    /// of memory and [`DEFAULT_PROCESSES`].
    pub fn resolve(config: &LimitsConfig, ram: Option<u64>) -> Limits {
        Limits {
            memory: config.memory.map(|size| size.0).or(ram.map(|ram| ram / 2)),
            processes: config.processes.or(Some(DEFAULT_PROCESSES)),
            cpu: config.cpu.map(|cpu| cpu.0),
            tmpfs: config.tmpfs.map(|size| size.0),
            required: config.memory.is_some() || config.processes.is_some() || config.cpu.is_some(),
        }
    }

    /// Whether any limit needs a cgroup.
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.processes.is_some() || self.cpu.is_some()
    }

    /// The `size=` option of a jail's tmpfs mounts.
    pub fn tmpfs_option(&self) -> String {
        match self.tmpfs {
            Some(bytes) => format!("size={bytes}"),
            None => format!("size={DEFAULT_TMPFS}"),
        }
    }

    /// `memory 512M, processes 64, cpu 1.5`, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(bytes) = self.memory {
            parts.push(format!("memory {}", ByteSize(bytes)));
        }
        if let Some(n) = self.processes {
            parts.push(format!("processes {n}"));
        }
        if let Some(millis) = self.cpu {
            parts.push(format!("cpu {}", f64::from(millis) / 1000.0));
        }
        parts.join(", ")
    }
}

/// The limits phases get, given whether this worker can make cgroups (`cgroups`, from
/// [`probe`]): all of them; or, when it cannot and none was set explicitly, only the
/// tmpfs size. An explicit limit that cannot be enforced refuses the run (fail closed).
pub fn enforceable(resolved: Limits, cgroups: &Result<(), String>) -> Result<Limits, String> {
    match cgroups {
        Ok(()) => Ok(resolved),
        Err(why) if resolved.required => {
            Err(format!("the task's limits ({}) cannot be enforced on this worker: {why}; {FIX}", resolved.describe()))
        }
        Err(_) => Ok(Limits { tmpfs: resolved.tmpfs, ..Limits::default() }),
    }
}

/// The machine's RAM in bytes, from `/proc/meminfo`'s `MemTotal`.
pub fn ram() -> Option<u64> {
    mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Where a worker's phases get their cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One unified hierarchy: phases are children of `parent`.
    V2 { parent: PathBuf },
    /// A hierarchy per controller (the worker's own cgroup in each).
    V1 { memory: PathBuf, pids: PathBuf, cpu: PathBuf },
}

/// The hierarchy to use, from the text of `/proc/self/cgroup`: v1 when the memory, pids and
/// cpu controllers each have a v1 hierarchy (mounted at `root/<controllers>`), else v2
/// mounted at `v2_root`. A worker already in [`V2_WORKER_LEAF`] puts phases beside it.
pub fn choose(self_cgroup: &str, root: &Path, v2_root: &Path) -> Result<Hierarchy, String> {
    let mut v1 = [None, None, None];
    let mut unified = None;
    for line in self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(path);
            continue;
        }
        for (slot, name) in v1.iter_mut().zip(["memory", "pids", "cpu"]) {
            if controllers.split(',').any(|c| c == name) {
                *slot = Some(root.join(controllers).join(path));
            }
        }
    }
    match v1 {
        [Some(memory), Some(pids), Some(cpu)] => Ok(Hierarchy::V1 { memory, pids, cpu }),
        [None, None, None] => {
            let own = v2_root.join(unified.ok_or("no cgroup hierarchy is mounted")?);
            let parent = match own.file_name() {
                Some(leaf) if leaf == V2_WORKER_LEAF => own.parent().map_or(own.clone(), Path::to_path_buf),
                _ => own,
            };
            Ok(Hierarchy::V2 { parent })
        }
        _ => Err("the memory, pids and cpu controllers are split between cgroup v1 and v2".to_string()),
    }
}

/// One file a phase's cgroup is made with, and whether the cgroup is of use without it
/// (swap accounting, for one, may be off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: PathBuf,
    pub value: String,
    pub optional: bool,
}

/// What making one phase's cgroup takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Directories to create, in order (and remove, in reverse, after the phase).
    pub dirs: Vec<PathBuf>,
    pub writes: Vec<Write>,
    /// The `cgroup.procs` files the helper's pid is written to.
    pub procs: Vec<PathBuf>,
    /// Where the OOM killer's count is read (`oom_kill N`).
    pub oom_events: Option<PathBuf>,
}

/// The cgroup `name` for `limits` under `hierarchy`.
pub fn plan(hierarchy: &Hierarchy, limits: &Limits, name: &str) -> Plan {
    let write = |file: PathBuf, value: String, optional: bool| Write { file, value, optional };
    let mut plan = Plan { dirs: Vec::new(), writes: Vec::new(), procs: Vec::new(), oom_events: None };
    match hierarchy {
        Hierarchy::V2 { parent } => {
            let dir = parent.join(name);
            if let Some(bytes) = limits.memory {
                plan.writes.push(write(dir.join("memory.max"), bytes.to_string(), false));
                plan.writes.push(write(dir.join("memory.swap.max"), "0".into(), true));
                plan.oom_events = Some(dir.join("memory.events"));
            }
            if let Some(n) = limits.processes {
                plan.writes.push(write(dir.join("pids.max"), n.to_string(), false));
            }
            if let Some(millis) = limits.cpu {
                let quota = u64::from(millis) * CPU_PERIOD_US / 1000;
                plan.writes.push(write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"), false));
            }
            plan.procs.push(dir.join("cgroup.procs"));
            plan.dirs.push(dir);
        }
        Hierarchy::V1 { memory, pids, cpu } => {
            if let Some(bytes) = limits.memory {
                let dir = memory.join(name);
                plan.writes.push(write(dir.join("memory.limit_in_bytes"), bytes.to_string(), false));
                plan.writes.push(write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string(), true));
                plan.oom_events = Some(dir.join("memory.oom_control"));
                plan.dirs.push(dir);
            }
            if let Some(n) = limits.processes {
                let dir = pids.join(name);
                plan.writes.push(write(dir.join("pids.max"), n.to_string(), false));
                plan.dirs.push(dir);
            }
            if let Some(millis) = limits.cpu {
                let dir = cpu.join(name);
                let quota = u64::from(millis) * CPU_PERIOD_US / 1000;
                plan.writes.push(write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string(), false));
                plan.writes.push(write(dir.join("cpu.cfs_quota_us"), quota.to_string(), false));
                plan.dirs.push(dir);
            }
            plan.procs = plan.dirs.iter().map(|dir| dir.join("tasks")).collect();
        }
    }
    plan
}

/// The controllers a v2 parent must hand down for `limits`.
fn v2_controllers(limits: &Limits) -> Vec<&'static str> {
    [(limits.memory.is_some(), "memory"), (limits.processes.is_some(), "pids"), (limits.cpu.is_some(), "cpu")]
        .into_iter()
        .filter_map(|(wanted, name)| wanted.then_some(name))
        .collect()
}

/// The OOM killer's count in `memory.events` (v2) or `memory.oom_control` (v1).
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// The hierarchy this process's phases would use.
pub fn detect() -> Result<Hierarchy, String> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let root = Path::new("/sys/fs/cgroup");
    let v2_root = if root.join("cgroup.controllers").exists() { root.to_path_buf() } else { root.join("unified") };
    choose(&text, root, &v2_root)
}

/// Whether this worker can give phases cgroups with every limit; if not, why.
pub fn probe() -> Result<(), String> {
    let limits =
        Limits { memory: Some(1 << 30), processes: Some(DEFAULT_PROCESSES), cpu: Some(1000), ..Limits::default() };
    PhaseCgroup::create(&limits).map(drop)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Limits that name every controller (their values are never written).
fn every_controller() -> Limits {
    Limits { memory: Some(u64::MAX), processes: Some(u64::MAX), cpu: Some(u32::MAX), ..Limits::default() }
}

/// One phase's cgroup, removed when dropped (after the phase's processes are gone).
#[derive(Debug)]
pub struct PhaseCgroup {
    hierarchy: Hierarchy,
    name: String,
    plan: Plan,
}

impl PhaseCgroup {
    /// Makes a cgroup with `limits`, named after this worker's pid and a counter.
    pub fn create(limits: &Limits) -> Result<PhaseCgroup, String> {
        let mut cgroup = PhaseCgroup::make(limits)?;
        cgroup.limit(limits)?;
        Ok(cgroup)
    }

    /// Makes a cgroup in every controller a phase's limits can use, with no limit set yet:
    /// a process can be put in it before its phase, and so its limits, are known.
    pub fn create_unlimited() -> Result<PhaseCgroup, String> {
        PhaseCgroup::make(&every_controller())
    }

    /// The directories for the controllers `limits` name, without their values.
    fn make(limits: &Limits) -> Result<PhaseCgroup, String> {
        let hierarchy = detect()?;
        let name = format!("nightshift-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        if let Hierarchy::V2 { parent } = &hierarchy {
            delegate(parent, &v2_controllers(limits))?;
        }
        let mut plan = plan(&hierarchy, limits, &name);
        plan.writes.clear();
        plan.oom_events = None;
        let cgroup = PhaseCgroup { hierarchy, name, plan };
        for dir in &cgroup.plan.dirs {
            std::fs::create_dir(dir).map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
        }
        Ok(cgroup)
    }

    /// Sets `limits`, whose controllers the cgroup was made with.
    pub fn limit(&mut self, limits: &Limits) -> Result<(), String> {
        let wanted = plan(&self.hierarchy, limits, &self.name);
        if let Some(dir) = wanted.dirs.iter().find(|dir| !self.plan.dirs.contains(dir)) {
            return Err(format!("the cgroup {} was not made", dir.display()));
        }
        for write in &wanted.writes {
            match std::fs::write(&write.file, &write.value) {
                Ok(()) => {}
                Err(_) if write.optional => {}
                Err(e) => return Err(format!("cannot write {} to {}: {e}", write.value, write.file.display())),
            }
        }
        self.plan.writes = wanted.writes;
        self.plan.oom_events = wanted.oom_events;
        Ok(())
    }

    /// Puts process `pid` (and so whatever it starts from now on) in the cgroup.
    pub fn join(&self, pid: u32) -> Result<(), String> {
        for procs in &self.plan.procs {
            std::fs::write(procs, pid.to_string())
                .map_err(|e| format!("cannot put the jail in its cgroup ({}): {e}", procs.display()))?;
        }
        Ok(())
    }

    /// Whether the OOM killer ended one of the phase's processes.
    pub fn oom_killed(&self) -> bool {
        let Some(file) = &self.plan.oom_events else { return false };
        std::fs::read_to_string(file).is_ok_and(|text| oom_kills(&text) > 0)
    }
}

impl Drop for PhaseCgroup {
    fn drop(&mut self) {
        // The last processes may take a moment to leave after the phase was reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in self.plan.dirs.iter().rev() {
            while let Err(error) = std::fs::remove_dir(dir) {
                if error.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(cgroup = %dir.display(), %error, "Cannot remove a phase's cgroup");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Makes sure the v2 `parent` hands `controllers` down. When the worker itself is in
/// `parent` (v2 allows no processes beside child cgroups that have controllers), it moves
/// into `parent/nightshift-worker` first.
fn delegate(parent: &Path, controllers: &[&str]) -> Result<(), String> {
    let control = parent.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).map_err(|e| format!("cannot read {}: {e}", control.display()))?;
    let missing: Vec<&str> =
        controllers.iter().copied().filter(|c| !enabled.split_whitespace().any(|on| on == *c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let procs = std::fs::read_to_string(parent.join("cgroup.procs")).unwrap_or_default();
    if procs.lines().any(|pid| pid.trim() == std::process::id().to_string()) {
        let leaf = parent.join(V2_WORKER_LEAF);
        if let Err(e) = std::fs::create_dir(&leaf)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(format!("cannot create {}: {e}", leaf.display()));
        }
        std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("cannot move the worker into {}: {e}", leaf.display()))?;
    }
    let value = missing.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    std::fs::write(&control, &value).map_err(|e| format!("cannot write {value} to {}: {e}", control.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn size(text: &str, expected: Option<u64>) {
        assert_eq!(text.parse::<ByteSize>().ok().map(|s| s.0), expected, "{text}");
    }

    #[test]
    fn sizes_take_binary_units_and_refuse_nonsense() {
        size("512", Some(512));
        size("1536K", Some(1536 << 10));
        size("64M", Some(64 << 20));
        size("2G", Some(2 << 30));
        size("2GiB", Some(2 << 30));
        size("3GB", Some(3 << 30));
        size("1T", Some(1 << 40));
        size("1k", Some(1024));
        size("1m", Some(1 << 20));
        size("1g", Some(1 << 30));
        size("1t", Some(1 << 40));
        for bad in ["", "M", "0", "0G", "1.5G", "12%", "1P", "99999999999T", " 1G"] {
            size(bad, None);
        }
    }

    #[test]
    fn sizes_display_in_their_largest_whole_unit() {
        for (bytes, text) in [(512, "512"), (1536 << 10, "1536K"), (64 << 20, "64M"), (2 << 30, "2G"), (1 << 40, "1T")]
        {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(text.parse::<ByteSize>().unwrap().0, bytes);
        }
    }

    #[test]
    fn the_config_parses_validates_and_names_the_field() {
        let config: LimitsConfig = serde_yaml::from_str("memory: 512M\nprocesses: 64\ncpu: 1.5\ntmpfs: 1G\n").unwrap();
        assert_eq!(config.memory, Some(ByteSize(512 << 20)));
        assert_eq!(config.processes, Some(64));
        assert_eq!(config.cpu, Some(Cpu(1500)));
        assert_eq!(config.tmpfs, Some(ByteSize(1 << 30)));
        assert_eq!(serde_yaml::from_str::<LimitsConfig>(&serde_yaml::to_string(&config).unwrap()).unwrap(), config);
        for (bad, expected) in [
            ("memory: lots\n", "invalid size `lots`"),
            ("processes: 0\n", "invalid processes `0`"),
            ("cpu: 0\n", "invalid cpu"),
            ("cpu: 5000\n", "invalid cpu"),
            ("disk: 1G\n", "unknown field `disk`"),
        ] {
            let error = serde_yaml::from_str::<LimitsConfig>(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{bad}: {error}");
        }
        assert!(LimitsConfig::default().is_empty());
        assert!(!config.is_empty());
    }

    #[test]
    fn explicit_limits_are_required_and_defaults_fill_the_rest() {
        let defaults = Limits::resolve(&LimitsConfig::default(), Some(8 << 30));
        assert_eq!(
            defaults,
            Limits { memory: Some(4 << 30), processes: Some(4096), cpu: None, tmpfs: None, required: false }
        );
        assert_eq!(Limits::resolve(&LimitsConfig::default(), None).memory, None);
        assert_eq!(defaults.tmpfs_option(), "size=12%");
        assert!(defaults.needs_cgroup());
        for config in [
            LimitsConfig { memory: Some(ByteSize(1 << 20)), ..LimitsConfig::default() },
            LimitsConfig { processes: Some(9), ..LimitsConfig::default() },
            LimitsConfig { cpu: Some(Cpu(500)), ..LimitsConfig::default() },
        ] {
            assert!(Limits::resolve(&config, Some(8 << 30)).required, "{config:?}");
        }
        let tmpfs_only = Limits::resolve(&LimitsConfig { tmpfs: Some(ByteSize(1 << 20)), ..Default::default() }, None);
        assert!(!tmpfs_only.required);
        assert_eq!(tmpfs_only.tmpfs_option(), format!("size={}", 1 << 20));
        let explicit = Limits::resolve(
            &LimitsConfig { memory: Some(ByteSize(64 << 20)), processes: Some(32), cpu: Some(Cpu(1500)), tmpfs: None },
            Some(8 << 30),
        );
        assert_eq!(explicit.describe(), "memory 64M, processes 32, cpu 1.5");
        assert!(!Limits::default().needs_cgroup());
        for one in [
            Limits { memory: Some(1), ..Limits::default() },
            Limits { processes: Some(1), ..Limits::default() },
            Limits { cpu: Some(1), ..Limits::default() },
        ] {
            assert!(one.needs_cgroup(), "{one:?}");
        }
    }

    #[test]
    fn explicit_limits_refuse_where_no_cgroup_can_be_made_and_defaults_step_back() {
        let defaults = Limits::resolve(&LimitsConfig { tmpfs: Some(ByteSize(1 << 20)), ..Default::default() }, Some(8));
        let explicit = Limits::resolve(&LimitsConfig { memory: Some(ByteSize(64 << 20)), ..Default::default() }, None);
        let refused: Result<(), String> = Err("permission denied".into());
        assert_eq!(enforceable(defaults, &Ok(())), Ok(defaults));
        assert_eq!(enforceable(explicit, &Ok(())), Ok(explicit));
        assert_eq!(enforceable(defaults, &refused), Ok(Limits { tmpfs: Some(1 << 20), ..Limits::default() }));
        let error = enforceable(explicit, &refused).unwrap_err();
        assert!(error.contains("(memory 64M, processes 4096)"), "{error}");
        assert!(error.contains("permission denied") && error.contains(FIX), "{error}");
    }

    #[test]
    fn ram_is_mem_total() {
        assert_eq!(mem_total("MemFree: 5 kB\nMemTotal:       24683712 kB\n"), Some(24683712 * 1024));
        assert_eq!(mem_total("MemFree: 5 kB\n"), None);
    }

    const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn v1_is_chosen_when_every_controller_has_a_v1_hierarchy() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            choose(HYBRID, root, &root.join("unified")).unwrap(),
            Hierarchy::V1 {
                memory: root.join("memory/process_api/abc"),
                pids: root.join("pids/"),
                cpu: root.join("cpu,cpuacct/"),
            }
        );
        let split = "8:pids:/\n0::/x\n";
        assert!(choose(split, root, root).unwrap_err().contains("split"));
        assert!(choose("", root, root).is_err());
    }

    #[test]
    fn v2_puts_phases_under_the_workers_cgroup_or_beside_its_leaf() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            choose("0::/system.slice/nightshift.service\n", root, root).unwrap(),
            Hierarchy::V2 { parent: root.join("system.slice/nightshift.service") }
        );
        assert_eq!(
            choose("0::/system.slice/nightshift.service/nightshift-worker\n", root, root).unwrap(),
            Hierarchy::V2 { parent: root.join("system.slice/nightshift.service") }
        );
    }

    fn all() -> Limits {
        Limits { memory: Some(64 << 20), processes: Some(32), cpu: Some(1500), tmpfs: None, required: true }
    }

    #[test]
    fn a_v2_plan_is_one_directory_with_every_limit() {
        let plan = plan(&Hierarchy::V2 { parent: PathBuf::from("/cg") }, &all(), "p");
        let dir = PathBuf::from("/cg/p");
        assert_eq!(plan.dirs, std::slice::from_ref(&dir));
        let files: Vec<(String, &str, bool)> = plan
            .writes
            .iter()
            .map(|w| (w.file.strip_prefix(&dir).unwrap().display().to_string(), w.value.as_str(), w.optional))
            .collect();
        assert_eq!(
            files,
            [
                ("memory.max".to_string(), "67108864", false),
                ("memory.swap.max".to_string(), "0", true),
                ("pids.max".to_string(), "32", false),
                ("cpu.max".to_string(), "150000 100000", false),
            ]
        );
        assert_eq!(plan.procs, [dir.join("cgroup.procs")]);
        assert_eq!(plan.oom_events, Some(dir.join("memory.events")));
        assert_eq!(v2_controllers(&all()), ["memory", "pids", "cpu"]);
        assert_eq!(v2_controllers(&Limits { processes: Some(1), ..Limits::default() }), ["pids"]);
        assert_eq!(v2_controllers(&Limits { cpu: Some(1), ..Limits::default() }), ["cpu"]);
        let pids_only = super::plan(
            &Hierarchy::V2 { parent: PathBuf::from("/cg") },
            &Limits { processes: Some(5), ..Limits::default() },
            "p",
        );
        assert_eq!(pids_only.writes.len(), 1);
        assert_eq!(pids_only.oom_events, None);
    }

    #[test]
    fn a_v1_plan_has_a_directory_per_limited_controller() {
        let hierarchy =
            Hierarchy::V1 { memory: PathBuf::from("/m"), pids: PathBuf::from("/p"), cpu: PathBuf::from("/c") };
        let plan = plan(&hierarchy, &all(), "x");
        assert_eq!(plan.dirs, [PathBuf::from("/m/x"), PathBuf::from("/p/x"), PathBuf::from("/c/x")]);
        let writes: Vec<(PathBuf, &str, bool)> =
            plan.writes.iter().map(|w| (w.file.clone(), w.value.as_str(), w.optional)).collect();
        assert_eq!(
            writes,
            [
                (PathBuf::from("/m/x/memory.limit_in_bytes"), "67108864", false),
                (PathBuf::from("/m/x/memory.memsw.limit_in_bytes"), "67108864", true),
                (PathBuf::from("/p/x/pids.max"), "32", false),
                (PathBuf::from("/c/x/cpu.cfs_period_us"), "100000", false),
                (PathBuf::from("/c/x/cpu.cfs_quota_us"), "150000", false),
            ]
        );
        assert_eq!(plan.procs, [PathBuf::from("/m/x/tasks"), PathBuf::from("/p/x/tasks"), PathBuf::from("/c/x/tasks")]);
        assert_eq!(plan.oom_events, Some(PathBuf::from("/m/x/memory.oom_control")));
        let pids_only = super::plan(&hierarchy, &Limits { processes: Some(5), ..Limits::default() }, "x");
        assert_eq!(pids_only.dirs, [PathBuf::from("/p/x")]);
        assert_eq!(pids_only.oom_events, None);
    }

    #[test]
    fn oom_kills_are_read_from_either_version() {
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n"), 2);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"), 1);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn cpu_is_kept_in_thousandths_of_a_core() {
        assert_eq!(Cpu::from_cores(1.5).unwrap(), Cpu(1500));
        assert_eq!(Cpu::from_cores(0.01).unwrap(), Cpu(10));
        assert_eq!(Cpu::from_cores(1024.0).unwrap(), Cpu(1_024_000));
        assert!(Cpu::from_cores(0.0).is_err());
        assert!(Cpu::from_cores(1024.5).is_err());
        assert_eq!(serde_yaml::to_string(&Cpu(1500)).unwrap().trim(), "1.5");
    }
}
