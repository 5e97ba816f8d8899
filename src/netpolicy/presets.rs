//! Named groups of allow rules for common services (package registries, GitHub).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AllowRule, HostPattern, Method, RuleOrigin};

/// A named group of allow rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// crates.io and the Rust toolchain downloads.
    Rust,
    /// The npm and Yarn registries.
    Npm,
    /// PyPI.
    Pypi,
    /// The Go module proxy and checksum database.
    Go,
    /// Debian's package mirrors (ports 80 and 443).
    Debian,
    /// Every package registry above.
    PackageRegistries,
    /// github.com, its API and content hosts (all methods, for pushes and API calls).
    Github,
}

/// Presets name no methods: nearly all registry traffic is HTTPS, whose method a tunnel
/// does not show, and a rule with methods would deny every tunnel (fail closed).
const ANY_METHOD: &[Method] = &[];

impl Preset {
    /// The name automation files use.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Rust => "rust",
            Preset::Npm => "npm",
            Preset::Pypi => "pypi",
            Preset::Go => "go",
            Preset::Debian => "debian",
            Preset::PackageRegistries => "package-registries",
            Preset::Github => "github",
        }
    }

    fn hosts(self) -> (&'static [&'static str], &'static [u16], &'static [Method]) {
        match self {
            Preset::Rust => {
                (&["crates.io", "index.crates.io", "static.crates.io", "static.rust-lang.org"], &[443], ANY_METHOD)
            }
            Preset::Npm => (&["registry.npmjs.org", "registry.yarnpkg.com"], &[443], ANY_METHOD),
            Preset::Pypi => (&["pypi.org", "files.pythonhosted.org"], &[443], ANY_METHOD),
            Preset::Go => (&["proxy.golang.org", "sum.golang.org"], &[443], ANY_METHOD),
            Preset::Debian => (&["deb.debian.org", "security.debian.org"], &[80, 443], ANY_METHOD),
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
