//! The broker's configuration: a TOML file, `BROKER__SECTION__KEY` environment overrides and
//! command-line overrides, in that order of precedence (lowest first).
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:8443"
//! rpc_timeout = "10s"           # the longest any RPC may take (the caller's deadline may be shorter)
//! max_concurrent_rpcs = 1024    # beyond this, UNAVAILABLE (OVERLOADED) with RetryInfo
//! max_request_bytes = 131072  # whole request messages; at least 80 KiB (64 KiB payloads)
//! shutdown_grace = "15s"        # how long SIGTERM waits for in-flight calls
//! max_connections = 10000       # open connections; more wait in the kernel's backlog
//! max_concurrent_handshakes = 128
//! max_handshakes_per_ip = 32    # more from one address are closed at once
//! handshake_timeout = "10s"
//! max_connection_age = "30m"    # then GOAWAY (jittered by ±10 %) ...
//! max_connection_age_grace = "30s"  # ... and calls still running after this are cut
//! max_concurrent_streams = 256  # calls in flight per connection
//! keepalive_interval = "60s"    # HTTP/2 pings on idle connections
//! keepalive_timeout = "20s"
//! max_header_list_size = 16384
//!
//! [tls]
//! cert = "/etc/token-broker/tls/server.pem"
//! key = "/etc/token-broker/tls/server-key.pem"
//! reload_interval = "10s"       # how often the files are checked for changes
//!
//! [[tls.trust_bundles]]         # at least one; each says what it may vouch for
//! name = "prod-spire"           # for logs; default: the file name
//! file = "/run/spire/bundle.json"   # PEM CA certificates, or a SPIFFE bundle (JSON)
//! spiffe_trust_domains = ["prod.example.org"]  # SPIFFE IDs it may sign
//! dns_names = false             # whether it may vouch for DNS-SAN identities
//! common_names = false          # whether it may vouch for subject-CN identities
//!
//! [limits]                      # per caller and grant; a grant may set its own
//! rate_limit = { per_second = 100, burst = 200 }
//! distinct_keys = 64            # new cache keys one caller may create per window
//! distinct_keys_window = "10m"
//!
//! [policy]
//! file = "/etc/token-broker/policy.toml"
//!
//! [google]                      # every endpoint is overridable; defaults are Google's
//! token_url = "https://oauth2.googleapis.com/token"
//! sts_url = "https://sts.googleapis.com/v1/token"
//! iam_credentials_url = "https://iamcredentials.googleapis.com"
//! metadata_url = "http://metadata.google.internal"   # else GCE_METADATA_HOST, if set
//!
//! [http]
//! connect_timeout = "5s"
//! request_timeout = "10s"             # one attempt
//! [http.retry]                        # transient failures: jittered exponential backoff
//! max_attempts = 4
//! initial_backoff = "100ms"
//! max_backoff = "5s"
//!
//! [cache]
//! max_entries = 10000
//! refresh_lead = "2m"           # a token in use is refreshed this long before a caller's
//!                               # min_remaining_validity would fail it (jittered ±25 %)
//! safety_margin = "60s"         # the least validity any token is served with
//! background_deadline = "30s"   # how long a background refresh may take
//! negative_ttl = "15s"          # Google's permanent refusals are remembered this long
//!
//! [[credentials]]               # a service-account key
//! name = "prod-deployer"
//! kind = "service_account"
//! key_file = "/etc/token-broker/keys/deployer.json"
//!
//! [[credentials]]               # the broker's own identity on GCE, GKE or Cloud Run
//! name = "self"
//! kind = "metadata"
//! service_account = "default"   # or one of the instance's service-account emails
//!
//! [[credentials]]               # a user's refresh token (gcloud auth application-default login)
//! name = "ops-user"
//! kind = "authorized_user"
//! file = "/etc/token-broker/users/ops.json"
//!
//! [[credentials]]               # a service account impersonated with another credential's tokens
//! name = "analytics"
//! kind = "impersonated"
//! base = "self"                 # another [[credentials]] name
//! target = "analytics@my-project.iam.gserviceaccount.com"
//! delegates = []                # the chain, first hop first
//! # file = "impersonated.json"  # instead of base/target/delegates: gcloud's
//! #                             # impersonated_service_account file
//!
//! [[credentials]]               # workload or workforce identity federation
//! name = "federated"
//! kind = "external_account"
//! file = "/etc/token-broker/wif.json"  # gcloud iam workload-identity-pools create-cred-config
//! allow_executable = false      # whether an `executable` credential source may run
//! # mtls_roots_file = "sts-ca.pem"  # roots a `certificate` source's mTLS connections trust
//!
//! [[credentials]]               # Google's discovery order: GOOGLE_APPLICATION_CREDENTIALS,
//! name = "adc"                  # gcloud's well-known file, the metadata server
//! kind = "application_default"
//! ```
//!
//! Relative paths are relative to the directory of the configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_authz::{RateLimit, SpiffeId};
use broker_backends::{GoogleEndpoints, HttpConfig};
use broker_cache::CacheConfig;
use serde::Deserialize;

