//! Tests, driven by a [`ManualClock`] and a gated, counting fake source; no wall-clock sleeps.

mod negative;
mod simulation;

use std::sync::atomic::AtomicUsize;

use broker_core::{
    AccessTokenFetch, Capabilities, CredentialName, ManualClock, Rejection, ScopeSet, Secret,
    SourceError, SourceFuture, TokenRequest, TokenSource, UpstreamRejection, UpstreamStatus,
};
use tokio::sync::Notify;

use super::*;

const PRINCIPAL: &str = "deployer@project.iam.gserviceaccount.com";
const HOUR: Duration = Duration::from_secs(3600);
/// The jitter seed of every test cache, so that runs are reproducible.
const SEED: u64 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Succeed,
    FailTransiently,
    FailPermanently,
    Panic,
}

/// What Google answers when it is down.
fn unavailable(retry_after: Option<Duration>) -> SourceError {
    SourceError::Unavailable {
        upstream: "oauth2.googleapis.com".into(),
        status: UpstreamStatus::Http(503),
        message: "HTTP 503".into(),
        retry_after,
    }
}

/// What Google answers for a disabled service account.
fn rejected() -> SourceError {
    SourceError::Rejected(Box::new(UpstreamRejection {
        rejection: Rejection::CredentialRejected,
        upstream: "oauth2.googleapis.com".into(),
        status: 400,
        error: "invalid_grant".into(),
        field: None,
        message: "account disabled".into(),
    }))
}

/// A source that counts calls (and records when they happened), can be told to fail, and holds
/// every fetch at a gate while the gate is closed.
#[derive(Debug)]
struct FakeSource {
    clock: ManualClock,
    lifetime: Mutex<Duration>,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
    called_at: Mutex<Vec<SystemTime>>,
    gate: watch::Sender<bool>,
    started: Notify,
}

impl FakeSource {
    fn new(clock: ManualClock) -> Arc<Self> {
        Arc::new(Self {
            clock,
            lifetime: Mutex::new(HOUR),
            mode: Mutex::new(Mode::Succeed),
            calls: AtomicUsize::new(0),
            called_at: Mutex::new(Vec::new()),
            gate: watch::channel(true).0,
            started: Notify::new(),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    fn set_lifetime(&self, lifetime: Duration) {
        *lock(&self.lifetime) = lifetime;
    }

    fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

impl TokenSource for FakeSource {
    fn principal(&self) -> &str {
        PRINCIPAL
    }

    fn kind(&self) -> &'static str {
        "service_account"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        _deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            lock(&self.called_at).push(self.clock.now());
            self.started.notify_one();
            let mut gate = self.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            let mode = *lock(&self.mode);
            match mode {
                Mode::Succeed => Ok(Token {
                    secret: Secret::new(format!("ya29.token-{n}")),
                    expires_at: self.clock.now() + *lock(&self.lifetime),
                    scopes: request.scopes.clone(),
                    principal: PRINCIPAL.into(),
                }),
                Mode::FailTransiently => Err(unavailable(None)),
                Mode::FailPermanently => Err(rejected()),
                Mode::Panic => panic!("the fake source panics (expected by this test)"),
            }
        })
    }
}

/// Test-only views of the cache's internals.
impl TokenCache {
    /// A cache with the fixed test jitter seed.
    fn for_tests(config: CacheConfig, clock: &ManualClock) -> Self {
        Self::with_jitter_seed(config, Arc::new(clock.clone()), SEED)
    }

    /// Waits until no fetch of `key` is in flight.
    async fn settle(&self, key: &TokenKey) {
        loop {
            let flight = lock(&self.inner.flights)
                .get(key)
                .map(|f| f.outcome.clone());
            let Some(mut outcome) = flight else { return };
            let _ = wait(&mut outcome).await;
            tokio::task::yield_now().await;
        }
    }

    fn contains(&self, key: &TokenKey) -> bool {
        self.inner
            .store
            .as_ref()
            .is_some_and(|store| store.contains_key(key))
    }

    async fn run_pending_tasks(&self) {
        if let Some(store) = &self.inner.store {
            store.run_pending_tasks().await;
        }
    }

