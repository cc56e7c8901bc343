//! The sidecar's configuration: a TOML file, then `SIDECAR__SECTION__KEY` environment
//! overrides, then command-line overrides (lowest precedence first), as the broker's.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8988"         # loopback by default (the pod's other containers share it)
//! # health_listen = "0.0.0.0:8989"  # also serve /readyz and /livez (only) here, for kubelet
//! request_timeout = "8s"            # the longest a local request may take
//! header_read_timeout = "10s"       # for a request's headers; also ends idle keep-alives
//! max_header_bytes = 16384          # request line and headers
//! max_headers = 64
//! max_body_bytes = 1024             # metadata requests are GETs; larger bodies get 413
//! max_connections = 1024            # more wait in the kernel's backlog
//! shutdown_grace = "5s"             # how long SIGTERM waits for requests in flight
//!
//! [broker]
//! address = "https://token-broker.token-broker.svc:8443"
//! ca = "/var/run/tokenbroker/ca.pem"     # verifies the broker's certificate
//! cert = "/var/run/tokenbroker/tls.crt"  # the pod's client certificate (chain)
//! key = "/var/run/tokenbroker/tls.key"
//! # tls_server_name = "token-broker"     # default: the address's host
//! reload_interval = "10s"           # how often the three files are checked for rotation
//! connect_timeout = "1s"            # an unreachable broker is reported within this
//! call_timeout = "5s"               # deadline of one broker call
//!
//! [cache]
//! refresh_ahead = "5m"     # a token in use is refreshed in the background this long before expiry
//! min_remaining = "4m"     # a token is never served with this little left (more than 225 s)
//! failure_backoff = "1s"   # a failed fetch is answered from memory this long (Retry-After)
//! max_entries = 256        # tokens held: (account, scopes) and (account, audience)
//!
//! [project]
//! project_id = "my-project"
//! numeric_project_id = "123456789012"
//! zone = "us-central1-a"            # optional; without it instance/zone is 404
//! universe_domain = "googleapis.com"
//!
//! [[service_accounts]]              # at least one; `default` names the one marked default
//! email = "app@my-project.iam.gserviceaccount.com"
//! credential = "app"                # the broker credential; omitted: the caller's default grant
//! default = true                    # required when there are several accounts
//! scopes = ["https://www.googleapis.com/auth/cloud-platform"]  # its scopes when none are asked
//! # allowed_scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
//! #                                 # also askable; omitted: any the broker's policy allows
//! # allowed_audiences = ["https://my-service.example.com"]
//! #                                 # omitted: any the broker's policy allows
//!
//! [log]
//! format = "text"                   # or "json"
//! filter = "info"                   # RUST_LOG wins
//! ```
//!
//! Relative paths are relative to the directory of the configuration file. The broker's
//! policy has the last word: what the sidecar allows, the broker may still refuse.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_client::TlsFiles;
use broker_core::{CredentialName, ScopeSet};
use serde::Deserialize;

/// Google's clients treat a token with this much or less left as stale and fetch it again
/// (google-auth's `REFRESH_THRESHOLD`); the sidecar never serves one.
pub const STALE_THRESHOLD: Duration = Duration::from_secs(225);

