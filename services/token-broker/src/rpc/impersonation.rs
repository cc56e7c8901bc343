//! Impersonation by request: the RPCs that name a `target_service_account` reach it from the
//! base credential through IAM Credentials. The [`ImpersonatedSource`] is built only when the
//! cache misses, so a cache hit costs no more than GetAccessToken's.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use broker_backends::{CLOUD_PLATFORM_SCOPE, GoogleEndpoints, HttpClient, ImpersonatedSource};
use broker_core::{
    Clock, CredentialName, Fetch, IdTokenRequest, ScopeSet, SourceError, SourceFuture, Token,
    TokenRequest, TokenSource,
};

use super::{CallContext, Credential, Inner};
use crate::status::RpcError;

/// The kind of the flow, in errors: what the broker does for these RPCs is what an
/// `impersonated` credential does.
pub(super) const IMPERSONATED: &str = "impersonated";

/// What impersonation needs besides the base: Google's endpoints, the HTTP client, the clock.
#[derive(Debug)]
pub(super) struct Impersonation {
    endpoints: GoogleEndpoints,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl Impersonation {
    pub(super) fn new(endpoints: GoogleEndpoints, http: HttpClient, clock: Arc<dyn Clock>) -> Self {
        Self {
            endpoints,
            http,
            clock,
        }
    }
}

/// What a fetch asks the impersonated target for.
#[derive(Debug)]
pub(super) enum Wanted {
    /// An access token (IAM `generateAccessToken`).
    AccessToken(TokenRequest),
    /// An ID token (IAM `generateIdToken`).
    IdToken(IdTokenRequest),
}

/// One cache miss of an impersonation RPC: `target` through `delegates`, with the access
/// tokens of `base` (the base credential seen through the cache).
pub(super) struct ImpersonationFetch {
    pub(super) impersonation: Arc<Impersonation>,
    pub(super) base: Arc<dyn TokenSource>,
    pub(super) target: String,
    pub(super) delegates: Vec<String>,
    pub(super) wanted: Wanted,
}

impl fmt::Debug for ImpersonationFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpersonationFetch")
            .field("target", &self.target)
            .field("delegates", &self.delegates)
            .field("wanted", &self.wanted)
            .finish_non_exhaustive()
    }
}

impl Fetch for ImpersonationFetch {
    fn fetch(&self, deadline: Option<Instant>) -> SourceFuture<'_> {
        Box::pin(async move {
            let source = ImpersonatedSource::new(
                Arc::clone(&self.base),
                &self.target,
                &self.delegates,
                self.impersonation.endpoints.clone(),
                self.impersonation.http.clone(),
            )
            .map_err(|e| SourceError::Internal(format!("impersonation: {e}")))?
            .with_clock(Arc::clone(&self.impersonation.clock));
            match &self.wanted {
                Wanted::AccessToken(request) => source.fetch(request, deadline).await,
                Wanted::IdToken(request) => source.fetch_id_token(request, deadline).await,
            }
        })
    }
}

/// Where an IAM Credentials call made with a base token failed.
enum IamFailure {
    /// Getting the base credential's token.
    Base(SourceError),
    /// The IAM call itself.
    Iam(SourceError),
}

/// Calls IAM Credentials (`call`) with an access token of `base` (the base credential through
/// the cache): the scope [`CLOUD_PLATFORM_SCOPE`], the same token impersonation uses. If IAM
/// refuses that token (a 401: revoked while cached), the cache forgets it and the call is made
/// once more with a fresh one.
async fn with_iam_bearer<T, F, Fut>(
    base: &dyn TokenSource,
    base_deadline: Option<Instant>,
    call: F,
) -> Result<T, IamFailure>
where
    F: Fn(Token) -> Fut,
    Fut: Future<Output = Result<T, SourceError>>,
{
    let scopes = ScopeSet::parse([CLOUD_PLATFORM_SCOPE]).map_err(|e| {
        IamFailure::Base(SourceError::Internal(format!(
            "the IAM bearer token's scope: {e}"
        )))
    })?;
    let request = TokenRequest::new(scopes);
    let mut retried = false;
    loop {
        let bearer = base
            .fetch(&request, base_deadline)
            .await
            .map_err(|e| IamFailure::Base(e.as_base_error()))?;
        match call(bearer).await {
            Err(error) if error.is_bearer_rejected() && !retried => {
                tracing::warn!(
                    principal = %base.principal(),
                    "IAM Credentials refused the base token; getting a new one"
                );
                base.invalidate(&request).await;
                retried = true;
            }
            result => return result.map_err(IamFailure::Iam),
        }
    }
}

/// An IAM error of SignJwt or SignBlob, whose request calls the account `service_account`
/// (IAM Credentials names it `target_service_account` for every method).
fn signer_field(error: SourceError) -> SourceError {
    match error {
        SourceError::Rejected(mut rejection)
            if rejection.field.as_deref() == Some("target_service_account") =>
        {
            rejection.field = Some("service_account".to_owned());
            SourceError::Rejected(rejection)
        }
        other => other,
    }
}

/// A signing call of IAM Credentials (`call`, given a bearer token) made for the RPC in
/// `context` with the base credential `base`, called `name`, within the call's deadline. Errors
/// say whose they are: the base credential's own, or IAM's about the signer.
pub(super) async fn sign_with_base<T, F, Fut>(
    inner: &Inner,
    context: &CallContext,
    name: &CredentialName,
    base: &Credential,
    call: F,
) -> Result<T, RpcError>
where
    F: Fn(Token) -> Fut,
    Fut: Future<Output = Result<T, SourceError>>,
{
    context
        .bounded(&inner.iam_upstream, async {
            with_iam_bearer(&*base.cached, Some(context.fetch_deadline), call)
                .await
                .map_err(|failure| match failure {
                    IamFailure::Base(error) => {
                        context.source_error(error, name, base.source.kind(), &base.upstream)
                    }
                    IamFailure::Iam(error) => context.source_error(
                        signer_field(error),
                        name,
                        IMPERSONATED,
                        &inner.iam_upstream,
                    ),
                })
        })
        .await
}