    /// The refresh lead of `key` (before the cap at a quarter of the lifetime).
    fn lead(&self, key: &TokenKey) -> Duration {
        self.inner.lead_of(key)
    }
}

/// Yields until `condition` holds (bounded, so a bug fails the test instead of hanging it).
async fn until(mut condition: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never held");
}

/// The fetch of an access token for [`request`] from `source`.
fn fetch(source: &Arc<FakeSource>) -> Arc<dyn Fetch> {
    let source: Arc<dyn TokenSource> = source.clone();
    Arc::new(AccessTokenFetch {
        source,
        request: request(),
    })
}

fn request() -> TokenRequest {
    TokenRequest::new(
        ScopeSet::parse(["https://www.googleapis.com/auth/cloud-platform"]).expect("scope"),
    )
}

fn key(credential: &str) -> TokenKey {
    TokenKey::new(
        CredentialName::new(credential).expect("name"),
        PRINCIPAL,
        &request(),
    )
}

struct Harness {
    clock: ManualClock,
    source: Arc<FakeSource>,
    cache: TokenCache,
}

impl Harness {
    fn new(config: CacheConfig) -> Self {
        let clock = ManualClock::default();
        Self {
            source: FakeSource::new(clock.clone()),
            cache: TokenCache::for_tests(config, &clock),
            clock,
        }
    }

    fn default() -> Self {
        Self::new(CacheConfig::default())
    }

    async fn get(&self, credential: &str) -> Result<CachedToken, CacheError> {
        self.get_min(credential, Duration::ZERO).await
    }

    async fn get_min(
        &self,
        credential: &str,
        min_remaining: Duration,
    ) -> Result<CachedToken, CacheError> {
        get_from(&self.cache, &self.source, credential, min_remaining).await
    }

    /// Starts a `get` on its own task.
    fn spawn_get(
        &self,
        credential: &'static str,
        min_remaining: Duration,
    ) -> tokio::task::JoinHandle<Result<CachedToken, CacheError>> {
        let cache = self.cache.clone();
        let source = Arc::clone(&self.source);
        tokio::spawn(async move { get_from(&cache, &source, credential, min_remaining).await })
    }

    /// Moves the clock so that the cached token (fetched at the start) has `left` remaining.
    fn leave(&self, left: Duration, fetched_at: SystemTime) {
        self.clock.set(fetched_at + HOUR - left);
    }
}

async fn get_from(
    cache: &TokenCache,
    source: &Arc<FakeSource>,
    credential: &str,
    min_remaining: Duration,
) -> Result<CachedToken, CacheError> {
    cache
        .get(key(credential), fetch(source), min_remaining, None)
        .await
}

fn secret(result: &Result<CachedToken, CacheError>) -> &str {
    result.as_ref().expect("a token").token.secret.expose()
}

fn origin(result: &Result<CachedToken, CacheError>) -> Origin {
    result.as_ref().expect("a token").origin
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_misses_make_one_upstream_call() {
    let h = Harness::default();
    h.source.close_gate();
    let tasks: Vec<_> = (0..200)
        .map(|_| h.spawn_get("sa", Duration::ZERO))
        .collect();
    until(|| h.cache.metrics().coalesced == 199 && h.source.calls() == 1).await;
    h.source.open_gate();

    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    assert_eq!(h.source.calls(), 1);
    let first = Arc::clone(&results[0].as_ref().expect("token").token);
    assert!(
        results
            .iter()
            .all(|r| Arc::ptr_eq(&r.as_ref().expect("token").token, &first))
    );
    let fetched = results
        .iter()
        .filter(|r| origin(r) == Origin::Fetched)
        .count();
    let coalesced = results
        .iter()
        .filter(|r| origin(r) == Origin::Coalesced)
        .count();
    assert_eq!((fetched, coalesced), (1, 199));
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            misses: 200,
            coalesced: 199,
            upstream_fetches: 1,
            ..CacheMetrics::default()
        }
    );

