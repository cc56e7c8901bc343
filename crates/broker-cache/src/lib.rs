//! The token cache (step 6 of the request path): one token per [`TokenKey`], shared by every
//! authorized caller, fetched once however many callers miss at the same time, refreshed ahead
//! of expiry, bounded in size.
//!
//! # Semantics
//!
//! [`TokenCache::get`] looks the key up and, reading the time only from the [`Clock`] it was
//! built with:
//!
//! - **Hit.** A token with more than the safety margin left and at least the caller's
//!   `min_remaining` is served at once ([`Origin::Hit`]). If it is inside its (jittered)
//!   refresh window, the hit also starts one background refresh of the key, unless a fetch of
//!   that key is already in flight or the key is backing off after a failure.
//! - **Miss or synchronous refresh.** No entry, an expired one, or one below the safety margin
//!   or the caller's `min_remaining`: the caller waits for a fetch. At most one fetch per key
//!   is in flight; the first caller starts it ([`Origin::Fetched`]), later ones, and callers
//!   arriving during a background refresh, wait for it ([`Origin::Coalesced`]). A freshly
//!   fetched token is returned even if it has less than `min_remaining` left: the source cannot
//!   do better.
//! - **Errors are not cached.** Every waiter of a failed fetch gets the same error; the next
//!   call fetches again.
//! - **Last known good.** When a refresh fails *transiently* and the cached token has not
//!   expired, the caller gets that token marked [`Origin::Stale`], and for
//!   [`CacheConfig::failure_backoff`] (or Google's `retry_after`, if longer) the key is not
//!   fetched again: callers are served the stale token meanwhile. This lasts until the token
//!   really expires; after that, callers get the error.
//! - **Permanent failures** (not [`is_transient`](broker_core::SourceError::is_transient)) of
//!   any refresh, synchronous or background, **invalidate** the entry: Google said the
//!   credential or request is bad, so the broker stops handing out tokens minted under it, and
//!   the caller gets the error.
//!
//! Fetches run in their own Tokio task, so a caller that gives up (deadline, disconnect) does
//! not cancel the fetch others wait on; the fetched token is cached anyway. The deadline passed
//! to the source is that of the caller who started the fetch (or
//! [`CacheConfig::background_deadline`] for a background refresh).
//!
//! The moka cache is keyed by [`TokenKey`] (never the caller, never a token); each value holds
//! the `Arc<Token>` with its refresh time and failure backoff. moka evicts an entry when its
//! token really expires (by moka's own monotonic clock) or for
//! capacity; that is eviction only. Validity is always decided by our [`Clock`], so tests can
//! drive it with [`broker_core::ManualClock`].
//!
//! Logs carry the key's credential, principal and scopes and the token's fingerprint, never the
//! token.

mod config;
mod error;
mod metrics;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use broker_core::{Clock, Token, TokenKey, TokenRequest, TokenSource};
use moka::Expiry;
use moka::future::Cache;
use tokio::runtime::Handle;
use tokio::sync::watch;

pub use config::CacheConfig;
pub use error::CacheError;
pub use metrics::CacheMetrics;

use metrics::{Counters, bump};

/// Where a served token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Served from the cache without waiting.
    Hit,
    /// Fetched from the source by this call.
    Fetched,
    /// Fetched by a fetch another caller (or a background refresh) had started.
    Coalesced,
    /// The last known good token, served because its refresh failed transiently (or the key is
    /// backing off after such a failure). It is still valid, but has less left than the safety
    /// margin or than the caller asked for. The server should log this.
    Stale,
}

impl Origin {
    /// Whether the token came from the cache without an upstream call by this caller
    /// ([`Origin::Hit`] or [`Origin::Stale`]), for the audit event's "cache hit".
    pub fn is_cache_hit(self) -> bool {
        matches!(self, Self::Hit | Self::Stale)
    }
}

/// A token served by the cache.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// The token (shared with the cache and other callers).
    pub token: Arc<Token>,
    /// Where it came from.
    pub origin: Origin,
}

/// The token cache. Cheap to clone (clones share one cache). See the crate documentation for
/// its semantics.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

/// What a fetch resolves to, shared with every waiter.
type Outcome = Result<Arc<Token>, CacheError>;

