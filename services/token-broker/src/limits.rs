//! What one caller can cost: a token bucket per caller and grant, and a cap on the distinct
//! cache keys one caller may create per window.
//!
//! Both are counted per caller identity (the name a policy matches: SPIFFE ID, DNS name or
//! common name, so rotated certificates of one workload share their budget) and per grant, with
//! the broker's `[limits]` as defaults and a grant's own `rate_limit` and `distinct_keys` in
//! their place. A caller over its limit is refused with `RESOURCE_EXHAUSTED` and a retry delay;
//! other callers are not affected. The distinct-keys cap stops a caller whose grant allows
//! scope prefixes (or, later, audiences and subjects) from making the broker mint a token for
//! every subset it can think of.
//!
//! State lives in sharded maps keyed by a keyed hash of (caller, grant); entries that are back
//! to a full bucket and a finished window are swept when a shard grows, so memory follows the
//! callers active in the last window.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use broker_authz::{CallerIdentity, CallerName, RateLimit};
use broker_core::TokenKey;

/// Shards of the state map (a power of two).
const SHARDS: usize = 16;
/// A shard is swept of idle entries when it holds more than this.
const SWEEP_ABOVE: usize = 4096;

/// A hasher for keys that are already keyed hashes (random per process): it passes them
/// through instead of hashing them again.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Maps and sets keyed by keyed hashes.
type ByDigest = BuildHasherDefault<PassThrough>;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// The caller's token bucket is empty.
    Rate {
        /// The limit in force.
        limit: RateLimit,
        /// When a request will be allowed again.
        retry_after: Duration,
    },
    /// The caller created as many distinct cache keys as it may in this window.
    DistinctKeys {
        /// The cap in force.
        max: u32,
        /// The window.
        window: Duration,
        /// When the window ends.
        retry_after: Duration,
    },
}

/// The defaults of `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDefaults {
    /// The token bucket of a grant without its own `rate_limit`.
    pub rate: RateLimit,
    /// The distinct-keys cap of a grant without its own `distinct_keys`.
    pub distinct_keys: u32,
    /// The window of the distinct-keys cap.
    pub window: Duration,
}

/// One caller's use under one grant.
#[derive(Debug)]
struct Usage {
    /// The limit the bucket was last used with (the grant's own, or the default).
    rate: RateLimit,
    /// Requests left in the bucket, at `refilled`.
    tokens: f64,
    refilled: SystemTime,
    /// The digests of the distinct keys seen since `window_start`.
    keys: HashSet<u64, ByDigest>,
    window_start: SystemTime,
}

