//! Token providers that cache, refresh ahead of expiry, coalesce concurrent refreshes and retry
//! transient errors: [`TokenProvider`] for access tokens, [`IdTokenProvider`] for ID tokens.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use broker_proto::tokenbroker::v1::{GenerateIdTokenRequest, GetAccessTokenRequest};
use tokio::sync::OnceCell;
use tonic::transport::Channel;

pub use broker_core::{Clock, Secret, SystemClock};

use crate::calls::{Rpc, attempt};
use crate::error::ClientError;
use crate::requests::{IdTokenRequest, TokenRequest};
use crate::retry::{CallOptions, RetryPolicy, with_retries};
use crate::tokens::{AccessToken, IdToken};

/// Settings of a [`TokenProvider`] or an [`IdTokenProvider`]. Start from
/// [`ProviderOptions::default`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// Refresh the cached token once less than this is left. Default 5 minutes. The effective
    /// margin is at least the request's `min_remaining_validity`, and at most half of the
    /// lifetime the token had when it was fetched (so that a short-lived token is not
    /// refreshed on every call).
    pub refresh_margin: Duration,
    /// Deadline of each attempt (sent to the broker as `grpc-timeout`). Default 10 s.
    pub call_timeout: Option<Duration>,
    /// Retries of UNAVAILABLE and RESOURCE_EXHAUSTED.
    pub retry: RetryPolicy,
    /// The clock that decides when a cached token is due for refresh.
    pub clock: Arc<dyn Clock>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(5 * 60),
            call_timeout: Some(Duration::from_secs(10)),
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A token a provider can cache.
pub(crate) trait Cacheable {
    /// When the token expires.
    fn expire_time(&self) -> SystemTime;
    /// The principal it acts as, for logs.
    fn principal(&self) -> &str;
    /// Whether the broker served it from its cache.
    fn cache_hit(&self) -> bool;
    /// Whether the broker served its last known good token.
    fn last_known_good(&self) -> bool;
}

macro_rules! cacheable {
    ($token:ty) => {
        impl Cacheable for $token {
            fn expire_time(&self) -> SystemTime {
                self.expire_time
            }
            fn principal(&self) -> &str {
                &self.principal
            }
            fn cache_hit(&self) -> bool {
                self.cache_hit
            }
            fn last_known_good(&self) -> bool {
                self.last_known_good
            }
        }
    };
}

cacheable!(AccessToken);
cacheable!(IdToken);

#[derive(Debug, Clone)]
struct Cached<T> {
    token: T,
    refresh_at: SystemTime,
}

type Refresh<T> = Arc<OnceCell<Result<Cached<T>, ClientError>>>;

#[derive(Debug)]
struct State<T> {
    cached: Option<Cached<T>>,
    /// The refresh in progress, shared by every caller that needs it.
    inflight: Option<Refresh<T>>,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        Self {
            cached: None,
            inflight: None,
        }
    }
}

/// The cache behind both providers: one request, its latest result, and the refresh in
/// flight.
#[derive(Debug)]
struct Cache<R: Rpc> {
    client: TokenBrokerClient<Channel>,
    request: R,
    margin: Duration,
    call: CallOptions,
    clock: Arc<dyn Clock>,
    state: Mutex<State<R::Output>>,
}

