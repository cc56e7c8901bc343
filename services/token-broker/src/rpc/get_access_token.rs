//! `GetAccessToken`: validate, authorize, check the credential and the caller's limits, serve
//! from the cache (or the credential's source), respond, audit.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker_authz::AccessRequest;
use broker_core::{AccessTokenFetch, TokenKey, TokenRequest};
use broker_proto::tokenbroker::v1 as pb;

use super::{CallContext, Inner, denied, validate};
use crate::status::RpcError;

/// The shortest and longest `lifetime`.
pub(super) const MIN_LIFETIME: Duration = Duration::from_secs(60);
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(43_200);
/// The lifetime Google gives tokens of flows that cannot choose it.
pub(super) const FIXED_LIFETIME: Duration = Duration::from_secs(3600);

/// Serves one call: the audit event of a failure is written by the caller.
pub(super) async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::GetAccessTokenRequest,
) -> Result<pb::GetAccessTokenResponse, RpcError> {
    // Request fields.
    let scopes = validate::scopes(&request.scopes)?;
    let credential = validate::credential(&request.credential)?;
    let subject = validate::subject("subject", &request.subject)?;
    let min_remaining = validate::min_remaining(request.min_remaining_validity.as_ref())?;
    let lifetime = validate::duration(
        "lifetime",
        request.lifetime.as_ref(),
        MIN_LIFETIME,
        MAX_LIFETIME,
    )?;
    validate::lifetime_above(lifetime, min_remaining, MAX_LIFETIME)?;
    let boundary = validate::access_boundary(request.access_boundary.as_ref())?;

    // Policy, before anything about the credential is revealed.
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize(
            &context.caller,
            &AccessRequest {
                credential: credential.as_ref(),
                subject: subject.as_deref(),
                lifetime,
                boundary: boundary.as_ref(),
                ..AccessRequest::new(context.rpc, &scopes)
            },
        )
        .map_err(denied)?;

    // The credential: configured, and able to do what is asked.
    let configured = inner.credential(&decision.credential)?;
    configured.check_flows(
        &decision.credential,
        super::Asks {
            subject: subject.is_some(),
            lifetime,
            boundary: decision.boundary.is_some(),
            ..super::Asks::default()
        },
    )?;
    let chooses_lifetime =
        super::chooses_lifetime(configured.source.capabilities(), subject.is_some());
    if !chooses_lifetime {
        decision
            .check_fixed_lifetime(&context.caller, FIXED_LIFETIME)
            .map_err(denied)?;
    }

    // The caller's limits, then the cache (or the source).
    let token_request = TokenRequest {
        scopes,
        subject,
        lifetime: chooses_lifetime.then(|| decision.lifetime_or(FIXED_LIFETIME)),
        boundary: decision.boundary.clone(),
    };
    let key = TokenKey::new(
        decision.credential.clone(),
        Arc::clone(&configured.principal),
        &token_request,
    );
    inner.admit(context, &decision, Some(&key))?;
    let subject_shown = token_request.subject.clone();
    let cached = context
        .bounded(&configured.upstream, async {
            inner
                .cache
                .get(
                    key,
                    Arc::new(AccessTokenFetch {
                        source: Arc::clone(&configured.source),
                        request: token_request,
                    }),
                    min_remaining,
                    // The fetch is shared: it gets the broker's maximum, not this caller's
                    // deadline (which `bounded` applies to this caller's wait).
                    Some(context.fetch_deadline),
                )
                .await
                .map_err(|error| {
                    context.upstream_error(
                        error,
                        &decision.credential,
                        configured.source.kind(),
                        &configured.upstream,
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
        scopes = %token.scopes,
        subject = subject_shown.as_deref().unwrap_or("-"),
        boundary = decision.boundary.is_some(),
        origin = cached.origin.as_str(),
        token = %token.secret.fingerprint(),
        expires_in_s = token.remaining(inner.clock.now()).as_secs(),
        latency_us = context.latency_us(),
    );
    Ok(pb::GetAccessTokenResponse {
        access_token: token.secret.expose().to_owned(),
        token_type: "Bearer".to_owned(),
        expire_time: Some(timestamp(token.expires_at)),
        granted_scopes: token.scopes.iter().map(str::to_owned).collect(),
        principal: String::from(&*token.principal),
        cache_hit: cached.origin.is_cache_hit(),
        credential: decision.credential.as_str().to_owned(),
        last_known_good: cached.origin == broker_cache::Origin::LastKnownGood,
    })
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
