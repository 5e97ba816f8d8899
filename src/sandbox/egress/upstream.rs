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

/// Whether an address is somewhere on the public internet, after the IANA special-purpose
/// registries: loopback, private, link-local, unspecified, multicast, broadcast,
/// documentation (TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20), benchmarking (198.18.0.0/15,
/// also the DNS stub's pool, and 2001:2::/48), reserved (240.0.0.0/4, all IPv6 outside
/// 2000::/3: discard 100::/64, fe00::/9, ...), CGNAT, 192.0.0.0/24, the 6to4 relay
/// anycast 192.88.99.0/24 and the IETF protocol block 2001::/23 (Teredo 2001::/32 among
/// them, whose embedded address is obfuscated) are not. An address that carries an IPv4
/// address (mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is public
/// only if that IPv4 address is.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = v6.segments();
    let octets = v6.octets();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64, well-known prefix: the IPv4 address in the last 32 bits.
        return is_public_v4(Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]));
    }
    if segments[0] == 0x2002 {
        // 6to4: the IPv4 address in bits 16 to 48.
        return is_public_v4(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    let first = segments[0];
    // Global unicast is 2000::/3; everything else is loopback, unspecified, IPv4-compatible,
    // discard-only, unique local, link-local, site-local, multicast or reserved.
    first & 0xe000 == 0x2000
        && !(first == 0x2001 && segments[1] < 0x200) // IETF protocol assignments, 2001::/23
        && !(first == 0x2001 && segments[1] == 0xdb8) // documentation
        && !(first == 0x3fff && segments[1] < 0x1000) // documentation, 3fff::/20
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_private()
        || a == 0 // "this network", 0.0.0.0 included
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local
        || a >= 224 // multicast, reserved 240.0.0.0/4, broadcast
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // IETF protocol assignments, TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, the DNS stub's pool
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)) // TEST-NET-3
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

    fn check(expected: bool, addresses: &[&str]) {
        for address in addresses {
            assert_eq!(is_public(address.parse().unwrap()), expected, "{address}");
        }
    }

    #[test]
    fn special_purpose_ipv4_ranges_are_not_public_and_their_neighbours_are() {
        check(
            false,
            &[
                "192.0.0.1",       // IETF protocol assignments
                "192.0.0.255",     //
                "192.0.2.1",       // TEST-NET-1
                "198.51.100.7",    // TEST-NET-2
                "203.0.113.200",   // TEST-NET-3
                "192.88.99.1",     // 6to4 relay anycast
                "198.18.0.0",      // benchmarking
                "198.19.255.255",  //
                "240.0.0.0",       // reserved
                "254.255.255.255", //
                "255.255.255.255", // broadcast
                "239.255.255.255", // multicast
                "0.255.255.255",   // this network
                "127.255.255.254", // loopback
                "169.254.0.1",     // link-local
                "100.64.0.0",      // CGNAT
                "172.31.255.255",  // private
            ],
        );
        check(
            true,
            &[
                "192.0.1.1",
                "192.0.3.1",
                "192.1.0.1",
                "191.0.0.1",
                "192.88.98.1",
                "192.88.100.1",
                "192.89.99.1",
                "193.88.99.1",
                "198.17.255.255",
                "198.51.99.1",
                "198.51.101.1",
                "198.52.100.1",
                "203.0.112.1",
                "203.0.114.1",
                "203.1.113.1",
                "202.0.113.1",
                "223.255.255.255",
                "1.0.0.1",
                "126.0.0.1",
                "128.0.0.1",
                "169.253.0.1",
                "169.255.0.1",
                "168.254.0.1",
                "100.63.255.255",
                "99.64.0.1",
                "197.18.0.1",
                "199.18.0.1",
            ],
        );
    }

    #[test]
    fn special_purpose_ipv6_ranges_are_not_public() {
        check(
            false,
            &[
                "2001::1",             // Teredo
                "2001:0:4136:e378::1", //
                "2001:2::1",           // benchmarking
                "2001:1ff::1",         // the rest of 2001::/23
                "2001:db8::1",         // documentation
                "2001:db8:ffff::1",    //
                "3fff::1",             // documentation, 3fff::/20
                "3fff:fff::1",         //
                "100::1",              // discard-only
                "100::ffff:ffff",      //
                "fe00::1",             // reserved fe00::/9
                "fe7f::1",             //
                "4000::1",             // outside 2000::/3
                "1fff:ffff::1",        //
                "5f00::1",             // SRv6 SIDs
                "64:ff9b:1::1",        // local-use NAT64
                "64:ff9b::c000:201",   // NAT64 of TEST-NET-1
                "64:ff9b::a00:1",      // NAT64 of 10.0.0.1
                "2002:7f00:1::1",      // 6to4 of 127.0.0.1
                "2002:a00:1::1",       // 6to4 of 10.0.0.1
                "2002:c0a8:101::1",    // 6to4 of 192.168.1.1
                "2002:a9fe:a9fe::1",   // 6to4 of 169.254.169.254
                "2002::1",             // 6to4 of 0.0.0.0
                "::ffff:192.0.2.1",    // mapped TEST-NET-1
            ],
        );
    }

    #[test]
    fn ipv6_global_unicast_and_public_embedded_ipv4_are_public() {
        check(
            true,
            &[
                "2001:200::1",       // just past 2001::/23
                "2001:db7::1",       // next to documentation
                "2001:db9::1",       //
                "2002:5db8:d822::1", // 6to4 of 93.184.216.34
                "2003::1",           //
                "2000::1",           // start of 2000::/3
                "3ffe::1",           // before 3fff::/20
                "3fef:ffff::1",      //
                "3fff:1000::1",      // past 3fff::/20
                "2a00:1450::1",      //
                "64:ff9b::808:808",  // NAT64 of 8.8.8.8
            ],
        );
        // 6to4 and NAT64 read the IPv4 address from their own bits, not from elsewhere.
        check(false, &["2002:a00:1:5db8:d822::1", "64:ff9b::a00:1"]);
        check(true, &["2002:5db8:d822:a00:1::1", "2002:5db8:d822::a00:1"]);
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
