//! The Security Token Service (`sts.googleapis.com/v1/token`, RFC 8693): federated exchange for
//! workload and workforce pools, and downscoping with Credential Access Boundaries.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use crate::errors::{OAuthError, json_response};
use crate::keys::{PublicKey, UnverifiedJwt};
use crate::state::{Grant, State, TokenRecord, now};
use crate::world::{Provider, ProviderKind};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const AWS_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
const MTLS_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";
const SAML_TYPE: &str = "urn:ietf:params:oauth:token-type:saml2";
const MAX_OPTIONS_LEN: usize = 4096;
const MAX_BOUNDARY_RULES: usize = 10;
const MAX_CONDITION_LEN: usize = 2048;
const FEDERATED_TOKEN_LIFETIME_SECS: i64 = 3600;
const SUBJECT_TOKEN_SKEW_SECS: i64 = 300;
const AUDIENCE_ERROR: &str = "Invalid value for \"audience\". This value should be the full resource name of \
    the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the \
    list of possible formats.";
const TARGET_ERROR: &str = "The target service indicated by the \"audience\" parameters is invalid. This might \
    either be because the pool or provider is disabled or deleted or because it doesn't exist.";

/// `POST /v1/token`.
pub(crate) async fn token(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(&state, &headers, &body, None)
}

/// `POST /v1/token` on the mTLS listener: the TLS client certificate is the one X.509
/// subject tokens must start with.
pub(crate) async fn token_mtls(
    AxumState(state): AxumState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<crate::mtls::Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tracing::debug!(remote = %peer.remote, "STS request over mutual TLS");
    respond(&state, &headers, &body, Some(&peer.certificate))
}

fn respond(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    client_certificate: Option<&[u8]>,
) -> Response {
    let result = parse_request(headers, body)
        .and_then(|request| exchange(state, headers, &request, client_certificate));
    match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => error.into_response(),
    }
}

/// The request fields in snake_case, from a form or a JSON body (camelCase or snake_case).
fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Ok(crate::oauth::parse_form(body));
    }
    let object: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| OAuthError::invalid_request(format!("Invalid JSON payload: {e}")))?;
    Ok(object
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (snake_case(&key), value)
        })
        .collect())
}

/// `subjectTokenType` → `subject_token_type` (snake_case names stay as they are).
pub(crate) fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes `options`: raw JSON (Go, JSON bodies) or JSON percent-encoded once more (Python).
fn parse_options(raw: Option<&String>) -> Result<serde_json::Map<String, Value>, OAuthError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(serde_json::Map::new());
    };
    let invalid = || {
        OAuthError::invalid_request(
            "Invalid value for \"options\": it must be a JSON object of at most 4096 characters.",
        )
    };
    let decoded = match serde_json::from_str::<Value>(raw) {
        Ok(value) => value,
        Err(_) => {
            let once = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| invalid())?;
            serde_json::from_str(&once).map_err(|_| invalid())?
        }
    };
    let text_len = decoded.to_string().len();
    match decoded {
        Value::Object(map) if text_len <= MAX_OPTIONS_LEN => Ok(map),
        _ => Err(invalid()),
    }
}

