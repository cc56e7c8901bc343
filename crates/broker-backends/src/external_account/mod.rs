//! `external_account` credentials: workload and workforce identity federation
//! (google-protocols.md §2.4, §4, §5, §6). A subject token from the workload's own identity
//! provider (a file, a URL, an executable, AWS, an X.509 certificate) is exchanged at the
//! Security Token Service for a federated Google access token, and optionally that token
//! impersonates a service account through IAM Credentials.
//!
//! Files are read exactly as `gcloud iam workload-identity-pools create-cred-config` and
//! `gcloud iam workforce-pools create-cred-config` write them: every field is honoured, and a
//! field the broker does not know, or a credential source it does not support, is a load
//! error naming the field, never silently ignored. One file per credential source:
//! `file.rs`, `url.rs`, `executable.rs`, `aws.rs` (signing in `sigv4.rs`) and
//! `certificate.rs`.
//!
//! See <https://cloud.google.com/iam/docs/workload-identity-federation>,
//! <https://cloud.google.com/iam/docs/workforce-identity-federation> and
//! <https://google.aip.dev/auth/4117>.

mod aws;
mod certificate;
mod executable;
mod fields;
mod file;
mod format;
mod sigv4;
mod url;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_core::{
    AccessBoundary, Capabilities, Clock, IdTokenRequest, Rejection, ScopeSet, Secret, SourceError,
    SourceFuture, SystemClock, Token, TokenRequest, TokenSource,
};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt as _;
use zeroize::Zeroizing;

pub use executable::{DEFAULT_EXECUTABLE_TIMEOUT, EXECUTABLE_ENVIRONMENT};

use self::aws::AwsSource;
use self::certificate::CertificateSource;
use self::executable::ExecutableSource;
use self::fields::Fields;
use self::file::FileSource;
use self::url::UrlSource;
use crate::endpoints::{PlainHttp, check_url};
use crate::http::HttpClient;
use crate::impersonated::account;
use crate::sts::{self, ACCESS_TOKEN_TYPE, StsClientAuth, StsExchange};
use crate::{
    BackendError, CLOUD_PLATFORM_SCOPE, Env, GoogleEndpoints, checks, credential_file, iam,
};

/// The most a credential source's content may hold: a token file, a URL's answer, an
/// executable's output, a certificate file. The broker's ExchangeToken RPC accepts subject
/// tokens of the same size.
pub const MAX_SUBJECT_TOKEN_SOURCE_BYTES: usize = 64 * 1024;
/// The scope of the federated token that impersonates a service account (Python
/// google-auth's choice; Go asks for `cloud-platform`): enough for IAM Credentials.
pub const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
/// `service_account_impersonation.token_lifetime_seconds` when the file gives none.
pub const DEFAULT_IMPERSONATED_LIFETIME: Duration = Duration::from_secs(3600);
/// The shortest `token_lifetime_seconds` (gcloud's bound).
const MIN_IMPERSONATED_LIFETIME_SECS: u64 = 600;
/// The longest `token_lifetime_seconds`: 12 hours, where the service account is exempted
/// from the one-hour limit (IAM decides).
const MAX_IMPERSONATED_LIFETIME_SECS: u64 = 43_200;
/// Federated tokens live about an hour (STS decides, never longer than the subject token).
const FEDERATED_LIFETIME: Duration = Duration::from_secs(3600);
/// The default universe.
const DEFAULT_UNIVERSE_DOMAIN: &str = "googleapis.com";

/// `subject_token_type` of OIDC JWTs.
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `subject_token_type` of OIDC ID tokens.
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// `subject_token_type` of SAML 2.0 assertions.
const SAML2_TYPE: &str = "urn:ietf:params:oauth:token-type:saml2";
/// `subject_token_type` of AWS signed requests.
const AWS4_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
/// `subject_token_type` of X.509 federation.
const MTLS_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";

/// Why a bounded read of a local file failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be opened or read.
    Io(std::io::Error),
    /// The file holds more than the bound.
    TooLarge(usize),
    /// The file is not UTF-8.
    NotUtf8,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "{error}"),
            Self::TooLarge(max) => write!(f, "is larger than {max} bytes"),
            Self::NotUtf8 => f.write_str("is not UTF-8"),
        }
    }
}

/// Reads at most `max` bytes of UTF-8 text from `path` into zeroizing memory.
pub(crate) async fn read_bounded(path: &Path, max: usize) -> Result<Zeroizing<String>, ReadError> {
    let file = tokio::fs::File::open(path).await.map_err(ReadError::Io)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(max + 1));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut bytes)
        .await
        .map_err(ReadError::Io)?;
    if bytes.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(error) => {
            drop(Zeroizing::new(error.into_bytes()));
            Err(ReadError::NotUtf8)
        }
    }
}

