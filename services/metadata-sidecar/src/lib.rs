//! The metadata sidecar: the GCE metadata-server protocol on loopback, answered from the token
//! broker over mTLS with the pod's own certificate, so that unmodified Google clients (Python,
//! Go, Java and Node libraries, gcloud) get broker-issued tokens with no code change.
//!
//! - **Protocol** ([`routes`](crate::routes) has the table): the `/` ping, listings and
//!   `recursive=true`, `default` and email aliases, `token?scopes=`,
//!   `identity?audience=&format=&licenses=`, the project, zone and universe scalars, Google's
//!   headers, content types and error pages. `Metadata-Flavor: Google` is required and
//!   `X-Forwarded-For` refused.
//! - **Tokens** come from the broker (`GetAccessToken`, `GenerateIdToken`) for the broker
//!   credential configured per account, through a small cache that coalesces concurrent
//!   requests into one broker call per key, refreshes ahead of expiry, never serves a token
//!   with 225 s or less left, reports `expires_in` as the real remaining lifetime, and answers
//!   503 with `Retry-After` at once when the broker is unreachable and nothing valid is cached.
//!   The broker's policy has the last word (its PERMISSION_DENIED is a 403).
//! - **Readiness** (`/readyz`): ready once a token for the default account is held; it is
//!   fetched at start and kept fresh in the background. `/livez` is always 200.
//! - **Rotation:** the certificate files are re-read every `broker.reload_interval`; new
//!   connections to the broker use what they hold.
//! - **Bounded:** request timeout, header read timeout, header and body size limits, a
//!   connection limit.
//!
//! Tokens never reach logs; their SHA-256 fingerprints may.
//!
//! Embedding (dev mode, tests):
//!
//! ```no_run
//! use metadata_sidecar::{
//!     BrokerSettings, ProjectSettings, ServiceAccountSettings, Settings, Sidecar,
//! };
//!
//! # async fn example(files: broker_client::TlsFiles) -> Result<(), metadata_sidecar::StartError> {
//! let settings = Settings::new(
//!     BrokerSettings::new("https://127.0.0.1:8443", files),
//!     ProjectSettings::new("dev-project", "123456789012"),
//!     vec![ServiceAccountSettings {
//!         credential: Some("dev".to_owned()),
//!         ..ServiceAccountSettings::new("broker@dev-project.iam.gserviceaccount.com")
//!     }],
//! );
//! let sidecar = Sidecar::start(settings).await?;
//! let _metadata_host = sidecar.addr(); // GCE_METADATA_HOST and GCE_METADATA_IP
//! sidecar.wait_ready(std::time::Duration::from_secs(10)).await;
//! sidecar.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod accounts;
mod broker;
mod cache;
mod config;
mod responses;
mod routes;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_core::SystemClock;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{
    BrokerSettings, CLOUD_PLATFORM, CacheSettings, LogFormat, LogSettings, ProjectSettings,
    STALE_THRESHOLD, ServerSettings, ServiceAccountSettings, Settings, SettingsError,
};

use crate::accounts::Accounts;
use crate::broker::Broker;
use crate::cache::{Cache, Fetch, Policy};
use crate::routes::{Handler, Listener};
use crate::server::Serving;

