//! Tests, driven by a [`ManualClock`] and a gated, counting fake source; no wall-clock sleeps.

use std::sync::atomic::AtomicUsize;

use broker_core::{
    CredentialName, ManualClock, Rejection, ScopeSet, Secret, SourceError, SourceFuture,
};
use tokio::sync::Notify;

use super::*;

const PRINCIPAL: &str = "deployer@project.iam.gserviceaccount.com";
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Succeed,
    FailTransiently,
    FailPermanently,
    Panic,
}

/// A source that counts calls, can be told to fail, and holds every fetch at a gate while
/// the gate is closed.
#[derive(Debug)]
struct FakeSource {
    clock: ManualClock,
    lifetime: Mutex<Duration>,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
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

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        _deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
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
                Mode::FailTransiently => Err(SourceError::Unavailable {
                    message: "HTTP 503".into(),
                    retry_after: None,
                }),
                Mode::FailPermanently => Err(SourceError::Rejected {
                    rejection: Rejection::InvalidGrant,
                    message: "account disabled".into(),
                }),
                Mode::Panic => panic!("the fake source panics (expected by this test)"),
            }
        })
    }
}

/// Test-only views of the cache's internals.
impl TokenCache {
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
            cache: TokenCache::new(config, Arc::new(clock.clone())),
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
    let source: Arc<dyn TokenSource> = source.clone();
    cache
        .get(key(credential), source, request(), min_remaining, None)
        .await
}

fn secret(result: &Result<CachedToken, CacheError>) -> &str {
    result.as_ref().expect("a token").token.secret.expose()
}

fn origin(result: &Result<CachedToken, CacheError>) -> Origin {
    result.as_ref().expect("a token").origin
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
async fn a_hit_in_the_refresh_window_serves_the_token_and_refreshes_once_in_the_background() {
    let h = Harness::default();
    let start = h.clock.now();
    let first = h.get("sa").await.expect("token");

    // 400 s left: outside the window (5 min +- 10 %), a plain hit.
    h.leave(Duration::from_secs(400), start);
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(h.cache.metrics().background_refreshes, 0);

    // 200 s left: inside the window. Hits keep serving the current token while one
    // background refresh, held at the gate, is in flight.
    h.source.close_gate();
    h.leave(Duration::from_secs(200), start);
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

    // Inside the safety margin: the refresh fails, the old token is served, marked stale.
    h.leave(Duration::from_secs(30), start);
    let stale = h.get("sa").await;
    assert_eq!(
        (origin(&stale), secret(&stale)),
        (Origin::Stale, "ya29.token-1")
    );
    assert_eq!(h.source.calls(), 2);

    // Backing off: served stale without going upstream, also to a demanding caller.
    let stale = h.get_min("sa", Duration::from_secs(900)).await;
    assert_eq!(origin(&stale), Origin::Stale);
    assert_eq!(h.source.calls(), 2);

    // After the backoff: one more attempt, still failing, still stale.
    h.leave(Duration::from_secs(19), start);
    assert_eq!(origin(&h.get("sa").await), Origin::Stale);
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
            stale_serves: 3,
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
    h.leave(Duration::from_secs(200), start);

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
        fn fetch<'a>(&'a self, _: &'a TokenRequest, _: Option<Instant>) -> SourceFuture<'a> {
            Box::pin(async {
                Err(SourceError::Unavailable {
                    message: "HTTP 429".into(),
                    retry_after: Some(Duration::from_secs(40)),
                })
            })
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
            Arc::clone(&throttled),
            request(),
            Duration::ZERO,
            None,
        )
    };
    assert_eq!(get().await.expect("stale").origin, Origin::Stale);
    h.clock.advance(Duration::from_secs(20)); // past the 10 s backoff, not the 40 s retry-after
    assert_eq!(get().await.expect("stale").origin, Origin::Stale);
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
    assert!(matches!(
        error.source_error(),
        Some(SourceError::Rejected {
            rejection: Rejection::InvalidGrant,
            ..
        })
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
    h.leave(Duration::from_secs(200), start);
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    h.cache.settle(&key("sa")).await;
    assert!(!h.cache.contains(&key("sa")));
    let error = h.get("sa").await.expect_err("rejected");
    assert!(!error.is_transient());
    assert_eq!(h.source.calls(), 3);
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
async fn short_lived_tokens_clamp_the_window_and_the_margin() {
    let h = Harness::default();
    *lock(&h.source.lifetime) = Duration::from_secs(120);
    let start = h.clock.now();
    h.get("sa").await.expect("token");
    // Window clamps to 60 s, margin to 30 s: 85 s left is a plain hit.
    h.clock.set(start + Duration::from_secs(35));
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(h.cache.metrics().background_refreshes, 0);
    // 55 s left: in the window, still above the margin.
    h.clock.set(start + Duration::from_secs(65));
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(h.cache.metrics().background_refreshes, 1);
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
}

#[test]
fn cache_errors_pass_the_source_classification_through() {
    let throttled = CacheError::from(SourceError::Unavailable {
        message: "HTTP 429".into(),
        retry_after: Some(Duration::from_secs(7)),
    });
    assert!(throttled.is_transient());
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        throttled.to_string(),
        "Google is unavailable: HTTP 429".to_owned()
    );
    let rejected = CacheError::from(SourceError::Rejected {
        rejection: Rejection::PermissionDenied,
        message: "no".into(),
    });
    assert!(!rejected.is_transient());
    assert_eq!(rejected.retry_after(), None);
}

#[test]
fn config_defaults_and_disabled() {
    let config = CacheConfig::default();
    assert!(config.is_enabled());
    assert_eq!(config.refresh_window, Duration::from_secs(300));
    assert_eq!(config.safety_margin, Duration::from_secs(60));
    assert!(!CacheConfig::disabled().is_enabled());
}