/// What a credential source needs when it gets a subject token.
pub(crate) struct SubjectContext<'a> {
    /// The HTTP client.
    pub(crate) http: &'a HttpClient,
    /// The clock (executable expiries, AWS signature dates).
    pub(crate) clock: &'a dyn Clock,
    /// The environment (AWS variables, the executable's environment, the certificate
    /// configuration).
    pub(crate) env: &'a Env,
    /// The credential's `audience`.
    pub(crate) audience: &'a str,
    /// The credential's `subject_token_type`.
    pub(crate) subject_token_type: &'a str,
    /// The impersonated service account, when there is one.
    pub(crate) impersonated_email: Option<&'a str>,
    /// The call's deadline.
    pub(crate) deadline: Option<Instant>,
}

/// Where the subject token comes from: exactly one `credential_source`.
#[derive(Debug)]
enum CredentialSource {
    File(FileSource),
    Url(UrlSource),
    Executable(ExecutableSource),
    Aws(AwsSource),
    Certificate(CertificateSource),
}

impl CredentialSource {
    /// The source's name, as this documentation and logs call it.
    fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Url(_) => "url",
            Self::Executable(_) => "executable",
            Self::Aws(_) => "aws",
            Self::Certificate(_) => "certificate",
        }
    }

    /// Reads `credential_source`. The source is told by its fields, as Google's clients tell
    /// it: `environment_id` is AWS (whose `url` is the metadata service's), otherwise exactly
    /// one of `file`, `url`, `executable` and `certificate`.
    fn parse(mut source: Fields<'_>) -> Result<Self, BackendError> {
        const KINDS: [&str; 4] = [
            "credential_source.file",
            "credential_source.url",
            "credential_source.executable",
            "credential_source.certificate",
        ];
        let aws = source.has("credential_source.environment_id");
        let present: Vec<&'static str> = KINDS
            .into_iter()
            .filter(|path| source.has(path) && !(aws && *path == "credential_source.url"))
            .collect();
        let parsed = match (aws, present.as_slice()) {
            (true, []) => Self::Aws(AwsSource::parse(&mut source)?),
            (false, ["credential_source.file"]) => Self::File(FileSource::parse(&mut source)?),
            (false, ["credential_source.url"]) => Self::Url(UrlSource::parse(&mut source)?),
            (false, ["credential_source.executable"]) => {
                Self::Executable(ExecutableSource::parse(&mut source)?)
            }
            (false, ["credential_source.certificate"]) => {
                Self::Certificate(CertificateSource::parse(&mut source)?)
            }
            (false, []) => {
                return Err(source.error(
                    "credential_source",
                    "names no source: one of file, url, executable, environment_id (aws) or certificate is required",
                ));
            }
            (_, _) => {
                return Err(source.error(
                    "credential_source",
                    "names more than one source: file, url, executable, environment_id (aws) and certificate are mutually exclusive",
                ));
            }
        };
        source.finish()?;
        Ok(parsed)
    }

    /// The subject token types the source can give.
    fn token_types(&self) -> &'static [&'static str] {
        match self {
            Self::Aws(_) => &[AWS4_TYPE],
            Self::Certificate(_) => &[MTLS_TYPE],
            Self::File(_) | Self::Url(_) | Self::Executable(_) => {
                &[JWT_TYPE, ID_TOKEN_TYPE, SAML2_TYPE]
            }
        }
    }
}

/// The service-account impersonation of an `external_account` file.
#[derive(Debug, Clone)]
struct Impersonation {
    /// `service_account_impersonation_url`, called verbatim.
    url: reqwest::Url,
    /// The same URL with `:generateIdToken` in place of `:generateAccessToken`.
    id_token_url: reqwest::Url,
    /// The service account, as the URL names it.
    email: String,
    /// `service_account_impersonation.token_lifetime_seconds`.
    lifetime: Duration,
}

/// A parsed `external_account` credential file (google-protocols.md §2.4). Every field is
/// honoured:
///
/// | field | how |
/// |---|---|
/// | `type` | must be `external_account` |
/// | `audience` | required; the STS `audience`; tells workforce pools (`//iam.googleapis.com/locations/*/workforcePools/...`) from workload pools; the impersonation-less principal is its pool |
/// | `subject_token_type` | required; the STS `subject_token_type`; must fit the source (`aws4_request` for `aws`, `mtls` for `certificate`, `jwt`, `id_token` or `saml2` otherwise) |
/// | `token_url` | the STS URL, called verbatim; default the broker's configured STS URL (`https://sts.googleapis.com/v1/token` in production), or `https://sts.<universe_domain>/v1/token` in another universe. `https`, or `http` to loopback |
/// | `token_info_url` | checked like `token_url` and kept ([`ExternalAccountConfig::token_info_url`]); Google's clients use it only to introspect, never to mint |
/// | `service_account_impersonation_url` | IAM `generateAccessToken` is called at this URL verbatim (`generateIdToken` at the same URL with that method), with the federated token; the service account is the text between its last `/` and `:generateAccessToken` |
/// | `service_account_impersonation.token_lifetime_seconds` | the impersonated tokens' lifetime, 600 to 43200 (default 3600); only with impersonation |
/// | `workforce_pool_user_project` | workforce audiences only; sent as STS `options.userProject` when there is no `client_id` (as Google's clients do) |
/// | `client_id`, `client_secret` | HTTP Basic client authentication at STS; the secret zeroized, never shown, only with an id |
/// | `quota_project_id` | sent as `x-goog-user-project` on the IAM Credentials calls (as Python google-auth does), and kept ([`ExternalAccountConfig::quota_project_id`]) |
/// | `universe_domain` | default `googleapis.com`; the default `token_url`, and workforce audiences may name `//iam.<universe_domain>/` |
/// | `credential_source` | exactly one of `file`, `url`, `executable`, `environment_id` (aws), `certificate`; see each source |
///
/// `Debug` never shows the client secret or a URL source's header values; URLs, which it
/// shows, may not hold a user name or password (refused as a load error).
pub struct ExternalAccountConfig {
    origin: String,
    audience: String,
    subject_token_type: String,
    token_url: Option<String>,
    token_info_url: Option<String>,
    impersonation: Option<Impersonation>,
    workforce_pool_user_project: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    quota_project_id: Option<String>,
    universe_domain: String,
    source: CredentialSource,
}

