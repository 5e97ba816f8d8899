//! The load tools' HTTP/1.1 client on loopback (hyper): connections, one exchange, GETs
//! with the API token, and HMAC-signed hook deliveries.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;
pub type Sender = SendRequest<Body>;
pub type Driver = Connection<TokioIo<TcpStream>, Body>;

pub async fn connect(address: SocketAddr) -> anyhow::Result<(Sender, Driver)> {
    let stream = TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("the HTTP/1.1 handshake")
}

/// Sends `request` on a ready connection and reads the whole answer.
pub async fn exchange(sender: &mut Sender, request: Request<Body>) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await.context("the connection closed")?;
    let response = sender.send_request(request).await.context("sending the request")?;
    let status = response.status();
    let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
    Ok((status, body))
}

/// One request on a connection of its own, answered within `timeout`.
pub async fn exchange_once(
    address: SocketAddr,
    request: Request<Body>,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let answer = tokio::time::timeout(timeout, async {
        let (mut sender, connection) = connect(address).await?;
        let driver = tokio::spawn(connection);
        let answer = exchange(&mut sender, request).await;
        drop(sender);
        driver.abort();
        answer
    })
    .await;
    answer.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")))
}

pub fn get(address: SocketAddr, path: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path).header(HOST, address.to_string());
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Full::new(Bytes::new())).expect("a GET request is well formed")
}

/// `POST /hooks/load-hook` with `{"n": n}`, signed with `secret` as a GitHub-style HMAC
/// client does.
pub fn hook_request(host: &str, n: u64, secret: &str) -> Request<Body> {
    let body = format!("{{\"n\":{n}}}");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body.as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut signature = String::with_capacity(7 + 64);
    signature.push_str("sha256=");
    for byte in mac.finalize().into_bytes().iter() {
        signature.push(HEX[usize::from(byte >> 4)] as char);
        signature.push(HEX[usize::from(byte & 0xf)] as char);
    }
    Request::post("/hooks/load-hook")
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .header("x-hub-signature-256", signature)
        .body(Full::new(Bytes::from(body)))
        .expect("the hook request is well formed")
}

/// The middle of `values` (sorted here); NaN for none.
pub fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
