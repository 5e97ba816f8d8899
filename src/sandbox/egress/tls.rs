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
    use tokio::io::AsyncWriteExt;

    use super::*;

    const SUITES: [u8; 4] = [0x13, 0x01, 0x13, 0x02];

    /// A handshake message: its type, its 24-bit length, then `body`.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(body);
        message
    }

    /// `message` split into handshake records of at most `record` bytes.
    fn records(message: &[u8], record: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for fragment in message.chunks(record) {
            out.extend_from_slice(&[RECORD_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
        }
        out
    }

    /// A ClientHello body; `extensions` is the extension block's content, `None` for a
    /// hello without one.
    fn hello_body(session_id: &[u8], suites: &[u8], compression: &[u8], extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(session_id.len() as u8);
        body.extend_from_slice(session_id);
        body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
        body.extend_from_slice(suites);
        body.push(compression.len() as u8);
        body.extend_from_slice(compression);
        if let Some(extensions) = extensions {
            body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
            body.extend_from_slice(extensions);
        }
        body
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// A server name extension's data: entries of (name type, name).
    fn server_names(entries: &[(u8, &str)]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        data
    }

    /// A ClientHello as a client would send it, with `names` in its SNI extension, split
    /// into records of at most `record` bytes.
    pub fn client_hello(names: &[&str], record: usize) -> Vec<u8> {
        // An unrelated extension first (supported_versions).
        let mut extensions = extension(0x2b, &[2, 3, 4]);
        if !names.is_empty() {
            let entries: Vec<(u8, &str)> = names.iter().map(|name| (NAME_TYPE_HOST, *name)).collect();
            extensions.extend_from_slice(&extension(EXTENSION_SERVER_NAME, &server_names(&entries)));
        }
        let body = hello_body(&[], &SUITES, &[0], Some(&extensions));
        records(&message(HANDSHAKE_CLIENT_HELLO, &body), record)
    }

    /// A ClientHello for `a.example` padded (with the padding extension) to exactly
    /// `total` handshake bytes, header included.
    fn padded_hello(total: usize, record: usize) -> Vec<u8> {
        let sni = extension(EXTENSION_SERVER_NAME, &server_names(&[(NAME_TYPE_HOST, "a.example")]));
        let fixed = 4 + hello_body(&[], &SUITES, &[0], Some(&sni)).len() + 4;
        let mut extensions = sni;
        extensions.extend_from_slice(&extension(21, &vec![0; total - fixed]));
        let hello = message(HANDSHAKE_CLIENT_HELLO, &hello_body(&[], &SUITES, &[0], Some(&extensions)));
        assert_eq!(hello.len(), total);
        records(&hello, record)
    }

    fn malformed(bytes: &[u8]) -> &'static str {
        match parse(bytes) {
            Hello::Malformed(why) => why,
            other => panic!("{other:?} is not malformed"),
        }
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
    fn each_broken_field_of_a_hello_is_named() {
        let a_example = extension(EXTENSION_SERVER_NAME, &server_names(&[(NAME_TYPE_HOST, "a.example")]));
        let hello = |body: Vec<u8>| records(&message(HANDSHAKE_CLIENT_HELLO, &body), 16_384);
        let with = |extensions: &[u8]| hello(hello_body(&[], &SUITES, &[0], Some(extensions)));
        for (bytes, why) in [
            (hello(hello_body(&[9; 33], &SUITES, &[0], Some(&a_example))), "session id longer than 32 bytes"),
            (hello(hello_body(&[], &[], &[0], Some(&a_example))), "bad cipher suite list"),
            (hello(hello_body(&[], &SUITES[..3], &[0], Some(&a_example))), "bad cipher suite list"),
            (hello(hello_body(&[], &SUITES, &[], Some(&a_example))), "no compression methods"),
            (with(&[a_example.clone(), a_example.clone()].concat()), "two server name extensions"),
            (
                with(&extension(EXTENSION_SERVER_NAME, &server_names(&[(NAME_TYPE_HOST, "")]))),
                "server name is not a printable host name",
            ),
            (with(&a_example[..a_example.len() - 1]), "client hello truncated inside"),
            (
                records(&message(2, &hello_body(&[], &SUITES, &[0], Some(&a_example))), 16_384),
                "first handshake message is not a client hello",
            ),
        ] {
            assert_eq!(malformed(&bytes), why);
        }
        let a = Hello::Tls { sni: Some("a.example".into()) };
        // Real TLS 1.3 clients send a 32-byte legacy session id.
        assert_eq!(parse(&hello(hello_body(&[9; 32], &SUITES, &[0], Some(&a_example)))), a);
        assert_eq!(parse(&hello(hello_body(&[], &SUITES, &[0], None))), Hello::Tls { sni: None });
        let other_type_first = server_names(&[(1, "not a host"), (NAME_TYPE_HOST, "a.example")]);
        assert_eq!(parse(&with(&extension(EXTENSION_SERVER_NAME, &other_type_first))), a);
    }

    #[test]
    fn record_framing_is_checked_record_by_record() {
        assert_eq!(malformed(&[RECORD_HANDSHAKE, 3, 1, 0, 0]), "record length out of range");
        assert_eq!(malformed(&[RECORD_HANDSHAKE, 3, 1, 0x40, 0x01]), "record length out of range");
        let mut alert_inside = client_hello(&["a.example"], 30)[..35].to_vec();
        alert_inside.extend_from_slice(&[0x15, 3, 3, 0, 2, 2, 40]);
        assert_eq!(malformed(&alert_inside), "a record other than handshake inside the client hello");
    }

    #[test]
    fn a_hello_up_to_the_cap_is_read_whole_over_full_size_records_and_a_longer_one_is_refused() {
        let a = Hello::Tls { sni: Some("a.example".into()) };
        assert_eq!(parse(&padded_hello(20_000, 16_384)), a);
        assert_eq!(parse(&padded_hello(MAX_HELLO, 16_384)), a);
        assert_eq!(malformed(&padded_hello(MAX_HELLO + 1, 16_384)), "client hello too long");
        // The declared length alone decides, before the bytes arrive.
        assert_eq!(parse(&padded_hello(MAX_HELLO, 16_384)[..100]), Hello::Incomplete);
        assert_eq!(malformed(&padded_hello(MAX_HELLO + 1, 16_384)[..100]), "client hello too long");
        let mut claims_64k_body = client_hello(&["a.example"], 16_384);
        claims_64k_body[6..9].copy_from_slice(&[0x01, 0x00, 0x00]);
        assert_eq!(malformed(&claims_64k_body), "client hello too long");
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

    #[tokio::test]
    async fn a_silent_client_is_not_tls_a_stalled_one_is_malformed_and_a_closed_one_closed() {
        let wait = Duration::from_millis(50);
        let (mut near, _far) = tokio::io::duplex(1024);
        let silent = read_hello(&mut near, wait).await.unwrap();
        assert_eq!(silent.hello, Hello::NotTls);
        assert!(silent.bytes.is_empty());

        let hello = client_hello(&["a.example"], 16_384);
        let (mut near, mut far) = tokio::io::duplex(1024);
        far.write_all(&hello[..20]).await.unwrap();
        let stalled = read_hello(&mut near, wait).await.unwrap();
        assert_eq!(stalled.hello, Hello::Malformed("client stopped sending inside its client hello"));
        assert_eq!(stalled.bytes, hello[..20]);

        let closed = read_hello(&mut &[][..], wait).await.unwrap();
        assert_eq!(closed.hello, Hello::Closed);
    }

    #[tokio::test]
    async fn a_hello_that_arrives_after_a_pause_within_the_wait_is_read() {
        let hello = client_hello(&["a.example"], 16_384);
        let (mut near, mut far) = tokio::io::duplex(1024);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            far.write_all(&sent).await.unwrap();
            far
        });
        let peeked = read_hello(&mut near, Duration::from_secs(10)).await.unwrap();
        assert_eq!(peeked.hello, Hello::Tls { sni: Some("a.example".into()) });
        assert_eq!(peeked.bytes, hello);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn reading_stops_after_a_bounded_number_of_bytes_of_a_finely_split_hello() {
        // A hello of 60 000 bytes in one-byte records: six bytes on the wire per byte of hello.
        let stream = records(&message(HANDSHAKE_CLIENT_HELLO, &vec![0; 60_000]), 1);
        let wait = Duration::from_secs(10);
        let at_the_cap = read_hello(&mut &stream[..MAX_HELLO + 40], wait).await.unwrap();
        assert_eq!(at_the_cap.hello, Hello::Malformed("client closed inside its client hello"));
        let past = read_hello(&mut &stream[..], wait).await.unwrap();
        assert_eq!(past.hello, Hello::Malformed("client hello too long"));
        assert!(past.bytes.len() <= MAX_HELLO + 40 + 4096, "{} bytes read", past.bytes.len());
    }
}
