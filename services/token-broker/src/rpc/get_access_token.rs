//! `GetAccessToken`: validate, authorize, serve from the cache (or the credential's source),
//! respond, audit.

use std::time::{Duration, SystemTime};

use broker_authz::{AccessRequest, Denial};
use broker_core::{TokenKey, TokenRequest};
use broker_proto::tokenbroker::v1 as pb;

use super::{CallContext, Inner, validate};
use crate::status::RpcError;

/// The longest `min_remaining_validity`.
const MAX_MIN_REMAINING: Duration = Duration::from_secs(1800);
/// The default `min_remaining_validity`: Python and Java clients treat 225 s or less as stale.
const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(300);
/// The shortest and longest `lifetime`.
const MIN_LIFETIME: Duration = Duration::from_secs(60);
const MAX_LIFETIME: Duration = Duration::from_secs(43_200);
/// The lifetime Google gives tokens of flows that cannot choose it.
const FIXED_LIFETIME: Duration = Duration::from_secs(3600);

pub(super) fn denied(denial: Denial) -> RpcError {
    RpcError::PolicyDenied {
        caller: denial.caller.clone(),
        grant: denial.grant.clone(),
        rule: denial.rule_name(),
        value: denial.value().map(str::to_owned),
        message: denial.to_string(),
    }
}

pub(super) async fn handle(
    inner: &Inner,
    context: &CallContext,
    request: pb::GetAccessTokenRequest,
) -> Result<pb::GetAccessTokenResponse, RpcError> {
    let result = serve(inner, context, request).await;
    if let Err(error) = &result {
        tracing::info!(
            target: "audit",
            rpc = "GetAccessToken",
            caller = %context.caller,
            outcome = "error",
            reason = error.reason(),
            error = %error,
            latency_us = context.started.elapsed().as_micros() as u64,
        );
    }
    result
}

async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::GetAccessTokenRequest,
) -> Result<pb::GetAccessTokenResponse, RpcError> {
    // Request fields.
    let scopes = validate::scopes(&request.scopes)?;
    let credential = validate::credential(&request.credential)?;
    let subject = validate::email("subject", &request.subject)?;
    let min_remaining = validate::duration(
        "min_remaining_validity",
        request.min_remaining_validity.as_ref(),
        Duration::ZERO,
        MAX_MIN_REMAINING,
    )?
    .unwrap_or(DEFAULT_MIN_REMAINING);
    let lifetime = validate::duration(
        "lifetime",
        request.lifetime.as_ref(),
        MIN_LIFETIME,
        MAX_LIFETIME,
    )?;
    if let Some(lifetime) = lifetime
        && lifetime <= min_remaining
    {
        return Err(RpcError::InvalidField {
            reason: "INVALID_LIFETIME",
            field: "lifetime".to_owned(),
            description: "must be longer than min_remaining_validity".to_owned(),
            max_seconds: Some(MAX_LIFETIME.as_secs()),
        });
    }
    let boundary = validate::access_boundary(request.access_boundary.as_ref())?;

    // The credential: configured, and able to do what is asked.
    if let Some(name) = &credential {
        let configured = inner
            .credentials
            .get(name)
            .ok_or_else(|| RpcError::CredentialNotFound(name.to_string()))?;
        configured.check_flows(name, subject.is_some(), lifetime)?;
    }

    // Policy.
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize(
            &context.caller,
            &AccessRequest {
                credential: credential.as_ref(),
                scopes: &scopes,
                subject: subject.as_deref(),
                lifetime,
                boundary: boundary.as_ref(),
            },
        )
        .map_err(denied)?;
    let configured = inner
        .credentials
        .get(&decision.credential)
        .ok_or_else(|| RpcError::CredentialNotFound(decision.credential.to_string()))?;
    if credential.is_none() {
        // The default grant's credential: its flows were not checked above.
        configured.check_flows(&decision.credential, subject.is_some(), lifetime)?;
    }
    if !configured.chooses_lifetime {
        decision
            .check_fixed_lifetime(&context.caller, FIXED_LIFETIME)
            .map_err(denied)?;
    }

    // Cache, then the source.
    let token_request = TokenRequest {
        scopes,
        subject,
        lifetime: configured
            .chooses_lifetime
            .then(|| decision.lifetime_or(FIXED_LIFETIME)),
        boundary: decision.boundary.clone(),
    };
    let key = TokenKey::new(
        decision.credential.clone(),
        configured.source.principal(),
        &token_request,
    );
    let cached = inner
        .cache
        .get(
            key,
            configured.source.clone(),
            token_request,
            min_remaining,
            Some(context.deadline),
        )
        .await
        .map_err(|error| RpcError::Upstream {
            error,
            upstream: configured.upstream.clone(),
        })?;
    let token = &cached.token;

    tracing::info!(
        target: "audit",
        rpc = "GetAccessToken",
        caller = %context.caller,
        outcome = "granted",
        grant = %decision.grant,
        credential = %decision.credential,
        principal = %token.principal,
        scopes = %token.scopes,
        subject = token_subject(&request.subject),
        boundary = decision.boundary.is_some(),
        origin = ?cached.origin,
        token = %token.secret.fingerprint(),
        expires_in_s = token.remaining(SystemTime::now()).as_secs(),
        latency_us = context.started.elapsed().as_micros() as u64,
    );
    Ok(pb::GetAccessTokenResponse {
        access_token: token.secret.expose().to_owned(),
        token_type: "Bearer".to_owned(),
        expire_time: Some(timestamp(token.expires_at)),
        granted_scopes: token.scopes.iter().map(str::to_owned).collect(),
        principal: String::from(&*token.principal),
        cache_hit: cached.origin.is_cache_hit(),
        credential: decision.credential.as_str().to_owned(),
    })
}

fn token_subject(subject: &str) -> &str {
    if subject.is_empty() { "-" } else { subject }
}

/// A whole-second protobuf timestamp.
pub(super) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}
