//! The DNS stub: every query the phase sends, to any server, is answered inside and none
//! is forwarded. An A query gets a stub address from 198.18.0.0/15, one per name per
//! session, so a connection to it can be traced back to the name; AAAA gets no answer
//! (clients then use IPv4) and other types an empty answer.
//!
//! A small parser rather than a crate: a stub needs the header and one question, and
//! every length is checked against what is left.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The first address of the stub pool (198.18.0.0/15, reserved for benchmarking, so it
/// is never a real destination).
const POOL_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const POOL_SIZE: u32 = 1 << 17;
/// Names one session may look up; past it, queries for new names fail (SERVFAIL).
pub const MAX_NAMES: usize = 16_384;
/// Seconds a stub answer may be cached; the pool lives as long as the phase.
const TTL: u32 = 300;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const NOTIMP: u8 = 4;

/// Whether an address is in the stub pool.
pub fn in_pool(ip: Ipv4Addr) -> bool {
    u32::from(ip) & !(POOL_SIZE - 1) == POOL_BASE
}

/// The names of one session and the stub addresses they were given.
#[derive(Debug, Default)]
pub struct FakePool {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl FakePool {
    /// The address of `name` (lowercase, no trailing dot), given out on first use; `None`
    /// once the session has [`MAX_NAMES`] names.
    pub fn address(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(&addr) = self.by_name.get(name) {
            return Some(addr);
        }
        if self.by_name.len() >= MAX_NAMES {
            return None;
        }
        // Offsets from 1, so no name gets the pool's network address.
        let addr = Ipv4Addr::from(POOL_BASE + 1 + self.by_name.len() as u32);
        self.by_name.insert(name.to_string(), addr);
        self.by_addr.insert(addr, name.to_string());
        Some(addr)
    }

    /// The name a stub address was given for.
    pub fn name(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }
}

/// A question the stub answered, for the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Lowercase, without a trailing dot.
    pub name: String,
    /// How it was answered, e.g. `A answered with a stub address, never forwarded`.
    pub answer: String,
}

/// Answers one datagram: the reply to send (none for what is not a query) and the
/// question, when there was a well-formed one.
pub fn answer(query: &[u8], pool: &mut FakePool) -> (Option<Vec<u8>>, Option<Asked>) {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return (None, None); // too short to answer, or a response
    }
    let opcode = (query[2] >> 3) & 0x0f;
    if opcode != 0 {
        return (Some(reply_header(query, NOTIMP, 0, 0)), None);
    }
    if u16::from_be_bytes([query[4], query[5]]) != 1 {
        return (Some(reply_header(query, FORMERR, 0, 0)), None);
    }
    let Some((name, end)) = question_name(query) else {
        return (Some(reply_header(query, FORMERR, 0, 0)), None);
    };
    let Some(tail) = query.get(end..end + 4) else {
        return (Some(reply_header(query, FORMERR, 0, 0)), None);
    };
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    let question = &query[12..end + 4];
    if qclass != CLASS_IN {
        return (Some(reply(query, question, NOTIMP, None)), None);
    }
    let (rcode, addr, how) = match qtype {
        TYPE_A if name.is_empty() => (NOERROR, None, "A for the root answered empty".to_string()),
        TYPE_A => match pool.address(&name) {
            Some(addr) => (NOERROR, Some(addr), "A answered with a stub address, never forwarded".to_string()),
            None => (SERVFAIL, None, format!("A refused: more than {MAX_NAMES} names in this phase")),
        },
        TYPE_AAAA => (NOERROR, None, "AAAA answered empty, never forwarded".to_string()),
        other => (NOERROR, None, format!("type {other} answered empty, never forwarded")),
    };
    (Some(reply(query, question, rcode, addr)), Some(Asked { name, answer: how }))
}

/// The question's name, lowercase and dot-joined, and where it ends; `None` for a
/// compressed, over-long or non-hostname name.
fn question_name(query: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            return Some((name, at));
        }
        if len > 63 || name.len() + len + 1 > 254 {
            return None; // a compression pointer (0xC0…), or too long
        }
        let label = query.get(at..at + len)?;
        if !label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
        at += len;
    }
}

/// A reply's header: the query's id and recursion-desired bit, no question.
fn reply_header(query: &[u8], rcode: u8, questions: u16, answers: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[..2]);
    out.push(0x80 | 0x04 | (query[2] & 0x01)); // QR, AA, RD as asked
    out.push(0x80 | rcode); // RA
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

