//! What a denial says: a 403 with `X-Nightshift-Egress: denied` and a plain body that
//! tells an agent the block is policy, not a network fault, and that other routes are
//! blocked too (agents otherwise retry around a bare 403).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Response, StatusCode, header};

use super::record::PhaseName;

/// The header every denial carries.
pub const HEADER: &str = "x-nightshift-egress";

/// The body a proxy answer carries.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The text of a denial of `what` (`GET`, `CONNECT`, `connection to`) to `host:port`.
pub fn text(phase: PhaseName, what: &str, host: &str, port: u16, reason: &str) -> String {
    let why = if reason == "no rule" { "no rule allows it".to_string() } else { reason.to_string() };
    format!(
        "The nightshift egress policy of the {phase} phase blocked {what} {host}:{port} ({why}).\n\
         Every other route out of this phase (other proxies, direct connections, raw IP \
         addresses, DNS) is blocked too, so retrying another way will not help.\n",
        phase = phase.as_str(),
    )
}

/// A plain-text answer of the proxy itself.
pub fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A denial as the explicit proxy answers it.
pub fn response(phase: PhaseName, what: &str, host: &str, port: u16, reason: &str) -> Response<Body> {
    let mut response = plain(StatusCode::FORBIDDEN, text(phase, what, host, port, reason));
    response.headers_mut().insert(HEADER, header::HeaderValue::from_static("denied"));
    response
}

/// A denial as raw HTTP/1.1 bytes, for a captured plain-HTTP connection.
pub fn raw(phase: PhaseName, host: &str, port: u16, reason: &str) -> Vec<u8> {
    let body = text(phase, "connection to", host, port, reason);
    format!(
        "HTTP/1.1 403 Forbidden\r\n{HEADER}: denied\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_names_what_was_blocked_and_why_retrying_will_not_help() {
        let text = text(PhaseName::Agent, "POST", "api.example.com", 443, "no rule");
        assert!(text.starts_with(
            "The nightshift egress policy of the agent phase blocked POST api.example.com:443 (no rule allows it)."
        ));
        assert!(text.contains("retrying another way will not help"));
        let raw = String::from_utf8(raw(PhaseName::Setup, "10.0.0.1", 80, "no rule")).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("x-nightshift-egress: denied"));
    }
}
