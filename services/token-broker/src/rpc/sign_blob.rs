//! `SignBlob`: bytes signed (RSA-SHA256) with a Google-managed key of a service account, by IAM
//! Credentials signBlob called with an access token of the base credential. Never cached.

use broker_authz::AccessRequest;
use broker_core::{ScopeSet, fingerprint};
use broker_proto::tokenbroker::v1 as pb;

use super::impersonation::sign_with_base;
use super::{CallContext, Inner, denied, validate};
use crate::status::RpcError;

/// Serves one call: the audit event of a failure is written by the caller.
pub(super) async fn serve(
    inner: &Inner,
    context: &CallContext,
    request: pb::SignBlobRequest,
) -> Result<pb::SignBlobResponse, RpcError> {
    // Request fields.
    let signer = validate::service_account("service_account", &request.service_account, true)?
        .unwrap_or_default();
    validate::blob(&request.payload)?;
    let delegates = validate::delegates(&request.delegates, true)?;
    let credential = validate::credential(&request.credential)?;

    // Policy, then the base credential.
    let no_scopes = ScopeSet::empty();
    let policy = inner.policy.borrow().clone();
    let decision = policy
        .authorize(
            &context.caller,
            &AccessRequest {
                credential: credential.as_ref(),
                service_account: Some(&signer),
                delegates: &delegates,
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
                .sign_blob(
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

    tracing::info!(
        target: "audit",
        rpc = context.rpc.name(),
        caller = %context.caller,
        outcome = "granted",
        grant = %decision.grant,
        credential = %decision.credential,
        principal = %signer,
        delegates = %delegates.join(","),
        payload_bytes = request.payload.len(),
        payload = %fingerprint(&request.payload),
        key_id = %signed.key_id,
        signature = %fingerprint(&signed.signature),
        latency_us = context.latency_us(),
    );
    Ok(pb::SignBlobResponse {
        key_id: signed.key_id,
        signature: signed.signature,
        credential: decision.credential.as_str().to_owned(),
    })
}
