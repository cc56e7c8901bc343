//! The token cache (step 5 of the request path): one token per [`TokenKey`], shared by every
//! authorized caller, fetched once however many callers miss at the same time, refreshed in
//! the background before any caller has to wait, bounded in size.
//!
//! # Semantics
//!
//! [`TokenCache::get`] looks the key up and decides, reading the time only from the [`Clock`]
//! it was built with.
//!
//! ## Requirements
//!
//! A caller's **requirement** `R` is its `min_remaining` raised to
//! [`CacheConfig::safety_margin`], **capped at half the cached token's lifetime** (`expires_at`
//! minus the time it was fetched, stored in the entry). The cap is the one exception to
//! "at least `min_remaining` left": a requirement the source can never satisfy (30 minutes
//! on 10-minute tokens) means "as much as this source can give" rather than an upstream call
//! on every request.
//!
//! Each entry records the largest `R` its callers asked for, and starts with the largest `R`
//! recorded by the entry it replaced. The larger of the two (capped the same way) is the
//! entry's **refresh requirement** `R_max`. A caller seen once shapes the next token
//! generation, then fades.
//!
//! ## Lookups
//!
//! - **Hit.** A token that has not expired and has at least the caller's `R` left is served at
//!   once ([`Origin::Hit`]). If it has no more than `R_max + lead` left, the hit also starts one
//!   background refresh of the key, unless a fetch of that key is already in flight or the key
//!   is backing off after a transient failure. The **lead** is [`CacheConfig::refresh_lead`]
//!   lengthened or shortened by up to [`CacheConfig::refresh_jitter_percent`] by an amount fixed
//!   per key (and random per process, so replicas differ too), capped at a quarter of the
//!   token's lifetime.
//! - **Miss or synchronous refresh.** No entry, an expired one, or one with less than the
//!   caller's `R` left: the caller waits for a fetch. At most one fetch per key is in flight;
//!   the first caller starts it ([`Origin::Fetched`]), later ones, and callers arriving during
//!   a background refresh, wait for it ([`Origin::Coalesced`]). A freshly fetched token is
//!   returned even if it has less than `min_remaining` left: the source cannot do better.
//! - **Last known good.** When a refresh fails *transiently* and the cached token has not
//!   expired, the caller gets that token marked [`Origin::LastKnownGood`] (not a cache hit: it
//!   has less left than the caller asked for), and for [`CacheConfig::failure_backoff`] (or
//!   Google's `retry_after`, if longer) the key is not fetched again: callers whose requirement
//!   the token does not meet are served it as last known good meanwhile, without waiting. This
//!   lasts until the token really expires; after that, callers get the error. Transient errors
//!   are not remembered: the next call after the backoff fetches again.
//! - **Permanent failures** (not [`is_transient`](broker_core::SourceError::is_transient)) of
//!   any refresh, synchronous or background, **invalidate** the entry: Google said the
//!   credential or request is bad, so the broker stops handing out tokens minted under it, and
//!   the caller gets the error. The failure is also **remembered** for
//!   [`CacheConfig::negative_ttl`] (by our clock): meanwhile `get` for that key answers
//!   [`CacheError::Negative`] with the same error, without calling the source, so a rejected
//!   request repeated in a loop costs one upstream call per `negative_ttl`. A successful fetch
//!   of the key, or [`TokenCache::invalidate`], forgets it.
//!
//! ## The refresh-ahead guarantee
//!
//! *A key that is in use is refreshed in the background before any caller's requirement
//! fails*, for any `min_remaining` and any token lifetime. The first hit with no more than
//! `R_max + lead` left starts the refresh; the largest requirement fails only once less than
//! `R_max` is left, at least `lead` later, and the refresh has finished by then because
//! [`CacheConfig::background_deadline`] is no longer than the shortest lead
//! ([`CacheConfig::problems`] reports configurations where it is). Smaller requirements fail
//! later still. What "in use" assumes:
//!
//! - some caller hits the key early enough in the lead for the refresh to finish within it:
//!   callers at least once per (shortest lead − `background_deadline`), 60 s with the defaults;
//! - the requirement was asked for during this token generation or the previous one: the first
//!   caller needing more than any caller before it may wait once;
//! - the source answers the background refresh successfully within its deadline (after a
//!   transient failure the key backs off and callers get [`Origin::LastKnownGood`]);
//! - the lead is not capped, that is tokens live at least four times the longest lead (10
//!   minutes with the defaults); shorter-lived tokens get a quarter of their lifetime as lead,
//!   and the source must answer within that.
//!
//! The cost is bounded too: since `R_max` is at most half and the lead at most a quarter of the
//! lifetime, in steady state a key makes at most one upstream call per
//! `lifetime - R_max - lead` (at least a quarter of a lifetime), however many callers it has.
//!
//! ## Mechanics
//!
//! Fetches run in their own Tokio task, so a caller that gives up (deadline, disconnect) does
//! not cancel the fetch others wait on; the fetched token is cached anyway. A fetch is shared,
//! so it must not end with the deadline of the caller who happened to start it (a caller with
//! a 1 ms deadline would otherwise fail it for every waiter, and put the key into backoff):
//! [`TokenCache::get`] takes the fetch's deadline (the server passes its own maximum for a
//! call), and each caller bounds its own wait. A background refresh gets
//! [`CacheConfig::background_deadline`].
//!
//! The moka caches are keyed by [`TokenKey`] (never the caller, never a token); each token
//! entry holds the `Arc<Token>` with its lifetime, lead, observed requirements and failure
//! backoff. moka evicts a token entry when its token really expires (by moka's own monotonic
//! clock), a negative entry after `negative_ttl`, and either for capacity
//! ([`CacheConfig::max_capacity`] each); that is eviction only. Validity is always decided by
//! our [`Clock`], so tests can drive it with [`broker_core::ManualClock`].
//!
//! With `max_capacity = 0` the cache is disabled: every call goes to the source, with no
//! caching, coalescing, refresh ahead or negative cache.
//!
//! Logs carry the key's credential, principal and scopes and the token's fingerprint, never the
//! token.