fn exchange(
    state: &State,
    headers: &HeaderMap,
    request: &HashMap<String, String>,
    client_certificate: Option<&[u8]>,
) -> Result<Value, OAuthError> {
    let field = |name: &str| {
        request
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    match field("grant_type") {
        Some(TOKEN_EXCHANGE) => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid value for \"grant_type\".",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                "Missing required field: grant_type.",
            ));
        }
    }
    let requested = field("requested_token_type").unwrap_or(ACCESS_TOKEN_TYPE);
    if requested != ACCESS_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(format!(
            "Invalid value for \"requested_token_type\": {requested}. Only {ACCESS_TOKEN_TYPE} is supported."
        )));
    }
    let subject_token = field("subject_token")
        .ok_or_else(|| OAuthError::invalid_request("Missing required field: subject_token."))?;
    let subject_token_type = field("subject_token_type").ok_or_else(|| {
        OAuthError::invalid_request("Missing required field: subject_token_type.")
    })?;
    let options = parse_options(request.get("options"))?;
    if subject_token_type == ACCESS_TOKEN_TYPE {
        return downscope(state, subject_token, &options);
    }
    let audience = field("audience").ok_or_else(|| OAuthError::invalid_request(AUDIENCE_ERROR))?;
    let scopes = crate::oauth::parse_scopes(field("scope"))?;
    let pool =
        PoolRef::parse(audience).ok_or_else(|| OAuthError::invalid_request(AUDIENCE_ERROR))?;
    let provider = pool
        .find_provider(state)
        .ok_or_else(|| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_target", TARGET_ERROR))?;

    let client_authenticated = authenticate_client(headers, request, &pool, provider)?;
    let user_project = match options.get("userProject") {
        None => None,
        Some(_) if !pool.workforce => {
            return Err(OAuthError::invalid_request(
                "Invalid value for \"options\": userProject is only supported for workforce pool \
                 providers (//iam.googleapis.com/locations/global/workforcePools/...).",
            ));
        }
        Some(Value::String(project))
            if state
                .world
                .projects
                .iter()
                .any(|p| &p.id == project || &p.number == project) =>
        {
            Some(project.clone())
        }
        Some(other) => {
            return Err(OAuthError::invalid_request(format!(
                "Invalid value for \"options\": userProject {other} is not a project of this \
                 world (give a project id or number)."
            )));
        }
    };
    if pool.workforce && user_project.is_none() && !client_authenticated {
        return Err(OAuthError::invalid_request(
            "A workforce pool token exchange requires \"userProject\" in options, or client authentication.",
        ));
    }

    let kind = provider.kind();
    let (assertion, subject) = match subject_token_type {
        JWT_TYPE | ID_TOKEN_TYPE if kind == ProviderKind::Oidc => {
            verify_oidc(state, provider, &pool, subject_token)?
        }
        AWS_TYPE if kind == ProviderKind::Aws => {
            verify_aws(state, provider, audience, subject_token)?
        }
        MTLS_TYPE if kind == ProviderKind::X509 => {
            verify_x509(state, provider, subject_token, client_certificate)?
        }
        JWT_TYPE | ID_TOKEN_TYPE | AWS_TYPE | MTLS_TYPE | SAML_TYPE => {
            return Err(OAuthError::invalid_request(format!(
                "Invalid value for \"subject_token_type\": {subject_token_type} is not supported by provider {}.",
                pool.provider
            )));
        }
        other => {
            return Err(OAuthError::invalid_request(format!(
                "Invalid value for \"subject_token_type\": {other}."
            )));
        }
    };
    if let Some(condition) = &provider.attribute_condition {
        let expr = crate::cel::Expr::parse(condition).map_err(|e| {
            OAuthError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_failure",
                e.to_string(),
            )
        })?;
        if !expr.evaluate(&assertion, &subject) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "The given credential is rejected by the attribute condition.",
            ));
        }
    }

    let lifetime = state.lifetime(FEDERATED_TOKEN_LIFETIME_SECS);
    let token = state.mint_access_token(
        "ya29.d.",
        TokenRecord {
            principal: format!(
                "principal://iam.googleapis.com/{}/subject/{subject}",
                pool.pool_resource()
            ),
            email: None,
            unique_id: None,
            client: pool.provider_resource(),
            scopes,
            expires_at: now() + lifetime,
            grant: Grant::StsExchange,
            subject: None,
            delegates: Vec::new(),
            access_boundary: None,
            user_project,
        },
    );
    Ok(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": lifetime,
    }))
}

/// A parsed provider audience.
struct PoolRef {
    workforce: bool,
    project_number: String,
    pool: String,
    provider: String,
}

impl PoolRef {
    fn parse(audience: &str) -> Option<Self> {
        let name = audience
            .strip_prefix("//iam.googleapis.com/")
            .or_else(|| audience.strip_prefix("https://iam.googleapis.com/"))?;
        let parts: Vec<&str> = name.split('/').collect();
        match parts.as_slice() {
            [
                "projects",
                number,
                "locations",
                "global",
                "workloadIdentityPools",
                pool,
                "providers",
                provider,
            ] => Some(Self {
                workforce: false,
                project_number: (*number).to_owned(),
                pool: (*pool).to_owned(),
                provider: (*provider).to_owned(),
            }),
            [
                "locations",
                "global",
                "workforcePools",
                pool,
                "providers",
                provider,
            ] => Some(Self {
                workforce: true,
                project_number: String::new(),
                pool: (*pool).to_owned(),
                provider: (*provider).to_owned(),
            }),
            _ => None,
        }
    }