/// The per-caller limits of the broker.
#[derive(Debug)]
pub struct CallerLimits {
    defaults: LimitDefaults,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

/// One shard of the state: the usages, and the size at which it is swept next.
#[derive(Debug)]
struct Shard {
    usages: HashMap<u64, Usage, ByDigest>,
    sweep_at: usize,
}

impl CallerLimits {
    /// Limits with these defaults.
    pub fn new(defaults: LimitDefaults) -> Self {
        Self {
            defaults,
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        usages: HashMap::default(),
                        sweep_at: SWEEP_ABOVE,
                    })
                })
                .collect(),
        }
    }

    /// Admits one call of `caller` under `grant` at `now`, counting it against the grant's
    /// `rate` (or the default) and, for calls served from the cache, `key` against the grant's
    /// `distinct_keys` (or the default).
    pub fn admit(
        &self,
        caller: &CallerIdentity,
        grant: &str,
        rate: Option<RateLimit>,
        distinct_keys: Option<u32>,
        key: Option<&TokenKey>,
        now: SystemTime,
    ) -> Result<(), Limited> {
        let rate = rate.unwrap_or(self.defaults.rate);
        let max_keys = distinct_keys.unwrap_or(self.defaults.distinct_keys);
        let id = self.usage_id(caller, grant);
        let shard = &self.shards[(id as usize) & (SHARDS - 1)];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.usages.len() > shard.sweep_at {
            self.sweep(&mut shard.usages, now);
            // Sweep again only once the shard has grown by half again: a shard full of active
            // callers is not scanned on every request.
            shard.sweep_at = (shard.usages.len() + shard.usages.len() / 2).max(SWEEP_ABOVE);
        }
        let usage = shard.usages.entry(id).or_insert_with(|| Usage {
            rate,
            tokens: f64::from(rate.burst()),
            refilled: now,
            keys: HashSet::default(),
            window_start: now,
        });
        take_token(usage, rate, now)?;
        if let Some(key) = key {
            self.count_key(usage, key.digest(), max_keys, now)?;
        }
        Ok(())
    }

    /// A keyed hash of the caller's name and the grant: the identity of a [`Usage`].
    fn usage_id(&self, caller: &CallerIdentity, grant: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        match caller.name() {
            CallerName::Spiffe(id) => (0u8, id.as_str()).hash(&mut hasher),
            CallerName::Dns(names) => {
                (1u8, names.first().map_or("", String::as_str)).hash(&mut hasher)
            }
            CallerName::CommonName(cn) => (2u8, cn).hash(&mut hasher),
            CallerName::None => (3u8, caller.fingerprint.as_str()).hash(&mut hasher),
        }
        grant.hash(&mut hasher);
        hasher.finish()
    }

    fn count_key(
        &self,
        usage: &mut Usage,
        key: u64,
        max: u32,
        now: SystemTime,
    ) -> Result<(), Limited> {
        let window = self.defaults.window;
        let elapsed = now.duration_since(usage.window_start).unwrap_or_default();
        if elapsed >= window {
            usage.keys.clear();
            usage.window_start = now;
        }
        if usage.keys.contains(&key) {
            return Ok(());
        }
        if usage.keys.len() >= max as usize {
            return Err(Limited::DistinctKeys {
                max,
                window,
                retry_after: window.saturating_sub(elapsed.min(window)),
            });
        }
        usage.keys.insert(key);
        Ok(())
    }

    /// Drops the entries of callers that are back where a newcomer starts: a full bucket (by
    /// the limit each was last used with) and a finished key window.
    fn sweep(&self, usages: &mut HashMap<u64, Usage, ByDigest>, now: SystemTime) {
        let window = self.defaults.window;
        usages.retain(|_, usage| {
            let idle = now.duration_since(usage.refilled).unwrap_or_default();
            let tokens = usage.tokens + idle.as_secs_f64() / usage.rate.interval().as_secs_f64();
            let window_over = now.duration_since(usage.window_start).unwrap_or_default() >= window;
            !(tokens >= f64::from(usage.rate.burst()) && window_over)
        });
    }
}

