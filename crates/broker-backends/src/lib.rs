//! Google credential backends: [`broker_core::TokenSource`]s that speak Google's real token
//! protocols, one file per flow.
//!
//! In the broker's request path (architecture.md, step 7) a source goes upstream for every
//! cache miss: to Google in production, to `services/gcp-emulator` in dev and tests. It never
//! caches. Every call has timeouts and bounded, jittered retries of transient failures
//! ([`HttpClient::send_with_retry`]), and every failure is a [`broker_core::SourceError`] that
//! says whether trying later may help and, when it came from Google, which host
//! ([`upstream_host`]), what the last attempt ended with, and whose fault a refusal is (each
//! flow classifies Google's OAuth errors: see [`ServiceAccountSource`] and [`downscope`]).
//! Decisions taken locally are not upstream errors: `Unsupported`, `InvalidRequest`,
//! `Internal`. Secrets (keys, assertions, tokens) never reach logs, errors or `Debug` output;
//! logs carry [`broker_core::Secret::fingerprint`]s. Google's text is sanitized before it
//! reaches a message (control characters escaped, length capped), and nothing of a
//! successful answer is ever quoted.
//!
//! - [`endpoints`](GoogleEndpoints): Google's URLs, each overridable, and [`upstream_host`];
//! - [`HttpClient`]: the one shared reqwest client and the retry loop;
//! - [`ServiceAccountSource`]: service-account keys, the RFC 7523 JWT-bearer grant, with
//!   domain-wide delegation (google-protocols.md §1, §2.1);
//! - [`downscope`]: Credential Access Boundaries through STS, RFC 8693 (§4.5);
//! - [`BackendError`]: what can go wrong while building a backend from configuration.
//!
//! JWS signing uses aws-lc-rs directly with the key parsed once (see `jws.rs` for why not
//! `jsonwebtoken`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use broker_backends::{GoogleEndpoints, HttpClient, HttpConfig, ServiceAccountKey, ServiceAccountSource};
//! use broker_core::{ScopeSet, TokenRequest, TokenSource};
//!
//! let http = HttpClient::new(HttpConfig::default())?;
//! let key = ServiceAccountKey::from_file("/etc/token-broker/keys/deployer.json")?;
//! let source = ServiceAccountSource::new(key, GoogleEndpoints::google(), http)?;
//! let scopes = ScopeSet::parse(["https://www.googleapis.com/auth/cloud-platform"])?;
//! let token = source.fetch(&TokenRequest::new(scopes), None).await?;
//! println!("{} until {:?}", token.secret.fingerprint(), token.expires_at);
//! # Ok(()) }
//! ```

mod endpoints;
mod error;
mod http;
mod jws;
mod oauth;
mod sanitize;
mod service_account;
mod sts;

pub use endpoints::{
    GOOGLE_IAM_CREDENTIALS_URL, GOOGLE_METADATA_URL, GOOGLE_STS_URL, GOOGLE_TOKEN_URL,
    GoogleEndpoints, upstream_host,
};
pub use error::BackendError;
pub use http::{
    Attempt, HttpClient, HttpConfig, HttpResponse, MAX_RESPONSE_BYTES, RetryPolicy, USER_AGENT,
};
pub use service_account::{MAX_TOKEN_LIFETIME, ServiceAccountKey, ServiceAccountSource};
pub use sts::downscope;
