//! The IAM Service Account Credentials API (`iamcredentials.googleapis.com/v1`):
//! generateAccessToken, generateIdToken, signJwt and signBlob.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::errors::{ApiError, json_response};
use crate::state::{Grant, State, TokenRecord, now};
use crate::world::{CLOUD_PLATFORM_SCOPE, IAM_SCOPE, ServiceAccount};

/// The longest generateAccessToken lifetime without the org-policy exemption.
const MAX_LIFETIME_SECS: i64 = 3600;
/// The longest with `constraints/iam.allowServiceAccountCredentialLifetimeExtension`.
const MAX_EXTENDED_LIFETIME_SECS: i64 = 43200;
/// signJwt's limit on how far ahead `exp` may be.
const MAX_SIGN_JWT_EXP_AHEAD_SECS: i64 = 43200;

#[derive(Debug, Clone, Copy)]
enum Method {
    GenerateAccessToken,
    GenerateIdToken,
    SignJwt,
    SignBlob,
}

impl Method {
    fn permission(self) -> &'static str {
        match self {
            Self::GenerateAccessToken => "iam.serviceAccounts.getAccessToken",
            Self::GenerateIdToken => "iam.serviceAccounts.getOpenIdToken",
            Self::SignJwt => "iam.serviceAccounts.signJwt",
            Self::SignBlob => "iam.serviceAccounts.signBlob",
        }
    }
}

/// `POST /v1/projects/{project}/serviceAccounts/{account}:{method}`.
pub(crate) async fn dispatch(
    AxumState(state): AxumState<Arc<State>>,
    Path((project, name_and_method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&state, &project, &name_and_method, &headers, &body) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => error.into_response(),
    }
}

fn handle(
    state: &State,
    project: &str,
    name_and_method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let (name, method) = name_and_method
        .rsplit_once(':')
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Method not found."))?;
    let method = match method {
        "generateAccessToken" => Method::GenerateAccessToken,
        "generateIdToken" => Method::GenerateIdToken,
        "signJwt" => Method::SignJwt,
        "signBlob" => Method::SignBlob,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Method {method} not found."),
            ));
        }
    };
    if project != "-" {
        return Err(ApiError::invalid_argument(
            "The project ID in the resource name must be the wildcard `-`: projects/-/serviceAccounts/{ACCOUNT}.",
        ));
    }
    let caller = authenticate(state, headers)?;
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid JSON payload received. {e}")))?;
    if !request.is_object() {
        return Err(ApiError::invalid_argument(
            "Invalid JSON payload received. Expected an object.",
        ));
    }
    let Some(target) = state.world.service_account(name).filter(|a| !a.disabled) else {
        return Err(match method {
            Method::GenerateAccessToken => ApiError::account_not_found(name),
            _ => ApiError::permission_denied(method.permission()),
        });
    };
    let delegates = parse_delegates(request.get("delegates"))?;
    authorize_chain(state, &caller.principal, &delegates, target, method)?;
    match method {
        Method::GenerateAccessToken => generate_access_token(state, target, delegates, &request),
        Method::GenerateIdToken => generate_id_token(state, target, &request),
        Method::SignJwt => sign_jwt(state, target, &request),
        Method::SignBlob => sign_blob(state, target, &request),
    }
}

/// The caller's token record, from `Authorization: Bearer`, with a scope IAM accepts.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<TokenRecord, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(ApiError::unauthenticated)?;
    let record = state
        .lookup_token(token.trim())
        .ok_or_else(ApiError::unauthenticated)?;
    if !record
        .scopes
        .iter()
        .any(|s| s == CLOUD_PLATFORM_SCOPE || s == IAM_SCOPE)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Request had insufficient authentication scopes.",
        )
        .with_reason(
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "googleapis.com",
            json!({"method": "google.iam.credentials.v1.IAMCredentials"}),
        ));
    }
    Ok(record)
}

/// Delegates as emails; accepts `null`, raw emails and `projects/-/serviceAccounts/EMAIL`.
fn parse_delegates(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = value.as_array().ok_or_else(|| {
        ApiError::invalid_argument("Invalid value at 'delegates': expected a list of strings.")
    })?;
    list.iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(|| {
                ApiError::invalid_argument(
                    "Invalid value at 'delegates': expected a list of strings.",
                )
            })?;
            let email = text
                .strip_prefix("projects/-/serviceAccounts/")
                .unwrap_or(text);
            if email.is_empty() || email.contains('/') {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid form of delegate: {text}"
                )));
            }
            Ok(email.to_owned())
        })
        .collect()
}

