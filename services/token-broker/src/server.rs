//! Starting and stopping the broker: TLS, policy, credentials, cache, health, reflection and the
//! gRPC server, wired from [`Settings`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_authz::Policy;
use broker_backends::{HttpClient, ServiceAccountKey, ServiceAccountSource, upstream_host};
use broker_cache::TokenCache;
use broker_core::{Clock, CredentialName, SystemClock};
use broker_proto::tokenbroker::v1::token_broker_server::TokenBrokerServer;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::limits::{CallerLimits, LimitDefaults};
use crate::rpc::{Credential, ServiceParts, TokenBrokerService};
use crate::settings::{CredentialSettings, Settings};
use crate::tls;
use crate::transport::{self, Serving, TransportOptions};

/// The health service name of the broker's API.
const SERVICE_NAME: &str = "tokenbroker.v1.TokenBroker";

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS files are unusable.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// The policy is unusable.
    #[error("policy: {0}")]
    Policy(String),
    /// Credentials could not be loaded; one line per problem.
    #[error("{}", .0.join("\n"))]
    Credentials(Vec<String>),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// A setting is out of range (`Settings::load` reports these first).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A running broker.
#[derive(Debug)]
pub struct RunningBroker {
    addr: SocketAddr,
    service: TokenBrokerService,
    health: HealthReporter,
    serving: Serving,
    grace: Duration,
    background: Vec<JoinHandle<()>>,
}

impl RunningBroker {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service (for cache metrics).
    pub fn service(&self) -> &TokenBrokerService {
        &self.service
    }

    /// Reports NOT_SERVING, stops accepting connections, sends open ones GOAWAY and lets
    /// in-flight RPCs finish within the grace period, then stops.
    pub async fn shutdown(self) {
        for service in [SERVICE_NAME, ""] {
            self.health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("shutting down: no new connections, draining in-flight RPCs");
        self.serving.shutdown(self.grace).await;
        for task in self.background {
            task.abort();
        }
        tracing::info!("stopped");
    }
}

/// Loads a policy file and checks that every grant names a configured credential.
pub fn load_policy(
    path: &std::path::Path,
    credentials: &[CredentialName],
) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let policy = Policy::from_toml_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut problems = Vec::new();
    for (i, grant) in policy.grants().iter().enumerate() {
        if !credentials.contains(grant.credential()) {
            problems.push(format!(
                "{}: grants[{i}] ({}) names credential {:?}, which is not configured",
                path.display(),
                grant.name(),
                grant.credential().as_str()
            ));
        }
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems.join("\n"))
    }
}

/// Loads every configured credential; on failure, every problem with its location.
pub fn load_credentials(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<HashMap<CredentialName, Credential>, StartError> {
    let http =
        HttpClient::new(settings.http.clone()).map_err(|e| StartError::Http(e.to_string()))?;
    let endpoints = &settings.google;
    let mut credentials = HashMap::new();
    let mut problems = Vec::new();
    for (index, entry) in settings.credentials.iter().enumerate() {
        let load = || -> Result<(CredentialName, Credential), String> {
            let name = CredentialName::new(entry.name()).map_err(|e| e.to_string())?;
            let credential = match entry {
                CredentialSettings::ServiceAccount { key_file, .. } => {
                    let key = ServiceAccountKey::from_file(key_file).map_err(|e| e.to_string())?;
                    let source = ServiceAccountSource::new(key, endpoints.clone(), http.clone())
                        .map_err(|e| e.to_string())?
                        .with_clock(Arc::clone(&clock));
                    tracing::info!(credential = %name, principal = %broker_core::TokenSource::principal(&source), "credential loaded");
                    Credential {
                        principal: broker_core::TokenSource::principal(&source).into(),
                        source: Arc::new(source),
                        kind: entry.kind(),
                        upstream: upstream_host(&endpoints.token_url),
                        chooses_lifetime: false,
                        delegates_domain: true,
                    }
                }
            };
            Ok((name, credential))
        };
        match load() {
            Ok((name, credential)) => {
                credentials.insert(name, credential);
            }
            Err(message) => problems.push(format!(
                "credentials[{index}] ({}): {message}",
                entry.name()
            )),
        }
    }
    if problems.is_empty() {
        Ok(credentials)
    } else {
        Err(StartError::Credentials(problems))
    }
}

/// The gRPC routes of the broker: its API, health and reflection (v1 and v1alpha).
fn routes(
    service: TokenBrokerService,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    max_request_bytes: usize,
) -> Result<Routes, StartError> {
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(broker_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| StartError::Invalid(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| StartError::Invalid(format!("reflection: {e}")))?;
    let api = TokenBrokerServer::new(service).max_decoding_message_size(max_request_bytes);
    Ok(Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api))
}

/// Starts the broker and returns once it is serving.
pub async fn start(settings: Settings) -> Result<RunningBroker, StartError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;

    let (tls_config, tls_task) =
        tls::watch_files(settings.tls.clone(), settings.tls.reload_interval)?;

    let credentials = load_credentials(&settings, Arc::clone(&clock))?;
    let names: Vec<CredentialName> = credentials.keys().cloned().collect();
    let policy_path = settings.policy.file.clone();
    let (policy, policy_task) = crate::reload::watch_files(
        "policy",
        vec![policy_path.clone()],
        settings.policy.reload_interval,
        move || load_policy(&policy_path, &names),
    )
    .map_err(StartError::Policy)?;

    let limits = &settings.limits;
    let service = TokenBrokerService::new(ServiceParts {
        policy,
        credentials,
        cache: TokenCache::new(settings.cache.config(), Arc::clone(&clock)),
        limits: CallerLimits::new(LimitDefaults {
            rate: limits.rate_limit.limit().ok_or_else(|| {
                StartError::Invalid("limits.rate_limit is out of range".to_owned())
            })?,
            distinct_keys: limits.distinct_keys,
            window: limits.distinct_keys_window,
        }),
        clock,
        max_concurrent_rpcs: settings.server.max_concurrent_rpcs,
        rpc_timeout: settings.server.rpc_timeout,
    });

    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.server.listen,
        source,
    })?;
    let routes = routes(
        service.clone(),
        health_service,
        settings.server.max_request_bytes,
    )?;
    let serving = transport::serve(
        listener,
        tls_config,
        TransportOptions::from(&settings.server),
        routes,
    );
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    tracing::info!(%addr, "token broker serving");
    Ok(RunningBroker {
        addr,
        service,
        health,
        serving,
        grace: settings.server.shutdown_grace,
        background: vec![tls_task, policy_task],
    })
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
