//! The egress proxy on loopback in the host namespace: the jail's sockets are 127.0.0.1
//! listeners bound here, upstreams are loopback servers reached through `resolve`, and
//! each test checks both what the client saw and the decision records.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nightshift::netpolicy::{AllowRuleConfig, DefaultAction, Method, NetworkPolicy, RuleOrigin};
use nightshift::sandbox::NetnsSockets;
use nightshift::sandbox::egress::{
    Egress, EgressSession, EgressSettings, MAX_RECORDS, PhaseName, PolicyRecord, RecordKind, is_stub_address,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Far longer than anything here should take, even on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn rule(domain: &str, ports: &[u16], methods: &[Method]) -> AllowRuleConfig {
    AllowRuleConfig {
        domain: Some(domain.into()),
        ports: ports.to_vec(),
        methods: methods.to_vec(),
        ..Default::default()
    }
}

fn policy(rules: &[AllowRuleConfig]) -> NetworkPolicy {
    let allow = rules.iter().flat_map(|rule| rule.expand(RuleOrigin::Static).unwrap()).collect();
    NetworkPolicy { default: DefaultAction::Deny, allow }
}

/// An egress session on loopback sockets, with a runtime for upstreams and TLS clients.
struct Harness {
    runtime: tokio::runtime::Runtime,
    session: Option<EgressSession>,
    proxy: SocketAddr,
    captured_port: u16,
    dns: SocketAddr,
    _egress: Egress,
}

impl Harness {
    fn start(policy: NetworkPolicy, resolve: &[(&str, SocketAddr)], jail_pid: Option<u32>) -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Harness::start_on(runtime, policy, resolve, jail_pid)
    }

    fn start_on(
        runtime: tokio::runtime::Runtime,
        policy: NetworkPolicy,
        resolve: &[(&str, SocketAddr)],
        jail_pid: Option<u32>,
    ) -> Harness {
        let resolve: HashMap<String, SocketAddr> =
            resolve.iter().map(|(name, addr)| (name.to_string(), *addr)).collect();
        let egress = Egress::new(EgressSettings { resolve, allow_private_upstreams: false }).unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        // A wildcard listener, as in the jail: connections to any 127.x address land here.
        let captured = TcpListener::bind("0.0.0.0:0").unwrap();
        let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (proxy_addr, captured_port, dns_addr) =
            (proxy.local_addr().unwrap(), captured.local_addr().unwrap().port(), dns.local_addr().unwrap());
        let sockets = NetnsSockets { proxy, captured: vec![captured], dns: vec![dns] };
        let session = egress.start(PhaseName::Agent, policy, sockets, jail_pid).unwrap();
        Harness { runtime, session: Some(session), proxy: proxy_addr, captured_port, dns: dns_addr, _egress: egress }
    }

    fn finish(&mut self) -> Vec<PolicyRecord> {
        self.session.take().unwrap().finish()
    }

    fn records(&self) -> Vec<PolicyRecord> {
        self.session.as_ref().unwrap().records()
    }

    fn client(&self) -> TcpStream {
        let stream = TcpStream::connect(self.proxy).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
    }
}

/// A plain-HTTP upstream that answers every request with what it received:
/// `METHOD path host=HOST proxy-authorization=yes|no`.
fn http_upstream(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let host = request.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let text = format!(
                        "{} {} host={host} proxy-authorization={}",
                        request.method(),
                        request.uri(),
                        if request.headers().contains_key("proxy-authorization") { "yes" } else { "no" }
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// A TLS upstream for `name` that answers `hello from NAME` to whatever it is sent, and
/// the client config that trusts it.
fn tls_upstream(runtime: &tokio::runtime::Runtime, name: &str) -> (SocketAddr, Arc<rustls::ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let server =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert.clone()], key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let greeting = format!("hello from {name}");
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (acceptor, greeting) = (acceptor.clone(), greeting.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut buf = [0u8; 1024];
                if tls.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, Arc::new(client))
}

/// A response: status, head (lowercase) and body (by content-length, else to the end).
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length =
        head.lines().find_map(|line| line.strip_prefix("content-length:")).map(|n| n.trim().parse::<usize>().unwrap());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            stream.read_exact(&mut body).ok()?;
        }
        None if status == 200 && head.contains("transfer-encoding: chunked") => {
            panic!("chunked answers are not expected")
        }
        None if status == 200 => {}
        None => {
            let _ = stream.read_to_end(&mut body);
        }
    }
    Some(Answer { status, head, body: String::from_utf8_lossy(&body).into_owned() })
}

fn request(stream: &mut TcpStream, text: &str) -> Answer {
    stream.write_all(text.as_bytes()).unwrap();
    read_answer(stream).expect("an answer")
}

fn get(host: &str) -> String {
    format!("GET http://{host}/path?q=1 HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic eDp5\r\n\r\n")
}

