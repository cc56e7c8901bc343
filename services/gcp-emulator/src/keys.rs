//! RSA keys, RS256 JWS signing and verification, and the public forms Google publishes
//! (JWK, self-signed X.509 PEM).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use zeroize::Zeroizing;

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed.
    #[error("RSA key generation failed")]
    Generate,
    /// The PEM or DER is not an RSA private key.
    #[error("not an RSA private key: {0}")]
    Parse(String),
    /// Signing failed.
    #[error("RSA signing failed")]
    Sign,
    /// The self-signed certificate could not be made.
    #[error("certificate generation failed: {0}")]
    Certificate(String),
}

/// An RSA-2048 signing key with its key id and the public forms derived from it.
pub struct SigningKey {
    kid: String,
    pair: RsaKeyPair,
    pkcs8_pem: Zeroizing<String>,
    certificate_pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key with a random 40-hex-digit key id (the shape of Google's).
    pub fn generate(common_name: &str) -> Result<Self, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        let der = pair.as_der().map_err(|_| KeyError::Generate)?;
        let pem = Zeroizing::new(pem_encode("PRIVATE KEY", der.as_ref()));
        Self::from_parts(crate::random_hex(20), pair, pem, common_name)
    }

    /// Loads a PKCS#8 PEM private key (as in a Google key file) under a known key id.
    pub fn from_pkcs8_pem(kid: &str, pem: &str, common_name: &str) -> Result<Self, KeyError> {
        let der = Zeroizing::new(pem_decode(pem).ok_or_else(|| KeyError::Parse("bad PEM".into()))?);
        let pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| KeyError::Parse(e.to_string()))?;
        Self::from_parts(
            kid.to_owned(),
            pair,
            Zeroizing::new(pem.to_owned()),
            common_name,
        )
    }

    fn from_parts(
        kid: String,
        pair: RsaKeyPair,
        pkcs8_pem: Zeroizing<String>,
        common_name: &str,
    ) -> Result<Self, KeyError> {
        let certificate_pem = self_signed_certificate(&pkcs8_pem, common_name)?;
        Ok(Self {
            kid,
            pair,
            pkcs8_pem,
            certificate_pem,
        })
    }

    /// The same key under another key id.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// The key id (`kid`, `private_key_id`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM (for key files).
    pub fn private_key_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// A self-signed certificate over the public key, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// RSA-SHA256 PKCS#1 v1.5 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut signature)
            .map_err(|_| KeyError::Sign)?;
        Ok(signature)
    }

    /// A compact RS256 JWS of `claims` with header `{"alg":"RS256","kid":…,"typ":"JWT"}`.
    pub fn sign_jwt(&self, claims: &serde_json::Value) -> Result<String, KeyError> {
        let header = serde_json::json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        let public = self.pair.public_key();
        PublicKey {
            n: public.modulus().big_endian_without_leading_zero().to_vec(),
            e: public.exponent().big_endian_without_leading_zero().to_vec(),
        }
    }

    /// The public key as a JWK with this key's id.
    pub fn jwk(&self) -> Jwk {
        self.public_key().jwk(&self.kid)
    }
}

/// An RSA public key as modulus and exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl PublicKey {
    /// From base64url modulus and exponent (a JWK's `n` and `e`).
    pub fn from_jwk_components(n: &str, e: &str) -> Option<Self> {
        Some(Self {
            n: URL_SAFE_NO_PAD.decode(n).ok()?,
            e: URL_SAFE_NO_PAD.decode(e).ok()?,
        })
    }

    /// Verifies an RSA-SHA256 PKCS#1 v1.5 signature.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
        .is_ok()
    }

    /// The RFC 7638 JWK thumbprint: base64url SHA-256 of `{"e":…,"kty":"RSA","n":…}`. A key
    /// id that only depends on the key.
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(&self.e),
            URL_SAFE_NO_PAD.encode(&self.n)
        );
        URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
        )
    }

    /// This key as a JWK.
    pub fn jwk(&self, kid: &str) -> Jwk {
        Jwk {
            kty: "RSA",
            alg: "RS256",
            usage: "sig",
            kid: kid.to_owned(),
            n: URL_SAFE_NO_PAD.encode(&self.n),
            e: URL_SAFE_NO_PAD.encode(&self.e),
        }
    }
}

/// A public RSA JWK as Google publishes them.
#[derive(Debug, Clone, Serialize)]
pub struct Jwk {
    kty: &'static str,
    alg: &'static str,
    #[serde(rename = "use")]
    usage: &'static str,
    kid: String,
    n: String,
    e: String,
}

/// A JWS split into its parts, not yet verified.
#[derive(Debug)]
pub struct UnverifiedJwt {
    /// The decoded header.
    pub header: serde_json::Value,
    /// The decoded claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl UnverifiedJwt {
    /// Splits and decodes a compact JWS; `None` when it is not one.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header_json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        let claims_json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        Some(Self {
            header: header_json,
            claims: claims_json.as_object()?.clone(),
            signing_input: format!("{header}.{claims}"),
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    /// The `alg` header.
    pub fn alg(&self) -> Option<&str> {
        self.header.get("alg").and_then(|v| v.as_str())
    }