/// Whether `member` (an IAM binding member) matches `principal`.
fn member_matches(member: &str, principal: &str) -> bool {
    if member == principal {
        return true;
    }
    if let Some(set) = member
        .strip_prefix("principalSet://")
        .and_then(|m| m.strip_suffix("/*"))
    {
        return principal
            .strip_prefix("principal://")
            .and_then(|p| p.strip_prefix(set))
            .is_some_and(|rest| rest.starts_with("/subject/"));
    }
    false
}

/// Every hop needs Token Creator on the next: caller → delegates… → target.
fn authorize_chain(
    state: &State,
    caller: &str,
    delegates: &[String],
    target: &ServiceAccount,
    method: Method,
) -> Result<(), ApiError> {
    let mut principal = caller.to_owned();
    for delegate in delegates {
        let account = state
            .world
            .service_account(delegate)
            .filter(|a| !a.disabled)
            .ok_or_else(|| ApiError::permission_denied("iam.serviceAccounts.implicitDelegation"))?;
        if !account
            .token_creators
            .iter()
            .any(|m| member_matches(m, &principal))
        {
            return Err(ApiError::permission_denied(
                "iam.serviceAccounts.implicitDelegation",
            ));
        }
        principal = format!("serviceAccount:{}", account.email);
    }
    if target
        .token_creators
        .iter()
        .any(|m| member_matches(m, &principal))
    {
        Ok(())
    } else {
        Err(ApiError::permission_denied(method.permission()))
    }
}

/// Parses a google.protobuf.Duration JSON string such as `"3600s"` or `"3.5s"`.
fn parse_duration(text: &str) -> Option<f64> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    seconds.is_finite().then_some(seconds)
}

fn string_list(request: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let Some(value) = request.get(field).filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    value
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "Invalid value at '{field}': expected a list of strings."
            ))
        })
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the only form Python's parser accepts.
pub(crate) fn format_expire_time(unix: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

fn generate_access_token(
    state: &State,
    target: &ServiceAccount,
    delegates: Vec<String>,
    request: &Value,
) -> Result<Value, ApiError> {
    let scopes = string_list(request, "scope")?;
    if scopes.is_empty() {
        return Err(ApiError::invalid_argument("Scope required."));
    }
    if let Some(bad) = scopes.iter().find(|s| !crate::oauth::valid_scope(s)) {
        return Err(ApiError::invalid_argument(format!("Invalid scope: {bad}")));
    }
    let lifetime = match request.get("lifetime").filter(|v| !v.is_null()) {
        None => MAX_LIFETIME_SECS,
        Some(value) => {
            let seconds = value.as_str().and_then(parse_duration).ok_or_else(|| {
                ApiError::invalid_argument(format!(
                    "Invalid value at 'lifetime' ({value}): Illegal duration format."
                ))
            })?;
            if seconds <= 0.0 {
                return Err(ApiError::invalid_argument("The lifetime must be positive."));
            }
            let max = if target.allow_extended_lifetime {
                MAX_EXTENDED_LIFETIME_SECS
            } else {
                MAX_LIFETIME_SECS
            };
            if seconds > max as f64 {
                return Err(ApiError::invalid_argument(format!(
                    "Lifetime must be less than or equal to {max}s. Longer lifetimes need the \
                     constraints/iam.allowServiceAccountCredentialLifetimeExtension organization policy."
                )));
            }
            seconds.ceil() as i64
        }
    };
    let expires_at = now() + state.lifetime(lifetime);
    let token = state.mint_access_token(
        "ya29.c.",
        TokenRecord {
            principal: format!("serviceAccount:{}", target.email),
            email: Some(target.email.clone()),
            unique_id: Some(target.unique_id()),
            client: target.unique_id(),
            scopes,
            expires_at,
            grant: Grant::GenerateAccessToken,
            subject: None,
            delegates,
            access_boundary: None,
            user_project: None,
        },
    );
    Ok(json!({"accessToken": token, "expireTime": format_expire_time(expires_at)}))
}

/// `true` and `"true"` (Python's SA IAM path sends strings) are true.
fn flag(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn generate_id_token(
    state: &State,
    target: &ServiceAccount,
    request: &Value,
) -> Result<Value, ApiError> {
    let audience = request
        .get("audience")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::invalid_argument("Audience required."))?;
    let (token, _) = state
        .sign_service_account_id_token(target, audience, flag(request.get("includeEmail")), None)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json!({ "token": token }))
}

fn sign_jwt(state: &State, target: &ServiceAccount, request: &Value) -> Result<Value, ApiError> {
    let payload = request
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_argument("Payload required."))?;
    let claims: Value = serde_json::from_str(payload)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::invalid_argument("Payload is not a valid JSON object."))?;
    if let Some(exp) = claims.get("exp") {
        check_sign_jwt_exp(exp, now())?;
    }
    let key = signing_key(state, target)?;
    let signed = key
        .sign_jwt(&claims)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json!({"keyId": key.kid(), "signedJwt": signed}))
}

