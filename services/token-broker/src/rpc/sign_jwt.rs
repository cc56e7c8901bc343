//! `SignJwt`: a JWT signed with a Google-managed key of a service account, by IAM Credentials
//! signJwt called with an access token of the base credential. Never cached: every call
//! signs anew.

use std::time::{Duration, SystemTime};

use broker_authz::{AccessRequest, JwtClaims};
use broker_core::{ScopeSet, fingerprint};
use broker_proto::tokenbroker::v1 as pb;

use super::impersonation::sign_with_base;
use super::{CallContext, Inner, denied, validate};
use crate::status::RpcError;

/// The most characters of a payload's `aud` values an audit event shows.
const MAX_SHOWN_AUDIENCES: usize = 256;

/// Serves one call: the audit event of a failure is written by the caller.
pub(super) async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::SignJwtRequest,
) -> Result<pb::SignJwtResponse, RpcError> {
    // Request fields.
    let signer = validate::service_account("service_account", &request.service_account, true)?
        .unwrap_or_default();
    let now = context
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let claims = validate::jwt_payload(&request.payload, now)?;
    let delegates = validate::delegates(&request.delegates, true)?;
    let credential = validate::credential(&request.credential)?;

    // Policy (with the claims the grant may constrain), then the base credential.
    let no_scopes = ScopeSet::empty();
    let expires_in = claims
        .expires_in
        .map(|seconds| Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize(
            &context.caller,
            &AccessRequest {
                credential: credential.as_ref(),
                service_account: Some(&signer),
                delegates: &delegates,
                jwt_claims: Some(JwtClaims {
                    aud: &claims.audiences,
                    expires_in,
                }),
                ..AccessRequest::new(context.rpc, &no_scopes)
            },
        )
        .map_err(denied)?;
    let base = inner.credential(&decision.credential)?;

    // The caller's rate limit (nothing is cached, so no distinct-keys limit), then IAM.
    inner.admit(context, &decision, None)?;
    let (payload, signer_ref, chain) = (&request.payload, &signer, &delegates);
    let signed = sign_with_base(
        inner,
        context,
        &decision.credential,
        base,
        |bearer| async move {
            inner
                .iam
                .sign_jwt(
                    &bearer.secret,
                    signer_ref,
                    chain,
                    payload,
                    Some(context.deadline),
                )
                .await
        },
    )
    .await?;

    // The caller wrote these: escaped and capped, so that they cannot forge audit lines.
    let shown_audiences: String = claims
        .audiences
        .join(",")
        .escape_debug()
        .take(MAX_SHOWN_AUDIENCES)
        .collect();
    tracing::info!(
        target: "audit",
        rpc = context.rpc.name(),
        caller = %context.caller,
        outcome = "granted",
        grant = %decision.grant,
        credential = %decision.credential,
        principal = %signer,
        delegates = %delegates.join(","),
        aud = %shown_audiences,
        exp_in_s = claims.expires_in.unwrap_or(-1),
        payload = %fingerprint(request.payload.as_bytes()),
        key_id = %signed.key_id,
        signed_jwt = %signed.signed_jwt.fingerprint(),
        latency_us = context.latency_us(),
    );
    Ok(pb::SignJwtResponse {
        key_id: signed.key_id,
        signed_jwt: signed.signed_jwt.expose().to_owned(),
        credential: decision.credential.as_str().to_owned(),
    })
}
