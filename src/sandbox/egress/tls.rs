//! The first bytes of a tunnel: whether they are a TLS ClientHello and which server name
//! (SNI) it asks for, read with bounds on size and time, for any input.
//!
//! A small parser rather than a crate: it needs only the record and handshake framing and
//! one extension, and every length is checked against what is left.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most handshake bytes read before giving up on a ClientHello (real ones are a few
/// KiB; post-quantum key shares stay under 2 KiB).
pub const MAX_HELLO: usize = 64 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS (or a server-speaks-first protocol): nothing to check.
    NotTls,
    /// A whole ClientHello, with its server name if it sent one.
    Tls { sni: Option<String> },
    /// TLS framing whose content does not parse.
    Malformed(&'static str),
    /// A prefix of a ClientHello: more bytes are needed.
    Incomplete,
    /// The client closed before sending anything (from [`read_hello`] only).
    Closed,
}

/// Parses what a client sent first.
pub fn parse(bytes: &[u8]) -> Hello {
    if bytes.is_empty() {
        return Hello::Incomplete;
    }
    if bytes[0] != RECORD_HANDSHAKE || bytes.get(1).is_some_and(|&major| major != 3) {
        return Hello::NotTls;
    }
    match handshake_message(bytes) {
        Ok(Some(message)) => match client_hello_sni(&message) {
            Ok(sni) => Hello::Tls { sni },
            Err(why) => Hello::Malformed(why),
        },
        Ok(None) => Hello::Incomplete,
        Err(why) => Hello::Malformed(why),
    }
}

/// Joins the first handshake message out of consecutive handshake records.
fn handshake_message(mut bytes: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut message = Vec::new();
    loop {
        if bytes.len() < 5 {
            return Ok(None);
        }
        if bytes[0] != RECORD_HANDSHAKE {
            return Err("a record other than handshake inside the client hello");
        }
        let length = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        if length == 0 || length > 16_384 {
            return Err("record length out of range");
        }
        let Some(fragment) = bytes.get(5..5 + length) else {
            // Take what arrived, so a hello's length is known before its end.
            message.extend_from_slice(&bytes[5..]);
            return match declared_length(&message) {
                Some(total) if total > MAX_HELLO => Err("client hello too long"),
                _ => Ok(None),
            };
        };
        message.extend_from_slice(fragment);
        bytes = &bytes[5 + length..];
        if let Some(total) = declared_length(&message) {
            if total > MAX_HELLO {
                return Err("client hello too long");
            }
            if message.len() >= total {
                message.truncate(total);
                return Ok(Some(message));
            }
        }
    }
}

/// The length of the first handshake message, header included, once its header is there.
fn declared_length(message: &[u8]) -> Option<usize> {
    let header = message.get(..4)?;
    Some(4 + (usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3])))
}

/// A cursor that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("client hello truncated inside");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }
    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn client_hello_sni(message: &[u8]) -> Result<Option<String>, &'static str> {
    let mut hello = Reader(message);
    if hello.u8()? != HANDSHAKE_CLIENT_HELLO {
        return Err("first handshake message is not a client hello");
    }
    hello.take(3)?; // length, checked by the caller
    hello.take(2 + 32)?; // legacy version, random
    if hello.vec8()?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = hello.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suite list");
    }
    if hello.vec8()?.is_empty() {
        return Err("no compression methods");
    }
    if hello.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader(hello.vec16()?);
    let mut sni = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        if sni.is_some() {
            return Err("two server name extensions");
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type != NAME_TYPE_HOST {
                continue;
            }
            if sni.is_some() {
                return Err("two host names in the server name extension");
            }
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err("server name is not a printable host name");
            }
            sni = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(sni)
}

/// Whether a server name is the host a tunnel was decided for (case and a trailing dot
/// do not matter).
pub fn same_host(sni: &str, host: &str) -> bool {
    sni.trim_end_matches('.').eq_ignore_ascii_case(host.trim_end_matches('.'))
}

/// What [`read_hello`] saw, and the bytes it read (to be sent on upstream).
pub struct Peeked {
    pub hello: Hello,
    pub bytes: Vec<u8>,
}

