//! The broker's configuration: a TOML file, `BROKER__SECTION__KEY` environment overrides and
//! command-line overrides, in that order of precedence (lowest first).
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:8443"
//! rpc_timeout = "10s"           # the longest any RPC may take (the caller's deadline may be shorter)
//! max_concurrent_rpcs = 1024    # beyond this, UNAVAILABLE (OVERLOADED) with RetryInfo
//! max_request_bytes = 65536
//! shutdown_grace = "15s"        # how long SIGTERM waits for in-flight calls
//!
//! [tls]
//! cert = "/etc/token-broker/tls/server.pem"
//! key = "/etc/token-broker/tls/server-key.pem"
//! client_cas = ["/etc/token-broker/tls/clients-ca.pem"]
//! reload_interval = "10s"       # how often the files are checked for changes
//!
//! [policy]
//! file = "/etc/token-broker/policy.toml"
//!
//! [google]                      # every endpoint is overridable; defaults are Google's
//! token_url = "https://oauth2.googleapis.com/token"
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
//! refresh_window = "5m"
//!
//! [[credentials]]
//! name = "prod-deployer"
//! kind = "service_account"
//! key_file = "/etc/token-broker/keys/deployer.json"
//! ```
//!
//! Relative paths are relative to the directory of the configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_backends::{GoogleEndpoints, HttpConfig};
use serde::Deserialize;

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
    /// The longest any RPC may take.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// RPCs served at once; more are refused with UNAVAILABLE (OVERLOADED).
    pub max_concurrent_rpcs: usize,
    /// Largest request message, bytes.
    pub max_request_bytes: usize,
    /// How long a TLS handshake may take.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long shutdown waits for in-flight RPCs.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            rpc_timeout: Duration::from_secs(10),
            max_concurrent_rpcs: 1024,
            max_request_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(15),
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
    /// Trust bundles for client certificates, PEM.
    pub client_cas: Vec<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

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

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Whether tokens are cached at all (off only for measurements).
    pub enabled: bool,
    /// Most tokens held.
    pub max_entries: u64,
    /// A hit with less than this left returns the token and refreshes it in the background.
    #[serde(with = "humantime_serde")]
    pub refresh_window: Duration,
    /// A token with less than this left is never handed out without a refresh attempt.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 10_000,
            refresh_window: Duration::from_secs(300),
            safety_margin: Duration::from_secs(60),
        }
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
}

impl CredentialSettings {
    /// The name policies and requests use.
    pub fn name(&self) -> &str {
        match self {
            Self::ServiceAccount { name, .. } => name,
        }
    }

    /// The kind's name, as in configuration and ErrorInfo metadata.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount { .. } => "service_account",
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
                    .list_separator(",")
                    .with_list_parse_key("tls.client_cas")
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
        self.tls.client_cas.iter_mut().for_each(resolve);
        resolve(&mut self.policy.file);
        for credential in &mut self.credentials {
            match credential {
                CredentialSettings::ServiceAccount { key_file, .. } => resolve(key_file),
            }
        }
    }

    /// Every problem that deserialization cannot catch, each with its location.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        if self.tls.client_cas.is_empty() {
            problems.push("tls.client_cas: at least one trust bundle is required (clients must present certificates)".to_owned());
        }
        if self.server.max_concurrent_rpcs == 0 {
            problems.push("server.max_concurrent_rpcs: must be at least 1".to_owned());
        }
        if self.server.rpc_timeout.is_zero() {
            problems.push("server.rpc_timeout: must be positive".to_owned());
        }
        if self.http.retry.max_attempts == 0 {
            problems.push("http.retry.max_attempts: must be at least 1".to_owned());
        }
        if self.cache.safety_margin >= self.cache.refresh_window && self.cache.enabled {
            problems
                .push("cache.safety_margin: must be shorter than cache.refresh_window".to_owned());
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
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(problems))
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
client_cas = ["ca.pem"]

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
            &MINIMAL
                .replace("name = \"dev\"", "name = \"Dev_1\"")
                .replace("[\"ca.pem\"]", "[]"),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[]).expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains("credentials[0].name"), "{text}");
        assert!(text.contains("tls.client_cas"), "{text}");

        let file = write(
            &dir,
            &format!("{MINIMAL}\n[server]\nrpc_timeout = \"ten seconds\"\n"),
        );
        let error = Settings::load(&file, Some(config::Map::new()), &[]).expect_err("bad duration");
        assert!(error.to_string().contains("rpc_timeout"), "{error}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
