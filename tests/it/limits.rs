//! What no client and no rule can take from a real `nightshift serve`: a hook whose rules
//! run to their deadline delays only itself (503 with Retry-After beyond its line), a
//! stalled body or head is cut off at its deadline, credentials in headers are refused
//! before the body is sent, the connection cap holds new connections until a slot
//! frees, the unauthenticated-bytes budget is shared, and malformed chunked encoding
//! is a 400; cron slots fire from the scheduler's own thread. Raw TCP where the test
//! needs to stall or send only part of a request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::serving::{Serving, hmac_hex};

/// How long any answer or close may take; far above what each needs.
const PATIENCE: Duration = Duration::from_secs(30);

fn hook(name: &str, auth: &str, extra: &str) -> String {
    format!(
        "name: {name}\ntrigger:\n  webhook:\n    auth: {auth}\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  base: main\n  branch: \"agent/{name}-{{{{ event.n }}}}\"\n  prompt: \"Handle {{{{ event.n }}}}\"\n{extra}"
    )
}

const BEARER: &str = "{ bearer: { token: env:TOKEN } }";
const HMAC: &str = "{ hmac: { secret: env:SECRET } }";

/// A policy script that runs to the rule deadline whatever the build's speed: each
/// operation reverses a 5,000-item array.
const SLOW_POLICY: &str = "  network:\n    agent:\n      script_may_allow: [{ domain: \"*.example.com\" }]\n      script: |\n        let a = [];\n        a.pad(5000, 1);\n        loop { a.reverse(); }\n";

fn start(args: &[&str]) -> Serving {
    let files = [
        ("fast.yaml", hook("fast", BEARER, "")),
        ("slow.yaml", hook("slow", BEARER, SLOW_POLICY)),
        ("signed.yaml", hook("signed", HMAC, "")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(name, text)| (*name, text.as_str())).collect();
    let mut all = vec!["--workers", "0"];
    all.extend_from_slice(args);
    Serving::start_with_args(&files, &[("TOKEN", "t0ken"), ("SECRET", "s3cret")], &all)
}

fn connect(server: &Serving) -> TcpStream {
    let address = server.url.trim_start_matches("http://");
    let stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A request's head; `body` follows it when given in full.
fn head(path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text + "\r\n"
}

fn bearer_request(n: u64) -> Vec<u8> {
    let body = format!("{{\"n\": {n}}}");
    let length = body.len().to_string();
    format!("{}{body}", head("/hooks/fast", &[("Authorization", "Bearer t0ken"), ("Content-Length", &length)]))
        .into_bytes()
}

/// Reads until the peer closes or an answer's head and `Content-Length` body are in;
/// `None` if nothing came before the read timeout.
fn read_answer(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if bytes.is_empty() {
                    return None;
                }
                break;
            }
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok())?;
    Some((status, text))
}

/// Waits until the peer closes the connection; how long that took.
fn wait_for_close(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the connection was still open after {PATIENCE:?}")
            }
            Err(_) => return started.elapsed(),
        }
    }
}