/// Reads a client's first bytes until they are known to be a ClientHello or not. A client
/// that sends nothing within `wait` (a server-speaks-first protocol) is `NotTls`; one that
/// stops sending inside a hello, or closes, is `Malformed`.
pub async fn read_hello<S: AsyncRead + Unpin>(stream: &mut S, wait: Duration) -> std::io::Result<Peeked> {
    let mut bytes = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        let hello = match read {
            Err(_elapsed) if bytes.is_empty() => Hello::NotTls,
            Err(_elapsed) => Hello::Malformed("client stopped sending inside its client hello"),
            Ok(Ok(0)) if bytes.is_empty() => Hello::Closed,
            Ok(Ok(0)) => Hello::Malformed("client closed inside its client hello"),
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&chunk[..n]);
                match parse(&bytes) {
                    Hello::Incomplete if bytes.len() > MAX_HELLO + 5 * 8 => Hello::Malformed("client hello too long"),
                    Hello::Incomplete => continue,
                    hello => hello,
                }
            }
            Ok(Err(error)) => return Err(error),
        };
        return Ok(Peeked { hello, bytes });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello as a client would send it, with `names` in its SNI extension, split
    /// into records of at most `record` bytes.
    pub fn client_hello(names: &[&str], record: usize) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut extensions = Vec::new();
        // An unrelated extension first (supported_versions).
        extensions.extend_from_slice(&[0x00, 0x2b, 0, 3, 2, 3, 4]);
        if !names.is_empty() {
            let mut list = Vec::new();
            for name in names {
                list.push(NAME_TYPE_HOST);
                list.extend_from_slice(&(name.len() as u16).to_be_bytes());
                list.extend_from_slice(name.as_bytes());
            }
            extensions.extend_from_slice(&[0, 0]);
            extensions.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
            extensions.extend_from_slice(&(list.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&list);
        }
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let mut out = Vec::new();
        for fragment in message.chunks(record) {
            out.extend_from_slice(&[RECORD_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
        }
        out
    }

    #[test]
    fn finds_the_server_name_in_one_record_or_several() {
        for record in [16_384, 40, 1] {
            let hello = client_hello(&["API.Example.com"], record);
            assert_eq!(parse(&hello), Hello::Tls { sni: Some("API.Example.com".into()) }, "records of {record}");
        }
        assert_eq!(parse(&client_hello(&[], 16_384)), Hello::Tls { sni: None });
    }

    #[test]
    fn every_prefix_of_a_hello_is_incomplete_never_a_verdict() {
        let hello = client_hello(&["a.example"], 30);
        for end in 0..hello.len() {
            assert_eq!(parse(&hello[..end]), Hello::Incomplete, "prefix of {end} bytes");
        }
    }

    #[test]
    fn other_protocols_are_not_tls() {
        for first in [&b"GET / HTTP/1.1\r\n"[..], b"SSH-2.0-OpenSSH", &[0x16, 0x02, 0x00], &[0x00]] {
            assert_eq!(parse(first), Hello::NotTls, "{first:?}");
        }
    }

    #[test]
    fn hostile_hellos_are_malformed_without_panics() {
        let good = client_hello(&["a.example"], 16_384);
        assert!(matches!(parse(&client_hello(&["a.example", "b.example"], 16_384)), Hello::Malformed(_)));
        assert!(matches!(parse(&client_hello(&["bad name"], 16_384)), Hello::Malformed(_)));
        // A hello that claims 16 MiB.
        let mut huge = good.clone();
        huge[6..9].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(parse(&huge), Hello::Malformed("client hello too long"));
        // Flip every byte of a real hello in turn, and fill with pseudo-random garbage after
        // the record header: each parses to some verdict, and none panics.
        for i in 0..good.len() {
            let mut bent = good.clone();
            bent[i] ^= 0xff;
            let _ = parse(&bent);
        }
        let mut rng = fastrand::Rng::with_seed(14);
        for _ in 0..2_000 {
            let len = rng.usize(0..600);
            let mut garbage: Vec<u8> = vec![0x16, 0x03, 0x01, (len >> 8) as u8, len as u8];
            garbage.extend((0..len).map(|_| rng.u8(..)));
            let _ = parse(&garbage);
        }
    }

    #[test]
    fn server_names_compare_without_case_or_trailing_dot() {
        assert!(same_host("API.example.com.", "api.example.com"));
        assert!(same_host("api.example.com", "api.example.com."));
        assert!(!same_host("api.example.com", "example.com"));
    }

    #[tokio::test]
    async fn reading_stops_at_the_end_of_the_hello() {
        let hello = client_hello(&["a.example"], 100);
        let mut sent = hello.clone();
        sent.extend_from_slice(b"after");
        let peeked = read_hello(&mut &sent[..], Duration::from_secs(5)).await.unwrap();
        assert_eq!(peeked.hello, Hello::Tls { sni: Some("a.example".into()) });
        assert!(peeked.bytes.starts_with(&hello));
        let cut = read_hello(&mut &hello[..20], Duration::from_secs(5)).await.unwrap();
        assert_eq!(cut.hello, Hello::Malformed("client closed inside its client hello"));
    }
}
