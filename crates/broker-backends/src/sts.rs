//! The Security Token Service, RFC 8693 token exchange (google-protocols.md §4): federation
//! (a subject token from an identity provider exchanged for a Google access token, the first
//! step of every `external_account` flow and the broker's ExchangeToken RPC) and downscoping
//! a Google access token with a Credential Access Boundary (§4.5).
//!
//! See <https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token>,
//! <https://cloud.google.com/iam/docs/downscoping-short-lived-credentials> and
//! <https://www.rfc-editor.org/rfc/rfc8693>.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_core::{
    AccessBoundary, Clock, MAX_OPTIONS_LEN, Rejection, ScopeSet, Secret, SourceError, Token,
};
use reqwest::header::AUTHORIZATION;
use serde_json::{Map, Value};

use crate::GoogleEndpoints;
use crate::http::HttpClient;
use crate::oauth::{self, OAuthError, TokenResponse, Verdict};

/// The RFC 8693 grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of a Google access token: the result of every exchange the broker asks for,
/// and the subject of a downscoping.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// HTTP Basic client authentication at STS (workforce pools' OAuth clients): `Authorization:
/// Basic base64(client_id:client_secret)`, the id and secret as they are (Python google-auth
/// does not form-encode them first), an absent secret sent as empty.
#[derive(Debug, Clone, Copy)]
pub struct StsClientAuth<'a> {
    /// `client_id`.
    pub client_id: &'a str,
    /// `client_secret`, when the client has one.
    pub client_secret: Option<&'a Secret>,
}

/// One RFC 8693 exchange at STS: what [`exchange_token`] sends. `Debug` shows the subject
/// token's fingerprint only.
#[derive(Debug, Clone, Copy)]
pub struct StsExchange<'a> {
    /// `audience`: the provider's full resource name (federation); `None` for downscoping.
    pub audience: Option<&'a str>,
    /// `subject_token`: the token exchanged.
    pub subject_token: &'a Secret,
    /// `subject_token_type`: `urn:ietf:params:oauth:token-type:jwt`, `...:id_token`,
    /// `...:saml2`, `urn:ietf:params:aws:token-type:aws4_request`, `...:mtls`, or
    /// [`ACCESS_TOKEN_TYPE`] to downscope.
    pub subject_token_type: &'a str,
    /// `scope`, space-delimited; `None` (or empty) leaves the field out (downscoping).
    pub scopes: Option<&'a ScopeSet>,
    /// `requested_token_type`: [`ACCESS_TOKEN_TYPE`] unless told otherwise.
    pub requested_token_type: &'a str,
    /// `options.userProject`: the project a workforce exchange is billed to.
    pub user_project: Option<&'a str>,
    /// `options.accessBoundary`: a Credential Access Boundary for the issued token.
    pub access_boundary: Option<&'a AccessBoundary>,
    /// HTTP Basic client authentication, when the credential has an OAuth client.
    pub client_auth: Option<StsClientAuth<'a>>,
}

impl<'a> StsExchange<'a> {
    /// An exchange of `subject_token` (of `subject_token_type`) for an access token, with
    /// nothing else set.
    pub fn new(subject_token: &'a Secret, subject_token_type: &'a str) -> Self {
        Self {
            audience: None,
            subject_token,
            subject_token_type,
            scopes: None,
            requested_token_type: ACCESS_TOKEN_TYPE,
            user_project: None,
            access_boundary: None,
            client_auth: None,
        }
    }

    /// Whether this is a downscoping (the subject is a Google access token) rather than a
    /// federation exchange.
    pub fn is_downscoping(&self) -> bool {
        self.subject_token_type == ACCESS_TOKEN_TYPE
    }

    /// The `options` JSON: `{"userProject": ..., "accessBoundary": ...}` with what is set;
    /// `None` when nothing is.
    fn options(&self) -> Option<Value> {
        let mut options = Map::new();
        if let Some(project) = self.user_project {
            options.insert("userProject".to_owned(), Value::from(project));
        }
        if let Some(boundary) = self.access_boundary
            && let Value::Object(sts) = boundary.sts_options()
        {
            options.extend(sts);
        }
        (!options.is_empty()).then_some(Value::Object(options))
    }
}

