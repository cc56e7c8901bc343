//! User credentials: the OAuth 2.0 refresh-token grant at Google's token endpoint
//! (google-protocols.md §1.3, §1.4, §1.5), from the `authorized_user` file that
//! `gcloud auth application-default login` writes (§2.2), optionally downscoped through STS.
//!
//! See <https://developers.google.com/identity/protocols/oauth2/native-app#offline> and
//! <https://www.rfc-editor.org/rfc/rfc6749#section-6>.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_core::{
    Capabilities, Clock, Rejection, SourceError, SourceFuture, SystemClock, Token, TokenRequest,
    TokenSource,
};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::credential_file::{self, field_error};
use crate::http::HttpClient;
use crate::oauth::{self, OAuthError, TokenResponse, Verdict};
use crate::{BackendError, GoogleEndpoints, checks, id_token, sts};

/// The scopes of the refresh grant that discovers the user's email: the ID token of a grant of
/// `openid` carries `email` when `userinfo.email` is granted too. Both are among the scopes
/// `gcloud auth application-default login` asks consent for.
const EMAIL_DISCOVERY_SCOPES: &str = "openid https://www.googleapis.com/auth/userinfo.email";
/// Tokens of the refresh grant live one hour at most.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The contents of an `authorized_user` credential file: an OAuth client and a user's
/// refresh token. The client secret and the refresh token are zeroized on drop, and `Debug`
/// shows only the client id, the account and the quota project.
pub struct AuthorizedUserCredentials {
    client_id: String,
    client_secret: Zeroizing<String>,
    refresh_token: Zeroizing<String>,
    quota_project_id: Option<String>,
    account: Option<String>,
    origin: String,
}

impl fmt::Debug for AuthorizedUserCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedUserCredentials")
            .field("client_id", &self.client_id)
            .field("account", &self.account)
            .field("quota_project_id", &self.quota_project_id)
            .finish_non_exhaustive()
    }
}

impl AuthorizedUserCredentials {
    /// Parses credential-file JSON held in memory (errors call its origin "inline JSON").
    ///
    /// # Errors
    ///
    /// See [`AuthorizedUserCredentials::parse`].
    pub fn from_json(json: &str) -> Result<Self, BackendError> {
        Self::parse(json, "(inline JSON)")
    }

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
    /// [`BackendError`] naming `origin` and the field at fault, never quoting a secret:
    /// [`BackendError::WrongKeyType`] (or [`BackendError::UnsupportedCredentialType`]) when
    /// `type` is not `authorized_user`, [`BackendError::KeyFileField`] when `client_id`,
    /// `client_secret` or `refresh_token` is missing or empty.
    pub fn parse(json: &str, origin: &str) -> Result<Self, BackendError> {
        let value = credential_file::parse_json(json, origin)?;
        Self::from_object(credential_file::into_object(value, origin)?, origin)
    }

    /// Parses credentials held as a JSON object (a file, or the `source_credentials` of
    /// another).
    pub(crate) fn from_object(
        mut object: Map<String, Value>,
        origin: &str,
    ) -> Result<Self, BackendError> {
        // Moved into zeroizing storage before anything else can fail.
        let client_secret = credential_file::take_secret(&mut object, "client_secret", origin);
        let refresh_token = credential_file::take_secret(&mut object, "refresh_token", origin);
        let kind = credential_file::credential_type(&object, origin)?;
        if kind != "authorized_user" {
            return Err(credential_file::unsupported_type(
                origin,
                kind,
                "\"authorized_user\"",
            ));
        }
        let mut text = |field| credential_file::take_string(&mut object, field, origin);
        let client_id = text("client_id")?
            .filter(|id| !id.is_empty())
            .ok_or_else(|| field_error(origin, "client_id", "is missing or empty"))?;
        let quota_project_id = text("quota_project_id")?.filter(|p| !p.is_empty());
        let account = text("account")?.filter(|a| !a.is_empty());
        Ok(Self {
            client_id,
            client_secret: client_secret?,
            refresh_token: refresh_token?,
            quota_project_id,
            account,
            origin: origin.to_owned(),
        })
    }

    /// `client_id`: the OAuth client the refresh token was issued to.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `account`: the user's email, when the file names it.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// `quota_project_id`: the project Google bills the user's API calls to.
    pub fn quota_project_id(&self) -> Option<&str> {
        self.quota_project_id.as_deref()
    }

