//! What a `CONNECT` tunnel and a captured connection share once their host and port are
//! allowed and the upstream is connected: the client's first bytes, if a TLS ClientHello,
//! must name the host decided on (else the connection is closed and recorded as denied),
//! then bytes are spliced both ways (in the kernel, `splice.rs`) and counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::record::RecordKind;
use super::splice;
use super::tls::{self, Hello};
use super::{ClientPorts, Shared, Verdict};

/// How long a client may take to send its first bytes before the tunnel is treated as a
/// server-speaks-first protocol (SSH, SMTP) and spliced without a server name check.
pub const HELLO_WAIT: Duration = Duration::from_secs(5);

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
    /// Checks the server name and splices until both sides are done. `early` is what the
    /// client sent that was already read (by the HTTP server, after a `CONNECT`).
    pub async fn run(self, shared: &Arc<Shared>, mut client: TcpStream, early: &[u8], mut upstream: TcpStream) {
        let peeked = match tls::read_hello(&mut early.chain(&mut client), HELLO_WAIT).await {
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
        if upstream.write_all(&peeked.bytes).await.is_err() {
            return;
        }
        counters.add_up(peeked.bytes.len());
        let _ = splice::bidirectional(&client, &upstream, &counters).await;
    }
}
