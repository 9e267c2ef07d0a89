//! Platforms: parsing, containerd's normalisation, matching an index.
//!
//! The rules are those of containerd's `platforms` package: names are
//! normalised (`x86_64` → `amd64`, `aarch64` → `arm64`, `armhf` → `arm/v7`,
//! …), a platform matches another when OS, architecture and variant are
//! equal after normalisation, and a wanted platform also accepts a short,
//! ordered list of older ones it can run (`amd64` → `386`, `arm/v7` → `v6` →
//! `v5`, `arm64` → `arm/v8` … `arm/v5`).

use std::fmt;

use crate::oci::{self, Descriptor, Platform};

/// The annotation Docker's buildx puts on attestation manifests in an index.
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const REFERENCE_TYPE_ATTESTATION: &str = "attestation-manifest";

/// GOOS values: the operating systems an image can name.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// GOARCH values (after normalisation): the architectures an image can name.
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// Why a platform does not parse, or an index has none for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Not of the form `OS/ARCH[/VARIANT]`.
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT]")]
    Invalid(String),
    /// An OS Go does not know.
    #[error("invalid platform {spec:?}: unknown operating system {os:?}")]
    UnknownOs {
        /// The platform given.
        spec: String,
        /// Its OS.
        os: String,
    },
    /// An architecture Go does not know.
    #[error("invalid platform {spec:?}: unknown architecture {arch:?}")]
    UnknownArchitecture {
        /// The platform given.
        spec: String,
        /// Its architecture.
        arch: String,
    },
    /// The index has no manifest this platform can run.
    #[error("no manifest for platform {wanted} in the index; it offers {}", offered_list(.offered))]
    NoMatch {
        /// The platform wanted.
        wanted: String,
        /// The platforms the index offers.
        offered: Vec<String>,
    },
}