mod cached_source;
mod config;
mod entry;
mod error;
mod metrics;
mod negative;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use broker_core::{Clock, Fetch, SourceError, Token, TokenKey, TokenKind};
use moka::Expiry;
use moka::future::Cache;
use tokio::runtime::Handle;
use tokio::sync::watch;

pub use cached_source::CachedSource;
pub use config::CacheConfig;
pub use error::CacheError;
pub use metrics::CacheMetrics;

use entry::{Entry, jitter, lock};
use metrics::{Counters, bump};
use negative::NegativeCache;

/// Where a served token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Served from the cache without waiting, with at least the caller's requirement left.
    Hit,
    /// Fetched from the source by this call.
    Fetched,
    /// Fetched by a fetch another caller (or a background refresh) had started.
    Coalesced,
    /// The last known good token, served because its refresh failed transiently (or the key is
    /// backing off after such a failure). It is still valid, but has less left than the caller
    /// asked for. The server should log this.
    LastKnownGood,
}

impl Origin {
    /// Whether the token was served from the cache as asked, without an upstream call by this
    /// caller: only [`Origin::Hit`] ([`Origin::LastKnownGood`] is a degraded answer, not a hit).
    pub fn is_cache_hit(self) -> bool {
        matches!(self, Self::Hit)
    }

    /// The name for audit events and metrics: `hit`, `fetched`, `coalesced` or
    /// `last_known_good`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Fetched => "fetched",
            Self::Coalesced => "coalesced",
            Self::LastKnownGood => "last_known_good",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// `None` when the cache or the negative cache is disabled.
    negative: Option<NegativeCache>,
    /// The fetch in flight for each key, if any.
    flights: Mutex<HashMap<TokenKey, Flight>>,
    next_flight: AtomicU64,
    /// Seeds the per-key jitter: fixed per key within a process, different across replicas.
    jitter_seed: u64,
    counters: Arc<Counters>,
}

/// A fetch in flight: its id (so only it removes itself) and where its outcome will appear.
struct Flight {
    id: u64,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// Everything a fetch needs.
struct Job {
    fetch: Arc<dyn Fetch>,
    deadline: Option<Instant>,
    /// The entry the starter saw (the last known good token), if any.
    seen: Option<Arc<Entry>>,
    /// The starter's `min_remaining`, to decide whether an entry stored meanwhile will do.
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

impl TokenCache {
    /// A cache tuned by `config` that reads the time from `clock`. It does not check `config`:
    /// call [`CacheConfig::problems`] first.
    pub fn new(config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        Self::with_jitter_seed(config, clock, RandomState::new().build_hasher().finish())
    }

    /// A cache whose per-key jitter derives from `jitter_seed`.
    fn with_jitter_seed(config: CacheConfig, clock: Arc<dyn Clock>, jitter_seed: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let store = config
            .is_enabled()
            .then(|| token_store(&config, &clock, &counters));
        let negative = config
            .is_negative_cache_enabled()
            .then(|| NegativeCache::new(config.max_capacity, config.negative_ttl));
        Self {
            inner: Arc::new(Inner {
                config,
                clock,
                store,
                negative,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                jitter_seed,
                counters,
            }),
        }
    }

