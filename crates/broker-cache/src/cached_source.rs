//! A [`TokenSource`] whose access tokens come through the cache.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_core::{
    AccessTokenFetch, Capabilities, CredentialName, IdTokenRequest, SourceError, SourceFuture,
    TokenKey, TokenRequest, TokenSource,
};

use crate::{CacheError, TokenCache};

/// The least validity a base token is served with: enough for the IAM call it authorizes.
const BASE_MIN_REMAINING: Duration = Duration::from_secs(120);

/// A configured credential's source seen through the cache: its access tokens are cached and
/// shared under the credential's name like any other, so a source that needs another
/// credential's token (impersonation, IAM signing) does not mint one per call. ID tokens are
/// passed through uncached (their callers cache them under their own keys).
#[derive(Clone)]
pub struct CachedSource {
    cache: TokenCache,
    credential: CredentialName,
    principal: Arc<str>,
    inner: Arc<dyn TokenSource>,
}

impl fmt::Debug for CachedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSource")
            .field("credential", &self.credential)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CachedSource {
    /// `inner`, the source of the credential called `credential`, through `cache`.
    pub fn new(cache: TokenCache, credential: CredentialName, inner: Arc<dyn TokenSource>) -> Self {
        Self {
            cache,
            credential,
            principal: inner.principal().into(),
            inner,
        }
    }
}

/// A cache error as the error of a source: the source's own error, or (for a fetch that ended
/// without an answer) an internal one.
fn source_error(error: CacheError) -> SourceError {
    match error.source_error() {
        Some(error) => error.clone(),
        None => SourceError::Internal(error.to_string()),
    }
}

impl TokenSource for CachedSource {
    fn principal(&self) -> &str {
        &self.principal
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(async move {
            let key = TokenKey::new(
                self.credential.clone(),
                Arc::clone(&self.principal),
                request,
            );
            let fetch = Arc::new(AccessTokenFetch {
                source: Arc::clone(&self.inner),
                request: request.clone(),
            });
            self.cache
                .get(key, fetch, BASE_MIN_REMAINING, deadline)
                .await
                .map(|cached| (*cached.token).clone())
                .map_err(source_error)
        })
    }

    fn invalidate<'a>(
        &'a self,
        request: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let key = TokenKey::new(
                self.credential.clone(),
                Arc::clone(&self.principal),
                request,
            );
            self.cache.invalidate(&key).await;
        })
    }

    fn fetch_id_token<'a>(
        &'a self,
        request: &'a IdTokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        self.inner.fetch_id_token(request, deadline)
    }
}