    fn pool_resource(&self) -> String {
        if self.workforce {
            format!("locations/global/workforcePools/{}", self.pool)
        } else {
            format!(
                "projects/{}/locations/global/workloadIdentityPools/{}",
                self.project_number, self.pool
            )
        }
    }

    fn provider_resource(&self) -> String {
        format!("{}/providers/{}", self.pool_resource(), self.provider)
    }

    fn find_provider<'w>(&self, state: &'w State) -> Option<&'w Provider> {
        let providers = if self.workforce {
            state
                .world
                .workforce_pools
                .iter()
                .find(|p| p.pool == self.pool && !p.disabled)
                .map(|p| &p.providers)
        } else {
            state
                .world
                .workload_identity_pools
                .iter()
                .find(|p| {
                    p.pool == self.pool && p.project_number == self.project_number && !p.disabled
                })
                .map(|p| &p.providers)
        };
        providers?
            .iter()
            .find(|p| p.id == self.provider && !p.disabled)
    }
}

/// Verifies an OIDC subject token; returns its claims and `google.subject`.
fn verify_oidc(
    state: &State,
    provider: &Provider,
    pool: &PoolRef,
    token: &str,
) -> Result<(Value, String), OAuthError> {
    let reject = |why: &str| OAuthError::invalid_grant(format!("The incoming JWT {why}."));
    let jwt = UnverifiedJwt::parse(token.trim()).ok_or_else(|| reject("is not a valid JWT"))?;
    let candidates: Vec<PublicKey> = state
        .oidc_keys(provider)
        .into_iter()
        .filter(|(kid, _)| jwt.kid().is_none() || kid.as_deref() == jwt.kid())
        .map(|(_, key)| key)
        .collect();
    if !candidates.iter().any(|key| jwt.verify(key)) {
        return Err(reject(
            "signature cannot be verified with the provider's keys",
        ));
    }
    if jwt.claim_str("iss") != provider.issuer.as_deref() {
        return Err(reject(
            "has an issuer (iss) that does not match the provider's issuer",
        ));
    }
    let default_audience = format!("https://iam.googleapis.com/{}", pool.provider_resource());
    let audience_ok = |aud: &str| {
        if provider.allowed_audiences.is_empty() {
            aud == default_audience
        } else {
            provider.allowed_audiences.iter().any(|a| a == aud)
        }
    };
    let aud_matches = match jwt.claims.get("aud") {
        Some(Value::String(aud)) => audience_ok(aud),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(audience_ok),
        _ => false,
    };
    if !aud_matches {
        return Err(reject(
            "audience (aud) does not match the provider's allowed audiences",
        ));
    }
    let now = now();
    match jwt.claim_numeric_date("exp") {
        Some(exp) if exp > now - SUBJECT_TOKEN_SKEW_SECS => {}
        Some(_) => return Err(reject("is expired")),
        None => {
            return Err(reject(
                "has no valid exp claim (an integer number of seconds)",
            ));
        }
    }
    match jwt.claims.get("iat") {
        None => {}
        Some(_) => match jwt.claim_numeric_date("iat") {
            Some(iat) if iat <= now + SUBJECT_TOKEN_SKEW_SECS => {}
            Some(_) => return Err(reject("was issued in the future (iat)")),
            None => {
                return Err(reject(
                    "has an invalid iat claim (not an integer number of seconds)",
                ));
            }
        },
    }
    let subject = jwt
        .claim_str(provider.subject_source())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            reject(&format!(
                "has no {} claim to map to google.subject",
                provider.subject_source()
            ))
        })?
        .to_owned();
    Ok((Value::Object(jwt.claims), subject))
}

/// Verifies an `aws4_request` subject token; the assertion is the caller identity.
fn verify_aws(
    state: &State,
    provider: &Provider,
    audience: &str,
    token: &str,
) -> Result<(Value, String), OAuthError> {
    let caller = crate::sigv4::verify(&state.world, token, audience, now()).map_err(|e| {
        OAuthError::invalid_grant(format!("Unable to verify the AWS subject token: {e}."))
    })?;
    if Some(caller.account_id()) != provider.aws_account_id.as_deref() {
        return Err(OAuthError::invalid_grant(
            "The AWS account of the caller does not match the provider's account.",
        ));
    }
    let assertion =
        json!({"arn": caller.arn, "account": caller.account_id(), "userid": caller.access_key_id});
    Ok((assertion, caller.arn.clone()))
}