/// What STS issued. `Debug` shows the token's fingerprint only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsToken {
    /// `access_token`.
    pub token: Secret,
    /// `issued_token_type`: the requested token type (STS echoes it; assumed when absent).
    pub issued_token_type: String,
    /// `expires_in`: always present for federation (an answer without it is refused); absent
    /// for downscoping, whose token expires with its subject.
    pub expires_in: Option<Duration>,
}

/// Makes the RFC 8693 exchange `request` at `token_url` (the STS of an `external_account`
/// file, or the broker's configured [`GoogleEndpoints::sts_url`]): the broker's own
/// federation and its ExchangeToken RPC, which passes a caller's subject token through.
///
/// The request is a form, as Google's client libraries send it
/// (google-protocols.md §4.1): `grant_type` (token exchange), `audience`, `scope`
/// (space-delimited), `requested_token_type`, `subject_token`, `subject_token_type` and
/// `options`, in that order, each left out when empty. `options` is the JSON object
/// `{"userProject": ..., "accessBoundary": ...}` put in the form once, as Go's client does
/// (Python percent-encodes it a second time; STS accepts both). With
/// [`StsExchange::client_auth`], HTTP Basic client authentication; otherwise no
/// `Authorization` header at all (Google warns that one may make the request fail).
/// Transient failures are retried like every call ([`HttpClient::send_with_retry`]); Google's
/// clients do not retry STS, but a 5xx or 429 is never a verdict on the subject token.
///
/// The answer must be a `Bearer` access token whose `issued_token_type`, when given, is the
/// requested one; a federation answer must carry a positive `expires_in` (Python google-auth
/// fails without it; Go refuses one that is not positive).
///
/// # Errors
///
/// Errors from STS name its host as their `upstream`.
///
/// - [`SourceError::Rejected`] for STS's refusals, classified for a subject token and an
///   audience of the caller's choosing:
///
///   | STS `error` | federation: rejection, field | downscoping: rejection, field |
///   |---|---|---|
///   | `invalid_grant` (a subject token that is malformed, expired, for another audience, badly signed) | `InvalidArgument`, `subject_token` | `InvalidArgument`, `subject_token` |
///   | `invalid_target` (no such pool or provider, or a disabled one) | `InvalidArgument`, `audience` | `NotFound` |
///   | `unauthorized_client` (the provider's attribute condition refused the subject), `access_denied` | `PermissionDenied` | `PermissionDenied` |
///   | `invalid_client` (the workforce OAuth client) | `CredentialRejected` | `CredentialRejected` |
///   | `invalid_scope` | `InvalidArgument`, `scopes` | `InvalidArgument`, `access_boundary` |
///   | `invalid_request` | `InvalidArgument`, the field Google's description names (`audience`, `subject_token`, `subject_token_type`, `scopes`, `requested_token_type`, `options`, `options.user_project`), else none | `InvalidArgument`, `access_boundary` |
///   | anything else, or no OAuth error body: by HTTP status, 401 / 403 / 404 / other 4xx | `CredentialRejected` / `PermissionDenied` / `NotFound` / `Other` | the same |
///
/// - the transient errors of [`HttpClient::send_with_retry`];
/// - [`SourceError::Malformed`] for an answer that is not an access token of the requested
///   type, or a federation answer without `expires_in`;
/// - [`SourceError::InvalidRequest`] (nothing sent): field `access_boundary` for a boundary
///   that [`AccessBoundary::validate`] refuses, field `options` for `options` longer than
///   [`MAX_OPTIONS_LEN`] characters.
pub async fn exchange_token(
    http: &HttpClient,
    token_url: &str,
    request: &StsExchange<'_>,
    deadline: Option<Instant>,
) -> Result<StsToken, SourceError> {
    if let Some(boundary) = request.access_boundary {
        boundary
            .validate()
            .map_err(|e| SourceError::InvalidRequest {
                field: "access_boundary".to_owned(),
                message: e.to_string(),
            })?;
    }
    let options = request.options().map(|o| o.to_string());
    if let Some(options) = &options {
        let length = options.chars().count();
        if length > MAX_OPTIONS_LEN {
            return Err(SourceError::InvalidRequest {
                field: "options".to_owned(),
                message: format!(
                    "the exchange makes {length} characters of STS options; STS accepts at most {MAX_OPTIONS_LEN}"
                ),
            });
        }
    }
    let scope = request
        .scopes
        .filter(|s| !s.is_empty())
        .map(ScopeSet::joined);
    let form: Vec<(&str, &str)> = [
        ("grant_type", Some(TOKEN_EXCHANGE)),
        ("audience", request.audience),
        ("scope", scope.as_deref()),
        ("requested_token_type", Some(request.requested_token_type)),
        ("subject_token", Some(request.subject_token.expose())),
        ("subject_token_type", Some(request.subject_token_type)),
        ("options", options.as_deref()),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.filter(|v| !v.is_empty()).map(|v| (name, v)))
    .collect();
    let basic = request.client_auth.map(|auth| {
        let secret = auth.client_secret.map_or("", Secret::expose);
        Secret::new(format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{secret}", auth.client_id))
        ))
    });
    let downscoping = request.is_downscoping();
    let response = http
        .send_with_retry(
            "sts.token",
            deadline,
            |client| {
                let builder = client.post(token_url).form(&form);
                match &basic {
                    Some(basic) => builder.header(AUTHORIZATION, basic.expose()),
                    None => builder,
                }
            },
            |response| {
                oauth::interpret(response, "STS", |error| {
                    if downscoping {
                        classify_downscoping_of(error, "subject_token")
                    } else {
                        classify_federation(error)
                    }
                })
            },
        )
        .await?;
    let token = issued(response, request.requested_token_type, !downscoping)?;
    tracing::debug!(
        subject_token = %request.subject_token.fingerprint(),
        subject_token_type = request.subject_token_type,
        audience = request.audience.unwrap_or("-"),
        client_auth = request.client_auth.is_some(),
        user_project = request.user_project.is_some(),
        boundary = request.access_boundary.is_some(),
        token = %token.token.fingerprint(),
        "token exchanged"
    );
    Ok(token)
}