/// Google's cloud-platform scope, every account's default scope.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The longest timeout, interval or backoff accepted.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Why the configuration could not be used; each problem names where it is.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The sources could not be read or deserialized.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// Values that deserialize but do not make sense (together).
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The local HTTP listener.
    #[serde(default)]
    pub server: ServerSettings,
    /// The broker and the pod's mTLS identity.
    pub broker: BrokerSettings,
    /// The token cache.
    #[serde(default)]
    pub cache: CacheSettings,
    /// What `project/…`, `instance/zone` and `universe/…` answer.
    pub project: ProjectSettings,
    /// The service accounts served; one is `default`.
    pub service_accounts: Vec<ServiceAccountSettings>,
    /// Logging (of the binary).
    #[serde(default)]
    pub log: LogSettings,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Listen address of the metadata protocol.
    pub listen: SocketAddr,
    /// Also serve `/readyz` and `/livez` (and nothing else) here: kubelet probes the pod's
    /// address, not loopback.
    pub health_listen: Option<SocketAddr>,
    /// The longest a local request may take, a broker call included; then 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers; an idle keep-alive connection
    /// is closed after this too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The largest request line and headers accepted, bytes; larger get 431.
    pub max_header_bytes: usize,
    /// The most request headers accepted; more get 431.
    pub max_headers: usize,
    /// The largest request body accepted, bytes; larger (or of unknown length) get 413.
    pub max_body_bytes: u64,
    /// Open connections at most; beyond it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8988)),
            health_listen: None,
            request_timeout: Duration::from_secs(8),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024,
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// `[broker]`: where the broker is and the pod's mTLS identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// `https://host:port` (or `host:port`).
    pub address: String,
    /// CA certificate(s) that verify the broker's certificate, PEM.
    pub ca: PathBuf,
    /// The pod's client certificate, optionally followed by intermediates, PEM.
    pub cert: PathBuf,
    /// The client certificate's private key, PEM.
    pub key: PathBuf,
    /// The name the broker's certificate is verified against; default: the address's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// How often the three files are checked for changes; new connections use what they hold.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Bound on connecting to the broker (TCP and TLS).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one broker call.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(5)
}

impl BrokerSettings {
    /// The broker at `address`, with these TLS files and default timeouts.
    pub fn new(address: impl Into<String>, files: TlsFiles) -> Self {
        Self {
            address: address.into(),
            ca: files.ca,
            cert: files.cert,
            key: files.key,
            tls_server_name: None,
            reload_interval: default_reload_interval(),
            connect_timeout: default_connect_timeout(),
            call_timeout: default_call_timeout(),
        }
    }

    /// The three TLS files.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// A token in use is refreshed in the background once it has less than this left (and the
    /// default account's token whether or not it is used).
    #[serde(with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// A token is never served with this much or less left; more than 225 s.
    #[serde(with = "humantime_serde")]
    pub min_remaining: Duration,
    /// A failed fetch is remembered this long: requests for its key get the same answer at
    /// once, with this as `Retry-After` (or the broker's longer `RetryInfo`).
    #[serde(with = "humantime_serde")]
    pub failure_backoff: Duration,
    /// Tokens held at most (least recently used go first).
    pub max_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            refresh_ahead: Duration::from_secs(5 * 60),
            min_remaining: Duration::from_secs(4 * 60),
            failure_backoff: Duration::from_secs(1),
            max_entries: 256,
        }
    }
}

/// `[project]`: what the project and instance paths answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    /// `project/project-id`.
    pub project_id: String,
    /// `project/numeric-project-id`: digits only (gcloud checks).
    pub numeric_project_id: String,
    /// The zone of `instance/zone` (`projects/<number>/zones/<zone>`); `None`: 404.
    #[serde(default)]
    pub zone: Option<String>,
    /// `universe/universe-domain`.
    #[serde(default = "default_universe_domain")]
    pub universe_domain: String,
}

fn default_universe_domain() -> String {
    "googleapis.com".to_owned()
}

impl ProjectSettings {
    /// A project in the `googleapis.com` universe, without a zone.
    pub fn new(project_id: impl Into<String>, numeric_project_id: impl Into<String>) -> Self {
        Self {
            project_id: project_id.into(),
            numeric_project_id: numeric_project_id.into(),
            zone: None,
            universe_domain: default_universe_domain(),
        }
    }
}

/// `[[service_accounts]]`: one account clients can name, by `default` or by its email.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountSettings {
    /// Its email (what `email` answers and clients may name it by).
    pub email: String,
    /// The broker credential its tokens are asked for; `None`: the caller's default grant.
    #[serde(default)]
    pub credential: Option<String>,
    /// Whether `default` names it. Required on one account when there are several.
    #[serde(default)]
    pub default: bool,
    /// Its scopes: what `scopes` lists and a token request without `scopes=` gets.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Scopes a token request may ask for besides `scopes`; `None`: any (the broker decides).
    #[serde(default)]
    pub allowed_scopes: Option<Vec<String>>,
    /// Audiences an identity request may ask for; `None`: any (the broker decides).
    #[serde(default)]
    pub allowed_audiences: Option<Vec<String>>,
}

fn default_scopes() -> Vec<String> {
    vec![CLOUD_PLATFORM.to_owned()]
}

