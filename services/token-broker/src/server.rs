//! Starting and stopping the broker: TLS, policy, credentials, cache, health, reflection and the
//! gRPC server, wired from [`Settings`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_authz::Policy;
use broker_backends::{
    AdcOptions, AuthorizedUserCredentials, AuthorizedUserSource, BackendError, BaseWrapper, Env,
    ExternalAccountConfig, ExternalAccountOptions, ExternalAccountSource, GoogleEndpoints,
    HttpClient, ImpersonatedServiceAccountFile, ImpersonatedSource, MetadataSource,
    ServiceAccountKey, ServiceAccountSource, find_default_credentials, metadata_base_url,
    upstream_host,
};
use broker_cache::{CachedSource, TokenCache};
use broker_core::{Clock, CredentialName, SystemClock, TokenSource};
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
        if let Some(credential) = grant.credential()
            && !credentials.contains(credential)
        {
            problems.push(format!(
                "{}: grants[{i}] ({}) names credential {:?}, which is not configured",
                path.display(),
                grant.name(),
                credential.as_str()
            ));
        }
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems.join("\n"))
    }
}

/// Loads every configured credential, each base before the credentials built on it; on
/// failure, every problem with its location. Sources that discover their principal (metadata,
/// authorized user, Application Default Credentials) ask Google once here. Each credential's
/// access tokens are also served through `cache` ([`Credential::cached`]), which is how
/// impersonation and IAM signing get their base tokens. Environment variables (the metadata
/// server's host, Application Default Credentials, AWS credentials) come from `env`.
pub async fn load_credentials(
    settings: &Settings,
    cache: &TokenCache,
    http: &HttpClient,
    clock: Arc<dyn Clock>,
    env: &Env,
) -> Result<HashMap<CredentialName, Credential>, StartError> {
    let endpoints = &settings.google;
    let mut credentials: HashMap<CredentialName, Credential> = HashMap::new();
    let mut problems = Vec::new();
    let mut failed: Vec<&str> = Vec::new();
    // Bases first: each round loads the entries whose base is loaded (the settings have no
    // loops and no unknown bases), until a round loads nothing.
    let mut pending: Vec<(usize, &CredentialSettings)> =
        settings.credentials.iter().enumerate().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for (index, entry) in pending {
            let base = match entry.base() {
                None => None,
                Some(base) if failed.contains(&base) => {
                    failed.push(entry.name());
                    problems.push(format!(
                        "credentials[{index}] ({}): its base {base:?} could not be loaded",
                        entry.name()
                    ));
                    continue;
                }
                Some(base) => match credentials.iter().find(|(name, _)| name.as_str() == base) {
                    Some((_, loaded)) => Some(Arc::clone(&loaded.cached)),
                    None => {
                        waiting.push((index, entry));
                        continue;
                    }
                },
            };
            let context = LoadContext {
                endpoints,
                http,
                cache,
                clock: &clock,
                env,
            };
            match load_with_retries(entry, base, &context).await {
                Ok((name, credential)) => {
                    credentials.insert(name, credential);
                }
                Err(message) => {
                    failed.push(entry.name());
                    problems.push(format!(
                        "credentials[{index}] ({}): {message}",
                        entry.name()
                    ));
                }
            }
        }
        if waiting.len() == before {
            for (index, entry) in &waiting {
                problems.push(format!(
                    "credentials[{index}] ({}): its base {:?} is not configured",
                    entry.name(),
                    entry.base().unwrap_or_default()
                ));
            }
            break;
        }
        pending = waiting;
    }
    if problems.is_empty() {
        Ok(credentials)
    } else {
        Err(StartError::Credentials(problems))
    }
}

