//! Authorization for the token broker: who is calling ([`CallerIdentity`], read from the verified
//! client certificate) and what they may have ([`Policy`], deny by default).
//!
//! The server builds a [`CallerIdentity`] from the peer's leaf certificate (step 2 of the request
//! path; an [`IdentityError`] is `UNAUTHENTICATED`), then asks [`Policy::authorize`] about the
//! validated request (step 5); ExchangeToken asks [`Policy::authorize_exchange`] instead, since
//! a plain exchange uses no credential. A [`Decision`] (an [`ExchangeDecision`]) gives the
//! effective request: the credential, the capped lifetime and the access boundary to apply. A
//! [`Denial`] is `PERMISSION_DENIED` with ErrorInfo reason `POLICY_DENIED`; it carries the
//! metadata that reason documents (`caller`, `grant`, `rule`, `value`) and a message safe to
//! return to the caller.

mod identity;
mod policy;

pub use identity::{
    CallerIdentity, CallerName, IdentityError, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId,
    SpiffeIdError,
};
pub use policy::{
    AccessRequest, CallerMatcher, Decision, Denial, DenialRule, ExchangeDecision, Explanation,
    Grant, GrantCheck, GrantOutcome, JwtClaims, MAX_DELEGATES, MAX_MAX_EXPIRY, MAX_MAX_LIFETIME,
    MIN_MAX_LIFETIME, Policy, PolicyError, RateLimit, Rpc, RpcParseError, SUBJECT_TOKEN_TYPES,
    ServiceAccountPattern, SignJwtConstraints,
};
