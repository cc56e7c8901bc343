//! Application Default Credentials: Google's discovery of the credential a program runs with
//! (google-protocols.md §2.7), so that a broker on GKE or Cloud Run gets its own identity with
//! no key at all.
//!
//! See <https://cloud.google.com/docs/authentication/application-default-credentials>.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::TokenSource;

use crate::credential_file::{BaseWrapper, CredentialFile};
use crate::env::{CLOUDSDK_CONFIG, Env, GOOGLE_APPLICATION_CREDENTIALS, HOME, NO_GCE_CHECK};
use crate::metadata::{self, DEFAULT_METADATA_ACCOUNT, MetadataSource, metadata_base_url};
use crate::{BackendError, GoogleEndpoints, HttpClient};

/// The name of gcloud's Application Default Credentials file in its configuration directory.
const WELL_KNOWN_FILE: &str = "application_default_credentials.json";
/// How long the metadata server has to answer the ping by default (Python google-auth's).
pub const DEFAULT_METADATA_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`find_default_credentials`] needs.
#[derive(Clone)]
pub struct AdcOptions {
    /// Google's endpoints (the metadata server's, the token endpoint, ...).
    pub endpoints: GoogleEndpoints,
    /// The HTTP client.
    pub http: HttpClient,
    /// Where the environment variables come from ([`Env::process`] by default).
    pub env: Env,
    /// How long the metadata server has to answer the ping.
    pub metadata_ping_timeout: Duration,
    /// Wraps the base of an `impersonated_service_account` file (the server's cache).
    pub wrap_base: Option<BaseWrapper>,
}

impl fmt::Debug for AdcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdcOptions")
            .field("endpoints", &self.endpoints)
            .field("metadata_ping_timeout", &self.metadata_ping_timeout)
            .field("wrap_base", &self.wrap_base.is_some())
            .finish_non_exhaustive()
    }
}

impl AdcOptions {
    /// Options reading the process environment, with the default ping timeout and no base
    /// wrapper.
    pub fn new(endpoints: GoogleEndpoints, http: HttpClient) -> Self {
        Self {
            endpoints,
            http,
            env: Env::process(),
            metadata_ping_timeout: DEFAULT_METADATA_PING_TIMEOUT,
            wrap_base: None,
        }
    }
}

/// Where Application Default Credentials were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdcOrigin {
    /// The file `GOOGLE_APPLICATION_CREDENTIALS` names.
    EnvironmentVariable(PathBuf),
    /// gcloud's well-known file.
    WellKnownFile(PathBuf),
    /// The metadata server at this base URL.
    MetadataServer(String),
}

impl fmt::Display for AdcOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EnvironmentVariable(path) => {
                write!(f, "{GOOGLE_APPLICATION_CREDENTIALS} ({})", path.display())
            }
            Self::WellKnownFile(path) => {
                write!(f, "gcloud's well-known file {}", path.display())
            }
            Self::MetadataServer(url) => write!(f, "the metadata server at {url}"),
        }
    }
}

/// The credential Application Default Credentials found, and where.
#[derive(Debug, Clone)]
pub struct ApplicationDefaultCredentials {
    /// Its source, of whichever kind it is ([`TokenSource::kind`] says).
    pub source: Arc<dyn TokenSource>,
    /// Where it was found, for logs.
    pub origin: AdcOrigin,
}

