//! Rust client for the token broker: an mTLS channel to it, auto-refreshing access-token and
//! ID-token providers, one-shot calls of every RPC (impersonation, ID tokens, signing, token
//! exchange and downscoping), and decoding of the broker's rich errors. The `tokenctl` CLI is
//! built on it.
//!
//! ```no_run
//! use broker_client::{ConnectOptions, TlsFiles, TokenProvider, TokenRequest, connect};
//!
//! # async fn example() -> Result<(), broker_client::ClientError> {
//! let files = TlsFiles {
//!     ca: "/etc/tokenbroker/ca.pem".into(),
//!     cert: "/etc/tokenbroker/client.pem".into(),
//!     key: "/etc/tokenbroker/client.key".into(),
//! };
//! let client = connect("https://token-broker:8443", &files, &ConnectOptions::default()).await?;
//! let provider = TokenProvider::new(
//!     client,
//!     TokenRequest {
//!         scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".into()],
//!         credential: Some("prod-reader".into()),
//!         ..TokenRequest::default()
//!     },
//! )?;
//! let token = provider.token().await?; // cached until less than 5 minutes are left
//! let _header = token.authorization_header();
//! # Ok(())
//! # }
//! ```
//!
//! ID tokens for a Cloud Run service, and a signature made with a service account's
//! Google-managed key:
//!
//! ```no_run
//! use broker_client::{
//!     BlobSigningRequest, CallOptions, IdTokenProvider, IdTokenRequest, TokenBrokerClient,
//!     Channel, sign_blob,
//! };
//!
//! # async fn example(client: TokenBrokerClient<Channel>) -> Result<(), broker_client::ClientError> {
//! let run = IdTokenProvider::new(
//!     client.clone(),
//!     IdTokenRequest {
//!         audience: "https://hello-abc123-uc.a.run.app".into(),
//!         ..IdTokenRequest::default()
//!     },
//! )?;
//! let _header = run.token().await?.authorization_header(); // cached until near its `exp`
//!
//! let signed = sign_blob(
//!     &client,
//!     &BlobSigningRequest {
//!         service_account: "signer@my-project.iam.gserviceaccount.com".into(),
//!         payload: b"bytes to sign".to_vec(),
//!         ..BlobSigningRequest::default()
//!     },
//!     &CallOptions::default(),
//! )
//! .await?;
//! let (_key_id, _signature) = (signed.key_id, signed.signature);
//! # Ok(())
//! # }
//! ```
//!
//! Workload identity federation (an external token exchanged at Google's Security Token
//! Service), and an access token downscoped by a Credential Access Boundary read from a JSON file
//! in Google's format:
//!
//! ```no_run
//! use broker_client::{
//!     CallOptions, Channel, ExchangeRequest, Secret, TokenBrokerClient, exchange_token,
//!     read_access_boundary, token_type,
//! };
//!
//! # async fn example(client: TokenBrokerClient<Channel>) -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = std::fs::read_to_string("/var/run/secrets/tokens/gcp-token")?;
//! let federated = exchange_token(
//!     &client,
//!     &ExchangeRequest {
//!         subject_token: Secret::new(jwt),
//!         subject_token_type: token_type::JWT.into(),
//!         audience: Some(
//!             "//iam.googleapis.com/projects/123456789012/locations/global/\
//!              workloadIdentityPools/my-pool/providers/my-provider"
//!                 .into(),
//!         ),
//!         ..ExchangeRequest::default()
//!     },
//!     &CallOptions::default(),
//! )
//! .await?;
//!
//! let boundary = read_access_boundary("bucket-reader.json")?;
//! let downscoped = exchange_token(
//!     &client,
//!     &ExchangeRequest::downscoping(federated.token.clone(), boundary),
//!     &CallOptions::default(),
//! )
//! .await?;
//! let _header = downscoped.authorization_header(); // expires with `federated`
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`ClientError`]s; a failed RPC is [`ClientError::Status`] with the broker's
//! `google.rpc` details (`ErrorInfo` reason and metadata, `RetryInfo`, `BadRequest`) decoded
//! into a [`StatusError`]. Every call retries UNAVAILABLE and RESOURCE_EXHAUSTED per a
//! [`RetryPolicy`], after the broker's `RetryInfo` delay.

mod boundary;
mod calls;
mod connect;
mod error;
mod provider;
mod requests;
mod retry;
mod tokens;

pub use boundary::{AccessBoundaryError, parse_access_boundary, read_access_boundary};
pub use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
pub use broker_proto::tokenbroker::v1::{
    AccessBoundaryRule, AvailabilityCondition, CredentialAccessBoundary,
};
pub use calls::{
    exchange_token, generate_id_token, get_access_token, impersonate, sign_blob, sign_jwt,
};
pub use connect::{ConnectOptions, TlsFiles, connect, connect_lazy, endpoint};
pub use error::{
    ClientError, ERROR_DOMAIN, FieldViolation, StatusError, TlsFileKind, code_name,
    whole_seconds_ceil,
};
pub use provider::{Clock, IdTokenProvider, ProviderOptions, Secret, SystemClock, TokenProvider};
pub use requests::{
    BlobSigningRequest, ExchangeRequest, IdTokenRequest, ImpersonationRequest, JwtSigningRequest,
    TokenRequest, split_scopes, token_type,
};
pub use retry::{CallOptions, RetryPolicy};
pub use tokens::{AccessToken, ExchangedToken, IdToken, SignedBlob, SignedJwt};
pub use tonic::Code;
pub use tonic::transport::Channel;
