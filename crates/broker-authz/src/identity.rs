//! Who is calling: the [`CallerIdentity`] derived from the verified client certificate.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The longest SPIFFE ID accepted, in bytes (SPIFFE-ID spec, section 2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name accepted, in bytes (SPIFFE-ID spec, section 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// It does not start with `spiffe://` (lowercase).
    #[error("a SPIFFE ID must start with spiffe://")]
    Scheme,
    /// Longer than [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("a SPIFFE ID must not be longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The trust domain is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("the trust domain must not be longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The trust domain holds something other than lowercase letters, digits, `.`, `-` and `_`
    /// (this excludes upper case, ports, user info, queries and fragments).
    #[error(
        "the trust domain may contain only lowercase letters, digits, '.', '-' and '_' (no port, user info, query or fragment)"
    )]
    TrustDomainChar,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("a path segment is empty (double or trailing '/')")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("a path segment is '.' or '..'")]
    DotSegment,
    /// The path holds something other than ASCII letters, digits, `.`, `-` and `_` (this
    /// excludes percent-encoding, queries and fragments).
    #[error(
        "path segments may contain only ASCII letters, digits, '.', '-' and '_' (no percent-encoding, query or fragment)"
    )]
    PathChar,
}

/// A validated SPIFFE ID such as `spiffe://example.org/ns/prod/sa/deployer`: the `spiffe` scheme,
/// a trust domain, and a path of zero or more segments, as the SPIFFE-ID specification defines.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path (or the end) starts.
    path_start: usize,
}

impl SpiffeId {
    /// Validates a SPIFFE ID.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain)?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if segment == "." || segment == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if !segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                {
                    return Err(SpiffeIdError::PathChar);
                }
            }
        }
        Ok(Self {
            id: id.to_owned(),
            path_start: SCHEME.len() + trust_domain.len(),
        })
    }

    /// The trust domain, such as `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, such as `/ns/prod/sa/deployer`; empty for the ID of a trust domain itself.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

/// Validates a trust domain name: 1 to 255 lowercase letters, digits, `.`, `-` and `_`.
pub(crate) fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    if trust_domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::TrustDomainChar);
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.id, f)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Why no [`CallerIdentity`] could be taken from a certificate. The server answers all of them
/// with `UNAUTHENTICATED` (ErrorInfo reason `CLIENT_CERTIFICATE_REQUIRED`). Messages hold no
/// secret (a certificate holds none) and are bounded in length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not one DER-encoded X.509 certificate.
    #[error("the client certificate is not a valid DER X.509 certificate: {0}")]
    Malformed(String),
    /// The subject alternative name extension is malformed or present twice, or holds a
    /// name that cannot be decoded.
    #[error("the client certificate's subject alternative names are malformed: {0}")]
    MalformedNames(String),
    /// A URI SAN starts with `spiffe:` but is not a valid SPIFFE ID.
    #[error("the client certificate's SPIFFE ID {uri:?} is invalid: {reason}")]
    InvalidSpiffeId {
        /// The URI, cut to 128 characters.
        uri: String,
        /// What is wrong with it.
        reason: SpiffeIdError,
    },
    /// More than one SPIFFE URI SAN: an X.509-SVID has exactly one.
    #[error("the client certificate has {0} SPIFFE URI SANs; an X.509-SVID must have exactly one")]
    MultipleSpiffeIds(usize),
    /// More than one common name in the subject: which one names the caller is ambiguous.
    #[error("the client certificate's subject has more than one common name")]
    MultipleCommonNames,
    /// A DNS SAN or the common name has control characters or cannot be decoded.
    #[error("the client certificate's {0} cannot be decoded or contains control characters")]
    InvalidName(&'static str),
    /// No SPIFFE ID, no DNS SAN and no common name: nothing a policy could name.
    #[error(
        "the client certificate carries no identity: no SPIFFE URI SAN, no DNS SAN and no subject common name"
    )]
    NoName,
}