/// The least `server.max_request_bytes`: a 64 KiB payload and the request's other fields.
pub const MIN_REQUEST_BYTES: usize = 80 * 1024;

/// Why the configuration could not be used; each problem names where it is.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The sources could not be read or deserialized.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// Values that deserialize but do not make sense together.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The gRPC server.
    #[serde(default)]
    pub server: ServerSettings,
    /// The mTLS listener.
    pub tls: TlsSettings,
    /// The authorization policy.
    pub policy: PolicySettings,
    /// Google's endpoints (defaults: Google's production endpoints).
    #[serde(default)]
    pub google: GoogleEndpoints,
    /// The HTTP client used to call Google, and its retries.
    #[serde(default)]
    pub http: HttpConfig,
    /// The token cache.
    #[serde(default)]
    pub cache: CacheSettings,
    /// What one caller can cost.
    #[serde(default)]
    pub limits: LimitsSettings,
    /// The Google credentials the broker holds.
    #[serde(default)]
    pub credentials: Vec<CredentialSettings>,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The longest any RPC may take; a call without a deadline of its own ends when it passes.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// RPCs served at once; more are refused with UNAVAILABLE (OVERLOADED).
    pub max_concurrent_rpcs: usize,
    /// Largest request message, bytes: larger ones are refused by gRPC (`OUT_OF_RANGE`)
    /// before the broker reads them. At least [`MIN_REQUEST_BYTES`], so that every payload the
    /// API accepts fits, and one a little too large gets the API's own `INVALID_ARGUMENT`.
    pub max_request_bytes: usize,
    /// How long a TLS handshake may take.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long shutdown waits for in-flight RPCs.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Open connections at most; beyond it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// TLS handshakes in progress at most.
    pub max_concurrent_handshakes: usize,
    /// TLS handshakes in progress from one IP address at most; more are closed at once.
    pub max_handshakes_per_ip: usize,
    /// A connection's life before it is sent GOAWAY (jittered by ±10 %).
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// How long calls may still run on a connection after its GOAWAY.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    /// Calls in flight per connection at most.
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 pings on idle connections.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// The largest header block accepted, bytes.
    pub max_header_list_size: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            rpc_timeout: Duration::from_secs(10),
            max_concurrent_rpcs: 1024,
            max_request_bytes: 128 * 1024,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(15),
            max_connections: 10_000,
            max_concurrent_handshakes: 128,
            max_handshakes_per_ip: 32,
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(30),
            max_concurrent_streams: 256,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_header_list_size: 16 * 1024,
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// The trust bundles client certificates are verified against, each bound to what it may
    /// vouch for.
    #[serde(default)]
    pub trust_bundles: Vec<TrustBundleSettings>,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// `[[tls.trust_bundles]]`: CA certificates for client certificates, and what they may vouch
/// for. A certificate is accepted only if its chain leads to a bundle bound to the identity it
/// claims: its SPIFFE ID's trust domain, or DNS names or common names where allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleSettings {
    /// The bundle's name in logs and errors; default: the file name.
    pub name: Option<String>,
    /// PEM CA certificates, or a SPIFFE bundle (the JWK Set SPIRE publishes).
    pub file: PathBuf,
    /// The SPIFFE trust domains whose IDs its CAs may sign, such as `prod.example.org`.
    #[serde(default)]
    pub spiffe_trust_domains: Vec<String>,
    /// Whether its CAs may vouch for identities named by DNS SANs.
    #[serde(default)]
    pub dns_names: bool,
    /// Whether its CAs may vouch for identities named by the subject common name.
    #[serde(default)]
    pub common_names: bool,
}