/// How long to wait before each new attempt at a credential whose discovery failed on a
/// transient error (a metadata server not ready yet as a pod starts, a network blip).
const DISCOVERY_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// [`load_credential`], tried again after transient discovery failures.
async fn load_with_retries(
    entry: &CredentialSettings,
    base: Option<Arc<dyn TokenSource>>,
    context: &LoadContext<'_>,
) -> Result<(CredentialName, Credential), String> {
    let mut delays = DISCOVERY_RETRY_DELAYS.iter();
    loop {
        match load_credential(entry, base.clone(), context).await {
            Err(LoadFailure::Backend(error)) if error.is_transient() => match delays.next() {
                Some(delay) => {
                    tracing::warn!(credential = %entry.name(), %error, retry_in_s = delay.as_secs(), "credential discovery failed; retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => return Err(error.to_string()),
            },
            Err(failure) => return Err(failure.to_string()),
            Ok(loaded) => return Ok(loaded),
        }
    }
}

/// Why a credential could not be built.
#[derive(Debug, thiserror::Error)]
enum LoadFailure {
    /// The backend refused its configuration or could not discover it.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Anything else (its name, its settings).
    #[error("{0}")]
    Invalid(String),
}

/// What building a credential's source needs.
struct LoadContext<'a> {
    endpoints: &'a GoogleEndpoints,
    http: &'a HttpClient,
    cache: &'a TokenCache,
    clock: &'a Arc<dyn Clock>,
    env: &'a Env,
}

/// Builds one credential; `base` is its base through the cache, for `impersonated` entries.
async fn load_credential(
    entry: &CredentialSettings,
    base: Option<Arc<dyn TokenSource>>,
    context: &LoadContext<'_>,
) -> Result<(CredentialName, Credential), LoadFailure> {
    let name =
        CredentialName::new(entry.name()).map_err(|e| LoadFailure::Invalid(e.to_string()))?;
    let LoadContext {
        endpoints,
        http,
        cache,
        clock,
        env,
    } = *context;
    let clock = Arc::clone(clock);
    // Bases read from files (gcloud's impersonated_service_account files) are cached under
    // this credential's name too: their principal keeps their keys apart.
    let wrap_cache = cache.clone();
    let wrap_name = name.clone();
    let wrap_base: BaseWrapper = Arc::new(move |base| {
        Arc::new(CachedSource::new(
            wrap_cache.clone(),
            wrap_name.clone(),
            base,
        ))
    });
    let mut origin = None;
    let mut federation = None;
    let source: Arc<dyn TokenSource> = match entry {
        CredentialSettings::ServiceAccount { key_file, .. } => {
            let key = ServiceAccountKey::from_file(key_file)?;
            Arc::new(
                ServiceAccountSource::new(key, endpoints.clone(), http.clone())?.with_clock(clock),
            )
        }
        CredentialSettings::Metadata {
            service_account, ..
        } => Arc::new(
            MetadataSource::discover(service_account, endpoints.clone(), http.clone(), env)
                .await?
                .with_clock(clock),
        ),
        CredentialSettings::AuthorizedUser { file, .. } => {
            let user = AuthorizedUserCredentials::from_file(file)?;
            Arc::new(
                AuthorizedUserSource::discover(user, endpoints.clone(), http.clone())
                    .await?
                    .with_clock(clock),
            )
        }
        CredentialSettings::Impersonated {
            file: Some(file), ..
        } => Arc::new(
            ImpersonatedServiceAccountFile::from_file(file)?
                .into_source(endpoints, http, Some(&wrap_base))
                .await?
                .with_clock(clock),
        ),
        CredentialSettings::Impersonated {
            target, delegates, ..
        } => {
            let (Some(base), Some(target)) = (base, target) else {
                return Err(LoadFailure::Invalid(
                    "an impersonated credential needs `base` and `target`, or `file`".to_owned(),
                ));
            };
            Arc::new(
                ImpersonatedSource::new(base, target, delegates, endpoints.clone(), http.clone())?
                    .with_clock(clock),
            )
        }
        CredentialSettings::ExternalAccount {
            file,
            allow_executable,
            mtls_roots_file,
            ..
        } => {
            let config = ExternalAccountConfig::from_file(file)?;
            let mtls_root_certificates = match mtls_roots_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    LoadFailure::Invalid(format!(
                        "cannot read mtls_roots_file {}: {e}",
                        path.display()
                    ))
                })?),
                None => None,
            };
            let options = ExternalAccountOptions {
                allow_executables: *allow_executable,
                env: env.clone(),
                mtls_root_certificates,
            };
            let source = Arc::new(
                ExternalAccountSource::new(config, endpoints.clone(), http.clone(), options)?
                    .with_clock(clock),
            );
            federation = Some(Arc::clone(&source));
            source
        }
        CredentialSettings::ApplicationDefault { .. } => {
            let found = find_default_credentials(&AdcOptions {
                wrap_base: Some(wrap_base),
                ..AdcOptions::new(endpoints.clone(), http.clone())
            })
            .await?;
            origin = Some(found.origin.to_string());
            found.source
        }
    };
    let upstream = match source.kind() {
        "metadata" => upstream_host(
            &metadata_base_url(endpoints, env).unwrap_or_else(|_| endpoints.metadata_url.clone()),
        ),
        "impersonated" => upstream_host(&endpoints.iam_credentials_url),
        "external_account" => federation.as_ref().map_or_else(
            || upstream_host(&endpoints.sts_url),
            |f| upstream_host(f.token_url()),
        ),
        _ => upstream_host(&endpoints.token_url),
    };
    tracing::info!(
        credential = %name,
        kind = source.kind(),
        principal = %source.principal(),
        found = origin.as_deref().unwrap_or("-"),
        "credential loaded"
    );
    let credential = Credential {
        principal: source.principal().into(),
        cached: Arc::new(CachedSource::new(
            cache.clone(),
            name.clone(),
            Arc::clone(&source),
        )),
        source,
        federation,
        upstream,
    };
    Ok((name, credential))
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

