//! Trust bundles for client certificates, each bound to what it may vouch for.
//!
//! A bundle is a file of CA certificates, PEM or a SPIFFE bundle (the JWK Set that SPIRE
//! publishes, whose `x509-svid` keys carry one CA certificate each in `x5c`). It may vouch for
//! SPIFFE IDs of the trust domains it is bound to, and, only when it says so, for DNS-SAN or
//! subject-CN identities. A CA trusted for one trust domain can then not mint identities of
//! another, nor DNS or CN identities.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use super::TlsError;
use crate::settings::TrustBundleSettings;

/// The largest bundle file read.
const MAX_BUNDLE_BYTES: u64 = 4 * 1024 * 1024;

/// Which identities a bundle may vouch for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vouches {
    /// SPIFFE trust domains whose IDs its CAs may sign.
    pub spiffe_trust_domains: Vec<String>,
    /// Whether it may vouch for identities named by DNS SANs.
    pub dns_names: bool,
    /// Whether it may vouch for identities named by the subject common name.
    pub common_names: bool,
}

impl fmt::Display for Vouches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .spiffe_trust_domains
            .iter()
            .map(|domain| format!("spiffe://{domain}"))
            .collect();
        if self.dns_names {
            parts.push("DNS names".to_owned());
        }
        if self.common_names {
            parts.push("common names".to_owned());
        }
        f.write_str(&parts.join(", "))
    }
}

/// A loaded trust bundle.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// Its name in logs and errors: the configured name, or the file name.
    pub name: String,
    /// Its CA certificates (trust anchors).
    pub roots: Vec<CertificateDer<'static>>,
    /// What it may vouch for.
    pub vouches: Vouches,
}

impl TrustBundle {
    /// Reads the bundle a `[[tls.trust_bundles]]` entry names.
    pub fn load(settings: &TrustBundleSettings) -> Result<Self, TlsError> {
        let roots = read_roots(&settings.file)?;
        let name = settings.name.clone().unwrap_or_else(|| {
            settings.file.file_name().map_or_else(
                || settings.file.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        });
        Ok(Self {
            name,
            roots,
            vouches: Vouches {
                spiffe_trust_domains: settings.spiffe_trust_domains.clone(),
                dns_names: settings.dns_names,
                common_names: settings.common_names,
            },
        })
    }
}

/// Reads CA certificates from a PEM file or a SPIFFE bundle (JSON), told apart by the first
/// character that is not white space.
fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let roots = if first == Some(&b'{') {
        spiffe_bundle_roots(&bytes).map_err(|what| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a usable SPIFFE bundle: {what}"),
        })?
    } else {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                what: format!("invalid certificate PEM: {e:?}"),
            })?
    };
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CA certificate found".to_owned(),
        });
    }
    Ok(roots)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: PathBuf::from(path),
        source,
    };
    let length = std::fs::metadata(path).map_err(read_error)?.len();
    if length > MAX_BUNDLE_BYTES {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: format!("{length} bytes; a trust bundle may have at most {MAX_BUNDLE_BYTES}"),
        });
    }
    std::fs::read(path).map_err(read_error)
}

/// The X.509 authorities of a SPIFFE bundle: every key whose `use` is `x509-svid` must carry
/// exactly one certificate in `x5c` (standard base64 DER). Keys of other uses (`jwt-svid`)
/// are skipped, as the SPIFFE bundle format requires of unknown uses.
fn spiffe_bundle_roots(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let document: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON (line {})", e.line()))?;
    let keys = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let mut roots = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        if key.get("use").and_then(Value::as_str) != Some("x509-svid") {
            continue;
        }
        let chain = key
            .get("x5c")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("keys[{index}]: an x509-svid key needs `x5c`"))?;
        let [certificate] = chain.as_slice() else {
            return Err(format!(
                "keys[{index}].x5c: an x509-svid key carries exactly one certificate, not {}",
                chain.len()
            ));
        };
        let der = certificate
            .as_str()
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .ok_or_else(|| format!("keys[{index}].x5c[0]: not base64 DER"))?;
        roots.push(CertificateDer::from(der));
    }
    if roots.is_empty() {
        return Err("no key with `use` x509-svid".to_owned());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn spiffe_bundles_yield_their_x509_authorities_only() {
        let a = CertificateAuthority::new("a").expect("ca");
        let b = CertificateAuthority::new("b").expect("ca");
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(der_of(pem));
        let bundle = serde_json::json!({
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 300,
            "keys": [
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "", "y": "", "x5c": [b64(&a.certificate_pem())]},
                {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "", "y": ""},
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "", "y": "", "x5c": [b64(&b.certificate_pem())]},
            ]
        });
        let roots = spiffe_bundle_roots(bundle.to_string().as_bytes()).expect("bundle");
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[0].as_ref(), der_of(&a.certificate_pem()).as_slice());
    }

    #[test]
    fn malformed_spiffe_bundles_say_what_is_wrong() {
        let cases = [
            ("{", "not JSON"),
            ("{}", "no `keys` array"),
            (
                r#"{"keys": [{"use": "jwt-svid"}]}"#,
                "no key with `use` x509-svid",
            ),
            (
                r#"{"keys": [{"use": "x509-svid"}]}"#,
                "keys[0]: an x509-svid key needs `x5c`",
            ),
            (
                r#"{"keys": [{"use": "x509-svid", "x5c": ["AA==", "AA=="]}]}"#,
                "exactly one certificate, not 2",
            ),
            (
                r#"{"keys": [{"use": "x509-svid", "x5c": ["%%%"]}]}"#,
                "not base64 DER",
            ),
        ];
        for (json, expected) in cases {
            let error = spiffe_bundle_roots(json.as_bytes()).expect_err(json);
            assert!(error.contains(expected), "{json}: {error}");
        }
    }
}
