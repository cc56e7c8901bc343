//! The sidecar's own small token cache, in front of the broker.
//!
//! - One entry per [`TokenKey`]: (account, scopes) for access tokens, (account, audience) for
//!   ID tokens.
//! - **Coalescing:** at most one fetch per key is in flight; every request that needs it waits
//!   for that one. A fetch runs in its own task, so a client that gives up does not cancel it
//!   for the others, and its token is cached anyway.
//! - **Never stale:** a token is served only while it has more than `min_remaining` (whole
//!   seconds, always more than 225 s) left; a fetched token with less is not served either.
//! - **Refresh ahead:** a hit on a token with less than `refresh_ahead` left (or past half of
//!   the time it may be served, for short-lived tokens) returns it and starts one background
//!   refresh.
//! - **Fail fast:** a failed fetch is remembered for `failure_backoff` (or the broker's longer
//!   `RetryInfo`): requests for that key meanwhile get the same answer at once, without a
//!   broker call. After a transient failure (the broker unreachable or overloaded) a token
//!   that is still servable keeps being served; a refusal (the broker's policy, an invalid
//!   request, a misconfigured credential) withdraws it: the broker has the last word.
//! - **Bounded:** at most `max_entries` keys; the least recently used idle entry goes first,
//!   except the pinned one (the default account's token, what readiness is about). When the
//!   cache is full and nothing can be evicted, or `max_fetches` broker calls are in flight
//!   already, a request that needs a new fetch is answered [`Reason::Busy`] (a 503) at once.
//! - **Robust:** a fetch whose task died (a panic) counts as no fetch in flight.
//!
//! Time comes from a [`Clock`], so tests can drive it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use broker_core::{Clock, ScopeSet, Secret};
use tokio::sync::{Semaphore, watch};

/// The longest a broker's `RetryInfo` makes the cache hold on to a failure.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The `Retry-After` of a [`Reason::Busy`] answer.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a cached token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TokenKey {
    /// An access token of an account with these scopes.
    Access {
        /// The account's index in the configuration.
        account: usize,
        /// The scopes, normalized.
        scopes: ScopeSet,
    },
    /// An ID token of an account for an audience.
    Identity {
        /// The account's index in the configuration.
        account: usize,
        /// The `aud` claim.
        audience: String,
    },
}

impl TokenKey {
    /// The account's index in the configuration.
    pub(crate) fn account(&self) -> usize {
        match self {
            Self::Access { account, .. } | Self::Identity { account, .. } => *account,
        }
    }
}

/// A token from the broker.
#[derive(Debug)]
pub(crate) struct FetchedToken {
    /// The token. Never logged; its fingerprint may be.
    pub(crate) secret: Secret,
    /// When it expires.
    pub(crate) expire_time: SystemTime,
}

impl FetchedToken {
    /// Whole seconds left at `now` (rounded down): what `expires_in` says.
    pub(crate) fn expires_in(&self, now: SystemTime) -> u64 {
        self.expire_time
            .duration_since(now)
            .map_or(0, |left| left.as_secs())
    }
}

/// Why the broker gave no token, classified for the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    /// The broker could not be reached or asked to retry (UNAVAILABLE, RESOURCE_EXHAUSTED,
    /// DEADLINE_EXCEEDED, a refused certificate, a timeout): 503.
    #[error("the token broker is unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The broker's `RetryInfo` delay, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The broker's policy refused (PERMISSION_DENIED): 403.
    #[error("the token broker refused: {0}")]
    Denied(String),
    /// The broker found the request invalid (INVALID_ARGUMENT): 400.
    #[error("the token broker refused the request as invalid: {0}")]
    Invalid(String),
    /// Anything else (a misconfigured credential, a malformed answer): 500.
    #[error("the token broker failed: {0}")]
    Failed(String),
}

