//! The mTLS side of the listener: the rustls server configuration and the trust bundles it
//! verifies clients against, rebuilt whenever their files change, and what a verified
//! connection knows about its peer.
//!
//! The acceptor ([`crate::transport`]) reads the current [`TlsConfig`] from a watch channel
//! for every new connection, so a rotated server certificate or trust bundle applies to new
//! connections without a restart; a file that fails to load is logged and the previous
//! configuration stays. Open connections re-verify their peer's chain against the new bundles
//! at their next RPC ([`Peer::caller`]).

mod bundle;
mod peer;
mod verifier;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

pub use bundle::{TrustBundle, Vouches};
pub use peer::{ConnectionInfo, Peer, PeerError};
pub use verifier::{NotBound, TrustStore};

use crate::settings::TlsSettings;

/// Why a TLS configuration could not be built. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file holds no usable PEM (or SPIFFE bundle) of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client trust bundles could not make a verifier.
    #[error("invalid client trust bundle: {0}")]
    Verifier(String),
}

/// The crypto provider of the whole tree.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration and the trust bundles its client verifier uses.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The rustls configuration of new connections.
    pub server: Arc<ServerConfig>,
    /// The trust bundles, for re-verifying chains of resumed sessions and open connections.
    pub trust: Arc<TrustStore>,
}

/// Builds the configuration from `[tls]`: TLS 1.3 and 1.2, client certificates required and
/// verified against the trust bundles, each bound to what it may vouch for, ALPN `h2`.
pub fn load(settings: &TlsSettings) -> Result<TlsConfig, TlsError> {
    let chain = read_certificates(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| TlsError::Pem {
        path: settings.key.clone(),
        what: format!("no usable private key: {}", pem_error(e)),
    })?;
    let bundles = settings
        .trust_bundles
        .iter()
        .map(TrustBundle::load)
        .collect::<Result<Vec<_>, _>>()?;
    let provider = crypto_provider();
    let trust = Arc::new(TrustStore::new(&bundles, &provider)?);
    for bundle in &bundles {
        tracing::info!(
            bundle = %bundle.name,
            authorities = bundle.roots.len(),
            vouches_for = %bundle.vouches,
            "client trust bundle loaded"
        );
    }
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(
            Arc::clone(&trust) as Arc<dyn rustls::server::danger::ClientCertVerifier>
        )
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConfig {
        server: Arc::new(server),
        trust,
    })
}

fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("invalid certificate PEM: {}", pem_error(e)),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found".to_owned(),
        });
    }
    Ok(certificates)
}

/// A PEM error's description; the `Io` variant is unwrapped so "not found" reads plainly.
fn pem_error(error: rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every file the configuration is made from, for change detection.
fn paths(settings: &TlsSettings) -> Vec<PathBuf> {
    [settings.cert.clone(), settings.key.clone()]
        .into_iter()
        .chain(settings.trust_bundles.iter().map(|b| b.file.clone()))
        .collect()
}

/// Loads the configuration and keeps it current (see [`crate::reload`]): rotated
/// certificates and trust bundles apply to new connections, and to open ones at their next
/// RPC; files that fail to load are logged and the previous configuration stays in force.
pub fn watch_files(
    settings: TlsSettings,
    interval: Duration,
) -> Result<(watch::Receiver<Arc<TlsConfig>>, tokio::task::JoinHandle<()>), TlsError> {
    crate::reload::watch_files("TLS configuration", paths(&settings), interval, move || {
        load(&settings)
    })
}