    let again = h.get("sa").await;
    assert_eq!(origin(&again), Origin::Hit);
    assert!(Arc::ptr_eq(&again.expect("token").token, &first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_share_one_error_and_errors_are_not_cached() {
    let h = Harness::default();
    h.source.set_mode(Mode::FailTransiently);
    h.source.close_gate();
    let tasks: Vec<_> = (0..20).map(|_| h.spawn_get("sa", Duration::ZERO)).collect();
    until(|| h.cache.metrics().coalesced == 19).await;
    h.source.open_gate();

    let mut errors = Vec::new();
    for task in tasks {
        errors.push(task.await.expect("task").expect_err("the fetch fails"));
    }
    let CacheError::Source(first) = &errors[0] else {
        panic!("expected a source error, got {:?}", errors[0]);
    };
    for error in &errors {
        assert!(error.is_transient());
        let CacheError::Source(this) = error else {
            panic!("expected a source error, got {error:?}");
        };
        assert!(Arc::ptr_eq(this, first), "every waiter gets the same error");
    }
    assert_eq!(h.source.calls(), 1);
    assert!(!h.cache.contains(&key("sa")));

    // Not cached: the next call goes upstream again.
    h.source.set_mode(Mode::Succeed);
    let next = h.get("sa").await;
    assert_eq!(origin(&next), Origin::Fetched);
    assert_eq!(h.source.calls(), 2);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            misses: 21,
            coalesced: 19,
            upstream_fetches: 2,
            refresh_failures: 1,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn hits_are_served_without_going_upstream() {
    let h = Harness::default();
    let first = h.get("sa").await.expect("token");
    assert_eq!(first.origin, Origin::Fetched);
    for _ in 0..5 {
        let hit = h.get("sa").await.expect("token");
        assert_eq!(hit.origin, Origin::Hit);
        assert!(Arc::ptr_eq(&hit.token, &first.token));
    }
    // A little later, far from the refresh window: still a hit, no background refresh.
    h.clock.advance(Duration::from_secs(1800));
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(h.source.calls(), 1);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            hits: 6,
            misses: 1,
            upstream_fetches: 1,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn an_expired_token_is_fetched_again() {
    let h = Harness::default();
    let first = h.get("sa").await;
    assert_eq!(secret(&first), "ya29.token-1");
    // moka still holds the entry (its clock did not move); ours says it expired.
    h.clock.advance(HOUR + Duration::from_secs(1));
    let second = h.get("sa").await;
    assert_eq!(origin(&second), Origin::Fetched);
    assert_eq!(secret(&second), "ya29.token-2");
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            hits: 1,
            misses: 2,
            upstream_fetches: 2,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn a_hit_due_for_refresh_serves_the_token_and_refreshes_once_in_the_background() {
    let h = Harness::default();
    let start = h.clock.now();
    let first = h.get("sa").await.expect("token");

    // The largest requirement is the 60 s safety margin, the lead 120 s +- 25 %: a refresh is
    // due with at most 150 to 210 s left. 250 s left: a plain hit.
    h.leave(secs(250), start);
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(h.cache.metrics().background_refreshes, 0);

    // 140 s left: due. Hits keep serving the current token while one background refresh,
    // held at the gate, is in flight.
    h.source.close_gate();
    h.leave(secs(140), start);
    for _ in 0..50 {
        let hit = h.get("sa").await.expect("token");
        assert_eq!(hit.origin, Origin::Hit);
        assert!(Arc::ptr_eq(&hit.token, &first.token));
    }
    until(|| h.source.calls() == 2).await;
    for _ in 0..50 {
        assert_eq!(secret(&h.get("sa").await), "ya29.token-1");
    }
    assert_eq!(h.cache.metrics().background_refreshes, 1);

    h.source.open_gate();
    h.cache.settle(&key("sa")).await;
    let refreshed = h.get("sa").await;
    assert_eq!(origin(&refreshed), Origin::Hit);
    assert_eq!(secret(&refreshed), "ya29.token-2");
    assert_eq!(h.source.calls(), 2);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            hits: 102,
            misses: 1,
            upstream_fetches: 2,
            background_refreshes: 1,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_remaining_forces_a_coalesced_synchronous_refresh() {
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    // 600 s left: fine for a plain call, too short for callers who need 900 s.
    h.leave(Duration::from_secs(600), start);
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);

    h.source.close_gate();
    let tasks: Vec<_> = (0..10)
        .map(|_| h.spawn_get("sa", Duration::from_secs(900)))
        .collect();
    until(|| h.cache.metrics().coalesced == 9).await;
    h.source.open_gate();
    for task in tasks {
        let result = task.await.expect("task");
        assert_eq!(secret(&result), "ya29.token-2");
    }
    assert_eq!(h.source.calls(), 2);
    let hit = h.get_min("sa", Duration::from_secs(900)).await;
    assert_eq!((origin(&hit), secret(&hit)), (Origin::Hit, "ya29.token-2"));
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            hits: 2,
            misses: 11,
            coalesced: 9,
            upstream_fetches: 2,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn a_token_inside_the_safety_margin_is_refreshed_first() {
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    h.leave(Duration::from_secs(30), start);
    let refreshed = h.get("sa").await;
    assert_eq!(
        (origin(&refreshed), secret(&refreshed)),
        (Origin::Fetched, "ya29.token-2")
    );
    assert_eq!(h.cache.metrics().background_refreshes, 0);
    assert_eq!(h.source.calls(), 2);
}

#[tokio::test]
async fn a_transient_refresh_failure_serves_the_last_known_good_token_until_it_expires() {
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    h.source.set_mode(Mode::FailTransiently);

    // Inside the safety margin: the refresh fails, the old token is served as last known good.
    h.leave(Duration::from_secs(30), start);
    let kept = h.get("sa").await;
    assert_eq!(
        (origin(&kept), secret(&kept)),
        (Origin::LastKnownGood, "ya29.token-1")
    );
    assert!(!origin(&kept).is_cache_hit());
    assert_eq!(h.source.calls(), 2);

    // Backing off: served without going upstream, also to a demanding caller.
    let kept = h.get_min("sa", Duration::from_secs(900)).await;
    assert_eq!(origin(&kept), Origin::LastKnownGood);
    assert_eq!(h.source.calls(), 2);

    // After the backoff: one more attempt, still failing, still the last known good token.
    h.leave(Duration::from_secs(19), start);
    assert_eq!(origin(&h.get("sa").await), Origin::LastKnownGood);
    assert_eq!(h.source.calls(), 3);

    // Once the token really expired there is nothing to fall back on.
    h.leave(Duration::ZERO, start);
    let error = h.get("sa").await.expect_err("no valid token left");
    assert!(error.is_transient());
    assert_eq!(h.source.calls(), 4);

    h.source.set_mode(Mode::Succeed);
    assert_eq!(origin(&h.get("sa").await), Origin::Fetched);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            hits: 0,
            misses: 6,
            upstream_fetches: 5,
            refresh_failures: 3,
            last_known_good_serves: 3,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn a_failed_background_refresh_keeps_the_token_and_backs_off() {
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    h.source.set_mode(Mode::FailTransiently);
    h.leave(secs(140), start);

    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    h.cache.settle(&key("sa")).await;
    assert_eq!(h.cache.metrics().refresh_failures, 1);
    // Backing off: hits, no new refresh.
    assert_eq!(secret(&h.get("sa").await), "ya29.token-1");
    assert_eq!(h.cache.metrics().background_refreshes, 1);

    // After the backoff the next hit tries again, and this time it works.
    h.source.set_mode(Mode::Succeed);
    h.clock.advance(Duration::from_secs(11));
    assert_eq!(secret(&h.get("sa").await), "ya29.token-1");
    h.cache.settle(&key("sa")).await;
    assert_eq!(secret(&h.get("sa").await), "ya29.token-3"); // call 2 failed
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            hits: 4,
            misses: 1,
            upstream_fetches: 3,
            background_refreshes: 2,
            refresh_failures: 1,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_the_backoff_is_honoured() {
    #[derive(Debug)]
    struct Throttled;
    impl TokenSource for Throttled {
        fn principal(&self) -> &str {
            PRINCIPAL
        }
        fn kind(&self) -> &'static str {
            "service_account"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn fetch<'a>(&'a self, _: &'a TokenRequest, _: Option<Instant>) -> SourceFuture<'a> {
            Box::pin(async { Err(unavailable(Some(Duration::from_secs(40)))) })
        }
    }
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    h.leave(Duration::from_secs(55), start);
    let throttled: Arc<dyn TokenSource> = Arc::new(Throttled);
    let get = || {
        h.cache.get(
            key("sa"),
            Arc::new(AccessTokenFetch {
                source: Arc::clone(&throttled),
                request: request(),
            }),
            Duration::ZERO,
            None,
        )
    };
    assert_eq!(get().await.expect("kept").origin, Origin::LastKnownGood);
    h.clock.advance(Duration::from_secs(20)); // past the 10 s backoff, not the 40 s retry-after
    assert_eq!(get().await.expect("kept").origin, Origin::LastKnownGood);
    assert_eq!(h.cache.metrics().upstream_fetches, 2);
}

#[tokio::test]
async fn a_permanent_failure_is_returned_and_drops_the_entry() {
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    h.source.set_mode(Mode::FailPermanently);
    h.leave(Duration::from_secs(30), start);

    let error = h.get("sa").await.expect_err("rejected");
    assert!(!error.is_transient());
    assert!(!error.is_negative());
    assert!(matches!(
        error.source_error(),
        Some(SourceError::Rejected(rejection))
            if rejection.rejection == Rejection::CredentialRejected
    ));
    assert!(!h.cache.contains(&key("sa")));
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            misses: 2,
            upstream_fetches: 2,
            refresh_failures: 1,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn a_permanent_background_failure_drops_the_entry_too() {
    let h = Harness::default();
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    h.source.set_mode(Mode::FailPermanently);
    h.leave(secs(140), start);
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    h.cache.settle(&key("sa")).await;
    assert!(!h.cache.contains(&key("sa")));
    // The failure is remembered: the next caller gets it without another upstream call.
    let error = h.get("sa").await.expect_err("rejected");
    assert!(!error.is_transient());
    assert!(error.is_negative());
    assert_eq!(h.source.calls(), 2);
}

#[tokio::test]
async fn capacity_bounds_the_cache_and_evictions_are_counted() {
    let h = Harness::new(CacheConfig {
        max_capacity: 3,
        ..CacheConfig::default()
    });
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for name in names {
        h.get(name).await.expect("token");
        h.cache.run_pending_tasks().await;
    }
    h.cache.run_pending_tasks().await;
    let held = h.cache.entry_count();
    assert!(held <= 3, "{held} entries held");
    assert_eq!(h.cache.metrics().evictions, 10 - held);

    // Explicit invalidation is not an eviction.
    let evictions = h.cache.metrics().evictions;
    for name in names {
        h.cache.invalidate(&key(name)).await;
    }
    h.cache.run_pending_tasks().await;
    assert_eq!(h.cache.entry_count(), 0);
    assert_eq!(h.cache.metrics().evictions, evictions);
}

#[tokio::test]
async fn invalidate_forces_a_fetch() {
    let h = Harness::default();
    h.get("sa").await.expect("token");
    h.cache.invalidate(&key("sa")).await;
    let again = h.get("sa").await;
    assert_eq!(
        (origin(&again), secret(&again)),
        (Origin::Fetched, "ya29.token-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_keys_do_not_coalesce() {
    let h = Harness::default();
    h.source.close_gate();
    let a = h.spawn_get("alpha", Duration::ZERO);
    let b = h.spawn_get("beta", Duration::ZERO);
    // Both fetches reach the (closed) gate: neither waits on the other.
    until(|| h.source.calls() == 2).await;
    h.source.open_gate();
    let (a, b) = (a.await.expect("task"), b.await.expect("task"));
    assert_eq!((origin(&a), origin(&b)), (Origin::Fetched, Origin::Fetched));
    assert_ne!(secret(&a), secret(&b));
    assert_eq!(h.cache.metrics().coalesced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_cache_passes_every_call_through() {
    let h = Harness::new(CacheConfig::disabled());
    for n in 1..=3 {
        let result = h.get("sa").await;
        assert_eq!(origin(&result), Origin::Fetched);
        assert_eq!(secret(&result), format!("ya29.token-{n}"));
    }
    h.source.close_gate();
    let tasks: Vec<_> = (0..5).map(|_| h.spawn_get("sa", Duration::ZERO)).collect();
    until(|| h.source.calls() == 8).await;
    h.source.open_gate();
    for task in tasks {
        assert_eq!(origin(&task.await.expect("task")), Origin::Fetched);
    }
    assert_eq!(h.cache.entry_count(), 0);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            misses: 8,
            upstream_fetches: 8,
            ..CacheMetrics::default()
        }
    );
}

#[tokio::test]
async fn a_panicking_source_fails_its_waiters_without_wedging_the_key() {
    let h = Harness::default();
    h.source.set_mode(Mode::Panic);
    let error = h.get("sa").await.expect_err("the source panicked");
    assert!(matches!(error, CacheError::Aborted));
    assert!(error.is_transient());
    assert!(lock(&h.cache.inner.flights).is_empty());

    h.source.set_mode(Mode::Succeed);
    assert_eq!(origin(&h.get("sa").await), Origin::Fetched);
}

#[tokio::test]
async fn short_lived_tokens_cap_the_requirement_and_the_lead() {
    let h = Harness::default();
    h.source.set_lifetime(secs(120));
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    // The requirement caps at 60 s (half the lifetime), the lead at 30 s (a quarter): a
    // refresh is due with 90 s left. 95 s left is a plain hit, even for a caller asking 30 min.
    h.clock.set(start + secs(25));
    assert_eq!(origin(&h.get_min("sa", secs(1800)).await), Origin::Hit);
    assert_eq!(h.cache.metrics().background_refreshes, 0);
    // 80 s left: due, and still above every (capped) requirement.
    h.source.close_gate();
    h.clock.set(start + secs(40));
    assert_eq!(origin(&h.get_min("sa", secs(1800)).await), Origin::Hit);
    assert_eq!(h.cache.metrics().background_refreshes, 1);
    // 59 s left, the refresh still held: a caller whose requirement fails waits for it.
    h.clock.set(start + secs(61));
    let waited = h.spawn_get("sa", Duration::ZERO);
    until(|| h.cache.metrics().coalesced == 1).await;
    h.source.open_gate();
    let waited = waited.await.expect("task");
    assert_eq!(
        (origin(&waited), secret(&waited)),
        (Origin::Coalesced, "ya29.token-2")
    );
}

#[test]
fn jitter_stays_within_its_percentage() {
    let window = Duration::from_secs(300);
    let mut seen = std::collections::HashSet::new();
    for hash in (0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
        let jittered = jitter(window, 10, hash);
        assert!(
            (Duration::from_secs(270)..=Duration::from_secs(330)).contains(&jittered),
            "{jittered:?}"
        );
        assert_eq!(jitter(window, 10, hash), jittered);
        seen.insert(jittered);
    }
    assert!(seen.len() > 100, "the jitter spreads windows");
    assert_eq!(jitter(window, 0, 12345), window);
    assert!(jitter(window, 255, u64::MAX) <= window * 2);
    // Hash 0 gives the shortest: the default lead's 90 s.
    assert_eq!(jitter(secs(120), 25, 0), secs(90));
    assert_eq!(jitter(secs(120), 25, 5_000), secs(150));
}

#[test]
fn leads_are_fixed_per_key_and_differ_across_keys_and_replicas() {
    let clock = ManualClock::default();
    let cache = TokenCache::for_tests(CacheConfig::default(), &clock);
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let leads: std::collections::HashSet<_> = names.iter().map(|n| cache.lead(&key(n))).collect();
    assert!(leads.len() > 1, "{leads:?}");
    assert!(
        leads
            .iter()
            .all(|lead| (secs(90)..=secs(150)).contains(lead))
    );
    assert_eq!(cache.lead(&key("a")), cache.lead(&key("a")));
    let replicas: std::collections::HashSet<_> = (0..8)
        .map(|seed| {
            TokenCache::with_jitter_seed(CacheConfig::default(), Arc::new(clock.clone()), seed)
                .lead(&key("a"))
        })
        .collect();
    assert!(replicas.len() > 1, "{replicas:?}");
}

#[test]
fn cache_errors_pass_the_source_classification_through() {
    let throttled = CacheError::from(unavailable(Some(secs(7))));
    assert!(throttled.is_transient());
    assert!(!throttled.is_negative());
    assert_eq!(throttled.retry_after(), Some(secs(7)));
    assert_eq!(
        throttled.to_string(),
        "Google is unavailable: HTTP 503".to_owned()
    );
    let refused = CacheError::from(rejected());
    assert!(!refused.is_transient());
    assert_eq!(refused.retry_after(), None);

    let CacheError::Source(error) = refused else {
        panic!("a source error");
    };
    let remembered = CacheError::Negative(Arc::clone(&error));
    assert!(remembered.is_negative());
    assert!(!remembered.is_transient());
    assert!(std::ptr::eq(
        remembered.source_error().expect("inner"),
        &*error
    ));
    assert_eq!(
        remembered.to_string(),
        "Google rejected the request: account disabled \
         (remembered from less than negative_ttl ago; not asked again)"
    );
    assert!(CacheError::Aborted.source_error().is_none());
}

#[test]
fn origins_name_themselves_and_only_hits_are_cache_hits() {
    let all = [
        (Origin::Hit, "hit", true),
        (Origin::Fetched, "fetched", false),
        (Origin::Coalesced, "coalesced", false),
        (Origin::LastKnownGood, "last_known_good", false),
    ];
    for (origin, name, hit) in all {
        assert_eq!(origin.as_str(), name);
        assert_eq!(origin.to_string(), name);
        assert_eq!(origin.is_cache_hit(), hit, "{origin:?}");
    }
}

#[test]
fn config_defaults_and_disabled() {
    let config = CacheConfig::default();
    assert!(config.is_enabled());
    assert_eq!(
        config,
        CacheConfig {
            max_capacity: 10_000,
            refresh_lead: secs(120),
            refresh_jitter_percent: 25,
            safety_margin: secs(60),
            failure_backoff: secs(10),
            background_deadline: secs(30),
            negative_ttl: secs(15),
        }
    );
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    assert!(!CacheConfig::disabled().is_enabled());
    assert!(CacheConfig::disabled().problems().is_empty());
}

#[test]
fn problems_name_every_setting_that_breaks_the_refresh_rule() {
    let problems = |config: CacheConfig| config.problems();

    let too_slow = CacheConfig {
        refresh_lead: secs(40),
        background_deadline: secs(45),
        ..CacheConfig::default()
    };
    assert_eq!(
        problems(too_slow),
        [
            "background_deadline: 45s is longer than the shortest refresh lead (refresh_lead \
          minus jitter = 30s); a background refresh could still be running when a caller's \
          requirement fails"
        ]
    );
    // As long as the shortest lead is fine.
    let exact = CacheConfig {
        refresh_lead: secs(40),
        background_deadline: secs(30),
        ..CacheConfig::default()
    };
    assert!(problems(exact).is_empty());

    let all_jitter = problems(CacheConfig {
        refresh_jitter_percent: 100,
        ..CacheConfig::default()
    });
    assert_eq!(all_jitter.len(), 1, "{all_jitter:?}");
    assert!(all_jitter[0].starts_with("refresh_jitter_percent: must be below 100"));

    let no_lead = problems(CacheConfig {
        refresh_lead: Duration::ZERO,
        ..CacheConfig::default()
    });
    assert_eq!(no_lead.len(), 1, "{no_lead:?}");
    assert!(no_lead[0].starts_with("refresh_lead: must be longer than zero"));

    let no_deadline = problems(CacheConfig {
        background_deadline: Duration::ZERO,
        ..CacheConfig::default()
    });
    assert_eq!(no_deadline.len(), 1, "{no_deadline:?}");
    assert!(no_deadline[0].starts_with("background_deadline: must be longer than zero"));

    let everything = problems(CacheConfig {
        refresh_jitter_percent: 200,
        refresh_lead: Duration::ZERO,
        background_deadline: Duration::ZERO,
        ..CacheConfig::default()
    });
    assert_eq!(everything.len(), 3, "{everything:?}");

    // Settings the rule does not depend on are free.
    let other = CacheConfig {
        safety_margin: Duration::ZERO,
        failure_backoff: secs(600),
        negative_ttl: Duration::ZERO,
        max_capacity: 1,
        ..CacheConfig::default()
    };
    assert!(problems(other).is_empty());
}

#[tokio::test]
async fn a_fetch_survives_the_caller_that_started_it() {
    let h = Harness::default();
    h.source.close_gate();
    let caller = h.spawn_get("sa", Duration::ZERO);
    until(|| h.source.calls() == 1).await;
    caller.abort();
    assert!(caller.await.expect_err("aborted").is_cancelled());

    h.source.open_gate();
    h.cache.settle(&key("sa")).await;
    let next = h.get("sa").await;
    assert_eq!(
        (origin(&next), secret(&next)),
        (Origin::Hit, "ya29.token-1")
    );
    assert_eq!(h.source.calls(), 1);
}

/// The largest requirement is remembered for one more token generation, then fades.
#[tokio::test]
async fn a_one_off_large_requirement_shapes_the_next_generation_then_fades() {
    let h = Harness::default();
    let lead = h.cache.lead(&key("sa"));
    // A refresh is due once no more than (largest requirement + lead) is left.
    let due_with = |largest: Duration| largest + lead;
    let one = secs(1);

    // Generation 1: plain callers, and once a caller needing 30 minutes.
    let mut fetched_at = h.clock.now();
    h.get("sa").await.expect("token");
    h.clock.advance(secs(100));
    assert_eq!(origin(&h.get_min("sa", secs(1800)).await), Origin::Hit);

    for generation in 2..=3 {
        // Just before the refresh is due for 30 minutes: nothing happens.
        h.leave(due_with(secs(1800)) + one, fetched_at);
        h.get("sa").await.expect("token");
        h.cache.settle(&key("sa")).await;
        assert_eq!(h.source.calls(), generation - 1);
        // Due: the hit refreshes in the background.
        h.leave(due_with(secs(1800)), fetched_at);
        assert_eq!(origin(&h.get("sa").await), Origin::Hit);
        h.cache.settle(&key("sa")).await;
        assert_eq!(h.source.calls(), generation);
        fetched_at = h.clock.now();
    }

    // Generation 3 inherited only generation 2's plain callers: it is refreshed when the
    // safety margin plus the lead is left.
    h.leave(due_with(secs(60)) + one, fetched_at);
    h.get("sa").await.expect("token");
    h.cache.settle(&key("sa")).await;
    assert_eq!(h.source.calls(), 3);
    h.leave(due_with(secs(60)), fetched_at);
    h.get("sa").await.expect("token");
    h.cache.settle(&key("sa")).await;
    assert_eq!(h.source.calls(), 4);
    assert_eq!(h.cache.metrics().background_refreshes, 3);
    assert_eq!(h.cache.metrics().misses, 1);
}

#[tokio::test]
async fn a_cached_source_shares_its_tokens_through_the_cache() {
    let h = Harness::default();
    let inner: Arc<dyn TokenSource> = h.source.clone();
    let cached = CachedSource::new(
        h.cache.clone(),
        CredentialName::new("base").expect("name"),
        inner,
    );
    assert_eq!(cached.principal(), PRINCIPAL);
    let first = cached.fetch(&request(), None).await.expect("token");
    let second = cached.fetch(&request(), None).await.expect("token");
    assert_eq!(first.secret.expose(), second.secret.expose());
    assert_eq!(
        h.source.calls(),
        1,
        "the second base token came from the cache"
    );
    h.source.set_mode(Mode::FailPermanently);
    h.cache
        .invalidate(&TokenKey::new(
            CredentialName::new("base").expect("name"),
            PRINCIPAL,
            &request(),
        ))
        .await;
    assert!(matches!(
        cached.fetch(&request(), None).await,
        Err(SourceError::Rejected(_))
    ));
}
