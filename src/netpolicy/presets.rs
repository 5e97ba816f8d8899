//! Named groups of allow rules for common services (package registries, GitHub).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AllowRule, HostPattern, Method, RuleOrigin};

/// A named group of allow rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// crates.io and the Rust toolchain downloads (GET/HEAD).
    Rust,
    /// The npm and Yarn registries (GET/HEAD).
    Npm,
    /// PyPI (GET/HEAD).
    Pypi,
    /// The Go module proxy and checksum database (GET/HEAD).
    Go,
    /// Debian's package mirrors (GET/HEAD, ports 80 and 443).
    Debian,
    /// Every package registry above.
    PackageRegistries,
    /// github.com, its API and content hosts (all methods, for pushes and API calls).
    Github,
}

const READ_ONLY: &[Method] = &[Method::Get, Method::Head];

impl Preset {
    fn hosts(self) -> (&'static [&'static str], &'static [u16], &'static [Method]) {
        match self {
            Preset::Rust => {
                (&["crates.io", "index.crates.io", "static.crates.io", "static.rust-lang.org"], &[443], READ_ONLY)
            }
            Preset::Npm => (&["registry.npmjs.org", "registry.yarnpkg.com"], &[443], READ_ONLY),
            Preset::Pypi => (&["pypi.org", "files.pythonhosted.org"], &[443], READ_ONLY),
            Preset::Go => (&["proxy.golang.org", "sum.golang.org"], &[443], READ_ONLY),
            Preset::Debian => (&["deb.debian.org", "security.debian.org"], &[80, 443], READ_ONLY),
            Preset::PackageRegistries => (&[], &[], &[]),
            Preset::Github => (
                &[
                    "github.com",
                    "api.github.com",
                    "codeload.github.com",
                    "objects.githubusercontent.com",
                    "raw.githubusercontent.com",
                ],
                &[443],
                &[],
            ),
        }
    }

    /// The concrete rules of this preset.
    pub fn rules(self) -> Vec<AllowRule> {
        if self == Preset::PackageRegistries {
            return [Preset::Rust, Preset::Npm, Preset::Pypi, Preset::Go, Preset::Debian]
                .into_iter()
                .flat_map(Preset::rules)
                .collect();
        }
        let (hosts, ports, methods) = self.hosts();
        hosts
            .iter()
            .map(|host| AllowRule {
                host: HostPattern::Exact((*host).to_string()),
                ports: ports.to_vec(),
                methods: methods.to_vec(),
                origin: RuleOrigin::Preset(self),
            })
            .collect()
    }
}