struct Inner {
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    /// `None` when the cache is disabled.
    store: Option<Cache<TokenKey, Arc<Entry>>>,
    /// The fetch in flight for each key, if any.
    flights: Mutex<HashMap<TokenKey, Flight>>,
    next_flight: AtomicU64,
    /// Seeds the per-key jitter: fixed per key within a process, different across replicas.
    jitter_seed: RandomState,
    counters: Arc<Counters>,
}

/// A cached token and what the cache decided about it when it was stored.
#[derive(Debug)]
struct Entry {
    token: Arc<Token>,
    /// From when a hit starts a background refresh.
    refresh_at: SystemTime,
    /// The safety margin for this token (clamped to its lifetime).
    margin: Duration,
    /// Until when no refresh of this key should start, after a transient failure.
    backoff_until: Mutex<Option<SystemTime>>,
}

impl Entry {
    fn is_fresh_enough(&self, now: SystemTime, min_remaining: Duration) -> bool {
        let remaining = self.token.remaining(now);
        remaining > self.margin && remaining >= min_remaining
    }

    fn is_backing_off(&self, now: SystemTime) -> bool {
        lock(&self.backoff_until).is_some_and(|until| now < until)
    }

    fn back_off_until(&self, until: SystemTime) {
        *lock(&self.backoff_until) = Some(until);
    }
}

/// A fetch in flight: its id (so only it removes itself) and where its outcome will appear.
struct Flight {
    id: u64,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// Everything a fetch needs.
struct Job {
    source: Arc<dyn TokenSource>,
    request: TokenRequest,
    deadline: Option<Instant>,
    /// The entry the starter saw (the last known good token), if any.
    seen: Option<Arc<Entry>>,
    /// The starter's requirement, to decide whether an entry stored meanwhile will do.
    min_remaining: Duration,
}

/// Removes a flight from the map when its task ends, even by panic or cancellation.
struct FlightGuard {
    inner: Arc<Inner>,
    key: TokenKey,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = lock(&self.inner.flights);
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// moka evicts an entry when its token expires (by our clock at insertion, then by moka's).
struct ExpireWithToken {
    clock: Arc<dyn Clock>,
}

impl Expiry<TokenKey, Arc<Entry>> for ExpireWithToken {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.token.remaining(self.clock.now()))
    }

