//! The client-certificate verifier: a chain must lead to a trust bundle that is bound to the
//! identity its leaf claims.
//!
//! As in go-spiffe, the identity picks the bundles: a leaf with a SPIFFE ID is verified only
//! against the bundles bound to its trust domain, a DNS-SAN identity only against bundles that
//! may vouch for DNS names, a CN identity only against bundles that may vouch for common names.
//! So each handshake makes one chain verification, and a CA trusted for one purpose cannot mint
//! identities for another. A leaf without any usable identity is verified against every bundle
//! and then answered `UNAUTHENTICATED` by the RPC layer, which says why.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use broker_authz::{CallerIdentity, CallerName};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::TlsError;
use super::bundle::TrustBundle;

/// Numbers every trust store built in this process, so connections can tell that the bundles
/// changed since their chain was verified.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Why a chain was refused beyond what WebPKI checks: no bundle may vouch for its identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotBound(String);

/// The trust bundles in force, as one rustls client verifier.
pub struct TrustStore {
    generation: u64,
    bundles: Vec<(String, super::bundle::Vouches)>,
    by_trust_domain: HashMap<String, Arc<dyn ClientCertVerifier>>,
    dns_names: Option<Arc<dyn ClientCertVerifier>>,
    common_names: Option<Arc<dyn ClientCertVerifier>>,
    any: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("generation", &self.generation)
            .field("bundles", &self.bundles)
            .finish_non_exhaustive()
    }
}