/// signJwt's rule for `exp`: a JSON integer, not in the past, at most 12 h ahead. Floats and
/// strings are refused; integers beyond `i64` are simply too far ahead (no overflow).
fn check_sign_jwt_exp(exp: &Value, now: i64) -> Result<(), ApiError> {
    let latest = now.saturating_add(MAX_SIGN_JWT_EXP_AHEAD_SECS);
    match (exp.as_i64(), exp.as_u64()) {
        (Some(exp), _) if exp < now => {
            Err(ApiError::invalid_argument("The exp claim is in the past."))
        }
        (Some(exp), _) if exp <= latest => Ok(()),
        (Some(_), _) | (None, Some(_)) => Err(ApiError::invalid_argument(
            "The exp claim is more than 12 hours in the future.",
        )),
        (None, None) => Err(ApiError::invalid_argument(
            "The exp claim must be an integer.",
        )),
    }
}

fn sign_blob(state: &State, target: &ServiceAccount, request: &Value) -> Result<Value, ApiError> {
    let payload = request
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_argument("Payload required."))?;
    let bytes = STANDARD.decode(payload).map_err(|_| {
        ApiError::invalid_argument("Invalid value at 'payload' (TYPE_BYTES): not valid base64.")
    })?;
    let key = signing_key(state, target)?;
    let signature = key
        .sign(&bytes)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json!({"keyId": key.kid(), "signedBlob": STANDARD.encode(signature)}))
}

fn signing_key<'a>(
    state: &'a State,
    target: &ServiceAccount,
) -> Result<&'a crate::keys::SigningKey, ApiError> {
    state
        .account_keys
        .get(&target.email)
        .map(AsRef::as_ref)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No system-managed key for the account.",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_time_is_whole_seconds_utc() {
        assert_eq!(format_expire_time(1_767_225_600), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn sign_jwt_exp_is_an_integer_within_12_hours() {
        let now = 1_767_225_600_i64;
        let check = |exp: Value| check_sign_jwt_exp(&exp, now).map_err(|e| format!("{e:?}"));
        assert!(check(json!(now)).is_ok());
        assert!(check(json!(now + MAX_SIGN_JWT_EXP_AHEAD_SECS)).is_ok());
        for (exp, why) in [
            (json!(now - 1), "in the past"),
            (json!(-1), "in the past"),
            (json!(i64::MIN), "in the past"),
            (json!(now + MAX_SIGN_JWT_EXP_AHEAD_SECS + 1), "12 hours"),
            (json!(i64::MAX), "12 hours"),
            (json!(u64::MAX), "12 hours"),
            (json!(1.7e9), "integer"),
            (json!(f64::from(u32::MAX) + 0.5), "integer"),
            (json!(now.to_string()), "integer"),
            (Value::Null, "integer"),
        ] {
            let error = check(exp.clone()).expect_err("refused");
            assert!(error.contains(why), "{exp}: {error}");
        }
        assert!(check_sign_jwt_exp(&json!(0), i64::MAX).is_err());
    }

    #[test]
    fn durations_parse_like_google() {
        assert_eq!(parse_duration("3600s"), Some(3600.0));
        assert_eq!(parse_duration("3.5s"), Some(3.5));
        assert_eq!(parse_duration("3600"), None);
        assert_eq!(parse_duration("1h"), None);
    }

    #[test]
    fn members_match_exactly_or_by_pool() {
        let pool = "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p";
        let principal = format!("principal://{pool}/subject/repo:x");
        assert!(member_matches(
            &format!("principalSet://{pool}/*"),
            &principal
        ));
        assert!(!member_matches(
            &format!("principalSet://{pool}2/*"),
            &principal
        ));
        assert!(member_matches("serviceAccount:a@b", "serviceAccount:a@b"));
        assert!(!member_matches("user:a@b", "serviceAccount:a@b"));
    }

    #[test]
    fn delegates_accept_both_forms_and_null() {
        assert!(
            parse_delegates(Some(&Value::Null))
                .expect("null")
                .is_empty()
        );
        let both = json!([
            "a@p.iam.gserviceaccount.com",
            "projects/-/serviceAccounts/b@p.iam.gserviceaccount.com"
        ]);
        assert_eq!(
            parse_delegates(Some(&both)).expect("list"),
            ["a@p.iam.gserviceaccount.com", "b@p.iam.gserviceaccount.com"]
        );
        assert!(parse_delegates(Some(&json!("a"))).is_err());
    }
}
