//! An access-token provider that caches, refreshes ahead of expiry, coalesces concurrent
//! refreshes and retries transient errors.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use broker_proto::tokenbroker::v1::GetAccessTokenRequest;
use broker_proto::tokenbroker::v1::GetAccessTokenResponse;
use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

pub use broker_core::{Clock, Secret, SystemClock};

use crate::error::ClientError;

/// An access token from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessToken {
    /// The OAuth 2.0 access token. Send it only in an `Authorization: Bearer` header to Google
    /// APIs; never log it.
    pub token: Secret,
    /// The token type, `Bearer`.
    pub token_type: String,
    /// When the token expires.
    pub expire_time: SystemTime,
    /// The Google principal the token acts as (empty when the broker cannot tell).
    pub principal: String,
    /// The scopes the token carries.
    pub scopes: Vec<String>,
    /// The broker credential that minted it.
    pub credential: String,
    /// True if the broker served the token from its own cache (as reported when this client
    /// fetched it).
    pub cache_hit: bool,
    /// True if the broker served its last known good token because refreshing it failed
    /// (Google unavailable): valid until `expire_time`, but with less left than asked for.
    pub last_known_good: bool,
}

impl AccessToken {
    /// The token string. A secret.
    pub fn secret(&self) -> &str {
        self.token.expose()
    }

    /// How long the token is still valid at `now` (zero once it has expired).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        self.expire_time
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// The value of an HTTP `Authorization` header carrying the token. A secret.
    pub fn authorization_header(&self) -> Secret {
        Secret::new(format!("Bearer {}", self.secret()))
    }

    /// Converts a `GetAccessTokenResponse`; refuses one without a token or an expiry.
    pub fn from_response(response: GetAccessTokenResponse) -> Result<Self, ClientError> {
        let GetAccessTokenResponse {
            access_token,
            token_type,
            expire_time,
            granted_scopes,
            principal,
            cache_hit,
            credential,
            last_known_good,
        } = response;
        let token = Secret::new(access_token);
        if token.expose().is_empty() {
            return Err(ClientError::Protocol(
                "GetAccessTokenResponse has an empty access_token".to_owned(),
            ));
        }
        let expire_time = expire_time
            .ok_or_else(|| {
                ClientError::Protocol("GetAccessTokenResponse has no expire_time".to_owned())
            })
            .and_then(|timestamp| {
                SystemTime::try_from(timestamp).map_err(|error| {
                    ClientError::Protocol(format!(
                        "GetAccessTokenResponse has an invalid expire_time: {error}"
                    ))
                })
            })?;
        Ok(Self {
            token,
            token_type: if token_type.is_empty() {
                "Bearer".to_owned()
            } else {
                token_type
            },
            expire_time,
            principal,
            scopes: granted_scopes,
            credential,
            cache_hit,
            last_known_good,
        })
    }
}

/// What to ask the broker for: the template of every `GetAccessToken` request a
/// [`TokenProvider`] makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// OAuth 2.0 scopes; empty means the broker's default (cloud-platform).
    pub scopes: Vec<String>,
    /// The broker credential to use; `None` means the caller's default grant.
    pub credential: Option<String>,
    /// Domain-wide delegation subject (a Workspace user's email).
    pub subject: Option<String>,
    /// The lifetime wanted for a newly minted token (whole seconds).
    pub lifetime: Option<Duration>,
    /// The least validity a returned token must have left (whole seconds); the broker's
    /// default is 5 minutes. A [`TokenProvider`] also refreshes its own cached token once less
    /// than this is left.
    pub min_remaining_validity: Option<Duration>,
}

impl TokenRequest {
    /// The protobuf request. Durations must be whole seconds.
    pub fn to_proto(&self) -> Result<GetAccessTokenRequest, ClientError> {
        Ok(GetAccessTokenRequest {
            scopes: self.scopes.clone(),
            credential: self.credential.clone().unwrap_or_default(),
            subject: self.subject.clone().unwrap_or_default(),
            lifetime: self
                .lifetime
                .map(|d| proto_duration("lifetime", d))
                .transpose()?,
            min_remaining_validity: self
                .min_remaining_validity
                .map(|d| proto_duration("min_remaining_validity", d))
                .transpose()?,
            access_boundary: None,
        })
    }
}

