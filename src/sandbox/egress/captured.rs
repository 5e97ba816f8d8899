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
    loop {
        let Ok(permit) = shared.connections.clone().acquire_owned().await else { return };
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = shared.clone();
        shared.spawn(async move {
            handle(connection, stream, peer).await;
            drop(permit);
        });
    }
}

/// The host a captured destination stands for: the name the stub gave its address for,
/// else the IP literal.
pub fn destination_host(pool: &dns::FakePool, ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) if dns::in_pool(v4) => pool.name(v4).map_or_else(|| v4.to_string(), str::to_string),
        other => other.to_string(),
    }
}

async fn handle(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr) {
    let Ok(local) = client.local_addr() else { return };
    let port = local.port();
    let host = destination_host(&shared.pool(), local.ip());
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
    tunnel.run(&shared, client, upstream).await;
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