fn reply(query: &[u8], question: &[u8], rcode: u8, addr: Option<Ipv4Addr>) -> Vec<u8> {
    let mut out = reply_header(query, rcode, 1, u16::from(addr.is_some()));
    out.extend_from_slice(question);
    if let Some(addr) = addr {
        out.extend_from_slice(&[0xc0, 12]); // the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query for `name` of type `qtype`, as a stub resolver sends it.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = id.to_be_bytes().to_vec();
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out
    }

    /// The rcode and A addresses of a reply.
    pub fn parse_reply(reply: &[u8]) -> (u8, Vec<Ipv4Addr>) {
        let rcode = reply[3] & 0x0f;
        let answers = u16::from_be_bytes([reply[6], reply[7]]);
        let (_, end) = question_name(reply).unwrap();
        let mut at = end + 4;
        let mut addrs = Vec::new();
        for _ in 0..answers {
            let rdlen = usize::from(u16::from_be_bytes([reply[at + 10], reply[at + 11]]));
            let rdata = &reply[at + 12..at + 12 + rdlen];
            addrs.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
            at += 12 + rdlen;
        }
        (rcode, addrs)
    }

    #[test]
    fn a_queries_get_one_stub_address_per_name() {
        let mut pool = FakePool::default();
        let (reply, asked) = answer(&query(7, "API.Example.com", TYPE_A), &mut pool);
        let reply = reply.unwrap();
        assert_eq!(&reply[..2], &7u16.to_be_bytes(), "the query's id");
        assert_eq!(&reply[12..12 + 17], &query(7, "API.Example.com", TYPE_A)[12..12 + 17], "the question as asked");
        let (rcode, addrs) = parse_reply(&reply);
        assert_eq!((rcode, addrs.len()), (NOERROR, 1));
        assert!(in_pool(addrs[0]));
        assert_eq!(pool.name(addrs[0]), Some("api.example.com"));
        assert_eq!(asked.unwrap().name, "api.example.com");
        let again = parse_reply(&answer(&query(8, "api.example.com.", TYPE_A), &mut pool).0.unwrap()).1;
        assert_eq!(again, addrs, "the same name keeps its address");
        let other = parse_reply(&answer(&query(9, "b.example", TYPE_A), &mut pool).0.unwrap()).1;
        assert_ne!(other, addrs);
    }

    #[test]
    fn aaaa_and_other_types_get_no_address() {
        let mut pool = FakePool::default();
        for qtype in [TYPE_AAAA, 65, 16] {
            let (reply, asked) = answer(&query(1, "a.example", qtype), &mut pool);
            assert_eq!(parse_reply(&reply.unwrap()), (NOERROR, vec![]), "type {qtype}");
            assert!(asked.unwrap().answer.contains("empty"));
        }
        assert!(pool.by_name.is_empty());
    }

    #[test]
    fn hostile_queries_are_refused_without_panics() {
        let mut pool = FakePool::default();
        assert_eq!(answer(&[0; 5], &mut pool), (None, None));
        let mut response = query(1, "a.example", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(answer(&response, &mut pool).0, None, "a response is not answered");
        let mut compressed = query(1, "a.example", TYPE_A);
        compressed[12] = 0xc0;
        let rcode = |reply: Option<Vec<u8>>| reply.unwrap()[3] & 0x0f;
        assert_eq!(rcode(answer(&compressed, &mut pool).0), FORMERR);
        let full = query(1, "a.example", TYPE_A);
        for end in 12..full.len() {
            assert_eq!(rcode(answer(&full[..end], &mut pool).0), FORMERR, "cut at {end}");
        }
        let mut rng = fastrand::Rng::with_seed(53);
        for _ in 0..5_000 {
            let garbage: Vec<u8> = (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect();
            let _ = answer(&garbage, &mut pool);
        }
    }

    #[test]
    fn the_pool_stops_at_its_cap() {
        let mut pool = FakePool::default();
        for i in 0..MAX_NAMES {
            assert!(in_pool(pool.address(&format!("n{i}.example")).unwrap()));
        }
        assert_eq!(pool.address("one-more.example"), None);
        assert!(pool.address("n0.example").is_some(), "known names keep their address");
        let (reply, _) = answer(&query(1, "another.example", TYPE_A), &mut pool);
        assert_eq!(reply.unwrap()[3] & 0x0f, SERVFAIL);
    }

    #[test]
    fn pool_membership() {
        assert!(in_pool(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(in_pool(Ipv4Addr::new(198, 19, 255, 254)));
        assert!(!in_pool(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!in_pool(Ipv4Addr::new(198, 20, 0, 0)));
        assert!(!in_pool(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(!in_pool(Ipv4Addr::new(127, 0, 0, 1)));
    }

    #[test]
    fn stub_addresses_follow_the_pool_network_address_in_order() {
        let mut pool = FakePool::default();
        assert_eq!(pool.address("a.example"), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(pool.address("b.example"), Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(pool.address("c.example"), Some(Ipv4Addr::new(198, 18, 0, 3)));
    }

    #[test]
    fn a_query_for_the_root_gets_no_address() {
        let mut pool = FakePool::default();
        let (reply, asked) = answer(&query(1, ".", TYPE_A), &mut pool);
        assert_eq!(parse_reply(&reply.unwrap()), (NOERROR, vec![]));
        assert_eq!(asked.unwrap(), Asked { name: String::new(), answer: "A for the root answered empty".into() });
        assert!(pool.by_name.is_empty());
    }

    /// The rcode of the reply to an A query for `name`.
    fn rcode_for(name: &str) -> u8 {
        answer(&query(1, name, TYPE_A), &mut FakePool::default()).0.unwrap()[3] & 0x0f
    }

    #[test]
    fn labels_of_63_and_names_of_254_bytes_are_the_longest_answered() {
        let label = |n: usize| "a".repeat(n);
        assert_eq!(rcode_for(&format!("{}.example", label(63))), NOERROR);
        assert_eq!(rcode_for(&format!("{}.example", label(64))), FORMERR);
        let name = |last: usize| format!("{0}.{0}.{0}.{1}", label(63), label(last));
        assert_eq!(name(62).len(), 254);
        assert_eq!(rcode_for(&name(62)), NOERROR);
        assert_eq!(rcode_for(&name(63)), FORMERR);
    }

    #[test]
    fn names_hold_letters_digits_hyphens_and_underscores_only() {
        let mut pool = FakePool::default();
        let asked = answer(&query(1, "My-Host_1.Example", TYPE_A), &mut pool).1.unwrap();
        assert_eq!(asked.name, "my-host_1.example");
        for bad in ["a*b.example", "a b.example", "a/b.example", "a=b.example", "caf\u{e9}.example"] {
            assert_eq!(rcode_for(bad), FORMERR, "{bad}");
        }
    }

    #[test]
    fn replies_are_authoritative_responses_that_echo_recursion_desired() {
        let mut pool = FakePool::default();
        let with_rd = answer(&query(1, "a.example", TYPE_A), &mut pool).0.unwrap();
        assert_eq!((with_rd[2], with_rd[3]), (0x85, 0x80 | NOERROR), "QR AA RD, RA");
        let mut plain = query(1, "a.example", TYPE_A);
        plain[2] = 0x00;
        let without = answer(&plain, &mut pool).0.unwrap();
        assert_eq!(without[2], 0x84, "QR AA");
    }

    #[test]
    fn other_opcodes_and_classes_are_not_implemented() {
        let mut pool = FakePool::default();
        let mut status = query(1, "a.example", TYPE_A);
        status[2] = (2 << 3) | 0x01; // opcode STATUS
        let reply = answer(&status, &mut pool);
        assert_eq!(reply.0.as_ref().map(|r| (r[3] & 0x0f, r.len())), Some((NOTIMP, 12)), "no question");
        assert_eq!(reply.1, None);
        let mut chaos = query(1, "a.example", TYPE_A);
        let class = chaos.len() - 2;
        chaos[class..].copy_from_slice(&3u16.to_be_bytes());
        let (reply, asked) = answer(&chaos, &mut pool);
        let reply = reply.unwrap();
        assert_eq!((reply[3] & 0x0f, &reply[12..]), (NOTIMP, &chaos[12..]), "the question echoed");
        assert_eq!(asked, None);
        let mut two = query(1, "a.example", TYPE_A);
        two[5] = 2;
        assert_eq!(answer(&two, &mut pool).0.unwrap()[3] & 0x0f, FORMERR, "two questions");
        assert!(pool.by_name.is_empty());
    }
}
