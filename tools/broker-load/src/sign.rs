//! The signing baseline: how fast the crypto library (aws-lc-rs) signs an RS256 JWT-bearer
//! assertion with the key parsed once, as the service-account backend does on every cold
//! request, single-threaded and on all cores.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Error;

/// A key file's fields the baselines need.
pub(crate) struct Key {
    pem: String,
}

impl Key {
    /// Reads a Google service-account key file.
    pub(crate) fn from_file(path: &std::path::Path) -> Result<Self, Error> {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Self {
            pem: field("private_key").ok_or("key file without private_key")?,
        })
    }
}

/// The rate of one signing baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SignResult {
    /// Threads signing at once.
    pub(crate) threads: usize,
    /// Signatures made.
    pub(crate) ops: u64,
    /// Wall time, seconds.
    pub(crate) seconds: f64,
    /// Signatures per second, all threads together.
    pub(crate) ops_per_s: f64,
    /// Mean time of one signature on one thread, microseconds.
    pub(crate) us_per_op: f64,
}

/// aws-lc-rs RSASSA-PKCS1-v1_5 SHA-256 with a key parsed once: the crypto library's raw rate,
/// and what `ServiceAccountSource` does for every token it fetches.
pub(crate) fn rsa_preparsed(
    key: &Key,
    threads: usize,
    duration: Duration,
) -> Result<SignResult, Error> {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

    let der = gcp_emulator::keys::pem_decode(&key.pem).ok_or("private_key is not PEM")?;
    let pair = RsaKeyPair::from_pkcs8(&der)
        .or_else(|_| RsaKeyPair::from_der(&der))
        .map_err(|e| format!("RSA key: {e}"))?;
    let rng = SystemRandom::new();
    // A message of the assertion's size (header.claims, base64url).
    let message = vec![b'a'; 420];
    let sign = || {
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature)
            .is_ok()
    };
    if !sign() {
        return Err("aws-lc-rs cannot sign with the key".into());
    }
    Ok(rate(threads, duration, sign))
}

/// Runs `op` in a tight loop on `threads` threads for `duration`.
fn rate(threads: usize, duration: Duration, op: impl Fn() -> bool + Sync) -> SignResult {
    let start = Instant::now();
    let until = start + duration;
    let ops: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut ops = 0_u64;
                    while Instant::now() < until {
                        if op() {
                            ops += 1;
                        }
                    }
                    ops
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let seconds = start.elapsed().as_secs_f64();
    let ops_per_s = ops as f64 / seconds;
    SignResult {
        threads,
        ops,
        seconds,
        ops_per_s,
        us_per_op: if ops == 0 {
            0.0
        } else {
            seconds * 1e6 * threads as f64 / ops as f64
        },
    }
}
