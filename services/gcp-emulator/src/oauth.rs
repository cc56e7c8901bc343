//! The OAuth2 token endpoint (`oauth2.googleapis.com/token`) and Google's public keys.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::errors::{OAuthError, json_response};
use crate::keys::UnverifiedJwt;
use crate::state::{Grant, State, TokenRecord, now};
use crate::world::{ServiceAccount, WorkspaceUser};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The audiences Google accepts in a JWT-bearer assertion (besides the emulator's own URLs).
const GOOGLE_TOKEN_AUDIENCES: [&str; 3] = [
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
    "https://accounts.google.com/o/oauth2/token",
];
/// Allowed distance of `iat`/`exp` from the emulator's clock.
const CLOCK_SKEW_SECS: i64 = 300;
/// The longest assertion Google accepts.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// What Google's token endpoint answers as `expires_in`.
const ACCESS_TOKEN_LIFETIME_SECS: i64 = 3599;
const TIMEFRAME_ERROR: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
    reasonable timeframe. Check your iat and exp values in the JWT claim.";
/// Google's answer to domain-wide delegation for a user it does not know.
const UNKNOWN_USER_ERROR: &str = "Invalid email or User ID";
const DWD_ERROR: &str = "Client is unauthorized to retrieve access tokens using this method, or client \
    not authorized for any of the scopes requested.";

/// Parses an `application/x-www-form-urlencoded` body; a repeated field keeps its first value.
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        fields
            .entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    fields
}

/// Whether `scope` is a syntactically valid OAuth scope for Google.
pub(crate) fn valid_scope(scope: &str) -> bool {
    matches!(scope, "openid" | "email" | "profile")
        || (scope.starts_with("https://")
            && scope.len() > "https://".len()
            && !scope.contains(char::is_whitespace))
}

/// Splits a space-delimited scope string, rejecting an empty or invalid one.
pub(crate) fn parse_scopes(value: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let scopes: Vec<String> = value
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return Err(OAuthError::invalid_scope(
            "Empty or missing scope not allowed.",
        ));
    }
    if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
        return Err(OAuthError::invalid_scope(format!(
            "Invalid OAuth scope or ID token audience provided: {bad}"
        )));
    }
    Ok(scopes)
}

/// `POST /token`.
pub(crate) async fn token(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let result = match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => jwt_bearer(&state, &form),
        Some("refresh_token") => refresh_token(&state, &form),
        Some(other) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("Invalid grant_type: {other}"),
        )),
        None => Err(OAuthError::invalid_request(
            "Missing required parameter: grant_type",
        )),
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => error.into_response(),
    }
}

fn jwt_bearer(
    state: &State,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, OAuthError> {
    let assertion = form
        .get("assertion")
        .ok_or_else(|| OAuthError::invalid_request("Missing required parameter: assertion"))?;
    let jwt = UnverifiedJwt::parse(assertion)
        .ok_or_else(|| OAuthError::invalid_grant("Invalid JWT: Failed to parse the assertion."))?;
    let account = verified_assertion_account(state, &jwt)?;
    check_assertion_audience(state, &jwt)?;
    check_assertion_times(&jwt)?;

    if let Some(audience) = jwt.claim_str("target_audience") {
        if audience.is_empty() {
            return Err(OAuthError::invalid_scope(
                "Invalid OAuth scope or ID token audience provided.",
            ));
        }
        let (id_token, _) = state
            .sign_service_account_id_token(account, audience, true, None)
            .map_err(|e| {
                OAuthError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_failure",
                    e.to_string(),
                )
            })?;
        return Ok(json!({ "id_token": id_token }));
    }

    let scopes = parse_scopes(jwt.claim_str("scope"))?;
    let user = delegated_user(state, account, &jwt, &scopes)?;
    let lifetime = state.lifetime(ACCESS_TOKEN_LIFETIME_SECS);
    let (principal, email, unique_id) = match user {
        Some(user) => (
            format!("user:{}", user.email),
            user.email.clone(),
            user.unique_id(),
        ),
        None => (
            format!("serviceAccount:{}", account.email),
            account.email.clone(),
            account.unique_id(),
        ),
    };
    let subject = user.map(|u| u.email.clone());
    let token = state.mint_access_token(
        "ya29.c.",
        TokenRecord {
            principal,
            email: Some(email),
            unique_id: Some(unique_id),
            client: account.unique_id(),
            scopes,
            expires_at: now() + lifetime,
            grant: Grant::JwtBearer,
            subject,
            delegates: Vec::new(),
            access_boundary: None,
            user_project: None,
        },
    );
    Ok(json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}))
}