/// Checks STS's answer: the requested token type, and `expires_in` where it is required.
fn issued(
    response: TokenResponse,
    requested: &str,
    expires_in_required: bool,
) -> Result<StsToken, SourceError> {
    if response
        .issued_token_type
        .as_ref()
        .is_some_and(|issued| issued != requested)
    {
        // Not quoted: nothing of a successful answer is.
        return Err(SourceError::Malformed {
            upstream: response.upstream,
            message: "STS answered HTTP 200 with an issued_token_type other than the one requested"
                .to_owned(),
        });
    }
    if expires_in_required && response.expires_in.is_none() {
        return Err(SourceError::Malformed {
            upstream: response.upstream,
            message: "STS answered a federation exchange without an expires_in".to_owned(),
        });
    }
    Ok(StsToken {
        token: response.access_token,
        issued_token_type: response
            .issued_token_type
            .unwrap_or_else(|| requested.to_owned()),
        expires_in: response.expires_in,
    })
}

/// Whose fault STS's refusal of a federation exchange is (the table on [`exchange_token`]).
pub(crate) fn classify_federation(error: &OAuthError<'_>) -> Verdict {
    match error.error {
        Some("invalid_grant") => Verdict::invalid("subject_token"),
        Some("invalid_target") => Verdict::invalid("audience"),
        Some("unauthorized_client" | "access_denied") => Verdict::of(Rejection::PermissionDenied),
        Some("invalid_client") => Verdict::of(Rejection::CredentialRejected),
        Some("invalid_scope") => Verdict::invalid("scopes"),
        Some("invalid_request") => Verdict {
            rejection: Rejection::InvalidArgument,
            field: field_named(error.description),
        },
        _ => Verdict::by_status(error.status),
    }
}