fn find<'a>(records: &'a [PolicyRecord], kind: RecordKind, host: &str) -> Vec<&'a PolicyRecord> {
    records.iter().filter(|r| r.kind == kind && r.host == host).collect()
}

/// Whether the proxy closed the connection (read returns end of file or a reset).
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn an_allowed_domain_is_forwarded_without_proxy_headers_and_recorded() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let upstream = http_upstream(&runtime);
    let mut harness =
        Harness::start_on(runtime, policy(&[rule("allowed.test", &[80], &[])]), &[("allowed.test", upstream)], None);
    let mut client = harness.client();
    let answer = request(&mut client, &get("allowed.test"));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "GET /path?q=1 host=allowed.test proxy-authorization=no");
    let records = harness.finish();
    let allowed = find(&records, RecordKind::ProxyHttp, "allowed.test");
    assert_eq!(allowed.len(), 1, "{records:#?}");
    let record = allowed[0];
    assert!(record.allowed);
    assert_eq!((record.port, record.method.as_deref(), record.count), (80, Some("GET"), 1));
    assert_eq!(record.rule.as_deref(), Some("allowed.test (static)"));
    assert!(record.bytes_up > 0 && record.bytes_down > 0, "{record:?}");
    assert!(record.first <= record.last);
}

#[test]
fn a_denied_domain_gets_403_saying_so_and_a_record() {
    let mut harness = Harness::start(policy(&[rule("allowed.test", &[80], &[])]), &[], None);
    let mut client = harness.client();
    let answer = request(&mut client, &get("evil.test"));
    assert_eq!(answer.status, 403);
    assert!(answer.head.contains("x-nightshift-egress: denied"), "{}", answer.head);
    assert!(
        answer.body.contains("egress policy of the agent phase blocked GET evil.test:80 (no rule allows it)"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("retrying another way will not help"));
    // The connection stays usable: the next request is decided on its own.
    assert_eq!(request(&mut client, &get("evil2.test")).status, 403);
    let records = harness.finish();
    let denied = find(&records, RecordKind::ProxyHttp, "evil.test");
    assert_eq!(denied.len(), 1);
    assert!(!denied[0].allowed);
    assert_eq!(denied[0].rule.as_deref(), Some("no rule"));
    assert_eq!(find(&records, RecordKind::ProxyHttp, "evil2.test").len(), 1);
}

#[test]
fn method_rules_apply_to_plain_http() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let upstream = http_upstream(&runtime);
    let mut harness =
        Harness::start_on(runtime, policy(&[rule("api.test", &[80], &[Method::Get])]), &[("api.test", upstream)], None);
    let mut client = harness.client();
    assert_eq!(request(&mut client, &get("api.test")).status, 200);
    let post = "POST http://api.test/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\nhi";
    let answer = request(&mut client, post);
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("blocked POST api.test:80"));
    let records = harness.finish();
    let methods: Vec<(Option<&str>, bool)> =
        find(&records, RecordKind::ProxyHttp, "api.test").iter().map(|r| (r.method.as_deref(), r.allowed)).collect();
    assert_eq!(methods, [(Some("GET"), true), (Some("POST"), false)]);
}

/// Opens a CONNECT tunnel to `target` and returns the stream once the proxy said 200.
fn connect(harness: &Harness, target: &str) -> Result<TcpStream, Answer> {
    let mut client = harness.client();
    let answer = request(&mut client, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    if answer.status == 200 { Ok(client) } else { Err(answer) }
}

/// Speaks TLS for `server_name` over `stream` and returns what the server said.
fn tls_exchange(
    runtime: &tokio::runtime::Runtime,
    config: Arc<rustls::ClientConfig>,
    stream: TcpStream,
    server_name: &str,
) -> std::io::Result<String> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    runtime.block_on(async move {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let mut tls = tokio::time::timeout(PATIENCE, tokio_rustls::TlsConnector::from(config).connect(name, stream))
            .await
            .map_err(std::io::Error::other)??;
        tls.write_all(b"hi").await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        Ok(answer)
    })
}

#[test]
fn connect_with_the_matching_server_name_reaches_a_tls_upstream() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (upstream, config) = tls_upstream(&runtime, "tls.test");
    let mut harness =
        Harness::start_on(runtime, policy(&[rule("tls.test", &[443], &[])]), &[("tls.test", upstream)], None);
    let tunnel = connect(&harness, "tls.test:443").expect("200");
    let said = tls_exchange(&harness.runtime, config, tunnel, "tls.test").unwrap();
    assert_eq!(said, "hello from tls.test");
    let records = harness.finish();
    let allowed = find(&records, RecordKind::Connect, "tls.test");
    assert_eq!(allowed.len(), 1, "{records:#?}");
    assert!(allowed[0].allowed && allowed[0].method.is_none());
    assert!(allowed[0].bytes_up > 0 && allowed[0].bytes_down > 0);
}