#[test]
fn a_hook_whose_rules_run_to_their_deadline_delays_only_itself() {
    let server = start(&["--hook-concurrency", "1", "--hook-queue", "2"]);
    let slow_done = AtomicUsize::new(0);
    // The eight are sent together, well inside one evaluation's 250 ms, however slowly
    // their threads start.
    let together = std::sync::Barrier::new(8);
    let slow_answers = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..8)
            .map(|n| {
                let server = &server;
                let slow_done = &slow_done;
                let together = &together;
                scope.spawn(move || {
                    together.wait();
                    let body = format!("{{\"n\": {n}}}");
                    let answer = server.post(
                        "/hooks/slow",
                        &[("Content-Type", "application/json"), ("Authorization", "Bearer t0ken")],
                        body,
                    );
                    if answer.status == 202 {
                        slow_done.fetch_add(1, Ordering::SeqCst);
                    }
                    answer
                })
            })
            .collect();
        // The fast hook is answered while the slow one's admitted deliveries (one at a
        // time, each at least the 250 ms deadline) are still being evaluated.
        let fast = server.post(
            "/hooks/fast",
            &[("Content-Type", "application/json"), ("Authorization", "Bearer t0ken")],
            r#"{"n": 1}"#,
        );
        assert_eq!(fast.status, 202, "{:?}", fast.body);
        let slow_finished_before_fast = slow_done.load(Ordering::SeqCst);
        let answers: Vec<_> = senders.into_iter().map(|sender| sender.join().unwrap()).collect();
        assert!(
            slow_finished_before_fast < 3,
            "the fast hook waited for the slow one: {slow_finished_before_fast} slow deliveries were answered first"
        );
        answers
    });
    let accepted = slow_answers.iter().filter(|a| a.status == 202).count();
    let refused: Vec<_> = slow_answers.iter().filter(|a| a.status == 503).collect();
    // One evaluated and two waiting at most; the rest refused at once.
    assert!((1..=3).contains(&accepted), "{slow_answers:#?}");
    assert_eq!(accepted + refused.len(), 8, "{slow_answers:#?}");
    for answer in refused {
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{answer:?}");
        assert!(answer.body["error"].as_str().unwrap().contains("hook `slow` has 2 deliveries waiting"), "{answer:?}");
    }
}

#[test]
fn a_stalled_body_is_answered_408_and_closed_at_its_deadline() {
    let server = start(&["--body-timeout", "1"]);
    let mut stream = connect(&server);
    let signature = format!("sha256={}", "0".repeat(64));
    let head = head("/hooks/signed", &[("X-Hub-Signature-256", &signature), ("Content-Length", "2097152")]);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b' '; 1000]).unwrap();
    let (status, text) = read_answer(&mut stream).expect("an answer before the patience ran out");
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("the body did not arrive within 1s"), "{text}");
    let closed_after = wait_for_close(&mut stream);
    assert!(closed_after < PATIENCE);
    // The server goes on serving.
    let mut again = connect(&server);
    again.write_all(&bearer_request(2)).unwrap();
    assert_eq!(read_answer(&mut again).map(|(status, _)| status), Some(202));
}

#[test]
fn a_connection_that_sends_no_complete_head_is_closed_at_the_header_deadline() {
    let server = start(&["--header-timeout", "1"]);
    let mut stream = connect(&server);
    stream.write_all(b"POST /hooks/fast HTTP/1.1\r\nHost: test\r\n").unwrap();
    wait_for_close(&mut stream);
    // One that sends nothing at all: closed the same way.
    let mut silent = connect(&server);
    wait_for_close(&mut silent);
    // Kept alive and idle after an answer: closed the same way.
    let mut idle = connect(&server);
    idle.write_all(&bearer_request(3)).unwrap();
    assert_eq!(read_answer(&mut idle).map(|(status, _)| status), Some(202));
    wait_for_close(&mut idle);
}

#[test]
fn credentials_in_headers_are_refused_before_the_body_is_sent() {
    let server = start(&[]);
    let refused = |headers: &[(&str, &str)], path: &str| {
        let mut stream = connect(&server);
        let mut all = vec![("Content-Length", "100")];
        all.extend_from_slice(headers);
        stream.write_all(head(path, &all).as_bytes()).unwrap();
        // No body is sent: the answer must come from the headers alone.
        read_answer(&mut stream).expect("an answer without the body")
    };
    let (status, text) = refused(&[], "/hooks/signed");
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("missing header `x-hub-signature-256`"), "{text}");
    let (status, text) = refused(&[("X-Hub-Signature-256", "sha256=not-hex")], "/hooks/signed");
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not a hex digest"), "{text}");
    let (status, text) = refused(&[("Authorization", "Bearer wrong")], "/hooks/fast");
    assert_eq!(status, 401, "{text}");
    let (status, text) = refused(&[("Authorization", "Bearer t0ken")], "/hooks/nowhere");
    assert_eq!(status, 404, "{text}");
    // A well-formed signature waits for the body, which decides.
    let body = r#"{"n": 4}"#;
    let signature = format!("sha256={}", hmac_hex("s3cret", &[body.as_bytes()]));
    let answer = server.post(
        "/hooks/signed",
        &[("Content-Type", "application/json"), ("X-Hub-Signature-256", &signature)],
        body,
    );
    assert_eq!(answer.status, 202, "{:?}", answer.body);
}