/// Refills the bucket for the time since it was last refilled, then takes one request.
fn take_token(usage: &mut Usage, rate: RateLimit, now: SystemTime) -> Result<(), Limited> {
    usage.rate = rate;
    let burst = f64::from(rate.burst());
    let interval = rate.interval().as_secs_f64();
    let elapsed = now.duration_since(usage.refilled).unwrap_or_default();
    usage.tokens = (usage.tokens + elapsed.as_secs_f64() / interval).min(burst);
    usage.refilled = now.max(usage.refilled);
    if usage.tokens >= 1.0 {
        usage.tokens -= 1.0;
        Ok(())
    } else {
        Err(Limited::Rate {
            limit: rate,
            retry_after: Duration::from_secs_f64((1.0 - usage.tokens) * interval),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_authz::SpiffeId;
    use broker_core::{CredentialName, ScopeSet, TokenRequest};

    fn caller(id: &str) -> CallerIdentity {
        CallerIdentity {
            spiffe_id: Some(SpiffeId::parse(id).expect("id")),
            dns_names: vec![],
            common_name: None,
            fingerprint: "00".repeat(32),
            not_after: SystemTime::UNIX_EPOCH,
        }
    }

    fn key(scope: &str) -> TokenKey {
        let request = TokenRequest::new(ScopeSet::parse([scope]).expect("scope"));
        TokenKey::new(CredentialName::new("sa").expect("name"), "p", &request)
    }

    fn defaults() -> LimitDefaults {
        LimitDefaults {
            rate: RateLimit::new(10.0, 5).expect("rate"),
            distinct_keys: 3,
            window: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_callers_are_independent() {
        let limits = CallerLimits::new(defaults());
        let (a, b) = (caller("spiffe://x/a"), caller("spiffe://x/b"));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..5 {
            limits.admit(&a, "g", None, None, None, t0).expect("burst");
        }
        let Err(Limited::Rate { retry_after, .. }) = limits.admit(&a, "g", None, None, None, t0)
        else {
            panic!("limited");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // Another caller, and the same caller under another grant, have their own buckets.
        limits
            .admit(&b, "g", None, None, None, t0)
            .expect("other caller");
        limits
            .admit(&a, "h", None, None, None, t0)
            .expect("other grant");
        // 100 ms later one request is earned.
        let t1 = t0 + Duration::from_millis(100);
        limits
            .admit(&a, "g", None, None, None, t1)
            .expect("refilled");
        assert!(limits.admit(&a, "g", None, None, None, t1).is_err());
        // A grant's own limit replaces the default.
        let strict = RateLimit::new(1.0, 1).expect("rate");
        limits
            .admit(&b, "s", Some(strict), None, None, t0)
            .expect("first");
        assert!(matches!(
            limits.admit(&b, "s", Some(strict), None, None, t0),
            Err(Limited::Rate { retry_after, .. }) if retry_after == Duration::from_secs(1)
        ));
    }

    #[test]
    fn distinct_keys_are_capped_per_window_and_known_keys_stay_allowed() {
        let limits = CallerLimits::new(LimitDefaults {
            rate: RateLimit::new(1000.0, 1000).expect("rate"),
            ..defaults()
        });
        let a = caller("spiffe://x/a");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let keys: Vec<TokenKey> = (0..4).map(|i| key(&format!("https://x/{i}"))).collect();
        for k in &keys[..3] {
            limits
                .admit(&a, "g", None, None, Some(k), t0)
                .expect("under the cap");
        }
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            limits.admit(&a, "g", None, None, Some(&keys[3]), t1),
            Err(Limited::DistinctKeys {
                max: 3,
                window: Duration::from_secs(600),
                retry_after: Duration::from_secs(540),
            })
        );
        limits
            .admit(&a, "g", None, None, Some(&keys[0]), t1)
            .expect("a known key");
        limits
            .admit(&a, "g", None, Some(4), Some(&keys[3]), t1)
            .expect("the grant's own cap");
        let t2 = t0 + Duration::from_secs(600);
        limits
            .admit(&a, "g", None, None, Some(&keys[3]), t2)
            .expect("a new window");
    }

    #[test]
    fn a_sweep_keeps_a_caller_whose_own_slow_bucket_is_not_full() {
        let limits = CallerLimits::new(defaults());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hourly = RateLimit::new(1.0 / 3600.0, 1).expect("rate");
        let slow = caller("spiffe://x/slow");
        limits
            .admit(&slow, "g", Some(hourly), None, None, t0)
            .expect("first");
        // Many other callers, an hour's window later: every shard is swept.
        let later = t0 + Duration::from_secs(700);
        for i in 0..(SWEEP_ABOVE * SHARDS * 2) {
            let _ = limits.admit(
                &caller(&format!("spiffe://x/c{i}")),
                "g",
                None,
                None,
                None,
                later,
            );
        }
        assert!(
            limits
                .admit(&slow, "g", Some(hourly), None, None, later)
                .is_err(),
            "the hourly caller's empty bucket survived the sweeps"
        );
    }

    #[test]
    fn idle_callers_are_swept() {
        let limits = CallerLimits::new(defaults());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..(SWEEP_ABOVE * SHARDS * 2) {
            let later = t0 + Duration::from_secs(601 * (i as u64 / 8000));
            limits
                .admit(
                    &caller(&format!("spiffe://x/c{i}")),
                    "g",
                    None,
                    None,
                    None,
                    later,
                )
                .expect("admitted");
        }
        let held: usize = limits
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").usages.len())
            .sum();
        assert!(held <= SWEEP_ABOVE * SHARDS + SHARDS, "{held}");
    }
}