impl fmt::Debug for ExternalAccountConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountConfig")
            .field("origin", &self.origin)
            .field("audience", &self.audience)
            .field("subject_token_type", &self.subject_token_type)
            .field("token_url", &self.token_url)
            .field(
                "impersonated_email",
                &self.impersonation.as_ref().map(|i| &i.email),
            )
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.is_some())
            .field("quota_project_id", &self.quota_project_id)
            .field("universe_domain", &self.universe_domain)
            .field("credential_source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ExternalAccountConfig {
    /// Reads and parses an `external_account` file.
    ///
    /// # Errors
    ///
    /// [`BackendError::ReadKeyFile`], or a parse error: see [`ExternalAccountConfig::parse`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BackendError> {
        let path = path.as_ref();
        let text = credential_file::read(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `external_account` JSON held in memory (errors call its origin "inline JSON").
    ///
    /// # Errors
    ///
    /// See [`ExternalAccountConfig::parse`].
    pub fn from_json(json: &str) -> Result<Self, BackendError> {
        Self::parse(json, "(inline JSON)")
    }

    /// Parses `external_account` JSON; `origin` (a path or a description) names it in errors.
    ///
    /// # Errors
    ///
    /// [`BackendError`] naming `origin` and the field at fault (with its path, such as
    /// `credential_source.executable.timeout_millis`), never quoting a secret:
    /// [`BackendError::UnknownField`] for a field the broker does not know,
    /// [`BackendError::KeyFileField`] for a missing, mistyped or invalid one (a URL that is
    /// not `https`, a lifetime out of range, a `workforce_pool_user_project` for a workload
    /// pool, a credential source missing, ambiguous or not fitting the
    /// `subject_token_type`...), [`BackendError::WrongKeyType`] (or
    /// [`BackendError::UnsupportedCredentialType`]) when `type` is not `external_account`.
    pub fn parse(json: &str, origin: &str) -> Result<Self, BackendError> {
        let value = credential_file::parse_json(json, origin)?;
        Self::from_object(credential_file::into_object(value, origin)?, origin)
    }

    /// Parses a file held as a JSON object.
    pub(crate) fn from_object(
        mut object: Map<String, Value>,
        origin: &str,
    ) -> Result<Self, BackendError> {
        // Moved into zeroizing storage before anything else can fail.
        let client_secret = match object.remove("client_secret") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(Secret::new(s))),
            Some(_) => Err(credential_file::field_error(
                origin,
                "client_secret",
                "must be a string",
            )),
        };
        let kind = credential_file::credential_type(&object, origin)?;
        if kind != "external_account" {
            return Err(credential_file::unsupported_type(
                origin,
                kind,
                "\"external_account\"",
            ));
        }
        let client_secret = client_secret?;
        let mut file = Fields::new(object, origin, "");
        file.string("type")?;
        let audience = file.required_string("audience")?;
        let subject_token_type = file.required_string("subject_token_type")?;
        let mut url = |path: &'static str| -> Result<Option<String>, BackendError> {
            let Some(url) = file.string(path)? else {
                return Ok(None);
            };
            check_url(&url, PlainHttp::Loopback).map_err(|reason| file.error(path, &reason))?;
            Ok(Some(url))
        };
        let token_url = url("token_url")?;
        let token_info_url = url("token_info_url")?;
        let impersonation_url = url("service_account_impersonation_url")?;
        let lifetime = match file.object("service_account_impersonation")? {
            Some(mut options) => {
                let seconds =
                    options.integer("service_account_impersonation.token_lifetime_seconds")?;
                options.finish()?;
                seconds
            }
            None => None,
        };
        let impersonation = match impersonation_url {
            Some(url) => Some(impersonation(&file, &url, lifetime)?),
            None if lifetime.is_some() => {
                return Err(file.error(
                    "service_account_impersonation.token_lifetime_seconds",
                    "is only for service-account impersonation, and service_account_impersonation_url is not set",
                ));
            }
            None => None,
        };
        let universe_domain = file
            .string("universe_domain")?
            .unwrap_or_else(|| DEFAULT_UNIVERSE_DOMAIN.to_owned());
        if !is_domain(&universe_domain) {
            return Err(file.error("universe_domain", "is not a domain name"));
        }
        let workforce = is_workforce_audience(&audience, &universe_domain);
        let workforce_pool_user_project = file.string("workforce_pool_user_project")?;
        if workforce_pool_user_project.is_some() && !workforce {
            return Err(file.error(
                "workforce_pool_user_project",
                "is only for workforce pools, and the audience names a workload identity pool",
            ));
        }
        let client_id = file.string("client_id")?;
        if client_secret.is_some() && client_id.is_none() {
            return Err(file.error("client_secret", "is given without a client_id"));
        }
        let quota_project_id = file.string("quota_project_id")?;
        let source = match file.object("credential_source")? {
            Some(source) => CredentialSource::parse(source)?,
            None => return Err(file.error("credential_source", "is missing")),
        };
        if !source.token_types().contains(&subject_token_type.as_str()) {
            return Err(file.error(
                "subject_token_type",
                &format!(
                    "does not fit a credential source of kind {}: expected {}",
                    source.kind(),
                    source.token_types().join(" or ")
                ),
            ));
        }
        file.finish()?;
        Ok(Self {
            origin: origin.to_owned(),
            audience,
            subject_token_type,
            token_url,
            token_info_url,
            impersonation,
            workforce_pool_user_project,
            client_id,
            client_secret,
            quota_project_id,
            universe_domain,
            source,
        })
    }

    /// `audience`: the provider's full resource name.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// `subject_token_type`.
    pub fn subject_token_type(&self) -> &str {
        &self.subject_token_type
    }

    /// `token_url`, when the file gives one.
    pub fn token_url(&self) -> Option<&str> {
        self.token_url.as_deref()
    }

    /// `token_info_url`, when the file gives one.
    pub fn token_info_url(&self) -> Option<&str> {
        self.token_info_url.as_deref()
    }

    /// `service_account_impersonation_url`, when the credential impersonates.
    pub fn service_account_impersonation_url(&self) -> Option<&str> {
        self.impersonation.as_ref().map(|i| i.url.as_str())
    }

    /// The impersonated service account, when there is one.
    pub fn impersonated_email(&self) -> Option<&str> {
        self.impersonation.as_ref().map(|i| i.email.as_str())
    }

    /// The impersonated tokens' lifetime, when the credential impersonates.
    pub fn impersonated_lifetime(&self) -> Option<Duration> {
        self.impersonation.as_ref().map(|i| i.lifetime)
    }

    /// Whether the audience is a workforce pool's.
    pub fn is_workforce(&self) -> bool {
        is_workforce_audience(&self.audience, &self.universe_domain)
    }

    /// `workforce_pool_user_project`.
    pub fn workforce_pool_user_project(&self) -> Option<&str> {
        self.workforce_pool_user_project.as_deref()
    }

    /// `client_id`.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// `quota_project_id`.
    pub fn quota_project_id(&self) -> Option<&str> {
        self.quota_project_id.as_deref()
    }

    /// `universe_domain` (`googleapis.com` by default).
    pub fn universe_domain(&self) -> &str {
        &self.universe_domain
    }

    /// The credential source's kind: `file`, `url`, `executable`, `aws` or `certificate`.
    pub fn credential_source_kind(&self) -> &'static str {
        self.source.kind()
    }

    /// Builds the [`ExternalAccountSource`] the file describes.
    ///
    /// # Errors
    ///
    /// See [`ExternalAccountSource::new`].
    pub fn into_source(
        self,
        endpoints: GoogleEndpoints,
        http: HttpClient,
        options: ExternalAccountOptions,
    ) -> Result<ExternalAccountSource, BackendError> {
        ExternalAccountSource::new(self, endpoints, http, options)
    }
}

