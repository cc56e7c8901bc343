//! Google credential backends: [`broker_core::TokenSource`]s that speak Google's real token
//! protocols, one file per flow.
//!
//! In the broker's request path (architecture.md, step 7) a source goes upstream for every
//! cache miss: to Google in production, to `services/gcp-emulator` in dev and tests. It never
//! caches. Every call has timeouts and bounded, jittered retries of transient failures
//! ([`HttpClient::send_with_retry`]), and every failure is a [`broker_core::SourceError`] that
//! says whether trying later may help and, when it came from Google, which host
//! ([`upstream_host`]), what the last attempt ended with, and whose fault a refusal is (each
//! flow classifies Google's refusals: see each source, [`IamCredentials`] and [`downscope`]).
//! Decisions taken locally are not upstream errors: `Unsupported`, `InvalidRequest`,
//! `Internal`. Secrets (keys, assertions, tokens) never reach logs, errors or `Debug` output;
//! logs carry [`broker_core::Secret::fingerprint`]s. Google's text is sanitized before it
//! reaches a message (control characters escaped, length capped), and nothing of a
//! successful answer is ever quoted.
//!
//! - [`endpoints`](GoogleEndpoints): Google's URLs, each overridable, and [`upstream_host`];
//! - [`HttpClient`]: the one shared reqwest client and the retry loop;
//! - [`Env`]: the environment variables the backends read, injectable for tests;
//!
//! One file per flow, each a [`broker_core::TokenSource`] that reports its own
//! [`kind`](broker_core::TokenSource::kind) and
//! [`capabilities`](broker_core::TokenSource::capabilities):
//!
//! | source | kind | flow | lifetime | DWD | ID tokens | downscoping |
//! |---|---|---|---|---|---|---|
//! | [`ServiceAccountSource`] | `service_account` | a key: the RFC 7523 JWT-bearer grant, with `target_audience` for ID tokens (§1.2, §2.1) | | ✓ | ✓ | ✓ |
//! | [`MetadataSource`] | `metadata` | the broker's own identity from the GCE/GKE/Cloud Run metadata server, honouring `GCE_METADATA_HOST` (§3) | | | ✓ | ✓ |
//! | [`AuthorizedUserSource`] | `authorized_user` | a user's refresh token from gcloud's file (§1.3, §2.2) | | | | ✓ |
//! | [`ImpersonatedSource`] | `impersonated` | a target service account over any base source, through IAM Credentials; keyless DWD by `signJwt` (§5); `impersonated_service_account` files (§2.3) | ✓ (≤ 12 h) | ✓ | ✓ | ✓ |
//! | [`ExternalAccountSource`] | `external_account` | workload and workforce identity federation: a subject token from a file, a URL, an executable, AWS (SigV4) or an X.509 certificate (mTLS), exchanged at STS, then optionally service-account impersonation (§2.4, §4, §6) | | | with impersonation | ✓ (workforce: with impersonation) |
//!
//! and what they share:
//!
//! - [`IamCredentials`]: the IAM Service Account Credentials API (`generateAccessToken`,
//!   `generateIdToken`, `signJwt`, `signBlob`) with a bearer token of the caller's choosing,
//!   and Google's error envelope (§5);
//! - [`downscope`]: Credential Access Boundaries through STS, RFC 8693 (§4.5), the last step
//!   of every access-token flow given a boundary;
//! - [`exchange_token`]: any RFC 8693 exchange at STS (§4), as the broker's ExchangeToken RPC
//!   passes a caller's subject token through, with STS's refusals classified;
//! - [`CredentialFile`]: reading a credential file of any supported type and building its
//!   source;
//! - [`find_default_credentials`]: Application Default Credentials, Google's discovery order
//!   (§2.7);
//! - [`BackendError`]: what can go wrong while building a backend from configuration.
//!
//! ID tokens are [`broker_core::Token`]s whose secret is the JWT and whose expiry is its `exp`
//! claim, never an `expires_in`.
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

mod adc;
mod authorized_user;
mod checks;
mod credential_file;
mod endpoints;
mod env;
mod error;
mod external_account;
mod http;
mod iam;
mod id_token;
mod impersonated;
mod jws;
mod metadata;
mod oauth;
mod sanitize;
mod service_account;
mod sts;

pub use adc::{
    AdcOptions, AdcOrigin, ApplicationDefaultCredentials, DEFAULT_METADATA_PING_TIMEOUT,
    find_default_credentials,
};
pub use authorized_user::{AuthorizedUserCredentials, AuthorizedUserSource};
pub use credential_file::{BaseWrapper, CredentialFile};
pub use endpoints::{
    GOOGLE_IAM_CREDENTIALS_URL, GOOGLE_METADATA_URL, GOOGLE_STS_URL, GOOGLE_TOKEN_URL,
    GoogleEndpoints, upstream_host,
};
pub use env::{
    AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, AWS_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    CLOUDSDK_CONFIG, Env, GCE_METADATA_HOST, GOOGLE_API_CERTIFICATE_CONFIG,
    GOOGLE_APPLICATION_CREDENTIALS, HOME, NO_GCE_CHECK,
};
pub use error::BackendError;
pub use external_account::{
    DEFAULT_EXECUTABLE_TIMEOUT, DEFAULT_IMPERSONATED_LIFETIME, EXECUTABLE_ENVIRONMENT,
    ExternalAccountConfig, ExternalAccountOptions, ExternalAccountSource, IAM_SCOPE,
    MAX_SUBJECT_TOKEN_SOURCE_BYTES, pool_principal_set,
};
pub use http::{
    Attempt, HttpClient, HttpConfig, HttpResponse, MAX_RESPONSE_BYTES, RetryPolicy, USER_AGENT,
};
pub use iam::{DEFAULT_IMPERSONATION_LIFETIME, IamCredentials, SignedBlob, SignedJwt};
pub use impersonated::{
    CLOUD_PLATFORM_SCOPE, ImpersonatedServiceAccountFile, ImpersonatedSource, SourceCredentials,
};
pub use metadata::{DEFAULT_METADATA_ACCOUNT, MetadataSource, metadata_base_url};
pub use service_account::{MAX_TOKEN_LIFETIME, ServiceAccountKey, ServiceAccountSource};
pub use sts::{ACCESS_TOKEN_TYPE, StsClientAuth, StsExchange, StsToken, downscope, exchange_token};