/// The caller, as its verified leaf certificate names it.
///
/// The identity a policy sees is the most specific name the certificate has, in this order
/// (the order `token_broker.proto` documents):
///
/// 1. the SPIFFE ID, if the certificate has a `spiffe://` URI SAN;
/// 2. otherwise its DNS SANs (a policy entry may match any of them);
/// 3. otherwise the common name (CN) of its subject.
///
/// So a certificate with a SPIFFE ID is never matched by its DNS SANs or CN, and one with DNS
/// SANs never by its CN: a name of a weaker kind that a CA happened to put in a certificate does
/// not widen what its holder may do.
///
/// [`Display`](fmt::Display) shows that name (or, for an identity built by hand with no name
/// at all, the fingerprint); it is what denials and audit events call the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The SPIFFE ID from the certificate's one `spiffe://` URI SAN.
    pub spiffe_id: Option<SpiffeId>,
    /// The DNS SANs, lowercased, in certificate order.
    pub dns_names: Vec<String>,
    /// The common name of the subject.
    pub common_name: Option<String>,
    /// The lowercase hex SHA-256 of the certificate's DER encoding (64 digits).
    pub fingerprint: String,
    /// When the certificate expires: the identity ends then, even on a connection that stays
    /// open.
    pub not_after: SystemTime,
}

impl CallerIdentity {
    /// Reads the identity of the verified leaf certificate `der`. The certificate chain must
    /// have been verified already (by the TLS layer); this only parses.
    ///
    /// URI SANs that are not SPIFFE IDs, and e-mail and IP SANs, are ignored. A certificate with
    /// an invalid SPIFFE ID, more than one SPIFFE ID, more than one CN, or no usable name at all
    /// is an error rather than a weaker identity.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::Malformed(truncate(&e.to_string(), 200)))?;
        if !rest.is_empty() {
            return Err(IdentityError::Malformed(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }

        let mut spiffe_ids = Vec::new();
        let mut dns_names = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::MalformedNames(truncate(&e.to_string(), 200)))?;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) => {
                    // The scheme is case-insensitive in URIs, so `SPIFFE://` is a SPIFFE ID
                    // too; SpiffeId::parse then rejects it for not being lowercase.
                    let is_spiffe = uri
                        .get(..SCHEME.len() - 2)
                        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"));
                    if is_spiffe {
                        let id = SpiffeId::parse(uri).map_err(|reason| {
                            IdentityError::InvalidSpiffeId {
                                uri: truncate(uri, 128),
                                reason,
                            }
                        })?;
                        spiffe_ids.push(id);
                    }
                }
                GeneralName::DNSName(dns) => {
                    if dns.is_empty() || dns.chars().any(char::is_control) {
                        return Err(IdentityError::InvalidName("DNS SAN"));
                    }
                    dns_names.push(dns.to_ascii_lowercase());
                }
                GeneralName::Invalid(..) => {
                    return Err(IdentityError::MalformedNames(
                        "a subject alternative name cannot be decoded".to_owned(),
                    ));
                }
                _ => {}
            }
        }
        if spiffe_ids.len() > 1 {
            return Err(IdentityError::MultipleSpiffeIds(spiffe_ids.len()));
        }

        let mut common_names = cert.subject().iter_common_name();
        let common_name = match common_names.next() {
            None => None,
            Some(attribute) => {
                let cn = attribute
                    .as_str()
                    .map_err(|_| IdentityError::InvalidName("subject common name"))?;
                if cn.chars().any(char::is_control) {
                    return Err(IdentityError::InvalidName("subject common name"));
                }
                Some(cn.to_owned())
            }
        };
        if common_names.next().is_some() {
            return Err(IdentityError::MultipleCommonNames);
        }
        let common_name = common_name.filter(|cn| !cn.is_empty());

        let spiffe_id = spiffe_ids.pop();
        if spiffe_id.is_none() && dns_names.is_empty() && common_name.is_none() {
            return Err(IdentityError::NoName);
        }
        Ok(Self {
            spiffe_id,
            dns_names,
            common_name,
            fingerprint: sha256_hex(der),
            not_after: unix_time(cert.validity().not_after.timestamp()),
        })
    }

    /// The name a policy matches: see the type's documentation.
    pub fn name(&self) -> CallerName<'_> {
        if let Some(id) = &self.spiffe_id {
            CallerName::Spiffe(id)
        } else if !self.dns_names.is_empty() {
            CallerName::Dns(&self.dns_names)
        } else if let Some(cn) = &self.common_name {
            CallerName::CommonName(cn)
        } else {
            CallerName::None
        }
    }
}

