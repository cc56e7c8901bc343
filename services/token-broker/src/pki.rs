//! A small certificate authority for dev mode and tests: a CA, server certificates and client
//! certificates with SPIFFE IDs (ECDSA P-256, rcgen on aws-lc-rs).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A certificate authority that issues leaf certificates.
#[derive(Debug)]
pub struct CertificateAuthority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What a leaf certificate says.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    /// Subject common name.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// URI SANs (a SPIFFE ID such as `spiffe://example.org/ns/prod/sa/app`).
    pub uris: Vec<String>,
    /// Usable as a TLS server certificate.
    pub server: bool,
    /// Usable as a TLS client certificate.
    pub client: bool,
    /// Validity; default: from an hour ago for 30 days.
    pub validity: Option<(SystemTime, SystemTime)>,
}

impl LeafSpec {
    /// A client certificate for a SPIFFE ID.
    pub fn spiffe_client(spiffe_id: &str) -> Self {
        Self {
            uris: vec![spiffe_id.to_owned()],
            client: true,
            ..Self::default()
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn localhost_server() -> Self {
        Self {
            common_name: Some("localhost".to_owned()),
            dns_names: vec!["localhost".to_owned()],
            ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            server: true,
            ..Self::default()
        }
    }
}

/// A certificate and its private key, PEM. The key is zeroized when dropped.
#[derive(Debug)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: zeroize::Zeroizing<String>,
}

impl CertificateAuthority {
    /// A new self-signed CA valid for a year.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 86_400)).into();
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM (the trust bundle for peers).
    pub fn certificate_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a leaf certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = spec.common_name.as_deref().map(name).unwrap_or_default();
        for dns in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.clone().try_into()?));
        }
        for ip in &spec.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.clone().try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let now = SystemTime::now();
        let (not_before, not_after) = spec.validity.unwrap_or((
            now - Duration::from_secs(3600),
            now + Duration::from_secs(30 * 86_400),
        ));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: certificate.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}