/// Why a request got no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Fetching failed.
    Fetch(FetchError),
    /// The broker's token has too little left to be served (`expires_in` whole seconds).
    TooShort(u64),
    /// The cache is full of entries being fetched, or too many broker calls are in flight.
    Busy,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fetch(error) => error.fmt(f),
            Self::TooShort(left) => write!(
                f,
                "the token broker's token has only {left}s left, and this server never serves a token with that little left: Google's clients would treat it as stale and fetch it again at once"
            ),
            Self::Busy => f.write_str(
                "this metadata server is busy: too many tokens are being fetched from the token broker",
            ),
        }
    }
}

/// No token for a request: why, and when asking again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unserved {
    /// Why.
    pub(crate) reason: Reason,
    /// How long the failure is remembered; the `Retry-After` of a 503.
    pub(crate) retry_after: Duration,
}

/// Gets tokens from the broker; never caches.
pub(crate) trait Fetch: Send + Sync + 'static {
    /// One attempt to get the token of `key`, bounded in time.
    fn fetch(
        &self,
        key: &TokenKey,
    ) -> impl Future<Output = Result<FetchedToken, FetchError>> + Send;
}

/// The cache's settings (see [`crate::config::CacheSettings`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Refresh in the background once less than this is left.
    pub(crate) refresh_ahead: Duration,
    /// Serve only with more than this left (whole seconds).
    pub(crate) min_remaining: Duration,
    /// How long a failure is remembered.
    pub(crate) failure_backoff: Duration,
    /// Entries at most.
    pub(crate) max_entries: usize,
    /// Broker calls in flight at most.
    pub(crate) max_fetches: usize,
}

type Outcome = Result<Arc<FetchedToken>, Unserved>;

#[derive(Debug)]
struct Remembered {
    reason: Reason,
    until: SystemTime,
}

#[derive(Debug, Default)]
struct Entry {
    token: Option<Arc<FetchedToken>>,
    /// When the token is due for a background refresh.
    refresh_at: Option<SystemTime>,
    inflight: Option<watch::Receiver<Option<Outcome>>>,
    failure: Option<Remembered>,
    /// The tick of its last use, for eviction.
    last_used: u64,
}

impl Entry {
    /// The fetch in flight, if any; a fetch whose task died without an answer (its sender
    /// dropped) counts as none.
    fn inflight(&self) -> Option<&watch::Receiver<Option<Outcome>>> {
        self.inflight
            .as_ref()
            .filter(|inflight| inflight.has_changed().is_ok())
    }
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<TokenKey, Entry>,
    tick: u64,
    /// The key never evicted.
    pinned: Option<TokenKey>,
}

#[derive(Debug)]
struct Inner<F> {
    fetcher: F,
    clock: Arc<dyn Clock>,
    policy: Policy,
    entries: Mutex<Entries>,
    /// Permits for broker calls in flight.
    fetches: Arc<Semaphore>,
}

/// The token cache; cloning is cheap and clones share it.
#[derive(Debug)]
pub(crate) struct Cache<F> {
    inner: Arc<Inner<F>>,
}

impl<F> Clone for Cache<F> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The answer when no fetch can be started now.
fn busy() -> Unserved {
    Unserved {
        reason: Reason::Busy,
        retry_after: BUSY_RETRY_AFTER,
    }
}

/// What waiting for a fetch ends with when its task died without an answer.
fn abandoned() -> Unserved {
    Unserved {
        reason: Reason::Fetch(FetchError::Failed(
            "the fetch ended without an answer".to_owned(),
        )),
        retry_after: Duration::from_secs(1),
    }
}

impl<F: Fetch> Cache<F> {
    /// An empty cache that fetches with `fetcher`.
    pub(crate) fn new(fetcher: F, clock: Arc<dyn Clock>, policy: Policy) -> Self {
        Self {
            inner: Arc::new(Inner {
                fetcher,
                clock,
                policy,
                entries: Mutex::new(Entries::default()),
                fetches: Arc::new(Semaphore::new(policy.max_fetches.max(1))),
            }),
        }
    }

