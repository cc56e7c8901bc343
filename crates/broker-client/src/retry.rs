//! Retries of UNAVAILABLE and RESOURCE_EXHAUSTED, shared by every RPC this crate makes.

use std::future::Future;
use std::time::Duration;

use crate::error::ClientError;

/// How UNAVAILABLE and RESOURCE_EXHAUSTED are retried (by a [`TokenProvider`], an
/// [`IdTokenProvider`] and the one-shot calls such as [`sign_blob`]).
///
/// The wait before retry *n* (counting from 1) is a random duration between half and all of
/// `initial_backoff * 2^(n-1)`, capped at `max_backoff`, but never less than the broker's
/// `RetryInfo` delay. No retry starts that could not begin before `deadline` (measured from
/// the first attempt) has passed; then the last error is returned.
///
/// [`TokenProvider`]: crate::TokenProvider
/// [`IdTokenProvider`]: crate::IdTokenProvider
/// [`sign_blob`]: crate::sign_blob
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The backoff before the first retry. Default 200 ms.
    pub initial_backoff: Duration,
    /// The largest backoff. Default 5 s.
    pub max_backoff: Duration,
    /// Total time budget for one request (or one refresh), retries included. Default 30 s.
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
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
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

/// Settings of one request made with [`get_access_token`], [`exchange_token`], [`impersonate`],
/// [`generate_id_token`], [`sign_jwt`] or [`sign_blob`]. Start from [`CallOptions::default`]
/// and change fields.
///
/// [`get_access_token`]: crate::get_access_token
/// [`exchange_token`]: crate::exchange_token
/// [`impersonate`]: crate::impersonate
/// [`generate_id_token`]: crate::generate_id_token
/// [`sign_jwt`]: crate::sign_jwt
/// [`sign_blob`]: crate::sign_blob
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Deadline of each attempt (sent to the broker as `grpc-timeout`), never beyond the
    /// retry deadline. Default 10 s.
    pub call_timeout: Option<Duration>,
    /// Retries of UNAVAILABLE and RESOURCE_EXHAUSTED.
    pub retry: RetryPolicy,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            call_timeout: Some(Duration::from_secs(10)),
            retry: RetryPolicy::default(),
        }
    }
}

/// Runs `attempt` until it succeeds, fails with an error that is not retryable, or the
/// [`RetryPolicy`] gives up; then returns its last result.
///
/// `attempt` gets the deadline to set on its RPC: the call timeout, but no later than the
/// retry deadline. `rpc` names the RPC in debug logs.
pub(crate) async fn with_retries<T, F, Fut>(
    rpc: &'static str,
    options: &CallOptions,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut(Option<Duration>) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let policy = &options.retry;
    let deadline = tokio::time::Instant::now() + policy.deadline;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let timeout = options.call_timeout.map(|timeout| {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            timeout.min(left.max(Duration::from_millis(1)))
        });
        let error = match attempt(timeout).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !error.is_retryable() || attempts >= policy.max_attempts {
            return Err(error);
        }
        let retry_after = error.status().and_then(|status| status.retry_after);
        let delay = policy
            .backoff(attempts)
            .max(retry_after.unwrap_or_default());
        if tokio::time::Instant::now() + delay >= deadline {
            tracing::debug!(rpc, attempts, %error, "giving up: the retry deadline would pass");
            return Err(error);
        }
        tracing::debug!(rpc, attempts, ?delay, %error, "retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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

    fn fast() -> CallOptions {
        let mut options = CallOptions::default();
        options.retry.initial_backoff = Duration::from_millis(1);
        options.retry.max_backoff = Duration::from_millis(2);
        options.retry.max_attempts = 3;
        options
    }

    #[tokio::test]
    async fn retries_only_retryable_errors_up_to_max_attempts() {
        let attempts = AtomicU32::new(0);
        let result: Result<(), _> = with_retries("Test", &fast(), |timeout| {
            attempts.fetch_add(1, Ordering::SeqCst);
            assert_eq!(timeout, Some(Duration::from_secs(10)));
            async { Err(ClientError::from(tonic::Status::unavailable("later"))) }
        })
        .await;
        assert_eq!(
            result.err().and_then(|e| e.code()),
            Some(tonic::Code::Unavailable)
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 3);

        let attempts = AtomicU32::new(0);
        let result: Result<(), _> = with_retries("Test", &fast(), |_| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(ClientError::Protocol("bad".to_owned())) }
        })
        .await;
        assert!(matches!(result, Err(ClientError::Protocol(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        let attempts = AtomicU32::new(0);
        let result = with_retries("Test", &fast(), |_| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(ClientError::from(tonic::Status::resource_exhausted(
                        "slow down",
                    )))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.ok(), Some(1));
    }
}