impl<R: Rpc> Cache<R>
where
    R::Output: Cacheable,
{
    fn new(
        client: TokenBrokerClient<Channel>,
        request: R,
        min_remaining_validity: Option<Duration>,
        options: ProviderOptions,
    ) -> Self {
        let ProviderOptions {
            refresh_margin,
            call_timeout,
            retry,
            clock,
        } = options;
        Self {
            client,
            request,
            margin: refresh_margin.max(min_remaining_validity.unwrap_or_default()),
            call: CallOptions {
                call_timeout,
                retry,
            },
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R::Output>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn token(&self) -> Result<R::Output, ClientError> {
        let refresh = {
            let mut state = self.lock();
            if let Some(cached) = &state.cached
                && self.clock.now() < cached.refresh_at
            {
                return Ok(cached.token.clone());
            }
            Arc::clone(state.inflight.get_or_insert_with(Refresh::default))
        };

        // One caller runs the refresh; the others wait for its result. If the running caller
        // is cancelled, a waiting one takes over.
        let result = refresh
            .get_or_init(|| self.fetch_with_retries())
            .await
            .clone();

        let mut state = self.lock();
        if state
            .inflight
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &refresh))
        {
            state.inflight = None;
            if let Ok(fresh) = &result {
                state.cached = Some(fresh.clone());
            }
        }
        match result {
            Ok(fresh) => Ok(fresh.token),
            Err(error) if error.is_retryable() => match &state.cached {
                Some(cached) if self.clock.now() < cached.token.expire_time() => {
                    tracing::warn!(
                        rpc = R::NAME,
                        error = %error,
                        "refreshing the token failed; returning the cached token, which has not expired yet"
                    );
                    Ok(cached.token.clone())
                }
                _ => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    fn invalidate(&self) {
        self.lock().cached = None;
    }

    fn cached(&self) -> Option<R::Output> {
        self.lock()
            .cached
            .as_ref()
            .map(|cached| cached.token.clone())
    }

    async fn fetch_with_retries(&self) -> Result<Cached<R::Output>, ClientError> {
        let (token, fetched_at) = with_retries(R::NAME, &self.call, |timeout| {
            let fetched_at = self.clock.now();
            async move {
                attempt(&self.client, &self.request, timeout)
                    .await
                    .map(|token| (token, fetched_at))
            }
        })
        .await?;
        tracing::debug!(
            rpc = R::NAME,
            principal = %token.principal(),
            broker_cache_hit = token.cache_hit(),
            last_known_good = token.last_known_good(),
            "got a token from the broker"
        );
        let refresh_at = self.refresh_at(token.expire_time(), fetched_at);
        Ok(Cached { token, refresh_at })
    }

    /// When a token fetched at `fetched_at` is due for refresh: `margin` before it expires,
    /// but no earlier than half-way through the lifetime it had when fetched.
    fn refresh_at(&self, expire_time: SystemTime, fetched_at: SystemTime) -> SystemTime {
        let lifetime = expire_time
            .duration_since(fetched_at)
            .unwrap_or(Duration::ZERO);
        let margin = self.margin.min(lifetime / 2);
        expire_time.checked_sub(margin).unwrap_or(fetched_at)
    }
}

/// Hands out access tokens for one [`TokenRequest`], calling the broker only when needed.
///
/// - A cached token is returned while more than the refresh margin is left (see
///   [`ProviderOptions::refresh_margin`]).
/// - Concurrent callers that find no usable token share one `GetAccessToken` call.
/// - UNAVAILABLE and RESOURCE_EXHAUSTED are retried per [`RetryPolicy`], honouring the broker's
///   `RetryInfo`.
/// - If a refresh fails with a retryable error while the cached token has not expired yet, the
///   cached token is returned (an old token beats no token). Other errors, such as
///   PERMISSION_DENIED after a policy change, are returned as they are.
///
/// Cloning is cheap; clones share the cache.
#[derive(Debug, Clone)]
pub struct TokenProvider {
    inner: Arc<Cache<GetAccessTokenRequest>>,
}

impl TokenProvider {
    /// A provider with default [`ProviderOptions`].
    pub fn new(
        client: TokenBrokerClient<Channel>,
        request: TokenRequest,
    ) -> Result<Self, ClientError> {
        Self::with_options(client, request, ProviderOptions::default())
    }

    /// A provider with the given options. Fails if the request's durations are not whole
    /// seconds.
    pub fn with_options(
        client: TokenBrokerClient<Channel>,
        request: TokenRequest,
        options: ProviderOptions,
    ) -> Result<Self, ClientError> {
        let proto = request.to_proto()?;
        Ok(Self {
            inner: Arc::new(Cache::new(
                client,
                proto,
                request.min_remaining_validity,
                options,
            )),
        })
    }

    /// A token with more than the refresh margin left: the cached one, or a new one from the
    /// broker.
    pub async fn token(&self) -> Result<AccessToken, ClientError> {
        self.inner.token().await
    }

    /// Forgets the cached token, so that the next [`token`](Self::token) asks the broker (for
    /// example after Google refused the token).
    pub fn invalidate(&self) {
        self.inner.invalidate();
    }

    /// The cached token, if any, whatever its remaining lifetime. Never calls the broker.
    pub fn cached(&self) -> Option<AccessToken> {
        self.inner.cached()
    }
}

/// Hands out ID tokens for one [`IdTokenRequest`] (one audience), calling the broker only when
/// needed: the same caching, refresh, coalescing and retries as [`TokenProvider`], with
/// `GenerateIdToken`.
///
/// For a service that calls a Cloud Run service or a Cloud Function on every request: keep one
/// provider per audience and send [`IdToken::authorization_header`].
///
/// Cloning is cheap; clones share the cache.
#[derive(Debug, Clone)]
pub struct IdTokenProvider {
    inner: Arc<Cache<GenerateIdTokenRequest>>,
}

impl IdTokenProvider {
    /// A provider with default [`ProviderOptions`].
    pub fn new(
        client: TokenBrokerClient<Channel>,
        request: IdTokenRequest,
    ) -> Result<Self, ClientError> {
        Self::with_options(client, request, ProviderOptions::default())
    }

    /// A provider with the given options. Fails if the request's duration is not whole seconds
    /// or it names delegates without a target service account.
    pub fn with_options(
        client: TokenBrokerClient<Channel>,
        request: IdTokenRequest,
        options: ProviderOptions,
    ) -> Result<Self, ClientError> {
        let proto = request.to_proto()?;
        Ok(Self {
            inner: Arc::new(Cache::new(
                client,
                proto,
                request.min_remaining_validity,
                options,
            )),
        })
    }

    /// An ID token with more than the refresh margin left: the cached one, or a new one from
    /// the broker.
    pub async fn token(&self) -> Result<IdToken, ClientError> {
        self.inner.token().await
    }

    /// Forgets the cached token, so that the next [`token`](Self::token) asks the broker.
    pub fn invalidate(&self) {
        self.inner.invalidate();
    }

    /// The cached token, if any, whatever its remaining lifetime. Never calls the broker.
    pub fn cached(&self) -> Option<IdToken> {
        self.inner.cached()
    }
}