    /// Never evicts the entry of `key` (the default account's token: what readiness is
    /// about); it is created now, so it always has its place.
    pub(crate) fn pin(&self, key: &TokenKey) {
        let mut entries = self.inner.lock();
        entries.pinned = Some(key.clone());
        entries.tick += 1;
        let tick = entries.tick;
        entries.map.entry(key.clone()).or_default().last_used = tick;
    }

    /// The current time of the cache's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// A token for `key` with more than `min_remaining` left: cached, or fetched (joining the
    /// fetch in flight, if any). A remembered failure is answered at once.
    pub(crate) async fn get(&self, key: &TokenKey) -> Result<Arc<FetchedToken>, Unserved> {
        let waiting = {
            let now = self.inner.clock.now();
            let mut entries = self.inner.lock();
            let entry = self.inner.entry(&mut entries, key).ok_or_else(busy)?;
            if let Some(token) = &entry.token
                && self.inner.servable(token, now)
            {
                let token = Arc::clone(token);
                let due = entry.refresh_at.is_some_and(|at| now >= at);
                let backing_off = entry.failure.as_ref().is_some_and(|f| now < f.until);
                if due && entry.inflight().is_none() && !backing_off {
                    // No permit for a background refresh: the next hit tries again.
                    drop(self.inner.start_fetch(key.clone(), entry));
                }
                return Ok(token);
            }
            let started = match (entry.inflight(), &entry.failure) {
                (Some(inflight), _) => Ok(inflight.clone()),
                (None, Some(failure)) if now < failure.until => {
                    return Err(Unserved {
                        reason: failure.reason.clone(),
                        retry_after: failure.until.duration_since(now).unwrap_or_default(),
                    });
                }
                (None, _) => self.inner.start_fetch(key.clone(), entry),
            };
            self.inner.forget_if_empty(&mut entries, key, started)?
        };
        wait(waiting).await
    }

    /// A new token for `key` now, whatever is cached or remembered (joining the fetch in
    /// flight, if any): what keeps the default account's token warm.
    pub(crate) async fn refresh(&self, key: &TokenKey) -> Result<Arc<FetchedToken>, Unserved> {
        let waiting = {
            let mut entries = self.inner.lock();
            let entry = self.inner.entry(&mut entries, key).ok_or_else(busy)?;
            let started = match entry.inflight() {
                Some(inflight) => Ok(inflight.clone()),
                None => self.inner.start_fetch(key.clone(), entry),
            };
            self.inner.forget_if_empty(&mut entries, key, started)?
        };
        wait(waiting).await
    }

    /// How long until the token of `key` is due for refresh (zero if it is due); `None` if
    /// no token is cached.
    pub(crate) fn refresh_in(&self, key: &TokenKey) -> Option<Duration> {
        let now = self.inner.clock.now();
        let entries = self.inner.lock();
        let at = entries.map.get(key)?.refresh_at?;
        Some(at.duration_since(now).unwrap_or_default())
    }

    /// `Ok` if a token of `key` could be served now; otherwise why not.
    pub(crate) fn servable(&self, key: &TokenKey) -> Result<(), String> {
        let now = self.inner.clock.now();
        let entries = self.inner.lock();
        let entry = entries.map.get(key);
        match entry.and_then(|entry| entry.token.as_ref()) {
            Some(token) if self.inner.servable(token, now) => Ok(()),
            _ => Err(match entry.and_then(|entry| entry.failure.as_ref()) {
                Some(failure) => failure.reason.to_string(),
                None if entry.is_some_and(|entry| entry.inflight().is_some()) => {
                    "the first token is being fetched".to_owned()
                }
                None => "no token has been fetched yet".to_owned(),
            }),
        }
    }
}