#[test]
fn connect_with_another_server_name_is_closed_and_recorded() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (upstream, config) = tls_upstream(&runtime, "tls.test");
    let mut harness =
        Harness::start_on(runtime, policy(&[rule("tls.test", &[443], &[])]), &[("tls.test", upstream)], None);
    let tunnel = connect(&harness, "tls.test:443").expect("200");
    // Domain fronting: the tunnel was asked for an allowed host, the TLS for another.
    assert!(tls_exchange(&harness.runtime, config, tunnel, "fronted.test").is_err());
    let records = harness.finish();
    let denied = find(&records, RecordKind::Connect, "tls.test");
    assert_eq!(denied.len(), 1, "{records:#?}");
    assert!(!denied[0].allowed);
    assert_eq!(denied[0].rule.as_deref(), Some("sni mismatch: the client hello names fronted.test"));
}

#[test]
fn a_denied_connect_gets_403() {
    let mut harness = Harness::start(policy(&[]), &[], None);
    let answer = connect(&harness, "evil.test:443").expect_err("a denial");
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("blocked CONNECT evil.test:443 (no rule allows it)"));
    let records = harness.finish();
    assert!(!find(&records, RecordKind::Connect, "evil.test")[0].allowed);
}

#[test]
fn a_name_that_resolves_to_loopback_is_refused_without_an_override() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let upstream = http_upstream(&runtime);
    let mut harness = Harness::start_on(runtime, policy(&[rule("localhost", &[upstream.port()], &[])]), &[], None);
    let answer = connect(&harness, &format!("localhost:{}", upstream.port())).expect_err("a denial");
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("(private upstream: localhost resolves to"), "{}", answer.body);
    let records = harness.finish();
    let refused = find(&records, RecordKind::Connect, "localhost");
    assert_eq!(refused.len(), 1);
    assert!(!refused[0].allowed);
    assert!(refused[0].rule.as_deref().unwrap().starts_with("private upstream: localhost resolves to"));
}

/// A DNS query for `name` (type A, or `qtype`).
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out
}

/// Sends a query and returns the reply's rcode and its A address, if any.
fn ask(socket: &UdpSocket, id: u16, name: &str, qtype: u16) -> (u8, Option<std::net::Ipv4Addr>) {
    socket.send(&dns_query(id, name, qtype)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    let reply = &buf[..n];
    assert_eq!(&reply[..2], &id.to_be_bytes());
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    let addr = (answers == 1).then(|| {
        let rdata = &reply[n - 4..];
        std::net::Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])
    });
    (reply[3] & 0x0f, addr)
}

fn dns_client(harness: &Harness) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket.connect(harness.dns).unwrap();
    socket
}

#[test]
fn dns_queries_get_stub_addresses_and_are_recorded() {
    let mut harness = Harness::start(policy(&[]), &[], None);
    let socket = dns_client(&harness);
    // A real resolver would answer example.com with a public address; the stub never asks one.
    let (rcode, addr) = ask(&socket, 1, "example.com", 1);
    let addr = addr.expect("an A answer");
    assert_eq!(rcode, 0);
    assert!(is_stub_address(addr), "{addr}");
    assert_eq!(ask(&socket, 2, "Example.COM", 1).1, Some(addr), "one address per name");
    assert_eq!(ask(&socket, 3, "example.com", 28), (0, None), "AAAA: no answer");
    let records = harness.finish();
    let dns = find(&records, RecordKind::Dns, "example.com");
    assert_eq!(dns.len(), 2, "A and AAAA: {dns:#?}");
    assert_eq!(dns[0].count, 2);
    assert_eq!(dns[0].rule.as_deref(), Some("A answered with a stub address, never forwarded"));
}

#[test]
fn a_captured_raw_ip_is_denied_and_recorded() {
    let mut harness = Harness::start(policy(&[rule("allowed.test", &[443], &[])]), &[], None);
    // The jail's listener is a wildcard: a connection to 127.0.0.5 lands on it and its
    // local address is the destination, as any address does behind the jail's route.
    let mut client = TcpStream::connect(("127.0.0.5", harness.captured_port)).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    assert!(closed(&mut client));
    let records = harness.finish();
    let denied = find(&records, RecordKind::Captured, "127.0.0.5");
    assert_eq!(denied.len(), 1, "{records:#?}");
    assert!(!denied[0].allowed);
    assert_eq!((denied[0].port, denied[0].rule.as_deref()), (harness.captured_port, Some("no rule")));
}

#[test]
fn a_thousand_identical_requests_make_one_record() {
    let mut harness = Harness::start(policy(&[]), &[], None);
    let mut client = harness.client();
    for _ in 0..1_000 {
        assert_eq!(request(&mut client, &get("evil.test")).status, 403);
    }
    let records = harness.finish();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].count, 1_000);
}