    fn expire_after_update(
        &self,
        _key: &TokenKey,
        entry: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.token.remaining(self.clock.now()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `window` lengthened or shortened by up to `percent` %, by an amount chosen by `hash`.
fn jitter(window: Duration, percent: u8, hash: u64) -> Duration {
    let percent = u128::from(percent.min(100));
    let span = 2 * percent * 100; // in basis points
    let basis_points = 10_000 - percent * 100 + u128::from(hash) % (span + 1);
    let nanos = window.as_nanos() * basis_points / 10_000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl TokenCache {
    /// A cache tuned by `config` that reads the time from `clock`.
    pub fn new(config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        let counters = Arc::new(Counters::default());
        let store = config.is_enabled().then(|| {
            let evictions = Arc::clone(&counters);
            Cache::builder()
                .name("token-cache")
                .max_capacity(config.max_capacity)
                .expire_after(ExpireWithToken {
                    clock: Arc::clone(&clock),
                })
                .eviction_listener(move |_key, _entry, cause| {
                    if cause.was_evicted() {
                        bump(&evictions.evictions);
                    }
                })
                .build()
        });
        Self {
            inner: Arc::new(Inner {
                config,
                clock,
                store,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                jitter_seed: RandomState::new(),
                counters,
            }),
        }
    }

    /// A token for `key`, from the cache or from `source` (asked for `request`, which must be
    /// what `key` was made from), with at least `min_remaining` validity left where the cache
    /// can arrange it. `deadline` is passed to the source if this call starts a fetch.
    ///
    /// Must run inside a Tokio runtime to fetch in the background; without one, fetches run
    /// in the caller's future and no background refresh happens.
    pub async fn get(
        &self,
        key: TokenKey,
        source: Arc<dyn TokenSource>,
        request: TokenRequest,
        min_remaining: Duration,
        deadline: Option<Instant>,
    ) -> Result<CachedToken, CacheError> {
        let inner = &self.inner;
        let Some(store) = &inner.store else {
            // Disabled: the same fetch path, without storing or coalescing.
            bump(&inner.counters.misses);
            let token = inner
                .fetch_upstream(&key, &*source, &request, deadline, None)
                .await?;
            return Ok(CachedToken {
                token,
                origin: Origin::Fetched,
            });
        };

        let now = inner.clock.now();
        let current = store
            .get(&key)
            .await
            .filter(|entry| !entry.token.is_expired(now));
        if let Some(entry) = &current {
            if entry.is_fresh_enough(now, min_remaining) {
                if now >= entry.refresh_at && !entry.is_backing_off(now) {
                    inner.refresh_in_background(&key, entry, &source, &request);
                }
                bump(&inner.counters.hits);
                tracing::trace!(
                    credential = %key.credential,
                    principal = %key.principal,
                    scopes = %key.scopes,
                    "token cache hit"
                );
                return Ok(CachedToken {
                    token: Arc::clone(&entry.token),
                    origin: Origin::Hit,
                });
            }
            if entry.is_backing_off(now) {
                bump(&inner.counters.misses);
                return Ok(inner.serve_stale(&key, entry));
            }
        }

        bump(&inner.counters.misses);
        let (mut outcome, job) = inner.join_or_start(&key, || Job {
            source,
            request,
            deadline,
            seen: current.clone(),
            min_remaining,
        });
        let origin = if let Some(job) = job {
            match Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(job)),
                Err(_) => job.await,
            }
            Origin::Fetched
        } else {
            bump(&inner.counters.coalesced);
            Origin::Coalesced
        };
        match wait(&mut outcome).await {
            Ok(token) => Ok(CachedToken { token, origin }),
            Err(error) => match current {
                Some(entry)
                    if error.is_transient() && !entry.token.is_expired(inner.clock.now()) =>
                {
                    Ok(inner.serve_stale(&key, &entry))
                }
                _ => Err(error),
            },
        }
    }

    /// Drops the cached token for `key`, if any. A fetch already in flight is not cancelled
    /// and stores its token when it completes.
    pub async fn invalidate(&self, key: &TokenKey) {
        if let Some(store) = &self.inner.store {
            store.invalidate(key).await;
        }
    }

    /// The counters so far.
    pub fn metrics(&self) -> CacheMetrics {
        self.inner.counters.snapshot()
    }

    /// About how many entries the cache holds (moka applies writes lazily, so this may lag).
    pub fn entry_count(&self) -> u64 {
        self.inner.store.as_ref().map_or(0, Cache::entry_count)
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("config", &self.inner.config)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

/// Waits for a fetch's outcome; a fetch that ended without one (panic, shutdown) is `Aborted`.
async fn wait(outcome: &mut watch::Receiver<Option<Outcome>>) -> Outcome {
    let result = match outcome.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    };
    result.unwrap_or(Err(CacheError::Aborted))
}

impl Inner {
    /// Joins the fetch in flight for `key`, or registers a new one and returns its future,
    /// which the caller must spawn or await (dropping it unpolled unregisters it).
    fn join_or_start(
        self: &Arc<Self>,
        key: &TokenKey,
        job: impl FnOnce() -> Job,
    ) -> (
        watch::Receiver<Option<Outcome>>,
        Option<impl Future<Output = ()> + Send + 'static>,
    ) {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(key) {
            return (flight.outcome.clone(), None);
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(None);
        flights.insert(
            key.clone(),
            Flight {
                id,
                outcome: receiver.clone(),
            },
        );
        drop(flights);

        let guard = FlightGuard {
            inner: Arc::clone(self),
            key: key.clone(),
            id,
        };
        let job = job();
        let task = async move {
            let outcome = guard.inner.refresh(&guard.key, &job).await;
            // Unregister before publishing, so a waiter that wakes finds the key idle.
            drop(guard);
            sender.send_replace(Some(outcome));
        };
        (receiver, Some(task))
    }

    /// Starts a background refresh of `key` unless a fetch of it is in flight.
    fn refresh_in_background(
        self: &Arc<Self>,
        key: &TokenKey,
        entry: &Arc<Entry>,
        source: &Arc<dyn TokenSource>,
        request: &TokenRequest,
    ) {
        let Ok(runtime) = Handle::try_current() else {
            return;
        };
        let (_, job) = self.join_or_start(key, || Job {
            source: Arc::clone(source),
            request: request.clone(),
            deadline: Instant::now().checked_add(self.config.background_deadline),
            seen: Some(Arc::clone(entry)),
            min_remaining: Duration::ZERO,
        });
        if let Some(job) = job {
            bump(&self.counters.background_refreshes);
            tracing::debug!(
                credential = %key.credential,
                principal = %key.principal,
                scopes = %key.scopes,
                fingerprint = %entry.token.secret.fingerprint(),
                "refreshing token in the background"
            );
            drop(runtime.spawn(job));
        }
    }

    /// The body of a fetch: an entry stored since the starter looked may already do;
    /// otherwise ask the source.
    async fn refresh(&self, key: &TokenKey, job: &Job) -> Outcome {
        if let Some(store) = &self.store
            && let Some(current) = store.get(key).await
        {
            let newer = job
                .seen
                .as_ref()
                .is_none_or(|seen| !Arc::ptr_eq(seen, &current));
            if newer && current.is_fresh_enough(self.clock.now(), job.min_remaining) {
                return Ok(Arc::clone(&current.token));
            }
        }
        self.fetch_upstream(
            key,
            &*job.source,
            &job.request,
            job.deadline,
            job.seen.as_ref(),
        )
        .await
    }

    /// One call to the source; stores the token, or records the failure.
    async fn fetch_upstream(
        &self,
        key: &TokenKey,
        source: &dyn TokenSource,
        request: &TokenRequest,
        deadline: Option<Instant>,
        seen: Option<&Arc<Entry>>,
    ) -> Outcome {
        bump(&self.counters.upstream_fetches);
        let result = source.fetch(request, deadline).await;
        let now = self.clock.now();
        match result {
            Ok(token) => {
                let token = Arc::new(token);
                tracing::debug!(
                    credential = %key.credential,
                    principal = %key.principal,
                    scopes = %key.scopes,
                    fingerprint = %token.secret.fingerprint(),
                    expires_in_s = token.remaining(now).as_secs(),
                    "fetched a token"
                );
                if let Some(store) = &self.store {
                    let entry = self.entry_for(key, Arc::clone(&token), now);
                    store.insert(key.clone(), Arc::new(entry)).await;
                }
                Ok(token)
            }
            Err(error) => {
                bump(&self.counters.refresh_failures);
                let error = CacheError::from(error);
                if error.is_transient() {
                    let wait = error
                        .retry_after()
                        .map_or(self.config.failure_backoff, |after| {
                            after.max(self.config.failure_backoff)
                        });
                    if let Some(seen) = seen {
                        seen.back_off_until(now.checked_add(wait).unwrap_or(now));
                    }
                    tracing::warn!(
                        credential = %key.credential,
                        principal = %key.principal,
                        scopes = %key.scopes,
                        %error,
                        backoff_s = wait.as_secs(),
                        "token fetch failed transiently"
                    );
                } else {
                    if let Some(store) = &self.store {
                        store.invalidate(key).await;
                    }
                    tracing::warn!(
                        credential = %key.credential,
                        principal = %key.principal,
                        scopes = %key.scopes,
                        %error,
                        "token fetch failed permanently; cached token dropped"
                    );
                }
                Err(error)
            }
        }
    }

    /// The entry for a token fetched at `now`: refresh window (jittered) and safety margin,
    /// clamped to half and a quarter of the token's lifetime.
    fn entry_for(&self, key: &TokenKey, token: Arc<Token>, now: SystemTime) -> Entry {
        let lifetime = token.remaining(now);
        let window = jitter(
            self.config.refresh_window,
            self.config.refresh_jitter_percent,
            self.jitter_seed.hash_one(key),
        )
        .min(lifetime / 2);
        let margin = self.config.safety_margin.min(lifetime / 4);
        Entry {
            refresh_at: token.expires_at.checked_sub(window).unwrap_or(now),
            margin,
            token,
            backoff_until: Mutex::new(None),
        }
    }

    fn serve_stale(&self, key: &TokenKey, entry: &Entry) -> CachedToken {
        bump(&self.counters.stale_serves);
        tracing::info!(
            credential = %key.credential,
            principal = %key.principal,
            scopes = %key.scopes,
            fingerprint = %entry.token.secret.fingerprint(),
            remaining_s = entry.token.remaining(self.clock.now()).as_secs(),
            "serving last known good token"
        );
        CachedToken {
            token: Arc::clone(&entry.token),
            origin: Origin::Stale,
        }
    }
}