impl ServiceAccountSettings {
    /// An account with cloud-platform as its scope, the caller's default grant as its
    /// credential, and no limits of its own on scopes and audiences.
    pub fn new(email: impl Into<String>) -> Self {
        Self {
            email: email.into(),
            credential: None,
            default: false,
            scopes: default_scopes(),
            allowed_scopes: None,
            allowed_audiences: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,metadata_sidecar=debug`; `RUST_LOG` wins.
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
    /// Settings with default server, cache and log sections.
    pub fn new(
        broker: BrokerSettings,
        project: ProjectSettings,
        service_accounts: Vec<ServiceAccountSettings>,
    ) -> Self {
        Self {
            server: ServerSettings::default(),
            broker,
            cache: CacheSettings::default(),
            project,
            service_accounts,
            log: LogSettings::default(),
        }
    }

    /// Loads `file`, then `SIDECAR__…` variables from `environment` (the process environment
    /// when `None`), then `overrides` (`("server.listen", "…")` pairs); resolves relative paths
    /// against the file's directory and validates the result.
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
                config::Environment::with_prefix("SIDECAR")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(environment),
            );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let mut settings: Self = builder.build()?.try_deserialize()?;
        settings.resolve_paths(file.parent().unwrap_or(Path::new(".")));
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for path in [
            &mut self.broker.ca,
            &mut self.broker.cert,
            &mut self.broker.key,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The index of the account `default` names: the one marked `default`, or the only one.
    /// `None` if that is ambiguous ([`validate`](Self::validate) reports it).
    pub fn default_account(&self) -> Option<usize> {
        let mut marked = self
            .service_accounts
            .iter()
            .enumerate()
            .filter(|(_, account)| account.default);
        match (marked.next(), marked.next()) {
            (Some((index, _)), None) => Some(index),
            (None, None) if self.service_accounts.len() == 1 => Some(0),
            _ => None,
        }
    }

    /// Every problem that deserialization cannot catch, each with its location. The TLS files
    /// are read when the sidecar starts (and by `check-config`), not here.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        self.validate_server(&mut problems);
        self.validate_broker(&mut problems);
        self.validate_cache(&mut problems);
        self.validate_project(&mut problems);
        self.validate_accounts(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(problems))
        }
    }

    fn validate_server(&self, problems: &mut Vec<String>) {
        let server = &self.server;
        check_duration(problems, "server.request_timeout", server.request_timeout);
        check_duration(
            problems,
            "server.header_read_timeout",
            server.header_read_timeout,
        );
        check_duration(problems, "server.shutdown_grace", server.shutdown_grace);
        if !(1024..=256 * 1024).contains(&server.max_header_bytes) {
            problems.push("server.max_header_bytes: must be from 1024 to 262144".to_owned());
        }
        if !(8..=1024).contains(&server.max_headers) {
            problems.push("server.max_headers: must be from 8 to 1024".to_owned());
        }
        if server.max_body_bytes > 1024 * 1024 {
            problems.push("server.max_body_bytes: must be at most 1048576".to_owned());
        }
        if server.max_connections == 0 {
            problems.push("server.max_connections: must be at least 1".to_owned());
        }
        if server.health_listen == Some(server.listen) && server.listen.port() != 0 {
            problems.push(
                "server.health_listen: must differ from server.listen (which serves /readyz and /livez already)"
                    .to_owned(),
            );
        }
    }

    fn validate_broker(&self, problems: &mut Vec<String>) {
        let broker = &self.broker;
        if broker.address.trim().is_empty() {
            problems.push("broker.address: must be set, as https://host:port".to_owned());
        }
        if broker
            .tls_server_name
            .as_ref()
            .is_some_and(|name| name.trim().is_empty())
        {
            problems.push("broker.tls_server_name: must not be empty when set".to_owned());
        }
        check_duration(problems, "broker.reload_interval", broker.reload_interval);
        check_duration(problems, "broker.connect_timeout", broker.connect_timeout);
        check_duration(problems, "broker.call_timeout", broker.call_timeout);
    }

    fn validate_cache(&self, problems: &mut Vec<String>) {
        let cache = &self.cache;
        check_duration(problems, "cache.refresh_ahead", cache.refresh_ahead);
        check_duration(problems, "cache.failure_backoff", cache.failure_backoff);
        if cache.min_remaining <= STALE_THRESHOLD {
            problems.push(format!(
                "cache.min_remaining: must be more than {}s: Google's clients refetch a token with {}s or less left at once, in a loop",
                STALE_THRESHOLD.as_secs(),
                STALE_THRESHOLD.as_secs()
            ));
        }
        if cache.refresh_ahead <= cache.min_remaining {
            problems.push(format!(
                "cache.refresh_ahead: must be longer than cache.min_remaining ({}), so that a token is refreshed before it stops being served",
                humantime::format_duration(cache.min_remaining)
            ));
        }
        if cache.failure_backoff > Duration::from_secs(60) {
            problems.push("cache.failure_backoff: must be at most 60s".to_owned());
        }
        if cache.max_entries == 0 {
            problems.push("cache.max_entries: must be at least 1".to_owned());
        }
    }

    fn validate_project(&self, problems: &mut Vec<String>) {
        let project = &self.project;
        if !is_path_segment(&project.project_id) {
            problems.push(
                "project.project_id: must be a non-empty name without '/' or whitespace".to_owned(),
            );
        }
        if project.numeric_project_id.is_empty()
            || !project
                .numeric_project_id
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            problems.push(format!(
                "project.numeric_project_id: {:?} is not a project number (digits only; gcloud checks)",
                project.numeric_project_id
            ));
        }
        if project
            .zone
            .as_deref()
            .is_some_and(|zone| !is_path_segment(zone))
        {
            problems.push(
                "project.zone: must be a zone name such as us-central1-a, without '/'".to_owned(),
            );
        }
        if !is_path_segment(&project.universe_domain) {
            problems.push(
                "project.universe_domain: must be a domain such as googleapis.com".to_owned(),
            );
        }
    }

    fn validate_accounts(&self, problems: &mut Vec<String>) {
        if self.service_accounts.is_empty() {
            problems.push(
                "service_accounts: at least one [[service_accounts]] is required (its email, and the broker credential to ask for)"
                    .to_owned(),
            );
            return;
        }
        if self.default_account().is_none() {
            let marked = self.service_accounts.iter().filter(|a| a.default).count();
            problems.push(format!(
                "service_accounts: exactly one account must have default = true ({marked} do)"
            ));
        }
        let mut emails = HashSet::new();
        for (i, account) in self.service_accounts.iter().enumerate() {
            let at = format!("service_accounts[{i}]");
            let email = &account.email;
            if !is_path_segment(email)
                || !email.contains('@')
                || email.eq_ignore_ascii_case("default")
            {
                problems.push(format!(
                    "{at}.email: {email:?} is not a service account email"
                ));
            }
            if !emails.insert(email.to_ascii_lowercase()) {
                problems.push(format!("{at}.email: {email:?} is listed twice"));
            }
            if let Some(credential) = &account.credential
                && let Err(error) = CredentialName::new(credential)
            {
                problems.push(format!("{at}.credential: {error}"));
            }
            match ScopeSet::parse(&account.scopes) {
                Ok(scopes) if scopes.is_empty() => {
                    problems.push(format!("{at}.scopes: list at least one scope"));
                }
                Ok(_) => {}
                Err(error) => problems.push(format!("{at}.{error}")),
            }
            if let Some(allowed) = &account.allowed_scopes
                && let Err(error) = ScopeSet::parse(allowed)
            {
                problems.push(format!("{at}.allowed_{error}"));
            }
            for (j, audience) in account.allowed_audiences.iter().flatten().enumerate() {
                if audience.trim().is_empty() {
                    problems.push(format!("{at}.allowed_audiences[{j}]: must not be empty"));
                }
            }
        }
    }
}

fn check_duration(problems: &mut Vec<String>, field: &str, value: Duration) {
    if value.is_zero() {
        problems.push(format!("{field}: must be positive"));
    } else if value > MAX_DURATION {
        problems.push(format!(
            "{field}: must be at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
}

/// Non-empty, and usable as one segment of a metadata path.
fn is_path_segment(value: &str) -> bool {
    !value.is_empty() && !value.contains('/') && !value.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "metadata-sidecar-config-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    const MINIMAL: &str = r#"
[broker]
address = "https://broker:8443"
ca = "ca.pem"
cert = "/abs/tls.crt"
key = "tls.key"

[project]
project_id = "my-project"
numeric_project_id = "123456789012"

[[service_accounts]]
email = "app@my-project.iam.gserviceaccount.com"
"#;

    #[test]
    fn minimal_file_gets_loopback_and_safe_defaults() {
        let dir = temp_dir("minimal");
        let file = write(&dir, "sidecar.toml", MINIMAL);
        let settings = Settings::load(&file, Some(config::Map::new()), &[]).expect("loads");
        assert!(settings.server.listen.ip().is_loopback());
        assert_eq!(settings.broker.ca, dir.join("ca.pem"));
        assert_eq!(settings.broker.cert, PathBuf::from("/abs/tls.crt"));
        assert_eq!(settings.default_account(), Some(0));
        assert_eq!(settings.service_accounts[0].scopes, [CLOUD_PLATFORM]);
        assert!(settings.cache.min_remaining > STALE_THRESHOLD);
        assert_eq!(settings.project.universe_domain, "googleapis.com");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn environment_and_overrides_win_over_the_file() {
        let dir = temp_dir("env");
        let file = write(&dir, "sidecar.toml", MINIMAL);
        let environment = config::Map::from([
            (
                "SIDECAR__BROKER__ADDRESS".to_owned(),
                "https://other:9443".to_owned(),
            ),
            ("SIDECAR__CACHE__REFRESH_AHEAD".to_owned(), "10m".to_owned()),
            (
                "SIDECAR__PROJECT__NUMERIC_PROJECT_ID".to_owned(),
                "42".to_owned(),
            ),
        ]);
        let settings = Settings::load(
            &file,
            Some(environment),
            &[("server.listen", "127.0.0.1:9999".to_owned())],
        )
        .expect("loads");
        assert_eq!(settings.broker.address, "https://other:9443");
        assert_eq!(settings.cache.refresh_ahead, Duration::from_secs(600));
        assert_eq!(settings.project.numeric_project_id, "42");
        assert_eq!(settings.server.listen.port(), 9999);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let mut settings = Settings::new(
            BrokerSettings::new(
                " ",
                TlsFiles {
                    ca: "ca".into(),
                    cert: "c".into(),
                    key: "k".into(),
                },
            ),
            ProjectSettings::new("", "12a"),
            vec![
                ServiceAccountSettings {
                    default: true,
                    scopes: vec!["not a scope".to_owned()],
                    credential: Some(String::new()),
                    ..ServiceAccountSettings::new("default")
                },
                ServiceAccountSettings {
                    default: true,
                    allowed_audiences: Some(vec![" ".to_owned()]),
                    ..ServiceAccountSettings::new("b@p.iam.gserviceaccount.com")
                },
                ServiceAccountSettings::new("B@p.iam.gserviceaccount.com"),
            ],
        );
        settings.cache.min_remaining = STALE_THRESHOLD;
        settings.cache.refresh_ahead = Duration::from_secs(200);
        settings.server.max_connections = 0;
        settings.broker.call_timeout = Duration::ZERO;
        let Err(SettingsError::Invalid(problems)) = settings.validate() else {
            panic!("must be refused");
        };
        let text = problems.join("\n");
        for needle in [
            "broker.address",
            "broker.call_timeout: must be positive",
            "cache.min_remaining: must be more than 225s",
            "cache.refresh_ahead",
            "server.max_connections",
            "project.project_id",
            "project.numeric_project_id",
            "exactly one account must have default = true (2 do)",
            "service_accounts[0].email",
            "service_accounts[0].credential",
            "service_accounts[0].scopes[0]",
            "service_accounts[1].allowed_audiences[0]",
            "service_accounts[2].email: \"B@p.iam.gserviceaccount.com\" is listed twice",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = temp_dir("unknown");
        let file = write(
            &dir,
            "sidecar.toml",
            &format!("{MINIMAL}\n[cache]\nrefresh_aheda = \"5m\"\n"),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[])
            .expect_err("a typo is an error")
            .to_string();
        assert!(error.contains("refresh_aheda"), "{error}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