/// A WebPKI verifier over the roots of `bundles`.
fn webpki(
    bundles: &[&TrustBundle],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for bundle in bundles {
        for root in &bundle.roots {
            roots.add(root.clone()).map_err(|e| {
                TlsError::Verifier(format!(
                    "trust bundle {}: a certificate is not a usable CA: {e}",
                    bundle.name
                ))
            })?;
        }
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

impl TrustStore {
    /// Builds the verifier for `bundles` (at least one).
    pub fn new(bundles: &[TrustBundle], provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let all: Vec<&TrustBundle> = bundles.iter().collect();
        let any = webpki(&all, provider)?;
        let mut domains: HashMap<&str, Vec<&TrustBundle>> = HashMap::new();
        for bundle in bundles {
            for domain in &bundle.vouches.spiffe_trust_domains {
                domains.entry(domain).or_default().push(bundle);
            }
        }
        let by_trust_domain = domains
            .into_iter()
            .map(|(domain, bundles)| Ok((domain.to_owned(), webpki(&bundles, provider)?)))
            .collect::<Result<HashMap<_, _>, TlsError>>()?;
        let subset = |keep: fn(&TrustBundle) -> bool| -> Result<_, TlsError> {
            let chosen: Vec<&TrustBundle> = bundles.iter().filter(|b| keep(b)).collect();
            if chosen.is_empty() {
                Ok(None)
            } else {
                webpki(&chosen, provider).map(Some)
            }
        };
        Ok(Self {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            bundles: bundles
                .iter()
                .map(|b| (b.name.clone(), b.vouches.clone()))
                .collect(),
            by_trust_domain,
            dns_names: subset(|b| b.vouches.dns_names)?,
            common_names: subset(|b| b.vouches.common_names)?,
            any,
        })
    }

    /// Distinguishes this store from every other built in the process.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The verifier for the identity `end_entity` claims, or why no bundle may vouch for it.
    fn verifier_for(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> Result<&Arc<dyn ClientCertVerifier>, NotBound> {
        let Ok(identity) = CallerIdentity::from_certificate_der(end_entity) else {
            return Ok(&self.any);
        };
        match identity.name() {
            CallerName::Spiffe(id) => self.by_trust_domain.get(id.trust_domain()).ok_or_else(|| {
                NotBound(format!(
                    "the client certificate's SPIFFE ID {id} is in trust domain {}, which no trust bundle is bound to",
                    id.trust_domain()
                ))
            }),
            CallerName::Dns(names) => self.dns_names.as_ref().ok_or_else(|| {
                NotBound(format!(
                    "the client certificate is identified by DNS name {}, and no trust bundle may vouch for DNS names",
                    names.first().map_or("", String::as_str)
                ))
            }),
            CallerName::CommonName(cn) => self.common_names.as_ref().ok_or_else(|| {
                NotBound(format!(
                    "the client certificate is identified by its common name {cn:?}, and no trust bundle may vouch for common names"
                ))
            }),
            CallerName::None => Ok(&self.any),
        }
    }

    /// Verifies a client chain (leaf first) at `now`: valid, and anchored in a bundle bound to
    /// the leaf's identity. Used for handshakes, for resumed sessions and for connections that
    /// outlive a change of bundles.
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }
}

impl ClientCertVerifier for TrustStore {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.any.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.verifier_for(end_entity).map_err(|refusal| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                refusal,
            ))))
        })?;
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::pki::{CertificateAuthority, LeafSpec};
    use crate::tls::bundle::Vouches;
    use rustls_pki_types::pem::PemObject;

    fn bundle(name: &str, ca: &CertificateAuthority, vouches: Vouches) -> TrustBundle {
        TrustBundle {
            name: name.to_owned(),
            roots: vec![
                CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).expect("pem"),
            ],
            vouches,
        }
    }

    fn chain(ca: &CertificateAuthority, spec: &LeafSpec) -> Vec<CertificateDer<'static>> {
        let issued = ca.issue(spec).expect("leaf");
        vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem")]
    }

    fn spiffe_only(domain: &str) -> Vouches {
        Vouches {
            spiffe_trust_domains: vec![domain.to_owned()],
            ..Vouches::default()
        }
    }

    #[test]
    fn each_bundle_vouches_only_for_what_it_is_bound_to() {
        let prod = CertificateAuthority::new("prod").expect("ca");
        let partner = CertificateAuthority::new("partner").expect("ca");
        let legacy = CertificateAuthority::new("legacy").expect("ca");
        let store = TrustStore::new(
            &[
                bundle("prod", &prod, spiffe_only("prod.example.org")),
                bundle("partner", &partner, spiffe_only("partner.example.net")),
                bundle(
                    "legacy",
                    &legacy,
                    Vouches {
                        dns_names: true,
                        ..Vouches::default()
                    },
                ),
            ],
            &super::super::crypto_provider(),
        )
        .expect("store");
        let now = UnixTime::since_unix_epoch(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("now"),
        );
        let spiffe = |id: &str| LeafSpec::spiffe_client(id);
        let dns = LeafSpec {
            dns_names: vec!["batch.example.org".into()],
            client: true,
            ..LeafSpec::default()
        };
        let cn = LeafSpec {
            common_name: Some("batch".into()),
            client: true,
            ..LeafSpec::default()
        };
        let accepted = [
            chain(&prod, &spiffe("spiffe://prod.example.org/app")),
            chain(&partner, &spiffe("spiffe://partner.example.net/x")),
            chain(&legacy, &dns),
        ];
        for chain in &accepted {
            store.verify_chain(chain, now).expect("accepted");
        }
        let refused = [
            // The partner's CA minting our trust domain, and ours minting theirs.
            (
                chain(&partner, &spiffe("spiffe://prod.example.org/app")),
                "UnknownIssuer",
            ),
            (
                chain(&prod, &spiffe("spiffe://partner.example.net/x")),
                "UnknownIssuer",
            ),
            // A trust domain no bundle is bound to.
            (
                chain(&prod, &spiffe("spiffe://other.org/app")),
                "no trust bundle is bound to",
            ),
            // A SPIFFE-only bundle's CA vouching for a DNS name or a CN.
            (chain(&prod, &dns), "UnknownIssuer"),
            (
                chain(&prod, &cn),
                "no trust bundle may vouch for common names",
            ),
            (
                chain(&legacy, &cn),
                "no trust bundle may vouch for common names",
            ),
        ];
        for (chain, expected) in &refused {
            let error = store.verify_chain(chain, now).expect_err("refused");
            assert!(format!("{error:?} {error}").contains(expected), "{error:?}");
        }
        // A certificate without identity: any trusted chain passes here; the RPC layer refuses it.
        let nameless = LeafSpec {
            client: true,
            ..LeafSpec::default()
        };
        store
            .verify_chain(&chain(&prod, &nameless), now)
            .expect("chain trusted");
        let rogue = CertificateAuthority::new("rogue").expect("ca");
        assert!(store.verify_chain(&chain(&rogue, &nameless), now).is_err());
    }
}
