//! Network policy: the allow-rule format of automation files, its validation, presets,
//! and the rendered, deny-by-default policy that decides each connection.

mod presets;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use presets::Preset;

/// HTTP methods an allow rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub const ALL: [Method; 7] =
        [Method::Get, Method::Head, Method::Post, Method::Put, Method::Patch, Method::Delete, Method::Options];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }

    pub fn parse(text: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Egress for one phase (setup or agent). Everything not allowed here is denied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhasePolicyConfig {
    /// Static allow rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRuleConfig>,
    /// Optional rhai script that returns an array of extra allow rules (maps with the same
    /// fields as `allow` entries), chosen per run. It sees `event`, `memory`, `automation`
    /// and `now`. Every rule it returns must fall within `script_may_allow`, so event
    /// text can choose among approved destinations but never name a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The most a `script` may allow: each rule it returns must be covered by one of these
    /// (same or narrower host, ports and methods). Required with `script`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub script_may_allow: Vec<AllowRuleConfig>,
}

/// Network policy of both phases of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Egress for the setup commands (e.g. package registries).
    #[serde(default)]
    pub setup: PhasePolicyConfig,
    /// Egress for the agent. Deny-by-default: list only what the agent needs.
    #[serde(default)]
    pub agent: PhasePolicyConfig,
}

/// One allow rule: either `domain` (with optional `ports` and `methods`) or `preset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowRuleConfig {
    /// A host name such as `api.github.com`, or `*.example.com` for every subdomain of
    /// `example.com` (not `example.com` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// A named group of rules, e.g. `rust` or `github`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Allowed ports; default `[443]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Allowed HTTP methods; default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
}

/// A validated host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: any host that ends with `.suffix`.
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, RuleError> {
        let fail = |why: &str| Err(RuleError::Domain { domain: text.to_string(), why: why.to_string() });
        if text.contains("://") || text.contains('/') {
            return fail("write the host name only, without scheme or path (e.g. `api.github.com`)");
        }
        if text.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok() {
            return fail("IP addresses are not allowed; name the host");
        }
        if text.contains(':') {
            return fail("write the port in `ports:`, not in the domain");
        }
        let lower = text.to_ascii_lowercase();
        let (wildcard, host) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if host.contains('*') {
            return fail("`*` is only allowed as the whole first label, as in `*.example.com`");
        }
        if host.is_empty() || host.len() > 253 {
            return fail("a host name has 1 to 253 characters");
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return fail("IP addresses are not allowed; name the host");
        }
        let labels: Vec<&str> = host.split('.').collect();
        for label in &labels {
            let valid = !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return fail("each dot-separated label needs 1 to 63 letters, digits or inner dashes");
            }
        }
        if wildcard && labels.len() < 2 {
            return fail("a wildcard must keep at least two labels (`*.example.com`, not `*.com`)");
        }
        Ok(if wildcard { HostPattern::Subdomains(host.to_string()) } else { HostPattern::Exact(host.to_string()) })
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match self {
            HostPattern::Exact(exact) => host.eq_ignore_ascii_case(exact),
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() + 1
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Subdomains(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.to_string()
    }
}

impl TryFrom<String> for HostPattern {
    type Error = RuleError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        HostPattern::parse(&text)
    }
}

/// Where a rendered rule came from, so a decision can be explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOrigin {
    Static,
    Preset(Preset),
    Script,
    /// The agent profile's own allowance (its model API), trusted config.
    Profile(String),
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::Static => f.write_str("static"),
            RuleOrigin::Preset(preset) => write!(f, "preset {}", preset.name()),
            RuleOrigin::Script => f.write_str("script"),
            RuleOrigin::Profile(name) => write!(f, "profile {name}"),
        }
    }
}

/// A concrete allow rule of a rendered policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRule {
    pub host: HostPattern,
    pub ports: Vec<u16>,
    /// Empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    pub origin: RuleOrigin,
}

impl AllowRule {
    /// A rule that names methods only allows requests whose method is known to be one of
    /// them: a TLS tunnel, whose method cannot be seen, is denied (fail closed).
    fn allows(&self, host: &str, port: u16, method: Option<Method>) -> bool {
        self.host.matches(host)
            && self.ports.contains(&port)
            && (self.methods.is_empty() || method.is_some_and(|m| self.methods.contains(&m)))
    }

