//! X.509 workload identity federation: the certificate authorities the emulator generates
//! (a provider's CA and workload certificate, the mTLS listener's server certificate), the
//! verification of a subject token's chain against a provider's trust store, and the
//! assertion (what attribute conditions and the subject mapping see) of a leaf certificate.

use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub(crate) struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(error: rcgen::Error) -> Self {
        Self(error.to_string())
    }
}

/// A certificate with its PEM and DER forms.
#[derive(Clone)]
pub(crate) struct Cert {
    pub(crate) pem: String,
    pub(crate) der: Vec<u8>,
}

/// A certificate and its private key (PKCS#8 PEM and DER).
#[derive(Clone)]
pub(crate) struct CertifiedKey {
    pub(crate) cert: Cert,
    pub(crate) key_pem: Zeroizing<String>,
    pub(crate) key_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").finish_non_exhaustive()
    }
}

/// A generated certificate authority (ECDSA P-256) that can issue certificates.
pub(crate) struct Authority {
    pub(crate) cert: Cert,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl Authority {
    /// A new self-signed CA named `common_name`.
    pub(crate) fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gcp-emulator");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 365);
        let certificate = params.self_signed(&key)?;
        Ok(Self {
            cert: Cert {
                pem: certificate.pem(),
                der: certificate.der().to_vec(),
            },
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA issued by this one.
    #[cfg(test)]
    pub(crate) fn intermediate(&self, common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, 365);
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(Self {
            cert: Cert {
                pem: certificate.pem(),
                der: certificate.der().to_vec(),
            },
            issuer: Issuer::new(params, key),
        })
    }

    /// A client (workload) certificate: subject CN `common_name`, the URI SANs given.
    pub(crate) fn issue_client(
        &self,
        common_name: &str,
        uris: &[&str],
    ) -> Result<CertifiedKey, PkiError> {
        let mut sans = Vec::new();
        for uri in uris {
            sans.push(SanType::URI((*uri).try_into()?));
        }
        self.issue(common_name, sans, ExtendedKeyUsagePurpose::ClientAuth, 30)
    }

    /// A server certificate for these DNS names and IP addresses.
    pub(crate) fn issue_server(&self, names: &[&str]) -> Result<CertifiedKey, PkiError> {
        let mut sans = Vec::new();
        for name in names {
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        self.issue(
            names.first().copied().unwrap_or("localhost"),
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            365,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        days: i64,
    ) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert: Cert {
                pem: certificate.pem(),
                der: certificate.der().to_vec(),
            },
            key_pem: Zeroizing::new(key.serialize_pem()),
            key_der: Zeroizing::new(key.serialize_der()),
        })
    }
}

/// The crypto provider of every TLS and certificate check of the emulator: aws-lc-rs.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Verifies that `leaf` (with the `chain` the client sent after it) chains to one of
/// `anchors` through the client's and the trust store's `intermediates`, at `now`, for client
/// authentication. Returns why not.
pub(crate) fn verify_chain(
    anchors: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    leaf: &[u8],
    chain: &[Vec<u8>],
    now: std::time::SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots
            .add(CertificateDer::from(anchor.clone()))
            .map_err(|e| format!("a trust anchor of the provider is invalid: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crypto_provider(),
    )
    .build()
    .map_err(|e| format!("the provider's trust store is unusable: {e}"))?;
    let intermediates: Vec<CertificateDer<'_>> = chain
        .iter()
        .chain(intermediates)
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf),
            &intermediates,
            UnixTime::since_unix_epoch(
                now.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What attribute conditions and the subject mapping see of an X.509 subject token: the leaf
/// certificate as
/// `{"subject": {"dn": {"cn", "o", "ou"}, "dn_string"}, "issuer": {"dn": {...}, "dn_string"},
///   "san": {"uri", "dns", "uris", "dnss"}, "serial_number", "fingerprint_sha256"}`, where
/// `san.uri` and `san.dns` are the first URI and DNS SANs and `uris`/`dnss` all of them.
pub(crate) fn assertion(leaf: &[u8]) -> Result<Value, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let name = |name: &x509_parser::x509::X509Name<'_>| {
        let first =
            |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
                iter.next()
                    .and_then(|attr| attr.as_str().ok())
                    .map(str::to_owned)
            };
        json!({
            "dn": {
                "cn": first(&mut name.iter_common_name()),
                "o": first(&mut name.iter_organization()),
                "ou": first(&mut name.iter_organizational_unit()),
            },
            "dn_string": name.to_string(),
        })
    };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            match general {
                x509_parser::extensions::GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                x509_parser::extensions::GeneralName::DNSName(name) => {
                    dns.push((*name).to_owned());
                }
                _ => {}
            }
        }
    }
    Ok(json!({
        "subject": name(cert.subject()),
        "issuer": name(cert.issuer()),
        "san": {
            "uri": uris.first(),
            "dns": dns.first(),
            "uris": uris,
            "dnss": dns,
        },
        "serial_number": cert.raw_serial_as_string(),
        "fingerprint_sha256": sha256_hex(leaf),
    }))
}