/// Reads `service_account_impersonation_url` (already checked as a URL) and the lifetime.
fn impersonation(
    file: &Fields<'_>,
    url: &str,
    lifetime: Option<u64>,
) -> Result<Impersonation, BackendError> {
    const FIELD: &str = "service_account_impersonation_url";
    const METHOD: &str = ":generateAccessToken";
    let invalid = || {
        file.error(
            FIELD,
            "does not end with /projects/-/serviceAccounts/EMAIL:generateAccessToken",
        )
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid())?;
    let path = parsed.path();
    let email = path
        .strip_suffix(METHOD)
        .and_then(|rest| rest.rsplit_once('/'))
        .map(|(_, email)| email)
        .ok_or_else(invalid)?;
    let email = account(email, FIELD).map_err(|_| invalid())?;
    let mut id_token_url = parsed.clone();
    id_token_url.set_path(&format!(
        "{}:generateIdToken",
        path.strip_suffix(METHOD).unwrap_or(path)
    ));
    let lifetime = match lifetime {
        None => DEFAULT_IMPERSONATED_LIFETIME,
        Some(seconds)
            if (MIN_IMPERSONATED_LIFETIME_SECS..=MAX_IMPERSONATED_LIFETIME_SECS)
                .contains(&seconds) =>
        {
            Duration::from_secs(seconds)
        }
        Some(_) => {
            return Err(file.error(
                "service_account_impersonation.token_lifetime_seconds",
                "must be between 600 and 43200 seconds",
            ));
        }
    };
    Ok(Impersonation {
        url: parsed,
        id_token_url,
        email,
        lifetime,
    })
}

