//! The egress proxy: the only way out of a jail, deciding every connection by the phase's
//! policy and recording each decision.
//!
//! One [`Egress`] per worker owns a small tokio runtime (or uses one it is given) and
//! serves one [`EgressSession`] per phase from the sockets the jail opened inside the
//! phase's network namespace ([`NetnsSockets`]):
//!
//! - `proxy.rs`: the explicit proxy (`HTTP(S)_PROXY`): absolute-form HTTP/1.1 requests,
//!   each decided by host, port and method, and `CONNECT` tunnels, decided by host and port;
//! - `captured.rs`: connections that ignored the proxy, captured by destination port and
//!   decided like `CONNECT` to the name the DNS stub gave out for their address;
//! - `tunnel.rs`: what both kinds of tunnel share: the ClientHello's server name must be
//!   the host decided on (`tls.rs`), then bytes are spliced in the kernel (`splice.rs`);
//! - `dns.rs`: the DNS stub, which answers inside and never forwards;
//! - `upstream.rs`: connections out, refusing addresses that are not public;
//! - `deny.rs`: what a denial says; `record.rs`: the aggregated decisions;
//!   `owner.rs`: which program opened a connection.

mod captured;
mod deny;
mod dns;
mod owner;
mod proxy;
mod record;
mod splice;
mod tls;
mod tunnel;
mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::netpolicy::{Method, NetworkPolicy};

use super::NetnsSockets;
pub use dns::in_pool as is_stub_address;
use record::{Ledger, RecordKey};
pub use record::{MAX_RECORDS, PhaseName, PolicyRecord, RecordKind};
use upstream::Resolver;
pub use upstream::is_public;

/// Client connections one session serves at once, at most; fewer under a low open-file
/// limit ([`connection_cap`]). One past the cap is closed at once and recorded as denied.
pub const MAX_CONNECTIONS: usize = 512;

/// Descriptors one connection may hold in the worker: the client's socket, the
/// upstream's, and a pipe each way for splicing.
pub const FDS_PER_CONNECTION: u64 = 6;

/// One phase's connections may hold at most this share (1/n) of the worker's open files,
/// so a phase cannot take the descriptors the engine needs (its store, its API, other
/// phases).
const PHASE_SHARE: u64 = 4;

/// How many connections a session serves at once when the worker may open `open_files`
/// descriptors: its share of them, at least 1 and at most [`MAX_CONNECTIONS`].
pub fn connection_cap(open_files: u64) -> usize {
    let fits = usize::try_from(open_files / PHASE_SHARE / FDS_PER_CONNECTION).unwrap_or(usize::MAX);
    fits.clamp(1, MAX_CONNECTIONS)
}

/// The process's soft open-file limit now (unlimited if it cannot be read).
fn open_files() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}

/// How long [`EgressSession::finish`] waits for its connections to close.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// How the proxy reaches upstreams.
#[derive(Debug, Clone, Default)]
pub struct EgressSettings {
    /// Names mapped to fixed upstream addresses, like `curl --resolve` (the address's own
    /// port is used). Names here may map to private addresses.
    pub resolve: HashMap<String, SocketAddr>,
    /// Let every name reach private, loopback and link-local addresses (for an operator
    /// whose registries live on a private network).
    pub allow_private_upstreams: bool,
}

/// The worker's egress proxy: starts one session per phase.
pub struct Egress {
    /// The runtime it owns, if it was not given one; shut down without waiting on drop.
    runtime: Option<Runtime>,
    handle: Handle,
    resolver: Resolver,
}

