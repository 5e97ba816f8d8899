//! The explicit proxy the phase's `HTTP(S)_PROXY` names: absolute-form HTTP/1.1 requests,
//! each decided by host, port and method and forwarded without `Proxy-*` and hop-by-hop
//! headers, and `CONNECT` tunnels, decided by host and port (the method inside is unseen).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::deny::{self, Body};
use super::record::RecordKind;
use super::tunnel::Tunnel;
use super::upstream::{Counted, UpstreamError, normalize};
use super::{ClientPorts, Shared, Verdict};

/// How long a client may take to send a request head (and how long a kept-alive
/// connection may idle).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a request head may take in memory (hyper's read buffer).
pub const MAX_HEAD: usize = 64 * 1024;

/// Accepts proxy clients until the session stops, at most the session's cap at once.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    shared
        .accept_each(RecordKind::Connect, listener, |shared, stream, peer| {
            let client_ports = stream.local_addr().ok().map(|local| (peer.port(), local.port()));
            serve_connection(shared, stream, client_ports)
        })
        .await;
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, client_ports: ClientPorts) {
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, request, client_ports).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>, client_ports: ClientPorts) -> Response<Body> {
    if request.method() == hyper::Method::CONNECT {
        return connect(shared, request, client_ports).await;
    }
    forward(shared, request, client_ports).await
}

/// The host (lowercase, no brackets or trailing dot) and port a request names, if any.
fn target(uri: &Uri, default_port: Option<u16>) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let host = normalize(authority.host().trim_start_matches('[').trim_end_matches(']'));
    let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    let port = authority.port_u16().or(default_port)?;
    (valid && port != 0).then_some((host, port))
}

async fn connect(shared: Arc<Shared>, request: Request<Incoming>, client_ports: ClientPorts) -> Response<Body> {
    let Some((host, port)) = target(request.uri(), None) else {
        return deny::plain(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n".into());
    };
    let verdict = shared.decide(&host, port, None);
    if !verdict.allowed {
        shared.note(RecordKind::Connect, &host, port, None, &verdict, client_ports);
        return deny::response(shared.phase, "CONNECT", &host, port, &verdict.rule);
    }
    let upstream = match shared.resolver.connect(&host, port).await {
        Ok(upstream) => upstream,
        Err(error) => {
            return upstream_failed(
                &shared,
                RecordKind::Connect,
                "CONNECT",
                &host,
                port,
                None,
                verdict,
                error,
                client_ports,
            );
        }
    };
    // The tunnel outlives the proxy connection's task, so it holds a place of its own.
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        return deny::plain(StatusCode::SERVICE_UNAVAILABLE, "nightshift egress: too many open connections\n".into());
    };
    let tunnel_shared = shared.clone();
    shared.spawn(async move {
        let _permit = permit;
        let Ok(upgraded) = hyper::upgrade::on(request).await else { return };
        // The connection is the TCP stream this server was given; take it back, with
        // whatever the client sent after its CONNECT that hyper already read.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::warn!("An upgraded CONNECT is not a TCP stream; closing it");
            return;
        };
        let tunnel = Tunnel { kind: RecordKind::Connect, host: &host, port, verdict, client_ports };
        tunnel.run(&tunnel_shared, parts.io.into_inner(), &parts.read_buf, upstream).await;
    });
    Response::new(deny::empty())
}

/// Records a failed upstream connection: a denial when the name resolves only to private
/// addresses, else an allowed request that could not be served (502).
#[allow(clippy::too_many_arguments)]
fn upstream_failed(
    shared: &Arc<Shared>,
    kind: RecordKind,
    what: &str,
    host: &str,
    port: u16,
    method: Option<&str>,
    verdict: Verdict,
    error: UpstreamError,
    client_ports: ClientPorts,
) -> Response<Body> {
    if let UpstreamError::Private { .. } = error {
        let verdict = Verdict::denied(error.to_string());
        shared.note(kind, host, port, method, &verdict, client_ports);
        return deny::response(shared.phase, what, host, port, &verdict.rule);
    }
    shared.note(kind, host, port, method, &verdict, client_ports);
    deny::plain(StatusCode::BAD_GATEWAY, format!("nightshift egress: {error}\n"))
}

/// Forwards one plain-HTTP request to its upstream, on a connection of its own.
async fn forward(shared: Arc<Shared>, request: Request<Incoming>, client_ports: ClientPorts) -> Response<Body> {
    if request.uri().scheme_str() != Some("http") {
        let text = "nightshift egress is a proxy: send absolute-form http:// requests, or CONNECT for https\n";
        return deny::plain(StatusCode::BAD_REQUEST, text.into());
    }
    let Some((host, port)) = target(request.uri(), Some(80)) else {
        return deny::plain(StatusCode::BAD_REQUEST, "the request names no valid host\n".into());
    };
    let method = request.method().as_str().to_string();
    let verdict = shared.decide(&host, port, Some(&method));
    if !verdict.allowed {
        shared.note(RecordKind::ProxyHttp, &host, port, Some(&method), &verdict, client_ports);
        return deny::response(shared.phase, &method, &host, port, &verdict.rule);
    }
    let stream = match shared.resolver.connect(&host, port).await {
        Ok(stream) => stream,
        Err(error) => {
            return upstream_failed(
                &shared,
                RecordKind::ProxyHttp,
                &method,
                &host,
                port,
                Some(&method),
                verdict,
                error,
                client_ports,
            );
        }
    };
    let counters = shared.note(RecordKind::ProxyHttp, &host, port, Some(&method), &verdict, client_ports);
    let io = TokioIo::new(Counted::new(stream, counters));
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(error) => return deny::plain(StatusCode::BAD_GATEWAY, format!("nightshift egress: {error}\n")),
    };
    shared.spawn(async move {
        let _ = connection.await;
    });
    let (mut parts, body) = request.into_parts();
    let origin_form = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_string();
    parts.uri = match origin_form.parse() {
        Ok(uri) => uri,
        Err(_) => return deny::plain(StatusCode::BAD_REQUEST, "bad request target\n".into()),
    };
    parts.version = hyper::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let host_header = if port == 80 { host.clone() } else { format!("{}:{port}", bracketed(&host)) };
    match HeaderValue::from_str(&host_header) {
        Ok(value) => parts.headers.insert(header::HOST, value),
        Err(_) => return deny::plain(StatusCode::BAD_REQUEST, "bad host\n".into()),
    };
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(error) => deny::plain(StatusCode::BAD_GATEWAY, format!("nightshift egress: {error}\n")),
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

/// Removes the headers meant for this hop only: `Connection` and those it names,
/// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` and every `Proxy-*`.
/// hyper frames the body again for the next hop.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [header::CONNECTION, header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers.keys().filter(|name| name.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_proxy_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("accept", "*/*"),
            ("authorization", "Bearer kept"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["accept", "authorization"]);
    }

    #[test]
    fn targets_are_host_and_port() {
        let check = |uri: &str, default: Option<u16>| target(&uri.parse().unwrap(), default);
        assert_eq!(check("http://API.Example.com./x", Some(80)), Some(("api.example.com".into(), 80)));
        assert_eq!(check("a.example:8443", None), Some(("a.example".into(), 8443)));
        assert_eq!(check("[::1]:443", None), Some(("::1".into(), 443)));
        assert_eq!(check("a.example", None), None, "CONNECT needs a port");
        assert_eq!(check("/path", Some(80)), None);
    }
}