/// Waits for a fetch's outcome.
async fn wait(
    mut waiting: watch::Receiver<Option<Outcome>>,
) -> Result<Arc<FetchedToken>, Unserved> {
    match waiting.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(abandoned())),
        Err(_) => Err(abandoned()),
    }
}

impl<F: Fetch> Inner<F> {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `token` may be served at `now`.
    fn servable(&self, token: &FetchedToken, now: SystemTime) -> bool {
        token.expires_in(now) > self.policy.min_remaining.as_secs()
    }

    /// The entry of `key`, marked as used; created if there is none, after evicting the least
    /// recently used idle entries (never the pinned one) while the cache is full. `None` if
    /// the cache is full and nothing can be evicted.
    fn entry<'a>(&self, entries: &'a mut Entries, key: &TokenKey) -> Option<&'a mut Entry> {
        entries.tick += 1;
        let tick = entries.tick;
        if !entries.map.contains_key(key) {
            while entries.map.len() >= self.policy.max_entries {
                let pinned = entries.pinned.as_ref();
                let oldest = entries
                    .map
                    .iter()
                    .filter(|(key, entry)| entry.inflight().is_none() && Some(*key) != pinned)
                    .min_by_key(|(_, entry)| entry.last_used)
                    .map(|(key, _)| key.clone())?;
                entries.map.remove(&oldest);
            }
        }
        let entry = entries.map.entry(key.clone()).or_default();
        entry.last_used = tick;
        Some(entry)
    }

    /// What a request waits for, once `started`; when no fetch could be started, the entry of
    /// `key` is dropped again if it holds nothing (so that refused requests leave no trace).
    fn forget_if_empty(
        &self,
        entries: &mut Entries,
        key: &TokenKey,
        started: Result<watch::Receiver<Option<Outcome>>, Unserved>,
    ) -> Result<watch::Receiver<Option<Outcome>>, Unserved> {
        if started.is_err()
            && entries.pinned.as_ref() != Some(key)
            && entries.map.get(key).is_some_and(|entry| {
                entry.token.is_none() && entry.failure.is_none() && entry.inflight().is_none()
            })
        {
            entries.map.remove(key);
        }
        started
    }

    /// Starts a fetch of `key` in its own task; returns what its waiters watch, or
    /// [`Reason::Busy`] if `max_fetches` broker calls are in flight already.
    fn start_fetch(
        self: &Arc<Self>,
        key: TokenKey,
        entry: &mut Entry,
    ) -> Result<watch::Receiver<Option<Outcome>>, Unserved> {
        let permit = Arc::clone(&self.fetches)
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let (sender, receiver) = watch::channel(None);
        entry.inflight = Some(receiver.clone());
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let fetched_at = inner.clock.now();
            let result = inner.fetcher.fetch(&key).await;
            drop(permit);
            let outcome = inner.store(&key, fetched_at, result);
            sender.send_replace(Some(outcome));
        });
        Ok(receiver)
    }

    /// Records a fetch's result in the entry of `key`.
    fn store(
        &self,
        key: &TokenKey,
        fetched_at: SystemTime,
        result: Result<FetchedToken, FetchError>,
    ) -> Outcome {
        let now = self.clock.now();
        let mut entries = self.lock();
        // An entry being fetched is never evicted; should it be gone all the same, the
        // outcome still reaches its waiters, without being cached.
        let mut scratch = Entry::default();
        let entry = match entries.map.get_mut(key) {
            Some(entry) => entry,
            None => &mut scratch,
        };
        entry.inflight = None;
        let (reason, backoff) = match result {
            Ok(token) => {
                let token = Arc::new(token);
                if self.servable(&token, now) {
                    entry.refresh_at = Some(self.refresh_at(&token, fetched_at));
                    entry.token = Some(Arc::clone(&token));
                    entry.failure = None;
                    return Ok(token);
                }
                // An unservable token replaces only one that expires sooner.
                if entry
                    .token
                    .as_ref()
                    .is_none_or(|old| token.expire_time > old.expire_time)
                {
                    entry.refresh_at = Some(self.refresh_at(&token, fetched_at));
                    entry.token = Some(Arc::clone(&token));
                }
                let left = token.expires_in(now);
                tracing::warn!(
                    fingerprint = token.secret.fingerprint(),
                    expires_in = left,
                    min_remaining = self.policy.min_remaining.as_secs(),
                    "the broker's token has too little left to be served"
                );
                (Reason::TooShort(left), self.policy.failure_backoff)
            }
            Err(error) => {
                let backoff = match &error {
                    FetchError::Unavailable { retry_after, .. } => retry_after
                        .unwrap_or_default()
                        .min(MAX_RETRY_AFTER)
                        .max(self.policy.failure_backoff),
                    // The broker refused for good (its policy, say): the token it gave
                    // earlier is not handed out any more.
                    FetchError::Denied(_) | FetchError::Invalid(_) | FetchError::Failed(_) => {
                        entry.token = None;
                        entry.refresh_at = None;
                        self.policy.failure_backoff
                    }
                };
                (Reason::Fetch(error), backoff)
            }
        };
        entry.failure = Some(Remembered {
            reason: reason.clone(),
            until: now + backoff,
        });
        Err(Unserved {
            reason,
            retry_after: backoff,
        })
    }

    /// When a token fetched at `fetched_at` is due for refresh: `refresh_ahead` before it
    /// expires, but not before half of the time it may be served has passed.
    fn refresh_at(&self, token: &FetchedToken, fetched_at: SystemTime) -> SystemTime {
        let ahead = token
            .expire_time
            .checked_sub(self.policy.refresh_ahead)
            .unwrap_or(fetched_at);
        let servable_for = token
            .expire_time
            .checked_sub(self.policy.min_remaining)
            .and_then(|until| until.duration_since(fetched_at).ok())
            .unwrap_or_default();
        ahead.max(fetched_at + servable_for / 2)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use broker_core::ManualClock;
    use tokio::sync::Semaphore;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    /// The permits of a fake's gate: holding them all blocks its fetches.
    const PERMITS: u32 = 1 << 20;

    /// Hands out `token-<n>` living `lifetime` (by the shared clock), or `failure`; each fetch
    /// first takes a permit from `gate`.
    #[derive(Debug)]
    struct Fake {
        clock: ManualClock,
        calls: AtomicUsize,
        lifetime: Mutex<Duration>,
        failure: Mutex<Option<FetchError>>,
        gate: Arc<Semaphore>,
    }

    impl Fetch for Arc<Fake> {
        async fn fetch(&self, _key: &TokenKey) -> Result<FetchedToken, FetchError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let permit = self.gate.acquire().await;
            drop(permit);
            if let Some(error) = self.failure.lock().expect("lock").clone() {
                return Err(error);
            }
            Ok(FetchedToken {
                secret: Secret::new(format!("token-{n}")),
                expire_time: self.clock.now() + *self.lifetime.lock().expect("lock"),
            })
        }
    }

    fn policy() -> Policy {
        Policy {
            refresh_ahead: Duration::from_secs(300),
            min_remaining: Duration::from_secs(240),
            failure_backoff: Duration::from_secs(1),
            max_entries: 4,
            max_fetches: 64,
        }
    }

    fn setup(policy: Policy) -> (Cache<Arc<Fake>>, Arc<Fake>, ManualClock) {
        let clock = ManualClock::default();
        let fake = Arc::new(Fake {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
            lifetime: Mutex::new(HOUR),
            failure: Mutex::new(None),
            gate: Arc::new(Semaphore::new(PERMITS as usize)),
        });
        let cache = Cache::new(Arc::clone(&fake), Arc::new(clock.clone()), policy);
        (cache, fake, clock)
    }

    fn key(n: usize) -> TokenKey {
        TokenKey::Access {
            account: n,
            scopes: ScopeSet::parse(["https://www.googleapis.com/auth/cloud-platform"])
                .expect("scope"),
        }
    }

    fn secret(result: &Result<Arc<FetchedToken>, Unserved>) -> &str {
        match result {
            Ok(token) => token.secret.expose(),
            Err(unserved) => panic!("no token: {unserved:?}"),
        }
    }

    /// Lets spawned fetches run to completion.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let (cache, fake, _clock) = setup(policy());
        let held = fake.gate.acquire_many(PERMITS).await.expect("permits");
        let waiters: Vec<_> = (0..200)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&key(0)).await })
            })
            .collect();
        settle().await;
        drop(held);
        for waiter in waiters {
            let result = waiter.await.expect("task");
            assert_eq!(secret(&result), "token-1");
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1", "then a hit");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_token_is_never_served_with_min_remaining_or_less_left() {
        let (cache, fake, clock) = setup(policy());
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1");
        let token = cache.get(&key(0)).await.expect("hit");
        assert_eq!(
            token.expires_in(clock.now()),
            3600,
            "the real remaining lifetime"
        );

        // 241 s left: still served (and refreshed in the background: it is past refresh_ahead).
        clock.advance(HOUR - Duration::from_secs(241));
        let served = cache.get(&key(0)).await.expect("served");
        assert_eq!(served.secret.expose(), "token-1");
        assert_eq!(served.expires_in(clock.now()), 241);
        settle().await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        assert_eq!(secret(&cache.get(&key(0)).await), "token-2");

        // 240 s left: not served; the request waits for a new token.
        clock.advance(HOUR - Duration::from_secs(240));
        assert!(cache.servable(&key(0)).is_err());
        assert_eq!(secret(&cache.get(&key(0)).await), "token-3");

        // A broker that only has short tokens: never served, remembered for the backoff.
        *fake.lifetime.lock().expect("lock") = Duration::from_secs(240);
        clock.advance(HOUR);
        let refused = cache.get(&key(0)).await.expect_err("too short");
        assert_eq!(refused.reason, Reason::TooShort(240));
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(refused.reason.to_string().contains("only 240s left"));
        assert_eq!(
            cache.get(&key(0)).await.expect_err("remembered").reason,
            Reason::TooShort(240)
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
        *fake.lifetime.lock().expect("lock") = Duration::from_secs(241);
        clock.advance(Duration::from_secs(1));
        let token = cache.get(&key(0)).await.expect("241 s is enough");
        assert_eq!(token.expires_in(clock.now()), 241);
        clock.advance(Duration::from_millis(1));
        assert!(cache.servable(&key(0)).is_err(), "240.999 s left is not");
    }

    #[tokio::test]
    async fn hits_refresh_ahead_once_in_the_background() {
        let (cache, fake, clock) = setup(policy());
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1");
        assert_eq!(
            cache.refresh_in(&key(0)),
            Some(HOUR - Duration::from_secs(300))
        );
        clock.advance(HOUR - Duration::from_secs(299));
        assert_eq!(cache.refresh_in(&key(0)), Some(Duration::ZERO));
        let held = fake.gate.acquire_many(PERMITS).await.expect("permits");
        for _ in 0..50 {
            assert_eq!(
                secret(&cache.get(&key(0)).await),
                "token-1",
                "served meanwhile"
            );
        }
        drop(held);
        settle().await;
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            2,
            "one background refresh"
        );
        assert_eq!(secret(&cache.get(&key(0)).await), "token-2");

        // A short-lived token is refreshed half-way through the time it may be served.
        *fake.lifetime.lock().expect("lock") = Duration::from_secs(320);
        let token = cache.refresh(&key(0)).await.expect("refreshed");
        assert_eq!(token.secret.expose(), "token-3");
        assert_eq!(cache.refresh_in(&key(0)), Some(Duration::from_secs(40)));
    }

    #[tokio::test]
    async fn failures_are_remembered_briefly_and_only_transient_ones_leave_a_token_served() {
        let (cache, fake, clock) = setup(policy());
        let unavailable = FetchError::Unavailable {
            message: "connection refused".to_owned(),
            retry_after: None,
        };
        *fake.failure.lock().expect("lock") = Some(unavailable.clone());
        let refused = cache.get(&key(0)).await.expect_err("down");
        assert_eq!(refused.reason, Reason::Fetch(unavailable.clone()));
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_millis(400));
        let remembered = cache.get(&key(0)).await.expect_err("remembered");
        assert_eq!(remembered.retry_after, Duration::from_millis(600));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "no second call");
        assert_eq!(
            cache.servable(&key(0)),
            Err("the token broker is unavailable: connection refused".to_owned())
        );

        // The broker's longer RetryInfo wins, capped at a minute.
        clock.advance(Duration::from_secs(1));
        *fake.failure.lock().expect("lock") = Some(FetchError::Unavailable {
            message: "overloaded".to_owned(),
            retry_after: Some(Duration::from_secs(600)),
        });
        let refused = cache.get(&key(0)).await.expect_err("overloaded");
        assert_eq!(refused.retry_after, Duration::from_secs(60));

        // Back: fetched again after the backoff.
        clock.advance(Duration::from_secs(60));
        *fake.failure.lock().expect("lock") = None;
        assert_eq!(secret(&cache.get(&key(0)).await), "token-3");

        // A transient failure of a background refresh leaves the token served, and is not
        // retried within the backoff...
        *fake.failure.lock().expect("lock") = Some(unavailable);
        clock.advance(HOUR - Duration::from_secs(299));
        assert_eq!(secret(&cache.get(&key(0)).await), "token-3");
        settle().await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4, "the refresh failed");
        assert_eq!(secret(&cache.get(&key(0)).await), "token-3");
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            4,
            "not retried within the backoff"
        );
        assert!(cache.servable(&key(0)).is_ok(), "still ready");

        // ... but the broker's refusal withdraws it: its policy has the last word.
        let denied = FetchError::Denied("PERMISSION_DENIED".to_owned());
        *fake.failure.lock().expect("lock") = Some(denied.clone());
        clock.advance(Duration::from_secs(1));
        assert_eq!(secret(&cache.get(&key(0)).await), "token-3");
        settle().await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 5);
        let refused = cache.get(&key(0)).await.expect_err("withdrawn");
        assert_eq!(refused.reason, Reason::Fetch(denied.clone()));
        assert!(cache.servable(&key(0)).is_err());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 5, "remembered");
        assert!(
            cache
                .refresh(&key(0))
                .await
                .is_err_and(|unserved| unserved.reason == Reason::Fetch(denied))
        );
    }

    #[tokio::test]
    async fn the_least_recently_used_entry_goes_first() {
        let (cache, fake, _clock) = setup(policy());
        for n in 0..4 {
            cache.get(&key(n)).await.expect("token");
        }
        cache.get(&key(0)).await.expect("hit");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
        cache.get(&key(4)).await.expect("token");
        assert_eq!(cache.refresh_in(&key(1)), None, "evicted");
        for n in [0, 2, 3, 4] {
            assert!(cache.refresh_in(&key(n)).is_some(), "kept {n}");
        }
        cache.get(&key(1)).await.expect("fetched again");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
    }

    fn audience(n: usize) -> TokenKey {
        TokenKey::Identity {
            account: 0,
            audience: format!("https://made-up-{n}.example"),
        }
    }

    #[tokio::test]
    async fn the_pinned_entry_is_never_evicted() {
        let (cache, fake, _clock) = setup(policy());
        cache.pin(&key(0));
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1");
        for n in 0..20 {
            cache.get(&audience(n)).await.expect("token");
        }
        assert!(cache.servable(&key(0)).is_ok(), "still ready");
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1", "still cached");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 21);
        assert!(cache.inner.lock().map.len() <= 4);
    }

    /// Never answers.
    #[derive(Debug)]
    struct Hanging;

    impl Fetch for Hanging {
        async fn fetch(&self, _key: &TokenKey) -> Result<FetchedToken, FetchError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_hanging_broker_fills_the_cache_no_further_than_max_entries() {
        let cache = Cache::new(
            Hanging,
            Arc::new(ManualClock::default()),
            Policy {
                max_fetches: 1000,
                ..policy()
            },
        );
        let waiters: Vec<_> = (0..100)
            .map(|n| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&audience(n)).await })
            })
            .collect();
        settle().await;
        assert_eq!(cache.inner.lock().map.len(), 4, "max_entries");
        let busy = cache.get(&audience(1000)).await.expect_err("full");
        assert_eq!(busy.reason, Reason::Busy);
        assert_eq!(busy.retry_after, BUSY_RETRY_AFTER);
        let mut refused = 0;
        for waiter in waiters {
            if waiter.is_finished() {
                let result = waiter.await.expect("task");
                assert_eq!(result.expect_err("busy").reason, Reason::Busy);
                refused += 1;
            } else {
                waiter.abort();
            }
        }
        assert_eq!(refused, 96, "all but the 4 in flight refused at once");
        assert_eq!(cache.inner.lock().map.len(), 4);
    }

    #[tokio::test]
    async fn broker_calls_in_flight_are_capped() {
        let cache = Cache::new(
            Hanging,
            Arc::new(ManualClock::default()),
            Policy {
                max_fetches: 2,
                ..policy()
            },
        );
        let first: Vec<_> = (0..2)
            .map(|n| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&audience(n)).await })
            })
            .collect();
        settle().await;
        let busy = cache.get(&audience(2)).await.expect_err("no permit");
        assert_eq!(busy.reason, Reason::Busy);
        assert_eq!(
            cache.inner.lock().map.len(),
            2,
            "the refused key left no entry"
        );
        for waiter in first {
            waiter.abort();
        }
    }

    /// Panics on its first call, then answers like [`Fake`].
    #[derive(Debug)]
    struct PanicsOnce {
        fake: Arc<Fake>,
        panicked: std::sync::atomic::AtomicBool,
    }

    impl Fetch for Arc<PanicsOnce> {
        async fn fetch(&self, key: &TokenKey) -> Result<FetchedToken, FetchError> {
            assert!(
                self.panicked.swap(true, Ordering::SeqCst),
                "the first fetch panics"
            );
            self.fake.fetch(key).await
        }
    }

    #[tokio::test]
    async fn a_fetch_that_panicked_is_not_in_flight_forever() {
        let (_, fake, clock) = setup(policy());
        let fetcher = Arc::new(PanicsOnce {
            fake,
            panicked: std::sync::atomic::AtomicBool::new(false),
        });
        let cache = Cache::new(fetcher, Arc::new(clock), policy());
        let died = cache.get(&key(0)).await.expect_err("the task died");
        assert_eq!(died, abandoned());
        assert_eq!(
            cache.servable(&key(0)),
            Err("no token has been fetched yet".to_owned())
        );
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1", "fetched anew");
    }

    #[tokio::test]
    async fn an_unservable_refresh_does_not_replace_a_servable_token() {
        let (cache, fake, clock) = setup(policy());
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1");
        // Due for refresh, 290 s left; the broker now only has 240 s tokens.
        clock.advance(HOUR - Duration::from_secs(290));
        *fake.lifetime.lock().expect("lock") = Duration::from_secs(240);
        let refused = cache.refresh(&key(0)).await.expect_err("too short");
        assert_eq!(refused.reason, Reason::TooShort(240));
        assert!(cache.servable(&key(0)).is_ok(), "the older token is kept");
        assert_eq!(secret(&cache.get(&key(0)).await), "token-1");
    }
}