    /// Whether everything `other` allows, this rule allows too.
    pub fn covers(&self, other: &AllowRule) -> bool {
        let hosts = match (&self.host, &other.host) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Subdomains(_), HostPattern::Exact(b)) => self.host.matches(b),
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => a == b || self.host.matches(b),
            (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
        };
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty() && other.methods.iter().all(|m| self.methods.contains(m)));
        hosts && methods && other.ports.iter().all(|p| self.ports.contains(p))
    }
}

/// A rendered policy: deny-by-default, allow what a rule allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub default: DefaultAction,
    pub allow: Vec<AllowRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    #[default]
    Deny,
}

/// The answer to "may this connection go out?", with the rule that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The allowing rule's host pattern and origin: `static.crates.io (preset rust)`.
    pub rule: Option<String>,
}

impl NetworkPolicy {
    /// Decides a request. `method` is `None` when it is not visible (a TLS tunnel): then
    /// only rules without `methods` can allow it.
    pub fn decide(&self, host: &str, port: u16, method: Option<Method>) -> Decision {
        let rule = self.allow.iter().find(|rule| rule.allows(host, port, method));
        Decision { allowed: rule.is_some(), rule: rule.map(|r| format!("{} ({})", r.host, r.origin)) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid domain `{domain}`: {why}")]
    Domain { domain: String, why: String },
    #[error("a rule needs exactly one of `domain` or `preset`")]
    DomainOrPreset,
    #[error("a preset rule takes no `ports` or `methods`; write a `domain` rule instead")]
    PresetWithOptions,
    #[error("port 0 is not a port")]
    PortZero,
    #[error(
        "`methods` can never apply on port 443: the proxy sees methods only in plain HTTP, and \
         HTTPS is a tunnel whose requests it cannot read, so this rule would allow nothing; \
         remove `methods` to allow the host over HTTPS, or name the plain-HTTP port (`ports: [80]`)"
    )]
    MethodsOnlyOverTls,
}

const HTTPS_PORT: u16 = 443;
const DEFAULT_PORTS: [u16; 1] = [HTTPS_PORT];

