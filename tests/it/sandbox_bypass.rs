//! The bypass suite: a hostile phase, jailed by `nightshift sandbox run` with the real
//! egress proxy, tries every way out it can think of, as the caller and again as uid
//! 65534. Each case checks what the phase saw and what the proxy recorded.
//!
//! Upstreams are this test's own loopback servers, reached by names the proxy's
//! `--egress-resolve` maps to them; TEST-NET addresses are only ever dialled inside the
//! jail's namespace.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::requires;
use crate::sandbox_jail::{As, Layout, nightshift_as, text, users};

/// A loopback HTTP server that answers `upstream saw METHOD PATH` and remembers each
/// request line it got.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten().take(200) {
                let log = log.clone();
                std::thread::spawn(move || answer(connection, &log));
            }
        });
        Upstream { port, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(mut connection: std::net::TcpStream, log: &Mutex<Vec<String>>) {
    connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match connection.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    log.lock().unwrap().push(line.clone());
    let mut words = line.split(' ');
    let body = format!("upstream saw {} {}\n", words.next().unwrap_or(""), words.next().unwrap_or(""));
    let _ = write!(connection, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// Runs `script` in a jail as `who` with `allow` rules and the names in `resolve` mapped to
/// `port` on loopback; returns its stdout and the proxy's decisions.
fn bypass(who: As, layout: &Layout, allow: &[&str], resolve: &[&str], port: u16, script: &str) -> (String, Vec<Value>) {
    let out = layout.root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let decisions = out.join("decisions.jsonl");
    let mut command = nightshift_as(who);
    command.args(["sandbox", "run", "--timeout", "120", "--workspace"]).arg(layout.workspace());
    for rule in allow {
        command.args(["--allow", rule]);
    }
    for name in resolve {
        command.args(["--egress-resolve", &format!("{name}=127.0.0.1:{port}")]);
    }
    command.arg("--decisions").arg(&decisions).args(["--", "sh", "-c", script]);
    let output = command.current_dir("/").stdin(Stdio::null()).output().expect("run nightshift sandbox run");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{who:?}: {}\nstdout: {stdout}\nstderr: {}", output.status, text(&output.stderr));
    let records = std::fs::read_to_string(&decisions)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (stdout, records)
}

/// The one record about `host:port` of `kind`, with its decision; panics listing all.
fn record<'a>(records: &'a [Value], kind: &str, host: &str, port: u16) -> &'a Value {
    let found: Vec<&Value> =
        records.iter().filter(|r| r["kind"] == kind && r["host"] == host && r["port"] == port).collect();
    assert_eq!(found.len(), 1, "one {kind} record for {host}:{port} in {records:#?}");
    found[0]
}

fn programs() -> bool {
    requires::program("curl", &["curl"]).is_some()
        && requires::program("openssl", &["openssl"]).is_some()
        && requires::program("perl-base", &["perl"]).is_some()
}

#[test]
fn every_way_out_is_decided_by_the_policy_and_recorded() {
    if !programs() {
        return;
    }
    for who in users() {
        let upstream = Upstream::start();
        // A UDP listener on the host's loopback: nothing sent inside the jail may reach it.
        let host_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        host_udp.set_nonblocking(true).unwrap();
        let udp_port = host_udp.local_addr().unwrap().port();
        let layout = Layout::new();
        let script = format!(
            r#"
            show() {{ printf '%s: ' "$1"; shift; "$@" 2>&1 | head -c 300 | tr '\n' ' '; echo; }}
            show allowed curl -sS http://allowed.test/via-proxy
            show denied curl -sS http://denied.test/secret
            show noproxy-allowed curl -sS --noproxy '*' http://allowed.test/direct
            show noproxy-denied curl -sS --noproxy '*' http://denied.test/direct
            show raw-ip curl -sS --noproxy '*' -m 10 http://192.0.2.10/raw
            show host-loopback curl -sS --noproxy '*' -m 10 http://127.0.0.1:{port}/loopback
            show get-rule curl -sS http://api.test/read
            show post-rule curl -sS -X POST -d x http://api.test/write
            show dns getent hosts secret-data.exfil.test
            show sni sh -c 'openssl s_client -proxy 127.0.0.1:3128 -connect allowed.test:443 -servername other.test </dev/null >/dev/null 2>&1; echo "openssl exit $?"'
            show udp perl -MIO::Socket::INET -e 'for my $to ("127.0.0.1:{udp_port}", "192.0.2.1:{udp_port}") {{ my $s = IO::Socket::INET->new(PeerAddr => $to, Proto => "udp") or die; send($s, "leak", 0) }} print "sent\n"'
            "#,
            port = upstream.port,
        );
        let (stdout, records) = bypass(
            who,
            &layout,
            &["allowed.test:80,443", "api.test:80/GET"],
            &["allowed.test", "api.test"],
            upstream.port,
            &script,
        );
        let line = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{who:?}: no `{name}` line in {stdout}"))
                .to_string()
        };
        let blocked = "egress policy of the agent phase blocked";
        let why = format!("{who:?}: {stdout}\n{records:#?}");

        // Through the proxy: an allowed name reaches its upstream, a denied one gets the 403.
        assert!(line("allowed").contains("upstream saw GET /via-proxy"), "{why}");
        assert_eq!(record(&records, "proxy_http", "allowed.test", 80)["allowed"], true, "{why}");
        assert!(line("denied").contains(blocked) && line("denied").contains("denied.test"), "{why}");
        let denied = record(&records, "proxy_http", "denied.test", 80);
        assert_eq!(
            (denied["allowed"].clone(), denied["rule"].clone()),
            (Value::Bool(false), "no rule".into()),
            "{why}"
        );
        // Ignoring the proxy: the connection is captured and decided by the name looked up.
        assert!(line("noproxy-allowed").contains("upstream saw GET /direct"), "{why}");
        assert_eq!(record(&records, "captured", "allowed.test", 80)["allowed"], true, "{why}");
        assert!(line("noproxy-denied").contains(blocked), "{why}");
        assert_eq!(record(&records, "captured", "denied.test", 80)["allowed"], false, "{why}");
        // A raw IP is captured and denied as an address no rule names.
        assert!(line("raw-ip").contains(blocked), "{why}");
        assert_eq!(record(&records, "captured", "192.0.2.10", 80)["allowed"], false, "{why}");
        // The host's loopback is not the jail's: nothing listens there inside.
        assert!(!line("host-loopback").contains("upstream saw"), "{why}");
        // Methods are seen on plain HTTP.
        assert!(line("get-rule").contains("upstream saw GET /read"), "{why}");
        assert!(line("post-rule").contains(blocked), "{why}");
        let post = records.iter().find(|r| r["host"] == "api.test" && r["method"] == "POST").expect("a POST record");
        assert_eq!(post["allowed"], false, "{why}");
        // DNS is answered inside with a stub address and recorded; nothing is forwarded.
        assert!(line("dns").contains("198.18.") && line("dns").contains("secret-data.exfil.test"), "{why}");
        assert!(records.iter().any(|r| r["kind"] == "dns" && r["host"] == "secret-data.exfil.test"), "{why}");
        // A tunnel whose TLS server name is not its CONNECT host is cut and recorded.
        assert!(!line("sni").contains("openssl exit 0"), "{why}");
        let sni = record(&records, "connect", "allowed.test", 443);
        assert_eq!(sni["allowed"], false, "{why}");
        assert!(sni["rule"].as_str().unwrap().contains("sni mismatch"), "{why}");
        // UDP goes nowhere: the host's loopback listener got nothing.
        assert_eq!(line("udp").trim(), "sent", "{why}");
        let mut buffer = [0u8; 16];
        assert!(host_udp.recv_from(&mut buffer).is_err(), "{why}: a UDP datagram left the jail");

        // The upstream saw exactly the allowed requests, never the denied ones.
        let mut seen = upstream.requests();
        seen.sort();
        assert_eq!(
            seen,
            ["GET /direct HTTP/1.1", "GET /read HTTP/1.1", "GET /via-proxy HTTP/1.1"],
            "{who:?}: the upstream saw {seen:?}"
        );
    }
}
