//! Service-account impersonation: a target service account, reached from another credential
//! (the base) through IAM Service Account Credentials (google-protocols.md §5), optionally
//! through a chain of delegates; keyless domain-wide delegation (IAM `signJwt`, then the
//! JWT-bearer grant); and the `impersonated_service_account` files gcloud writes (§2.3).
//!
//! See <https://cloud.google.com/iam/docs/service-account-impersonation> and
//! <https://cloud.google.com/iam/docs/create-short-lived-credentials-delegated>.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_core::{
    Capabilities, Clock, IdTokenRequest, ScopeSet, SourceError, SourceFuture, SystemClock, Token,
    TokenRequest, TokenSource,
};
use serde_json::{Map, Value};

use crate::credential_file::{self, BaseWrapper, field_error};
use crate::http::HttpClient;
use crate::service_account::{self, Claims};
use crate::{
    AuthorizedUserCredentials, AuthorizedUserSource, BackendError, GoogleEndpoints, IamCredentials,
    ServiceAccountKey, ServiceAccountSource, checks, sts,
};

/// The scope of the base tokens that authorize IAM Credentials calls (Go's choice; Python's
/// `https://www.googleapis.com/auth/iam` works too). A server that calls [`IamCredentials`]
/// itself should ask its base for the same scope, so that both share one cached token.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Domain-wide-delegation tokens come from the JWT-bearer grant: one hour at most.
const MAX_DELEGATED_LIFETIME: Duration = Duration::from_secs(3600);
/// The path prefix of a delegate's resource name.
const DELEGATE_PREFIX: &str = "projects/-/serviceAccounts/";