/// Finds the assertion's service account by `iss` and checks the signature with its key.
fn verified_assertion_account<'a>(
    state: &'a State,
    jwt: &UnverifiedJwt,
) -> Result<&'a ServiceAccount, OAuthError> {
    let issuer = jwt
        .claim_str("iss")
        .ok_or_else(|| OAuthError::invalid_grant("Invalid JWT: Missing required claim: iss"))?;
    let account = state
        .world
        .service_account(issuer)
        .filter(|a| !a.disabled)
        .ok_or_else(|| OAuthError::invalid_grant("Invalid grant: account not found"))?;
    let key = state
        .account_keys
        .get(&account.email)
        .ok_or_else(|| OAuthError::invalid_grant("Invalid JWT Signature."))?;
    if jwt.kid().is_some_and(|kid| kid != key.kid()) || !jwt.verify(&key.public_key()) {
        return Err(OAuthError::invalid_grant("Invalid JWT Signature."));
    }
    Ok(account)
}

/// The Workspace user a domain-wide-delegation assertion acts as (`sub`), or `None` without
/// delegation (no `sub`, or the account's own email). Delegation needs DWD enabled on the
/// account for every requested scope (else `unauthorized_client`), and a `sub` naming a user
/// of the directory by email or numeric id (else `invalid_grant`, as Google answers).
fn delegated_user<'a>(
    state: &'a State,
    account: &ServiceAccount,
    jwt: &UnverifiedJwt,
    scopes: &[String],
) -> Result<Option<&'a WorkspaceUser>, OAuthError> {
    let subject = match jwt.claims.get("sub") {
        None => return Ok(None),
        Some(Value::String(sub)) if *sub == account.email => return Ok(None),
        Some(sub) => sub.as_str(),
    };
    if !account.dwd
        || !account.dwd_scopes.is_empty() && scopes.iter().any(|s| !account.dwd_scopes.contains(s))
    {
        return Err(OAuthError::unauthorized_client(DWD_ERROR));
    }
    subject
        .and_then(|sub| state.world.workspace_user(sub))
        .map(Some)
        .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN_USER_ERROR))
}

fn check_assertion_audience(state: &State, jwt: &UnverifiedJwt) -> Result<(), OAuthError> {
    let audience = jwt.claim_str("aud").unwrap_or_default();
    let own = ["/token", "/oauth2/v4/token", "/o/oauth2/token"]
        .map(|path| format!("{}{path}", state.base_url));
    if GOOGLE_TOKEN_AUDIENCES.contains(&audience) || own.iter().any(|a| a == audience) {
        Ok(())
    } else {
        Err(OAuthError::invalid_grant(
            "Invalid JWT: Failed audience check. The expected audience is https://oauth2.googleapis.com/token.",
        ))
    }
}

/// `iat` and `exp` must be integer NumericDates (see [`UnverifiedJwt::claim_numeric_date`]),
/// `exp` after `iat` by at most an hour, and both within [`CLOCK_SKEW_SECS`] of now. All
/// arithmetic is checked: hostile values are refused, never overflowed.
fn check_assertion_times(jwt: &UnverifiedJwt) -> Result<(), OAuthError> {
    assertion_times_ok(
        jwt.claim_numeric_date("iat"),
        jwt.claim_numeric_date("exp"),
        now(),
    )
    .then_some(())
    .ok_or_else(|| OAuthError::invalid_grant(TIMEFRAME_ERROR))
}