impl Egress {
    /// An egress proxy with its own two-thread runtime, usable from plain threads. Finish
    /// (or drop) its sessions before dropping it: its runtime stops with it.
    pub fn new(settings: EgressSettings) -> io::Result<Egress> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("egress").enable_all().build()?;
        let handle = runtime.handle().clone();
        let mut egress = Egress::on(handle, settings);
        egress.runtime = Some(runtime);
        Ok(egress)
    }

    /// An egress proxy that runs its sessions on an existing runtime.
    pub fn on(handle: Handle, settings: EgressSettings) -> Egress {
        let resolver = Resolver::new(&settings.resolve, settings.allow_private_upstreams);
        Egress { runtime: None, handle, resolver }
    }

    /// Serves a phase's sockets under its policy until the session is finished or
    /// dropped. `jail_pid` is the jail's first process, whose descendants are searched for
    /// the program behind each new record.
    pub fn start(
        &self,
        phase: PhaseName,
        policy: NetworkPolicy,
        sockets: NetnsSockets,
        jail_pid: Option<u32>,
    ) -> io::Result<EgressSession> {
        let _entered = self.handle.enter();
        let proxy = listener(sockets.proxy)?;
        let captured = sockets.captured.into_iter().map(listener).collect::<io::Result<Vec<_>>>()?;
        let dns = sockets
            .dns
            .into_iter()
            .map(|socket| {
                socket.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(socket)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Shared::new(phase, policy, self.resolver.clone(), jail_pid, connection_cap(open_files()));
        shared.spawn(proxy::serve(shared.clone(), proxy));
        for listener in captured {
            shared.spawn(captured::serve(shared.clone(), listener));
        }
        for socket in dns {
            shared.spawn(serve_dns(shared.clone(), socket));
        }
        Ok(EgressSession { shared, handle: self.handle.clone() })
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn listener(socket: std::net::TcpListener) -> io::Result<tokio::net::TcpListener> {
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket)
}

/// One phase's proxy, DNS stub and captures. Dropping it stops them too.
pub struct EgressSession {
    shared: Arc<Shared>,
    handle: Handle,
}

impl EgressSession {
    /// The decisions so far, without stopping.
    pub fn records(&self) -> Vec<PolicyRecord> {
        self.shared.ledger().records()
    }

    /// Stops serving (listeners and open connections are closed) and returns every
    /// decision of the phase. Called from a thread outside the runtime it waits (at most
    /// a few seconds) until every connection is closed; inside a runtime it cannot block,
    /// and connections close as their tasks next run.
    pub fn finish(self) -> Vec<PolicyRecord> {
        self.stop();
        if Handle::try_current().is_err() {
            let tasks = self.shared.tasks.clone();
            self.handle.block_on(async move {
                let _ = tokio::time::timeout(FINISH_WAIT, tasks.wait()).await;
            });
        }
        self.records()
    }

    fn stop(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
    }
}

impl Drop for EgressSession {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a session's tasks share.
pub(crate) struct Shared {
    phase: PhaseName,
    policy: NetworkPolicy,
    resolver: Resolver,
    ledger: Mutex<Ledger>,
    pool: Mutex<dns::FakePool>,
    jail_pid: Option<u32>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The session's connection cap and its permits.
    cap: usize,
    connections: Arc<Semaphore>,
}

/// A decision, with the rule (pattern and origin) that allowed it or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    pub rule: String,
}

impl Verdict {
    pub fn denied(reason: impl Into<String>) -> Verdict {
        Verdict { allowed: false, rule: reason.into() }
    }
}

/// The client side of a connection a record is about: (its port, the port it reached),
/// for finding the program behind it.
pub(crate) type ClientPorts = Option<(u16, u16)>;

impl Shared {
    fn new(
        phase: PhaseName,
        policy: NetworkPolicy,
        resolver: Resolver,
        jail_pid: Option<u32>,
        cap: usize,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            phase,
            policy,
            resolver,
            ledger: Mutex::new(Ledger::new(phase)),
            pool: Mutex::new(dns::FakePool::default()),
            jail_pid,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            cap,
            connections: Arc::new(Semaphore::new(cap)),
        })
    }

    #[cfg(test)]
    pub(crate) fn for_test(
        phase: PhaseName,
        policy: NetworkPolicy,
        resolve: HashMap<String, SocketAddr>,
    ) -> Arc<Shared> {
        Shared::new(phase, policy, Resolver::new(&resolve, false), None, MAX_CONNECTIONS)
    }

    /// Accepts clients on `listener` until the session stops, each served by `handle` on
    /// a task of its own. Past the session's cap (across its listeners) a client is closed
    /// at once and recorded as a denied `kind`.
    async fn accept_each<F, Fut>(self: Arc<Self>, kind: RecordKind, listener: tokio::net::TcpListener, handle: F)
    where
        F: Fn(Arc<Shared>, tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::task::yield_now().await;
                continue;
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.refuse(kind, &stream, peer);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let served = handle(self.clone(), stream, peer);
            self.spawn(async move {
                served.await;
                drop(permit);
            });
        }
    }

    /// Records a client past the cap (the caller closes it): a captured one under the
    /// host it meant, a proxy client, which has said nothing yet, under `*`.
    fn refuse(self: &Arc<Self>, kind: RecordKind, stream: &tokio::net::TcpStream, peer: SocketAddr) {
        let local = stream.local_addr().ok();
        let port = local.map_or(0, |local| local.port());
        let host = match (kind, local) {
            (RecordKind::Captured, Some(local)) => captured::destination_host(&self.pool(), local.ip()),
            _ => "*".to_string(),
        };
        let verdict = Verdict::denied(format!(
            "too many connections at once: a phase may hold {} (its share of the worker's open files)",
            self.cap
        ));
        self.note(kind, &host, port, None, &verdict, Some((peer.port(), port)));
    }

    /// Runs `task` until it ends or the session stops.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pool(&self) -> MutexGuard<'_, dns::FakePool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the policy. A method the policy does not know (`PROPFIND`) counts as unseen:
    /// only rules without methods allow it.
    fn decide(&self, host: &str, port: u16, method: Option<&str>) -> Verdict {
        let method = method.and_then(Method::parse);
        let decision = self.policy.decide(host, port, method);
        match decision.rule.filter(|_| decision.allowed) {
            Some(rule) => Verdict { allowed: true, rule },
            None if method.is_none()
                && Method::ALL.into_iter().any(|m| self.policy.decide(host, port, Some(m)).allowed) =>
            {
                Verdict::denied("a rule allows only some methods here, and a tunnel does not show its method")
            }
            None => Verdict::denied("no rule"),
        }
    }

    /// Counts one decision and returns where its bytes go. The first decision of a
    /// record looks for the program behind the connection, off the async workers.
    fn note(
        self: &Arc<Self>,
        kind: RecordKind,
        host: &str,
        port: u16,
        method: Option<&str>,
        verdict: &Verdict,
        client: ClientPorts,
    ) -> Arc<record::Counters> {
        let key = RecordKey {
            kind,
            host: host.to_string(),
            port,
            method: method.map(str::to_string),
            allowed: verdict.allowed,
            rule: Some(verdict.rule.clone()),
        };
        let noted = self.ledger().note(key, chrono::Utc::now());
        if let (Some(slot), Some(jail_pid), Some((client_port, server_port))) = (noted.new_slot, self.jail_pid, client)
            && let Ok(runtime) = Handle::try_current()
        {
            let shared = Arc::downgrade(self);
            runtime.spawn_blocking(move || {
                if let (Some(command), Some(shared)) =
                    (owner::find_command(jail_pid, client_port, server_port), shared.upgrade())
                {
                    shared.ledger().set_command(slot, command);
                }
            });
        }
        tracing::debug!(
            phase = self.phase.as_str(),
            kind = ?kind,
            host,
            port,
            method,
            allowed = verdict.allowed,
            rule = %verdict.rule,
            "Egress decision"
        );
        noted.counters
    }
}