    /// The refresh grant for `scope` (space-delimited; Google's consented scopes without
    /// one), posted to `token_url`.
    async fn refresh(
        &self,
        http: &HttpClient,
        token_url: &str,
        scope: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<TokenResponse, SourceError> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("refresh_token", self.refresh_token.as_str()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        http.send_with_retry(
            "oauth2.token",
            deadline,
            |client| client.post(token_url).form(&form),
            |response| oauth::interpret(response, "token endpoint", classify),
        )
        .await
    }
}

/// Whose fault the token endpoint's refusal of a refresh grant is (the table on
/// [`AuthorizedUserSource`]).
fn classify(error: &OAuthError<'_>) -> Verdict {
    match error.error {
        Some("invalid_grant" | "invalid_client" | "disabled_client" | "unauthorized_client") => {
            Verdict::of(Rejection::CredentialRejected)
        }
        Some("invalid_scope") => Verdict::invalid("scopes"),
        Some("access_denied" | "admin_policy_enforced" | "org_internal") => {
            Verdict::of(Rejection::PermissionDenied)
        }
        _ => Verdict::by_status(error.status),
    }
}

/// A [`TokenSource`] holding a user's refresh token: each fetch is a refresh grant
/// (`grant_type=refresh_token` with the client id and secret in the form) at
/// [`GoogleEndpoints::token_url`] for the requested scopes. Its kind is `authorized_user`; its
/// principal is the user's email. It can be downscoped; it cannot act for another user, choose
/// a lifetime (tokens live an hour) or mint ID tokens for an audience (Google does that only
/// for service accounts): those requests are [`SourceError::Unsupported`], decided without a
/// call. A request with an access boundary gets the token downscoped through STS.
///
/// The file's `token_uri`, if any, is ignored, as Python google-auth does: the configured
/// token endpoint is used. A refresh token Google rotates in its answer is not kept (Google
/// does not rotate the refresh tokens of installed-app clients such as gcloud's).
///
/// The token endpoint's permanent refusals are [`SourceError::Rejected`], classified:
///
/// | `error` | rejection | field |
/// |---|---|---|
/// | `invalid_grant` (refresh token expired or revoked: "Token has been expired or revoked.", or reauthentication required) | `CredentialRejected` | |
/// | `invalid_client`, `disabled_client`, `unauthorized_client` (the OAuth client) | `CredentialRejected` | |
/// | `invalid_scope` (a scope the user did not consent to) | `InvalidArgument` | `scopes` |
/// | `access_denied`, `admin_policy_enforced`, `org_internal` | `PermissionDenied` | |
/// | any other code, or no OAuth error body: by HTTP status, 401 / 403 / 404 / other 4xx | `CredentialRejected` / `PermissionDenied` / `NotFound` / `Other` | |
pub struct AuthorizedUserSource {
    email: String,
    credentials: AuthorizedUserCredentials,
    endpoints: GoogleEndpoints,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for AuthorizedUserSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedUserSource")
            .field("principal", &self.email)
            .field("credentials", &self.credentials)
            .field("token_url", &self.endpoints.token_url)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl AuthorizedUserSource {
    /// Builds the source. The principal is the file's `account` when it has one; otherwise it
    /// is discovered now, once, by a refresh grant for `openid` and `userinfo.email` whose ID
    /// token carries the user's `email`. Uses the system clock; see
    /// [`AuthorizedUserSource::with_clock`].
    ///
    /// # Errors
    ///
    /// - [`BackendError::InvalidEndpoint`] if an endpoint URL is unusable;
    /// - [`BackendError::Discovery`] if the email had to be discovered and Google refused the
    ///   grant (a revoked refresh token, scopes the user did not consent to), did not answer,
    ///   or answered without an ID token carrying `email`.
    pub async fn discover(
        credentials: AuthorizedUserCredentials,
        endpoints: GoogleEndpoints,
        http: HttpClient,
    ) -> Result<Self, BackendError> {
        endpoints.validate()?;
        let email = match credentials.account.clone() {
            Some(account) => account,
            None => discover_email(&credentials, &endpoints, &http)
                .await
                .map_err(|source| BackendError::Discovery {
                    what: format!("the email of the authorized user of {}", credentials.origin),
                    source,
                })?,
        };
        Ok(Self {
            email,
            credentials,
            endpoints,
            http,
            clock: Arc::new(SystemClock),
        })
    }

    /// Computes token expiries with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The credentials' `quota_project_id`.
    pub fn quota_project_id(&self) -> Option<&str> {
        self.credentials.quota_project_id()
    }

    async fn fetch_token(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        checks::no_subject(request, "a user's refresh token")?;
        checks::lifetime_at_most(request, MAX_TOKEN_LIFETIME, "a user's refresh token")?;
        checks::valid_boundary(request)?;
        let issued_at = self.clock.now();
        let scope = (!request.scopes.is_empty()).then(|| request.scopes.joined());
        let response = self
            .credentials
            .refresh(
                &self.http,
                &self.endpoints.token_url,
                scope.as_deref(),
                deadline,
            )
            .await?;
        let expires_in = response.expires_in.ok_or_else(|| SourceError::Malformed {
            upstream: response.upstream.clone(),
            message: "token endpoint answered HTTP 200 without expires_in".to_owned(),
        })?;
        let token = Token {
            secret: response.access_token,
            // expires_in is capped at 12 hours: no overflow short of the end of time.
            expires_at: issued_at.checked_add(expires_in).unwrap_or(issued_at),
            scopes: request.scopes.clone(),
            principal: self.email.as_str().into(),
        };
        tracing::debug!(
            principal = %token.principal,
            token = %token.secret.fingerprint(),
            expires_in_s = expires_in.as_secs(),
            "user token refreshed"
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
}

/// The user's email, from the ID token of a refresh grant for `openid` and `userinfo.email`.
async fn discover_email(
    credentials: &AuthorizedUserCredentials,
    endpoints: &GoogleEndpoints,
    http: &HttpClient,
) -> Result<String, SourceError> {
    let response = credentials
        .refresh(
            http,
            &endpoints.token_url,
            Some(EMAIL_DISCOVERY_SCOPES),
            None,
        )
        .await?;
    response
        .id_token
        .as_ref()
        .and_then(|jwt| id_token::claims(jwt.expose()))
        .and_then(|claims| match claims.get("email") {
            Some(Value::String(email)) if checks::is_email(email) => Some(email.clone()),
            _ => None,
        })
        .ok_or_else(|| SourceError::Malformed {
            upstream: response.upstream.clone(),
            message: "token endpoint answered a refresh grant for openid and userinfo.email without an ID token carrying an email".to_owned(),
        })
}

impl TokenSource for AuthorizedUserSource {
    fn principal(&self) -> &str {
        &self.email
    }

    fn kind(&self) -> &'static str {
        "authorized_user"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chooses_lifetime: false,
            domain_wide_delegation: false,
            id_tokens: false,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tests::rejection_with;

    const SECRET: &str = "very-secret-client-secret";
    const REFRESH: &str = "1//very-secret-refresh-token";

    fn file(fields: Value) -> String {
        let mut file = serde_json::json!({
            "type": "authorized_user",
            "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com",
            "client_secret": SECRET,
            "refresh_token": REFRESH,
        });
        if let (Some(file), Value::Object(fields)) = (file.as_object_mut(), fields) {
            file.extend(fields);
        }
        file.to_string()
    }

    #[test]
    fn parses_gclouds_file_and_debug_hides_the_secrets() {
        let user = AuthorizedUserCredentials::from_json(&file(serde_json::json!({
            "quota_project_id": "dev-project",
            "account": "dev-user@example.com",
            "universe_domain": "googleapis.com",
        })))
        .expect("parses");
        assert_eq!(user.account(), Some("dev-user@example.com"));
        assert_eq!(user.quota_project_id(), Some("dev-project"));
        assert!(user.client_id().ends_with(".apps.googleusercontent.com"));
        let shown = format!("{user:?} {user:#?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains(REFRESH),
            "{shown}"
        );
        assert!(shown.contains("dev-user@example.com"), "{shown}");

        let bare = AuthorizedUserCredentials::from_json(&file(serde_json::json!({"account": ""})))
            .expect("parses");
        assert_eq!(bare.account(), None);
        assert_eq!(bare.quota_project_id(), None);
    }

    #[test]
    fn file_errors_name_the_field_and_never_quote_a_secret() {
        let cases = [
            (
                file(serde_json::json!({"type": "service_account"})),
                "expected \"authorized_user\"",
            ),
            (
                file(serde_json::json!({"type": "external_account"})),
                "expected \"authorized_user\"",
            ),
            (file(serde_json::json!({"client_id": ""})), "client_id"),
            (
                file(serde_json::json!({"client_secret": null})),
                "client_secret",
            ),
            (
                file(serde_json::json!({"refresh_token": " "})),
                "refresh_token",
            ),
            (
                file(serde_json::json!({"refresh_token": 5})),
                "refresh_token",
            ),
            (file(serde_json::json!({"account": 5})), "account"),
            (file(Value::Null)[..60].to_owned(), "not valid JSON"),
        ];
        for (json, expected) in cases {
            let error =
                AuthorizedUserCredentials::parse(&json, "/home/u/adc.json").expect_err("invalid");
            let shown = format!("{error} {error:?}");
            assert!(shown.contains("/home/u/adc.json"), "{shown}");
            assert!(shown.contains(expected), "{expected}: {shown}");
            assert!(
                !shown.contains(SECRET) && !shown.contains(REFRESH),
                "{shown}"
            );
        }
    }

    #[test]
    fn refresh_grant_refusals_are_classified_by_whose_fault_they_are() {
        use Rejection::{CredentialRejected, InvalidArgument, NotFound, Other, PermissionDenied};
        #[rustfmt::skip]
        let cases = [
            (400, "invalid_grant", "Token has been expired or revoked.", CredentialRejected, None),
            (400, "invalid_grant", "reauth related error (invalid_rapt)", CredentialRejected, None),
            (401, "invalid_client", "The OAuth client was not found.", CredentialRejected, None),
            (401, "unauthorized_client", "", CredentialRejected, None),
            (401, "disabled_client", "", CredentialRejected, None),
            (400, "invalid_scope", "Some requested scopes were invalid.", InvalidArgument, Some("scopes")),
            (403, "access_denied", "", PermissionDenied, None),
            (400, "admin_policy_enforced", "", PermissionDenied, None),
            (400, "invalid_request", "", Other, None),
            (404, "something_new", "", NotFound, None),
        ];
        for (status, code, description, rejection, field) in cases {
            let body = serde_json::json!({"error": code, "error_description": description});
            let got = rejection_with(status, &body.to_string(), classify);
            assert_eq!(
                (got.rejection, got.field.as_deref(), got.error.as_str()),
                (rejection, field, code),
                "{status} {code}"
            );
        }
    }
}