/// A [`TokenSource`] for a target service account, impersonated with the access tokens of a
/// base source through an optional chain of delegates (each hop holds Token Creator,
/// `roles/iam.serviceAccountTokenCreator`, on the next). Its kind is `impersonated`; its
/// principal is the target. It can choose a lifetime, act for Workspace users, mint ID tokens
/// and be downscoped.
///
/// Every call first asks the base for a [`CLOUD_PLATFORM_SCOPE`] token (the server passes a
/// base whose tokens come through its cache; this source never caches), then:
///
/// - an access token: IAM `generateAccessToken` with the requested scopes and lifetime
///   (default one hour; up to 12 hours where the target allows it: Google decides, and
///   refuses with `InvalidArgument`, field `lifetime`);
/// - with a `subject`, keyless domain-wide delegation: IAM `signJwt` of the JWT-bearer claims
///   `{iss: target, sub: subject, scope, aud: "https://oauth2.googleapis.com/token", iat,
///   exp: iat + 3600}`, then the JWT-bearer grant at [`GoogleEndpoints::token_url`], refused
///   and classified as [`ServiceAccountSource`]'s. Such tokens live one hour: a longer
///   lifetime is [`SourceError::Unsupported`] (flow `extended_lifetime`) without a call;
/// - an ID token: IAM `generateIdToken` with `includeEmail` as asked.
///
/// A request with an access boundary gets the token downscoped through STS. The base's
/// errors pass through as they are (they name their own upstream); IAM's are classified as
/// [`IamCredentials`] says.
pub struct ImpersonatedSource {
    base: Arc<dyn TokenSource>,
    target: String,
    delegates: Vec<String>,
    iam: IamCredentials,
    endpoints: GoogleEndpoints,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for ImpersonatedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpersonatedSource")
            .field("principal", &self.target)
            .field("delegates", &self.delegates)
            .field("base", &self.base)
            .field("iam", &self.iam)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl ImpersonatedSource {
    /// Impersonates `target` (an email or a numeric unique id) with the tokens of `base`,
    /// through `delegates` (emails, or `projects/-/serviceAccounts/EMAIL`; first hop first).
    /// Uses the system clock; see [`ImpersonatedSource::with_clock`].
    ///
    /// # Errors
    ///
    /// - [`BackendError::InvalidServiceAccount`] for a target or delegate that is no email
    ///   or unique id;
    /// - [`BackendError::InvalidEndpoint`] if an endpoint URL is unusable.
    pub fn new(
        base: Arc<dyn TokenSource>,
        target: &str,
        delegates: &[String],
        endpoints: GoogleEndpoints,
        http: HttpClient,
    ) -> Result<Self, BackendError> {
        let target = account(target, "target_service_account")?;
        let delegates = delegates
            .iter()
            .map(|d| account(d, "delegates"))
            .collect::<Result<Vec<_>, _>>()?;
        let iam = IamCredentials::new(&endpoints, http.clone())?;
        Ok(Self {
            base,
            target,
            delegates,
            iam,
            endpoints,
            http,
            clock: Arc::new(SystemClock),
        })
    }

    /// Computes assertion times (keyless domain-wide delegation) and expiries with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The target service account.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The delegation chain (emails), first hop first.
    pub fn delegates(&self) -> &[String] {
        &self.delegates
    }

    /// The base source.
    pub fn base(&self) -> &Arc<dyn TokenSource> {
        &self.base
    }

    /// What the base is asked for: a token that authorizes IAM Credentials calls.
    fn base_request() -> Result<TokenRequest, SourceError> {
        let scopes = ScopeSet::parse([CLOUD_PLATFORM_SCOPE])
            .map_err(|e| SourceError::Internal(format!("the base token's scope: {e}")))?;
        Ok(TokenRequest::new(scopes))
    }

    /// Calls IAM with a base token. If IAM refuses that token (a 401: revoked, or otherwise no
    /// longer valid while the base still keeps it), the base forgets it and the call is made
    /// once more with a fresh one. The base's own failures are the broker's credential
    /// failing ([`SourceError::as_base_error`]).
    async fn with_base_token<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        call: F,
    ) -> Result<T, SourceError>
    where
        F: Fn(Token) -> Fut,
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        let request = Self::base_request()?;
        let mut retried = false;
        loop {
            let base = self
                .base
                .fetch(&request, deadline)
                .await
                .map_err(SourceError::as_base_error)?;
            match call(base).await {
                Err(error) if error.is_bearer_rejected() && !retried => {
                    tracing::warn!(
                        principal = %self.base.principal(),
                        "IAM Credentials refused the base token; getting a new one"
                    );
                    self.base.invalidate(&request).await;
                    retried = true;
                }
                result => return result,
            }
        }
    }

    async fn fetch_token(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        if request.subject.is_some() {
            checks::lifetime_at_most(request, MAX_DELEGATED_LIFETIME, "domain-wide delegation")?;
        }
        checks::valid_boundary(request)?;
        let token = match &request.subject {
            None => {
                self.with_base_token(deadline, |base| async move {
                    self.iam
                        .generate_access_token(
                            &base.secret,
                            &self.target,
                            &self.delegates,
                            &request.scopes,
                            request.lifetime,
                            deadline,
                        )
                        .await
                })
                .await?
            }
            Some(_) => self.delegate(request, deadline).await?,
        };
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

    /// Keyless domain-wide delegation: the target's assertion for the request's subject,
    /// signed by IAM `signJwt`, exchanged at the token endpoint.
    async fn delegate(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let issued_at = self.clock.now();
        let payload =
            serde_json::to_string(&Claims::access_token(&self.target, request, issued_at))
                .map_err(|e| SourceError::Internal(format!("cannot encode the assertion: {e}")))?;
        let payload = &payload;
        let signed = self
            .with_base_token(deadline, |base| async move {
                self.iam
                    .sign_jwt(
                        &base.secret,
                        &self.target,
                        &self.delegates,
                        payload,
                        deadline,
                    )
                    .await
            })
            .await?;
        service_account::exchange_assertion(
            &self.http,
            &self.endpoints.token_url,
            signed.signed_jwt.expose(),
            &self.target,
            request,
            issued_at,
            deadline,
        )
        .await
    }

    async fn fetch_id(
        &self,
        request: &IdTokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        self.with_base_token(deadline, |base| async move {
            self.iam
                .generate_id_token(
                    &base.secret,
                    &self.target,
                    &self.delegates,
                    &request.audience,
                    request.include_email,
                    deadline,
                )
                .await
        })
        .await
    }
}