/// A plausible DNS name: dot-separated labels of letters, digits and hyphens.
fn is_domain(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether `audience` names a workforce pool: `//iam.googleapis.com/locations/<l>/workforcePools/`
/// (Python google-auth's test), or the same under `//iam.<universe_domain>/`.
fn is_workforce_audience(audience: &str, universe_domain: &str) -> bool {
    let Some(rest) = audience.strip_prefix("//iam.") else {
        return false;
    };
    let Some((host, path)) = rest.split_once('/') else {
        return false;
    };
    if host != DEFAULT_UNIVERSE_DOMAIN && host != universe_domain {
        return false;
    }
    let mut segments = path.split('/');
    matches!(
        (segments.next(), segments.next(), segments.next()),
        (Some("locations"), Some(location), Some("workforcePools")) if !location.is_empty()
    )
}

/// The principal of a federated token without impersonation: the pool's principal set,
/// `principalSet://iam.googleapis.com/<pool>/*` (the broker cannot tell which principal of
/// the pool the subject token maps to: that depends on the provider's attribute mapping).
/// An audience that names no pool provider is its own principal.
pub fn pool_principal_set(audience: &str) -> String {
    audience
        .strip_prefix("//")
        .and_then(|name| name.split_once("/providers/"))
        .map_or_else(
            || audience.to_owned(),
            |(pool, _)| format!("principalSet://{pool}/*"),
        )
}

/// The attempt of a credential source's HTTP answer other than 200 (`message` says which):
/// retried when the status is transient, else the source is unavailable.
pub(crate) fn not_ok<T>(
    upstream: String,
    status: reqwest::StatusCode,
    message: String,
) -> crate::http::Attempt<T> {
    use crate::http::Attempt;
    if crate::oauth::is_transient_status(status) {
        Attempt::Retry(message)
    } else {
        Attempt::Fail(SourceError::Unavailable {
            upstream,
            status: broker_core::UpstreamStatus::Http(status.as_u16()),
            message,
            retry_after: None,
        })
    }
}

/// What an [`ExternalAccountSource`] is allowed to do and where it looks.
#[derive(Clone, Default)]
pub struct ExternalAccountOptions {
    /// Whether an `executable` credential source may run: the broker's configuration
    /// (`allow_executable`) sets it, the equivalent of Google's
    /// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`. Default false: a file with an
    /// executable source is refused when the source is built.
    pub allow_executables: bool,
    /// The environment: `AWS_*` for an `aws` source, `GOOGLE_API_CERTIFICATE_CONFIG` and
    /// `HOME` for a `certificate` source, and the variables an executable gets
    /// ([`EXECUTABLE_ENVIRONMENT`]). [`Env::process`] by default.
    pub env: Env,
    /// For a `certificate` source: PEM certificates the mTLS connection to STS and IAM
    /// trusts instead of the platform's roots (an emulator in tests, a private endpoint).
    pub mtls_root_certificates: Option<Vec<u8>>,
}

impl fmt::Debug for ExternalAccountOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountOptions")
            .field("allow_executables", &self.allow_executables)
            .field(
                "mtls_root_certificates",
                &self.mtls_root_certificates.as_ref().map(Vec::len),
            )
            .finish_non_exhaustive()
    }
}

