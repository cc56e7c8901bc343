//! RS256 compact JWS with a key parsed once.
//!
//! `jsonwebtoken` re-parses the RSA key from DER (and rebuilds its blinding) on every
//! signature, which made signing 2.5 times slower than it needs to be on the cold path
//! (`tools/broker-load`); the key is held here as an aws-lc-rs `RsaKeyPair`, whose private
//! parts aws-lc clears when it is freed.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use zeroize::Zeroizing;

/// An RSA private key that signs RS256 JWTs.
pub(crate) struct Rs256Signer {
    key: RsaKeyPair,
    /// The encoded header `{"alg":"RS256","typ":"JWT"[,"kid":…]}`, the same for every JWT.
    header: String,
}

impl Rs256Signer {
    /// Parses a PEM RSA private key (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1
    /// `BEGIN RSA PRIVATE KEY`). The error never quotes the key.
    pub(crate) fn from_pem(pem: &str, kid: Option<&str>) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            "not a PEM-encoded RSA private key (PKCS#8 \"BEGIN PRIVATE KEY\" or PKCS#1 \"BEGIN RSA PRIVATE KEY\")"
                .to_owned()
        })?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(pkcs1) => RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()),
            _ => return Err("not an RSA key".to_owned()),
        }
        .map_err(|e| format!("the RSA key was rejected ({e})"))?;
        let header = match kid {
            Some(kid) => serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
            None => serde_json::json!({"alg": "RS256", "typ": "JWT"}),
        };
        Ok(Self {
            key,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
        })
    }

    /// `header.claims.signature`, base64url without padding.
    pub(crate) fn sign(&self, claims: &impl Serialize) -> Result<Zeroizing<String>, String> {
        let claims =
            serde_json::to_vec(claims).map_err(|e| format!("cannot encode the claims: {e}"))?;
        let mut jwt = Zeroizing::new(String::with_capacity(
            self.header.len() + claims.len() * 4 / 3 + 350,
        ));
        jwt.push_str(&self.header);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_owned())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }
}