fn offered_list(offered: &[String]) -> String {
    if offered.is_empty() {
        "no image for any platform".to_string()
    } else {
        offered.join(", ")
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`, or a lone OS (the host's architecture)
    /// or a lone architecture (Linux), and normalises the result.
    pub fn parse(spec: &str) -> Result<Platform, PlatformError> {
        let invalid = || PlatformError::Invalid(spec.to_string());
        let parts: Vec<&str> = spec.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(invalid());
        }
        let (os, arch, variant) = match parts.as_slice() {
            [one] => {
                let lower = normalize_os(one);
                if KNOWN_OS.contains(&lower.as_str()) {
                    let host = Platform::host();
                    (lower, host.architecture, host.variant.unwrap_or_default())
                } else {
                    ("linux".to_string(), one.to_string(), String::new())
                }
            }
            [os, arch] => (normalize_os(os), arch.to_string(), String::new()),
            [os, arch, variant] => (normalize_os(os), arch.to_string(), variant.to_string()),
            _ => return Err(invalid()),
        };
        if !KNOWN_OS.contains(&os.as_str()) {
            return Err(PlatformError::UnknownOs {
                spec: spec.to_string(),
                os,
            });
        }
        let (arch, variant) = normalize_arch(&arch, &variant);
        if !KNOWN_ARCH.contains(&arch.as_str()) {
            return Err(PlatformError::UnknownArchitecture {
                spec: spec.to_string(),
                arch,
            });
        }
        Ok(Platform {
            architecture: arch,
            os,
            variant: (!variant.is_empty()).then_some(variant),
            ..Platform::default()
        })
    }

    /// The platform this process runs on, normalised.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            other => other,
        };
        let variant = if arch == "arm" {
            host_arm_variant().unwrap_or_default()
        } else {
            String::new()
        };
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let (architecture, variant) = normalize_arch(arch, &variant);
        Platform {
            architecture,
            os: os.to_string(),
            variant: (!variant.is_empty()).then_some(variant),
            ..Platform::default()
        }
    }

    /// containerd's `Normalize`: lowercase names, canonical architecture and
    /// variant. OS version and features are kept.
    pub fn normalized(&self) -> Platform {
        let (architecture, variant) =
            normalize_arch(&self.architecture, self.variant.as_deref().unwrap_or(""));
        Platform {
            architecture,
            os: normalize_os(&self.os),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
            variant: (!variant.is_empty()).then_some(variant),
        }
    }

    /// Whether `self` (a wanted platform) accepts an image for `candidate`,
    /// fallbacks included.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        PlatformMatcher::new(self).rank(candidate).is_some()
    }
}

impl fmt::Display for Platform {
    /// `os/arch[/variant]`, as the fields are written (not normalised).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = if self.os.is_empty() {
            "unknown"
        } else {
            &self.os
        };
        let arch = if self.architecture.is_empty() {
            "unknown"
        } else {
            &self.architecture
        };
        write!(f, "{os}/{arch}")?;
        match self.variant.as_deref() {
            Some(variant) if !variant.is_empty() => write!(f, "/{variant}"),
            _ => Ok(()),
        }
    }
}

/// A wanted platform with its ordered fallbacks (containerd's `Only`).
#[derive(Debug, Clone)]
pub struct PlatformMatcher {
    wanted: Platform,
    /// Acceptable (os, arch, variant) triples, best first, all normalised.
    vector: Vec<Platform>,
}

impl PlatformMatcher {
    pub fn new(wanted: &Platform) -> PlatformMatcher {
        let normalized = wanted.normalized();
        PlatformMatcher {
            wanted: wanted.clone(),
            vector: platform_vector(&normalized),
        }
    }

    /// The position of `candidate` in the fallback order (0 = exact), or
    /// `None` when it does not match at all.
    pub fn rank(&self, candidate: &Platform) -> Option<usize> {
        let c = candidate.normalized();
        self.vector.iter().position(|p| {
            p.os == c.os
                && p.architecture == c.architecture
                && p.variant == c.variant
                && os_version_matches(p, &c)
        })
    }

    /// Picks the best manifest of an index for this platform. Attestation
    /// manifests, entries of unknown OS, and entries that are not image
    /// manifests are never chosen; among equal ranks the first one wins.
    pub fn select<'a>(&self, manifests: &'a [Descriptor]) -> Result<&'a Descriptor, PlatformError> {
        let mut best: Option<(usize, &Descriptor)> = None;
        for descriptor in manifests.iter().filter(|d| is_selectable(d)) {
            let Some(platform) = &descriptor.platform else {
                continue;
            };
            if let Some(rank) = self.rank(platform) {
                if best.is_none_or(|(best_rank, _)| rank < best_rank) {
                    best = Some((rank, descriptor));
                }
            }
        }
        best.map(|(_, d)| d).ok_or_else(|| PlatformError::NoMatch {
            wanted: self.wanted.to_string(),
            offered: offered_platforms(manifests),
        })
    }
}

/// The platform this process runs on (see [`Platform::host`]).
pub fn host() -> Platform {
    Platform::host()
}

/// Picks the best manifest of an index for `wanted` (see
/// [`PlatformMatcher::select`]).
pub fn select<'a>(
    manifests: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, PlatformError> {
    PlatformMatcher::new(wanted).select(manifests)
}

/// The platforms an index offers images for, in index order, without
/// duplicates, attestations or unknown entries.
pub fn offered_platforms(manifests: &[Descriptor]) -> Vec<String> {
    let mut offered: Vec<String> = Vec::new();
    for descriptor in manifests.iter().filter(|d| is_selectable(d)) {
        if let Some(platform) = &descriptor.platform {
            let name = platform.to_string();
            if !offered.contains(&name) {
                offered.push(name);
            }
        }
    }
    offered
}

/// Whether an index entry may be chosen as an image at all.
fn is_selectable(descriptor: &Descriptor) -> bool {
    if descriptor.annotation(ANNOTATION_REFERENCE_TYPE) == Some(REFERENCE_TYPE_ATTESTATION) {
        return false;
    }
    if !matches!(
        descriptor.media_type.as_str(),
        oci::OCI_MANIFEST | oci::DOCKER_MANIFEST
    ) {
        return false;
    }
    match &descriptor.platform {
        Some(p) => KNOWN_OS.contains(&normalize_os(&p.os).as_str()),
        None => false,
    }
}

/// A wanted OS version (Windows builds) must equal the candidate's when both
/// name one; Linux images leave it empty.
fn os_version_matches(wanted: &Platform, candidate: &Platform) -> bool {
    match (
        wanted.os_version.as_deref(),
        candidate.os_version.as_deref(),
    ) {
        (Some(w), Some(c)) if !w.is_empty() && !c.is_empty() => w == c,
        _ => true,
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_string(),
        _ => os,
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".into(), variant)
        }
        "aarch64" | "arm64" => {
            let variant = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => variant,
            };
            ("arm64".into(), variant)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let variant = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), variant)
        }
        _ => (arch, variant),
    }
}

/// The wanted platform followed by the older ones it can run, best first
/// (containerd's `platformVector`). `wanted` is normalised.
fn platform_vector(wanted: &Platform) -> Vec<Platform> {
    let with = |arch: &str, variant: Option<String>| Platform {
        architecture: arch.to_string(),
        variant,
        ..wanted.clone()
    };
    let mut vector = vec![wanted.clone()];
    let variant = wanted.variant.as_deref().unwrap_or("");
    match wanted.architecture.as_str() {
        "amd64" => {
            if let Some(level) = numeric_variant(variant) {
                for lower in (1..level).rev() {
                    // amd64 v1 is written without a variant.
                    let v = (lower > 1).then(|| format!("v{lower}"));
                    vector.push(with("amd64", v));
                }
            }
            vector.push(with("386", None));
        }
        "arm" => {
            if let Some(version) = numeric_variant(variant) {
                for lower in (5..version).rev() {
                    vector.push(with("arm", Some(format!("v{lower}"))));
                }
            }
        }
        "arm64" => {
            vector = arm64_variants(variant)
                .into_iter()
                .map(|v| with("arm64", v))
                .collect();
            for arm in (5..=8).rev() {
                vector.push(with("arm", Some(format!("v{arm}"))));
            }
        }
        _ => {}
    }
    vector
}

/// `v3` → 3; `None` for anything else.
fn numeric_variant(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

/// The arm64 variants a CPU of `variant` runs, best first, as normalised
/// variants (`None` is v8.0). Armv9.x includes Armv8.(x+5).
fn arm64_variants(variant: &str) -> Vec<Option<String>> {
    let parsed = match variant {
        "" => Some((8, 0)),
        v => v.strip_prefix('v').and_then(|v| match v.split_once('.') {
            Some((major, minor)) => Some((major.parse().ok()?, minor.parse().ok()?)),
            None => Some((v.parse().ok()?, 0)),
        }),
    };
    let Some((major, minor)): Option<(u32, u32)> = parsed else {
        // An unknown variant only matches itself, then the arm fallbacks.
        return vec![Some(variant.to_string())];
    };
    let name = |major: u32, minor: u32| match (major, minor) {
        (8, 0) => None,
        (_, 0) => Some(format!("v{major}")),
        _ => Some(format!("v{major}.{minor}")),
    };
    let mut out = Vec::new();
    let mut v8_minor = minor;
    if major == 9 {
        for m in (0..=minor).rev() {
            out.push(name(9, m));
        }
        v8_minor = minor + 5;
    } else if major != 8 {
        return vec![Some(variant.to_string())];
    }
    for m in (0..=v8_minor).rev() {
        out.push(name(8, m));
    }
    out
}

/// The ARM architecture version from /proc/cpuinfo (`CPU architecture: 7`).
fn host_arm_variant() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let value = cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "CPU architecture").then(|| value.trim().to_string())
    })?;
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("v{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::collections::BTreeMap;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: arch.into(),
            os: os.into(),
            variant: variant.map(Into::into),
            ..Platform::default()
        }
    }

    fn entry(name: &str, platform: Option<Platform>) -> Descriptor {
        let mut d = Descriptor::new(oci::OCI_MANIFEST, Digest::of(name.as_bytes()), 100);
        d.platform = platform;
        d
    }

    fn attestation(of: &str) -> Descriptor {
        let mut d = entry(&format!("att-{of}"), Some(p("unknown", "unknown", None)));
        d.annotations = Some(BTreeMap::from([(
            ANNOTATION_REFERENCE_TYPE.to_string(),
            REFERENCE_TYPE_ATTESTATION.to_string(),
        )]));
        d
    }

    #[test]
    fn parse_normalises() {
        let cases = [
            ("linux/amd64", ("linux", "amd64", None)),
            ("linux/x86_64", ("linux", "amd64", None)),
            ("linux/x86-64/v1", ("linux", "amd64", None)),
            ("linux/amd64/v3", ("linux", "amd64", Some("v3"))),
            ("Linux/AMD64", ("linux", "amd64", None)),
            ("linux/aarch64", ("linux", "arm64", None)),
            ("linux/arm64/v8", ("linux", "arm64", None)),
            ("linux/arm64/8", ("linux", "arm64", None)),
            ("linux/arm64/v8.0", ("linux", "arm64", None)),
            ("linux/arm64/9", ("linux", "arm64", Some("v9"))),
            ("linux/arm64/v8.2", ("linux", "arm64", Some("v8.2"))),
            ("linux/armhf", ("linux", "arm", Some("v7"))),
            ("linux/armel", ("linux", "arm", Some("v6"))),
            ("linux/arm", ("linux", "arm", Some("v7"))),
            ("linux/arm/7", ("linux", "arm", Some("v7"))),
            ("linux/arm/6", ("linux", "arm", Some("v6"))),
            ("linux/arm/v5", ("linux", "arm", Some("v5"))),
            ("linux/i386", ("linux", "386", None)),
            ("linux/s390x", ("linux", "s390x", None)),
            ("windows/amd64", ("windows", "amd64", None)),
            ("macos/arm64", ("darwin", "arm64", None)),
            ("arm64", ("linux", "arm64", None)),
            ("aarch64", ("linux", "arm64", None)),
            ("armhf", ("linux", "arm", Some("v7"))),
            ("amd64", ("linux", "amd64", None)),
        ];
        for (spec, (os, arch, variant)) in cases {
            let parsed = Platform::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(parsed, p(os, arch, variant), "{spec}");
        }
        // A lone OS takes the host's architecture.
        let host = Platform::host();
        let linux = Platform::parse("linux").unwrap();
        assert_eq!(linux.os, "linux");
        assert_eq!(linux.architecture, host.architecture);
    }

    #[test]
    fn parse_refuses_nonsense() {
        for spec in [
            "",
            "/",
            "linux/",
            "/amd64",
            "linux//v7",
            "linux/amd64/v3/x",
            "linux/amd 64",
            "plan10/amd64",
            "linux/z80",
            "z80",
        ] {
            assert!(Platform::parse(spec).is_err(), "{spec}");
        }
        assert_eq!(
            Platform::parse("beos/amd64").unwrap_err().to_string(),
            "invalid platform \"beos/amd64\": unknown operating system \"beos\""
        );
    }

    #[test]
    fn host_is_normalised() {
        let host = Platform::host();
        assert_eq!(host, host.normalized());
        assert_eq!(host.os, std::env::consts::OS);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, p("linux", "amd64", None));
        }
        assert!(KNOWN_ARCH.contains(&host.architecture.as_str()));
    }

    #[test]
    fn display() {
        assert_eq!(
            p("linux", "arm64", Some("v8")).to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(p("linux", "amd64", None).to_string(), "linux/amd64");
        assert_eq!(p("linux", "amd64", Some("")).to_string(), "linux/amd64");
        assert_eq!(p("", "", None).to_string(), "unknown/unknown");
    }

    #[test]
    fn fallback_orders() {
        let order = |spec: &str| -> Vec<String> {
            platform_vector(&Platform::parse(spec).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(order("linux/amd64"), ["linux/amd64", "linux/386"]);
        assert_eq!(
            order("linux/amd64/v3"),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            order("linux/arm/v7"),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(order("linux/arm/v5"), ["linux/arm/v5"]);
        assert_eq!(
            order("linux/arm64"),
            [
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            order("linux/arm64/v8.2"),
            [
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        let v9 = order("linux/arm64/v9.1");
        assert_eq!(
            &v9[..3],
            ["linux/arm64/v9.1", "linux/arm64/v9", "linux/arm64/v8.6"]
        );
        assert!(v9.contains(&"linux/arm64".to_string()));
        assert_eq!(order("linux/s390x"), ["linux/s390x"]);
    }

    #[test]
    fn matching() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert!(amd64.accepts(&p("linux", "x86_64", None)));
        assert!(amd64.accepts(&p("linux", "amd64", Some("v1"))));
        assert!(amd64.accepts(&p("linux", "386", None)));
        assert!(!amd64.accepts(&p("linux", "amd64", Some("v2"))));
        assert!(!amd64.accepts(&p("windows", "amd64", None)));
        assert!(!amd64.accepts(&p("linux", "arm64", None)));

        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert!(arm64.accepts(&p("linux", "arm64", Some("v8"))));
        assert!(arm64.accepts(&p("linux", "aarch64", None)));
        assert!(arm64.accepts(&p("linux", "arm", None)));
        assert!(!arm64.accepts(&p("linux", "arm64", Some("v8.2"))));

        let armv6 = Platform::parse("linux/arm/v6").unwrap();
        assert!(
            !armv6.accepts(&p("linux", "arm", None)),
            "arm alone means v7"
        );
        assert!(armv6.accepts(&p("linux", "armel", None)));
        assert!(armv6.accepts(&p("linux", "arm", Some("v5"))));
    }

    #[test]
    fn select_picks_best_and_skips_attestations() {
        let index = vec![
            entry("386", Some(p("linux", "386", None))),
            entry("amd64", Some(p("linux", "amd64", None))),
            entry("arm64", Some(p("linux", "arm64", Some("v8")))),
            entry("armv7", Some(p("linux", "arm", Some("v7")))),
            attestation("amd64"),
            attestation("arm64"),
        ];
        let amd64 = select(&index, &Platform::parse("linux/amd64").unwrap()).unwrap();
        assert_eq!(amd64.digest, Digest::of(b"amd64"));
        let arm64 = select(&index, &Platform::parse("linux/arm64/v8").unwrap()).unwrap();
        assert_eq!(arm64.digest, Digest::of(b"arm64"));
        // arm/v6 cannot run v7; an arm/v8 machine falls back to v7.
        let err = select(&index, &Platform::parse("linux/arm/v6").unwrap()).unwrap_err();
        assert!(matches!(err, PlatformError::NoMatch { .. }));
        let v8 = select(&index, &Platform::parse("linux/arm/v8").unwrap()).unwrap();
        assert_eq!(v8.digest, Digest::of(b"armv7"));

        // Only 386 offered: an amd64 host takes it.
        let only_386 = vec![
            entry("386", Some(p("linux", "386", None))),
            attestation("386"),
        ];
        let chosen = select(&only_386, &Platform::parse("linux/amd64").unwrap()).unwrap();
        assert_eq!(chosen.digest, Digest::of(b"386"));
    }

    #[test]
    fn select_first_among_equals() {
        let index = vec![
            entry("first", Some(p("linux", "amd64", None))),
            entry("second", Some(p("linux", "x86_64", None))),
        ];
        let chosen = select(&index, &Platform::parse("linux/amd64").unwrap()).unwrap();
        assert_eq!(chosen.digest, Digest::of(b"first"));
    }

    #[test]
    fn select_never_chooses_unknown_or_attestation() {
        let mut unknown_but_annotated_away = attestation("x");
        // Even if an attestation claimed a real platform, it is skipped.
        unknown_but_annotated_away.platform = Some(p("linux", "amd64", None));
        let mut not_a_manifest = entry("idx", Some(p("linux", "amd64", None)));
        not_a_manifest.media_type = oci::OCI_INDEX.to_string();
        let index = vec![
            unknown_but_annotated_away,
            not_a_manifest,
            entry("unknown", Some(p("unknown", "unknown", None))),
            entry("none", None),
            entry("arm64", Some(p("linux", "arm64", Some("v8")))),
            entry("s390x", Some(p("linux", "s390x", None))),
        ];
        let err = select(&index, &Platform::parse("linux/amd64").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no manifest for platform linux/amd64 in the index; it offers linux/arm64/v8, linux/s390x"
        );
        let empty = select(&[], &Platform::parse("linux/amd64").unwrap()).unwrap_err();
        assert!(empty.to_string().contains("no image for any platform"));
    }

    #[test]
    fn error_message_lists_offers() {
        let index = vec![
            entry("amd64", Some(p("linux", "amd64", None))),
            entry("arm64", Some(p("linux", "arm64", Some("v8")))),
            attestation("amd64"),
        ];
        let err = select(&index, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no manifest for platform linux/s390x in the index; it offers linux/amd64, linux/arm64/v8"
        );
    }
}
