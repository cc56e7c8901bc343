//! Rust client for the token broker: an mTLS channel to it, an auto-refreshing access-token
//! provider, and decoding of the broker's rich errors. The `tokenctl` CLI is built on it.
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
//! Errors are [`ClientError`]s; a failed RPC is [`ClientError::Status`] with the broker's
//! `google.rpc` details (`ErrorInfo` reason and metadata, `RetryInfo`, `BadRequest`) decoded
//! into a [`StatusError`].

mod connect;
mod error;
mod provider;

pub use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
pub use connect::{ConnectOptions, TlsFiles, connect, connect_lazy, endpoint};
pub use error::{
    ClientError, ERROR_DOMAIN, FieldViolation, StatusError, TlsFileKind, code_name,
    whole_seconds_ceil,
};
pub use provider::{
    AccessToken, Clock, ProviderOptions, RetryPolicy, Secret, SystemClock, TokenProvider,
    TokenRequest, split_scopes,
};
pub use tonic::Code;
pub use tonic::transport::Channel;