    /// A token for `key`, from the cache or from `fetch` (which must ask for what `key` was
    /// made from), with at least `min_remaining` validity left where the source
    /// can give it (see the crate documentation). `deadline` bounds a fetch this call starts,
    /// which other callers may join: not the caller's own deadline, but how long the broker
    /// lets any call take. Callers bound their own wait.
    ///
    /// Must run inside a Tokio runtime to fetch in the background; without one, fetches run
    /// in the caller's future and no background refresh happens.
    pub async fn get(
        &self,
        key: TokenKey,
        fetch: Arc<dyn Fetch>,
        min_remaining: Duration,
        deadline: Option<Instant>,
    ) -> Result<CachedToken, CacheError> {
        let inner = &self.inner;
        let Some(store) = &inner.store else {
            return inner.pass_through(&key, &*fetch, deadline).await;
        };
        let now = inner.clock.now();
        if let Some(error) = inner.remembered_failure(&key, now).await {
            return Err(error);
        }

        let current = store
            .get(&key)
            .await
            .filter(|entry| !entry.token.is_expired(now));
        if let Some(entry) = &current {
            let requirement = entry.requirement(min_remaining, inner.config.safety_margin);
            entry.observe(requirement);
            if entry.satisfies(now, requirement) {
                if entry.is_due(now) {
                    inner.refresh_in_background(&key, entry, &fetch);
                }
                return Ok(inner.serve_hit(&key, entry));
            }
            if entry.is_backing_off(now) {
                bump(&inner.counters.misses);
                return Ok(inner.serve_last_known_good(&key, entry));
            }
        }

        bump(&inner.counters.misses);
        let job = || Job {
            fetch,
            deadline,
            seen: current.clone(),
            min_remaining,
        };
        inner.fetch_and_wait(&key, job, current.as_ref()).await
    }

    /// Drops the cached token for `key`, and the failure remembered for it, if any. A fetch
    /// already in flight is not cancelled and stores its outcome when it completes.
    pub async fn invalidate(&self, key: &TokenKey) {
        if let Some(store) = &self.inner.store {
            store.invalidate(key).await;
        }
        if let Some(negative) = &self.inner.negative {
            negative.forget(key).await;
        }
    }

    /// The counters so far.
    pub fn metrics(&self) -> CacheMetrics {
        self.inner.counters.snapshot()
    }

    /// About how many tokens the cache holds (moka applies writes lazily, so this may lag).
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

/// The moka cache of tokens, bounded by `config` and counting evictions into `counters`.
fn token_store(
    config: &CacheConfig,
    clock: &Arc<dyn Clock>,
    counters: &Arc<Counters>,
) -> Cache<TokenKey, Arc<Entry>> {
    let evictions = Arc::clone(counters);
    Cache::builder()
        .name("token-cache")
        .max_capacity(config.max_capacity)
        .expire_after(ExpireWithToken {
            clock: Arc::clone(clock),
        })
        .eviction_listener(move |_key, _entry, cause| {
            if cause.was_evicted() {
                bump(&evictions.evictions);
            }
        })
        .build()
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
    /// The disabled cache: the same fetch path, without storing or coalescing.
    async fn pass_through(
        &self,
        key: &TokenKey,
        fetch: &dyn Fetch,
        deadline: Option<Instant>,
    ) -> Result<CachedToken, CacheError> {
        bump(&self.counters.misses);
        let token = self.fetch_upstream(key, fetch, deadline, None).await?;
        Ok(CachedToken {
            token,
            origin: Origin::Fetched,
        })
    }

    /// The permanent failure remembered for `key` at `now`, counted as a negative hit.
    async fn remembered_failure(&self, key: &TokenKey, now: SystemTime) -> Option<CacheError> {
        let error = self.negative.as_ref()?.get(key, now).await?;
        bump(&self.counters.misses);
        bump(&self.counters.negative_hits);
        tracing::debug!(
            credential = %key.credential,
            principal = %key.principal,
            scopes = %key.scopes,
            %error,
            "answering with a remembered permanent failure"
        );
        Some(CacheError::Negative(error))
    }

    fn serve_hit(&self, key: &TokenKey, entry: &Entry) -> CachedToken {
        bump(&self.counters.hits);
        tracing::trace!(
            credential = %key.credential,
            principal = %key.principal,
            scopes = %key.scopes,
            "token cache hit"
        );
        CachedToken {
            token: Arc::clone(&entry.token),
            origin: Origin::Hit,
        }
    }

    fn serve_last_known_good(&self, key: &TokenKey, entry: &Entry) -> CachedToken {
        bump(&self.counters.last_known_good_serves);
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
            origin: Origin::LastKnownGood,
        }
    }