/// Verifies an X.509 subject token (a JSON array of base64 DER certificates, leaf first)
/// presented over mutual TLS: the leaf must be the TLS client certificate and chain to the
/// provider's trust store. The assertion is the leaf's (see [`crate::x509::assertion`]).
fn verify_x509(
    state: &State,
    provider: &Provider,
    token: &str,
    client_certificate: Option<&[u8]>,
) -> Result<(Value, String), OAuthError> {
    let Some(client_certificate) = client_certificate else {
        return Err(OAuthError::invalid_request(
            "X.509 subject tokens (urn:ietf:params:oauth:token-type:mtls) must be exchanged over \
             mutual TLS, at the mTLS STS endpoint (sts.mtls.googleapis.com), with the leaf \
             certificate as the TLS client certificate.",
        ));
    };
    let reject = |why: String| OAuthError::invalid_grant(format!("The X.509 subject token {why}."));
    let chain =
        crate::x509::parse_subject_token(token).map_err(|e| reject(format!("is invalid: {e}")))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| reject("is empty".to_owned()))?;
    if leaf.as_slice() != client_certificate {
        return Err(reject(
            "does not start with the TLS client certificate (the leaf must come first)".to_owned(),
        ));
    }
    let (anchors, intermediates) = x509_trust_store(state, provider);
    crate::x509::verify_chain(
        &anchors,
        &intermediates,
        leaf,
        rest,
        std::time::SystemTime::now(),
    )
    .map_err(|e| {
        reject(format!(
            "cannot be verified with the provider's trust store: {e}"
        ))
    })?;
    let assertion = crate::x509::assertion(leaf).map_err(|e| reject(format!("is invalid: {e}")))?;
    let subject = crate::x509::assertion_str(&assertion, provider.subject_source())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            reject(format!(
                "has no {} to map to google.subject",
                provider.subject_source()
            ))
        })?
        .to_owned();
    Ok((assertion, subject))
}

/// The trust anchors (the configured ones, or the CA the emulator generated) and the
/// intermediates of an X.509 provider, DER.
fn x509_trust_store(state: &State, provider: &Provider) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let decode = |pem: &Option<String>| {
        pem.as_deref()
            .map(|pem| crate::keys::pem_decode_all(pem, "CERTIFICATE"))
            .unwrap_or_default()
    };
    let mut anchors = decode(&provider.trust_anchors_pem);
    if provider.generate_ca
        && let Some(pki) = state.federation.pkis.get(&provider.id)
    {
        anchors.push(pki.ca.der.clone());
    }
    (anchors, decode(&provider.intermediates_pem))
}

/// Checks the client authentication of a federated exchange (HTTP Basic, or `client_id` and
/// `client_secret` in the body): only workforce providers configured with a client accept it,
/// and then the client id and secret must be theirs. Returns whether the request carried
/// (valid) client authentication.
fn authenticate_client(
    headers: &HeaderMap,
    request: &HashMap<String, String>,
    pool: &PoolRef,
    provider: &Provider,
) -> Result<bool, OAuthError> {
    let basic_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case("basic "));
    let basic = basic_credentials(headers);
    if basic_header && basic.is_none() {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The HTTP Basic client credentials are malformed.",
        ));
    }
    let body = match (request.get("client_id"), request.get("client_secret")) {
        (None, None) => None,
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ => {
            return Err(OAuthError::invalid_request(
                "client_id and client_secret must be sent together.",
            ));
        }
    };
    let (id, secret) = match (basic, body) {
        (None, None) => return Ok(false),
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "The request uses more than one client authentication method.",
            ));
        }
        (Some(credentials), None) | (None, Some(credentials)) => credentials,
    };
    if !pool.workforce {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication is only supported for workforce pool providers.",
        ));
    }
    let (Some(client_id), Some(client_secret)) = (&provider.client_id, &provider.client_secret)
    else {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        ));
    };
    if &id != client_id {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        ));
    }
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        secret.as_bytes(),
        client_secret.expose().as_bytes(),
    )
    .is_err()
    {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Unauthorized",
        ));
    }
    Ok(true)
}