fn proto_duration(field: &str, duration: Duration) -> Result<prost_types::Duration, ClientError> {
    if duration.subsec_nanos() != 0 {
        return Err(ClientError::Config(format!(
            "{field} must be whole seconds, got {}",
            humantime::format_duration(duration)
        )));
    }
    let seconds = i64::try_from(duration.as_secs())
        .map_err(|_| ClientError::Config(format!("{field} is too large")))?;
    Ok(prost_types::Duration { seconds, nanos: 0 })
}

/// How a [`TokenProvider`] retries UNAVAILABLE and RESOURCE_EXHAUSTED.
///
/// The wait before retry *n* (counting from 1) is a random duration between half and all of
/// `initial_backoff * 2^(n-1)`, capped at `max_backoff`, but never less than the broker's
/// `RetryInfo` delay. No retry starts that could not begin before `deadline` (measured from
/// the first attempt) has passed; then the last error is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The backoff before the first retry. Default 200 ms.
    pub initial_backoff: Duration,
    /// The largest backoff. Default 5 s.
    pub max_backoff: Duration,
    /// Total time budget for one refresh, retries included. Default 30 s.
    pub deadline: Duration,
    /// At most this many attempts (1 = no retries). Default 8.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt only.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff before retry number `retry` (1-based), with jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(31);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1_u32 << exponent)
            .min(self.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        if ceiling_ms < 2 {
            return ceiling;
        }
        Duration::from_millis(fastrand::u64(ceiling_ms / 2..=ceiling_ms))
    }
}

/// Settings of a [`TokenProvider`]. Start from [`ProviderOptions::default`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// Refresh the cached token once less than this is left. Default 5 minutes. The effective
    /// margin is at least the request's `min_remaining_validity`, and at most half of the
    /// lifetime the token had when it was fetched (so that a short-lived token is not
    /// refreshed on every call).
    pub refresh_margin: Duration,
    /// Deadline of each `GetAccessToken` attempt (sent to the broker as `grpc-timeout`).
    /// Default 10 s.
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

#[derive(Debug, Clone)]
struct Cached {
    token: AccessToken,
    refresh_at: SystemTime,
}

type Refresh = Arc<OnceCell<Result<Cached, ClientError>>>;

#[derive(Debug, Default)]
struct State {
    cached: Option<Cached>,
    /// The refresh in progress, shared by every caller that needs it.
    inflight: Option<Refresh>,
}