    /// Joins or starts the fetch of `key` and waits for it; on a transient failure, falls back
    /// to `current` (the last known good token) while it is valid.
    async fn fetch_and_wait(
        self: &Arc<Self>,
        key: &TokenKey,
        job: impl FnOnce() -> Job,
        current: Option<&Arc<Entry>>,
    ) -> Result<CachedToken, CacheError> {
        let (mut outcome, task) = self.join_or_start(key, job);
        let origin = if let Some(task) = task {
            match Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(task)),
                Err(_) => task.await,
            }
            Origin::Fetched
        } else {
            bump(&self.counters.coalesced);
            Origin::Coalesced
        };
        match wait(&mut outcome).await {
            Ok(token) => Ok(CachedToken { token, origin }),
            Err(error) => match current {
                Some(entry)
                    if error.is_transient() && !entry.token.is_expired(self.clock.now()) =>
                {
                    Ok(self.serve_last_known_good(key, entry))
                }
                _ => Err(error),
            },
        }
    }

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
        fetch: &Arc<dyn Fetch>,
    ) {
        let Ok(runtime) = Handle::try_current() else {
            return;
        };
        let (_, job) = self.join_or_start(key, || Job {
            fetch: Arc::clone(fetch),
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
                remaining_s = entry.token.remaining(self.clock.now()).as_secs(),
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
            let requirement = current.requirement(job.min_remaining, self.config.safety_margin);
            if newer && current.satisfies(self.clock.now(), requirement) {
                return Ok(Arc::clone(&current.token));
            }
        }
        self.fetch_upstream(key, &*job.fetch, job.deadline, job.seen.as_ref())
            .await
    }

    /// One call to the source; stores the token, or records the failure.
    async fn fetch_upstream(
        &self,
        key: &TokenKey,
        fetch: &dyn Fetch,
        deadline: Option<Instant>,
        seen: Option<&Arc<Entry>>,
    ) -> Outcome {
        bump(&self.counters.upstream_fetches);
        let result = fetch.fetch(deadline).await;
        let now = self.clock.now();
        match result {
            Ok(token) => Ok(self.store_token(key, Arc::new(token), now).await),
            Err(error) => {
                bump(&self.counters.refresh_failures);
                let error = Arc::new(error);
                if error.is_transient() {
                    self.back_off(key, &error, seen, now);
                } else {
                    self.reject(key, &error, now).await;
                }
                Err(CacheError::Source(error))
            }
        }
    }

    /// Caches a token fetched at `now` (replacing the key's entry, whose observed requirements
    /// it inherits) and forgets any failure remembered for the key.
    async fn store_token(&self, key: &TokenKey, token: Arc<Token>, now: SystemTime) -> Arc<Token> {
        tracing::debug!(
            credential = %key.credential,
            principal = %key.principal,
            scopes = %key.scopes,
            fingerprint = %token.secret.fingerprint(),
            expires_in_s = token.remaining(now).as_secs(),
            "fetched a token"
        );
        if let Some(store) = &self.store {
            let previous = store.get(key).await;
            let entry = Entry::new(
                Arc::clone(&token),
                now,
                self.lead_of(key),
                previous.as_deref(),
            );
            store.insert(key.clone(), Arc::new(entry)).await;
        }
        if let Some(negative) = &self.negative {
            negative.forget(key).await;
        }
        token
    }

    /// After a transient failure: no refresh of `key` (whose entry was `seen`) for the
    /// backoff, or Google's `retry_after` if longer.
    fn back_off(
        &self,
        key: &TokenKey,
        error: &SourceError,
        seen: Option<&Arc<Entry>>,
        now: SystemTime,
    ) {
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
    }

    /// After a permanent failure: drop the cached token and remember the failure.
    async fn reject(&self, key: &TokenKey, error: &Arc<SourceError>, now: SystemTime) {
        let dropped = match &self.store {
            Some(store) => store.remove(key).await.is_some(),
            None => false,
        };
        if let Some(negative) = &self.negative {
            negative.remember(key, Arc::clone(error), now).await;
        }
        let audience = match &key.kind {
            TokenKind::Access => "-",
            TokenKind::Id { audience, .. } => audience,
        };
        tracing::warn!(
            credential = %key.credential,
            principal = %key.principal,
            impersonation = %key.impersonation.as_deref().map_or_else(|| "-".to_owned(), |chain| format!("[{}]", chain.join(","))),
            scopes = %key.scopes,
            audience,
            subject = key.subject.as_deref().unwrap_or("-"),
            %error,
            cached_token_dropped = dropped,
            remembered = self.negative.is_some(),
            "token fetch failed permanently"
        );
    }

    /// The refresh lead of `key`: jittered by an amount fixed per key and per process.
    fn lead_of(&self, key: &TokenKey) -> Duration {
        let mut hasher = DefaultHasher::new();
        self.jitter_seed.hash(&mut hasher);
        key.hash(&mut hasher);
        jitter(
            self.config.refresh_lead,
            self.config.refresh_jitter_percent,
            hasher.finish(),
        )
    }
}