/// The longest timeout, grace period or keepalive setting accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `server.max_connection_age` accepted.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(7 * 86_400);
/// The longest reload interval accepted.
const MAX_RELOAD_INTERVAL: Duration = Duration::from_secs(3600);

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// The policy file (TOML), reloaded when it changes.
    pub file: PathBuf,
    /// How often the file is checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// `[cache]`: see `broker_cache::CacheConfig` for what each setting does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Whether tokens are cached at all (off only for measurements).
    pub enabled: bool,
    /// Most tokens held.
    pub max_entries: u64,
    /// How long before a caller's `min_remaining_validity` would fail a token in use it is
    /// refreshed in the background (jittered).
    #[serde(with = "humantime_serde")]
    pub refresh_lead: Duration,
    /// The least validity any token is served with.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
    /// How long a background refresh may take.
    #[serde(with = "humantime_serde")]
    pub background_deadline: Duration,
    /// How long Google's permanent refusal of a request is remembered; `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        let defaults = CacheConfig::default();
        Self {
            enabled: true,
            max_entries: defaults.max_capacity,
            refresh_lead: defaults.refresh_lead,
            safety_margin: defaults.safety_margin,
            background_deadline: defaults.background_deadline,
            negative_ttl: defaults.negative_ttl,
        }
    }
}

impl CacheSettings {
    /// The cache's configuration.
    pub fn config(&self) -> CacheConfig {
        if !self.enabled {
            return CacheConfig::disabled();
        }
        CacheConfig {
            max_capacity: self.max_entries,
            refresh_lead: self.refresh_lead,
            safety_margin: self.safety_margin,
            background_deadline: self.background_deadline,
            negative_ttl: self.negative_ttl,
            ..CacheConfig::default()
        }
    }
}

/// `[limits]`: what one caller can cost, counted per caller and grant. A grant may set its own
/// `rate_limit` and `distinct_keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// The token bucket of each caller (per grant).
    pub rate_limit: RateLimitSettings,
    /// How many distinct cache keys (credential, scopes, subject, boundary, lifetime) one
    /// caller may create per window; beyond it, new keys are refused until the window ends.
    pub distinct_keys: u32,
    /// The window of `distinct_keys`.
    #[serde(with = "humantime_serde")]
    pub distinct_keys_window: Duration,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            rate_limit: RateLimitSettings {
                per_second: 100.0,
                burst: 200,
            },
            distinct_keys: 64,
            distinct_keys_window: Duration::from_secs(600),
        }
    }
}

/// A token bucket: `per_second` requests a second on average, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Average requests per second.
    pub per_second: f64,
    /// Requests at once.
    pub burst: u32,
}

impl RateLimitSettings {
    /// The limit, if the numbers are in range (see `broker_authz::RateLimit::new`).
    pub fn limit(&self) -> Option<RateLimit> {
        RateLimit::new(self.per_second, self.burst)
    }
}

