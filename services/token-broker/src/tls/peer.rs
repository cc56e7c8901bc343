//! The peer of a verified connection, and the checks every RPC makes of it: an identity ends
//! when its certificate does, and a chain stays trusted only while the current trust bundles
//! still anchor it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use broker_authz::{CallerIdentity, IdentityError};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsConfig;

/// What the broker knows about a connection; tonic hands it to every request in its
/// extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The verified client certificate and the identity it carries.
    pub peer: Arc<Peer>,
}

/// Why a connection's peer cannot call now. Each is `UNAUTHENTICATED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The certificate carries no identity a policy could name.
    #[error("{0}")]
    NoIdentity(#[from] IdentityError),
    /// The certificate (or another certificate of its chain) expired while the connection
    /// stayed open.
    #[error("the client certificate expired at {}; reconnect with a current one", humantime::format_rfc3339_seconds(*.not_after))]
    Expired {
        /// When the chain stopped being valid.
        not_after: SystemTime,
    },
    /// The trust bundles changed since the connection was made, and they no longer vouch for
    /// its chain (a CA was removed, or its binding narrowed).
    #[error("the client certificate is no longer trusted: {reason}")]
    NoLongerTrusted {
        /// Why (never a secret: a certificate holds none).
        reason: String,
    },
}

/// The verified client certificate chain of a connection.
pub struct Peer {
    identity: Result<Arc<CallerIdentity>, IdentityError>,
    chain: Vec<CertificateDer<'static>>,
    valid_until: SystemTime,
    trust: watch::Receiver<Arc<TlsConfig>>,
    /// The trust generation the chain was last found good against.
    trusted_in: AtomicU64,
    /// The trust generation the chain was last refused by, and why (so a refused peer costs
    /// no verification per RPC).
    refused: Mutex<Option<(u64, String)>>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("identity", &self.identity)
            .field("valid_until", &self.valid_until)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// The peer of a connection whose `chain` (leaf first, non-empty) the trust store of
    /// generation `verified_in` has just verified.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        trust: watch::Receiver<Arc<TlsConfig>>,
        verified_in: u64,
    ) -> Self {
        let identity = chain
            .first()
            .map_or(Err(IdentityError::NoName), |leaf| {
                CallerIdentity::from_certificate_der(leaf)
            })
            .map(Arc::new);
        let valid_until = chain
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok())
            .map(|(_, cert)| unix_time(cert.validity().not_after.timestamp()))
            .min()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            identity,
            chain,
            valid_until,
            trust,
            trusted_in: AtomicU64::new(verified_in),
            refused: Mutex::new(None),
        }
    }

    /// The identity the certificate carries, or why it carries none.
    pub fn identity(&self) -> Result<&Arc<CallerIdentity>, &IdentityError> {
        self.identity.as_ref()
    }

    /// The caller, if it may call at `now`: its certificate names it, has not expired, and is
    /// still anchored by the current trust bundles. The chain is verified again only when the
    /// bundles changed since it was last checked, so the usual cost is one clock comparison and
    /// one atomic load.
    pub fn caller(&self, now: SystemTime) -> Result<Arc<CallerIdentity>, PeerError> {
        let identity = self.identity.as_ref().map_err(|e| e.clone())?;
        if now >= self.valid_until {
            return Err(PeerError::Expired {
                not_after: self.valid_until,
            });
        }
        let config = self.trust.borrow();
        let generation = config.trust.generation();
        if self.trusted_in.load(Ordering::Acquire) != generation {
            let trust = Arc::clone(&config.trust);
            drop(config);
            let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((refused_in, reason)) = refused.as_ref()
                && *refused_in == generation
            {
                return Err(PeerError::NoLongerTrusted {
                    reason: reason.clone(),
                });
            }
            if let Err(error) = trust.verify_chain(&self.chain, unix(now)) {
                tracing::warn!(caller = %identity, %error, "client certificate no longer trusted after a trust bundle change");
                let reason = error.to_string();
                *refused = Some((generation, reason.clone()));
                return Err(PeerError::NoLongerTrusted { reason });
            }
            self.trusted_in.store(generation, Ordering::Release);
        }
        Ok(Arc::clone(identity))
    }
}

fn unix(time: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        time.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

/// Seconds since the Unix epoch as a `SystemTime`; times before the epoch become the epoch.
fn unix_time(seconds: i64) -> SystemTime {
    u64::try_from(seconds)
        .ok()
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
