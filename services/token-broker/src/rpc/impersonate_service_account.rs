//! `ImpersonateServiceAccount`: an access token for a service account, minted by IAM
//! Credentials generateAccessToken with an access token of the base credential.

use std::sync::Arc;

use broker_authz::AccessRequest;
use broker_core::{TokenKey, TokenRequest};
use broker_proto::tokenbroker::v1 as pb;

use super::get_access_token::{FIXED_LIFETIME, MAX_LIFETIME, MIN_LIFETIME, timestamp};
use super::impersonation::{IMPERSONATED, ImpersonationFetch, Wanted};
use super::{CallContext, Inner, denied, validate};
use crate::status::RpcError;

/// Serves one call: the audit event of a failure is written by the caller.
pub(super) async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::ImpersonateServiceAccountRequest,
) -> Result<pb::ImpersonateServiceAccountResponse, RpcError> {
    // Request fields.
    let target = validate::service_account(
        "target_service_account",
        &request.target_service_account,
        true,
    )?
    .unwrap_or_default();
    let delegates = validate::delegates(&request.delegates, true)?;
    let scopes = validate::scopes(&request.scopes)?;
    let credential = validate::credential(&request.credential)?;
    let min_remaining = validate::min_remaining(request.min_remaining_validity.as_ref())?;
    let lifetime = validate::duration(
        "lifetime",
        request.lifetime.as_ref(),
        MIN_LIFETIME,
        MAX_LIFETIME,
    )?;
    validate::lifetime_above(lifetime, min_remaining, MAX_LIFETIME)?;

    // Policy, then the base credential.
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize(
            &context.caller,
            &AccessRequest {
                credential: credential.as_ref(),
                service_account: Some(&target),
                delegates: &delegates,
                lifetime,
                ..AccessRequest::new(context.rpc, &scopes)
            },
        )
        .map_err(denied)?;
    let base = inner.credential(&decision.credential)?;

    // The caller's limits, then the cache (or IAM).
    // The grant's access boundary, if it has one, downscopes the impersonated token too.
    let token_request = TokenRequest {
        lifetime: Some(decision.lifetime_or(FIXED_LIFETIME)),
        boundary: decision.boundary.clone(),
        ..TokenRequest::new(scopes)
    };
    let key = TokenKey::impersonated(
        decision.credential.clone(),
        target.as_str(),
        &delegates,
        &token_request,
    );
    inner.admit(context, &decision, Some(&key))?;
    let chain = delegates.join(",");
    let fetch = Arc::new(ImpersonationFetch {
        impersonation: Arc::clone(&inner.impersonation),
        base: Arc::clone(&base.cached),
        target,
        delegates,
        wanted: Wanted::AccessToken(token_request),
    });
    let cached = context
        .bounded(&inner.iam_upstream, async {
            inner
                .cache
                .get(key, fetch, min_remaining, Some(context.fetch_deadline))
                .await
                .map_err(|error| {
                    context.upstream_error(
                        error,
                        &decision.credential,
                        IMPERSONATED,
                        &inner.iam_upstream,
                    )
                })
        })
        .await?;
    let token = &cached.token;
    tracing::info!(
        target: "audit",
        rpc = context.rpc.name(),
        caller = %context.caller,
        outcome = "granted",
        grant = %decision.grant,
        credential = %decision.credential,
        principal = %token.principal,
        delegates = %chain,
        scopes = %token.scopes,
        origin = cached.origin.as_str(),
        token = %token.secret.fingerprint(),
        expires_in_s = token.remaining(context.now).as_secs(),
        latency_us = context.latency_us(),
    );
    Ok(pb::ImpersonateServiceAccountResponse {
        access_token: token.secret.expose().to_owned(),
        token_type: "Bearer".to_owned(),
        expire_time: Some(timestamp(token.expires_at)),
        principal: String::from(&*token.principal),
        cache_hit: cached.origin.is_cache_hit(),
        credential: decision.credential.as_str().to_owned(),
        last_known_good: cached.origin == broker_cache::Origin::LastKnownGood,
    })
}