/// The kind of name that identifies a caller, see [`CallerIdentity::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerName<'a> {
    /// A SPIFFE ID.
    Spiffe(&'a SpiffeId),
    /// One or more DNS names (lowercase).
    Dns(&'a [String]),
    /// A subject common name.
    CommonName(&'a str),
    /// No name (only for an identity built by hand).
    None,
}

impl fmt::Display for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            CallerName::Spiffe(id) => f.write_str(id.as_str()),
            CallerName::Dns(names) => f.write_str(names.first().map_or("", String::as_str)),
            CallerName::CommonName(cn) => f.write_str(cn),
            CallerName::None => write!(f, "sha256:{}", self.fingerprint),
        }
    }
}

/// Seconds since the Unix epoch as a `SystemTime`; times before the epoch become the epoch.
fn unix_time(seconds: i64) -> SystemTime {
    u64::try_from(seconds)
        .ok()
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType, string::Ia5String};

    fn cert(sans: &[SanType], cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans.to_vec();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).expect("ia5"))
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(Ia5String::try_from(s).expect("ia5"))
    }

    #[test]
    fn spiffe_ids_follow_the_spec() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/deployer").expect("valid");
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/deployer");
        let domain = SpiffeId::parse("spiffe://ex_am-ple.org").expect("valid");
        assert_eq!(domain.trust_domain(), "ex_am-ple.org");
        assert_eq!(domain.path(), "");
        assert!(SpiffeId::parse("spiffe://example.org/A.b-c_D").is_ok());
        let max = format!(
            "spiffe://example.org/{}",
            "a".repeat(MAX_SPIFFE_ID_LEN - 21)
        );
        assert_eq!(max.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&max).is_ok());

        let cases: &[(&str, SpiffeIdError)] = &[
            ("https://example.org/a", SpiffeIdError::Scheme),
            ("SPIFFE://example.org/a", SpiffeIdError::Scheme),
            ("spiffe://", SpiffeIdError::EmptyTrustDomain),
            ("spiffe:///a", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://Example.org/a", SpiffeIdError::TrustDomainChar),
            (
                "spiffe://example.org:8443/a",
                SpiffeIdError::TrustDomainChar,
            ),
            (
                "spiffe://user@example.org/a",
                SpiffeIdError::TrustDomainChar,
            ),
            ("spiffe://example.org?x=1", SpiffeIdError::TrustDomainChar),
            ("spiffe://example.org/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/./b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a/..", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a?x=1", SpiffeIdError::PathChar),
            ("spiffe://example.org/a#frag", SpiffeIdError::PathChar),
            ("spiffe://example.org/a%2Fb", SpiffeIdError::PathChar),
            ("spiffe://example.org/caf\u{e9}", SpiffeIdError::PathChar),
        ];
        for (id, expected) in cases {
            assert_eq!(SpiffeId::parse(id), Err(*expected), "{id}");
        }
        let too_long = format!("{max}a");
        assert_eq!(SpiffeId::parse(&too_long), Err(SpiffeIdError::TooLong));
        let long_domain = format!("spiffe://{}", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        assert_eq!(
            SpiffeId::parse(&long_domain),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
    }

    #[test]
    fn identity_from_a_spiffe_certificate() {
        let der = cert(
            &[
                uri("spiffe://example.org/ci/deployer"),
                uri("https://example.org/not-spiffe"),
                dns("Deployer.Example.org"),
            ],
            Some("deployer"),
        );
        let identity = CallerIdentity::from_certificate_der(&der).expect("identity");
        let id = identity.spiffe_id.as_ref().expect("spiffe id");
        assert_eq!(id.as_str(), "spiffe://example.org/ci/deployer");
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ci/deployer");
        assert_eq!(identity.dns_names, ["deployer.example.org"]);
        assert_eq!(identity.common_name.as_deref(), Some("deployer"));
        assert_eq!(identity.fingerprint, sha256_hex(&der));
        assert_eq!(identity.fingerprint.len(), 64);
        assert!(
            identity
                .fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(identity.to_string(), "spiffe://example.org/ci/deployer");
        let left = identity
            .not_after
            .duration_since(SystemTime::now())
            .expect("in the future");
        // rcgen's default validity ends in 4096; anything years ahead will do.
        assert!(left > Duration::from_secs(365 * 86_400), "{left:?}");
    }

    #[test]
    fn display_shows_the_most_specific_name() {
        let der = cert(&[dns("a.example.org"), dns("b.example.org")], Some("cn"));
        let identity = CallerIdentity::from_certificate_der(&der).expect("identity");
        assert_eq!(identity.spiffe_id, None);
        assert_eq!(identity.dns_names, ["a.example.org", "b.example.org"]);
        assert_eq!(identity.to_string(), "a.example.org");

        let der = cert(&[], Some("legacy-batch"));
        let identity = CallerIdentity::from_certificate_der(&der).expect("identity");
        assert!(identity.dns_names.is_empty());
        assert_eq!(identity.to_string(), "legacy-batch");
        assert_eq!(identity.name(), CallerName::CommonName("legacy-batch"));

        let nameless = CallerIdentity {
            spiffe_id: None,
            dns_names: vec![],
            common_name: None,
            fingerprint: "ab".repeat(32),
            not_after: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(nameless.to_string(), format!("sha256:{}", "ab".repeat(32)));
    }

    #[test]
    fn certificates_without_a_usable_identity_are_refused() {
        type Expected = fn(&IdentityError) -> bool;
        let cases: Vec<(Vec<u8>, Expected)> = vec![
            (
                cert(
                    &[uri("spiffe://example.org/a"), uri("spiffe://example.org/b")],
                    None,
                ),
                |e| matches!(e, IdentityError::MultipleSpiffeIds(2)),
            ),
            (cert(&[uri("spiffe://Example.org/a")], Some("x")), |e| {
                matches!(
                    e,
                    IdentityError::InvalidSpiffeId {
                        reason: SpiffeIdError::TrustDomainChar,
                        ..
                    }
                )
            }),
            (cert(&[uri("SPIFFE://example.org/a")], Some("x")), |e| {
                matches!(
                    e,
                    IdentityError::InvalidSpiffeId {
                        reason: SpiffeIdError::Scheme,
                        ..
                    }
                )
            }),
            (cert(&[uri("https://example.org/a")], None), |e| {
                matches!(e, IdentityError::NoName)
            }),
            (cert(&[], None), |e| matches!(e, IdentityError::NoName)),
            (b"not a certificate".to_vec(), |e| {
                matches!(e, IdentityError::Malformed(_))
            }),
            (Vec::new(), |e| matches!(e, IdentityError::Malformed(_))),
            (
                {
                    let mut der = cert(&[], Some("x"));
                    der.push(0);
                    der
                },
                |e| matches!(e, IdentityError::Malformed(_)),
            ),
            (
                {
                    let der = cert(&[], Some("x"));
                    der[..der.len() / 2].to_vec()
                },
                |e| matches!(e, IdentityError::Malformed(_)),
            ),
        ];
        for (i, (der, expected)) in cases.into_iter().enumerate() {
            let error = CallerIdentity::from_certificate_der(&der).expect_err("refused");
            assert!(expected(&error), "case {i}: {error}");
            assert!(error.to_string().len() < 400, "case {i}: {error}");
        }
    }

    #[test]
    fn two_common_names_are_ambiguous() {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "a");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "org");
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        // rcgen keeps one value per attribute type, so write a second CN by patching the
        // organization's OID (2.5.4.10) into the CN's (2.5.4.3); both encode in 3 bytes.
        let org_oid = [0x06, 0x03, 0x55, 0x04, 0x0a];
        // Self-signed: the issuer repeats the subject, so patch every occurrence.
        let positions: Vec<usize> = (0..der.len() - org_oid.len())
            .filter(|&i| der[i..i + org_oid.len()] == org_oid)
            .collect();
        assert_eq!(positions.len(), 2, "issuer and subject");
        let mut patched = der.clone();
        for position in positions {
            patched[position + 4] = 0x03;
        }
        assert_eq!(
            CallerIdentity::from_certificate_der(&patched),
            Err(IdentityError::MultipleCommonNames)
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType, string::Ia5String};

    /// A subject alternative name of any kind the extraction looks at, with hostile contents.
    fn san() -> impl Strategy<Value = SanType> {
        let text = "[ -~]{0,40}";
        prop_oneof![
            text.prop_map(|s| Ia5String::try_from(s).map(SanType::URI)),
            "spiffe://[a-zA-Z0-9._:@%/?#-]{0,40}"
                .prop_map(|s| Ia5String::try_from(s).map(SanType::URI)),
            "SPIFFE://[a-z0-9./-]{0,20}".prop_map(|s| Ia5String::try_from(s).map(SanType::URI)),
            text.prop_map(|s| Ia5String::try_from(s).map(SanType::DnsName)),
            "[\\x00-\\x7f]{0,20}".prop_map(|s| Ia5String::try_from(s).map(SanType::DnsName)),
            any::<[u8; 4]>().prop_map(|ip| Ok(SanType::IpAddress(std::net::IpAddr::from(ip)))),
            text.prop_map(|s| Ia5String::try_from(s).map(SanType::Rfc822Name)),
        ]
        .prop_filter_map("encodable", Result::ok)
    }

    fn certificate(sans: Vec<SanType>, cn: Option<String>) -> Option<Vec<u8>> {
        let mut params = CertificateParams::new(Vec::<String>::new()).ok()?;
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().ok()?;
        Some(params.self_signed(&key).ok()?.der().to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any combination of names: extraction never panics, and what it returns keeps the
        /// documented precedence and bounds.
        #[test]
        fn any_names_give_an_identity_or_an_error(
            sans in proptest::collection::vec(san(), 0..6),
            cn in proptest::option::of("\\PC{0,30}|[\\x00-\\x1f]{1,3}"),
        ) {
            let Some(der) = certificate(sans, cn) else { return Ok(()) };
            match CallerIdentity::from_certificate_der(&der) {
                Ok(identity) => {
                    let name = identity.to_string();
                    prop_assert!(!name.is_empty());
                    prop_assert!(!name.chars().any(char::is_control));
                    if let Some(id) = &identity.spiffe_id {
                        let reparsed = SpiffeId::parse(id.as_str());
                        prop_assert_eq!(reparsed.as_ref(), Ok(id));
                        prop_assert_eq!(name, id.as_str());
                    }
                    prop_assert!(identity.dns_names.iter().all(|d| !d.is_empty() && d.to_ascii_lowercase() == *d));
                }
                Err(error) => prop_assert!(error.to_string().len() < 400),
            }
        }

        /// Corrupted certificates are refused or read, never a panic.
        #[test]
        fn corrupted_der_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let Some(mut der) = certificate(
                vec![SanType::URI(Ia5String::try_from("spiffe://example.org/a").map_err(|e| TestCaseError::fail(e.to_string()))?)],
                Some("cn".to_owned()),
            ) else { return Ok(()) };
            for (index, byte) in flips {
                let i = index.index(der.len());
                der[i] ^= byte;
            }
            if truncate {
                der.truncate(cut.index(der.len()));
            }
            let _ = CallerIdentity::from_certificate_der(&der);
        }
    }
}