    /// The `kid` header.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(|v| v.as_str())
    }

    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(|v| v.as_str())
    }

    /// A NumericDate claim (`iat`, `exp`): Unix seconds as a JSON integer, at least 0 and
    /// within `i64`. `None` when the claim is absent, or is a float (`1.5`, `1e9`), a string,
    /// negative, or beyond `i64::MAX`: such a claim is never read leniently.
    pub fn claim_numeric_date(&self, name: &str) -> Option<i64> {
        self.claims
            .get(name)?
            .as_i64()
            .filter(|seconds| *seconds >= 0)
    }

    /// Whether the RS256 signature verifies with `key`.
    pub fn verify(&self, key: &PublicKey) -> bool {
        self.alg() == Some("RS256") && key.verify(self.signing_input.as_bytes(), &self.signature)
    }
}

/// PEM-encodes DER with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The DER inside the first PEM block.
pub fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body).ok()
}

/// The DER of every PEM block with this label (`CERTIFICATE`, ...), in order; blocks that do
/// not decode are skipped.
pub fn pem_decode_all(pem: &str, label: &str) -> Vec<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == begin {
            body = Some(String::new());
        } else if line == end {
            if let Some(text) = body.take()
                && let Ok(der) = STANDARD.decode(text)
            {
                blocks.push(der);
            }
        } else if let Some(text) = body.as_mut() {
            text.push_str(line);
        }
    }
    blocks
}

fn self_signed_certificate(pkcs8_pem: &str, common_name: &str) -> Result<String, KeyError> {
    let cert_err = |e: rcgen::Error| KeyError::Certificate(e.to_string());
    let key = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(pkcs8_pem, &rcgen::PKCS_RSA_SHA256)
        .map_err(cert_err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(30);
    let certificate = params.self_signed(&key).map_err(cert_err)?;
    Ok(certificate.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_jwt_verifies_and_tampering_is_detected() {
        let key = SigningKey::generate("test").expect("key");
        let token = key
            .sign_jwt(&serde_json::json!({"iss": "a", "n": 1}))
            .expect("sign");
        let parsed = UnverifiedJwt::parse(&token).expect("parse");
        assert_eq!(parsed.kid(), Some(key.kid()));
        assert!(parsed.verify(&key.public_key()));

        let other = SigningKey::generate("other").expect("key");
        assert!(!parsed.verify(&other.public_key()));

        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"iss":"b","n":1}"#);
        parts[1] = &forged;
        let tampered = UnverifiedJwt::parse(&parts.join(".")).expect("parse");
        assert!(!tampered.verify(&key.public_key()));
    }

    #[test]
    fn pem_round_trips_and_reloads_the_same_key() {
        let key = SigningKey::generate("test").expect("key");
        let again =
            SigningKey::from_pkcs8_pem(key.kid(), key.private_key_pem(), "test").expect("load");
        assert_eq!(key.public_key(), again.public_key());
        assert!(
            key.certificate_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }

    #[test]
    fn numeric_dates_are_non_negative_json_integers_only() {
        let jwt = |claims: &str| UnverifiedJwt {
            header: serde_json::json!({"alg": "RS256"}),
            claims: serde_json::from_str(claims).expect("claims"),
            signing_input: String::new(),
            signature: Vec::new(),
        };
        let read = |claims: &str| jwt(claims).claim_numeric_date("exp");
        assert_eq!(read(r#"{"exp": 1767225600}"#), Some(1_767_225_600));
        assert_eq!(read(r#"{"exp": 0}"#), Some(0));
        assert_eq!(read(r#"{"exp": 9223372036854775807}"#), Some(i64::MAX));
        for hostile in [
            r#"{}"#,
            r#"{"exp": null}"#,
            r#"{"exp": 1767225600.0}"#,
            r#"{"exp": 1767225600.5}"#,
            r#"{"exp": 1.7e9}"#,
            r#"{"exp": "1767225600"}"#,
            r#"{"exp": -1}"#,
            r#"{"exp": -9223372036854775808}"#,
            r#"{"exp": 9223372036854775808}"#,
            r#"{"exp": 18446744073709551615}"#,
            r#"{"exp": 18446744073709551616}"#,
            r#"{"exp": true}"#,
            r#"{"exp": [1]}"#,
        ] {
            assert_eq!(read(hostile), None, "{hostile}");
        }
    }

    #[test]
    fn pem_bundles_decode_block_by_block() {
        let a = SigningKey::generate("a").expect("key");
        let b = SigningKey::generate("b").expect("key");
        let bundle = format!(
            "junk\n{}\n{}{}",
            a.certificate_pem(),
            a.private_key_pem(),
            b.certificate_pem()
        );
        let certs = pem_decode_all(&bundle, "CERTIFICATE");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], pem_decode(a.certificate_pem()).expect("der"));
        assert_eq!(certs[1], pem_decode(b.certificate_pem()).expect("der"));
        assert_eq!(pem_decode_all(&bundle, "PRIVATE KEY").len(), 1);
        assert!(pem_decode_all("nothing", "CERTIFICATE").is_empty());
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 section 3.1's example key and thumbprint.
        let key = PublicKey::from_jwk_components(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "AQAB",
        )
        .expect("key");
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = SigningKey::generate("test").expect("key");
        let debug = format!("{key:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}
