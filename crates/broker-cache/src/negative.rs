//! The negative cache: permanent failures remembered per key for `negative_ttl`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker_core::{SourceError, TokenKey};
use moka::future::Cache;

/// A permanent failure and until when it stands (by the cache's [`Clock`](broker_core::Clock)).
#[derive(Debug)]
struct Rejected {
    error: Arc<SourceError>,
    until: SystemTime,
}

/// Remembered permanent failures, bounded like the token cache. Validity is decided by the
/// injected clock; moka's own time-to-live only evicts.
#[derive(Debug)]
pub(crate) struct NegativeCache {
    ttl: Duration,
    store: Cache<TokenKey, Arc<Rejected>>,
}

impl NegativeCache {
    /// A negative cache holding at most `capacity` keys, each for `ttl`.
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            ttl,
            store: Cache::builder()
                .name("token-cache-negative")
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The failure remembered for `key`, if it still stands at `now`.
    pub(crate) async fn get(&self, key: &TokenKey, now: SystemTime) -> Option<Arc<SourceError>> {
        self.store
            .get(key)
            .await
            .filter(|rejected| now < rejected.until)
            .map(|rejected| Arc::clone(&rejected.error))
    }

    /// Remembers that `key` failed permanently with `error` at `now`.
    pub(crate) async fn remember(&self, key: &TokenKey, error: Arc<SourceError>, now: SystemTime) {
        let until = now.checked_add(self.ttl).unwrap_or(now);
        self.store
            .insert(key.clone(), Arc::new(Rejected { error, until }))
            .await;
    }

    /// Forgets the failure of `key`, if any.
    pub(crate) async fn forget(&self, key: &TokenKey) {
        self.store.invalidate(key).await;
    }

    /// Test-only view: the entries held (after moka's pending work).
    #[cfg(test)]
    pub(crate) async fn len(&self) -> u64 {
        self.store.run_pending_tasks().await;
        self.store.entry_count()
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, key: &TokenKey) -> bool {
        self.store.contains_key(key)
    }
}