/// The request field an `invalid_request` description names: `Invalid value for "audience"`,
/// `Missing required field: subject_token`, a mention of `"userProject"`. Only fields the
/// broker's callers choose are named.
fn field_named(description: Option<&str>) -> Option<&'static str> {
    let description = description?;
    if description.contains("userProject") {
        return Some("options.user_project");
    }
    let named = description
        .split_once("Invalid value for \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name)
        .or_else(|| {
            description
                .split_once("Missing required field: ")
                .map(|(_, rest)| rest.trim_end_matches('.'))
                .and_then(|rest| rest.split_whitespace().next())
        })?;
    Some(match named {
        "audience" => "audience",
        "subject_token" | "subjectToken" => "subject_token",
        "subject_token_type" | "subjectTokenType" => "subject_token_type",
        "scope" | "scopes" => "scopes",
        "requested_token_type" | "requestedTokenType" => "requested_token_type",
        "options" => "options",
        _ => return None,
    })
}

/// Exchanges `token` for one restricted by `boundary`, posting to
/// [`GoogleEndpoints::sts_url`].
///
/// The form carries `grant_type` (token exchange), `subject_token_type` and
/// `requested_token_type` (access token), `subject_token` and `options` =
/// `{"accessBoundary": ...}` as plain JSON in one form value (as Go's client sends it; no audience
/// or scope). Google answers without `expires_in`: the result expires with `token`. Should an
/// `expires_in` come, the result still never outlives `token`. Scopes and principal are
/// `token`'s. Transient failures are retried like every call ([`HttpClient::send_with_retry`]);
/// `clock` dates an `expires_in`.
///
/// # Errors
///
/// Errors from STS name its host (`sts.googleapis.com`) as their `upstream`, never the token
/// endpoint's.
///
/// - [`SourceError::Rejected`] for STS's refusals, classified as follows:
///
///   | STS `error` | rejection | field |
///   |---|---|---|
///   | `invalid_request`, `invalid_scope` | `InvalidArgument` (STS refused the boundary) | `access_boundary` |
///   | `invalid_grant` | `CredentialRejected` (STS refused the broker's own access token) | |
///   | `unauthorized_client`, `access_denied` | `PermissionDenied` | |
///   | `invalid_target` | `NotFound` | |
///   | anything else, or no OAuth error body: by HTTP status, 401 / 403 / 404 / other 4xx | `CredentialRejected` / `PermissionDenied` / `NotFound` / `Other` | |
///
/// - the transient errors of [`HttpClient::send_with_retry`];
/// - [`SourceError::Malformed`] for an answer that is not an access token;
/// - [`SourceError::InvalidRequest`] (field `access_boundary`, nothing sent) for a boundary
///   whose `options` exceed [`MAX_OPTIONS_LEN`] characters, which
///   [`AccessBoundary::validate`] already refuses.
pub async fn downscope(
    http: &HttpClient,
    endpoints: &GoogleEndpoints,
    clock: &dyn Clock,
    token: &Token,
    boundary: &AccessBoundary,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    let options = boundary.sts_options().to_string();
    let length = options.chars().count();
    if length > MAX_OPTIONS_LEN {
        return Err(SourceError::InvalidRequest {
            field: "access_boundary".to_owned(),
            message: format!(
                "the boundary makes {length} characters of STS options; STS accepts at most {MAX_OPTIONS_LEN}"
            ),
        });
    }
    let sts_url = endpoints.sts_url.as_str();
    let started = clock.now();
    let response = http
        .send_with_retry(
            "sts.token",
            deadline,
            |client| {
                client.post(sts_url).form(&[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("requested_token_type", ACCESS_TOKEN_TYPE),
                    ("subject_token", token.secret.expose()),
                    ("options", options.as_str()),
                ])
            },
            |response| oauth::interpret(response, "STS", classify),
        )
        .await?;
    let response = issued(response, ACCESS_TOKEN_TYPE, false)?;
    let expires_at = match response.expires_in {
        Some(expires_in) => started
            .checked_add(expires_in)
            .map_or(token.expires_at, |at| at.min(token.expires_at)),
        None => token.expires_at,
    };
    let downscoped = Token {
        secret: response.token,
        expires_at,
        scopes: token.scopes.clone(),
        principal: token.principal.clone(),
    };
    tracing::debug!(
        principal = %downscoped.principal,
        source_token = %token.secret.fingerprint(),
        token = %downscoped.secret.fingerprint(),
        rules = boundary.rules.len(),
        "token downscoped"
    );
    Ok(downscoped)
}