impl TokenSource for ImpersonatedSource {
    fn principal(&self) -> &str {
        &self.target
    }

    fn kind(&self) -> &'static str {
        "impersonated"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chooses_lifetime: true,
            domain_wide_delegation: true,
            id_tokens: true,
            downscoping: true,
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

/// A service account as IAM names it: an email, or a numeric unique id; a delegate's
/// `projects/-/serviceAccounts/` prefix is removed.
pub(crate) fn account(value: &str, field: &'static str) -> Result<String, BackendError> {
    let bare = value.strip_prefix(DELEGATE_PREFIX).unwrap_or(value);
    let unique_id = (1..=32).contains(&bare.len()) && bare.bytes().all(|b| b.is_ascii_digit());
    if checks::is_email(bare) && !bare.contains('/') || unique_id {
        Ok(bare.to_owned())
    } else {
        Err(BackendError::InvalidServiceAccount {
            field,
            value: value.chars().take(300).collect(),
        })
    }
}

/// The credentials an `impersonated_service_account` file impersonates with.
#[derive(Debug)]
pub enum SourceCredentials {
    /// A service-account key.
    ServiceAccount(ServiceAccountKey),
    /// A user's refresh token.
    AuthorizedUser(AuthorizedUserCredentials),
}

impl SourceCredentials {
    /// Builds the source the credentials describe: a [`ServiceAccountSource`], or an
    /// [`AuthorizedUserSource`] (which discovers the user's email when the file does not
    /// name it).
    ///
    /// # Errors
    ///
    /// The errors of [`ServiceAccountSource::new`] and [`AuthorizedUserSource::discover`].
    pub async fn into_source(
        self,
        endpoints: &GoogleEndpoints,
        http: &HttpClient,
    ) -> Result<Arc<dyn TokenSource>, BackendError> {
        Ok(match self {
            Self::ServiceAccount(key) => Arc::new(ServiceAccountSource::new(
                key,
                endpoints.clone(),
                http.clone(),
            )?),
            Self::AuthorizedUser(user) => Arc::new(
                AuthorizedUserSource::discover(user, endpoints.clone(), http.clone()).await?,
            ),
        })
    }
}

/// An `impersonated_service_account` credential file, as `gcloud auth application-default
/// login --impersonate-service-account` writes it (google-protocols.md §2.3): the target (read,
/// as Python google-auth does, from `service_account_impersonation_url`: the text between its
/// last `/` and `:generateAccessToken`), the `delegates` and the nested `source_credentials`
/// (`service_account` or `authorized_user`). The URL's host is not used: IAM Credentials is
/// called at the configured [`GoogleEndpoints::iam_credentials_url`].
#[derive(Debug)]
pub struct ImpersonatedServiceAccountFile {
    target: String,
    delegates: Vec<String>,
    source: SourceCredentials,
    quota_project_id: Option<String>,
}

impl ImpersonatedServiceAccountFile {
    /// Reads and parses a credential file.
    ///
    /// # Errors
    ///
    /// [`BackendError::ReadKeyFile`], or a parse error naming the file and field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BackendError> {
        let path = path.as_ref();
        let text = credential_file::read(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses credential-file JSON; `origin` (a path or a description) names it in errors.
    ///
    /// # Errors
    ///
    /// [`BackendError`] naming `origin` and the field at fault (the source credentials'
    /// errors name `origin (source_credentials)`), never quoting a secret;
    /// [`BackendError::UnsupportedCredentialType`] for source credentials of type
    /// `external_account_authorized_user`.
    pub fn parse(json: &str, origin: &str) -> Result<Self, BackendError> {
        let value = credential_file::parse_json(json, origin)?;
        Self::from_object(credential_file::into_object(value, origin)?, origin)
    }

    /// Parses a file held as a JSON object.
    pub(crate) fn from_object(
        mut object: Map<String, Value>,
        origin: &str,
    ) -> Result<Self, BackendError> {
        let kind = credential_file::credential_type(&object, origin)?;
        if kind != "impersonated_service_account" {
            return Err(credential_file::unsupported_type(
                origin,
                kind,
                "\"impersonated_service_account\"",
            ));
        }
        let nested = format!("{origin} (source_credentials)");
        let source = match object.remove("source_credentials") {
            Some(Value::Object(source)) => {
                match credential_file::credential_type(&source, &nested)? {
                    "service_account" => SourceCredentials::ServiceAccount(
                        ServiceAccountKey::from_object(source, &nested)?,
                    ),
                    "authorized_user" => SourceCredentials::AuthorizedUser(
                        AuthorizedUserCredentials::from_object(source, &nested)?,
                    ),
                    other => {
                        return Err(credential_file::unsupported_type(
                            &nested,
                            other,
                            "\"service_account\" or \"authorized_user\"",
                        ));
                    }
                }
            }
            None | Some(Value::Null) => {
                return Err(field_error(origin, "source_credentials", "is missing"));
            }
            Some(_) => {
                return Err(field_error(
                    origin,
                    "source_credentials",
                    "must be an object",
                ));
            }
        };
        let url =
            credential_file::take_string(&mut object, "service_account_impersonation_url", origin)?
                .ok_or_else(|| {
                    field_error(origin, "service_account_impersonation_url", "is missing")
                })?;
        let target = url
            .rsplit_once('/')
            .and_then(|(_, last)| last.split_once(":generateAccessToken"))
            .map(|(email, _)| email)
            .and_then(|email| account(email, "service_account_impersonation_url").ok())
            .ok_or_else(|| {
                field_error(
                    origin,
                    "service_account_impersonation_url",
                    "does not end with /projects/-/serviceAccounts/EMAIL:generateAccessToken",
                )
            })?;
        let delegates = match object.remove("delegates") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .and_then(|d| account(d, "delegates").ok())
                        .ok_or_else(|| {
                            field_error(
                                origin,
                                "delegates",
                                "must be a list of service-account emails",
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(field_error(
                    origin,
                    "delegates",
                    "must be a list of service-account emails",
                ));
            }
        };
        let quota_project_id =
            credential_file::take_string(&mut object, "quota_project_id", origin)?
                .filter(|p| !p.is_empty());
        Ok(Self {
            target,
            delegates,
            source,
            quota_project_id,
        })
    }

    /// The target service account.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The delegation chain (emails), first hop first.
    pub fn delegates(&self) -> &[String] {
        &self.delegates
    }

    /// The source credentials.
    pub fn source_credentials(&self) -> &SourceCredentials {
        &self.source
    }

    /// `quota_project_id`.
    pub fn quota_project_id(&self) -> Option<&str> {
        self.quota_project_id.as_deref()
    }

    /// The target, the delegates and the source credentials, for a server that builds (and
    /// caches) the base itself.
    pub fn into_parts(self) -> (String, Vec<String>, SourceCredentials) {
        (self.target, self.delegates, self.source)
    }

    /// Builds the [`ImpersonatedSource`] the file describes: its base is built from the
    /// source credentials and passed through `wrap_base` when given (the server's cache).
    ///
    /// # Errors
    ///
    /// The errors of [`SourceCredentials::into_source`] and [`ImpersonatedSource::new`].
    pub async fn into_source(
        self,
        endpoints: &GoogleEndpoints,
        http: &HttpClient,
        wrap_base: Option<&BaseWrapper>,
    ) -> Result<ImpersonatedSource, BackendError> {
        let (target, delegates, source) = self.into_parts();
        let mut base = source.into_source(endpoints, http).await?;
        if let Some(wrap) = wrap_base {
            base = wrap(base);
        }
        ImpersonatedSource::new(base, &target, &delegates, endpoints.clone(), http.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/reader@dev-project.iam.gserviceaccount.com:generateAccessToken";

    fn file(fields: Value) -> String {
        let mut file = serde_json::json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": URL,
            "delegates": ["projects/-/serviceAccounts/mid@dev-project.iam.gserviceaccount.com"],
            "source_credentials": {
                "type": "authorized_user",
                "client_id": "c.apps.googleusercontent.com",
                "client_secret": "very-secret",
                "refresh_token": "1//very-secret-refresh",
            },
            "quota_project_id": "dev-project",
        });
        if let (Some(file), Value::Object(fields)) = (file.as_object_mut(), fields) {
            file.extend(fields);
        }
        file.to_string()
    }

    #[test]
    fn parses_gclouds_file() {
        let parsed =
            ImpersonatedServiceAccountFile::parse(&file(Value::Null), "adc.json").expect("parses");
        assert_eq!(
            parsed.target(),
            "reader@dev-project.iam.gserviceaccount.com"
        );
        assert_eq!(
            parsed.delegates(),
            ["mid@dev-project.iam.gserviceaccount.com"]
        );
        assert_eq!(parsed.quota_project_id(), Some("dev-project"));
        assert!(matches!(
            parsed.source_credentials(),
            SourceCredentials::AuthorizedUser(user) if user.client_id() == "c.apps.googleusercontent.com"
        ));
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("very-secret"), "{shown}");

        let no_chain = ImpersonatedServiceAccountFile::parse(
            &file(serde_json::json!({"delegates": null, "quota_project_id": null})),
            "adc.json",
        )
        .expect("parses");
        assert!(no_chain.delegates().is_empty());
        assert_eq!(no_chain.quota_project_id(), None);
    }

    #[test]
    fn file_errors_name_the_field() {
        let cases = [
            (
                serde_json::json!({"service_account_impersonation_url": "https://x/v1/projects/-/serviceAccounts/:generateAccessToken"}),
                "service_account_impersonation_url",
            ),
            (
                serde_json::json!({"service_account_impersonation_url": "https://x/a@b.c"}),
                "service_account_impersonation_url",
            ),
            (
                serde_json::json!({"service_account_impersonation_url": null}),
                "service_account_impersonation_url",
            ),
            (serde_json::json!({"delegates": "a@b.c"}), "delegates"),
            (
                serde_json::json!({"delegates": ["not an email"]}),
                "delegates",
            ),
            (
                serde_json::json!({"source_credentials": null}),
                "source_credentials",
            ),
            (
                serde_json::json!({"source_credentials": "x"}),
                "source_credentials",
            ),
            (
                serde_json::json!({"source_credentials": {"type": "external_account_authorized_user"}}),
                "not supported yet",
            ),
            (
                serde_json::json!({"source_credentials": {"type": "impersonated_service_account"}}),
                "expected \"service_account\" or \"authorized_user\"",
            ),
            (
                serde_json::json!({"source_credentials": {"type": "authorized_user", "client_id": "c"}}),
                "adc.json (source_credentials): field `client_secret`",
            ),
            (
                serde_json::json!({"type": "service_account"}),
                "expected \"impersonated_service_account\"",
            ),
        ];
        for (fields, expected) in cases {
            let error = ImpersonatedServiceAccountFile::parse(&file(fields.clone()), "adc.json")
                .expect_err("invalid");
            let shown = format!("{error} {error:?}");
            assert!(shown.contains(expected), "{fields}: {shown}");
            assert!(!shown.contains("very-secret"), "{shown}");
        }
    }

    #[test]
    fn accounts_are_emails_or_unique_ids() {
        assert_eq!(
            account(
                "projects/-/serviceAccounts/a@p.iam.gserviceaccount.com",
                "delegates"
            )
            .expect("valid"),
            "a@p.iam.gserviceaccount.com"
        );
        assert_eq!(
            account("123456789012345678901", "x").expect("valid"),
            "123456789012345678901"
        );
        for bad in [
            "",
            "a",
            "a b@c",
            "projects/p/serviceAccounts/a@b.c",
            "a@b/c",
        ] {
            assert!(account(bad, "x").is_err(), "{bad}");
        }
    }
}
