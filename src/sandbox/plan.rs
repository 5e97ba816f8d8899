//! Pure choices about one jailed phase: which ports are captured, what proxy variables it
//! gets, and how a policy decision reads on the run's timeline.

use std::collections::BTreeSet;

use crate::netpolicy::NetworkPolicy;
use crate::runs::{ActivityKind, NewActivity};

use super::PROXY_PORT;
use super::egress::{PolicyRecord, RecordKind};
use super::jail::MAX_CAPTURE_PORTS;

/// Ports captured whatever the policy says: web traffic that ignored the proxy is decided
/// and recorded even when no rule names its port.
const ALWAYS_CAPTURED: [u16; 2] = [80, 443];

/// The ports on which connections that ignore the proxy are captured: 80, 443 and every
/// port a rule of `policy` names, at most `MAX_CAPTURE_PORTS` (the lowest ones; a rule's
/// port beyond them is still reachable through the proxy).
pub fn capture_ports(policy: &NetworkPolicy) -> Vec<u16> {
    let named: BTreeSet<u16> = policy.allow.iter().flat_map(|rule| rule.ports.iter().copied()).collect();
    let mut ports = ALWAYS_CAPTURED.to_vec();
    ports.extend(named.into_iter().filter(|port| !ALWAYS_CAPTURED.contains(port)));
    ports.truncate(MAX_CAPTURE_PORTS);
    ports
}

/// The variables that point a jailed phase's programs at the egress proxy, and keep
/// loopback (a test server the agent starts) off it.
pub fn proxy_env() -> Vec<(String, String)> {
    let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
    let local = "localhost,127.0.0.1,::1".to_string();
    let mut env: Vec<(String, String)> =
        ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
            .into_iter()
            .map(|name| (name.to_string(), proxy.clone()))
            .collect();
    env.extend(["NO_PROXY", "no_proxy"].map(|name| (name.to_string(), local.clone())));
    env
}

/// A decision as a `policy` activity: a line a person reads, the whole record as data.
pub fn activity(record: &PolicyRecord) -> NewActivity {
    let mut activity = NewActivity::new(ActivityKind::Policy, describe(record));
    activity.data = serde_json::to_value(record).unwrap_or_default();
    activity
}

/// `agent: denied CONNECT evil.example:443 (no rule), 3 times, by curl`.
pub fn describe(record: &PolicyRecord) -> String {
    let verdict = match (record.kind, record.allowed) {
        (RecordKind::Dns, _) => "answered",
        (_, true) => "allowed",
        (_, false) => "denied",
    };
    let what = match (record.kind, &record.method) {
        (RecordKind::Dns, _) => {
            let answer = record.rule.as_deref().unwrap_or("no answer");
            format!("a DNS lookup of {} inside ({answer}; never forwarded)", record.host)
        }
        (RecordKind::Overflow, _) => "further connections (too many distinct ones to list)".to_string(),
        (RecordKind::ProxyHttp, Some(method)) => format!("{method} http://{}:{}", record.host, record.port),
        (RecordKind::ProxyHttp, None) => format!("http://{}:{}", record.host, record.port),
        (RecordKind::Connect, _) => format!("CONNECT {}:{}", record.host, record.port),
        (RecordKind::Captured, _) => {
            format!("a direct connection to {}:{} (it ignored the proxy)", record.host, record.port)
        }
    };
    let mut text = format!("{}: {verdict} {what}", record.phase.as_str());
    if record.kind != RecordKind::Dns
        && let Some(rule) = &record.rule
    {
        text.push_str(&format!(" ({rule})"));
    }
    if record.count > 1 {
        text.push_str(&format!(", {} times", record.count));
    }
    if let Some(command) = &record.command {
        text.push_str(&format!(", by {command}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::netpolicy::{AllowRuleConfig, DefaultAction, RuleOrigin};
    use crate::sandbox::egress::PhaseName;

    fn policy(rules: &[(&str, &[u16])]) -> NetworkPolicy {
        let allow = rules
            .iter()
            .flat_map(|(domain, ports)| {
                let config =
                    AllowRuleConfig { domain: Some((*domain).into()), ports: ports.to_vec(), ..Default::default() };
                config.expand(RuleOrigin::Static).unwrap()
            })
            .collect();
        NetworkPolicy { default: DefaultAction::Deny, allow }
    }

    #[test]
    fn web_ports_are_always_captured_and_rule_ports_added_once() {
        assert_eq!(capture_ports(&NetworkPolicy::default()), [80, 443]);
        assert_eq!(
            capture_ports(&policy(&[("a.example", &[443, 8443]), ("b.example", &[22, 8443, 80])])),
            [80, 443, 22, 8443]
        );
    }

    #[test]
    fn capture_ports_are_capped_keeping_the_web_ports_and_the_lowest() {
        let many: Vec<u16> = (1000..1100).collect();
        let ports = capture_ports(&policy(&[("a.example", &many)]));
        assert_eq!(ports.len(), MAX_CAPTURE_PORTS);
        assert_eq!(&ports[..3], [80, 443, 1000]);
        assert_eq!(ports[MAX_CAPTURE_PORTS - 1], 1000 + MAX_CAPTURE_PORTS as u16 - 3);
    }

    #[test]
    fn every_proxy_variable_names_the_jails_proxy_and_loopback_stays_direct() {
        let env = proxy_env();
        let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            assert!(env.contains(&(name.to_string(), proxy.clone())), "{name}");
        }
        for name in ["NO_PROXY", "no_proxy"] {
            assert!(env.contains(&(name.to_string(), "localhost,127.0.0.1,::1".to_string())), "{name}");
        }
        assert_eq!(env.len(), 8);
    }

    fn record(kind: RecordKind, method: Option<&str>, allowed: bool, rule: &str, count: u64) -> PolicyRecord {
        let at = Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap();
        PolicyRecord {
            phase: PhaseName::Agent,
            kind,
            host: "api.example.com".into(),
            port: 443,
            method: method.map(str::to_string),
            allowed,
            rule: Some(rule.into()),
            count,
            first: at,
            last: at,
            bytes_up: 0,
            bytes_down: 0,
            command: Some("curl".into()),
        }
    }

    #[test]
    fn decisions_read_as_a_sentence_with_the_rule_the_count_and_the_program() {
        let denied = record(RecordKind::Connect, None, false, "no rule", 3);
        assert_eq!(describe(&denied), "agent: denied CONNECT api.example.com:443 (no rule), 3 times, by curl");
        let allowed = record(RecordKind::ProxyHttp, Some("GET"), true, "api.example.com (profile codex)", 1);
        assert_eq!(
            describe(&allowed),
            "agent: allowed GET http://api.example.com:443 (api.example.com (profile codex)), by curl"
        );
        let captured = record(RecordKind::Captured, None, false, "no rule", 1);
        assert!(describe(&captured).contains("a direct connection to api.example.com:443 (it ignored the proxy)"));
        let dns = record(RecordKind::Dns, None, true, "198.18.0.7", 2);
        assert_eq!(
            describe(&dns),
            "agent: answered a DNS lookup of api.example.com inside (198.18.0.7; never forwarded), 2 times, by curl"
        );
        let activity = activity(&denied);
        assert_eq!(activity.kind, ActivityKind::Policy);
        assert_eq!(activity.data["host"], "api.example.com");
        assert_eq!(activity.data["allowed"], false);
        assert_eq!(activity.data["count"], 3);
    }
}
