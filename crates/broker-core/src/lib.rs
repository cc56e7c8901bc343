//! The token broker's vocabulary, shared by every other crate: what a token request is
//! ([`TokenKey`], [`ScopeSet`], [`AccessBoundary`]), what a token is ([`Token`], [`Secret`]),
//! where tokens come from ([`TokenSource`], [`SourceError`]), and what time it is ([`Clock`]).
//!
//! This crate does no I/O and knows nothing of gRPC, HTTP, caches or configuration.

mod boundary;
mod clock;
mod key;
mod scope;
mod secret;
mod source;
mod token;

pub use boundary::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, BoundaryError, MAX_EXPRESSION_LEN,
    MAX_OPTIONS_LEN, MAX_RULES,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use key::{CredentialName, NameError, TokenKey, TokenKind};
pub use scope::{MAX_SCOPE_LEN, MAX_SCOPES, ScopeError, ScopeSet};
pub use secret::{Secret, fingerprint};
pub use source::{
    AccessTokenFetch, Capabilities, Fetch, IdTokenFetch, IdTokenRequest, Rejection, SourceError,
    SourceFuture, TokenRequest, TokenSource, UpstreamRejection, UpstreamStatus,
};
pub use token::Token;
