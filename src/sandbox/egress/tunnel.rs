//! What a `CONNECT` tunnel and a captured connection share once their host and port are
//! allowed and the upstream is connected: the client's first bytes, if a TLS ClientHello,
//! must name the host decided on (else the connection is closed and recorded as denied),
//! then bytes are spliced both ways and counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::record::RecordKind;
use super::tls::{self, Hello};
use super::upstream::Counted;
use super::{ClientPorts, Shared, Verdict};

/// How long a client may take to send its first bytes before the tunnel is treated as a
/// server-speaks-first protocol (SSH, SMTP) and spliced without a server name check.
pub const HELLO_WAIT: Duration = Duration::from_secs(5);

/// Buffer size of each direction of a splice: 64 KiB gave a tunnel 0.39 of a direct
/// download's rate on loopback, 128 KiB about half (examples/egress_bench.rs); with
/// `MAX_CONNECTIONS` open tunnels the buffers take at most 128 MiB.
const SPLICE_BUFFER: usize = 128 * 1024;

/// The client side of a tunnel and what was decided for it.
pub struct Tunnel<'a> {
    pub kind: RecordKind,
    pub host: &'a str,
    pub port: u16,
    /// The allowing verdict of host and port.
    pub verdict: Verdict,
    pub client_ports: ClientPorts,
}

impl Tunnel<'_> {
    /// Checks the server name and splices until either side closes.
    pub async fn run<C>(self, shared: &Arc<Shared>, mut client: C, upstream: TcpStream)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let peeked = match tls::read_hello(&mut client, HELLO_WAIT).await {
            Ok(peeked) => peeked,
            Err(_) => return,
        };
        let refused = match &peeked.hello {
            Hello::Closed => {
                shared.note(self.kind, self.host, self.port, None, &self.verdict, self.client_ports);
                return;
            }
            Hello::NotTls | Hello::Incomplete => None,
            Hello::Tls { sni: Some(sni) } if tls::same_host(sni, self.host) => None,
            Hello::Tls { sni: Some(sni) } => Some(format!("sni mismatch: the client hello names {sni}")),
            Hello::Tls { sni: None } => Some("sni mismatch: the client hello names no server".to_string()),
            Hello::Malformed(why) => Some(format!("unreadable client hello: {why}")),
        };
        if let Some(reason) = refused {
            shared.note(self.kind, self.host, self.port, None, &Verdict::denied(reason), self.client_ports);
            return; // both sides are closed as they drop
        }
        let counters = shared.note(self.kind, self.host, self.port, None, &self.verdict, self.client_ports);
        let mut upstream = Counted::new(upstream, counters);
        if upstream.write_all(&peeked.bytes).await.is_err() {
            return;
        }
        let _ =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, SPLICE_BUFFER, SPLICE_BUFFER).await;
    }
}