fn assertion_times_ok(iat: Option<i64>, exp: Option<i64>, now: i64) -> bool {
    let (Some(iat), Some(exp)) = (iat, exp) else {
        return false;
    };
    let lifetime_ok = exp
        .checked_sub(iat)
        .is_some_and(|lifetime| (1..=MAX_ASSERTION_LIFETIME_SECS).contains(&lifetime));
    let issued_ok = now
        .checked_add(CLOCK_SKEW_SECS)
        .is_some_and(|latest| iat <= latest);
    let unexpired = now
        .checked_sub(CLOCK_SKEW_SECS)
        .is_some_and(|earliest| exp >= earliest);
    lifetime_ok && issued_ok && unexpired
}

fn refresh_token(
    state: &State,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, OAuthError> {
    let field = |name: &str| {
        form.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            OAuthError::invalid_request(format!("Missing required parameter: {name}"))
        })
    };
    let refresh = field("refresh_token")?;
    let client_id = field("client_id")?;
    let client_secret = field("client_secret")?;
    let client = state
        .world
        .authorized_users
        .iter()
        .filter(|u| &u.client_id == client_id);
    let mut client = client.peekable();
    if client.peek().is_none() {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        ));
    }
    let user = client
        .filter(|u| &u.client_secret == client_secret)
        .collect::<Vec<_>>();
    if user.is_empty() {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Unauthorized",
        ));
    }
    let user = user
        .into_iter()
        .find(|u| &u.refresh_token == refresh)
        .ok_or_else(|| OAuthError::invalid_grant("Token has been expired or revoked."))?;
    let scopes = match form.get("scope") {
        Some(scope) => parse_scopes(Some(scope))?,
        None if user.scopes.is_empty() => vec![crate::world::CLOUD_PLATFORM_SCOPE.to_owned()],
        None => user.scopes.clone(),
    };
    if !user.scopes.is_empty()
        && let Some(extra) = scopes.iter().find(|s| !user.scopes.contains(s))
    {
        return Err(OAuthError::invalid_scope(format!(
            "Some requested scopes were invalid. {{invalid=[{extra}]}}"
        )));
    }
    let lifetime = state.lifetime(ACCESS_TOKEN_LIFETIME_SECS);
    let token = state.mint_access_token(
        "ya29.a0",
        TokenRecord {
            principal: format!("user:{}", user.email),
            email: Some(user.email.clone()),
            unique_id: Some(state.world.user_id(&user.email)),
            client: user.client_id.clone(),
            scopes: scopes.clone(),
            expires_at: now() + lifetime,
            grant: Grant::RefreshToken,
            subject: None,
            delegates: Vec::new(),
            access_boundary: None,
            user_project: None,
        },
    );
    let mut response = json!({
        "access_token": token,
        "expires_in": lifetime,
        "token_type": "Bearer",
        "scope": scopes.join(" "),
    });
    if scopes.iter().any(|s| s == "openid") {
        response["id_token"] = user_id_token(state, user, &scopes, lifetime)?.into();
    }
    Ok(response)
}

/// The OpenID Connect ID token of a refresh grant that was granted `openid`.
fn user_id_token(
    state: &State,
    user: &crate::world::AuthorizedUser,
    scopes: &[String],
    lifetime: i64,
) -> Result<String, OAuthError> {
    let iat = now();
    let mut claims = json!({
        "iss": "https://accounts.google.com",
        "aud": user.client_id,
        "azp": user.client_id,
        "sub": state.world.user_id(&user.email),
        "iat": iat,
        "exp": iat + lifetime,
    });
    if scopes
        .iter()
        .any(|s| s == "email" || s.ends_with("/auth/userinfo.email"))
    {
        claims["email"] = user.email.clone().into();
        claims["email_verified"] = true.into();
    }
    state.id_token_key().sign_jwt(&claims).map_err(|e| {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_failure",
            e.to_string(),
        )
    })
}

