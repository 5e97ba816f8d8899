//! Upstream connections, made in the worker's own network: names resolved through the
//! operator's fixed addresses first, then the system resolver, and addresses that are not
//! public refused, so an allowed name that resolves to 127.0.0.1 cannot reach the
//! engine's own API. Bytes are counted as they pass.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::record::Counters;

/// How long resolving and connecting to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A policy denial: the name resolves only to addresses the phase may not reach.
    #[error("private upstream: {host} resolves to {addr}")]
    Private { host: String, addr: IpAddr },
    #[error("{host} does not resolve: {why}")]
    Resolve { host: String, why: String },
    #[error("cannot connect to {host} ({addrs}): {why}")]
    Connect { host: String, addrs: String, why: String },
}

/// Whether an address is somewhere on the public internet. Loopback, private,
/// link-local, unspecified, multicast, broadcast and reserved ranges, CGNAT and the DNS
/// stub's 198.18.0.0/15 are not.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            let nat64 = v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || first & 0xfe00 == 0xfc00 // unique local
                || first & 0xffc0 == 0xfe80 // link-local
                || first & 0xffc0 == 0xfec0 // site-local (deprecated)
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
                || (nat64 && !is_public_v4(embedded_v4(v6))))
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let octets = v6.octets();
    Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15])
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast()
        || a == 0 // "this network"
        || a >= 240 // reserved
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 198 && (b == 18 || b == 19))) // benchmarking, the DNS stub's pool
}

/// Where names go.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    /// Lowercase names without a trailing dot, each to one fixed address.
    fixed: HashMap<String, SocketAddr>,
    allow_private: bool,
}

impl Resolver {
    pub fn new(fixed: &HashMap<String, SocketAddr>, allow_private: bool) -> Resolver {
        let fixed = fixed.iter().map(|(name, addr)| (normalize(name), *addr)).collect();
        Resolver { fixed, allow_private }
    }

    /// The addresses to try for `host:port`. A fixed address is used as given (its own
    /// port included); otherwise the system resolver's public answers.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
        let name = normalize(host);
        if let Some(addr) = self.fixed.get(&name) {
            return Ok(vec![*addr]);
        }
        let found: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((name.as_str(), port)))
                .await
                .map_err(|_| UpstreamError::Resolve { host: name.clone(), why: "timed out".into() })?
                .map_err(|error| UpstreamError::Resolve { host: name.clone(), why: error.to_string() })?
                .collect(),
        };
        if self.allow_private {
            return Ok(found);
        }
        let public: Vec<SocketAddr> = found.iter().copied().filter(|addr| is_public(addr.ip())).collect();
        match (public.is_empty(), found.first()) {
            (false, _) => Ok(public),
            (true, Some(refused)) => Err(UpstreamError::Private { host: name, addr: refused.ip() }),
            (true, None) => Err(UpstreamError::Resolve { host: name, why: "no addresses".into() }),
        }
    }

    /// Resolves and connects, trying each address in turn.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        let addrs = self.resolve(host, port).await?;
        let mut why = String::new();
        for addr in &addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(error)) => why = error.to_string(),
                Err(_) => why = "timed out".to_string(),
            }
        }
        let addrs = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Err(UpstreamError::Connect { host: normalize(host), addrs, why })
    }
}

/// A host as decided and looked up: lowercase, without a trailing dot.
pub fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// An upstream stream that counts what is written to it (up) and read from it (down).
pub struct Counted<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<Counters>) -> Counted<S> {
        Counted { inner, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.counters.add_down(buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counters.add_up(n);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "198.18.0.1",
            "198.19.255.254",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "100.128.0.1", "198.20.0.1", "2606:2800:220:1::1", "64:ff9b::5db8:d822"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn deprecated_site_local_v6_is_private_and_a_mapped_public_v4_is_public() {
        // fec0::/10, next to link-local fe80::/10 (which ends at febf).
        for private in ["fec0::1", "feff:ffff::1", "febf::1"] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        assert!(is_public("::ffff:93.184.216.34".parse().unwrap()));
    }

    #[tokio::test]
    async fn fixed_addresses_come_first_and_private_answers_are_refused() {
        let fixed: HashMap<String, SocketAddr> = [("Up.Test".to_string(), "127.0.0.1:9".parse().unwrap())].into();
        let resolver = Resolver::new(&fixed, false);
        assert_eq!(resolver.resolve("up.test.", 443).await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
        let refused = resolver.resolve("127.0.0.1", 80).await.unwrap_err();
        assert!(matches!(refused, UpstreamError::Private { .. }), "{refused}");
        let allowed = Resolver::new(&HashMap::new(), true);
        assert_eq!(allowed.resolve("127.0.0.1", 80).await.unwrap(), vec!["127.0.0.1:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn counted_streams_count_bytes_each_way_and_pass_flush_and_shutdown_through() {
        use std::future::poll_fn;
        use std::sync::atomic::Ordering;

        use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

        let bound = Duration::from_secs(10);
        let (near, mut far) = tokio::io::duplex(64);
        let counters = Arc::new(Counters::default());
        let mut counted = Counted::new(BufWriter::new(near), counters.clone());

        far.write_all(b"pong!").await.unwrap();
        // A read into a buffer that already holds bytes counts only the new ones.
        let mut storage = [0u8; 16];
        let mut buf = ReadBuf::new(&mut storage);
        buf.put_slice(b"abc");
        poll_fn(|cx| Pin::new(&mut counted).poll_read(cx, &mut buf)).await.unwrap();
        assert_eq!(buf.filled(), b"abcpong!");
        assert_eq!(counters.down.load(Ordering::Relaxed), 5);

        counted.write_all(b"hello").await.unwrap();
        assert_eq!(counters.up.load(Ordering::Relaxed), 5);
        counted.flush().await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(bound, far.read_exact(&mut got)).await.expect("flush reached the stream").unwrap();
        assert_eq!(&got, b"hello");

        counted.write_all(b"bye").await.unwrap();
        counted.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(bound, far.read_to_end(&mut rest)).await.expect("shutdown reached the stream").unwrap();
        assert_eq!(rest, b"bye");
        assert_eq!(counters.up.load(Ordering::Relaxed), 8);
    }
}