/// A [`TokenSource`] for an `external_account` credential (workload or workforce identity
/// federation). Its kind is `external_account`; its principal is the impersonated service
/// account, or else the pool's principal set
/// (`principalSet://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/*`,
/// or `.../workforcePools/POOL/*`).
///
/// Every fetch: the credential source gives a subject token (read again each time); STS
/// exchanges it ([`sts::exchange_token`] at the file's `token_url`, with the audience, the
/// client authentication, `userProject` for workforce pools without a client id, and the
/// scope: the request's, or [`IAM_SCOPE`] when impersonation follows, as Python google-auth
/// asks); then, with `service_account_impersonation_url`, IAM `generateAccessToken` at that
/// URL verbatim for the request's scopes and the configured lifetime. A request without
/// scopes gets `cloud-platform`. A request with an access boundary gets the token
/// downscoped through the broker's STS ([`GoogleEndpoints::sts_url`]). ID tokens come from
/// IAM `generateIdToken` when the credential impersonates (a federated identity has no ID
/// token of Google's). A `certificate` source makes its STS and IAM calls over mTLS with the
/// workload certificate. This source never caches.
///
/// It cannot act for a Workspace user or choose a lifetime (the file does: a longer one is
/// [`SourceError::Unsupported`], flow `extended_lifetime`), and workforce tokens cannot be
/// downscoped unless they impersonate (flow `access_boundary`).
///
/// Refusals ([`SourceError::Rejected`]) are classified as [`sts::exchange_token`] and
/// [`crate::IamCredentials`] say, except that on a fetch STS refuses the credential's own
/// subject token and configuration: what would be `InvalidArgument` (`subject_token`,
/// `audience`, ...) is `CredentialRejected` (an operator must fix it), unless it names the
/// request's `scopes`; likewise IAM's refusal of the configured `lifetime`. The subject
/// token's own failures come from its source (see each source); their `upstream` is the
/// host called, or `credential_source.file`, `credential_source.executable`,
/// `credential_source.certificate`.
pub struct ExternalAccountSource {
    config: ExternalAccountConfig,
    token_url: String,
    principal: String,
    endpoints: GoogleEndpoints,
    http: HttpClient,
    env: Env,
    mtls_roots: Option<Vec<u8>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for ExternalAccountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountSource")
            .field("principal", &self.principal)
            .field("token_url", &self.token_url)
            .field("config", &self.config)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl ExternalAccountSource {
    /// The source of `config`, calling Google's (or the emulator's) STS and IAM as the file
    /// says, and [`GoogleEndpoints::sts_url`] for downscoping (and as the default
    /// `token_url`). Uses the system clock; see [`ExternalAccountSource::with_clock`].
    ///
    /// # Errors
    ///
    /// - [`BackendError::ExecutableNotAllowed`] for an `executable` source when
    ///   [`ExternalAccountOptions::allow_executables`] is false;
    /// - [`BackendError::InvalidEndpoint`] if an endpoint URL is unusable.
    pub fn new(
        config: ExternalAccountConfig,
        endpoints: GoogleEndpoints,
        http: HttpClient,
        options: ExternalAccountOptions,
    ) -> Result<Self, BackendError> {
        endpoints.validate()?;
        if let CredentialSource::Executable(executable) = &config.source
            && !options.allow_executables
        {
            return Err(BackendError::ExecutableNotAllowed {
                origin: config.origin.clone(),
                command: executable.program().to_owned(),
            });
        }
        let token_url = match &config.token_url {
            Some(url) => url.clone(),
            None if config.universe_domain == DEFAULT_UNIVERSE_DOMAIN => endpoints.sts_url.clone(),
            None => format!("https://sts.{}/v1/token", config.universe_domain),
        };
        let principal = match &config.impersonation {
            Some(impersonation) => impersonation.email.clone(),
            None => pool_principal_set(&config.audience),
        };
        Ok(Self {
            config,
            token_url,
            principal,
            endpoints,
            http,
            env: options.env,
            mtls_roots: options.mtls_root_certificates,
            clock: Arc::new(SystemClock),
        })
    }

    /// Dates federated tokens, executable expiries and AWS signatures with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The credential's configuration.
    pub fn config(&self) -> &ExternalAccountConfig {
        &self.config
    }

    /// `audience`: the provider's full resource name.
    pub fn audience(&self) -> &str {
        self.config.audience()
    }

    /// The impersonated service account, when the credential impersonates one.
    pub fn impersonated_email(&self) -> Option<&str> {
        self.config.impersonated_email()
    }

    /// Whether the audience is a workforce pool's.
    pub fn is_workforce(&self) -> bool {
        self.config.is_workforce()
    }

    /// The STS URL exchanges are made at.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The principal of federated tokens: the pool's principal set (see
    /// [`ExternalAccountSource`]).
    pub fn federated_principal(&self) -> String {
        pool_principal_set(self.config.audience())
    }

    /// Exchanges a caller's subject token with this credential's configuration (the
    /// broker's ExchangeToken RPC naming this credential): the credential's audience, client
    /// authentication and `workforce_pool_user_project` (unless `user_project` gives
    /// another), then its service-account impersonation when configured, and downscoping by
    /// `access_boundary` through the broker's STS. The credential's own source is not used.
    /// Scopes: `scopes` (`cloud-platform` when empty) for the token returned; STS is asked
    /// for [`IAM_SCOPE`] when impersonation follows. The token's principal is the impersonated
    /// service account, or the pool's principal set.
    ///
    /// # Errors
    ///
    /// - [`SourceError::InvalidRequest`] (field `options.user_project`, nothing sent) for a
    ///   `user_project` with a workload pool, or with a credential that authenticates with a
    ///   client id (Google's clients never send both);
    /// - [`SourceError::Unsupported`] (flow `access_boundary`) for a boundary on workforce
    ///   tokens without impersonation;
    /// - the errors of [`sts::exchange_token`] (refusals of the subject token are the
    ///   caller's: `InvalidArgument`, field `subject_token`), of IAM Credentials and of
    ///   [`crate::downscope`].
    pub async fn exchange(
        &self,
        subject_token: &Secret,
        subject_token_type: &str,
        scopes: &ScopeSet,
        user_project: Option<&str>,
        access_boundary: Option<&AccessBoundary>,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        if user_project.is_some() {
            let why = if !self.is_workforce() {
                Some(
                    "a user project is only for workforce pools, and the credential's audience is a workload identity pool",
                )
            } else if self.config.client_id.is_some() {
                Some(
                    "the credential authenticates with a client id, which determines the user project",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(SourceError::InvalidRequest {
                    field: "options.user_project".to_owned(),
                    message: why.to_owned(),
                });
            }
        }
        if let Some(boundary) = access_boundary {
            self.check_boundary(boundary)?;
        }
        let scopes = default_scopes(scopes)?;
        let user_project = user_project.or(self.user_project());
        let token = self
            .federate(
                &self.http,
                subject_token,
                subject_token_type,
                &scopes,
                user_project,
                false,
                deadline,
            )
            .await?;
        sts::apply_boundary(
            &self.http,
            &self.endpoints,
            self.clock.as_ref(),
            token,
            access_boundary,
            deadline,
        )
        .await
    }

    /// `options.userProject` of the credential's own exchanges: the file's
    /// `workforce_pool_user_project`, unless a client id determines the project.
    fn user_project(&self) -> Option<&str> {
        match self.config.client_id {
            Some(_) => None,
            None => self.config.workforce_pool_user_project.as_deref(),
        }
    }

    /// Whether the tokens can be downscoped: not a workforce pool's own tokens.
    fn downscopable(&self) -> bool {
        !self.is_workforce() || self.config.impersonation.is_some()
    }

    /// Refuses a boundary the tokens cannot take, or one STS would refuse.
    fn check_boundary(&self, boundary: &AccessBoundary) -> Result<(), SourceError> {
        if !self.downscopable() {
            return Err(SourceError::Unsupported {
                flow: "access_boundary",
                message: "Google does not downscope workforce identity tokens; configure service-account impersonation".to_owned(),
            });
        }
        boundary
            .validate()
            .map_err(|e| SourceError::InvalidRequest {
                field: "access_boundary".to_owned(),
                message: e.to_string(),
            })
    }

    /// The subject token from the credential source, and the client its exchange uses (the
    /// mTLS one of a `certificate` source).
    async fn subject_token(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Secret, HttpClient), SourceError> {
        let context = SubjectContext {
            http: &self.http,
            clock: self.clock.as_ref(),
            env: &self.env,
            audience: &self.config.audience,
            subject_token_type: &self.config.subject_token_type,
            impersonated_email: self.config.impersonated_email(),
            deadline,
        };
        let token = match &self.config.source {
            CredentialSource::File(source) => source.subject_token().await?,
            CredentialSource::Url(source) => source.subject_token(&context).await?,
            CredentialSource::Executable(source) => source.subject_token(&context).await?,
            CredentialSource::Aws(source) => source.subject_token(&context).await?,
            CredentialSource::Certificate(source) => {
                let workload = source
                    .workload(&context, self.mtls_roots.as_deref())
                    .await?;
                return Ok((workload.subject_token, workload.http));
            }
        };
        Ok((token, self.http.clone()))
    }

    /// STS, then impersonation when configured: the token for `scopes`. `own` says the
    /// subject token is the credential's own (its refusals are the credential's fault).
    #[allow(clippy::too_many_arguments)]
    async fn federate(
        &self,
        http: &HttpClient,
        subject_token: &Secret,
        subject_token_type: &str,
        scopes: &ScopeSet,
        user_project: Option<&str>,
        own: bool,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let impersonating = self.config.impersonation.is_some();
        let federated = self
            .federated_token(
                http,
                subject_token,
                subject_token_type,
                scopes,
                user_project,
                deadline,
            )
            .await
            .map_err(|error| {
                if own {
                    own_refusal(error, !impersonating)
                } else {
                    error
                }
            })?;
        let Some(impersonation) = &self.config.impersonation else {
            return Ok(federated);
        };
        iam::generate_access_token_at(
            http,
            &impersonation.url,
            &federated.secret,
            &impersonation.email,
            scopes,
            impersonation.lifetime,
            self.config.quota_project_id.as_deref(),
            deadline,
        )
        .await
        .map_err(lifetime_refusal)
    }

    /// The STS exchange: a federated token, for `scopes` or (when impersonation follows)
    /// [`IAM_SCOPE`].
    async fn federated_token(
        &self,
        http: &HttpClient,
        subject_token: &Secret,
        subject_token_type: &str,
        scopes: &ScopeSet,
        user_project: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let sts_scopes = match self.config.impersonation {
            Some(_) => ScopeSet::parse([IAM_SCOPE])
                .map_err(|e| SourceError::Internal(format!("the IAM scope: {e}")))?,
            None => scopes.clone(),
        };
        let client_auth = self
            .config
            .client_id
            .as_deref()
            .map(|client_id| StsClientAuth {
                client_id,
                client_secret: self.config.client_secret.as_ref(),
            });
        let started = self.clock.now();
        let exchanged = sts::exchange_token(
            http,
            &self.token_url,
            &StsExchange {
                audience: Some(&self.config.audience),
                subject_token,
                subject_token_type,
                scopes: Some(&sts_scopes),
                requested_token_type: ACCESS_TOKEN_TYPE,
                user_project,
                access_boundary: None,
                client_auth,
            },
            deadline,
        )
        .await?;
        let lifetime = exchanged.expires_in.unwrap_or(FEDERATED_LIFETIME);
        Ok(Token {
            secret: exchanged.token,
            expires_at: started + lifetime,
            scopes: sts_scopes,
            principal: self.federated_principal().into(),
        })
    }

    async fn fetch_token(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        checks::no_subject(
            request,
            "an external_account credential (identity federation)",
        )?;
        let max = self
            .config
            .impersonated_lifetime()
            .unwrap_or(FEDERATED_LIFETIME);
        checks::lifetime_at_most(request, max, "this external_account credential")?;
        if let Some(boundary) = &request.boundary {
            self.check_boundary(boundary)?;
        }
        let scopes = default_scopes(&request.scopes)?;
        let (subject_token, http) = self.subject_token(deadline).await?;
        let token = self
            .federate(
                &http,
                &subject_token,
                &self.config.subject_token_type,
                &scopes,
                self.user_project(),
                true,
                deadline,
            )
            .await?;
        tracing::debug!(
            principal = %token.principal,
            source = self.config.source.kind(),
            subject_token = %subject_token.fingerprint(),
            token = %token.secret.fingerprint(),
            "federated token minted"
        );
        sts::apply_boundary(
            &self.http,
            &self.endpoints,
            self.clock.as_ref(),
            token,
            request.boundary.as_ref(),
            deadline,
        )
        .await
    }

    async fn fetch_id(
        &self,
        request: &IdTokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let Some(impersonation) = &self.config.impersonation else {
            return Err(SourceError::Unsupported {
                flow: "id_token",
                message: "Google mints ID tokens for arbitrary audiences only for service accounts; this external_account credential does not impersonate one".to_owned(),
            });
        };
        let (subject_token, http) = self.subject_token(deadline).await?;
        let federated = self
            .federated_token(
                &http,
                &subject_token,
                &self.config.subject_token_type,
                &ScopeSet::empty(),
                self.user_project(),
                deadline,
            )
            .await
            .map_err(|error| own_refusal(error, false))?;
        iam::generate_id_token_at(
            &http,
            &impersonation.id_token_url,
            &federated.secret,
            &impersonation.email,
            &request.audience,
            request.include_email,
            self.config.quota_project_id.as_deref(),
            deadline,
        )
        .await
    }
}

/// The scopes of a request, `cloud-platform` when it names none.
fn default_scopes(scopes: &ScopeSet) -> Result<ScopeSet, SourceError> {
    if scopes.is_empty() {
        ScopeSet::parse([CLOUD_PLATFORM_SCOPE])
            .map_err(|e| SourceError::Internal(format!("the default scope: {e}")))
    } else {
        Ok(scopes.clone())
    }
}

/// STS's refusal of the credential's own subject token or configuration: not a value of the
/// caller's request but the credential failing, `CredentialRejected`, unless it names the
/// request's scopes (`scopes_are_callers`).
fn own_refusal(error: SourceError, scopes_are_callers: bool) -> SourceError {
    match error {
        SourceError::Rejected(mut rejection)
            if rejection.rejection == Rejection::InvalidArgument
                && !(scopes_are_callers && rejection.field.as_deref() == Some("scopes")) =>
        {
            rejection.rejection = Rejection::CredentialRejected;
            rejection.field = None;
            rejection.message = format!(
                "STS refused the credential's own subject token or configuration: {}",
                rejection.message
            );
            SourceError::Rejected(rejection)
        }
        other => other,
    }
}

/// IAM's refusal of the lifetime: the file's `token_lifetime_seconds`, the credential's
/// configuration, `CredentialRejected`.
fn lifetime_refusal(error: SourceError) -> SourceError {
    match error {
        SourceError::Rejected(mut rejection) if rejection.field.as_deref() == Some("lifetime") => {
            rejection.rejection = Rejection::CredentialRejected;
            rejection.field = None;
            rejection.message = format!(
                "IAM refused the credential's service_account_impersonation.token_lifetime_seconds: {}",
                rejection.message
            );
            SourceError::Rejected(rejection)
        }
        other => other,
    }
}

impl TokenSource for ExternalAccountSource {
    fn principal(&self) -> &str {
        &self.principal
    }

    fn kind(&self) -> &'static str {
        "external_account"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chooses_lifetime: false,
            domain_wide_delegation: false,
            id_tokens: self.config.impersonation.is_some(),
            downscoping: self.downscopable(),
        }
    }

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(self.fetch_token(request, deadline))
    }

    fn fetch_id_token<'a>(
        &'a self,
        request: &'a IdTokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(self.fetch_id(request, deadline))
    }
}

#[cfg(test)]
mod tests;
