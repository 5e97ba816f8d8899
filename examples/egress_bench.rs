//! Load tool for the egress proxy, on loopback, direct and through a `CONNECT` tunnel
//! side by side in one run:
//!
//! ```text
//! cargo build --release --example egress_bench
//! target/release/examples/egress_bench [MIB=1024] [ROUNDS=5] [CONNECTIONS=500]
//! ```
//! - download: ROUNDS rounds, each one MIB MiB download straight from a loopback upstream
//!   and one through the proxy's tunnel (the client sends a short non-TLS request first,
//!   so the tunnel peeks it, then splices); prints the median rate of each and the ratio.
//! - first byte: CONNECTIONS new connections, alternating direct and tunnelled, each
//!   timed from `connect` to the upstream's first byte; prints the p50 and p99 of each
//!   and the p50 the proxy adds.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use nightshift::netpolicy::{AllowRuleConfig, DefaultAction, NetworkPolicy, RuleOrigin};
use nightshift::sandbox::NetnsSockets;
use nightshift::sandbox::egress::{Egress, EgressSettings, PhaseName};

const CHUNK: usize = 1 << 20;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let mib = args.first().copied().unwrap_or(1024);
    let rounds = args.get(1).copied().unwrap_or(5);
    let connections = args.get(2).copied().unwrap_or(500);

    let upstream = upstream(mib);
    let rule = AllowRuleConfig { domain: Some("bulk.test".into()), ..Default::default() };
    let policy = NetworkPolicy { default: DefaultAction::Deny, allow: rule.expand(RuleOrigin::Static).unwrap() };
    let egress = Egress::new(EgressSettings {
        resolve: HashMap::from([("bulk.test".to_string(), upstream)]),
        allow_private_upstreams: false,
    })
    .unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let sockets = NetnsSockets { proxy, captured: vec![], dns: vec![UdpSocket::bind("127.0.0.1:0").unwrap()] };
    let session = egress.start(PhaseName::Agent, policy, sockets, None).unwrap();

    let (mut direct, mut tunnelled) = (Vec::new(), Vec::new());
    let (mut direct_cpu, mut tunnel_cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (rate, cpu) = download(|| TcpStream::connect(upstream).unwrap(), b"BULK\n", mib);
        direct.push(rate);
        direct_cpu.push(cpu);
        let (rate, cpu) = download(|| tunnel(proxy_addr), b"BULK\n", mib);
        tunnelled.push(rate);
        tunnel_cpu.push(cpu);
    }
    let (direct_rate, tunnel_rate) = (median(&mut direct), median(&mut tunnelled));
    println!(
        "download {mib} MiB x {rounds}: direct {direct_rate:.0} MiB/s, tunnel {tunnel_rate:.0} MiB/s (medians), tunnel/direct {:.2}",
        tunnel_rate / direct_rate
    );
    let (direct_cpu, tunnel_cpu) = (median(&mut direct_cpu), median(&mut tunnel_cpu));
    println!(
        "CPU per GiB (this process: client, upstream and proxy; medians): direct {direct_cpu:.2} s, tunnel {tunnel_cpu:.2} s ({:.2}x); cores busy: direct {:.2}, tunnel {:.2}",
        tunnel_cpu / direct_cpu,
        direct_cpu * direct_rate / 1024.0,
        tunnel_cpu * tunnel_rate / 1024.0
    );

    let (mut direct, mut tunnelled) = (Vec::new(), Vec::new());
    for i in 0..connections {
        if i % 2 == 0 {
            direct.push(first_byte(|| TcpStream::connect(upstream).unwrap()));
        } else {
            tunnelled.push(first_byte(|| tunnel(proxy_addr)));
        }
    }
    let (d50, d99) = percentiles(&mut direct);
    let (t50, t99) = percentiles(&mut tunnelled);
    println!(
        "first byte over {connections} new connections: direct p50 {d50:.0} µs p99 {d99:.0} µs, tunnel p50 {t50:.0} µs p99 {t99:.0} µs, added p50 {:.0} µs",
        t50 - d50
    );
    let records = session.finish();
    let bytes: u64 = records.iter().map(|r| r.bytes_down).sum();
    println!("records: {} ({} MiB counted down)", records.len(), bytes >> 20);
}

/// An upstream that answers `BULK\n` with `mib` MiB and `BYTE\n` with one byte.
fn upstream(mib: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut ask = [0u8; 5];
                if stream.read_exact(&mut ask).is_err() {
                    return;
                }
                if &ask == b"BYTE\n" {
                    let _ = stream.write_all(b"x");
                    return;
                }
                let chunk = vec![7u8; CHUNK];
                for _ in 0..mib {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A stream through the proxy's tunnel to bulk.test, once the proxy said 200.
fn tunnel(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"CONNECT bulk.test:443 HTTP/1.1\r\nHost: bulk.test:443\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// MiB/s of one download, and the CPU seconds per GiB this process spent on it.
fn download(open: impl Fn() -> TcpStream, ask: &[u8], mib: usize) -> (f64, f64) {
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut stream = open();
    stream.write_all(ask).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0usize;
    while total < mib * CHUNK {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {total} bytes");
        total += n;
    }
    let rate = mib as f64 / started.elapsed().as_secs_f64();
    (rate, (cpu_seconds() - cpu_before) * 1024.0 / mib as f64)
}

/// User and system CPU time of this whole process so far.
fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

/// Microseconds from connect to the first byte of a one-byte answer.
fn first_byte(open: impl Fn() -> TcpStream) -> f64 {
    let started = Instant::now();
    let mut stream = open();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"BYTE\n").unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).unwrap();
    started.elapsed().as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentiles(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[(values.len() * 99 / 100).min(values.len() - 1)])
}