/// `token`, downscoped by `boundary` when there is one: the last step of every flow that
/// mints access tokens.
pub(crate) async fn apply_boundary(
    http: &HttpClient,
    endpoints: &GoogleEndpoints,
    clock: &dyn Clock,
    token: Token,
    boundary: Option<&AccessBoundary>,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    match boundary {
        Some(boundary) => downscope(http, endpoints, clock, &token, boundary, deadline).await,
        None => Ok(token),
    }
}

/// Whose fault STS's refusal of the downscoping of the broker's own token is (see
/// [`downscope`]): `invalid_grant` refuses the broker's own access token.
fn classify(error: &OAuthError<'_>) -> Verdict {
    match error.error {
        Some("invalid_grant") => Verdict::of(Rejection::CredentialRejected),
        _ => classify_downscoping_of(error, "subject_token"),
    }
}

/// Whose fault STS's refusal of a downscoping is, the subject token being the caller's
/// (`subject_field` names it).
fn classify_downscoping_of(error: &OAuthError<'_>, subject_field: &'static str) -> Verdict {
    match error.error {
        Some("invalid_request" | "invalid_scope") => Verdict::invalid("access_boundary"),
        Some("invalid_grant") => Verdict::invalid(subject_field),
        Some("unauthorized_client" | "access_denied") => Verdict::of(Rejection::PermissionDenied),
        Some("invalid_target") => Verdict::of(Rejection::NotFound),
        Some("invalid_client") => Verdict::of(Rejection::CredentialRejected),
        _ => Verdict::by_status(error.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tests::rejection_with;

    #[test]
    fn sts_refusals_are_classified_by_whose_fault_they_are() {
        #[rustfmt::skip]
        let cases = [
            (400, "invalid_request", Rejection::InvalidArgument, Some("access_boundary")),
            (400, "invalid_scope", Rejection::InvalidArgument, Some("access_boundary")),
            (400, "invalid_grant", Rejection::CredentialRejected, None),
            (400, "unauthorized_client", Rejection::PermissionDenied, None),
            (403, "access_denied", Rejection::PermissionDenied, None),
            (400, "invalid_target", Rejection::NotFound, None),
            (400, "unsupported_grant_type", Rejection::Other, None),
            (400, "invalid_client", Rejection::CredentialRejected, None),
            (400, "something_new", Rejection::Other, None),
            (403, "something_new", Rejection::PermissionDenied, None),
            (404, "something_new", Rejection::NotFound, None),
        ];
        for (status, code, rejection, field) in cases {
            let body = format!(r#"{{"error":"{code}","error_description":"why"}}"#);
            let got = rejection_with(status, &body, classify);
            assert_eq!(
                (got.rejection, got.field.as_deref(), got.error.as_str()),
                (rejection, field, code),
                "{status} {code}"
            );
        }
        for (status, body, rejection) in [
            (400, "", Rejection::Other),
            (401, "", Rejection::CredentialRejected),
            (403, "Forbidden", Rejection::PermissionDenied),
            (404, "<html>Not Found</html>", Rejection::NotFound),
        ] {
            let got = rejection_with(status, body, classify);
            assert_eq!(
                (got.rejection, got.field, got.error.as_str()),
                (rejection, None, "unknown"),
                "{status} {body}"
            );
        }
    }
}

#[cfg(test)]
mod exchange_tests {
    use super::*;
    use crate::oauth::tests::rejection_with;

    #[test]
    fn federation_refusals_name_the_callers_field() {
        #[rustfmt::skip]
        let cases = [
            (400, "invalid_grant", "The incoming JWT is expired.", Rejection::InvalidArgument, Some("subject_token")),
            (400, "invalid_target", "The target service indicated by the \"audience\" parameters is invalid.", Rejection::InvalidArgument, Some("audience")),
            (400, "unauthorized_client", "The given credential is rejected by the attribute condition.", Rejection::PermissionDenied, None),
            (403, "access_denied", "x", Rejection::PermissionDenied, None),
            (401, "invalid_client", "The OAuth client was not found.", Rejection::CredentialRejected, None),
            (400, "invalid_scope", "x", Rejection::InvalidArgument, Some("scopes")),
            (400, "invalid_request", "Invalid value for \"audience\". This value should be the full resource name.", Rejection::InvalidArgument, Some("audience")),
            (400, "invalid_request", "Invalid value for \"subject_token_type\": x.", Rejection::InvalidArgument, Some("subject_token_type")),
            (400, "invalid_request", "Missing required field: subject_token.", Rejection::InvalidArgument, Some("subject_token")),
            (400, "invalid_request", "A workforce pool token exchange requires \"userProject\" in options.", Rejection::InvalidArgument, Some("options.user_project")),
            (400, "invalid_request", "Invalid value for \"grant_type\".", Rejection::InvalidArgument, None),
            (400, "invalid_request", "Something else.", Rejection::InvalidArgument, None),
            (400, "unsupported_grant_type", "x", Rejection::Other, None),
            (404, "something_new", "x", Rejection::NotFound, None),
        ];
        for (status, code, description, rejection, field) in cases {
            let body =
                serde_json::json!({"error": code, "error_description": description}).to_string();
            let got = rejection_with(status, &body, classify_federation);
            assert_eq!(
                (got.rejection, got.field.as_deref(), got.error.as_str()),
                (rejection, field, code),
                "{status} {code} {description}"
            );
        }
    }

    #[test]
    fn a_callers_downscoping_refusal_blames_the_callers_token() {
        let got = rejection_with(
            400,
            r#"{"error":"invalid_grant","error_description":"The subject token is invalid or expired."}"#,
            |e| classify_downscoping_of(e, "subject_token"),
        );
        assert_eq!(
            (got.rejection, got.field.as_deref()),
            (Rejection::InvalidArgument, Some("subject_token"))
        );
    }

    #[test]
    fn options_carry_the_user_project_and_the_boundary() {
        let token = Secret::new("t");
        let mut request = StsExchange::new(&token, "urn:ietf:params:oauth:token-type:jwt");
        assert_eq!(request.options(), None);
        assert!(!request.is_downscoping());
        request.user_project = Some("billing-project");
        assert_eq!(
            request.options(),
            Some(serde_json::json!({"userProject": "billing-project"}))
        );
        let boundary = AccessBoundary {
            rules: vec![broker_core::AccessBoundaryRule {
                available_resource: "//storage.googleapis.com/projects/_/buckets/b".into(),
                available_permissions: vec!["inRole:roles/storage.objectViewer".into()],
                availability_condition: None,
            }],
        };
        request.access_boundary = Some(&boundary);
        let options = request.options().expect("options");
        assert_eq!(options["userProject"], "billing-project");
        assert_eq!(
            options["accessBoundary"]["accessBoundaryRules"][0]["availableResource"],
            "//storage.googleapis.com/projects/_/buckets/b"
        );
        let shown = format!("{request:?}");
        assert!(!shown.contains("\"t\""), "{shown}");
    }

    #[test]
    fn answers_must_be_of_the_requested_type_and_federation_needs_expires_in() {
        let answer = |issued: Option<&str>, expires_in: Option<u64>| TokenResponse {
            upstream: "sts.googleapis.com".to_owned(),
            access_token: Secret::new("ya29.d.secret"),
            expires_in: expires_in.map(Duration::from_secs),
            issued_token_type: issued.map(str::to_owned),
            id_token: None,
        };
        let ok = issued(
            answer(Some(ACCESS_TOKEN_TYPE), Some(3600)),
            ACCESS_TOKEN_TYPE,
            true,
        )
        .expect("ok");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(ok.issued_token_type, ACCESS_TOKEN_TYPE);
        let assumed = issued(answer(None, None), ACCESS_TOKEN_TYPE, false).expect("ok");
        assert_eq!(assumed.issued_token_type, ACCESS_TOKEN_TYPE);
        for (issued_type, expires_in, required) in [
            (
                Some("urn:ietf:params:oauth:token-type:jwt"),
                Some(3600),
                true,
            ),
            (Some(ACCESS_TOKEN_TYPE), None, true),
        ] {
            let error = issued(answer(issued_type, expires_in), ACCESS_TOKEN_TYPE, required)
                .expect_err("malformed");
            let shown = format!("{error} {error:?}");
            assert!(matches!(error, SourceError::Malformed { .. }), "{shown}");
            assert!(!shown.contains("ya29"), "{shown}");
        }
    }
}
