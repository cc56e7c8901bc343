//! Counters, kept as atomics and read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the cache's counters since it was built. Every `get` counts as exactly one
/// hit or one miss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheMetrics {
    /// Calls served from the cache without waiting ([`Origin::Hit`](crate::Origin::Hit)).
    pub hits: u64,
    /// Calls that found no token fresh enough: they waited for a fetch, or were served a
    /// last-known-good token, or failed (including negative hits).
    pub misses: u64,
    /// Misses that waited on a fetch another caller (or a background refresh) had started.
    pub coalesced: u64,
    /// Calls made to a token source (synchronous and background).
    pub upstream_fetches: u64,
    /// Background refreshes started.
    pub background_refreshes: u64,
    /// Upstream fetches that failed (counted once per fetch, not per waiter).
    pub refresh_failures: u64,
    /// Calls served a last-known-good token
    /// ([`Origin::LastKnownGood`](crate::Origin::LastKnownGood)).
    pub last_known_good_serves: u64,
    /// Calls answered with a remembered permanent failure
    /// ([`CacheError::Negative`](crate::CacheError::Negative)), without an upstream call.
    pub negative_hits: u64,
    /// Entries evicted for capacity or expiry (not replacements or explicit invalidations).
    pub evictions: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) upstream_fetches: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) last_known_good_serves: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) evictions: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CacheMetrics {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheMetrics {
            hits: read(&self.hits),
            misses: read(&self.misses),
            coalesced: read(&self.coalesced),
            upstream_fetches: read(&self.upstream_fetches),
            background_refreshes: read(&self.background_refreshes),
            refresh_failures: read(&self.refresh_failures),
            last_known_good_serves: read(&self.last_known_good_serves),
            negative_hits: read(&self.negative_hits),
            evictions: read(&self.evictions),
        }
    }
}