/// Warns when some of Google's endpoints are on loopback (an emulator) and others are not: a
/// configuration that overrides only some of them sends the rest to Google itself.
fn warn_on_mixed_endpoints(google: &GoogleEndpoints) {
    let endpoints = [
        ("token_url", &google.token_url),
        ("sts_url", &google.sts_url),
        ("iam_credentials_url", &google.iam_credentials_url),
        ("metadata_url", &google.metadata_url),
    ];
    let is_loopback = |url: &str| {
        let host = upstream_host(url);
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
    };
    let (local, remote): (Vec<_>, Vec<_>) = endpoints.iter().partition(|(_, url)| is_loopback(url));
    if !local.is_empty() && !remote.is_empty() {
        let names = |list: &[&(&str, &String)]| {
            list.iter()
                .map(|(field, url)| format!("{field}={url}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::warn!(
            loopback = %names(&local),
            remote = %names(&remote),
            "some [google] endpoints are on loopback and others are not: set every endpoint when using an emulator"
        );
    }
}

/// Starts the broker and returns once it is serving; its credentials read the process's
/// environment.
pub async fn start(settings: Settings) -> Result<RunningBroker, StartError> {
    start_with_env(settings, &Env::process()).await
}

/// [`start`], with the credentials reading `env` instead of the process's environment.
pub async fn start_with_env(settings: Settings, env: &Env) -> Result<RunningBroker, StartError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;

    let (tls_config, tls_task) =
        tls::watch_files(settings.tls.clone(), settings.tls.reload_interval)?;

    warn_on_mixed_endpoints(&settings.google);
    let http =
        HttpClient::new(settings.http.clone()).map_err(|e| StartError::Http(e.to_string()))?;
    let cache = TokenCache::new(settings.cache.config(), Arc::clone(&clock));
    let credentials = load_credentials(&settings, &cache, &http, Arc::clone(&clock), env).await?;
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
        cache,
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
        google: settings.google.clone(),
        http,
    })
    .map_err(|e| StartError::Invalid(e.to_string()))?;

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