impl AllowRuleConfig {
    /// Validates the rule and expands it into concrete rules.
    /// `origin` is recorded on the rules; a preset keeps its name unless a script chose it.
    pub fn expand(&self, origin: RuleOrigin) -> Result<Vec<AllowRule>, RuleError> {
        match (&self.domain, self.preset) {
            (Some(domain), None) => {
                if self.ports.contains(&0) {
                    return Err(RuleError::PortZero);
                }
                let ports = if self.ports.is_empty() { DEFAULT_PORTS.to_vec() } else { self.ports.clone() };
                if !self.methods.is_empty() && ports.iter().all(|&port| port == HTTPS_PORT) {
                    return Err(RuleError::MethodsOnlyOverTls);
                }
                let mut methods = self.methods.clone();
                methods.sort();
                methods.dedup();
                Ok(vec![AllowRule { host: HostPattern::parse(domain)?, ports, methods, origin }])
            }
            (None, Some(preset)) => {
                if !self.ports.is_empty() || !self.methods.is_empty() {
                    return Err(RuleError::PresetWithOptions);
                }
                let mut rules = preset.rules();
                if origin == RuleOrigin::Script {
                    rules.iter_mut().for_each(|rule| rule.origin = RuleOrigin::Script);
                }
                Ok(rules)
            }
            _ => Err(RuleError::DomainOrPreset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_domain(text: &str, ok: bool) {
        assert_eq!(HostPattern::parse(text).is_ok(), ok, "{text}");
    }

    #[test]
    fn domain_patterns() {
        check_domain("api.github.com", true);
        check_domain("*.githubusercontent.com", true);
        check_domain("API.GitHub.com", true);
        check_domain("localhost", true);
        for bad in [
            "::1",
            "[2001:db8::1]",
            "",
            "*",
            "*.com",
            "foo*.com",
            "a.*.com",
            "https://github.com",
            "github.com/x",
            "github.com:443",
            "10.0.0.1",
            "-a.com",
            "a..com",
            "a_b.com",
        ] {
            check_domain(bad, false);
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let pattern = HostPattern::parse("*.example.com").unwrap();
        assert!(pattern.matches("a.example.com"));
        assert!(pattern.matches("a.b.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(!pattern.matches("badexample.com"));
        assert!(!pattern.matches("example.com.evil.net"));
    }

    #[test]
    fn decisions_are_deny_by_default() {
        let rules = [
            AllowRuleConfig {
                domain: Some("api.datadoghq.com".into()),
                ports: vec![80],
                methods: vec![Method::Get],
                ..Default::default()
            },
            AllowRuleConfig { preset: Some(Preset::Rust), ..Default::default() },
        ];
        let allow = rules.iter().flat_map(|r| r.expand(RuleOrigin::Static).unwrap()).collect();
        let policy = NetworkPolicy { default: DefaultAction::Deny, allow };
        assert!(policy.decide("api.datadoghq.com", 80, Some(Method::Get)).allowed);
        assert!(!policy.decide("api.datadoghq.com", 80, Some(Method::Post)).allowed);
        assert!(!policy.decide("api.datadoghq.com", 443, Some(Method::Get)).allowed);
        assert!(policy.decide("index.crates.io", 443, Some(Method::Get)).allowed);
        assert!(!policy.decide("evil.example", 443, None).allowed);
        assert!(!NetworkPolicy::default().decide("api.github.com", 443, None).allowed);
    }

    #[test]
    fn method_rules_fail_closed_when_the_method_is_unseen() {
        let rule = AllowRuleConfig {
            domain: Some("api.github.com".into()),
            ports: vec![80, 443],
            methods: vec![Method::Get],
            ..Default::default()
        };
        let policy = NetworkPolicy { default: DefaultAction::Deny, allow: rule.expand(RuleOrigin::Static).unwrap() };
        assert!(!policy.decide("api.github.com", 443, None).allowed);
        assert!(policy.decide("api.github.com", 80, Some(Method::Get)).allowed);
    }

    #[test]
    fn methods_on_https_alone_are_refused_since_they_could_allow_nothing() {
        let rule = |ports: Vec<u16>, methods: Vec<Method>| {
            AllowRuleConfig { domain: Some("api.example.com".into()), ports, methods, ..Default::default() }
                .expand(RuleOrigin::Static)
        };
        assert_eq!(rule(vec![], vec![Method::Get]), Err(RuleError::MethodsOnlyOverTls), "443 by default");
        assert_eq!(rule(vec![443, 443], vec![Method::Get]), Err(RuleError::MethodsOnlyOverTls));
        assert!(rule(vec![80, 443], vec![Method::Get]).is_ok());
        assert!(rule(vec![8080], vec![Method::Get]).is_ok());
        assert!(rule(vec![443], vec![]).is_ok());
    }

    #[test]
    fn coverage_of_hosts_ports_and_methods() {
        let rule = |domain: &str, ports: Vec<u16>, methods: Vec<Method>| {
            AllowRuleConfig { domain: Some(domain.into()), ports, methods, ..Default::default() }
                .expand(RuleOrigin::Static)
                .unwrap()
                .remove(0)
        };
        let ceiling = rule("*.example.com", vec![80], vec![Method::Get, Method::Head]);
        assert!(ceiling.covers(&rule("a.example.com", vec![80], vec![Method::Get])));
        assert!(ceiling.covers(&rule("*.a.example.com", vec![80], vec![Method::Head])));
        assert!(!ceiling.covers(&rule("example.com", vec![80], vec![Method::Get])));
        assert!(!ceiling.covers(&rule("a.example.com", vec![80], vec![])), "all methods is wider than GET/HEAD");
        assert!(!ceiling.covers(&rule("a.example.com", vec![8080], vec![Method::Get])));
        assert!(!rule("a.example.com", vec![], vec![]).covers(&rule("*.example.com", vec![], vec![])));
    }

    #[test]
    fn rules_need_domain_xor_preset() {
        assert_eq!(AllowRuleConfig::default().expand(RuleOrigin::Static), Err(RuleError::DomainOrPreset));
        let both = AllowRuleConfig { domain: Some("a.com".into()), preset: Some(Preset::Npm), ..Default::default() };
        assert_eq!(both.expand(RuleOrigin::Static), Err(RuleError::DomainOrPreset));
        let preset_ports = AllowRuleConfig { preset: Some(Preset::Npm), ports: vec![80], ..Default::default() };
        assert_eq!(preset_ports.expand(RuleOrigin::Static), Err(RuleError::PresetWithOptions));
    }

    fn domain_rule(domain: &str, ports: Vec<u16>, methods: Vec<Method>) -> AllowRule {
        let config = AllowRuleConfig { domain: Some(domain.into()), ports, methods, ..Default::default() };
        config.expand(RuleOrigin::Static).unwrap().remove(0)
    }

    #[test]
    fn a_bad_domain_is_told_what_is_wrong() {
        let why = |text: &str| match HostPattern::parse(text) {
            Err(RuleError::Domain { why, .. }) => why,
            other => panic!("{text}: {other:?}"),
        };
        for (text, start) in [
            ("github.com/x", "write the host name only"),
            ("https://github.com", "write the host name only"),
            ("github.com:443", "write the port in `ports:`"),
            ("10.0.0.1", "IP addresses are not allowed"),
            ("[::1]", "IP addresses are not allowed"),
            ("a.*.com", "`*` is only allowed"),
            ("*.com", "a wildcard must keep at least two labels"),
            ("a_b.com", "each dot-separated label"),
        ] {
            assert!(why(text).starts_with(start), "{text}: {}", why(text));
        }
    }

    #[test]
    fn a_wildcard_covers_only_wildcards_under_its_own_suffix() {
        let wild = |domain: &str| domain_rule(domain, vec![], vec![]);
        // (ceiling, rule, covered)
        let cases = [
            ("*.example.com", "*.example.com", true),
            ("*.example.com", "*.a.example.com", true),
            ("*.example.com", "*.evil.net", false),
            ("*.example.com", "*.badexample.com", false),
            ("*.a.example.com", "*.example.com", false),
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "www.example.com", false),
            ("*.example.com", "www.example.com", true),
            ("*.example.com", "example.com", false),
        ];
        for (ceiling, rule, covered) in cases {
            assert_eq!(wild(ceiling).covers(&wild(rule)), covered, "{ceiling} covers {rule}");
        }
        // Every method covers a list of methods; a list never covers every method.
        let all = domain_rule("a.example.com", vec![80], vec![]);
        let get = domain_rule("a.example.com", vec![80], vec![Method::Get]);
        assert!(all.covers(&get));
        assert!(!get.covers(&all));
        assert!(get.covers(&get));
        // Ports: each of the rule's ports must be among the ceiling's.
        let both = domain_rule("a.example.com", vec![80, 443], vec![]);
        assert!(both.covers(&domain_rule("a.example.com", vec![443], vec![])));
        assert!(!all.covers(&both));
    }

    #[test]
    fn host_names_have_at_most_253_characters_and_labels_63() {
        let host =
            |last: usize| format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(last));
        assert_eq!(host(61).len(), 253);
        check_domain(&host(61), true);
        check_domain(&format!("*.{}", host(61)), true);
        check_domain(&host(62), false);
        check_domain(&format!("*.{}", host(62)), false);
        check_domain(&format!("{}.com", "a".repeat(64)), false);
        check_domain("a.b", true);
        check_domain("*.a.b", true);
        check_domain("a-b.com", true);
        check_domain("a-.com", false);
        check_domain("123.example", true);
    }

    #[test]
    fn host_patterns_match_whole_labels_in_any_case() {
        let exact = HostPattern::parse("API.GitHub.com").unwrap();
        assert!(exact.matches("api.github.com"));
        assert!(exact.matches("api.GITHUB.com."), "a trailing dot is the same host");
        assert!(!exact.matches("xapi.github.com"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("A.EXAMPLE.COM."));
        assert!(!wild.matches(".example.com"), "an empty label is no subdomain");
        assert!(!wild.matches("aexample.com"));
    }

    #[test]
    fn host_patterns_serialize_as_written_lowercase() {
        for (text, written) in [("*.Example.COM", "*.example.com"), ("API.github.com", "api.github.com")] {
            let pattern = HostPattern::parse(text).unwrap();
            let json = serde_json::to_value(&pattern).unwrap();
            assert_eq!(json, serde_json::json!(written));
            assert_eq!(serde_json::from_value::<HostPattern>(json).unwrap(), pattern);
        }
        assert!(serde_json::from_value::<HostPattern>(serde_json::json!("*.com")).is_err());
        let rule = domain_rule("*.example.com", vec![], vec![]);
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(json, serde_json::json!({"host": "*.example.com", "ports": [443], "origin": "static"}));
        assert_eq!(serde_json::from_value::<AllowRule>(json).unwrap(), rule);
    }

    #[test]
    fn rules_remember_where_they_came_from() {
        let preset = AllowRuleConfig { preset: Some(Preset::Rust), ..Default::default() };
        let rules = preset.expand(RuleOrigin::Static).unwrap();
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|rule| rule.origin == RuleOrigin::Preset(Preset::Rust)), "{rules:?}");
        let chosen = preset.expand(RuleOrigin::Script).unwrap();
        assert!(chosen.iter().all(|rule| rule.origin == RuleOrigin::Script), "{chosen:?}");
        let domain = AllowRuleConfig { domain: Some("a.example.com".into()), ..Default::default() };
        assert_eq!(domain.expand(RuleOrigin::Script).unwrap()[0].origin, RuleOrigin::Script);
        // The decision names the rule that allowed it.
        let policy = NetworkPolicy { default: DefaultAction::Deny, allow: rules };
        assert_eq!(
            policy.decide("static.crates.io", 443, Some(Method::Head)).rule.as_deref(),
            Some("static.crates.io (preset rust)")
        );
        assert_eq!(policy.decide("static.crates.io", 80, Some(Method::Get)), Decision { allowed: false, rule: None });
        let profile = AllowRuleConfig { domain: Some("api.openai.com".into()), ..Default::default() };
        let policy = NetworkPolicy {
            default: DefaultAction::Deny,
            allow: profile.expand(RuleOrigin::Profile("codex".into())).unwrap(),
        };
        assert_eq!(policy.decide("api.openai.com", 443, None).rule.as_deref(), Some("api.openai.com (profile codex)"));
    }

    #[test]
    fn methods_are_named_in_uppercase() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.as_str()), Some(method));
            assert_eq!(method.to_string(), method.as_str());
            assert_eq!(serde_json::to_value(method).unwrap(), serde_json::json!(method.as_str()));
        }
        assert_eq!(Method::parse("get"), None);
    }

    #[test]
    fn ports_and_methods_of_a_domain_rule() {
        let config = AllowRuleConfig {
            domain: Some("a.example.com".into()),
            ports: vec![8443],
            methods: vec![Method::Post, Method::Get, Method::Post],
            ..Default::default()
        };
        let rule = config.expand(RuleOrigin::Static).unwrap().remove(0);
        assert_eq!((rule.ports, rule.methods), (vec![8443], vec![Method::Get, Method::Post]));
        let zero = AllowRuleConfig { domain: Some("a.example.com".into()), ports: vec![0], ..Default::default() };
        assert_eq!(zero.expand(RuleOrigin::Static), Err(RuleError::PortZero));
    }

    #[test]
    fn presets_expand_to_their_hosts_ports_and_methods() {
        let hosts =
            |preset: Preset| -> Vec<String> { preset.rules().iter().map(|rule| rule.host.to_string()).collect() };
        assert_eq!(hosts(Preset::Npm), ["registry.npmjs.org", "registry.yarnpkg.com"]);
        let registries: Vec<String> =
            [Preset::Rust, Preset::Npm, Preset::Pypi, Preset::Go, Preset::Debian].into_iter().flat_map(hosts).collect();
        assert_eq!(hosts(Preset::PackageRegistries), registries);
        assert_eq!(registries.len(), 12);
        for rule in Preset::PackageRegistries.rules() {
            // A tunnel does not show its method: a preset with methods would allow nothing.
            assert!(rule.methods.is_empty(), "{rule:?}");
            assert!(rule.allows(&rule.host.to_string(), 443, None), "{rule:?}");
            let ports: &[u16] = if rule.host.to_string().ends_with("debian.org") { &[80, 443] } else { &[443] };
            assert_eq!(rule.ports, ports, "{rule:?}");
        }
        let github = Preset::Github.rules();
        assert_eq!(github.len(), 5);
        assert!(github.iter().all(|rule| rule.methods.is_empty() && rule.ports == [443]), "{github:?}");
        assert!(github.iter().all(|rule| rule.origin == RuleOrigin::Preset(Preset::Github)));
        for preset in [
            Preset::Rust,
            Preset::Npm,
            Preset::Pypi,
            Preset::Go,
            Preset::Debian,
            Preset::PackageRegistries,
            Preset::Github,
        ] {
            let parsed: Preset = serde_json::from_value(serde_json::json!(preset.name())).unwrap();
            assert_eq!(parsed, preset);
        }
    }
}