#[test]
fn ten_thousand_distinct_names_stay_within_the_record_cap() {
    let mut harness = Harness::start(policy(&[]), &[], None);
    let socket = dns_client(&harness);
    for i in 0..10_000u16 {
        let (rcode, addr) = ask(&socket, i, &format!("n{i}.exfil.test"), 1);
        assert_eq!(rcode, 0);
        assert!(addr.is_some());
    }
    let records = harness.finish();
    assert_eq!(records.len(), MAX_RECORDS + 1);
    let overflow = find(&records, RecordKind::Overflow, "*");
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].count, 10_000 - MAX_RECORDS as u64);
    assert_eq!(records.iter().map(|r| r.count).sum::<u64>(), 10_000);
}

#[test]
fn the_record_names_the_program_that_connected() {
    // The test process plays the jail: its own descendants hold the client socket.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", std::process::id())).unwrap();
    let harness = Harness::start(policy(&[]), &[], Some(std::process::id()));
    let mut client = harness.client();
    assert_eq!(request(&mut client, &get("evil.test")).status, 403);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let records = harness.records();
        if let Some(command) = records.first().and_then(|r| r.command.clone()) {
            assert_eq!(command, comm.trim());
            break;
        }
        assert!(Instant::now() < deadline, "no command found: {records:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_client_hellos_are_closed_and_recorded() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (upstream, _) = tls_upstream(&runtime, "tls.test");
    let mut harness =
        Harness::start_on(runtime, policy(&[rule("tls.test", &[443], &[])]), &[("tls.test", upstream)], None);
    // Garbage inside a handshake record.
    let mut garbage = connect(&harness, "tls.test:443").expect("200");
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend(std::iter::repeat_n(0xee, 0x40));
    garbage.write_all(&bytes).unwrap();
    assert!(closed(&mut garbage));
    // A hello cut short, then the client stops sending.
    let mut truncated = connect(&harness, "tls.test:443").expect("200");
    truncated.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]).unwrap();
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut truncated));
    let records = harness.finish();
    let reasons: Vec<&str> = find(&records, RecordKind::Connect, "tls.test")
        .iter()
        .filter(|r| !r.allowed)
        .map(|r| r.rule.as_deref().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{records:#?}");
    assert!(reasons.iter().all(|r| r.starts_with("unreadable client hello")), "{reasons:?}");
}

#[test]
fn injected_request_lines_and_huge_heads_are_refused_and_the_proxy_keeps_serving() {
    let mut harness = Harness::start(policy(&[rule("allowed.test", &[443], &[])]), &[], None);
    for line in [
        "CONNECT allowed.test:443\r\nX-Injected: 1 HTTP/1.1\r\n\r\n",
        "CONNECT allowed.test:443%0d%0aHost:evil.test HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT evil.test:443\rallowed.test:443 HTTP/1.1\r\n\r\n",
    ] {
        let mut client = harness.client();
        client.write_all(line.as_bytes()).unwrap();
        // Closed without an answer, or a 400.
        if let Some(answer) = read_answer(&mut client) {
            assert_eq!(answer.status, 400, "{line:?}");
        }
    }
    // A head that never ends: the proxy stops reading at its buffer's limit.
    let mut client = harness.client();
    let _ = client.write_all(b"GET http://allowed.test/ HTTP/1.1\r\nX-Long: ");
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < 16 << 20 && client.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    if let Some(answer) = read_answer(&mut client) {
        assert_eq!(answer.status, 431);
    }
    assert!(sent < 16 << 20, "the proxy read a 16 MiB head");
    // Still serving.
    assert_eq!(request(&mut harness.client(), &get("evil.test")).status, 403);
    let records = harness.finish();
    assert!(records.iter().all(|r| r.host != "evil.test" || !r.allowed), "{records:#?}");
    assert!(records.iter().all(|r| r.kind != RecordKind::Connect), "no injected CONNECT was decided: {records:#?}");
}

#[test]
fn finishing_closes_listeners_and_open_connections() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let upstream = http_upstream(&runtime);
    let mut harness =
        Harness::start_on(runtime, policy(&[rule("tls.test", &[443], &[])]), &[("tls.test", upstream)], None);
    let mut idle = harness.client();
    let mut tunnel = connect(&harness, "tls.test:443").expect("200");
    let proxy = harness.proxy;
    let records = harness.finish();
    assert!(closed(&mut idle), "an idle proxy connection");
    assert!(closed(&mut tunnel), "an open tunnel");
    let refused = TcpStream::connect(proxy).map(|mut again| closed(&mut again));
    assert!(refused.is_err() || refused.unwrap(), "the proxy listener");
    assert!(records.is_empty() || records.iter().all(|r| r.host == "tls.test"), "{records:#?}");
}