/// Answers DNS queries on one socket until the session stops.
async fn serve_dns(shared: Arc<Shared>, socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            // An ICMP error reported on the socket; let other tasks run before the next.
            tokio::task::yield_now().await;
            continue;
        };
        let (reply, asked) = dns::answer(&buf[..len], &mut shared.pool());
        if let Some(asked) = asked {
            let verdict = Verdict { allowed: true, rule: asked.answer };
            shared.note(RecordKind::Dns, &asked.name, 53, None, &verdict, None);
        }
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpolicy::RuleOrigin;

    #[test]
    fn one_egress_serves_phases_on_many_threads() {
        fn shared_across_threads<T: Send + Sync>() {}
        shared_across_threads::<Egress>();
        shared_across_threads::<EgressSession>();
    }

    #[test]
    fn records_serialize_for_the_timeline() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let record = PolicyRecord {
            phase: PhaseName::Setup,
            kind: RecordKind::ProxyHttp,
            host: "index.crates.io".into(),
            port: 443,
            method: Some("GET".into()),
            allowed: true,
            rule: Some("index.crates.io (preset rust)".into()),
            count: 3,
            first: at,
            last: at,
            bytes_up: 10,
            bytes_down: 20,
            command: None,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["phase"], "setup");
        assert_eq!(json["kind"], "proxy_http");
        assert_eq!(json["first"], "2027-01-15T08:00:00Z");
        assert!(json.get("command").is_none());
        assert_eq!(serde_json::from_value::<PolicyRecord>(json).unwrap(), record);
    }

    #[test]
    fn allowed_decisions_name_the_rule_and_its_origin() {
        use crate::netpolicy::{AllowRuleConfig, DefaultAction, Preset};
        let rules = [
            AllowRuleConfig { domain: Some("api.example.com".into()), ..Default::default() },
            AllowRuleConfig { preset: Some(Preset::Rust), ..Default::default() },
        ];
        let allow = rules.iter().flat_map(|r| r.expand(RuleOrigin::Static).unwrap()).collect();
        let shared =
            Shared::for_test(PhaseName::Agent, NetworkPolicy { default: DefaultAction::Deny, allow }, HashMap::new());
        assert_eq!(shared.decide("API.example.com", 443, None).rule, "api.example.com (static)");
        assert_eq!(shared.decide("index.crates.io", 443, Some("GET")).rule, "index.crates.io (preset rust)");
        assert_eq!(shared.decide("api.example.com", 80, None), Verdict::denied("no rule"));
    }

    #[test]
    fn a_session_holds_at_most_its_share_of_the_open_files() {
        // `ulimit -n 1024`: 42 connections, 252 descriptors, within a quarter of 1024.
        assert_eq!(connection_cap(1024), 42);
        assert_eq!(connection_cap(1024 + 24), 43);
        assert_eq!(connection_cap(20_000), MAX_CONNECTIONS);
        assert_eq!(connection_cap(u64::MAX), MAX_CONNECTIONS);
        assert_eq!(connection_cap(0), 1);
        for open_files in [64, 256, 1024, 4096, 12_288] {
            let held = connection_cap(open_files) as u64 * FDS_PER_CONNECTION;
            assert!(held <= open_files / PHASE_SHARE, "{open_files}");
        }
    }

    /// Polls `done` until it holds, for at most 20 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what} within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_client_past_the_cap_is_closed_and_recorded_and_one_is_served_again_once_one_ends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        let bound = Duration::from_secs(20);
        let policy = NetworkPolicy { default: crate::netpolicy::DefaultAction::Deny, allow: Vec::new() };
        let shared = Shared::new(PhaseName::Agent, policy, Resolver::new(&HashMap::new(), false), None, 2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        shared.spawn(proxy::serve(shared.clone(), listener));

        let first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        until("both clients served", || shared.connections.available_permits() == 0).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(bound, third.read(&mut byte)).await.expect("the third client is closed");
        assert_eq!(read.unwrap_or(0), 0, "the third client gets nothing");
        let records = shared.ledger().records();
        let refused = records.iter().find(|r| !r.allowed).expect("a denied record");
        assert_eq!((refused.kind, refused.host.as_str(), refused.port), (RecordKind::Connect, "*", addr.port()));
        let rule = refused.rule.as_deref().unwrap_or_default();
        assert!(rule.starts_with("too many connections at once: a phase may hold 2 "), "{rule}");

        drop(first);
        until("the first client's slot freed", || shared.connections.available_permits() == 1).await;
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        fourth.write_all(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n").await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(bound, fourth.read_exact(&mut head)).await.expect("an answer").unwrap();
        assert_eq!(&head, b"HTTP/1.1 403");
        shared.shutdown.cancel();
    }

    #[test]
    fn a_tunnel_denied_only_for_its_hidden_method_says_so() {
        use crate::netpolicy::{AllowRuleConfig, DefaultAction, Method};
        let rule = AllowRuleConfig {
            domain: Some("api.example.com".into()),
            ports: vec![80, 443],
            methods: vec![Method::Get],
            ..Default::default()
        };
        let policy = NetworkPolicy { default: DefaultAction::Deny, allow: rule.expand(RuleOrigin::Static).unwrap() };
        let shared = Shared::for_test(PhaseName::Agent, policy, HashMap::new());
        let hidden = shared.decide("api.example.com", 443, None);
        assert!(!hidden.allowed && hidden.rule.contains("a tunnel does not show its method"), "{hidden:?}");
        assert!(shared.decide("api.example.com", 80, Some("GET")).allowed);
        assert_eq!(shared.decide("api.example.com", 80, Some("POST")), Verdict::denied("no rule"));
        assert_eq!(shared.decide("other.example.com", 443, None), Verdict::denied("no rule"));
    }
}