#[derive(Debug)]
struct Inner {
    client: TokenBrokerClient<Channel>,
    request: GetAccessTokenRequest,
    margin: Duration,
    options: ProviderOptions,
    state: Mutex<State>,
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
    inner: Arc<Inner>,
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
        let margin = options
            .refresh_margin
            .max(request.min_remaining_validity.unwrap_or_default());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                request: request.to_proto()?,
                margin,
                options,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// A token with more than the refresh margin left: the cached one, or a new one from the
    /// broker.
    pub async fn token(&self) -> Result<AccessToken, ClientError> {
        let refresh = {
            let mut state = self.inner.lock();
            if let Some(cached) = &state.cached
                && self.inner.options.clock.now() < cached.refresh_at
            {
                return Ok(cached.token.clone());
            }
            Arc::clone(state.inflight.get_or_insert_with(Refresh::default))
        };

        // One caller runs the refresh; the others wait for its result. If the running caller
        // is cancelled, a waiting one takes over.
        let result = refresh
            .get_or_init(|| self.inner.fetch_with_retries())
            .await
            .clone();

        let mut state = self.inner.lock();
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
                Some(cached) if self.inner.options.clock.now() < cached.token.expire_time => {
                    tracing::warn!(
                        error = %error,
                        "refreshing the access token failed; returning the cached token, which has not expired yet"
                    );
                    Ok(cached.token.clone())
                }
                _ => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    /// Forgets the cached token, so that the next [`token`](Self::token) asks the broker (for
    /// example after Google refused the token).
    pub fn invalidate(&self) {
        self.inner.lock().cached = None;
    }

    /// The cached token, if any, whatever its remaining lifetime. Never calls the broker.
    pub fn cached(&self) -> Option<AccessToken> {
        self.inner
            .lock()
            .cached
            .as_ref()
            .map(|cached| cached.token.clone())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn fetch_with_retries(&self) -> Result<Cached, ClientError> {
        let policy = &self.options.retry;
        let started = tokio::time::Instant::now();
        let deadline = started + policy.deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut request = tonic::Request::new(self.request.clone());
            if let Some(timeout) = self.options.call_timeout {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                request.set_timeout(timeout.min(left.max(Duration::from_millis(1))));
            }
            let fetched_at = self.options.clock.now();
            let error = match self.client.clone().get_access_token(request).await {
                Ok(response) => {
                    let token = AccessToken::from_response(response.into_inner())?;
                    let refresh_at = self.refresh_at(&token, fetched_at);
                    tracing::debug!(
                        attempt,
                        principal = %token.principal,
                        broker_cache_hit = token.cache_hit,
                        last_known_good = token.last_known_good,
                        "got an access token from the broker"
                    );
                    return Ok(Cached { token, refresh_at });
                }
                Err(status) => ClientError::from(status),
            };
            if !error.is_retryable() || attempt >= policy.max_attempts {
                return Err(error);
            }
            let retry_after = error.status().and_then(|status| status.retry_after);
            let delay = policy.backoff(attempt).max(retry_after.unwrap_or_default());
            if tokio::time::Instant::now() + delay >= deadline {
                tracing::debug!(attempt, %error, "giving up: the retry deadline would pass");
                return Err(error);
            }
            tracing::debug!(attempt, ?delay, %error, "retrying GetAccessToken");
            tokio::time::sleep(delay).await;
        }
    }

    /// When a token fetched at `fetched_at` is due for refresh: `margin` before it expires,
    /// but no earlier than half-way through the lifetime it had when fetched.
    fn refresh_at(&self, token: &AccessToken, fetched_at: SystemTime) -> SystemTime {
        let lifetime = token
            .expire_time
            .duration_since(fetched_at)
            .unwrap_or(Duration::ZERO);
        let margin = self.margin.min(lifetime / 2);
        token.expire_time.checked_sub(margin).unwrap_or(fetched_at)
    }
}

/// Splits scope arguments that may each hold several scopes separated by commas or whitespace,
/// dropping empty entries and duplicates (keeping the first occurrence's position).
pub fn split_scopes<I, S>(values: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut scopes: Vec<String> = Vec::new();
    for value in values {
        for scope in value
            .as_ref()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|scope| !scope.is_empty())
        {
            if !scopes.iter().any(|seen| seen == scope) {
                scopes.push(scope.to_owned());
            }
        }
    }
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let token = AccessToken {
            token: Secret::new("ya29.very-secret"),
            token_type: "Bearer".to_owned(),
            expire_time: SystemTime::UNIX_EPOCH,
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            scopes: vec![],
            credential: "prod".to_owned(),
            cache_hit: false,
            last_known_good: false,
        };
        let debug = format!("{token:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("sha256:"), "only a fingerprint: {debug}");
        assert_eq!(
            token.authorization_header().expose(),
            "Bearer ya29.very-secret"
        );
    }

    #[test]
    fn scopes_split_on_commas_and_whitespace_without_duplicates() {
        assert_eq!(
            split_scopes([
                "https://a,https://b",
                " https://c  https://a ",
                "",
                ",,https://d,"
            ]),
            vec!["https://a", "https://b", "https://c", "https://d"]
        );
        assert!(split_scopes(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn requests_need_whole_seconds() {
        let request = TokenRequest {
            scopes: vec!["s".to_owned()],
            credential: Some("prod".to_owned()),
            lifetime: Some(Duration::from_secs(1800)),
            min_remaining_validity: Some(Duration::from_millis(1500)),
            ..TokenRequest::default()
        };
        assert!(matches!(request.to_proto(), Err(ClientError::Config(_))));
        let request = TokenRequest {
            min_remaining_validity: Some(Duration::from_secs(60)),
            ..request
        };
        let proto = request.to_proto().ok();
        assert_eq!(proto.as_ref().map(|p| p.credential.as_str()), Some("prod"));
        assert_eq!(
            proto.and_then(|p| p.lifetime).map(|d| d.seconds),
            Some(1800)
        );
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
            let tenth = policy.backoff(10);
            assert!(tenth >= Duration::from_millis(2500) && tenth <= Duration::from_secs(5));
        }
        assert!(policy.backoff(u32::MAX) <= Duration::from_secs(5));
    }

    #[test]
    fn responses_without_expiry_or_token_are_refused() {
        let response = GetAccessTokenResponse {
            access_token: "t".to_owned(),
            ..GetAccessTokenResponse::default()
        };
        assert!(matches!(
            AccessToken::from_response(response),
            Err(ClientError::Protocol(_))
        ));
        let response = GetAccessTokenResponse {
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..GetAccessTokenResponse::default()
        };
        assert!(matches!(
            AccessToken::from_response(response),
            Err(ClientError::Protocol(_))
        ));
    }
}