/// The value of a dotted `path` (`subject.dn.cn`) in an assertion, if it is a string.
pub(crate) fn assertion_str<'a>(assertion: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(assertion, |value, key| value.get(key))?
        .as_str()
}

/// Decodes an X.509 subject token: a JSON array of base64 (standard alphabet) DER
/// certificates, leaf first.
pub(crate) fn parse_subject_token(token: &str) -> Result<Vec<Vec<u8>>, String> {
    let list: Vec<String> = serde_json::from_str(token.trim())
        .map_err(|_| "it is not a JSON array of base64-encoded DER certificates".to_owned())?;
    if list.is_empty() {
        return Err("the certificate chain is empty".to_owned());
    }
    if list.len() > MAX_CHAIN_LEN {
        return Err(format!(
            "the certificate chain has more than {MAX_CHAIN_LEN} certificates"
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| format!("certificate {i} is not base64"))
        })
        .collect()
}

/// The longest chain a subject token may carry (leaf included).
const MAX_CHAIN_LEN: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_chain_verifies_and_a_foreign_one_does_not() {
        let root = Authority::generate("root").expect("root");
        let intermediate = root.intermediate("intermediate").expect("intermediate");
        let leaf = intermediate
            .issue_client("workload", &["spiffe://example.org/w"])
            .expect("leaf");
        let now = std::time::SystemTime::now();
        let anchors = vec![root.cert.der.clone()];
        // the intermediate from the client's chain, or from the trust store
        verify_chain(
            &anchors,
            &[],
            &leaf.cert.der,
            std::slice::from_ref(&intermediate.cert.der),
            now,
        )
        .expect("client chain");
        verify_chain(
            &anchors,
            std::slice::from_ref(&intermediate.cert.der),
            &leaf.cert.der,
            &[],
            now,
        )
        .expect("trust store intermediate");
        assert!(verify_chain(&anchors, &[], &leaf.cert.der, &[], now).is_err());
        let other = Authority::generate("other").expect("other");
        assert!(
            verify_chain(
                std::slice::from_ref(&other.cert.der),
                &[],
                &leaf.cert.der,
                std::slice::from_ref(&intermediate.cert.der),
                now
            )
            .is_err()
        );
        let later = now + std::time::Duration::from_secs(40 * 86_400);
        assert!(
            verify_chain(
                &anchors,
                std::slice::from_ref(&intermediate.cert.der),
                &leaf.cert.der,
                &[],
                later
            )
            .is_err(),
            "expired"
        );
        // a server certificate is not a client certificate
        let server = root
            .issue_server(&["127.0.0.1", "localhost"])
            .expect("server");
        assert!(verify_chain(&anchors, &[], &server.cert.der, &[], now).is_err());
    }

    #[test]
    fn the_assertion_exposes_subject_and_sans() {
        let root = Authority::generate("root ca").expect("root");
        let leaf = root
            .issue_client(
                "dev-workload",
                &["spiffe://example.org/a", "spiffe://example.org/b"],
            )
            .expect("leaf");
        let assertion = assertion(&leaf.cert.der).expect("assertion");
        assert_eq!(
            assertion_str(&assertion, "subject.dn.cn"),
            Some("dev-workload")
        );
        assert_eq!(assertion_str(&assertion, "issuer.dn.cn"), Some("root ca"));
        assert_eq!(
            assertion_str(&assertion, "san.uri"),
            Some("spiffe://example.org/a")
        );
        assert_eq!(assertion["san"]["uris"].as_array().map(Vec::len), Some(2));
        assert_eq!(assertion_str(&assertion, "san.dns"), None);
        assert_eq!(
            assertion_str(&assertion, "fingerprint_sha256").map(str::len),
            Some(64)
        );
    }

    #[test]
    fn subject_tokens_are_json_arrays_of_base64_der() {
        let der = parse_subject_token(r#"["AQID", "BAU="]"#).expect("parses");
        assert_eq!(der, vec![vec![1, 2, 3], vec![4, 5]]);
        for bad in ["", "[]", "\"AQID\"", "[\"***\"]", "{}"] {
            assert!(parse_subject_token(bad).is_err(), "{bad}");
        }
        let long = serde_json::to_string(&vec!["AQID"; 11]).expect("json");
        assert!(parse_subject_token(&long).is_err());
    }
}