#[test]
fn beyond_the_connection_cap_new_connections_wait_for_a_slot() {
    let server = start(&["--max-connections", "4", "--header-timeout", "120"]);
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    let mut waiting = connect(&server);
    waiting.write_all(&bearer_request(5)).unwrap();
    waiting.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(read_answer(&mut waiting), None, "answered while every slot was held");
    // A held connection closes: its slot goes to the waiting one.
    held.pop();
    waiting.set_read_timeout(Some(PATIENCE)).unwrap();
    let (status, text) = read_answer(&mut waiting).expect("an answer once a slot was free");
    assert_eq!(status, 202, "{text}");
}

#[test]
fn unauthenticated_bodies_share_one_budget() {
    let server = start(&["--unauthenticated-bytes", "1048576"]);
    let signature = format!("sha256={}", "0".repeat(64));
    let stalled_head = head("/hooks/signed", &[("X-Hub-Signature-256", &signature), ("Content-Length", "1048576")]);
    let mut first = connect(&server);
    first.write_all(stalled_head.as_bytes()).unwrap();
    first.write_all(b"{").unwrap();
    // The first holds the whole budget until its body ends (it is not answered), so a
    // second is turned away, while requests whose credentials sit in headers are not
    // counted.
    // Serve's debug log says when the first body has taken its room.
    let deadline = Instant::now() + PATIENCE;
    while !server.log().contains("Holding an unauthenticated body") {
        assert!(Instant::now() < deadline, "the first body never took its room:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = connect(&server);
    second.write_all(stalled_head.as_bytes()).unwrap();
    let (status, text) = read_answer(&mut second).expect("an answer");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("unauthenticated bodies"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
    // A small signed delivery is not counted: it gets through.
    let body = r#"{"n": 5}"#;
    let signature = format!("sha256={}", hmac_hex("s3cret", &[body.as_bytes()]));
    let small = server.post(
        "/hooks/signed",
        &[("Content-Type", "application/json"), ("X-Hub-Signature-256", &signature)],
        body,
    );
    assert_eq!(small.status, 202, "{:?}", small.body);
    let mut fast = connect(&server);
    fast.write_all(&bearer_request(6)).unwrap();
    assert_eq!(read_answer(&mut fast).map(|(status, _)| status), Some(202));
}

#[test]
fn malformed_chunked_encoding_is_a_bad_request() {
    let server = start(&[]);
    let mut stream = connect(&server);
    let head = head("/hooks/fast", &[("Authorization", "Bearer t0ken"), ("Transfer-Encoding", "chunked")]);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(b"zz\r\n{\"n\": 7}\r\n0\r\n\r\n").unwrap();
    let (status, text) = read_answer(&mut stream).expect("an answer");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("the body cannot be read"), "{text}");
}

#[test]
fn cron_slots_fire_from_the_scheduler_thread_of_a_serving_server() {
    let every_second = "name: tick\ntrigger:\n  cron:\n    schedule: \"* * * * * *\"\ntask:\n  agent: codex\n  repo: https://github.com/acme/shop.git\n  base: main\n  branch: agent/tick\n  prompt: tick\n";
    let server = Serving::start(&[("tick.yaml", every_second)], &[]);
    let deadline = Instant::now() + PATIENCE;
    while server.runs().is_empty() {
        assert!(Instant::now() < deadline, "no cron run within {PATIENCE:?}:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
