//! The trust boundary around every setup and agent phase: a jail of namespaces, mounts and
//! a seccomp filter (`jail/`), and the egress proxy that is the jail's only way out
//! (`egress/`), deciding each connection by the phase's rendered network policy.
//!
//! The two halves meet at [`NetnsSockets`]: the jail's helper opens listening sockets
//! inside the phase's network namespace (where it still holds the namespace's
//! capabilities) and hands them to the worker over a Unix socket; the worker's egress
//! proxy serves them from outside, so nothing the phase runs can tamper with it.

pub mod egress;
pub mod jail;
pub mod limits;
pub mod plan;
mod session;

pub use session::{Confinement, PhaseJail, Sandbox};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The port of the proxy the phase is told about (`HTTP_PROXY=http://127.0.0.1:3128`),
/// inside its network namespace.
pub const PROXY_PORT: u16 = 3128;

/// What one phase sees of the machine, besides the system read-only and a private /tmp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The run's workspace, read-write, at the same path inside.
    pub workspace: PathBuf,
    /// The run's own directory (prompt, policy, memory-out), read-write, same path inside.
    pub run_dir: PathBuf,
    /// Further paths at the same path inside: trusted config (an agent profile's login
    /// state) or what a workspace needs (a worktree's mirror).
    pub paths: Vec<SandboxPath>,
    /// `HOME` inside: an empty private directory at this path, under which `paths` may
    /// bring back named parts.
    pub home: PathBuf,
    /// TCP ports on which connections to any address are captured and handed to the
    /// egress proxy as if the phase had asked it for `CONNECT destination:port`.
    pub capture_ports: Vec<u16>,
    /// Its cgroup limits (made by the worker) and the size of its tmpfs mounts.
    #[serde(default)]
    pub limits: limits::Limits,
}

/// One extra path a phase sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPath {
    pub path: PathBuf,
    pub writable: bool,
}

/// Sockets the jail opened inside a phase's network namespace, served by the egress proxy.
#[derive(Debug)]
pub struct NetnsSockets {
    /// `127.0.0.1:PROXY_PORT`: the proxy the phase's `HTTP(S)_PROXY` names.
    pub proxy: std::net::TcpListener,
    /// `0.0.0.0:port` and `[::]:port` for each capture port: every connection to any
    /// address on that port lands here, and `local_addr` of the accepted socket is the
    /// address the phase meant to reach.
    pub captured: Vec<std::net::TcpListener>,
    /// `0.0.0.0:53` and `[::]:53` (UDP): every DNS query, to any server, lands here and is
    /// answered inside; none is forwarded.
    pub dns: Vec<std::net::UdpSocket>,
}
