//! `GenerateIdToken`: a Google-signed ID token for an audience, for the credential's own
//! identity (the flow of its kind) or for a service account it impersonates (IAM Credentials
//! generateIdToken). Cached by audience until the token's `exp`.

use std::sync::Arc;

use broker_authz::AccessRequest;
use broker_core::{Fetch, IdTokenFetch, IdTokenRequest, ScopeSet, TokenKey};
use broker_proto::tokenbroker::v1 as pb;

use super::get_access_token::timestamp;
use super::impersonation::{IMPERSONATED, ImpersonationFetch, Wanted};
use super::{Asks, CallContext, Inner, denied, validate};
use crate::status::RpcError;

/// Serves one call: the audit event of a failure is written by the caller.
pub(super) async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::GenerateIdTokenRequest,
) -> Result<pb::GenerateIdTokenResponse, RpcError> {
    // Request fields.
    let audience = validate::audience(&request.audience)?;
    let target = validate::service_account(
        "target_service_account",
        &request.target_service_account,
        false,
    )?;
    let delegates = validate::delegates(&request.delegates, target.is_some())?;
    let credential = validate::credential(&request.credential)?;
    let min_remaining = validate::min_remaining(request.min_remaining_validity.as_ref())?;

    // Policy, then the credential.
    let no_scopes = ScopeSet::empty();
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize(
            &context.caller,
            &AccessRequest {
                credential: credential.as_ref(),
                service_account: target.as_deref(),
                delegates: &delegates,
                audience: Some(&audience),
                ..AccessRequest::new(context.rpc, &no_scopes)
            },
        )
        .map_err(denied)?;
    let configured = inner.credential(&decision.credential)?;
    let id_request = IdTokenRequest {
        audience,
        include_email: request.include_email,
    };
    let delegates_shown = delegates.join(",");
    let (key, fetch, kind, upstream): (_, Arc<dyn Fetch>, _, _) = match target {
        None => {
            configured.check_flows(
                &decision.credential,
                Asks {
                    id_token: true,
                    ..Asks::default()
                },
            )?;
            let key = TokenKey::id_token(
                decision.credential.clone(),
                Arc::clone(&configured.principal),
                None,
                &id_request,
            );
            let fetch = Arc::new(IdTokenFetch {
                source: Arc::clone(&configured.source),
                request: id_request,
            });
            (
                key,
                fetch,
                configured.source.kind(),
                configured.upstream.as_str(),
            )
        }
        Some(target) => {
            let key = TokenKey::id_token(
                decision.credential.clone(),
                target.as_str(),
                Some(&delegates),
                &id_request,
            );
            let fetch = Arc::new(ImpersonationFetch {
                impersonation: Arc::clone(&inner.impersonation),
                base: Arc::clone(&configured.cached),
                target,
                delegates,
                wanted: Wanted::IdToken(id_request),
            });
            (key, fetch, IMPERSONATED, inner.iam_upstream.as_str())
        }
    };
    inner.admit(context, &decision, Some(&key))?;
    let cached = context
        .bounded(upstream, async {
            inner
                .cache
                .get(key, fetch, min_remaining, Some(context.fetch_deadline))
                .await
                .map_err(|error| {
                    context.upstream_error(error, &decision.credential, kind, upstream)
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
        delegates = %delegates_shown,
        audience = %request.audience,
        origin = cached.origin.as_str(),
        token = %token.secret.fingerprint(),
        expires_in_s = token.remaining(context.now).as_secs(),
        latency_us = context.latency_us(),
    );
    Ok(pb::GenerateIdTokenResponse {
        id_token: token.secret.expose().to_owned(),
        expire_time: Some(timestamp(token.expires_at)),
        principal: String::from(&*token.principal),
        cache_hit: cached.origin.is_cache_hit(),
        credential: decision.credential.as_str().to_owned(),
        last_known_good: cached.origin == broker_cache::Origin::LastKnownGood,
    })
}