/// Downscopes a Google access token with the Credential Access Boundary in `options`.
fn downscope(
    state: &State,
    subject_token: &str,
    options: &serde_json::Map<String, Value>,
) -> Result<Value, OAuthError> {
    let boundary = options.get("accessBoundary").ok_or_else(|| {
        OAuthError::invalid_request(
            "Missing \"accessBoundary\" in options for a downscoping exchange.",
        )
    })?;
    validate_boundary(boundary)?;
    let source = state
        .lookup_token(subject_token)
        .ok_or_else(|| OAuthError::invalid_grant("The subject token is invalid or expired."))?;
    if source.principal.contains("/workforcePools/") {
        return Err(OAuthError::invalid_request(
            "Workforce identity tokens cannot be downscoped.",
        ));
    }
    if source.access_boundary.is_some() {
        return Err(OAuthError::invalid_request(
            "The subject token already has an access boundary.",
        ));
    }
    let record = TokenRecord {
        grant: Grant::StsDownscope,
        access_boundary: Some(boundary.clone()),
        ..source
    };
    let token = state.mint_access_token("ya29.d.", record);
    Ok(
        json!({"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer"}),
    )
}

fn validate_boundary(boundary: &Value) -> Result<(), OAuthError> {
    let invalid =
        |why: String| OAuthError::invalid_request(format!("Invalid access boundary: {why}"));
    let rules = boundary
        .get("accessBoundaryRules")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("accessBoundaryRules must be a list".into()))?;
    if rules.is_empty() || rules.len() > MAX_BOUNDARY_RULES {
        return Err(invalid(format!(
            "between 1 and {MAX_BOUNDARY_RULES} rules are required, got {}",
            rules.len()
        )));
    }
    for (i, rule) in rules.iter().enumerate() {
        let resource = rule
            .get("availableResource")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !resource.starts_with("//") {
            return Err(invalid(format!(
                "rule {i}: availableResource must be a full resource name"
            )));
        }
        let permissions = rule
            .get("availablePermissions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if permissions.is_empty()
            || permissions
                .iter()
                .any(|p| !p.as_str().is_some_and(|p| p.starts_with("inRole:")))
        {
            return Err(invalid(format!(
                "rule {i}: availablePermissions must be a non-empty list of inRole: roles"
            )));
        }
        if let Some(condition) = rule.get("availabilityCondition") {
            let expression = condition
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if expression.is_empty() || expression.len() > MAX_CONDITION_LEN {
                return Err(invalid(format!(
                    "rule {i}: availabilityCondition.expression must be 1 to {MAX_CONDITION_LEN} characters"
                )));
            }
        }
    }
    Ok(())
}

/// Decodes HTTP Basic client credentials (`client_id`, `client_secret`).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_decode_both_ways_clients_send_them() {
        let go = parse_options(Some(&r#"{"userProject":"p"}"#.to_owned())).expect("raw");
        let python = parse_options(Some(&"%7B%22userProject%22%3A%20%22p%22%7D".to_owned()))
            .expect("encoded");
        assert_eq!(go, python);
        assert!(parse_options(Some(&"not json".to_owned())).is_err());
        assert!(
            parse_options(Some(&format!(
                r#"{{"userProject":"{}"}}"#,
                "x".repeat(5000)
            )))
            .is_err()
        );
    }

    #[test]
    fn audiences_parse_for_both_pool_kinds() {
        let workload = PoolRef::parse(
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/v",
        )
        .expect("workload");
        assert!(!workload.workforce);
        assert_eq!(
            workload.provider_resource(),
            "projects/1/locations/global/workloadIdentityPools/p/providers/v"
        );
        let workforce =
            PoolRef::parse("//iam.googleapis.com/locations/global/workforcePools/w/providers/v")
                .expect("workforce");
        assert!(workforce.workforce);
        assert!(PoolRef::parse("//iam.googleapis.com/projects/1/pools/p").is_none());
    }

    #[test]
    fn camel_case_becomes_snake_case() {
        assert_eq!(snake_case("subjectTokenType"), "subject_token_type");
        assert_eq!(snake_case("grant_type"), "grant_type");
    }

    #[test]
    fn boundaries_are_validated() {
        let ok = json!({"accessBoundaryRules": [{"availableResource": "//storage.googleapis.com/projects/_/buckets/b", "availablePermissions": ["inRole:roles/storage.objectViewer"]}]});
        assert!(validate_boundary(&ok).is_ok());
        let bad = json!({"accessBoundaryRules": [{"availableResource": "//storage.googleapis.com/projects/_/buckets/b", "availablePermissions": ["roles/storage.objectViewer"]}]});
        assert!(validate_boundary(&bad).is_err());
        assert!(validate_boundary(&json!({"accessBoundaryRules": []})).is_err());
    }
}