fn cacheable(body: serde_json::Value) -> Response {
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300, must-revalidate, no-transform"),
    );
    response
}

/// `GET /oauth2/v1/certs`: the ID-token signing keys as an x509 PEM map.
pub(crate) async fn certs_v1(AxumState(state): AxumState<Arc<State>>) -> Response {
    let map: serde_json::Map<String, serde_json::Value> = state
        .published_id_token_keys()
        .iter()
        .map(|k| (k.kid().to_owned(), k.certificate_pem().into()))
        .collect();
    cacheable(map.into())
}

/// `GET /oauth2/v3/certs`: the ID-token signing keys as a JWKS.
pub(crate) async fn certs_v3(AxumState(state): AxumState<Arc<State>>) -> Response {
    let keys: Vec<_> = state
        .published_id_token_keys()
        .iter()
        .map(|k| k.jwk())
        .collect();
    cacheable(json!({ "keys": keys }))
}

/// `GET /.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(AxumState(state): AxumState<Arc<State>>) -> Response {
    cacheable(json!({
        "issuer": "https://accounts.google.com",
        "jwks_uri": format!("{}/oauth2/v3/certs", state.base_url),
        "token_endpoint": format!("{}/token", state.base_url),
        "response_types_supported": ["code", "token", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["aud", "email", "email_verified", "exp", "iat", "iss", "sub", "azp"],
    }))
}

/// `GET /robot/v1/metadata/x509/{email}`: a service account's public certificates.
pub(crate) async fn robot_x509(
    AxumState(state): AxumState<Arc<State>>,
    Path(email): Path<String>,
    _headers: HeaderMap,
) -> Response {
    match state
        .world
        .service_account(&email)
        .and_then(|a| state.account_keys.get(&a.email))
    {
        Some(key) => cacheable(json!({ key.kid(): key.certificate_pem() })),
        None => crate::errors::ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Service account {email} not found"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_validated() {
        assert!(parse_scopes(None).is_err());
        assert!(parse_scopes(Some("  ")).is_err());
        assert!(parse_scopes(Some("cloud-platform")).is_err());
        assert_eq!(
            parse_scopes(Some(
                "openid https://www.googleapis.com/auth/cloud-platform"
            ))
            .expect("valid")
            .len(),
            2
        );
    }

    #[test]
    fn assertion_times_are_checked_without_overflow() {
        let now = 1_767_225_600;
        assert!(assertion_times_ok(Some(now), Some(now + 3600), now));
        assert!(assertion_times_ok(Some(now - 10), Some(now + 3590), now));
        assert!(assertion_times_ok(
            Some(now + CLOCK_SKEW_SECS),
            Some(now + 600),
            now
        ));
        let refused = [
            (None, Some(now + 3600)),
            (Some(now), None),
            (Some(now), Some(now)),
            (Some(now), Some(now + 3601)),
            (Some(now + 3600), Some(now)),
            (Some(now + CLOCK_SKEW_SECS + 1), Some(now + 3600)),
            (Some(now - 4000), Some(now - CLOCK_SKEW_SECS - 1)),
            (Some(0), Some(i64::MAX)),
            (Some(i64::MAX - 3600), Some(i64::MAX)),
            (Some(i64::MAX), Some(i64::MAX)),
            (Some(i64::MIN), Some(i64::MAX)),
            (Some(i64::MAX), Some(i64::MIN)),
            (Some(i64::MIN), Some(i64::MIN + 3600)),
        ];
        for (iat, exp) in refused {
            assert!(!assertion_times_ok(iat, exp, now), "{iat:?} {exp:?}");
        }
        // and at the edges of the clock itself
        assert!(!assertion_times_ok(Some(0), Some(3600), i64::MAX));
        assert!(!assertion_times_ok(Some(0), Some(3600), i64::MIN));
    }

    #[test]
    fn form_keeps_first_value_and_decodes() {
        let form = parse_form(b"a=1&a=2&b=x%20y+z");
        assert_eq!(form["a"], "1");
        assert_eq!(form["b"], "x y z");
    }
}
