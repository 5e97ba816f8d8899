//! Connections that ignored the proxy, captured by destination port: the address the
//! phase meant to reach is the accepted socket's local address. An address the DNS stub
//! gave out stands for the name it was asked for; any other is decided as an IP literal,
//! which no host rule matches. Then it goes as a `CONNECT` to `name:port` would.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::deny;
use super::dns;
use super::record::RecordKind;
use super::tunnel::Tunnel;
use super::upstream::UpstreamError;
use super::{Shared, Verdict};

/// The port whose denied connections are answered with an HTTP 403 before closing.
const PLAIN_HTTP_PORT: u16 = 80;

/// Accepts captured connections until the session stops.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    shared.accept_each(RecordKind::Captured, listener, handle).await;
}

/// The host a captured destination stands for: the name the stub gave its address for,
/// else the IP literal.
pub fn destination_host(pool: &dns::FakePool, ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) if dns::in_pool(v4) => pool.name(v4).map_or_else(|| v4.to_string(), str::to_string),
        other => other.to_string(),
    }
}

async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let Ok(destination) = client.local_addr() else { return };
    handle_to(shared, client, peer, destination).await;
}

/// Serves a connection the phase made to `destination`.
async fn handle_to(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr, destination: SocketAddr) {
    let port = destination.port();
    let host = destination_host(&shared.pool(), destination.ip());
    let client_ports = Some((peer.port(), port));
    let mut verdict = shared.decide(&host, port, None);
    let mut upstream = None;
    if verdict.allowed {
        match shared.resolver.connect(&host, port).await {
            Ok(stream) => upstream = Some(stream),
            Err(error @ UpstreamError::Private { .. }) => verdict = Verdict::denied(error.to_string()),
            Err(_) => {} // allowed, but unreachable: closed
        }
    }
    let Some(upstream) = upstream.filter(|_| verdict.allowed) else {
        shared.note(RecordKind::Captured, &host, port, None, &verdict, client_ports);
        if !verdict.allowed && port == PLAIN_HTTP_PORT {
            answer_denied(&shared, &mut client, &host, port, &verdict.rule).await;
        }
        return;
    };
    let tunnel = Tunnel { kind: RecordKind::Captured, host: &host, port, verdict, client_ports };
    tunnel.run(&shared, client, &[], upstream).await;
}

/// Reads what the client sent first (briefly, bounded), so the answer is not lost to a
/// reset, then answers 403 and closes.
async fn answer_denied(shared: &Shared, client: &mut TcpStream, host: &str, port: u16, reason: &str) {
    let mut head = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(1), client.read(&mut head)).await;
    let _ = client.write_all(&deny::raw(shared.phase, host, port, reason)).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpolicy::{AllowRuleConfig, DefaultAction, NetworkPolicy, RuleOrigin};
    use crate::sandbox::egress::record::{PhaseName, PolicyRecord};
    use crate::sandbox::egress::tls::tests::client_hello;

    /// Connects a client to a capture that believes it reached `destination`, sends
    /// `hello` and returns what came back before the connection closed.
    async fn capture(shared: &Arc<Shared>, destination: SocketAddr, hello: &[u8]) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let served = tokio::spawn(handle_to(shared.clone(), accepted, peer, destination));
        client.write_all(hello).await.unwrap();
        let mut echoed = vec![0u8; hello.len()];
        let got = tokio::time::timeout(Duration::from_secs(20), client.read_exact(&mut echoed)).await.unwrap();
        drop(client);
        served.await.unwrap();
        if got.is_ok() { echoed } else { Vec::new() }
    }

    /// An upstream that sends back whatever it is sent.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    fn verdicts(records: &[PolicyRecord]) -> Vec<(String, bool, String)> {
        records.iter().map(|r| (r.host.clone(), r.allowed, r.rule.clone().unwrap_or_default())).collect()
    }

    #[tokio::test]
    async fn a_capture_of_a_stub_address_is_decided_by_its_name_and_server_name() {
        let upstream = echo().await;
        let rule = AllowRuleConfig { domain: Some("tls.test".into()), ..Default::default() };
        let policy = NetworkPolicy { default: DefaultAction::Deny, allow: rule.expand(RuleOrigin::Static).unwrap() };
        let shared = Shared::for_test(PhaseName::Agent, policy, [("tls.test".to_string(), upstream)].into());
        let stub = shared.pool().address("tls.test").unwrap();
        let to_stub = SocketAddr::new(IpAddr::V4(stub), 443);
        let hello = client_hello(&["tls.test"], 16_384);
        assert_eq!(capture(&shared, to_stub, &hello).await, hello, "spliced to the upstream");
        assert!(capture(&shared, to_stub, &client_hello(&["fronted.test"], 16_384)).await.is_empty());
        let unknown = SocketAddr::new("198.18.3.3".parse().unwrap(), 443);
        assert!(capture(&shared, unknown, &hello).await.is_empty());
        assert_eq!(
            verdicts(&shared.ledger().records()),
            [
                ("tls.test".into(), true, "tls.test (static)".into()),
                ("tls.test".into(), false, "sni mismatch: the client hello names fronted.test".into()),
                ("198.18.3.3".into(), false, "no rule".into()),
            ]
        );
    }

    #[test]
    fn stub_addresses_stand_for_their_names_and_others_for_themselves() {
        let mut pool = dns::FakePool::default();
        let addr = pool.address("api.example.com").unwrap();
        assert_eq!(destination_host(&pool, IpAddr::V4(addr)), "api.example.com");
        let mapped = IpAddr::V6(addr.to_ipv6_mapped());
        assert_eq!(destination_host(&pool, mapped), "api.example.com", "a dual-stack listener sees v4 as mapped v6");
        assert_eq!(destination_host(&pool, "198.18.200.1".parse().unwrap()), "198.18.200.1", "not given out");
        assert_eq!(destination_host(&pool, "93.184.216.34".parse().unwrap()), "93.184.216.34");
        assert_eq!(destination_host(&pool, "2001:db8::1".parse().unwrap()), "2001:db8::1");
    }
}