/// `[[credentials]]`: one Google credential under a name; `kind` says which.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSettings {
    /// A service-account key file (JWT-bearer grant, optional domain-wide delegation).
    ServiceAccount {
        /// The name policies and requests use.
        name: String,
        /// The Google key file (JSON).
        key_file: PathBuf,
    },
    /// The broker's own identity from the metadata server (GCE, GKE, Cloud Run).
    Metadata {
        /// The name policies and requests use.
        name: String,
        /// The account: `default` (the default) or a service account's email.
        #[serde(default = "default_account")]
        service_account: String,
    },
    /// A user's refresh token: the file `gcloud auth application-default login` writes.
    AuthorizedUser {
        /// The name policies and requests use.
        name: String,
        /// The `authorized_user` JSON file.
        file: PathBuf,
    },
    /// A service account impersonated through IAM Credentials, with another configured
    /// credential as the base; or an `impersonated_service_account` file as gcloud writes it.
    Impersonated {
        /// The name policies and requests use.
        name: String,
        /// The base credential's name (another `[[credentials]]` entry). Not with `file`.
        base: Option<String>,
        /// The service account to impersonate. Not with `file`.
        target: Option<String>,
        /// The delegation chain, in order. Not with `file`.
        #[serde(default)]
        delegates: Vec<String>,
        /// An `impersonated_service_account` file (its source credentials are the base).
        file: Option<PathBuf>,
    },
    /// Workload or workforce identity federation: an `external_account` file as `gcloud iam
    /// workload-identity-pools create-cred-config` (or `workforce-pools`) writes it.
    ExternalAccount {
        /// The name policies and requests use.
        name: String,
        /// The `external_account` JSON file.
        file: PathBuf,
        /// Whether its `executable` credential source may run (the broker's equivalent of
        /// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`). Default false: a file with an
        /// executable source is refused.
        #[serde(default)]
        allow_executable: bool,
        /// PEM CA certificates that a `certificate` source's mTLS connections to STS and IAM
        /// trust instead of the platform's roots (a private endpoint, or the emulator).
        mtls_roots_file: Option<PathBuf>,
    },
    /// Google's Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, then
    /// gcloud's well-known file, then the metadata server; whichever is found first.
    ApplicationDefault {
        /// The name policies and requests use.
        name: String,
    },
}

fn default_account() -> String {
    "default".to_owned()
}

impl CredentialSettings {
    /// The name policies and requests use.
    pub fn name(&self) -> &str {
        match self {
            Self::ServiceAccount { name, .. }
            | Self::Metadata { name, .. }
            | Self::AuthorizedUser { name, .. }
            | Self::Impersonated { name, .. }
            | Self::ExternalAccount { name, .. }
            | Self::ApplicationDefault { name } => name,
        }
    }