/// Finds the Application Default Credentials, in Google's order, and builds their source:
///
/// 1. the file `GOOGLE_APPLICATION_CREDENTIALS` names, when set: a `service_account`,
///    `authorized_user`, `impersonated_service_account` or `external_account` file (see
///    [`CredentialFile`]; an `executable` source is refused). A broken, missing or
///    unsupported one is an error: the search does not go on;
/// 2. gcloud's well-known file, `$CLOUDSDK_CONFIG/application_default_credentials.json`, else
///    `$HOME/.config/gcloud/application_default_credentials.json`, when it exists;
/// 3. the metadata server, unless `NO_GCE_CHECK=true`: at [`metadata_base_url`] (so
///    `GCE_METADATA_HOST` counts), pinged once with `GET {base}/` and `Metadata-Flavor:
///    Google` within [`AdcOptions::metadata_ping_timeout`]; it is there when it answers 200
///    with that header. Then a [`MetadataSource`] for the `default` account.
///
/// Environment variables are read from [`AdcOptions::env`]; an empty one counts as unset.
///
/// # Errors
///
/// - [`BackendError::NoDefaultCredentials`] listing each step and why it found nothing;
/// - the errors of reading, parsing and building the credential found (such as
///   [`BackendError::UnsupportedCredentialType`] or [`BackendError::Discovery`]).
pub async fn find_default_credentials(
    options: &AdcOptions,
) -> Result<ApplicationDefaultCredentials, BackendError> {
    let env = &options.env;
    let mut tried = Vec::new();

    match env.get(GOOGLE_APPLICATION_CREDENTIALS) {
        Some(path) => {
            let path = PathBuf::from(path);
            let origin = AdcOrigin::EnvironmentVariable(path.clone());
            return load(&path, origin, options).await;
        }
        None => tried.push(format!("{GOOGLE_APPLICATION_CREDENTIALS} (unset)")),
    }

    match well_known_file(env) {
        Some(path) if path.exists() => {
            let origin = AdcOrigin::WellKnownFile(path.clone());
            return load(&path, origin, options).await;
        }
        Some(path) => tried.push(format!(
            "gcloud's well-known file {} (not found)",
            path.display()
        )),
        None => tried.push(format!(
            "gcloud's well-known file ({CLOUDSDK_CONFIG} and {HOME} unset)"
        )),
    }

    if env
        .get(NO_GCE_CHECK)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        tried.push(format!(
            "the metadata server (skipped: {NO_GCE_CHECK}=true)"
        ));
    } else {
        let base = metadata_base_url(&options.endpoints, env)?;
        match metadata::ping(&options.http, &base, options.metadata_ping_timeout).await {
            Ok(()) => {
                let source = MetadataSource::discover(
                    DEFAULT_METADATA_ACCOUNT,
                    options.endpoints.clone(),
                    options.http.clone(),
                    env,
                )
                .await?;
                return Ok(found(Arc::new(source), AdcOrigin::MetadataServer(base)));
            }
            Err(why) => tried.push(format!("the metadata server at {base} ({why})")),
        }
    }
    Err(BackendError::NoDefaultCredentials {
        tried: tried.join("; "),
    })
}

/// gcloud's Application Default Credentials file, from `CLOUDSDK_CONFIG` or `HOME`.
fn well_known_file(env: &Env) -> Option<PathBuf> {
    match env.get(CLOUDSDK_CONFIG) {
        Some(dir) => Some(PathBuf::from(dir).join(WELL_KNOWN_FILE)),
        None => env.get(HOME).map(|home| {
            PathBuf::from(home)
                .join(".config/gcloud")
                .join(WELL_KNOWN_FILE)
        }),
    }
}

/// Builds the source of the credential file at `path`.
async fn load(
    path: &Path,
    origin: AdcOrigin,
    options: &AdcOptions,
) -> Result<ApplicationDefaultCredentials, BackendError> {
    let source = CredentialFile::from_file(path)?
        .into_source(
            &options.endpoints,
            &options.http,
            options.wrap_base.as_ref(),
            &options.env,
        )
        .await?;
    Ok(found(source, origin))
}

fn found(source: Arc<dyn TokenSource>, origin: AdcOrigin) -> ApplicationDefaultCredentials {
    tracing::debug!(
        kind = source.kind(),
        principal = source.principal(),
        %origin,
        "Application Default Credentials found"
    );
    ApplicationDefaultCredentials { source, origin }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_file_follows_cloudsdk_config_then_home() {
        let both = Env::from_vars([(CLOUDSDK_CONFIG, "/etc/gcloud"), (HOME, "/home/u")]);
        assert_eq!(
            well_known_file(&both),
            Some(PathBuf::from(
                "/etc/gcloud/application_default_credentials.json"
            ))
        );
        let home = Env::from_vars([(CLOUDSDK_CONFIG, ""), (HOME, "/home/u")]);
        assert_eq!(
            well_known_file(&home),
            Some(PathBuf::from(
                "/home/u/.config/gcloud/application_default_credentials.json"
            ))
        );
        assert_eq!(well_known_file(&Env::from_vars([("X", "y")])), None);
        assert_eq!(
            AdcOrigin::MetadataServer("http://127.0.0.1:1".into()).to_string(),
            "the metadata server at http://127.0.0.1:1"
        );
    }
}