/// The first wait of the default account's warmer after a failure; it doubles up to
/// [`WARM_MAX_BACKOFF`].
const WARM_INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait of the warmer between failed attempts.
const WARM_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The shortest wait of the warmer after a success (tokens that barely outlive the serving
/// margin would otherwise be refetched in a loop).
const WARM_MIN_WAIT: Duration = Duration::from_secs(1);
/// The longest the warmer sleeps: it looks again at least this often, so that a token
/// withdrawn (or otherwise lost) meanwhile is fetched again soon and readiness recovers.
const WARM_MAX_WAIT: Duration = Duration::from_secs(30);
/// Broker calls in flight at most; more requests needing a fetch get a 503 at once.
const MAX_BROKER_FETCHES: usize = 64;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The broker address or the TLS files are unusable.
    #[error("broker: {0}")]
    Broker(#[from] broker_client::ClientError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Starts sidecars; see [`Sidecar::start`].
#[derive(Debug)]
pub struct Sidecar;

impl Sidecar {
    /// Validates `settings`, reads the TLS files, binds the listeners and starts serving; the
    /// default account's token is fetched in the background (see
    /// [`RunningSidecar::is_ready`]). Returns once the listeners accept connections.
    pub async fn start(settings: Settings) -> Result<RunningSidecar, StartError> {
        settings.validate()?;
        let accounts = Accounts::new(&settings)?;
        let (broker, watcher) = Broker::start(
            &settings.broker,
            accounts.clone(),
            settings.cache.refresh_ahead,
        )?;
        let cache = Cache::new(
            broker,
            Arc::new(SystemClock),
            Policy {
                refresh_ahead: settings.cache.refresh_ahead,
                min_remaining: settings.cache.min_remaining,
                failure_backoff: settings.cache.failure_backoff,
                max_entries: settings.cache.max_entries,
                max_fetches: MAX_BROKER_FETCHES,
            },
        );
        let handler = Arc::new(Handler::new(accounts, settings.project.clone(), cache));

        let server = &settings.server;
        let listener = bind(server.listen).await?;
        let addr = local_addr(&listener, server.listen)?;
        let health = match server.health_listen {
            Some(health_addr) => {
                let health = bind(health_addr).await?;
                Some((local_addr(&health, health_addr)?, health))
            }
            None => None,
        };

        let warmer = tokio::spawn(keep_warm(Arc::clone(&handler)));
        let mut listeners = vec![server::serve(
            listener,
            Listener::Metadata,
            Arc::clone(&handler),
            server,
        )];
        let health_addr = health.as_ref().map(|(addr, _)| *addr);
        if let Some((_, health)) = health {
            listeners.push(server::serve(
                health,
                Listener::Health,
                Arc::clone(&handler),
                server,
            ));
        }
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the metadata server listens beyond loopback: anyone who can reach it gets this pod's tokens");
        }
        tracing::info!(
            %addr,
            health = ?health_addr,
            broker = %settings.broker.address,
            "metadata sidecar serving"
        );
        Ok(RunningSidecar {
            addr,
            health_addr,
            handler,
            listeners,
            background: vec![watcher, warmer],
            grace: server.shutdown_grace,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

/// Fetches the default account's token at once and keeps it fresh: refreshed when due, and
/// retried with backoff while the broker fails; it looks at least every [`WARM_MAX_WAIT`].
async fn keep_warm<F: Fetch>(handler: Arc<Handler<F>>) {
    let cache = handler.cache();
    let key = handler.default_key();
    let mut backoff = WARM_INITIAL_BACKOFF;
    loop {
        let wait = match cache.refresh_in(key) {
            Some(wait) if !wait.is_zero() => wait,
            _ => match cache.refresh(key).await {
                Ok(_) => {
                    backoff = WARM_INITIAL_BACKOFF;
                    cache.refresh_in(key).unwrap_or_default().max(WARM_MIN_WAIT)
                }
                Err(unserved) => {
                    tracing::warn!(
                        reason = %unserved.reason,
                        retry_in = ?backoff,
                        "no token for the default account yet"
                    );
                    let wait = backoff;
                    backoff = (backoff * 2).min(WARM_MAX_BACKOFF);
                    wait
                }
            },
        };
        tokio::time::sleep(wait.min(WARM_MAX_WAIT)).await;
    }
}

/// A running sidecar.
pub struct RunningSidecar {
    addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    handler: Arc<Handler<Broker>>,
    listeners: Vec<Serving>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl std::fmt::Debug for RunningSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSidecar")
            .field("addr", &self.addr)
            .field("health_addr", &self.health_addr)
            .finish_non_exhaustive()
    }
}

impl RunningSidecar {
    /// The metadata listener's address: what `GCE_METADATA_HOST` and `GCE_METADATA_IP` name.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The health listener's address, if one is configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// Whether a token for the default account is held (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.handler.readiness().is_ok()
    }

    /// Waits until [`is_ready`](Self::is_ready), at most `timeout`; returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting connections, lets requests in flight finish within the configured
    /// grace period, then stops.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let stopping: Vec<_> = self
            .listeners
            .into_iter()
            .map(|listener| tokio::spawn(listener.shutdown(self.grace)))
            .collect();
        for listener in stopping {
            let _ = listener.await;
        }
        for task in self.background {
            task.abort();
        }
        tracing::info!("stopped");
    }
}