    /// The kind's name, as in configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount { .. } => "service_account",
            Self::Metadata { .. } => "metadata",
            Self::AuthorizedUser { .. } => "authorized_user",
            Self::Impersonated { .. } => "impersonated",
            Self::ExternalAccount { .. } => "external_account",
            Self::ApplicationDefault { .. } => "application_default",
        }
    }

    /// The credential this one is built on, if any.
    pub fn base(&self) -> Option<&str> {
        match self {
            Self::Impersonated { base, .. } => base.as_deref(),
            _ => None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,token_broker=debug`; `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

impl Settings {
    /// Loads `file`, then `BROKER__…` variables from `environment` (the process environment
    /// when `None`), then `overrides` (`("server.listen", "…")` pairs from the command line);
    /// resolves relative paths against the file's directory and validates the result.
    pub fn load(
        file: &Path,
        environment: Option<config::Map<String, String>>,
        overrides: &[(&str, String)],
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder()
            .add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .add_source(
                config::Environment::with_prefix("BROKER")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(environment),
            );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        let base = file.parent().unwrap_or(Path::new("."));
        settings.resolve_paths(base);
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        for bundle in &mut self.tls.trust_bundles {
            resolve(&mut bundle.file);
        }
        resolve(&mut self.policy.file);
        for credential in &mut self.credentials {
            match credential {
                CredentialSettings::ServiceAccount { key_file, .. } => resolve(key_file),
                CredentialSettings::AuthorizedUser { file, .. } => resolve(file),
                CredentialSettings::ExternalAccount {
                    file,
                    mtls_roots_file,
                    ..
                } => {
                    resolve(file);
                    if let Some(roots) = mtls_roots_file {
                        resolve(roots);
                    }
                }
                CredentialSettings::Impersonated {
                    file: Some(file), ..
                } => resolve(file),
                CredentialSettings::Impersonated { file: None, .. }
                | CredentialSettings::Metadata { .. }
                | CredentialSettings::ApplicationDefault { .. } => {}
            }
        }
    }

    /// Every problem that deserialization cannot catch, each with its location.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        self.validate_tls(&mut problems);
        self.validate_server(&mut problems);
        if self.http.retry.max_attempts == 0 {
            problems.push("http.retry.max_attempts: must be at least 1".to_owned());
        }
        let http = &self.http;
        for (field, value) in [
            ("http.connect_timeout", http.connect_timeout),
            ("http.request_timeout", http.request_timeout),
            ("http.max_retry_after", http.max_retry_after),
            ("http.retry.initial_backoff", http.retry.initial_backoff),
            ("http.retry.max_backoff", http.retry.max_backoff),
            ("http.retry.default_budget", http.retry.default_budget),
            ("cache.refresh_lead", self.cache.refresh_lead),
            ("cache.safety_margin", self.cache.safety_margin),
            ("cache.background_deadline", self.cache.background_deadline),
            ("cache.negative_ttl", self.cache.negative_ttl),
            (
                "limits.distinct_keys_window",
                self.limits.distinct_keys_window,
            ),
        ] {
            if value > MAX_TIMEOUT {
                problems.push(format!(
                    "{field}: must be at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ));
            }
        }
        if self.http.max_retry_after.is_zero() {
            problems.push("http.max_retry_after: must be positive (it caps how long Google's Retry-After makes the broker wait)".to_owned());
        }
        if self.cache.enabled {
            let config = self.cache.config();
            problems.extend(config.problems().into_iter().map(|p| format!("cache.{p}")));
            if self.http.request_timeout > config.background_deadline {
                problems.push(format!(
                    "http.request_timeout: {} is longer than cache.background_deadline ({}), so a background refresh could not complete even one attempt",
                    humantime::format_duration(self.http.request_timeout),
                    humantime::format_duration(config.background_deadline)
                ));
            }
        }
        if self.limits.rate_limit.limit().is_none() {
            problems.push(format!(
                "limits.rate_limit: per_second must be a number from {} to {}, and burst at least 1",
                RateLimit::MIN_PER_SECOND,
                RateLimit::MAX_PER_SECOND
            ));
        }
        if self.limits.distinct_keys == 0 {
            problems.push("limits.distinct_keys: must be at least 1".to_owned());
        }
        if self.limits.distinct_keys_window.is_zero() {
            problems.push("limits.distinct_keys_window: must be positive".to_owned());
        }
        if let Err(e) = self.google.validate() {
            problems.push(format!("google: {e}"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, credential) in self.credentials.iter().enumerate() {
            if let Err(e) = broker_core::CredentialName::new(credential.name()) {
                problems.push(format!("credentials[{i}].name: {e}"));
            }
            if !names.insert(credential.name()) {
                problems.push(format!(
                    "credentials[{i}].name: {:?} is defined twice",
                    credential.name()
                ));
            }
            if let CredentialSettings::Impersonated {
                base,
                target,
                file,
                delegates,
                ..
            } = credential
            {
                let at = format!("credentials[{i}] ({})", credential.name());
                match (file, base, target) {
                    (Some(_), None, None) if delegates.is_empty() => {}
                    (Some(_), ..) => problems.push(format!(
                        "{at}: an impersonated credential has either `file` (a gcloud impersonated_service_account file) or `base` and `target`, not both"
                    )),
                    (None, Some(_), Some(_)) => {}
                    (None, ..) => problems.push(format!(
                        "{at}: an impersonated credential needs `base` (another credential's name) and `target` (a service account), or `file`"
                    )),
                }
            }
        }
        self.validate_bases(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(problems))
        }
    }
}

impl Settings {
    /// Every `base` names another credential, and no chain of bases loops.
    fn validate_bases(&self, problems: &mut Vec<String>) {
        let base_of = |name: &str| {
            self.credentials
                .iter()
                .find(|c| c.name() == name)
                .map(CredentialSettings::base)
        };
        for (i, credential) in self.credentials.iter().enumerate() {
            let Some(base) = credential.base() else {
                continue;
            };
            if base_of(base).is_none() {
                problems.push(format!(
                    "credentials[{i}] ({}).base: {base:?} is not a configured credential",
                    credential.name()
                ));
                continue;
            }
            let mut seen = vec![credential.name()];
            let mut next = Some(base);
            while let Some(name) = next {
                if seen.contains(&name) {
                    problems.push(format!(
                        "credentials[{i}] ({}).base: the chain of bases loops ({} -> {name})",
                        credential.name(),
                        seen.join(" -> ")
                    ));
                    break;
                }
                seen.push(name);
                next = base_of(name).flatten();
            }
        }
    }

    fn validate_tls(&self, problems: &mut Vec<String>) {
        if self.tls.trust_bundles.is_empty() {
            problems.push("tls.trust_bundles: at least one trust bundle is required (clients must present certificates), for example [[tls.trust_bundles]] with file = \"ca.pem\" and spiffe_trust_domains = [\"example.org\"]".to_owned());
        }
        let mut names = std::collections::HashSet::new();
        for (i, bundle) in self.tls.trust_bundles.iter().enumerate() {
            let at = format!("tls.trust_bundles[{i}]");
            if bundle.spiffe_trust_domains.is_empty() && !bundle.dns_names && !bundle.common_names {
                problems.push(format!("{at}: vouches for nothing; set spiffe_trust_domains, dns_names = true or common_names = true"));
            }
            for (j, domain) in bundle.spiffe_trust_domains.iter().enumerate() {
                let problem = match SpiffeId::parse(&format!("spiffe://{domain}")) {
                    Err(e) => Some(e.to_string()),
                    Ok(id) if !id.path().is_empty() => Some(
                        "a trust domain has no path (use example.org, not example.org/ns)"
                            .to_owned(),
                    ),
                    Ok(_) => None,
                };
                if let Some(problem) = problem {
                    problems.push(format!(
                        "{at}.spiffe_trust_domains[{j}]: {domain:?} is not a trust domain: {problem}"
                    ));
                }
            }
            if let Some(name) = &bundle.name
                && !names.insert(name.as_str())
            {
                problems.push(format!("{at}.name: {name:?} is used twice"));
            }
        }
    }

    fn validate_server(&self, problems: &mut Vec<String>) {
        // Files must be checked for changes at some interval: a removed CA or a narrowed
        // policy has to take effect.
        for (field, value) in [
            ("tls.reload_interval", self.tls.reload_interval),
            ("policy.reload_interval", self.policy.reload_interval),
        ] {
            if value.is_zero() || value > MAX_RELOAD_INTERVAL {
                problems.push(format!(
                    "{field}: must be from 1ms to {}",
                    humantime::format_duration(MAX_RELOAD_INTERVAL)
                ));
            }
        }
        let server = &self.server;
        if server.max_request_bytes < MIN_REQUEST_BYTES {
            problems.push(format!(
                "server.max_request_bytes: must be at least {MIN_REQUEST_BYTES} (SignJwt and SignBlob payloads of up to 64 KiB, with the other fields)"
            ));
        }
        for (field, value) in [
            ("max_concurrent_rpcs", server.max_concurrent_rpcs),
            ("max_connections", server.max_connections),
            (
                "max_concurrent_handshakes",
                server.max_concurrent_handshakes,
            ),
            (
                "max_concurrent_streams",
                server.max_concurrent_streams as usize,
            ),
            ("max_header_list_size", server.max_header_list_size as usize),
        ] {
            if value == 0 {
                problems.push(format!("server.{field}: must be at least 1"));
            }
        }
        for (field, value, max) in [
            ("rpc_timeout", server.rpc_timeout, MAX_TIMEOUT),
            ("handshake_timeout", server.handshake_timeout, MAX_TIMEOUT),
            ("shutdown_grace", server.shutdown_grace, MAX_TIMEOUT),
            (
                "max_connection_age",
                server.max_connection_age,
                MAX_CONNECTION_AGE,
            ),
            (
                "max_connection_age_grace",
                server.max_connection_age_grace,
                MAX_TIMEOUT,
            ),
            ("keepalive_interval", server.keepalive_interval, MAX_TIMEOUT),
            ("keepalive_timeout", server.keepalive_timeout, MAX_TIMEOUT),
        ] {
            if value.is_zero() || value > max {
                problems.push(format!(
                    "server.{field}: must be positive and at most {}",
                    humantime::format_duration(max)
                ));
            }
        }
        if server.max_connection_age_grace < server.rpc_timeout {
            problems.push(format!(
                "server.max_connection_age_grace: {} is shorter than server.rpc_timeout ({}), so calls could be cut when their connection ages out",
                humantime::format_duration(server.max_connection_age_grace),
                humantime::format_duration(server.rpc_timeout)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).expect("dir");
        let path = dir.join("broker.toml");
        std::fs::write(&path, text).expect("write");
        path
    }

    const MINIMAL: &str = r#"
[tls]
cert = "server.pem"
key = "server-key.pem"

[[tls.trust_bundles]]
file = "ca.pem"
spiffe_trust_domains = ["example.org"]

[policy]
file = "policy.toml"

[[credentials]]
name = "dev"
kind = "service_account"
key_file = "keys/broker.json"
"#;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "token-broker-settings-{name}-{}",
            std::process::id()
        ))
    }

    #[test]
    fn file_environment_and_flags_layer_in_order() {
        let dir = temp_dir("layers");
        let file = write(&dir, MINIMAL);
        let env = config::Map::from([
            ("BROKER__SERVER__RPC_TIMEOUT".to_owned(), "3s".to_owned()),
            (
                "BROKER__SERVER__LISTEN".to_owned(),
                "127.0.0.1:9000".to_owned(),
            ),
        ]);
        let settings = Settings::load(
            &file,
            Some(env),
            &[("server.listen", "127.0.0.1:9100".to_owned())],
        )
        .expect("load");
        assert_eq!(settings.server.rpc_timeout, Duration::from_secs(3));
        assert_eq!(
            settings.server.listen,
            "127.0.0.1:9100".parse().expect("addr")
        );
        assert_eq!(settings.tls.cert, dir.join("server.pem"));
        assert_eq!(settings.tls.trust_bundles[0].file, dir.join("ca.pem"));
        assert!(
            matches!(&settings.credentials[0], CredentialSettings::ServiceAccount { key_file, .. } if *key_file == dir.join("keys/broker.json"))
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_reported_with_their_location() {
        let dir = temp_dir("bad");
        let file = write(&dir, &format!("{MINIMAL}\n[cache]\nmax_entriez = 3\n"));
        let error =
            Settings::load(&file, Some(config::Map::new()), &[]).expect_err("unknown field");
        assert!(error.to_string().contains("max_entriez"), "{error}");

        let file = write(
            &dir,
            &format!(
                "{}\n[server]\nmax_connections = 0\nmax_connection_age_grace = \"1s\"\n[limits]\nrate_limit = {{ per_second = 0, burst = 1 }}\n[cache]\nbackground_deadline = \"5m\"\n",
                MINIMAL
                    .replace("name = \"dev\"", "name = \"Dev_1\"")
                    .replace(
                        "spiffe_trust_domains = [\"example.org\"]",
                        "spiffe_trust_domains = [\"Example.org\"]\n[[tls.trust_bundles]]\nfile = \"other.pem\""
                    )
            ),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[]).expect_err("invalid");
        let text = error.to_string();
        for expected in [
            "credentials[0].name",
            "tls.trust_bundles[0].spiffe_trust_domains[0]: \"Example.org\" is not a trust domain",
            "tls.trust_bundles[1]: vouches for nothing",
            "server.max_connections: must be at least 1",
            "server.max_connection_age_grace: 1s is shorter than server.rpc_timeout",
            "limits.rate_limit: per_second must be",
            "cache.background_deadline",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }

        let file = write(
            &dir,
            &format!(
                "{}\n[server]\nmax_connection_age = \"100years\"\n[http]\nrequest_timeout = \"2days\"\n",
                MINIMAL
                    .replace("[tls]\n", "[tls]\nreload_interval = \"0s\"\n")
                    .replace("[\"example.org\"]", "[\"example.org/ns\"]")
            ),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[]).expect_err("invalid");
        let text = error.to_string();
        for expected in [
            "tls.reload_interval: must be from 1ms",
            "server.max_connection_age: must be positive and at most 7days",
            "http.request_timeout: must be at most 1h",
            "a trust domain has no path",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }

        let file = write(
            &dir,
            &MINIMAL.replace(
                "[[tls.trust_bundles]]\nfile = \"ca.pem\"\nspiffe_trust_domains = [\"example.org\"]\n",
                "",
            ),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[]).expect_err("no bundle");
        assert!(
            error
                .to_string()
                .contains("tls.trust_bundles: at least one"),
            "{error}"
        );

        let file = write(
            &dir,
            &format!("{MINIMAL}\n[server]\nrpc_timeout = \"ten seconds\"\n"),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[]).expect_err("bad duration");
        assert!(error.to_string().contains("rpc_timeout"), "{error}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
